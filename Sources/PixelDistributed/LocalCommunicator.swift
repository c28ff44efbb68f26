// A world of one process: rank 0 of 1. Every collective reduces to a copy (or nothing), with the same buffer
// contracts as the MPI communicator so code written against `Communicator` behaves identically at N = 1.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public final class LocalCommunicator: Communicator {
    public init() {}

    public var rank: Int { 0 }
    public var size: Int { 1 }

    public func barrier() {}
    public func checkIn(_ label: String) {}

    public func broadcast(_ buffer: UnsafeMutableRawPointer, count: Int, datatype: CommDatatype, root: Int) {
        checkCount(count, "broadcast")
        require(root == 0, "broadcast: root \(root) out of range for world size 1")
    }

    public func allreduce(_ buffer: UnsafeMutableRawPointer, count: Int, datatype: CommDatatype, op: ReduceOp) {
        checkCount(count, "allreduce")
        require(datatype.isReducible, "allreduce: \(datatype) cannot be reduced")
    }

    public func allgather(_ send: UnsafeRawPointer, count: Int, into recv: UnsafeMutableRawPointer,
                          datatype: CommDatatype) {
        checkCount(count, "allgather")
        copy(send, recv, count * datatype.byteSize)
    }

    public func allgatherv(_ send: UnsafeRawPointer, counts: [Int], into recv: UnsafeMutableRawPointer,
                           datatype: CommDatatype) {
        require(counts.count == 1, "allgatherv: \(counts.count) counts for world size 1")
        checkCount(counts[0], "allgatherv")
        copy(send, recv, counts[0] * datatype.byteSize)
    }

    public func reduceScatter(_ send: UnsafeRawPointer, into recv: UnsafeMutableRawPointer, count: Int,
                              datatype: CommDatatype, op: ReduceOp, algorithm: ReduceScatterAlgorithm) {
        checkCount(count, "reduceScatter")
        require(datatype.isReducible, "reduceScatter: \(datatype) cannot be reduced")
        copy(send, recv, count * datatype.byteSize)
    }

    public func ibroadcast(_ buffer: UnsafeMutableRawPointer, count: Int, datatype: CommDatatype,
                           root: Int) -> CommRequest {
        broadcast(buffer, count: count, datatype: datatype, root: root)
        return .completed()
    }

    public func iallreduce(_ buffer: UnsafeMutableRawPointer, count: Int, datatype: CommDatatype,
                           op: ReduceOp) -> CommRequest {
        allreduce(buffer, count: count, datatype: datatype, op: op)
        return .completed()
    }

    public func iallgather(_ send: UnsafeRawPointer, count: Int, into recv: UnsafeMutableRawPointer,
                           datatype: CommDatatype) -> CommRequest {
        allgather(send, count: count, into: recv, datatype: datatype)
        return .completed()
    }

    public func ireduceScatter(_ send: UnsafeRawPointer, into recv: UnsafeMutableRawPointer, count: Int,
                               datatype: CommDatatype, op: ReduceOp,
                               algorithm: ReduceScatterAlgorithm) -> CommRequest {
        reduceScatter(send, into: recv, count: count, datatype: datatype, op: op, algorithm: algorithm)
        return .completed()
    }

    public func abort(message: String) -> Never {
        printError("pixellm [rank 0/1]: \(message)")
        exit(EXIT_FAILURE)
    }

    private func checkCount(_ count: Int, _ what: String) {
        require(count >= 0, "\(what): negative count \(count)")
    }

    /// memmove, and nothing at all when source and destination coincide (the in-place forms).
    private func copy(_ src: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer, _ bytes: Int) {
        if bytes == 0 || src == UnsafeRawPointer(dst) { return }
        dst.copyMemory(from: src, byteCount: bytes)
    }
}
