import ArgumentParser
import Foundation
import PixelData
import PixelText

/// `pixellm inspect`: what the model will see for one sample of a shard directory.
struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write one prepared sample as files: image.png, mask_<k>.png, sample.json.",
        discussion: "image.png is the preprocessed CLIP-branch image at S x S: the resized image top-left and the zero padding (black) that the model sees as the mean colour after normalisation; image_valid.png is the resized region alone. mask_<k>.png are the targets at the original resolution (0/255).")

    @Option(help: "Shard directory written by `pixellm prepare`.") var shards: String
    @Option(help: "Global sample index, in manifest order (0-based).") var index: Int
    @Option(help: "Output directory.") var out: String

    func run() throws {
        do {
            try Inspect.write(shards: shards, index: index, out: out)
            print("sample \(index) -> \(out)")
        } catch {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }

    static func write(shards: String, index: Int, out: String) throws {
        let r = try ShardReader(directory: shards)
        let meta = try r.meta(index)
        let padded = try r.paddedImage(index)
        let valid = try r.validImage(index)
        let masks = try r.masks(index)
        let (ids, labels) = try r.tokens(index)
        let (loc, local) = try r.locate(index)
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        func p(_ n: String) -> String { (out as NSString).appendingPathComponent(n) }
        try padded.writePNG(p("image.png"))
        try valid.writePNG(p("image_valid.png"))
        for (k, m) in masks.enumerated() { try m.decode().grayImage.writePNG(p("mask_\(k).png")) }
        var tokenizer: Tokenizer?
        if FileManager.default.fileExists(atPath: r.manifest.options.tokenizerPath) {
            tokenizer = try? Tokenizer(directory: r.manifest.options.tokenizerPath)
        }
        var convs: [[String: Any]] = []
        for c in 0..<ids.count {
            var d: [String: Any] = [
                "rounds": meta.conversations[c].map { ["question": $0.question, "answer": $0.answer] },
                "text": meta.prompts[c],
                "input_ids": ids[c],
                "labels": labels[c],
                "label_mask": labels[c].map { $0 != PixelLMPrompt.ignoreIndex },
                "num_tokens": ids[c].count,
                "num_target_tokens": labels[c].filter { $0 != PixelLMPrompt.ignoreIndex }.count,
            ]
            if let t = tokenizer {
                d["target_text"] = t.decode(labels[c].filter { $0 >= 0 })
            }
            convs.append(d)
        }
        let vs = try r.validSize(index), os = try r.originalSize(index)
        let json: [String: Any] = [
            "index": index,
            "shard": (loc.path as NSString).lastPathComponent,
            "shard_sample": local,
            "dataset": meta.dataset, "subset": meta.subset, "subset_index": meta.index, "plan_item": meta.item,
            "image_path": meta.imagePath, "source": meta.source,
            "original_size": [os.height, os.width], "valid_size": [vs.height, vs.width], "image_size": r.imageSize,
            "image_png": "image.png is the full \(r.imageSize)x\(r.imageSize) padded input; image_valid.png the \(vs.height)x\(vs.width) resized region",
            "targets": meta.targets.enumerated().map { ["mask": "mask_\($0.offset).png", "name": $0.element.name, "provenance": $0.element.provenance,
                                                          "area": masks[$0.offset].area] },
            "conversations": convs,
            "tokenizer": r.manifest.options.tokenizerPath,
        ]
        try Data((render(json) + "\n").utf8).write(to: URL(fileURLWithPath: p("sample.json")), options: .atomic)
    }

    /// Indented JSON with sorted keys; arrays of numbers and booleans stay on one line (token ids, label masks).
    static func render(_ v: Any, _ indent: String = "") -> String {
        func scalar(_ x: Any) -> String {
            let d = try! JSONSerialization.data(withJSONObject: [x], options: [.withoutEscapingSlashes, .fragmentsAllowed])
            return String(String(decoding: d, as: UTF8.self).dropFirst().dropLast())
        }
        let inner = indent + "  "
        if let d = v as? [String: Any] {
            if d.isEmpty { return "{}" }
            return "{\n" + d.keys.sorted().map { inner + scalar($0) + ": " + render(d[$0]!, inner) }.joined(separator: ",\n") + "\n" + indent + "}"
        }
        if let a = v as? [Any] {
            if a.allSatisfy({ !($0 is [Any]) && !($0 is [String: Any]) && !($0 is String) }) {
                return "[" + a.map(scalar).joined(separator: ", ") + "]"
            }
            return "[\n" + a.map { inner + render($0, inner) }.joined(separator: ",\n") + "\n" + indent + "]"
        }
        return scalar(v)
    }
}
