import ArgumentParser
import CPixelShims
import Foundation
import PixelDistributed
import PixelTensor

/// `pixellm doctor`: what this machine and build will compute with, and how fast.
struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the toolchain, BLAS core and threads, MPI and HDF5, and measured sgemm GFLOP/s.")

    @Option(help: "Repetitions of the 1024x1024x4096 sgemm.") var reps = 5
    @Flag(help: "Fail (exit 1) when OpenBLAS runs a generic fallback core.") var strict = false

    func validate() throws {
        if reps < 1 || reps > 10_000 { throw ValidationError("--reps must be in 1...10000 (got \(reps))") }
    }

    func run() throws {
        let comm = Communicators.make()
        let info = BLAS.info
        let lines = SystemReport.lines(info: info, comm: comm, reps: reps)
        if comm.rank == 0 || comm.size == 1 {
            for l in lines { print(l) }
        } else {
            // other ranks report their own BLAS set-up in one line
            print("rank \(comm.rank): BLAS core \(info.corename), \(info.threads) thread(s)")
        }
        if info.isGenericCore {
            let msg = "OpenBLAS is running the generic core \(info.corename): sgemm will be several times slower. Set OPENBLAS_CORETYPE (e.g. Haswell or SkylakeX)."
            FileHandle.standardError.write(("warning: " + msg + "\n").data(using: .utf8)!)
            if strict { throw ExitCode(1) }
        }
    }
}

enum SystemReport {
    static var swiftVersion: String {
        #if compiler(>=6.4)
        return "Swift compiler >= 6.4"
        #elseif compiler(>=6.3)
        return "Swift compiler 6.3"
        #elseif compiler(>=6.2)
        return "Swift compiler 6.2"
        #elseif compiler(>=6.0)
        return "Swift compiler 6.0-6.1"
        #else
        return "Swift compiler < 6.0"
        #endif
    }

    /// Peak fp32 GFLOP/s estimate: cores x clock x FLOP per cycle per core.
    static func peakEstimate(cores: Int, features: String) -> (gflops: Double, how: String) {
        var mhz = 0.0
        if let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) {
            for line in text.split(separator: "\n") where line.hasPrefix("cpu MHz") {
                if let v = Double(line.split(separator: ":").last!.trimmingCharacters(in: .whitespaces)) { mhz = max(mhz, v) }
            }
        }
        let amd = ((try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? "").contains("AuthenticAMD")
        let perCycle: Double
        let unit: String
        if features.contains("avx512f") {
            // two 512-bit FMA pipes (Intel server cores, AMD Zen 5). Zen 4 double-pumps 256-bit pipes and
            // reaches half of this; /proc/cpuinfo's clock is the nominal one, so treat it as an estimate.
            perCycle = 64
            unit = amd ? "2x512-bit FMA assumed (AMD; Zen 4 would be half)" : "2x512-bit FMA"
        } else if features.contains("fma") {
            perCycle = 32; unit = "2x256-bit FMA"
        } else if features.contains("avx") {
            perCycle = 16; unit = "256-bit add+mul"
        } else {
            perCycle = 8; unit = "128-bit SSE"
        }
        let g = Double(cores) * mhz / 1000 * perCycle
        return (g, String(format: "%d core(s) x %.2f GHz x %.0f FLOP/cycle (%@)", cores, mhz / 1000, perCycle, unit))
    }

    /// Best-of-`reps` GFLOP/s of C = A B^T on the given shape (raw sgemm).
    static func sgemmGflops(M: Int, N: Int, K: Int, reps: Int) -> Double {
        let a = Tensor.full([M, K], 0.01), b = Tensor.full([N, K], 0.02), c = Tensor.zeros([M, N])
        BLAS.sgemm(transA: false, transB: true, M: M, N: N, K: K, A: a.ptr, lda: K, B: b.ptr, ldb: K, beta: 0, C: c.ptr, ldc: N)
        var best = Double.infinity
        for _ in 0..<max(reps, 1) {
            let t0 = DispatchTime.now().uptimeNanoseconds
            BLAS.sgemm(transA: false, transB: true, M: M, N: N, K: K, A: a.ptr, lda: K, B: b.ptr, ldb: K, beta: 0, C: c.ptr, ldc: N)
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            best = min(best, dt)
        }
        return 2.0 * Double(M) * Double(N) * Double(K) / best / 1e9
    }

