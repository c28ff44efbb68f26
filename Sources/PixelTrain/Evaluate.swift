import Foundation
import PixelData
import PixelDistributed
import PixelJSON
import PixelModel
import PixelTensor
import PixelText

// `pixellm eval` (issue 11; pixellm-spec.md section 6): the reference's two evaluations on the datasets' own layouts.
//
//   * MUSE (`MultiReasonSeg|val|test_less|test_many`, ar_validate): per image, per question, free greedy generation
//     (KV cache) of the answer to "{long template with the question}", the SEG groups' masks, the Hungarian matching
//     of predictions to ground truths (point-sampled BCE + DICE cost, seeded by the image's position), and the pairs:
//     matched, unmatched ground truth (an empty prediction), unmatched prediction. gIoU = sum of the pairs' IoUs /
//     sum over images of max(P, G); cIoU = sum I / sum U. Two readings of an unmatched prediction side by side:
//     `faithful` (the reference: its raw logits through histc over [0, 1], so only logits in [0.5, 1] count) and
//     `clean` (binarised at 0: the whole false-positive area counts).
//   * refCOCO family and ReasonSeg (validate): per image, every sentence (ReasonSeg: the first) as one
//     conversation "What is {sentence} in this image? Please output segmentation mask." with the answer "[SEG0] ...
//     [SEG5]." teacher-forced; one forward per image; per-sentence IoU; gIoU = mean IoU, cIoU = sum I / sum U.
//     `multi<refcoco...>` groups the sentences 6, 5, 4, 6, ... into one question each.
//
// Images are dealt to ranks round-robin; every rank's per-question records are gathered on every rank and the figures
// computed from them in image order, so the report is the same at any rank count. Per question kind (MUSE records
// that say it, e.g. pixellm's synthetic set) the MUSE figures use per-question normalisation: sum IoU / sum of
// max(P, G) over that kind's questions.

public enum EvalError: Error, CustomStringConvertible {
    case unknownDataset(String, known: [String])
    case model(String, String)
    case data(String, String)

    public var description: String {
        switch self {
        case .unknownDataset(let n, let known):
            return "unknown evaluation dataset '\(n)'; known: \(known.joined(separator: ", ")) (join several with '||')"
        case .model(let f, let m): return "\(f): \(m)"
        case .data(let f, let m): return "\(f): \(m)"
        }
    }
}

/// One evaluation split, in the reference's spelling.
public struct EvalDataset: Equatable, Sendable {
    public enum Kind: Equatable, Sendable {
        case muse(split: String)
        case refer(name: String, splitBy: String, split: String, multi: Bool)
        case reasonSeg(split: String)
    }
    public let name: String
    public let kind: Kind

    public var generates: Bool { if case .muse = kind { return true } else { return false } }

    /// The names `parse` accepts (the refer splits each REFER dataset has).
    public static let known: [String] = {
        var k = MUSEReader.splits.filter { $0 != "train" }.map { "MultiReasonSeg|\($0)" }
        let refer: [(String, String, [String])] = [
            ("refcoco", "unc", ["val", "testA", "testB"]), ("refcoco+", "unc", ["val", "testA", "testB"]),
            ("refcocog", "umd", ["val", "test"]), ("refcocog", "google", ["val"]), ("refclef", "unc", ["val", "testA", "testB", "testC"]),
            ("refclef", "berkeley", ["val", "test"]),
        ]
        for multi in ["", "multi"] {
            for (d, by, splits) in refer { for s in splits { k.append("\(multi)\(d)|\(by)|\(s)") } }
        }
        k += ["ReasonSeg|val", "ReasonSeg|test"]
        return k
    }()

