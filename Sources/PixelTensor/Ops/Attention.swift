import Foundation

// Softmax over the last dim with an optional additive mask and causal masking, and scaled dot-product
// attention with grouped-query heads. Kernels (forward and backward side by side) work on one row or one
// (batch, head) at a time on raw pointers; the products go through BLAS.sgemm.
//
// Masking conventions
// - The additive mask is added to the scores before the softmax; it may hold -inf or finfo.min-like
//   values (-3.4e38). A finite mask such as finfo.min keeps every entry finite, so a row masked that way
//   everywhere becomes uniform, exactly as in PyTorch (F.softmax and F.scaled_dot_product_attention).
// - A row with no finite score at all (every entry -inf, or every key removed by the causal limit) gives
//   probabilities 0 and gradient 0, never NaN. PyTorch's F.softmax returns NaN for such a row;
//   F.scaled_dot_product_attention (torch 2.13 CPU) returns 0 output and 0 gradient, which we match.
// - causal = true is *bottom-right* aligned: with Tq queries and Tk keys, query i sees keys
//   j <= Tk - Tq + i (the queries are the last Tq positions, as with a KV cache). PyTorch's is_causal
//   is top-left aligned (j <= i); the two agree when Tq == Tk. Rows with Tk - Tq + i < 0 see nothing.

/// The number of leading keys query row i may attend to under bottom-right causal masking.
@inline(__always)
func causalLimit(row i: Int, queries Tq: Int, keys Tk: Int) -> Int {
    min(max(Tk - Tq + i + 1, 0), Tk)
}

enum SoftmaxKernel {
    /// In place over one row: p[j] = softmax_j(p[j] + mask[j * maskInc]) over j < limit, p[j] = 0 for
    /// j >= limit; a row without a finite entry becomes all zeros.
    /// p [n] (scores in, probabilities out), mask [n] strided by maskInc or nil, limit in 0...n
    static func forwardRow(_ p: UnsafeMutablePointer<Float>, _ n: Int, mask: UnsafePointer<Float>?, maskInc: Int, limit: Int) {
        typealias V = VectorMath.V
        var mx = -Float.infinity
        if let mask, maskInc != 1 {
            for j in 0..<limit { let v = p[j] + mask[j * maskInc]; p[j] = v; mx = max(mx, v) }
        } else if let mask {
            // contiguous mask row (a key-padding mask): add and take the max in SIMD8 blocks
            var j = 0
            if limit >= 8 {
                var m8 = VectorMath.load(p) + VectorMath.load(mask)
                VectorMath.store(m8, p)
                j = 8
                while j + 8 <= limit {
                    let v = VectorMath.load(p + j) + VectorMath.load(mask + j)
                    VectorMath.store(v, p + j)
                    m8 = VectorMath.max(m8, v)
                    j += 8
                }
                mx = m8.max()
            }
            while j < limit { let v = p[j] + mask[j]; p[j] = v; mx = max(mx, v); j += 1 }
        } else {
            var j = 0
            if limit >= 8 {
                var m8 = VectorMath.load(p)
                j = 8
                while j + 8 <= limit { m8 = VectorMath.max(m8, VectorMath.load(p + j)); j += 8 }
                mx = m8.max()
            }
            while j < limit { mx = max(mx, p[j]); j += 1 }
        }
        if mx == -Float.infinity {
            p.update(repeating: 0, count: n)
            return
        }
        // exp(p - mx) in SIMD8 blocks, summed by LaneSum (Float lanes over <= 16 blocks, then Double)
        var lanes = VectorMath.LaneSum()
        let m = V(repeating: mx)
        var j = 0
        while j + 8 <= limit {
            let e = VectorMath.exp(VectorMath.load(p + j) - m)
            VectorMath.store(e, p + j)
            lanes.add(e)
            j += 8
        }
        var sum = lanes.value()
        if j < limit {
            let e = VectorMath.exp(VectorMath.loadPartial(p + j, limit - j) - m)
            VectorMath.storePartial(e, p + j, limit - j)
            for k in 0..<(limit - j) { sum += Double(e[k]) }
        }
        let inv = Float(1 / sum)
        for j in 0..<limit { p[j] *= inv }
        if limit < n { (p + limit).update(repeating: 0, count: n - limit) }
    }

