// LLaVA instruction data (utils/vqa_dataset.py): `<datasetDir>/llava_dataset/<file>.json`, a list of
// {id, image, conversations: [{from: human|gpt, value}]}; images in `<datasetDir>/coco/train2017/<image>`.
//
// As the reference (preprocess_multimodal + __getitem__): every turn that contains "<image>" has it removed,
// is stripped, and gets "<image>\n" put first; a leading gpt turn is dropped; the turns must then alternate
// human, gpt, human, ... (the reference asserts; here a SampleSkip). One multi-round conversation per item,
// no masks. A trailing human turn without a reply becomes a round with an empty answer (the reference's
// prompt ends with that question too).
import Foundation
import PixelTensor

public final class VQAReader: DatasetReader {
    public let dataset = "vqa"
    public let subset: String
    public let indexFile: String
    public let datasetDir: String
    public let options: ReaderOptions
    public let indexSkips = SkipLog()
    public var count: Int { items.count }

    struct Item { var image: String; var turns: [(from: String, value: String)] }
    let items: [Item]

    public init(datasetDir: String, file: String = "llava_instruct_150k", options: ReaderOptions = ReaderOptions()) throws {
        let dir = ReaderJSON.absolute(datasetDir)
        self.datasetDir = dir
        self.options = options
        let stem = file.hasSuffix(".json") ? String(file.dropLast(5)) : file
        self.subset = stem
        let path = "\(dir)/llava_dataset/\(stem).json"
        self.indexFile = path
        var out: [Item] = []
        try ReaderJSON.forEachListElement(path, what: "conversations") { k, e in
            func bad(_ what: String) -> DatasetError { DatasetError(file: path, "entry \(k): \(what)") }
            guard let d = e as? [String: Any] else { throw bad("is \(ReaderJSON.typeName(e)), not a dict") }
            guard let img = d["image"] as? String, !img.isEmpty else { throw bad("'image' is \(ReaderJSON.typeName(d["image"])), not a file name") }
            guard ReaderJSON.staysInside(img) else { throw bad("'image' \(img) leaves the image directory") }
            guard let conv = d["conversations"] as? [Any] else {
                throw bad("'conversations' is \(ReaderJSON.typeName(d["conversations"])), not a list")
            }
            var turns: [(from: String, value: String)] = []
            for (t, v) in conv.enumerated() {
                guard let td = v as? [String: Any], let from = td["from"] as? String, let value = td["value"] as? String else {
                    throw bad("turn \(t) is not a dict with string 'from' and 'value'")
                }
                turns.append((from, value))
            }
            out.append(Item(image: img, turns: turns))
        }
        self.items = out
    }

    public func sample(_ index: Int, seed: UInt64) throws -> DataSample {
        guard items.indices.contains(index) else {
            throw SampleSkip(file: indexFile, "index out of range: \(index) not in 0..<\(count)")
        }
        let item = items[index]
        let src = "\(ReaderJSON.basename(indexFile)) entry \(index)"
        let imagePath = "\(datasetDir)/coco/train2017/\(item.image)"
        let (height, width) = try ImageHeader.size(imagePath)
        var turns = item.turns.map { t -> (from: String, value: String) in
            guard t.value.contains("<image>") else { return t }
            let rest = t.value.replacingOccurrences(of: "<image>", with: "").trimmingCharacters(in: .whitespacesAndNewlines)
            return (t.from, ("<image>\n" + rest).trimmingCharacters(in: .whitespacesAndNewlines))
        }
        for (t, turn) in turns.enumerated() where turn.from != "human" && turn.from != "gpt" {
            throw SampleSkip(file: indexFile, "bad conversation: \(src) turn \(t) is from '\(turn.from)', not human or gpt")
        }
        if turns.first?.from == "gpt" { turns.removeFirst() }
        guard !turns.isEmpty else { throw SampleSkip(file: indexFile, "empty conversation: \(src) has no human turn") }
        var rounds: [DialogueRound] = []
        var j = 0
        while j < turns.count {
            let want = j % 2 == 0 ? "human" : "gpt"
            guard turns[j].from == want, j + 1 >= turns.count || turns[j + 1].from == "gpt" else {
                let bad = turns[j].from != want ? j : j + 1
                throw SampleSkip(file: indexFile, "bad conversation: \(src) turn \(bad) is from '\(turns[bad].from)' where the reference expects '\(bad % 2 == 0 ? "human" : "gpt")'")
            }
            rounds.append(DialogueRound(question: turns[j].value, answer: j + 1 < turns.count ? turns[j + 1].value : ""))
            j += 2
        }
        return DataSample(dataset: dataset, subset: subset, index: index, imagePath: imagePath, height: height, width: width,
                          conversations: [rounds], targets: [], source: src)
    }
}
