// MUSE (spec 5.2; utils/multi_reason_seg_dataset.py, utils/multi_reason_seg_val_dataset.py).
//
// `muse_<split>.json` is a list with one dict per image: file_name (COCO train2014) or coco_url (train2017 /
// val2017 by the URL's folder), height, width, ann_list, questions, answers (per question: the target
// annotation dicts) and optionally text_answers (per question: a string with `{seg}` after each target).
// One DataSample per image holds all its questions, one single-round conversation per question; the masks
// follow in question order, then target order.
//
// Decisions (documented in the report and tested):
// * A `{seg}` count that differs from len(answers[i]) makes the reference discard the whole image
//   (`return self[0]`). The train reader drops the whole image at construction and records one index skip
//   naming the first mismatching question. The val loader has no such check (it never builds answers), so
//   val/test keep the image and build that question's answer from the target names instead.
// * An image with an empty ann_list is discarded by both reference loaders (`return self[0]`): index skip.
// * val/test: the question templates are the long list (extended with EXPAND_LONG when
//   use_expand_question_list: train_ds.py builds the training datasets first and they extend the shared
//   list in place). The val loader leaves the assistant turn empty; pixellm keeps the answer as training
//   builds it, because its `[SEG0..5]` groups carry the per-question target count that ar_validate needs.
// * `index` and the generator seed are the reader's position (0..<count); `source` names the raw entry.
import Foundation
import PixelTensor

/// Small JSON helpers shared by the readers in this module.
enum ReaderJSON {
    /// Parses a JSON file; a missing or malformed file is a DatasetError naming it.
    static func load(_ path: String) throws -> Any {
        guard FileManager.default.fileExists(atPath: path) else { throw DatasetError(file: path, "file not found") }
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw DatasetError(file: path, "cannot read: \(error.localizedDescription)")
        }
        do { return try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]) } catch {
            // the reference retries cp1252 for ReasonSeg files that are not UTF-8
            if let s = String(data: data, encoding: .windowsCP1252), let d = s.data(using: .utf8),
               let v = try? JSONSerialization.jsonObject(with: d, options: [.fragmentsAllowed]) { return v }
            throw DatasetError(file: path, "not valid JSON (\(error.localizedDescription))")
        }
    }

    /// Parses one element's bytes (UTF-8, or cp1252 as the reference retries); errors name the file and entry.
    static func parseElement(_ bytes: Data, file: String, entry: Int) throws -> Any {
        do { return try JSONSerialization.jsonObject(with: bytes, options: [.fragmentsAllowed]) } catch {
            if let s = String(data: bytes, encoding: .windowsCP1252), let d = s.data(using: .utf8),
               let v = try? JSONSerialization.jsonObject(with: d, options: [.fragmentsAllowed]) { return v }
            throw DatasetError(file: file, "entry \(entry): not valid JSON (\(error.localizedDescription))")
        }
    }

    /// An integer (JSON numbers with an integral value; not booleans).
    static func int(_ v: Any?) -> Int? {
        guard let n = v as? NSNumber, !isBool(n) else { return nil }
        let d = n.doubleValue
        guard d.isFinite, d == d.rounded(), abs(d) < 1e15 else { return nil }
        return Int(d)
    }

    static func isBool(_ n: NSNumber) -> Bool {
        let t = String(cString: n.objCType)
        return t == "c" || t == "B"
    }

    static func typeName(_ v: Any?) -> String {
        switch v {
        case nil: return "missing"
        case is NSNull: return "null"
        case is String: return "a string"
        case is [Any]: return "a list"
        case is [String: Any]: return "a dict"
        case let n as NSNumber: return isBool(n) ? "a boolean" : "a number"
        default: return "\(type(of: v!))"
        }
    }

    /// `dir` made absolute against the current directory, without a trailing slash.
    static func absolute(_ dir: String) -> String {
        var d = dir.hasPrefix("/") ? dir : FileManager.default.currentDirectoryPath + "/" + dir
        while d.count > 1 && d.hasSuffix("/") { d.removeLast() }
        return d
    }

    /// A file name from an annotation that stays inside the directory it is joined to: relative, and no ".."
    /// component (a dataset from a stranger must not make pixellm read files elsewhere).
    static func staysInside(_ name: String) -> Bool { !name.hasPrefix("/") && !name.split(separator: "/").contains("..") }

    static func basename(_ path: String) -> String { path.split(separator: "/").last.map(String.init) ?? path }
}

public final class MUSEReader: DatasetReader {
    public static let splits = ["train", "val", "test_less", "test_many"]

