import Foundation
import XCTest
@testable import PixelData
import PixelTensor

/// `pixellm synth`: determinism, masks = visible pixels, {seg} counts, split statistics, images.
final class SynthTests: XCTestCase {
    static let config = SynthConfig(seed: 7, train: 6, val: 2, test: 4, size: 96)

    func files(_ dir: String) throws -> [String: [UInt8]] {
        var out: [String: [UInt8]] = [:]
        let e = FileManager.default.enumerator(atPath: dir)!
        while let p = e.nextObject() as? String {
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: dir + "/" + p, isDirectory: &isDir), !isDir.boolValue {
                out[p] = try Image.readFile(dir + "/" + p)
            }
        }
        return out
    }

    func testSameSeedSameBytes() throws {
        let a = try makeScratchDirectory(self), b = try makeScratchDirectory(self)
        _ = try SynthGenerator(config: Self.config, out: a).run()
        _ = try SynthGenerator(config: Self.config, out: b).run()
        let fa = try files(a), fb = try files(b)
        XCTAssertEqual(Set(fa.keys), Set(fb.keys))
        XCTAssertGreaterThan(fa.count, 40)
        for (k, v) in fa { XCTAssertEqual(v, fb[k], k) }
        XCTAssertFalse(fa.keys.contains { $0.contains(".tmp-") }, "temporary files left")
        var other = Self.config
        other.seed = 8
        let c = try makeScratchDirectory(self)
        _ = try SynthGenerator(config: other, out: c).run()
        XCTAssertNotEqual(try files(c)["muse_train.json"], fa["muse_train.json"])
    }

    /// --max-objects caps the train and val scenes (1 to N objects, every count reached); test_less / test_many
    /// keep theirs; the standard 8 draws exactly the scenes of a config without the field.
    func testMaxObjectsCapsTrainAndValScenes() {
        var easy = Self.config
        easy.maxObjects = 3
        var seen = Set<Int>()
        for split in ["train", "val"] {
            for i in 0..<40 {
                let n = SynthGenerator.sample(config: easy, split: split, index: i).0.objects.count
                XCTAssertTrue((1...3).contains(n), "\(split) \(i): \(n) objects")
                seen.insert(n)
            }
        }
        XCTAssertEqual(seen, [1, 2, 3])
        XCTAssertGreaterThanOrEqual(SynthGenerator.sample(config: easy, split: "test_many", index: 0).0.objects.count, 4)
        let standard = SynthConfig(seed: 7, train: 6, val: 2, test: 4, size: 96)
        var counts: [Int] = []
        for i in 0..<40 {
            let a = SynthGenerator.sample(config: standard, split: "train", index: i).0
            var eight = standard
            eight.maxObjects = 8
            let b = SynthGenerator.sample(config: eight, split: "train", index: i).0
            XCTAssertEqual(a.image.pixels, b.image.pixels, "train \(i)")
            counts.append(a.objects.count)
        }
        XCTAssertGreaterThan(counts.max() ?? 0, 3, "the standard scenes hold more than 3 objects")
    }

    /// --repeat-colours P: train scenes repeat colours (fewer objects are the only one of their colour), val and test
    /// scenes are untouched, and P = 0 draws exactly the standard scenes.
    func testRepeatColoursChangesOnlyTheTrainScenes() {
        let standard = SynthConfig(seed: 7, train: 6, val: 2, test: 4, size: 96)
        var zero = standard
        zero.repeatColours = 0
        var repeating = standard
        repeating.repeatColours = 0.7
        func uniqueColourFraction(_ c: SynthConfig) -> Double {
            var unique = 0, total = 0
            for i in 0..<150 {
                let objects = SynthGenerator.sample(config: c, split: "train", index: i).0.objects
                for o in objects {
                    total += 1
                    if objects.filter({ $0.color == o.color }).count == 1 { unique += 1 }
                }
            }
            return Double(unique) / Double(total)
        }
        let before = uniqueColourFraction(standard), after = uniqueColourFraction(repeating)
        XCTAssertGreaterThan(before, 0.45, "the standard scenes: most objects have a colour of their own")
        XCTAssertLessThan(after, 0.3, "with repeats: \(after) against \(before)")
        for i in 0..<20 {
            XCTAssertEqual(SynthGenerator.sample(config: zero, split: "train", index: i).0.image.pixels,
                           SynthGenerator.sample(config: standard, split: "train", index: i).0.image.pixels, "train \(i)")
            for split in ["val", "test_less", "test_many"] {
                let (a, qa) = SynthGenerator.sample(config: repeating, split: split, index: i)
                let (b, qb) = SynthGenerator.sample(config: standard, split: split, index: i)
                XCTAssertEqual(a.image.pixels, b.image.pixels, "\(split) \(i)")
                XCTAssertEqual(qa.map(\.question), qb.map(\.question), "\(split) \(i)")
            }
        }
    }

    func testMasksAreVisiblePixels() throws {
        for split in SynthGenerator.splits {
            for i in 0..<4 {
                let (scene, qs) = SynthGenerator.sample(config: Self.config, split: split, index: i)
                XCTAssertFalse(scene.objects.isEmpty)
                for (k, o) in scene.objects.enumerated() {
                    let want = scene.labels.map { $0 == UInt8(k + 1) ? UInt8(1) : 0 }
                    // decode what we write, through the parser the loaders use
                    var text = ""
                    SynthGenerator.segmentation(o).write(into: &text)
                    let json = try JSONSerialization.jsonObject(with: Data(text.utf8))
                    let seg = try COCOSegmentation(json: json, item: "\(split) \(i) object \(k)")
                    if o.occluded { guard case .rle = seg else { return XCTFail("occluded object not RLE") } }
                    else { guard case .polygons = seg else { return XCTFail("unoccluded object not a polygon") } }
                    let m = try seg.mask(height: scene.height, width: scene.width, item: "mask")
                    XCTAssertEqual(m.data, want, "\(split) \(i) object \(k)")
                    XCTAssertGreaterThanOrEqual(Double(o.visibleArea), SynthScene.minVisibleFraction * Double(o.fullArea))
                }
                for q in qs {
                    XCTAssertEqual(q.textAnswer.components(separatedBy: "{seg}").count - 1, q.targets.count, q.question)
                }
            }
        }
    }

    func testMuseFilesAndSplits() throws {
        let dir = try makeScratchDirectory(self)
        let summary = try SynthGenerator(config: Self.config, out: dir).run()
        var mean: [String: Double] = [:]
        var kinds = Set<String>()
        for split in SynthGenerator.splits {
            let data = try Data(contentsOf: URL(fileURLWithPath: dir + "/muse_\(split).json"))
            let records = try JSONSerialization.jsonObject(with: data) as! [[String: Any]]
            XCTAssertEqual(records.count, split == "train" ? 6 : (split == "val" ? 2 : 4))
            var targets: [Int] = []
            for r in records {
                let h = r["height"] as! Int, w = r["width"] as! Int
                let path: String
                if let f = r["file_name"] as? String { path = dir + "/refer_seg/images/mscoco/images/train2014/" + f }
                else { path = dir + "/refer_seg/images/mscoco/images/val2017/" + (r["coco_url"] as! String).split(separator: "/").last! }
                let img = try Image.load(path)
                XCTAssertEqual([img.width, img.height], [w, h])
                let answers = r["answers"] as! [[[String: Any]]], texts = r["text_answers"] as! [String]
                XCTAssertEqual(answers.count, (r["questions"] as! [String]).count)
                for (a, t) in zip(answers, texts) {
                    XCTAssertEqual(t.components(separatedBy: "{seg}").count - 1, a.count, t)
                    if !a.isEmpty { targets.append(a.count) }
                    for ann in a {
                        _ = try COCOSegmentation(json: ann["segmentation"]!, item: "ann").mask(height: h, width: w, item: "ann")
                    }
                }
            }
            mean[split] = targets.isEmpty ? 0 : Double(targets.reduce(0, +)) / Double(targets.count)
            if split == "test_less" { XCTAssert(targets.allSatisfy { $0 <= 3 }) }
            if split == "test_many" { XCTAssert(targets.allSatisfy { $0 >= 4 }) }
        }
        XCTAssertLessThan(mean["test_less"]!, mean["test_many"]!)
        for (k, v) in summary.kinds where v > 0 { kinds.insert(k) }
        XCTAssertGreaterThan(summary.polygons, 0)
        XCTAssertGreaterThan(summary.rles, 0)
        // every question kind appears over a larger sample of scenes
        for i in 0..<30 {
            for q in SynthGenerator.sample(config: Self.config, split: "train", index: i).1 { kinds.insert(q.kind.rawValue) }
        }
        XCTAssertEqual(kinds, Set(SynthQuestionKind.allCases.map(\.rawValue)))
        // the other formats exist and images decode
        let labels = try Image.loadLabels(dir + "/ade20k/annotations/training/synth_train_000001.png")
        XCTAssertLessThanOrEqual(Int(labels.pixels.max()!), SynthShape.allCases.count)
        _ = try Image.load(dir + "/ade20k/images/training/synth_train_000001.jpg")
        _ = try Image.load(dir + "/coco/train2017/synth_train_000001.jpg")
        let pickle = try Image.readFile(dir + "/refer_seg/refcoco/refs(unc).p")
        XCTAssertEqual(Array(pickle.prefix(3)), [0x80, 2, UInt8(ascii: "]")])
        XCTAssertEqual(pickle.last, UInt8(ascii: "."))
        // refcoco (unc) splits: train / val / testA (test_less images) / testB (test_many images)
        for split in ["train", "val", "testA", "testB"] {
            XCTAssertNotNil(pickle.firstRange(of: [UInt8(ascii: "X"), UInt8(split.utf8.count), 0, 0, 0] + Array(split.utf8)), split)
        }
        let instances = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/refer_seg/refcoco/instances.json"))) as! [String: Any]
        XCTAssertEqual((instances["images"] as! [Any]).count, 6 + 2 + 4 + 4)
        // ReasonSeg explanations: the keys the reference reads, for train images that exist
        let expl = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/reason_seg/ReasonSeg/explanatory/train.json"))) as! [[String: String]]
        XCTAssertFalse(expl.isEmpty)
        XCTAssertEqual(expl.count, summary.explanations)
        for e in expl {
            XCTAssert(FileManager.default.fileExists(atPath: dir + "/reason_seg/ReasonSeg/train/" + e["image"]!), e["image"]!)
            XCTAssertFalse(e["query"]!.isEmpty)
            XCTAssertFalse(e["outputs"]!.isEmpty)
        }
        let vqa = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/llava_dataset/llava_instruct_150k.json"))) as! [Any]
        XCTAssertEqual(vqa.count, 6)
    }

    /// The VQA caption names every object once, left to right, with the right count; `pixellm synth` writes it as the
    /// first turn of every VQA conversation with `vqaCaptions` (the other files unchanged); it is not a MUSE question.
    func testCaptionNamesEveryObjectLeftToRight() throws {
        for i in 0..<20 {
            let (scene, _) = SynthGenerator.sample(config: Self.config, split: "train", index: i)
            let c = SynthQuestions.caption(scene)
            XCTAssertEqual(c.question, "What objects are there in the image?")
            XCTAssert(c.targets.isEmpty)
            let n = scene.objects.count
            XCTAssert(c.textAnswer.hasPrefix(n == 1 ? "There is 1 object: the " : "There are \(n) objects: the "), c.textAnswer)
            // the phrases in the order of the visible boxes' centres
            var rest = Substring(c.textAnswer), xs: [Double] = []
            let objs = scene.objects
            for k in objs.indices.sorted(by: { (objs[$0].centreX, objs[$0].centreY, $0) < (objs[$1].centreX, objs[$1].centreY, $1) }) {
                let o = scene.objects[k]
                guard let r = rest.range(of: "the \(o.phrase)") else { XCTFail("\(o.phrase) not in order in \(c.textAnswer)"); break }
                rest = rest[r.upperBound...]
                xs.append(o.centreX)
            }
            XCTAssertEqual(xs, xs.sorted())
            XCTAssertEqual(c.textAnswer.components(separatedBy: "the ").count - 1, n, c.textAnswer)
            XCTAssertFalse(SynthQuestions.candidates(scene).contains { $0.question == c.question })
        }
        let plain = try makeScratchDirectory(self), dir = try makeScratchDirectory(self)
        var config = Self.config
        _ = try SynthGenerator(config: config, out: plain).run()
        config.vqaCaptions = true
        _ = try SynthGenerator(config: config, out: dir).run()
        let vqaPath = "llava_dataset/llava_instruct_150k.json"
        let vqa = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/" + vqaPath))) as! [[String: Any]]
        let before = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: plain + "/" + vqaPath))) as! [[String: Any]]
        XCTAssertEqual(vqa.count, Self.config.train)
        for (i, v) in vqa.enumerated() {
            let turns = v["conversations"] as! [[String: String]]
            XCTAssertEqual(turns[0]["value"], "<image>\nWhat objects are there in the image?")
            let (scene, _) = SynthGenerator.sample(config: Self.config, split: "train", index: i)
            XCTAssertEqual(turns[1]["value"], SynthQuestions.caption(scene).textAnswer)
            XCTAssertEqual(turns.count, 6, "the caption and two more questions")
            let old = before[i]["conversations"] as! [[String: String]]
            XCTAssertEqual(old.count, 6, "three questions without captions")
            XCTAssert(old[0]["value"]!.hasPrefix("<image>\n") && !old.contains { $0["value"]!.contains("What objects") })
        }
        // nothing else changes
        let a = try files(plain), b = try files(dir)
        XCTAssertEqual(Set(a.keys), Set(b.keys))
        for (k, v) in a where k != vqaPath { XCTAssertEqual(v, b[k], k) }
        XCTAssertNotEqual(a[vqaPath], b[vqaPath])
    }

    func testUniqueDescriptionsAndRelations() {
        for i in 0..<20 {
            let (scene, _) = SynthGenerator.sample(config: Self.config, split: "train", index: i)
            for q in SynthQuestions.candidates(scene) {
                switch q.kind {
                case .single:
                    // the description matches exactly one object
                    XCTAssertEqual(q.targets.count, 1)
                    XCTAssert(q.explanation.hasPrefix("The \(scene.objects[q.targets[0]].phrase) is the only "), q.explanation)
                case .relational:
                    XCTAssertFalse(q.targets.isEmpty)
                    // the explanation names every target
                    for t in q.targets { XCTAssert(q.explanation.contains(scene.objects[t].phrase), q.explanation) }
                case .counting:
                    XCTAssert(q.targets.isEmpty)
                    XCTAssert(q.explanation.contains(q.textAnswer.contains(" no ") ? "No object" : "Counting"), q.explanation)
                default: break
                }
            }
            for k in scene.objects.indices {
                if let d = SynthQuestions.uniqueDescription(scene, k) {
                    let matches = scene.objects.filter { o in
                        let words = Set(d.split(separator: " ").map(String.init))
                        return words.contains(o.shape.name) && (!words.contains { w in SynthColor.allCases.contains { $0.name == w } } || words.contains(o.color.name))
                            && (!words.contains { w in SynthSize.allCases.contains { $0.name == w } } || words.contains(o.size.name))
                    }
                    XCTAssertEqual(matches.count, 1, d)
                }
            }
        }
    }
}
