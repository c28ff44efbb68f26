import CPixelShims

/// OpenBLAS, loaded on first use with a core chosen from the CPU flags (see CPixelShims.h).
public enum BLAS {
    /// Loads OpenBLAS (idempotent). Traps with a clear message if it cannot be loaded.
    public static func ensureLoaded() {
        if pixel_blas_init() != 0 {
            fatalError("pixellm: " + String(cString: pixel_blas_error()))
        }
    }

    public struct Info: Sendable {
        public var corename: String
        public var requestedCore: String
        public var coreSource: String
        public var config: String
        public var libraryPath: String
        public var threads: Int
        public var threadsSource: String
        public var preloaded: Bool
        public var cpuFeatures: String
        /// True when OpenBLAS runs a generic fallback core (Prescott, Core2, Katmai...).
        public var isGenericCore: Bool {
            let generic = ["prescott", "katmai", "coppermine", "northwood", "core2", "generic", "banias", "atom", "unknown"]
            return generic.contains { corename.lowercased().contains($0) }
        }
    }

    public static var info: Info {
        ensureLoaded()
        return Info(
            corename: String(cString: pixel_blas_corename()).trimmingCharacters(),
            requestedCore: String(cString: pixel_blas_requested_core()),
            coreSource: String(cString: pixel_blas_core_source()),
            config: String(cString: pixel_blas_config()).trimmingCharacters(),
            libraryPath: String(cString: pixel_blas_library_path()),
            threads: Int(pixel_blas_num_threads()),
            threadsSource: String(cString: pixel_blas_threads_source()),
            preloaded: pixel_blas_was_preloaded() != 0,
            cpuFeatures: String(cString: pixel_cpu_features()))
    }

    public static func setThreads(_ n: Int) {
        ensureLoaded()
        pixel_blas_set_num_threads(Int32(n))
        Parallel.workers = max(1, n)
    }

    /// OpenBLAS's thread count (loads the library).
    public static var threadCount: Int {
        ensureLoaded()
        return Int(pixel_blas_num_threads())
    }

    /// Row-major SGEMM: C = alpha * op(A) * op(B) + beta * C, op(A) is M x K, op(B) is K x N.
    @inlinable
    public static func sgemm(transA: Bool, transB: Bool, M: Int, N: Int, K: Int, alpha: Float = 1,
                             A: UnsafePointer<Float>, lda: Int, B: UnsafePointer<Float>, ldb: Int,
                             beta: Float, C: UnsafeMutablePointer<Float>, ldc: Int) {
        if M == 0 || N == 0 { return }
        if K == 0 {  // nothing to multiply: C = beta * C
            for i in 0..<M { for j in 0..<N { C[i * ldc + j] = beta == 0 ? 0 : beta * C[i * ldc + j] } }
            return
        }
        precondition(M <= Int(Int32.max) && N <= Int(Int32.max) && K <= Int(Int32.max), "sgemm dimension exceeds Int32")
        pixel_sgemm(transA ? 1 : 0, transB ? 1 : 0, Int32(M), Int32(N), Int32(K), alpha, A, Int32(lda), B,
                    Int32(ldb), beta, C, Int32(ldc))
    }
}

extension String {
    @usableFromInline func trimmingCharacters() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
    }
}
