// Collectives over MPI (OpenMPI 4.1 here).
//
//  * The communicator is a duplicate of MPI_COMM_WORLD, so the ring reduce-scatter's point-to-point messages can
//    never match anybody else's, and its error handler (MPI_ERRORS_RETURN, set by pixel_mpi_init) is inherited.
//  * Every MPI call goes through `call(_:_:)`: a non-success code becomes
//    "MPI_Allreduce failed on rank r: <MPI's error text>" and `abort(message:)` (MPI_Abort on every rank).
//  * MPI counts are C `int`. Larger buffers are split into chunks of at most `maxChunkElements` elements (for
//    allgather and reduce-scatter, at most `maxChunkElements / size` per rank, so that no count or displacement
//    inside MPI exceeds an `int` either). Tests lower `maxChunkElements` to a few elements.

import CMPI
import CPixelShims

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// MPI_SUCCESS: mpi.h's enum constant and the shim's getter have the same name; pick one.
let mpiSuccess = Int32(CMPI.MPI_SUCCESS)

public final class MPICommunicator: Communicator {
    /// Largest element count passed to a single MPI call. Internal so that tests can make it tiny.
    nonisolated(unsafe) static var maxChunkElements: Int = Int(Int32.max)

    /// The ring reduce-scatter runs its N-1 steps on segments of at most this many bytes per block at a time,
    /// so the received piece and the accumulator stay in cache while they are added (see CollectiveBench).
    nonisolated(unsafe) static var ringSegmentBytes: Int = 1 << 20

    /// Elements per ring message: the segment, capped by the MPI chunk.
    static func ringChunk(_ datatype: CommDatatype) -> Int {
        Swift.max(1, Swift.min(maxChunkElements, ringSegmentBytes / datatype.byteSize))
    }

    nonisolated(unsafe) private static var worldInstance: MPICommunicator?

    /// The world communicator. Initialises MPI on first use (MPI_THREAD_FUNNELED; MPI_Finalize runs at exit).
    public static func world() -> MPICommunicator {
        if let w = worldInstance { return w }
        _ = Communicators.launchedByMPI  // pin the launcher check before MPI_Init changes the environment
        var provided: Int32 = 0
        let rc = pixel_mpi_init(&provided)
        if rc != mpiSuccess {
            printError("pixellm: MPI initialisation failed (MPI error code \(rc);"
                + " MPI cannot be re-initialised after MPI_Finalize)")
            exit(EXIT_FAILURE)
        }
        let w = MPICommunicator(threadLevel: provided)
        worldInstance = w
        return w
    }

    let comm: MPI_Comm
    public let rank: Int
    public let size: Int
    /// Thread support MPI granted (MPI_THREAD_FUNNELED = 1 is what we ask for).
    public let threadLevel: Int32

    private var tagCounter = 0
    private var scratch: UnsafeMutableRawPointer?
    private var scratchBytes = 0

    private init(threadLevel: Int32) {
        self.threadLevel = threadLevel
        // `self` cannot make checked calls before it is initialised: these go through the static form of the
        // same check (rank -1 until known).
        var r: Int32 = -1, s: Int32 = 0
        Self.check("MPI_Comm_rank", MPI_Comm_rank(MPI_COMM_WORLD, &r), rank: -1, size: 0)
        Self.check("MPI_Comm_size", MPI_Comm_size(MPI_COMM_WORLD, &s), rank: Int(r), size: 0)
        var dup: MPI_Comm? = nil
        Self.check("MPI_Comm_dup", MPI_Comm_dup(MPI_COMM_WORLD, &dup), rank: Int(r), size: Int(s))
        rank = Int(r)
        size = Int(s)
        comm = dup!
    }

    /// "Open MPI v4.1.4, ..." (first line of MPI_Get_library_version).
    public static var libraryVersion: String { String(cString: pixel_mpi_library_version()) }

    // ---------------------------------------------------------------------------------------------------------
    // Error handling

