// Factory, MPI error reporting, the abort path, and a bench smoke run.
//
// Two tests are switched off unless an environment variable asks for them; launch/test-mpi.sh runs them under
// mpirun and expects a non-zero exit:
//   PIXEL_TEST_ABORT=message  the last rank calls abort(message:) while the others wait in a barrier;
//   PIXEL_TEST_ABORT=mpi      the last rank makes a failing MPI call through the checked wrapper;
//   PIXEL_TEST_FAIL=1         rank 1 (or 0 alone) fails an XCTest assertion.

import CPixelShims
import XCTest
@testable import PixelDistributed

#if canImport(Glibc)
import Glibc
#endif

final class EnvironmentTests: XCTestCase {
    func testFactoryPicksMPIUnderMpirunAndLocalOtherwise() {
        let comm = Communicators.make()
        if let sizeText = getenv("OMPI_COMM_WORLD_SIZE").map({ String(cString: $0) }) {
            XCTAssertTrue(Communicators.launchedByMPI)
            XCTAssertTrue(comm is MPICommunicator)
            XCTAssertEqual(comm.size, Int(sizeText))
            XCTAssertEqual(comm.rank, Int(String(cString: getenv("OMPI_COMM_WORLD_RANK"))))
        } else {
            XCTAssertFalse(Communicators.launchedByMPI)
            XCTAssertTrue(comm is LocalCommunicator)
        }
        XCTAssertTrue(Communicators.make(.local) is LocalCommunicator)
        XCTAssertTrue(Communicators.make(.mpi) === MPICommunicator.world())
        XCTAssertGreaterThanOrEqual(MPICommunicator.world().threadLevel, MPI_THREAD_FUNNELED)
        XCTAssertTrue(MPICommunicator.libraryVersion.contains("MPI"), MPICommunicator.libraryVersion)
    }

    /// MPI returns errors instead of aborting (MPI_ERRORS_RETURN on our communicator), and the checked wrapper's
    /// message names the call, the rank and MPI's own text.
    func testFailureMessageNamesCallRankAndMPIText() {
        let comm = MPICommunicator.world()
        var x: Float = 0
        let rc = MPI_Bcast(&x, -1, MPI_FLOAT, 0, comm.comm)
        XCTAssertNotEqual(rc, mpiSuccess, "a negative count must be reported, not fatal")
        let msg = comm.failureMessage("MPI_Bcast", code: rc)
        XCTAssertTrue(msg.hasPrefix("MPI_Bcast failed on rank \(comm.rank): "), msg)
        XCTAssertTrue(msg.contains("count"), msg)
    }

    func testDeliberateAbort() throws {
        guard let mode = getenv("PIXEL_TEST_ABORT").map({ String(cString: $0) }) else {
            throw XCTSkip("set PIXEL_TEST_ABORT=message|mpi to run (launch/test-mpi.sh does)")
        }
        let comm = MPICommunicator.world()
        if comm.rank == comm.size - 1 {
            if mode == "mpi" {
                var x: Float = 0
                comm.call("MPI_Allreduce", MPI_Allreduce(MPI_IN_PLACE, &x, -1, MPI_FLOAT, MPI_SUM, comm.comm))
            }
            comm.abort(message: "deliberate abort from the test suite")
        }
        comm.barrier()  // never completes: the last rank aborts the job instead
        XCTFail("rank \(comm.rank) passed a barrier that the aborting rank never entered")
    }

    func testDeliberateFailure() throws {
        guard getenv("PIXEL_TEST_FAIL") != nil else {
            throw XCTSkip("set PIXEL_TEST_FAIL=1 to run (launch/test-mpi.sh does)")
        }
        let comm = MPICommunicator.world()
        if comm.rank == min(1, comm.size - 1) {
            XCTFail("deliberate failure on rank \(comm.rank)")
        }
    }

    func testCollectiveBenchSmoke() {
        let comm = MPICommunicator.world()
        let rows = CollectiveBench.run(comm, sizes: [4096, 65536], iterations: 2, warmup: 1)
        XCTAssertEqual(rows.count, 2 * CollectiveBench.operations.count)
        XCTAssertEqual(rows.map(\.name), CollectiveBench.operations + CollectiveBench.operations)
        for r in rows {
            XCTAssertTrue(r.seconds > 0 && r.gbPerSecond > 0 && r.gbPerSecond.isFinite, "\(r)")
        }
        let table = CollectiveBench.table(rows)
        XCTAssertTrue(table.contains("reduce_scatter(ring)"), table)
    }
}
