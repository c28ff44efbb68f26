// `pixellm bench comm`: collective bandwidth on gradient-bucket sizes. Run it under mpirun, e.g.
//   mpirun --allow-run-as-root -np 2 -x OPENBLAS_NUM_THREADS=1 .build/release/pixellm bench comm
// Every rank takes part; rank 0 prints the table.

import ArgumentParser
import PixelDistributed

struct BenchComm: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "comm",
        abstract: "Time allreduce, reduce-scatter (MPI block and ring) and allgather on fp32 buckets.")

    @Option(name: .long, help: "Comma-separated bucket sizes in MiB (the full buffer; each rank's slice is 1/N).")
    var sizes: String = "1,4,16,64"

    @Option(name: .long, help: "Timed calls per operation and size (default: 5 to 50 depending on the size).")
    var iterations: Int?

    @Option(name: .long, help: "Untimed calls before timing.")
    var warmup: Int = 2

    func validate() throws {
        guard Self.parseSizes(sizes) != nil else {
            throw ValidationError("--sizes needs comma-separated positive MiB values, e.g. 1,4,16,64")
        }
        if let i = iterations, i < 1 { throw ValidationError("--iterations must be at least 1") }
        if warmup < 0 { throw ValidationError("--warmup must not be negative") }
    }

    func run() throws {
        let comm = Communicators.make()
        let bytes = (Self.parseSizes(sizes) ?? []).map { Int($0 * 1_048_576) }
        let rows = CollectiveBench.run(comm, sizes: bytes, iterations: iterations, warmup: warmup)
        if comm.rank == 0 {
            let mpi = comm is MPICommunicator ? MPICommunicator.libraryVersion : "local (no MPI)"
            print("collectives: \(comm.size) rank(s), \(mpi)")
            print("time = median over iterations of the slowest rank; GB/s = bucket bytes / time;"
                + " bus GB/s x 2(N-1)/N for allreduce, x (N-1)/N otherwise")
            print(CollectiveBench.table(rows), terminator: "")
        }
    }

    static func parseSizes(_ text: String) -> [Double]? {
        let values = text.split(separator: ",").map { Double(String($0.filter { $0 != " " })) }
        guard !values.isEmpty, values.allSatisfy({ ($0 ?? 0) > 0 }) else { return nil }
        return values.map { $0! }
    }
}
