// 2-D convolution and transposed convolution on NCHW tensors, as im2col + OpenBLAS sgemm (PyTorch
// conventions: conv weight [O, C, kH, kW], transposed-conv weight [C, O, kH, kW], zero padding).
//
// conv2d, per image n (col = im2col(x[n]) is [C*kH*kW, OH*OW]):
//   forward   Y[n]  = W col + b              sgemm(N, N)      W viewed as [O, C*kH*kW]
//   backward  dW   += dY[n] col^T            sgemm(N, T, beta 1)
//             dcol  = W^T dY[n]              sgemm(T, N); dX[n] += col2im(dcol)
//             db   += sum over n, oh, ow of dY
// conv_transpose2d is the adjoint of conv2d with the same geometry, per image n (X[n] is [C, H*W]):
//   forward   col   = W^T X[n]               sgemm(T, N)      W viewed as [C, O*kH*kW]
//             Y[n]  = col2im(col) + b
//   backward  dcol  = im2col(dY[n])
//             dX[n] += W dcol                sgemm(N, N, beta 1)
//             dW   += X[n] dcol^T            sgemm(N, T, beta 1)
//             db   += sum over n, oh, ow of dY
// A 1x1 convolution with stride 1 and no padding skips im2col: col is x[n] itself.

/// Geometry of a 2-D convolution window: kernel, stride and zero padding per axis.
public struct Conv2dGeometry: Equatable, Sendable {
    public var kH: Int, kW: Int
    public var sH: Int, sW: Int
    public var pH: Int, pW: Int

    public init(kernel: (Int, Int), stride: (Int, Int), padding: (Int, Int)) {
        (kH, kW) = kernel
        (sH, sW) = stride
        (pH, pW) = padding
    }

    /// Output size of a convolution over an H x W image (floor, as PyTorch).
    func convOutput(_ H: Int, _ W: Int) -> (Int, Int) {
        ((H + 2 * pH - kH) / sH + 1, (W + 2 * pW - kW) / sW + 1)
    }

    /// Output size of a transposed convolution over an H x W image.
    func transposedOutput(_ H: Int, _ W: Int) -> (Int, Int) {
        ((H - 1) * sH - 2 * pH + kH, (W - 1) * sW - 2 * pW + kW)
    }

    /// True when im2col would copy the image unchanged (1x1, stride 1, no padding).
    var isPointwise: Bool { kH == 1 && kW == 1 && sH == 1 && sW == 1 && pH == 0 && pW == 0 }
}

/// im2col / col2im and the bias kernels shared by conv2d and conv_transpose2d.
enum Im2Col {
    /// col[(c*kH + ki)*kW + kj, oh*OW + ow] = img[c, oh*sH - pH + ki, ow*sW - pW + kj], or 0 in the padding.
    static func im2col(_ img: UnsafePointer<Float>,       // [C, H, W]
                       _ col: UnsafeMutablePointer<Float>, // [C*kH*kW, OH*OW]
                       C: Int, H: Int, W: Int, OH: Int, OW: Int, _ g: Conv2dGeometry) {
        var row = col
        for c in 0..<C {
            let plane = img + c * H * W
            for ki in 0..<g.kH {
                for kj in 0..<g.kW {
                    // valid output columns: 0 <= ow*sW - pW + kj < W
                    let (owLo, owHi) = validRange(offset: kj - g.pW, stride: g.sW, size: W, count: OW)
                    for oh in 0..<OH {
                        let ih = oh * g.sH - g.pH + ki
                        let dst = row + oh * OW
                        if ih < 0 || ih >= H || owLo >= owHi {
                            dst.update(repeating: 0, count: OW)
                            continue
                        }
                        if owLo > 0 { dst.update(repeating: 0, count: owLo) }
                        if owHi < OW { (dst + owHi).update(repeating: 0, count: OW - owHi) }
                        let src = plane + ih * W + kj - g.pW
                        if g.sW == 1 {
                            (dst + owLo).update(from: src + owLo, count: owHi - owLo)
                        } else {
                            for ow in owLo..<owHi { dst[ow] = src[ow * g.sW] }
                        }
                    }
                    row += OH * OW
                }
            }
        }
    }

