import ArgumentParser
import Foundation
import PixelTensor

/// `pixellm bench gemm`: the project's matmul (Tensor-level `linear` / `matmul`, with allocation and tape
/// bookkeeping) beside raw OpenBLAS sgemm on the same shapes, in the same run.
struct BenchGemm: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gemm",
        abstract: "GFLOP/s of pixellm's matmul on the model's shapes beside raw OpenBLAS, as a ratio.")

    @Option(help: "Minimum seconds spent per measurement.") var minSeconds = 0.3
    @Option(help: "Only shapes whose model name contains this.") var only: String?
    @Flag(help: "Print JSON lines instead of a table.") var json = false
    @Option(help: "GiB of bf16 weight copies the decode products cycle through (1: no cache holds them; a 7B decode reads 13.5).")
    var decodeGib = 1.0

    func validate() throws {
        if !(minSeconds > 0) || !minSeconds.isFinite || minSeconds > 3600 { throw ValidationError("--min-seconds must be in (0, 3600] (got \(minSeconds))") }
        if !(decodeGib >= 0.125 && decodeGib <= 64) { throw ValidationError("--decode-gib must be in [0.125, 64] (got \(decodeGib))") }
        if let only, !Self.shapes.contains(where: { $0.model.contains(only) }), !Self.bf16Model.contains(only), !Self.bf16PrefillModel.contains(only),
           !Self.decodeAttentionModel.contains(only) {
            let models = Self.shapes.reduce(into: [String]()) { if !$0.contains($1.model) { $0.append($1.model) } }
            throw ValidationError("--only '\(only)' matches no shape (models: \(models.joined(separator: ", ")))")
        }
    }

    struct Shape {
        let model: String, what: String, M: Int, N: Int, K: Int
    }

    /// Linear layers of the model configurations (M = tokens, N = out features, K = in features).
    static let shapes: [Shape] = [
        Shape(model: "clip-l-448", what: "attn q/k/v/o 1025x1024->1024", M: 1025, N: 1024, K: 1024),
        Shape(model: "clip-l-448", what: "mlp fc1 1025x1024->4096", M: 1025, N: 4096, K: 1024),
        Shape(model: "clip-l-448", what: "mlp fc2 1025x4096->1024", M: 1025, N: 1024, K: 4096),
        Shape(model: "llama-7b", what: "attn q/k/v/o 512x4096->4096", M: 512, N: 4096, K: 4096),
        Shape(model: "llama-7b", what: "mlp gate/up 512x4096->11008", M: 512, N: 11008, K: 4096),
        Shape(model: "llama-7b", what: "mlp down 512x11008->4096", M: 512, N: 4096, K: 11008),
        Shape(model: "llama-7b", what: "lm_head 128x4096->32009", M: 128, N: 32009, K: 4096),
        Shape(model: "llama-7b", what: "decode step 1x4096->11008", M: 1, N: 11008, K: 4096),
        Shape(model: "decoder", what: "self-attn 6x256->256 (x K targets=8)", M: 48, N: 256, K: 256),
        Shape(model: "decoder", what: "cross-attn img 1024x256->128", M: 1024, N: 128, K: 256),
        Shape(model: "decoder", what: "cross-attn img 4096x256->128", M: 4096, N: 128, K: 256),
        Shape(model: "decoder", what: "out_mm_projector 1024x1024->8192", M: 1024, N: 8192, K: 1024),
        Shape(model: "synth-small", what: "attn 256x256->256", M: 256, N: 256, K: 256),
        Shape(model: "synth-small", what: "mlp 256x256->688", M: 256, N: 688, K: 256),
        Shape(model: "synth-small", what: "vit 197x192->768", M: 197, N: 768, K: 192),
    ]

    /// Best time of `body` over repetitions lasting at least `minSeconds` in total.
    static func time(_ minSeconds: Double, _ body: () -> Void) -> Double {
        body()
        var best = Double.infinity, total = 0.0, n = 0
        while total < minSeconds || n < 3 {
            let t0 = DispatchTime.now().uptimeNanoseconds
            body()
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            best = min(best, dt); total += dt; n += 1
        }
        return best
    }

    func run() throws {
        let info = BLAS.info
        if !json {
            print("pixellm bench gemm   (OpenBLAS core \(info.corename), \(info.threads) thread(s))")
            print("model        pass      shape                                   pixellm GF/s   raw sgemm GF/s   ratio")
        }
        var rng = RNG(seed: 1)
        for s in Self.shapes where only.map({ s.model.contains($0) }) ?? true {
            let x = Tensor.randn([s.M, s.K], std: 0.1, rng: &rng)
            let w = Tensor.randn([s.N, s.K], std: 0.1, rng: &rng)
            let g = Tensor.randn([s.M, s.N], std: 0.1, rng: &rng)
            let c1 = Tensor.zeros([s.M, s.N]), c2 = Tensor.zeros([s.M, s.K]), c3 = Tensor.zeros([s.N, s.K])
            let flops = 2.0 * Double(s.M) * Double(s.N) * Double(s.K)
            // forward Y = X W^T; backward dX = dY W; backward dW = dY^T X
            let passes: [(String, () -> Void, () -> Void)] = [
                ("fwd", { _ = Autograd.noGrad { linear(x, w) } },
                 { BLAS.sgemm(transA: false, transB: true, M: s.M, N: s.N, K: s.K, A: x.ptr, lda: s.K, B: w.ptr, ldb: s.K, beta: 0, C: c1.ptr, ldc: s.N) }),
                ("bwd-in", { _ = Autograd.noGrad { g.matmul(w) } },
                 { BLAS.sgemm(transA: false, transB: false, M: s.M, N: s.K, K: s.N, A: g.ptr, lda: s.N, B: w.ptr, ldb: s.K, beta: 0, C: c2.ptr, ldc: s.K) }),
                ("bwd-w", { _ = Autograd.noGrad { g.transpose(0, 1).matmul(x) } },
                 { BLAS.sgemm(transA: true, transB: false, M: s.N, N: s.K, K: s.M, A: g.ptr, lda: s.N, B: x.ptr, ldb: s.K, beta: 0, C: c3.ptr, ldc: s.K) }),
            ]
            for (name, mine, raw) in passes {
                let tm = Self.time(minSeconds, mine), tr = Self.time(minSeconds, raw)
                let gm = flops / tm / 1e9, gr = flops / tr / 1e9
                if json {
                    print("{\"model\":\"\(s.model)\",\"shape\":\"\(s.what)\",\"pass\":\"\(name)\",\"M\":\(s.M),\"N\":\(s.N),\"K\":\(s.K),\"pixellm_gflops\":\(gm),\"raw_gflops\":\(gr),\"ratio\":\(gm / gr)}")
                } else {
                    print(pad(s.model, 12) + " " + pad(name, 9) + " " + pad(s.what, 39) + String(format: " %10.1f   %14.1f   %5.2fx", gm, gr, gm / gr))
                }
            }
        }
        if only.map({ Self.bf16Model.contains($0) }) ?? true { try bf16Decode(info) }
        if only.map({ Self.bf16PrefillModel.contains($0) }) ?? true { bf16Prefill() }
        if only.map({ Self.decodeAttentionModel.contains($0) }) ?? true { decodeAttention() }
    }

    static let decodeAttentionModel = "decode-attention"

    /// The attention of one LLaMA-7B decode step (32 layers, 32 heads of 128, one query over a KV cache of 355 of
    /// 512 positions, as chat holds it after a 325-position prompt): the few-rows inference kernel beside the BLAS path
    /// (an sgemm per head for the scores and one for the values), as milliseconds per token and a ratio.
    func decodeAttention() {
        if !json {
            print("")
            print("decode attention (LLaMA-7B: 32 layers x 32 heads x 128, 1 query row): few-rows kernel beside BLAS per head")
            print("cached positions   few-rows ms/token   BLAS ms/token   ratio")
        }
        var rng = RNG(seed: 4)
        let layers = 32, heads = 32, hd = 128, capacity = 512
        let saved = InferenceAttention.fewRowsLimit
        defer { InferenceAttention.fewRowsLimit = saved }
        for tk in [64, 355, 512] {
            let q = Tensor.randn([1, heads, 1, hd], std: 1, rng: &rng)
            let caches = (0..<layers).map { _ in (Tensor.randn([1, heads, capacity, hd], std: 1, rng: &rng),
                                                  Tensor.randn([1, heads, capacity, hd], std: 1, rng: &rng)) }
            func view(_ t: Tensor) -> Tensor {
                Tensor(storage: t.storage, shape: [1, heads, tk, hd], strides: [heads * capacity * hd, capacity * hd, hd, 1], offset: 0)
            }
            let kv = caches.map { (view($0.0), view($0.1)) }
            func token() { Autograd.noGrad { for (k, v) in kv { _ = scaledDotProductAttention(q, k, v, causal: true) } } }
            InferenceAttention.fewRowsLimit = saved
            let tf = Self.time(minSeconds, token)
            InferenceAttention.fewRowsLimit = 0
            let tb = Self.time(minSeconds, token)
            if json {
                print("{\"pass\":\"decode-attention\",\"keys\":\(tk),\"few_rows_ms\":\(tf * 1e3),\"blas_ms\":\(tb * 1e3),\"ratio\":\(tb / tf)}")
            } else {
                print(pad("\(tk) of \(capacity)", 18) + String(format: " %18.2f   %13.2f   %5.2fx", tf * 1e3, tb * 1e3, tb / tf))
            }
        }
    }

    static let bf16Model = "bf16-decode"
    static let bf16PrefillModel = "bf16-prefill"

    /// Prefill with bf16 LLaMA-7B weights (325 rows: a chat prompt with its image): `linearBF16` with the tile
    /// conversion (weight tiles converted to fp32, then SGEMM) and, where the CPU has it, with the AVX-512 BF16 dot
    /// product (inputs rounded to bf16), beside raw SGEMM on the fp32 copy of the same weights, as GFLOP/s and
    /// ratios to SGEMM; `chosen` is what linearBF16 takes here by default.
    func bf16Prefill() {
        let dot = BF16PrefillKernel.available
        if !json {
            print("")
            print(String(format: "bf16 prefill (325 rows, LLaMA-7B shapes): linearBF16 beside raw sgemm on the fp32 weights; chosen here: %@%@",
                         BF16PrefillKernel.best.name,
                         dot ? String(format: " (bf16 dot product measured %.2fx fp32 FMA)", BF16PrefillKernel.dotSpeedup) : ", no AVX-512 BF16"))
            print("shape                     convert GF/s   bf16-dot GF/s   raw sgemm GF/s   convert/sgemm   bf16-dot/sgemm")
        }
        var rng = RNG(seed: 3)
        let m = 325
        let saved = BF16PrefillKernel.current
        defer { BF16PrefillKernel.current = saved }
        for (n, k) in [(4096, 4096), (11008, 4096), (4096, 11008)] {
            let wf = Tensor.randn([n, k], std: 0.05, rng: &rng)
            let wb = BF16Matrix(wf)
            let x = Tensor.randn([m, k], std: 1, rng: &rng)
            let c = Tensor.zeros([m, n])
            BF16PrefillKernel.current = .convert
            let tc = Self.time(minSeconds) { _ = Autograd.noGrad { linearBF16(x: x, w: wb) } }
            var td = Double.nan
            if dot {
                BF16PrefillKernel.current = .dotBF16
                td = Self.time(minSeconds) { _ = Autograd.noGrad { linearBF16(x: x, w: wb) } }
            }
            let tr = Self.time(minSeconds) {
                BLAS.sgemm(transA: false, transB: true, M: m, N: n, K: k, A: x.ptr, lda: k, B: wf.ptr, ldb: k, beta: 0, C: c.ptr, ldc: n)
            }
            let flops = 2.0 * Double(m) * Double(n) * Double(k)
            let gc = flops / tc / 1e9, gd = flops / td / 1e9, gr = flops / tr / 1e9
            if json {
                let d = dot ? ",\"dot_gflops\":\(gd),\"dot_ratio\":\(gd / gr),\"dot_speedup\":\(BF16PrefillKernel.dotSpeedup)" : ""
                print("{\"pass\":\"bf16-prefill\",\"M\":\(m),\"N\":\(n),\"K\":\(k),\"convert_gflops\":\(gc),\"raw_gflops\":\(gr),\"convert_ratio\":\(gc / gr)\(d),\"chosen\":\"\(BF16PrefillKernel.best.name)\"}")
            } else {
                let ds = dot ? String(format: "%13.1f", gd) : pad("-", 13)
                let dr = dot ? String(format: "%14.2f", gd / gr) : pad("-", 14)
                print(pad("\(m)x\(k)->\(n)", 25) + String(format: " %12.1f   ", gc) + ds + String(format: "   %14.1f   %13.2f   ", gr, gc / gr) + dr)
            }
        }
    }

    /// Decode with bf16 LLaMA-7B weights (one input row): the widening GEMV this CPU runs beside the tile conversion,
    /// as weight GB/s read and as a fraction of the memory read bandwidth measured in the same run (1 GiB of weight
    /// copies cycled through, so no cache holds them).
    func bf16Decode(_ info: BLAS.Info) throws {
        let bandwidth = SystemReport.readBandwidth(threads: max(info.threads, 1), reps: 3)
        if !json {
            print("")
            print(String(format: "bf16 decode (1 row, LLaMA-7B shapes, %.3g GiB of weights cycled): memory read %.1f GB/s in this run; kernel %@",
                         decodeGib, bandwidth, BF16Kernel.best.name))
            print("shape                     convert GB/s   \(pad("best GB/s", 12))  ratio   best / bandwidth")
        }
        var rng = RNG(seed: 2)
        let saved = BF16Kernel.current
        defer { BF16Kernel.current = saved }
        for (n, k) in [(4096, 4096), (11008, 4096), (4096, 11008)] {
            // as decode does, each call reads weights no cache holds: copies cycled through, --decode-gib in all
            let copies = max(2, Int(decodeGib * Double(1 << 30)) / (2 * n * k))
            let one = Tensor.randn([n, k], std: 0.05, rng: &rng)
            let ws = (0..<copies).map { _ in BF16Matrix(one) }
            let x = Tensor.randn([1, k], std: 1, rng: &rng)
            var next = 0
            BF16Kernel.current = .convert
            let tc = Self.time(minSeconds) { _ = Autograd.noGrad { linearBF16(x: x, w: ws[next % copies]) }; next += 1 }
            BF16Kernel.current = BF16Kernel.best
            let tb = Self.time(minSeconds) { _ = Autograd.noGrad { linearBF16(x: x, w: ws[next % copies]) }; next += 1 }
            let bytes = 2.0 * Double(n) * Double(k)
            let gc = bytes / tc / 1e9, gb = bytes / tb / 1e9
            if json {
                print("{\"pass\":\"bf16-decode\",\"N\":\(n),\"K\":\(k),\"convert_gbs\":\(gc),\"best_gbs\":\(gb),\"kernel\":\"\(BF16Kernel.best.name)\",\"bandwidth_gbs\":\(bandwidth)}")
            } else {
                print(pad("1x\(k)->\(n)", 25) + String(format: " %12.1f   %12.1f   %5.2fx   %5.2f", gc, gb, gb / gc, gb / bandwidth))
            }
        }
    }
}

/// Left-justifies `s` in `width` columns.
func pad(_ s: String, _ width: Int) -> String { s.count >= width ? s : s + String(repeating: " ", count: width - s.count) }
