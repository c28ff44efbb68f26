// Blocking and non-blocking collectives, f32 and f64, on the MPI world and on the local communicator.

import XCTest
@testable import PixelDistributed

final class CollectiveTests: XCTestCase {
    /// Unchunked sizes: empty, one element, odd, and larger than a chunk of a few elements.
    let counts = [0, 1, 5, 1000]

    func testBroadcastFloatAndDouble() {
        for comm in allCommunicators() {
            for n in counts {
                Checks.broadcast(comm, Float.self, count: n)
                Checks.broadcast(comm, Double.self, count: n)
            }
        }
    }

    func testBroadcastIntegersBytesAndScalars() {
        for comm in allCommunicators() {
            let root = comm.size - 1
            let isRoot = comm.rank == root
            var i32 = (0..<37).map { isRoot ? Int32($0 * 3 - 50) : 0 }
            comm.broadcast(&i32, root: root)
            check(i32, "broadcast<Int32>", comm) { Int32($0 * 3 - 50) }

            var i64 = (0..<37).map { isRoot ? (Int64(1) << 40) + Int64($0) : 0 }
            comm.broadcast(&i64, root: root)
            check(i64, "broadcast<Int64>", comm) { (Int64(1) << 40) + Int64($0) }

            var bytes = [UInt8]((0..<1001).map { isRoot ? UInt8(($0 * 7 + 3) & 255) : 0 })
            bytes.withUnsafeMutableBytes { comm.broadcast(bytes: $0.baseAddress!, count: $0.count, root: root) }
            check(bytes, "broadcast(bytes:)", comm) { UInt8(($0 * 7 + 3) & 255) }

            let v: Double = comm.broadcast(isRoot ? 2.5 : -1, root: root)
            XCTAssertEqual(v, 2.5, describe(comm))

            let a = comm.broadcastArray(isRoot ? [Float](repeating: 3, count: 11) : [], root: root)
            XCTAssertEqual(a, [Float](repeating: 3, count: 11), describe(comm))
        }
    }

    func testAllreduceSumMaxMin() {
        for comm in allCommunicators() {
            for n in counts {
                Checks.allreduce(comm, Float.self, count: n)
                Checks.allreduce(comm, Double.self, count: n)
            }
        }
    }

    func testAllreduceIntegersArraysAndScalars() {
        for comm in allCommunicators() {
            let N = comm.size, r = comm.rank
            var i64 = (0..<9).map { (Int64(1) << 33) * Int64(r + 1) + Int64($0) }
            comm.allreduce(&i64)
            check(i64, "allreduce<Int64>", comm) { (Int64(1) << 33) * Int64(N * (N + 1) / 2) + Int64(N * $0) }

            var i32 = (0..<9).map { Int32(r * 10 + $0) }
            comm.allreduce(&i32, op: .max)
            check(i32, "allreduce<Int32> max", comm) { Int32((N - 1) * 10 + $0) }

            var f = (0..<17).map { contribution(r, $0, Float.self) }
            comm.allreduce(&f)
            check(f, "allreduce [Float]", comm) { sumOfContributions(N, $0) }

            // Global gradient norm pattern: sum of squares, in Double.
            let sq: Double = comm.allreduce(Double(r + 1) * 0.5)
            XCTAssertEqual(sq, Double(N * (N + 1)) * 0.25, describe(comm))
            XCTAssertEqual(comm.allreduce(Float(r), op: .max), Float(N - 1), describe(comm))
            XCTAssertEqual(comm.allreduce(Float(r), op: .min), 0, describe(comm))
        }
    }

    func testAllgather() {
        for comm in allCommunicators() {
            for n in counts {
                Checks.allgather(comm, Float.self, count: n)
                Checks.allgather(comm, Double.self, count: n)
            }
        }
    }

    func testAllgatherv() {
        for comm in allCommunicators() {
            for scale in [0, 1, 300] {
                Checks.allgatherv(comm, Float.self, scale: scale)
                Checks.allgatherv(comm, Double.self, scale: scale)
            }
        }
    }

    func testReduceScatterBlockAndRing() {
        for comm in allCommunicators() {
            for n in counts {
                for alg in ReduceScatterAlgorithm.allCases {
                    Checks.reduceScatter(comm, Float.self, count: n, algorithm: alg)
                    Checks.reduceScatter(comm, Double.self, count: n, algorithm: alg)
                }
            }
        }
    }

    func testReduceScatterDefaultIsRing() {
        XCTAssertEqual(ReduceScatterAlgorithm.default, .ring)
    }

    func testNonBlockingWaited() {
        for comm in allCommunicators() {
            for n in counts {
                Checks.nonBlocking(comm, Float.self, count: n, poll: false)
                Checks.nonBlocking(comm, Double.self, count: n, poll: false)
            }
        }
    }

    func testNonBlockingPolled() {
        for comm in allCommunicators() {
            for n in counts {
                Checks.nonBlocking(comm, Float.self, count: n, poll: true)
                Checks.nonBlocking(comm, Double.self, count: n, poll: true)
            }
        }
    }

    /// Ring progress happens in test(): a request overlapped with blocking collectives and local work, polled
    /// now and then, as the ZeRO-2 backward will use it.
    func testRingOverlapsOtherCollectives() {
        let comm = MPICommunicator.world()
        let N = comm.size, r = comm.rank, n = 257
        let input = Buffer<Float>(N * n) { contribution(r, $0) }
        let out = Buffer<Float>(n) { _ in -7 }
        let req = comm.ireduceScatter(UnsafePointer(input.pointer), into: out.pointer, count: n)
        for step in 0..<5 {
            var x = [Double(step + r)]
            comm.allreduce(&x)
            XCTAssertEqual(x[0], Double(N * step + N * (N - 1) / 2), describe(comm))
            req.test()
        }
        req.wait()
        XCTAssertTrue(req.isComplete)
        check(out.buffer, "ring overlapped", comm) { sumOfContributions(N, r * n + $0) }
    }

    func testBarrierAndIdentity() {
        let comm = MPICommunicator.world()
        XCTAssertTrue(comm.rank >= 0 && comm.rank < comm.size)
        let sizes = comm.allgather([Int64(comm.size)])
        XCTAssertEqual(sizes, [Int64](repeating: Int64(comm.size), count: comm.size), "all ranks agree on the size")
        let ranks = comm.allgather([Int32(comm.rank)])
        XCTAssertEqual(ranks, (0..<comm.size).map { Int32($0) }, "ranks are 0..<size in order")
        comm.barrier()
    }
}