    /// The adjoint of im2col: img[c, ih, iw] += every col entry im2col read from it.
    static func col2im(_ col: UnsafePointer<Float>,       // [C*kH*kW, OH*OW]
                       _ img: UnsafeMutablePointer<Float>, // [C, H, W], accumulated into
                       C: Int, H: Int, W: Int, OH: Int, OW: Int, _ g: Conv2dGeometry) {
        var row = col
        for c in 0..<C {
            let plane = img + c * H * W
            for ki in 0..<g.kH {
                for kj in 0..<g.kW {
                    let (owLo, owHi) = validRange(offset: kj - g.pW, stride: g.sW, size: W, count: OW)
                    if owLo < owHi {
                        for oh in 0..<OH {
                            let ih = oh * g.sH - g.pH + ki
                            if ih < 0 || ih >= H { continue }
                            let src = row + oh * OW
                            let dst = plane + ih * W + kj - g.pW
                            if g.sW == 1 {
                                for ow in owLo..<owHi { dst[ow] += src[ow] }
                            } else {
                                for ow in owLo..<owHi { dst[ow * g.sW] += src[ow] }
                            }
                        }
                    }
                    row += OH * OW
                }
            }
        }
    }

    /// The output positions o in 0..<count with 0 <= o*stride + offset < size, as lo..<hi.
    @inline(__always)
    static func validRange(offset: Int, stride: Int, size: Int, count: Int) -> (Int, Int) {
        // smallest o with o*stride >= -offset; largest o with o*stride + offset <= size - 1
        let lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride
        let last = size - 1 - offset
        let hi = last < 0 ? 0 : last / stride + 1
        return (min(lo, count), max(min(hi, count), min(lo, count)))
    }

    /// out[n, o, :] += bias[o]
    static func addBias(_ out: UnsafeMutablePointer<Float>, // [N, O, P]
                        _ bias: UnsafePointer<Float>,      // [O]
                        N: Int, O: Int, P: Int) {
        for n in 0..<N {
            for o in 0..<O {
                let row = out + (n * O + o) * P, b = bias[o]
                for p in 0..<P { row[p] += b }
            }
        }
    }

    /// dbias[o] += sum over n, p of dout[n, o, p]
    static func biasBackward(_ dbias: UnsafeMutablePointer<Float>, // [O]
                             _ dout: UnsafePointer<Float>,         // [N, O, P]
                             N: Int, O: Int, P: Int) {
        for o in 0..<O {
            var s: Double = 0
            for n in 0..<N {
                let row = dout + (n * O + o) * P
                var r: Float = 0
                for p in 0..<P { r += row[p] }
                s += Double(r)
            }
            dbias[o] += Float(s)
        }
    }
}

enum Conv2dKernel {
    /// out[n] = W im2col(x[n]) (+ bias added by the caller).
    static func forward(_ out: UnsafeMutablePointer<Float>, // [N, O, OH, OW]
                        _ x: UnsafePointer<Float>,          // [N, C, H, W]
                        _ w: UnsafePointer<Float>,          // [O, C, kH, kW]
                        N: Int, C: Int, H: Int, W: Int, O: Int, OH: Int, OW: Int, _ g: Conv2dGeometry) {
        let K = C * g.kH * g.kW, P = OH * OW
        let col = g.isPointwise ? nil : UnsafeMutablePointer<Float>.allocate(capacity: K * P)
        defer { col?.deallocate() }
        for n in 0..<N {
            let xn = x + n * C * H * W
            var b: UnsafePointer<Float> = xn
            if let col { Im2Col.im2col(xn, col, C: C, H: H, W: W, OH: OH, OW: OW, g); b = UnsafePointer(col) }
            BLAS.sgemm(transA: false, transB: false, M: O, N: P, K: K, A: w, lda: K, B: b, ldb: P,
                       beta: 0, C: out + n * O * P, ldc: P)
        }
    }

