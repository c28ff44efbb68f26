// Normalisation layers:
//   RMSNorm      over the last dim, with weight            (LLaMA's LlamaRMSNorm, computed in fp32)
//   LayerNorm    over the last dim, with weight and bias   (CLIP ViT, SAM's two-way transformer)
//   LayerNorm2d  over the channels of [B, C, H, W]          (SAM's neck and mask decoder upscaling)
// Each op: the forward kernel and the backward kernel side by side on raw pointers (the forward saves
// the per-row statistics the backward needs, as llm.c's layernorm saves mean and rstd), then the
// Tensor-level function that records the tape. Backward kernels accumulate (+=) into the gradients.
// Row sums use SIMD8<Float> partial sums combined in Double; sums over rows (dweight, dbias) use Double.

/// Row reductions with SIMD8<Float> partial sums, the lanes combined in Double.
enum RowReduce {
    @inline(__always)
    static func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
        UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
    }

    @inline(__always)
    static func lanes(_ v: SIMD8<Float>) -> Double {
        var s = 0.0
        for i in 0..<8 { s += Double(v[i]) }
        return s
    }

    /// sum_i a[i];  a [n]
    static func sum(_ a: UnsafePointer<Float>, _ n: Int) -> Double {
        var acc = SIMD8<Float>(repeating: 0)
        var i = 0
        while i + 8 <= n { acc += load8(a + i); i += 8 }
        var s = lanes(acc)
        while i < n { s += Double(a[i]); i += 1 }
        return s
    }

    /// sum_i a[i] * b[i];  a [n], b [n]
    static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Double {
        var acc = SIMD8<Float>(repeating: 0)
        var i = 0
        while i + 8 <= n { acc += load8(a + i) * load8(b + i); i += 8 }
        var s = lanes(acc)
        while i < n { s += Double(a[i]) * Double(b[i]); i += 1 }
        return s
    }

    /// sum_i (a[i] - c)^2;  a [n]
    static func centeredSquares(_ a: UnsafePointer<Float>, _ c: Float, _ n: Int) -> Double {
        var acc = SIMD8<Float>(repeating: 0)
        let cv = SIMD8<Float>(repeating: c)
        var i = 0
        while i + 8 <= n { let d = load8(a + i) - cv; acc += d * d; i += 8 }
        var s = lanes(acc)
        while i < n { let d = Double(a[i] - c); s += d * d; i += 1 }
        return s
    }

    /// sum_i a[i] * b[i] * c[i];  a, b, c [n]
    static func dot3(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafePointer<Float>, _ n: Int) -> Double {
        var acc = SIMD8<Float>(repeating: 0)
        var i = 0
        while i + 8 <= n { acc += load8(a + i) * load8(b + i) * load8(c + i); i += 8 }
        var s = lanes(acc)
        while i < n { s += Double(a[i]) * Double(b[i]) * Double(c[i]); i += 1 }
        return s
    }
}

/// Zeroed Double scratch of n elements, freed after `body`.
@inline(__always)
func withDoubleScratch<R>(_ n: Int, _ body: (UnsafeMutablePointer<Double>) -> R) -> R {
    let p = UnsafeMutablePointer<Double>.allocate(capacity: max(n, 1))
    p.initialize(repeating: 0, count: max(n, 1))
    defer { p.deallocate() }
    return body(p)
}

// MARK: - RMSNorm

/// y = x * rsqrt(mean(x^2) + eps) * w over the last dim (HF LlamaRMSNorm in fp32).
enum RMSNormKernel {
    /// out [N, D], rstd [N] (saved), x [N, D], w [D]
    static func forward(out: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>,
                        w: UnsafePointer<Float>, N: Int, D: Int, eps: Float) {
        for r in 0..<N {
            let xr = x + r * D, o = out + r * D
            let meanSq = Float(RowReduce.dot(xr, xr, D) / Double(D))
            let s = 1 / (meanSq + eps).squareRoot()
            rstd[r] = s
            for i in 0..<D { o[i] = w[i] * (xr[i] * s) }
        }
    }

