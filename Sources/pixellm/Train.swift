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

    @Option(name: both("version"), help: "PixelLM checkpoint directory to start from.") var version: String?
    @Option(name: both("config"), help: "Model config (a directory with config.json, or the file; e.g. configs/synth-small) for a fresh initialisation from --seed.") var config: String?
    @Option(name: both("vision-tower"), help: "CLIP directory for a --version checkpoint without one.") var visionTower: String?
    @Option(name: both("dataset-dir"), help: "Prepared shards (pixellm prepare).") var datasetDir: String
    @Option(name: both("dataset"), help: "Kinds of data, '||'-separated.") var dataset = "sem_seg||refer_seg||vqa||multi_reason_seg"
    @Option(name: both("sample-rates"), help: "Rates of the kinds.") var sampleRates = "2,9,2,4"
    @Option(name: both("seg-token-num")) var segTokenNum = 3
    @Option(name: both("image-feature-scale-num")) var imageFeatureScaleNum = 2
    @Option(name: both("num-classes-per-question"), help: "Recorded (applied by prepare).") var numClassesPerQuestion = 3
    @Option(name: both("batch-size"), help: "Images per rank per micro-batch.") var batchSize = 2
    @Option(name: both("grad-accumulation-steps")) var gradAccumulationSteps = 10
    @Option(name: both("lr")) var lr: Float = 0.0003
    @Option(name: both("epochs")) var epochs = 10
    @Option(name: both("steps-per-epoch")) var stepsPerEpoch = 500
    @Option(name: both("warmup-steps")) var warmupSteps = 100
    @Option(name: both("weight-decay")) var weightDecay: Float = 0
    @Option(name: both("beta1")) var beta1: Float = 0.9
    @Option(name: both("beta2")) var beta2: Float = 0.95
    @Option(name: both("gradient-clipping"), help: "Max global gradient norm (0: off).") var gradientClipping: Float = 1.0
    @Option(name: both("ce-loss-weight")) var ceLossWeight: Float = 1.0
    @Option(name: both("bce-loss-weight")) var bceLossWeight: Float = 2.0
    @Option(name: both("dice-loss-weight")) var diceLossWeight: Float = 0.5
    @Option(name: both("zero-stage"), help: "0 (allreduce, the DDP baseline), 1 or 2.") var zeroStage = 2
    @Option(name: both("seed")) var seed: UInt64 = 42
    @Option(name: both("log-base-dir")) var logBaseDir = "./runs"
    @Option(name: both("exp-name")) var expName = "pixellm"
    @Option(name: both("save-steps")) var saveSteps = 500
    @Option(name: both("save-total-limit"), help: "Keep this many checkpoints (default: all).") var saveTotalLimit: Int?
    @Option(name: both("max-steps"), help: "Total optimizer steps (overrides epochs x steps-per-epoch).") var maxSteps: Int?
    @Option(name: both("trainable"), help: "released (the reference's recipe), all, or groups: embed,lm-head,llm,lora-target,projector,decoder,neck,prompt,fcs,clip,fusion. Default: released for --version, all for --config.") var trainable: String?
    @Option(name: both("model-max-length")) var modelMaxLength = 512
    @Option(name: both("bucket-mib"), help: "Gradient bucket size in MiB (fractions allowed).") var bucketMiB: Double = 4
    @Option(name: both("resume"), help: "auto (the run directory's latest, if any), never, or a checkpoint / run directory.") var resume = "auto"
    @Option(name: both("stop-at-step"), help: "Stop cleanly (with a checkpoint) at this step; the schedule is unchanged.") var stopAtStep: Int?
    @Option(name: both("time-budget"), help: "Stop cleanly (with a checkpoint) after this wall time: 90s, 10m, 2h.") var timeBudget: String?
    @Flag(help: "Write a Chrome-trace timeline per rank (RUN/trace-rankR.json).") var trace = false
    @Flag(help: "No progress lines.") var quiet = false

    func options() -> TrainOptions {
        var o = TrainOptions()
        o.version = version; o.config = config; o.visionTower = visionTower
        o.datasetDir = datasetDir; o.dataset = dataset; o.sampleRates = sampleRates
        o.segTokenNum = segTokenNum; o.imageFeatureScaleNum = imageFeatureScaleNum; o.numClassesPerQuestion = numClassesPerQuestion
        o.batchSize = batchSize; o.gradAccumulationSteps = gradAccumulationSteps; o.lr = lr; o.epochs = epochs
        o.stepsPerEpoch = stepsPerEpoch; o.warmupSteps = warmupSteps; o.weightDecay = weightDecay; o.beta1 = beta1; o.beta2 = beta2
        o.gradientClipping = gradientClipping; o.ceLossWeight = ceLossWeight; o.bceLossWeight = bceLossWeight
        o.diceLossWeight = diceLossWeight; o.zeroStage = zeroStage; o.seed = seed; o.logBaseDir = logBaseDir; o.expName = expName
        o.saveSteps = saveSteps; o.saveTotalLimit = saveTotalLimit; o.maxSteps = maxSteps
        o.trainable = trainable ?? (config != nil ? "all" : "released")
        o.modelMaxLength = modelMaxLength; o.bucketMiB = bucketMiB
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
    }

    func run() throws {
        let comm = Communicators.make()
        func fail(_ e: Error) -> Never {
            if comm.size > 1 { comm.abort(message: "train: rank \(comm.rank): \(e)") }
            FileHandle.standardError.write(Data("error: \(e)\n".utf8))
            Foundation.exit(1)
        }
        do {
            let o = options()
            // an unwritable run directory is an error before any work
            if comm.rank == 0 {
                try FileManager.default.createDirectory(atPath: o.runDirectory, withIntermediateDirectories: true)
                let probe = (o.runDirectory as NSString).appendingPathComponent(".write-test-\(getpid())")
                guard FileManager.default.createFile(atPath: probe, contents: Data("x".utf8)) else {
                    throw TrainError.file(o.runDirectory, "cannot write here (checkpoints and logs go to the run directory)")
                }
                try? FileManager.default.removeItem(atPath: probe)
            }
            let trainer = try Trainer(options: o, comm: comm)
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
                print("train: optimizer state per rank \(local) bytes (m, v), \(String(format: "%.3f", Double(local) / Double(max(unsharded, 1)))) of the unsharded \(unsharded)")
                print("train: run directory \(o.runDirectory)")
            }
            try trainer.run()
        } catch {
            fail(error)
        }
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

    static func parseSize(_ s: String) throws -> Int {
        let u = s.uppercased()
        for (suffix, f) in [("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)] where u.hasSuffix(suffix) {
            if let v = Double(u.dropLast(suffix.count)), v > 0 { return Int(v * Double(f)) }
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
            let t0 = Date()
            let r = try Consolidate.run(checkpoint: checkpoint, out: out, dtype: dtype == "bf16" ? .bf16 : .f32,
                                        maxShardBytes: try Self.parseSize(maxShardSize))
            print("consolidated \(r.checkpoint) (step \(r.step)): \(r.trainableTensors) trained tensors (\(r.trainableElements) elements) + the frozen ones -> \(out): \(r.files.joined(separator: ", ")) in \(String(format: "%.1f", Date().timeIntervalSince(t0))) s")
        } catch {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            Foundation.exit(1)
        }
    }
}