    /// forwardRow over rows [0, rows) of p [rows, n] (row stride n), split over threads for large blocks;
    /// limit(i) gives row i's causal limit, maskRow the mask's row stride.
    static func forwardRows(_ p: UnsafeMutablePointer<Float>, rows: Int, _ n: Int, mask: UnsafePointer<Float>?, maskRow: Int,
                            maskInc: Int, causal: Bool) {
        Parallel.forRows(rows, rowCost: 20 * n) { lo, hi in
            for i in lo..<hi {
                let limit = causal ? causalLimit(row: i, queries: rows, keys: n) : n
                forwardRow(p + i * n, n, mask: mask.map { $0 + i * maskRow }, maskInc: maskInc, limit: limit)
            }
        }
    }

    /// One row of the softmax backward: dx[j] (+)= y[j] (g[j] - sum_i g[i] y[i]).
    /// dx [n] (may alias g when not accumulating), y [n] probabilities, g [n] upstream gradient
    static func backwardRow(_ dx: UnsafeMutablePointer<Float>, _ y: UnsafePointer<Float>, _ g: UnsafePointer<Float>,
                            _ n: Int, accumulate: Bool) {
        let c = Float(RowReduce.dot(g, y, n))
        if accumulate {
            for j in 0..<n { dx[j] += y[j] * (g[j] - c) }
        } else {
            for j in 0..<n { dx[j] = y[j] * (g[j] - c) }
        }
    }
}

/// Softmax over the last dim of x [..., Tq, Tk] (or [Tk] without causal), after adding `mask`
/// (broadcastable to x) and removing keys beyond the bottom-right causal limit. The mask receives a
/// gradient if it requires one (a learned additive bias).
public func softmax(_ x: Tensor, mask: Tensor? = nil, causal: Bool = false) -> Tensor {
    guard x.rank >= 1 else { shapeFailure(ShapeError("softmax", "input \(describe(x.shape)) has no last dim")) }
    if causal && x.rank < 2 {
        shapeFailure(ShapeError("softmax", "causal masking needs [..., Tq, Tk], got \(describe(x.shape))"))
    }
    if let mask {
        let b = try? Shapes.broadcast(x.shape, mask.shape, op: "softmax")
        guard b == x.shape else {
            shapeFailure(ShapeError("softmax", "mask \(describe(mask.shape)) does not broadcast to input \(describe(x.shape))"))
        }
    }
    let n = x.dim(-1), Tq = causal ? x.dim(-2) : 1
    let out = x.detachedCopy()
    let po = out.ptr
    let mStrides = mask.map { Shapes.broadcastStrides($0, to: x.shape) } ?? [Int](repeating: 0, count: x.rank)
    let pm = mask?.ptr
    Broadcast.forEachRow(shape: x.shape, stridesA: mStrides, stridesB: out.strides) { om, ox, _, im, _ in
        let limit = causal ? causalLimit(row: (ox / max(n, 1)) % Tq, queries: Tq, keys: n) : n
        SoftmaxKernel.forwardRow(po + ox, n, mask: pm.map { UnsafePointer($0 + om) }, maskInc: im, limit: limit)
    }
    return Autograd.record("softmax", out, inputs: [x] + (mask.map { [$0] } ?? [])) { out, g in
        let gc = g.contiguousData()
        let rows = x.count / max(n, 1)
        let maskGrad = mask?.requiresGrad == true
        if x.requiresGrad && !maskGrad {
            let dx = x.gradBuffer().ptr
            let y = out.ptr, gp = gc.ptr
            Parallel.forRows(rows, rowCost: 4 * n) { lo, hi in
                for r in lo..<hi { SoftmaxKernel.backwardRow(dx + r * n, y + r * n, gp + r * n, n, accumulate: true) }
            }
            return
        }
        // the score gradient is needed as a tensor: for the input and, summed over broadcast axes, the mask
        let ds = Tensor(empty: x.shape)
        let dsp = ds.ptr, y = out.ptr, gp = gc.ptr
        Parallel.forRows(rows, rowCost: 4 * n) { lo, hi in
            for r in lo..<hi { SoftmaxKernel.backwardRow(dsp + r * n, y + r * n, gp + r * n, n, accumulate: false) }
        }
        if x.requiresGrad { x.accumulateGrad(ds) }
        if let mask, maskGrad { mask.accumulateGrad(reduceToShape(ds, mask.shape)) }
    }
}

