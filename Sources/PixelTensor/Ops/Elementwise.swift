import Foundation

// Binary elementwise ops with numpy broadcasting, scalar ops and basic unary ops.
// Each op: forward kernel, then its backward kernel, side by side.

public enum BinaryOp: String, Sendable { case add, sub, mul, div }

@inlinable
func binaryForwardRow(_ op: BinaryOp, _ a: UnsafePointer<Float>, _ ia: Int, _ b: UnsafePointer<Float>, _ ib: Int,
                      _ c: UnsafeMutablePointer<Float>, _ n: Int) {
    switch op {
    case .add:
        if ia == 1 && ib == 1 { for j in 0..<n { c[j] = a[j] + b[j] } } else { for j in 0..<n { c[j] = a[j * ia] + b[j * ib] } }
    case .sub:
        if ia == 1 && ib == 1 { for j in 0..<n { c[j] = a[j] - b[j] } } else { for j in 0..<n { c[j] = a[j * ia] - b[j * ib] } }
    case .mul:
        if ia == 1 && ib == 1 { for j in 0..<n { c[j] = a[j] * b[j] } } else { for j in 0..<n { c[j] = a[j * ia] * b[j * ib] } }
    case .div:
        if ia == 1 && ib == 1 { for j in 0..<n { c[j] = a[j] / b[j] } } else { for j in 0..<n { c[j] = a[j * ia] / b[j * ib] } }
    }
}

/// out = a (op) b with broadcasting.
public func binary(_ op: BinaryOp, _ a: Tensor, _ b: Tensor) -> Tensor {
    let shape = checked { try Shapes.broadcast(a.shape, b.shape, op: op.rawValue) }
    let out = Tensor(empty: shape)
    let sa = Shapes.broadcastStrides(a, to: shape), sb = Shapes.broadcastStrides(b, to: shape)
    let pa = a.ptr, pb = b.ptr, pc = out.ptr
    Broadcast.forEachRow3(shape: shape, sa, sb, out.strides) { oa, ob, oc, n, ia, ib, _ in
        binaryForwardRow(op, pa + oa, ia, pb + ob, ib, pc + oc, n)
    }
    return Autograd.record(op.rawValue, out, inputs: [a, b]) { _, g in
        binaryBackward(op, a, b, g, shape)
    }
}

/// Backward of `binary`: accumulates dA and dB, summing over broadcast axes.
func binaryBackward(_ op: BinaryOp, _ a: Tensor, _ b: Tensor, _ g: Tensor, _ shape: [Int]) {
    let gc = g.contiguousData()
    let gs = gc.strides, pg = gc.ptr
    let pa = a.ptr, pb = b.ptr
    let sa = Shapes.broadcastStrides(a, to: shape), sb = Shapes.broadcastStrides(b, to: shape)
    if a.requiresGrad {
        let da = a.gradBuffer()
        let sda = Shapes.broadcastStrides(da, to: shape)
        let pda = da.ptr
        // dA = g * d(op)/dA ; the grad buffer is contiguous in A's shape, with 0 strides on broadcast axes
        Broadcast.forEachRow3(shape: shape, sda, sb, gs) { od, ob, og, n, id, ib, ig in
            let d = pda + od, y = pb + ob, gg = pg + og
            switch op {
            case .add: for j in 0..<n { d[j * id] += gg[j * ig] }
            case .sub: for j in 0..<n { d[j * id] += gg[j * ig] }
            case .mul: for j in 0..<n { d[j * id] += gg[j * ig] * y[j * ib] }
            case .div: for j in 0..<n { d[j * id] += gg[j * ig] / y[j * ib] }
            }
        }
    }
    if b.requiresGrad {
        let db = b.gradBuffer()
        if op == .div {
            // d(a/b)/db = -a / b^2: form g * a / b^2 in the output's layout, then sum over broadcast axes
            let tmp = Tensor(empty: shape)
            let pt = tmp.ptr
            Broadcast.forEachRow3(shape: shape, sa, sb, gs) { oa, ob, ot, n, ia, ib, it in
                for j in 0..<n {
                    let y = pb[ob + j * ib]
                    pt[ot + j * it] = pg[ot + j * it] * pa[oa + j * ia] / (y * y)
                }
            }
            let r = reduceToShape(tmp, b.shape)
            let d = db.ptr, q = r.ptr
            for i in 0..<b.count { d[i] -= q[i] }
        } else {
            let sdb = Shapes.broadcastStrides(db, to: shape)
            let pdb = db.ptr
            Broadcast.forEachRow3(shape: shape, sdb, sa, gs) { od, oa, og, n, id, ia, ig in
                let d = pdb + od, x = pa + oa, gg = pg + og
                switch op {
                case .add: for j in 0..<n { d[j * id] += gg[j * ig] }
                case .sub: for j in 0..<n { d[j * id] -= gg[j * ig] }
                case .mul: for j in 0..<n { d[j * id] += gg[j * ig] * x[j * ia] }
                case .div: break
                }
            }
        }
    }
}

