import Foundation

/// A shape error: the op and the shapes involved. Ops validate their arguments through functions that
/// throw this, and trap with its message (a programming error, like PyTorch's RuntimeError).
public struct ShapeError: Error, CustomStringConvertible, Equatable {
    public let op: String
    public let message: String
    public init(_ op: String, _ message: String) { self.op = op; self.message = message }
    public var description: String { "\(op): \(message)" }
}

@inline(never)
public func shapeFailure(_ error: ShapeError, file: StaticString = #file, line: UInt = #line) -> Never {
    fatalError("pixellm shape error in \(error)", file: file, line: line)
}

/// Runs a throwing shape check; traps with the op's message if it fails.
@inlinable
public func checked<T>(_ body: () throws -> T) -> T {
    do { return try body() } catch let e as ShapeError { shapeFailure(e) } catch { fatalError("\(error)") }
}

public func describe(_ shape: [Int]) -> String { "[" + shape.map(String.init).joined(separator: ", ") + "]" }

@inlinable public func product(_ s: [Int]) -> Int { s.reduce(1, *) }

@inlinable public func contiguousStrides(_ shape: [Int]) -> [Int] {
    var strides = [Int](repeating: 1, count: shape.count)
    var acc = 1
    for i in stride(from: shape.count - 1, through: 0, by: -1) {
        strides[i] = acc
        acc *= max(shape[i], 1)
    }
    return strides
}

/// An n-dimensional fp32 tensor: a view (offset, shape, strides) into a `Storage`, plus the autograd
/// fields. Reference semantics, like `torch.Tensor`.
public final class Tensor: @unchecked Sendable {
    public let storage: Storage
    public let shape: [Int]
    public let strides: [Int]
    public let offset: Int
    /// Leaf tensors with `requiresGrad` receive `.grad` from `backward()`.
    public var requiresGrad: Bool
    /// The gradient, contiguous with this tensor's shape, once backward has reached it.
    public var grad: Tensor?
    /// Keep `.grad` on a non-leaf tensor after backward (torch's `retain_grad()`).
    public var retainsGrad = false
    /// The op that produced this tensor (nil for leaves and in no-grad mode).
    public internal(set) var node: Node?
    public var name: String?

    public init(storage: Storage, shape: [Int], strides: [Int]? = nil, offset: Int = 0, requiresGrad: Bool = false) {
        self.storage = storage
        self.shape = shape
        self.strides = strides ?? contiguousStrides(shape)
        self.offset = offset
        self.requiresGrad = requiresGrad
    }

    // MARK: creation

    /// Uninitialised contiguous tensor.
    public convenience init(empty shape: [Int]) {
        self.init(storage: Storage(count: product(shape)), shape: shape)
    }

    public static func zeros(_ shape: [Int], requiresGrad: Bool = false) -> Tensor {
        Tensor(storage: Storage(zeros: product(shape)), shape: shape, requiresGrad: requiresGrad)
    }

    public static func full(_ shape: [Int], _ value: Float, requiresGrad: Bool = false) -> Tensor {
        let t = Tensor(empty: shape)
        t.storage.ptr.update(repeating: value, count: t.count)
        t.requiresGrad = requiresGrad
        return t
    }

    public static func ones(_ shape: [Int], requiresGrad: Bool = false) -> Tensor { full(shape, 1, requiresGrad: requiresGrad) }

    public convenience init(_ values: [Float], shape: [Int], requiresGrad: Bool = false) {
        let n = product(shape)
        guard values.count == n else {
            shapeFailure(ShapeError("Tensor.init", "\(values.count) values for shape \(describe(shape)) (\(n) elements)"))
        }
        self.init(storage: Storage(count: n), shape: shape, requiresGrad: requiresGrad)
        values.withUnsafeBufferPointer { storage.ptr.update(from: $0.baseAddress!, count: n) }
    }

    public convenience init(scalar: Float) { self.init([scalar], shape: []) }

    public static func arange(_ n: Int) -> Tensor { Tensor((0..<n).map(Float.init), shape: [n]) }

    /// Standard normal entries from a seeded generator: exactly `rng.normal() * std` for every element in order
    /// (large tensors draw the raw numbers in order and run the Box-Muller transforms on the BLAS threads).
    public static func randn(_ shape: [Int], std: Float = 1, rng: inout RNG, requiresGrad: Bool = false) -> Tensor {
        let t = Tensor(empty: shape)
        fillNormal(t.storage.ptr, count: t.count, std: std, rng: &rng)
        t.requiresGrad = requiresGrad
        return t
    }

    /// Below this many elements `randn` runs serially.
    static let parallelNormalThreshold = 1 << 16