// MARK: - scaled dot-product attention

/// A [B, H, T, D] tensor read as one row-major T x D matrix per (batch, head) without copying when its
/// last dim is unit-stride (e.g. a [B, T, H, D] projection transposed to [B, H, T, D]).
/// Element (b, h, t, d) is at base + b * sb + h * sh + t * ld + d.
struct HeadMatrices {
    let keep: Tensor
    let sb: Int, sh: Int, ld: Int

    init(_ x: Tensor) {
        let T = x.shape[2], D = x.shape[3]
        let s = x.strides
        if (s[3] == 1 || D == 1) && (T == 1 || s[2] >= max(D, 1)) {
            keep = x
            sb = s[0]; sh = s[1]; ld = T == 1 ? max(D, 1) : s[2]
        } else {
            let c = x.contiguousData()
            keep = c
            sb = c.strides[0]; sh = c.strides[1]; ld = max(D, 1)
        }
    }

    @inline(__always)
    func at(_ b: Int, _ h: Int) -> UnsafeMutablePointer<Float> { keep.ptr + b * sb + h * sh }
}

enum AttentionKernel {
    /// Attention for one (batch, query head):
    ///   P = softmax(scale Q K^T + mask, causal limit),  O = P V
    /// q [Tq, D] (row stride ldq), k [Tk, D] (row stride ldk), v [Tk, Dv] (row stride ldv),
    /// mask: element (i, j) at mask[i * maskRow + j * maskCol] or nil,
    /// p [Tq, Tk] (out: probabilities, saved for backward), o [Tq, Dv] (out, contiguous)
    static func forward(q: UnsafePointer<Float>, ldq: Int, k: UnsafePointer<Float>, ldk: Int, v: UnsafePointer<Float>,
                        ldv: Int, mask: UnsafePointer<Float>?, maskRow: Int, maskCol: Int, causal: Bool, scale: Float,
                        p: UnsafeMutablePointer<Float>, o: UnsafeMutablePointer<Float>, Tq: Int, Tk: Int, D: Int, Dv: Int) {
        BLAS.sgemm(transA: false, transB: true, M: Tq, N: Tk, K: D, alpha: scale, A: q, lda: ldq, B: k, ldb: ldk,
                   beta: 0, C: p, ldc: Tk)
        SoftmaxKernel.forwardRows(p, rows: Tq, Tk, mask: mask, maskRow: maskRow, maskInc: maskCol, causal: causal)
        BLAS.sgemm(transA: false, transB: false, M: Tq, N: Dv, K: Tk, A: p, lda: Tk, B: v, ldb: ldv, beta: 0, C: o, ldc: Dv)
    }

