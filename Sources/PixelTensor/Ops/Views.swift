// View ops: reshape, permute, transpose, slice, expand, contiguous. A view shares storage; its backward
// maps the gradient back to the input's shape.

extension Tensor {
    /// Reshape (one dimension may be -1). A view when contiguous, else a copy (recorded either way).
    public func reshape(_ newShape: [Int]) -> Tensor {
        let target = checked { try Shapes.inferReshape(shape, newShape) }
        let src = isContiguous ? self : contiguous()
        let out = Tensor(storage: src.storage, shape: target, offset: src.offset)
        return Autograd.record("reshape", out, inputs: [src]) { [shape = src.shape] _, g in
            src.accumulateGrad(g.contiguousData().viewed(shape))
        }
    }

    public func reshape(_ s: Int...) -> Tensor { reshape(s) }

    /// Flattens dims start...end into one.
    public func flatten(_ start: Int = 0, _ end: Int = -1) -> Tensor {
        let s = axis(start, op: "flatten"), e = axis(end, op: "flatten")
        var ns = Array(shape[..<s])
        ns.append(product(Array(shape[s...e])))
        ns.append(contentsOf: shape[(e + 1)...])
        return reshape(ns)
    }

    /// Unrecorded reinterpretation of a contiguous tensor's data with another shape.
    func viewed(_ s: [Int]) -> Tensor {
        precondition(isContiguous && product(s) == count)
        return Tensor(storage: storage, shape: s, offset: offset)
    }

    /// Permutes the axes (a view).
    public func permute(_ dims: [Int]) -> Tensor {
        let p = checked { try Shapes.checkPermutation(dims.map { $0 < 0 ? $0 + rank : $0 }, rank: rank, op: "permute", shape: shape) }
        let out = Tensor(storage: storage, shape: p.map { shape[$0] }, strides: p.map { strides[$0] }, offset: offset)
        var inverse = [Int](repeating: 0, count: p.count)
        for (i, d) in p.enumerated() { inverse[d] = i }
        return Autograd.record("permute", out, inputs: [self]) { [inverse] _, g in
            self.accumulateGrad(g.permute(inverse).contiguousData())
        }
    }

    public func permute(_ d: Int...) -> Tensor { permute(d) }

    /// Swaps two axes (a view).
    public func transpose(_ a: Int, _ b: Int) -> Tensor {
        var p = Array(0..<rank)
        p.swapAt(axis(a, op: "transpose"), axis(b, op: "transpose"))
        return permute(p)
    }

    /// Contiguous copy when needed (recorded), else self.
    public func contiguous() -> Tensor {
        if isContiguous { return self }
        let out = contiguousData()
        return Autograd.record("contiguous", out, inputs: [self]) { _, g in self.accumulateGrad(g) }
    }

    /// Elements start..<end (step 1) along an axis (a view). Negative indices count from the end.
    public func slice(axis a: Int, _ start: Int, _ end: Int) -> Tensor {
        let ax = axis(a, op: "slice")
        let n = shape[ax]
        let s = start < 0 ? start + n : start, e = min(end < 0 ? end + n : end, n)
        guard s >= 0 && s <= e else {
            shapeFailure(ShapeError("slice", "range \(start)..<\(end) on axis \(a) of shape \(describe(shape))"))
        }
        var ns = shape
        ns[ax] = e - s
        let out = Tensor(storage: storage, shape: ns, strides: strides, offset: offset + s * strides[ax])
        return Autograd.record("slice", out, inputs: [self]) { [shape] _, g in
            // scatter the gradient into the sliced region of a zero gradient of the input's shape
            let full = Tensor.zeros(shape)
            let region = Tensor(storage: full.storage, shape: ns, strides: full.strides, offset: s * full.strides[ax])
            addInto(region, g)
            self.accumulateGrad(full)
        }
    }

