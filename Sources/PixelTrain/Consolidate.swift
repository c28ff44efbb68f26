import Foundation
import PixelModel
import PixelTensor

/// `pixellm consolidate`: a training checkpoint (every rank's slices) -> full weights in HF layout with the released
/// PixelLM names (config.json, model.safetensors or shards with model.safetensors.index.json, the tokenizer files).
/// The trainable tensors come from the checkpoint (every file's size and CRC-32 checked first, every element count
/// checked against the layout); the frozen ones from the run's base: streamed from the --version directory's files
/// (a PixelLM checkpoint, or a LLaVA base's LLaMA layers), or for a --config run the seeded initialisation,
/// reproduced exactly (CLIP is then written inside, under model.vision_tower.vision_tower.*, so the output is
/// complete). It streams tensor by tensor: one bucket of the checkpoint and one output tensor at a time (plus, for
/// a LLaVA base, the newly initialised parts; for a --config run, the model).
public enum Consolidate {
    public struct Report {
        public var checkpoint: String
        public var step: Int
        public var trainableTensors: Int
        public var trainableElements: Int
        public var files: [String]
    }

    public static func run(checkpoint path: String, out: String, dtype: DType = .f32, maxShardBytes: Int = 5 << 30,
                           mergeLoRA: Bool = false) throws -> Report {
        let dir = try TrainCheckpoint.resolve(path)
        let m = try TrainCheckpointManifest.load(dir)
        try m.verifyFiles(in: dir)
        var o = m.options
        o.datasetDir = o.datasetDir.isEmpty ? "-" : o.datasetDir
        let source = try TrainModelSource(options: o, tokenizerDirectory: m.tokenizer, streaming: true)
        var expected = m.config
        expected.lora = source.model.config.lora
        guard source.model.config == expected else {
            throw TrainError.mismatch(field: "config", "the run's base (\(o.config ?? o.version ?? "?")) no longer gives the model config the checkpoint was trained with")
        }
        // the trained tensors, by name -> (bucket, offset, count); one bucket of values cached at a time
        let L = m.layout
        var trained: [String: BucketLayout.Param] = [:]
        for p in L.params { trained[p.name] = p }
        // every tensor the run trained must be in the checkpoint: one left out of an edited or damaged manifest would
        // otherwise be written with its initial value
        let expectedNames = source.table.trainable.map(\.name)
        let absent = expectedNames.filter { trained[$0] == nil }
        guard absent.isEmpty else {
            throw TrainError.file((dir as NSString).appendingPathComponent(TrainCheckpointManifest.manifestName),
                                  "the layout lacks \(absent.count) of the \(expectedNames.count) tensors the run trained (e.g. \(absent[0])): the manifest is damaged or edited")
        }
        var cached: (bucket: Int, values: [Float])?
        func bucketValues(_ b: Int) throws -> [Float] {
            if let c = cached, c.bucket == b { return c.values }
            let v = try TrainCheckpoint.readBucket(dir, manifest: m, bucket: b, key: "value")
            cached = (b, v)
            return v
        }
        let model = source.model
        let byName = Dictionary(uniqueKeysWithValues: model.allNamedTensors())
        var placed = Set<String>()
        /// One tensor of the output, by name (its trained value, else the base's, else the model's).
        func value(_ name: String) throws -> Tensor {
            guard let t = byName[name] ?? byName[name.replacingOccurrences(of: PixelLMForCausalLM.visionPrefix + ".", with: "")] else {
                throw TrainError.file(dir, "the model has no tensor \(name)")
            }
            let layoutName = name.hasPrefix(PixelLMForCausalLM.visionPrefix + ".") ? String(name.dropFirst(PixelLMForCausalLM.visionPrefix.count + 1)) : name
            if let p = trained[layoutName] {
                guard p.shape == t.shape, p.offset + p.count <= L.buckets[p.bucket].count else {
                    throw TrainError.file(dir, "\(name): the layout gives \(p.shape) at \(p.offset)..<\(p.offset + p.count) of bucket \(p.bucket); the model has \(t.shape)")
                }
                let v = try bucketValues(p.bucket)
                placed.insert(layoutName)
                return Tensor(Array(v[p.offset..<(p.offset + p.count)]), shape: p.shape)
            }
            if let src = source.baseSource, source.streamedNames.contains(name) {
                let v = try src.tensor(name)
                guard v.shape == t.shape else { throw TrainError.file(o.version ?? dir, "\(name) is \(v.shape) in the base, the model's is \(t.shape)") }
                return v
            }
            return t
        }
        // the adapters folded in: W + (alpha / r) B A
        let adapters = Dictionary(uniqueKeysWithValues: model.loraAdapters.map { ($0.0 + ".weight", $0.1) })
        func output(_ name: String) throws -> Tensor {
            // the previous tensor has been written: give its memory back (the allocator would cache every size)
            CachingAllocator.shared.emptyCache()
            let w = try value(name)
            guard mergeLoRA, let a = adapters[name] else { return w }
            let prefix = String(name.dropLast("weight".count))
            let A = try value(prefix + "lora_A.default.weight"), B = try value(prefix + "lora_B.default.weight")
            return Autograd.noGrad { (w + B.matmul(A) * a.scaling).contiguousData() }
        }
        var shapes: [String: [Int]] = [:]
        // CLIP inside the output when the run's base had it inside (a --config run; a --version checkpoint holding it)
        let visionInside = o.config != nil && !LLaVABase.isLLaVADirectory(o.version ?? "")
            || source.streamedNames.contains { $0.hasPrefix(PixelLMForCausalLM.visionPrefix + ".") }
        for (n, t) in model.checkpointTensors(includeVision: visionInside) {
            if mergeLoRA && n.contains(".lora_") { continue }
            shapes[n] = t.shape
        }
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        var files = try Safetensors.writeSharded(shapes: shapes, to: out, maxShardBytes: maxShardBytes, dtype: dtype, produce: output)
        let missing = L.params.map(\.name).filter { !placed.contains($0) }
        guard missing.isEmpty else {
            throw TrainError.file(dir, "\(missing.count) trained tensor(s) are not in the output (e.g. \(missing[0])): the layout names tensors the model does not have")
        }
        var config = model.config
        if mergeLoRA { config.lora = nil }
        try PixelLMCheckpoint.writeConfig(config, to: out)
        files.append(PixelLMCheckpoint.configName)
        files += try copyTokenizerFiles(from: source.tokenizerDirectory, to: out)
        return Report(checkpoint: dir, step: m.step, trainableTensors: L.params.count, trainableElements: L.totalElements, files: files)
    }
}

