import Foundation
import PixelDistributed
import PixelModel
import PixelTensor

/// AdamW over flat buckets, data parallel, with the optimizer state sharded ZeRO-style.
///
///   stage 0  the DDP baseline: each bucket's gradient is allreduced (sum); every rank steps every element and
///            keeps the whole m, v.
///   stage 1  gradients reduce-scattered (sum) at the accumulation boundary; rank r steps its slice with its m, v;
///            the updated slices are all-gathered into every replica.
///   stage 2  as stage 1, but each bucket is reduce-scattered (non-blocking) as soon as backward has produced it,
///            in every micro-batch, and the rank's slice is accumulated; `progress()` drives the outstanding
///            collectives between backward kernels, so communication overlaps the rest of backward.
///
/// Gradients are summed, not averaged: the loss of every micro-batch is already normalised by the global counts
/// (supervised tokens, masks) of the whole step, so N ranks compute the update that one rank computes for the same
/// global batch. Global gradient-norm clipping (torch's clip_grad_norm_: coef = max / (norm + 1e-6), at most 1)
/// uses the norm over all ranks' slices; a non-finite norm skips the update.
public final class ZeroAdamW {
    public let buckets: FlatBuckets
    public let comm: any Communicator
    public let stage: Int
    /// How gradients are reduced and accumulated: the stage, except on one rank, where every stage is stage 0 (nothing
    /// to reduce or gather; the gradients accumulate in the buckets themselves, so no second gradient copy is held).
    let mode: Int
    public let beta1: Float, beta2: Float, eps: Float, weightDecay: Float
    /// Optimizer steps taken (the AdamW bias-correction step).
    public internal(set) var step = 0
    /// Per bucket: the reduced gradient of the owned slice (stages 1, 2) [slice], m and v [slice] (stage 0: [padded]).
    var reduced: [Tensor]
    public internal(set) var m: [Tensor]
    public internal(set) var v: [Tensor]
    /// Stage 2: outstanding reduce-scatters (bucket, request, receive buffer).
    var pending: [(bucket: Int, request: CommRequest, recv: Tensor)] = []
    /// Stage 2: tensors of each bucket whose gradient is not final yet in this micro-batch.
    var remaining: [Int] = []
    /// Stage 2: buckets are reduced in bucket order on every rank (a collective's messages are matched by the order
    /// of the calls, and a micro-batch without masks finishes the decoder's buckets later on one rank than on
    /// another): a finished bucket waits for the ones before it.
    var ready: [Bool] = []
    var nextToStart = 0
    let bucketOf: [ObjectIdentifier: Int]
    /// Seconds spent waiting on communication (exposed), and in the update, since the last `takeTimes()`.
    public var exposedCommSeconds = 0.0
    public var updateSeconds = 0.0
    /// Trace events (name, start, duration in seconds) when tracing.
    public var traceEvents: [(name: String, start: Double, seconds: Double)]? = nil
    let traceOrigin = Date()

    public init(buckets: FlatBuckets, comm: any Communicator, stage: Int, betas: (Float, Float), eps: Float = 1e-8,
                weightDecay: Float) {
        precondition([0, 1, 2].contains(stage), "ZeRO stage \(stage)")
        precondition(buckets.layout.worldSize == comm.size, "layout for \(buckets.layout.worldSize) ranks, world of \(comm.size)")
        self.buckets = buckets
        self.comm = comm
        self.stage = stage
        mode = comm.size == 1 ? 0 : stage
        beta1 = betas.0
        beta2 = betas.1
        self.eps = eps
        self.weightDecay = weightDecay
        let L = buckets.layout
        let stateLen: (Int) -> Int = { b in stage == 0 ? L.buckets[b].padded : L.sliceLength(b) }
        reduced = L.buckets.indices.map { [mode] in Tensor.zeros([mode == 0 ? 0 : stateLen($0)]) }
        m = L.buckets.indices.map { Tensor.zeros([stateLen($0)]) }
        v = L.buckets.indices.map { Tensor.zeros([stateLen($0)]) }
        bucketOf = buckets.bucketOfTensor()
    }

    /// Optimizer-state bytes held by this rank (m and v), and what one rank would hold without sharding.
    public var stateBytes: (local: Int, unsharded: Int) {
        (m.reduce(0) { $0 + $1.count } * 8, buckets.layout.totalElements * 8)
    }

    // MARK: micro-batches

    /// Call before each micro-batch's backward.
    public func beginMicroBatch() {
        if mode == 2 {
            remaining = buckets.layout.buckets.map { $0.params.count }
            ready = [Bool](repeating: false, count: remaining.count)
            nextToStart = 0
        }
    }

