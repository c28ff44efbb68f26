import ArgumentParser
import Foundation
import PixelDistributed
import PixelTrain

/// Both spellings of a reference option: --batch-size and --batch_size.
func both(_ kebab: String) -> NameSpecification {
    let snake = kebab.replacingOccurrences(of: "-", with: "_")
    return snake == kebab ? [.customLong(kebab)] : [.customLong(kebab), .customLong(snake)]
}

/// `pixellm train`: data-parallel training, one process per rank under mpirun (or alone). docs/training.md.
struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train PixelLM (data parallel under mpirun; ZeRO-sharded AdamW; resumable at any world size).",
        discussion: "Options are named like the reference's train_ds.py (kebab case; the underscore spellings work too). The run directory is LOG_BASE_DIR/EXP_NAME: metrics.jsonl, checkpoints/step-N, latest, trace-rankR.json. A run directory with a checkpoint resumes from it unless --resume never.")

    @Option(name: both("recipe"), help: "A training recipe (JSON with the reference's option names, e.g. configs/recipes/smoke.json); command-line options override it.") var recipe: String?
    @Option(name: both("version"), help: "PixelLM checkpoint directory to start from, or a LLaVA base (LLaVA-Lightning-7B-v1-1 ...; with --config for other PixelLM sizes than the released ones).") var version: String?
    @Option(name: both("config"), help: "Model config (a directory with config.json, or the file; e.g. configs/synth-small) for a fresh initialisation from --seed.") var config: String?
    @Option(name: both("vision-tower"), help: "CLIP directory for a --version checkpoint without one.") var visionTower: String?
    @Option(name: both("dataset-dir"), help: "Prepared shards (pixellm prepare).") var datasetDir: String?
    @Option(name: both("dataset"), help: "Kinds of data, '||'-separated (default sem_seg||refer_seg||vqa||multi_reason_seg).") var dataset: String?
    @Option(name: both("sample-rates"), help: "Rates of the kinds (default 2,9,2,4).") var sampleRates: String?
    @Option(name: both("seg-token-num"), help: "Default 3.") var segTokenNum: Int?
    @Option(name: both("image-feature-scale-num"), help: "Default 2.") var imageFeatureScaleNum: Int?
    @Option(name: both("num-classes-per-question"), help: "Recorded (prepare applies it).") var numClassesPerQuestion: Int?
    @Option(name: both("batch-size"), help: "Images per rank per micro-batch (default 2).") var batchSize: Int?
    @Option(name: both("grad-accumulation-steps"), help: "Default 10.") var gradAccumulationSteps: Int?
    @Option(name: both("lr"), help: "Default 0.0003.") var lr: Float?
    @Option(name: both("epochs"), help: "Default 10.") var epochs: Int?
    @Option(name: both("steps-per-epoch"), help: "Default 500.") var stepsPerEpoch: Int?
    @Option(name: both("warmup-steps"), help: "Default 100.") var warmupSteps: Int?
    @Option(name: both("weight-decay"), help: "Default 0.") var weightDecay: Float?
    @Option(name: both("beta1"), help: "Default 0.9.") var beta1: Float?
    @Option(name: both("beta2"), help: "Default 0.95.") var beta2: Float?
    @Option(name: both("gradient-clipping"), help: "Max global gradient norm (default 1.0; 0: off).") var gradientClipping: Float?
    @Option(name: both("lr-multipliers"), help: "Learning-rate multipliers per parameter group, e.g. decoder=2,llm=0.5 (the --trainable group names; others 1; 0 freezes a group's values).") var lrMultipliers: String?
    @Option(name: both("heartbeat-seconds"), help: "While the ranks wait for a slow one, rank 0 names it every this many seconds (default 60; 0: never).") var heartbeatSeconds: Double?
    @Option(name: both("collective-timeout"), help: "Abort the job, naming the rank, when the others have waited this many seconds for it (default 1800; 0: wait forever).") var collectiveTimeout: Double?
    @Option(name: both("max-skipped-in-a-row"), help: "Stop when this many updates in a row are skipped for a non-finite gradient (default 8; 0: never).") var maxSkippedInARow: Int?
    @Option(name: both("ce-loss-weight"), help: "Default 1.0.") var ceLossWeight: Float?
    @Option(name: both("bce-loss-weight"), help: "Default 2.0.") var bceLossWeight: Float?
    @Option(name: both("dice-loss-weight"), help: "Default 0.5.") var diceLossWeight: Float?
    @Option(name: both("zero-stage"), help: "0 (allreduce, the DDP baseline), 1 or 2 (default).") var zeroStage: Int?
    @Option(name: both("seed"), help: "Default 42.") var seed: UInt64?
    @Option(name: both("log-base-dir"), help: "Default ./runs.") var logBaseDir: String?
    @Option(name: both("exp-name"), help: "Default pixellm.") var expName: String?
    @Option(name: both("save-steps"), help: "Default 500.") var saveSteps: Int?
    @Option(name: both("save-total-limit"), help: "Keep this many checkpoints (default: all).") var saveTotalLimit: Int?
    @Option(name: both("max-steps"), help: "Total optimizer steps (overrides epochs x steps-per-epoch).") var maxSteps: Int?
    @Option(name: both("trainable"), help: "released (the reference's recipe), all, or groups: embed,lm-head,llm,lora-target,projector,decoder,neck,prompt,fcs,clip,fusion. Default: released for --version, all for --config.") var trainable: String?
    @Option(name: both("model-max-length"), help: "Default 512.") var modelMaxLength: Int?
    @Option(name: both("lora-r"), help: "LoRA rank on the LLaMA layers (default: 8 with --version, as the reference; 0 with --config; 0: none).") var loraR: Int?
    @Option(name: both("lora-alpha"), help: "Default 16.") var loraAlpha: Float?
    @Option(name: both("lora-dropout"), help: "Default 0.05.") var loraDropout: Float?
    @Option(name: both("lora-target-modules"), help: "Default q_proj,v_proj.") var loraTargetModules: String?
    @Option(name: both("bucket-mib"), help: "Gradient bucket size in MiB (default 4; fractions allowed).") var bucketMiB: Double?
    @Option(name: both("val-dataset-dir"), help: "Prepared shards of a validation split: its loss is logged every --eval-steps and at the end.") var valDatasetDir: String?
    @Option(name: both("eval-steps"), help: "Validation (loss, and --val-dataset's gIoU / cIoU) every K steps (default: only at the end).") var evalSteps: Int?
    @Option(name: both("val-dataset"), help: "Evaluate these splits (pixellm eval's names, e.g. MultiReasonSeg|val) every --eval-steps and at the end; the best checkpoint by the first split's gIoU becomes RUN/best.") var valDataset: String?
    @Option(name: both("eval-dataset-dir"), help: "The dataset tree --val-dataset reads (default: the --dataset-dir tree, or the tree the shards were prepared from).") var evalDatasetDir: String?
    @Option(name: both("eval-max-new-tokens"), help: "New tokens at most per generated answer in training's evaluation (default 512).") var evalMaxNewTokens: Int?
    @Option(name: both("eval-max-images"), help: "Evaluate only the first N images of each split (default: all).") var evalMaxImages: Int?
    @Option(name: both("query-separation-weight"), help: "pixellm's auxiliary loss (not in the reference; default off): pushes apart the SEG queries of an image's different targets.") var querySeparationWeight: Float?
    @Option(name: both("query-separation-margin"), help: "Cosine margin of the separation loss (default 0.2).") var querySeparationMargin: Float?
    @Option(name: both("query-grounding-weight"), help: "pixellm's auxiliary loss (not in the reference; default off): each target's SEG query must pick out its own region among the image's targets.") var queryGroundingWeight: Float?
    @Option(name: both("query-grounding-temperature"), help: "Softmax temperature of the grounding loss (default 0.1).") var queryGroundingTemperature: Float?
    @Option(name: both("query-appearance-weight"), help: "pixellm's auxiliary loss (not in the reference; default off): a few channels of each target's SEG query state what the target looks like (mean colour, size, box fill).") var queryAppearanceWeight: Float?
    @Option(name: both("image-appearance-weight"), help: "pixellm's auxiliary loss (not in the reference; default off): half the channels of each LLM image token state what the objects in its cell look like (mean colour, size, a 3 x 3 map of box fill), for the objects the ground truths show.") var imageAppearanceWeight: Float?
    @Option(name: both("refinement-alpha"), help: "The paper's target refinement loss (default off, as in the released code): pixels claimed by two or more of a question's predicted masks weigh alpha in the BCE (the release's b25fff8: 2).") var refinementAlpha: Float?
    @Flag(name: both("gradient-checkpointing"), help: "Recompute the LLaMA and CLIP layers in backward instead of storing their activations (the reference's option; on in the 7B / 13B recipes).")
    var gradientCheckpointing = false
    @Option(name: both("resume"), help: "auto (the run directory's latest, if any), never, or a checkpoint / run directory.") var resume = "auto"
    @Option(name: both("stop-at-step"), help: "Stop cleanly (with a checkpoint) at this step; the schedule is unchanged.") var stopAtStep: Int?
    @Option(name: both("time-budget"), help: "Stop cleanly (with a checkpoint) after this wall time: 90s, 10m, 2h.") var timeBudget: String?
    @Flag(help: "Write a Chrome-trace timeline per rank (RUN/trace-rankR.json).") var trace = false
    @Option(name: both("memory-limit"), help: "Check the run's memory estimate against this size per node (e.g. 20GB) instead of the node's memory (MemTotal or the cgroup limit).") var memoryLimit: String?
    @Flag(name: both("skip-memory-check"), help: "Start even when the memory estimate exceeds the node's memory (the estimate is still printed).") var skipMemoryCheck = false
    @Flag(help: "No progress lines.") var quiet = false

    /// The defaults, then the recipe, then the command line.
    func options() throws -> TrainOptions {
        var o = try recipe.map(TrainOptions.recipe) ?? TrainOptions()
        func set<T>(_ v: T?, _ k: WritableKeyPath<TrainOptions, T>) { if let v { o[keyPath: k] = v } }
        func setOpt<T>(_ v: T?, _ k: WritableKeyPath<TrainOptions, T?>) { if let v { o[keyPath: k] = v } }
        setOpt(version, \.version); setOpt(config, \.config); setOpt(visionTower, \.visionTower)
        if version != nil && config == nil && recipe != nil { o.config = nil }
        if config != nil && version == nil && recipe != nil { o.version = nil }
        set(datasetDir, \.datasetDir); set(dataset, \.dataset); set(sampleRates, \.sampleRates)
        set(segTokenNum, \.segTokenNum); set(imageFeatureScaleNum, \.imageFeatureScaleNum)
        set(numClassesPerQuestion, \.numClassesPerQuestion); set(batchSize, \.batchSize)
        set(gradAccumulationSteps, \.gradAccumulationSteps); set(lr, \.lr); set(epochs, \.epochs)
        set(stepsPerEpoch, \.stepsPerEpoch); set(warmupSteps, \.warmupSteps); set(weightDecay, \.weightDecay)
        set(beta1, \.beta1); set(beta2, \.beta2); set(gradientClipping, \.gradientClipping); set(maxSkippedInARow, \.maxSkippedInARow)
        setOpt(lrMultipliers, \.lrMultipliers); set(heartbeatSeconds, \.heartbeatSeconds); set(collectiveTimeout, \.collectiveTimeout)
        set(ceLossWeight, \.ceLossWeight); set(bceLossWeight, \.bceLossWeight); set(diceLossWeight, \.diceLossWeight)
        set(zeroStage, \.zeroStage); set(seed, \.seed); set(logBaseDir, \.logBaseDir); set(expName, \.expName)
        set(saveSteps, \.saveSteps); setOpt(saveTotalLimit, \.saveTotalLimit); setOpt(maxSteps, \.maxSteps)
        set(modelMaxLength, \.modelMaxLength); set(bucketMiB, \.bucketMiB)
        setOpt(valDatasetDir, \.valDatasetDir); setOpt(evalSteps, \.evalSteps)
        setOpt(valDataset, \.valDataset); setOpt(evalDatasetDir, \.evalDatasetDir)
        setOpt(evalMaxNewTokens, \.evalMaxNewTokens); setOpt(evalMaxImages, \.evalMaxImages)
        setOpt(querySeparationWeight, \.querySeparationWeight); setOpt(querySeparationMargin, \.querySeparationMargin)
        setOpt(queryGroundingWeight, \.queryGroundingWeight); setOpt(queryGroundingTemperature, \.queryGroundingTemperature)
        setOpt(queryAppearanceWeight, \.queryAppearanceWeight); setOpt(imageAppearanceWeight, \.imageAppearanceWeight)
        setOpt(refinementAlpha, \.refinementAlpha)
        if gradientCheckpointing { o.gradientCheckpointing = true }
        set(loraAlpha, \.loraAlpha); set(loraDropout, \.loraDropout); set(loraTargetModules, \.loraTargetModules)
        if let r = loraR { o.loraR = r } else if recipe == nil { o.loraR = o.version != nil ? 8 : 0 }
        if let t = trainable { o.trainable = t } else if recipe == nil { o.trainable = o.version != nil ? "released" : "all" }
        return o
    }

    static func parseDuration(_ s: String) throws -> Double {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600]
        var t = s.trimmingCharacters(in: .whitespaces), mult = 1.0
        if let u = t.last, let f = units[u] { mult = f; t.removeLast() }
        guard let v = Double(t), v > 0, v.isFinite else { throw ValidationError("--time-budget: '\(s)' is not a duration such as 90s, 10m or 2h") }
        return v * mult
    }

    func validate() throws {
        do { try options().validate() } catch { throw ValidationError("\(error)") }
        if let s = stopAtStep, s < 1 { throw ValidationError("--stop-at-step must be >= 1") }
        if let t = timeBudget { _ = try Self.parseDuration(t) }
        if let m = memoryLimit, MemoryEstimate.parseSize(m) == nil { throw ValidationError("--memory-limit: '\(m)' is not a size such as 20GB or 500MB") }
    }

    func run() throws {
        runOnRanks("train") { comm in
            let o = try options()
            // an unwritable run directory is an error before any work
            if comm.rank == 0 {
                try OutputDirectory.prepare(o.runDirectory, option: "--log-base-dir / --exp-name (the run directory)")
                let probe = (o.runDirectory as NSString).appendingPathComponent(".write-test-\(getpid())")
                guard FileManager.default.createFile(atPath: probe, contents: Data("x".utf8)) else {
                    let why = TrainCheckpoint.spaceProblem(o.runDirectory, bytes: 4096) ?? "cannot create a file"
                    throw TrainError.file(o.runDirectory, "cannot write here: \(why) (checkpoints and logs go to the run directory)")
                }
                try? FileManager.default.removeItem(atPath: probe)
            }
            let trainer = try Trainer(options: o, comm: comm, memory: (memoryLimit.flatMap(MemoryEstimate.parseSize), !skipMemoryCheck))
            trainer.quiet = quiet
            trainer.stopAtStep = stopAtStep
            trainer.timeBudget = try timeBudget.map(Self.parseDuration)
            if trace { trainer.enableTrace() }
            trainer.checkPlan()
            if resume != "never" {
                let path = resume == "auto" ? o.runDirectory : resume
                let hasLatest = FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent(TrainCheckpoint.latestName))
                    || FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent(TrainCheckpointManifest.manifestName))
                if hasLatest { try trainer.resume(from: path) } else if resume != "auto" {
                    throw TrainError.file(path, "--resume: no checkpoint here (no 'latest', no manifest.json)")
                }
            }
            if comm.rank == 0 && !quiet {
                let L = trainer.optimizer.buckets.layout
                let (local, unsharded) = trainer.optimizer.stateBytes
                print("train: \(comm.size) rank(s), ZeRO-\(o.zeroStage); \(trainer.source.table.trainable.count) trainable tensors, \(L.totalElements) elements in \(L.buckets.count) bucket(s) (padded \(L.paddedElements)); global batch \(trainer.globalBatch) samples per step (\(o.batchSize) x \(o.gradAccumulationSteps) x \(comm.size)), \(o.totalSteps) steps")
                print("train: " + trainer.memoryEstimate.summary(limit: trainer.memoryLimit))
                print("train: optimizer state per rank \(local) bytes (m, v), \(String(format: "%.3f", Double(local) / Double(max(unsharded, 1)))) of the unsharded \(unsharded)")
                for (dtype, n) in trainer.source.frozenCopied.sorted(by: { $0.key < $1.key }) {
                    print("train: note: \(n) frozen LLaMA matrices are stored in \(dtype) and were copied to fp32 (only bf16 is used in place); a bf16 copy of the base keeps them mapped (pixellm consolidate --dtype bf16)")
                }
                if trainer.source.keptBF16 > 0 {
                    print("train: \(trainer.source.keptBF16) frozen LLaMA matrices kept in bf16, used in place from the mapped checkpoint files"
                          + (trainer.source.keptCLIPBF16 > 0 ? " (and \(trainer.source.keptCLIPBF16) CLIP matrices)" : ""))
                }
                print("train: run directory \(o.runDirectory)")
            }
            try trainer.run()
        }
    }
}