    /// "MultiReasonSeg|val||refcoco|unc|testA" -> the splits; an unknown name lists the known ones.
    public static func parse(_ spec: String) throws -> [EvalDataset] {
        let names = spec.components(separatedBy: "||").map { $0.trimmingCharacters(in: .whitespaces) }
        return try names.map { n in
            let p = n.split(separator: "|", omittingEmptySubsequences: false).map(String.init)
            if p.count == 2, p[0] == "MultiReasonSeg", MUSEReader.splits.contains(p[1]) {
                return EvalDataset(name: n, kind: .muse(split: p[1]))
            }
            if p.count == 2, p[0] == "ReasonSeg", ["train", "val", "test"].contains(p[1]) {
                return EvalDataset(name: n, kind: .reasonSeg(split: p[1]))
            }
            if p.count == 3 {
                let multi = p[0].hasPrefix("multi")
                let ds = multi ? String(p[0].dropFirst("multi".count)) : p[0]
                if ReferSegReader.names.contains(ds), ReferSegReader.splitSchemes.contains(p[1]),
                   ["train", "val", "test", "testA", "testB", "testC"].contains(p[2]) {
                    return EvalDataset(name: n, kind: .refer(name: ds, splitBy: p[1], split: p[2], multi: multi))
                }
            }
            throw EvalError.unknownDataset(n, known: known)
        }
    }
}

/// One question of an evaluation image.
public struct EvalQuestion: Sendable {
    /// The human turn ("<image>\n...").
    public var question: String
    /// Teacher-forced answer (validate()); nil: generate (ar_validate()).
    public var forcedAnswer: String?
    /// The dataset's answer with `{seg}` after each target (MUSE text_answers), for the text accuracy.
    public var referenceAnswer: String?
    public var targets: [SampleTarget]
    public var kind: String?
}

public struct EvalImage: Sendable {
    public var imagePath: String
    public var height: Int
    public var width: Int
    public var source: String
    public var questions: [EvalQuestion]
}

/// The images of one split, read with the dataset readers.
public final class EvalSource {
    public let dataset: EvalDataset
    let reader: any DatasetReader
    let options: ReaderOptions
    let seed: UInt64

    public init(_ dataset: EvalDataset, datasetDir: String, segTokenNum: Int = 3, scales: Int = 2, seed: UInt64 = 0) throws {
        self.dataset = dataset
        self.seed = seed
        var o = ReaderOptions()
        o.segTokenNum = segTokenNum
        o.imageFeatureScaleNum = scales
        o.explanatory = -1
        options = o
        do {
            switch dataset.kind {
            case .muse(let split): reader = try MUSEReader(datasetDir: datasetDir, split: split, options: o)
            case .refer(let name, let by, let split, _):
                reader = try ReferSegReader(datasetDir: datasetDir, name: name, split: split, splitBy: by, options: o)
            case .reasonSeg(let split): reader = try ReasonSegReader(datasetDir: datasetDir, split: split, options: o)
            }
        } catch let e as DatasetError {
            throw EvalError.data(e.file, "\(dataset.name): \(e.message)")
        }
    }

    public var count: Int { reader.count }

    /// The seg group text "[SEG0] [SEG1] ... [SEG5]".
    var group: String { options.segGroup }

