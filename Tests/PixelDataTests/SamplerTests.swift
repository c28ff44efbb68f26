import XCTest
@testable import PixelData

final class SamplerTests: XCTestCase {
    func makeSampler(seed: UInt64 = 42) throws -> BlendedSampler {
        try BlendedSampler(sizes: [50, 200, 30, 70], rates: BlendedSampler.parseRates("2,9,2,4"), seed: seed)
    }

    func testEveryPrefixStaysWithinOneSampleOfItsShare() throws {
        let s = try makeSampler()
        var counts = [0, 0, 0, 0]
        for i in 0..<5000 {
            counts[s.entry(at: i).dataset] += 1
            for d in 0..<4 {
                let target = s.rates[d] * Double(i + 1)
                XCTAssertLessThan(abs(Double(counts[d]) - target), 1.0, "dataset \(d) after \(i + 1) samples: \(counts[d]) vs \(target)")
            }
        }
    }

    func testUnionOverRanksIsTheSameSequence() throws {
        let reference = try makeSampler()
        let seq = (0..<600).map { reference.entry(at: $0) }
        for world in [1, 2, 3] {
            let s = try makeSampler()
            var got = [SamplerEntry?](repeating: nil, count: 600)
            var consumed = 0
            let perRank = 4  // micro-batch per rank
            while consumed < 600 {
                for r in 0..<world {
                    for e in s.next(rank: r, worldSize: world, consumedSamples: consumed, count: perRank) where e.position < 600 {
                        XCTAssertNil(got[e.position], "position \(e.position) taken twice at world size \(world)")
                        got[e.position] = e
                    }
                }
                consumed += world * perRank
            }
            XCTAssertEqual(got.map { $0! }, seq, "world size \(world)")
        }
    }

    func testResumeAtAnotherWorldSizeContinuesExactly() throws {
        let full = try makeSampler()
        let seq = (0..<300).map { full.entry(at: $0) }
        // two ranks consume 120 samples, then the run resumes from consumed_samples alone with three ranks
        let resumed = try makeSampler()
        var consumed = 120
        var tail: [SamplerEntry] = []
        while consumed < 300 {
            for r in 0..<3 { tail += resumed.next(rank: r, worldSize: 3, consumedSamples: consumed, count: 2) }
            consumed += 6
        }
        XCTAssertEqual(tail.sorted { $0.position < $1.position }, Array(seq[120..<300]))
    }

    func testEpochsVisitEverySampleOnceInANewOrder() throws {
        let s = try BlendedSampler(sizes: [7, 5], rates: [1, 1], seed: 3)
        var byEpoch: [Int: [Int]] = [:]
        for i in 0..<28 {
            let e = s.entry(at: i)
            if e.dataset == 0 { byEpoch[e.epoch, default: []].append(e.index) }
        }
        XCTAssertEqual(byEpoch[0]!.sorted(), Array(0..<7))
        XCTAssertEqual(byEpoch[1]!.sorted(), Array(0..<7))
        XCTAssertNotEqual(byEpoch[0]!, byEpoch[1]!, "a new permutation each epoch")
        // deterministic: the same seed gives the same sequence; another seed another order
        let a = try BlendedSampler(sizes: [7, 5], rates: [1, 1], seed: 3), b = try BlendedSampler(sizes: [7, 5], rates: [1, 1], seed: 4)
        XCTAssertEqual((0..<20).map { a.entry(at: $0) }, (0..<20).map { s.entry(at: $0) })
        XCTAssertNotEqual((0..<20).map { a.entry(at: $0).index }, (0..<20).map { b.entry(at: $0).index })
    }

    func testBadConfigurationsAreNamed() {
        XCTAssertThrowsError(try BlendedSampler(sizes: [1, 2], rates: [1], seed: 0)) { XCTAssertTrue("\($0)".contains("2 datasets but 1")) }
        XCTAssertThrowsError(try BlendedSampler(sizes: [0, 2], rates: [1, 1], seed: 0)) { XCTAssertTrue("\($0)".contains("dataset 0 is empty")) }
        XCTAssertThrowsError(try BlendedSampler.parseRates("2,x,3")) { XCTAssertTrue("\($0)".contains("'x'")) }
    }
}
