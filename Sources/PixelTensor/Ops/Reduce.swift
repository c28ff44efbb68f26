// Sum and mean over axes. Accumulation is in Double (long sums lose precision in fp32).

extension Tensor {
    /// Sum over `axes` (all axes when empty). `keepDims` keeps them as size 1.
    public func sum(axes: [Int] = [], keepDims: Bool = false) -> Tensor {
        let ax = Set((axes.isEmpty ? Array(0..<rank) : axes).map { axis($0, op: "sum") })
        let x = contiguousData()
        var kept = shape
        for a in ax { kept[a] = 1 }
        let out = Tensor.zeros(kept)
        // accumulate into a Double buffer with the input iterated once
        let acc = UnsafeMutablePointer<Double>.allocate(capacity: max(out.count, 1))
        acc.initialize(repeating: 0, count: max(out.count, 1))
        defer { acc.deallocate() }
        let so = Shapes.broadcastStrides(out, to: shape)
        let px = x.ptr
        Broadcast.forEachRow(shape: shape, stridesA: so, stridesB: x.strides) { oo, ox, n, io, ix in
            if io == 0 {
                var s: Double = 0
                for j in 0..<n { s += Double(px[ox + j * ix]) }
                acc[oo] += s
            } else {
                for j in 0..<n { acc[oo + j * io] += Double(px[ox + j * ix]) }
            }
        }
        let po = out.ptr
        for i in 0..<out.count { po[i] = Float(acc[i]) }
        var finalShape = kept
        if !keepDims { finalShape = shape.enumerated().filter { !ax.contains($0.offset) }.map { $0.element } }
        let result = Tensor(storage: out.storage, shape: finalShape)
        return Autograd.record("sum", result, inputs: [self]) { [shape] _, g in
            // broadcast g back over the reduced axes
            let gk = g.contiguousData().viewed(kept)
            let d = self.gradBuffer()
            let sg = Shapes.broadcastStrides(gk, to: shape)
            let pd = d.ptr, pg = gk.ptr
            Broadcast.forEachRow(shape: shape, stridesA: d.strides, stridesB: sg) { od, og, n, id, ig in
                for j in 0..<n { pd[od + j * id] += pg[og + j * ig] }
            }
        }
    }

    public func sum(_ axes: Int..., keepDims: Bool = false) -> Tensor { sum(axes: axes, keepDims: keepDims) }

    /// Mean over `axes` (all axes when empty).
    public func mean(axes: [Int] = [], keepDims: Bool = false) -> Tensor {
        let ax = Set((axes.isEmpty ? Array(0..<rank) : axes).map { axis($0, op: "mean") })
        let n = ax.reduce(1) { $0 * shape[$1] }
        return sum(axes: Array(ax), keepDims: keepDims) * (1 / Float(max(n, 1)))
    }

    public func mean(_ axes: Int..., keepDims: Bool = false) -> Tensor { mean(axes: axes, keepDims: keepDims) }
}
