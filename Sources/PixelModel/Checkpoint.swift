import Foundation
import PixelTensor

// PixelLM weights as safetensors with the released names (a single `model.safetensors`, or shards with
// `model.safetensors.index.json`), f32 / f16 / bf16 on disk, fp32 in memory; and the CLIP vision tower as its
// own HF checkpoint ("vision_model...."), the way the released model is distributed (hf_model has no vision
// tower; CLIP-L/14-336 comes from OpenAI's checkpoint).
//
// Loading is strict and checks in this order, so that an error says what is really wrong:
//   1. the config against the weight shapes (hidden size, layers, vocab, ...): CheckpointConfigMismatch names
//      the field, the config's value and the checkpoint's value;
//   2. the names: every expected name present with its shape and no name left over, else WeightMismatch lists
//      them. `rotary_emb.inv_freq` buffers (written by old transformers versions) are ignored.
// Tensors are converted straight from the mapped files into the model's storage (no second copy of the
// checkpoint in memory).

/// The config and the checkpoint disagree about a size.
public struct CheckpointConfigMismatch: Error, CustomStringConvertible {
    /// The config field (config.json name), e.g. "hidden_size".
    public let field: String
    public let configValue: String
    public let checkpointValue: String
    /// The tensor the checkpoint value was read from.
    public let evidence: String
    public let source: String
    public var description: String {
        "\(source) does not match the config: \(field) is \(configValue) in the config but \(checkpointValue) in the checkpoint (\(evidence))"
    }
}

/// What a load did.
public struct CheckpointLoadReport {
    /// Tensors copied into the model.
    public var loaded = 0
    /// Names skipped on purpose (rotary_emb.inv_freq; for CLIP the text tower and position_ids).
    public var ignored: [String] = []
    /// On-disk dtypes seen.
    public var dtypes: Set<String> = []
    /// Whether the PixelLM checkpoint also held the vision tower ("model.vision_tower.vision_tower....") and
    /// it was loaded.
    public var visionLoaded = false
    /// LLaMA matrices kept in bf16, in place in the mapped file (`keepStoredBF16`).
    public var keptBF16 = 0
    /// CLIP encoder matrices kept in bf16 likewise (the vision tower inside a PixelLM checkpoint).
    public var keptCLIPBF16 = 0
    /// Frozen LLaMA matrices `keepStoredBF16` asked for that the files store in another dtype (F32, F16): copied to
    /// fp32 instead of mapped, by dtype name.
    public var frozenCopied: [String: Int] = [:]
}

public enum PixelLMCheckpoint {
    /// Name suffixes skipped when loading.
    public static let ignoredSuffixes = ["rotary_emb.inv_freq"]
    public static let configName = "config.json"

    // MARK: save

    /// Writes the PixelLM weights (released names, no CLIP unless `includeVision`) and config.json to
    /// `directory`: one `model.safetensors` when everything fits in `maxShardBytes`, else shards and the index.
    @discardableResult
    public static func save(_ model: PixelLMForCausalLM, to directory: String, dtype: DType = .f32,
                            maxShardBytes: Int = 5 << 30, includeVision: Bool = false) throws -> [String] {
        var tensors: [String: Tensor] = [:]
        for (n, t) in model.checkpointTensors(includeVision: includeVision) { tensors[n] = t }
        let files = try Safetensors.writeSharded(tensors, to: directory, maxShardBytes: maxShardBytes, dtype: dtype)
        try writeConfig(model.config, to: directory)
        return files + [configName]
    }

    /// Writes the CLIP vision tower as an HF CLIPVisionModel checkpoint ("vision_model...." names).
    @discardableResult
    public static func saveVision(_ model: PixelLMForCausalLM, to directory: String, dtype: DType = .f32,
                                  maxShardBytes: Int = 5 << 30) throws -> [String] {
        var tensors: [String: Tensor] = [:]
        for (n, t) in model.visionNamedTensors() { tensors[n] = t }
        return try Safetensors.writeSharded(tensors, to: directory, maxShardBytes: maxShardBytes, dtype: dtype)
    }

