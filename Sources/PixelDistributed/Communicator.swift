// The collective-communication interface of pixellm.
//
// Two implementations:
//  * `LocalCommunicator`: one process, rank 0 of 1. Collectives are copies or no-ops. Used by unit tests and
//    single-process runs; needs no MPI.
//  * `MPICommunicator`: MPI_COMM_WORLD (duplicated), funneled threading. Every MPI call is checked; a failure
//    aborts every rank with the call's name, the rank and MPI's error text instead of hanging.
//
// The protocol's requirements work on raw memory plus a `CommDatatype`, so the implementations are plain
// (non-generic) methods. The typed, generic API (`UnsafeMutablePointer<Float>` + count, `inout [Float]`) is
// an extension on top. Counts are `Int`; the MPI implementation splits anything larger than an MPI `int`
// into several calls.
//
// Rules every caller must follow (as with MPI itself):
//  * every rank calls the same collectives in the same order, with matching counts;
//  * buffers handed to a non-blocking call stay alive and untouched until its `CommRequest` completes;
//  * MPI is initialised "funneled": call collectives from the thread that created the communicator.

import CPixelShims

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Element type of a communication buffer.
public enum CommDatatype: Sendable, CaseIterable, CustomStringConvertible {
    case float32, float64, int32, int64, uint8

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .float32, .int32: return 4
        case .float64, .int64: return 8
        case .uint8: return 1
        }
    }

    /// Whether sum/max/min reductions are defined for this type (raw bytes are not reducible).
    public var isReducible: Bool { self != .uint8 }

    public var description: String {
        switch self {
        case .float32: return "f32"
        case .float64: return "f64"
        case .int32: return "i32"
        case .int64: return "i64"
        case .uint8: return "u8"
        }
    }
}

/// A Swift type that can be sent through a `Communicator`.
public protocol CommElement {
    static var commDatatype: CommDatatype { get }
}

/// A type that can also be reduced (sum, max, min).
public protocol CommReducible: CommElement, Comparable, Numeric {}

extension Float: CommReducible { public static var commDatatype: CommDatatype { .float32 } }
extension Double: CommReducible { public static var commDatatype: CommDatatype { .float64 } }
extension Int32: CommReducible { public static var commDatatype: CommDatatype { .int32 } }
extension Int64: CommReducible { public static var commDatatype: CommDatatype { .int64 } }
extension UInt8: CommElement { public static var commDatatype: CommDatatype { .uint8 } }

/// Element-wise reduction.
public enum ReduceOp: Sendable, CustomStringConvertible {
    case sum, max, min

    public var description: String {
        switch self {
        case .sum: return "sum"
        case .max: return "max"
        case .min: return "min"
        }
    }
}

/// How reduce-scatter is carried out over MPI.
public enum ReduceScatterAlgorithm: Sendable, CaseIterable, CustomStringConvertible {
    /// `MPI_Reduce_scatter_block` / `MPI_Ireduce_scatter_block`.
    case block
    /// A ring of N-1 `MPI_Sendrecv` steps (non-blocking: `MPI_Isend`/`MPI_Irecv`, advanced by `test()`/`wait()`).
    /// Measured faster than OpenMPI 4.1.4's reduce_scatter_block on this machine (see DESIGN.md).
    case ring

    /// The default for `reduceScatter` calls that do not name an algorithm.
    public static let `default`: ReduceScatterAlgorithm = .ring

    public var description: String { self == .block ? "block" : "ring" }
}

/// The collective operations a data-parallel trainer needs.
///
/// Buffer layouts:
///  * `allgather`: every rank contributes `count` elements; `recv` holds `size * count`, rank-major
///    (rank r's elements at `recv + r * count`). If `send == recv + rank * count` the call is in place.
///  * `allgatherv`: rank r contributes `counts[r]`; `recv` holds `counts.sum()` elements, rank r's at the
///    prefix sum of the counts before it. In place when `send` points at this rank's block of `recv`.
///  * `reduceScatter`: `send` holds `size * count` elements (block r = elements `r*count ..< (r+1)*count`);
///    rank r receives the reduction of everybody's block r into `recv` (`count` elements). `send` and `recv`
///    must not overlap.
public protocol Communicator: AnyObject {
    /// This process's rank, 0 ..< size.
    var rank: Int { get }
    /// Number of ranks.
    var size: Int { get }

    func barrier()

