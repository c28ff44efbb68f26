import Foundation
import XCTest
@testable import PixelData
import PixelTensor

final class SemSegReaderTests: XCTestCase {
    var exp: [String: Any] { RefSemFixtures.expected["sem"] as! [String: Any] }

    func testLabelDatasetsMatchNumpy() throws {
        let options = ReaderOptions()
        for name in ["ade20k", "cocostuff", "mapillary"] {
            let items = exp[name] as! [[String: Any]]
            let reader = try SemSegReader(datasetDir: RefSemFixtures.dir, name: name, options: options)
            XCTAssertEqual(reader.count, items.count, name)
            XCTAssertEqual(reader.dataset, "sem_seg")
            var ok = 0
            for (i, e) in items.enumerated() {
                for seed in UInt64(0)..<10 {
                    if let frag = e["skip"] as? String {
                        let file = RefSemFixtures.dir + "/" + (e["file"] as! String)
                        do {
                            _ = try reader.sample(i, seed: seed)
                            XCTFail("\(name) item \(i): expected a skip (\(frag))")
                        } catch let s as SampleSkip {
                            XCTAssertEqual(s.file, file, "\(name) item \(i)")
                            XCTAssertTrue(s.reason.contains(frag), "\(name) item \(i): \(s.reason)")
                        }
                        continue
                    }
                    let s = try reader.sample(i, seed: seed)
                    XCTAssertEqual(s, try reader.sample(i, seed: seed), "same seed, same sample")
                    XCTAssertEqual(s.subset, name)
                    XCTAssertEqual(s.imagePath, RefSemFixtures.dir + "/" + (e["image"] as! String))
                    let h = (e["h"] as! NSNumber).intValue, w = (e["w"] as! NSNumber).intValue
                    XCTAssertEqual(s.height, h); XCTAssertEqual(s.width, w)
                    _ = RoundCheck.check(s, options: options)
                    let classes = (e["classes"] as! [NSNumber]).map(\.intValue)
                    let names = e["names"] as! [String]
                    let masks = e["masks"] as! [String: String]
                    XCTAssertEqual(s.targets.count, min(9, classes.count))
                    var seen = Set<Int>()
                    for t in s.targets {
                        let c = Int(t.provenance.replacingOccurrences(of: "class ", with: ""))!
                        XCTAssertTrue(seen.insert(c).inserted, "duplicate class \(c)")
                        guard let k = classes.firstIndex(of: c) else { XCTFail("\(name): class \(c) not in the label"); continue }
                        XCTAssertEqual(t.name, names[k])
                        XCTAssertEqual(t.mask, try RoundCheck.rle(masks[String(c)]!, h, w), "\(name) class \(c)")
                    }
                    ok += 1
                }
            }
            XCTAssertGreaterThan(ok, 0, name)
        }
    }

    func testPartDatasetsMatchAnnToMask() throws {
        let options = ReaderOptions()
        for name in ["pascal_part", "paco_lvis"] {
            let items = exp[name] as! [[String: Any]]
            let reader = try SemSegReader(datasetDir: RefSemFixtures.dir, name: name, options: options)
            XCTAssertEqual(reader.count, items.count, name)
            var partForms = Set<String>()
            for (i, e) in items.enumerated() {
                for seed in UInt64(0)..<16 {
                    if let frag = e["skip"] as? String {
                        do {
                            _ = try reader.sample(i, seed: seed)
                            XCTFail("\(name) item \(i): expected a skip")
                        } catch let s as SampleSkip {
                            XCTAssertEqual(s.file, RefSemFixtures.dir + "/" + (e["file"] as! String))
                            XCTAssertTrue(s.reason.contains(frag), "\(name) item \(i): \(s.reason)")
                        }
                        continue
                    }
                    let s = try reader.sample(i, seed: seed)
                    XCTAssertEqual(s, try reader.sample(i, seed: seed))
                    XCTAssertEqual(s.imagePath, RefSemFixtures.dir + "/" + (e["image"] as! String))
                    _ = RoundCheck.check(s, options: options)
                    let anns = e["anns"] as! [String: [String: String]]
                    XCTAssertEqual(s.targets.count, 9, "11 annotations, 9 sampled")
                    var seen = Set<String>()
                    for t in s.targets {
                        let id = t.provenance.components(separatedBy: " ")[1]
                        XCTAssertTrue(seen.insert(id).inserted)
                        guard let a = anns[id] else { XCTFail("unknown ann \(id)"); continue }
                        XCTAssertEqual(t.mask, try RoundCheck.rle(a["counts"]!, s.height, s.width), "\(name) ann \(id)")
                        if let whole = a["name"] {
                            XCTAssertEqual(t.name, whole)
                        } else {
                            let obj = a["obj"]!, part = a["part"]!
                            XCTAssertTrue(t.name == "\(obj) \(part)" || t.name == "the \(part) of the \(obj)", t.name)
                            partForms.insert(t.name.hasPrefix("the ") ? "the" : "plain")
                        }
                    }
                }
            }
            XCTAssertEqual(partForms, ["the", "plain"], "both part name forms drawn")
        }
    }

