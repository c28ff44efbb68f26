// MPI counts are C ints, so MPICommunicator splits large buffers into chunks of at most maxChunkElements.
// Lowering the chunk to a few elements drives every chunked path with small, odd sizes; the results must be the
// closed-form values (and so identical to the unchunked results, which the same closed forms check).

import XCTest
@testable import PixelDistributed

final class ChunkingTests: XCTestCase {
    let oddCounts = [1, 6, 7, 8, 13, 23, 101]

    func testChunkedBlockingCollectives() {
        let comm = MPICommunicator.world()
        withChunk(7) {
            Checks.blockingSuite(comm, Float.self, counts: oddCounts)
            Checks.blockingSuite(comm, Double.self, counts: oddCounts)
        }
    }

    func testChunkedNonBlockingCollectives() {
        let comm = MPICommunicator.world()
        withChunk(7) {
            Checks.nonBlockingSuite(comm, Float.self, counts: oddCounts)
            Checks.nonBlockingSuite(comm, Double.self, counts: oddCounts)
        }
    }

    /// The smallest chunk: one element per call (per rank, for allgather/reduce-scatter).
    func testChunkOfOneElement() {
        let comm = MPICommunicator.world()
        withChunk(1) {
            Checks.blockingSuite(comm, Float.self, counts: [1, 2, 5])
            Checks.nonBlockingSuite(comm, Double.self, counts: [3])
        }
    }

    /// The ring works on cache-sized segments of each block; tiny segments (20 bytes: 5 f32 or 2 f64 elements)
    /// with the MPI chunk left at its default exercise that split on its own.
    func testRingSegments() {
        let comm = MPICommunicator.world()
        let saved = MPICommunicator.ringSegmentBytes
        MPICommunicator.ringSegmentBytes = 20
        defer { MPICommunicator.ringSegmentBytes = saved }
        XCTAssertEqual(MPICommunicator.ringChunk(.float32), 5)
        XCTAssertEqual(MPICommunicator.ringChunk(.float64), 2)
        for n in [1, 5, 6, 23] {
            Checks.reduceScatter(comm, Float.self, count: n, algorithm: .ring)
            Checks.reduceScatter(comm, Double.self, count: n, algorithm: .ring)
            Checks.nonBlocking(comm, Float.self, count: n, poll: true)
            Checks.nonBlocking(comm, Double.self, count: n, poll: false)
        }
    }

    /// Bit-for-bit: chunked and unchunked runs on arbitrary (non-dyadic) data give identical bytes for the
    /// data-movement collectives, and for reductions of exactly representable values.
    func testChunkedEqualsUnchunkedBitwise() {
        let comm = MPICommunicator.world()
        let N = comm.size, r = comm.rank, n = 23
        var state = UInt64(0x9E37_79B9_7F4A_7C15) &* UInt64(r + 1)
        func next() -> Float {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int64(bitPattern: state >> 11) % 1_000_003) / 997.0
        }
        let local = (0..<n).map { _ in next() }
        let rsInput = (0..<(N * n)).map { contribution(r, $0 * 3, Float.self) }

        func run() -> [[Float]] {
            var b = local
            comm.broadcast(&b, root: N - 1)
            let g = comm.allgather(local)
            let gv = comm.allgatherv(Array(local.prefix(r == 1 ? 0 : 5 + r)))
            var s = rsInput
            comm.allreduce(&s)
            let ring = comm.reduceScatter(rsInput, algorithm: .ring)
            let block = comm.reduceScatter(rsInput, algorithm: .block)
            return [b, g, gv, s, ring, block]
        }
        let unchunked = run()
        var chunked: [[Float]] = []
        withChunk(7) { chunked = run() }
        for (k, (u, c)) in zip(unchunked, chunked).enumerated() {
            XCTAssertEqual(u.map { $0.bitPattern }, c.map { $0.bitPattern }, "\(describe(comm)) result \(k)")
        }
        XCTAssertEqual(unchunked[4], unchunked[5], "\(describe(comm)) ring == block")
    }
}