    /// Backward for one (batch, query head); every gradient output accumulates (GQA heads share dk, dv):
    ///   dV += P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dP * P)),
    ///   dQ += scale dS K,  dK += scale dS^T Q,  dmask += dS
    /// dout [Tq, Dv] contiguous, p [Tq, Tk] saved probabilities, q/k/v as in forward,
    /// dq [Tq, D], dk [Tk, D], dv [Tk, Dv] (contiguous rows, optional),
    /// dmask: element (i, j) at dmask[i * dmaskRow + j * dmaskCol] (optional), scratch [Tq, Tk]
    static func backward(dout: UnsafePointer<Float>, p: UnsafePointer<Float>, q: UnsafePointer<Float>, ldq: Int,
                         k: UnsafePointer<Float>, ldk: Int, v: UnsafePointer<Float>, ldv: Int, scale: Float,
                         dq: UnsafeMutablePointer<Float>?, dk: UnsafeMutablePointer<Float>?, dv: UnsafeMutablePointer<Float>?,
                         dmask: UnsafeMutablePointer<Float>?, dmaskRow: Int, dmaskCol: Int,
                         scratch ds: UnsafeMutablePointer<Float>, Tq: Int, Tk: Int, D: Int, Dv: Int) {
        if let dv {
            BLAS.sgemm(transA: true, transB: false, M: Tk, N: Dv, K: Tq, A: p, lda: Tk, B: dout, ldb: Dv,
                       beta: 1, C: dv, ldc: Dv)
        }
        guard dq != nil || dk != nil || dmask != nil else { return }
        BLAS.sgemm(transA: false, transB: true, M: Tq, N: Tk, K: Dv, A: dout, lda: Dv, B: v, ldb: ldv,
                   beta: 0, C: ds, ldc: Tk)
        Parallel.forRows(Tq, rowCost: 4 * Tk) { lo, hi in
            for i in lo..<hi { SoftmaxKernel.backwardRow(ds + i * Tk, p + i * Tk, ds + i * Tk, Tk, accumulate: false) }
        }
        if let dmask {
            for i in 0..<Tq {
                let row = ds + i * Tk, dm = dmask + i * dmaskRow
                for j in 0..<Tk { dm[j * dmaskCol] += row[j] }
            }
        }
        if let dq {
            BLAS.sgemm(transA: false, transB: false, M: Tq, N: D, K: Tk, alpha: scale, A: ds, lda: Tk, B: k, ldb: ldk,
                       beta: 1, C: dq, ldc: D)
        }
        if let dk {
            BLAS.sgemm(transA: true, transB: false, M: Tk, N: D, K: Tq, alpha: scale, A: ds, lda: Tk, B: q, ldb: ldq,
                       beta: 1, C: dk, ldc: D)
        }
    }
}

/// Inference attention with at most `fewRowsLimit` query rows (a decode step) runs `AttentionKernel.forwardFewRows`;
/// 0 sends every call through the BLAS path (`pixellm bench gemm --only decode-attention` compares the two).
public enum InferenceAttention {
    nonisolated(unsafe) public static var fewRowsLimit = 4
}

extension AttentionKernel {
    /// Inference attention for a few query rows (a decode step): per (batch, query head) the scores by SIMD dot
    /// products over the keys, the softmax, and the probability-weighted sum of the values, the (batch, head) pairs
    /// split over threads. OpenBLAS packs K and V for every 1-row product and runs it on one thread: at the 7B shape
    /// that was a tenth of a decode step with the second core idle.
    /// Arguments as `forward`, for every head at once: q/k/v through their `HeadMatrices`, mask element
    /// (b, h, i, j) at mask[b * ms[0] + h * ms[1] + i * ms[2] + j * ms[3]], o [B, Hq, Tq, Dv] contiguous.
    static func forwardFewRows(q: HeadMatrices, k: HeadMatrices, v: HeadMatrices, mask: UnsafePointer<Float>?, ms: [Int],
                               causal: Bool, scale: Float, o: UnsafeMutablePointer<Float>,
                               B: Int, Hq: Int, Hkv: Int, Tq: Int, Tk: Int, D: Int, Dv: Int) {
        let nRep = Hq / Hkv
        let ms0 = ms[0], ms1 = ms[1], ms2 = ms[2], ms3 = ms[3]
        Parallel.forRows(B * Hq, rowCost: Tq * Tk * (D + Dv) + 32 * Tq * Tk) { lo, hi in
            let p = UnsafeMutablePointer<Float>.allocate(capacity: max(Tk, 1))
            defer { p.deallocate() }
            for bh in lo..<hi {
                let b = bh / Hq, h = bh % Hq
                let qp = q.at(b, h), kp = k.at(b, h / nRep), vp = v.at(b, h / nRep)
                for i in 0..<Tq {
                    let limit = causal ? causalLimit(row: i, queries: Tq, keys: Tk) : Tk
                    let qi = qp + i * q.ld
                    for j in 0..<limit { p[j] = scale * dotFloat(qi, kp + j * k.ld, D) }
                    SoftmaxKernel.forwardRow(p, Tk, mask: mask.map { UnsafePointer($0 + b * ms0 + h * ms1 + i * ms2) },
                                             maskInc: ms3, limit: limit)
                    let oi = o + (bh * Tq + i) * Dv
                    oi.update(repeating: 0, count: Dv)
                    for j in 0..<limit where p[j] != 0 { axpyFloat(p[j], vp + j * v.ld, oi, Dv) }
                }
            }
        }
    }

