// The size-1 communicator: copies and identities with the MPI buffer contracts, and no MPI at all.

import XCTest
@testable import PixelDistributed

final class LocalCommunicatorTests: XCTestCase {
    func testIdentity() {
        let c = LocalCommunicator()
        XCTAssertEqual(c.rank, 0)
        XCTAssertEqual(c.size, 1)
        XCTAssertTrue(c.isRoot)
        c.barrier()
    }

    func testCollectivesAreCopiesOrIdentities() {
        let c = LocalCommunicator()
        var a: [Float] = [1, 2, 3.5]
        c.allreduce(&a)
        XCTAssertEqual(a, [1, 2, 3.5])
        c.allreduce(&a, op: .max)
        XCTAssertEqual(a, [1, 2, 3.5])
        c.broadcast(&a)
        XCTAssertEqual(a, [1, 2, 3.5])
        XCTAssertEqual(c.allgather(a), a)
        XCTAssertEqual(c.allgatherv(a), a)
        XCTAssertEqual(c.reduceScatter(a, algorithm: .ring), a)
        XCTAssertEqual(c.reduceScatter(a, algorithm: .block), a)
        XCTAssertEqual(c.allreduce(4.0), 4.0)

        // Pointer forms copy into a distinct destination, and in place is a no-op.
        let src = Buffer<Double>(5) { Double($0) + 0.5 }
        let dst = Buffer<Double>(5) { _ in -1 }
        c.allgather(UnsafePointer(src.pointer), count: 5, into: dst.pointer)
        XCTAssertEqual(dst.array, src.array)
        c.allgather(inPlace: src.pointer, count: 5)
        XCTAssertEqual(src.array, [0.5, 1.5, 2.5, 3.5, 4.5])
        let rs = Buffer<Double>(5) { _ in -1 }
        c.reduceScatter(UnsafePointer(src.pointer), into: rs.pointer, count: 5)
        XCTAssertEqual(rs.array, src.array)
    }

    func testNonBlockingRequestsCompleteImmediately() {
        let c = LocalCommunicator()
        let b = Buffer<Float>(4) { Float($0) }
        let out = Buffer<Float>(4) { _ in 0 }
        let reqs = [
            c.iallreduce(b.pointer, count: 4),
            c.ibroadcast(b.pointer, count: 4),
            c.iallgather(UnsafePointer(b.pointer), count: 4, into: out.pointer),
            c.ireduceScatter(UnsafePointer(b.pointer), into: out.pointer, count: 4),
        ]
        XCTAssertTrue(reqs.allSatisfy { $0.isComplete && $0.test() })
        CommRequest.waitAll(reqs)
        XCTAssertEqual(out.array, [0, 1, 2, 3])
    }

    func testFullSuitesOnLocal() {
        let c = LocalCommunicator()
        Checks.blockingSuite(c, Float.self, counts: [0, 1, 7, 100])
        Checks.blockingSuite(c, Double.self, counts: [0, 1, 7, 100])
        Checks.nonBlockingSuite(c, Float.self, counts: [0, 3, 100])
    }
}
