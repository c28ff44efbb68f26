import Foundation

// Losses: cross-entropy with ignore index, BCE-with-logits, and the two PixelLM mask losses (DICE and
// the per-mask-mean sigmoid BCE, spec section 3). Forward and backward kernels side by side over raw
// pointers; every long sum is accumulated in Double.

/// How a loss reduces its per-element values (PyTorch's `reduction=`).
public enum LossReduction: String, Sendable { case none, mean, sum }

// stableSigmoid is defined in Activations.swift.

// MARK: - cross-entropy

public enum CrossEntropyOp {
    /// logits must be [N, C]; each target is in 0..<C or equal to `ignoreIndex`.
    public static func validate(_ logits: [Int], targets: [Int], ignoreIndex: Int) throws {
        guard logits.count == 2 else { throw ShapeError("cross_entropy", "logits must be [N, C], got \(describe(logits))") }
        guard targets.count == logits[0] else {
            throw ShapeError("cross_entropy", "\(targets.count) targets for logits \(describe(logits))")
        }
        let C = logits[1]
        for (i, t) in targets.enumerated() where t != ignoreIndex && (t < 0 || t >= C) {
            throw ShapeError("cross_entropy", "target \(t) at row \(i) out of range 0..<\(C) (ignore index \(ignoreIndex))")
        }
    }

    /// loss[n] = logsumexp(x[n, :]) - x[n, t[n]] for rows whose target is not ignored (0 otherwise);
    /// lse[n] keeps the log-sum-exp (max-shifted, summed in Double) for the backward pass.
    static func forward(_ loss: UnsafeMutablePointer<Double>,   // [N]
                        _ lse: UnsafeMutablePointer<Double>,    // [N]
                        _ x: UnsafePointer<Float>,              // [N, C]
                        _ t: UnsafePointer<Int>,                // [N]
                        N: Int, C: Int, ignoreIndex: Int) {
        for n in 0..<N {
            loss[n] = 0
            lse[n] = 0
            if t[n] == ignoreIndex { continue }
            let row = x + n * C
            var m = -Float.infinity
            for c in 0..<C { m = max(m, row[c]) }
            var s = 0.0
            let mv = VectorMath.V(repeating: m)
            var c = 0
            var lanes = VectorMath.LaneSum()
            while c + 8 <= C { lanes.add(VectorMath.exp(VectorMath.load(row + c) - mv)); c += 8 }
            s = lanes.value()
            while c < C { s += Double(Foundation.exp(row[c] - m)); c += 1 }
            lse[n] = Double(m) + Foundation.log(s)
            loss[n] = lse[n] - Double(row[t[n]])
        }
    }

    /// dx[n, c] += w[n] * (softmax(x[n])[c] - [c == t[n]]) for rows not ignored; w[n] is dL/dloss[n].
    static func backward(_ dx: UnsafeMutablePointer<Float>,     // [N, C]
                         _ x: UnsafePointer<Float>,             // [N, C]
                         _ lse: UnsafePointer<Double>,          // [N]
                         _ t: UnsafePointer<Int>,               // [N]
                         _ w: UnsafePointer<Float>, wStride: Int,  // [N] (stride 0: one weight for all rows)
                         N: Int, C: Int, ignoreIndex: Int) {
        for n in 0..<N where t[n] != ignoreIndex {
            let row = x + n * C, d = dx + n * C
            let wn = w[n * wStride], l = Float(lse[n])
            let lv = VectorMath.V(repeating: l), wv = VectorMath.V(repeating: wn)
            var c = 0
            while c + 8 <= C { VectorMath.store(VectorMath.load(d + c) + wv * VectorMath.exp(VectorMath.load(row + c) - lv), d + c); c += 8 }
            while c < C { d[c] += wn * Foundation.exp(row[c] - l); c += 1 }
            d[t[n]] -= wn
        }
    }
}

