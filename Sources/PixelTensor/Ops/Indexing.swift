// Indexing ops: concat, split, index-select, gather, scatter-add, embedding.
//
// Each op is an enum holding its forward and backward kernels side by side (raw pointers, contiguous
// row-major memory), plus a `validate` function that throws a ShapeError naming the op and the shapes
// (or the bad index and its bound), and the Tensor-level function that runs the kernel and records
// the tape. Index arguments are Swift [Int].
//
// Axis-wise ops view a contiguous tensor as [outer, n, inner]: outer = product of the dims before
// the axis, n = the length of the axis, inner = product of the dims after it.

/// (outer, inner) for viewing `shape` as [outer, shape[axis], inner].
@inlinable
func axisSplit(_ shape: [Int], _ axis: Int) -> (outer: Int, inner: Int) {
    (product(Array(shape[..<axis])), product(Array(shape[(axis + 1)...])))
}

/// Runs `body` with a pointer to the array's elements; does nothing for an empty array (whose buffer
/// may have no address).
@inlinable
func withIndices(_ a: [Int], _ body: (UnsafePointer<Int>) -> Void) {
    a.withUnsafeBufferPointer { if let p = $0.baseAddress { body(p) } }
}

/// Normalises an axis that may be negative against `rank`; throws naming the op and the shape.
func normalizedAxis(_ a: Int, _ shape: [Int], op: String) throws -> Int {
    let r = a < 0 ? a + shape.count : a
    guard r >= 0 && r < shape.count else { throw ShapeError(op, "axis \(a) out of range for shape \(describe(shape))") }
    return r
}

// MARK: - concat

public enum ConcatOp {
    /// The output shape; every input must match the first except along `axis`.
    public static func validate(_ shapes: [[Int]], axis: Int) throws -> (axis: Int, shape: [Int]) {
        guard let first = shapes.first else { throw ShapeError("concat", "no tensors to concatenate") }
        let ax = try normalizedAxis(axis, first, op: "concat")
        var out = first
        out[ax] = 0
        for (k, s) in shapes.enumerated() {
            var same = s.count == first.count
            if same { for d in 0..<s.count where d != ax && s[d] != first[d] { same = false } }
            guard same else {
                throw ShapeError("concat", "tensor \(k) has shape \(describe(s)), tensor 0 has \(describe(first)); "
                    + "they must match except on axis \(axis)")
            }
            out[ax] += s[ax]
        }
        return (ax, out)
    }

    /// out[o, offset + j, i] = x[o, j, i]
    @inlinable
    static func forward(_ out: UnsafeMutablePointer<Float>,  // [outer, total, inner]
                        _ x: UnsafePointer<Float>,            // [outer, n, inner]
                        outer: Int, n: Int, inner: Int, total: Int, offset: Int) {
        let row = n * inner
        if row == 0 { return }
        for o in 0..<outer { (out + (o * total + offset) * inner).update(from: x + o * row, count: row) }
    }

    /// dx[o, j, i] += dout[o, offset + j, i]
    @inlinable
    static func backward(_ dx: UnsafeMutablePointer<Float>,   // [outer, n, inner]
                         _ dout: UnsafePointer<Float>,         // [outer, total, inner]
                         outer: Int, n: Int, inner: Int, total: Int, offset: Int) {
        let row = n * inner
        for o in 0..<outer {
            let d = dx + o * row, g = dout + (o * total + offset) * inner
            for j in 0..<row { d[j] += g[j] }
        }
    }
}

/// Concatenates tensors along `axis` (torch.cat). Inputs may be any layout.
public func concat(_ tensors: [Tensor], axis: Int = 0) -> Tensor {
    let (ax, shape) = checked { try ConcatOp.validate(tensors.map(\.shape), axis: axis) }
    let out = Tensor(empty: shape)
    let (outer, inner) = axisSplit(shape, ax)
    let total = shape[ax]
    var offsets: [Int] = []
    var offset = 0
    for t in tensors {
        let n = t.shape[ax]
        ConcatOp.forward(out.ptr, t.contiguousData().ptr, outer: outer, n: n, inner: inner, total: total, offset: offset)
        offsets.append(offset)
        offset += n
    }
    return Autograd.record("concat", out, inputs: tensors) { _, g in
        let gp = g.contiguousData().ptr
        for (k, t) in tensors.enumerated() where t.requiresGrad {
            ConcatOp.backward(t.gradBuffer().ptr, gp, outer: outer, n: t.shape[ax], inner: inner, total: total,
                              offset: offsets[k])
        }
    }
}