    public let dataset = "multi_reason_seg"
    public let subset: String
    public let split: String
    /// The index json that was read.
    public let indexFile: String
    public let datasetDir: String
    public let options: ReaderOptions
    public private(set) var indexSkips = SkipLog()
    public var count: Int { entries.count }

    /// One image record: its raw position in the json and the parsed fields.
    struct Entry {
        var raw: Int
        var imagePath: String
        var height: Int
        var width: Int
        var questions: [String]
        var answers: [[[String: Any]]]
        var textAnswers: [String?]
        /// Questions whose text answer is ignored (val/test with a `{seg}` mismatch): answer from the names.
        var ignoreText: Set<Int>
    }
    /// A kept image: its raw position, the byte range of its record in the json, and the questions whose text
    /// answer is ignored. The record is parsed again when the sample is built.
    struct Kept {
        var raw: Int
        var range: Range<Int>
    }
    let entries: [Kept]
    /// The index file's bytes (memory-mapped).
    let bytes: Data

    public init(datasetDir: String, split: String, options: ReaderOptions = ReaderOptions()) throws {
        let dir = ReaderJSON.absolute(datasetDir)
        guard Self.splits.contains(split) else {
            throw DatasetError(file: dir, "unknown MUSE split '\(split)' (expected \(Self.splits.joined(separator: ", ")))")
        }
        self.datasetDir = dir
        self.split = split
        self.subset = "muse_\(split)"
        self.options = options
        let name = "muse_\(split).json"
        let candidates = ["\(dir)/muse/\(name)", "\(dir)/\(name)"]
        let file = candidates.first { FileManager.default.fileExists(atPath: $0) } ?? candidates[0]
        self.indexFile = file
        bytes = try ReaderJSON.mapped(file)
        let ranges: [Range<Int>]
        do { ranges = try ReaderJSON.listElementRanges(bytes, file: file) } catch let e as DatasetError where e.message.hasPrefix("the top level") {
            throw DatasetError(file: file, "the top level is not a list of image records")
        }
        var kept: [Kept] = []
        var skips = SkipLog()
        for (k, range) in ranges.enumerated() {
            let parsed = try Self.parseEntry(ReaderJSON.parseElement(bytes.subdata(in: range), file: file, entry: k), k: k, file: file,
                                             datasetDir: dir, split: split)
            switch parsed {
            case .skip(let s): skips.record(s)
            case .keep: kept.append(Kept(raw: k, range: range))
            }
        }
        self.entries = kept
        self.indexSkips = skips
    }

    enum Parsed { case keep(Entry), skip(SampleSkip) }

