import Foundation
import XCTest
import PixelData
import PixelTensor

/// `pixellm synth` -> `pixellm prepare` -> `pixellm inspect`, as the README runs them, with the built binary.
final class DataCLITests: XCTestCase {
    func run(_ args: [String]) throws -> CLITests.Run { try CLITests.runBinary(args) }

    static let kinds = "sem_seg||refer_seg||vqa||multi_reason_seg||reason_seg"

    func prepare(_ data: String, _ out: String, extra: [String] = []) throws -> CLITests.Run {
        try run(["prepare", "--dataset-dir", data, "--dataset", Self.kinds, "--out", out, "--image-size", "64",
                 "--shard-size", "16"] + extra)
    }

    func testSynthPrepareInspect() throws {
        let root = CLITests.temp("data")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let data = root + "/data", shards = root + "/shards"
        let s = try run(["synth", "--out", data, "--train", "8", "--val", "2", "--test", "2", "--size", "64"])
        XCTAssertEqual(s.status, 0, s.err)

        let p = try prepare(data, shards)
        XCTAssertEqual(p.status, 0, p.err + p.out)
        let all = p.out + p.err
        // 8 images for each of ade20k, refcoco (train refs), llava and muse_train; ReasonSeg/train has the train
        // images with a question it can use (7 of 8 with this seed).
        let reader = try ShardReader(directory: shards)
        XCTAssert(all.contains("samples: \(reader.count) of \(reader.count) items; skipped: 0"), all)
        XCTAssert((37...40).contains(reader.count), "\(reader.count)")
        let manifest = try ShardManifest.load(shards)
        XCTAssertGreaterThan(manifest.shards.count, 1)

        // Every sample: one mask per SEG group, masks at the original size, ids hold the image sentinel once.
        var masks = 0
        for i in 0..<reader.count {
            let meta = try reader.meta(i)
            let rles = try reader.masks(i)
            let (ids, labels) = try reader.tokens(i)
            let groups = ids.reduce(0) { $0 + $1.filter { $0 == 1018 }.count }  // [SEG0] in the synth tokenizer
            XCTAssertEqual(groups, rles.count, "sample \(i) (\(meta.source))")
            let (h, w) = try reader.originalSize(i)
            XCTAssert(rles.allSatisfy { $0.height == h && $0.width == w }, "sample \(i)")
            for (a, b) in zip(ids, labels) {
                XCTAssertEqual(a.filter { $0 == -200 }.count, 1)
                XCTAssertEqual(a.count, b.count)
                XCTAssert(b.contains { $0 != -100 }, "sample \(i): nothing supervised")
            }
            masks += rles.count
        }
        XCTAssertGreaterThan(masks, reader.count)

        // inspect: the files and the JSON describe sample 0's masks exactly.
        let out = root + "/inspect"
        let r = try run(["inspect", "--shards", shards, "--index", "3", "--out", out])
        XCTAssertEqual(r.status, 0, r.err)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/sample.json"))) as? [String: Any])
        let targets = try XCTUnwrap(json["targets"] as? [[String: Any]])
        let rles = try reader.masks(3)
        XCTAssertEqual(targets.count, rles.count)
        for (k, rle) in rles.enumerated() {
            let png = try GrayImage.load(out + "/mask_\(k).png")
            XCTAssertEqual([png.height, png.width], [rle.height, rle.width])
            XCTAssertEqual(png.pixels, rle.decode().data.map { $0 != 0 ? 255 : 0 }, "mask_\(k).png")
        }
        let image = try Image.load(out + "/image.png")
        XCTAssertEqual([image.height, image.width], [64, 64])
        let convs = try XCTUnwrap(json["conversations"] as? [[String: Any]])
        XCTAssertEqual(convs.count, try reader.tokens(3).inputIds.count)

        // A second run keeps every shard; an index past the end is a named error.
        let again = try prepare(data, shards)
        XCTAssertEqual(again.status, 0, again.err)
        XCTAssert((again.out + again.err).contains("packed 0"), again.out + again.err)
        let bad = try run(["inspect", "--shards", shards, "--index", "\(reader.count)", "--out", out])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssert(bad.err.contains("\(reader.count)"), bad.err)
    }