    /// Memory read bandwidth in GB/s: the best of `reps` passes summing a 512 MiB buffer (far larger than any
    /// cache), split over `threads` threads as decode's weight reads are.
    static func readBandwidth(threads: Int, reps: Int, bytes: Int = 512 << 20) -> Double {
        let n = bytes / 4
        let buf = UnsafeMutablePointer<Float>.allocate(capacity: n)
        defer { buf.deallocate() }
        buf.update(repeating: 1, count: n)   // touch every page before timing
        let parts = max(threads, 1), chunk = (n / parts) & ~7
        var best = Double.infinity
        let sums = UnsafeMutablePointer<Float>.allocate(capacity: parts)
        defer { sums.deallocate() }
        for _ in 0..<max(reps, 1) {
            let t0 = DispatchTime.now().uptimeNanoseconds
            DispatchQueue.concurrentPerform(iterations: parts) { p in
                let start = p * chunk, end = p == parts - 1 ? n : start + chunk
                var acc = SIMD8<Float>(repeating: 0)
                var i = start
                while i + 8 <= end {
                    acc += UnsafeRawPointer(buf + i).loadUnaligned(as: SIMD8<Float>.self)
                    i += 8
                }
                var tail = acc.sum()
                while i < end { tail += buf[i]; i += 1 }
                sums[p] = tail
            }
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            // the sums must be used, or the reads could be dropped (a float sum of n ones need not be exactly n)
            if !((0..<parts).reduce(Float(0), { $0 + sums[$1] }) > 0) { return .nan }
            best = min(best, dt)
        }
        return Double(bytes) / best / 1e9
    }

    static func lines(info: BLAS.Info, comm: Communicator, reps: Int) -> [String] {
        var out: [String] = []
        out.append("pixellm doctor")
        out.append("  toolchain      \(swiftVersion)")
        out.append("  cpu            \(pixel_cpu_online_count()) core(s) online, \(pixel_cpu_affinity_count()) usable by this process; features: \(info.cpuFeatures)")
        out.append("  blas library   \(info.libraryPath)")
        out.append("  blas config    \(info.config)")
        out.append("  blas core      \(info.corename)   (requested \(info.requestedCore), from \(info.coreSource))\(info.isGenericCore ? "   <-- GENERIC FALLBACK: slow" : "")")
        if info.preloaded {
            out.append("  warning        OpenBLAS was loaded before pixellm could choose its core")
        }
        out.append("  blas threads   \(info.threads)   (from \(info.threadsSource))")
        let gf = sgemmGflops(M: 1024, N: 1024, K: 4096, reps: reps)
        let peak = peakEstimate(cores: info.threads, features: info.cpuFeatures)
        out.append(String(format: "  sgemm          %.1f GFLOP/s on 1024x1024x4096 (best of %d)", gf, reps))
        out.append(String(format: "  peak estimate  %.1f GFLOP/s = %@ -> %.0f%% of peak", peak.gflops, peak.how,
                          peak.gflops > 0 ? 100 * gf / peak.gflops : 0))
        let bw = readBandwidth(threads: max(info.threads, 1), reps: min(reps, 3))
        out.append(String(format: "  memory read    %.1f GB/s (%d thread(s), 512 MiB, best of %d): decode of a bf16 7B (13.5 GB of LLaMA weights per token) is bound at %.2f s/token",
                          bw, max(info.threads, 1), min(reps, 3), 13.5 / bw))
        out.append("  bf16 kernel    \(BF16Kernel.current.name) for decode (fewer than 8 rows; PIXELLM_BF16_KERNEL overrides)")
        let dot = BF16PrefillKernel.available
            ? String(format: "the bf16 dot product measured %.2fx fp32 FMA's multiply-adds here", BF16PrefillKernel.dotSpeedup)
            : "no AVX-512 BF16 here"
        out.append("  bf16 prefill   \(BF16PrefillKernel.current.name) for 8 rows and more without gradients (\(dot); PIXELLM_BF16_PREFILL overrides)")
        out.append("  mpi            \(String(cString: pixel_mpi_library_version()))")
        out.append("  mpi world      \(comm.size > 1 || Communicators.launchedByMPI ? "rank \(comm.rank) of \(comm.size) (launched by mpirun)" : "single process (not launched by mpirun)")")
        out.append("  hdf5           \(String(cString: pixel_h5_version()))")
        return out
    }
}
