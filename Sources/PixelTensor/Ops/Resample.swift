// Spatial resampling of NCHW tensors: bilinear resize (torch.nn.functional.interpolate, mode 'bilinear',
// align_corners=False, antialias=False, given an output size) and average pooling without padding.
//
// Bilinear resize is separable: every output row oh reads input rows i0, i1 with weights l0, l1, every
// output column ow reads input columns j0, j1 with weights m0, m1, and
//   out[oh, ow] = l0 (m0 x[i0, j0] + m1 x[i0, j1]) + l1 (m0 x[i1, j0] + m1 x[i1, j1]).
// The indices and weights follow PyTorch's CPU kernel exactly, in fp32 (see ATen/native/UpSample.h):
//   scale = in / out;  src = max(scale (dst + 0.5) - 0.5, 0);  i0 = min(floor(src), in - 1);
//   l1 = clamp(src - i0, 0, 1);  l0 = 1 - l1;  i1 = i0 + (i0 < in - 1 ? 1 : 0)
// and a copy (i0 = i1 = dst, l0 = 1, l1 = 0) when in == out. PyTorch's x86 AVX2/AVX-512 kernels are
// compiled with FMA contraction, so `scale (dst + 0.5) - 0.5` is one fused multiply-add there; we fuse it
// too (without it, src can differ in the last bit, which shows as ~4e-6 errors at 128 -> 448). The two
// interpolation sums are fused the same way (m0 x0 + (m1 x1)), which matches PyTorch to within 1-2 ulp.

/// Source indices and weights of one resized axis.
struct LinearTaps {
    var i0: [Int], i1: [Int]
    var l0: [Float], l1: [Float]

    init(input: Int, output: Int) {
        i0 = [Int](repeating: 0, count: output)
        i1 = i0
        l0 = [Float](repeating: 1, count: output)
        l1 = [Float](repeating: 0, count: output)
        if input == output {
            for d in 0..<output { i0[d] = d; i1[d] = d }
            return
        }
        let scale = Float(input) / Float(output)
        for d in 0..<output {
            var src = (-0.5 as Float).addingProduct(scale, Float(d) + 0.5)
            if src < 0 { src = 0 }
            let lo = min(Int(src.rounded(.down)), input - 1)
            let lambda = min(max(src - Float(lo), 0), 1)
            i0[d] = lo
            i1[d] = lo + (lo < input - 1 ? 1 : 0)
            l1[d] = lambda
            l0[d] = 1 - lambda
        }
    }
}

enum BilinearKernel {
    /// Two passes with the same arithmetic as the direct formula: every input row used is first interpolated
    /// across columns once (t[i, ow] = m1 x[i, j1] + m0 x[i, j0], fused), then each output row combines two
    /// of those rows (b t[i1, ow] + a t[i0, ow], fused). Upsampling 224 -> 480 rows computes each column
    /// interpolation once instead of ~4 times. Both passes split rows over threads (no shared writes).
    static func forward(_ out: UnsafeMutablePointer<Float>, // [P, OH, OW], P = N*C planes
                        _ x: UnsafePointer<Float>,          // [P, H, W]
                        P: Int, H: Int, W: Int, OH: Int, OW: Int, _ rows: LinearTaps, _ cols: LinearTaps) {
        // which input rows some output row reads
        var used = [Bool](repeating: false, count: H)
        for oh in 0..<OH { used[rows.i0[oh]] = true; used[rows.i1[oh]] = true }
        let tmp = UnsafeMutablePointer<Float>.allocate(capacity: max(P * H * OW, 1))
        defer { tmp.deallocate() }
        used.withUnsafeBufferPointer { used in
        rows.i0.withUnsafeBufferPointer { ri0 in rows.i1.withUnsafeBufferPointer { ri1 in
        rows.l0.withUnsafeBufferPointer { rl0 in rows.l1.withUnsafeBufferPointer { rl1 in
        cols.i0.withUnsafeBufferPointer { cj0 in cols.i1.withUnsafeBufferPointer { cj1 in
        cols.l0.withUnsafeBufferPointer { cm0 in cols.l1.withUnsafeBufferPointer { cm1 in
            Parallel.forRows(P * H, rowCost: 24 * OW) { lo, hi in
                for r in lo..<hi where used[r % H] {
                    let src = x + r * W, t = tmp + r * OW
                    for ow in 0..<OW {
                        t[ow] = (cm1[ow] * src[cj1[ow]]).addingProduct(cm0[ow], src[cj0[ow]])
                    }
                }
            }
            Parallel.forRows(P * OH, rowCost: 12 * OW) { lo, hi in
                for r in lo..<hi {
                    let p = r / OH, oh = r % OH
                    let t0 = tmp + (p * H + ri0[oh]) * OW, t1 = tmp + (p * H + ri1[oh]) * OW
                    let a = rl0[oh], b = rl1[oh]
                    let d = out + r * OW
                    for ow in 0..<OW { d[ow] = (b * t1[ow]).addingProduct(a, t0[ow]) }
                }
            }
        }}}}}}}}}
    }