    /// A bad sample is skipped, counted and logged with its file; `--strict` makes it an error naming the file.
    func testBadSamplesAreSkippedAndCounted() throws {
        let root = CLITests.temp("bad")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let data = root + "/data"
        let s = try run(["synth", "--out", data, "--train", "4", "--val", "1", "--test", "1", "--size", "64"])
        XCTAssertEqual(s.status, 0, s.err)
        // Damage one MUSE/refcoco image (train2014 JPEG) and drop one llava image.
        let jpegDir = data + "/refer_seg/images/mscoco/images/train2014"
        let jpegs = try FileManager.default.contentsOfDirectory(atPath: jpegDir).filter { $0.hasPrefix("synth_train") }.sorted()
        let victim = jpegDir + "/" + jpegs[0]
        try Data([0xFF, 0xD8, 0xFF, 0xE0, 0, 16]).write(to: URL(fileURLWithPath: victim))
        let llava = data + "/coco/train2017"
        let gone = try FileManager.default.contentsOfDirectory(atPath: llava).sorted()[0]
        try FileManager.default.removeItem(atPath: llava + "/" + gone)

        // And a malformed MUSE json: that sub-dataset is skipped and counted, the others are packed.
        let muse = FileManager.default.fileExists(atPath: data + "/muse_train.json") ? data + "/muse_train.json" : data + "/muse/muse_train.json"
        try Data("[{\"file_name\": ".utf8).write(to: URL(fileURLWithPath: muse))

        let p = try prepare(data, root + "/shards")
        XCTAssertEqual(p.status, 0, p.err)
        let all = p.out + p.err
        XCTAssertFalse(all.contains("skipped: 0"), all)
        let log = try String(contentsOfFile: root + "/shards/skipped.log", encoding: .utf8)
        XCTAssert(log.contains(jpegs[0]), log)
        XCTAssert(log.contains(gone), log)
        XCTAssert(log.contains("muse_train.json\tunreadable dataset: not valid JSON"), log)
        XCTAssert(all.contains("multi_reason_seg/muse_train: 0 items"), all)

        let strict = try run(["prepare", "--dataset-dir", data, "--dataset", "refer_seg||vqa", "--refer-seg-data",
                              "refcoco", "--out", root + "/strict", "--image-size", "64", "--strict"])
        XCTAssertNotEqual(strict.status, 0)
        XCTAssertFalse(strict.signalled)
        XCTAssert(strict.err.contains(jpegs[0]) || strict.err.contains(gone), strict.err)
    }