    public func image(_ index: Int) throws -> EvalImage {
        switch dataset.kind {
        case .muse:
            let r = reader as! MUSEReader
            let s = try r.sample(index, seed: seed)
            let (texts, kinds) = try r.evalInfo(index)
            var questions: [EvalQuestion] = []
            var t = 0
            for (q, conv) in s.conversations.enumerated() {
                let n = SegText.countGroups(conv[0].answer)
                let targets = Array(s.targets[t..<min(t + n, s.targets.count)])
                t += n
                questions.append(EvalQuestion(question: conv[0].question, forcedAnswer: nil,
                                              referenceAnswer: q < texts.count ? texts[q] : nil, targets: targets,
                                              kind: q < kinds.count ? kinds[q] : nil))
            }
            return EvalImage(imagePath: s.imagePath, height: s.height, width: s.width, source: s.source, questions: questions)
        case .refer(_, _, _, let multi):
            let r = reader as! ReferSegReader
            let item = try r.evalItem(index)
            var questions: [EvalQuestion] = []
            if multi {
                let sizes = [6, 5, 4]
                var i = 0, k = 0
                while i < item.sentences.count {
                    let part = Array(item.sentences[i..<min(i + sizes[k], item.sentences.count)])
                    let text = SegText.joinAnd(part.map { $0.name.trimmingCharacters(in: .whitespaces) })
                    let answer = SegText.joinAnd([String](repeating: group, count: part.count)) + "."
                    questions.append(EvalQuestion(question: "<image>\n What is \(text) in this image? Please output segmentation mask.",
                                                  forcedAnswer: answer, referenceAnswer: nil, targets: part, kind: "multi-refer"))
                    i += sizes[k]
                    k = (k + 1) % sizes.count
                }
            } else {
                for s in item.sentences {
                    questions.append(EvalQuestion(question: "<image>\n What is \(s.name) in this image? Please output segmentation mask.",
                                                  forcedAnswer: group + ".", referenceAnswer: nil, targets: [s], kind: "refer"))
                }
            }
            return EvalImage(imagePath: item.imagePath, height: item.height, width: item.width,
                             source: "\(r.refsFile) image \(index)", questions: questions)
        case .reasonSeg:
            let r = reader as! ReasonSegReader
            let a = try r.annotation(index)
            let text = a.sentences[0].trimmingCharacters(in: .whitespacesAndNewlines)
            let q = a.isSentence ? "<image>\n \(text) Please output segmentation mask."
                : "<image>\n What is \(text) in this image? Please output segmentation mask."
            let target = SampleTarget(mask: a.target, name: text, provenance: a.source)
            return EvalImage(imagePath: a.imagePath, height: a.height, width: a.width, source: a.source,
                             questions: [EvalQuestion(question: q, forcedAnswer: group + ".", referenceAnswer: nil, targets: [target],
                                                      kind: a.isSentence ? "reasoning" : "name")])
        }
    }
}

// MARK: - per-question records

/// One (prediction, ground truth) pair of a question. `pred` / `gt` nil: the unmatched side (an empty mask).
/// `union` is the faithful reading, `unionClean` the binarised one (they differ only for unmatched predictions).
public struct EvalPair: Codable, Equatable, Sendable {
    public var pred: Int?
    public var gt: Int?
    public var intersection: Int
    public var union: Int
    public var unionClean: Int

    public func iou(clean: Bool) -> Double {
        let u = clean ? unionClean : union
        return u == 0 ? 1 : Double(intersection) / (Double(u) + 1e-5)
    }
}

public struct EvalQuestionRecord: Codable, Sendable {
    public var image: Int
    /// The question's position in its image.
    public var questionIndex: Int
    public var imagePath: String
    public var question: String
    public var kind: String?
    /// The generated answer (SEG groups shown as [1], [2], ...) or the teacher-forced one.
    public var answer: String
    public var referenceAnswer: String?
    public var targets: [String]
    public var predicted: Int
    public var groundTruth: Int
    public var pairs: [EvalPair]
    /// Generation stopped at the token limit (no EOS).
    public var tokenLimit: Bool
    /// The answer's SEG count is not a multiple of the group size: no masks, scored zero.
    public var badSegCount: Bool
    /// Exact match with the reference answer after normalising case and spaces (nil without a reference).
    public var exactMatch: Bool?
    /// Per target: whether the answer names it.
    public var named: [Bool]
}

/// Figures of a set of records.
public struct EvalFigures: Codable, Sendable {
    public var images: Int
    public var questions: Int
    public var targets: Int
    public var predicted: Int
    public var gIoU: Double
    public var cIoU: Double
    /// MUSE: the clean reading; nil for teacher-forced splits.
    public var gIoUClean: Double?
    public var cIoUClean: Double?
    /// Text figures (generation only).
    public var exactMatch: Double?
    public var exactMatchQuestions: Int?
    public var targetsNamed: Double?
    public var tokenLimit: Int
    public var badSegCount: Int
}

public struct EvalReport: Codable, Sendable {
    public var dataset: String
    public var mode: String
    public var overall: EvalFigures
    public var byKind: [String: EvalFigures]
    public var seconds: Double
    public var records: [EvalQuestionRecord]
}

