import Foundation
import PixelTensor

// PixelLM initialised from a LLaVA base directory (LLaVA-Lightning-7B-v1-1, llava-llama-2-13b-chat-lightning-
// preview): what the released train_ds.py has at step 0, and what `pixellm forward` / `chat` load to inspect it.
//
// What the reference does (train_ds.py with transformers 4.31, spec sections 1.1 and 4), and what we mirror:
// * Tokenizer: the LLaVA tokenizer (slow LlamaTokenizer), then `add_tokens(["[SEG0]", ..., "[SEG{N*L-1}]"])`, then
//   `add_tokens(["<im_start>", "<im_end>"], special_tokens=True)`. add_tokens skips a token the vocabulary already
//   has and gives each new one the id len(tokenizer) at that moment. So: [SEG0..] appended in order after the
//   tokenizer's last id, then <im_start>/<im_end> only when missing (the LLaVA-Lightning tokenizers already hold
//   <im_patch>, <im_start>, <im_end> = 32000..32002, giving [SEG0..5] = 32003..32008 and 32009 rows, as the
//   released hf_model). A tokenizer directory that already holds the SEG tokens is used as it is.
// * `PixelLMForCausalLM.from_pretrained(llava_dir)`: the LLaMA tensors load; the 2-layer `mm_projector` and
//   `out_mm_projector` are created in LlavaMetaModel.__init__ (separate_mm_projector is forced on), so they are
//   missing keys that from_pretrained initialises with LlamaPreTrainedModel._init_weights: weight ~
//   N(0, initializer_range), bias 0. LLaVA's single-Linear `model.mm_projector.{weight,bias}` has other names
//   and is dropped as an unexpected key (a 2-layer projector with exactly PixelLM's names and shapes would load;
//   we do the same). Vision-tower tensors in the LLaVA directory are unexpected too (the tower is delay-loaded
//   and built from --vision-tower by initialize_vision_modules): CLIP comes from the vision tower directory.
// * `initialize_pixellm_modules` then builds mask_decoder, prompt_encoder, image_feature_neck and
//   text_hidden_fcs outside from_pretrained: PyTorch default init (the model's own random init here).
// * `resize_token_embeddings(len(tokenizer))`: new nn.Embedding / nn.Linear, `_init_weights` on the whole
//   matrix (N(0, initializer_range), no padding_idx on the new module), then the old rows copied back: rows
//   R..<V of embed_tokens and lm_head are N(0, initializer_range). (initialize_vision_tokenizer, which would
//   average rows, is never called by PixelLM; mean-resizing arrived in transformers 4.46.)
// Our random numbers come from RNG(seed:), not torch's generator; the draw order is fixed: the decoder side
// (inside PixelLMForCausalLM's init), then mm_projector.0.weight, mm_projector.2.weight,
// out_mm_projector.0.weight, out_mm_projector.2.weight, the new embed_tokens rows, the new lm_head rows.

/// The PixelLM settings a LLaVA base does not carry. The defaults are the released ones (hard-coded in
/// PixelLM.py / the README command): seg_token_num 3, image_feature_scale_num 2, out_dim 256, 448 px CLIP input,
/// the CLIP mid layer -11, <im_start>/<im_end>, the released token fusion (1/(N*L)), the 256-wide decoder.
public struct PixelLMSettings: Sendable, Equatable {
    public var segTokenNum = 3
    public var imageFeatureScaleNum = 2
    public var outDim = 256
    public var resizeVisionTowerSize = 448
    public var mmVisionMidLayer = -11
    public var mmUseImStartEnd = true
    public var tokenFusion = "released"
    public var decoderConfig = DecoderConfig()

    public init() {}
    public static let released = PixelLMSettings()

