import Foundation
import XCTest
@testable import PixelData
import PixelTensor
import PixelText

/// A test-only reader: synthetic samples whose images are real PNG files in a temporary directory.
/// Item 3's image is missing, item 5 throws a SampleSkip (bad RLE), item 6's image does not decode, item 7's
/// image is not the size its annotation says.
final class FakeReader: DatasetReader {
    let dataset: String
    let subset: String
    let count: Int
    let dir: String
    var indexSkips = SkipLog()
    /// An item whose sample() throws a DatasetError (the whole dataset is unreadable).
    var datasetErrorAt: Int?

    init(dir: String, subset: String = "fake", dataset: String = "refer_seg", count: Int = 10) throws {
        self.dir = dir
        self.subset = subset
        self.dataset = dataset
        self.count = count
        for i in 0..<count {
            let p = imagePath(i)
            switch i {
            case 3: break
            case 6: try Data("this is not an image".utf8).write(to: URL(fileURLWithPath: p))
            default:
                let (h, w) = size(i)
                let (hh, ww) = i == 7 ? (h + 1, w) : (h, w)
                let img = RGBImage(width: ww, height: hh, pixels: (0..<(hh * ww * 3)).map { UInt8(truncatingIfNeeded: ($0 * 7 + i * 31) ^ ($0 >> 3)) })
                try img.writePNG(p)
            }
        }
    }

    func imagePath(_ i: Int) -> String { "\(dir)/\(subset)_\(i).png" }
    func size(_ i: Int) -> (Int, Int) { [(30, 40), (50, 20), (33, 33), (17, 61)][i % 4] }

    static func mask(_ h: Int, _ w: Int, _ seed: Int) -> RLE {
        RLE(encoding: BinaryMask(height: h, width: w, data: (0..<(h * w)).map { (($0 * 13 + seed * 5) % 17) < 6 ? 1 : 0 }))
    }

    func sample(_ i: Int, seed: UInt64) throws -> DataSample {
        if i == datasetErrorAt { throw DatasetError(file: "\(dir)/index.json", "truncated") }
        if i == 5 { throw SampleSkip(file: "\(dir)/ann.json", "RLE counts do not sum to h x w: 1199 != 1200 (entry 5)") }
        let (h, w) = size(i)
        let g = SegText.defaultGroup
        var convs: [[DialogueRound]] = [[DialogueRound(question: "<image>\nCan you segment the thing \(i) in this image?", answer: "Sure, \(g).")]]
        var targets = [SampleTarget(mask: FakeReader.mask(h, w, i), name: "thing \(i)", provenance: "ann \(i)")]
        if i % 2 == 0 {
            convs.append([DialogueRound(question: "<image>\nWhat are a and b (seed \(seed))?", answer: "a is \(g) and b is \(g)."),
                          DialogueRound(question: "And c?", answer: "c is \(g).")])
            targets += (1...3).map { SampleTarget(mask: FakeReader.mask(h, w, i + 10 * $0), name: "t\($0)", provenance: "ann \(i).\($0)") }
        }
        return DataSample(dataset: dataset, subset: subset, index: i, imagePath: imagePath(i), height: h, width: w,
                          conversations: convs, targets: targets, source: "\(subset).json entry \(i)")
    }
}

final class ShardTests: XCTestCase {
    static let tokenizerDir: String = {
        let here = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        return here.deletingLastPathComponent().appendingPathComponent("PixelModelTests/Fixtures/ckpt/st-f32").path
    }()
    static let tokenizer: Tokenizer = try! Tokenizer(directory: tokenizerDir)

    var tmp = ""