    /// Broadcasts `count` elements from `root` to every rank, in place.
    func broadcast(_ buffer: UnsafeMutableRawPointer, count: Int, datatype: CommDatatype, root: Int)
    /// Reduces `count` elements across ranks, in place; every rank gets the result.
    func allreduce(_ buffer: UnsafeMutableRawPointer, count: Int, datatype: CommDatatype, op: ReduceOp)
    func allgather(_ send: UnsafeRawPointer, count: Int, into recv: UnsafeMutableRawPointer,
                   datatype: CommDatatype)
    func allgatherv(_ send: UnsafeRawPointer, counts: [Int], into recv: UnsafeMutableRawPointer,
                    datatype: CommDatatype)
    func reduceScatter(_ send: UnsafeRawPointer, into recv: UnsafeMutableRawPointer, count: Int,
                       datatype: CommDatatype, op: ReduceOp, algorithm: ReduceScatterAlgorithm)

    func ibroadcast(_ buffer: UnsafeMutableRawPointer, count: Int, datatype: CommDatatype, root: Int) -> CommRequest
    func iallreduce(_ buffer: UnsafeMutableRawPointer, count: Int, datatype: CommDatatype, op: ReduceOp) -> CommRequest
    func iallgather(_ send: UnsafeRawPointer, count: Int, into recv: UnsafeMutableRawPointer,
                    datatype: CommDatatype) -> CommRequest
    func ireduceScatter(_ send: UnsafeRawPointer, into recv: UnsafeMutableRawPointer, count: Int,
                        datatype: CommDatatype, op: ReduceOp, algorithm: ReduceScatterAlgorithm) -> CommRequest

    /// Prints `message` with this rank to stderr and terminates every rank (MPI_Abort), so that a failure on one
    /// rank never leaves the others hanging in a collective.
    func abort(message: String) -> Never

    /// Every rank arrives here before going on; rank 0 names the ranks that have not arrived every
    /// `CommWatchdog.current.heartbeat` seconds and aborts the job after its `timeout` (see Watchdog.swift).
    /// `label` says where ("step 7: backward"). Collective: every rank calls it at the same points.
    func checkIn(_ label: String)
}

// -------------------------------------------------------------------------------------------------------------
// Requests

/// Something a `CommRequest` can drive to completion.
protocol CommRequestEngine: AnyObject {
    /// Makes progress; true when everything is complete.
    func test() -> Bool
    /// Blocks until complete.
    func wait()
}

/// An outstanding non-blocking collective. Keep its buffers alive until `wait()` returns or `test()` returns
/// true. Dropping an incomplete request waits for it (a request must never be abandoned: its buffers would be
/// written after they are gone).
///
/// Progress: MPI collectives progress inside MPI; the ring reduce-scatter advances one step each time
/// `test()` (or `wait()`) is called, so poll `test()` between pieces of work to overlap communication.
public final class CommRequest {
    private var engine: CommRequestEngine?

    /// A request that is already complete (used by the local communicator and for zero-size calls).
    public static func completed() -> CommRequest { CommRequest(engine: nil) }

    init(engine: CommRequestEngine?) { self.engine = engine }

    public var isComplete: Bool { engine == nil }

    /// Blocks until the operation has finished; the buffers may then be used.
    public func wait() {
        guard let e = engine else { return }
        e.wait()
        engine = nil
    }

    /// Makes progress without blocking; true when the operation has finished.
    @discardableResult
    public func test() -> Bool {
        guard let e = engine else { return true }
        if e.test() { engine = nil }
        return engine == nil
    }

    /// Waits for every request, in order.
    public static func waitAll(_ requests: [CommRequest]) {
        for r in requests { r.wait() }
    }

    deinit { wait() }
}

// -------------------------------------------------------------------------------------------------------------
// Factory

/// Chooses the communicator for this process.
public enum Communicators {
    public enum Mode: Sendable {
        /// MPI when started by an MPI launcher (mpirun/srun), otherwise local.
        case auto
        case local
        case mpi
    }

    /// True when this process was started by mpirun (or another MPI launcher). Read once, before MPI is
    /// initialised: a singleton MPI_Init sets PMIX_RANK in the environment, after which pixel_mpi_launched()
    /// would report 1 even without a launcher.
    public static let launchedByMPI: Bool = pixel_mpi_launched() != 0

    public static func make(_ mode: Mode = .auto) -> any Communicator {
        switch mode {
        case .local: return LocalCommunicator()
        case .mpi: return MPICommunicator.world()
        case .auto: return launchedByMPI ? MPICommunicator.world() : LocalCommunicator()
        }
    }
}

// -------------------------------------------------------------------------------------------------------------
// Typed API

extension Communicator {
    /// Aborts every rank with `message` unless `condition` holds. For argument checks that must not hang others.
    @inline(__always)
    public func require(_ condition: Bool, _ message: @autoclosure () -> String) {
        if !condition { abort(message: message()) }
    }

    public var isRoot: Bool { rank == 0 }