    /// The PixelLM fields of `config` (e.g. a PixelLM config.json's).
    public init(of config: PixelLMConfig) {
        segTokenNum = config.segTokenNum
        imageFeatureScaleNum = config.imageFeatureScaleNum
        outDim = config.outDim
        resizeVisionTowerSize = config.resizeVisionTowerSize
        mmVisionMidLayer = config.mmVisionMidLayer
        mmUseImStartEnd = config.mmUseImStartEnd
        tokenFusion = config.tokenFusion
        decoderConfig = config.decoderConfig
    }

    /// "[SEG0]" ... (or "[SEG]" alone when N*L = 1), as train_ds.py names them.
    public var segTokens: [String] {
        let n = segTokenNum * imageFeatureScaleNum
        return n == 1 ? ["[SEG]"] : (0..<n).map { "[SEG\($0)]" }
    }
}

/// What the vocabulary planning needs to know about a tokenizer (PixelModel does not depend on PixelText:
/// the caller fills this from its tokenizer).
public struct LLaVATokenizerInfo: Sendable {
    /// The tokenizer directory, for messages.
    public var name: String
    /// len(tokenizer): base pieces plus added tokens.
    public var count: Int
    /// Tokens the tokenizer already has, with their ids (at least the SEG tokens and <im_start>/<im_end> it has).
    public var known: [String: Int]

    public init(name: String, count: Int, known: [String: Int]) {
        self.name = name
        self.count = count
        self.known = known
    }
}

/// The PixelLM vocabulary made from a LLaVA checkpoint and its tokenizer.
public struct LLaVAVocabulary: Sendable {
    /// Rows of the LLaVA embed_tokens / lm_head (= its config.json vocab_size).
    public var checkpointRows: Int
    /// len(tokenizer) before PixelLM's tokens are appended.
    public var tokenizerCount: Int
    /// Rows after resize_token_embeddings.
    public var vocabSize: Int
    public var segTokenIds: [Int]
    /// Tokens appended to the tokenizer, in order (ids tokenizerCount, tokenizerCount + 1, ...).
    public var appended: [(token: String, id: Int)]
    /// Rows drawn new (the rest are the checkpoint's).
    public var newRows: Range<Int> { checkpointRows..<vocabSize }
}

/// What `LLaVABase.initialize` did.
public struct LLaVAInitReport {
    public var directory: String
    public var visionDirectory: String
    /// LLaVA tensors copied into the model (embed_tokens / lm_head: rows 0..<checkpointRows).
    public var loaded: [String] = []
    /// LLaVA tensors not used, with the reason.
    public var ignored: [(name: String, reason: String)] = []
    /// What was newly initialised, and how.
    public var initialized: [String] = []
    public var vocabulary: LLaVAVocabulary
    /// LLaMA matrices kept in bf16, in place in the mapped file (`keepStoredBF16`).
    public var keptBF16 = 0
    /// As CheckpointLoadReport.frozenCopied.
    public var frozenCopied: [String: Int] = [:]
    /// The CLIP load (from `visionDirectory`).
    public var vision = CheckpointLoadReport()
    /// On-disk dtypes of the LLaVA tensors.
    public var dtypes: Set<String> = []
    public var seed: UInt64

    /// Two lines for `forward` / `chat`.
    public var summary: [String] {
        let v = vocabulary
        var ign = ignored.map { $0.name }
        if ign.count > 4 { ign = Array(ign.prefix(4)) + ["... (\(ignored.count) in all)"] }
        let reasons = Array(Set(ignored.map { $0.reason })).sorted()
        let l1 = "PixelLM from the LLaVA base \(directory): \(loaded.count) LLaMA tensors (\(dtypes.sorted().joined(separator: "/")); embed_tokens/lm_head rows 0..<\(v.checkpointRows)), "
            + "CLIP \(vision.loaded) tensors from \(visionDirectory); ignored \(ignored.count)"
            + (ignored.isEmpty ? "" : ": \(ign.joined(separator: ", ")) (\(reasons.joined(separator: "; ")))")
        let app = v.appended.isEmpty ? "none appended" : "appended " + v.appended.map { "\($0.token)=\($0.id)" }.joined(separator: " ")
        let l2 = "newly initialised (seed \(seed)): \(initialized.joined(separator: "; ")); tokenizer \(v.tokenizerCount) -> \(v.vocabSize) tokens (\(app)). "
            + "WARNING: the pixel decoder, projectors and SEG embeddings are untrained: masks are meaningless until PixelLM training"
        return [l1, l2]
    }
}

