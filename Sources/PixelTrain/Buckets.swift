import Foundation
import PixelTensor

// The trainable parameters as flat buckets (llm.c's one arena, DeepSpeed's contiguous gradients).
//
// Trainable tensors are grouped, in a fixed order, into buckets of about `capElements` floats (a tensor larger than
// the cap gets a bucket of its own). A bucket is one flat gradient buffer; every parameter's `.grad` is a view into
// it, so backward accumulates straight into the buffer and a bucket is exchanged with one collective. Each bucket is
// padded to a multiple of the world size N; rank r owns the slice [r * s, (r + 1) * s), s = padded / N: its fp32
// master values, AdamW m and v, and the reduced gradient. Which tensors share a bucket does not depend on N (only the
// padding does), so a checkpoint written at one world size is resharded at another by concatenating slices.

/// Where every trainable tensor lives in the flat buckets.
public struct BucketLayout: Codable, Equatable, Sendable {
    public struct Param: Codable, Equatable, Sendable {
        public var name: String
        public var shape: [Int]
        public var bucket: Int
        /// Offset of its first element inside the bucket.
        public var offset: Int
        public var count: Int
    }
    public struct Bucket: Codable, Equatable, Sendable {
        /// Elements of the tensors it holds.
        public var count: Int
        /// count rounded up to a multiple of the world size.
        public var padded: Int
        /// Indices into `params`.
        public var params: [Int]
    }
    public var worldSize: Int
    public var capElements: Int
    public var params: [Param]
    public var buckets: [Bucket]

    enum CodingKeys: String, CodingKey {
        case worldSize = "world_size", capElements = "cap_elements", params, buckets
    }

    /// What is wrong with a layout read from a file (nil: consistent), checked before anything is sized from it:
    /// every bucket within what the rank files (`fileBytes`, fp32 slices of padded / world size) can hold, every
    /// tensor inside its bucket with as many elements as its shape.
    public func problem(fileBytes: [Int]) -> String? {
        guard worldSize >= 1 else { return "world_size \(worldSize)" }
        if !params.isEmpty && buckets.isEmpty { return "\(params.count) tensors and no bucket" }
        let available = fileBytes.reduce(0) { $0 + max($1, 0) / 4 }
        var total = 0
        for (b, bucket) in buckets.enumerated() {
            guard bucket.count >= 0, bucket.padded >= bucket.count, bucket.padded % worldSize == 0 else {
                return "bucket \(b): count \(bucket.count) and padded \(bucket.padded) do not fit a world of \(worldSize)"
            }
            total += bucket.padded
            guard total <= available else {
                return "bucket \(b) takes the buckets to \(total) elements, more than the rank files hold (\(available) fp32 values in all)"
            }
            if let i = bucket.params.first(where: { $0 < 0 || $0 >= params.count }) { return "bucket \(b) lists tensor \(i), but the layout has \(params.count) tensors (0..<\(params.count))" }
        }
        for p in params {
            guard p.bucket >= 0, p.bucket < buckets.count else { return "'\(p.name)' is in bucket \(p.bucket) of \(buckets.count)" }
            var elements = 1
            for d in p.shape {
                guard d >= 0, d <= 1 << 40 else { return "'\(p.name)' has shape \(p.shape)" }
                let (m, overflow) = elements.multipliedReportingOverflow(by: d)
                guard !overflow, m <= 1 << 40 else { return "'\(p.name)' has shape \(p.shape)" }
                elements = m
            }
            guard p.count == elements, p.offset >= 0, p.offset <= buckets[p.bucket].count - p.count else {
                return "'\(p.name)' (shape \(p.shape), \(p.count) elements at offset \(p.offset)) does not lie inside bucket \(p.bucket) of \(buckets[p.bucket].count) elements"
            }
        }
        return nil
    }

    /// Lays out `tensors` (name, shape) in the given order.
    public init(tensors: [(name: String, shape: [Int])], worldSize: Int, capElements: Int) {
        precondition(worldSize >= 1 && capElements >= 1, "BucketLayout: world size \(worldSize), cap \(capElements)")
        self.worldSize = worldSize
        self.capElements = capElements
        params = []
        buckets = []
        var current: [Int] = [], fill = 0
        func close() {
            guard !current.isEmpty else { return }
            let padded = (fill + worldSize - 1) / worldSize * worldSize
            buckets.append(Bucket(count: fill, padded: max(padded, worldSize), params: current))
            current = []
            fill = 0
        }
        for (name, shape) in tensors {
            let n = shape.reduce(1, *)
            if fill > 0 && fill + n > capElements { close() }
            params.append(Param(name: name, shape: shape, bucket: buckets.count, offset: fill, count: n))
            current.append(params.count - 1)
            fill += n
            if fill >= capElements { close() }
        }
        close()
    }

