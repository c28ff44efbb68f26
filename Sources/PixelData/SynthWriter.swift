// Writes synthetic scenes in the layouts the reference loaders read (spec 5.2-5.3):
//   muse_{train,val,test_less,test_many}.json            MultiReasonSegDataset (./dataset/muse_*.json)
//   refer_seg/images/mscoco/images/train2014/*.jpg       MUSE train images (file_name), refer_seg images
//   refer_seg/images/mscoco/images/val2017/*.png         MUSE val/test images (coco_url)
//   refer_seg/refcoco/{refs(unc).p, instances.json}      REFER (protocol-2 pickle of plain data)
//   ade20k/{images,annotations}/{training,validation}/   sem_seg: JPEG + label PNG (0 background, k = class k-1)
//   ade20k/synth_classes.json                            the class names (the reference reads utils/ade20k_classes.json)
//   llava_dataset/llava_instruct_150k.json, coco/train2017/*.jpg   vqa (no masks)
//   reason_seg/ReasonSeg/{train,val}/*.jpg + *.json      reason_seg (labelme-style polygons)
//   reason_seg/ReasonSeg/explanatory/train.json          reason_seg explanations ({image, query, outputs})
//   tokenizer/                                           a LLaMA-style BPE tokenizer for the data (SynthTokenizer)
// JSON is written by a small deterministic emitter; every file is written atomically.
import Foundation
import PixelTensor

// MARK: - deterministic JSON

public indirect enum SynthJSON {
    case string(String), int(Int), double(Double), bool(Bool), null
    case array([SynthJSON])
    case object([(String, SynthJSON)])

    public func write(into out: inout String) {
        switch self {
        case .string(let s): SynthJSON.escape(s, into: &out)
        case .int(let i): out += String(i)
        case .double(let d): out += d == d.rounded() && abs(d) < 1e15 ? String(Int(d)) : "\(d)"
        case .bool(let b): out += b ? "true" : "false"
        case .null: out += "null"
        case .array(let a):
            out += "["
            for (i, v) in a.enumerated() { if i > 0 { out += ", " }; v.write(into: &out) }
            out += "]"
        case .object(let o):
            out += "{"
            for (i, (k, v)) in o.enumerated() {
                if i > 0 { out += ", " }
                SynthJSON.escape(k, into: &out); out += ": "; v.write(into: &out)
            }
            out += "}"
        }
    }

    public var text: String { var s = ""; write(into: &s); return s }

    static func escape(_ s: String, into out: inout String) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            default:
                if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
            }
        }
        out += "\""
    }
}

// MARK: - minimal pickle (protocol 2, plain data)

/// Protocol-2 pickle of lists, dicts, strings and ints (no memo, no classes): what `refs(unc).p` holds.
public enum SynthPickle {
    public static func dumps(_ v: SynthJSON) -> [UInt8] {
        var b: [UInt8] = [0x80, 2]
        emit(v, &b)
        b.append(UInt8(ascii: "."))
        return b
    }

    static func emit(_ v: SynthJSON, _ b: inout [UInt8]) {
        switch v {
        case .string(let s):
            let u = Array(s.utf8)
            b.append(UInt8(ascii: "X")); le32(UInt32(u.count), &b); b += u
        case .int(let i):
            if i >= 0 && i < 256 { b += [UInt8(ascii: "K"), UInt8(i)] }
            else if i >= 0 && i < 65536 { b += [UInt8(ascii: "M"), UInt8(i & 0xFF), UInt8(i >> 8)] }
            else {
                precondition(i >= Int(Int32.min) && i <= Int(Int32.max), "SynthPickle: int \(i) out of range")
                b.append(UInt8(ascii: "J")); le32(UInt32(bitPattern: Int32(i)), &b)
            }
        case .double(let d):
            b.append(UInt8(ascii: "G"))
            let bits = d.bitPattern
            for k in (0..<8).reversed() { b.append(UInt8((bits >> (8 * UInt64(k))) & 0xFF)) }
        case .bool(let x): b.append(x ? 0x88 : 0x89)
        case .null: b.append(UInt8(ascii: "N"))
        case .array(let a):
            b.append(UInt8(ascii: "]"))
            if !a.isEmpty {
                b.append(UInt8(ascii: "("))
                for e in a { emit(e, &b) }
                b.append(UInt8(ascii: "e"))
            }
        case .object(let o):
            b.append(UInt8(ascii: "}"))
            if !o.isEmpty {
                b.append(UInt8(ascii: "("))
                for (k, e) in o { emit(.string(k), &b); emit(e, &b) }
                b.append(UInt8(ascii: "u"))
            }
        }
    }

