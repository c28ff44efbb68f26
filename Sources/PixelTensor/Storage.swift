import Foundation

/// A caching allocator for tensor memory (the PyTorch CPU/CUDA caching-allocator idea): freed blocks are
/// kept in per-size-class free lists and reused, so a training step allocates nothing after warm-up.
/// Blocks are 64-byte aligned. Thread-safe.
public final class CachingAllocator: @unchecked Sendable {
    public static let shared = CachingAllocator()

    private let lock = NSLock()
    private var free: [Int: [UnsafeMutablePointer<Float>]] = [:]
    /// Bytes handed out and not yet returned.
    public private(set) var liveBytes = 0
    /// High-water mark of `liveBytes` since the last `resetPeak()`.
    public private(set) var peakBytes = 0
    /// Bytes sitting in the free lists.
    public private(set) var cachedBytes = 0
    /// Number of fresh system allocations (cache misses) and reuses (cache hits).
    public private(set) var systemAllocations = 0
    public private(set) var reuses = 0
    /// Free lists are trimmed when they hold more than this many bytes.
    public var cacheLimitBytes = 8 << 30

    /// Size class in floats: multiples of 16 floats below 64 KiB, otherwise steps of 1/8 of the power of two.
    @usableFromInline
    static func sizeClass(_ count: Int) -> Int {
        let n = max(count, 1)
        if n <= 16_384 { return (n + 15) & ~15 }
        let top = Int.bitWidth - n.leadingZeroBitCount - 1   // floor(log2 n)
        let step = 1 << (top - 3)
        return (n + step - 1) / step * step
    }

    public func allocate(_ count: Int) -> (UnsafeMutablePointer<Float>, Int) {
        let cls = Self.sizeClass(count)
        lock.lock()
        if var list = free[cls], let p = list.popLast() {
            free[cls] = list
            cachedBytes -= cls * 4
            liveBytes += cls * 4
            peakBytes = max(peakBytes, liveBytes)
            reuses += 1
            lock.unlock()
            return (p, cls)
        }
        liveBytes += cls * 4
        peakBytes = max(peakBytes, liveBytes)
        systemAllocations += 1
        lock.unlock()
        var raw: UnsafeMutableRawPointer?
        let rc = posix_memalign(&raw, 64, cls * 4)
        guard rc == 0, let raw else {
            fatalError("pixellm: out of memory allocating \(cls * 4) bytes for a tensor (live \(liveBytes) bytes)")
        }
        return (raw.bindMemory(to: Float.self, capacity: cls), cls)
    }

    public func release(_ p: UnsafeMutablePointer<Float>, sizeClass cls: Int) {
        lock.lock()
        liveBytes -= cls * 4
        if cachedBytes + cls * 4 > cacheLimitBytes {
            lock.unlock()
            Foundation.free(p)
            return
        }
        free[cls, default: []].append(p)
        cachedBytes += cls * 4
        lock.unlock()
    }

    /// Returns every cached block to the system.
    public func emptyCache() {
        lock.lock()
        let lists = free
        free = [:]
        cachedBytes = 0
        lock.unlock()
        for (_, list) in lists { for p in list { Foundation.free(p) } }
    }

    public func resetPeak() {
        lock.lock(); peakBytes = liveBytes; lock.unlock()
    }
}

/// Raw fp32 memory owned by a final class (the swift-nio `_Storage` pattern); freed to the caching
/// allocator when the last tensor or view referring to it goes away.
public final class Storage: @unchecked Sendable {
    public let ptr: UnsafeMutablePointer<Float>
    public let count: Int
    @usableFromInline let sizeClass: Int
    @usableFromInline let owned: Bool

    /// Uninitialised storage of `count` floats.
    public init(count: Int) {
        precondition(count >= 0, "negative storage size \(count)")
        let (p, cls) = CachingAllocator.shared.allocate(count)
        ptr = p
        self.count = count
        sizeClass = cls
        owned = true
    }

    /// Zero-filled storage.
    public convenience init(zeros count: Int) {
        self.init(count: count)
        ptr.update(repeating: 0, count: count)
    }

    /// Wraps memory owned elsewhere (e.g. an mmap'ed checkpoint); never freed by this object.
    public init(unowned ptr: UnsafeMutablePointer<Float>, count: Int) {
        self.ptr = ptr
        self.count = count
        sizeClass = 0
        owned = false
    }

    deinit {
        if owned { CachingAllocator.shared.release(ptr, sizeClass: sizeClass) }
    }
}
