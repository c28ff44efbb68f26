import Foundation
import PixelTensor

/// AdamW exactly as torch.optim.AdamW (foreach=False) computes it, on whole tensors. This is the
/// reference the ZeRO-sharded optimizer is tested against, and the optimizer of single-process runs.
///   p -= lr * wd * p
///   m = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
///   p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
public final class AdamW {
    public var lr: Float
    public let beta1: Float, beta2: Float, eps: Float, weightDecay: Float
    public private(set) var step = 0
    public let params: [Tensor]
    var m: [Tensor], v: [Tensor]

    public init(params: [Tensor], lr: Float, betas: (Float, Float) = (0.9, 0.999), eps: Float = 1e-8, weightDecay: Float = 0.01) {
        self.params = params
        self.lr = lr
        beta1 = betas.0; beta2 = betas.1
        self.eps = eps
        self.weightDecay = weightDecay
        m = params.map { Tensor.zeros($0.shape) }
        v = params.map { Tensor.zeros($0.shape) }
    }

    /// One update with the gradients in `.grad` (parameters without a gradient are skipped, as torch does).
    public func update() {
        step += 1
        let (stepSize, bc2Sqrt, decay) = AdamWKernel.constants(lr: lr, step: step, beta1: beta1, beta2: beta2, weightDecay: weightDecay)
        for (k, p) in params.enumerated() {
            guard let g = p.grad else { continue }
            precondition(p.isContiguous, "AdamW: parameter must be contiguous")
            AdamWKernel.update(p.ptr, g.contiguousData().ptr, m[k].ptr, v[k].ptr, n: p.count, decay: decay,
                               beta1: beta1, beta2: beta2, stepSize: stepSize, bc2Sqrt: bc2Sqrt, eps: eps)
        }
    }

    public func zeroGrad() { for p in params { p.grad = nil } }
}

public enum AdamWKernel {
    /// The per-step constants of torch's AdamW at (1-based) step `t`: lr / (1 - b1^t), sqrt(1 - b2^t), 1 - lr wd.
    public static func constants(lr: Float, step t: Int, beta1: Float, beta2: Float, weightDecay: Float)
        -> (stepSize: Float, bc2Sqrt: Float, decay: Float) {
        let bc1 = 1 - Foundation.pow(Double(beta1), Double(t))
        let bc2 = 1 - Foundation.pow(Double(beta2), Double(t))
        return (Float(Double(lr) / bc1), Float(bc2.squareRoot()), 1 - lr * weightDecay)
    }

    /// p, m, v [n] updated in place from g [n].
    @inlinable
    public static func update(_ p: UnsafeMutablePointer<Float>, _ g: UnsafePointer<Float>, _ m: UnsafeMutablePointer<Float>,
                              _ v: UnsafeMutablePointer<Float>, n: Int, decay: Float, beta1: Float, beta2: Float,
                              stepSize: Float, bc2Sqrt: Float, eps: Float) {
        for i in 0..<n {
            let gi = g[i]
            p[i] *= decay
            m[i] = beta1 * m[i] + (1 - beta1) * gi
            v[i] = beta2 * v[i] + (1 - beta2) * gi * gi
            let denom = v[i].squareRoot() / bc2Sqrt + eps
            p[i] -= stepSize * (m[i] / denom)
        }
    }
}