/// `pixellm merge-lora`: W + (alpha / r) B A for every LoRA adapter, written as a plain PixelLM checkpoint.
/// `base` is a PixelLM directory; its config's "lora" block (a consolidation that kept the adapters) brings the
/// adapters along. `weights` (optional; safetensors or pytorch_model.bin) holds trained tensors under the released
/// names and PEFT's adapter names ("model.layers.N.self_attn.q_proj.lora_A.default.weight", also with the
/// "base_model.model." prefix of a PEFT state dict); they replace the base's, adapters are created from their
/// shapes (r from A; `alpha` from the option). Every name and shape is checked.
public enum MergeLoRA {
    public struct Report { public var merged: Int; public var replaced: Int; public var files: [String] }

    public static func run(base: String, weights: String?, out: String, visionTower: String? = nil, alpha: Float = 16,
                           dtype: DType = .f32, maxShardBytes: Int = 5 << 30) throws -> Report {
        let (model, _) = try PixelLMModelDirectory.open(base, visionTower: visionTower)
        var replaced = 0
        if let weights {
            let src: any WeightSource
            if weights.hasSuffix(".safetensors") { src = try SafetensorsFile(weights) } else { src = try TorchBinFile(weights) }
            func clean(_ n: String) -> String { n.hasPrefix("base_model.model.") ? String(n.dropFirst("base_model.model.".count)) : n }
            // adapters named in the file that the model does not have yet
            var targets = Set<String>(), r: Int?
            for n in src.names.map(clean) where n.contains(".lora_A.") {
                let module = n.components(separatedBy: ".lora_A.")[0].components(separatedBy: ".").last ?? ""
                targets.insert(module)
                let shape = try src.info(src.names.first { clean($0) == n }!).shape
                if let r0 = r, r0 != shape[0] { throw TrainError.file(weights, "LoRA ranks differ (\(r0) and \(shape[0]))") }
                r = shape[0]
            }
            if let r, model.loraAdapters.isEmpty {
                var rng = RNG(seed: 0)
                model.attachLoRA(LoRAConfig(r: r, alpha: alpha, dropout: 0, targetModules: targets.sorted()), rng: &rng)
            }
            let byName = Dictionary(uniqueKeysWithValues: model.allNamedTensors())
            for raw in src.names {
                let n = clean(raw)
                if n.hasSuffix("rotary_emb.inv_freq") { continue }
                guard let t = byName[n] ?? byName[PixelLMForCausalLM.visionPrefix + "." + n] else {
                    throw TrainError.file(weights, "'\(raw)' is not a tensor of the model in \(base)")
                }
                let v = try src.tensor(raw)
                guard v.shape == t.shape else { throw TrainError.file(weights, "'\(raw)' is \(v.shape), the model's is \(t.shape)") }
                t.ptr.update(from: v.contiguousData().ptr, count: t.count)
                replaced += 1
            }
        }
        let merged = model.loraAdapters.count
        guard merged > 0 else { throw TrainError.file(weights ?? base, "no LoRA adapters to merge (no lora block in \(base)/config.json, no lora_A/lora_B tensors)") }
        model.mergeLoRA()
        // a base with CLIP inside (a consolidated --config run) keeps it inside
        let visionInside = (try? WeightSources.open(base))?.names.contains { $0.hasPrefix(PixelLMForCausalLM.visionPrefix + ".") } ?? false
        var files = try PixelLMCheckpoint.save(model, to: out, dtype: dtype, maxShardBytes: maxShardBytes, includeVision: visionInside)
        files += try copyTokenizerFiles(from: base, to: out)
        return Report(merged: merged, replaced: replaced, files: files)
    }
}

