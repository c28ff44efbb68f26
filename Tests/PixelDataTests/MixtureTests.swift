import Foundation
import XCTest
@testable import PixelData
import PixelTensor
import PixelText

/// The training mixture over shards of a synthetic tree: streams are the sub-datasets, kinds get their sample
/// rates, the blend keeps every prefix within one sample of each stream's share, ranks partition the sequence.
final class MixtureTests: XCTestCase {
    static var shardDir = ""
    static var root = ""

    override class func setUp() {
        root = NSTemporaryDirectory() + "mixture-\(getpid())"
        try? FileManager.default.removeItem(atPath: root)
        do {
            let data = root + "/data"
            _ = try SynthGenerator(config: SynthConfig(seed: 3, train: 12, val: 2, test: 2, size: 48), out: data).run()
            var o = PrepareOptions()
            o.imageSize = 32
            o.shardSize = 7
            let readers = try DatasetRegistry.readers(datasetDir: data, dataset: "sem_seg||refer_seg||vqa||multi_reason_seg||reason_seg",
                                                      options: o.reader, warn: { _ in })
            shardDir = root + "/shards"
            let job = PrepareJob(readers: readers, tokenizer: try Tokenizer(directory: data + "/tokenizer"), options: o,
                                 outDir: shardDir, datasetDir: data)
            job.log = { _ in }
            _ = try job.run()
        } catch {
            XCTFail("setting up shards: \(error)")
        }
    }

    override class func tearDown() { try? FileManager.default.removeItem(atPath: root) }

    func mixture(_ dataset: String = "sem_seg||refer_seg||vqa||multi_reason_seg", _ rates: String = "2,9,2,4", seed: UInt64 = 1) throws -> ShardMixture {
        try ShardMixture(reader: try ShardReader(directory: Self.shardDir), dataset: dataset, sampleRates: rates, seed: seed)
    }

    func testStreamsAreTheSubDatasetsAndHoldTheirSamples() throws {
        let m = try mixture()
        XCTAssertEqual(m.streams.map(\.subset), ["ade20k", "refcoco", "llava_instruct_150k", "muse_train"])
        let want: [Double] = [2, 9, 2, 4].map { $0 / 17 }
        XCTAssertEqual(m.streams.map(\.share), want)
        for s in m.streams {
            XCTAssertFalse(s.samples.isEmpty)
            for i in s.samples { XCTAssertEqual(try m.reader.meta(i).subset, s.subset, "sample \(i)") }
        }
        // Streams are disjoint; with reason_seg unselected its samples are in none.
        let all = m.streams.flatMap(\.samples)
        XCTAssertEqual(Set(all).count, all.count)
        XCTAssertLessThan(all.count, m.reader.count)
    }

    func testEveryPrefixKeepsEachStreamWithinOneSampleOfItsShare() throws {
        let m = try mixture()
        var taken = [Int](repeating: 0, count: m.streams.count)
        var perStream = [[Int]](repeating: [], count: m.streams.count)
        for p in 0..<600 {
            let pick = m.pick(at: p)
            XCTAssertTrue(m.streams[pick.stream].samples.contains(pick.sample))
            taken[pick.stream] += 1
            perStream[pick.stream].append(pick.sample)
            for (s, t) in taken.enumerated() {
                XCTAssertLessThanOrEqual(abs(Double(t) - m.streams[s].share * Double(p + 1)), 1.0, "position \(p) stream \(s)")
            }
        }
        // Each epoch of a stream visits each of its samples once.
        for (s, picks) in perStream.enumerated() {
            let n = m.streams[s].samples.count
            XCTAssertEqual(Set(picks.prefix(n)), Set(m.streams[s].samples), "stream \(s) epoch 0")
        }
    }

    func testRanksPartitionTheSequenceAndResumeAtAnyWorldSize() throws {
        let m = try mixture()
        let single = (0..<60).map { m.pick(at: $0) }
        for world in [2, 3] {
            var union: [ShardMixture.Pick] = []
            for r in 0..<world { union += m.next(rank: r, worldSize: world, consumedSamples: 0, count: 60 / world) }
            XCTAssertEqual(union.sorted { $0.position < $1.position }, single)
        }
        // 24 samples consumed at world size 2, resumed at world size 3 by a fresh mixture: the same sequence.
        let fresh = try mixture()
        let resumed = (0..<3).flatMap { fresh.next(rank: $0, worldSize: 3, consumedSamples: 24, count: 12) }
        XCTAssertEqual(resumed.sorted { $0.position < $1.position }, Array(single[24..<60]))
        // Another seed gives another order.
        let other = try mixture(seed: 2)
        XCTAssertNotEqual((0..<60).map { other.pick(at: $0).sample }, single.map(\.sample))
    }

    func testBadSelectionsAreNamed() throws {
        func expect(_ d: String, _ r: String, _ words: [String]) {
            XCTAssertThrowsError(try mixture(d, r)) { e in
                for w in words { XCTAssertTrue("\(e)".contains(w), "\(e) lacks \(w)") }
            }
        }
        expect("sem_seg||refer_seg", "2,9,2", ["--sample_rates", "3 sample rates for 2 datasets"])
        expect("sem_seg||refer_seg", "2,x", ["--sample_rates", "x"])
        expect("sem_seg||refer_seg", "0,0", ["every rate is 0"])
        expect("sem_seg||sem_seg", "1,1", ["listed twice"])
        expect("refer_seg||multi_reason_seg||vqa", "1,-1,1", ["-1"])
        // A kind the shards do not hold: named, with what they hold.
        expect("sem_seg||cocostuff", "1,1", ["index.json", "cocostuff", "no cocostuff samples", "refer_seg"])
        // A zero rate leaves a kind out.
        let m = try mixture("sem_seg||refer_seg", "0,1")
        XCTAssertEqual(m.streams.map(\.subset), ["refcoco"])
    }
}