    /// Validates one image record and extracts its fields; malformed records are DatasetErrors naming the entry,
    /// records the reference would redraw are skips.
    static func parseEntry(_ item: Any, k: Int, file: String, datasetDir dir: String, split: String) throws -> Parsed {
        let coco = dir + "/refer_seg/images/mscoco/images"
        do {
            func bad(_ what: String) -> DatasetError { DatasetError(file: file, "entry \(k): \(what)") }
            guard let r = item as? [String: Any] else { throw bad("is \(ReaderJSON.typeName(item)), not a dict") }
            let imagePath: String
            if let f = r["file_name"] {
                guard let s = f as? String, !s.isEmpty else { throw bad("'file_name' is \(ReaderJSON.typeName(f)), not a file name") }
                guard ReaderJSON.staysInside(s) else { throw bad("'file_name' \(s) leaves the image directory") }
                imagePath = "\(coco)/train2014/\(s)"
            } else if let u = r["coco_url"] {
                guard let s = u as? String, !s.isEmpty else { throw bad("'coco_url' is \(ReaderJSON.typeName(u)), not a URL") }
                imagePath = "\(coco)/\(s.contains("train2017") ? "train2017" : "val2017")/\(ReaderJSON.basename(s))"
            } else {
                throw bad("has neither 'file_name' nor 'coco_url'")
            }
            guard let h = ReaderJSON.int(r["height"]), let w = ReaderJSON.int(r["width"]), h > 0, w > 0 else {
                throw bad("'height' / 'width' are not positive integers (\(ReaderJSON.typeName(r["height"])), \(ReaderJSON.typeName(r["width"])))")
            }
            guard let anns = r["ann_list"] as? [Any] else { throw bad("'ann_list' is \(ReaderJSON.typeName(r["ann_list"])), not a list") }
            guard let qv = r["questions"] as? [Any] else { throw bad("'questions' is \(ReaderJSON.typeName(r["questions"])), not a list") }
            guard let av = r["answers"] as? [Any] else { throw bad("'answers' is \(ReaderJSON.typeName(r["answers"])), not a list") }
            var questions: [String] = []
            for (q, v) in qv.enumerated() {
                guard let s = v as? String else { throw bad("question \(q) is \(ReaderJSON.typeName(v)), not a string") }
                questions.append(s)
            }
            guard av.count == questions.count else {
                throw bad("\(questions.count) questions but \(av.count) answer lists")
            }
            var answers: [[[String: Any]]] = []
            for (q, v) in av.enumerated() {
                guard let l = v as? [Any] else { throw bad("answers[\(q)] is \(ReaderJSON.typeName(v)), not a list of annotations") }
                var targets: [[String: Any]] = []
                for (t, a) in l.enumerated() {
                    guard let d = a as? [String: Any] else { throw bad("answers[\(q)][\(t)] is \(ReaderJSON.typeName(a)), not an annotation dict") }
                    guard d["segmentation"] != nil else { throw bad("answers[\(q)][\(t)] has no 'segmentation'") }
                    guard d["category_name"] is String || d["rephrased_name"] is String else {
                        throw bad("answers[\(q)][\(t)] has neither 'category_name' nor 'rephrased_name'")
                    }
                    targets.append(d)
                }
                answers.append(targets)
            }
            var texts = [String?](repeating: nil, count: questions.count)
            if let tv = r["text_answers"], !(tv is NSNull) {
                guard let l = tv as? [Any] else { throw bad("'text_answers' is \(ReaderJSON.typeName(tv)), not a list") }
                guard l.count == questions.count else { throw bad("\(questions.count) questions but \(l.count) text_answers") }
                for (q, v) in l.enumerated() {
                    if v is NSNull { continue }
                    guard let s = v as? String else { throw bad("text_answers[\(q)] is \(ReaderJSON.typeName(v)), not a string") }
                    texts[q] = s
                }
            }
            let base = ReaderJSON.basename(file)
            if anns.isEmpty {
                return .skip(SampleSkip(file: file, "empty ann_list: \(base) entry \(k) has no annotations (the reference draws another image)"))
            }
            if questions.isEmpty {
                return .skip(SampleSkip(file: file, "no questions: \(base) entry \(k) has an empty question list"))
            }
            var ignoreText = Set<Int>()
            var mismatch: String?
            for q in 0..<questions.count {
                guard let t = texts[q] else { continue }
                let n = SegText.count("{seg}", in: t)
                if n != answers[q].count {
                    ignoreText.insert(q)
                    if mismatch == nil { mismatch = "\(base) entry \(k) question \(q): \(n) {seg} but \(answers[q].count) answers" }
                }
            }
            if let m = mismatch, split == "train" {
                return .skip(SampleSkip(file: file, "{seg} count differs from the answers: \(m) (the whole image is dropped, as the reference)"))
            }
            return .keep(Entry(raw: k, imagePath: imagePath, height: h, width: w, questions: questions, answers: answers,
                               textAnswers: texts, ignoreText: ignoreText))
        }
    }

    /// The raw json position of item `index`.
    public func rawIndex(_ index: Int) -> Int? { entries.indices.contains(index) ? entries[index].raw : nil }

    /// The parsed record of item `index` (parsed again from its bytes).
    func entry(_ index: Int) throws -> Entry {
        let kept = entries[index]
        let item = try ReaderJSON.parseElement(bytes.subdata(in: kept.range), file: indexFile, entry: kept.raw)
        guard case .keep(let e) = try Self.parseEntry(item, k: kept.raw, file: indexFile, datasetDir: datasetDir, split: split) else {
            throw SampleSkip(file: indexFile, "entry \(kept.raw) changed since the index was read")
        }
        return e
    }

    /// What evaluation needs beyond the sample: per question, the dataset's text answer (`{seg}` after each target;
    /// nil when the record has none or its `{seg}` count differs from the targets) and its kind (the optional
    /// "question_kinds" list of pixellm's synthetic set: "single", "multi", "relational", ...; nil when absent).
    public func evalInfo(_ index: Int) throws -> (textAnswers: [String?], kinds: [String?]) {
        guard entries.indices.contains(index) else {
            throw SampleSkip(file: indexFile, "index out of range: \(index) not in 0..<\(count)")
        }
        let e: Entry
        do { e = try entry(index) } catch let d as DatasetError { throw SampleSkip(file: d.file, d.message) }
        let texts = e.textAnswers.enumerated().map { e.ignoreText.contains($0.offset) ? nil : $0.element }
        var kinds = [String?](repeating: nil, count: e.questions.count)
        let kept = entries[index]
        if let r = try ReaderJSON.parseElement(bytes.subdata(in: kept.range), file: indexFile, entry: kept.raw) as? [String: Any],
           let kv = r["question_kinds"], !(kv is NSNull) {
            guard let l = kv as? [Any], l.count == kinds.count else {
                throw SampleSkip(file: indexFile, "entry \(kept.raw): 'question_kinds' is not a list of \(kinds.count) strings")
            }
            for (q, v) in l.enumerated() { kinds[q] = v as? String }
        }
        return (texts, kinds)
    }