// MARK: - split

public enum SplitOp {
    /// The sizes must be non-negative and add up to the length of the axis.
    public static func validate(_ shape: [Int], sizes: [Int], axis: Int) throws -> Int {
        let ax = try normalizedAxis(axis, shape, op: "split")
        guard sizes.allSatisfy({ $0 >= 0 }) && sizes.reduce(0, +) == shape[ax] else {
            throw ShapeError("split", "sizes \(sizes) do not add up to \(shape[ax]), the length of axis \(axis) of \(describe(shape))")
        }
        return ax
    }

    /// piece[o, j, i] = x[o, offset + j, i]
    @inlinable
    static func forward(_ piece: UnsafeMutablePointer<Float>,  // [outer, n, inner]
                        _ x: UnsafePointer<Float>,              // [outer, total, inner]
                        outer: Int, n: Int, inner: Int, total: Int, offset: Int) {
        let row = n * inner
        if row == 0 { return }
        for o in 0..<outer { (piece + o * row).update(from: x + (o * total + offset) * inner, count: row) }
    }

    /// dx[o, offset + j, i] += dpiece[o, j, i]
    @inlinable
    static func backward(_ dx: UnsafeMutablePointer<Float>,    // [outer, total, inner]
                         _ dpiece: UnsafePointer<Float>,        // [outer, n, inner]
                         outer: Int, n: Int, inner: Int, total: Int, offset: Int) {
        let row = n * inner
        for o in 0..<outer {
            let d = dx + (o * total + offset) * inner, g = dpiece + o * row
            for j in 0..<row { d[j] += g[j] }
        }
    }
}

extension Tensor {
    /// Splits into pieces of the given sizes along `axis` (torch.split with a list of sizes). Each piece
    /// is a contiguous copy with its own tape node; their gradients add into this tensor's gradient.
    public func split(sizes: [Int], axis: Int = 0) -> [Tensor] {
        let ax = checked { try SplitOp.validate(shape, sizes: sizes, axis: axis) }
        let x = contiguousData()
        let (outer, inner) = axisSplit(shape, ax)
        let total = shape[ax]
        var pieces: [Tensor] = []
        var offset = 0
        for n in sizes {
            var ps = shape
            ps[ax] = n
            let piece = Tensor(empty: ps)
            SplitOp.forward(piece.ptr, x.ptr, outer: outer, n: n, inner: inner, total: total, offset: offset)
            pieces.append(Autograd.record("split", piece, inputs: [self]) { [offset] _, g in
                SplitOp.backward(self.gradBuffer().ptr, g.contiguousData().ptr, outer: outer, n: n, inner: inner,
                                 total: total, offset: offset)
            })
            offset += n
        }
        return pieces
    }
}

// MARK: - index select

public enum IndexSelectOp {
    public static func validate(_ shape: [Int], axis: Int, indices: [Int]) throws -> Int {
        let ax = try normalizedAxis(axis, shape, op: "index_select")
        for (k, i) in indices.enumerated() where i < 0 || i >= shape[ax] {
            throw ShapeError("index_select", "index \(i) (position \(k)) out of range 0..<\(shape[ax]) on axis \(axis) of \(describe(shape))")
        }
        return ax
    }

    /// out[o, j, i] = x[o, idx[j], i]
    @inlinable
    static func forward(_ out: UnsafeMutablePointer<Float>,  // [outer, m, inner]
                        _ x: UnsafePointer<Float>,            // [outer, n, inner]
                        _ idx: UnsafePointer<Int>,            // [m], each in 0..<n
                        outer: Int, n: Int, m: Int, inner: Int) {
        for o in 0..<outer {
            for j in 0..<m {
                (out + (o * m + j) * inner).update(from: x + (o * n + idx[j]) * inner, count: inner)
            }
        }
    }