    /// dx += col2im(W^T dout[n]) when dx != nil; dw += dout[n] im2col(x[n])^T when dw != nil.
    static func backward(_ dx: UnsafeMutablePointer<Float>?, // [N, C, H, W]
                         _ dw: UnsafeMutablePointer<Float>?, // [O, C, kH, kW]
                         _ dout: UnsafePointer<Float>,       // [N, O, OH, OW]
                         _ x: UnsafePointer<Float>,          // [N, C, H, W]
                         _ w: UnsafePointer<Float>,          // [O, C, kH, kW]
                         N: Int, C: Int, H: Int, W: Int, O: Int, OH: Int, OW: Int, _ g: Conv2dGeometry) {
        let K = C * g.kH * g.kW, P = OH * OW
        let col = g.isPointwise ? nil : UnsafeMutablePointer<Float>.allocate(capacity: K * P)
        defer { col?.deallocate() }
        for n in 0..<N {
            let gn = dout + n * O * P
            if let dw {
                let xn = x + n * C * H * W
                var b: UnsafePointer<Float> = xn
                if let col { Im2Col.im2col(xn, col, C: C, H: H, W: W, OH: OH, OW: OW, g); b = UnsafePointer(col) }
                BLAS.sgemm(transA: false, transB: true, M: O, N: K, K: P, A: gn, lda: P, B: b, ldb: P,
                           beta: 1, C: dw, ldc: K)
            }
            if let dx {
                let dxn = dx + n * C * H * W
                if let col {
                    BLAS.sgemm(transA: true, transB: false, M: K, N: P, K: O, A: w, lda: K, B: gn, ldb: P,
                               beta: 0, C: col, ldc: P)
                    Im2Col.col2im(col, dxn, C: C, H: H, W: W, OH: OH, OW: OW, g)
                } else {
                    BLAS.sgemm(transA: true, transB: false, M: K, N: P, K: O, A: w, lda: K, B: gn, ldb: P,
                               beta: 1, C: dxn, ldc: P)
                }
            }
        }
    }
}

enum ConvTranspose2dKernel {
    /// out[n] = col2im(W^T x[n]) (+ bias added by the caller). `out` must be zeroed.
    static func forward(_ out: UnsafeMutablePointer<Float>, // [N, O, OH, OW], zero on entry
                        _ x: UnsafePointer<Float>,          // [N, C, H, W]
                        _ w: UnsafePointer<Float>,          // [C, O, kH, kW]
                        N: Int, C: Int, H: Int, W: Int, O: Int, OH: Int, OW: Int, _ g: Conv2dGeometry) {
        let K = O * g.kH * g.kW, P = H * W
        let col = UnsafeMutablePointer<Float>.allocate(capacity: K * P)
        defer { col.deallocate() }
        for n in 0..<N {
            BLAS.sgemm(transA: true, transB: false, M: K, N: P, K: C, A: w, lda: K, B: x + n * C * P, ldb: P,
                       beta: 0, C: col, ldc: P)
            // the output image plays the part of conv2d's input; the H x W input is the conv output grid
            Im2Col.col2im(col, out + n * O * OH * OW, C: O, H: OH, W: OW, OH: H, OW: W, g)
        }
    }