public enum EvalFiguresMath {
    /// The figures of `records` (image-grouped for MUSE's per-image normalisation when `perImage`).
    public static func figures(_ records: [EvalQuestionRecord], generates: Bool, perImage: Bool) -> EvalFigures {
        var images = Set<Int>()
        for r in records { images.insert(r.image) }
        let targets = records.reduce(0) { $0 + $1.groundTruth }, predicted = records.reduce(0) { $0 + $1.predicted }
        var f = EvalFigures(images: images.count, questions: records.count, targets: targets, predicted: predicted, gIoU: 0, cIoU: 0,
                            tokenLimit: records.filter(\.tokenLimit).count, badSegCount: records.filter(\.badSegCount).count)
        if generates {
            for clean in [false, true] {
                var acc = MUSEAccumulator()
                if perImage {
                    var order: [Int] = [], byImage: [Int: [EvalQuestionRecord]] = [:]
                    for r in records {
                        if byImage[r.image] == nil { order.append(r.image) }
                        byImage[r.image, default: []].append(r)
                    }
                    for i in order {
                        let rs = byImage[i]!
                        acc.addImage(pairs: rs.flatMap { $0.pairs.map { ($0.intersection, clean ? $0.unionClean : $0.union) } },
                                     predicted: rs.reduce(0) { $0 + $1.predicted }, groundTruth: rs.reduce(0) { $0 + $1.groundTruth })
                    }
                } else {
                    for r in records {
                        acc.addImage(pairs: r.pairs.map { ($0.intersection, clean ? $0.unionClean : $0.union) },
                                     predicted: r.predicted, groundTruth: r.groundTruth)
                    }
                }
                if clean { f.gIoUClean = acc.gIoU; f.cIoUClean = acc.cIoU } else { f.gIoU = acc.gIoU; f.cIoU = acc.cIoU }
            }
            let withRef = records.filter { $0.exactMatch != nil }
            if !withRef.isEmpty {
                f.exactMatch = Double(withRef.filter { $0.exactMatch == true }.count) / Double(withRef.count)
                f.exactMatchQuestions = withRef.count
            }
            let named = records.flatMap(\.named)
            if !named.isEmpty { f.targetsNamed = Double(named.filter { $0 }.count) / Double(named.count) }
        } else {
            var acc = IoUAccumulator()
            for r in records { for p in r.pairs { acc.add(intersection: p.intersection, union: p.union) } }
            f.gIoU = acc.gIoU
            f.cIoU = acc.cIoU
        }
        return f
    }
}

/// Text normalisation for the exact match: SEG markers dropped, lower case, spaces collapsed, no space before
/// punctuation.
public enum EvalText {
    public static func normalise(_ s: String) -> String {
        var t = s.replacingOccurrences(of: "{seg}", with: " ")
        // numbered groups "[1]" and SEG tokens
        t = t.replacingOccurrences(of: #"\[(SEG\d*|\d+|incomplete SEG group)\]"#, with: " ", options: .regularExpression)
        t = t.lowercased()
        t = t.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }).joined(separator: " ")
        for p in [".", ",", "?", "!", ";", ":"] { t = t.replacingOccurrences(of: " " + p, with: p) }
        return t.trimmingCharacters(in: .whitespaces)
    }

    /// What names each target of a question: with a reference answer, the words before its `{seg}` after the last
    /// article ("The shape left of the black square is the large orange pentagon {seg}" -> "large orange pentagon";
    /// "The black square {seg}" -> "black square"); without one, the target's name.
    public static func mentions(_ q: EvalQuestion) -> [String] {
        guard let ref = q.referenceAnswer else { return q.targets.map(\.name) }
        let parts = ref.components(separatedBy: "{seg}")
        guard parts.count - 1 == q.targets.count else { return q.targets.map(\.name) }
        return parts.dropLast().map { part in
            let words = normalise(part).split(whereSeparator: { $0 == " " || ".,?!;:".contains($0) }).map(String.init)
            let last = words.lastIndex { ["the", "a", "an"].contains($0) }
            return (last.map { Array(words[($0 + 1)...]) } ?? words).joined(separator: " ")
        }
    }

    /// Whether `answer` names `target`: the target's words appear, in order and contiguous, among the answer's words
    /// (both normalised, punctuation dropped).
    public static func names(_ answer: String, _ target: String) -> Bool {
        func words(_ s: String) -> [Substring] {
            normalise(s).split(whereSeparator: { $0 == " " || ".,?!;:".contains($0) })
        }
        let a = words(answer), n = words(target)
        guard !n.isEmpty, n.count <= a.count else { return false }
        for start in 0...(a.count - n.count) where a[start..<(start + n.count)].elementsEqual(n) { return true }
        return false
    }
}

