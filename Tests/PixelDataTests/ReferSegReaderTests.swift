import Foundation
import XCTest
@testable import PixelData
import PixelTensor

/// Checks shared by the refer_seg and sem_seg reader tests.
enum RoundCheck {
    /// Every question/answer the reference could build for these target names (the template lists
    /// re-derived here from the reference's rules, independently of Allocation.round).
    static func possible(_ names: [String], options: ReaderOptions) -> (questions: Set<String>, answers: Set<String>) {
        let g = options.segGroup
        let joined: String
        if names.count == 1 { joined = names[0] } else { joined = names.dropLast().joined(separator: ", ") + " and " + names.last! }
        let low = joined.lowercased()
        let qs = (Templates.shortQuestions + (options.useExpandQuestionList ? Templates.expandQuestions : []))
            .map { $0.replacingOccurrences(of: "{class_name}", with: low) }
        var answers = Set<String>()
        if names.count == 1 {
            for a in Templates.answers { answers.insert(a.replacingOccurrences(of: "[SEG]", with: g)) }
        } else {
            for t in Templates.singleAnswers {
                let parts = names.map { n -> String in
                    let s = t.replacingOccurrences(of: "[SEG]", with: g).replacingOccurrences(of: "{class_name}", with: n)
                    return String(s.dropLast())
                }
                answers.insert(parts.dropLast().joined(separator: ", ") + " and " + parts.last! + ".")
            }
            let segs = Array(repeating: g, count: names.count)
            let segText = segs.dropLast().joined(separator: ", ") + " and " + g
            for t in Templates.multiAnswers {
                answers.insert(t.replacingOccurrences(of: "{class_name}", with: low).replacingOccurrences(of: "{seg}", with: segText))
            }
        }
        return (Set(qs), answers)
    }

    /// Structure of a sample: one single-round conversation per question, 1 ... perQuestion targets each,
    /// at most numClassesPerSample questions, SEG groups == targets, texts from the templates, masks at the
    /// sample size. Returns the targets grouped per question.
    static func check(_ s: DataSample, options: ReaderOptions, file: StaticString = #filePath, line: UInt = #line) -> [[SampleTarget]] {
        XCTAssertEqual(s.segGroupCount, s.targets.count, "SEG groups vs targets", file: file, line: line)
        XCTAssertGreaterThan(s.conversations.count, 0, file: file, line: line)
        XCTAssertLessThanOrEqual(s.conversations.count, options.numClassesPerSample, file: file, line: line)
        var groups: [[SampleTarget]] = []
        var k = 0
        for conv in s.conversations {
            XCTAssertEqual(conv.count, 1, file: file, line: line)
            let n = SegText.countGroups(conv[0].answer)
            XCTAssertTrue((1...options.numClassesPerQuestion).contains(n), "targets per question \(n)", file: file, line: line)
            guard k + n <= s.targets.count else { XCTFail("more groups than targets", file: file, line: line); return groups }
            let ts = Array(s.targets[k..<(k + n)])
            k += n
            groups.append(ts)
            let p = possible(ts.map(\.name), options: options)
            XCTAssertTrue(p.questions.contains(conv[0].question), "question \"\(conv[0].question)\" not from the templates", file: file, line: line)
            XCTAssertTrue(p.answers.contains(conv[0].answer), "answer \"\(conv[0].answer)\" not from the templates", file: file, line: line)
        }
        for t in s.targets {
            XCTAssertEqual(t.mask.height, s.height, file: file, line: line)
            XCTAssertEqual(t.mask.width, s.width, file: file, line: line)
        }
        return groups
    }

    static func rle(_ counts: String, _ h: Int, _ w: Int) throws -> RLE { try RLE(height: h, width: w, compressed: counts) }
}

final class ReferSegReaderTests: XCTestCase {
    var exp: [String: Any] { RefSemFixtures.expected["refer"] as! [String: Any] }