public enum LLaVABase {
    /// Prefixes that only a PixelLM checkpoint has.
    static let pixelOnlyPrefixes = ["model.mask_decoder.", "model.text_hidden_fcs.", "model.image_feature_neck.",
                                    "model.prompt_encoder.", "model.out_mm_projector."]

    /// Whether `source` is a LLaVA base (LLaMA weights, no PixelLM decoder side) rather than a PixelLM checkpoint.
    public static func isLLaVA(_ source: any WeightSource) -> Bool {
        source.contains("model.embed_tokens.weight") && !source.names.contains { n in pixelOnlyPrefixes.contains { n.hasPrefix($0) } }
    }

    /// `isLLaVA` for a model directory (false when it has no readable weights).
    public static func isLLaVADirectory(_ directory: String) -> Bool {
        guard let s = try? WeightSources.open(directory) else { return false }
        return isLLaVA(s)
    }

    /// The vocabulary after train_ds.py's add_tokens and resize_token_embeddings (see the file comment).
    /// Throws when the tokenizer has fewer tokens than the checkpoint has rows (not its tokenizer).
    public static func planVocabulary(checkpointRows: Int, checkpointName: String, tokenizer: LLaVATokenizerInfo,
                                      settings: PixelLMSettings = .released) throws -> LLaVAVocabulary {
        guard tokenizer.count >= checkpointRows else {
            throw CheckpointDirectoryError(file: tokenizer.name, "the tokenizer has \(tokenizer.count) tokens but \(checkpointName)'s "
                + "model.embed_tokens.weight has \(checkpointRows) rows (config.json vocab_size): pass the LLaVA base's own tokenizer (--tokenizer DIR)")
        }
        var next = tokenizer.count
        var appended: [(token: String, id: Int)] = []
        func id(_ t: String) -> Int {
            if let i = tokenizer.known[t] { return i }
            if let a = appended.first(where: { $0.token == t }) { return a.id }
            appended.append((t, next))
            next += 1
            return next - 1
        }
        let seg = settings.segTokens.map(id)
        if settings.mmUseImStartEnd { _ = id("<im_start>"); _ = id("<im_end>") }
        return LLaVAVocabulary(checkpointRows: checkpointRows, tokenizerCount: tokenizer.count, vocabSize: next,
                               segTokenIds: seg, appended: appended)
    }