    /// dx += the adjoint of forward applied to dout.
    static func backward(_ dx: UnsafeMutablePointer<Float>, // [P, H, W]
                         _ dout: UnsafePointer<Float>,      // [P, OH, OW]
                         P: Int, H: Int, W: Int, OH: Int, OW: Int, _ rows: LinearTaps, _ cols: LinearTaps) {
        rows.i0.withUnsafeBufferPointer { ri0 in rows.i1.withUnsafeBufferPointer { ri1 in
        rows.l0.withUnsafeBufferPointer { rl0 in rows.l1.withUnsafeBufferPointer { rl1 in
        cols.i0.withUnsafeBufferPointer { cj0 in cols.i1.withUnsafeBufferPointer { cj1 in
        cols.l0.withUnsafeBufferPointer { cm0 in cols.l1.withUnsafeBufferPointer { cm1 in
            Parallel.forRows(P, rowCost: 8 * OH * OW) { plo, phi in
            for p in plo..<phi {
                let plane = dx + p * H * W
                let src = dout + p * OH * OW
                for oh in 0..<OH {
                    let r0 = plane + ri0[oh] * W, r1 = plane + ri1[oh] * W
                    let a = rl0[oh], b = rl1[oh]
                    let s = src + oh * OW
                    for ow in 0..<OW {
                        let j0 = cj0[ow], j1 = cj1[ow], m0 = cm0[ow], m1 = cm1[ow]
                        let ga = a * s[ow], gb = b * s[ow]
                        r0[j0] += ga * m0
                        r0[j1] += ga * m1
                        r1[j0] += gb * m0
                        r1[j1] += gb * m1
                    }
                }
            }
            }
        }}}}}}}}
    }
}

enum AvgPoolKernel {
    /// out[p, oh, ow] = mean of x[p, oh*sH ..< oh*sH + kH, ow*sW ..< ow*sW + kW]
    static func forward(_ out: UnsafeMutablePointer<Float>, // [P, OH, OW]
                        _ x: UnsafePointer<Float>,          // [P, H, W]
                        P: Int, H: Int, W: Int, OH: Int, OW: Int, kH: Int, kW: Int, sH: Int, sW: Int) {
        let inv = 1 / Float(kH * kW)
        for p in 0..<P {
            let plane = x + p * H * W
            let dst = out + p * OH * OW
            for oh in 0..<OH {
                for ow in 0..<OW {
                    var s: Float = 0
                    for ki in 0..<kH {
                        let row = plane + (oh * sH + ki) * W + ow * sW
                        for kj in 0..<kW { s += row[kj] }
                    }
                    dst[oh * OW + ow] = s * inv
                }
            }
        }
    }