    /// Backward's leaf hook: counts finished tensors; a finished bucket starts its reduce-scatter (stage 2).
    public func leafComplete(_ t: Tensor) {
        guard mode == 2, let b = bucketOf[ObjectIdentifier(t)] else { return }
        remaining[b] -= 1
        if remaining[b] == 0 {
            ready[b] = true
            startReady()
        }
    }

    /// Starts, in bucket order, every bucket that is ready and whose predecessors have started.
    func startReady() {
        while nextToStart < ready.count && ready[nextToStart] {
            startReduce(nextToStart)
            nextToStart += 1
        }
    }

    /// Between backward kernels: lets the ring reduce-scatters advance (stage 2).
    public func progress() {
        guard mode == 2, !pending.isEmpty else { return }
        for p in pending { _ = p.request.test() }
    }

    func startReduce(_ b: Int) {
        let s = buckets.layout.sliceLength(b)
        let recv = Tensor.zeros([s])
        let t0 = Date()
        let req = comm.ireduceScatter(UnsafeRawPointer(buckets.grads[b].ptr), into: UnsafeMutableRawPointer(recv.ptr), count: s,
                                      datatype: .float32, op: .sum, algorithm: .default)
        trace("reduce-scatter b\(b) start", t0, Date().timeIntervalSince(t0))
        pending.append((b, req, recv))
    }

    /// After each micro-batch's backward. Stage 2: finishes its reduce-scatters (a bucket whose gradients never
    /// arrived, e.g. unused in this micro-batch, is reduced now), accumulates the slices and clears the buffers.
    public func endMicroBatch() {
        guard mode == 2 else { return }
        for b in remaining.indices where remaining[b] > 0 { remaining[b] = 0; ready[b] = true }
        startReady()
        let t0 = Date()
        for p in pending {
            p.request.wait()
            let dst = reduced[p.bucket].ptr, src = p.recv.ptr
            for i in 0..<p.recv.count { dst[i] += src[i] }
        }
        let waited = Date().timeIntervalSince(t0)
        exposedCommSeconds += waited
        trace("reduce-scatter wait", t0, waited)
        pending.removeAll()
        buckets.zeroGradients()
    }

    // MARK: the update

    public struct StepReport: Equatable, Sendable {
        public var gradNorm: Double
        public var clippedNorm: Double
        public var skipped: Bool
    }

    /// Per-tensor learning-rate multipliers (PyTorch's param groups with their own lr; `--lr-multipliers`), by the
    /// tensor's name in the layout; absent: 1. Set before the first update.
    public var lrMultipliers: [String: Float] = [:] {
        didSet { lrPieces = Self.pieces(layout: buckets.layout, multipliers: lrMultipliers) }
    }
    /// Per bucket: the element ranges (bucket coordinates, padding included) and their multiplier, in order.
    var lrPieces: [[(range: Range<Int>, scale: Float)]] = []

    static func pieces(layout L: BucketLayout, multipliers: [String: Float]) -> [[(range: Range<Int>, scale: Float)]] {
        L.buckets.indices.map { b in
            var out: [(range: Range<Int>, scale: Float)] = []
            var at = 0
            for p in L.params.filter({ $0.bucket == b }).sorted(by: { $0.offset < $1.offset }) {
                let s = multipliers[p.name] ?? 1
                if p.offset > at { out.append((at..<p.offset, 1)) }
                if let last = out.last, last.scale == s, last.range.upperBound == p.offset {
                    out[out.count - 1].range = last.range.lowerBound..<(p.offset + p.count)
                } else {
                    out.append((p.offset..<(p.offset + p.count), s))
                }
                at = p.offset + p.count
            }
            if at < L.buckets[b].padded { out.append((at..<L.buckets[b].padded, 1)) }
            return out
        }
    }

    /// Fault injection (tests, PIXELLM_FAULT_NAN_GRADIENT): the next update finds a NaN in one gradient element of
    /// this rank, put where the reduction carries it to every rank (before the reduce in stages 0 and 1, in the
    /// reduced slice in stage 2, whose norm is summed over ranks).
    public var poisonNextUpdate = false