    func testFixtureSamplesMatchPycocotools() throws {
        let options = ReaderOptions()
        for name in ReferSegReader.names {
            let e = exp[name] as! [String: Any]
            let reader = try ReferSegReader(datasetDir: RefSemFixtures.dir, name: name, options: options)
            let index = (e["index"] as! [NSNumber]).map(\.intValue)
            XCTAssertEqual(reader.count, index.count, name)
            XCTAssertEqual(reader.dataset, "refer_seg")
            XCTAssertEqual(reader.subset, name)
            XCTAssertTrue(reader.refsFile.hasSuffix(name == "refcocog" ? "/refs(umd).p" : "/refs(unc).p"))
            let images = e["images"] as! [String: [String: Any]]
            let masks = e["masks"] as! [String: String]
            let skips = e["skips"] as! [String: String]
            var sampledAll = 0
            for (i, imageID) in index.enumerated() {
                for seed in UInt64(0)..<12 {
                    if let frag = skips[String(imageID)] {
                        assertThrows(try reader.sample(i, seed: seed), containing: [frag], "\(name) image \(imageID)")
                        do { _ = try reader.sample(i, seed: seed) } catch let s as SampleSkip {
                            XCTAssertTrue(s.file.hasSuffix(".jpg") || s.file.hasSuffix("instances.json"), s.file)
                        }
                        continue
                    }
                    let im = images[String(imageID)]!
                    let s = try reader.sample(i, seed: seed)
                    XCTAssertEqual(s, try reader.sample(i, seed: seed), "same seed, same sample")
                    XCTAssertEqual(s.dataset, "refer_seg"); XCTAssertEqual(s.subset, name); XCTAssertEqual(s.index, i)
                    XCTAssertEqual(s.imagePath, RefSemFixtures.dir + "/" + (im["file"] as! String))
                    let h = (im["h"] as! NSNumber).intValue, w = (im["w"] as! NSNumber).intValue
                    XCTAssertEqual(s.height, h); XCTAssertEqual(s.width, w)
                    _ = RoundCheck.check(s, options: options)
                    let sents = (im["sents"] as! [[Any]])
                    // targets: distinct sentences of this image, all of them when there are at most 9
                    var seen = Set<String>()
                    for t in s.targets {
                        XCTAssertTrue(seen.insert(t.provenance).inserted, "duplicate target \(t.provenance)")
                        guard let row = sents.first(where: { "ref \($0[1]) sent \($0[3]) / ann \($0[2])" == t.provenance }) else {
                            XCTFail("\(name): unknown target \(t.provenance)"); continue
                        }
                        XCTAssertEqual(t.name, row[0] as! String)
                        let ann = String((row[2] as! NSNumber).intValue)
                        XCTAssertEqual(t.mask, try RoundCheck.rle(masks[ann]!, h, w), "\(name) ann \(ann) mask")
                    }
                    XCTAssertEqual(s.targets.count, min(9, sents.count))
                    sampledAll += 1
                }
            }
            XCTAssertGreaterThan(sampledAll, 0, name)
        }
    }

    func testSeedsVaryTheSample() throws {
        let reader = try ReferSegReader(datasetDir: RefSemFixtures.dir, name: "refcoco")
        let samples = try (0..<20).map { try reader.sample(0, seed: UInt64($0)) }
        XCTAssertGreaterThan(Set(samples.map { $0.targets.map(\.provenance) }).count, 5, "12 sentences, 9 sampled: draws differ")
        XCTAssertGreaterThan(Set(samples.map { $0.conversations.map { $0[0].question } }).count, 5)
    }

    func testMalformedIndexFiles() throws {
        let dir = try makeScratchDirectory(self)
        let src = RefSemFixtures.dir + "/refer_seg/refcoco"
        let ds = dir + "/refer_seg/refcoco"
        try FileManager.default.createDirectory(atPath: ds, withIntermediateDirectories: true)
        assertThrows(try ReferSegReader(datasetDir: dir, name: "refcoco"), containing: ["refs(unc).p", "no such file"], "missing refs")
        assertThrows(try ReferSegReader(datasetDir: dir, name: "refcocoz"), containing: ["unknown"], "bad name")
        let refs = ds + "/refs(unc).p", inst = ds + "/instances.json"
        try Data([0x80, 0x02, 0x63] + Array("os\nsystem\n".utf8) + [0x2e]).write(to: URL(fileURLWithPath: refs))
        assertThrows(try ReferSegReader(datasetDir: dir, name: "refcoco"), containing: ["refs(unc).p", "GLOBAL", "byte 2"], "global")
        try Data([0x80, 0x02, 0x7d, 0x2e]).write(to: URL(fileURLWithPath: refs))
        assertThrows(try ReferSegReader(datasetDir: dir, name: "refcoco"), containing: ["refs(unc).p", "not a list of refs"], "dict")
        try Data(SynthPickle.dumps(.array([.object([("ref_id", .int(1)), ("image_id", .int(1))])]))).write(to: URL(fileURLWithPath: refs))
        assertThrows(try ReferSegReader(datasetDir: dir, name: "refcoco"), containing: ["refs(unc).p", "ref 0", "ann_id"], "no ann_id")
        try FileManager.default.removeItem(atPath: refs)
        try FileManager.default.copyItem(atPath: src + "/refs(unc).p", toPath: refs)
        assertThrows(try ReferSegReader(datasetDir: dir, name: "refcoco"), containing: ["instances.json", "file not found"], "no instances")
        try Data("{\"images\": [".utf8).write(to: URL(fileURLWithPath: inst))
        assertThrows(try ReferSegReader(datasetDir: dir, name: "refcoco"), containing: ["instances.json", "not valid JSON"], "bad json")
        try Data("{\"images\": []}".utf8).write(to: URL(fileURLWithPath: inst))
        assertThrows(try ReferSegReader(datasetDir: dir, name: "refcoco"), containing: ["instances.json", "annotations"], "no anns")
        // images missing from instances.json: an item-level skip naming instances.json
        try Data("{\"images\": [], \"annotations\": []}".utf8).write(to: URL(fileURLWithPath: inst))
        let r = try ReferSegReader(datasetDir: dir, name: "refcoco")
        XCTAssertEqual(r.count, 5)
        assertThrows(try r.sample(0, seed: 0), containing: ["instances.json", "image id 1"], "image not in instances")
    }