    public static func writeConfig(_ config: PixelLMConfig, to directory: String) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try enc.encode(config)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try data.write(to: URL(fileURLWithPath: (directory as NSString).appendingPathComponent(configName)), options: .atomic)
    }

    // MARK: load

    /// Loads the PixelLM weights from a checkpoint directory into `model` (strict, see the file comment).
    /// CLIP is loaded too when the checkpoint holds it under "model.vision_tower.vision_tower."; otherwise
    /// load it with `loadVision`.
    @discardableResult
    public static func load(_ model: PixelLMForCausalLM, from directory: String) throws -> CheckpointLoadReport {
        let dir = try SafetensorsDirectory(directory)
        var report = CheckpointLoadReport()
        var shapes: [String: [Int]] = [:]
        for n in dir.names {
            if ignoredSuffixes.contains(where: { n.hasSuffix($0) }) { report.ignored.append(n); continue }
            shapes[n] = try dir.info(n).shape
        }
        try checkConfig(model.config, segTokenIds: model.segTokenIds, shapes: shapes, source: directory)
        let vp = PixelLMForCausalLM.visionPrefix + "."
        let hasVision = shapes.keys.contains { $0.hasPrefix(vp) }
        if hasVision {
            var vshapes: [String: [Int]] = [:]
            for (n, s) in shapes where n.hasPrefix(vp) { vshapes[String(n.dropFirst(vp.count))] = s }
            try checkVisionConfig(model.config.visionConfig, shapes: vshapes, source: directory + " (vision tower)")
        }
        let expected = model.checkpointTensors(includeVision: hasVision)
        if let err = mismatch(expected: expected, found: shapes) { throw err }
        try copy(expected, from: dir, report: &report)
        report.visionLoaded = hasVision
        return report
    }

    /// Loads CLIP from an HF checkpoint directory: a CLIPVisionModel ("vision_model....") or a whole CLIPModel,
    /// whose text tower, projections and logit_scale are ignored, as is the integer `position_ids` buffer.
    /// Everything under "vision_model." is strict.
    @discardableResult
    public static func loadVision(_ model: PixelLMForCausalLM, from directory: String) throws -> CheckpointLoadReport {
        let dir = try SafetensorsDirectory(directory)
        var report = CheckpointLoadReport()
        var shapes: [String: [Int]] = [:]
        for n in dir.names {
            if !n.hasPrefix("vision_model.") || n == "vision_model.embeddings.position_ids" { report.ignored.append(n); continue }
            shapes[n] = try dir.info(n).shape
        }
        try checkVisionConfig(model.config.visionConfig, shapes: shapes, source: directory)
        let expected = model.visionNamedTensors()
        if let err = mismatch(expected: expected, found: shapes) { throw err }
        try copy(expected, from: dir, report: &report)
        return report
    }

    /// Reads config.json of a checkpoint directory, builds an uninitialised model and loads it (plus CLIP
    /// from `visionDirectory` when given).
    public static func open(_ directory: String, visionDirectory: String? = nil, segTokenIds: [Int]? = nil) throws -> PixelLMForCausalLM {
        let config = try PixelLMConfig.load((directory as NSString).appendingPathComponent(configName))
        var rng = RNG(seed: 0)
        let model = PixelLMForCausalLM(config: config, segTokenIds: segTokenIds, skeleton: true, rng: &rng)
        try load(model, from: directory)
        if let visionDirectory { try loadVision(model, from: visionDirectory) }
        return model
    }

    // MARK: checks

    /// The strict name / shape comparison; nil when everything matches.
    public static func mismatch(expected: [(String, Tensor)], found: [String: [Int]]) -> WeightMismatch? {
        var err = WeightMismatch()
        let names = Set(expected.map { $0.0 })
        for (n, t) in expected {
            guard let s = found[n] else { err.missing.append(n); continue }
            if s != t.shape { err.wrongShape.append((n, t.shape, s)) }
        }
        for n in found.keys where !names.contains(n) { err.unexpected.append(n) }
        return err.missing.isEmpty && err.unexpected.isEmpty && err.wrongShape.isEmpty ? nil : err
    }

    /// Refuses a checkpoint whose shapes say the model has other sizes than `config` (first field that
    /// differs, in the order hidden_size, num_hidden_layers, vocab_size, intermediate_size,
    /// num_key_value_heads, mm_hidden_size, out_dim, image_feature_scale_num, decoder_config.prompt_embed_dim,
    /// token_fusion, seg_token_num (learned fusion only: the released fusion has no weight that shows N),
    /// seg_token_ids). Fields whose tensors are absent are left to the name check.
    public static func checkConfig(_ config: PixelLMConfig, segTokenIds: [Int], shapes: [String: [Int]], source: String) throws {
        func fail(_ field: String, _ c: Any, _ k: Any, _ evidence: String) throws {
            throw CheckpointConfigMismatch(field: field, configValue: "\(c)", checkpointValue: "\(k)", evidence: evidence, source: source)
        }
        func ev(_ n: String) -> String { "\(n) \(describe(shapes[n] ?? []))" }
        let embed = "model.embed_tokens.weight"
        if let s = shapes[embed], s.count == 2, s[1] != config.hiddenSize { try fail("hidden_size", config.hiddenSize, s[1], ev(embed)) }
        var layerIds = Set<Int>()
        for n in shapes.keys where n.hasPrefix("model.layers.") {
            if let i = Int(n.dropFirst("model.layers.".count).prefix { $0 != "." }) { layerIds.insert(i) }
        }
        if !layerIds.isEmpty && layerIds.count != config.numHiddenLayers {
            try fail("num_hidden_layers", config.numHiddenLayers, layerIds.count,
                     "model.layers.\(layerIds.min()!)...\(layerIds.max()!)")
        }
        if let s = shapes[embed], s.count == 2, s[0] != config.vocabSize { try fail("vocab_size", config.vocabSize, s[0], ev(embed)) }
        if let s = shapes["lm_head.weight"], s.count == 2, s[0] != config.vocabSize {
            try fail("vocab_size", config.vocabSize, s[0], ev("lm_head.weight"))
        }
        let gate = "model.layers.0.mlp.gate_proj.weight"
        if let s = shapes[gate], s.count == 2, s[0] != config.intermediateSize {
            try fail("intermediate_size", config.intermediateSize, s[0], ev(gate))
        }
        let kProj = "model.layers.0.self_attn.k_proj.weight"
        if let s = shapes[kProj], s.count == 2, s[0] != config.numKeyValueHeads * config.headDim {
            try fail("num_key_value_heads", config.numKeyValueHeads, "\(s[0]) / head_dim \(config.headDim)", ev(kProj))
        }
        let proj = "model.mm_projector.0.weight"
        if let s = shapes[proj], s.count == 2, s[1] != config.mmHiddenSize { try fail("mm_hidden_size", config.mmHiddenSize, s[1], ev(proj)) }
        let fcs = "model.text_hidden_fcs.0.2.weight"
        if let s = shapes[fcs], s.count == 2, s[0] != config.outDim { try fail("out_dim", config.outDim, s[0], ev(fcs)) }
        let level = "model.mask_decoder.level_embed.weight"
        if let s = shapes[level], s.count == 2 {
            if s[0] != config.imageFeatureScaleNum { try fail("image_feature_scale_num", config.imageFeatureScaleNum, s[0], ev(level)) }
            if s[1] != config.decoderConfig.promptEmbedDim {
                try fail("decoder_config.prompt_embed_dim", config.decoderConfig.promptEmbedDim, s[1], ev(level))
            }
        }
        let fusion = "model.token_fusion.proj.weight"
        let learned = config.tokenFusion == "learned"
        if !shapes.isEmpty && (shapes[fusion] != nil) != learned {
            try fail("token_fusion", "\"\(config.tokenFusion)\"", learned ? "\"released\" (no token_fusion weights)" : "\"learned\"",
                     learned ? "\(fusion) absent" : ev(fusion))
        }
        if learned, let s = shapes[fusion], s.count == 2, s[1] != config.segTokenNum * config.outDim {
            try fail("seg_token_num", config.segTokenNum, "\(s[1]) / out_dim \(config.outDim)", ev(fusion))
        }
        // The SEG ids are rows of the vocabulary: the vocab_size check above covers the released layout (the
        // N*L SEG tokens are the last rows) and the model refuses SEG ids outside its vocabulary; this guards a
        // model whose ids and config disagree.
        if let s = shapes[embed], s.count == 2, let bad = segTokenIds.first(where: { $0 >= s[0] }) {
            try fail("seg_token_ids", "\(segTokenIds.count) SEG ids up to \(segTokenIds.max()!)", "a vocabulary of \(s[0]) rows",
                     "SEG id \(bad) has no row in \(ev(embed))")
        }
    }

    /// The same for CLIP ("vision_model...." names): vision_config.hidden_size, num_hidden_layers, image_size,
    /// patch_size, intermediate_size.
    public static func checkVisionConfig(_ vc: CLIPVisionConfig, shapes: [String: [Int]], source: String) throws {
        func fail(_ field: String, _ c: Any, _ k: Any, _ evidence: String) throws {
            throw CheckpointConfigMismatch(field: "vision_config." + field, configValue: "\(c)", checkpointValue: "\(k)",
                                           evidence: evidence, source: source)
        }
        let patch = "vision_model.embeddings.patch_embedding.weight"
        if let s = shapes[patch], s.count == 4 {
            if s[0] != vc.hiddenSize { try fail("hidden_size", vc.hiddenSize, s[0], "\(patch) \(describe(s))") }
            if s[2] != vc.patchSize { try fail("patch_size", vc.patchSize, s[2], "\(patch) \(describe(s))") }
        }
        var layerIds = Set<Int>()
        let lp = "vision_model.encoder.layers."
        for n in shapes.keys where n.hasPrefix(lp) {
            if let i = Int(n.dropFirst(lp.count).prefix { $0 != "." }) { layerIds.insert(i) }
        }
        if !layerIds.isEmpty && layerIds.count != vc.numHiddenLayers {
            try fail("num_hidden_layers", vc.numHiddenLayers, layerIds.count, "\(lp)\(layerIds.min()!)...\(layerIds.max()!)")
        }
        let pos = "vision_model.embeddings.position_embedding.weight"
        let g0 = vc.imageSize / vc.patchSize
        if let s = shapes[pos], s.count == 2, s[0] != g0 * g0 + 1 {
            try fail("image_size", vc.imageSize, "a table of \(s[0]) rows", "\(pos) \(describe(s)); \(vc.imageSize) px needs \(g0 * g0 + 1)")
        }
        let fc1 = "vision_model.encoder.layers.0.mlp.fc1.weight"
        if let s = shapes[fc1], s.count == 2, s[0] != vc.intermediateSize { try fail("intermediate_size", vc.intermediateSize, s[0], "\(fc1) \(describe(s))") }
    }

    /// Copies (converting to fp32) every expected tensor from the mapped files into the model's storage.
    static func copy(_ expected: [(String, Tensor)], from dir: SafetensorsDirectory, report: inout CheckpointLoadReport) throws {
        for (name, t) in expected {
            let e = try dir.info(name)
            guard e.dtype.isFloatReadable else {
                throw SafetensorsError(.unsupportedDType, file: dir.directory, key: name, "dtype \(e.dtype.name): weights must be F32, F16 or BF16")
            }
            precondition(t.isContiguous && t.count == e.count, "checkpoint copy: \(name) is not a contiguous \(describe(e.shape)) tensor")
            if e.count > 0 {
                try dir.file(for: name).withRawBytes(name) { Convert.toF32(e.dtype, $0.baseAddress!, t.ptr, count: e.count) }
            }
            report.dtypes.insert(e.dtype.name)
            report.loaded += 1
        }
    }
}
