import Foundation
import XCTest
@testable import PixelData
import PixelTensor

/// MUSEReader on Fixtures/datasets (written by tools/fixtures/reader_fixtures_muse.py) and on a synth tree.
final class MUSEReaderTests: XCTestCase {
    static var root: String { DataFixtures.dir + "/datasets" }
    static let group = SegText.defaultGroup

    /// Expected masks (pycocotools) by "split/raw entry": row-major '0'/'1' strings, or "error: ...".
    static func expectedMasks() throws -> [String: Any] { try DataFixtures.json("datasets/expected/muse_masks.json") }

    static func bits(_ r: RLE) -> String { String(r.decode().data.map { $0 != 0 ? "1" : "0" }) }

    /// The reader index of raw entry `raw`.
    func index(_ reader: MUSEReader, raw: Int) throws -> Int {
        let i = (0..<reader.count).first { reader.rawIndex($0) == raw }
        return try XCTUnwrap(i, "raw entry \(raw) not kept")
    }

    func testIndexKeepsEntriesAndCountsSkips() throws {
        let r = try MUSEReader(datasetDir: Self.root, split: "train")
        XCTAssertEqual(r.dataset, "multi_reason_seg")
        XCTAssertEqual(r.subset, "muse_train")
        XCTAssert(r.indexFile.hasSuffix("/muse/muse_train.json"), r.indexFile)
        XCTAssertEqual((0..<r.count).compactMap { r.rawIndex($0) }, [0, 1, 3, 4, 5, 7, 8])
        XCTAssertEqual(r.indexSkips.count, 2)
        let reasons = r.indexSkips.entries.map(\.reason)
        // the {seg} mismatch drops the whole image (as the reference's `return self[0]`)
        XCTAssert(reasons.contains { $0.contains("muse_train.json entry 2 question 1: 3 {seg} but 2 answers") }, "\(reasons)")
        XCTAssert(reasons.contains { $0.contains("entry 6") && $0.contains("empty ann_list") }, "\(reasons)")
        XCTAssert(r.indexSkips.entries.allSatisfy { $0.file.hasSuffix("muse_train.json") })
        XCTAssertEqual(Set(r.indexSkips.countsByReason.map(\.reason)), ["{seg} count differs from the answers", "empty ann_list"])
    }

    func testMasksEqualPycocotools() throws {
        let expected = try Self.expectedMasks()
        let r = try MUSEReader(datasetDir: Self.root, split: "train")
        var compared = 0
        for raw in [0, 1, 7] {
            let s = try r.sample(try index(r, raw: raw), seed: 1)
            let want = try XCTUnwrap(expected["train/\(raw)"] as? [String])
            XCTAssertEqual(s.targets.count, want.count, "entry \(raw)")
            for (t, w) in zip(s.targets, want) {
                XCTAssertEqual(t.mask.height, 12); XCTAssertEqual(t.mask.width, 16)
                XCTAssertEqual(Self.bits(t.mask), w, "entry \(raw) \(t.provenance)")
                compared += 1
            }
        }
        XCTAssertEqual(compared, 3 + 6 + 1)
        // entry 0 holds a two-part polygon (parts overlap: summed then > 0), a compressed and an uncompressed RLE
        let s0 = try r.sample(try index(r, raw: 0), seed: 1)
        XCTAssertEqual(s0.targets.map(\.provenance), ["muse_train.json entry 0 ann 11", "muse_train.json entry 0 ann 12",
                                                      "muse_train.json entry 0 ann 13"])
        XCTAssertGreaterThan(s0.targets[0].mask.area, 0)
        // val keeps its {seg}-mismatched question; masks in question then target order
        let v = try MUSEReader(datasetDir: Self.root, split: "val")
        let want = try XCTUnwrap(expected["val/0"] as? [String])
        XCTAssertEqual(try v.sample(0, seed: 3).targets.map { Self.bits($0.mask) }, want)
    }

