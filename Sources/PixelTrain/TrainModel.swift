import Foundation
import PixelData
import PixelModel
import PixelTensor
import PixelText

/// The model a run trains, built the same way by `train` (every rank) and `consolidate`:
///   --config: PixelLMForCausalLM at that config, initialised from the run's seed (CLIP and every frozen tensor
///             included, so the seed reproduces them), SEG ids from the shards' tokenizer;
///   --version: a PixelLM checkpoint directory (frozen tensors come from it), or a LLaVA base directory
///             (LLaVABase: LLaMA loaded, everything new initialised from the seed, reproducibly).
public struct TrainModelSource {
    public let model: PixelLMForCausalLM
    public let tokenizerDirectory: String
    public let table: ParameterTable
    /// Frozen LLaMA matrices kept in bf16, used in place from the mapped checkpoint files (not copied to fp32).
    public private(set) var keptBF16 = 0
    /// Frozen CLIP encoder matrices kept in bf16 likewise.
    public private(set) var keptCLIPBF16 = 0
    /// Frozen LLaMA matrices stored in another dtype (F32, F16), copied to fp32 instead of mapped, by dtype name.
    public private(set) var frozenCopied: [String: Int] = [:]

    public static func configPath(_ p: String) -> String {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: p, isDirectory: &isDir), isDir.boolValue {
            return (p as NSString).appendingPathComponent(PixelLMCheckpoint.configName)
        }
        return p
    }

    /// Groups that train: "released", "all", or a comma list of group names.
    public static func trainableGroups(_ spec: String) throws -> Set<ParameterGroup> {
        switch spec {
        case "released": return ParameterTable.releasedTrainableGroups
        case "all": return Set(ParameterGroup.allCases)
        default:
            do { return Set(try ParameterGroup.parseList(spec)) } catch {
                throw TrainError.option("--trainable", "\(error) (or 'released' / 'all')")
            }
        }
    }

    /// Tensors a consolidation reads from the base's files instead of the model (nil: none; see `streaming`).
    public private(set) var baseSource: (any WeightSource)?
    /// The names `baseSource` provides.
    public private(set) var streamedNames: Set<String> = []

    /// `streaming` (consolidation): a --version PixelLM checkpoint is opened as a skeleton (no tensor read; every
    /// frozen tensor is then streamed from its file), a LLaVA base without its LLaMA layers and CLIP (streamed); a
    /// --config model is built whole (its frozen tensors exist nowhere else).
    public init(options o: TrainOptions, tokenizerDirectory tokDir: String, streaming: Bool = false) throws {
        let tok: Tokenizer
        do { tok = try Tokenizer(directory: tokDir) } catch { throw TrainError.file(tokDir, "tokenizer: \(error)") }
        let perTarget = o.segTokenNum * o.imageFeatureScaleNum
        do { try tok.requirePixelLMTokens(segTokenCount: perTarget) } catch { throw TrainError.file(tokDir, "\(error)") }
        // a LLaMA matrix that does not train and is stored in bf16 stays bf16, mapped (issue 12: a 7B base in 24 GB)
        let groups = try Self.trainableGroups(o.trainable)
        let frozenBF16: (String) -> Bool = { name in ParameterGroup.of(name).map { !groups.contains($0) } ?? false }
        if let v = o.version, LLaVABase.isLLaVADirectory(v) {
            // a LLaVA base, as train_ds.py starts: LLaMA loaded, the vocabulary grown to the tokenizer of the shards
            // (which holds the SEG tokens), fresh projectors and decoder side from the seed; the PixelLM sizes from
            // --config when given (a small test model), else the released ones (448 px, the 256-wide decoder)
            let settings = try o.config.map { PixelLMSettings(of: try PixelLMConfig.load(Self.configPath($0))) } ?? .released
            let info = LLaVATokenizerInfo(tokenizer: tok, name: tokDir)
            let (m, report) = try LLaVABase.initialize(fromLLaVA: v, visionTower: o.visionTower, tokenizer: info, settings: settings,
                                                       seed: o.seed, loadLayers: !streaming, keepStoredBF16: streaming ? nil : frozenBF16)
            keptBF16 = report.keptBF16
            frozenCopied = report.frozenCopied
            if streaming {
                let src = try WeightSources.open(v)
                baseSource = src
                streamedNames = Set(src.names.filter { $0.hasPrefix("model.layers.") || $0 == "model.norm.weight" })
            }
            guard m.segTokenIds == tok.segIds, report.vocabulary.appended.isEmpty else {
                throw TrainError.mismatch(field: "tokenizer", "the shards' tokenizer \(tokDir) must hold the SEG tokens the model uses (model \(m.segTokenIds), tokenizer \(tok.segIds))")
            }
            model = m
        } else if let c = o.config {
            let path = Self.configPath(c)
            let config = try PixelLMConfig.load(path)
            if config.segTokenNum != o.segTokenNum || config.imageFeatureScaleNum != o.imageFeatureScaleNum {
                throw TrainError.mismatch(field: "seg_token_num / image_feature_scale_num",
                                          "\(path) says \(config.segTokenNum) x \(config.imageFeatureScaleNum), the options \(o.segTokenNum) x \(o.imageFeatureScaleNum)")
            }
            guard tok.vocabSize <= config.vocabSize else {
                throw TrainError.mismatch(field: "vocab_size", "\(path) has \(config.vocabSize) rows, the tokenizer \(tokDir) \(tok.vocabSize) tokens")
            }
            var rng = RNG(seed: o.seed)
            model = PixelLMForCausalLM(config: config, segTokenIds: tok.segIds, rng: &rng)
        } else if let v = o.version, streaming {
            let (config, _) = try PixelLMModelDirectory.readConfig(v, visionTower: o.visionTower)
            var rng = RNG(seed: 0)
            model = PixelLMForCausalLM(config: config, segTokenIds: tok.segIds, skeleton: true, rng: &rng)
            let src = try WeightSources.open(v)
            baseSource = src
            streamedNames = Set(src.names)
        } else if let v = o.version {
            let (m, report) = try PixelLMModelDirectory.open(v, visionTower: o.visionTower, segTokenIds: tok.segIds, keepStoredBF16: frozenBF16)
            model = m
            keptBF16 = report.keptBF16
            keptCLIPBF16 = report.keptCLIPBF16
            frozenCopied = report.frozenCopied
        } else {
            throw TrainError.option("--version", "give --version DIR or --config DIR|FILE")
        }
        if let l = o.lora, model.loraAdapters.isEmpty {
            // fresh adapters (A from the seed, B = 0); a checkpoint that kept its adapters brings its own
            var rng = RNG(seed: LoRASeeds.mix(o.seed, 0x4C6F_5241))
            model.attachLoRA(l, rng: &rng)
        }
        tokenizerDirectory = tokDir
        table = ParameterTable(model: model, trainableGroups: groups)
    }

    /// Trainable tensors in bucket order: the reverse of the checkpoint order, so that the decoder side (whose
    /// gradients backward produces first) fills the first buckets.
    public var trainableInBucketOrder: [ParameterEntry] { Array(table.trainable.reversed()) }

    /// CRC-32 over every parameter's bytes (replicas must agree before training), and over the mapped weight files'
    /// names, sizes and sampled pages (frozen bf16 matrices used in place: each node may map its own copy of the base).
    public func weightsCRC() -> UInt32 {
        var crc: UInt32 = keptBF16 + keptCLIPBF16 > 0 ? MappedFiles.fingerprint() : 0
        for e in table.entries {
            let t = e.tensor.contiguousData()
            crc = CRC32.checksum(UnsafeRawBufferPointer(start: t.ptr, count: t.count * 4), initial: crc)
        }
        return crc
    }
}

extension LLaVATokenizerInfo {
    /// What LLaVABase needs to know of a tokenizer: its length and the ids of the PixelLM tokens it already has.
    public init(tokenizer tok: Tokenizer, name: String) {
        var known: [String: Int] = [:]
        for (t, i) in zip(tok.segTokens, tok.segIds) { known[t] = i }
        if let i = tok.imStartId { known["<im_start>"] = i }
        if let i = tok.imEndId { known["<im_end>"] = i }
        self.init(name: name, count: tok.vocabSize, known: known)
    }
}
