import Foundation
import PixelModel
import PixelTensor

/// `pixellm consolidate`: a training checkpoint (every rank's slices) -> full weights in HF layout with the released
/// PixelLM names (config.json, model.safetensors or shards with model.safetensors.index.json, the tokenizer files).
/// The trainable tensors come from the checkpoint (every file's size and CRC-32 checked first, every element count
/// checked against the layout); the frozen ones from the run's base: the --version directory, or for a --config run
/// the seeded initialisation, reproduced exactly (CLIP is then written inside the checkpoint, under
/// model.vision_tower.vision_tower.*, so the output is complete).
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
        let source = try TrainModelSource(options: o, tokenizerDirectory: m.tokenizer)
        guard source.model.config == m.config else {
            throw TrainError.mismatch(field: "config", "the run's base (\(o.config ?? o.version ?? "?")) no longer gives the model config the checkpoint was trained with")
        }
        let full = try TrainCheckpoint.readFull(dir, manifest: m)
        let byName = Dictionary(uniqueKeysWithValues: source.table.entries.map { ($0.name, $0.tensor) })
        var elements = 0
        for p in m.layout.params {
            guard let t = byName[p.name] else { throw TrainError.file(dir, "the layout names \(p.name), which the model does not have") }
            guard t.shape == p.shape, p.count == t.count, p.offset + p.count <= full.values[p.bucket].count else {
                throw TrainError.file(dir, "\(p.name): the layout gives \(p.shape) at \(p.offset)..<\(p.offset + p.count) of bucket \(p.bucket) (\(full.values[p.bucket].count) elements); the model has \(t.shape)")
            }
            full.values[p.bucket].withUnsafeBufferPointer { src in t.ptr.update(from: src.baseAddress! + p.offset, count: p.count) }
            elements += p.count
        }
        guard elements == m.layout.totalElements else {
            throw TrainError.file(dir, "\(elements) elements placed, the layout holds \(m.layout.totalElements)")
        }
        // LoRA: kept as PEFT names (config.json's "lora" block), or folded in: W + (alpha / r) B A
        if mergeLoRA { source.model.mergeLoRA() }
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        var files = try PixelLMCheckpoint.save(source.model, to: out, dtype: dtype, maxShardBytes: maxShardBytes,
                                                includeVision: o.config != nil)
        for f in ["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"] {
            let src = (source.tokenizerDirectory as NSString).appendingPathComponent(f)
            guard FileManager.default.fileExists(atPath: src) else { continue }
            let dst = (out as NSString).appendingPathComponent(f)
            try? FileManager.default.removeItem(atPath: dst)
            try FileManager.default.copyItem(atPath: src, toPath: dst)
            files.append(f)
        }
        return Report(checkpoint: dir, step: m.step, trainableTensors: m.layout.params.count, trainableElements: elements, files: files)
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
        for f in ["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"] {
            let s = (base as NSString).appendingPathComponent(f)
            guard FileManager.default.fileExists(atPath: s) else { continue }
            let d = (out as NSString).appendingPathComponent(f)
            try? FileManager.default.removeItem(atPath: d)
            try FileManager.default.copyItem(atPath: s, toPath: d)
            files.append(f)
        }
        return Report(merged: merged, replaced: replaced, files: files)
    }
}
