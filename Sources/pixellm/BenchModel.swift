import ArgumentParser
import Foundation
import PixelModel
import PixelTensor

/// `pixellm bench model`: the whole PixelLM (random init, the released trainable recipe) timed on a synthetic
/// batch — forward, forward+backward, and forward+backward+AdamW — beside the PyTorch reference
/// (tools/reference/bench_model.py over tools/reference/pixellm_full.py) on the same config, batch and threads.
struct BenchModel: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "model",
        abstract: "Training-step throughput of the whole model beside the PyTorch reference on the same batch, as a ratio.",
        discussion: """
            Builds the model from configs/<NAME>/config.json (or a path) with random weights, makes a synthetic batch \
            (random pixels with valid sizes, conversations with the image placeholder and T SEG groups each, \
            labels, random target masks at the original size) and times S steps after the warm-up of: the forward \
            (no grad), forward+backward (the released recipe's gradients, no optimizer) and forward+backward+AdamW. \
            FLOPs are FLOPCounter's (matrix products only, the same count for both sides).
            """)

    @Option(help: "A config name (configs/<NAME>/config.json) or a path to a config.json or its directory.")
    var config: String
    @Option(help: "Override num_hidden_layers (LLaMA layers).") var layers: Int?
    @Option(help: "Images in the batch.") var batchImages = 2
    @Option(help: "Conversations (questions) per image.") var questionsPerImage = 1
    @Option(help: "Targets (SEG groups and ground-truth masks) per conversation.") var targets = 1
    @Option(help: "Tokens of every conversation, the image placeholder included (before the image expansion).")
    var seqLen = 64
    @Option(help: "Original image size HxW (the size of the target masks).") var originalSize = "480x640"
    @Option(help: "Timed steps per phase.") var steps = 5
    @Option(help: "Untimed warm-up steps per phase.") var warmup = 1
    @Flag(help: "Time the forward only (no backward, no optimizer).") var forwardOnly = false
    @Option(help: "Python with torch and transformers for the reference (default: python3 if it can import torch).")
    var referencePython: String?
    @Flag(help: "Skip the PyTorch reference.") var noReference = false
    @Option(help: "Random seed (weights and batch).") var seed: UInt64 = 0
    @Flag(help: "Also time the forward's components (pixellm only, no grad).") var profile = false
    @Flag(help: "Print one JSON object instead of tables.") var json = false

    // AdamW as train_ds.py sets it (betas 0.9 / 0.95, no weight decay); lr does not change the cost.
    static let lr: Float = 1e-4, betas: (Float, Float) = (0.9, 0.95), eps: Float = 1e-8, weightDecay: Float = 0

    func validate() throws {
        if batchImages < 1 { throw ValidationError("--batch-images must be >= 1") }
        if questionsPerImage < 1 { throw ValidationError("--questions-per-image must be >= 1") }
        if targets < 1 { throw ValidationError("--targets must be >= 1 (the reference decodes masks for every image)") }
        if steps < 1 { throw ValidationError("--steps must be >= 1") }
        if warmup < 0 { throw ValidationError("--warmup must be >= 0") }
        if let layers, layers < 1 { throw ValidationError("--layers must be >= 1") }
        if Self.parseSize(originalSize) == nil { throw ValidationError("--original-size '\(originalSize)' is not HxW (e.g. 480x640)") }
    }

    static func parseSize(_ s: String) -> (height: Int, width: Int)? {
        let p = s.lowercased().split(separator: "x").compactMap { Int($0) }
        return p.count == 2 && p[0] > 0 && p[1] > 0 ? (p[0], p[1]) : nil
    }

    // MARK: locating files of the repository

    /// `rel` under the current directory or above the executable (.build/release/pixellm -> the checkout).
    static func repoFile(_ rel: String) -> String? {
        let fm = FileManager.default
        var dirs = [fm.currentDirectoryPath]
        var exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        if let p = Bundle.main.executablePath { exe = URL(fileURLWithPath: p).resolvingSymlinksInPath().deletingLastPathComponent() }
        for _ in 0..<6 {
            dirs.append(exe.path)
            exe = exe.deletingLastPathComponent()
        }
        for d in dirs {
            let p = (d as NSString).appendingPathComponent(rel)
            if fm.fileExists(atPath: p) { return p }
        }
        return nil
    }

    /// The config.json a name or path refers to.
    static func configPath(_ spec: String) throws -> String {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: spec, isDirectory: &isDir) {
            return isDir.boolValue ? (spec as NSString).appendingPathComponent("config.json") : spec
        }
        if !spec.contains("/"), let p = repoFile("configs/\(spec)/config.json") { return p }
        var known: [String] = []
        if let dir = repoFile("configs") {
            known = ((try? fm.contentsOfDirectory(atPath: dir)) ?? []).filter { fm.fileExists(atPath: "\(dir)/\($0)/config.json") }.sorted()
        }
        throw BenchModelError("no config '\(spec)': not a file or directory, and not configs/\(spec)/config.json"
                              + (known.isEmpty ? "" : " (configs: \(known.joined(separator: ", ")))"))
    }

    // MARK: the synthetic batch

    struct Synthetic {
        let batch: PixelLMBatch
        let imageIndex: [Int], ids: [[Int]], labels: [[Int]], targets: [Int]
    }

    /// B images of `original` size (ResizeLongestSide valid sizes, zero padding), B * Q conversations of exactly
    /// `seqLen` tokens: <s> filler <im_start> <image> <im_end> filler | (word [SEG0..]) x targets, word, </s>,
    /// labels -100 on the prompt; random 0/1 target masks at the original size.
    static func makeBatch(config c: PixelLMConfig, segIds: [Int], images B: Int, questions Q: Int, targets K: Int,
                          seqLen T: Int, original: (height: Int, width: Int), rng: inout RNG) throws -> Synthetic {
        let S = c.resizeVisionTowerSize, V = c.vocabSize
        let imStart = V - segIds.count - 2, imEnd = V - segIds.count - 1
        if imStart <= 3 { throw BenchModelError("vocab_size \(V) is too small for the synthetic conversations") }
        let answerLength = K * (1 + segIds.count) + 2
        let fixed = 1 + 3 + answerLength
        if T < fixed {
            throw BenchModelError("--seq-len \(T) is too short for \(K) target(s): at least \(fixed) tokens (<s>, <im_start> <image> <im_end>, \(K) x (word + \(segIds.count) SEG), word, </s>)")
        }
        let scale = Double(S) / Double(max(original.height, original.width))
        let valid = (height: min(S, Int(Double(original.height) * scale + 0.5)), width: min(S, Int(Double(original.width) * scale + 0.5)))
        let C = c.visionConfig.numChannels
        let pixels = Tensor.randn([B, C, S, S], rng: &rng)
        for b in 0..<B {
            for ch in 0..<C {
                let base = pixels.ptr + (b * C + ch) * S * S
                for y in 0..<S { for x in 0..<S where y >= valid.height || x >= valid.width { base[y * S + x] = 0 } }
            }
        }
        func filler(_ n: Int) -> [Int] { (0..<n).map { _ in 3 + rng.int(imStart - 3) } }
        var convs: [PixelLMConversation] = [], imageIndex: [Int] = [], ids: [[Int]] = [], labels: [[Int]] = []
        for b in 0..<B {
            for _ in 0..<Q {
                let rest = T - fixed, pre = min(2, rest)
                let prompt = [1] + filler(pre) + [imStart, PixelLMTokens.image, imEnd] + filler(rest - pre)
                var answer: [Int] = []
                for _ in 0..<K { answer += filler(1) + segIds }
                answer += filler(1) + [2]
                let row = prompt + answer
                let lab = [Int](repeating: PixelLMTokens.ignore, count: prompt.count) + answer
                let masks = Tensor(empty: [K, original.height, original.width])
                for i in 0..<masks.count { masks.ptr[i] = rng.uniform() < 0.5 ? 1 : 0 }
                convs.append(PixelLMConversation(imageIndex: b, inputIds: row, labels: lab, targetMasks: masks))
                imageIndex.append(b); ids.append(row); labels.append(lab)
            }
        }
        let batch = PixelLMBatch(pixels: pixels, validSizes: Array(repeating: valid, count: B),
                                 originalSizes: Array(repeating: original, count: B), conversations: convs)
        try batch.validate(config: c)
        return Synthetic(batch: batch, imageIndex: imageIndex, ids: ids, labels: labels,
                         targets: Array(repeating: K, count: B * Q))
    }

    // MARK: measuring

    struct Phase {
        let name: String
        var ms: [Double]
        var peakAlloc: Int?
        var maxRSS: Int
        var loss: Double
        /// The train step split: forward (recording the tape) and backward, ms per step.
        var forwardMs: [Double] = [], backwardMs: [Double] = []
        var mean: Double { Self.mean(ms) }
        /// The step time the rates and ratios use: robust to the odd step another process slowed down.
        var median: Double { Self.median(ms) }
        var best: Double { ms.min() ?? 0 }
        static func mean(_ v: [Double]) -> Double { v.reduce(0, +) / Double(max(v.count, 1)) }
        static func median(_ v: [Double]) -> Double {
            let s = v.sorted()
            return s.isEmpty ? 0 : s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
        }
    }

    static func maxRSS() -> Int {
        var ru = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &ru)
        return Int(ru.ru_maxrss) * 1024
    }

    static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    /// `warmup` untimed calls of `body`, then `steps` timed ones (ms), with the allocator's peak over all of them.
    func measure(_ name: String, _ body: () throws -> Float) rethrows -> Phase {
        CachingAllocator.shared.resetPeak()
        var loss: Float = 0
        for _ in 0..<warmup { loss = try body() }
        var ms: [Double] = []
        for _ in 0..<steps {
            let t0 = Self.now()
            loss = try body()
            ms.append(Double(Self.now() - t0) / 1e6)
        }
        return Phase(name: name, ms: ms, peakAlloc: CachingAllocator.shared.peakBytes, maxRSS: Self.maxRSS(), loss: Double(loss))
    }

    // MARK: the forward by component

    /// The training forward's pieces run one by one as PixelLMForCausalLM.forward runs them (no grad): (name,
    /// mean ms, FLOPCounter forward FLOPs or 0). The LLM gets the spliced embeddings the forward would build.
    func profileForward(_ m: PixelLMForCausalLM, _ batch: PixelLMBatch, flops: FLOPReport) throws -> [(String, Double, Int)] {
        let c = m.config, B = batch.imageCount, n = c.imageTokenCount, L = c.imageFeatureScaleNum
        let T = batch.paddedLength, Tx = T - 1 + n, Cn = batch.conversations.count
        var acc: [String: Double] = [:], order: [String] = []
        func timed<R>(_ name: String, _ body: () throws -> R) rethrows -> R {
            let t0 = Self.now()
            let r = try body()
            if !order.contains(name) { order.append(name) }
            acc[name, default: 0] += Double(Self.now() - t0) / 1e6
            return r
        }
        try Autograd.noGrad {
            for it in 0..<(warmup + steps) {
                if it == warmup { acc = [:] }
                let vision = timed("clip") { m.visionTower(batch.pixels, validSizes: batch.validSizes) }
                let imageTokens = timed("mm_projector") { m.mmProjector(m.visionTower.poolTokens(vision.deep)) }
                let (embeds, mask, labels, ids) = timed("splice") { () -> (Tensor, Tensor, [Int], [[Int]]) in
                    let imageMask = m.visionTower.llmImageMask(validSizes: batch.validSizes).toArray()
                    var rows: [Tensor] = [], maskValues: [Float] = [], labels: [Int] = [], ids: [[Int]] = []
                    let text = m.llm.model.embed(batch.conversations.flatMap { $0.inputIds.map { $0 == PixelLMTokens.image ? 0 : $0 } }, shape: [Cn, T])
                    for (ci, conv) in batch.conversations.enumerated() {
                        let s = conv.inputIds.firstIndex(of: PixelLMTokens.image)!, img = conv.imageIndex
                        let e = text.slice(axis: 0, ci, ci + 1)
                        let parts = [e.slice(axis: 1, 0, s), imageTokens.slice(axis: 0, img, img + 1), e.slice(axis: 1, s + 1, T)]
                        rows.append(concat(parts.filter { $0.dim(1) > 0 }, axis: 1))
                        maskValues += conv.inputIds[..<s].map { _ in 1 } + imageMask[(img * n)..<((img + 1) * n)] + conv.inputIds[(s + 1)...].map { _ in 1 }
                        let lab = Array(conv.labels[..<s]) + [Int](repeating: PixelLMTokens.ignore, count: n) + Array(conv.labels[(s + 1)...])
                        labels += lab.dropFirst()
                        ids.append(Array(conv.inputIds[..<s]) + [Int](repeating: PixelLMTokens.image, count: n) + Array(conv.inputIds[(s + 1)...]))
                    }
                    return (concat(rows, axis: 0), Tensor(maskValues, shape: [Cn, Tx]), labels, ids)
                }
                let hidden = timed("llm") { m.llm(embeds, attentionMask: mask) }
                _ = timed("lm_head+ce") { () -> Tensor in
                    let logits = m.llm.logits(hidden)
                    return crossEntropy(logits.slice(axis: 1, 0, Tx - 1).reshape([Cn * (Tx - 1), c.vocabSize]), targets: labels)
                }
                let (outDeep, outMid) = timed("out_mm_projector") { (m.outMMProjector(vision.deep), L > 1 ? m.outMMProjector(vision.mid) : nil) }
                let seg = Set(m.segTokenIds)
                let queries = timed("fcs") {
                    batch.conversations.indices.map { ci in
                        m.decoderSide.queries(hidden: hidden.slice(axis: 0, ci, ci + 1).squeeze(0), rows: segHiddenRows(tokenIds: ids[ci], segTokenIds: seg)).queries
                    }
                }
                var questions: [QuestionMasks] = []
                for b in 0..<B {
                    let members = batch.conversations.indices.filter { batch.conversations[$0].imageIndex == b && queries[$0] != nil }
                    if members.isEmpty { continue }
                    let E = timed("neck") { () -> Tensor in
                        var levels = [outDeep.slice(axis: 0, b, b + 1)]
                        if let outMid { levels.append(outMid.slice(axis: 0, b, b + 1)) }
                        return m.decoderSide.imageEmbeddings(levels.count == 1 ? levels[0] : concat(levels, axis: 0))
                    }
                    let qs = members.map { queries[$0]! }
                    let low = timed("decoder") { m.decoderSide.decode(embeddings: E, queries: qs.count == 1 ? qs[0] : concat(qs, axis: 0)).lowRes }
                    let post = timed("postprocess") { postprocessMasks(low, inputSize: batch.validSizes[b], originalSize: batch.originalSizes[b]) }
                    var k0 = 0
                    for mi in members {
                        let k = qs[members.firstIndex(of: mi)!].dim(0)
                        if let gt = batch.conversations[mi].targetMasks {
                            questions.append(QuestionMasks(logits: post.slice(axis: 0, k0, k0 + k).squeeze(1), targets: gt))
                        }
                        k0 += k
                    }
                }
                _ = timed("mask losses") { MaskLosses.total(ce: Tensor(scalar: 0), questions: questions, options: LossOptions()).total.item }
            }
        }
        let f = ["clip": "clip", "mm_projector": "mm_projector", "llm": "llm", "lm_head+ce": "lm_head",
                 "out_mm_projector": "out_mm_projector", "neck": "neck", "fcs": "fcs", "decoder": "decoder"]
        return order.map { name in (name, acc[name]! / Double(steps), f[name].flatMap { flops[$0]?.forward } ?? 0) }
    }

    // MARK: the reference

    struct Reference {
        var phases: [String: Phase] = [:]
        var torch = "", threads = 0, parameters = 0, trainable = 0, buildSeconds = 0.0
    }

    /// Runs `args` with `env` added; (exit status, stdout, stderr), or nil when it cannot start.
    static func run(_ args: [String], env: [String: String] = [:]) -> (Int32, String, String)? {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }
        let dir = NSTemporaryDirectory()
        let tag = "pixellm-bench-\(getpid())-\(UInt64.random(in: 0..<UInt64.max))"
        let outPath = "\(dir)/\(tag).out", errPath = "\(dir)/\(tag).err"
        FileManager.default.createFile(atPath: outPath, contents: nil)
        FileManager.default.createFile(atPath: errPath, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: outPath); try? FileManager.default.removeItem(atPath: errPath) }
        guard let out = FileHandle(forWritingAtPath: outPath), let err = FileHandle(forWritingAtPath: errPath) else { return nil }
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        do { try p.run() } catch { return nil }
        p.waitUntilExit()
        try? out.close(); try? err.close()
        let read = { (path: String) in (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
        return (p.terminationStatus, read(outPath), read(errPath))
    }

    static func lastLines(_ s: String, _ n: Int) -> String {
        s.split(separator: "\n").suffix(n).joined(separator: " | ")
    }

    /// The reference's result, or why there is none.
    func runReference(configPath: String, layers: Int?, threads: Int, segIds: [Int], syn: Synthetic) -> Result<Reference, ReferenceSkip> {
        let python = referencePython ?? "python3"
        guard let script = Self.repoFile("tools/reference/bench_model.py") else {
            return .failure(ReferenceSkip("PyTorch reference not available: tools/reference/bench_model.py not found (run from the checkout)"))
        }
        let env = ["OMP_NUM_THREADS": "\(threads)", "MKL_NUM_THREADS": "\(threads)", "OPENBLAS_NUM_THREADS": "\(threads)"]
        guard let probe = Self.run([python, "-c", "import torch, transformers; print(torch.__version__)"], env: env) else {
            return .failure(ReferenceSkip("PyTorch reference not available: cannot start '\(python)'"))
        }
        if probe.0 != 0 {
            let why = Self.lastLines(probe.2, 1)
            return .failure(ReferenceSkip("PyTorch reference not available: '\(python)' cannot import torch and transformers (\(why.isEmpty ? "exit \(probe.0)" : why)); pass --reference-python"))
        }
        let b = syn.batch
        let spec: [String: Any] = [
            "config_path": configPath, "layers": layers.map { $0 as Any } ?? NSNull(), "threads": threads, "seed": Int(seed % (1 << 62)),
            "warmup": warmup, "steps": steps, "forward_only": forwardOnly, "seg_token_ids": segIds,
            "image_index": syn.imageIndex, "input_ids": syn.ids, "labels": syn.labels, "targets": syn.targets,
            "original_sizes": b.originalSizes.map { [$0.height, $0.width] }, "valid_sizes": b.validSizes.map { [$0.height, $0.width] },
            "lr": Double(Self.lr), "betas": [Double(Self.betas.0), Double(Self.betas.1)], "eps": Double(Self.eps),
            "weight_decay": Double(Self.weightDecay),
        ]
        let specPath = NSTemporaryDirectory() + "/pixellm-bench-model-\(getpid()).json"
        do {
            try JSONSerialization.data(withJSONObject: spec).write(to: URL(fileURLWithPath: specPath))
        } catch {
            return .failure(ReferenceSkip("PyTorch reference not run: cannot write \(specPath): \(error)"))
        }
        defer { try? FileManager.default.removeItem(atPath: specPath) }
        guard let r = Self.run([python, script, specPath], env: env) else {
            return .failure(ReferenceSkip("PyTorch reference not run: cannot start '\(python)'"))
        }
        guard r.0 == 0, let line = r.1.split(separator: "\n").last(where: { $0.hasPrefix("{") }),
              let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            let status = r.0 > 128 || r.0 == 9 ? " (killed: out of memory?)" : ""
            return .failure(ReferenceSkip("PyTorch reference failed: exit \(r.0)\(status): \(Self.lastLines(r.2, 3))"))
        }
        var ref = Reference()
        ref.torch = obj["torch"] as? String ?? "?"
        ref.threads = (obj["threads"] as? NSNumber)?.intValue ?? 0
        ref.parameters = (obj["parameters"] as? NSNumber)?.intValue ?? 0
        ref.trainable = (obj["trainable"] as? NSNumber)?.intValue ?? 0
        ref.buildSeconds = (obj["build_s"] as? NSNumber)?.doubleValue ?? 0
        for (name, v) in obj["phases"] as? [String: Any] ?? [:] {
            guard let d = v as? [String: Any], let ms = d["ms"] as? [NSNumber] else { continue }
            var ph = Phase(name: name, ms: ms.map(\.doubleValue), peakAlloc: nil,
                           maxRSS: (d["max_rss"] as? NSNumber)?.intValue ?? 0,
                           loss: (d["loss"] as? NSNumber)?.doubleValue ?? .nan)
            ph.forwardMs = (d["forward_ms"] as? [NSNumber])?.map(\.doubleValue) ?? []
            ph.backwardMs = (d["backward_ms"] as? [NSNumber])?.map(\.doubleValue) ?? []
            ref.phases[name] = ph
        }
        return .success(ref)
    }

    struct BenchModelError: Error, CustomStringConvertible {
        let description: String
        init(_ d: String) { description = d }
    }

    struct ReferenceSkip: Error { let message: String; init(_ m: String) { message = m } }

    // MARK: run

    func run() throws {
        let path = try Self.configPath(config)
        var c = try PixelLMConfig.load(path)
        if let layers { c.numHiddenLayers = layers }
        let original = Self.parseSize(originalSize)!
        let info = BLAS.info
        let threads = info.threads
        let B = batchImages, Cn = batchImages * questionsPerImage, K = targets

        // the machine's sgemm, same run: measured before and after pixellm's phases, the better of the two
        // (another process on the cores easily halves one measurement)
        let sgemmStart = SystemReport.sgemmGflops(M: 1024, N: 1024, K: 4096, reps: 10)
        let loadStart = Self.loadAverage()

        // ours: build, batch, phases
        var rng = RNG(seed: seed)
        let t0 = Self.now()
        var model: PixelLMForCausalLM? = PixelLMForCausalLM(config: c, rng: &rng)
        let buildSeconds = Double(Self.now() - t0) / 1e9
        let segIds = model!.segTokenIds
        let weightBytes = CachingAllocator.shared.liveBytes
        var batchRng = RNG(seed: seed &+ 1)
        let syn = try Self.makeBatch(config: c, segIds: segIds, images: B, questions: questionsPerImage, targets: K,
                                     seqLen: seqLen, original: original, rng: &batchRng)
        let batch = syn.batch
        let table = ParameterTable(model: model!, trainableGroups: ParameterTable.releasedTrainableGroups)
        table.setRequiresGrad()
        let params = table.trainableParameters
        let paramCount = table.entries.filter { !$0.isBuffer }.reduce(0) { $0 + $1.tensor.count }
        let flops = FLOPCounter.count(config: c, batch: FLOPBatchShape(images: B, conversations: Cn, sequenceLength: seqLen,
                                                                       targets: Cn * K, decodedImages: B))
        let rssAfterBuild = Self.maxRSS()
        if !json {
            print("pixellm bench model   config \(config) (\(path)), \(c.numHiddenLayers) LLaMA layer(s); OpenBLAS \(info.corename), \(threads) thread(s)")
            print("  batch        \(B) image(s) \(original.height)x\(original.width) -> valid \(batch.validSizes[0].height)x\(batch.validSizes[0].width) at \(c.resizeVisionTowerSize) px; "
                  + "\(Cn) conversation(s) of \(seqLen) tokens (-> \(seqLen - 1 + c.imageTokenCount) positions); \(K) target(s) each")
            print(String(format: "  model        %@ parameters, %@ trained (released recipe); weights %@; built in %.1f s",
                         Self.count(paramCount), Self.count(table.trainableCount), Self.bytes(weightBytes), buildSeconds))
            print(String(format: "  FLOPs/step   forward %.3f GF, backward %.3f GF (FLOPCounter: matrix products)", Double(flops.forward) / 1e9, Double(flops.backward) / 1e9))
        }

        var ours: [Phase] = []
        let m = model!
        ours.append(try measure("forward") {
            try Autograd.noGrad { try m.forward(batch).losses.total.item }
        })
        if !forwardOnly {
            var fwd: [Double] = [], bwd: [Double] = []
            var train = try measure("train") {
                for p in params { p.grad = nil }
                let t0 = Self.now()
                let out = try m.forward(batch)
                let t1 = Self.now()
                out.losses.total.backward()
                fwd.append(Double(t1 - t0) / 1e6)
                bwd.append(Double(Self.now() - t1) / 1e6)
                return out.losses.total.item
            }
            train.forwardMs = Array(fwd.suffix(steps))
            train.backwardMs = Array(bwd.suffix(steps))
            ours.append(train)
            let opt = AdamW(params: params, lr: Self.lr, betas: Self.betas, eps: Self.eps, weightDecay: Self.weightDecay)
            ours.append(try measure("adamw") {
                opt.zeroGrad()
                let out = try m.forward(batch)
                out.losses.total.backward()
                opt.update()
                return out.losses.total.item
            })
            for p in params { p.grad = nil }
        }
        var components: [(String, Double, Int)] = []
        if profile { components = try profileForward(m, batch, flops: flops) }
        let sgemmEnd = SystemReport.sgemmGflops(M: 1024, N: 1024, K: 4096, reps: 10)
        let sgemm = max(sgemmStart, sgemmEnd)
        // free our model before the reference runs (it needs as much memory again)
        model = nil
        CachingAllocator.shared.emptyCache()

        var reference: Reference?
        var skip: String?
        if noReference {
            skip = "PyTorch reference skipped (--no-reference)"
        } else {
            switch runReference(configPath: path, layers: layers, threads: threads, segIds: segIds, syn: syn) {
            case .success(let r): reference = r
            case .failure(let s): skip = s.message
            }
        }

        let loadEnd = Self.loadAverage()
        let flopsOf = { (name: String) in name == "forward" ? flops.forward : flops.total }
        if json {
            func phaseJSON(_ p: Phase) -> [String: Any] {
                let s = p.median / 1e3
                var d: [String: Any] = ["ms": p.ms, "median_ms": p.median, "mean_ms": p.mean, "min_ms": p.best, "conversations_per_s": Double(Cn) / s,
                                        "images_per_s": Double(B) / s, "gflops": Double(flopsOf(p.name)) / s / 1e9,
                                        "fraction_of_sgemm": Double(flopsOf(p.name)) / s / 1e9 / sgemm, "max_rss_bytes": p.maxRSS]
                if p.loss.isFinite { d["loss"] = p.loss }
                if let a = p.peakAlloc { d["peak_alloc_bytes"] = a }
                if !p.forwardMs.isEmpty {
                    d["forward_ms"] = p.forwardMs; d["backward_ms"] = p.backwardMs
                    d["median_forward_ms"] = Phase.median(p.forwardMs); d["median_backward_ms"] = Phase.median(p.backwardMs)
                }
                return d
            }
            var out: [String: Any] = [
                "config": config, "config_path": path, "layers": c.numHiddenLayers, "threads": threads, "blas_core": info.corename,
                "batch": ["images": B, "conversations": Cn, "seq_len": seqLen, "positions": seqLen - 1 + c.imageTokenCount,
                          "targets": Cn * K, "original_size": [original.height, original.width],
                          "valid_size": [batch.validSizes[0].height, batch.validSizes[0].width]] as [String: Any],
                "sgemm_gflops": sgemm, "sgemm_gflops_before_after": [sgemmStart, sgemmEnd], "load_average": [loadStart, loadEnd], "flops": ["forward": flops.forward, "backward": flops.backward] as [String: Any],
                "pixellm": ["build_s": buildSeconds, "parameters": paramCount, "trainable": table.trainableCount,
                            "weights_bytes": weightBytes, "max_rss_after_build": rssAfterBuild,
                            "phases": Dictionary(uniqueKeysWithValues: ours.map { ($0.name, phaseJSON($0)) })] as [String: Any],
            ]
            if let r = reference {
                out["reference"] = ["torch": r.torch, "threads": r.threads, "parameters": r.parameters, "trainable": r.trainable,
                                    "build_s": r.buildSeconds,
                                    "phases": Dictionary(uniqueKeysWithValues: r.phases.map { ($0.key, phaseJSON($0.value)) })] as [String: Any]
                var ratio: [String: Any] = [:]
                var ratioBest: [String: Any] = [:]
                for p in ours {
                    if let q = r.phases[p.name] { ratio[p.name] = q.median / p.median; ratioBest[p.name] = q.best / p.best }
                }
                out["ratio_pixellm_over_pytorch"] = ratio
                out["ratio_best_steps"] = ratioBest
            }
            if let skip { out["reference_skipped"] = skip }
            if !components.isEmpty {
                out["forward_components"] = components.map { ["name": $0.0, "ms": $0.1, "flops": $0.2] as [String: Any] }
            }
            let data = try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
            return
        }

        print(String(format: "  sgemm        %.1f GFLOP/s on 1024x1024x4096 (this run: best of 10 before pixellm's phases %.1f, after %.1f)",
                     sgemm, sgemmStart, sgemmEnd))
        if let r = reference {
            print("  reference    PyTorch \(r.torch), \(r.threads) thread(s): \(Self.count(r.parameters)) parameters, \(Self.count(r.trainable)) trained; built in "
                  + String(format: "%.1f s", r.buildSeconds))
        } else if let skip {
            print("  reference    \(skip)")
        }
        print(String(format: "  machine      load average %.2f at the start, %.2f at the end (1 min; other processes share the cores)", loadStart, loadEnd))
        print("")
        print("phase          impl        median      min   conv/s  images/s  GFLOP/s  of sgemm  peak alloc   max RSS      loss")
        let label = ["forward": "forward", "train": "fwd+bwd", "adamw": "fwd+bwd+AdamW"]
        for p in ours {
            var rows: [(String, Phase)] = [("pixellm", p)]
            if let q = reference?.phases[p.name] { rows.append(("PyTorch", q)) }
            for (impl, ph) in rows {
                let s = ph.median / 1e3, gf = Double(flopsOf(p.name)) / s / 1e9
                print(pad(impl == "pixellm" ? label[p.name]! : "", 14) + " " + pad(impl, 8)
                      + String(format: " %9.1f %8.1f %8.2f %9.2f %8.1f %8.1f%%", ph.median, ph.best, Double(Cn) / s, Double(B) / s, gf, 100 * gf / sgemm)
                      + "  " + Self.bytes(ph.peakAlloc).leftPadded(10) + "  " + Self.bytes(ph.maxRSS).leftPadded(8)
                      + String(format: "  %8.4f", ph.loss))
                if !ph.forwardMs.isEmpty {
                    print(pad("", 14) + " " + pad("", 8) + String(format: "   = forward %.1f (recording) + backward %.1f ms",
                                                                  Phase.median(ph.forwardMs), Phase.median(ph.backwardMs)))
                }
            }
            if let q = reference?.phases[p.name] {
                print(pad("", 14) + " " + String(format: "ratio    %.2fx  (pixellm / PyTorch samples/s, medians; %.2fx on the best steps)", q.median / p.median, q.best / p.best))
            }
        }
        if !components.isEmpty {
            let sum = components.reduce(0) { $0 + $1.1 }
            print("\npixellm forward by component (no grad, mean of \(steps) after \(warmup) warm-up; sum \(String(format: "%.1f", sum)) ms)")
            print("component                 ms   share   GFLOP/s  of sgemm")
            for (name, ms, f) in components {
                let gf = f > 0 ? String(format: "%9.1f %8.1f%%", Double(f) / ms / 1e6, 100 * Double(f) / ms / 1e6 / sgemm) : String(repeating: " ", count: 19)
                print(pad(name, 20) + String(format: " %8.2f %6.1f%%", ms, 100 * ms / sum) + gf)
            }
        }
        print("\nmedian / min = ms per step over the timed steps; rates use the median. conv/s = conversations (samples) per second; GFLOP/s from FLOPCounter's count for both sides (the reference also "
              + "runs CLIP once per conversation and text_hidden_fcs on every position: more work than counted when Q > 1); "
              + "peak alloc = pixellm's caching allocator high-water mark (weights included); max RSS = getrusage of each process.")
    }

    /// The 1-minute load average (0 when unknown).
    static func loadAverage() -> Double {
        guard let s = try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8) else { return 0 }
        return Double(s.split(separator: " ").first ?? "") ?? 0
    }

    static func count(_ n: Int) -> String {
        n >= 1_000_000_000 ? String(format: "%.2f B", Double(n) / 1e9) : n >= 1_000_000 ? String(format: "%.2f M", Double(n) / 1e6) : String(format: "%.1f K", Double(n) / 1e3)
    }

    static func bytes(_ b: Int?) -> String {
        guard let b else { return "-" }
        return b >= 1 << 30 ? String(format: "%.2f GB", Double(b) / Double(1 << 30)) : String(format: "%.0f MB", Double(b) / Double(1 << 20))
    }
}

extension String {
    fileprivate func leftPadded(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}