    /// `p[i] = rng.normal() * std` for i in 0..<n, bit for bit, leaving `rng` (state and spare) as the serial
    /// loop would. Large fills go by blocks: the 2 draws of every Box-Muller pair are taken from the stream in
    /// order (cheap), then the pairs' log / sin / cos (the cost) are split over the BLAS threads.
    static func fillNormal(_ p: UnsafeMutablePointer<Float>, count n: Int, std: Float, rng: inout RNG) {
        let workers = n >= parallelNormalThreshold ? max(1, BLAS.info.threads) : 1
        if workers == 1 {
            for i in 0..<n { p[i] = rng.normal() * std }
            return
        }
        var start = 0
        if let v = rng.spare {           // the pending second value of the previous pair comes first
            rng.spare = nil
            p[0] = v * std
            start = 1
        }
        let pairs = (n - start) / 2
        // blocks long enough for the pool threads to wake up, split in more pieces than threads to balance
        let blockPairs = 1 << 19, pieces = 4 * workers
        let draws = UnsafeMutablePointer<UInt64>.allocate(capacity: 2 * blockPairs)
        defer { draws.deallocate() }
        var done = 0
        while done < pairs {
            let m = min(blockPairs, pairs - done)
            for k in 0..<(2 * m) { draws[k] = rng.next() }
            let out = p + start + 2 * done
            let d = UnsafePointer(draws)
            DispatchQueue.concurrentPerform(iterations: pieces) { w in
                for k in (m * w / pieces)..<(m * (w + 1) / pieces) {
                    // RNG.normal(), both values
                    var u1 = Double(d[2 * k] >> 11) * (1.0 / 9_007_199_254_740_992.0)
                    if u1 < 1e-300 { u1 = 1e-300 }
                    let u2 = Double(d[2 * k + 1] >> 11) * (1.0 / 9_007_199_254_740_992.0)
                    let r = (-2 * _log(u1)).squareRoot()
                    out[2 * k] = Float(r * _cos(2 * Double.pi * u2)) * std
                    out[2 * k + 1] = Float(r * _sin(2 * Double.pi * u2)) * std
                }
            }
            done += m
        }
        if (n - start) % 2 == 1 { p[n - 1] = rng.normal() * std }   // first value of a new pair; its second stays spare
    }

    /// Uniform entries in [lo, hi).
    public static func uniform(_ shape: [Int], _ lo: Float, _ hi: Float, rng: inout RNG, requiresGrad: Bool = false) -> Tensor {
        let t = Tensor(empty: shape)
        let p = t.storage.ptr
        for i in 0..<t.count { p[i] = lo + (hi - lo) * rng.uniform() }
        t.requiresGrad = requiresGrad
        return t
    }

    // MARK: properties

    public var count: Int { product(shape) }
    public var rank: Int { shape.count }
    public var isLeaf: Bool { node == nil }

    /// Pointer to element 0 of this view. Index with `strides` unless `isContiguous`.
    public var ptr: UnsafeMutablePointer<Float> { storage.ptr + offset }

    public var isContiguous: Bool {
        var expected = 1
        for i in stride(from: shape.count - 1, through: 0, by: -1) where shape[i] != 1 {
            if strides[i] != expected { return false }
            expected *= shape[i]
        }
        return true
    }

    public func dim(_ i: Int) -> Int { shape[i < 0 ? shape.count + i : i] }

    /// Normalises a possibly negative axis.
    public func axis(_ a: Int, op: String) -> Int {
        let r = a < 0 ? a + shape.count : a
        guard r >= 0 && r < max(shape.count, 1) else {
            shapeFailure(ShapeError(op, "axis \(a) out of range for shape \(describe(shape))"))
        }
        return r
    }

    /// The values in row-major order (copies).
    public func toArray() -> [Float] {
        let c = contiguousData()
        return Array(UnsafeBufferPointer(start: c.ptr, count: c.count))
    }

    public var item: Float {
        precondition(count == 1, "item() on a tensor of shape \(describe(shape))")
        return ptr[0]
    }

    public subscript(_ idx: Int...) -> Float {
        get { ptr[zip(idx, strides).reduce(0) { $0 + $1.0 * $1.1 }] }
        set { ptr[zip(idx, strides).reduce(0) { $0 + $1.0 * $1.1 }] = newValue }
    }

    /// A contiguous tensor with the same values, without recording autograd (self if already contiguous).
    public func contiguousData() -> Tensor {
        if isContiguous { return self }
        let out = Tensor(empty: shape)
        stridedCopy(from: ptr, shape: shape, strides: strides, to: out.ptr)
        return out
    }

    /// A copy that shares nothing and has no autograd history.
    public func detachedCopy() -> Tensor {
        let out = Tensor(empty: shape)
        if isContiguous { out.ptr.update(from: ptr, count: count) } else {
            stridedCopy(from: ptr, shape: shape, strides: strides, to: out.ptr)
        }
        return out
    }

    /// Same storage, no history.
    public func detach() -> Tensor { Tensor(storage: storage, shape: shape, strides: strides, offset: offset) }

    /// Fills with a value in place (no autograd).
    public func fill(_ v: Float) {
        if isContiguous { ptr.update(repeating: v, count: count) } else {
            for i in 0..<count { ptr[linearToOffset(i)] = v }
        }
    }

    /// Offset of the i-th element in row-major order.
    func linearToOffset(_ i: Int) -> Int {
        var rem = i, off = 0
        for d in stride(from: shape.count - 1, through: 0, by: -1) {
            off += (rem % shape[d]) * strides[d]
            rem /= shape[d]
        }
        return off
    }
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        let vals = toArray()
        let shown = vals.prefix(8).map { String(format: "%.5g", $0) }.joined(separator: ", ")
        return "Tensor\(describe(shape))(\(shown)\(vals.count > 8 ? ", ..." : ""))"
    }
}

/// Copies a strided view into contiguous memory (row-major order).
public func stridedCopy(from src: UnsafePointer<Float>, shape: [Int], strides: [Int], to dst: UnsafeMutablePointer<Float>) {
    let n = product(shape)
    if n == 0 { return }
    if shape.isEmpty { dst[0] = src[0]; return }
    let r = shape.count
    let inner = shape[r - 1], innerStride = strides[r - 1]
    var idx = [Int](repeating: 0, count: r)
    var o = 0
    var srcOff = 0
    while o < n {
        var s = src + srcOff
        let d = dst + o
        if innerStride == 1 { d.update(from: s, count: inner) } else {
            for j in 0..<inner { d[j] = s.pointee; s += innerStride }
        }
        o += inner
        // advance outer index
        var k = r - 2
        while k >= 0 {
            idx[k] += 1
            srcOff += strides[k]
            if idx[k] < shape[k] { break }
            srcOff -= strides[k] * shape[k]
            idx[k] = 0
            k -= 1
        }
    }
}