    // Broadcast -------------------------------------------------------------------------------------------
    public func broadcast<T: CommElement>(_ buffer: UnsafeMutablePointer<T>, count: Int, root: Int = 0) {
        broadcast(UnsafeMutableRawPointer(buffer), count: count, datatype: T.commDatatype, root: root)
    }

    /// Broadcasts `count` raw bytes.
    public func broadcast(bytes: UnsafeMutableRawPointer, count: Int, root: Int = 0) {
        broadcast(bytes, count: count, datatype: .uint8, root: root)
    }

    /// Broadcasts an array in place; it must have the same length on every rank.
    public func broadcast<T: CommElement>(_ array: inout [T], root: Int = 0) {
        let n = array.count
        array.withUnsafeMutableBufferPointer { broadcast($0.baseAddress ?? dummy(T.self), count: n, root: root) }
    }

    /// Broadcasts one value; returns root's value on every rank.
    public func broadcast<T: CommElement>(_ value: T, root: Int = 0) -> T {
        var v = value
        withUnsafeMutablePointer(to: &v) { broadcast($0, count: 1, root: root) }
        return v
    }

    /// Broadcasts an array whose length only `root` knows; returns root's array on every rank.
    public func broadcastArray<T: CommElement & ExpressibleByIntegerLiteral>(_ array: [T], root: Int = 0) -> [T] {
        let n = Int(broadcast(Int64(array.count), root: root))
        var out = rank == root ? array : [T](repeating: 0, count: n)
        broadcast(&out, root: root)
        return out
    }

    public func ibroadcast<T: CommElement>(_ buffer: UnsafeMutablePointer<T>, count: Int,
                                          root: Int = 0) -> CommRequest {
        ibroadcast(UnsafeMutableRawPointer(buffer), count: count, datatype: T.commDatatype, root: root)
    }

    // Allreduce -------------------------------------------------------------------------------------------
    public func allreduce<T: CommReducible>(_ buffer: UnsafeMutablePointer<T>, count: Int, op: ReduceOp = .sum) {
        allreduce(UnsafeMutableRawPointer(buffer), count: count, datatype: T.commDatatype, op: op)
    }

    public func allreduce<T: CommReducible>(_ array: inout [T], op: ReduceOp = .sum) {
        let n = array.count
        array.withUnsafeMutableBufferPointer { allreduce($0.baseAddress ?? dummy(T.self), count: n, op: op) }
    }

    /// Reduces one value across ranks.
    public func allreduce<T: CommReducible>(_ value: T, op: ReduceOp = .sum) -> T {
        var v = value
        withUnsafeMutablePointer(to: &v) { allreduce($0, count: 1, op: op) }
        return v
    }

    public func iallreduce<T: CommReducible>(_ buffer: UnsafeMutablePointer<T>, count: Int,
                                            op: ReduceOp = .sum) -> CommRequest {
        iallreduce(UnsafeMutableRawPointer(buffer), count: count, datatype: T.commDatatype, op: op)
    }

    // Allgather -------------------------------------------------------------------------------------------
    public func allgather<T: CommElement>(_ send: UnsafePointer<T>, count: Int, into recv: UnsafeMutablePointer<T>) {
        allgather(UnsafeRawPointer(send), count: count, into: UnsafeMutableRawPointer(recv), datatype: T.commDatatype)
    }

    /// In-place allgather: this rank's `count` elements already sit at `buffer + rank * count`.
    public func allgather<T: CommElement>(inPlace buffer: UnsafeMutablePointer<T>, count: Int) {
        allgather(UnsafePointer(buffer + rank * count), count: count, into: buffer)
    }

    public func allgather<T: CommElement>(_ local: [T]) -> [T] {
        let n = local.count
        let out = [T](unsafeUninitializedCapacity: n * size) { buf, initialised in
            local.withUnsafeBufferPointer { src in
                allgather(src.baseAddress ?? UnsafePointer(dummy(T.self)), count: n,
                          into: buf.baseAddress ?? dummy(T.self))
            }
            initialised = n * size
        }
        return out
    }

    public func iallgather<T: CommElement>(_ send: UnsafePointer<T>, count: Int,
                                          into recv: UnsafeMutablePointer<T>) -> CommRequest {
        iallgather(UnsafeRawPointer(send), count: count, into: UnsafeMutableRawPointer(recv), datatype: T.commDatatype)
    }

    public func allgatherv<T: CommElement>(_ send: UnsafePointer<T>, counts: [Int],
                                          into recv: UnsafeMutablePointer<T>) {
        allgatherv(UnsafeRawPointer(send), counts: counts, into: UnsafeMutableRawPointer(recv),
                   datatype: T.commDatatype)
    }

