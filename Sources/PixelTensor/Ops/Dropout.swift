// Seeded dropout with inverted scaling. The mask is drawn element by element in row-major order from
// the caller's RNG, so it is a deterministic function of the generator's state; the backward pass
// reuses the same mask.

public enum DropoutOp {
    public static func validate(p: Float) throws {
        guard p >= 0 && p <= 1 else { throw ShapeError("dropout", "probability \(p) outside [0, 1]") }
    }

    /// mask[i] = 0 with probability p, else 1/(1-p). One uniform draw per element, in order.
    static func makeMask(_ mask: UnsafeMutablePointer<Float>,  // [n]
                         n: Int, p: Float, rng: inout RNG) {
        let keep: Float = p >= 1 ? 0 : 1 / (1 - p)
        for i in 0..<n { mask[i] = rng.uniform() < p ? 0 : keep }
    }

    /// out[i] = x[i] * mask[i]
    @inlinable
    static func forward(_ out: UnsafeMutablePointer<Float>,  // [n]
                        _ x: UnsafePointer<Float>,            // [n]
                        _ mask: UnsafePointer<Float>,         // [n]
                        n: Int) {
        for i in 0..<n { out[i] = x[i] * mask[i] }
    }

    /// dx[i] += dout[i] * mask[i]
    @inlinable
    static func backward(_ dx: UnsafeMutablePointer<Float>,   // [n]
                         _ dout: UnsafePointer<Float>,         // [n]
                         _ mask: UnsafePointer<Float>,         // [n]
                         n: Int) {
        for i in 0..<n { dx[i] += dout[i] * mask[i] }
    }
}

/// Dropout (torch.nn.functional.dropout): zeroes each element with probability `p` and scales the
/// rest by 1/(1-p). Returns `x` itself when `p == 0` or not `training` (no draws are taken from `rng`
/// then); with `p == 1` the output is all zeros. Otherwise draws exactly `x.count` numbers from `rng`.
public func dropout(_ x: Tensor, p: Float, rng: inout RNG, training: Bool) -> Tensor {
    checked { try DropoutOp.validate(p: p) }
    if p == 0 || !training { return x }
    let n = x.count
    let mask = Tensor(empty: x.shape)
    DropoutOp.makeMask(mask.ptr, n: n, p: p, rng: &rng)
    let xc = x.contiguousData()
    let out = Tensor(empty: x.shape)
    DropoutOp.forward(out.ptr, xc.ptr, mask.ptr, n: n)
    return Autograd.record("dropout", out, inputs: [x]) { _, g in
        DropoutOp.backward(x.gradBuffer().ptr, g.contiguousData().ptr, mask.ptr, n: n)
    }
}
