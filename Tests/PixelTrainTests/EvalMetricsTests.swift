import Foundation
import XCTest
import PixelTensor
@testable import PixelTrain

/// The evaluation arithmetic: the assignment against brute force, the refCOCO and MUSE figures by hand.
final class EvalMetricsTests: XCTestCase {
    /// The minimum over every injective map of the smaller side into the larger one.
    static func bruteForce(_ c: [[Double]]) -> Double {
        let n = c.count, m = c[0].count
        var best = Double.infinity
        func rec(_ i: Int, _ used: Set<Int>, _ acc: Double, rows: Bool) {
            let k = rows ? n : m, other = rows ? m : n
            if i == k { best = min(best, acc); return }
            for j in 0..<other where !used.contains(j) {
                rec(i + 1, used.union([j]), acc + (rows ? c[i][j] : c[j][i]), rows: rows)
            }
        }
        rec(0, [], 0, rows: n <= m)
        return best
    }

    func testAssignmentIsOptimalOnRandomMatrices() {
        var rng = RNG(seed: 11)
        for trial in 0..<300 {
            let n = 1 + rng.int(5), m = 1 + rng.int(5)
            let c = (0..<n).map { _ in (0..<m).map { _ in Double(rng.int(20)) + (trial % 3 == 0 ? Double(rng.uniform()) : 0) } }
            let pairs = linearSumAssignment(c)
            XCTAssertEqual(pairs.count, min(n, m))
            XCTAssertEqual(Set(pairs.map(\.row)).count, pairs.count)
            XCTAssertEqual(Set(pairs.map(\.col)).count, pairs.count)
            let total = pairs.reduce(0.0) { $0 + c[$1.row][$1.col] }
            XCTAssertEqual(total, Self.bruteForce(c), accuracy: 1e-9, "trial \(trial): \(c)")
        }
        XCTAssertTrue(linearSumAssignment([]).isEmpty)
        // scipy's answer on a classic example: rows 0, 1, 2 -> columns 1, 0, 2 (cost 5)
        let ex: [[Double]] = [[4, 1, 3], [2, 0, 5], [3, 2, 2]]
        XCTAssertEqual(linearSumAssignment(ex).map(\.col), [1, 0, 2])
    }

    func testRefCOCOFigures() {
        var acc = IoUAccumulator()
        acc.add(intersection: 3, union: 4)        // 0.75
        acc.add(intersection: 0, union: 0)        // no object, no prediction: 1
        acc.add(intersection: 0, union: 5)        // 0
        XCTAssertEqual(acc.gIoU, (3 / (4 + 1e-5) + 1 + 0) / 3, accuracy: 1e-12)
        XCTAssertEqual(acc.cIoU, 3.0 / 9.0, accuracy: 1e-12)
        var other = IoUAccumulator()
        other.add(intersection: 2, union: 2)
        acc.merge(other)
        XCTAssertEqual(acc.count, 4)
        XCTAssertEqual(acc.cIoU, 5.0 / 11.0, accuracy: 1e-12)
        // ground truth given as the prediction scores 1
        let mask: [UInt8] = [0, 1, 1, 0, 1]
        let (i, u) = intersectionAndUnion(mask, mask)
        var perfect = IoUAccumulator()
        perfect.add(intersection: i, union: u)
        XCTAssertEqual(perfect.gIoU, 1, accuracy: 1e-5)
        XCTAssertEqual(perfect.cIoU, 1)
    }

    /// One MUSE image with 2 predictions and 3 ground-truth masks: gIoU divides by max(P, G) = 3.
    func testMUSEFigures() {
        var acc = MUSEAccumulator()
        acc.addImage(pairs: [(4, 5), (1, 4), (0, 6)], predicted: 2, groundTruth: 3)   // matched, matched, unmatched GT
        XCTAssertEqual(acc.gIoU, (4 / (5 + 1e-5) + 1 / (4 + 1e-5) + 0) / 3, accuracy: 1e-12)
        XCTAssertEqual(acc.cIoU, 5.0 / 15.0, accuracy: 1e-12)
        // an unmatched prediction: the faithful reading counts only logits in [0.5, 1], the clean one every logit > 0
        let logits: [Float] = [-3, 0.2, 0.5, 0.9, 1.0, 1.5, 7]
        XCTAssertEqual(unmatchedPredictionIoU(logits: logits, faithful: true).union, 3)
        XCTAssertEqual(unmatchedPredictionIoU(logits: logits, faithful: false).union, 6)
        var b = MUSEAccumulator()
        b.addImage(pairs: [(2, 2), unmatchedPredictionIoU(logits: logits, faithful: true)], predicted: 2, groundTruth: 1)
        XCTAssertEqual(b.gIoU, (2 / (2 + 1e-5) + 0) / 2, accuracy: 1e-12)
        acc.merge(b)
        XCTAssertEqual(acc.images, 2)
    }
}

extension EvalMetricsTests {
    /// grid_sample's bilinear rule at a few hand-computed points, and the matching on shuffled ground truth.
    func testPointSampleAndMatching() {
        let map: [Float] = [1, 2, 3, 4, 5, 6]   // H 2, W 3
        map.withUnsafeBufferPointer { p in
            // the centre of pixel (r, c) is ((c + 0.5) / W, (r + 0.5) / H)
            XCTAssertEqual(pointSample(p.baseAddress!, height: 2, width: 3, x: 0.5 / 3, y: 0.25), 1, accuracy: 1e-6)
            XCTAssertEqual(pointSample(p.baseAddress!, height: 2, width: 3, x: 2.5 / 3, y: 0.75), 6, accuracy: 1e-6)
            // halfway between pixels (0, 0) and (1, 1): the mean of the four
            XCTAssertEqual(pointSample(p.baseAddress!, height: 2, width: 3, x: 1.0 / 3, y: 0.5), (1 + 2 + 4 + 5) / 4, accuracy: 1e-6)
            // at the border, the outside is zero: x = 0 sits half a pixel left of the first centre
            XCTAssertEqual(pointSample(p.baseAddress!, height: 2, width: 3, x: 0, y: 0.25), 0.5, accuracy: 1e-6)
        }
        // three disjoint ground-truth masks; the predictions are the same masks as logits (+-8), shuffled
        let H = 12, W = 12
        var gts: [[Float]] = []
        for k in 0..<3 {
            var m = [Float](repeating: 0, count: H * W)
            for r in (4 * k)..<(4 * k + 4) { for c in 0..<W { m[r * W + c] = 1 } }
            gts.append(m)
        }
        let order = [2, 0, 1]
        let preds = order.map { gts[$0].map { $0 > 0 ? Float(8) : -8 } }
        var rng = RNG(seed: 3)
        let (pairs, cost) = matchPredictions(logits: preds, targets: gts, height: H, width: W, points: 2000, rng: &rng)
        XCTAssertEqual(pairs.map(\.gt), order, "each prediction matched to its own mask")
        XCTAssertLessThan(cost[0][2], cost[0][0])
        // fewer predictions than targets: every prediction matched once
        var rng2 = RNG(seed: 4)
        let two = matchPredictions(logits: Array(preds.prefix(2)), targets: gts, height: H, width: W, points: 2000, rng: &rng2)
        XCTAssertEqual(two.pairs.map(\.gt), [2, 0])
    }
}