/// Cross-entropy of logits [N, C] against integer targets (torch.nn.functional.cross_entropy).
/// Targets equal to `ignoreIndex` contribute nothing. `.mean` divides by the number of non-ignored
/// targets; when every target is ignored it returns 0 with zero gradients (PyTorch returns NaN there).
/// `.sum` and `.mean` give a scalar (shape []); `.none` gives [N] with 0 at ignored rows.
/// The causal-LM shift (logits[:-1] against labels[1:]) is the caller's job.
public func crossEntropy(_ logits: Tensor, targets: [Int], ignoreIndex: Int = -100,
                         reduction: LossReduction = .mean) -> Tensor {
    checked { try CrossEntropyOp.validate(logits.shape, targets: targets, ignoreIndex: ignoreIndex) }
    let N = logits.shape[0], C = logits.shape[1]
    let x = logits.contiguousData()
    var loss = [Double](repeating: 0, count: N), lse = [Double](repeating: 0, count: N)
    if N > 0 {
        targets.withUnsafeBufferPointer { t in
            CrossEntropyOp.forward(&loss, &lse, x.ptr, t.baseAddress!, N: N, C: C, ignoreIndex: ignoreIndex)
        }
    }
    let counted = targets.reduce(0) { $0 + ($1 == ignoreIndex ? 0 : 1) }
    let out: Tensor
    var rowWeight: Float = 1  // dL/dloss[n] per unit upstream gradient, for the scalar reductions
    switch reduction {
    case .none:
        out = Tensor(loss.map { Float($0) }, shape: [N])
    case .sum:
        out = Tensor(scalar: Float(loss.reduce(0, +)))
    case .mean:
        out = Tensor(scalar: counted == 0 ? 0 : Float(loss.reduce(0, +) / Double(counted)))
        rowWeight = counted == 0 ? 0 : 1 / Float(counted)
    }
    return Autograd.record("cross_entropy", out, inputs: [logits]) { [lse, rowWeight] _, g in
        let gc = g.contiguousData()
        let dx = logits.gradBuffer().ptr
        if N == 0 { return }
        targets.withUnsafeBufferPointer { t in
            lse.withUnsafeBufferPointer { l in
                if reduction == .none {
                    CrossEntropyOp.backward(dx, x.ptr, l.baseAddress!, t.baseAddress!, gc.ptr, wStride: 1,
                                            N: N, C: C, ignoreIndex: ignoreIndex)
                } else {
                    var w = gc.ptr[0] * rowWeight
                    CrossEntropyOp.backward(dx, x.ptr, l.baseAddress!, t.baseAddress!, &w, wStride: 0,
                                            N: N, C: C, ignoreIndex: ignoreIndex)
                }
            }
        }
    }
}

// MARK: - BCE with logits

public enum BCEWithLogitsOp {
    public static func validate(_ x: [Int], _ y: [Int], op: String) throws {
        guard x == y else { throw ShapeError(op, "logits \(describe(x)) and targets \(describe(y)) must have the same shape") }
    }

    /// loss[i] = max(x, 0) - x*y + log1p(exp(-|x|)); returns the sum in Double. `loss` may be nil.
    /// SIMD8 lanes (VectorMath exp and log1p); the sum runs over fixed blocks of `sumBlock` elements (Double
    /// partials added in block order), so it is the same whichever thread computes which block.
    @discardableResult
    static func forward(_ loss: UnsafeMutablePointer<Float>?,  // [n] or nil
                        _ x: UnsafePointer<Float>,              // [n] logits
                        _ y: UnsafePointer<Float>,              // [n] targets
                        n: Int) -> Double {
        typealias V = VectorMath.V
        @inline(__always) func term(_ x: V, _ y: V) -> V {
            let zero = V(repeating: 0)
            let negAbs = x.replacing(with: -x, where: x .> zero)
            return (VectorMath.max(x, zero) - x * y) + VectorMath.log1pNonNegative(VectorMath.exp(negAbs))
        }
        return BlockSum.sum(n, cost: 40) { lo, hi in
            var lanes = VectorMath.LaneSum(), i = lo
            while i + 8 <= hi {
                let l = term(VectorMath.load(x + i), VectorMath.load(y + i))
                if let loss { VectorMath.store(l, loss + i) }
                lanes.add(l)
                i += 8
            }
            var s = lanes.value()
            if i < hi {
                let l = term(VectorMath.loadPartial(x + i, hi - i), VectorMath.loadPartial(y + i, hi - i))
                if let loss { VectorMath.storePartial(l, loss + i, hi - i) }
                for k in 0..<(hi - i) { s += Double(l[k]) }
            }
            return s
        }
    }