    static func le32(_ x: UInt32, _ b: inout [UInt8]) {
        b += [UInt8(x & 0xFF), UInt8((x >> 8) & 0xFF), UInt8((x >> 16) & 0xFF), UInt8(x >> 24)]
    }
}

// MARK: - the generator

public struct SynthConfig: Sendable {
    public var seed: UInt64 = 0
    public var train = 20
    public var val = 5
    public var test = 5
    public var size = 224
    /// len(tokenizer) of tokenizer/ (configs/synth-small: 1024); 0 writes no tokenizer.
    public var vocabSize = SynthTokenizer.defaultVocabSize
    /// Objects per train / val scene: 1 to this many, uniformly (8: the standard scenes; fewer gives simpler
    /// scenes, e.g. for the first stage of a curriculum). test_less and test_many keep their own counts.
    public var maxObjects = 8
    /// Every VQA conversation starts with a caption turn ("What objects are there in the image?" answered with every
    /// object, left to right: `SynthQuestions.caption`) before two more questions; false: three questions, as before.
    /// The MUSE, referring and ReasonSeg files and the tokenizer do not change.
    public var vqaCaptions = false
    /// Train scenes only: each object after the first repeats a colour already in the scene with this probability
    /// (`SynthScene.generate`), so that the masks and names need the shape more often; 0 (the standard scenes)
    /// leaves every file byte-identical. The val and test splits never change.
    public var repeatColours = 0.0
    public init(seed: UInt64 = 0, train: Int = 20, val: Int = 5, test: Int = 5, size: Int = 224,
                vocabSize: Int = SynthTokenizer.defaultVocabSize, maxObjects: Int = 8, vqaCaptions: Bool = false,
                repeatColours: Double = 0) {
        self.seed = seed; self.train = train; self.val = val; self.test = test; self.size = size; self.vocabSize = vocabSize
        self.maxObjects = maxObjects; self.vqaCaptions = vqaCaptions; self.repeatColours = repeatColours
    }
}

public struct SynthSummary: Sendable, CustomStringConvertible {
    public var images: [String: Int] = [:]
    public var questions = 0
    public var targets = 0
    public var objects = 0
    public var polygons = 0
    public var rles = 0
    public var refs = 0
    public var semSeg = 0
    public var vqa = 0
    public var reasonSeg = 0
    public var explanations = 0
    public var tokenizer: String = "none"
    public var kinds: [String: Int] = [:]
    public var description: String {
        let splits = ["train", "val", "test_less", "test_many"].map { "\($0) \(images[$0] ?? 0)" }.joined(separator: ", ")
        let k = SynthQuestionKind.allCases.map { "\($0.rawValue) \(kinds[$0.rawValue] ?? 0)" }.joined(separator: ", ")
        return "synth: images \(splits); MUSE questions \(questions) (\(k)), targets \(targets); objects \(objects) "
            + "(\(polygons) polygon, \(rles) RLE masks); refcoco refs \(refs); ade20k \(semSeg); vqa \(vqa); reason_seg \(reasonSeg) (\(explanations) explained); tokenizer \(tokenizer)"
    }
}

public enum SynthError: Error, CustomStringConvertible {
    case bad(String)
    public var description: String { if case .bad(let s) = self { return s }; return "" }
}

public struct SynthGenerator {
    public let config: SynthConfig
    public let out: String

    public init(config: SynthConfig, out: String) { self.config = config; self.out = out }

    public static let splits = ["train", "val", "test_less", "test_many"]

