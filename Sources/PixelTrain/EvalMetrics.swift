import Foundation
import PixelTensor

// The arithmetic of the reference's evaluation (pixellm-spec.md section 6; train_ds.py validate() and ar_validate()),
// the building blocks of `pixellm eval` (issue 11):
//   * linearSumAssignment: scipy.optimize.linear_sum_assignment (minimum total cost, rectangular matrices);
//   * IoUAccumulator: per-pair intersection and union of binary masks, gIoU (mean of I / (U + 1e-5), IoU = 1 when
//     U = 0) and cIoU (sum I / sum U), as validate() computes them for the refCOCO family;
//   * MUSEAccumulator: ar_validate()'s per-image normalisation, gIoU = sum of the pairs' IoUs / sum of max(P, G), and
//     cIoU = sum I / sum U over every pair.

/// Minimum-cost assignment of rows to columns of a rectangular cost matrix (scipy's linear_sum_assignment):
/// min(rows, cols) pairs, each row and column used at most once, the total cost minimal. Returns the pairs sorted by
/// row. Shortest augmenting paths with potentials (O(n^2 m)); costs must be finite.
public func linearSumAssignment(_ cost: [[Double]]) -> [(row: Int, col: Int)] {
    let n0 = cost.count
    guard n0 > 0, let m0 = cost.first?.count, m0 > 0 else { return [] }
    precondition(cost.allSatisfy { $0.count == m0 }, "linearSumAssignment: ragged cost matrix")
    precondition(cost.allSatisfy { $0.allSatisfy(\.isFinite) }, "linearSumAssignment: costs must be finite")
    // work with rows <= columns
    let transposed = n0 > m0
    let n = transposed ? m0 : n0, m = transposed ? n0 : m0
    func c(_ i: Int, _ j: Int) -> Double { transposed ? cost[j][i] : cost[i][j] }
    // 1-based arrays: u (rows), v (columns), p[j] = row matched to column j, way[j] = previous column on the path
    var u = [Double](repeating: 0, count: n + 1), v = [Double](repeating: 0, count: m + 1)
    var p = [Int](repeating: 0, count: m + 1), way = [Int](repeating: 0, count: m + 1)
    for i in 1...n {
        p[0] = i
        var j0 = 0
        var minv = [Double](repeating: .infinity, count: m + 1)
        var used = [Bool](repeating: false, count: m + 1)
        repeat {
            used[j0] = true
            let i0 = p[j0]
            var delta = Double.infinity, j1 = 0
            for j in 1...m where !used[j] {
                let cur = c(i0 - 1, j - 1) - u[i0] - v[j]
                if cur < minv[j] { minv[j] = cur; way[j] = j0 }
                if minv[j] < delta { delta = minv[j]; j1 = j }
            }
            for j in 0...m {
                if used[j] { u[p[j]] += delta; v[j] -= delta } else { minv[j] -= delta }
            }
            j0 = j1
        } while p[j0] != 0
        repeat {
            let j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
        } while j0 != 0
    }
    var pairs: [(row: Int, col: Int)] = []
    for j in 1...m where p[j] != 0 {
        pairs.append(transposed ? (j - 1, p[j] - 1) : (p[j] - 1, j - 1))
    }
    return pairs.sorted { $0.row < $1.row }
}

/// Intersection and union of two binary masks given as bytes (nonzero = foreground), the same length.
public func intersectionAndUnion(_ a: [UInt8], _ b: [UInt8]) -> (intersection: Int, union: Int) {
    precondition(a.count == b.count, "intersectionAndUnion: \(a.count) vs \(b.count) pixels")
    var i = 0, u = 0
    for k in 0..<a.count {
        let x = a[k] != 0, y = b[k] != 0
        if x && y { i += 1 }
        if x || y { u += 1 }
    }
    return (i, u)
}

/// validate()'s figures (refCOCO family, ReasonSeg): one (I, U) per sentence.
public struct IoUAccumulator: Sendable {
    public private(set) var count = 0
    public private(set) var iouSum = 0.0
    public private(set) var intersection = 0.0
    public private(set) var union = 0.0

    public init() {}

    public mutating func add(intersection i: Int, union u: Int) {
        count += 1
        iouSum += u == 0 ? 1 : Double(i) / (Double(u) + 1e-5)
        intersection += Double(i)
        union += Double(u)
    }

    /// Another rank's sums (the reference all-reduces them).
    public mutating func merge(_ o: IoUAccumulator) {
        count += o.count
        iouSum += o.iouSum
        intersection += o.intersection
        union += o.union
    }

    public var gIoU: Double { count == 0 ? 0 : iouSum / Double(count) }
    public var cIoU: Double { union == 0 ? 0 : intersection / union }
}

/// ar_validate()'s figures (MUSE): per image, the pairs of its questions (matched, unmatched GT, unmatched
/// prediction); gIoU = sum over images of the pairs' IoUs / sum over images of max(predicted, ground-truth masks);
/// cIoU = sum of I / sum of U over every pair.
public struct MUSEAccumulator: Sendable {
    public private(set) var iouSum = 0.0
    public private(set) var denominator = 0.0
    public private(set) var intersection = 0.0
    public private(set) var union = 0.0
    public private(set) var images = 0