    /// dx[o, idx[j], i] += dout[o, j, i]  (repeated indices accumulate)
    @inlinable
    static func backward(_ dx: UnsafeMutablePointer<Float>,   // [outer, n, inner]
                         _ dout: UnsafePointer<Float>,         // [outer, m, inner]
                         _ idx: UnsafePointer<Int>,            // [m]
                         outer: Int, n: Int, m: Int, inner: Int) {
        for o in 0..<outer {
            for j in 0..<m {
                let d = dx + (o * n + idx[j]) * inner, g = dout + (o * m + j) * inner
                for i in 0..<inner { d[i] += g[i] }
            }
        }
    }
}

extension Tensor {
    /// Picks entries `indices` along `axis` (torch.index_select); repeats allowed.
    public func indexSelect(axis: Int, _ indices: [Int]) -> Tensor {
        let ax = checked { try IndexSelectOp.validate(shape, axis: axis, indices: indices) }
        let x = contiguousData()
        let (outer, inner) = axisSplit(shape, ax)
        let n = shape[ax], m = indices.count
        var os = shape
        os[ax] = m
        let out = Tensor(empty: os)
        withIndices(indices) { IndexSelectOp.forward(out.ptr, x.ptr, $0, outer: outer, n: n, m: m, inner: inner) }
        return Autograd.record("index_select", out, inputs: [self]) { _, g in
            let gp = g.contiguousData().ptr
            let dx = self.gradBuffer().ptr
            withIndices(indices) {
                IndexSelectOp.backward(dx, gp, $0, outer: outer, n: n, m: m, inner: inner)
            }
        }
    }
}

// MARK: - gather / scatter-add (torch semantics, index shaped like the output)

/// For every position p (row-major) of an index tensor of shape `indexShape`, the flat offset into a
/// contiguous tensor of shape `target` of the element p with p[axis] replaced by index[p]. Also the
/// flat offset of p itself in a contiguous tensor of shape `other` (the source of scatter-add, which
/// may be larger than the index). Validates ranks, extents and index values.
func indexedOffsets(op: String, target: [Int], axis: Int, index: [Int], indexShape: [Int],
                    other: [Int]? = nil, otherName: String = "") throws -> (targetOffsets: [Int], otherOffsets: [Int]) {
    let ax = try normalizedAxis(axis, target, op: op)
    guard indexShape.count == target.count else {
        throw ShapeError(op, "index of shape \(describe(indexShape)) must have the rank of \(describe(target))")
    }
    guard index.count == product(indexShape) else {
        throw ShapeError(op, "\(index.count) index values for index shape \(describe(indexShape))")
    }
    for d in 0..<target.count where d != ax && indexShape[d] > target[d] {
        throw ShapeError(op, "index shape \(describe(indexShape)) exceeds \(describe(target)) on axis \(d)")
    }
    if let other {
        guard other.count == indexShape.count && zip(indexShape, other).allSatisfy({ $0 <= $1 }) else {
            throw ShapeError(op, "index shape \(describe(indexShape)) exceeds \(otherName) \(describe(other))")
        }
    }
    let ts = contiguousStrides(target), os = contiguousStrides(other ?? indexShape)
    let r = indexShape.count, bound = target[ax]
    var tOff = [Int](repeating: 0, count: index.count), oOff = [Int](repeating: 0, count: index.count)
    var pos = [Int](repeating: 0, count: r)
    for k in 0..<index.count {
        let v = index[k]
        guard v >= 0 && v < bound else {
            throw ShapeError(op, "index \(v) at position \(pos) out of range 0..<\(bound) on axis \(axis) of \(describe(target))")
        }
        var t = 0, o = 0
        for d in 0..<r { t += (d == ax ? v : pos[d]) * ts[d]; o += pos[d] * os[d] }
        tOff[k] = t
        oOff[k] = o
        var d = r - 1
        while d >= 0 { pos[d] += 1; if pos[d] < indexShape[d] { break }; pos[d] = 0; d -= 1 }
    }
    return (tOff, oOff)
}

