import Foundation
import PixelTensor

// User checkpoint directories for inference (`pixellm forward` / `pixellm chat`):
// * a PixelLM `hf_model` directory: config.json plus weights in any format `WeightSources.open` reads
//   (model.safetensors, sharded safetensors + index, pytorch_model.bin, sharded .bin + index), stored in
//   f32, f16 or bf16, with the released names (see PixelLM.swift); the tokenizer files are read by the caller
//   (PixelText), which passes the SEG ids;
// * a LLaVA base directory is refused here: LLaVABase.swift initialises PixelLM from it;
// * the CLIP vision tower: inside the PixelLM checkpoint ("model.vision_tower.vision_tower.vision_model...."),
//   else a separate HF CLIP directory (openai/clip-vit-large-patch14-336 layout: "vision_model...." plus a
//   text tower, projections and logit_scale, which are ignored), given explicitly or as config.json's
//   `mm_vision_tower` when that is a local directory.
// Loading is strict (every expected name with its shape, nothing unexpected), after the config/shape check
// of PixelLMCheckpoint.checkConfig, so a wrong directory is an error that names the field or the tensors.
//
// Precision `.bf16` keeps the 7 linear weights of every LLaMA decoder layer and the lm_head in bf16
// (Linear.bf16Weight, multiplied by linearBF16, in place in the mapped file when it is stored as bf16); everything
// else (CLIP, embeddings, norms, projectors, decoder) is fp32. For the 7B model that is 12.9 GB + ~2.5 GB
// instead of ~28 GB. Such a model is for inference only (linearBF16 refuses inputs that require grad).

/// Weights kept in memory as fp32 (exact) or with the LLaMA layer matrices in bf16 (inference).
public enum WeightPrecision: String, Sendable, CaseIterable {
    case f32, bf16
}

/// A checkpoint directory that cannot be used, with the file and what is wrong.
public struct CheckpointDirectoryError: Error, CustomStringConvertible {
    public let file: String
    public let message: String
    public init(file: String, _ message: String) { self.file = file; self.message = message }
    public var description: String { "\(file): \(message)" }
}

