// One check per collective, each run on every rank with closed-form expectations. The test classes call these
// with different communicators, element types, counts and chunk sizes.

import XCTest
@testable import PixelDistributed

enum Checks {
    static func broadcast<T: TestFloat>(_ comm: any Communicator, _: T.Type, count n: Int) {
        for root in 0..<comm.size {
            let b = Buffer<T>(n) { comm.rank == root ? tagged(root, $0) : -7 }
            comm.broadcast(b.pointer, count: n, root: root)
            check(b.buffer, "broadcast<\(T.self)> n=\(n) root=\(root)", comm) { tagged(root, $0) }
        }
    }

    static func allreduce<T: TestFloat>(_ comm: any Communicator, _: T.Type, count n: Int) {
        let N = comm.size, r = comm.rank
        let s = Buffer<T>(n) { contribution(r, $0) }
        comm.allreduce(s.pointer, count: n)
        check(s.buffer, "allreduce<\(T.self)> sum n=\(n)", comm) { sumOfContributions(N, $0) }

        let mx = Buffer<T>(n) { signedContribution(r, $0) }
        comm.allreduce(mx.pointer, count: n, op: .max)
        check(mx.buffer, "allreduce<\(T.self)> max n=\(n)", comm) { maxOfSigned(N, $0) }

        let mn = Buffer<T>(n) { signedContribution(r, $0) }
        comm.allreduce(mn.pointer, count: n, op: .min)
        check(mn.buffer, "allreduce<\(T.self)> min n=\(n)", comm) { minOfSigned(N, $0) }
    }

    static func allgather<T: TestFloat>(_ comm: any Communicator, _: T.Type, count n: Int) {
        let N = comm.size, r = comm.rank
        let s = Buffer<T>(n) { tagged(r, $0) }
        let out = Buffer<T>(n * N) { _ in -7 }
        comm.allgather(UnsafePointer(s.pointer), count: n, into: out.pointer)
        check(out.buffer, "allgather<\(T.self)> n=\(n)", comm) { tagged($0 / n, $0 % n) }

        // In place: this rank's block is already where it belongs.
        let p = Buffer<T>(n * N) { $0 / n == r ? tagged(r, $0 % n) : -7 }
        comm.allgather(inPlace: p.pointer, count: n)
        check(p.buffer, "allgather<\(T.self)> in place n=\(n)", comm) { tagged($0 / n, $0 % n) }

        let a = comm.allgather(s.array)
        check(a, "allgather<\(T.self)> array n=\(n)", comm) { tagged($0 / n, $0 % n) }
    }

    static func allgatherv<T: TestFloat>(_ comm: any Communicator, _: T.Type, scale: Int) {
        let N = comm.size, r = comm.rank
        let counts = varCounts(N, scale: scale)
        var displs = [0]
        for c in counts { displs.append(displs.last! + c) }
        let total = displs[N]
        var expected = [T]()
        for q in 0..<N { for i in 0..<counts[q] { expected.append(tagged(q, i)) } }

        let s = Buffer<T>(counts[r]) { tagged(r, $0) }
        let out = Buffer<T>(total) { _ in -7 }
        comm.allgatherv(UnsafePointer(s.pointer), counts: counts, into: out.pointer)
        check(out.buffer, "allgatherv<\(T.self)> counts=\(counts)", comm) { expected[$0] }

        let p = Buffer<T>(total) { $0 >= displs[r] && $0 < displs[r + 1] ? expected[$0] : -7 }
        comm.allgatherv(UnsafePointer(p.pointer + displs[r]), counts: counts, into: p.pointer)
        check(p.buffer, "allgatherv<\(T.self)> in place counts=\(counts)", comm) { expected[$0] }

        let a = comm.allgatherv(s.array)
        XCTAssertEqual(a.count, total, "\(describe(comm)) allgatherv array length")
        check(a, "allgatherv<\(T.self)> array counts=\(counts)", comm) { expected[$0] }
    }

    static func reduceScatter<T: TestFloat>(_ comm: any Communicator, _: T.Type, count n: Int,
                                            algorithm: ReduceScatterAlgorithm) {
        let N = comm.size, r = comm.rank
        let what = "reduceScatter<\(T.self)>(\(algorithm)) n=\(n)"
        let s = Buffer<T>(N * n) { contribution(r, $0) }
        let out = Buffer<T>(n) { _ in -7 }
        comm.reduceScatter(UnsafePointer(s.pointer), into: out.pointer, count: n, algorithm: algorithm)
        check(out.buffer, what + " sum", comm) { sumOfContributions(N, r * n + $0) }
        // The input is left untouched.
        check(s.buffer, what + " input preserved", comm) { contribution(r, $0) }

        let m = Buffer<T>(N * n) { signedContribution(r, $0) }
        comm.reduceScatter(UnsafePointer(m.pointer), into: out.pointer, count: n, op: .max, algorithm: algorithm)
        check(out.buffer, what + " max", comm) { maxOfSigned(N, r * n + $0) }

        let a = comm.reduceScatter(s.array, algorithm: algorithm)
        check(a, what + " array", comm) { sumOfContributions(N, r * n + $0) }
    }

