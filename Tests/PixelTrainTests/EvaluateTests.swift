import Foundation
import XCTest
import PixelData
import PixelTensor
@testable import PixelTrain

/// `pixellm eval`'s scoring on the dataset layouts: against tools/fixtures/eval_metrics.py (numpy, scipy, pycocotools;
/// ar_validate's arithmetic emulated), ground truth as predictions, hand computations, the names and the text checks.
final class EvaluateTests: XCTestCase {
    static var dir: String { Bundle.module.url(forResource: "Fixtures/eval", withExtension: nil)?.path ?? "<missing Fixtures/eval>" }
    static var data: String { dir + "/data" }

    func expected() throws -> [String: Any] {
        let d = try Data(contentsOf: URL(fileURLWithPath: Self.dir + "/expected.json"))
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: d) as? [String: Any])
    }

    func predictions() throws -> [String: Tensor] { try TensorFile.read(Self.dir + "/predictions.h5") }

    static func rows(_ t: Tensor) -> [Float] { t.contiguousData().toArray() }

    static func base(_ path: String) -> String { (path as NSString).lastPathComponent }

    /// Every image of a split scored with `predict` (per image and question: the predictions).
    func score(_ source: EvalSource, generates: Bool, _ predict: (EvalImage, Int) throws -> EvalPrediction) throws -> [EvalQuestionRecord] {
        var records: [EvalQuestionRecord] = []
        for i in 0..<source.count {
            let item = try source.image(i)
            let preds = try item.questions.indices.map { try predict(item, $0) }
            records += Evaluator.score(item, index: i, predictions: preds, generates: generates, points: 12_544, seed: 0)
        }
        return records
    }

    static func groundTruth(_ item: EvalImage, _ q: Int) -> EvalPrediction {
        EvalPrediction(logits: item.questions[q].targets.map { $0.mask.decode().data.map { $0 != 0 ? 8 : -8 } }, answer: "")
    }

    // MARK: - against the Python computation

    func testMUSELayoutMatchesTheReferenceArithmetic() throws {
        let e = try expected(), p = try predictions()
        let muse = try XCTUnwrap(e["muse"] as? [String: Any])
        let bad = Set(try XCTUnwrap(muse["bad"] as? [[Int]]).map { "\($0[0])/\($0[1])" })
        let source = try EvalSource(try EvalDataset.parse("MultiReasonSeg|val")[0], datasetDir: Self.data)
        XCTAssertEqual(source.count, 4)
        let records = try score(source, generates: true) { item, q in
            let name = Self.base(item.imagePath)
            var logits: [[Float]] = []
            while let t = p["muse.\(name).q\(q).p\(logits.count)"] { logits.append(Self.rows(t)) }
            let image = Int(name.dropFirst("eval_val_".count).prefix(2))!
            return EvalPrediction(logits: logits, answer: "", badSegCount: bad.contains("\(image)/\(q)"))
        }
        // per question: the same assignment and (I, U) of every pair, in the same order
        let qs = try XCTUnwrap(muse["questions"] as? [[String: Any]])
        XCTAssertEqual(qs.count, records.count)
        for (r, q) in zip(records, qs) {
            let pairs = try XCTUnwrap(q["pairs"] as? [[String: Any]])
            XCTAssertEqual(r.pairs.map { $0.pred ?? -1 }, pairs.map { ($0["pred"] as? Int) ?? -1 }, "image \(r.image) question \(r.questionIndex): predictions")
            XCTAssertEqual(r.pairs.map { $0.gt ?? -1 }, pairs.map { ($0["gt"] as? Int) ?? -1 }, "image \(r.image) question \(r.questionIndex): targets")
            XCTAssertEqual(r.pairs.map(\.intersection), pairs.map { $0["intersection"] as! Int })
            XCTAssertEqual(r.pairs.map(\.union), pairs.map { $0["union"] as! Int }, "faithful unions")
            XCTAssertEqual(r.pairs.map(\.unionClean), try XCTUnwrap(q["unions_clean"] as? [Int]), "clean unions")
        }
        XCTAssertEqual(records.filter(\.badSegCount).count, 1)
        let f = EvalFiguresMath.figures(records, generates: true, perImage: true)
        let faithful = try XCTUnwrap(muse["faithful"] as? [String: Double]), clean = try XCTUnwrap(muse["clean"] as? [String: Double])
        XCTAssertEqual(f.gIoU, faithful["gIoU"]!, accuracy: 1e-12)
        XCTAssertEqual(f.cIoU, faithful["cIoU"]!, accuracy: 1e-12)
        XCTAssertEqual(try XCTUnwrap(f.gIoUClean), clean["gIoU"]!, accuracy: 1e-12)
        XCTAssertEqual(try XCTUnwrap(f.cIoUClean), clean["cIoU"]!, accuracy: 1e-12)
        XCTAssertNotEqual(f.gIoU, f.gIoUClean!, "the fixture has an extra prediction the two readings score differently")
        // per kind (the records say it: the "question_kinds" list)
        XCTAssertEqual(Set(records.compactMap(\.kind)), ["single", "multi", "text"])
        for (key, reading) in [("by_kind_faithful", false), ("by_kind_clean", true)] {
            let kinds = try XCTUnwrap(muse[key] as? [String: [String: Double]])
            for (k, want) in kinds {
                let g = EvalFiguresMath.figures(records.filter { $0.kind == k }, generates: true, perImage: false)
                XCTAssertEqual(reading ? g.gIoUClean! : g.gIoU, want["gIoU"]!, accuracy: 1e-12, "\(k) \(key)")
                XCTAssertEqual(reading ? g.cIoUClean! : g.cIoU, want["cIoU"]!, accuracy: 1e-12, "\(k) \(key)")
            }
        }
    }

    func testRefCOCOLayoutMatchesTheReferenceArithmetic() throws {
        let e = try expected(), p = try predictions()
        let want = try XCTUnwrap(e["refcoco"] as? [String: Double])
        var sentence: [String: Int] = [:]
        func predict(_ item: EvalImage, _ q: Int) -> EvalPrediction {
            let name = Self.base(item.imagePath)
            let logits: [[Float]] = item.questions[q].targets.map { _ in
                defer { sentence[name, default: 0] += 1 }
                return Self.rows(p["refcoco.\(name).s\(sentence[name, default: 0])"]!)
            }
            return EvalPrediction(logits: logits, answer: item.questions[q].forcedAnswer ?? "")
        }
        let single = try EvalSource(try EvalDataset.parse("refcoco|unc|val")[0], datasetDir: Self.data)
        XCTAssertEqual(single.count, 3, "the train ref's image is not in val")
        let r1 = try score(single, generates: false, predict)
        XCTAssertEqual(r1.count, Int(want["sentences"]!))
        XCTAssertEqual(r1[0].question, "<image>\n What is the object 0-0 sentence 0 in this image? Please output segmentation mask.")
        XCTAssertEqual(r1[0].answer, "[SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5].")
        let f1 = EvalFiguresMath.figures(r1, generates: false, perImage: true)
        XCTAssertEqual(f1.gIoU, want["gIoU"]!, accuracy: 1e-12)
        XCTAssertEqual(f1.cIoU, want["cIoU"]!, accuracy: 1e-12)
        XCTAssertNil(f1.gIoUClean)

        // multi-referring: the sentences grouped 6, 5, 4 per image, the same per-sentence pairs
        sentence = [:]
        let multi = try EvalSource(try EvalDataset.parse("multirefcoco|unc|val")[0], datasetDir: Self.data)
        let r2 = try score(multi, generates: false, predict)
        let groups = try XCTUnwrap(e["multirefcoco_questions"] as? [[String: Any]])
        XCTAssertEqual(r2.map(\.question), groups.map { $0["question"] as! String })
        XCTAssertEqual(r2.map(\.groundTruth), groups.map { $0["targets"] as! Int })
        XCTAssertEqual(r2[1].answer, Array(repeating: "[SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5]", count: 6).prefix(5).joined(separator: ", ")
                       + " and [SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5].")
        let f2 = EvalFiguresMath.figures(r2, generates: false, perImage: true)
        XCTAssertEqual(f2.gIoU, want["gIoU"]!, accuracy: 1e-12)
        XCTAssertEqual(f2.cIoU, want["cIoU"]!, accuracy: 1e-12)
    }

    // MARK: - ground truth, hand computations

    func testGroundTruthAsPredictionsScoresOne() throws {
        let e = try expected()
        let gt = try XCTUnwrap(e["ground_truth"] as? [String: Any])
        for (name, generates) in [("MultiReasonSeg|val", true), ("refcoco|unc|val", false), ("multirefcoco|unc|val", false)] {
            let source = try EvalSource(try EvalDataset.parse(name)[0], datasetDir: Self.data)
            let records = try score(source, generates: generates, Self.groundTruth)
            let f = EvalFiguresMath.figures(records, generates: generates, perImage: true)
            // 1 up to the reference's + 1e-5 in every IoU's denominator
            XCTAssertEqual(f.gIoU, 1, accuracy: 1e-5, name)
            XCTAssertEqual(f.cIoU, 1, accuracy: 1e-12, name)
            if generates {
                XCTAssertEqual(f.gIoUClean!, 1, accuracy: 1e-5)
                let py = try XCTUnwrap((gt["muse"] as? [String: Any])?["faithful"] as? [String: Double])
                XCTAssertEqual(f.gIoU, py["gIoU"]!, accuracy: 1e-12)
                XCTAssertTrue(records.allSatisfy { $0.pairs.allSatisfy { $0.pred == $0.gt } }, "each prediction matched to its own target")
            }
        }
    }

    /// Two 4 x 4 targets, A = the left half, B = the top half (8 px each, 4 shared).
    func handImage(questions: [[Int]]) -> EvalImage {
        var a = BinaryMask(height: 4, width: 4), b = BinaryMask(height: 4, width: 4)
        for y in 0..<4 { for x in 0..<4 { if x < 2 { a.data[y * 4 + x] = 1 }; if y < 2 { b.data[y * 4 + x] = 1 } } }
        let t = [SampleTarget(mask: RLE(encoding: a), name: "left half", provenance: "A"),
                 SampleTarget(mask: RLE(encoding: b), name: "top half", provenance: "B")]
        return EvalImage(imagePath: "hand.png", height: 4, width: 4, source: "hand",
                         questions: questions.map { EvalQuestion(question: "q", forcedAnswer: nil, referenceAnswer: nil, targets: $0.map { t[$0] }, kind: nil) })
    }

    static func logits(_ t: SampleTarget, _ on: Float = 5, _ off: Float = -5) -> [Float] { t.mask.decode().data.map { $0 != 0 ? on : off } }

    func testShuffledMasksScoreTheHandComputation() {
        // teacher-forced, the masks of two sentences swapped: each IoU = 4 / 12; cIoU = 8 / 24
        let item = handImage(questions: [[0], [1]])
        let swapped = [EvalPrediction(logits: [Self.logits(item.questions[1].targets[0])], answer: ""),
                       EvalPrediction(logits: [Self.logits(item.questions[0].targets[0])], answer: "")]
        let r = Evaluator.score(item, index: 0, predictions: swapped, generates: false, points: 100, seed: 0)
        let f = EvalFiguresMath.figures(r, generates: false, perImage: true)
        XCTAssertEqual(f.gIoU, 4 / (12 + 1e-5), accuracy: 1e-12)
        XCTAssertEqual(f.cIoU, 8.0 / 24.0, accuracy: 1e-12)

        // generated, one question with both targets and three predictions in shuffled order: B, an extra, A.
        // Matching pairs B-B and A-A (IoU 1 each); the extra (logits 0.7 on the bottom-right 2 x 2, 3.0 on one
        // more pixel) is unmatched: faithful U = 4 (only logits in [0.5, 1]), clean U = 5; max(P, G) = 3.
        let two = handImage(questions: [[0, 1]])
        var extra = [Float](repeating: -4, count: 16)
        for y in 2..<4 { for x in 2..<4 { extra[y * 4 + x] = 0.7 } }
        extra[0] = 3
        let preds = [EvalPrediction(logits: [Self.logits(two.questions[0].targets[1]), extra, Self.logits(two.questions[0].targets[0])], answer: "")]
        let g = Evaluator.score(two, index: 3, predictions: preds, generates: true, points: 2000, seed: 1)
        XCTAssertEqual(g[0].pairs.map { $0.pred ?? -1 }, [0, 2, 1])
        XCTAssertEqual(g[0].pairs.map { $0.gt ?? -1 }, [1, 0, -1])
        XCTAssertEqual(g[0].pairs.last!.union, 4)
        XCTAssertEqual(g[0].pairs.last!.unionClean, 5)
        let fg = EvalFiguresMath.figures(g, generates: true, perImage: true)
        XCTAssertEqual(fg.gIoU, 2 * (8 / (8 + 1e-5)) / 3, accuracy: 1e-12)
        XCTAssertEqual(fg.cIoU, 16.0 / 20.0, accuracy: 1e-12)
        XCTAssertEqual(fg.cIoUClean!, 16.0 / 21.0, accuracy: 1e-12)
        // an extra prediction with no logit in [0.5, 1]: faithful reads an empty mask (U = 0, IoU 1), clean does not
        var strong = extra
        for k in strong.indices where strong[k] == 0.7 { strong[k] = 2 }
        let s = Evaluator.score(two, index: 3, predictions: [EvalPrediction(logits: [preds[0].logits[0], strong, preds[0].logits[2]], answer: "")],
                                generates: true, points: 2000, seed: 1)
        let fs = EvalFiguresMath.figures(s, generates: true, perImage: true)
        XCTAssertEqual(fs.gIoU, (2 * (8 / (8 + 1e-5)) + 1) / 3, accuracy: 1e-12)
        XCTAssertEqual(fs.gIoUClean!, 2 * (8 / (8 + 1e-5)) / 3, accuracy: 1e-12)
    }

    func testAnAnswerWithABadSEGCountScoresZeroAndIsCounted() {
        let item = handImage(questions: [[0, 1], []])
        let preds = [EvalPrediction(logits: [], answer: "The left half [incomplete SEG group]", badSegCount: true),
                     EvalPrediction(logits: [], answer: "No.", tokenLimit: true)]
        let r = Evaluator.score(item, index: 0, predictions: preds, generates: true, points: 100, seed: 0)
        XCTAssertEqual(r[0].pairs.map(\.intersection), [0, 0])
        XCTAssertEqual(r[0].pairs.map(\.union), [8, 8])
        let f = EvalFiguresMath.figures(r, generates: true, perImage: true)
        XCTAssertEqual(f.gIoU, 0)
        XCTAssertEqual(f.badSegCount, 1)
        XCTAssertEqual(f.tokenLimit, 1)
        XCTAssertEqual(r[0].named, [true, false], "the answer names the left half, not the top half")
    }

    // MARK: - names, text

    func testDatasetNamesAndUnknownOnes() throws {
        let ds = try EvalDataset.parse("MultiReasonSeg|test_less||refcoco+|unc|testA||multirefcoco|unc|val||refcocog|umd|test||ReasonSeg|val")
        XCTAssertEqual(ds.map(\.kind), [.muse(split: "test_less"), .refer(name: "refcoco+", splitBy: "unc", split: "testA", multi: false),
                                        .refer(name: "refcoco", splitBy: "unc", split: "val", multi: true),
                                        .refer(name: "refcocog", splitBy: "umd", split: "test", multi: false), .reasonSeg(split: "val")])
        XCTAssertTrue(ds[0].generates)
        XCTAssertFalse(ds[1].generates)
        for bad in ["MUSE|val", "refcoco|val", "refcoco|unc|dev", "refcocoz|unc|val", "ReasonSeg"] {
            XCTAssertThrowsError(try EvalDataset.parse(bad)) { e in
                let text = "\(e)"
                XCTAssertTrue(text.contains("unknown evaluation dataset '\(bad)'"), text)
                XCTAssertTrue(text.contains("MultiReasonSeg|val") && text.contains("refcocog|umd|test") && text.contains("ReasonSeg|val"), text)
            }
        }
        XCTAssertTrue(EvalDataset.known.allSatisfy { (try? EvalDataset.parse($0)) != nil })
        // a split the tree lacks is an error naming the file
        XCTAssertThrowsError(try EvalSource(try EvalDataset.parse("refcocog|umd|val")[0], datasetDir: Self.data)) { e in
            XCTAssertTrue("\(e)".contains("refs(umd).p"), "\(e)")
        }
    }

    func testTextNormalisationAndNaming() {
        XCTAssertEqual(EvalText.normalise("The  Black square {seg}."), "the black square.")
        XCTAssertEqual(EvalText.normalise("the black SQUARE [1] ."), "the black square.")
        XCTAssertEqual(EvalText.normalise("It is [SEG0] [SEG1]."), "it is.")
        XCTAssertTrue(EvalText.names("The large black square [1] and the red circle [2].", "large black square"))
        XCTAssertFalse(EvalText.names("The large black squares [1].", "large black square"))
        XCTAssertFalse(EvalText.names("The black square [1].", "large black square"))
        XCTAssertFalse(EvalText.names("anything", ""))
        // the mentions of a reference answer: the words before each {seg} after the last article
        let t = SampleTarget(mask: RLE(encoding: BinaryMask(height: 1, width: 1)), name: "large orange pentagon", provenance: "")
        var q = EvalQuestion(question: "", forcedAnswer: nil, referenceAnswer: "The shape left of the black square is the large orange pentagon {seg}.",
                             targets: [t], kind: nil)
        XCTAssertEqual(EvalText.mentions(q), ["large orange pentagon"])
        q.referenceAnswer = "The black square {seg} and the red circle {seg}."
        q.targets = [t, t]
        XCTAssertEqual(EvalText.mentions(q), ["black square", "red circle"])
        q.referenceAnswer = nil
        XCTAssertEqual(EvalText.mentions(q), ["large orange pentagon", "large orange pentagon"])
    }
}