    /// The optimizer step at the accumulation boundary: reduce (stages 0, 1), global norm, clip, AdamW, gather.
    public func update(lr: Float, maxGradNorm: Float?) -> StepReport {
        let L = buckets.layout
        if poisonNextUpdate {
            poisonNextUpdate = false
            if mode == 2 {
                if let b = reduced.firstIndex(where: { $0.count > 0 }) { reduced[b].ptr[0] = .nan }
            } else if let b = L.buckets.indices.first {
                buckets.grads[b].ptr[0] = .nan
            }
        }
        // 1. reduce
        let t0 = Date()
        switch mode {
        case 0:
            for b in L.buckets.indices where comm.size > 1 { comm.allreduce(buckets.grads[b].ptr, count: L.buckets[b].padded, op: .sum) }
        case 1:
            for b in L.buckets.indices {
                comm.reduceScatter(UnsafePointer(buckets.grads[b].ptr), into: reduced[b].ptr, count: L.sliceLength(b))
            }
        default:
            break
        }
        let commSeconds = Date().timeIntervalSince(t0)
        exposedCommSeconds += commSeconds
        if mode != 2 { trace(mode == 0 ? "allreduce" : "reduce-scatter", t0, commSeconds) }
        let t1 = Date()
        // 2. global norm over the owned elements
        var sumsq = 0.0
        for b in L.buckets.indices {
            let (p, n) = gradient(b)
            var acc = 0.0
            for i in 0..<n { let x = Double(p[i]); acc += x * x }
            sumsq += acc
        }
        if mode != 0 { sumsq = comm.allreduce(sumsq, op: .sum) }
        let norm = sumsq.squareRoot()
        var coef: Float = 1
        if let maxGradNorm, norm.isFinite {
            let c = Double(maxGradNorm) / (norm + 1e-6)
            if c < 1 { coef = Float(c) }
        }
        let skipped = !norm.isFinite
        if !skipped {
            step += 1
            for b in L.buckets.indices {
                let (g, n) = gradient(b)
                if coef != 1 { for i in 0..<n { g[i] *= coef } }
                let base = mode == 0 ? 0 : comm.rank * L.sliceLength(b)
                // the owned elements base ..< base + n, piece by piece with each piece's learning rate
                let pieces = lrPieces.isEmpty ? [(range: 0..<L.buckets[b].padded, scale: Float(1))] : lrPieces[b]
                for piece in pieces {
                    let lo = max(piece.range.lowerBound, base), hi = min(piece.range.upperBound, base + n)
                    guard lo < hi else { continue }
                    let (stepSize, bc2Sqrt, decay) = AdamWKernel.constants(lr: lr * piece.scale, step: step, beta1: beta1, beta2: beta2,
                                                                           weightDecay: weightDecay)
                    // in place in the parameters (padding has no parameter and no gradient: skipped)
                    buckets.valuePieces(b, lo..<hi) { p, r in
                        let k = r.lowerBound - base
                        AdamWKernel.update(p, UnsafePointer(g + k), m[b].ptr + k, v[b].ptr + k, n: r.count, decay: decay,
                                           beta1: beta1, beta2: beta2, stepSize: stepSize, bc2Sqrt: bc2Sqrt, eps: eps)
                    }
                }
            }
        }
        updateSeconds += Date().timeIntervalSince(t1)
        // 3. every replica gets the updated values: each bucket gathered through one bucket-sized buffer
        if mode != 0 && !skipped {
            let t2 = Date()
            for b in L.buckets.indices {
                let s = L.sliceLength(b), mine = (comm.rank * s)..<((comm.rank + 1) * s)
                let whole = Tensor(empty: [L.buckets[b].padded])
                whole.ptr.update(repeating: 0, count: whole.count)
                buckets.valuePieces(b, mine) { p, r in (whole.ptr + r.lowerBound).update(from: p, count: r.count) }
                comm.allgather(inPlace: whole.ptr, count: s)
                buckets.writeValues(b, 0..<L.buckets[b].padded, from: whole.ptr)
            }
            let s = Date().timeIntervalSince(t2)
            exposedCommSeconds += s
            trace("allgather", t2, s)
        }
        // 4. clear
        buckets.zeroGradients()
        for r in reduced { r.fill(0) }
        return StepReport(gradNorm: norm, clippedNorm: skipped ? norm : norm * Double(min(coef, 1)), skipped: skipped)
    }

    /// The gradient elements this rank steps: the whole padded bucket (stage 0) or the reduced slice.
    func gradient(_ b: Int) -> (UnsafeMutablePointer<Float>, Int) {
        mode == 0 ? (buckets.grads[b].ptr, buckets.layout.buckets[b].padded) : (reduced[b].ptr, reduced[b].count)
    }

    func trace(_ name: String, _ start: Date, _ seconds: Double) {
        guard traceEvents != nil else { return }
        traceEvents!.append((name, start.timeIntervalSince(traceOrigin), seconds))
    }

    /// Restores this rank's m and v of bucket b (from a checkpoint; the trainer sets `step`).
    public func restoreBucket(_ b: Int, m newM: [Float], v newV: [Float]) {
        precondition(newM.count == m[b].count && newV.count == v[b].count, "restore: bucket \(b) sizes")
        m[b].ptr.update(from: newM, count: newM.count)
        v[b].ptr.update(from: newV, count: newV.count)
    }
}
