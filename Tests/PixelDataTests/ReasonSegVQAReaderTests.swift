import Foundation
import XCTest
@testable import PixelData
import PixelTensor

/// ReasonSegReader and VQAReader on Fixtures/datasets (tools/fixtures/reader_fixtures_muse.py) and a synth tree.
final class ReasonSegVQAReaderTests: XCTestCase {
    static var root: String { DataFixtures.dir + "/datasets" }
    static let group = SegText.defaultGroup

    static func bits(_ data: [UInt8]) -> String { String(data.map { $0 != 0 ? "1" : "0" }) }

    /// cv2.polylines + cv2.fillPoly (as get_mask_from_json draws a shape) on random polygons: exact for vertices
    /// inside the image; with vertices outside, OpenCV's clipping differs near the border (bounded here).
    func testPolygonRasterisationEqualsOpenCV() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: Self.root + "/expected/cv2_polygons.json"))
        let cases = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        XCTAssertEqual(cases.count, 160)
        var inside = 0, outside = 0, outsideExact = 0, outsideDiff = 0, outsideForeground = 0
        for (k, c) in cases.enumerated() {
            let h = c["height"] as! Int, w = c["width"] as! Int
            let pts = (c["points"] as! [[Int]]).map { ($0[0], $0[1]) }
            let want = try XCTUnwrap(c["mask"] as? String)
            var img = [UInt8](repeating: 0, count: h * w)
            CVPolygon.draw(&img, height: h, width: w, points: pts, value: 1)
            let got = Self.bits(img)
            if c["outside"] as? Bool == true {
                outside += 1
                if got == want { outsideExact += 1 }
                outsideDiff += zip(got, want).filter { $0 != $1 }.count
                outsideForeground += want.filter { $0 == "1" }.count
            } else {
                inside += 1
                XCTAssertEqual(got, want, "case \(k): \(h)x\(w) \(pts)")
            }
        }
        XCTAssertEqual(inside, 120); XCTAssertEqual(outside, 40)
        XCTAssertGreaterThanOrEqual(outsideExact, 28, "out-of-image polygons drawn exactly: \(outsideExact) of 40")
        XCTAssertLessThan(Double(outsideDiff), 0.03 * Double(outsideForeground), "\(outsideDiff) pixels differ")
    }

    /// Damaged items are SampleSkips naming the file, never crashes: a non-image .jpg, malformed shapes,
    /// absurd coordinates, cp1252 text.
    func testReasonSegDamagedItems() throws {
        let dir = try makeScratchDirectory(self)
        let split = dir + "/reason_seg/ReasonSeg/train"
        try FileManager.default.createDirectory(atPath: split, withIntermediateDirectories: true)
        let jpg = try Image.readFile(Self.root + "/reason_seg/ReasonSeg/train/r1.jpg")
        func write(_ name: String, _ text: String) throws { try Data(text.utf8).write(to: URL(fileURLWithPath: split + "/" + name)) }
        try write("a.jpg", "this is not an image")
        try write("a.json", #"{"text": ["x"], "is_sentence": true, "shapes": []}"#)
        for n in ["b", "c", "d", "e"] { try Data(jpg).write(to: URL(fileURLWithPath: split + "/\(n).jpg")) }
        try write("b.json", #"{"text": ["x"], "is_sentence": true, "shapes": [{"label": "target", "points": [[1, "y"]]}]}"#)
        try write("c.json", #"{"text": ["huge"], "is_sentence": false, "shapes": [{"label": "target", "points": [[999999999, -999999999], [-999999999, 999999999], [5, 5]]}]}"#)
        try write("d.json", #"{"text": [], "is_sentence": true, "shapes": []}"#)
        // cp1252 bytes (0xE9 = e acute) are not UTF-8: the reference retries with cp1252
        try Data([UInt8](#"{"text": ["caf"#.utf8) + [0xE9] + [UInt8](#""], "is_sentence": false, "shapes": [{"label": "target", "points": [[1, 1], [8, 1], [8, 8]]}]}"#.utf8))
            .write(to: URL(fileURLWithPath: split + "/e.json"))
        let r = try ReasonSegReader(datasetDir: dir, split: "train")
        XCTAssertEqual(r.count, 5)
        assertThrows(try r.sample(0, seed: 0), containing: ["a.jpg", "neither JPEG nor PNG"], "not an image")
        assertThrows(try r.sample(1, seed: 0), containing: ["b.json", "shape 0 point 0"], "bad point")
        let c = try r.sample(2, seed: 0)
        XCTAssertEqual(c.targets.count, 1)
        XCTAssert(c.targets[0].mask.decode().data.allSatisfy { $0 <= 1 })
        assertThrows(try r.sample(3, seed: 0), containing: ["d.json", "no sentences"], "no text")
        let e = try r.sample(4, seed: 0)
        XCTAssert(e.conversations[0][0].question.contains("caf\u{e9}"), e.conversations[0][0].question)
        XCTAssertGreaterThan(e.targets[0].mask.area, 20)
    }

    func testReasonSegMasksTemplatesAndSkips() throws {
        let expected = try DataFixtures.json("datasets/expected/reason_seg_masks.json")
        var o = ReaderOptions(); o.explanatory = -1
        let r = try ReasonSegReader(datasetDir: Self.root, split: "train", options: o)
        XCTAssertEqual(r.dataset, "reason_seg"); XCTAssertEqual(r.subset, "ReasonSeg/train")
        XCTAssertEqual(r.count, 3)
        XCTAssertEqual(r.images.map { ($0 as NSString).lastPathComponent }, ["r1.jpg", "r2.jpg", "r3.jpg"])
        XCTAssertEqual(r.indexSkips.count, 0)
        // r1: 4 sentences -> 3 sampled, long templates; one mask (target minus the smaller ignore square) per question
        let s1 = try r.sample(0, seed: 4)
        XCTAssertEqual([s1.height, s1.width], [12, 16])
        XCTAssertEqual(s1.conversations.count, 3)
        XCTAssertEqual(s1.targets.count, 3)
        XCTAssertEqual(s1.segGroupCount, 3)
        let want1 = try XCTUnwrap(expected["r1"] as? String)
        for t in s1.targets { XCTAssertEqual(Self.bits(t.mask.decode().data), want1) }
        let m = s1.targets[0].mask.decode()
        XCTAssertEqual(m[5, 6], 0, "ignore pixels are not target")
        XCTAssertEqual(m[3, 3], 1)
        let sents1 = ["What would keep the rain off?", "Which object can shelter a person from rain?",
                      "Find what one opens in a storm.", "What protects from the weather?"]
        let longQ = Templates.questionList(short: false, expand: true)
        for c in s1.conversations {
            XCTAssert(sents1.contains { s in longQ.contains { Templates.fill($0, sent: s) == c[0].question } }, c[0].question)
            XCTAssert(Templates.answers.map { $0.replacingOccurrences(of: "[SEG]", with: Self.group) }.contains(c[0].answer))
        }
        XCTAssertEqual(Set(s1.targets.map(\.name)).count, 3)
        // r2: short phrases -> short templates with the lowercased name; two target shapes, one partly outside
        let s2 = try r.sample(1, seed: 4)
        XCTAssertEqual(s2.conversations.count, 2)
        let shortQ = Templates.questionList(short: true, expand: true)
        for c in s2.conversations {
            XCTAssert(["umbrella", "parasol"].contains { n in shortQ.contains { Templates.fill($0, className: n) == c[0].question } }, c[0].question)
        }
        XCTAssertEqual(Self.bits(s2.targets[0].mask.decode().data), try XCTUnwrap(expected["r2"] as? String))
        // r3.jpg has no json
        assertThrows(try r.sample(2, seed: 0), containing: ["r3.json", "bad annotation", "file not found"], "missing json")
        do { _ = try r.sample(2, seed: 0) } catch { XCTAssert(error is SampleSkip) }
        assertThrows(try ReasonSegReader(datasetDir: Self.root, split: "val"), containing: ["ReasonSeg/val", "not found"], "no split")
        XCTAssertEqual(try r.sample(0, seed: 8), try r.sample(0, seed: 8))
    }

    func testReasonSegExplanations() throws {
        var o = ReaderOptions(); o.explanatory = 0.3
        let r = try ReasonSegReader(datasetDir: Self.root, split: "train", options: o)
        XCTAssertEqual(r.explanations, ["r1.jpg": "An umbrella keeps the rain off."])
        var text = 0, withExplanation = 0, plain = 0
        let n = 600
        for seed in 0..<UInt64(n) {
            let s = try r.sample(0, seed: seed)
            XCTAssertEqual(s.segGroupCount, s.targets.count)
            let a = s.conversations[0][0].answer, q = s.conversations[0][0].question
            if s.targets.isEmpty {
                text += 1
                XCTAssert(s.conversations.allSatisfy { $0[0].answer == "An umbrella keeps the rain off." && !$0[0].question.contains("mask") })
            } else if a.hasSuffix(" An umbrella keeps the rain off.") {
                withExplanation += 1
                XCTAssert(Templates.explanatoryQuestions.contains { q.hasSuffix(" " + $0) } && q.hasPrefix("<image>\n"), q)
            } else {
                plain += 1
            }
        }
        let pText = Double(text) / Double(n)
        XCTAssert(pText > 0.24 && pText < 0.36, "text-only fraction \(pText)")
        XCTAssertGreaterThan(withExplanation, n / 4); XCTAssertGreaterThan(plain, n / 4)
        // r2 is not in the explanatory file: always masks
        XCTAssert(try (0..<50).allSatisfy { try r.sample(1, seed: UInt64($0)).targets.count == 2 })
    }

    func testVQAConversations() throws {
        let r = try VQAReader(datasetDir: Self.root)
        XCTAssertEqual(r.dataset, "vqa"); XCTAssertEqual(r.subset, "llava_instruct_150k")
        XCTAssertEqual(r.count, 4)
        let s = try r.sample(0, seed: 0)
        XCTAssertEqual(s.conversations.count, 1)
        XCTAssertEqual(s.conversations[0], [
            DialogueRound(question: "<image>\nWhat is shown here?", answer: "A noisy picture."),
            DialogueRound(question: "  Which colours dominate? ", answer: "All of them."),
        ])
        XCTAssertEqual([s.height, s.width], [14, 20])
        XCTAssert(s.imagePath.hasSuffix("/datasets/coco/train2017/000000000010.jpg"), s.imagePath)
        XCTAssert(s.targets.isEmpty); XCTAssertEqual(s.segGroupCount, 0)
        XCTAssertEqual(try r.sample(1, seed: 0).conversations, [[DialogueRound(question: "<image>\nDescribe the image.", answer: "Random pixels.")]])
        assertThrows(try r.sample(2, seed: 0), containing: ["000000000404.jpg", "missing image"], "missing image")
        assertThrows(try r.sample(3, seed: 0), containing: ["entry 3", "turn 1", "'human'", "expects 'gpt'"], "roles")
        assertThrows(try VQAReader(datasetDir: Self.root, file: "llava_broken"),
                     containing: ["llava_broken.json", "entry 0", "'conversations'", "not a list"], "broken")
        assertThrows(try VQAReader(datasetDir: Self.root, file: "llava_v1_5_mix665k"), containing: ["llava_v1_5_mix665k.json", "file not found"], "missing")
        // an image name that leaves the image directory is refused, naming the file and entry
        let dir = NSTemporaryDirectory() + "pixellm-vqa-escape-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir + "/llava_dataset", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (k, name) in ["../../../etc/passwd", "/etc/passwd", "coco/../../x.jpg"].enumerated() {
            let json = #"[{"image": "\#(name)", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]"#
            try json.write(toFile: dir + "/llava_dataset/escape\(k).json", atomically: true, encoding: .utf8)
            assertThrows(try VQAReader(datasetDir: dir, file: "escape\(k)"), containing: ["escape\(k).json", "entry 0", "leaves the image directory"], name)
        }
        XCTAssertTrue(ReaderJSON.staysInside("COCO_train2014_000000000009.jpg") && ReaderJSON.staysInside("coco/train2017/a..b.jpg"))
    }

    /// ReasonSeg and VQA over a tree written by `pixellm synth`: everything reads; the cv2-rasterised ReasonSeg
    /// masks agree with the synth's pixel masks up to the boundary (cv2 and pycocotools rasterise differently).
    func testSynthTreeReads() throws {
        let dir = try makeScratchDirectory(self)
        let config = SynthConfig(seed: 5, train: 6, val: 2, test: 2, size: 64)
        let summary = try SynthGenerator(config: config, out: dir).run()
        var reasonSeg = 0
        for split in ["train", "val"] {
            // explanatory -1: the synth tree has explanations, and a text-only (maskless) answer has nothing to compare.
            var options = ReaderOptions(); options.explanatory = -1
            let r = try ReasonSegReader(datasetDir: dir, split: split, options: options)
            for i in 0..<r.count {
                let s = try r.sample(i, seed: 2)
                XCTAssertEqual(s.segGroupCount, s.targets.count)
                let stem = String((r.images[i] as NSString).lastPathComponent.dropLast(4))
                let index = Int(stem.split(separator: "_").last!)! - 1
                let (scene, qs) = SynthGenerator.sample(config: config, split: split, index: index)
                let q = try XCTUnwrap(qs.first { !$0.targets.isEmpty && $0.targets.count <= 3 && $0.targets.allSatisfy { !scene.objects[$0].occluded } })
                let want = scene.labels.map { l in l != 0 && q.targets.contains(Int(l) - 1) }
                let got = try XCTUnwrap(s.targets.first).mask.decode().data
                let inter = zip(got, want).filter { $0 != 0 && $1 }.count, union = zip(got, want).filter { $0 != 0 || $1 }.count
                XCTAssertGreaterThan(Double(inter) / Double(max(union, 1)), 0.6, "\(split) \(stem)")
                reasonSeg += 1
            }
        }
        XCTAssertEqual(reasonSeg, summary.reasonSeg)
        let v = try VQAReader(datasetDir: dir)
        XCTAssertEqual(v.count, 6)
        for i in 0..<v.count {
            let s = try v.sample(i, seed: 0)
            XCTAssertEqual([s.height, s.width].max(), 64)
            XCTAssert(s.conversations[0][0].question.hasPrefix("<image>\n"))
        }
    }
}