    /// The scene and questions of image `index` of `split`, from its own RNG stream.
    public static func sample(config: SynthConfig, split: String, index: Int) -> (SynthScene, [SynthQuestion]) {
        let splitID = UInt64(splits.firstIndex(of: split) ?? 0)
        var rng = RNG(seed: config.seed &* 0x9E37_79B9_7F4A_7C15 &+ splitID &* 1_000_003 &+ UInt64(index) &+ 1)
        let width = config.size
        let height = rng.int(2) == 0 ? config.size : max(32, config.size * 3 / 4)
        let count: Int
        switch split {
        case "test_less": count = 2 + rng.int(3)
        case "test_many": count = 6 + rng.int(3)
        default: count = 1 + rng.int(max(1, config.maxObjects))
        }
        let scene = SynthScene.generate(width: width, height: height, count: count,
                                        repeatColours: split == "train" ? config.repeatColours : 0, rng: &rng)
        let qs: [SynthQuestion]
        switch split {
        case "test_less": qs = SynthQuestions.pick(scene, count: 3, targetRange: 1...3, allowText: false, rng: &rng)
        case "test_many": qs = SynthQuestions.pick(scene, count: 3, targetRange: 4...99, allowText: false, rng: &rng)
        default: qs = SynthQuestions.pick(scene, count: 2 + rng.int(4), targetRange: 1...99, allowText: true, rng: &rng)
        }
        return (scene, qs)
    }

    /// An object's segmentation: its polygon when nothing covers it (the polygon decodes to exactly its
    /// visible pixels), else the COCO compressed RLE of the visible pixels.
    public static func segmentation(_ o: SynthObject) -> SynthJSON {
        if !o.occluded { return .array([.array(o.polygon.map { .double($0) })]) }
        let rle = RLE(encoding: o.visibleMask)
        return .object([("size", .array([.int(rle.height), .int(rle.width)])), ("counts", .string(rle.compressed))])
    }

    func mkdir(_ path: String) throws {
        try FileManager.default.createDirectory(atPath: out + "/" + path, withIntermediateDirectories: true)
    }

    func write(_ text: String, _ path: String) throws {
        try AtomicWrite.write(Array(text.utf8), to: out + "/" + path)
    }

