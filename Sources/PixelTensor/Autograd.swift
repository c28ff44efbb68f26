/// Reverse-mode autograd on a tape.
///
/// Every differentiable op that runs while gradients are enabled and has an input that requires grad
/// records a `Node`: its inputs, a sequence number on the tape, and its backward kernel. `backward()`
/// replays the backward kernels of the nodes reachable from the loss in reverse tape order. Backward
/// kernels *accumulate* into their inputs' gradients (llm.c's `+=` rule), so fan-in needs no special code.
public final class Node {
    public let op: String
    public let seq: Int
    public let inputs: [Tensor]
    /// Receives (output, gradient of the output) and accumulates into the inputs' gradients.
    let backwardFn: (Tensor, Tensor) -> Void

    init(op: String, seq: Int, inputs: [Tensor], backward: @escaping (Tensor, Tensor) -> Void) {
        self.op = op
        self.seq = seq
        self.inputs = inputs
        self.backwardFn = backward
    }
}

public enum Autograd {
    nonisolated(unsafe) static var enabled = true
    nonisolated(unsafe) static var nextSeq = 0

    /// Whether ops currently record onto the tape.
    public static var isEnabled: Bool { enabled }

    /// Runs `body` without recording (torch.no_grad()).
    public static func noGrad<T>(_ body: () throws -> T) rethrows -> T {
        let saved = enabled
        enabled = false
        defer { enabled = saved }
        return try body()
    }

    /// Runs `body` with recording on, also inside a backward kernel (where recording is off): the
    /// recomputation of `checkpoint`.
    public static func withGrad<T>(_ body: () throws -> T) rethrows -> T {
        let saved = enabled
        enabled = true
        defer { enabled = saved }
        return try body()
    }

    /// Activation checkpointing (torch.utils.checkpoint): `body(inputs)` runs without recording, so none of
    /// its intermediate tensors outlive it; only `inputs` are kept. Backward re-runs `body` with recording on
    /// copies of `inputs` and back-propagates the output's gradient through that recomputation into the
    /// inputs and into `params`. `params` must list every tensor `body` reads besides `inputs` that may need
    /// a gradient (a layer's weights): they become inputs of the recorded node, so `backward`'s
    /// `onLeafComplete` still fires for them only when their gradients are final. `body` must compute the
    /// same values when run again (no unseeded randomness). Without recording, or when nothing needs a
    /// gradient, it is just `body(inputs)`.
    public static func checkpoint(_ inputs: [Tensor], params: [Tensor], _ body: @escaping ([Tensor]) -> Tensor) -> Tensor {
        guard enabled, inputs.contains(where: { $0.requiresGrad }) || params.contains(where: { $0.requiresGrad }) else {
            return body(inputs)
        }
        let out = noGrad { body(inputs) }
        return record("checkpoint", out, inputs: inputs + params) { _, gout in
            let copies = inputs.map(recomputationInput)
            let y = withGrad { body(copies) }
            guard y.requiresGrad else { return }
            y.backward(gout)
            for (x, c) in zip(inputs, copies) where x.requiresGrad {
                if let g = c.grad { x.accumulateGrad(g) }
            }
        }
    }

    /// A kept input as a recomputation reads it: the same values without their history, collecting its own gradient.
    private static func recomputationInput(_ x: Tensor) -> Tensor {
        let c = x.detach()
        c.requiresGrad = x.requiresGrad
        return c
    }

    /// `checkpoint` for a layer whose rows (dim 0: conversations) do not interact: forward runs `body` on all of `x`,
    /// backward recomputes and back-propagates one row at a time through `row(r, x[r])` (which must compute what
    /// `body` computes for that row: its own mask row, its own dropout seeds). Backward then holds one row's
    /// activations and gradients instead of the whole batch's (at the 7B recipe, 1.9 GB of working set for three
    /// conversations becomes about 0.65 GB). The weights' gradients are summed row by row: equal to `checkpoint`'s up
    /// to the order of float sums.
    public static func checkpointRows(_ x: Tensor, params: [Tensor], _ body: @escaping (Tensor) -> Tensor,
                                      row: @escaping (Int, Tensor) -> Tensor) -> Tensor {
        checkpointRows(x, shared: [], params: params, { x, _ in body(x) }, row: { r, x, _ in row(r, x) })
    }