    /// MPI's text for an error code, e.g. "MPI_ERR_COUNT: invalid count argument".
    static func errorString(_ code: Int32) -> String {
        var buf = [CChar](repeating: 0, count: Int(CMPI.MPI_MAX_ERROR_STRING) + 1)
        var len: Int32 = 0
        guard MPI_Error_string(code, &buf, &len) == mpiSuccess else { return "MPI error code \(code)" }
        return buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    /// The message a failed call produces, e.g. "MPI_Allreduce failed on rank 1: MPI_ERR_COUNT: invalid count
    /// argument".
    static func failureMessage(_ name: String, code: Int32, rank: Int) -> String {
        "\(name) failed on rank \(rank): \(errorString(code))"
    }

    func failureMessage(_ name: String, code: Int32) -> String {
        Self.failureMessage(name, code: code, rank: rank)
    }

    /// The checked wrapper every MPI call goes through.
    @inline(__always)
    func call(_ name: StaticString, _ rc: Int32) {
        if rc != mpiSuccess { Self.fail(name, rc, rank: rank, size: size) }
    }

    /// The same check for calls made before the communicator exists.
    @inline(__always)
    static func check(_ name: StaticString, _ rc: Int32, rank: Int, size: Int) {
        if rc != mpiSuccess { fail(name, rc, rank: rank, size: size) }
    }

    @inline(never)
    private static func fail(_ name: StaticString, _ rc: Int32, rank: Int, size: Int) -> Never {
        abortAll(failureMessage("\(name)", code: rc, rank: rank), rank: rank, size: size)
    }

    private static func abortAll(_ message: String, rank: Int, size: Int) -> Never {
        printError("pixellm [rank \(rank)/\(size)]: \(message)")
        _ = MPI_Abort(MPI_COMM_WORLD, 1)
        exit(EXIT_FAILURE)  // MPI_Abort does not return; this keeps the type checker honest
    }

    public func abort(message: String) -> Never {
        Self.abortAll(message, rank: rank, size: size)
    }

    // ---------------------------------------------------------------------------------------------------------
    // Helpers

    @inline(__always)
    func mpiType(_ d: CommDatatype) -> MPI_Datatype {
        switch d {
        case .float32: return MPI_FLOAT
        case .float64: return MPI_DOUBLE
        case .int32: return MPI_INT
        case .int64: return MPI_INT64_T
        case .uint8: return MPI_BYTE
        }
    }

    @inline(__always)
    func mpiOp(_ op: ReduceOp) -> MPI_Op {
        switch op {
        case .sum: return MPI_SUM
        case .max: return MPI_MAX
        case .min: return MPI_MIN
        }
    }

    private var inPlace: UnsafeRawPointer { UnsafeRawPointer(MPI_IN_PLACE!) }

    private func checkCount(_ count: Int, _ what: String) {
        require(count >= 0, "\(what): negative count \(count) on rank \(rank)")
    }

    private func checkRoot(_ root: Int, _ what: String) {
        require(root >= 0 && root < size, "\(what): root \(root) out of range for world size \(size)")
    }

    private func checkReducible(_ d: CommDatatype, _ what: String) {
        require(d.isReducible, "\(what): \(d) cannot be reduced")
    }

    private func overlaps(_ a: UnsafeRawPointer, _ aBytes: Int, _ b: UnsafeRawPointer, _ bBytes: Int) -> Bool {
        aBytes > 0 && bBytes > 0 && a < b + bBytes && b < a + aBytes
    }

    /// Offsets and lengths of the chunks of `count` elements, `chunk` at a time.
    private func chunks(_ count: Int, _ chunk: Int) -> [(offset: Int, count: Int)] {
        var out: [(Int, Int)] = []
        out.reserveCapacity(count / chunk + 1)
        var off = 0
        while off < count {
            let c = Swift.min(chunk, count - off)
            out.append((off, c))
            off += c
        }
        return out
    }

    /// Elements per rank per call for rank-major collectives (allgather, reduce-scatter).
    private var perRankChunk: Int { Swift.max(1, Self.maxChunkElements / size) }

    /// `count` elements of `base`, with an extent of `stride` elements: consecutive items of this type sit
    /// `stride` elements apart. Lets a chunk of every rank's block be gathered in one call. Caller frees.
    private func stridedType(_ base: MPI_Datatype, count: Int, stride: Int, elementBytes: Int) -> MPI_Datatype {
        var contiguous: MPI_Datatype? = nil
        call("MPI_Type_contiguous", MPI_Type_contiguous(Int32(count), base, &contiguous))
        var resized: MPI_Datatype? = nil
        call("MPI_Type_create_resized",
             MPI_Type_create_resized(contiguous, 0, MPI_Aint(stride * elementBytes), &resized))
        call("MPI_Type_commit", MPI_Type_commit(&resized))
        call("MPI_Type_free", MPI_Type_free(&contiguous))
        return resized!
    }

    private func freeType(_ t: MPI_Datatype) {
        var t: MPI_Datatype? = t
        call("MPI_Type_free", MPI_Type_free(&t))
    }

    /// Tag for one ring operation. Every rank calls collectives in the same order, so the counters agree.
    func nextTag() -> Int32 {
        tagCounter = (tagCounter + 1) % 30_000
        return Int32(1 + tagCounter)
    }

    private func scratchBuffer(bytes: Int) -> UnsafeMutableRawPointer {
        if scratchBytes < bytes {
            scratch?.deallocate()
            scratch = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
            scratchBytes = bytes
        }
        return scratch!
    }

    /// Receive buffers for non-blocking rings, reused across requests (fresh pages cost page faults).
    private var scratchPool: [(pointer: UnsafeMutableRawPointer, bytes: Int)] = []

    func borrowScratch(bytes: Int) -> (pointer: UnsafeMutableRawPointer, bytes: Int) {
        if let i = scratchPool.firstIndex(where: { $0.bytes >= bytes }) { return scratchPool.remove(at: i) }
        let n = Swift.max(bytes, 64)
        return (UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 64), n)
    }