    /// dx[i] += w[i] * (sigmoid(x) - y);  dy[i] += w[i] * (-x)   with w[i] = g[i * gStride] * scale
    static func backward(_ dx: UnsafeMutablePointer<Float>?,    // [n] or nil
                         _ dy: UnsafeMutablePointer<Float>?,    // [n] or nil
                         _ x: UnsafePointer<Float>,             // [n]
                         _ y: UnsafePointer<Float>,             // [n]
                         _ g: UnsafePointer<Float>, gStride: Int, scale: Float,  // [n] (stride 0: scalar)
                         n: Int) {
        typealias V = VectorMath.V
        let sv = V(repeating: scale)
        if gStride == 0 {
            let w = V(repeating: g[0] * scale)
            if let dx { VectorMath.map(dx, dx, x, y, n, cost: 22) { d, x, y in d + w * (VectorMath.sigmoid(x) - y) } }
            if let dy { VectorMath.map(dy, dy, x, n, cost: 2) { d, x in d - w * x } }
        } else {
            if let dx { VectorMath.map(dx, dx, g, x, y, n, cost: 22) { d, g, x, y in d + g * sv * (VectorMath.sigmoid(x) - y) } }
            if let dy { VectorMath.map(dy, dy, g, x, n, cost: 2) { d, g, x in d - g * sv * x } }
        }
    }
}

/// Sums over [0, n) in fixed blocks: body(lo, hi) gives a block's Double sum, the blocks run on any thread and
/// their sums are added in block order, so the total does not depend on the thread count.
enum BlockSum {
    static let block = 8192

    @inline(__always)
    static func sum(_ n: Int, cost: Int, _ body: (Int, Int) -> Double) -> Double {
        let nb = (n + block - 1) / block
        if nb <= 1 { return n == 0 ? 0 : body(0, n) }
        let partial = UnsafeMutablePointer<Double>.allocate(capacity: nb)
        defer { partial.deallocate() }
        Parallel.forRows(nb, rowCost: block * cost) { lo, hi in
            for b in lo..<hi { partial[b] = body(b * block, min(n, (b + 1) * block)) }
        }
        var s = 0.0
        for b in 0..<nb { s += partial[b] }
        return s
    }
}

/// Binary cross-entropy on logits (torch.nn.functional.binary_cross_entropy_with_logits), computed
/// stably. `x` and `y` have the same shape; gradients flow to both. `.none` keeps the shape, `.mean`
/// and `.sum` give a scalar (shape []).
public func bceWithLogits(_ x: Tensor, _ y: Tensor, reduction: LossReduction = .mean) -> Tensor {
    checked { try BCEWithLogitsOp.validate(x.shape, y.shape, op: "bce_with_logits") }
    let xc = x.contiguousData(), yc = y.contiguousData()
    let n = x.count
    let out: Tensor
    let scale: Float
    switch reduction {
    case .none:
        out = Tensor(empty: x.shape)
        BCEWithLogitsOp.forward(out.ptr, xc.ptr, yc.ptr, n: n)
        scale = 1
    case .sum:
        out = Tensor(scalar: Float(BCEWithLogitsOp.forward(nil, xc.ptr, yc.ptr, n: n)))
        scale = 1
    case .mean:
        out = Tensor(scalar: n == 0 ? .nan : Float(BCEWithLogitsOp.forward(nil, xc.ptr, yc.ptr, n: n) / Double(n)))
        scale = 1 / Float(max(n, 1))
    }
    return Autograd.record("bce_with_logits", out, inputs: [x, y]) { _, g in
        let gc = g.contiguousData()
        BCEWithLogitsOp.backward(x.requiresGrad ? x.gradBuffer().ptr : nil, y.requiresGrad ? y.gradBuffer().ptr : nil,
                                 xc.ptr, yc.ptr, gc.ptr, gStride: reduction == .none ? 1 : 0, scale: scale, n: n)
    }
}

