import Foundation

// Rotary position embedding, HF LLaMA convention (rotate_half, not interleaved): for x [B, H, T, D] and
// half = D / 2, pair element i with element i + half and rotate the pair by the angle pos * inv_freq[i]:
//   y[i]        = x[i] cos - x[i + half] sin
//   y[i + half] = x[i + half] cos + x[i] sin
// with inv_freq[i] = 1 / theta^(2i / D). As in HF's LlamaRotaryEmbedding everything is fp32: the exponent
// 2i/D, the power, the product pos * inv_freq, and cos/sin of that product. The backward is the rotation
// by the opposite angle.

/// cos and sin of pos * inv_freq for a list of positions: [N, D/2] each (HF's emb = cat(freqs, freqs)
/// holds each value twice; one half is enough). Build once per forward and share across layers.
public struct RotaryTable {
    public let positions: [Int]
    public let dim: Int
    public let theta: Float
    /// [N, D/2]
    public let cos: Tensor
    /// [N, D/2]
    public let sin: Tensor

    public init(positions: [Int], dim: Int, theta: Float = 10000) {
        guard dim > 0, dim % 2 == 0 else { shapeFailure(ShapeError("RotaryTable", "head dim \(dim) must be even")) }
        self.positions = positions
        self.dim = dim
        self.theta = theta
        let half = dim / 2
        let invFreq = (0..<half).map { i -> Float in 1 / Foundation.pow(theta, Float(2 * i) / Float(dim)) }
        cos = Tensor(empty: [positions.count, half])
        sin = Tensor(empty: [positions.count, half])
        let pc = cos.ptr, ps = sin.ptr
        for (r, pos) in positions.enumerated() {
            let fp = Float(pos)
            for i in 0..<half {
                let angle = fp * invFreq[i]
                pc[r * half + i] = Foundation.cos(angle)
                ps[r * half + i] = Foundation.sin(angle)
            }
        }
    }
}

enum RoPEKernel {
    /// One row: out [D] contiguous, x [D] (unit stride), cos [D/2], sin [D/2]
    @inline(__always)
    static func forwardRow(_ out: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ cos: UnsafePointer<Float>,
                           _ sin: UnsafePointer<Float>, _ half: Int) {
        for i in 0..<half {
            let a = x[i], b = x[i + half], c = cos[i], s = sin[i]
            out[i] = a * c - b * s
            out[i + half] = b * c + a * s
        }
    }

    /// One row of the backward (rotation by -angle): dx [D] (+=), dout [D], cos [D/2], sin [D/2]
    @inline(__always)
    static func backwardRow(_ dx: UnsafeMutablePointer<Float>, _ dout: UnsafePointer<Float>, _ cos: UnsafePointer<Float>,
                            _ sin: UnsafePointer<Float>, _ half: Int) {
        for i in 0..<half {
            let ga = dout[i], gb = dout[i + half], c = cos[i], s = sin[i]
            dx[i] += ga * c + gb * s
            dx[i + half] += gb * c - ga * s
        }
    }
}

/// Applies RoPE to x [B, H, T, D]. The table holds T positions (shared by every batch entry) or B * T
/// positions (one row of position ids per batch entry, like HF's position_ids [B, T]).
public func applyRotary(_ x: Tensor, _ table: RotaryTable) -> Tensor {
    guard x.rank == 4, x.dim(3) == table.dim else {
        shapeFailure(ShapeError("rope", "input \(describe(x.shape)) must be [B, H, T, \(table.dim)]"))
    }
    let B = x.dim(0), H = x.dim(1), T = x.dim(2), D = x.dim(3), half = D / 2
    let n = table.positions.count
    guard n == T || n == B * T else {
        shapeFailure(ShapeError("rope", "\(n) positions for input \(describe(x.shape)): need T = \(T) or B*T = \(B * T)"))
    }
    let perBatch = n == T ? 0 : T   // table row of (b, t) is b * perBatch + t
    let xs = (x.strides[3] == 1 || D == 1) ? x : x.contiguousData()
    let st = xs.strides
    let out = Tensor(empty: x.shape)
    let pc = table.cos.ptr, ps = table.sin.ptr
    for b in 0..<B {
        for h in 0..<H {
            for t in 0..<T {
                let r = b * perBatch + t
                RoPEKernel.forwardRow(out.ptr + ((b * H + h) * T + t) * D, xs.ptr + b * st[0] + h * st[1] + t * st[2],
                                      pc + r * half, ps + r * half, half)
            }
        }
    }
    return Autograd.record("rope", out, inputs: [x]) { [table] _, g in
        let gc = g.contiguousData()
        let pc = table.cos.ptr, ps = table.sin.ptr
        let dx = x.gradBuffer().ptr
        for b in 0..<B {
            for h in 0..<H {
                for t in 0..<T {
                    let r = b * perBatch + t, o = ((b * H + h) * T + t) * D
                    RoPEKernel.backwardRow(dx + o, gc.ptr + o, pc + r * half, ps + r * half, half)
                }
            }
        }
    }
}

/// RoPE with a table built for these positions (see `applyRotary`).
public func rope(_ x: Tensor, positions: [Int], theta: Float = 10000) -> Tensor {
    guard x.rank == 4 else { shapeFailure(ShapeError("rope", "input \(describe(x.shape)) must be [B, H, T, D]")) }
    return applyRotary(x, RotaryTable(positions: positions, dim: x.dim(3), theta: theta))
}