// MARK: - the evaluator

/// A model's output for one question: P mask logit maps (H x W, row-major; mask = logit > 0) and the answer text.
public struct EvalPrediction: Sendable {
    public var logits: [[Float]]
    public var answer: String
    public var tokenLimit: Bool
    public var badSegCount: Bool
    public init(logits: [[Float]], answer: String, tokenLimit: Bool = false, badSegCount: Bool = false) {
        self.logits = logits; self.answer = answer; self.tokenLimit = tokenLimit; self.badSegCount = badSegCount
    }
}

public struct EvalOptions: Sendable {
    public var maxNewTokens = 512
    /// Matching points per question (the reference: 12,544) and the seed of their draw (mixed with the image index).
    public var points = 12_544
    public var seed: UInt64 = 0
    /// Overlays of the first `saveMasksCount` images go to this directory.
    public var saveMasks: String?
    public var saveMasksCount = 8
    /// Evaluate only the first `limit` images (nil: all).
    public var limit: Int?
    public init() {}
}

public final class Evaluator {
    public let model: PixelLMForCausalLM
    public let tokenizer: Tokenizer
    public let comm: any Communicator
    public let options: EvalOptions

    /// `tokenizerName` (its directory) names the tokenizer in errors.
    public init(model: PixelLMForCausalLM, tokenizer: Tokenizer, tokenizerName: String = "tokenizer", comm: any Communicator,
                options: EvalOptions = EvalOptions()) throws {
        let per = model.config.segTokenNum * model.config.imageFeatureScaleNum
        do { try tokenizer.requirePixelLMTokens(segTokenCount: per) } catch {
            throw EvalError.model(tokenizerName, "\(error)")
        }
        guard tokenizer.segIds == model.segTokenIds else {
            throw EvalError.model(tokenizerName, "its SEG ids \(tokenizer.segIds) differ from the model's \(model.segTokenIds)")
        }
        self.model = model
        self.tokenizer = tokenizer
        self.comm = comm
        self.options = options
    }

    /// Evaluates one split: this rank's images (i % size == rank), then every rank's records gathered on all ranks.
    public func run(_ source: EvalSource, progress: ((Int, Int) -> Void)? = nil) throws -> EvalReport {
        let t0 = Date()
        let n = min(source.count, options.limit ?? source.count)
        var mine: [EvalQuestionRecord] = []
        var done = 0
        var firstError: String?
        for i in stride(from: comm.rank, to: n, by: comm.size) {
            do {
                try MappedFiles.verifyAll()
                mine += try evaluateImage(source, i)
            } catch {
                firstError = firstError ?? "\(error)"
                break
            }
            done += 1
            progress?(done * comm.size, n)
        }
        // every rank learns whether any failed (no rank may hang in the gather below)
        // the ranks' shares of generation can differ by far more than a training step: name the wait, never abort
        let watchdog = CommWatchdog.current
        CommWatchdog.current.timeout = 0
        comm.checkIn("evaluation of \(source.dataset.name): this rank's images done")
        CommWatchdog.current = watchdog
        let failed = comm.allreduce(Int32(firstError == nil ? 0 : 1), op: .max)
        if failed != 0 {
            throw EvalError.data(source.dataset.name, firstError ?? "another rank failed (see its message)")
        }
        var records: [EvalQuestionRecord] = []
        if comm.size == 1 {
            records = mine
        } else {
            // every rank's records as JSON, back to back: the lengths first, then the bytes
            let bytes = [UInt8](try JSONEncoder().encode(mine))
            let counts = comm.allgather([Int64(bytes.count)]).map { Int($0) }
            var all = [UInt8](repeating: 0, count: counts.reduce(0, +))
            bytes.withUnsafeBufferPointer { src in
                all.withUnsafeMutableBufferPointer { comm.allgatherv(src.baseAddress!, counts: counts, into: $0.baseAddress!) }
            }
            var at = 0
            for c in counts {
                records += try JSONDecoder().decode([EvalQuestionRecord].self, from: Data(all[at..<(at + c)]))
                at += c
            }
        }
        records.sort { ($0.image, $0.questionIndex) < ($1.image, $1.questionIndex) }
        let gen = source.dataset.generates
        var byKind: [String: EvalFigures] = [:]
        for k in Set(records.compactMap(\.kind)).sorted() {
            byKind[k] = EvalFiguresMath.figures(records.filter { $0.kind == k }, generates: gen, perImage: false)
        }
        return EvalReport(dataset: source.dataset.name, mode: gen ? "generate" : "teacher-forced",
                          overall: EvalFiguresMath.figures(records, generates: gen, perImage: true), byKind: byKind,
                          seconds: Date().timeIntervalSince(t0), records: records)
    }