    func testAllocationProperties() {
        for (q, p) in [(3, 3), (1, 1), (2, 4), (4, 1), (5, 2)] {
            var o = ReaderOptions(); o.numClassesPerSample = q; o.numClassesPerQuestion = p
            for n in 0...12 {
                for seed in UInt64(0)..<40 {
                    var rng = RNG(seed: seed &* 31 &+ UInt64(n))
                    let items = Array(0..<n)
                    let a = Allocation.sampleAndAllocate(items, options: o, rng: &rng)
                    let flat = a.flatMap { $0 }
                    XCTAssertEqual(flat.count, min(n, q * p), "n \(n) q \(q) p \(p)")
                    XCTAssertEqual(Set(flat).count, flat.count, "no duplicates")
                    XCTAssertTrue(Set(flat).isSubset(of: Set(items)))
                    XCTAssertEqual(a.count, min(q, n), "questions")
                    XCTAssertTrue(a.allSatisfy { (1...p).contains($0.count) }, "1...\(p) per question: \(a)")
                    if n <= q * p { XCTAssertEqual(Set(flat), Set(items), "all used when few") }
                    var rng2 = RNG(seed: seed &* 31 &+ UInt64(n))
                    XCTAssertEqual(Allocation.sampleAndAllocate(items, options: o, rng: &rng2), a, "deterministic")
                }
            }
        }
        // the round text: single target uses ANSWER_LIST, several the single/multi lists, {seg} in a name stays
        var o = ReaderOptions(); o.useExpandQuestionList = false
        var rng = RNG(seed: 1)
        for names in [["The Man"], ["a", "B c"], ["x {seg} y", "z", "w"]] {
            for _ in 0..<30 {
                let r = Allocation.round(names: names, options: o, rng: &rng)
                let p = RoundCheck.possible(names, options: o)
                XCTAssertTrue(p.questions.contains(r.question), r.question)
                XCTAssertTrue(p.answers.contains(r.answer) || names[0].contains("{seg}"), r.answer)
                XCTAssertEqual(SegText.countGroups(r.answer), names.count)
                XCTAssertFalse(r.question.contains("The"), "lowercased")
            }
        }
    }

    func testSynthTreeRefcoco() throws {
        let dir = try makeScratchDirectory(self)
        let config = SynthConfig(seed: 3, train: 6, val: 2, test: 1, size: 64)
        _ = try SynthGenerator(config: config, out: dir).run()
        let reader = try ReferSegReader(datasetDir: dir, name: "refcoco")
        XCTAssertGreaterThan(reader.count, 0)
        // the synth's own masks: ann id -> segmentation in instances.json, decoded by COCOSegmentation
        let inst = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/refer_seg/refcoco/instances.json"))) as! [String: Any]
        var visible: [Int: RLE] = [:]
        var annImage: [Int: Int] = [:]
        var sizes: [Int: (Int, Int)] = [:]
        for im in inst["images"] as! [[String: Any]] {
            sizes[(im["id"] as! NSNumber).intValue] = ((im["height"] as! NSNumber).intValue, (im["width"] as! NSNumber).intValue)
        }
        for a in inst["annotations"] as! [[String: Any]] {
            let id = (a["id"] as! NSNumber).intValue, img = (a["image_id"] as! NSNumber).intValue
            annImage[id] = img
            let (h, w) = sizes[img]!
            visible[id] = RLE(encoding: try COCOSegmentation(json: a["segmentation"]!, item: "ann").mask(height: h, width: w, item: "ann"))
        }
        var checked = 0
        for i in 0..<reader.count {
            let s = try reader.sample(i, seed: 9)
            _ = RoundCheck.check(s, options: reader.options)
            XCTAssertTrue(FileManager.default.fileExists(atPath: s.imagePath))
            for t in s.targets {
                let ann = Int(t.provenance.components(separatedBy: "ann ").last!)!
                XCTAssertEqual(t.mask, visible[ann], "synth ann \(ann)")
                XCTAssertGreaterThan(t.mask.area, 0)
                checked += 1
            }
        }
        XCTAssertGreaterThan(checked, 0)
        // the synth's scene objects agree (train split images come first, one image id per scene)
        for i in 0..<config.train {
            let (scene, _) = SynthGenerator.sample(config: config, split: "train", index: i)
            let firstAnn = annImage.filter { $0.value == i + 1 }.keys.min()
            guard let f = firstAnn else { continue }
            for (k, o) in scene.objects.enumerated() { XCTAssertEqual(visible[f + k], RLE(encoding: o.visibleMask)) }
        }
    }
}