    /// Gathers arrays of different lengths; the lengths are exchanged first.
    public func allgatherv<T: CommElement>(_ local: [T]) -> [T] {
        let counts = allgather([Int64(local.count)]).map { Int($0) }
        let total = counts.reduce(0, +)
        return [T](unsafeUninitializedCapacity: total) { buf, initialised in
            local.withUnsafeBufferPointer { src in
                allgatherv(src.baseAddress ?? UnsafePointer(dummy(T.self)), counts: counts,
                           into: buf.baseAddress ?? dummy(T.self))
            }
            initialised = total
        }
    }

    // Reduce-scatter --------------------------------------------------------------------------------------
    public func reduceScatter<T: CommReducible>(_ send: UnsafePointer<T>, into recv: UnsafeMutablePointer<T>,
                                               count: Int, op: ReduceOp = .sum,
                                               algorithm: ReduceScatterAlgorithm = .default) {
        reduceScatter(UnsafeRawPointer(send), into: UnsafeMutableRawPointer(recv), count: count,
                      datatype: T.commDatatype, op: op, algorithm: algorithm)
    }

    /// `input` holds `size * k` elements; returns this rank's reduced block of `k`.
    public func reduceScatter<T: CommReducible>(_ input: [T], op: ReduceOp = .sum,
                                               algorithm: ReduceScatterAlgorithm = .default) -> [T] {
        require(input.count % size == 0,
                "reduceScatter: input of \(input.count) elements is not a multiple of the world size \(size)")
        let k = input.count / size
        return [T](unsafeUninitializedCapacity: k) { buf, initialised in
            input.withUnsafeBufferPointer { src in
                reduceScatter(src.baseAddress ?? UnsafePointer(dummy(T.self)), into: buf.baseAddress ?? dummy(T.self),
                              count: k, op: op, algorithm: algorithm)
            }
            initialised = k
        }
    }

    public func ireduceScatter<T: CommReducible>(_ send: UnsafePointer<T>, into recv: UnsafeMutablePointer<T>,
                                                count: Int, op: ReduceOp = .sum,
                                                algorithm: ReduceScatterAlgorithm = .default) -> CommRequest {
        ireduceScatter(UnsafeRawPointer(send), into: UnsafeMutableRawPointer(recv), count: count,
                       datatype: T.commDatatype, op: op, algorithm: algorithm)
    }
}

/// A valid, never-dereferenced pointer for zero-length arrays (whose base address may be nil).
@usableFromInline
func dummy<T>(_: T.Type) -> UnsafeMutablePointer<T> {
    UnsafeMutablePointer<T>(bitPattern: MemoryLayout<T>.alignment)!
}

// -------------------------------------------------------------------------------------------------------------
// Element-wise reduction kernels shared by the local communicator and the ring reduce-scatter.

enum ReduceKernels {
    /// dst[i] = a[i] (op) b[i] for `count` elements of `datatype`. `dst` may equal `a` or `b`.
    static func combine(_ dst: UnsafeMutableRawPointer, _ a: UnsafeRawPointer, _ b: UnsafeRawPointer,
                        count: Int, datatype: CommDatatype, op: ReduceOp) {
        switch datatype {
        case .float32: typed(dst, a, b, count, op, Float.self)
        case .float64: typed(dst, a, b, count, op, Double.self)
        case .int32: typed(dst, a, b, count, op, Int32.self)
        case .int64: typed(dst, a, b, count, op, Int64.self)
        case .uint8: preconditionFailure("raw bytes cannot be reduced")
        }
    }

    @inline(__always)
    private static func typed<T: Numeric & Comparable>(_ dst: UnsafeMutableRawPointer, _ a: UnsafeRawPointer,
                                                       _ b: UnsafeRawPointer, _ n: Int, _ op: ReduceOp,
                                                       _: T.Type) {
        let d = dst.assumingMemoryBound(to: T.self)
        let x = a.assumingMemoryBound(to: T.self)
        let y = b.assumingMemoryBound(to: T.self)
        switch op {
        case .sum: for i in 0..<n { d[i] = x[i] + y[i] }
        case .max: for i in 0..<n { d[i] = Swift.max(x[i], y[i]) }
        case .min: for i in 0..<n { d[i] = Swift.min(x[i], y[i]) }
        }
    }
}

/// Writes one line to stderr in a single write(2), so lines from different ranks do not interleave mid-line.
func printError(_ line: String) {
    var text = line
    if !text.hasSuffix("\n") { text += "\n" }
    text.withUTF8 { bytes in
        var done = 0
        while done < bytes.count {
            let n = write(STDERR_FILENO, bytes.baseAddress! + done, bytes.count - done)
            if n <= 0 { break }
            done += n
        }
    }
}