    public init() {}

    /// One image: its pairs' (I, U) and its predicted and ground-truth mask counts.
    public mutating func addImage(pairs: [(intersection: Int, union: Int)], predicted: Int, groundTruth: Int) {
        images += 1
        for (i, u) in pairs {
            iouSum += u == 0 ? 1 : Double(i) / (Double(u) + 1e-5)
            intersection += Double(i)
            union += Double(u)
        }
        denominator += Double(max(predicted, groundTruth))
    }

    public mutating func merge(_ o: MUSEAccumulator) {
        iouSum += o.iouSum
        denominator += o.denominator
        intersection += o.intersection
        union += o.union
        images += o.images
    }

    public var gIoU: Double { denominator == 0 ? 0 : iouSum / denominator }
    public var cIoU: Double { union == 0 ? 0 : intersection / union }
}

/// (I, U) of an unmatched prediction against an empty ground truth, in ar_validate()'s two readings:
///   faithful: the raw logits go through intersectionAndUnionGPU (histc over [0, 1] with 2 bins), so only logits in
///             [0.5, 1] count as foreground (the rest of the false-positive area is dropped from the union);
///   clean:    the prediction binarised (logit > 0), its whole area is the union.
public func unmatchedPredictionIoU(logits: [Float], faithful: Bool) -> (intersection: Int, union: Int) {
    var n = 0
    if faithful {
        for x in logits where x >= 0.5 && x <= 1 { n += 1 }
    } else {
        for x in logits where x > 0 { n += 1 }
    }
    return (0, n)
}

/// F.grid_sample(mode bilinear, padding zeros, align_corners False) of an H x W map at a point (x, y) in [0, 1]^2
/// (point_sample of the reference's matcher: grid = 2 p - 1).
@inlinable
public func pointSample(_ map: UnsafePointer<Float>, height H: Int, width W: Int, x: Float, y: Float) -> Float {
    let ix = x * Float(W) - 0.5, iy = y * Float(H) - 0.5
    let x0 = Int(ix.rounded(.down)), y0 = Int(iy.rounded(.down))
    let fx = ix - Float(x0), fy = iy - Float(y0)
    func at(_ r: Int, _ c: Int) -> Float { r >= 0 && r < H && c >= 0 && c < W ? map[r * W + c] : 0 }
    return at(y0, x0) * (1 - fx) * (1 - fy) + at(y0, x0 + 1) * fx * (1 - fy)
        + at(y0 + 1, x0) * (1 - fx) * fy + at(y0 + 1, x0 + 1) * fx * fy
}

/// match_pred of the reference (utils/matcher.py): the logits and ground truths sampled at the same random points
/// (12,544 by default, from `rng`), cost = the mean BCE-with-logits of every pair + 1 - (2 sum(sigmoid(p) t) + 1) /
/// (sum sigmoid(p) + sum t + 1) (the declared weights of 5 are not applied), then the minimum-cost assignment.
/// - logits: P predicted masks, each H x W (row-major); targets: G ground-truth masks (0 / 1), each H x W.
public func matchPredictions(logits: [[Float]], targets: [[Float]], height H: Int, width W: Int, points: Int = 12_544,
                             rng: inout RNG) -> (pairs: [(pred: Int, gt: Int)], cost: [[Double]]) {
    guard !logits.isEmpty, !targets.isEmpty else { return ([], []) }
    var pts: [(Float, Float)] = []
    pts.reserveCapacity(points)
    for _ in 0..<points { let a = rng.uniform(); pts.append((a, rng.uniform())) }
    // torch.rand(1, P, 2): the last dimension is (x, y)
    func sample(_ m: [Float]) -> [Float] {
        m.withUnsafeBufferPointer { p in pts.map { pointSample(p.baseAddress!, height: H, width: W, x: $0.0, y: $0.1) } }
    }
    let ps = logits.map(sample), ts = targets.map(sample)
    var cost = [[Double]](repeating: [Double](repeating: 0, count: ts.count), count: ps.count)
    for (n, p) in ps.enumerated() {
        let pos = p.map { Double(log1p(exp(-Double($0)))) }, neg = p.map { Double(log1p(exp(Double($0)))) }
        let sig = p.map { 1 / (1 + exp(-Double($0))) }
        let sigSum = sig.reduce(0, +)
        for (m, t) in ts.enumerated() {
            var ce = 0.0, inter = 0.0, tSum = 0.0
            for c in 0..<points {
                let tc = Double(t[c])
                ce += pos[c] * tc + neg[c] * (1 - tc)
                inter += sig[c] * tc
                tSum += tc
            }
            cost[n][m] = ce / Double(points) + (1 - (2 * inter + 1) / (sigSum + tSum + 1))
        }
    }
    return (linearSumAssignment(cost).map { ($0.row, $0.col) }, cost)
}