    /// Broadcasts size-1 dims to `newShape` (a view with stride 0); extra leading dims are allowed.
    public func expand(_ newShape: [Int]) -> Tensor {
        guard newShape.count >= rank else {
            shapeFailure(ShapeError("expand", "cannot expand \(describe(shape)) to \(describe(newShape))"))
        }
        let lead = newShape.count - rank
        var ns = [Int](), st = [Int]()
        for i in 0..<newShape.count {
            if i < lead { ns.append(newShape[i]); st.append(0); continue }
            let d = shape[i - lead]
            let want = newShape[i] == -1 ? d : newShape[i]
            if d == want { ns.append(d); st.append(strides[i - lead]) } else if d == 1 { ns.append(want); st.append(0) } else {
                shapeFailure(ShapeError("expand", "cannot expand \(describe(shape)) to \(describe(newShape))"))
            }
        }
        let out = Tensor(storage: storage, shape: ns, strides: st, offset: offset)
        return Autograd.record("expand", out, inputs: [self]) { [shape] _, g in
            self.accumulateGrad(reduceToShape(g, shape))
        }
    }

    /// Inserts a size-1 axis.
    public func unsqueeze(_ a: Int) -> Tensor {
        let ax = a < 0 ? a + rank + 1 : a
        var s = shape
        s.insert(1, at: ax)
        return reshape(s)
    }

    /// Removes a size-1 axis.
    public func squeeze(_ a: Int) -> Tensor {
        let ax = axis(a, op: "squeeze")
        guard shape[ax] == 1 else { shapeFailure(ShapeError("squeeze", "axis \(a) of \(describe(shape)) is not 1")) }
        var s = shape
        s.remove(at: ax)
        return reshape(s)
    }
}

/// dst += src elementwise, for any layouts of equal shape (no autograd).
public func addInto(_ dst: Tensor, _ src: Tensor) {
    precondition(dst.shape == src.shape)
    if dst.isContiguous && src.isContiguous {
        let d = dst.ptr, s = src.ptr
        for i in 0..<dst.count { d[i] += s[i] }
        return
    }
    let sc = src.contiguousData()
    let s = sc.ptr
    let d = dst.ptr
    for i in 0..<dst.count { d[dst.linearToOffset(i)] += s[i] }
}

/// Sums `g` over the axes where it was broadcast from `shape` (numpy broadcasting rules).
public func reduceToShape(_ g: Tensor, _ shape: [Int]) -> Tensor {
    if g.shape == shape { return g.contiguousData() }
    let out = Tensor.zeros(shape)
    let lead = g.rank - shape.count
    var st = [Int](repeating: 0, count: g.rank)
    let os = out.strides
    for i in 0..<shape.count where shape[i] != 1 || g.shape[i + lead] == 1 { st[i + lead] = os[i] }
    let gc = g.contiguousData()
    Broadcast.forEachRow(shape: g.shape, stridesA: st, stridesB: contiguousStrides(g.shape)) { oa, ob, n, ia, ib in
        let d = out.ptr + oa, s = gc.ptr + ob
        if ia == 0 {
            var acc: Float = 0
            for j in 0..<n { acc += s[j * ib] }
            d[0] += acc
        } else {
            for j in 0..<n { d[j * ia] += s[j * ib] }
        }
    }
    return out
}

public enum Shapes {
    public static func inferReshape(_ from: [Int], _ to: [Int]) throws -> [Int] {
        let n = product(from)
        var out = to
        let unknown = to.indices.filter { to[$0] == -1 }
        if unknown.count > 1 { throw ShapeError("reshape", "more than one -1 in \(describe(to))") }
        if let u = unknown.first {
            let known = product(to.filter { $0 != -1 })
            if known == 0 || n % known != 0 {
                throw ShapeError("reshape", "cannot reshape \(describe(from)) to \(describe(to))")
            }
            out[u] = n / known
        }
        if product(out) != n || out.contains(where: { $0 < 0 }) {
            throw ShapeError("reshape", "cannot reshape \(describe(from)) (\(n) elements) to \(describe(to))")
        }
        return out
    }

