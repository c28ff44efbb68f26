import Foundation
import PixelTensor

/// Keys (after RoPE) and values of every LLaMA layer for the positions seen so far, and the key mask of
/// those positions (so the image tokens masked at prefill stay masked for every later step).
///
/// Use: `let cache = KVCache(config: c, batch: 1)`, then `llm(prefillEmbeds, attentionMask: m, cache: cache)`
/// and `llm(nextTokenEmbeds, cache: cache)` once per generated token. Position ids continue from
/// `length`. Storage grows by doubling. Cached entries are plain data: gradients reach the keys and values
/// of the current step only (generation runs without gradients anyway).
public final class KVCache {
    public let batch: Int, layers: Int, kvHeads: Int, headDim: Int
    /// Positions stored.
    public private(set) var length = 0
    public private(set) var capacity: Int
    var keys: [Tensor] = []     // per layer [B, Hkv, capacity, hd]
    var values: [Tensor] = []
    var mask: Tensor            // [B, capacity] additive: 0 or KeyMask.masked
    var anyMasked = false
    var pending = 0             // positions of the step in progress

    public init(batch: Int, layers: Int, kvHeads: Int, headDim: Int, capacity: Int = 256) {
        self.batch = batch
        self.layers = layers
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.capacity = max(capacity, 1)
        mask = Tensor.zeros([batch, self.capacity])
        for _ in 0..<layers {
            keys.append(Tensor(empty: [batch, kvHeads, self.capacity, headDim]))
            values.append(Tensor(empty: [batch, kvHeads, self.capacity, headDim]))
        }
    }

    public convenience init(config: PixelLMConfig, batch: Int, capacity: Int = 256) {
        self.init(batch: batch, layers: config.numHiddenLayers, kvHeads: config.numKeyValueHeads, headDim: config.headDim,
                  capacity: capacity)
    }

    /// Forgets every position.
    public func reset() {
        length = 0
        pending = 0
        anyMasked = false
        mask.fill(0)
    }

    /// The key validity of the stored positions, [B, length] of 1 / 0.
    public var keyValidity: Tensor {
        let out = Tensor(empty: [batch, length])
        for b in 0..<batch {
            for t in 0..<length { out.ptr[b * length + t] = mask.ptr[b * capacity + t] == 0 ? 1 : 0 }
        }
        return out
    }

    private func grow(to needed: Int) {
        guard needed > capacity else { return }
        let newCap = max(needed, 2 * capacity)
        func regrow(_ t: Tensor) -> Tensor {
            let n = Tensor(empty: [batch, kvHeads, newCap, headDim])
            for bh in 0..<(batch * kvHeads) {
                (n.ptr + bh * newCap * headDim).update(from: t.ptr + bh * capacity * headDim, count: length * headDim)
            }
            return n
        }
        keys = keys.map(regrow)
        values = values.map(regrow)
        let m = Tensor.zeros([batch, newCap])
        for b in 0..<batch { (m.ptr + b * newCap).update(from: mask.ptr + b * capacity, count: length) }
        mask = m
        capacity = newCap
    }

    /// Starts a step of `count` new positions whose validity is [B, count] of 1 / 0 (nil: all valid).
    /// Returns the additive key mask [B, 1, 1, length + count] for the step's attention, or nil when no
    /// stored or new key is masked.
    func begin(_ count: Int, validity: Tensor?) -> Tensor? {
        precondition(pending == 0, "KVCache: a step is already in progress")
        if let validity, validity.shape != [batch, count] {
            shapeFailure(ShapeError("KVCache", "validity \(describe(validity.shape)) for \(count) new positions of batch \(batch)"))
        }
        grow(to: length + count)
        pending = count
        if let validity {
            let v = validity.contiguousData()
            for b in 0..<batch {
                for t in 0..<count {
                    let masked = v.ptr[b * count + t] == 0
                    mask.ptr[b * capacity + length + t] = masked ? KeyMask.masked : 0
                    if masked { anyMasked = true }
                }
            }
        } else {
            for b in 0..<batch { (mask.ptr + b * capacity + length).update(repeating: 0, count: count) }
        }
        guard anyMasked else { return nil }
        let n = length + count
        return Tensor(storage: mask.storage, shape: [batch, 1, 1, n], strides: [capacity, n, n, 1], offset: mask.offset)
    }

    /// Stores the step's keys and values [B, Hkv, count, hd] of `layer` and returns the keys and values of
    /// every position so far, [B, Hkv, length + count, hd] (views of the cache).
    func update(layer: Int, keys k: Tensor, values v: Tensor) -> (Tensor, Tensor) {
        let want = [batch, kvHeads, pending, headDim]
        guard k.shape == want, v.shape == want else {
            shapeFailure(ShapeError("KVCache", "keys \(describe(k.shape)) / values \(describe(v.shape)) are not \(describe(want))"))
        }
        let n = length + pending
        func store(_ x: Tensor, into buf: Tensor) {
            let xs = x.strides[3] == 1 ? x : x.contiguousData()
            let s = xs.strides
            for b in 0..<batch {
                for h in 0..<kvHeads {
                    for t in 0..<pending {
                        (buf.ptr + ((b * kvHeads + h) * capacity + length + t) * headDim)
                            .update(from: xs.ptr + b * s[0] + h * s[1] + t * s[2], count: headDim)
                    }
                }
            }
        }
        store(k, into: keys[layer])
        store(v, into: values[layer])
        func view(_ buf: Tensor, _ count: Int) -> Tensor {
            Tensor(storage: buf.storage, shape: [batch, kvHeads, count, headDim],
                   strides: [kvHeads * capacity * headDim, capacity * headDim, headDim, 1], offset: buf.offset)
        }
        if Autograd.isEnabled && (k.requiresGrad || v.requiresGrad) && length > 0 {
            // keep the current step on the tape: constant past ++ this step
            return (concat([view(keys[layer], length), k], axis: 2), concat([view(values[layer], length), v], axis: 2))
        }
        if Autograd.isEnabled && (k.requiresGrad || v.requiresGrad) { return (k, v) }
        return (view(keys[layer], n), view(values[layer], n))
    }

    /// Ends the step: its positions become part of the cache.
    func commit() {
        length += pending
        pending = 0
    }
}
