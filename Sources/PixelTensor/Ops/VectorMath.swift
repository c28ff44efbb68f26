import Foundation

// Vectorised elementwise math on SIMD8<Float> for the hot activation, softmax and loss kernels, and the
// two-thread split of long elementwise loops.
//
// exp: Cephes expf (the range reduction and polynomial musl/sse_mathfun also use):
//   n = round(x log2 e),  r = x - n C1 - n C2  (C1 + C2 = ln 2, C1 exact in 9 bits),
//   exp(r) = 1 + r + r^2 P(r)  (degree-5 minimax P on |r| <= ln2 / 2),   exp(x) = 2^n exp(r).
// 2^n is applied as two exact power-of-two factors 2^(n/2) 2^(n - n/2), so results in the subnormal
// range (x down to about -103.97) round once, and overflow (x > 88.72) gives +inf. The maximum error over
// the whole float line is 2 ulp (tested against Foundation.exp, subnormals included); NaN stays NaN,
// exp(+inf) = +inf, exp(-inf) = 0.
//
// log (for log1p in BCE): Cephes logf, x = 2^e m with m in [sqrt(1/2), sqrt 2): log m by a degree-8
// polynomial in m - 1, plus e ln 2 split in two constants; <= 2 ulp on normal positive inputs.
//
// The rounding to nearest integer uses the 1.5 * 2^23 trick (exact for |v| < 2^22), and the integer n is
// read from the bits of that sum: no float <-> int conversion or rounding instruction needed (baseline
// x86-64 has SSE2 only). No fused multiply-adds are used, so results do not depend on the target CPU.

public enum VectorMath {
    public typealias V = SIMD8<Float>
    public typealias VI = SIMD8<Int32>

    @inline(__always) static func bits(_ v: V) -> VI { unsafeBitCast(v, to: VI.self) }
    @inline(__always) static func float(_ v: VI) -> V { unsafeBitCast(v, to: V.self) }

    /// Lane-wise max (b where b >= a), inlined (the stdlib's generic pointwiseMax is an out-of-line call).
    @inline(__always)
    public static func max(_ a: V, _ b: V) -> V { a.replacing(with: b, where: b .>= a) }

    @inline(__always)
    static func load(_ p: UnsafePointer<Float>) -> V { UnsafeRawPointer(p).loadUnaligned(as: V.self) }