    /// sum_d a[d] b[d] in Float (two SIMD8 accumulators).
    @inline(__always)
    static func dotFloat(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        var s0 = SIMD8<Float>(repeating: 0), s1 = SIMD8<Float>(repeating: 0)
        var d = 0
        while d + 16 <= n {
            s0 += VectorMath.load(a + d) * VectorMath.load(b + d)
            s1 += VectorMath.load(a + d + 8) * VectorMath.load(b + d + 8)
            d += 16
        }
        if d + 8 <= n { s0 += VectorMath.load(a + d) * VectorMath.load(b + d); d += 8 }
        var s = (s0 + s1).sum()
        while d < n { s += a[d] * b[d]; d += 1 }
        return s
    }

    /// y[d] += alpha x[d].
    @inline(__always)
    static func axpyFloat(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
        let a = SIMD8<Float>(repeating: alpha)
        var d = 0
        while d + 8 <= n {
            VectorMath.store(VectorMath.load(y + d) + a * VectorMath.load(x + d), y + d)
            d += 8
        }
        while d < n { y[d] += alpha * x[d]; d += 1 }
    }
}

/// Scaled dot-product attention (torch.nn.functional.scaled_dot_product_attention with enable_gqa):
/// q [B, Hq, Tq, D], k [B, Hkv, Tk, D], v [B, Hkv, Tk, Dv] -> [B, Hq, Tq, Dv].
/// - Grouped-query attention: Hq must be a multiple of Hkv; query head h uses KV head h / (Hq / Hkv)
///   (HF's repeat_kv layout).
/// - mask: additive, broadcastable to [B, Hq, Tq, Tk] (a key-padding mask is [B, 1, 1, Tk]); it gets a
///   gradient if it requires one (e.g. a relative-position bias).
/// - causal: bottom-right aligned (see the top of this file); combine with `mask` freely.
/// - scale defaults to 1 / sqrt(D).
/// The probabilities [B, Hq, Tq, Tk] are kept for backward when a gradient is needed.
public func scaledDotProductAttention(_ q: Tensor, _ k: Tensor, _ v: Tensor, mask: Tensor? = nil, causal: Bool = false,
                                      scale: Float? = nil) -> Tensor {
    let op = "scaledDotProductAttention"
    guard q.rank == 4, k.rank == 4, v.rank == 4 else {
        shapeFailure(ShapeError(op, "q \(describe(q.shape)), k \(describe(k.shape)), v \(describe(v.shape)) must all be [B, H, T, D]"))
    }
    let B = q.dim(0), Hq = q.dim(1), Tq = q.dim(2), D = q.dim(3)
    let Hkv = k.dim(1), Tk = k.dim(2), Dv = v.dim(3)
    guard k.dim(0) == B, v.dim(0) == B, v.dim(1) == Hkv, v.dim(2) == Tk, k.dim(3) == D else {
        shapeFailure(ShapeError(op, "q \(describe(q.shape)), k \(describe(k.shape)), v \(describe(v.shape)) do not match "
            + "([B, Hq, Tq, D], [B, Hkv, Tk, D], [B, Hkv, Tk, Dv])"))
    }
    guard Hkv > 0, Hq % Hkv == 0 else {
        shapeFailure(ShapeError(op, "query heads \(Hq) (q \(describe(q.shape))) are not a multiple of KV heads \(Hkv) (k \(describe(k.shape)))"))
    }
    let scoresShape = [B, Hq, Tq, Tk]
    if let mask {
        let b = try? Shapes.broadcast(scoresShape, mask.shape, op: op)
        guard b == scoresShape else {
            shapeFailure(ShapeError(op, "mask \(describe(mask.shape)) does not broadcast to the scores \(describe(scoresShape))"))
        }
    }
    let nRep = Hq / Hkv
    let s = scale ?? 1 / Float(D).squareRoot()
    let qm = HeadMatrices(q), km = HeadMatrices(k), vm = HeadMatrices(v)
    let ms = mask.map { Shapes.broadcastStrides($0, to: scoresShape) } ?? [0, 0, 0, 0]
    let needGrad = Autograd.isEnabled && ([q, k, v] + (mask.map { [$0] } ?? [])).contains { $0.requiresGrad }
    if !needGrad && Tq <= InferenceAttention.fewRowsLimit {
        let out = Tensor(empty: [B, Hq, Tq, Dv])
        AttentionKernel.forwardFewRows(q: qm, k: km, v: vm, mask: mask.map { UnsafePointer($0.ptr) }, ms: ms, causal: causal,
                                       scale: s, o: out.ptr, B: B, Hq: Hq, Hkv: Hkv, Tq: Tq, Tk: Tk, D: D, Dv: Dv)
        return out
    }
    // probabilities: all heads when backward needs them, else one head's worth of scratch
    let probs = Tensor(empty: needGrad ? scoresShape : [Tq, Tk])
    let out = Tensor(empty: [B, Hq, Tq, Dv])
    for b in 0..<B {
        for h in 0..<Hq {
            let bh = b * Hq + h
            AttentionKernel.forward(q: qm.at(b, h), ldq: qm.ld, k: km.at(b, h / nRep), ldk: km.ld, v: vm.at(b, h / nRep),
                                    ldv: vm.ld, mask: mask.map { UnsafePointer($0.ptr + b * ms[0] + h * ms[1]) },
                                    maskRow: ms[2], maskCol: ms[3], causal: causal, scale: s,
                                    p: probs.ptr + (needGrad ? bh * Tq * Tk : 0), o: out.ptr + bh * Tq * Dv,
                                    Tq: Tq, Tk: Tk, D: D, Dv: Dv)
        }
    }
    guard needGrad else { return out }
    return Autograd.record("scaledDotProductAttention", out, inputs: [q, k, v] + (mask.map { [$0] } ?? [])) { _, g in
        let gc = g.contiguousData()
        let dq = q.requiresGrad ? q.gradBuffer() : nil
        let dk = k.requiresGrad ? k.gradBuffer() : nil
        let dv = v.requiresGrad ? v.gradBuffer() : nil
        let dmask = mask?.requiresGrad == true ? mask!.gradBuffer() : nil
        let dms = dmask.map { Shapes.broadcastStrides($0, to: scoresShape) } ?? [0, 0, 0, 0]
        let scratch = Tensor(empty: [Tq, Tk])
        for b in 0..<B {
            for h in 0..<Hq {
                let bh = b * Hq + h, kh = h / nRep, bkh = b * Hkv + kh
                AttentionKernel.backward(
                    dout: gc.ptr + bh * Tq * Dv, p: probs.ptr + bh * Tq * Tk, q: qm.at(b, h), ldq: qm.ld,
                    k: km.at(b, kh), ldk: km.ld, v: vm.at(b, kh), ldv: vm.ld, scale: s,
                    dq: dq.map { $0.ptr + bh * Tq * D }, dk: dk.map { $0.ptr + bkh * Tk * D },
                    dv: dv.map { $0.ptr + bkh * Tk * Dv },
                    dmask: dmask.map { $0.ptr + b * dms[0] + h * dms[1] }, dmaskRow: dms[2], dmaskCol: dms[3],
                    scratch: scratch.ptr, Tq: Tq, Tk: Tk, D: D, Dv: Dv)
            }
        }
    }
}