    func evaluateImage(_ source: EvalSource, _ index: Int) throws -> [EvalQuestionRecord] {
        let item = try source.image(index)
        let rgb: RGBImage
        do { rgb = try RGBImage.load(item.imagePath) } catch { throw EvalError.data(item.imagePath, "\(error)") }
        guard rgb.height == item.height, rgb.width == item.width else {
            throw EvalError.data(item.imagePath, "is \(rgb.width)x\(rgb.height), the annotations (\(item.source)) say \(item.width)x\(item.height)")
        }
        let predictions = try predict(item, rgb)
        let records = Self.score(item, index: index, predictions: predictions, generates: source.dataset.generates,
                                 points: options.points, seed: options.seed)
        if let dir = options.saveMasks, index < options.saveMasksCount {
            for (qi, p) in predictions.enumerated() {
                let split = source.dataset.name.map { $0.isLetter || $0.isNumber || $0 == "+" ? $0 : "_" }
                let d = "\(dir)/\(String(split))/" + String(format: "image%05d-q%02d", index, qi)
                let H = item.height, W = item.width
                let logits = p.logits.isEmpty ? nil : Tensor(p.logits.flatMap { $0 }, shape: [p.logits.count, H, W])
                // a generated mask is labelled with the target it was matched to
                var labels = [String](repeating: "unmatched", count: p.logits.count)
                for pair in records[qi].pairs { if let pi = pair.pred, let g = pair.gt { labels[pi] = item.questions[qi].targets[g].name } }
                _ = try MaskOverlay.write(image: rgb, logits: logits, labels: labels, to: d)
                let q = item.questions[qi]
                let gt = MaskOverlay.render(image: rgb, masks: q.targets.map { $0.mask.decode().grayImage }, labels: q.targets.map(\.name))
                try gt.writePNG((d as NSString).appendingPathComponent("ground_truth.png"))
                let text = "question: \(q.question)\nanswer: \(p.answer)\nreference: \(q.referenceAnswer ?? "-")\n"
                try AtomicFile.write(Array(text.utf8), to: (d as NSString).appendingPathComponent("answer.txt"))
            }
        }
        return records
    }