public enum GatherOp {
    /// out[k] = x[off[k]]
    @inlinable
    static func forward(_ out: UnsafeMutablePointer<Float>,  // [K] (index shape)
                        _ x: UnsafePointer<Float>,            // input, contiguous
                        _ off: UnsafePointer<Int>,            // [K] offsets into x
                        count: Int) {
        for k in 0..<count { out[k] = x[off[k]] }
    }

    /// dx[off[k]] += dout[k]
    @inlinable
    static func backward(_ dx: UnsafeMutablePointer<Float>,   // input shape
                         _ dout: UnsafePointer<Float>,         // [K]
                         _ off: UnsafePointer<Int>,            // [K]
                         count: Int) {
        for k in 0..<count { dx[off[k]] += dout[k] }
    }
}

extension Tensor {
    /// torch.gather(self, axis, index): `index` (row-major, shape `indexShape`, same rank as self, each
    /// extent <= self's except on `axis`) picks along `axis`; the output has the index's shape.
    public func gather(axis: Int, index: [Int], indexShape: [Int]) -> Tensor {
        let (off, _) = checked { try indexedOffsets(op: "gather", target: shape, axis: axis, index: index, indexShape: indexShape) }
        let x = contiguousData()
        let out = Tensor(empty: indexShape)
        withIndices(off) { GatherOp.forward(out.ptr, x.ptr, $0, count: index.count) }
        return Autograd.record("gather", out, inputs: [self]) { _, g in
            let gp = g.contiguousData().ptr
            let dx = self.gradBuffer().ptr
            withIndices(off) { GatherOp.backward(dx, gp, $0, count: index.count) }
        }
    }
}

public enum ScatterAddOp {
    /// out[toff[k]] += src[soff[k]]  (out already holds a copy of base)
    @inlinable
    static func forward(_ out: UnsafeMutablePointer<Float>,  // base shape
                        _ src: UnsafePointer<Float>,          // src shape, contiguous
                        _ toff: UnsafePointer<Int>,           // [K] offsets into out
                        _ soff: UnsafePointer<Int>,           // [K] offsets into src
                        count: Int) {
        for k in 0..<count { out[toff[k]] += src[soff[k]] }
    }

    /// dsrc[soff[k]] += dout[toff[k]]  (src entries outside the index get nothing)
    @inlinable
    static func backwardSrc(_ dsrc: UnsafeMutablePointer<Float>,  // src shape
                            _ dout: UnsafePointer<Float>,          // base shape
                            _ toff: UnsafePointer<Int>,            // [K]
                            _ soff: UnsafePointer<Int>,            // [K]
                            count: Int) {
        for k in 0..<count { dsrc[soff[k]] += dout[toff[k]] }
    }

    /// dbase += dout
    @inlinable
    static func backwardBase(_ dbase: UnsafeMutablePointer<Float>,  // base shape
                             _ dout: UnsafePointer<Float>,           // base shape
                             count: Int) {
        for i in 0..<count { dbase[i] += dout[i] }
    }
}

/// out = base.clone(); out.scatter_add_(axis, index, src). `index` is row-major with shape
/// `indexShape` (same rank as base, extents <= base's except on `axis`, and <= src's everywhere); src
/// entries outside the index's extent are unused and get zero gradient. Gradients flow to base and src.
public func scatterAdd(_ base: Tensor, axis: Int, index: [Int], indexShape: [Int], src: Tensor) -> Tensor {
    let (toff, soff) = checked {
        try indexedOffsets(op: "scatter_add", target: base.shape, axis: axis, index: index, indexShape: indexShape,
                           other: src.shape, otherName: "src")
    }
    let bc = base.contiguousData(), sc = src.contiguousData()
    let out = Tensor(empty: base.shape)
    out.ptr.update(from: bc.ptr, count: base.count)
    withIndices(toff) { t in
        withIndices(soff) { s in ScatterAddOp.forward(out.ptr, sc.ptr, t, s, count: index.count) }
    }
    return Autograd.record("scatter_add", out, inputs: [base, src]) { _, g in
        let gp = g.contiguousData().ptr
        if base.requiresGrad { ScatterAddOp.backwardBase(base.gradBuffer().ptr, gp, count: base.count) }
        if src.requiresGrad {
            let ds = src.gradBuffer().ptr
            withIndices(toff) { t in
                withIndices(soff) { s in ScatterAddOp.backwardSrc(ds, gp, t, s, count: index.count) }
            }
        }
    }
}