    /// dx [N, D] (+=, optional), dw [D] (+=, optional), dout [N, D], x [N, D], w [D], rstd [N]
    ///   dx_j = s g_j w_j - s^3 x_j / D * sum_i g_i w_i x_i,   dw_i = sum_rows g_i x_i s
    static func backward(dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>?, dout: UnsafePointer<Float>,
                         x: UnsafePointer<Float>, w: UnsafePointer<Float>, rstd: UnsafePointer<Float>, N: Int, D: Int) {
        withDoubleScratch(dw == nil ? 0 : D) { dwAcc in
            for r in 0..<N {
                let g = dout + r * D, xr = x + r * D, s = rstd[r]
                if dw != nil { for i in 0..<D { dwAcc[i] += Double(g[i] * xr[i] * s) } }
                if let dx {
                    let d = dx + r * D
                    let c = Float(RowReduce.dot3(g, w, xr, D) / Double(D)) * s * s * s
                    for i in 0..<D { d[i] += s * g[i] * w[i] - c * xr[i] }
                }
            }
            if let dw { for i in 0..<D { dw[i] += Float(dwAcc[i]) } }
        }
    }
}

/// RMSNorm over the last dim: x [..., D], weight [D].
public func rmsNorm(_ x: Tensor, weight: Tensor, eps: Float = 1e-6) -> Tensor {
    let D = x.rank > 0 ? x.dim(-1) : 0
    guard x.rank >= 1, weight.shape == [D] else {
        shapeFailure(ShapeError("rmsNorm", "input \(describe(x.shape)) needs weight [\(D)], got \(describe(weight.shape))"))
    }
    let xc = x.contiguousData(), wc = weight.contiguousData()
    let N = x.count / max(D, 1)
    let out = Tensor(empty: x.shape), rstd = Tensor(empty: [N])
    RMSNormKernel.forward(out: out.ptr, rstd: rstd.ptr, x: xc.ptr, w: wc.ptr, N: N, D: D, eps: eps)
    return Autograd.record("rmsNorm", out, inputs: [x, weight]) { _, g in
        let gc = g.contiguousData()
        RMSNormKernel.backward(dx: x.requiresGrad ? x.gradBuffer().ptr : nil,
                               dw: weight.requiresGrad ? weight.gradBuffer().ptr : nil,
                               dout: gc.ptr, x: xc.ptr, w: wc.ptr, rstd: rstd.ptr, N: N, D: D)
    }
}

// MARK: - LayerNorm (last dim) and LayerNorm2d (channels)

/// y = (x - mean) * rstd * w + b, with the biased variance (torch.nn.functional.layer_norm).
/// The rows kernels normalise contiguous rows ([N, D]); the channel kernels normalise over C for every
/// pixel of [B, C, P] (P = H*W), walking the channels outermost so memory is read in order.
enum LayerNormKernel {
    /// out [N, D], mean [N] and rstd [N] (saved), x [N, D], w [D] or nil (1), b [D] or nil (0)
    static func forwardRows(out: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Float>,
                            rstd: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>?,
                            b: UnsafePointer<Float>?, N: Int, D: Int, eps: Float) {
        for r in 0..<N {
            let xr = x + r * D, o = out + r * D
            let mu = Float(RowReduce.sum(xr, D) / Double(D))
            let variance = Float(RowReduce.centeredSquares(xr, mu, D) / Double(D))
            let s = 1 / (variance + eps).squareRoot()
            mean[r] = mu
            rstd[r] = s
            for i in 0..<D {
                var y = (xr[i] - mu) * s
                if let w { y *= w[i] }
                if let b { y += b[i] }
                o[i] = y
            }
        }
    }