// MARK: - PixelLM mask losses

/// Checks mask logits and targets: same shape, [M, H*W] or [M, H, W] (any rank >= 2; everything after
/// the first axis is one mask). Returns (M, pixels per mask).
func maskLossShape(_ x: [Int], _ y: [Int], op: String) throws -> (M: Int, P: Int) {
    guard x.count >= 2 else { throw ShapeError(op, "mask logits must be [M, H*W] or [M, H, W], got \(describe(x))") }
    try BCEWithLogitsOp.validate(x, y, op: op)
    return (x[0], product(Array(x.dropFirst())))
}

public enum DiceLossOp {
    /// Per mask m, with p = sigmoid(x): A = sum(p*y)/scale, B = (sum(p) + sum(y))/scale,
    /// loss[m] = 1 - (2A + eps) / (B + eps). Stores (2A + eps, B + eps) per mask for the backward pass.
    static func forward(_ loss: UnsafeMutablePointer<Double>,   // [M]
                        _ num: UnsafeMutablePointer<Double>,    // [M] 2A + eps
                        _ den: UnsafeMutablePointer<Double>,    // [M] B + eps
                        _ x: UnsafePointer<Float>,              // [M, P] logits
                        _ y: UnsafePointer<Float>,              // [M, P] targets
                        M: Int, P: Int, scale: Double, eps: Double) {
        for m in 0..<M {
            let xm = x + m * P, ym = y + m * P
            var spy = 0.0, sp = 0.0, sy = 0.0
            // three sums over fixed blocks (see BlockSum), SIMD8 sigmoid inside a block
            let nb = (P + BlockSum.block - 1) / BlockSum.block
            let part = UnsafeMutablePointer<Double>.allocate(capacity: 3 * max(nb, 1))
            defer { part.deallocate() }
            Parallel.forRows(nb, rowCost: BlockSum.block * 24) { lo, hi in
                for b in lo..<hi {
                    var l0 = VectorMath.LaneSum(), l1 = VectorMath.LaneSum(), l2 = VectorMath.LaneSum()
                    var j = b * BlockSum.block
                    let end = min(P, (b + 1) * BlockSum.block)
                    while j + 8 <= end {
                        let p = VectorMath.sigmoid(VectorMath.load(xm + j)), t = VectorMath.load(ym + j)
                        l0.add(p * t); l1.add(p); l2.add(t)
                        j += 8
                    }
                    var a0 = l0.value(), a1 = l1.value(), a2 = l2.value()
                    if j < end {
                        let p = VectorMath.sigmoid(VectorMath.loadPartial(xm + j, end - j))
                        for k in 0..<(end - j) {
                            let pk = Double(p[k]), tk = Double(ym[j + k])
                            a0 += pk * tk; a1 += pk; a2 += tk
                        }
                    }
                    part[3 * b] = a0; part[3 * b + 1] = a1; part[3 * b + 2] = a2
                }
            }
            for b in 0..<nb { spy += part[3 * b]; sp += part[3 * b + 1]; sy += part[3 * b + 2] }
            num[m] = 2 * spy / scale + eps
            den[m] = (sp + sy) / scale + eps
            loss[m] = 1 - num[m] / den[m]
        }
    }