    func returnScratch(_ buffer: (pointer: UnsafeMutableRawPointer, bytes: Int)) {
        if scratchPool.count < 8 { scratchPool.append(buffer) } else { buffer.pointer.deallocate() }
    }

    // ---------------------------------------------------------------------------------------------------------
    // Blocking collectives

    public func barrier() {
        call("MPI_Barrier", MPI_Barrier(comm))
    }

    // ---------------------------------------------------------------------------------------------------------
    // Check-in (Watchdog.swift)

    /// Check-ins so far (every rank counts the same; rank 0 checks the counts agree).
    private var checkIns: Int64 = 0
    /// "host pid 1234" of every rank, from its last check-in message (rank 0 only).
    private var identities: [String] = []
    /// Tags above the ring's 1 ... 30,000 and within the 32,767 MPI guarantees.
    private static let arriveTag: Int32 = 32_001, releaseTag: Int32 = 32_002
    /// Bytes of one arrival message: the check-in count, the pid, the host name.
    private static let arrivalBytes = 80

    public func checkIn(_ label: String) {
        guard size > 1 else { return }
        checkIns += 1
        let w = CommWatchdog.current
        let n = Self.arrivalBytes
        let mine = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 8)
        defer { mine.deallocate() }
        mine.initializeMemory(as: UInt8.self, repeating: 0, count: n)
        mine.storeBytes(of: checkIns, toByteOffset: 0, as: Int64.self)
        mine.storeBytes(of: Int64(getpid()), toByteOffset: 8, as: Int64.self)
        _ = gethostname(mine.advanced(by: 16).assumingMemoryBound(to: CChar.self), n - 17)
        if rank == 0 {
            if identities.count != size { identities = (0..<size).map { "rank \($0)" } }
            identities[0] = Self.identity(mine)
            let all = UnsafeMutableRawPointer.allocate(byteCount: n * size, alignment: 8)
            defer { all.deallocate() }
            var requests = [MPI_Request?](repeating: nil, count: size)
            for r in 1..<size {
                call("MPI_Irecv", MPI_Irecv(all + r * n, Int32(n), MPI_BYTE, Int32(r), Self.arriveTag, comm, &requests[r]))
            }
            var arrived = [Bool](repeating: false, count: size)
            arrived[0] = true
            let missing = { (0..<self.size).filter { !arrived[$0] } }
            let names = { (ranks: [Int]) in ranks.map { "rank \($0) (\(self.identities[$0]))" }.joined(separator: ", ") }
            CommWatchdog.poll(limit: w.timeout, heartbeat: w.heartbeat, done: {
                for r in 1..<size where !arrived[r] {
                    var flag: Int32 = 0
                    call("MPI_Test", MPI_Test(&requests[r], &flag, MPI_STATUS_IGNORE))
                    if flag != 0 { arrived[r] = true }
                }
                return !arrived.contains(false)
            }, beat: { waited in
                printError("pixellm [rank 0/\(size)]: \(label): waiting \(CommWatchdog.duration(waited)) for \(names(missing())); "
                    + "the job aborts after --collective-timeout \(CommWatchdog.duration(w.timeout))")
            }, expire: { waited in
                abort(message: "\(label): \(names(missing())) did not arrive within --collective-timeout "
                    + "\(CommWatchdog.duration(waited)) (stalled or much slower than the others); aborting the job")
            })
            for r in 1..<size {
                let count = (all + r * n).load(as: Int64.self)
                identities[r] = Self.identity(all + r * n)
                if count != checkIns {
                    abort(message: "\(label): rank \(r) is at check-in \(count), rank 0 at \(checkIns): the ranks run different code paths")
                }
            }
            var sends = [MPI_Request?](repeating: nil, count: size)
            for r in 1..<size {
                call("MPI_Isend", MPI_Isend(mine, 8, MPI_BYTE, Int32(r), Self.releaseTag, comm, &sends[r]))
            }
            for r in 1..<size { call("MPI_Wait", MPI_Wait(&sends[r], MPI_STATUS_IGNORE)) }
        } else {
            let release = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
            defer { release.deallocate() }
            var send: MPI_Request? = nil, recv: MPI_Request? = nil
            call("MPI_Irecv", MPI_Irecv(release, 8, MPI_BYTE, 0, Self.releaseTag, comm, &recv))
            call("MPI_Isend", MPI_Isend(mine, Int32(n), MPI_BYTE, 0, Self.arriveTag, comm, &send))
            var sent = false, released = false
            CommWatchdog.poll(limit: w.timeout > 0 ? w.timeout + w.grace : 0, heartbeat: w.heartbeat, done: {
                var flag: Int32 = 0
                if !sent { call("MPI_Test", MPI_Test(&send, &flag, MPI_STATUS_IGNORE)); sent = flag != 0 }
                if !released { flag = 0; call("MPI_Test", MPI_Test(&recv, &flag, MPI_STATUS_IGNORE)); released = flag != 0 }
                return sent && released
            }, beat: { waited in
                printError("pixellm [rank \(rank)/\(size)]: \(label): waiting \(CommWatchdog.duration(waited)) for rank 0 to release the step "
                    + "(rank 0 names the ranks it waits for)")
            }, expire: { waited in
                abort(message: "\(label): no word from rank 0 for \(CommWatchdog.duration(waited)) (--collective-timeout "
                    + "\(CommWatchdog.duration(w.timeout)) and \(CommWatchdog.duration(w.grace)) of grace): rank 0 is stalled; aborting the job")
            })
            let count = release.load(as: Int64.self)
            if count != checkIns {
                abort(message: "\(label): rank 0 is at check-in \(count), rank \(rank) at \(checkIns): the ranks run different code paths")
            }
        }
    }

    /// "host, pid 1234" from an arrival message.
    private static func identity(_ p: UnsafeRawPointer) -> String {
        let pid = p.load(fromByteOffset: 8, as: Int64.self)
        let bytes = UnsafeRawBufferPointer(start: p + 16, count: arrivalBytes - 16)
        let host = String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        return "\(host.isEmpty ? "?" : host), pid \(pid)"
    }

    public func broadcast(_ buffer: UnsafeMutableRawPointer, count: Int, datatype: CommDatatype, root: Int) {
        checkCount(count, "broadcast")
        checkRoot(root, "broadcast")
        let es = datatype.byteSize, t = mpiType(datatype)
        for (off, c) in chunks(count, Self.maxChunkElements) {
            call("MPI_Bcast", MPI_Bcast(buffer + off * es, Int32(c), t, Int32(root), comm))
        }
    }

    public func allreduce(_ buffer: UnsafeMutableRawPointer, count: Int, datatype: CommDatatype, op: ReduceOp) {
        checkCount(count, "allreduce")
        checkReducible(datatype, "allreduce")
        let es = datatype.byteSize, t = mpiType(datatype), o = mpiOp(op)
        for (off, c) in chunks(count, Self.maxChunkElements) {
            call("MPI_Allreduce", MPI_Allreduce(inPlace, buffer + off * es, Int32(c), t, o, comm))
        }
    }

    public func allgather(_ send: UnsafeRawPointer, count: Int, into recv: UnsafeMutableRawPointer,
                          datatype: CommDatatype) {
        checkCount(count, "allgather")
        forEachAllgatherCall(send, count: count, into: recv, datatype: datatype) { s, sc, st, r, rc, rt in
            call("MPI_Allgather", MPI_Allgather(s, sc, st, r, rc, rt, comm))
        }
    }

    public func allgatherv(_ send: UnsafeRawPointer, counts: [Int], into recv: UnsafeMutableRawPointer,
                           datatype: CommDatatype) {
        require(counts.count == size, "allgatherv: \(counts.count) counts for world size \(size)")
        for c in counts { checkCount(c, "allgatherv") }
        let es = datatype.byteSize, t = mpiType(datatype)
        var displs = [Int](repeating: 0, count: size)
        for r in 1..<Swift.max(size, 1) { displs[r] = displs[r - 1] + counts[r - 1] }
        let total = displs[size - 1] + counts[size - 1]
        let mine = recv + displs[rank] * es
        let isInPlace = send == UnsafeRawPointer(mine)
        if !isInPlace {
            require(!overlaps(send, counts[rank] * es, recv, total * es),
                    "allgatherv: send buffer overlaps the receive buffer (and is not this rank's block)")
        }
        if total == 0 { return }
        if total <= Self.maxChunkElements {
            let c32 = counts.map { Int32($0) }, d32 = displs.map { Int32($0) }
            call("MPI_Allgatherv",
                 MPI_Allgatherv(isInPlace ? inPlace : send, Int32(counts[rank]), t, recv, c32, d32, t, comm))
        } else {
            // Displacements would not fit an int: every rank broadcasts its own block (chunked).
            if !isInPlace && counts[rank] > 0 { mine.copyMemory(from: send, byteCount: counts[rank] * es) }
            for r in 0..<size where counts[r] > 0 {
                broadcast(recv + displs[r] * es, count: counts[r], datatype: datatype, root: r)
            }
        }
    }

    public func reduceScatter(_ send: UnsafeRawPointer, into recv: UnsafeMutableRawPointer, count: Int,
                              datatype: CommDatatype, op: ReduceOp, algorithm: ReduceScatterAlgorithm) {
        checkCount(count, "reduceScatter")
        checkReducible(datatype, "reduceScatter")
        let es = datatype.byteSize
        require(!overlaps(send, size * count * es, recv, count * es),
                "reduceScatter: send and receive buffers overlap")
        if count == 0 { return }
        switch algorithm {
        case .block:
            let t = mpiType(datatype), o = mpiOp(op)
            if count <= perRankChunk {
                call("MPI_Reduce_scatter_block",
                     MPI_Reduce_scatter_block(send, recv, Int32(count), t, o, comm))
            } else {
                // Rank blocks too large for one call: one reduce per (chunk, destination rank).
                for (off, c) in chunks(count, perRankChunk) {
                    for r in 0..<size {
                        call("MPI_Reduce", MPI_Reduce(send + (r * count + off) * es, recv + off * es, Int32(c), t, o,
                                                      Int32(r), comm))
                    }
                }
            }
        case .ring:
            ringReduceScatter(send, into: recv, count: count, datatype: datatype, op: op)
        }
    }

    /// Ring reduce-scatter. Step s (0 ..< N-1): send the partial sum of block (rank - s - 1) to the right
    /// neighbour, receive the partial sum of block (rank - s - 2) from the left one, and add this rank's own
    /// contribution to it. After N-1 steps the block received last is block `rank`, reduced over all ranks.
    /// Each rank sends and receives (N-1)/N of the buffer, the bandwidth optimum.
    private func ringReduceScatter(_ send: UnsafeRawPointer, into recv: UnsafeMutableRawPointer, count: Int,
                                   datatype: CommDatatype, op: ReduceOp) {
        let es = datatype.byteSize
        if size == 1 {
            recv.copyMemory(from: send, byteCount: count * es)
            return
        }
        let t = mpiType(datatype)
        let left = Int32((rank + size - 1) % size), right = Int32((rank + 1) % size)
        let tag = nextTag()
        let chunk = Self.ringChunk(datatype)
        let tmp = scratchBuffer(bytes: Swift.min(count, chunk) * es)
        for (off, c) in chunks(count, chunk) {
            let acc = recv + off * es
            for s in 0..<(size - 1) {
                let sendBlock = (rank - s - 1 + 2 * size) % size
                let recvBlock = (rank - s - 2 + 2 * size) % size
                let out: UnsafeRawPointer = s == 0 ? send + (sendBlock * count + off) * es : UnsafeRawPointer(acc)
                call("MPI_Sendrecv", MPI_Sendrecv(out, Int32(c), t, right, tag, tmp, Int32(c), t, left, tag, comm,
                                                  MPI_STATUS_IGNORE))
                ReduceKernels.combine(acc, tmp, send + (recvBlock * count + off) * es, count: c,
                                      datatype: datatype, op: op)
            }
        }
    }

    /// Issues the allgather as one call or, for large blocks, one call per chunk with a strided receive type.
    /// `body(sendbuf, sendcount, sendtype, recvbuf, recvcount, recvtype)` makes the actual (blocking or not) call.
    private func forEachAllgatherCall(
        _ send: UnsafeRawPointer, count: Int, into recv: UnsafeMutableRawPointer, datatype: CommDatatype,
        _ body: (UnsafeRawPointer, Int32, MPI_Datatype, UnsafeMutableRawPointer, Int32, MPI_Datatype) -> Void
    ) {
        let es = datatype.byteSize, t = mpiType(datatype)
        let isInPlace = send == UnsafeRawPointer(recv + rank * count * es)
        if !isInPlace {
            require(!overlaps(send, count * es, recv, size * count * es),
                    "allgather: send buffer overlaps the receive buffer (and is not this rank's block)")
        }
        if count == 0 { return }
        if count <= perRankChunk {
            body(isInPlace ? inPlace : send, Int32(count), t, recv, Int32(count), t)
            return
        }
        for (off, c) in chunks(count, perRankChunk) {
            // In place, MPI reads this rank's contribution from recv + off + rank * extent = its own block.
            let strided = stridedType(t, count: c, stride: count, elementBytes: es)
            body(isInPlace ? inPlace : send + off * es, Int32(c), t, recv + off * es, 1, strided)
            freeType(strided)  // MPI keeps it alive until pending operations that use it complete
        }
    }

    // ---------------------------------------------------------------------------------------------------------
    // Non-blocking collectives

    public func ibroadcast(_ buffer: UnsafeMutableRawPointer, count: Int, datatype: CommDatatype,
                           root: Int) -> CommRequest {
        checkCount(count, "ibroadcast")
        checkRoot(root, "ibroadcast")
        let es = datatype.byteSize, t = mpiType(datatype)
        let set = MPIRequestSet(self)
        for (off, c) in chunks(count, Self.maxChunkElements) {
            var req: MPI_Request? = nil
            call("MPI_Ibcast", MPI_Ibcast(buffer + off * es, Int32(c), t, Int32(root), comm, &req))
            set.handles.append(req)
        }
        return set.request()
    }

    public func iallreduce(_ buffer: UnsafeMutableRawPointer, count: Int, datatype: CommDatatype,
                           op: ReduceOp) -> CommRequest {
        checkCount(count, "iallreduce")
        checkReducible(datatype, "iallreduce")
        let es = datatype.byteSize, t = mpiType(datatype), o = mpiOp(op)
        let set = MPIRequestSet(self)
        for (off, c) in chunks(count, Self.maxChunkElements) {
            var req: MPI_Request? = nil
            call("MPI_Iallreduce", MPI_Iallreduce(inPlace, buffer + off * es, Int32(c), t, o, comm, &req))
            set.handles.append(req)
        }
        return set.request()
    }

    public func iallgather(_ send: UnsafeRawPointer, count: Int, into recv: UnsafeMutableRawPointer,
                           datatype: CommDatatype) -> CommRequest {
        checkCount(count, "iallgather")
        let set = MPIRequestSet(self)
        forEachAllgatherCall(send, count: count, into: recv, datatype: datatype) { s, sc, st, r, rc, rt in
            var req: MPI_Request? = nil
            call("MPI_Iallgather", MPI_Iallgather(s, sc, st, r, rc, rt, comm, &req))
            set.handles.append(req)
        }
        return set.request()
    }

    public func ireduceScatter(_ send: UnsafeRawPointer, into recv: UnsafeMutableRawPointer, count: Int,
                               datatype: CommDatatype, op: ReduceOp,
                               algorithm: ReduceScatterAlgorithm) -> CommRequest {
        checkCount(count, "ireduceScatter")
        checkReducible(datatype, "ireduceScatter")
        let es = datatype.byteSize
        require(!overlaps(send, size * count * es, recv, count * es),
                "ireduceScatter: send and receive buffers overlap")
        if count == 0 { return .completed() }
        switch algorithm {
        case .block:
            let t = mpiType(datatype), o = mpiOp(op)
            let set = MPIRequestSet(self)
            if count <= perRankChunk {
                var req: MPI_Request? = nil
                call("MPI_Ireduce_scatter_block",
                     MPI_Ireduce_scatter_block(send, recv, Int32(count), t, o, comm, &req))
                set.handles.append(req)
            } else {
                for (off, c) in chunks(count, perRankChunk) {
                    for r in 0..<size {
                        var req: MPI_Request? = nil
                        call("MPI_Ireduce", MPI_Ireduce(send + (r * count + off) * es, recv + off * es, Int32(c), t,
                                                        o, Int32(r), comm, &req))
                        set.handles.append(req)
                    }
                }
            }
            return set.request()
        case .ring:
            if size == 1 {
                recv.copyMemory(from: send, byteCount: count * es)
                return .completed()
            }
            return CommRequest(engine: RingReduceScatterEngine(self, send: send, recv: recv, count: count,
                                                               datatype: datatype, op: op))
        }
    }
}