    /// dx [N, D] (+=, optional), dw [D] (+=, optional), db [D] (+=, optional), dout [N, D], x [N, D],
    /// w [D] or nil, mean [N], rstd [N], scratch [D]
    ///   xhat = (x - mean) s, dxhat = g w,  dx = s (dxhat - mean(dxhat) - xhat mean(dxhat xhat))
    static func backwardRows(dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>?,
                             db: UnsafeMutablePointer<Float>?, dout: UnsafePointer<Float>, x: UnsafePointer<Float>,
                             w: UnsafePointer<Float>?, mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
                             N: Int, D: Int) {
        let xhat = UnsafeMutablePointer<Float>.allocate(capacity: max(D, 1))
        let dxhat = UnsafeMutablePointer<Float>.allocate(capacity: max(D, 1))
        defer { xhat.deallocate(); dxhat.deallocate() }
        withDoubleScratch(2 * D) { acc in
            let dwAcc = acc, dbAcc = acc + D
            for r in 0..<N {
                let g = dout + r * D, xr = x + r * D, mu = mean[r], s = rstd[r]
                for i in 0..<D { xhat[i] = (xr[i] - mu) * s }
                if dw != nil { for i in 0..<D { dwAcc[i] += Double(g[i] * xhat[i]) } }
                if db != nil { for i in 0..<D { dbAcc[i] += Double(g[i]) } }
                guard let dx else { continue }
                if let w { for i in 0..<D { dxhat[i] = g[i] * w[i] } } else { dxhat.update(from: g, count: D) }
                let m1 = Float(RowReduce.sum(dxhat, D) / Double(D))
                let m2 = Float(RowReduce.dot(dxhat, xhat, D) / Double(D))
                let d = dx + r * D
                for i in 0..<D { d[i] += s * (dxhat[i] - m1 - xhat[i] * m2) }
            }
            if let dw { for i in 0..<D { dw[i] += Float(dwAcc[i]) } }
            if let db { for i in 0..<D { db[i] += Float(dbAcc[i]) } }
        }
    }

    /// out [B, C, P], mean [B, P] and rstd [B, P] (saved), x [B, C, P], w [C] or nil, b [C] or nil
    static func forwardChannels(out: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Float>,
                                rstd: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: UnsafePointer<Float>?,
                                b: UnsafePointer<Float>?, B: Int, C: Int, P: Int, eps: Float) {
        withDoubleScratch(P) { acc in
            for bi in 0..<B {
                let xb = x + bi * C * P, ob = out + bi * C * P, mb = mean + bi * P, sb = rstd + bi * P
                acc.update(repeating: 0, count: P)
                for c in 0..<C { let xc = xb + c * P; for p in 0..<P { acc[p] += Double(xc[p]) } }
                for p in 0..<P { mb[p] = Float(acc[p] / Double(C)) }
                acc.update(repeating: 0, count: P)
                for c in 0..<C {
                    let xc = xb + c * P
                    for p in 0..<P { let d = Double(xc[p] - mb[p]); acc[p] += d * d }
                }
                for p in 0..<P { sb[p] = 1 / (Float(acc[p] / Double(C)) + eps).squareRoot() }
                for c in 0..<C {
                    let xc = xb + c * P, oc = ob + c * P
                    let wc = w?[c] ?? 1, bc = b?[c] ?? 0
                    for p in 0..<P { oc[p] = (xc[p] - mb[p]) * sb[p] * wc + bc }
                }
            }
        }
    }

    /// dx [B, C, P] (+=, optional), dw [C] (+=, optional), db [C] (+=, optional), dout [B, C, P],
    /// x [B, C, P], w [C] or nil, mean [B, P], rstd [B, P]
    static func backwardChannels(dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>?,
                                 db: UnsafeMutablePointer<Float>?, dout: UnsafePointer<Float>, x: UnsafePointer<Float>,
                                 w: UnsafePointer<Float>?, mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
                                 B: Int, C: Int, P: Int) {
        withDoubleScratch(2 * P + 2 * C) { acc in
            let m1 = acc, m2 = acc + P, dwAcc = acc + 2 * P, dbAcc = acc + 2 * P + C
            for bi in 0..<B {
                let xb = x + bi * C * P, gb = dout + bi * C * P, mb = mean + bi * P, sb = rstd + bi * P
                m1.update(repeating: 0, count: 2 * P)
                for c in 0..<C {
                    let xc = xb + c * P, gc = gb + c * P, wc = w?[c] ?? 1
                    var sw = 0.0, sbias = 0.0
                    for p in 0..<P {
                        let xhat = (xc[p] - mb[p]) * sb[p]
                        let dxhat = gc[p] * wc
                        m1[p] += Double(dxhat)
                        m2[p] += Double(dxhat * xhat)
                        sw += Double(gc[p] * xhat)
                        sbias += Double(gc[p])
                    }
                    dwAcc[c] += sw
                    dbAcc[c] += sbias
                }
                guard let dx else { continue }
                let dxb = dx + bi * C * P
                let invC = 1 / Double(C)
                for c in 0..<C {
                    let xc = xb + c * P, gc = gb + c * P, dc = dxb + c * P, wc = w?[c] ?? 1
                    for p in 0..<P {
                        let xhat = (xc[p] - mb[p]) * sb[p]
                        dc[p] += sb[p] * (gc[p] * wc - Float(m1[p] * invC) - xhat * Float(m2[p] * invC))
                    }
                }
            }
            if let dw { for c in 0..<C { dw[c] += Float(dwAcc[c]) } }
            if let db { for c in 0..<C { db[c] += Float(dbAcc[c]) } }
        }
    }
}