    /// dx += W im2col(dout[n]) when dx != nil; dw += x[n] im2col(dout[n])^T when dw != nil.
    static func backward(_ dx: UnsafeMutablePointer<Float>?, // [N, C, H, W]
                         _ dw: UnsafeMutablePointer<Float>?, // [C, O, kH, kW]
                         _ dout: UnsafePointer<Float>,       // [N, O, OH, OW]
                         _ x: UnsafePointer<Float>,          // [N, C, H, W]
                         _ w: UnsafePointer<Float>,          // [C, O, kH, kW]
                         N: Int, C: Int, H: Int, W: Int, O: Int, OH: Int, OW: Int, _ g: Conv2dGeometry) {
        let K = O * g.kH * g.kW, P = H * W
        let col = UnsafeMutablePointer<Float>.allocate(capacity: K * P)
        defer { col.deallocate() }
        for n in 0..<N {
            Im2Col.im2col(dout + n * O * OH * OW, col, C: O, H: OH, W: OW, OH: H, OW: W, g)
            if let dx {
                BLAS.sgemm(transA: false, transB: false, M: C, N: P, K: K, A: w, lda: K, B: col, ldb: P,
                           beta: 1, C: dx + n * C * P, ldc: P)
            }
            if let dw {
                BLAS.sgemm(transA: false, transB: true, M: C, N: K, K: P, A: x + n * C * P, lda: P, B: col, ldb: P,
                           beta: 1, C: dw, ldc: K)
            }
        }
    }
}

// MARK: Tensor-level ops

enum ConvShapes {
    static func check(_ op: String, _ x: Tensor, _ w: Tensor, _ bias: Tensor?, weightChannelsIn: Int,
                      outChannels: Int, _ g: Conv2dGeometry) throws {
        guard x.rank == 4 else {
            throw ShapeError(op, "input \(describe(x.shape)) must be NCHW (rank 4); weight \(describe(w.shape))")
        }
        guard w.rank == 4 else { throw ShapeError(op, "weight \(describe(w.shape)) must have rank 4; input \(describe(x.shape))") }
        guard g.sH > 0 && g.sW > 0 && g.pH >= 0 && g.pW >= 0 else {
            throw ShapeError(op, "stride (\(g.sH), \(g.sW)) must be positive and padding (\(g.pH), \(g.pW)) non-negative")
        }
        guard x.dim(1) == weightChannelsIn else {
            throw ShapeError(op, "input \(describe(x.shape)) has \(x.dim(1)) channels but weight \(describe(w.shape)) expects \(weightChannelsIn)")
        }
        if let bias, bias.shape != [outChannels] {
            throw ShapeError(op, "bias \(describe(bias.shape)) for weight \(describe(w.shape)) (expected [\(outChannels)])")
        }
    }
}

/// torch.nn.functional.conv2d: x [N, C, H, W], weight [O, C, kH, kW], bias [O] -> [N, O, OH, OW] with
/// OH = (H + 2 padding - kH) / stride + 1. Zero padding; no dilation or groups.
public func conv2d(_ x: Tensor, _ weight: Tensor, _ bias: Tensor? = nil,
                   stride: (Int, Int), padding: (Int, Int) = (0, 0)) -> Tensor {
    let g = Conv2dGeometry(kernel: (weight.rank == 4 ? weight.dim(2) : 0, weight.rank == 4 ? weight.dim(3) : 0),
                           stride: stride, padding: padding)
    checked {
        try ConvShapes.check("conv2d", x, weight, bias, weightChannelsIn: weight.rank == 4 ? weight.dim(1) : -1,
                             outChannels: weight.rank == 4 ? weight.dim(0) : -1, g)
    }
    let N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3), O = weight.dim(0)
    let (OH, OW) = g.convOutput(H, W)
    guard OH > 0 && OW > 0 else {
        shapeFailure(ShapeError("conv2d", "input \(describe(x.shape)) with padding (\(g.pH), \(g.pW)) is smaller than kernel \(describe(weight.shape))"))
    }
    let xc = x.contiguousData(), wc = weight.contiguousData()
    let out = Tensor(empty: [N, O, OH, OW])
    Conv2dKernel.forward(out.ptr, xc.ptr, wc.ptr, N: N, C: C, H: H, W: W, O: O, OH: OH, OW: OW, g)
    if let bias { Im2Col.addBias(out.ptr, bias.contiguousData().ptr, N: N, O: O, P: OH * OW) }
    var inputs = [x, weight]
    if let bias { inputs.append(bias) }
    return Autograd.record("conv2d", out, inputs: inputs) { _, gout in
        let gc = gout.contiguousData()
        if x.requiresGrad || weight.requiresGrad {
            Conv2dKernel.backward(x.requiresGrad ? x.gradBuffer().ptr : nil, weight.requiresGrad ? weight.gradBuffer().ptr : nil,
                                  gc.ptr, xc.ptr, wc.ptr, N: N, C: C, H: H, W: W, O: O, OH: OH, OW: OW, g)
        }
        if let bias, bias.requiresGrad {
            Im2Col.biasBackward(bias.gradBuffer().ptr, gc.ptr, N: N, O: O, P: OH * OW)
        }
    }
}