    /// `checkpointRows` where every row also reads the tensors `shared` whole (an image's features shared by its
    /// targets): like `x` they are kept (not their history) and get their gradient, summed over the rows, once
    /// backward has gone through every row. `body(x, shared)` and `row(r, x[r], shared)` get them as arguments.
    public static func checkpointRows(_ x: Tensor, shared: [Tensor], params: [Tensor], _ body: @escaping (Tensor, [Tensor]) -> Tensor,
                                      row: @escaping (Int, Tensor, [Tensor]) -> Tensor) -> Tensor {
        let rows = x.rank > 0 ? x.dim(0) : 0
        guard rows > 1 else { return checkpoint([x] + shared, params: params) { body($0[0], Array($0.dropFirst())) } }
        guard enabled, x.requiresGrad || shared.contains(where: { $0.requiresGrad }) || params.contains(where: { $0.requiresGrad }) else {
            return body(x, shared)
        }
        let out = noGrad { body(x, shared) }
        return record("checkpoint_rows", out, inputs: [x] + shared + params) { _, gout in
            let dx = x.requiresGrad ? Tensor.zeros(x.shape) : nil
            let per = x.count / rows
            let copies = shared.map(recomputationInput)
            for r in 0..<rows {
                let c = x.slice(axis: 0, r, r + 1).detachedCopy()
                c.requiresGrad = x.requiresGrad
                let y = withGrad { row(r, c, copies) }
                guard y.requiresGrad else { continue }
                y.backward(gout.slice(axis: 0, r, r + 1).contiguousData())
                if let dx, let g = c.grad { (dx.ptr + r * per).update(from: g.contiguousData().ptr, count: per) }
            }
            if let dx { x.accumulateGrad(dx) }
            for (s, c) in zip(shared, copies) where s.requiresGrad {
                if let g = c.grad { s.accumulateGrad(g) }
            }
        }
    }

    /// Records `out` as produced by `op` from `inputs` if any input requires grad. Returns `out`.
    @discardableResult
    public static func record(_ op: String, _ out: Tensor, inputs: [Tensor],
                              backward: @escaping (_ out: Tensor, _ gout: Tensor) -> Void) -> Tensor {
        guard enabled, inputs.contains(where: { $0.requiresGrad }) else { return out }
        out.requiresGrad = true
        out.node = Node(op: op, seq: nextSeq, inputs: inputs, backward: backward)
        nextSeq += 1
        return out
    }
}

extension Tensor {
    /// The gradient buffer of this tensor, allocated zero-filled on first use. Backward kernels add into it.
    public func gradBuffer() -> Tensor {
        if let g = grad { return g }
        let g = Tensor.zeros(shape)
        grad = g
        return g
    }

    /// Adds `g` (same shape, any layout) into this tensor's gradient.
    public func accumulateGrad(_ g: Tensor) {
        guard requiresGrad else { return }
        precondition(g.shape == shape, "gradient shape \(describe(g.shape)) for tensor \(describe(shape))")
        if grad == nil { grad = g.detachedCopy(); return }
        let dst = gradBuffer().ptr
        let src = g.contiguousData().ptr
        for i in 0..<count { dst[i] += src[i] }
    }

    /// Reverse-mode differentiation from this tensor. `gradient` defaults to ones (a scalar loss).
    /// Leaves that require grad receive `.grad` (accumulated, as in PyTorch); the graph is released.
    ///
    /// `onLeafComplete` (optional) is called with each leaf as soon as its gradient is final: right after the
    /// backward kernel of the earliest recorded op that reads it (its first use in the forward), so a data-parallel
    /// trainer can start reducing a bucket of gradients while the rest of backward runs (ZeRO-2's overlap).
    /// `afterNode` (optional) is called after every backward kernel (to drive communication progress).
    public func backward(_ gradient: Tensor? = nil, retainGraph: Bool = false,
                         onLeafComplete: ((Tensor) -> Void)? = nil, afterNode: (() -> Void)? = nil) {
        precondition(requiresGrad, "backward() on a tensor that does not require grad")
        // Collect the tensors with nodes reachable from here.
        var order: [Tensor] = []
        var seen = Set<ObjectIdentifier>()
        var stack: [Tensor] = [self]
        // leaf -> the smallest sequence number of a node reading it
        var firstUse: [ObjectIdentifier: (seq: Int, leaf: Tensor)] = [:]
        while let t = stack.popLast() {
            guard let n = t.node, seen.insert(ObjectIdentifier(n)).inserted else { continue }
            order.append(t)
            for i in n.inputs where i.requiresGrad {
                stack.append(i)
                if onLeafComplete != nil, i.node == nil {
                    let id = ObjectIdentifier(i)
                    if let f = firstUse[id] { if n.seq < f.seq { firstUse[id] = (n.seq, i) } } else { firstUse[id] = (n.seq, i) }
                }
            }
        }
        order.sort { $0.node!.seq > $1.node!.seq }
        var completes: [Int: [Tensor]] = [:]
        for (_, f) in firstUse { completes[f.seq, default: []].append(f.leaf) }
        let g0: Tensor
        if let gradient {
            precondition(gradient.shape == shape, "backward: gradient shape \(describe(gradient.shape)) for output \(describe(shape))")
            g0 = gradient.detachedCopy()
        } else {
            g0 = Tensor.ones(shape)
        }
        if let existing = grad {
            let p = existing.ptr, q = g0.ptr
            for i in 0..<count { p[i] += q[i] }
        } else {
            grad = g0
        }
        Autograd.noGrad {
            for t in order {
                let n = t.node!
                if let g = t.grad { n.backwardFn(t, g) }
                if !t.retainsGrad && !(t === self && node == nil) { t.grad = nil }
                if !retainGraph { t.node = nil }
                if let done = completes[n.seq], let onLeafComplete { for leaf in done { onLeafComplete(leaf) } }
                afterNode?()
            }
        }
    }

    /// Clears `.grad` (torch's `zero_grad(set_to_none=True)`).
    public func zeroGrad() { grad = nil }
}