private func checkAffine(_ op: String, _ x: Tensor, _ n: Int, _ weight: Tensor?, _ bias: Tensor?, what: String) {
    for (name, p) in [("weight", weight), ("bias", bias)] {
        if let p, p.shape != [n] {
            shapeFailure(ShapeError(op, "input \(describe(x.shape)) needs \(name) [\(n)] (\(what)), got \(describe(p.shape))"))
        }
    }
}

/// LayerNorm over the last dim: x [..., D], weight [D] and bias [D] (either may be nil).
public func layerNorm(_ x: Tensor, weight: Tensor?, bias: Tensor?, eps: Float = 1e-5) -> Tensor {
    guard x.rank >= 1 else { shapeFailure(ShapeError("layerNorm", "input \(describe(x.shape)) has no last dim")) }
    let D = x.dim(-1)
    checkAffine("layerNorm", x, D, weight, bias, what: "the last dim")
    let xc = x.contiguousData(), wc = weight?.contiguousData(), bc = bias?.contiguousData()
    let N = x.count / max(D, 1)
    let out = Tensor(empty: x.shape), mean = Tensor(empty: [N]), rstd = Tensor(empty: [N])
    LayerNormKernel.forwardRows(out: out.ptr, mean: mean.ptr, rstd: rstd.ptr, x: xc.ptr, w: wc?.ptr, b: bc?.ptr,
                                N: N, D: D, eps: eps)
    return Autograd.record("layerNorm", out, inputs: [x] + [weight, bias].compactMap { $0 }) { _, g in
        let gc = g.contiguousData()
        LayerNormKernel.backwardRows(dx: x.requiresGrad ? x.gradBuffer().ptr : nil,
                                     dw: weight?.requiresGrad == true ? weight!.gradBuffer().ptr : nil,
                                     db: bias?.requiresGrad == true ? bias!.gradBuffer().ptr : nil,
                                     dout: gc.ptr, x: xc.ptr, w: wc?.ptr, mean: mean.ptr, rstd: rstd.ptr, N: N, D: D)
    }
}

/// SAM's LayerNorm2d: x [B, C, H, W] normalised over C at every pixel; weight [C], bias [C].
public func layerNorm2d(_ x: Tensor, weight: Tensor?, bias: Tensor?, eps: Float = 1e-6) -> Tensor {
    guard x.rank == 4 else { shapeFailure(ShapeError("layerNorm2d", "input \(describe(x.shape)) is not [B, C, H, W]")) }
    let B = x.dim(0), C = x.dim(1), P = x.dim(2) * x.dim(3)
    checkAffine("layerNorm2d", x, C, weight, bias, what: "the channels")
    let xc = x.contiguousData(), wc = weight?.contiguousData(), bc = bias?.contiguousData()
    let out = Tensor(empty: x.shape), mean = Tensor(empty: [B, P]), rstd = Tensor(empty: [B, P])
    LayerNormKernel.forwardChannels(out: out.ptr, mean: mean.ptr, rstd: rstd.ptr, x: xc.ptr, w: wc?.ptr, b: bc?.ptr,
                                    B: B, C: C, P: P, eps: eps)
    return Autograd.record("layerNorm2d", out, inputs: [x] + [weight, bias].compactMap { $0 }) { _, g in
        let gc = g.contiguousData()
        LayerNormKernel.backwardChannels(dx: x.requiresGrad ? x.gradBuffer().ptr : nil,
                                         dw: weight?.requiresGrad == true ? weight!.gradBuffer().ptr : nil,
                                         db: bias?.requiresGrad == true ? bias!.gradBuffer().ptr : nil,
                                         dout: gc.ptr, x: xc.ptr, w: wc?.ptr, mean: mean.ptr, rstd: rstd.ptr,
                                         B: B, C: C, P: P)
    }
}
