import Foundation
import XCTest
@testable import PixelTensor

/// VectorMath (SIMD8 exp / log / log1p / sigmoid) against Foundation over dense sweeps of the float line,
/// and the threaded elementwise, softmax, loss and resize kernels against the single-thread path (bit-identical).
final class VectorMathTests: XCTestCase {
    typealias V = VectorMath.V

    /// Distance in units in the last place (0 for two NaNs or equal values; Int.max when only one is NaN/inf).
    static func ulps(_ a: Float, _ b: Float) -> Int {
        if a.isNaN && b.isNaN { return 0 }
        if a == b { return 0 }
        if a.isNaN || b.isNaN || a.isInfinite || b.isInfinite { return Int.max }
        func ordered(_ f: Float) -> Int {
            let i = Int(Int32(bitPattern: f.bitPattern))
            return i < 0 ? Int(Int32.min) - i : i
        }
        return Swift.abs(ordered(a) - ordered(b))
    }

    static let extremes: [Float] = [
        -100, -88, 88, 100, -87.3365, -88.7228, 88.7228, 88.72283, 88.7229, -103.972, -103.98, -104, -150, 150,
        .nan, -.nan, .infinity, -.infinity, 0, -0.0, 1, -1, 0.5, -0.5,
        Float.leastNonzeroMagnitude, -Float.leastNonzeroMagnitude, Float.leastNormalMagnitude, -Float.leastNormalMagnitude,
        1e-40, -1e-40, Float.greatestFiniteMagnitude, -Float.greatestFiniteMagnitude, 1e-8, -1e-8,
    ]

    /// Every `step`-th float bit pattern (both signs) plus the extremes.
    static func sweep(step: UInt32, limit: Float) -> [Float] {
        var xs: [Float] = []
        var b: UInt32 = 0
        while b < 0x7F80_0000 {
            let f = Float(bitPattern: b)
            if f <= limit { xs.append(f); xs.append(-f) }
            b += step
        }
        return xs + extremes
    }

    /// Applies a lane function to `xs` eight at a time.
    static func apply(_ xs: [Float], _ f: (V) -> V) -> [Float] {
        var out = [Float](repeating: 0, count: xs.count)
        var i = 0
        while i < xs.count {
            var v = V(repeating: 0)
            let m = min(8, xs.count - i)
            for k in 0..<m { v[k] = xs[i + k] }
            let r = f(v)
            for k in 0..<m { out[i + k] = r[k] }
            i += 8
        }
        return out
    }

    func testExpAgainstFoundation() {
        let xs = Self.sweep(step: 613, limit: 120)
        var out = [Float](repeating: 0, count: xs.count)
        xs.withUnsafeBufferPointer { x in out.withUnsafeMutableBufferPointer { VectorMath.exp($0.baseAddress!, x.baseAddress!, xs.count) } }
        var worst = 0, at: Float = 0
        for (i, x) in xs.enumerated() {
            let u = Self.ulps(out[i], Foundation.exp(x))
            if u > worst { worst = u; at = x }
        }
        XCTAssertLessThanOrEqual(worst, 2, "exp: \(worst) ulp at x = \(at)")
        let e = Self.apply([.nan, .infinity, -.infinity, 0, -0.0, 89, -104, 88.72283, -103.972, -87.3365], VectorMath.exp)
        XCTAssertTrue(e[0].isNaN)
        XCTAssertEqual(e[1], .infinity)
        XCTAssertEqual(e[2], 0)
        XCTAssertEqual(e[3], 1)
        XCTAssertEqual(e[4], 1)
        XCTAssertEqual(e[5], .infinity)     // overflow
        XCTAssertEqual(e[6], 0)             // below half the smallest subnormal
        XCTAssertTrue(e[7].isFinite && e[7] > 3.4e38)
        XCTAssertTrue(e[8] > 0 && e[8] < Float.leastNormalMagnitude)  // subnormal result
        XCTAssertLessThanOrEqual(Self.ulps(e[9], Foundation.exp(-87.3365)), 2)
    }

    func testLogAndLog1pAgainstFoundation() {
        var xs: [Float] = []
        var b: UInt32 = 0
        while b < 0x7F80_0000 { xs.append(Float(bitPattern: b)); b += 331 }
        xs += [0, 1, 2, .infinity, Float.greatestFiniteMagnitude, Float.leastNonzeroMagnitude, Float.leastNormalMagnitude]
        let l = Self.apply(xs, VectorMath.log)
        var worst = 0, at: Float = 0
        for (i, x) in xs.enumerated() {
            let u = Self.ulps(l[i], Foundation.log(x))
            if u > worst { worst = u; at = x }
        }
        XCTAssertLessThanOrEqual(worst, 2, "log: \(worst) ulp at x = \(at)")
        let special = Self.apply([-1, .nan, 0, .infinity], VectorMath.log)
        XCTAssertTrue(special[0].isNaN && special[1].isNaN)
        XCTAssertEqual(special[2], -.infinity)
        XCTAssertEqual(special[3], .infinity)
        // log1p on [0, 1] (the BCE term log1p(exp(-|x|))), tiny arguments included
        var ys: [Float] = []
        b = 0
        while b <= 0x3F80_0000 { ys.append(Float(bitPattern: b)); b += 97 }
        let l1 = Self.apply(ys, VectorMath.log1pNonNegative)
        worst = 0
        for (i, y) in ys.enumerated() {
            let u = Self.ulps(l1[i], Foundation.log1p(y))
            if u > worst { worst = u; at = y }
        }
        XCTAssertLessThanOrEqual(worst, 2, "log1p: \(worst) ulp at x = \(at)")
    }

