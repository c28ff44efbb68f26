import Foundation
import PixelData
import PixelDistributed
import PixelModel
import PixelTensor
import PixelText

/// One training run on one rank (`pixellm train`; docs/training.md).
///
/// Every step: this rank's picks of the global sequence (positions consumed + r + kN), grad_accumulation_steps
/// micro-batches of batch_size images; the supervised-token and mask counts of the whole global batch are
/// allreduced first, so each micro-batch's loss is ce_w * CE_sum / tokens + (bce_w * BCE_sum + dice_w * DICE_sum)
/// / masks over the global counts and the summed gradients are exactly one rank's gradient of the same global
/// batch (the reference averages per-rank means instead); then the sharded AdamW step.
public final class Trainer {
    public let options: TrainOptions
    public let comm: any Communicator
    public let source: TrainModelSource
    public let reader: ShardReader
    public let mixture: ShardMixture
    public let batches: ShardBatches
    public let optimizer: ZeroAdamW
    public let schedule: WarmupDecayLR
    public let datasetChecksum: String
    /// The validation split (--val-dataset-dir).
    public let validation: ShardBatches?
    /// The evaluation splits (--val-dataset) and their evaluator.
    public private(set) var evalSources: [EvalSource] = []
    var evaluator: Evaluator?
    /// The best first-split gIoU so far (RUN/best.json; -1: none) and the step of the last checkpoint written.
    public private(set) var bestGIoU = -1.0
    var lastSavedStep = -1
    public private(set) var step = 0
    public private(set) var consumedSamples = 0
    public private(set) var skippedUpdates = 0
    /// Updates skipped one after the other (non-finite gradient norm) up to the last step.
    public private(set) var skippedInARow = 0
    /// Steps (1-based, as printed) whose gradient gets a NaN on rank 0 (PIXELLM_FAULT_NAN_GRADIENT="3,4": a test hook).
    let faultNaNSteps: Set<Int> = Set((ProcessInfo.processInfo.environment["PIXELLM_FAULT_NAN_GRADIENT"] ?? "")
        .split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) })
    /// Test hooks for process faults (RELIABILITY.md): PIXELLM_FAULT_KILL="RANK:STEP" makes that rank kill itself
    /// with SIGKILL in the middle of that step (after its first forward); PIXELLM_FAULT_STALL="RANK:STEP:SECONDS"
    /// makes it sleep there.
    let faultKill: (rank: Int, step: Int)? = {
        let f = (ProcessInfo.processInfo.environment["PIXELLM_FAULT_KILL"] ?? "").split(separator: ":").compactMap { Int($0) }
        return f.count == 2 ? (f[0], f[1]) : nil
    }()
    let faultStall: (rank: Int, step: Int, seconds: Double)? = {
        let f = (ProcessInfo.processInfo.environment["PIXELLM_FAULT_STALL"] ?? "").split(separator: ":").compactMap { Double($0) }
        return f.count == 3 ? (Int(f[0]), Int(f[1]), f[2]) : nil
    }()
    /// Lines of the metrics log written this process (rank 0), for tests.
    public private(set) var history: [[String: Double]] = []
    public var stopAtStep: Int?
    public var timeBudget: Double?
    public var trace = false
    public var quiet = false
    let start = Date()
    var traceEvents: [[String: Any]] = []

    public var runDirectory: String { options.runDirectory }
    public var globalBatch: Int { options.batchSize * options.gradAccumulationSteps * comm.size }

    /// The memory the run was estimated to need (printed by `pixellm train`), and the limit it was checked against.
    public private(set) var memoryEstimate = MemoryEstimate()
    public private(set) var memoryLimit: Int?
    var reportedMemory = false
    /// Empty the allocator's cache after every step (the estimate is above half the node's memory).
    public private(set) var trimCacheEveryStep = false

    /// `memory`: the limit to check the estimate against (nil: the node's MemTotal or cgroup limit) and whether to
    /// refuse a run that exceeds it (`--memory-limit`, `--skip-memory-check`).
    public init(options: TrainOptions, comm: any Communicator, memory: (limit: Int?, check: Bool) = (nil, true)) throws {
        try options.validate()
        self.comm = comm
        CommWatchdog.current = CommWatchdog(heartbeat: options.heartbeatSeconds, timeout: options.collectiveTimeout)
        // prepared shards, or a dataset tree that is packed first (into RUN/shards)
        var options = options
        let tree = AutoPrepare.isDatasetTree(options.datasetDir)
        let index = (options.datasetDir as NSString).appendingPathComponent(ShardFormat.manifestName)
        if !tree && !FileManager.default.fileExists(atPath: index) {
            throw TrainError.file(options.datasetDir, "no \(ShardFormat.manifestName): neither prepared shards (pixellm prepare writes them) nor a dataset tree")
        }
        let tokDir = tree ? try AutoPrepare.tokenizerDirectory(tree: options.datasetDir)
            : try ShardManifest.load(options.datasetDir).options.tokenizerPath
        source = try TrainModelSource(options: options, tokenizerDirectory: tokDir)
        source.model.gradientCheckpointing = options.gradientCheckpointing
        if tree {
            let out = (options.runDirectory as NSString).appendingPathComponent("shards")
            try AutoPrepare.run(tree: options.datasetDir, out: out, options: options, imageSize: source.model.config.resizeVisionTowerSize,
                                comm: comm, log: { print($0) })
            options.datasetDir = out
        }
        self.options = options
        reader = try ShardReader(directory: options.datasetDir)
        let indexBytes = FileManager.default.contents(atPath: (options.datasetDir as NSString).appendingPathComponent(ShardFormat.manifestName)) ?? Data()
        datasetChecksum = String(indexBytes.withUnsafeBytes { CRC32.checksum($0) }, radix: 16)
        mixture = try ShardMixture(reader: reader, dataset: options.dataset, sampleRates: options.sampleRates, seed: options.seed)
        batches = try ShardBatches(reader: reader, config: source.model.config, segTokenIds: source.model.segTokenIds,
                                   modelMaxLength: options.modelMaxLength)
        source.table.setRequiresGrad()
        let entries = source.trainableInBucketOrder
        guard !entries.isEmpty else { throw TrainError.option("--trainable", "'\(options.trainable)' leaves nothing to train") }
        let layout = BucketLayout(tensors: entries.map { ($0.name, $0.tensor.shape) }, worldSize: comm.size,
                                  capElements: options.bucketElements)
        // what the run will hold, before the buckets, the optimizer state and the first step are allocated
        memoryEstimate = MemoryEstimate.make(model: source.model, table: source.table, layout: layout, options: options, worldSize: comm.size,
                                             ranksOnNode: Self.ranksOnThisNode(comm), batch: try Self.largestBatch(batches: batches, reader: reader, options: options))
        memoryLimit = memory.limit ?? MemoryEstimate.nodeLimit()
        if memory.check, let limit = memoryLimit, memoryEstimate.node > limit {
            let levers = memoryEstimate.levers(options: options, config: source.model.config, worldSize: comm.size)
            throw TrainError.option("memory", "this recipe needs about \(MemoryEstimate.gb(memoryEstimate.node)) on this node and it has \(MemoryEstimate.gb(limit))"
                + (memory.limit != nil ? " (--memory-limit)" : " (MemTotal or the cgroup's limit)") + ": " + memoryEstimate.summary(limit: limit)
                + ". What would help: " + (levers + ["a node with at least \(MemoryEstimate.gb(memoryEstimate.node)) of memory"
                    + (memoryEstimate.mappedBytes > limit ? " (the frozen bf16 weights alone are \(MemoryEstimate.gb(memoryEstimate.mappedBytes)))" : "")]).joined(separator: "; ")
                + ". --skip-memory-check runs it anyway, --memory-limit SIZE budgets another size")
        }
        let flat = FlatBuckets(layout: layout, tensors: entries.map(\.tensor))
        optimizer = ZeroAdamW(buckets: flat, comm: comm, stage: options.zeroStage, betas: (options.beta1, options.beta2),
                              weightDecay: options.weightDecay)
        if let text = options.lrMultipliers {
            let byGroup = try TrainOptions.parseMultipliers(text)
            var perTensor: [String: Float] = [:]
            for e in entries {
                // "llm" means the whole LLaMA stack: q_proj and v_proj (group lora-target) too, unless named on their own
                if let s = byGroup[e.group] ?? (e.group == .loraTarget ? byGroup[.llm] : nil) { perTensor[e.name] = s }
            }
            optimizer.lrMultipliers = perTensor
        }
        schedule = WarmupDecayLR(maxLR: options.lr, warmupSteps: options.warmupSteps, totalSteps: options.totalSteps)
        if let v = options.valDatasetDir {
            validation = try ShardBatches(reader: try ShardReader(directory: v), config: source.model.config,
                                          segTokenIds: source.model.segTokenIds, modelMaxLength: options.modelMaxLength)
        } else {
            validation = nil
        }
        if let names = options.valDataset {
            let tree: String
            if let t = options.evalDatasetDir { tree = t } else if AutoPrepare.isDatasetTree(options.datasetDir) {
                tree = options.datasetDir
            } else {
                tree = try ShardManifest.load(options.datasetDir).options.datasetDir
            }
            let config = source.model.config
            evalSources = try EvalDataset.parse(names).map {
                try EvalSource($0, datasetDir: tree, segTokenNum: config.segTokenNum, scales: config.imageFeatureScaleNum, seed: options.seed)
            }
            var eo = EvalOptions()
            eo.maxNewTokens = options.evalMaxNewTokens ?? 512
            eo.limit = options.evalMaxImages
            eo.seed = options.seed
            let tok: Tokenizer
            do { tok = try Tokenizer(directory: source.tokenizerDirectory) } catch { throw TrainError.file(source.tokenizerDirectory, "tokenizer: \(error)") }
            evaluator = try Evaluator(model: source.model, tokenizer: tok, tokenizerName: source.tokenizerDirectory, comm: comm, options: eo)
            // the best so far (a resumed run keeps it); rank 0's view, so every rank decides alike
            var best = -1.0
            if comm.rank == 0, let d = FileManager.default.contents(atPath: (options.runDirectory as NSString).appendingPathComponent(TrainCheckpoint.bestName + ".json")),
               let o = try? JSONSerialization.jsonObject(with: d) as? [String: Any], let g = o["gIoU"] as? Double {
                best = g
            }
            bestGIoU = comm.broadcast(best)
        }
        trimCacheEveryStep = memoryLimit.map { memoryEstimate.node * 2 > $0 } ?? false
        // what loading left in the allocator's cache (skeleton storage of the weights that stay mapped) goes back to
        // the system, the mapped pages read for copies leave this process's RSS, and the peak of live tensors counts
        // from here (the first step's report)
        CachingAllocator.shared.emptyCache()
        MappedFiles.releaseResidentPages()
        CachingAllocator.shared.resetPeak()
    }

    /// Ranks of this job on this machine (by host name; collective).
    static func ranksOnThisNode(_ comm: any Communicator) -> Int {
        if comm.size == 1 { return 1 }
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, 255)
        let h = Int64(bitPattern: UInt64(name.withUnsafeBytes { CRC32.checksum(UnsafeRawBufferPointer(rebasing: $0[..<strlen(name)])) }))
        return comm.allgather([h]).filter { $0 == h }.count
    }

    /// The positions (text tokens + image tokens over the conversations, as `sampleCost` counts them) of the largest
    /// micro-batch among up to 256 samples spread over the shards (batch_size times the largest sample), its
    /// supervised positions, and the longest conversation.
    static func largestBatch(batches: ShardBatches, reader: ShardReader, options: TrainOptions) throws -> (positions: Int, supervised: Int, longest: Int) {
        let n = reader.count
        guard n > 0 else { return (0, 0, 0) }
        let config = batches.config, cut = options.modelMaxLength - 255
        var most = (positions: 0, supervised: 0), longest = 0
        for k in 0..<min(n, 256) {
            let (ids, labels) = try reader.tokens(n <= 256 ? k : k * n / 256)
            var p = 0, s = 0
            for (conv, lab) in zip(ids, labels) {
                let len = min(conv.count, cut) - 1 + config.imageTokenCount
                p += len
                s += lab.prefix(cut).filter { $0 != PixelLMTokens.ignore }.count
                longest = max(longest, len)
            }
            if p > most.positions { most = (p, s) }
        }
        return (most.positions * options.batchSize, most.supervised * options.batchSize, longest)
    }

    /// Evaluates the --val-dataset splits (collective), logs their figures, and returns the first split's report.
    public func evaluate(metricsPath: String?) throws -> [EvalReport] {
        guard let evaluator else { return [] }
        source.model.setLoRADropout(seeds: nil)
        var reports: [EvalReport] = []
        for src in evalSources {
            let r = try evaluator.run(src)
            reports.append(r)
            guard comm.rank == 0 else { continue }
            var line: [String: Any] = ["step": step, "eval_dataset": r.dataset, "gIoU": r.overall.gIoU, "cIoU": r.overall.cIoU,
                                       "eval_images": r.overall.images, "eval_questions": r.overall.questions, "eval_seconds": r.seconds]
            if let g = r.overall.gIoUClean { line["gIoU_clean"] = g }
            if let c = r.overall.cIoUClean { line["cIoU_clean"] = c }
            if let x = r.overall.exactMatch { line["exact_match"] = x }
            if let x = r.overall.targetsNamed { line["targets_named"] = x }
            for (k, f) in r.byKind where f.targets > 0 { line["gIoU_\(k)"] = f.gIoU }
            if let metricsPath { try appendLine(line, to: metricsPath) }
            if !quiet {
                var text = String(format: "eval at step %d: %@ gIoU %.4f cIoU %.4f", step, r.dataset, r.overall.gIoU, r.overall.cIoU)
                if let g = r.overall.gIoUClean, let c = r.overall.cIoUClean { text += String(format: " (clean %.4f / %.4f)", g, c) }
                if let x = r.overall.exactMatch { text += String(format: ", exact answers %.3f", x) }
                if let x = r.overall.targetsNamed { text += String(format: ", targets named %.3f", x) }
                text += String(format: " (%d images, %.1f s)", r.overall.images, r.seconds)
                print(text)
                for (k, f) in r.byKind.sorted(by: { $0.key < $1.key }) {
                    var text = "  " + k.padding(toLength: 12, withPad: " ", startingAt: 0)
                    // a kind without targets (text-only answers) has no masks to score
                    text += f.targets > 0 ? String(format: " gIoU %.4f cIoU %.4f", f.gIoU, f.cIoU) : " no masks to score"
                    if let x = f.exactMatch { text += String(format: ", exact answers %.3f", x) }
                    print(text + " (\(f.questions) questions)")
                }
            }
        }
        return reports
    }

    /// After an evaluation: a first-split gIoU above the best so far makes this step's checkpoint RUN/best
    /// (written now if the step has none yet; collective).
    func keepBest(_ reports: [EvalReport]) throws {
        guard let g = reports.first?.overall.gIoU, g > bestGIoU else { return }
        // this step's checkpoint (only rank 0 reads the run directory's `latest`: other nodes may not share it)
        let saved = lastSavedStep == step ? nil : try save()
        bestGIoU = g
        if comm.rank == 0 {
            let dir = try saved ?? TrainCheckpoint.resolve(runDirectory)
            try TrainCheckpoint.markBest(run: runDirectory, checkpoint: dir, step: step, dataset: reports[0].dataset, gIoU: g,
                                         cIoU: reports[0].overall.cIoU)
            if !quiet { print(String(format: "best: step %d (gIoU %.4f) -> %@", step, g, (runDirectory as NSString).appendingPathComponent(TrainCheckpoint.bestName))) }
        }
    }

    // MARK: - validation

    public struct Validation { public var loss: Double, ce: Double, bce: Double, dice: Double, samples: Int }

    /// The loss on every sample of the validation shards (rank r takes samples r, r + N, ...; sums allreduced),
    /// normalised like the training loss (global token and mask counts).
    public func validate() throws -> Validation? {
        guard let v = validation else { return nil }
        source.model.setLoRADropout(seeds: nil)
        let mine = Array(stride(from: comm.rank, to: v.reader.count, by: comm.size))
        var sums = [0.0, 0.0, 0.0, 0.0, 0.0, Double(mine.count)]   // ce*nt, bce*nm, dice*nm, nt, nm, samples
        try Autograd.noGrad {
            for start in stride(from: 0, to: mine.count, by: options.batchSize) {
                let batch = try v.batch(samples: Array(mine[start..<min(start + options.batchSize, mine.count)]))
                var lossOptions = LossOptions()
                lossOptions.supervisedLogitsOnly = true
                let out = try source.model.forward(batch, options: lossOptions)
                let nt = Double(ShardBatches.counts(batch).tokens), nm = Double(out.losses.maskCount)
                sums[0] += Double(out.losses.ce.item) * nt
                sums[1] += Double(out.losses.bce.item) * nm
                sums[2] += Double(out.losses.dice.item) * nm
                sums[3] += nt
                sums[4] += nm
            }
        }
        comm.checkIn("validation loss: this rank's samples done")
        comm.allreduce(&sums, op: .sum)
        let ce = sums[3] > 0 ? sums[0] / sums[3] : 0, bce = sums[4] > 0 ? sums[1] / sums[4] : 0, dice = sums[4] > 0 ? sums[2] / sums[4] : 0
        let loss = Double(options.ceLossWeight) * ce + Double(options.bceLossWeight) * bce + Double(options.diceLossWeight) * dice
        return Validation(loss: loss, ce: ce, bce: bce, dice: dice, samples: Int(sums[5]))
    }

    // MARK: - the coordinator's checks

    /// Every rank must run the same plan: rank 0 broadcasts its options, model config and dataset checksum; a rank
    /// that differs aborts the job naming itself and the field. Then the replicas must hold identical weights.
    public func checkPlan() {
        struct Plan: Codable { var options: TrainOptions; var config: PixelLMConfig; var dataset: String; var world: Int }
        let mine = Plan(options: options, config: source.model.config, dataset: datasetChecksum, world: comm.size)
        let enc = JSONEncoder()
        enc.outputFormatting = .sortedKeys
        let bytes = (try? enc.encode(mine)).map { Array($0) } ?? []
        let n = comm.broadcast(Int64(bytes.count), root: 0)
        var buf = comm.rank == 0 ? bytes : [UInt8](repeating: 0, count: Int(n))
        comm.broadcast(&buf, root: 0)
        var problem: String?
        if comm.rank != 0 {
            if let p = try? JSONDecoder().decode(Plan.self, from: Data(buf)) {
                let a = Self.fields(p.options), b = Self.fields(options)
                let diff = Set(a.keys).union(b.keys).filter { a[$0] != b[$0] }.sorted()
                if !diff.isEmpty {
                    problem = "options differ from rank 0's: " + diff.map { "\($0) = \(b[$0] ?? "nil") (rank 0: \(a[$0] ?? "nil"))" }.joined(separator: ", ")
                } else if p.config != source.model.config {
                    problem = "the model config differs from rank 0's"
                } else if p.dataset != datasetChecksum {
                    problem = "the dataset (\(options.datasetDir)/index.json checksum \(datasetChecksum)) differs from rank 0's (\(p.dataset))"
                }
            } else {
                problem = "cannot read rank 0's plan"
            }
        }
        if let problem { comm.abort(message: "train: rank \(comm.rank): \(problem)") }
        comm.barrier()
        let crcs = comm.allgather([Int64(source.weightsCRC())])
        if let bad = crcs.firstIndex(where: { $0 != crcs[0] }) {
            comm.abort(message: "train: rank \(bad)'s initial weights differ from rank 0's (CRC-32 \(String(UInt32(crcs[bad]), radix: 16)) vs \(String(UInt32(crcs[0]), radix: 16)))")
        }
    }

    /// The top-level fields of a value's JSON encoding, as text (to name the fields two plans differ in).
    static func fields<T: Encodable>(_ value: T) -> [String: String] {
        guard let d = try? JSONEncoder().encode(value), let obj = try? JSONSerialization.jsonObject(with: d) as? [String: Any] else { return [:] }
        return obj.mapValues { "\($0)" }
    }

    // MARK: - resume

    /// Resumes from a checkpoint (a checkpoint directory or a run directory's `latest`). The model config and the
    /// dataset must be the ones of the checkpoint; the world size may differ (the optimizer state is resharded).
    public func resume(from path: String) throws {
        let dir = try TrainCheckpoint.resolve(path)
        let m = try TrainCheckpointManifest.load(dir)
        try m.verifyFiles(in: dir)
        if m.config != source.model.config {
            let a = Self.fields(m.config), b = Self.fields(source.model.config)
            let diff = Set(a.keys).union(b.keys).filter { a[$0] != b[$0] }.sorted()
            throw TrainError.mismatch(field: diff.first.map { "config." + $0 } ?? "config",
                                      "the checkpoint \(dir) was trained with another model config (\(diff.map { "\($0): \(a[$0] ?? "nil") there, \(b[$0] ?? "nil") here" }.joined(separator: "; ")))")
        }
        if m.datasetChecksum != datasetChecksum {
            throw TrainError.mismatch(field: "dataset", "the checkpoint \(dir) was trained on other shards (index.json checksum \(m.datasetChecksum), here \(datasetChecksum))")
        }
        for (name, a, b) in [("seed", "\(m.options.seed)", "\(options.seed)"), ("sample_rates", m.options.sampleRates, options.sampleRates),
                             ("dataset", m.options.dataset, options.dataset), ("trainable", m.options.trainable, options.trainable)] where a != b {
            throw TrainError.mismatch(field: name, "the checkpoint \(dir) has \(a), this run \(b)")
        }
        try TrainCheckpoint.restore(dir, manifest: m, into: optimizer)
        // what a crash during a save left in this run (a directory without its manifest, temporary files): rank 0
        // removes it before any rank writes again
        if comm.rank == 0, (dir as NSString).deletingLastPathComponent == (runDirectory as NSString).appendingPathComponent("checkpoints") {
            for gone in TrainCheckpoint.removeIncomplete(run: runDirectory) where !quiet { print("removed \(gone): a checkpoint whose write did not finish") }
        }
        comm.barrier()
        step = m.step
        consumedSamples = m.consumedSamples
        skippedUpdates = m.skippedUpdates
        if comm.rank == 0 && !quiet {
            print("resumed from \(dir): step \(step), \(consumedSamples) samples consumed (written by \(m.worldSize) rank(s), ZeRO-\(m.zeroStage); now \(comm.size), ZeRO-\(options.zeroStage))")
            let g = m.options.batchSize * m.options.gradAccumulationSteps * m.worldSize
            if g != globalBatch { print("note: the global batch was \(g) samples per step, now \(globalBatch)") }
        }
    }

    // MARK: - the loop

    public struct StepMetrics {
        public var step: Int, lr: Float, loss: Double, ce: Double, bce: Double, dice: Double
        /// The query separation sum per mask (0 when off).
        public var separation = 0.0
        /// The query grounding sum per mask (0 when off).
        public var grounding = 0.0
        /// The query appearance sum per mask (0 when off).
        public var appearance = 0.0
        /// The image-token appearance sum per mask (0 when off).
        public var imageAppearance = 0.0
        /// The target refinement term per mask (0 when off), before the BCE weight.
        public var refine = 0.0
        public var gradNorm: Double, clippedNorm: Double, skipped: Bool
        public var samples: Int, tokens: Int, masks: Int
        public var dataSeconds: Double, forwardSeconds: Double, backwardSeconds: Double, commSeconds: Double, optimizerSeconds: Double
        public var seconds: Double
    }

    /// This rank's samples of the step. The global batch is always the G = batch_size x accumulation x N positions
    /// after `consumed_samples`; with N > 1 they are dealt to the ranks by estimated cost (longest first, to the least
    /// loaded rank with a free slot; ties by position), so that no rank waits long for another at the reduction. Every
    /// rank computes the same assignment; each rank's samples are in sequence order.
    public func stepPicks() throws -> [ShardMixture.Pick] {
        let per = options.batchSize * options.gradAccumulationSteps, N = comm.size
        if N == 1 { return mixture.next(rank: 0, worldSize: 1, consumedSamples: consumedSamples, count: per) }
        let all = (0..<(per * N)).map { mixture.pick(at: consumedSamples + $0) }
        let cost = try all.map { try sampleCost($0.sample) }
        return Self.balance(costs: cost, ranks: N, perRank: per)[comm.rank].map { all[$0] }
    }

    /// Deals items (by index) to `ranks` lists of `perRank` each: longest first to the least loaded rank with a free
    /// slot (ties: lower rank; equal costs: lower index first); each list in index order.
    public static func balance(costs: [Double], ranks N: Int, perRank per: Int) -> [[Int]] {
        precondition(costs.count == N * per, "balance: \(costs.count) items for \(N) x \(per)")
        let order = costs.indices.sorted { costs[$0] != costs[$1] ? costs[$0] > costs[$1] : $0 < $1 }
        var load = [Double](repeating: 0, count: N), taken = [[Int]](repeating: [], count: N)
        for i in order {
            var best = -1
            for r in 0..<N where taken[r].count < per {
                if best < 0 || load[r] < load[best] { best = r }
            }
            load[best] += costs[i]
            taken[best].append(i)
        }
        return taken.map { $0.sorted() }
    }

    /// Estimated work of a sample: CLIP over its image, the LLM over every conversation (tokens plus the image
    /// tokens), the decoder and mask losses per target.
    func sampleCost(_ i: Int) throws -> Double {
        let c = source.model.config
        let (ids, _) = try reader.tokens(i)
        let seg0 = source.model.segTokenIds[0]
        let patches = Double(c.visionGrid * c.visionGrid + 1)
        var cost = 2 * patches
        for conv in ids {
            cost += Double(min(conv.count, options.modelMaxLength - 255) - 1 + c.imageTokenCount)
            cost += 50 * Double(conv.filter { $0 == seg0 }.count)
        }
        return cost
    }

    /// One optimizer step.
    public func trainStep() throws -> StepMetrics {
        let t0 = Date()
        // a frozen weight mapped from a file that was truncated or rewritten since: stop naming it, before computing on it
        try MappedFiles.verifyAll()
        let bs = options.batchSize, ga = options.gradAccumulationSteps
        let picks = try stepPicks()
        var micro: [PixelLMBatch] = []
        for k in 0..<ga { micro.append(try batches.batch(samples: picks[(k * bs)..<((k + 1) * bs)].map(\.sample))) }
        let counts = micro.map(ShardBatches.counts)
        comm.checkIn("step \(step + 1): data loaded")
        var global = [Int64(counts.reduce(0) { $0 + $1.tokens }), Int64(counts.reduce(0) { $0 + $1.masks })]
        comm.allreduce(&global, op: .sum)
        let tokens = Double(global[0]), masks = Double(global[1])
        let dataSeconds = Date().timeIntervalSince(t0)
        addTrace("data", t0, dataSeconds)

        var fwd = 0.0, bwd = 0.0, ce = 0.0, bce = 0.0, dice = 0.0, separation = 0.0, grounding = 0.0, appearance = 0.0, refine = 0.0
        var imageAppearance = 0.0
        optimizer.exposedCommSeconds = 0
        optimizer.updateSeconds = 0
        for (k, batch) in micro.enumerated() {
            optimizer.beginMicroBatch()
            if options.lora != nil {
                // LoRA dropout keyed by (seed, step, the sample's global position, conversation): rank-independent
                var seeds: [UInt64] = [], seen: [Int: Int] = [:]
                for c in batch.conversations {
                    let pick = picks[k * bs + c.imageIndex]
                    let n = seen[c.imageIndex, default: 0]
                    seen[c.imageIndex] = n + 1
                    seeds.append(LoRASeeds.row(seed: options.seed, step: step, position: pick.position, conversation: n))
                }
                source.model.setLoRADropout(seeds: seeds)
            }
            let tf = Date()
            var lossOptions = LossOptions()
            lossOptions.supervisedLogitsOnly = true
            let sepWeight = options.querySeparationWeight ?? 0
            if sepWeight > 0 { lossOptions.separationMargin = options.querySeparationMargin ?? 0.2 }
            let groundWeight = options.queryGroundingWeight ?? 0
            if groundWeight > 0 { lossOptions.groundingTemperature = options.queryGroundingTemperature ?? 0.1 }
            let appearanceWeight = options.queryAppearanceWeight ?? 0
            lossOptions.queryAppearance = appearanceWeight > 0
            let imageAppearanceWeight = options.imageAppearanceWeight ?? 0
            lossOptions.imageTokenAppearance = imageAppearanceWeight > 0
            if let a = options.refinementAlpha, a != 1 { lossOptions.refinementAlpha = a }
            let out = try batch.conversations.isEmpty ? nil : source.model.forward(batch, options: lossOptions)
            fwd += Date().timeIntervalSince(tf)
            addTrace("forward \(k)", tf, Date().timeIntervalSince(tf))
            if k == 0 { injectProcessFaults() }
            if let out {
                let nt = Double(counts[k].tokens), nm = Double(out.losses.maskCount)
                let a = tokens > 0 ? Float(Double(options.ceLossWeight) * nt / tokens) : 0
                let b = masks > 0 ? Float(Double(options.bceLossWeight) * nm / masks) : 0
                let c = masks > 0 ? Float(Double(options.diceLossWeight) * nm / masks) : 0
                var loss = out.losses.ce * a + (out.losses.bce + out.losses.refine) * b + out.losses.dice * c
                if sepWeight > 0, out.losses.separationPairs > 0, masks > 0 {
                    loss = loss + out.losses.separation * Float(Double(sepWeight) / masks)
                    separation += Double(out.losses.separation.item)
                }
                if groundWeight > 0, out.losses.groundingTerms > 0, masks > 0 {
                    loss = loss + out.losses.grounding * Float(Double(groundWeight) / masks)
                    grounding += Double(out.losses.grounding.item)
                }
                if appearanceWeight > 0, out.losses.appearanceTargets > 0, masks > 0 {
                    loss = loss + out.losses.appearance * Float(Double(appearanceWeight) / masks)
                    appearance += Double(out.losses.appearance.item)
                }
                if imageAppearanceWeight > 0, out.losses.tokenAppearanceCells > 0, masks > 0 {
                    loss = loss + out.losses.tokenAppearance * Float(Double(imageAppearanceWeight) / masks)
                    imageAppearance += Double(out.losses.tokenAppearance.item)
                }
                ce += Double(out.losses.ce.item) * nt
                bce += Double(out.losses.bce.item) * nm
                refine += Double(out.losses.refine.item) * nm
                dice += Double(out.losses.dice.item) * nm
                let tb = Date()
                if loss.requiresGrad {
                    loss.backward(onLeafComplete: { [optimizer] in optimizer.leafComplete($0) }, afterNode: { [optimizer] in optimizer.progress() })
                }
                bwd += Date().timeIntervalSince(tb)
                addTrace("backward \(k)", tb, Date().timeIntervalSince(tb))
            }
            // ZeRO-2 waits for this micro-batch's reduce-scatters here; the others wait in the update
            if options.zeroStage == 2 { comm.checkIn("step \(step + 1), micro-batch \(k + 1): backward done") }
            optimizer.endMicroBatch()
        }
        comm.checkIn("step \(step + 1): ready for the update")
        let lr = schedule.lr(step: step)
        if comm.rank == 0 && faultNaNSteps.contains(step + 1) { optimizer.poisonNextUpdate = true }
        let report = optimizer.update(lr: lr, maxGradNorm: options.gradientClipping > 0 ? options.gradientClipping : nil)
        // a run above half the node's memory: this step's cached blocks go back to the system, since the next step's
        // micro-batches have other shapes (size classes) and would allocate beside them (measured at the 7B width,
        // 2 ranks: +2.9 GB per rank in step 2 without this)
        if trimCacheEveryStep { CachingAllocator.shared.emptyCache() }
        if report.skipped { skippedUpdates += 1; skippedInARow += 1 } else { skippedInARow = 0 }
        step += 1
        consumedSamples += globalBatch
        var sums = [ce, bce, dice, separation, grounding, appearance, refine, imageAppearance]
        comm.allreduce(&sums, op: .sum)
        let ceMean = tokens > 0 ? sums[0] / tokens : 0, bceMean = masks > 0 ? sums[1] / masks : 0, diceMean = masks > 0 ? sums[2] / masks : 0
        let refineMean = masks > 0 ? sums[6] / masks : 0
        let loss = Double(options.ceLossWeight) * ceMean + Double(options.bceLossWeight) * (bceMean + refineMean) + Double(options.diceLossWeight) * diceMean
            + Double(options.querySeparationWeight ?? 0) * (masks > 0 ? sums[3] / masks : 0)
            + Double(options.queryGroundingWeight ?? 0) * (masks > 0 ? sums[4] / masks : 0)
            + Double(options.queryAppearanceWeight ?? 0) * (masks > 0 ? sums[5] / masks : 0)
            + Double(options.imageAppearanceWeight ?? 0) * (masks > 0 ? sums[7] / masks : 0)
        var metrics = StepMetrics(step: step, lr: lr, loss: loss, ce: ceMean, bce: bceMean, dice: diceMean,
                           gradNorm: report.gradNorm, clippedNorm: report.clippedNorm, skipped: report.skipped,
                           samples: globalBatch, tokens: Int(tokens), masks: Int(masks), dataSeconds: dataSeconds,
                           forwardSeconds: fwd, backwardSeconds: bwd, commSeconds: optimizer.exposedCommSeconds,
                           optimizerSeconds: optimizer.updateSeconds, seconds: Date().timeIntervalSince(t0))
        metrics.separation = masks > 0 ? sums[3] / masks : 0
        metrics.grounding = masks > 0 ? sums[4] / masks : 0
        metrics.appearance = masks > 0 ? sums[5] / masks : 0
        metrics.imageAppearance = masks > 0 ? sums[7] / masks : 0
        metrics.refine = refineMean
        return metrics
    }

    func injectProcessFaults() {
        if let f = faultStall, f.rank == comm.rank, f.step == step + 1 { Thread.sleep(forTimeInterval: f.seconds) }
        if let f = faultKill, f.rank == comm.rank, f.step == step + 1 { kill(getpid(), SIGKILL) }
    }

    /// The checkpoint of the current state (collective).
    @discardableResult
    public func save() throws -> String {
        let m = TrainCheckpointManifest(worldSize: comm.size, zeroStage: options.zeroStage, step: step, adamStep: optimizer.step,
                                        consumedSamples: consumedSamples, skippedUpdates: skippedUpdates,
                                        layout: optimizer.buckets.layout, files: [], options: options,
                                        config: source.model.config, datasetChecksum: datasetChecksum,
                                        segTokenIds: source.model.segTokenIds, tokenizer: source.tokenizerDirectory,
                                        created: ISO8601DateFormatter().string(from: Date()))
        let dir = try TrainCheckpoint.save(run: runDirectory, optimizer: optimizer, manifest: m, keep: options.saveTotalLimit)
        lastSavedStep = step
        return dir
    }

    /// Trains until the last step (or a clean stop), logging on rank 0 and saving every save_steps and at the end.
    public func run() throws {
        let total = options.totalSteps
        // a full or read-only disk is an error now, not after hours of training
        let need = TrainCheckpoint.rankFileBytes(optimizer)
        if let problem = TrainCheckpoint.spaceProblem(runDirectory, bytes: need) {
            throw TrainError.file(runDirectory, "no checkpoint could be saved: \(problem)")
        }
        let saves = min(options.saveTotalLimit.map { $0 + 1 } ?? Int.max, (total - step) / options.saveSteps + 1)
        if saves > 1, TrainCheckpoint.spaceProblem(runDirectory, bytes: need * saves) != nil, !quiet {
            print("note: rank \(comm.rank): \(saves) checkpoints of \(TrainCheckpoint.mib(need)) (this rank's files) will not fit in the free space of \(runDirectory); "
                + "set --save-total-limit or free some space before the run needs it")
        }
        let metricsPath = (runDirectory as NSString).appendingPathComponent("metrics.jsonl")
        if comm.rank == 0 { try prepareMetricsLog(metricsPath) }
        let runStart = Date()
        var samplesDone = 0
        while step < total {
            if let s = stopAtStep, step >= s { break }
            if let budget = timeBudget {
                let over = comm.allreduce(Int32(Date().timeIntervalSince(runStart) >= budget ? 1 : 0), op: .max)
                if over > 0 { break }
            }
            let m = try trainStep()
            samplesDone += m.samples
            if !reportedMemory && comm.rank == 0 && !quiet {
                // what the first step measured beside what was estimated (the estimate's private part: mapped pages are
                // in RSS once touched, so RSS is set against the whole estimate)
                reportedMemory = true
                var ru = rusage()
                getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &ru)
                print("train: first step measured: peak RSS \(MemoryEstimate.gb(Int(ru.ru_maxrss) * 1024)), peak of live tensors \(MemoryEstimate.gb(CachingAllocator.shared.peakBytes)) (allocator cache now \(MemoryEstimate.gb(CachingAllocator.shared.cachedBytes))); estimated \(MemoryEstimate.gb(memoryEstimate.perRank + memoryEstimate.mappedBytes)) (tensors \(MemoryEstimate.gb(memoryEstimate.perRank)))")
            }
            if comm.rank == 0 { try log(m, to: metricsPath, total: total, elapsed: Date().timeIntervalSince(runStart), samples: samplesDone) }
            // every rank took the same decision (the norm is global), so every rank stops here
            if options.maxSkippedInARow > 0 && skippedInARow >= options.maxSkippedInARow {
                throw TrainError.option("--max-skipped-in-a-row", "the last \(skippedInARow) updates (steps \(step - skippedInARow + 1)...\(step)) had a non-finite gradient and were skipped; "
                    + "the run has diverged or a sample is broken: lower --lr, check the data, or resume from an earlier checkpoint "
                    + "(the latest checkpoint holds the weights before these steps)")
            }
            if let e = options.evalSteps, step % e == 0, step < total {
                try logValidation(metricsPath)
                try keepBest(try evaluate(metricsPath: comm.rank == 0 ? metricsPath : nil))
            }
            if step % options.saveSteps == 0 && step < total && lastSavedStep != step { try save() }
        }
        try logValidation(metricsPath)
        let path = lastSavedStep == step ? (comm.rank == 0 ? try TrainCheckpoint.resolve(runDirectory) : "") : try save()
        try keepBest(try evaluate(metricsPath: comm.rank == 0 ? metricsPath : nil))
        if comm.rank == 0 {
            do { try LossPlot.write(run: runDirectory) } catch { if !quiet { print("note: no loss curve: \(error)") } }
        }
        if trace { try writeTrace() }
        if comm.rank == 0 && !quiet {
            print(step >= total ? "done: \(step) steps; checkpoint \(path)" : "stopped at step \(step) of \(total); checkpoint \(path) (resume with the same command)")
        }
    }

    func logValidation(_ path: String) throws {
        guard let v = try validate() else { return }
        lastValidation = v
        guard comm.rank == 0 else { return }
        let line: [String: Any] = ["step": step, "val_loss": v.loss, "val_ce": v.ce, "val_bce": v.bce, "val_dice": v.dice, "val_samples": v.samples]
        try appendLine(line, to: path)
        if !quiet { print(String(format: "validation at step %d: loss %.4f (ce %.4f bce %.4f dice %.4f) on %d samples", step, v.loss, v.ce, v.bce, v.dice, v.samples)) }
    }

    /// The last validation result (nil before any).
    public private(set) var lastValidation: Validation?

    /// JSON has no NaN or infinity: a non-finite number (the gradient norm of a skipped update, a diverged loss) is
    /// written as null, so the line that tells about it is written at all.
    static func jsonSafe(_ v: Any) -> Any {
        switch v {
        case let d as Double: return d.isFinite ? d : NSNull()
        case let f as Float: return f.isFinite ? Double(f) : NSNull()
        case let o as [String: Any]: return o.mapValues(jsonSafe)
        case let a as [Any]: return a.map(jsonSafe)
        default: return v
        }
    }

    func appendLine(_ line: [String: Any], to path: String) throws {
        let data = try JSONSerialization.data(withJSONObject: Self.jsonSafe(line), options: [.sortedKeys])
        if !FileManager.default.fileExists(atPath: path) { FileManager.default.createFile(atPath: path, contents: nil) }
        guard let fh = FileHandle(forWritingAtPath: path) else { throw TrainError.file(path, "cannot append to the metrics log") }
        defer { try? fh.close() }
        // the throwing forms: the old write(_:) traps on a full or read-only disk
        do {
            try fh.seekToEnd()
            try fh.write(contentsOf: data + Data("\n".utf8))
        } catch {
            throw TrainError.file(path, "cannot append to the metrics log: \(Self.reason(error))")
        }
    }

    /// The POSIX reason of a Foundation file error ("No space left on device"), else the error.
    static func reason(_ error: Error) -> String {
        let e = error as NSError
        if let u = e.userInfo[NSUnderlyingErrorKey] as? NSError, u.domain == NSPOSIXErrorDomain { return String(cString: strerror(Int32(u.code))) }
        if e.domain == NSPOSIXErrorDomain { return String(cString: strerror(Int32(e.code))) }
        return "\(error)"
    }

    func prepareMetricsLog(_ path: String) throws {
        try FileManager.default.createDirectory(atPath: runDirectory, withIntermediateDirectories: true)
        // a resumed run keeps the lines up to its step (a crash after the checkpoint may have written more)
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else { return }
        let keep = text.split(separator: "\n").filter { line in
            guard let d = line.data(using: .utf8), let o = try? JSONSerialization.jsonObject(with: d) as? [String: Any],
                  let s = o["step"] as? Int else { return false }
            return s <= step
        }
        try AtomicFile.write(Array((keep.joined(separator: "\n") + (keep.isEmpty ? "" : "\n")).utf8), to: path, error: { TrainError.file($0, $1) })
    }

    func log(_ m: StepMetrics, to path: String, total: Int, elapsed: Double, samples: Int) throws {
        let sps = Double(samples) / max(elapsed, 1e-9)
        let line: [String: Any] = [
            "step": m.step, "loss": m.loss, "ce": m.ce, "bce": m.bce, "dice": m.dice, "lr": Double(m.lr),
            "grad_norm": m.gradNorm, "grad_norm_clipped": m.clippedNorm, "skipped": m.skipped, "skipped_total": skippedUpdates,
            "samples": m.samples, "tokens": m.tokens, "masks": m.masks, "samples_per_s": Double(m.samples) / max(m.seconds, 1e-9),
            "data_s": m.dataSeconds, "forward_s": m.forwardSeconds, "backward_s": m.backwardSeconds,
            "comm_exposed_s": m.commSeconds, "optimizer_s": m.optimizerSeconds, "step_s": m.seconds, "consumed_samples": consumedSamples,
            "separation": m.separation, "grounding": m.grounding, "appearance": m.appearance, "image_appearance": m.imageAppearance, "refine": m.refine,
        ]
        history.append(line.compactMapValues { ($0 as? Double) ?? ($0 as? Int).map(Double.init) })
        try appendLine(line, to: path)
        if !quiet {
            let eta = Double(total - m.step) * elapsed / Double(max(1, m.step - (step - history.count)))
            let bar = String(repeating: "#", count: 20 * m.step / max(total, 1)) + String(repeating: ".", count: 20 - 20 * m.step / max(total, 1))
            print(String(format: "[%@] step %d/%d  loss %.4f (ce %.4f bce %.4f dice %.4f)  lr %.2e  |g| %.3f  %.2f samples/s  ETA %@%@",
                         bar, m.step, total, m.loss, m.ce, m.bce, m.dice, Double(m.lr), m.gradNorm, sps, Self.clock(eta),
                         m.skipped ? "  (update skipped: non-finite gradient)" : ""))
            fflush(stdout)
        }
    }

    static func clock(_ s: Double) -> String {
        guard s.isFinite, s >= 0 else { return "--:--" }
        let t = Int(s)
        return t >= 3600 ? String(format: "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60) : String(format: "%02d:%02d", t / 60, t % 60)
    }

    // MARK: - trace

    func addTrace(_ name: String, _ start: Date, _ seconds: Double) {
        guard trace else { return }
        traceEvents.append(["name": name, "ph": "X", "pid": comm.rank, "tid": 0,
                            "ts": start.timeIntervalSince(self.start) * 1e6, "dur": seconds * 1e6])
    }

    /// Chrome-trace JSON (chrome://tracing, Perfetto): compute on thread 0, communication on thread 1.
    func writeTrace() throws {
        var events = traceEvents
        for e in optimizer.traceEvents ?? [] {
            events.append(["name": e.name, "ph": "X", "pid": comm.rank, "tid": 1,
                           "ts": (e.start + optimizer.traceOrigin.timeIntervalSince(start)) * 1e6, "dur": e.seconds * 1e6])
        }
        let data = try JSONSerialization.data(withJSONObject: ["traceEvents": events, "displayTimeUnit": "ms"], options: [])
        try AtomicFile.write(Array(data), to: (runDirectory as NSString).appendingPathComponent("trace-rank\(comm.rank).json"),
                             error: { TrainError.file($0, $1) })
    }

    public func enableTrace() {
        trace = true
        optimizer.traceEvents = []
    }
}
