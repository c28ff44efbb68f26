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

    public static func run(checkpoint path: String, out: String, dtype: DType = .f32, maxShardBytes: Int = 5 << 30) throws -> Report {
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
