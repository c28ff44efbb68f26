// Shared helpers for the collective tests.
//
// These tests run unchanged as a plain `swift test` (MPI singleton: world size 1) and under
// `mpirun -np N .../pixellmPackageTests.xctest PixelDistributedTests` (launch/test-mpi.sh). Every rank checks its
// own results against closed-form values, so a wrong element on any rank fails that rank, and mpirun's exit code.
// All test values are small dyadic rationals: sums are exact in f32 and f64 whatever the reduction order, so
// chunked, unchunked, ring and MPI results must agree bit for bit.

import XCTest
@testable import PixelDistributed

/// The communicators every collective test runs on: MPI's world (initialised on first use; a singleton of size 1
/// without mpirun) and the local one.
func allCommunicators() -> [any Communicator] {
    [MPICommunicator.world(), LocalCommunicator()]
}

func describe(_ comm: any Communicator) -> String {
    "\(comm is MPICommunicator ? "mpi" : "local") rank \(comm.rank)/\(comm.size)"
}

/// Floating-point element types under test.
protocol TestFloat: CommReducible, BinaryFloatingPoint {}
extension Float: TestFloat {}
extension Double: TestFloat {}

/// Runs `body` with `MPICommunicator.maxChunkElements` set to `chunk`, restoring it afterwards.
func withChunk(_ chunk: Int, _ body: () throws -> Void) rethrows {
    let saved = MPICommunicator.maxChunkElements
    MPICommunicator.maxChunkElements = chunk
    defer { MPICommunicator.maxChunkElements = saved }
    try body()
}

/// Fails on the first element that differs from `expected(i)`; reports rank, communicator and index.
func check<T: Equatable>(_ got: UnsafeBufferPointer<T>, _ what: String, _ comm: any Communicator,
                         file: StaticString = #filePath, line: UInt = #line, expected: (Int) -> T) {
    for i in 0..<got.count where got[i] != expected(i) {
        XCTFail("\(describe(comm)) \(what): element \(i) of \(got.count) = \(got[i]), expected \(expected(i))",
                file: file, line: line)
        return
    }
}

func check<T: Equatable>(_ got: [T], _ what: String, _ comm: any Communicator,
                         file: StaticString = #filePath, line: UInt = #line, expected: (Int) -> T) {
    got.withUnsafeBufferPointer { check($0, what, comm, file: file, line: line, expected: expected) }
}

/// An owned buffer for pointer-based APIs (arrays can't be kept alive across non-blocking calls safely).
final class Buffer<T> {
    let pointer: UnsafeMutablePointer<T>
    let count: Int
    init(_ count: Int, _ value: (Int) -> T) {
        self.count = count
        pointer = .allocate(capacity: Swift.max(count, 1))
        for i in 0..<count { (pointer + i).initialize(to: value(i)) }
    }
    deinit {
        pointer.deinitialize(count: count)
        pointer.deallocate()
    }
    var buffer: UnsafeBufferPointer<T> { UnsafeBufferPointer(start: pointer, count: count) }
    var array: [T] { Array(buffer) }
    subscript(i: Int) -> T {
        get { pointer[i] }
        set { pointer[i] = newValue }
    }
}

// Closed forms. N ranks, rank r, element i.

/// Rank r's contribution to a sum: (r+1)/2 + i/4.
@inline(__always) func contribution<T: TestFloat>(_ r: Int, _ i: Int, _: T.Type = T.self) -> T {
    T(r + 1) * 0.5 + T(i % 8192) * 0.25
}

/// Sum over r < N of contribution(r, i) = N(N+1)/4 + N i/4.
@inline(__always) func sumOfContributions<T: TestFloat>(_ n: Int, _ i: Int, _: T.Type = T.self) -> T {
    T(n * (n + 1)) * 0.25 + T(n) * T(i % 8192) * 0.25
}

/// Alternating sign contribution for max/min: even i: i + (r+1); odd i: i - (r+1).
@inline(__always) func signedContribution<T: TestFloat>(_ r: Int, _ i: Int, _: T.Type = T.self) -> T {
    i % 2 == 0 ? T(i) + T(r + 1) : T(i) - T(r + 1)
}

@inline(__always) func maxOfSigned<T: TestFloat>(_ n: Int, _ i: Int, _: T.Type = T.self) -> T {
    i % 2 == 0 ? T(i) + T(n) : T(i) - 1
}

@inline(__always) func minOfSigned<T: TestFloat>(_ n: Int, _ i: Int, _: T.Type = T.self) -> T {
    i % 2 == 0 ? T(i) + 1 : T(i) - T(n)
}

/// A value unique to (rank, element) for gathers and broadcasts.
@inline(__always) func tagged<T: TestFloat>(_ r: Int, _ i: Int, _: T.Type = T.self) -> T {
    T(r + 1) * 1024 + T(i % 4096) * 0.5
}

/// Element counts for allgatherv: rank 1 contributes nothing, to exercise empty blocks.
func varCounts(_ n: Int, scale: Int) -> [Int] {
    (0..<n).map { $0 == 1 ? 0 : scale * ($0 + 1) + 1 }
}
