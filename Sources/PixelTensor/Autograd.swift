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