// -------------------------------------------------------------------------------------------------------------
// Request engines

/// A set of MPI requests completed together (one per chunk).
final class MPIRequestSet: CommRequestEngine {
    let comm: MPICommunicator
    var handles: [MPI_Request?] = []

    init(_ comm: MPICommunicator) { self.comm = comm }

    func request() -> CommRequest {
        handles.isEmpty ? .completed() : CommRequest(engine: self)
    }

    func test() -> Bool {
        var flag: Int32 = 0
        let n = Int32(handles.count)
        handles.withUnsafeMutableBufferPointer { h in
            comm.call("MPI_Testall", MPI_Testall(n, h.baseAddress, &flag, MPI_STATUSES_IGNORE))
        }
        return flag != 0
    }

    func wait() {
        let n = Int32(handles.count)
        handles.withUnsafeMutableBufferPointer { h in
            comm.call("MPI_Waitall", MPI_Waitall(n, h.baseAddress, MPI_STATUSES_IGNORE))
        }
    }
}

/// The ring reduce-scatter as a state machine over MPI_Isend/MPI_Irecv: one step in flight at a time; each
/// `test()` that finds the step complete adds the received block and posts the next step.
final class RingReduceScatterEngine: CommRequestEngine {
    let comm: MPICommunicator
    let send: UnsafeRawPointer
    let recv: UnsafeMutableRawPointer
    let count: Int
    let datatype: CommDatatype
    let op: ReduceOp
    let tag: Int32
    let chunk: Int
    let left: Int32, right: Int32
    private var scratch: (pointer: UnsafeMutableRawPointer, bytes: Int)?
    private var tmp: UnsafeMutableRawPointer { scratch!.pointer }