    /// The model's answers and masks for every question of an image: one teacher-forced forward (validate()), or a
    /// greedy generation per question (ar_validate()).
    func predict(_ item: EvalImage, _ rgb: RGBImage) throws -> [EvalPrediction] {
        let config = model.config
        let input = CLIPImagePreprocessor(size: config.resizeVisionTowerSize)(rgb)
        let H = item.height, W = item.width
        func rows(_ t: Tensor?) -> [[Float]] {
            guard let t else { return [] }
            let c = t.contiguousData()
            return (0..<c.dim(0)).map { k in Array(UnsafeBufferPointer(start: c.ptr + k * H * W, count: H * W)) }
        }
        if item.questions.allSatisfy({ $0.forcedAnswer != nil }) {
            var convs: [PixelLMConversation] = []
            for q in item.questions {
                let text = PixelLMPrompt.trainingConversation(rounds: [(q.question, q.forcedAnswer!)], useMMStartEnd: config.mmUseImStartEnd)
                let ids = PixelLMPrompt.tokenizerImageToken(text, tokenizer: tokenizer)
                convs.append(PixelLMConversation(imageIndex: 0, inputIds: ids, labels: [Int](repeating: PixelLMTokens.ignore, count: ids.count)))
            }
            let batch = PixelLMBatch(pixels: input.pixels.reshape([1] + input.pixels.shape), validSizes: [input.validSize],
                                     originalSizes: [(H, W)], conversations: convs)
            let out = try Autograd.noGrad { try model.forward(batch) }
            return item.questions.indices.map { qi in
                let o = out.conversations[qi]
                return EvalPrediction(logits: rows(o.maskLogits), answer: item.questions[qi].forcedAnswer!, tokenLimit: false,
                                      badSegCount: o.maskLogits == nil && !item.questions[qi].targets.isEmpty)
            }
        }
        let generator = PixelLMGenerator(model: model)
        let image = GenerationImage(pixels: input.pixels, validSize: input.validSize, originalSize: (H, W))
        return try item.questions.map { q in
            var conv = Conversation.llavaV1
            conv.messages = []
            conv.append(role: conv.roles[0], PixelLMPrompt.replaceImageToken(q.question, useMMStartEnd: config.mmUseImStartEnd))
            conv.append(role: conv.roles[1], nil)
            let ids = PixelLMPrompt.tokenizerImageToken(conv.prompt, tokenizer: tokenizer)
            let r = try generator.generate(promptIds: ids, image: image,
                                           options: GenerationOptions(maxNewTokens: options.maxNewTokens, eosId: tokenizer.eosId))
            let answer = Self.numberedAnswer(r.tokens, tokenizer: tokenizer, segIds: model.segTokenIds, eos: tokenizer.eosId)
            let segCount = r.tokens.filter { model.segTokenIds.contains($0) }.count
            let bad = segCount % model.segTokenIds.count != 0
            return EvalPrediction(logits: bad ? [] : rows(r.masks.logits), answer: answer, tokenLimit: !r.stoppedAtEOS, badSegCount: bad)
        }
    }