    /// dx[p, window of (oh, ow)] += dout[p, oh, ow] / (kH kW)
    static func backward(_ dx: UnsafeMutablePointer<Float>, // [P, H, W]
                         _ dout: UnsafePointer<Float>,      // [P, OH, OW]
                         P: Int, H: Int, W: Int, OH: Int, OW: Int, kH: Int, kW: Int, sH: Int, sW: Int) {
        let inv = 1 / Float(kH * kW)
        for p in 0..<P {
            let plane = dx + p * H * W
            let src = dout + p * OH * OW
            for oh in 0..<OH {
                for ow in 0..<OW {
                    let gv = src[oh * OW + ow] * inv
                    for ki in 0..<kH {
                        let row = plane + (oh * sH + ki) * W + ow * sW
                        for kj in 0..<kW { row[kj] += gv }
                    }
                }
            }
        }
    }
}

// MARK: Tensor-level ops

/// torch.nn.functional.interpolate(x, size=(height, width), mode='bilinear', align_corners=False) for
/// x [N, C, H, W] -> [N, C, height, width]; up- or down-sampling, any ratio (no antialiasing).
public func resizeBilinear(_ x: Tensor, height OH: Int, width OW: Int) -> Tensor {
    guard x.rank == 4 else {
        shapeFailure(ShapeError("resize_bilinear", "input \(describe(x.shape)) must be NCHW (rank 4); size [\(OH), \(OW)]"))
    }
    let N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3)
    guard OH > 0 && OW > 0 && H > 0 && W > 0 else {
        shapeFailure(ShapeError("resize_bilinear", "input \(describe(x.shape)) and size [\(OH), \(OW)] must be non-empty"))
    }
    let rows = LinearTaps(input: H, output: OH), cols = LinearTaps(input: W, output: OW)
    let xc = x.contiguousData()
    let out = Tensor(empty: [N, C, OH, OW])
    BilinearKernel.forward(out.ptr, xc.ptr, P: N * C, H: H, W: W, OH: OH, OW: OW, rows, cols)
    return Autograd.record("resize_bilinear", out, inputs: [x]) { _, g in
        let gc = g.contiguousData()
        BilinearKernel.backward(x.gradBuffer().ptr, gc.ptr, P: N * C, H: H, W: W, OH: OH, OW: OW, rows, cols)
    }
}

/// torch.nn.functional.avg_pool2d(x, kernel, stride) with no padding and ceil_mode=False:
/// x [N, C, H, W] -> [N, C, (H - kH) / sH + 1, (W - kW) / sW + 1]. `stride` defaults to the kernel.
public func avgPool2d(_ x: Tensor, kernel: (Int, Int), stride: (Int, Int)? = nil) -> Tensor {
    let (kH, kW) = kernel
    let (sH, sW) = stride ?? kernel
    guard x.rank == 4 else {
        shapeFailure(ShapeError("avg_pool2d", "input \(describe(x.shape)) must be NCHW (rank 4); kernel (\(kH), \(kW))"))
    }
    let N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3)
    guard kH > 0 && kW > 0 && sH > 0 && sW > 0 && kH <= H && kW <= W else {
        shapeFailure(ShapeError("avg_pool2d", "kernel (\(kH), \(kW)) stride (\(sH), \(sW)) do not fit input \(describe(x.shape))"))
    }
    let OH = (H - kH) / sH + 1, OW = (W - kW) / sW + 1
    let xc = x.contiguousData()
    let out = Tensor(empty: [N, C, OH, OW])
    AvgPoolKernel.forward(out.ptr, xc.ptr, P: N * C, H: H, W: W, OH: OH, OW: OW, kH: kH, kW: kW, sH: sH, sW: sW)
    return Autograd.record("avg_pool2d", out, inputs: [x]) { _, g in
        let gc = g.contiguousData()
        AvgPoolKernel.backward(x.gradBuffer().ptr, gc.ptr, P: N * C, H: H, W: W, OH: OH, OW: OW, kH: kH, kW: kW, sH: sH, sW: sW)
    }
}

/// avg_pool2d with a square kernel (stride defaults to the kernel).
public func avgPool2d(_ x: Tensor, kernel: Int, stride: Int? = nil) -> Tensor {
    avgPool2d(x, kernel: (kernel, kernel), stride: stride.map { ($0, $0) })
}