    public static func checkPermutation(_ p: [Int], rank: Int, op: String, shape: [Int]) throws -> [Int] {
        if p.count != rank || Set(p) != Set(0..<rank) {
            throw ShapeError(op, "\(p) is not a permutation of the axes of \(describe(shape))")
        }
        return p
    }

    /// numpy broadcasting of two shapes.
    public static func broadcast(_ a: [Int], _ b: [Int], op: String) throws -> [Int] {
        let r = max(a.count, b.count)
        var out = [Int](repeating: 1, count: r)
        for i in 0..<r {
            let da = i < r - a.count ? 1 : a[i - (r - a.count)]
            let db = i < r - b.count ? 1 : b[i - (r - b.count)]
            if da == db || db == 1 { out[i] = da } else if da == 1 { out[i] = db } else {
                throw ShapeError(op, "shapes \(describe(a)) and \(describe(b)) do not broadcast")
            }
        }
        return out
    }

    /// Strides of `t` broadcast to `shape` (0 on broadcast axes).
    public static func broadcastStrides(_ t: Tensor, to shape: [Int]) -> [Int] {
        let lead = shape.count - t.rank
        var st = [Int](repeating: 0, count: shape.count)
        for i in 0..<t.rank where t.shape[i] == shape[i + lead] { st[i + lead] = t.strides[i] }
        return st
    }
}

/// N-d iteration with broadcasting: calls `body` once per innermost row with the offsets of operands
/// A and B, the row length and the inner strides. Hot loops live inside `body`, over raw pointers.
public enum Broadcast {
    @inlinable
    public static func forEachRow(shape: [Int], stridesA: [Int], stridesB: [Int],
                                  _ body: (_ offA: Int, _ offB: Int, _ n: Int, _ incA: Int, _ incB: Int) -> Void) {
        let n = product(shape)
        if n == 0 { return }
        if shape.isEmpty { body(0, 0, 1, 0, 0); return }
        let r = shape.count
        let inner = shape[r - 1]
        var idx = [Int](repeating: 0, count: r)
        var oa = 0, ob = 0, done = 0
        while done < n {
            body(oa, ob, inner, stridesA[r - 1], stridesB[r - 1])
            done += inner
            var k = r - 2
            while k >= 0 {
                idx[k] += 1
                oa += stridesA[k]; ob += stridesB[k]
                if idx[k] < shape[k] { break }
                oa -= stridesA[k] * shape[k]; ob -= stridesB[k] * shape[k]
                idx[k] = 0
                k -= 1
            }
        }
    }

    /// Three operands (output contiguous is the third).
    @inlinable
    public static func forEachRow3(shape: [Int], _ sa: [Int], _ sb: [Int], _ sc: [Int],
                                   _ body: (_ a: Int, _ b: Int, _ c: Int, _ n: Int, _ ia: Int, _ ib: Int, _ ic: Int) -> Void) {
        let n = product(shape)
        if n == 0 { return }
        if shape.isEmpty { body(0, 0, 0, 1, 0, 0, 0); return }
        let r = shape.count
        let inner = shape[r - 1]
        var idx = [Int](repeating: 0, count: r)
        var oa = 0, ob = 0, oc = 0, done = 0
        while done < n {
            body(oa, ob, oc, inner, sa[r - 1], sb[r - 1], sc[r - 1])
            done += inner
            var k = r - 2
            while k >= 0 {
                idx[k] += 1
                oa += sa[k]; ob += sb[k]; oc += sc[k]
                if idx[k] < shape[k] { break }
                oa -= sa[k] * shape[k]; ob -= sb[k] * shape[k]; oc -= sc[k] * shape[k]
                idx[k] = 0
                k -= 1
            }
        }
    }
}