    public func sample(_ index: Int, seed: UInt64) throws -> DataSample {
        let base = ReaderJSON.basename(indexFile)
        guard entries.indices.contains(index) else {
            throw SampleSkip(file: indexFile, "index out of range: \(index) not in 0..<\(count)")
        }
        let e: Entry
        do { e = try entry(index) } catch let d as DatasetError { throw SampleSkip(file: d.file, d.message) }
        let src = "\(base) entry \(e.raw)"
        guard FileManager.default.fileExists(atPath: e.imagePath) else {
            throw SampleSkip(file: e.imagePath, "missing image: \(src) names an image that does not exist")
        }
        var rng = DataRNG.make(seed: seed, subset: subset, index: index)
        let questionTemplates = Templates.questionList(short: false, expand: options.useExpandQuestionList)
        let group = options.segGroup
        var conversations: [[DialogueRound]] = []
        var targets: [SampleTarget] = []
        for (q, text) in e.questions.enumerated() {
            let question = Templates.fill(DataRNG.choice(questionTemplates, &rng), sent: text)
            let anns = e.answers[q]
            var names: [String] = []
            for (t, a) in anns.enumerated() {
                let item = "\(src) question \(q) target \(t)"
                let mask: RLE
                do {
                    let seg = try COCOSegmentation(json: a["segmentation"] as Any, item: item)
                    let parts = try seg.rles(height: e.height, width: e.width, item: item)
                    mask = parts.isEmpty ? RLE(encoding: BinaryMask(height: e.height, width: e.width))
                        : try RLE.merge(parts, item: item)
                } catch let m as MaskError {
                    throw SampleSkip(file: indexFile, "bad segmentation: \(m.item): \(m.message)")
                }
                let nm = (a["rephrased_name"] as? String) ?? (a["category_name"] as? String) ?? ""
                names.append(nm)
                let prov = ReaderJSON.int(a["id"]).map { "ann \($0)" } ?? "question \(q) target \(t)"
                targets.append(SampleTarget(mask: mask, name: nm, provenance: "\(src) \(prov)"))
            }
            let answer: String
            if let t = e.textAnswers[q], !e.ignoreText.contains(q) {
                answer = t.replacingOccurrences(of: "{seg}", with: group)
            } else {
                guard !anns.isEmpty else {
                    throw SampleSkip(file: indexFile, "no targets: \(src) question \(q) has no targets and no text answer")
                }
                answer = Self.namesAnswer(anns, group: group, rng: &rng)
            }
            conversations.append([DialogueRound(question: question, answer: answer)])
        }
        return DataSample(dataset: dataset, subset: subset, index: index, imagePath: e.imagePath, height: e.height,
                          width: e.width, conversations: conversations, targets: targets, source: src)
    }

    /// The answer without text_answers: per target rephrased_name (p = 0.9, when present) or category_name;
    /// then 50/50 "separate" ("a is G, b is G and c is G.") or one MR multi template with the names joined by
    /// ", " and lowercased and the groups joined as "G, G and G".
    static func namesAnswer(_ anns: [[String: Any]], group: String, rng: inout RNG) -> String {
        let names: [String] = anns.map { a in
            let u = rng.uniform()
            if u > 0.1, let r = a["rephrased_name"] as? String { return r }
            return (a["category_name"] as? String) ?? (a["rephrased_name"] as? String) ?? ""
        }
        let separate = rng.int(2) == 1
        if separate {
            let temp = DataRNG.choice(Templates.mrSingleAnswers, &rng).replacingOccurrences(of: "[SEG]", with: group)
            let parts = names.map { n -> String in
                let s = temp.contains("{class_name}") ? Templates.fill(temp, className: n) : temp
                return String(s.dropLast())
            }
            return SegText.joinAnd(parts) + "."
        }
        let temp = DataRNG.choice(Templates.mrMultiAnswers, &rng)
        let segs = SegText.joinAnd([String](repeating: "[SEG]", count: names.count))
        let filled = temp.contains("{class_name}")
            ? Templates.fill(temp, className: names.joined(separator: ", ").lowercased(), seg: segs)
            : Templates.fill(temp, seg: segs)
        return filled.replacingOccurrences(of: "[SEG]", with: group)
    }
}