    static func blockingSuite<T: TestFloat>(_ comm: any Communicator, _: T.Type, counts: [Int]) {
        for n in counts {
            broadcast(comm, T.self, count: n)
            allreduce(comm, T.self, count: n)
            allgather(comm, T.self, count: n)
            for alg in ReduceScatterAlgorithm.allCases { reduceScatter(comm, T.self, count: n, algorithm: alg) }
        }
        for scale in [0, 1, 3] { allgatherv(comm, T.self, scale: scale) }
    }

    /// Posts every non-blocking collective at once (two ring reduce-scatters in flight together), then completes
    /// them by polling `test()` or by `wait()`.
    static func nonBlocking<T: TestFloat>(_ comm: any Communicator, _: T.Type, count n: Int, poll: Bool) {
        let N = comm.size, r = comm.rank, root = N - 1
        let what = "<\(T.self)> n=\(n) \(poll ? "polled" : "waited")"
        let bc = Buffer<T>(n) { r == root ? tagged(root, $0) : -7 }
        let ar = Buffer<T>(n) { contribution(r, $0) }
        let arMax = Buffer<T>(n) { signedContribution(r, $0) }
        let ags = Buffer<T>(n) { tagged(r, $0) }
        let agr = Buffer<T>(n * N) { _ in -7 }
        let rsIn = Buffer<T>(N * n) { contribution(r, $0) }
        let rsSigned = Buffer<T>(N * n) { signedContribution(r, $0) }
        let rsBlock = Buffer<T>(n) { _ in -7 }
        let rsRing = Buffer<T>(n) { _ in -7 }
        let rsRingMax = Buffer<T>(n) { _ in -7 }

        let requests = [
            comm.ibroadcast(bc.pointer, count: n, root: root),
            comm.iallreduce(ar.pointer, count: n),
            comm.ireduceScatter(UnsafePointer(rsIn.pointer), into: rsRing.pointer, count: n, algorithm: .ring),
            comm.iallreduce(arMax.pointer, count: n, op: .max),
            comm.iallgather(UnsafePointer(ags.pointer), count: n, into: agr.pointer),
            comm.ireduceScatter(UnsafePointer(rsSigned.pointer), into: rsRingMax.pointer, count: n, op: .max,
                                algorithm: .ring),
            comm.ireduceScatter(UnsafePointer(rsIn.pointer), into: rsBlock.pointer, count: n, algorithm: .block),
        ]
        if poll {
            var rounds = 0
            while !requests.map({ $0.test() }).allSatisfy({ $0 }) { rounds += 1 }
        } else {
            CommRequest.waitAll(requests)
        }
        XCTAssertTrue(requests.allSatisfy { $0.isComplete }, "\(describe(comm)) requests complete \(what)")

        check(bc.buffer, "ibroadcast" + what, comm) { tagged(root, $0) }
        check(ar.buffer, "iallreduce sum" + what, comm) { sumOfContributions(N, $0) }
        check(arMax.buffer, "iallreduce max" + what, comm) { maxOfSigned(N, $0) }
        check(agr.buffer, "iallgather" + what, comm) { tagged($0 / n, $0 % n) }
        check(rsBlock.buffer, "ireduceScatter(block)" + what, comm) { sumOfContributions(N, r * n + $0) }
        check(rsRing.buffer, "ireduceScatter(ring)" + what, comm) { sumOfContributions(N, r * n + $0) }
        check(rsRingMax.buffer, "ireduceScatter(ring) max" + what, comm) { maxOfSigned(N, r * n + $0) }
        check(rsIn.buffer, "ireduceScatter input preserved" + what, comm) { contribution(r, $0) }

        // In-place iallgather.
        let p = Buffer<T>(n * N) { $0 / n == r ? tagged(r, $0 % n) : -7 }
        comm.iallgather(UnsafePointer(p.pointer + r * n), count: n, into: p.pointer).wait()
        check(p.buffer, "iallgather in place" + what, comm) { tagged($0 / n, $0 % n) }
    }

    static func nonBlockingSuite<T: TestFloat>(_ comm: any Communicator, _: T.Type, counts: [Int]) {
        for n in counts {
            nonBlocking(comm, T.self, count: n, poll: false)
            nonBlocking(comm, T.self, count: n, poll: true)
        }
    }
}