    /// `pixellm probe` on a synthetic tree with pseudo-random weights at synth-smoke's size: the three word positions
    /// of the synthetic names (size, colour, shape), accuracies and chance in [0, 1], the JSON report; bad input
    /// named.
    func testProbeReportsTheWordsOfTheSyntheticNames() throws {
        let root = CLITests.temp("probe")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let data = root + "/data"
        let s = try run(["synth", "--out", data, "--train", "20", "--val", "2", "--test", "2", "--size", "112"])
        XCTAssertEqual(s.status, 0, s.err)
        let base = ["probe", "--random-weights", "synth-smoke", "--tokenizer", data + "/tokenizer", "--dataset-dir", data]
        let r = try run(base + ["--images", "20", "--out", root + "/probe.json"])
        XCTAssertEqual(r.status, 0, r.err + r.out)
        XCTAssert(r.out.contains("vision.deep") && r.out.contains("llm.image_token") && r.out.contains("chance"), r.out)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: root + "/probe.json"))) as? [String: Any])
        XCTAssertEqual(json["images"] as? Int, 20)
        XCTAssertGreaterThan(json["objects"] as? Int ?? 0, 20)
        let words = try XCTUnwrap(json["words"] as? [[String: Any]])
        XCTAssertEqual(words.count, 3)
        XCTAssert(Set(words[0]["classes"] as? [String] ?? []).isSubset(of: ["small", "medium", "large"]), "\(words[0])")
        for w in words {
            let figures = try XCTUnwrap(w["figures"] as? [[String: Any]])
            XCTAssertEqual(figures.map { $0["feature"] as? String }, ["vision.deep", "vision.mid", "llm.image_token"])
            for f in figures {
                let a = try XCTUnwrap(f["accuracy"] as? Double), c = try XCTUnwrap(f["chance"] as? Double)
                XCTAssert((0...1).contains(a) && (0...1).contains(c), "\(f)")
            }
        }
        // bad input: the split, and a tree without the MUSE file
        let split = try run(base + ["--split", "bogus"])
        XCTAssertNotEqual(split.status, 0)
        XCTAssert(split.err.contains("--split bogus"), split.err)
        // the 2 val images hold no image for choosing the ridge or for holding out: said, not a crash
        let few = try run(base + ["--split", "val"])
        XCTAssertNotEqual(few.status, 0)
        XCTAssertFalse(few.signalled)
        XCTAssert(few.err.contains("muse_val.json") && few.err.contains("too few objects"), few.err)
        try FileManager.default.removeItem(atPath: data + "/muse_val.json")
        let missing = try run(base + ["--split", "val"])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertFalse(missing.signalled)
        XCTAssert(missing.err.contains("muse_val.json"), missing.err)
    }

    /// The tensors of a single-file safetensors checkpoint, by name: the raw bytes (the header read by hand).
    static func safetensorBytes(_ path: String) throws -> [String: [UInt8]] {
        let d = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let n = d.prefix(8).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        let header = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(d[8..<(8 + n)])) as? [String: Any])
        var out: [String: [UInt8]] = [:]
        for (name, v) in header where name != "__metadata__" {
            let offsets = try XCTUnwrap((v as? [String: Any])?["data_offsets"] as? [Int])
            out[name] = Array(d[(8 + n + offsets[0])..<(8 + n + offsets[1])])
        }
        return out
    }

    func testPretrainVisionWritesAModelWhoseTowerTrainedAndWhoseRestIsTheFreshModel() throws {
        let root = CLITests.temp("pretrain-vision")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let data = root + "/data"
        let s = try run(["synth", "--out", data, "--train", "20", "--val", "2", "--test", "2", "--size", "112"])
        XCTAssertEqual(s.status, 0, s.err)
        let base = ["pretrain-vision", "--config", "synth-smoke", "--dataset-dir", data, "--images", "20", "--batch-size", "4",
                    "--warmup-steps", "1", "--eval-every", "2"]
        let a = try run(base + ["--steps", "2", "--out", root + "/a"])
        XCTAssertEqual(a.status, 0, a.err + a.out)
        XCTAssert(a.out.contains("16 images") && a.out.contains("4 held out") && a.out.contains("held-out word 1"), a.out)
        let b = try run(base + ["--steps", "4", "--out", root + "/b"])
        XCTAssertEqual(b.status, 0, b.err + b.out)
        let curve = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: root + "/b/pretrain_vision.json"))) as? [String: Any])
        let points = try XCTUnwrap(curve["points"] as? [[String: Any]])
        XCTAssertEqual(points.map { $0["step"] as? Int }, [0, 2, 4])
        XCTAssertEqual(points.last?["images"] as? Int, 16)
        XCTAssertEqual((curve["classes"] as? [[String]])?.count, 3)
        for p in points { for (_, v) in try XCTUnwrap(p["heldOut"] as? [String: Double]) { XCTAssert((0...1).contains(v)) } }
        // the same seed: the same fresh LLM and decoder (train's --seed initialisation) in both; the towers trained
        // for 2 and 4 steps differ; CLIP is inside under the checkpoint's names
        let ta = try Self.safetensorBytes(root + "/a/model.safetensors"), tb = try Self.safetensorBytes(root + "/b/model.safetensors")
        XCTAssertEqual(Set(ta.keys), Set(tb.keys))
        let vision = ta.keys.filter { $0.hasPrefix("model.vision_tower.vision_tower.") }
        XCTAssert(vision.contains("model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight"), "\(vision.prefix(3))")
        for n in ta.keys where !n.hasPrefix("model.vision_tower.") { XCTAssertEqual(ta[n], tb[n], n) }
        XCTAssertNotEqual(ta["model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight"],
                          tb["model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight"])
        // the output is a model directory the other commands load (tokenizer inside)
        let probe = try run(["probe", "--model", root + "/b", "--dataset-dir", data, "--images", "20"])
        XCTAssertEqual(probe.status, 0, probe.err + probe.out)
        // continuing from it; bad input named, no signal
        let c = try run(["pretrain-vision", "--version", root + "/b", "--dataset-dir", data, "--images", "20", "--steps", "1", "--out", root + "/c"])
        XCTAssertEqual(c.status, 0, c.err + c.out)
        let both = try run(base + ["--version", root + "/b", "--steps", "1", "--out", root + "/d"])
        XCTAssertNotEqual(both.status, 0)
        XCTAssert(both.err.contains("exactly one of --config and --version"), both.err)
        let few = try run(base + ["--split", "val", "--steps", "1", "--out", root + "/e"])
        XCTAssertNotEqual(few.status, 0)
        XCTAssertFalse(few.signalled)
        XCTAssert(few.err.contains("muse_val.json") && few.err.contains("too few objects"), few.err)
        let noVision = try run(["pretrain-vision", "--version", data, "--dataset-dir", data, "--steps", "1", "--out", root + "/f"])
        XCTAssertNotEqual(noVision.status, 0)
        XCTAssertFalse(noVision.signalled)
    }
}
