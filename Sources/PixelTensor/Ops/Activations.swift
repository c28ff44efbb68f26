import Foundation

// Activations: ReLU, sigmoid, SiLU (LLaMA MLP), quick_gelu (CLIP ViT), exact erf GELU (SAM's MLPs,
// torch's default approximate='none') and SwiGLU = silu(gate) * up (LLaMA's gated MLP, two inputs).
// Each op: forward kernel and backward kernel side by side on raw pointers; backward kernels accumulate.

/// Numerically stable logistic function (no overflow of exp for large |x|).
@inline(__always)
func stableSigmoid(_ x: Float) -> Float {
    if x >= 0 { return 1 / (1 + Foundation.exp(-x)) }
    let e = Foundation.exp(x)
    return e / (1 + e)
}

enum ReLUKernel {
    /// out [n], x [n]
    static func forward(_ out: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ n: Int) {
        for i in 0..<n { out[i] = x[i] > 0 ? x[i] : 0 }
    }
    /// dx [n] (+=), dout [n], x [n];  the subgradient at 0 is 0, as in torch
    static func backward(_ dx: UnsafeMutablePointer<Float>, _ dout: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ n: Int) {
        for i in 0..<n where x[i] > 0 { dx[i] += dout[i] }
    }
}

enum SigmoidKernel {
    typealias V = VectorMath.V
    /// out [n], x [n]
    static func forward(_ out: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ n: Int) {
        VectorMath.sigmoid(out, x, n)
    }
    /// dx [n] (+=), dout [n], y [n] (the forward output): dx = g y (1 - y)
    static func backward(_ dx: UnsafeMutablePointer<Float>, _ dout: UnsafePointer<Float>, _ y: UnsafePointer<Float>, _ n: Int) {
        VectorMath.map(dx, dx, dout, y, n, cost: 3) { d, g, y in d + g * y * (V(repeating: 1) - y) }
    }
}

/// x * sigmoid(alpha x): SiLU for alpha = 1, CLIP's quick_gelu for alpha = 1.702.
enum SiLUKernel {
    typealias V = VectorMath.V
    /// out [n], x [n]
    static func forward(_ out: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ n: Int, alpha: Float) {
        let a = V(repeating: alpha)
        VectorMath.map(out, x, n, cost: 22) { x in x * VectorMath.sigmoid(a * x) }
    }
    /// dx [n] (+=), dout [n], x [n]:  d/dx = s + alpha x s (1 - s),  s = sigmoid(alpha x)
    static func backward(_ dx: UnsafeMutablePointer<Float>, _ dout: UnsafePointer<Float>, _ x: UnsafePointer<Float>,
                         _ n: Int, alpha: Float) {
        let a = V(repeating: alpha)
        VectorMath.map(dx, dx, dout, x, n, cost: 26) { d, g, x in
            let ax = a * x
            let s = VectorMath.sigmoid(ax)
            return d + g * (s + ax * s * (V(repeating: 1) - s))
        }
    }
}

/// Exact GELU: 0.5 x (1 + erf(x / sqrt 2)).
enum GELUKernel {
    static let invSqrt2: Float = 0.70710678118654752
    static let invSqrt2Pi: Float = 0.39894228040143268

    /// out [n], x [n]
    /// (erf stays the libm scalar; long arrays are split over threads, element results unchanged)
    static func forward(_ out: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ n: Int) {
        Parallel.forChunks(n, cost: 40) { lo, hi in
            for i in lo..<hi { out[i] = 0.5 * x[i] * (1 + Foundation.erf(x[i] * invSqrt2)) }
        }
    }
    /// dx [n] (+=), dout [n], x [n]:  d/dx = Phi(x) + x phi(x)
    static func backward(_ dx: UnsafeMutablePointer<Float>, _ dout: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ n: Int) {
        Parallel.forChunks(n, cost: 60) { lo, hi in
            for i in lo..<hi {
                let v = x[i]
                let cdf = 0.5 * (1 + Foundation.erf(v * invSqrt2))
                let pdf = invSqrt2Pi * Foundation.exp(-0.5 * v * v)
                dx[i] += dout[i] * (cdf + v * pdf)
            }
        }
    }
}