/// Runs a command's body on this process's rank; an error stops the whole job (MPI_Abort naming the command and the
/// rank under mpirun, so that no other rank waits in a collective), else prints it and exits 1.
func runOnRanks(_ command: String, _ body: (any Communicator) throws -> Void) {
    let comm = Communicators.make()
    do { try body(comm) } catch {
        if comm.size > 1 { comm.abort(message: "\(command): rank \(comm.rank): \(error)") }
        FileHandle.standardError.write(Data("error: \(error)\n".utf8))
        Foundation.exit(1)
    }
}

/// `pixellm consolidate`: per-rank checkpoint shards -> full weights in HF layout (safetensors), released names.
struct ConsolidateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "consolidate",
        abstract: "Full weights (HF layout, released PixelLM names) from a training checkpoint or run directory (its latest).")
    @Option(help: "A checkpoint directory, or a run directory (its latest).") var checkpoint: String
    @Option(help: "Output directory.") var out: String
    @Option(help: "f32 or bf16.") var dtype = "f32"
    @Option(help: "Shard the safetensors above this size, e.g. 5GB, 500MB.") var maxShardSize = "5GB"
    @Flag(help: "Fold LoRA into the weights (W + alpha/r B A); default: keep the adapters under PEFT's names.") var mergeLora = false

    static func parseSize(_ s: String) throws -> Int {
        let u = s.uppercased()
        for (suffix, f) in [("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)] where u.hasSuffix(suffix) {
            if let v = Double(u.dropLast(suffix.count)), v > 0, v * Double(f) < 0x1p60 { return Int(v * Double(f)) }
        }
        if let v = Int(u), v > 0 { return v }
        throw ValidationError("--max-shard-size: '\(s)' is not a size such as 5GB or 500MB")
    }

    func validate() throws {
        guard ["f32", "bf16"].contains(dtype) else { throw ValidationError("--dtype must be f32 or bf16") }
        _ = try Self.parseSize(maxShardSize)
    }

    func run() throws {
        do {
            try OutputDirectory.prepare(out, option: "--out")
            let t0 = Date()
            let r = try Consolidate.run(checkpoint: checkpoint, out: out, dtype: dtype == "bf16" ? .bf16 : .f32,
                                        maxShardBytes: try Self.parseSize(maxShardSize), mergeLoRA: mergeLora)
            print("consolidated \(r.checkpoint) (step \(r.step)): \(r.trainableTensors) trained tensors (\(r.trainableElements) elements) + the frozen ones -> \(out): \(r.files.joined(separator: ", ")) in \(String(format: "%.1f", Date().timeIntervalSince(t0))) s")
        } catch {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            Foundation.exit(1)
        }
    }
}

