// Timing of the collectives the trainer uses, on gradient-bucket sized fp32 buffers. Run by `pixellm bench comm`
// (under mpirun); never asserted in tests.
//
// For a bucket of B bytes and N ranks:
//  * allreduce:               B bytes reduced in place on every rank;
//  * reduce_scatter(block):   MPI_Reduce_scatter_block, B bytes in, B/N out;
//  * reduce_scatter(ring):    the MPI_Sendrecv ring, B bytes in, B/N out;
//  * reduce_scatter(ring,nb): the Isend/Irecv ring behind ireduceScatter, waited on at once;
//  * allgather:               B/N bytes in per rank, B bytes out (in place, as the ZeRO update uses it).
// Each timed call is preceded by a barrier; a call's time is the slowest rank's; `seconds` is the median over
// the iterations. GB/s is B / seconds ("algorithm bandwidth"); bus GB/s scales it by the data each link must
// carry (2(N-1)/N for allreduce, (N-1)/N for reduce-scatter and allgather), comparable across N.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public struct CollectiveBenchRow: Sendable {
    public var name: String
    /// Bucket size in bytes (the full buffer, N x the per-rank slice).
    public var bytes: Int
    /// Median seconds per call (slowest rank).
    public var seconds: Double
    /// bytes / seconds / 1e9.
    public var gbPerSecond: Double
    /// NCCL-style bus bandwidth, GB/s.
    public var busGBPerSecond: Double
}

public enum CollectiveBench {
    /// 1, 4, 16 and 64 MiB.
    public static let defaultSizes: [Int] = [1, 4, 16, 64].map { $0 << 20 }

    public static let operations = ["allreduce", "reduce_scatter(block)", "reduce_scatter(ring)",
                                    "reduce_scatter(ring,nb)", "allgather"]

    /// Times every operation on every bucket size. Collective: every rank must call it with the same arguments.
    /// `iterations` nil picks 5 ... 50 from the size (about 256 MiB moved per operation and size).
    public static func run(_ comm: any Communicator, sizes: [Int] = defaultSizes, iterations: Int? = nil,
                           warmup: Int = 2) -> [CollectiveBenchRow] {
        var rows: [CollectiveBenchRow] = []
        let n = comm.size
        for bytes in sizes {
            // fp32 elements, rounded down to a multiple of the world size (at least one per rank).
            let slice = Swift.max(1, bytes / MemoryLayout<Float>.size / n)
            let count = slice * n
            let actualBytes = count * MemoryLayout<Float>.size
            let iters = iterations ?? Swift.max(5, Swift.min(50, (256 << 20) / Swift.max(actualBytes, 1)))

            let full = UnsafeMutablePointer<Float>.allocate(capacity: count)
            let part = UnsafeMutablePointer<Float>.allocate(capacity: slice)
            defer {
                full.deallocate()
                part.deallocate()
            }
            let reset = {
                for i in 0..<count { full[i] = Float(i & 1023) * 0.001 + Float(comm.rank) }
                part.initialize(repeating: 0, count: slice)
            }
            reset()

            func time(_ name: String, busFactor: Double, _ body: () -> Void) {
                for _ in 0..<warmup { body() }
                var samples = [Double](repeating: 0, count: iters)
                for it in 0..<iters {
                    comm.barrier()
                    let t0 = monotonicSeconds()
                    body()
                    samples[it] = monotonicSeconds() - t0
                }
                comm.allreduce(&samples, op: .max)
                samples.sort()
                let median = samples[iters / 2]
                let gbs = Double(actualBytes) / median / 1e9
                rows.append(CollectiveBenchRow(name: name, bytes: actualBytes, seconds: median, gbPerSecond: gbs,
                                               busGBPerSecond: gbs * busFactor))
                reset()  // keep the values bounded (sums grow otherwise)
            }

            let nd = Double(n)
            time("allreduce", busFactor: 2 * (nd - 1) / nd) {
                comm.allreduce(full, count: count, op: .sum)
            }
            time("reduce_scatter(block)", busFactor: (nd - 1) / nd) {
                comm.reduceScatter(UnsafePointer(full), into: part, count: slice, algorithm: .block)
            }
            time("reduce_scatter(ring)", busFactor: (nd - 1) / nd) {
                comm.reduceScatter(UnsafePointer(full), into: part, count: slice, algorithm: .ring)
            }
            time("reduce_scatter(ring,nb)", busFactor: (nd - 1) / nd) {
                comm.ireduceScatter(UnsafePointer(full), into: part, count: slice, algorithm: .ring).wait()
            }
            time("allgather", busFactor: (nd - 1) / nd) {
                comm.allgather(inPlace: full, count: slice)
            }
        }
        return rows
    }

    /// A fixed-width table of the rows.
    public static func table(_ rows: [CollectiveBenchRow]) -> String {
        func pad(_ s: String, _ w: Int, left: Bool = false) -> String {
            let p = String(repeating: " ", count: Swift.max(0, w - s.count))
            return left ? s + p : p + s
        }
        func fixed(_ x: Double, _ digits: Int) -> String {
            var scale = 1
            for _ in 0..<digits { scale *= 10 }
            guard x.isFinite else { return "\(x)" }
            let v = Int((x * Double(scale)).rounded())
            let frac = String(v % scale)
            return "\(v / scale)." + String(repeating: "0", count: digits - frac.count) + frac
        }
        var out = pad("operation", 26, left: true) + pad("MiB", 8) + pad("ms", 11) + pad("GB/s", 9)
            + pad("bus GB/s", 10) + "\n"
        for r in rows {
            out += pad(r.name, 26, left: true) + pad(fixed(Double(r.bytes) / 1048576, 2), 8)
                + pad(fixed(r.seconds * 1e3, 3), 11) + pad(fixed(r.gbPerSecond, 2), 9)
                + pad(fixed(r.busGBPerSecond, 2), 10) + "\n"
        }
        return out
    }
}

/// Seconds on a monotonic clock.
func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