    @inline(__always)
    static func store(_ v: V, _ p: UnsafeMutablePointer<Float>) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: V.self) }

    /// The first `n` (< 8) lanes from p, the rest `fill`.
    @inline(__always)
    static func loadPartial(_ p: UnsafePointer<Float>, _ n: Int, fill: Float = 0) -> V {
        var v = V(repeating: fill)
        for i in 0..<n { v[i] = p[i] }
        return v
    }

    @inline(__always)
    static func storePartial(_ v: V, _ p: UnsafeMutablePointer<Float>, _ n: Int) {
        for i in 0..<n { p[i] = v[i] }
    }

    /// e^x per lane (<= 2 ulp, see the top of this file).
    @inline(__always)
    public static func exp(_ x: V) -> V {
        let magic = V(repeating: 12_582_912)          // 1.5 * 2^23
        // clamp: below -104 the result rounds to 0, above 89 to inf; NaN lanes are restored at the end
        var t = x.replacing(with: 89, where: x .> 89)
        t = t.replacing(with: -104, where: t .< -104)
        let k = t * V(repeating: 1.44269504088896341) + magic
        let n = k - magic                              // round(t log2 e), exact integer in float
        var r = t - n * V(repeating: 0.693359375)
        r = r - n * V(repeating: -2.12194440e-4)
        var p = V(repeating: 1.9875691500e-4)
        p = p * r + V(repeating: 1.3981999507e-3)
        p = p * r + V(repeating: 8.3334519073e-3)
        p = p * r + V(repeating: 4.1665795894e-2)
        p = p * r + V(repeating: 1.6666665459e-1)
        p = p * r + V(repeating: 5.0000001201e-1)
        let y = (p * (r * r) + r) + V(repeating: 1)
        let ni = bits(k) &- bits(magic)                // n as Int32, in -150...129
        let n1 = ni &>> 1, n2 = ni &- n1
        let s1 = float((n1 &+ 127) &<< 23), s2 = float((n2 &+ 127) &<< 23)
        let e = (y * s1) * s2
        return e.replacing(with: x, where: x .!= x)
    }

    /// ln x per lane for x > 0 normal or subnormal (<= 2 ulp); log 0 = -inf, log of a negative or NaN = NaN,
    /// log(+inf) = +inf.
    @inline(__always)
    public static func log(_ x: V) -> V {
        // subnormals: scale by 2^23 first
        let tiny = x .< V(repeating: Float.leastNormalMagnitude)
        let xs = x.replacing(with: x * V(repeating: 8_388_608), where: tiny)
        var xb = bits(xs)
        var e = (xb &>> 23) &- 126                      // x = 2^e m, m in [0.5, 1)
        e = e.replacing(with: e &- 23, where: tiny)
        xb = (xb & VI(repeating: 0x007F_FFFF)) | VI(repeating: 0x3F00_0000)
        var m = float(xb)
        // m in [sqrt(1/2), sqrt 2): if m < sqrt(1/2), m = 2m, e -= 1
        let small = m .< V(repeating: 0.707106781186547524)
        e = e.replacing(with: e &- 1, where: small)
        m = m.replacing(with: m + m, where: small)
        let f = m - V(repeating: 1)
        let ef = V(e)
        let z = f * f
        var p = V(repeating: 7.0376836292e-2)
        p = p * f + V(repeating: -1.1514610310e-1)
        p = p * f + V(repeating: 1.1676998740e-1)
        p = p * f + V(repeating: -1.2420140846e-1)
        p = p * f + V(repeating: 1.4249322787e-1)
        p = p * f + V(repeating: -1.6668057665e-1)
        p = p * f + V(repeating: 2.0000714765e-1)
        p = p * f + V(repeating: -2.4999993993e-1)
        p = p * f + V(repeating: 3.3333331174e-1)
        var y = p * f * z
        y = y + ef * V(repeating: -2.12194440e-4)
        y = y - V(repeating: 0.5) * z
        var r = f + y
        r = r + ef * V(repeating: 0.693359375)
        r = r.replacing(with: -.infinity, where: x .== 0)
        r = r.replacing(with: .nan, where: (x .< 0) .| (x .!= x))
        r = r.replacing(with: .infinity, where: x .== .infinity)
        return r
    }

    /// log(1 + x) per lane for x >= 0 (the BCE term log1p(exp(-|x|))): log(u) scaled by x / (u - 1), u = 1 + x,
    /// which cancels the rounding of 1 + x (Goldberg); x itself where u == 1.
    @inline(__always)
    public static func log1pNonNegative(_ x: V) -> V {
        let u = x + V(repeating: 1)
        let d = u - V(repeating: 1)
        let l = log(u) * (x / d)
        return l.replacing(with: x, where: d .== 0)
    }

    /// The logistic function per lane, in the stable form of `stableSigmoid`: e = exp(-|x|),
    /// 1 / (1 + e) for x >= 0 and e / (1 + e) below.
    @inline(__always)
    public static func sigmoid(_ x: V) -> V {
        let neg = x .< 0
        let e = exp(x.replacing(with: -x, where: .!neg))
        let d = V(repeating: 1) + e
        return V(repeating: 1).replacing(with: e, where: neg) / d
    }

    /// A running sum of SIMD8 blocks: the lanes accumulate in Float over at most 16 blocks, then are added
    /// to a Double total (a horizontal sum per block costs more than the exp that made it).
    public struct LaneSum {
        @usableFromInline var acc = V(repeating: 0)
        @usableFromInline var count = 0
        @usableFromInline var total = 0.0

        @inlinable public init() {}

        @inline(__always)
        public mutating func add(_ v: V) {
            acc += v
            count += 1
            if count == 16 { flush() }
        }

        @inline(__always)
        public mutating func flush() {
            var s = 0.0
            for i in 0..<8 { s += Double(acc[i]) }
            total += s
            acc = V(repeating: 0)
            count = 0
        }

        /// The total so far (flushes).
        @inline(__always)
        public mutating func value() -> Double {
            flush()
            return total
        }
    }

    // MARK: elementwise maps (SIMD8 blocks, split over threads for long arrays)

    /// out[i] = f(a[i]) lane-wise over 8-element blocks (the last block padded with `fill`); out may alias a.
    /// `cost` is the per-element work in units of a multiply-add (an exp is ~16), for the thread split.
    @inline(__always)
    public static func map(_ out: UnsafeMutablePointer<Float>, _ a: UnsafePointer<Float>, _ n: Int, cost: Int,
                           _ f: (V) -> V) {
        Parallel.forChunks(n, cost: cost) { lo, hi in
            var i = lo
            while i + 8 <= hi { store(f(load(a + i)), out + i); i += 8 }
            if i < hi { storePartial(f(loadPartial(a + i, hi - i)), out + i, hi - i) }
        }
    }

    /// out[i] = f(a[i], b[i]); out may alias a or b.
    @inline(__always)
    public static func map(_ out: UnsafeMutablePointer<Float>, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                           _ n: Int, cost: Int, _ f: (V, V) -> V) {
        Parallel.forChunks(n, cost: cost) { lo, hi in
            var i = lo
            while i + 8 <= hi { store(f(load(a + i), load(b + i)), out + i); i += 8 }
            if i < hi { storePartial(f(loadPartial(a + i, hi - i), loadPartial(b + i, hi - i)), out + i, hi - i) }
        }
    }

    /// out[i] = f(a[i], b[i], c[i]); out may alias any input.
    @inline(__always)
    public static func map(_ out: UnsafeMutablePointer<Float>, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                           _ c: UnsafePointer<Float>, _ n: Int, cost: Int, _ f: (V, V, V) -> V) {
        Parallel.forChunks(n, cost: cost) { lo, hi in
            var i = lo
            while i + 8 <= hi { store(f(load(a + i), load(b + i), load(c + i)), out + i); i += 8 }
            if i < hi {
                let m = hi - i
                storePartial(f(loadPartial(a + i, m), loadPartial(b + i, m), loadPartial(c + i, m)), out + i, m)
            }
        }
    }

    /// out[i] = f(a[i], b[i], c[i], d[i]); out may alias any input.
    @inline(__always)
    public static func map(_ out: UnsafeMutablePointer<Float>, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                           _ c: UnsafePointer<Float>, _ d: UnsafePointer<Float>, _ n: Int, cost: Int,
                           _ f: (V, V, V, V) -> V) {
        Parallel.forChunks(n, cost: cost) { lo, hi in
            var i = lo
            while i + 8 <= hi { store(f(load(a + i), load(b + i), load(c + i), load(d + i)), out + i); i += 8 }
            if i < hi {
                let m = hi - i
                storePartial(f(loadPartial(a + i, m), loadPartial(b + i, m), loadPartial(c + i, m), loadPartial(d + i, m)),
                             out + i, m)
            }
        }
    }

    // MARK: array kernels

    /// out[i] = exp(x[i]); out may alias x.
    public static func exp(_ out: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ n: Int) {
        map(out, x, n, cost: 16) { exp($0) }
    }

    /// out[i] = sigmoid(x[i]); out may alias x.
    public static func sigmoid(_ out: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ n: Int) {
        map(out, x, n, cost: 20) { sigmoid($0) }
    }
}