    /// The records of one image from its predictions (the scoring of validate() or ar_validate(); no model involved).
    /// Teacher-forced: prediction k pairs with target k. Generated: the matching of predictions to targets on points
    /// drawn from a generator seeded by (`seed`, image index), then the unmatched targets, then the unmatched predictions.
    public static func score(_ item: EvalImage, index: Int, predictions: [EvalPrediction], generates: Bool, points: Int,
                             seed: UInt64) -> [EvalQuestionRecord] {
        let H = item.height, W = item.width
        var rng = RNG(seed: seed ^ (UInt64(index) &* 0x9E37_79B9_7F4A_7C15))
        var records: [EvalQuestionRecord] = []
        for (qi, q) in item.questions.enumerated() {
            let p = predictions[qi]
            let gts: [[Float]] = q.targets.map { t in t.mask.decode().data.map { Float($0 != 0 ? 1 : 0) } }
            let P = p.logits.count
            var pairs: [EvalPair] = []
            func area(_ g: [Float]) -> Int { g.reduce(0) { $0 + ($1 != 0 ? 1 : 0) } }
            if !generates {
                for (k, g) in gts.enumerated() {
                    if k < P {
                        let (i, u) = p.logits[k].withUnsafeBufferPointer { iou($0.baseAddress!, g, count: H * W) }
                        pairs.append(EvalPair(pred: k, gt: k, intersection: i, union: u, unionClean: u))
                    } else {
                        pairs.append(EvalPair(pred: nil, gt: k, intersection: 0, union: area(g), unionClean: area(g)))
                    }
                }
            } else {
                let match = matchPredictions(logits: p.logits, targets: gts, height: H, width: W, points: points, rng: &rng)
                var usedP = Set<Int>(), usedG = Set<Int>()
                for (pi, g) in match.pairs.sorted(by: { $0.pred < $1.pred }) {
                    let (i, u) = p.logits[pi].withUnsafeBufferPointer { iou($0.baseAddress!, gts[g], count: H * W) }
                    pairs.append(EvalPair(pred: pi, gt: g, intersection: i, union: u, unionClean: u))
                    usedP.insert(pi)
                    usedG.insert(g)
                }
                for g in gts.indices where !usedG.contains(g) {
                    pairs.append(EvalPair(pred: nil, gt: g, intersection: 0, union: area(gts[g]), unionClean: area(gts[g])))
                }
                for k in 0..<P where !usedP.contains(k) {
                    let f = unmatchedPredictionIoU(logits: p.logits[k], faithful: true)
                    let c = unmatchedPredictionIoU(logits: p.logits[k], faithful: false)
                    pairs.append(EvalPair(pred: k, gt: nil, intersection: 0, union: f.union, unionClean: c.union))
                }
            }
            let exact = generates ? q.referenceAnswer.map { EvalText.normalise($0) == EvalText.normalise(p.answer) } : nil
            records.append(EvalQuestionRecord(image: index, questionIndex: qi, imagePath: item.imagePath, question: q.question, kind: q.kind,
                                              answer: p.answer, referenceAnswer: q.referenceAnswer, targets: q.targets.map(\.name),
                                              predicted: P, groundTruth: q.targets.count, pairs: pairs, tokenLimit: p.tokenLimit,
                                              badSegCount: p.badSegCount, exactMatch: exact,
                                              named: generates ? EvalText.mentions(q).map { EvalText.names(p.answer, $0) } : []))
        }
        return records
    }

    /// (I, U) of logits > 0 against a 0/1 ground truth.
    static func iou(_ logits: UnsafePointer<Float>, _ gt: [Float], count: Int) -> (Int, Int) {
        var i = 0, u = 0
        for k in 0..<count {
            let p = logits[k] > 0, g = gt[k] != 0
            if p && g { i += 1 }
            if p || g { u += 1 }
        }
        return (i, u)
    }

    /// The answer text with every complete SEG group shown as "[k]" (k from 1) and EOS dropped; ids the tokenizer
    /// does not know (benchmark weights) are shown as <id N>.
    public static func numberedAnswer(_ tokens: [Int], tokenizer: Tokenizer, segIds: [Int], eos: Int) -> String {
        let seg = Set(segIds), group = segIds.count
        var out = "", run: [Int] = [], segRun = 0, k = 0
        func flushText() {
            guard !run.isEmpty else { return }
            var known: [Int] = []
            for id in run {
                if id >= 0 && id < tokenizer.vocabSize { known.append(id); continue }
                if !known.isEmpty { out += tokenizer.decode(known, skipSpecial: true); known = [] }
                out += "<id \(id)>"
            }
            if !known.isEmpty { out += tokenizer.decode(known, skipSpecial: true) }
            run = []
        }
        /// Decoding drops the word-start marker of the first token; after a SEG group the space is put back.
        func spaceAfterGroup(_ id: Int) {
            if out.hasSuffix("]"), let piece = tokenizer.idToToken(id), piece.hasPrefix("\u{2581}") || piece.hasPrefix("Ġ") { out += " " }
        }
        for t in tokens where t != eos {
            if seg.contains(t) {
                flushText()
                segRun += 1
                if segRun % group == 0 { k += 1; out += " [\(k)]" }
            } else {
                if segRun % group != 0 { out += " [incomplete SEG group]" }
                if run.isEmpty { spaceAfterGroup(t) }
                segRun = 0
                run.append(t)
            }
        }
        if segRun % group != 0 { out += " [incomplete SEG group]" }
        flushText()
        return out.trimmingCharacters(in: .whitespaces)
    }
}