    func testTextAnswersAndImagePaths() throws {
        let r = try MUSEReader(datasetDir: Self.root, split: "train")
        let s = try r.sample(try index(r, raw: 0), seed: 42)
        XCTAssertEqual(s.dataset, "multi_reason_seg"); XCTAssertEqual(s.subset, "muse_train")
        XCTAssertEqual(s.source, "muse_train.json entry 0")
        XCTAssertEqual([s.height, s.width], [12, 16])
        XCTAssert(s.imagePath.hasSuffix("/datasets/refer_seg/images/mscoco/images/train2014/COCO_train2014_000000000001.jpg"), s.imagePath)
        XCTAssert(s.imagePath.hasPrefix("/"))
        XCTAssertEqual(s.conversations.count, 2)
        XCTAssert(s.conversations.allSatisfy { $0.count == 1 })
        XCTAssertEqual(s.conversations[0][0].answer, "The person waving \(Self.group) plays with the brown dog \(Self.group).")
        XCTAssertEqual(s.conversations[1][0].answer, "The red frisbee \(Self.group).")
        let templates = Templates.questionList(short: false, expand: true)
        XCTAssert(templates.map { Templates.fill($0, sent: "Who is playing with the dog?") }.contains(s.conversations[0][0].question))
        XCTAssertEqual(s.segGroupCount, s.targets.count)
        let s1 = try r.sample(try index(r, raw: 1), seed: 0)
        XCTAssert(s1.imagePath.hasSuffix("/mscoco/images/train2017/000000000002.jpg"), s1.imagePath)
        let v = try MUSEReader(datasetDir: Self.root, split: "val").sample(0, seed: 0)
        XCTAssert(v.imagePath.hasSuffix("/mscoco/images/val2017/000000000003.png"), v.imagePath)
        XCTAssertEqual(v.subset, "muse_val")
        // val: the matching text answer is used, the mismatched one ("2 targets, 1 {seg}") is rebuilt from the names
        XCTAssertEqual(v.conversations[0][0].answer, "The kite \(Self.group).")
        XCTAssertFalse(v.conversations[1][0].answer.contains("The bird"))
        XCTAssertEqual(SegText.countGroups(v.conversations[1][0].answer), 2)
        XCTAssertEqual(v.segGroupCount, v.targets.count)
        // a text-only question has no targets and no group; the other question keeps its mask
        let s7 = try r.sample(try index(r, raw: 7), seed: 5)
        XCTAssertEqual(s7.conversations.map { $0[0].answer }, ["There is one person.", "The green lawn \(Self.group) is at the bottom."])
        XCTAssertEqual(s7.targets.count, 1)
    }

    func testItemProblemsAreSampleSkips() throws {
        let r = try MUSEReader(datasetDir: Self.root, split: "train")
        func skip(_ raw: Int) throws -> SampleSkip? {
            do { _ = try r.sample(try index(r, raw: raw), seed: 0); return nil } catch let s as SampleSkip { return s }
        }
        let missing = try XCTUnwrap(try skip(3))
        XCTAssert(missing.file.hasSuffix("train2014/COCO_train2014_000000000404.jpg"), missing.file)
        XCTAssert(missing.reason.hasPrefix("missing image"), missing.reason)
        let sum = try XCTUnwrap(try skip(4))
        XCTAssert(sum.file.hasSuffix("muse_train.json"))
        XCTAssert(sum.reason.contains("entry 4 question 0 target 0") && sum.reason.contains("sum to 22"), sum.reason)
        let kind = try XCTUnwrap(try skip(5))
        XCTAssert(kind.reason.contains("bad segmentation") && kind.reason.contains("neither polygons nor RLE"), kind.reason)
        let none = try XCTUnwrap(try skip(8))
        XCTAssert(none.reason.hasPrefix("no targets") && none.reason.contains("entry 8 question 0"), none.reason)
        XCTAssertThrowsError(try r.sample(r.count, seed: 0))
    }