public enum PixelLMModelDirectory {
    /// config.json of a model directory, and its `mm_vision_tower` entry (if any).
    /// A released hf_model config.json has no `vision_config`: then the CLIP sizes come from the vision tower's own
    /// config.json, as the released code reads them from the tower (`visionTower`, else a local mm_vision_tower;
    /// CLIP-L/14-336 when neither has one). The config is validated after that.
    public static func readConfig(_ directory: String, visionTower: String? = nil) throws -> (config: PixelLMConfig, mmVisionTower: String?) {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDir), isDir.boolValue else {
            throw CheckpointDirectoryError(file: directory, "model directory does not exist")
        }
        let path = (directory as NSString).appendingPathComponent(PixelLMCheckpoint.configName)
        var config = try PixelLMConfig.load(path, validate: false)
        var tower: String?
        var declaresVision = false
        if let data = FileManager.default.contents(atPath: path),
           let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] {
            declaresVision = obj["vision_config"] != nil
            tower = obj["mm_vision_tower"] as? String
        }
        var source = path
        if !declaresVision, let t = visionTower ?? tower.flatMap({ localVisionTower($0, modelDirectory: directory) }) {
            var dir: ObjCBool = false
            if FileManager.default.fileExists(atPath: t, isDirectory: &dir), dir.boolValue {
                config.visionConfig = try LLaVABase.visionConfig(t)
                source += " with the vision config of " + t
            }
        }
        try config.validate(file: source)
        return (config, tower)
    }

    /// config.json's `mm_vision_tower` as a local directory: an absolute path, or a path relative to the model
    /// directory (never to the current directory, so the result does not depend on where the command runs);
    /// nil for anything else (a hub name such as "openai/clip-vit-large-patch14-336").
    public static func localVisionTower(_ tower: String, modelDirectory: String) -> String? {
        let path = tower.hasPrefix("/") ? tower : (modelDirectory as NSString).appendingPathComponent(tower)
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &isDir) && isDir.boolValue ? path : nil
    }

    /// The LLaMA linear layers that `.bf16` keeps in bf16, by checkpoint name.
    public static func bf16Linears(_ model: PixelLMForCausalLM) -> [(String, Linear)] {
        var out: [(String, Linear)] = []
        for (i, l) in model.llm.model.layers.enumerated() {
            let p = "model.layers.\(i)."
            out += [(p + "self_attn.q_proj.weight", l.selfAttn.qProj), (p + "self_attn.k_proj.weight", l.selfAttn.kProj),
                    (p + "self_attn.v_proj.weight", l.selfAttn.vProj), (p + "self_attn.o_proj.weight", l.selfAttn.oProj),
                    (p + "mlp.gate_proj.weight", l.mlp.gateProj), (p + "mlp.up_proj.weight", l.mlp.upProj),
                    (p + "mlp.down_proj.weight", l.mlp.downProj)]
        }
        return out
    }

    /// What precision `.bf16` keeps in bf16 (inference): `bf16Linears` and the untied lm_head, whose 32k x 4096
    /// fp32 matrix would otherwise be read at 4 bytes a weight for every generated token (a seventh of a 7B decode
    /// step on AVX2: 0.15 of 1.06 s). CLIP's encoder matrices (`clipLinears`) join them when the files store them in
    /// bf16 (used in place: 0.6 GB mapped instead of 1.2 GB of fp32 at CLIP-L), never rounded from fp32.
    public static func bf16InferenceLinears(_ model: PixelLMForCausalLM) -> [(String, Linear)] {
        bf16Linears(model) + (model.llm.lmHead.map { [("lm_head.weight", $0)] } ?? [])
    }

    /// CLIP's encoder matrices that `.bf16` keeps in place: those `source` stores in bf16, by the source's names
    /// (`prefix` + the vision tower's own names).
    static func storedBF16CLIP(_ model: PixelLMForCausalLM, _ source: any WeightSource, prefix: String) throws -> [String: Linear] {
        try storedInBF16(clipLinears(model).map { (prefix + String($0.0.dropFirst(PixelLMForCausalLM.visionPrefix.count + 1)), $0.1) }, source)
    }

    /// Those of `linears` (by the source's names) that `source` stores in bf16.
    static func storedInBF16(_ linears: [(String, Linear)], _ source: any WeightSource) throws -> [String: Linear] {
        var out: [String: Linear] = [:]
        for (n, lin) in linears where source.names.contains(n) {
            if try source.info(n).dtype == .bf16 { out[n] = lin }
        }
        return out
    }

    /// Builds the model from `directory`'s config.json and loads everything (see the file comment).
    /// - visionTower: a CLIP directory; nil uses the one inside the checkpoint, else config's
    ///   `mm_vision_tower` when it is a local directory.
    /// - segTokenIds: from the tokenizer (nil: the last N*L vocabulary rows).
    /// - keepStoredBF16: training with frozen LLaMA matrices: those of the 7 matrices per layer (bf16Linears names) it
    ///   accepts that the files store in bf16 stay bf16, used in place from the mapped file (never rounded: a matrix
    ///   stored in f32 or f16 is loaded as fp32).
    public static func open(_ directory: String, visionTower: String? = nil, segTokenIds: [Int]? = nil,
                            precision: WeightPrecision = .f32, keepStoredBF16: ((String) -> Bool)? = nil)
        throws -> (model: PixelLMForCausalLM, report: CheckpointLoadReport) {
        // a LLaVA base first: its config.json (no PixelLM fields) would otherwise fail with a less useful message
        if let s = try? WeightSources.open(directory) { try refuseLLaVA(s, directory) }
        let (config, mmTower) = try readConfig(directory, visionTower: visionTower)
        if let seg = segTokenIds {
            guard seg.count == config.segTokensPerTarget else {
                throw CheckpointDirectoryError(file: directory, "the tokenizer has \(seg.count) SEG tokens but the config needs seg_token_num x image_feature_scale_num = \(config.segTokensPerTarget)")
            }
            if let bad = seg.first(where: { $0 < 0 || $0 >= config.vocabSize }) {
                throw CheckpointDirectoryError(file: directory, "SEG token id \(bad) from the tokenizer is outside vocab_size \(config.vocabSize)")
            }
        }
        let source = try WeightSources.open(directory)
        try refuseLLaVA(source, directory)
        let hasVision = source.names.contains { $0.hasPrefix(PixelLMForCausalLM.visionPrefix + ".") }
        var visionDir = visionTower
        if !hasVision && visionDir == nil {
            if let t = mmTower.flatMap({ localVisionTower($0, modelDirectory: directory) }) {
                visionDir = t
            } else {
                throw CheckpointDirectoryError(file: directory, "the checkpoint has no CLIP vision tower and none was given: pass --vision-tower DIR"
                    + (mmTower.map { " (config.json's mm_vision_tower '\($0)' is not a directory: an absolute path or one relative to the model directory)" } ?? ""))
            }
        }
        var rng = RNG(seed: 0)
        let model = PixelLMForCausalLM(config: config, segTokenIds: segTokenIds, skeleton: true, rng: &rng)
        var report = try load(model, from: source, name: directory, precision: precision, keepStoredBF16: keepStoredBF16)
        if let visionDir, !hasVision {
            let r = try loadVision(model, from: try WeightSources.open(visionDir), name: visionDir, precision: precision)
            report.loaded += r.loaded
            report.ignored += r.ignored
            report.dtypes.formUnion(r.dtypes)
        }
        return (model, report)
    }

    /// Loads the PixelLM checkpoint (CLIP too when it is inside) from any weight source, strictly.
    @discardableResult
    public static func load(_ model: PixelLMForCausalLM, from source: any WeightSource, name: String,
                            precision: WeightPrecision = .f32, keepStoredBF16: ((String) -> Bool)? = nil) throws -> CheckpointLoadReport {
        var report = CheckpointLoadReport()
        var shapes: [String: [Int]] = [:]
        for n in source.names {
            if PixelLMCheckpoint.ignoredSuffixes.contains(where: { n.hasSuffix($0) }) { report.ignored.append(n); continue }
            if n.hasPrefix(PixelLMForCausalLM.visionPrefix + ".") && n.hasSuffix("position_ids") { report.ignored.append(n); continue }
            shapes[n] = try source.info(n).shape
        }
        try refuseLLaVA(source, name)
        try PixelLMCheckpoint.checkConfig(model.config, segTokenIds: model.segTokenIds, shapes: shapes, source: name)
        let vp = PixelLMForCausalLM.visionPrefix + "."
        let hasVision = shapes.keys.contains { $0.hasPrefix(vp) }
        if hasVision {
            var vshapes: [String: [Int]] = [:]
            for (n, s) in shapes where n.hasPrefix(vp) { vshapes[String(n.dropFirst(vp.count))] = s }
            try PixelLMCheckpoint.checkVisionConfig(model.config.visionConfig, shapes: vshapes, source: name + " (vision tower)")
        }
        let expected = model.checkpointTensors(includeVision: hasVision)
        if let err = PixelLMCheckpoint.mismatch(expected: expected, found: shapes) { throw err }
        var bf16 = precision == .bf16 ? Dictionary(uniqueKeysWithValues: bf16InferenceLinears(model)) : [:]
        if precision == .bf16 && hasVision {
            bf16.merge(try storedBF16CLIP(model, source, prefix: PixelLMForCausalLM.visionPrefix + "."), uniquingKeysWith: { a, _ in a })
        }
        let stored = try storedBF16(model, source, keepStoredBF16)
        for (n, t) in expected {
            if let lin = bf16[n] ?? stored[n] {
                try keepBF16(n, in: lin, from: source, name: name, report: &report)
            } else {
                try copy(n, into: t, from: source, name: name, report: &report)
            }
        }
        report.visionLoaded = hasVision
        report.keptBF16 = stored.keys.filter { !$0.hasPrefix(PixelLMForCausalLM.visionPrefix) }.count
        report.keptCLIPBF16 = stored.count - report.keptBF16
        report.frozenCopied = try frozenCopied(model, source, keepStoredBF16)
        if precision == .bf16 || !stored.isEmpty {
            CachingAllocator.shared.emptyCache()
            MappedFiles.releaseResidentPages()
        }
        return report
    }

    /// CLIP's encoder matrices under the PixelLM checkpoint's vision prefix (`q/k/v/out_proj`, `fc1`, `fc2` of every
    /// layer): training keeps them mapped too when they are frozen and stored in bf16 (1.2 GB of fp32 at CLIP-L).
    public static func clipLinears(_ model: PixelLMForCausalLM) -> [(String, Linear)] {
        var out: [(String, Linear)] = []
        for (i, l) in model.visionTower.layers.enumerated() {
            let p = PixelLMForCausalLM.visionPrefix + ".vision_model.encoder.layers.\(i)."
            out += [(p + "self_attn.q_proj.weight", l.selfAttn.qProj), (p + "self_attn.k_proj.weight", l.selfAttn.kProj),
                    (p + "self_attn.v_proj.weight", l.selfAttn.vProj), (p + "self_attn.out_proj.weight", l.selfAttn.outProj),
                    (p + "mlp.fc1.weight", l.mlp.fc1), (p + "mlp.fc2.weight", l.mlp.fc2)]
        }
        return out
    }

    /// The LLaMA and CLIP matrices `keep` accepts whose files store them in bf16 (see `open`).
    static func storedBF16(_ model: PixelLMForCausalLM, _ source: any WeightSource, _ keep: ((String) -> Bool)?) throws -> [String: Linear] {
        guard let keep else { return [:] }
        return try storedInBF16((bf16Linears(model) + clipLinears(model)).filter { keep($0.0) }, source)
    }

    /// The LLaMA matrices `keep` accepts that the files store in another dtype than bf16, counted by dtype name.
    static func frozenCopied(_ model: PixelLMForCausalLM, _ source: any WeightSource, _ keep: ((String) -> Bool)?) throws -> [String: Int] {
        guard let keep else { return [:] }
        var out: [String: Int] = [:]
        for (n, _) in bf16Linears(model) where keep(n) && source.names.contains(n) {
            let d = try source.info(n).dtype
            if d != .bf16 { out[d.name, default: 0] += 1 }
        }
        return out
    }

    /// Loads CLIP ("vision_model....") from a CLIPVisionModel or CLIPModel checkpoint; the text tower,
    /// projections, logit_scale and position_ids are ignored (reported). `.bf16` keeps the encoder matrices the
    /// files store in bf16 in place, as `load` does (`storedBF16CLIP`).
    @discardableResult
    public static func loadVision(_ model: PixelLMForCausalLM, from source: any WeightSource, name: String,
                                  precision: WeightPrecision = .f32) throws -> CheckpointLoadReport {
        var report = CheckpointLoadReport()
        var shapes: [String: [Int]] = [:]
        for n in source.names {
            if !n.hasPrefix("vision_model.") || n.hasSuffix("position_ids") { report.ignored.append(n); continue }
            shapes[n] = try source.info(n).shape
        }
        if shapes.isEmpty {
            throw CheckpointDirectoryError(file: name, "no CLIP vision weights (no tensor named vision_model.*) in this checkpoint")
        }
        try PixelLMCheckpoint.checkVisionConfig(model.config.visionConfig, shapes: shapes, source: name)
        let expected = model.visionNamedTensors()
        if let err = PixelLMCheckpoint.mismatch(expected: expected, found: shapes) { throw err }
        let bf16 = precision == .bf16 ? try storedBF16CLIP(model, source, prefix: "") : [:]
        for (n, t) in expected {
            if let lin = bf16[n] {
                try keepBF16(n, in: lin, from: source, name: name, report: &report)
            } else {
                try copy(n, into: t, from: source, name: name, report: &report)
            }
        }
        return report
    }

    /// A LLaVA base (not PixelLM) checkpoint has a single-Linear projector (or none) and no decoder: say so, and
    /// how to use it, instead of listing hundreds of missing names. `LLaVABase.initialize(fromLLaVA:...)` builds
    /// PixelLM from it (new projectors, decoder and SEG rows), as `pixellm forward` / `chat` do for such a directory.
    static func refuseLLaVA(_ source: any WeightSource, _ name: String) throws {
        let singleLinear = source.contains("model.mm_projector.weight") && !source.contains("model.mm_projector.0.weight")
        if singleLinear || LLaVABase.isLLaVA(source) {
            throw CheckpointDirectoryError(file: name, "this is a LLaVA base checkpoint ("
                + (singleLinear ? "a single-Linear model.mm_projector.weight, " : "") + "no PixelLM decoder weights), not a PixelLM hf_model: "
                + "initialise PixelLM from it with LLaVABase.initialize(fromLLaVA:) (pixellm forward / chat do this for a LLaVA directory)")
        }
    }

    static func checkFloat(_ d: DType, _ key: String, _ name: String) throws {
        guard d.isFloatReadable else {
            throw CheckpointDirectoryError(file: name, "'\(key)': dtype \(d.name) is not supported for weights (F32, F16 or BF16)")
        }
    }

    /// Tensor `n` as `lin`'s bf16 weight (in place from the mapped file when stored in bf16, else rounded), its fp32
    /// weight emptied.
    static func keepBF16(_ n: String, in lin: Linear, from source: any WeightSource, name: String, report: inout CheckpointLoadReport) throws {
        let info = try source.info(n)
        try checkFloat(info.dtype, n, name)
        lin.bf16Weight = try source.bf16(n)
        lin.weight = Tensor(empty: [info.shape[0], 0])
        report.dtypes.insert(info.dtype.name)
        report.loaded += 1
    }

    static func copy(_ n: String, into t: Tensor, from source: any WeightSource, name: String, report: inout CheckpointLoadReport) throws {
        let info = try source.info(n)
        try checkFloat(info.dtype, n, name)
        let v = try source.tensor(n).contiguousData()
        precondition(t.isContiguous && t.count == v.count, "checkpoint copy: \(n) is not a contiguous \(describe(info.shape)) tensor")
        if v.count > 0 { t.ptr.update(from: v.ptr, count: v.count) }
        report.dtypes.insert(info.dtype.name)
        report.loaded += 1
    }

    // MARK: - benchmark weights

    /// Benchmark only (no meaning, not a trained or HF-like init): a model with deterministic pseudo-random
    /// weights made by hashing the element index, fast enough for the 7B shape. The LLaMA layer matrices are
    /// written straight into bf16 when `precision` is `.bf16` (the fp32 skeleton pages are never touched).
    /// Values: norms 1, biases 0, other tensors uniform in +-sqrt(3 / fan_in) (unit-variance activations).
    public static func hashedModel(config: PixelLMConfig, segTokenIds: [Int]? = nil, precision: WeightPrecision, seed: UInt64 = 1) -> PixelLMForCausalLM {
        var rng = RNG(seed: seed)
        let model = PixelLMForCausalLM(config: config, segTokenIds: segTokenIds, skeleton: true, rng: &rng)
        let bf16 = precision == .bf16 ? Dictionary(uniqueKeysWithValues: bf16InferenceLinears(model)) : [:]
        for (n, t, rule) in hashedRules(model, seed: seed) {
            if let lin = bf16[n], case .uniform(let key, let a) = rule {
                let shape = t.shape
                let w = UnsafeMutablePointer<UInt16>.allocate(capacity: t.count)
                defer { w.deallocate() }
                fillHashed(count: t.count, key: key, scale: a) { i, x in w[i] = Convert.bf16(x) }
                lin.bf16Weight = BF16Tensor(bits: Array(UnsafeBufferPointer(start: w, count: t.count)), shape: shape)
                lin.weight = Tensor(empty: [shape[0], 0])
                continue
            }
            fill(t, rule)
        }
        CachingAllocator.shared.emptyCache()
        return model
    }

    /// How `hashedModel` fills a tensor: a constant (norms 1, biases 0), the hashed uniform stream of a key, or
    /// the value the model drew itself (the decoder's random positional buffers).
    enum HashedRule { case constant(Float), uniform(key: UInt64, scale: Float), asDrawn }

    /// Every tensor of `model` (allNamedTensors order, which fixes the keys) with its rule.
    static func hashedRules(_ model: PixelLMForCausalLM, seed: UInt64) -> [(String, Tensor, HashedRule)] {
        var k: UInt64 = seed &* 0x9E37_79B9_7F4A_7C15
        var out: [(String, Tensor, HashedRule)] = []
        for (n, t) in model.allNamedTensors() {
            k &+= 0x1000_0000_0001
            let fanIn = t.rank >= 2 ? t.count / t.dim(0) : max(t.count, 1)
            let a = (3 / Float(max(fanIn, 1))).squareRoot()
            if PositionEmbeddingRandom.isBuffer(n) { out.append((n, t, .asDrawn)) }
            else if n.hasSuffix("bias") { out.append((n, t, .constant(0))) }
            else if n.contains("norm") && n.hasSuffix("weight") { out.append((n, t, .constant(1))) }
            else { out.append((n, t, .uniform(key: k, scale: a))) }
        }
        return out
    }

    static func fill(_ t: Tensor, _ rule: HashedRule) {
        let p = t.ptr
        switch rule {
        case .asDrawn: break
        case .constant(let v): p.update(repeating: v, count: t.count)
        case .uniform(let key, let a): fillHashed(p, count: t.count, key: key, scale: a)
        }
    }

    /// `fillHashed` into fp32 memory, in 1M-element pieces over the cores (the values do not depend on the split).
    static func fillHashed(_ p: UnsafeMutablePointer<Float>, count: Int, key: UInt64, scale: Float) {
        let piece = 1 << 20, pieces = (count + piece - 1) / piece
        DispatchQueue.concurrentPerform(iterations: pieces) { c in
            let start = c * piece, end = min(count, start + piece)
            for i in start..<end { p[i] = hashed(i, key: key, scale: scale) }
        }
    }

    /// Writes the weights `hashedModel(config:, precision: .f32, seed:)` holds as a checkpoint directory (config.json
    /// and safetensors, sharded with an index above `maxShardBytes`; CLIP inside under PixelLM's vision prefix when
    /// `includeVision`), one tensor at a time: the fp32 skeleton is never touched, so a 7B directory is written in
    /// the memory of its largest tensor. `dtype` bf16 / f16 rounds every tensor to nearest even on the way out.
    /// Returns the file names written.
    @discardableResult
    public static func writeHashed(config: PixelLMConfig, segTokenIds: [Int]? = nil, seed: UInt64, to directory: String,
                                   dtype: DType, includeVision: Bool = true, maxShardBytes: Int = 5 << 30) throws -> [String] {
        var rng = RNG(seed: seed)
        let model = PixelLMForCausalLM(config: config, segTokenIds: segTokenIds, skeleton: true, rng: &rng)
        var byName: [String: (Tensor, HashedRule)] = [:]
        for (n, t, r) in hashedRules(model, seed: seed) { byName[n] = (t, r) }
        // checkpoint names: the PixelLM names, and CLIP's under the vision prefix
        var shapes: [String: [Int]] = [:], source: [String: String] = [:]
        let vp = PixelLMForCausalLM.visionPrefix + "."
        for (n, t) in model.checkpointTensors(includeVision: includeVision) {
            shapes[n] = t.shape
            source[n] = n.hasPrefix(vp) ? String(n.dropFirst(vp.count)) : n
        }
        let files = try Safetensors.writeSharded(shapes: shapes, to: directory, maxShardBytes: maxShardBytes, dtype: dtype) { name in
            let (skeleton, rule) = byName[source[name]!]!
            if case .asDrawn = rule { return skeleton }
            let t = Tensor(empty: skeleton.shape)
            fill(t, rule)
            return t
        }
        try PixelLMCheckpoint.writeConfig(config, to: directory)
        return files + [PixelLMCheckpoint.configName]
    }

    @inline(__always)
    static func fillHashed(count: Int, key: UInt64, scale: Float, _ put: (Int, Float) -> Void) {
        for i in 0..<count { put(i, hashed(i, key: key, scale: scale)) }
    }

    /// Element `i` of the hashed uniform stream `key` (splitmix64 of i + key), in +-scale.
    @inline(__always)
    static func hashed(_ i: Int, key: UInt64, scale: Float) -> Float {
        var z = UInt64(i) &+ key
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return (Float(z >> 40) * (2.0 / 16_777_216.0) - 1) * scale
    }
}