public func + (a: Tensor, b: Tensor) -> Tensor { binary(.add, a, b) }
public func - (a: Tensor, b: Tensor) -> Tensor { binary(.sub, a, b) }
public func * (a: Tensor, b: Tensor) -> Tensor { binary(.mul, a, b) }
public func / (a: Tensor, b: Tensor) -> Tensor { binary(.div, a, b) }

// MARK: scalar ops

extension Tensor {
    /// out = x * scale + shift (one fused kernel for every scalar affine op).
    public func affine(scale: Float, shift: Float) -> Tensor {
        let x = contiguousData()
        let out = Tensor(empty: shape)
        let p = x.ptr, o = out.ptr
        for i in 0..<count { o[i] = p[i] * scale + shift }
        return Autograd.record("affine", out, inputs: [self]) { _, g in
            let gg = g.contiguousData().ptr
            let d = self.gradBuffer().ptr
            for i in 0..<self.count { d[i] += gg[i] * scale }
        }
    }
}

public func + (a: Tensor, s: Float) -> Tensor { a.affine(scale: 1, shift: s) }
public func + (s: Float, a: Tensor) -> Tensor { a.affine(scale: 1, shift: s) }
public func - (a: Tensor, s: Float) -> Tensor { a.affine(scale: 1, shift: -s) }
public func - (s: Float, a: Tensor) -> Tensor { a.affine(scale: -1, shift: s) }
public func * (a: Tensor, s: Float) -> Tensor { a.affine(scale: s, shift: 0) }
public func * (s: Float, a: Tensor) -> Tensor { a.affine(scale: s, shift: 0) }
public func / (a: Tensor, s: Float) -> Tensor { a.affine(scale: 1 / s, shift: 0) }
public prefix func - (a: Tensor) -> Tensor { a.affine(scale: -1, shift: 0) }

// MARK: unary ops

/// A pointwise op: forward y = f(x), backward dx += g * df(x, y).
public func pointwise(_ name: String, _ x: Tensor, forward f: (Float) -> Float,
                      derivative df: @escaping (_ x: Float, _ y: Float) -> Float) -> Tensor {
    let xc = x.contiguousData()
    let out = Tensor(empty: x.shape)
    let p = xc.ptr, o = out.ptr
    for i in 0..<x.count { o[i] = f(p[i]) }
    return Autograd.record(name, out, inputs: [x]) { out, g in
        let gg = g.contiguousData().ptr, y = out.ptr, xp = xc.ptr
        let d = x.gradBuffer().ptr
        for i in 0..<x.count { d[i] += gg[i] * df(xp[i], y[i]) }
    }
}

extension Tensor {
    public func exp() -> Tensor { pointwise("exp", self, forward: { Foundation.exp($0) }, derivative: { _, y in y }) }
    public func log() -> Tensor { pointwise("log", self, forward: { Foundation.log($0) }, derivative: { x, _ in 1 / x }) }
    public func sqrt() -> Tensor { pointwise("sqrt", self, forward: { $0.squareRoot() }, derivative: { _, y in 0.5 / y }) }
    public func square() -> Tensor { pointwise("square", self, forward: { $0 * $0 }, derivative: { x, _ in 2 * x }) }
    public func pow(_ p: Float) -> Tensor {
        pointwise("pow", self, forward: { Foundation.pow($0, p) }, derivative: { x, _ in p * Foundation.pow(x, p - 1) })
    }
    public func reciprocal() -> Tensor { pointwise("reciprocal", self, forward: { 1 / $0 }, derivative: { _, y in -y * y }) }
    public func tanh() -> Tensor { pointwise("tanh", self, forward: { Foundation.tanh($0) }, derivative: { _, y in 1 - y * y }) }
    public func sin() -> Tensor { pointwise("sin", self, forward: { Foundation.sin($0) }, derivative: { x, _ in Foundation.cos(x) }) }
    public func cos() -> Tensor { pointwise("cos", self, forward: { Foundation.cos($0) }, derivative: { x, _ in -Foundation.sin(x) }) }
    public func abs() -> Tensor {
        pointwise("abs", self, forward: { Swift.abs($0) }, derivative: { x, _ in x > 0 ? 1 : (x < 0 ? -1 : 0) })
    }
    public func clamp(min lo: Float, max hi: Float) -> Tensor {
        pointwise("clamp", self, forward: { Swift.min(Swift.max($0, lo), hi) }, derivative: { x, _ in (x >= lo && x <= hi) ? 1 : 0 })
    }
}