// MARK: - two-thread split of elementwise loops

/// Splits [0, n) into contiguous chunks run concurrently (DispatchQueue.concurrentPerform) when n is large
/// enough to pay for waking a second thread. Every element is computed by the same code whatever the split,
/// so results are bit-identical to the single-thread loop; chunk boundaries are multiples of 8 (whole SIMD8
/// blocks) so even kernels that treat a partial last block differently see the same blocks.
public enum Parallel {
    /// Workers used for elementwise loops (the BLAS thread count by default; 1 turns the split off).
    /// PIXELLM_ELEMENTWISE_THREADS overrides; BLAS.setThreads(n) sets it to n.
    nonisolated(unsafe) public static var workers: Int = {
        if let s = ProcessInfo.processInfo.environment["PIXELLM_ELEMENTWISE_THREADS"], let v = Int(s), v >= 1 { return v }
        return max(1, min(BLAS.threadCount, 64))
    }()

    /// Work units (elements x cost, ~0.1 ns each) below which one thread does the loop; a split needs
    /// twice this (~50 us), well above the few microseconds concurrentPerform takes to wake a worker.
    public static let grain = 262_144

    /// body(lo, hi) over chunks of [0, n); `cost` is the relative per-element work (1 = a multiply-add,
    /// ~8 for an exp), which lowers the size at which the split starts.
    @inline(__always)
    public static func forChunks(_ n: Int, cost: Int = 1, _ body: (Int, Int) -> Void) {
        let w = min(workers, n * max(cost, 1) / grain)
        if w <= 1 { body(0, n); return }
        chunked(n, min(4 * w, (n + 7) / 8), body)
    }

    /// body over `pieces` chunks of [0, n) with boundaries at multiples of 8 (more pieces than threads, so a
    /// thread that starts late on a busy machine takes fewer).
    public static func chunked(_ n: Int, _ pieces: Int, _ body: (Int, Int) -> Void) {
        let blocks = (n + 7) / 8
        DispatchQueue.concurrentPerform(iterations: pieces) { k in
            let lo = min(n, blocks * k / pieces * 8), hi = min(n, blocks * (k + 1) / pieces * 8)
            if lo < hi { body(lo, hi) }
        }
    }

    /// body(lo, hi) over row ranges of [0, rows) when rows * rowCost is large; rows are never split.
    @inline(__always)
    public static func forRows(_ rows: Int, rowCost: Int, _ body: (Int, Int) -> Void) {
        let w = min(workers, rows, rows * max(rowCost, 1) / grain)
        if w <= 1 { body(0, rows); return }
        let pieces = min(rows, 4 * w)
        DispatchQueue.concurrentPerform(iterations: pieces) { k in
            let lo = rows * k / pieces, hi = rows * (k + 1) / pieces
            if lo < hi { body(lo, hi) }
        }
    }
}