    var offset = 0    // first element of the chunk in progress
    var step = 0      // ring step within that chunk, 0 ..< size-1
    var done = false
    var handles: [MPI_Request?] = [nil, nil]

    init(_ comm: MPICommunicator, send: UnsafeRawPointer, recv: UnsafeMutableRawPointer, count: Int,
         datatype: CommDatatype, op: ReduceOp) {
        self.comm = comm
        self.send = send
        self.recv = recv
        self.count = count
        self.datatype = datatype
        self.op = op
        tag = comm.nextTag()
        chunk = MPICommunicator.ringChunk(datatype)
        left = Int32((comm.rank + comm.size - 1) % comm.size)
        right = Int32((comm.rank + 1) % comm.size)
        scratch = comm.borrowScratch(bytes: Swift.min(count, chunk) * datatype.byteSize)
        post()
    }

    deinit {
        if let b = scratch { comm.returnScratch(b) }
    }

    private var chunkCount: Int { Swift.min(chunk, count - offset) }

    private func post() {
        let es = datatype.byteSize, n = comm.size, r = comm.rank
        let c = Int32(chunkCount)
        let t = comm.mpiType(datatype)
        let sendBlock = (r - step - 1 + 2 * n) % n
        let out: UnsafeRawPointer = step == 0 ? send + (sendBlock * count + offset) * es
                                              : UnsafeRawPointer(recv + offset * es)
        var rq: MPI_Request? = nil, sq: MPI_Request? = nil
        comm.call("MPI_Irecv", MPI_Irecv(tmp, c, t, left, tag, comm.comm, &rq))
        comm.call("MPI_Isend", MPI_Isend(out, c, t, right, tag, comm.comm, &sq))
        handles[0] = rq
        handles[1] = sq
    }

    /// The step's messages have arrived: accumulate and post the next step (or finish).
    private func advance() {
        let es = datatype.byteSize, n = comm.size, r = comm.rank
        let recvBlock = (r - step - 2 + 2 * n) % n
        ReduceKernels.combine(recv + offset * es, tmp, send + (recvBlock * count + offset) * es, count: chunkCount,
                              datatype: datatype, op: op)
        step += 1
        if step == n - 1 {
            step = 0
            offset += chunkCount
            if offset >= count {
                done = true
                comm.returnScratch(scratch!)
                scratch = nil
                return
            }
        }
        post()
    }

    func test() -> Bool {
        while !done {
            var flag: Int32 = 0
            handles.withUnsafeMutableBufferPointer { h in
                comm.call("MPI_Testall", MPI_Testall(2, h.baseAddress, &flag, MPI_STATUSES_IGNORE))
            }
            if flag == 0 { return false }
            advance()
        }
        return true
    }

    func wait() {
        while !done {
            handles.withUnsafeMutableBufferPointer { h in
                comm.call("MPI_Waitall", MPI_Waitall(2, h.baseAddress, MPI_STATUSES_IGNORE))
            }
            advance()
        }
    }
}