    /// The CLIP sizes of a vision tower directory's config.json: `vision_config` of a CLIPModel config, the top
    /// level of a CLIPVisionModel config; the CLIP-L/14-336 defaults when there is no config.json.
    public static func visionConfig(_ directory: String) throws -> CLIPVisionConfig {
        let path = (directory as NSString).appendingPathComponent("config.json")
        guard let data = FileManager.default.contents(atPath: path) else { return CLIPVisionConfig() }
        do {
            guard let obj = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw ConfigError(file: path, message: "not a JSON object")
            }
            let part: Any = obj["vision_config"] ?? obj
            return try JSONDecoder().decode(CLIPVisionConfig.self, from: JSONSerialization.data(withJSONObject: part))
        } catch let e as ConfigError {
            throw e
        } catch {
            throw ConfigError(file: path, message: "cannot read the CLIP vision config: \(error)")
        }
    }

    /// PixelLM built from a LLaVA base directory (see the file comment): the LLaMA tensors from `directory`,
    /// CLIP from `visionTower` (default: config.json's mm_vision_tower when that is a local directory), the
    /// vocabulary grown to the tokenizer plus PixelLM's tokens, everything else newly initialised from `seed`.
    /// Errors name the file and the field: config.json against the weights (hidden_size, num_hidden_layers,
    /// vocab_size, ...), a missing vision tower, a tokenizer smaller than the checkpoint's vocabulary, unknown
    /// tensors, a PixelLM directory given as a LLaVA one.
    /// `loadLayers: false` leaves the LLaMA layers, the final norm and CLIP unloaded (uninitialised memory, never
    /// touched): for consolidation, which streams them from their files; every newly initialised tensor is the same.
    /// `keepStoredBF16`: as in `PixelLMModelDirectory.open` (training: frozen LLaMA matrices stored in bf16 stay mapped).
    public static func initialize(fromLLaVA directory: String, visionTower: String? = nil, tokenizer: LLaVATokenizerInfo,
                                  settings: PixelLMSettings = .released, seed: UInt64 = 0,
                                  precision: WeightPrecision = .f32, loadLayers: Bool = true,
                                  keepStoredBF16: ((String) -> Bool)? = nil) throws -> (model: PixelLMForCausalLM, report: LLaVAInitReport) {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: directory, isDirectory: &isDir), isDir.boolValue else {
            throw CheckpointDirectoryError(file: directory, "model directory does not exist")
        }
        let configPath = (directory as NSString).appendingPathComponent(PixelLMCheckpoint.configName)
        guard let data = fm.contents(atPath: configPath) else { throw ConfigError(file: configPath, message: "cannot read the file") }
        var config: PixelLMConfig
        var raw: [String: Any] = [:]
        do {
            config = try JSONDecoder().decode(PixelLMConfig.self, from: data)
            raw = (try JSONSerialization.jsonObject(with: data) as? [String: Any]) ?? [:]
        } catch let DecodingError.typeMismatch(_, ctx), let DecodingError.valueNotFound(_, ctx) {
            throw ConfigError(file: configPath, message: "field '\(ctx.codingPath.map { $0.stringValue }.joined(separator: "."))': \(ctx.debugDescription)")
        } catch let DecodingError.keyNotFound(key, _) {
            throw ConfigError(file: configPath, message: "field '\(key.stringValue)' is missing (a LLaMA config.json states it)")
        } catch {
            throw ConfigError(file: configPath, message: "not a valid config: \(error)")
        }
        let llavaVocab = config.vocabSize

        // weights: LLaMA names, names ignored on purpose, anything else is an error
        let source = try WeightSources.open(directory)
        guard isLLaVA(source) else {
            throw CheckpointDirectoryError(file: directory, source.contains("model.embed_tokens.weight")
                ? "this is a PixelLM checkpoint (it has decoder weights), not a LLaVA base: open it with PixelLMModelDirectory.open"
                : "no model.embed_tokens.weight: not a LLaVA (LlavaLlamaForCausalLM) checkpoint")
        }
        let H = config.hiddenSize
        let pixelProjector: [String: [Int]] = ["model.mm_projector.0.weight": [2 * H, config.mmHiddenSize], "model.mm_projector.0.bias": [2 * H],
                                               "model.mm_projector.2.weight": [H, 2 * H], "model.mm_projector.2.bias": [H]]
        var projectorLoads = pixelProjector.keys.allSatisfy { source.contains($0) }
        if projectorLoads {
            for (n, s) in pixelProjector {
                if try source.info(n).shape != s { projectorLoads = false }
            }
        }
        var report = LLaVAInitReport(directory: directory, visionDirectory: "",
                                     vocabulary: LLaVAVocabulary(checkpointRows: 0, tokenizerCount: 0, vocabSize: 0, segTokenIds: [], appended: []),
                                     seed: seed)
        var shapes: [String: [Int]] = [:]
        var unknown: [String] = []
        for n in source.names.sorted() {
            if n.hasSuffix("rotary_emb.inv_freq") {
                report.ignored.append((n, "rotary buffer"))
            } else if n.hasPrefix("model.mm_projector.") {
                if projectorLoads && pixelProjector[n] != nil { continue }
                report.ignored.append((n, source.contains("model.mm_projector.weight") ? "LLaVA's single-Linear projector; PixelLM's is a new 2-layer MLP"
                                                                                       : "LLaVA projector, not PixelLM's 2-layer shape"))
            } else if n.hasPrefix("model.vision_tower.") {
                report.ignored.append((n, "vision tower inside the LLaVA checkpoint; CLIP comes from the vision tower directory"))
            } else if n == "model.embed_tokens.weight" || n == "lm_head.weight" || n == "model.norm.weight" || n.hasPrefix("model.layers.") {
                shapes[n] = try source.info(n).shape
            } else {
                unknown.append(n)
            }
        }
        if !unknown.isEmpty {
            throw CheckpointDirectoryError(file: directory, "unexpected tensors for a LLaVA base (LLaMA + mm_projector): "
                + unknown.prefix(8).joined(separator: ", ") + (unknown.count > 8 ? " ... (\(unknown.count) in all)" : ""))
        }
        do {
            try PixelLMCheckpoint.checkConfig(config, segTokenIds: [], shapes: shapes, source: directory + " (LLaVA weights)")
        } catch let m as CheckpointConfigMismatch {
            throw CheckpointDirectoryError(file: configPath, "field '\(m.field)' is \(m.configValue) but the weights in \(directory) have \(m.checkpointValue) (\(m.evidence))")
        }

        // the vision tower
        var visionDir = visionTower
        if visionDir == nil {
            let t = raw["mm_vision_tower"] as? String ?? raw["vision_tower"] as? String
            var candidate = t
            if let c = t, !c.hasPrefix("/") { candidate = (directory as NSString).appendingPathComponent(c) }
            if let c = candidate, fm.fileExists(atPath: c, isDirectory: &isDir), isDir.boolValue {
                visionDir = c
            } else {
                throw CheckpointDirectoryError(file: directory, "a LLaVA base has no CLIP vision tower: pass --vision-tower DIR "
                    + "(e.g. openai/clip-vit-large-patch14-336)" + (t.map { "; config.json's mm_vision_tower '\($0)' is not a local directory" } ?? ""))
            }
        }
        let vdir = visionDir!
        guard fm.fileExists(atPath: vdir, isDirectory: &isDir), isDir.boolValue else {
            throw CheckpointDirectoryError(file: vdir, "vision tower directory does not exist")
        }
        report.visionDirectory = vdir

        // the PixelLM config: LLaMA and mm fields from the LLaVA config, CLIP from the tower, PixelLM settings
        let rows = shapes["model.embed_tokens.weight"]?.first ?? llavaVocab
        let vocab = try planVocabulary(checkpointRows: rows, checkpointName: directory, tokenizer: tokenizer, settings: settings)
        report.vocabulary = vocab
        config.vocabSize = vocab.vocabSize
        config.visionConfig = try visionConfig(vdir)
        config.segTokenNum = settings.segTokenNum
        config.imageFeatureScaleNum = settings.imageFeatureScaleNum
        config.outDim = settings.outDim
        config.resizeVisionTowerSize = settings.resizeVisionTowerSize
        config.mmVisionMidLayer = settings.mmVisionMidLayer
        config.mmUseImStartEnd = settings.mmUseImStartEnd
        config.tokenFusion = settings.tokenFusion
        config.decoderConfig = settings.decoderConfig
        if raw["mm_hidden_size"] == nil { config.mmHiddenSize = config.visionConfig.hiddenSize }
        try config.validate(file: configPath + " (with the PixelLM settings and \(vdir)/config.json's vision config)")

        // the model: the decoder side gets PyTorch's default init here (the first draws of the seed)
        var rng = RNG(seed: seed)
        let model = PixelLMForCausalLM(config: config, segTokenIds: vocab.segTokenIds, skeleton: true, rng: &rng)
        report.initialized.append("mask_decoder, prompt_encoder, image_feature_neck, text_hidden_fcs"
            + (config.tokenFusion == "learned" ? ", token_fusion" : "") + ": PyTorch default init")

        // strict LLaMA names (embed_tokens / lm_head with the checkpoint's rows)
        let llm = model.llm.namedTensors()
        var err = WeightMismatch()
        for (n, t) in llm {
            var want = t.shape
            if n == "model.embed_tokens.weight" || n == "lm_head.weight" { want[0] = rows }
            guard let s = shapes[n] else { err.missing.append(n); continue }
            if s != want { err.wrongShape.append((n, want, s)) }
        }
        let names = Set(llm.map { $0.0 })
        for n in shapes.keys where !names.contains(n) { err.unexpected.append(n) }
        if !err.missing.isEmpty || !err.unexpected.isEmpty || !err.wrongShape.isEmpty {
            throw CheckpointDirectoryError(file: directory, "\(err)")
        }

        // the projectors: N(0, initializer_range), bias 0 (or PixelLM-shaped ones from the file)
        let std = config.initializerRange
        if projectorLoads {
            for (n, t) in model.mmProjector.namedTensors(prefix: "model.mm_projector") {
                var r = CheckpointLoadReport()
                try PixelLMModelDirectory.copy(n, into: t, from: source, name: directory, report: &r)
                report.loaded.append(n)
            }
        } else {
            for l in [model.mmProjector.fc0, model.mmProjector.fc2] { fillNormal(l.weight, from: 0, std: std, rng: &rng); l.bias?.ptr.update(repeating: 0, count: l.bias!.count) }
            report.initialized.append("model.mm_projector (2-layer): weights N(0, \(std)), biases 0")
        }
        for l in [model.outMMProjector.fc0, model.outMMProjector.fc2] { fillNormal(l.weight, from: 0, std: std, rng: &rng); l.bias?.ptr.update(repeating: 0, count: l.bias!.count) }
        report.initialized.append("model.out_mm_projector (2-layer): weights N(0, \(std)), biases 0")

        // LLaMA tensors; embed_tokens / lm_head: the checkpoint's rows, then N(0, initializer_range) rows
        let bf16 = precision == .bf16 ? Dictionary(uniqueKeysWithValues: PixelLMModelDirectory.bf16Linears(model)) : [:]
        let stored = loadLayers ? try PixelLMModelDirectory.storedBF16(model, source, keepStoredBF16) : [:]
        report.keptBF16 = stored.count
        if loadLayers { report.frozenCopied = try PixelLMModelDirectory.frozenCopied(model, source, keepStoredBF16) }
        var scratch = CheckpointLoadReport()
        for (n, t) in llm {
            if !loadLayers && n != "model.embed_tokens.weight" && n != "lm_head.weight" { continue }
            let info = try source.info(n)
            try PixelLMModelDirectory.checkFloat(info.dtype, n, directory)
            report.dtypes.insert(info.dtype.name)
            report.loaded.append(n)
            if let lin = bf16[n] ?? stored[n] {
                lin.bf16Weight = try source.bf16(n)
                lin.weight = Tensor(empty: [info.shape[0], 0])
            } else if n == "model.embed_tokens.weight" || n == "lm_head.weight" {
                let v = try source.tensor(n).contiguousData()
                if v.count > 0 { t.ptr.update(from: v.ptr, count: v.count) }
            } else {
                try PixelLMModelDirectory.copy(n, into: t, from: source, name: directory, report: &scratch)
            }
        }
        if vocab.vocabSize > rows {
            let what = vocab.appended.isEmpty ? "" : " (" + vocab.appended.map { $0.token }.joined(separator: " ") + ")"
            fillNormal(model.llm.model.embedTokens.weight, from: rows * H, std: std, rng: &rng)
            var targets = "model.embed_tokens"
            if let head = model.llm.lmHead {
                fillNormal(head.weight, from: rows * H, std: std, rng: &rng)
                targets += " and lm_head"
            }
            report.initialized.append("\(targets) rows \(rows)..<\(vocab.vocabSize)\(what): N(0, \(std))")
        }

        // CLIP
        if loadLayers { report.vision = try PixelLMModelDirectory.loadVision(model, from: try WeightSources.open(vdir), name: vdir) }
        if precision == .bf16 || !stored.isEmpty {
            CachingAllocator.shared.emptyCache()
            MappedFiles.releaseResidentPages()
        }
        return (model, report)
    }

    /// Fills `t`'s elements from `start` on with N(0, std) draws in order.
    static func fillNormal(_ t: Tensor, from start: Int, std: Float, rng: inout RNG) {
        let n = t.count - start
        guard n > 0 else { return }
        let r = Tensor.randn([n], std: std, rng: &rng)
        (t.ptr + start).update(from: r.ptr, count: n)
    }

    // MARK: - the tokenizer train_ds.py saves

    /// Writes the LLaVA tokenizer with PixelLM's tokens appended, as the slow LlamaTokenizer of train_ds.py saves
    /// it: tokenizer.model, special_tokens_map.json and tokenizer_config.json copied, added_tokens.json = the
    /// existing added tokens plus `vocabulary.appended` (tokenizer.json is left out: its added tokens would
    /// disagree; the slow tokenizer is what the reference uses). Needs a tokenizer.model.
    public static func writeExtendedTokenizer(from source: String, to destination: String, vocabulary: LLaVAVocabulary) throws {
        let fm = FileManager.default
        func p(_ d: String, _ f: String) -> String { (d as NSString).appendingPathComponent(f) }
        guard fm.fileExists(atPath: p(source, "tokenizer.model")) else {
            throw CheckpointDirectoryError(file: source, "the tokenizer has no \(vocabulary.appended.map { $0.token }.joined(separator: " ")) "
                + "and no tokenizer.model to append them to (tokenizer.json only): pass a tokenizer directory that has them (--tokenizer DIR)")
        }
        try? fm.removeItem(atPath: destination)
        try fm.createDirectory(atPath: destination, withIntermediateDirectories: true)
        for f in ["tokenizer.model", "special_tokens_map.json", "tokenizer_config.json"] where fm.fileExists(atPath: p(source, f)) {
            try fm.copyItem(atPath: p(source, f), toPath: p(destination, f))
        }
        var added: [(String, Int)] = []
        if let d = fm.contents(atPath: p(source, "added_tokens.json")) {
            guard let obj = try JSONSerialization.jsonObject(with: d) as? [String: Any] else {
                throw CheckpointDirectoryError(file: p(source, "added_tokens.json"), "not a JSON object")
            }
            for (k, v) in obj {
                guard let i = (v as? NSNumber)?.intValue else { throw CheckpointDirectoryError(file: p(source, "added_tokens.json"), "\"\(k)\" has no integer id") }
                added.append((k, i))
            }
        }
        added += vocabulary.appended.map { ($0.token, $0.id) }
        added.sort { $0.1 < $1.1 }
        func quote(_ s: String) -> String {
            String(data: try! JSONSerialization.data(withJSONObject: [s], options: []), encoding: .utf8)!.dropFirst().dropLast().description
        }
        let text = "{\n" + added.map { "  \(quote($0.0)): \($0.1)" }.joined(separator: ",\n") + "\n}"
        try text.write(toFile: p(destination, "added_tokens.json"), atomically: true, encoding: .utf8)
    }
}

extension PixelLMCheckpoint {
    /// See `LLaVABase.initialize(fromLLaVA:...)`.
    public static func initialize(fromLLaVA directory: String, visionTower: String? = nil, tokenizer: LLaVATokenizerInfo,
                                  settings: PixelLMSettings = .released, seed: UInt64 = 0,
                                  precision: WeightPrecision = .f32) throws -> (model: PixelLMForCausalLM, report: LLaVAInitReport) {
        try LLaVABase.initialize(fromLLaVA: directory, visionTower: visionTower, tokenizer: tokenizer, settings: settings,
                                 seed: seed, precision: precision)
    }
}