/// conv2d with the same stride and padding on both axes.
public func conv2d(_ x: Tensor, _ weight: Tensor, _ bias: Tensor? = nil, stride: Int = 1, padding: Int = 0) -> Tensor {
    conv2d(x, weight, bias, stride: (stride, stride), padding: (padding, padding))
}

/// torch.nn.functional.conv_transpose2d: x [N, C, H, W], weight [C, O, kH, kW] (as ConvTranspose2d
/// stores it), bias [O] -> [N, O, (H - 1) stride - 2 padding + kH, ...]. No output padding, dilation or groups.
public func convTranspose2d(_ x: Tensor, _ weight: Tensor, _ bias: Tensor? = nil,
                            stride: (Int, Int), padding: (Int, Int) = (0, 0)) -> Tensor {
    let g = Conv2dGeometry(kernel: (weight.rank == 4 ? weight.dim(2) : 0, weight.rank == 4 ? weight.dim(3) : 0),
                           stride: stride, padding: padding)
    checked {
        try ConvShapes.check("conv_transpose2d", x, weight, bias, weightChannelsIn: weight.rank == 4 ? weight.dim(0) : -1,
                             outChannels: weight.rank == 4 ? weight.dim(1) : -1, g)
    }
    let N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3), O = weight.dim(1)
    let (OH, OW) = g.transposedOutput(H, W)
    guard OH > 0 && OW > 0 else {
        shapeFailure(ShapeError("conv_transpose2d", "input \(describe(x.shape)) with weight \(describe(weight.shape)) and padding (\(g.pH), \(g.pW)) gives an empty output"))
    }
    let xc = x.contiguousData(), wc = weight.contiguousData()
    let out = Tensor.zeros([N, O, OH, OW])
    ConvTranspose2dKernel.forward(out.ptr, xc.ptr, wc.ptr, N: N, C: C, H: H, W: W, O: O, OH: OH, OW: OW, g)
    if let bias { Im2Col.addBias(out.ptr, bias.contiguousData().ptr, N: N, O: O, P: OH * OW) }
    var inputs = [x, weight]
    if let bias { inputs.append(bias) }
    return Autograd.record("conv_transpose2d", out, inputs: inputs) { _, gout in
        let gc = gout.contiguousData()
        if x.requiresGrad || weight.requiresGrad {
            ConvTranspose2dKernel.backward(x.requiresGrad ? x.gradBuffer().ptr : nil,
                                           weight.requiresGrad ? weight.gradBuffer().ptr : nil,
                                           gc.ptr, xc.ptr, wc.ptr, N: N, C: C, H: H, W: W, O: O, OH: OH, OW: OW, g)
        }
        if let bias, bias.requiresGrad {
            Im2Col.biasBackward(bias.gradBuffer().ptr, gc.ptr, N: N, O: O, P: OH * OW)
        }
    }
}

/// conv_transpose2d with the same stride and padding on both axes (SAM's upscaling: kernel 2, stride 2).
public func convTranspose2d(_ x: Tensor, _ weight: Tensor, _ bias: Tensor? = nil, stride: Int, padding: Int = 0) -> Tensor {
    convTranspose2d(x, weight, bias, stride: (stride, stride), padding: (padding, padding))
}