/// out = silu(gate) * up.
enum SwiGLUKernel {
    typealias V = VectorMath.V
    /// out [n], gate [n], up [n]
    static func forward(_ out: UnsafeMutablePointer<Float>, _ gate: UnsafePointer<Float>, _ up: UnsafePointer<Float>, _ n: Int) {
        VectorMath.map(out, gate, up, n, cost: 22) { a, u in a * VectorMath.sigmoid(a) * u }
    }
    /// dgate [n] (+=, optional), dup [n] (+=, optional), dout [n], gate [n], up [n]
    static func backward(_ dgate: UnsafeMutablePointer<Float>?, _ dup: UnsafeMutablePointer<Float>?, _ dout: UnsafePointer<Float>,
                         _ gate: UnsafePointer<Float>, _ up: UnsafePointer<Float>, _ n: Int) {
        if let dup {
            VectorMath.map(dup, dup, dout, gate, n, cost: 22) { d, g, a in d + g * a * VectorMath.sigmoid(a) }
        }
        if let dgate {
            VectorMath.map(dgate, dgate, dout, gate, up, n, cost: 26) { d, g, a, u in
                let s = VectorMath.sigmoid(a)
                return d + g * u * (s + a * s * (V(repeating: 1) - s))
            }
        }
    }
}

/// Records a one-input activation: `fwd(out, x, n)` now, `bwd(dx, dout, x, out, n)` on backward.
private func activation(_ name: String, _ x: Tensor,
                        _ fwd: (UnsafeMutablePointer<Float>, UnsafePointer<Float>, Int) -> Void,
                        _ bwd: @escaping (UnsafeMutablePointer<Float>, UnsafePointer<Float>, UnsafePointer<Float>,
                                          UnsafePointer<Float>, Int) -> Void) -> Tensor {
    let xc = x.contiguousData()
    let out = Tensor(empty: x.shape)
    let n = x.count
    fwd(out.ptr, xc.ptr, n)
    return Autograd.record(name, out, inputs: [x]) { out, g in
        let gc = g.contiguousData()
        bwd(x.gradBuffer().ptr, gc.ptr, xc.ptr, out.ptr, n)
    }
}

extension Tensor {
    public func relu() -> Tensor {
        activation("relu", self, { ReLUKernel.forward($0, $1, $2) }, { dx, g, x, _, n in ReLUKernel.backward(dx, g, x, n) })
    }

    public func sigmoid() -> Tensor {
        activation("sigmoid", self, { SigmoidKernel.forward($0, $1, $2) }, { dx, g, _, y, n in SigmoidKernel.backward(dx, g, y, n) })
    }

    /// x * sigmoid(x) (torch.nn.functional.silu).
    public func silu() -> Tensor {
        activation("silu", self, { SiLUKernel.forward($0, $1, $2, alpha: 1) },
                   { dx, g, x, _, n in SiLUKernel.backward(dx, g, x, n, alpha: 1) })
    }

    /// x * sigmoid(1.702 x) (CLIP's QuickGELU).
    public func quickGelu() -> Tensor {
        activation("quickGelu", self, { SiLUKernel.forward($0, $1, $2, alpha: 1.702) },
                   { dx, g, x, _, n in SiLUKernel.backward(dx, g, x, n, alpha: 1.702) })
    }

    /// Exact erf GELU (torch.nn.functional.gelu with approximate='none').
    public func gelu() -> Tensor {
        activation("gelu", self, { GELUKernel.forward($0, $1, $2) }, { dx, g, x, _, n in GELUKernel.backward(dx, g, x, n) })
    }
}

/// silu(gate) * up, for gate and up of the same shape (LLaMA's MLP: down(silu(gate(x)) * up(x))).
public func swiglu(_ gate: Tensor, _ up: Tensor) -> Tensor {
    guard gate.shape == up.shape else {
        shapeFailure(ShapeError("swiglu", "gate \(describe(gate.shape)) and up \(describe(up.shape)) differ"))
    }
    let gc = gate.contiguousData(), uc = up.contiguousData()
    let n = gate.count
    let out = Tensor(empty: gate.shape)
    SwiGLUKernel.forward(out.ptr, gc.ptr, uc.ptr, n)
    return Autograd.record("swiglu", out, inputs: [gate, up]) { _, g in
        let dc = g.contiguousData()
        SwiGLUKernel.backward(gate.requiresGrad ? gate.gradBuffer().ptr : nil, up.requiresGrad ? up.gradBuffer().ptr : nil,
                              dc.ptr, gc.ptr, uc.ptr, n)
    }
}