    func testSigmoidAgainstScalar() {
        let xs = Self.sweep(step: 613, limit: 120)
        var out = [Float](repeating: 0, count: xs.count)
        xs.withUnsafeBufferPointer { x in out.withUnsafeMutableBufferPointer { VectorMath.sigmoid($0.baseAddress!, x.baseAddress!, xs.count) } }
        var worst = 0, at: Float = 0
        for (i, x) in xs.enumerated() where !x.isNaN {
            // the stable form in Double, rounded once
            let d = Double(x)
            let ref = Float(d >= 0 ? 1 / (1 + Foundation.exp(-d)) : Foundation.exp(d) / (1 + Foundation.exp(d)))
            let u = Self.ulps(out[i], ref)
            if u > worst { worst = u; at = x }
        }
        XCTAssertLessThanOrEqual(worst, 3, "sigmoid: \(worst) ulp at x = \(at)")
        let s = Self.apply([.nan, .infinity, -.infinity, 0, 100, -100, -88, 88], VectorMath.sigmoid)
        XCTAssertTrue(s[0].isNaN)
        XCTAssertEqual(s[1], 1)
        XCTAssertEqual(s[2], 0)
        XCTAssertEqual(s[3], 0.5)
        XCTAssertEqual(s[4], 1)
        XCTAssertGreaterThan(s[5], 0)       // 3.7e-44, subnormal, not flushed
        XCTAssertEqual(Double(s[6]), Foundation.exp(-88.0), accuracy: 1e-45)
        XCTAssertEqual(s[7], 1)
    }

    // MARK: threaded == single-thread

    /// Runs `body` with 1 worker and with 2 and 3, returning every result.
    func withWorkers<R>(_ body: () -> R) -> [R] {
        let saved = Parallel.workers
        defer { Parallel.workers = saved }
        return [1, 2, 3].map { w in
            Parallel.workers = w
            return body()
        }
    }

    func assertAllBitIdentical(_ runs: [[Float]], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        for r in runs.dropFirst() {
            XCTAssertEqual(r.count, runs[0].count, what, file: file, line: line)
            let same = zip(r, runs[0]).allSatisfy { $0.bitPattern == $1.bitPattern }
            XCTAssertTrue(same, "\(what): threaded result differs from the single-thread one", file: file, line: line)
        }
    }

    func testThreadedElementwiseIsBitIdentical() {
        let n = 200_003   // above the split threshold, not a multiple of 8
        func grads(_ f: (Tensor, Tensor) -> Tensor) -> [[Float]] {
            withWorkers { () -> [Float] in
                let a = rand([n], seed: 1, std: 4), b = rand([n], seed: 2, std: 4)
                let y = f(a, b)
                y.backward(rand([n], seed: 3, grad: false))
                return y.toArray() + a.grad!.toArray() + b.grad!.toArray()
            }
        }
        assertAllBitIdentical(grads { a, b in a.quickGelu() + b.silu() }, "quickGelu/silu")
        assertAllBitIdentical(grads { a, b in a.sigmoid() * b }, "sigmoid")
        assertAllBitIdentical(grads { a, b in swiglu(a, b) }, "swiglu")
        assertAllBitIdentical(grads { a, b in a.gelu() * b }, "gelu")
    }

    func testThreadedSoftmaxAttentionAndLossesAreBitIdentical() {
        let att = withWorkers { () -> [Float] in
            let q = rand([1, 2, 300, 16], seed: 4), k = rand([1, 2, 300, 16], seed: 5), v = rand([1, 2, 300, 16], seed: 6)
            let o = scaledDotProductAttention(q, k, v, causal: true)
            o.backward(rand(o.shape, seed: 7, grad: false))
            return o.toArray() + q.grad!.toArray() + k.grad!.toArray() + v.grad!.toArray()
        }
        assertAllBitIdentical(att, "attention")
        let sm = withWorkers { () -> [Float] in
            let x = rand([600, 300], seed: 8, std: 3)
            let y = softmax(x)
            y.backward(rand(y.shape, seed: 9, grad: false))
            return y.toArray() + x.grad!.toArray()
        }
        assertAllBitIdentical(sm, "softmax")
        let losses = withWorkers { () -> [Float] in
            let x = rand([2, 480, 64 * 5 + 3], seed: 10, std: 3)
            let t = Tensor((0..<x.count).map { Float(($0 * 7919) % 3 == 0 ? 1 : 0) }, shape: x.shape)
            let l = sigmoidCELoss(x, t) + diceLoss(x, t) * 0.5 + bceWithLogits(x, t)
            l.backward()
            return [l.item] + x.grad!.toArray()
        }
        assertAllBitIdentical(losses, "mask losses")
        let resize = withWorkers { () -> [Float] in
            let x = rand([2, 1, 56, 56], seed: 11, std: 3)
            let y = resizeBilinear(x, height: 480, width: 640)
            y.backward(rand(y.shape, seed: 12, grad: false))
            return y.toArray() + x.grad!.toArray()
        }
        assertAllBitIdentical(resize, "resize_bilinear")
    }
}