    func testMalformedIndexFiles() throws {
        let dir = try makeScratchDirectory(self)
        assertThrows(try SemSegReader(datasetDir: dir, name: "ade20k"), containing: ["ade20k/images/training", "no such directory"], "ade")
        assertThrows(try SemSegReader(datasetDir: dir, name: "mapillary"), containing: ["config_v2.0.json", "file not found"], "map")
        assertThrows(try SemSegReader(datasetDir: dir, name: "paco_lvis"), containing: ["paco_lvis_v1_train.json", "file not found"], "paco")
        assertThrows(try SemSegReader(datasetDir: dir, name: "pascal"), containing: ["unknown"], "name")
        try FileManager.default.createDirectory(atPath: dir + "/mapillary", withIntermediateDirectories: true)
        try Data("{\"labels\": [{\"name\": \"x\"}]}".utf8).write(to: URL(fileURLWithPath: dir + "/mapillary/config_v2.0.json"))
        assertThrows(try SemSegReader(datasetDir: dir, name: "mapillary"), containing: ["config_v2.0.json", "readable"], "no readable")
        try FileManager.default.createDirectory(atPath: dir + "/vlpart/pascal_part", withIntermediateDirectories: true)
        try Data("{\"images\": [], \"annotations\": [], \"categories\": [{\"id\": 1, \"name\": \"head\"}]}".utf8)
            .write(to: URL(fileURLWithPath: dir + "/vlpart/pascal_part/train.json"))
        assertThrows(try SemSegReader(datasetDir: dir, name: "pascal_part"), containing: ["train.json", "object:part"], "pascal cat")
        try Data("{\"images\": [1,".utf8).write(to: URL(fileURLWithPath: dir + "/vlpart/pascal_part/train.json"))
        assertThrows(try SemSegReader(datasetDir: dir, name: "pascal_part"), containing: ["train.json", "not valid JSON"], "json")
        try FileManager.default.createDirectory(atPath: dir + "/ade20k/images/training", withIntermediateDirectories: true)
        try Data("{}".utf8).write(to: URL(fileURLWithPath: dir + "/ade20k/synth_classes.json"))
        assertThrows(try SemSegReader(datasetDir: dir, name: "ade20k"), containing: ["synth_classes.json", "list of class names"], "classes")
    }

    func testEmbeddedClassTables() throws {
        XCTAssertEqual(SemSegClasses.ade20k.count, 150)
        XCTAssertEqual(SemSegClasses.ade20k.first, "wall")
        XCTAssertEqual(SemSegClasses.cocostuff.count, 182)
        XCTAssertEqual(SemSegClasses.cocostuff.first, "person")
        XCTAssertEqual(SemSegClasses.cocostuff.filter { $0.contains("-") }.count, 28)
        let r = try SemSegReader(datasetDir: RefSemFixtures.dir, name: "ade20k")
        XCTAssertEqual(r.classes, SemSegClasses.ade20k)
        XCTAssertTrue(r.classSource.hasPrefix("embedded"))
    }

    func testSynthTreeAde20k() throws {
        let dir = try makeScratchDirectory(self)
        let config = SynthConfig(seed: 4, train: 6, val: 2, test: 1, size: 64)
        _ = try SynthGenerator(config: config, out: dir).run()
        let reader = try SemSegReader(datasetDir: dir, name: "ade20k")
        XCTAssertEqual(reader.count, config.train)
        XCTAssertEqual(reader.classes, SynthShape.allCases.map(\.name))
        XCTAssertTrue(reader.classSource.hasSuffix("synth_classes.json"))
        var checked = 0
        for i in 0..<reader.count {
            let s = try reader.sample(i, seed: 1)   // no skips
            _ = RoundCheck.check(s, options: reader.options)
            let (scene, _) = SynthGenerator.sample(config: config, split: "train", index: i)
            XCTAssertEqual(s.height, scene.height); XCTAssertEqual(s.width, scene.width)
            let present = Set(scene.objects.map { $0.shape.categoryID - 1 })
            XCTAssertEqual(s.targets.count, min(9, present.count))
            for t in s.targets {
                let c = Int(t.provenance.replacingOccurrences(of: "class ", with: ""))!
                XCTAssertEqual(t.name, SynthShape.allCases[c].name)
                // the synth's own mask of the class: the union of its objects' visible pixels
                var m = BinaryMask(height: scene.height, width: scene.width)
                for o in scene.objects where o.shape.categoryID - 1 == c {
                    for p in 0..<m.data.count where o.visibleMask.data[p] != 0 { m.data[p] = 1 }
                }
                XCTAssertEqual(t.mask, RLE(encoding: m), "synth image \(i) class \(c)")
                checked += 1
            }
        }
        XCTAssertGreaterThan(checked, 0)
    }
}