/// Copies the tokenizer files a PixelLM directory holds (those that exist) into `out`; returns their names.
public func copyTokenizerFiles(from dir: String, to out: String) throws -> [String] {
    var copied: [String] = []
    for f in ["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"] {
        let src = (dir as NSString).appendingPathComponent(f)
        guard FileManager.default.fileExists(atPath: src) else { continue }
        let dst = (out as NSString).appendingPathComponent(f)
        try? FileManager.default.removeItem(atPath: dst)
        try FileManager.default.copyItem(atPath: src, toPath: dst)
        copied.append(f)
    }
    return copied
}

extension Consolidate {
    /// The model a training checkpoint (or a run directory's `latest`) holds, built in memory: the run's base with the
    /// trained tensors put in (every file's size and CRC-32 checked first). For `pixellm eval` without consolidating.
    public static func loadModel(checkpoint path: String) throws -> (model: PixelLMForCausalLM, tokenizerDirectory: String,
                                                                     step: Int, directory: String) {
        let dir = try TrainCheckpoint.resolve(path)
        let m = try TrainCheckpointManifest.load(dir)
        try m.verifyFiles(in: dir)
        var o = m.options
        o.datasetDir = o.datasetDir.isEmpty ? "-" : o.datasetDir
        let source = try TrainModelSource(options: o, tokenizerDirectory: m.tokenizer)
        let byName = Dictionary(uniqueKeysWithValues: source.model.allNamedTensors())
        for b in m.layout.buckets.indices {
            let values = try TrainCheckpoint.readBucket(dir, manifest: m, bucket: b, key: "value")
            for p in m.layout.params where p.bucket == b {
                guard let t = byName[p.name] else { throw TrainError.file(dir, "the layout names \(p.name), which the model does not have") }
                guard t.shape == p.shape, t.isContiguous, p.offset + p.count <= values.count else {
                    throw TrainError.file(dir, "\(p.name): the layout gives \(p.shape) at \(p.offset)..<\(p.offset + p.count) of bucket \(b); the model has \(t.shape)")
                }
                values.withUnsafeBufferPointer { t.ptr.update(from: $0.baseAddress! + p.offset, count: p.count) }
            }
        }
        return (source.model, source.tokenizerDirectory, m.step, dir)
    }
}