    override func setUpWithError() throws {
        tmp = NSTemporaryDirectory() + "shardtests-\(getpid())-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: tmp + "/images", withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: tmp) }

    func options(seed: UInt64 = 0, size: Int = 32, shardSize: Int = 4) -> PrepareOptions {
        var o = PrepareOptions()
        o.imageSize = size
        o.shardSize = shardSize
        o.seed = seed
        o.tokenizerPath = ShardTests.tokenizerDir
        o.tokenizerHash = try! PrepareOptions.tokenizerFingerprint(directory: ShardTests.tokenizerDir)
        return o
    }

    func readers() throws -> [any DatasetReader] {
        [try FakeReader(dir: tmp + "/images", subset: "fakeA", count: 10),
         try FakeReader(dir: tmp + "/images", subset: "fakeB", dataset: "sem_seg", count: 3)]
    }

    func job(_ out: String, _ o: PrepareOptions? = nil, strict: Bool = false, overwrite: Bool = false) throws -> PrepareJob {
        let j = PrepareJob(readers: try readers(), tokenizer: ShardTests.tokenizer, options: o ?? options(), outDir: out, datasetDir: tmp,
                           strict: strict, overwrite: overwrite)
        j.log = { _ in }
        return j
    }

    /// Every file of a directory with its bytes.
    func snapshot(_ dir: String) throws -> [String: Data] {
        var d: [String: Data] = [:]
        for n in try FileManager.default.contentsOfDirectory(atPath: dir) { d[n] = try Data(contentsOf: URL(fileURLWithPath: dir + "/" + n)) }
        return d
    }

    func testRoundTripMatchesDirectComputation() throws {
        let out = tmp + "/shards"
        let s = try job(out).run()
        XCTAssertEqual(s.shardsTotal, 4)   // 13 items in shards of 4
        XCTAssertEqual(s.shardsPacked, 4)
        XCTAssertEqual(s.itemsPacked, 13)
        XCTAssertEqual(s.samplesWritten, 13 - 4)   // fakeA items 3, 5, 6, 7 are bad
        let r = try ShardReader(directory: out)
        XCTAssertEqual(r.count, 9)
        let rs = try readers()
        var expectedItems: [(Int, Int)] = []
        for (k, rd) in rs.enumerated() { for i in 0..<rd.count where rd.subset != "fakeA" || ![3, 5, 6, 7].contains(i) { expectedItems.append((k, i)) } }
        XCTAssertEqual(expectedItems.count, r.count)
        for (g, (k, i)) in expectedItems.enumerated() {
            let fr = rs[k] as! FakeReader
            let sample = try fr.sample(i, seed: 0)
            let meta = try r.meta(g)
            XCTAssertEqual(meta.subset, fr.subset)
            XCTAssertEqual(meta.dataset, fr.dataset)
            XCTAssertEqual(meta.index, i)
            XCTAssertEqual(meta.imagePath, sample.imagePath)
            XCTAssertEqual(meta.source, sample.source)
            XCTAssertEqual(meta.conversations, sample.conversations)
            XCTAssertEqual(meta.targets.map(\.name), sample.targets.map(\.name))
            XCTAssertEqual(meta.targets.map(\.provenance), sample.targets.map(\.provenance))
            // masks: RLE equal, at the original size
            XCTAssertEqual(try r.masks(g), sample.targets.map(\.mask))
            let orig = try Image.load(sample.imagePath)
            XCTAssertEqual(try r.originalSize(g).height, orig.height)
            XCTAssertEqual(try r.originalSize(g).width, orig.width)
            // image: ResizeLongestSide(S) top-left, zeros elsewhere
            let resized = ResizeLongestSide(32).apply(orig)
            XCTAssertEqual(try r.validSize(g).height, resized.height)
            XCTAssertEqual(try r.validSize(g).width, resized.width)
            XCTAssertEqual(try r.validImage(g), resized)
            let padded = try r.paddedImage(g)
            XCTAssertEqual(padded.width, 32)
            for y in 0..<32 { for x in 0..<32 {
                let v = padded[x, y]
                if y < resized.height && x < resized.width { XCTAssertTrue(v == resized[x, y]) } else { XCTAssertTrue(v == (0, 0, 0)) }
            } }
            // the CLIP-branch tensor, bit for bit
            let direct = CLIPImagePreprocessor(size: 32)(orig)
            let fromShard = try r.clipTensor(g)
            XCTAssertEqual(fromShard.pixels.shape, [3, 32, 32])
            XCTAssertEqual(fromShard.validHeight, direct.validHeight)
            XCTAssertEqual(fromShard.validWidth, direct.validWidth)
            let a = (0..<fromShard.pixels.count).map { fromShard.pixels.ptr[$0].bitPattern }
            let b = (0..<direct.pixels.count).map { direct.pixels.ptr[$0].bitPattern }
            XCTAssertEqual(a, b, "clipTensor of sample \(g)")
            // ids and labels as PixelText computes them (untruncated)
            let (ids, labels) = try r.tokens(g)
            XCTAssertEqual(ids.count, sample.conversations.count)
            for (c, conv) in sample.conversations.enumerated() {
                let prompt = PixelLMPrompt.trainingConversation(rounds: conv.map { ($0.question, $0.answer) })
                XCTAssertEqual(meta.prompts[c], prompt)
                let b = try ConversationLabels.collate([prompt], tokenizer: ShardTests.tokenizer, inference: true)
                XCTAssertEqual(ids[c], b.inputIds[0])
                XCTAssertEqual(labels[c], b.labels[0])
                XCTAssertEqual(ids[c].filter { $0 == PixelLMPrompt.imageTokenIndex }.count, 1)
                XCTAssertTrue(labels[c].contains { $0 != PixelLMPrompt.ignoreIndex })
            }
        }
        // out of range names the total
        XCTAssertThrowsError(try r.meta(9)) { XCTAssertTrue("\($0)".contains("9 samples"), "\($0)") }
        // PIXELLM_SHARDTESTS_KEEP=DIR keeps these shards and their images (for tools/fixtures/check_shards.py, pixellm inspect)
        if let keep = ProcessInfo.processInfo.environment["PIXELLM_SHARDTESTS_KEEP"] {
            try? FileManager.default.removeItem(atPath: keep)
            try FileManager.default.copyItem(atPath: tmp, toPath: keep)
        }
    }

    func testClipTensorAt448MatchesPreprocess() throws {
        let fr = try FakeReader(dir: tmp + "/images", subset: "big", count: 3)
        var o = options(size: 448, shardSize: 2)
        o.limit = 2
        let j = PrepareJob(readers: [fr], tokenizer: ShardTests.tokenizer, options: o, outDir: tmp + "/s448", datasetDir: tmp)
        _ = try j.run()
        let r = try ShardReader(directory: tmp + "/s448")
        XCTAssertEqual(r.count, 2)
        for g in 0..<2 {
            let direct = CLIPImagePreprocessor()(try Image.load(fr.imagePath(g)))
            let t = try r.clipTensor(g)
            XCTAssertTrue(memcmp(t.pixels.ptr, direct.pixels.ptr, 3 * 448 * 448 * 4) == 0, "sample \(g)")
            XCTAssertEqual(t.validHeight, direct.validHeight)
            XCTAssertEqual(t.validWidth, direct.validWidth)
        }
    }

    func testSkipsAreCountedAndLogged() throws {
        let out = tmp + "/shards"
        let s = try job(out).run()
        XCTAssertEqual(s.skips.count, 4)
        let m = try ShardManifest.load(out)
        XCTAssertEqual(m.totalSkipped, 4)
        XCTAssertEqual(m.totalItems, 13)
        XCTAssertEqual(m.totalSamples, 9)
        XCTAssertEqual(m.skipsByReason["missing image"], 1)
        XCTAssertEqual(m.skipsByReason["image does not decode"], 1)
        XCTAssertEqual(m.skipsByReason["image size mismatch"], 1)
        XCTAssertEqual(m.skipsByReason["RLE counts do not sum to h x w"], 1)
        XCTAssertEqual(m.subsets.map(\.samples), [6, 3])
        XCTAssertEqual(m.subsets.map(\.skipped), [4, 0])
        XCTAssertEqual(m.shards.map(\.samples), [3, 1, 4, 1])   // items 0-3, 4-7, 8-9 + B0-1, B2
        let log = try String(contentsOfFile: out + "/skipped.log", encoding: .utf8).split(separator: "\n").map(String.init)
        XCTAssertEqual(log.count, 4)
        XCTAssertTrue(log[0].hasPrefix(tmp + "/images/fakeA_3.png\tmissing image"), log[0])
        XCTAssertTrue(log[0].hasSuffix("\tfakeA\t3"), log[0])
        XCTAssertTrue(log[1].hasPrefix(tmp + "/images/ann.json\tRLE counts"), log[1])
        XCTAssertTrue(log[2].contains("fakeA_6.png\timage does not decode"), log[2])
        XCTAssertTrue(log[3].contains("fakeA_7.png\timage size mismatch"), log[3])
    }

    func testStrictStopsOnTheFirstBadSample() throws {
        let out = tmp + "/strict"
        XCTAssertThrowsError(try job(out, strict: true).run()) { e in
            let err = e as? ShardError
            XCTAssertEqual(err?.file, self.tmp + "/images/fakeA_3.png")
            XCTAssertTrue(err?.message.contains("missing image") ?? false, "\(e)")
        }
        // shard 0 (items 0...3) holds the bad item: never written; no temporary file left either
        let names = try FileManager.default.contentsOfDirectory(atPath: out)
        XCTAssertFalse(names.contains("shard-00000.h5"))
        XCTAssertFalse(names.contains { $0.contains(".tmp-") }, "\(names)")
        XCTAssertFalse(names.contains("index.json"))
    }

    func testResumeKeepsCompleteShardsAndRepacksMissingOnes() throws {
        let out = tmp + "/shards"
        _ = try job(out).run()
        let first = try snapshot(out)
        XCTAssertEqual(first.keys.filter { $0.hasSuffix(".h5") }.count, 4)
        // again: nothing packed, same bytes
        let s2 = try job(out).run()
        XCTAssertEqual(s2.shardsPacked, 0)
        XCTAssertEqual(s2.shardsKept, 4)
        XCTAssertEqual(s2.itemsPacked, 0)
        XCTAssertEqual(try snapshot(out), first)
        // one shard deleted and a leftover temporary file of another: only that shard is packed, byte-identical
        try FileManager.default.removeItem(atPath: out + "/shard-00002.h5")
        try Data("half a shard".utf8).write(to: URL(fileURLWithPath: out + "/shard-00001.h5.tmp-99999"))
        let s3 = try job(out).run()
        XCTAssertEqual(s3.shardsPacked, 1)
        XCTAssertEqual(s3.shardsKept, 3)
        XCTAssertEqual(s3.itemsPacked, 4)
        XCTAssertEqual(try snapshot(out), first)
        // a corrupt shard under the final name is packed again
        try Data("garbage".utf8).write(to: URL(fileURLWithPath: out + "/shard-00003.h5"))
        let s4 = try job(out).run()
        XCTAssertEqual(s4.shardsPacked, 1)
        XCTAssertEqual(try snapshot(out), first)
    }

    func testChangedOptionsAreAnErrorUnlessOverwrite() throws {
        let out = tmp + "/shards"
        _ = try job(out).run()
        let before = try snapshot(out)
        XCTAssertThrowsError(try job(out, options(seed: 7)).run()) { e in
            XCTAssertTrue("\(e)".contains("different options"), "\(e)")
            XCTAssertTrue("\(e)".contains("seed"), "\(e)")
            XCTAssertTrue("\(e)".contains("--overwrite"), "\(e)")
        }
        XCTAssertEqual(try snapshot(out), before)
        // a changed image size, shard by shard (no manifest): also an error
        try FileManager.default.removeItem(atPath: out + "/index.json")
        XCTAssertThrowsError(try job(out, options(size: 48)).run()) { e in
            XCTAssertTrue("\(e)".contains("image_size"), "\(e)")
        }
        let s = try job(out, options(seed: 7), overwrite: true).run()
        XCTAssertEqual(s.shardsPacked, 4)
        XCTAssertEqual(try ShardManifest.load(out).options.seed, 7)
        XCTAssertTrue(try ShardReader(directory: out).meta(1).conversations[0][0].question.contains("seed") == false)
        XCTAssertTrue(try ShardReader(directory: out).meta(0).conversations[1][0].question.contains("seed 7"))
    }

    func testTwoRanksGiveTheSameShardsAsOne() throws {
        let one = tmp + "/one", two = tmp + "/two"
        _ = try job(one).run()
        // rank 1 first (its barrier returns at once here), then rank 0 which writes the manifest
        let r1 = try job(two).run(rank: 1, worldSize: 2)
        XCTAssertEqual(r1.shardsPacked, 2)
        XCTAssertNil(r1.manifest)
        XCTAssertFalse(FileManager.default.fileExists(atPath: two + "/index.json"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: two + "/shard-00001.h5"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: two + "/shard-00000.h5"))
        let r0 = try job(two).run(rank: 0, worldSize: 2)
        XCTAssertEqual(r0.shardsPacked, 2)
        XCTAssertNotNil(r0.manifest)
        XCTAssertEqual(try snapshot(two), try snapshot(one))
    }

    /// Deflate-compressed image chunks read back byte-identical, and the options record the level.
    func testCompressedImagesReadBackIdentical() throws {
        let plain = tmp + "/plain", packed = tmp + "/deflate"
        var o = options(size: 64)
        o.compression = 0
        _ = try job(plain, o).run()
        o.compression = 6
        _ = try job(packed, o).run()
        let a = try ShardReader(directory: plain), b = try ShardReader(directory: packed)
        XCTAssertEqual(a.count, b.count)
        XCTAssertGreaterThan(a.count, 5)
        for i in 0..<a.count {
            XCTAssertEqual(try b.paddedImage(i), try a.paddedImage(i), "sample \(i)")
            XCTAssertEqual(try b.masks(i), try a.masks(i))
        }
        XCTAssertEqual(b.manifest.options.compression, 6)
        XCTAssertEqual(a.manifest.options.compression, 0)
        func bytes(_ d: String) throws -> Int {
            try FileManager.default.contentsOfDirectory(atPath: d).filter { $0.hasSuffix(".h5") }
                .reduce(0) { $0 + ((try FileManager.default.attributesOfItem(atPath: d + "/" + $1)[.size] as? Int) ?? 0) }
        }
        // the zero padding alone compresses: the deflated shards are smaller
        XCTAssertLessThan(try bytes(packed), try bytes(plain))
    }

    func testWorkPlanAndProgressLine() throws {
        let plan = WorkPlan(readers: try readers(), limit: 4, shardSize: 3)
        XCTAssertEqual(plan.total, 7)
        XCTAssertEqual(plan.shardCount, 3)
        XCTAssertEqual(plan.items(ofShard: 2), 6..<7)
        XCTAssertTrue(plan.locate(4) == (1, 0))
        XCTAssertTrue(plan.locate(3) == (0, 3))
        let line = ProgressBar.format(label: "prepare", done: 50, total: 200, skipped: 3, elapsed: 10)
        XCTAssertTrue(line.contains("50/200 items (25%) 5.0 items/s ETA 0:30 skipped 3"), line)
        var lines: [String] = []
        let bar = ProgressBar(interval: 1000, isTTY: false, write: { lines.append($0) })
        bar.update(done: 1, total: 3, skipped: 0)
        bar.update(done: 2, total: 3, skipped: 0)   // within the interval: no line
        bar.update(done: 3, total: 3, skipped: 1)   // the last one always
        XCTAssertEqual(lines.count, 2)
        XCTAssertTrue(lines[1].contains("3/3 items") && lines[1].hasSuffix("skipped 1\n"), lines[1])
    }

    func testRegistryParsesAndValidatesTheReferenceOptions() throws {
        let es = try DatasetRegistry.entries(dataset: "sem_seg||refer_seg||vqa||multi_reason_seg||reason_seg",
                                             semSegData: "ade20k||paco_lvis", referSegData: "refcoco||refcocog",
                                             multiReasonSegData: "train||val", reasonSegData: "ReasonSeg|train_val")
        XCTAssertEqual(es.map(\.name), ["ade20k", "paco_lvis", "refcoco", "refcocog", "llava_instruct_150k", "muse_train", "muse_val",
                                         "ReasonSeg/train", "ReasonSeg/val"])
        XCTAssertEqual(es.map(\.requiredPath), ["ade20k", "vlpart/paco", "refer_seg/refcoco", "refer_seg/refcocog",
                                                "llava_dataset/llava_instruct_150k.json", "muse_train.json", "muse_val.json",
                                                "reason_seg/ReasonSeg/train", "reason_seg/ReasonSeg/val"])
        XCTAssertThrowsError(try DatasetRegistry.entries(dataset: "sem_seg", semSegData: "ade20k||ade21k")) { e in
            XCTAssertTrue("\(e)".contains("ade21k") && "\(e)".contains("cocostuff, pascal_part"), "\(e)")
        }
        XCTAssertThrowsError(try DatasetRegistry.entries(dataset: "sem_seg||muse")) { e in
            XCTAssertTrue("\(e)".contains("\"muse\"") && "\(e)".contains("multi_reason_seg"), "\(e)")
        }
        XCTAssertThrowsError(try DatasetRegistry.entries(dataset: "reason_seg", reasonSegData: "ReasonSeg")) { e in
            XCTAssertTrue("\(e)".contains("ReasonSeg|"), "\(e)")
        }
        // missing sub-datasets: a warning each and an error when nothing is left; --strict: an error naming the path
        var warnings: [String] = []
        XCTAssertThrowsError(try DatasetRegistry.readers(datasetDir: tmp, dataset: "refer_seg", referSegData: "refcoco||refcoco+",
                                                         options: ReaderOptions(), warn: { warnings.append($0) })) { e in
            XCTAssertTrue("\(e)".contains("none of the selected"), "\(e)")
        }
        XCTAssertEqual(warnings.count, 2)
        XCTAssertTrue(warnings[1].contains(tmp + "/refer_seg/refcoco+"), warnings[1])
        XCTAssertThrowsError(try DatasetRegistry.readers(datasetDir: tmp, dataset: "refer_seg", referSegData: "refcoco",
                                                         options: ReaderOptions(), strict: true, warn: { _ in })) { e in
            XCTAssertEqual((e as? DatasetError)?.file, self.tmp + "/refer_seg/refcoco")
        }
    }

    func testDatasetErrorsAndIndexSkipsAndDamagedShards() throws {
        // a DatasetError stops the run
        let fr = try FakeReader(dir: tmp + "/images", subset: "broken", count: 4)
        fr.datasetErrorAt = 2
        let j = PrepareJob(readers: [fr], tokenizer: ShardTests.tokenizer, options: options(), outDir: tmp + "/de", datasetDir: tmp)
        j.log = { _ in }
        XCTAssertThrowsError(try j.run()) { XCTAssertEqual(($0 as? DatasetError)?.file, self.tmp + "/images/index.json") }
        XCTAssertFalse(FileManager.default.fileExists(atPath: tmp + "/de/shard-00000.h5"))
        // index skips: logged with index -1 and counted; an error with --strict
        let ir = try FakeReader(dir: tmp + "/images", subset: "idx", count: 3)
        ir.indexSkips.record(SampleSkip(file: tmp + "/muse.json", "seg count mismatch: 2 {seg} for 3 answers (entry 9)"))
        let j2 = PrepareJob(readers: [ir], tokenizer: ShardTests.tokenizer, options: options(), outDir: tmp + "/ix", datasetDir: tmp)
        j2.log = { _ in }
        let m = try XCTUnwrap(try j2.run().manifest)
        XCTAssertEqual(m.totalSkipped, 1)
        XCTAssertEqual(m.subsets[0].indexSkipped, 1)
        XCTAssertEqual(m.skipsByReason["seg count mismatch"], 1)
        let log = try String(contentsOfFile: tmp + "/ix/skipped.log", encoding: .utf8)
        XCTAssertEqual(log, tmp + "/muse.json\tseg count mismatch: 2 {seg} for 3 answers (entry 9)\tidx\t-1\n")
        let j3 = PrepareJob(readers: [ir], tokenizer: ShardTests.tokenizer, options: options(), outDir: tmp + "/ix3", datasetDir: tmp,
                            strict: true)
        XCTAssertThrowsError(try j3.run()) { XCTAssertEqual(($0 as? ShardError)?.file, self.tmp + "/muse.json") }
        // a file that is not a shard, and a missing shard, are errors naming the file
        try TensorFile.write(["x": Tensor.zeros([2])], to: tmp + "/other.h5")
        XCTAssertThrowsError(try ShardFile(path: tmp + "/other.h5")) { e in
            XCTAssertEqual((e as? ShardError)?.file, self.tmp + "/other.h5")
            XCTAssertTrue("\(e)".contains("not a pixellm shard"), "\(e)")
        }
        // the index records every shard's size and CRC-32; a bit flip or a truncation is named when the shard opens
        let shard = tmp + "/ix/shard-00000.h5"
        let original = try Data(contentsOf: URL(fileURLWithPath: shard))
        XCTAssertEqual(m.shards[0].bytes, original.count)
        XCTAssertEqual(m.shards[0].crc32, original.withUnsafeBytes { CRC32.checksum($0) })
        XCTAssertNoThrow(try ShardReader(directory: tmp + "/ix").meta(0))
        var flipped = original
        flipped[flipped.count / 2] ^= 0x10
        try flipped.write(to: URL(fileURLWithPath: shard))
        XCTAssertThrowsError(try ShardReader(directory: tmp + "/ix").meta(0)) { e in
            XCTAssertEqual((e as? ShardError)?.file, shard)
            XCTAssertTrue("\(e)".contains("CRC-32") && "\(e)".contains("damaged"), "\(e)")
        }
        // a shard that is a link: inside the shard directory it reads, leading outside it is refused
        try original.write(to: URL(fileURLWithPath: tmp + "/ix/copy.h5"))
        try FileManager.default.removeItem(atPath: shard)
        try FileManager.default.createSymbolicLink(atPath: shard, withDestinationPath: "copy.h5")
        XCTAssertNoThrow(try ShardReader(directory: tmp + "/ix").meta(0))
        try original.write(to: URL(fileURLWithPath: tmp + "/outside.h5"))
        try FileManager.default.removeItem(atPath: shard)
        try FileManager.default.createSymbolicLink(atPath: shard, withDestinationPath: tmp + "/outside.h5")
        XCTAssertThrowsError(try ShardReader(directory: tmp + "/ix").meta(0)) { e in
            XCTAssertEqual((e as? ShardError)?.file, shard)
            XCTAssertTrue("\(e)".contains("symbolic link") && "\(e)".contains("outside"), "\(e)")
        }
        try FileManager.default.removeItem(atPath: shard)
        try original.prefix(original.count - 100).write(to: URL(fileURLWithPath: shard))
        XCTAssertThrowsError(try ShardReader(directory: tmp + "/ix").meta(0)) { e in
            XCTAssertEqual((e as? ShardError)?.file, shard)
            XCTAssertTrue("\(e)".contains("truncated"), "\(e)")
        }
        try FileManager.default.removeItem(atPath: tmp + "/ix/shard-00000.h5")
        XCTAssertThrowsError(try ShardReader(directory: tmp + "/ix").meta(0)) { e in
            XCTAssertEqual((e as? ShardError)?.file, self.tmp + "/ix/shard-00000.h5")
        }
    }

    /// Arrays whose sizes agree but whose contents do not (found by fuzzing: a declared dimension of 2^55 was
    /// allocated, offsets running backwards sliced out of range) are named errors, never a trap.
    func testInconsistentArraysAreNamedErrors() throws {
        func write(_ path: String, _ edit: (inout [String: [Int64]], inout [String: [Int32]]) -> Void) throws {
            // one sample, one mask, one conversation of 2 tokens, at image size 4
            var i64: [String: [Int64]] = ["item": [0], "mask_offsets": [0, 1], "mask_rle_offsets": [0, 2], "meta_offsets": [0, 2],
                                          "conv_offsets": [0, 1], "token_offsets": [0, 2]]
            var i32: [String: [Int32]] = ["valid_size": [4, 4], "orig_size": [8, 8], "mask_size": [8, 8], "input_ids": [1, 2], "labels": [-100, 2]]
            edit(&i64, &i32)
            try RawShardFile.write(path: path, int64s: i64, int32s: i32,
                                   bytes: ["mask_rle": Array("0P".utf8), "meta": Array("{}".utf8), "skips": Array("[]".utf8)],
                                   images: [1, 4, 4, 3], stringAttributes: ["format": ShardFormat.name],
                                   intAttributes: ["format_version": Int64(ShardFormat.version), "image_size": 4, "num_samples": 1])
        }
        let ok = tmp + "/raw-ok.h5"
        try write(ok) { _, _ in }
        XCTAssertEqual(try ShardFile(path: ok).count, 1)
        let cases: [(String, String, (inout [String: [Int64]], inout [String: [Int32]]) -> Void)] = [
            ("backwards", "do not run in order", { a, _ in a["mask_rle_offsets"] = [1, 2] }),
            ("valid-size", "valid size 9 x 4", { _, b in b["valid_size"] = [9, 4] }),
            ("mask-size", "a mask size of -8", { _, b in b["mask_size"] = [-8, 8] }),
        ]
        for (name, words, edit) in cases {
            let path = tmp + "/raw-\(name).h5"
            try write(path, edit)
            XCTAssertThrowsError(try ShardFile(path: path), name) { e in
                XCTAssertEqual((e as? ShardError)?.file, path)
                XCTAssertTrue("\(e)".contains(words), "\(name): \(e)")
            }
        }
    }
}