// MARK: - embedding

public enum EmbeddingOp {
    /// Checks the weight is [V, D] and every id is in 0..<V; returns the normalised padding index.
    public static func validate(weight: [Int], ids: [Int], idsShape: [Int], paddingIdx: Int?) throws -> Int? {
        guard weight.count == 2 else { throw ShapeError("embedding", "weight must be [V, D], got \(describe(weight))") }
        guard ids.count == product(idsShape) else {
            throw ShapeError("embedding", "\(ids.count) ids for ids shape \(describe(idsShape))")
        }
        let V = weight[0]
        for (k, id) in ids.enumerated() where id < 0 || id >= V {
            throw ShapeError("embedding", "id \(id) (position \(k)) out of range 0..<\(V) for weight \(describe(weight))")
        }
        guard let p = paddingIdx else { return nil }
        let pn = p < 0 ? p + V : p
        guard pn >= 0 && pn < V else {
            throw ShapeError("embedding", "padding index \(p) out of range -\(V)..<\(V) for weight \(describe(weight))")
        }
        return pn
    }

    /// out[t, :] = w[ids[t], :]
    @inlinable
    static func forward(_ out: UnsafeMutablePointer<Float>,  // [T, D]
                        _ w: UnsafePointer<Float>,            // [V, D]
                        _ ids: UnsafePointer<Int>,            // [T]
                        T: Int, D: Int) {
        for t in 0..<T { (out + t * D).update(from: w + ids[t] * D, count: D) }
    }

    /// dw[ids[t], :] += dout[t, :] for every t whose id is not the padding index
    @inlinable
    static func backward(_ dw: UnsafeMutablePointer<Float>,   // [V, D]
                         _ dout: UnsafePointer<Float>,         // [T, D]
                         _ ids: UnsafePointer<Int>,            // [T]
                         T: Int, D: Int, paddingIdx: Int) {  // paddingIdx -1: none
        for t in 0..<T where ids[t] != paddingIdx {
            let d = dw + ids[t] * D, g = dout + t * D
            for j in 0..<D { d[j] += g[j] }
        }
    }
}

/// Embedding lookup (torch.nn.functional.embedding): weight [V, D], `ids` row-major with shape
/// `idsShape` (default [ids.count]) -> [idsShape..., D]. Repeated ids add their gradients; the row of
/// `paddingIdx` (negative counts from the end) is looked up normally but receives no gradient.
public func embedding(_ weight: Tensor, ids: [Int], idsShape: [Int]? = nil, paddingIdx: Int? = nil) -> Tensor {
    let shape = idsShape ?? [ids.count]
    let pad = checked { try EmbeddingOp.validate(weight: weight.shape, ids: ids, idsShape: shape, paddingIdx: paddingIdx) } ?? -1
    let D = weight.shape[1], T = ids.count
    let w = weight.contiguousData()
    let out = Tensor(empty: shape + [D])
    withIndices(ids) { EmbeddingOp.forward(out.ptr, w.ptr, $0, T: T, D: D) }
    return Autograd.record("embedding", out, inputs: [weight]) { _, g in
        let gp = g.contiguousData().ptr
        let dw = weight.gradBuffer().ptr
        withIndices(ids) {
            EmbeddingOp.backward(dw, gp, $0, T: T, D: D, paddingIdx: pad)
        }
    }
}