    func testMalformedIndexFilesAreDatasetErrors() {
        assertThrows(try MUSEReader(datasetDir: Self.root, split: "test_less"),
                     containing: ["muse_test_less.json", "entry 1", "'answers'", "not a list"], "answers not a list")
        assertThrows(try MUSEReader(datasetDir: Self.root, split: "test_many"),
                     containing: ["muse_test_many.json", "not valid JSON"], "truncated json")
        assertThrows(try MUSEReader(datasetDir: Self.root + "/nowhere", split: "train"),
                     containing: ["muse_train.json", "file not found"], "missing file")
        assertThrows(try MUSEReader(datasetDir: Self.root, split: "test"), containing: ["unknown MUSE split 'test'"], "split")
        do { _ = try MUSEReader(datasetDir: Self.root, split: "test_many"); XCTFail("no error") } catch {
            XCTAssert(error is DatasetError, "\(type(of: error))")
        }
    }

    /// Every possible names-form answer for the given targets (all rephrased/category choices x all forms).
    static func possibleAnswers(_ targets: [(rephrased: String?, category: String)]) -> Set<String> {
        var combos: [[String]] = [[]]
        for t in targets {
            let options = [t.category] + (t.rephrased.map { [$0] } ?? [])
            combos = combos.flatMap { c in options.map { c + [$0] } }
        }
        var out = Set<String>()
        for names in combos {
            out.insert(SegText.joinAnd(names.map { "\($0) is \(group)" }) + ".")
            let segs = SegText.joinAnd(Array(repeating: group, count: names.count))
            for t in Templates.mrMultiAnswers {
                out.insert(Templates.fill(t, className: names.joined(separator: ", ").lowercased(), seg: segs))
            }
        }
        return out
    }

    func testNamesAnswersTemplatesAndDraws() throws {
        let r = try MUSEReader(datasetDir: Self.root, split: "train")
        let i = try index(r, raw: 1)
        let sents = ["What flies in the sky?", "Which objects are outdoors?", "Where can one sit?"]
        let kite = (rephrased: Optional("the striped kite"), category: "kite")
        let bird = (rephrased: Optional("a small bird"), category: "bird")
        let lawn = (rephrased: Optional("the green lawn"), category: "grass")
        let bench = (rephrased: String?.none, category: "bench")
        let possible = [Self.possibleAnswers([kite, bird]), Self.possibleAnswers([kite, bird, lawn]), Self.possibleAnswers([bench])]
        let templates = Templates.questionList(short: false, expand: true)
        var rephrased = 0, category = 0, separate = 0, multi = 0
        var questionsSeen = Set<String>(), answersSeen = Set<String>()
        let n = 400
        for seed in 0..<UInt64(n) {
            let s = try r.sample(i, seed: seed)
            XCTAssertEqual(s.conversations.count, 3)
            XCTAssertEqual(s.targets.count, 6)
            XCTAssertEqual(s.segGroupCount, s.targets.count)
            for (q, conv) in s.conversations.enumerated() {
                let round = conv[0]
                XCTAssert(templates.map { Templates.fill($0, sent: sents[q]) }.contains(round.question), round.question)
                XCTAssert(possible[q].contains(round.answer), "not a reference answer: \(round.answer)")
                questionsSeen.insert(round.question); answersSeen.insert(round.answer)
                if q < 2 {
                    if round.answer.contains(" is \(Self.group)") { separate += 1 } else { multi += 1 }
                }
                // names used (question 0: kite, bird)
                if q == 0 {
                    for t in [kite, bird] {
                        if round.answer.lowercased().contains(t.rephrased!) { rephrased += 1 } else { category += 1 }
                    }
                }
            }
            XCTAssertEqual(s.conversations[2][0].answer.contains("bench"), true)
        }
        let pRephrased = Double(rephrased) / Double(rephrased + category)
        XCTAssert(pRephrased > 0.85 && pRephrased < 0.95, "rephrased_name fraction \(pRephrased)")
        let pSeparate = Double(separate) / Double(separate + multi)
        XCTAssert(pSeparate > 0.42 && pSeparate < 0.58, "separate fraction \(pSeparate)")
        XCTAssertGreaterThan(category, 0)
        XCTAssertGreaterThan(questionsSeen.count, 15)
        XCTAssertGreaterThan(answersSeen.count, 20)
    }