    /// With L_m = 1 - num/den, num = 2 sum(p y)/s + eps, den = (sum p + sum y)/s + eps:
    ///   dL_m/dp_j = -(2 y_j den - num) / (s den^2),   dL_m/dy_j = -(2 p_j den - num) / (s den^2),
    ///   dx_j += w dL_m/dp_j p_j (1 - p_j),            dy_j += w dL_m/dy_j
    static func backward(_ dx: UnsafeMutablePointer<Float>?,    // [M, P] or nil
                         _ dy: UnsafeMutablePointer<Float>?,    // [M, P] or nil
                         _ x: UnsafePointer<Float>,             // [M, P]
                         _ y: UnsafePointer<Float>,             // [M, P]
                         _ num: UnsafePointer<Double>,          // [M]
                         _ den: UnsafePointer<Double>,          // [M]
                         w: Double, M: Int, P: Int, scale: Double) {
        for m in 0..<M {
            let xm = x + m * P, ym = y + m * P
            let c = -w / (scale * den[m] * den[m])
            let a = Float(c * 2 * den[m]), b = Float(-c * num[m])  // dL/dp_j = a y_j + b
            let av = VectorMath.V(repeating: a), bv = VectorMath.V(repeating: b), one = VectorMath.V(repeating: 1)
            if let dx {
                VectorMath.map(dx + m * P, dx + m * P, xm, ym, P, cost: 24) { d, x, y in
                    let p = VectorMath.sigmoid(x)
                    return d + (av * y + bv) * p * (one - p)
                }
            }
            if let dy {
                VectorMath.map(dy + m * P, dy + m * P, xm, P, cost: 22) { d, x in d + (av * VectorMath.sigmoid(x) + bv) }
            }
        }
    }
}

/// The PixelLM/LISA `dice_loss`: p = sigmoid(logits) flattened per mask,
/// loss_m = 1 - (2 sum(p y)/scale + eps) / (sum(p)/scale + sum(y)/scale + eps), and the result is
/// sum_m loss_m / (numMasks + 1e-8), with numMasks defaulting to M (a mean over masks).
/// Logits and targets are [M, H*W] or [M, H, W]; gradients flow to both. M = 0 gives 0.
public func diceLoss(_ logits: Tensor, _ targets: Tensor, numMasks: Float? = nil,
                     scale: Float = 1000, eps: Float = 1e-6) -> Tensor {
    let (M, P) = checked { try maskLossShape(logits.shape, targets.shape, op: "dice_loss") }
    let xc = logits.contiguousData(), yc = targets.contiguousData()
    var loss = [Double](repeating: 0, count: M), num = loss, den = loss
    let s = Double(scale), e = Double(eps)
    DiceLossOp.forward(&loss, &num, &den, xc.ptr, yc.ptr, M: M, P: P, scale: s, eps: e)
    let norm = Double(numMasks ?? Float(M)) + 1e-8
    let out = Tensor(scalar: Float(loss.reduce(0, +) / norm))
    return Autograd.record("dice_loss", out, inputs: [logits, targets]) { [num, den] _, g in
        let w = Double(g.contiguousData().ptr[0]) / norm
        DiceLossOp.backward(logits.requiresGrad ? logits.gradBuffer().ptr : nil,
                            targets.requiresGrad ? targets.gradBuffer().ptr : nil,
                            xc.ptr, yc.ptr, num, den, w: w, M: M, P: P, scale: s)
    }
}

/// The PixelLM/LISA `sigmoid_ce_loss`: BCE-with-logits per pixel, mean over each mask's pixels, then
/// summed over masks and divided by (numMasks + 1e-8), numMasks defaulting to M. Logits and targets
/// are [M, H*W] or [M, H, W]; gradients flow to both. M = 0 gives 0.
public func sigmoidCELoss(_ logits: Tensor, _ targets: Tensor, numMasks: Float? = nil) -> Tensor {
    let (M, P) = checked { try maskLossShape(logits.shape, targets.shape, op: "sigmoid_ce_loss") }
    let xc = logits.contiguousData(), yc = targets.contiguousData()
    let n = M * P
    let norm = Double(numMasks ?? Float(M)) + 1e-8
    // every mask has P pixels, so sum_m mean_j l_mj = (sum over all pixels) / P
    let total = P == 0 ? 0 : BCEWithLogitsOp.forward(nil, xc.ptr, yc.ptr, n: n) / Double(P)
    let out = Tensor(scalar: Float(total / norm))
    return Autograd.record("sigmoid_ce_loss", out, inputs: [logits, targets]) { _, g in
        let gc = g.contiguousData()
        BCEWithLogitsOp.backward(logits.requiresGrad ? logits.gradBuffer().ptr : nil,
                                 targets.requiresGrad ? targets.gradBuffer().ptr : nil,
                                 xc.ptr, yc.ptr, gc.ptr, gStride: 0, scale: Float(1 / (Double(max(P, 1)) * norm)), n: n)
    }
}