/// `pixellm plot RUN`: the loss curve PNG of a run (RUN/loss.png unless --out).
struct Plot: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Write the loss curve of a training run as a PNG.")
    @Argument(help: "The run directory (with metrics.jsonl).") var runDirectory: String
    @Option(help: "Output PNG (default RUN/loss.png).") var out: String?

    func run() throws {
        do { print(try LossPlot.write(run: runDirectory, out: out)) } catch {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            Foundation.exit(1)
        }
    }
}

/// `pixellm merge-lora`: fold LoRA adapters into the weights (W + alpha/r B A).
struct MergeLoRACommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge-lora",
        abstract: "Fold LoRA adapters into the weights: a consolidated checkpoint that kept them, or a base plus a weights file.")
    @Option(help: "PixelLM directory (a consolidation that kept LoRA, or the base the weights were trained from).") var base: String
    @Option(help: "Trained tensors (safetensors or pytorch_model.bin) with PEFT-named adapters, applied over --base.") var weights: String?
    @Option(help: "Output directory.") var out: String
    @Option(help: "CLIP directory when --base has none.") var visionTower: String?
    @Option(help: "LoRA alpha for adapters created from --weights (default 16; r comes from the tensors).") var loraAlpha: Float = 16
    @Option(help: "f32 or bf16.") var dtype = "f32"

    func validate() throws { guard ["f32", "bf16"].contains(dtype) else { throw ValidationError("--dtype must be f32 or bf16") } }

    func run() throws {
        do {
            let r = try MergeLoRA.run(base: base, weights: weights, out: out, visionTower: visionTower, alpha: loraAlpha,
                                      dtype: dtype == "bf16" ? .bf16 : .f32)
            print("merged \(r.merged) LoRA adapter(s)\(r.replaced > 0 ? ", \(r.replaced) tensors from \(weights ?? "")" : "") -> \(out): \(r.files.joined(separator: ", "))")
        } catch {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            Foundation.exit(1)
        }
    }
}