    func testSameSeedSameSampleOtherSeedsVary() throws {
        let r = try MUSEReader(datasetDir: Self.root, split: "train")
        let i = try index(r, raw: 1)
        XCTAssertEqual(try r.sample(i, seed: 9), try r.sample(i, seed: 9))
        let r2 = try MUSEReader(datasetDir: Self.root, split: "train")
        XCTAssertEqual(try r.sample(i, seed: 9), try r2.sample(i, seed: 9))
        let convs = try (0..<20).map { try r.sample(i, seed: UInt64($0)).conversations }
        XCTAssertGreaterThan(Set(convs.map { "\($0)" }).count, 15)
        // the index is part of the stream: two items with the same seed draw from different generators
        var rngA = DataRNG.make(seed: 9, subset: "muse_train", index: 0), rngB = DataRNG.make(seed: 9, subset: "muse_train", index: 1)
        XCTAssertNotEqual(rngA.next(), rngB.next())
        // the options reach the templates: without the expanded list only the two long templates occur,
        // and a 1 x 1 codebook gives "[SEG0]" groups
        var o = ReaderOptions(); o.useExpandQuestionList = false; o.segTokenNum = 1; o.imageFeatureScaleNum = 1
        let plain = try MUSEReader(datasetDir: Self.root, split: "train", options: o)
        let sents = ["What flies in the sky?", "Which objects are outdoors?", "Where can one sit?"]
        var seen = Set<String>()
        for seed in 0..<UInt64(30) {
            let s = try plain.sample(i, seed: seed)
            for (q, c) in s.conversations.enumerated() {
                XCTAssert(Templates.longQuestions.map { Templates.fill($0, sent: sents[q]) }.contains(c[0].question), c[0].question)
                XCTAssertFalse(c[0].answer.contains("[SEG1]"))
                XCTAssert(c[0].answer.contains("[SEG0]"))
                seen.insert(c[0].question)
            }
        }
        XCTAssertEqual(seen.count, 6)
    }

    /// A tree written by `pixellm synth`: every split reads without skips and the masks are the synth's.
    func testSynthTreeReadsWithoutSkips() throws {
        let dir = try makeScratchDirectory(self)
        let config = SynthConfig(seed: 11, train: 6, val: 2, test: 2, size: 64)
        _ = try SynthGenerator(config: config, out: dir).run()
        let counts = ["train": 6, "val": 2, "test_less": 2, "test_many": 2]
        var targets = 0
        for split in SynthGenerator.splits {
            let r = try MUSEReader(datasetDir: dir, split: split)
            XCTAssert(r.indexFile.hasSuffix("/muse_\(split).json") && !r.indexFile.contains("/muse/"), r.indexFile)
            XCTAssertEqual(r.count, counts[split])
            XCTAssertEqual(r.indexSkips.count, 0, "\(r.indexSkips.entries)")
            for i in 0..<r.count {
                let s = try r.sample(i, seed: 1)
                let (scene, qs) = SynthGenerator.sample(config: config, split: split, index: i)
                XCTAssertEqual([s.height, s.width], [scene.height, scene.width])
                XCTAssertEqual(s.conversations.count, qs.count)
                XCTAssertEqual(s.segGroupCount, s.targets.count)
                let want = qs.flatMap { $0.targets }
                XCTAssertEqual(s.targets.count, want.count, "\(split) \(i)")
                for (t, k) in zip(s.targets, want) {
                    let label = scene.labels.map { $0 == UInt8(k + 1) ? UInt8(1) : 0 }
                    XCTAssertEqual(t.mask.decode().data, label, "\(split) \(i) object \(k)")
                }
                XCTAssert(FileManager.default.fileExists(atPath: s.imagePath))
                targets += s.targets.count
            }
        }
        XCTAssertGreaterThan(targets, 10)
    }
}