    /// The same grouping at another world size (only the padding changes).
    public func resharded(worldSize n: Int) -> BucketLayout {
        var l = self
        l.worldSize = n
        for b in l.buckets.indices {
            let c = l.buckets[b].count
            l.buckets[b].padded = max((c + n - 1) / n * n, n)
        }
        return l
    }

    /// Slice length of bucket b.
    public func sliceLength(_ b: Int) -> Int { buckets[b].padded / worldSize }
    /// The elements of bucket b that rank r owns, clipped to the unpadded count.
    public func ownedRange(_ b: Int, rank r: Int) -> Range<Int> {
        let s = sliceLength(b)
        return min(r * s, buckets[b].count)..<min((r + 1) * s, buckets[b].count)
    }
    public var totalElements: Int { buckets.reduce(0) { $0 + $1.count } }
    public var paddedElements: Int { buckets.reduce(0) { $0 + $1.padded } }

    /// Names and shapes, for comparing a checkpoint's layout with the current model's.
    public var signature: [String] { params.map { "\($0.name)\($0.shape)" } }
}

/// The flat gradient buffers of a layout on one rank (padded, one per bucket), with every trainable tensor's `.grad`
/// set to its view of them. The parameter values stay in the tensors themselves: the optimizer updates them in place
/// through `valuePieces` and gathers the updated slices through one bucket-sized buffer at a time (no second fp32 copy
/// of every trainable tensor: 1.3 GB at the 7B recipe's 0.33e9 trained elements).
public final class FlatBuckets {
    public let layout: BucketLayout
    public let tensors: [Tensor]
    /// [padded] per bucket.
    public let grads: [Tensor]
    /// Per bucket: its tensors by offset (index into `tensors`, offset in the bucket, count).
    let segments: [[(tensor: Int, offset: Int, count: Int)]]

    public init(layout: BucketLayout, tensors: [Tensor]) {
        precondition(tensors.count == layout.params.count, "FlatBuckets: \(tensors.count) tensors for \(layout.params.count) params")
        self.layout = layout
        self.tensors = tensors
        grads = layout.buckets.map { Tensor.zeros([$0.padded]) }
        var seg = [[(tensor: Int, offset: Int, count: Int)]](repeating: [], count: layout.buckets.count)
        for (i, p) in layout.params.enumerated() {
            precondition(tensors[i].shape == p.shape && tensors[i].isContiguous, "FlatBuckets: \(p.name) is not a contiguous \(p.shape)")
            seg[p.bucket].append((i, p.offset, p.count))
        }
        segments = seg.map { $0.sorted { $0.offset < $1.offset } }
        attachGradients()
    }

    /// The parameter memory behind bucket b's elements `range` (bucket coordinates): `body(pointer, covered range)`
    /// for each tensor overlapping it, in order; padding has no memory and is skipped.
    public func valuePieces(_ b: Int, _ range: Range<Int>, _ body: (UnsafeMutablePointer<Float>, Range<Int>) -> Void) {
        for s in segments[b] {
            let lo = max(range.lowerBound, s.offset), hi = min(range.upperBound, s.offset + s.count)
            if lo < hi { body(tensors[s.tensor].ptr + (lo - s.offset), lo..<hi) }
        }
    }

    /// Bucket b's parameter values over `range` (padding reads as 0).
    public func readValues(_ b: Int, _ range: Range<Int>) -> [Float] {
        var out = [Float](repeating: 0, count: range.count)
        out.withUnsafeMutableBufferPointer { o in
            valuePieces(b, range) { p, r in (o.baseAddress! + (r.lowerBound - range.lowerBound)).update(from: p, count: r.count) }
        }
        return out
    }

    /// Writes bucket b's parameter values over `range` from `src` (src[0] is element range.lowerBound).
    public func writeValues(_ b: Int, _ range: Range<Int>, from src: UnsafePointer<Float>) {
        valuePieces(b, range) { p, r in p.update(from: src + (r.lowerBound - range.lowerBound), count: r.count) }
    }

    /// Points every tensor's `.grad` at its place in the gradient buffers (backward then accumulates there).
    public func attachGradients() {
        for (i, p) in layout.params.enumerated() {
            let g = grads[p.bucket]
            tensors[i].grad = Tensor(storage: g.storage, shape: p.shape, offset: g.offset + p.offset)
        }
    }

    /// Zeroes the gradient buffers (views stay attached).
    public func zeroGradients() {
        for g in grads { g.fill(0) }
        attachGradients()
    }

    /// Bucket index of every tensor (by identity), for backward's completion hook.
    public func bucketOfTensor() -> [ObjectIdentifier: Int] {
        var m: [ObjectIdentifier: Int] = [:]
        for (i, p) in layout.params.enumerated() { m[ObjectIdentifier(tensors[i])] = p.bucket }
        return m
    }
}