    public func run() throws -> SynthSummary {
        guard config.size >= 32 && config.size <= 4096 else { throw SynthError.bad("--size must be in 32...4096, got \(config.size)") }
        guard config.train >= 0, config.val >= 0, config.test >= 0 else { throw SynthError.bad("image counts must be >= 0") }
        guard config.vocabSize >= 0 else { throw SynthError.bad("vocab size must be >= 0, got \(config.vocabSize)") }
        // trained first so a bad vocab size fails before anything is written; the same tokenizer for every
        // tree of this vocabulary size (its corpus is a fixed sample of scenes)
        let tokenizer = config.vocabSize > 0 ? try SynthTokenizer.train(vocabSize: config.vocabSize) : nil
        let coco = "refer_seg/images/mscoco/images"
        for d in ["\(coco)/train2014", "\(coco)/val2017", "refer_seg/refcoco", "ade20k/images/training", "ade20k/images/validation",
                  "ade20k/annotations/training", "ade20k/annotations/validation", "llava_dataset", "coco/train2017",
                  "reason_seg/ReasonSeg/train", "reason_seg/ReasonSeg/val", "reason_seg/ReasonSeg/explanatory"] { try mkdir(d) }
        var summary = SynthSummary()
        var annID = 1, refID = 1, sentID = 1, imageID = 1
        var referImages: [SynthJSON] = [], referAnns: [SynthJSON] = [], refs: [SynthJSON] = []
        var vqa: [SynthJSON] = []
        var explanatory: [SynthJSON] = []
        // the REFER split of each MUSE split: refcoco (unc) has train / val / testA / testB
        let referSplit = ["train": "train", "val": "val", "test_less": "testA", "test_many": "testB"]
        let counts = ["train": config.train, "val": config.val, "test_less": config.test, "test_many": config.test]
        for split in Self.splits {
            var records: [SynthJSON] = []
            let n = counts[split]!
            for i in 0..<n {
                let (scene, qs) = Self.sample(config: config, split: split, index: i)
                let stem = "synth_\(split)_\(String(format: "%06d", i + 1))"
                let h = scene.height, w = scene.width
                // images: train/val as JPEG in train2014 (MUSE file_name, refcoco); val/test as PNG in val2017 (coco_url)
                var record: [(String, SynthJSON)] = []
                if split == "train" {
                    try scene.image.writeJPEG(out + "/\(coco)/train2014/\(stem).jpg")
                    record.append(("file_name", .string("\(stem).jpg")))
                } else {
                    try scene.image.writePNG(out + "/\(coco)/val2017/\(stem).png")
                    record.append(("coco_url", .string("http://images.cocodataset.org/val2017/\(stem).png")))
                    // refer_seg reads every REFER image from train2014
                    try scene.image.writeJPEG(out + "/\(coco)/train2014/\(stem).jpg")
                }
                record.append(("id", .int(imageID)))
                record.append(("height", .int(h)))
                record.append(("width", .int(w)))
                var anns: [SynthJSON] = []
                var annIDs: [Int] = []
                for (k, o) in scene.objects.enumerated() {
                    let seg = Self.segmentation(o)
                    if o.occluded { summary.rles += 1 } else { summary.polygons += 1 }
                    let ann: SynthJSON = .object([
                        ("id", .int(annID)), ("image_id", .int(imageID)), ("category_id", .int(o.shape.categoryID)),
                        ("category_name", .string(o.shape.name)), ("rephrased_name", .string(o.phrase)),
                        ("bbox", .array(o.bbox.map { .int($0) })), ("area", .int(o.visibleArea)), ("iscrowd", .int(0)),
                        ("segmentation", seg),
                    ])
                    anns.append(ann)
                    annIDs.append(annID)
                    if let refSplit = referSplit[split] {
                        referAnns.append(ann)
                        if let d = SynthQuestions.uniqueDescription(scene, k) {
                            var sents: [SynthJSON] = []
                            var ids: [SynthJSON] = []
                            for s in Set([d, o.phrase]).sorted() {
                                let tokens = s.split(separator: " ").map { SynthJSON.string(String($0)) }
                                sents.append(.object([("tokens", .array(tokens)), ("raw", .string(s)), ("sent_id", .int(sentID)),
                                                      ("sent", .string(s))]))
                                ids.append(.int(sentID))
                                sentID += 1
                            }
                            refs.append(.object([
                                ("sent_ids", .array(ids)), ("file_name", .string("\(stem).jpg")), ("ann_id", .int(annID)),
                                ("ref_id", .int(refID)), ("image_id", .int(imageID)), ("split", .string(refSplit)),
                                ("sentences", .array(sents)), ("category_id", .int(o.shape.categoryID)),
                            ]))
                            refID += 1
                            summary.refs += 1
                        }
                    }
                    annID += 1
                }
                if referSplit[split] != nil {
                    referImages.append(.object([("id", .int(imageID)), ("file_name", .string("\(stem).jpg")),
                                                ("height", .int(h)), ("width", .int(w))]))
                }
                record.append(("ann_list", .array(anns)))
                record.append(("questions", .array(qs.map { .string($0.question) })))
                record.append(("text_answers", .array(qs.map { .string($0.textAnswer) })))
                record.append(("answers", .array(qs.map { q in .array(q.targets.map { anns[$0] }) })))
                // not in MUSE: the kind of every question (single, multi, relational, attribute, counting, text), for
                // `pixellm eval`'s per-kind figures; the reference's loaders ignore unknown keys
                record.append(("question_kinds", .array(qs.map { .string($0.kind.rawValue) })))
                records.append(.object(record))
                summary.objects += scene.objects.count
                summary.questions += qs.count
                summary.targets += qs.reduce(0) { $0 + $1.targets.count }
                for q in qs { summary.kinds[q.kind.rawValue, default: 0] += 1 }
                summary.images[split, default: 0] += 1

                if split == "train" || split == "val" {
                    // sem_seg (ade20k layout): label k = category k - 1 after the loader's shift; 0 = background
                    let dir = split == "train" ? "training" : "validation"
                    try scene.image.writeJPEG(out + "/ade20k/images/\(dir)/\(stem).jpg")
                    var label = [UInt8](repeating: 0, count: w * h)
                    for p in 0..<(w * h) where scene.labels[p] != 0 {
                        label[p] = UInt8(scene.objects[Int(scene.labels[p]) - 1].shape.categoryID)
                    }
                    try GrayImage(width: w, height: h, pixels: label).writePNG(out + "/ade20k/annotations/\(dir)/\(stem).png")
                    summary.semSeg += 1
                    // reason_seg: the first question whose targets are all unoccluded (their polygons are exact)
                    if let q = qs.first(where: { !$0.targets.isEmpty && $0.targets.count <= 3 && $0.targets.allSatisfy { !scene.objects[$0].occluded } }) {
                        try scene.image.writeJPEG(out + "/reason_seg/ReasonSeg/\(split)/\(stem).jpg")
                        let shapes: [SynthJSON] = q.targets.map { t in
                            let p = scene.objects[t].polygon
                            let pts: [SynthJSON] = stride(from: 0, to: p.count, by: 2).map { .array([.double(p[$0]), .double(p[$0 + 1])]) }
                            return .object([("label", .string("target")), ("points", .array(pts)), ("group_id", .null),
                                            ("shape_type", .string("polygon")), ("flags", .object([]))])
                        }
                        let j: SynthJSON = .object([("text", .array([.string(q.question)])), ("is_sentence", .bool(true)),
                                                    ("shapes", .array(shapes)), ("imageHeight", .int(h)), ("imageWidth", .int(w))])
                        try write(j.text + "\n", "reason_seg/ReasonSeg/\(split)/\(stem).json")
                        summary.reasonSeg += 1
                        if split == "train" {
                            // explanatory/train.json: the reference reads image, query and outputs
                            explanatory.append(.object([("image", .string("\(stem).jpg")), ("query", .string(q.question)),
                                                        ("outputs", .string(q.explanation)), ("json", .string("\(stem).json"))]))
                            summary.explanations += 1
                        }
                    }
                }
                if split == "train" {
                    // vqa: llava-instruct style multi-turn text-only conversation
                    try scene.image.writeJPEG(out + "/coco/train2017/\(stem).jpg")
                    let textQs = SynthQuestions.candidates(scene).filter { $0.targets.isEmpty }
                    var rng = RNG(seed: config.seed ^ 0x5EED_0000 &+ UInt64(i))
                    var turns: [SynthJSON] = []
                    if config.vqaCaptions {
                        // the first turn names every object, left to right: every word of it depends on the image
                        let caption = SynthQuestions.caption(scene)
                        turns.append(.object([("from", .string("human")), ("value", .string("<image>\n\(caption.question)"))]))
                        turns.append(.object([("from", .string("gpt")), ("value", .string(caption.textAnswer))]))
                    }
                    var used = Set<Int>()
                    for _ in 0..<min(config.vqaCaptions ? 2 : 3, textQs.count) {
                        var k = rng.int(textQs.count)
                        while used.contains(k) { k = (k + 1) % textQs.count }
                        used.insert(k)
                        let q = textQs[k]
                        turns.append(.object([("from", .string("human")), ("value", .string(turns.isEmpty ? "<image>\n\(q.question)" : q.question))]))
                        turns.append(.object([("from", .string("gpt")), ("value", .string(q.textAnswer))]))
                    }
                    vqa.append(.object([("id", .string(stem)), ("image", .string("\(stem).jpg")), ("conversations", .array(turns))]))
                    summary.vqa += 1
                }
                imageID += 1
            }
            try write(SynthJSON.array(records).text + "\n", "muse_\(split).json")
        }
        let categories: [SynthJSON] = SynthShape.allCases.map {
            .object([("supercategory", .string("shape")), ("id", .int($0.categoryID)), ("name", .string($0.name))])
        }
        let instances: SynthJSON = .object([("images", .array(referImages)), ("annotations", .array(referAnns)),
                                            ("categories", .array(categories))])
        try write(instances.text + "\n", "refer_seg/refcoco/instances.json")
        try AtomicWrite.write(SynthPickle.dumps(.array(refs)), to: out + "/refer_seg/refcoco/refs(unc).p")
        // class names: index k - 1 for label k (the ade20k loader shifts labels by one, 0 -> 255 ignored)
        try write(SynthJSON.array(SynthShape.allCases.map { .string($0.name) }).text + "\n", "ade20k/synth_classes.json")
        try write(SynthJSON.array(vqa).text + "\n", "llava_dataset/llava_instruct_150k.json")
        try write(SynthJSON.array(explanatory).text + "\n", "reason_seg/ReasonSeg/explanatory/train.json")
        if let tok = tokenizer {
            try tok.write(to: out + "/tokenizer")
            summary.tokenizer = "\(tok.vocabSize) ids (\(tok.mergedPieces) merged, \(tok.characterPieces) characters, \(tok.paddingPieces) unused)"
        }
        return summary
    }
}
