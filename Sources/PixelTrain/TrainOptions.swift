import Foundation
import PixelModel

/// Everything a training run is configured with (the reference's `train_ds.py` options, in its spelling in the
/// JSON). Saved in every checkpoint manifest; rank 0's copy is the plan every rank checks its own against.
public struct TrainOptions: Codable, Equatable, Sendable {
    /// A PixelLM checkpoint directory to start from (`--version`); nil with `config`.
    public var version: String?
    /// A model config (directory with config.json, or the file) for a fresh initialisation.
    public var config: String?
    /// CLIP tower for `version` directories without one.
    public var visionTower: String?
    /// Prepared shards (index.json).
    public var datasetDir = ""
    public var dataset = "sem_seg||refer_seg||vqa||multi_reason_seg"
    public var sampleRates = "2,9,2,4"
    public var segTokenNum = 3
    public var imageFeatureScaleNum = 2
    public var numClassesPerQuestion = 3
    /// Images per rank per micro-batch.
    public var batchSize = 2
    public var gradAccumulationSteps = 10
    public var lr: Float = 0.0003
    /// Learning-rate multipliers per parameter group ("decoder=2,llm=0.5"; group names as --trainable's), like
    /// PyTorch param groups with their own lr; groups not named keep 1.
    public var lrMultipliers: String?
    public var epochs = 10
    public var stepsPerEpoch = 500
    public var warmupSteps = 100
    public var weightDecay: Float = 0
    public var beta1: Float = 0.9
    public var beta2: Float = 0.95
    public var gradientClipping: Float = 1.0
    /// Stop the run when this many updates in a row were skipped for a non-finite gradient (0: never).
    public var maxSkippedInARow = 8
    /// Seconds between the messages naming a rank the others wait for (0: none), and seconds after which the
    /// job aborts naming it (0: wait forever). Horovod's stall warning is 60 s; PyTorch's timeout 30 minutes.
    public var heartbeatSeconds: Double = 60
    public var collectiveTimeout: Double = 1800
    public var ceLossWeight: Float = 1.0
    public var bceLossWeight: Float = 2.0
    public var diceLossWeight: Float = 0.5
    public var zeroStage = 2
    public var seed: UInt64 = 42
    public var logBaseDir = "./runs"
    public var expName = "pixellm"
    public var saveSteps = 500
    public var saveTotalLimit: Int?
    /// Total optimizer steps (overrides epochs x steps_per_epoch, as HF's max_steps).
    public var maxSteps: Int?
    /// Trainable groups: "released" (the reference's recipe) or "all", or a comma list of ParameterGroup names.
    public var trainable = "released"
    /// Ids are truncated to model_max_length - 255 in training, as the reference's collate does.
    public var modelMaxLength = 512
    /// Bucket size in MiB (elements are fp32; a fraction is allowed).
    public var bucketMiB: Double = 4
    /// LoRA on the LLaMA layers (PEFT 0.4 semantics, the reference's options); r 0: none.
    public var loraR = 0
    public var loraAlpha: Float = 16
    public var loraDropout: Float = 0.05
    public var loraTargetModules = "q_proj,v_proj"
    /// Prepared shards of a validation split: its loss is logged every `evalSteps` and at the end.
    public var valDatasetDir: String?
    public var evalSteps: Int?
    /// Splits to evaluate (gIoU / cIoU, `pixellm eval`'s names, '||'-separated) every `evalSteps` and at the end; the
    /// best checkpoint by the first split's gIoU is kept as RUN/best.
    public var valDataset: String?
    /// The dataset tree the splits are read from (default: the --dataset-dir tree, or the tree the shards were
    /// prepared from).
    public var evalDatasetDir: String?
    /// New tokens at most per generated answer during training's evaluation (default 512, the reference's).
    public var evalMaxNewTokens: Int?
    /// Evaluate only the first N images of each split (default: all).
    public var evalMaxImages: Int?
    /// pixellm's auxiliary SEG-query separation (not in the reference; nil / 0: off): weight and margin of
    /// sum over an image's differing target pairs of relu(cos(q_i, q_j) - margin), normalised like the mask losses.
    public var querySeparationWeight: Float?
    public var querySeparationMargin: Float?
    /// pixellm's auxiliary SEG-query grounding (not in the reference; nil / 0: off): weight and temperature of the
    /// cross-entropy that makes each target's query pick out its own region among the image's target regions.
    public var queryGroundingWeight: Float?
    public var queryGroundingTemperature: Float?
    /// pixellm's auxiliary SEG-query appearance loss (not in the reference; nil / 0: off): weight of the squared error
    /// between a few channels of each target's query and the target's appearance (QueryAppearance), normalised like
    /// the mask losses.
    public var queryAppearanceWeight: Float?
    /// pixellm's auxiliary image-token appearance loss (not in the reference; nil / 0: off): weight of the squared
    /// error between half the channels of the LLM's image tokens and the appearance of the objects in their cells
    /// (ImageTokenAppearance), normalised like the mask losses.
    public var imageAppearanceWeight: Float?
    /// The paper's target refinement loss (nil / 1: off, as in the released code, which has it commented out): the BCE
    /// of pixels that two or more of one question's predicted masks claim weighs `alpha` instead of 1 (commit b25fff8
    /// of the release amounted to alpha 2). Weighted with the BCE.
    public var refinementAlpha: Float?
    /// The reference's --gradient_checkpointing: the LLaMA and CLIP layers keep only their inputs in forward and
    /// are recomputed in backward (about a third more compute, the layers' activations not stored).
    public var gradientCheckpointing = false

    public init() {}

    enum CodingKeys: String, CodingKey, CaseIterable {
        case version, config, visionTower = "vision_tower", datasetDir = "dataset_dir", dataset, sampleRates = "sample_rates"
        case segTokenNum = "seg_token_num", imageFeatureScaleNum = "image_feature_scale_num"
        case numClassesPerQuestion = "num_classes_per_question", batchSize = "batch_size"
        case gradAccumulationSteps = "grad_accumulation_steps", lr, lrMultipliers = "lr_multipliers", epochs, stepsPerEpoch = "steps_per_epoch"
        case warmupSteps = "warmup_steps", weightDecay = "weight_decay", beta1, beta2, gradientClipping = "gradient_clipping"
        case maxSkippedInARow = "max_skipped_in_a_row", heartbeatSeconds = "heartbeat_seconds", collectiveTimeout = "collective_timeout"
        case ceLossWeight = "ce_loss_weight", bceLossWeight = "bce_loss_weight", diceLossWeight = "dice_loss_weight"
        case zeroStage = "zero_stage", seed, logBaseDir = "log_base_dir", expName = "exp_name", saveSteps = "save_steps"
        case saveTotalLimit = "save_total_limit", maxSteps = "max_steps", trainable, modelMaxLength = "model_max_length"
        case loraR = "lora_r", loraAlpha = "lora_alpha", loraDropout = "lora_dropout", loraTargetModules = "lora_target_modules"
        case bucketMiB = "bucket_mib", valDatasetDir = "val_dataset_dir", evalSteps = "eval_steps"
        case valDataset = "val_dataset", evalDatasetDir = "eval_dataset_dir", evalMaxNewTokens = "eval_max_new_tokens"
        case evalMaxImages = "eval_max_images", querySeparationWeight = "query_separation_weight"
        case querySeparationMargin = "query_separation_margin", queryGroundingWeight = "query_grounding_weight"
        case queryGroundingTemperature = "query_grounding_temperature", queryAppearanceWeight = "query_appearance_weight"
        case imageAppearanceWeight = "image_appearance_weight"
        case refinementAlpha = "refinement_alpha", gradientCheckpointing = "gradient_checkpointing"
    }

    /// A recipe (JSON object with these keys, the reference's spelling) over the defaults. Unknown keys are errors.
    public static func recipe(_ path: String) throws -> TrainOptions {
        guard let data = FileManager.default.contents(atPath: path) else { throw TrainError.file(path, "cannot read the recipe") }
        guard let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw TrainError.file(path, "not a JSON object")
        }
        var base = try JSONSerialization.jsonObject(with: JSONEncoder().encode(TrainOptions())) as! [String: Any]
        let known = Set(CodingKeys.allCases.map(\.rawValue))
        let here = (path as NSString).deletingLastPathComponent
        for (k, v) in obj where !k.hasPrefix("_") {
            guard known.contains(k) else { throw TrainError.file(path, "unknown key '\(k)' (known: \(known.sorted().joined(separator: ", ")))") }
            // a relative path in a recipe is relative to the recipe's directory when it exists there
            if ["config", "version", "vision_tower", "dataset_dir", "val_dataset_dir", "eval_dataset_dir"].contains(k), let p = v as? String, !p.hasPrefix("/") {
                let rel = ((here as NSString).appendingPathComponent(p) as NSString).standardizingPath
                base[k] = FileManager.default.fileExists(atPath: rel) ? rel : p
            } else {
                base[k] = v
            }
        }
        do { return try JSONDecoder().decode(TrainOptions.self, from: JSONSerialization.data(withJSONObject: base)) } catch {
            throw TrainError.file(path, "a value has the wrong type: \(error)")
        }
    }

    /// "decoder=2, llm=0.5" -> [.decoder: 2, .llm: 0.5]; every value finite and >= 0 (0 freezes the group's values).
    public static func parseMultipliers(_ text: String) throws -> [ParameterGroup: Float] {
        var out: [ParameterGroup: Float] = [:]
        for item in text.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !item.isEmpty {
            let kv = item.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard kv.count == 2 else { throw ParameterGroupError(message: "'\(item)' is not GROUP=NUMBER") }
            let group = try ParameterGroup.parseList(kv[0])
            guard group.count == 1, let v = Float(kv[1]), v.isFinite, v >= 0 else {
                throw ParameterGroupError(message: "'\(item)': the multiplier must be a number >= 0")
            }
            guard out[group[0]] == nil else { throw ParameterGroupError(message: "group '\(kv[0])' is named twice") }
            out[group[0]] = v
        }
        return out
    }

    /// The adapters these options ask for (nil: no LoRA).
    public var lora: LoRAConfig? {
        guard loraR > 0 else { return nil }
        return LoRAConfig(r: loraR, alpha: loraAlpha, dropout: loraDropout,
                          targetModules: loraTargetModules.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
    }

    /// Optimizer steps of the whole run.
    public var totalSteps: Int { maxSteps ?? epochs * stepsPerEpoch }
    public var runDirectory: String { (logBaseDir as NSString).appendingPathComponent(expName) }
    /// Elements per gradient bucket.
    public var bucketElements: Int { max(1, Int(bucketMiB * Double(1 << 18))) }

    /// Checks the values; errors name the option.
    public func validate() throws {
        func fail(_ o: String, _ why: String) throws { throw TrainError.option("--\(o)", why) }
        if version == nil && config == nil { try fail("version", "give --version DIR (a PixelLM or LLaVA base checkpoint) or --config DIR|FILE") }
        if let v = version, config != nil, !LLaVABase.isLLaVADirectory(v) {
            try fail("config", "goes with --version only when that is a LLaVA base (the config then gives PixelLM's sizes); \(v) is a PixelLM checkpoint with its own config")
        }
        if datasetDir.isEmpty { try fail("dataset-dir", "is required (prepared shards, or a dataset tree to prepare)") }
        if batchSize < 1 { try fail("batch-size", "\(batchSize) must be >= 1") }
        if gradAccumulationSteps < 1 { try fail("grad-accumulation-steps", "\(gradAccumulationSteps) must be >= 1") }
        if !(lr > 0) || !lr.isFinite { try fail("lr", "\(lr) must be a positive number") }
        if let m = lrMultipliers {
            do { _ = try Self.parseMultipliers(m) } catch { try fail("lr-multipliers", "\(error)") }
        }
        if epochs < 1 { try fail("epochs", "\(epochs) must be >= 1") }
        if stepsPerEpoch < 1 { try fail("steps-per-epoch", "\(stepsPerEpoch) must be >= 1") }
        if warmupSteps < 0 { try fail("warmup-steps", "\(warmupSteps) must be >= 0") }
        if let m = maxSteps, m < 1 { try fail("max-steps", "\(m) must be >= 1") }
        if weightDecay < 0 || !weightDecay.isFinite { try fail("weight-decay", "\(weightDecay) must be >= 0") }
        if !(beta1 >= 0 && beta1 < 1) { try fail("beta1", "\(beta1) must be in [0, 1)") }
        if !(beta2 >= 0 && beta2 < 1) { try fail("beta2", "\(beta2) must be in [0, 1)") }
        if gradientClipping < 0 || !gradientClipping.isFinite { try fail("gradient-clipping", "\(gradientClipping) must be >= 0 (0: off)") }
        if !(heartbeatSeconds >= 0) || !heartbeatSeconds.isFinite { try fail("heartbeat-seconds", "\(heartbeatSeconds) must be >= 0 (0: no messages)") }
        if !(collectiveTimeout >= 0) || !collectiveTimeout.isFinite { try fail("collective-timeout", "\(collectiveTimeout) must be >= 0 (0: wait forever)") }
        if maxSkippedInARow < 0 { try fail("max-skipped-in-a-row", "\(maxSkippedInARow) must be >= 0 (0: never stop)") }
        for (n, w) in [("ce-loss-weight", ceLossWeight), ("bce-loss-weight", bceLossWeight), ("dice-loss-weight", diceLossWeight)]
            where w < 0 || !w.isFinite { try fail(n, "\(w) must be >= 0") }
        if ![0, 1, 2].contains(zeroStage) { try fail("zero-stage", "\(zeroStage) is not 0, 1 or 2") }
        if let v = valDataset {
            do { _ = try EvalDataset.parse(v) } catch { try fail("val-dataset", "\(error)") }
        }
        if let n = evalMaxNewTokens, n < 1 { try fail("eval-max-new-tokens", "\(n) must be >= 1") }
        if let n = evalMaxImages, n < 1 { try fail("eval-max-images", "\(n) must be >= 1") }
        if let w = querySeparationWeight, w < 0 || !w.isFinite { try fail("query-separation-weight", "\(w) must be >= 0") }
        if let m = querySeparationMargin, !(m >= -1 && m < 1) { try fail("query-separation-margin", "\(m) must be in [-1, 1)") }
        if let w = queryGroundingWeight, w < 0 || !w.isFinite { try fail("query-grounding-weight", "\(w) must be >= 0") }
        if let w = queryAppearanceWeight, w < 0 || !w.isFinite { try fail("query-appearance-weight", "\(w) must be a finite number >= 0") }
        if let w = imageAppearanceWeight, w < 0 || !w.isFinite { try fail("image-appearance-weight", "\(w) must be a finite number >= 0") }
        if let a = refinementAlpha, !(a >= 1) || !a.isFinite { try fail("refinement-alpha", "\(a) must be >= 1 (1: off)") }
        if let t = queryGroundingTemperature, !(t > 0) || !t.isFinite { try fail("query-grounding-temperature", "\(t) must be > 0") }
        if saveSteps < 1 { try fail("save-steps", "\(saveSteps) must be >= 1") }
        if let l = saveTotalLimit, l < 1 { try fail("save-total-limit", "\(l) must be >= 1") }
        if segTokenNum < 1 { try fail("seg-token-num", "\(segTokenNum) must be >= 1") }
        if ![1, 2].contains(imageFeatureScaleNum) { try fail("image-feature-scale-num", "\(imageFeatureScaleNum) is not 1 or 2") }
        if modelMaxLength < 256 { try fail("model-max-length", "\(modelMaxLength) must be >= 256 (ids are cut to model_max_length - 255)") }
        if !(bucketMiB >= 1.0 / 1024 && bucketMiB <= 4096) { try fail("bucket-mib", "\(bucketMiB) must be in 1/1024...4096") }
        if expName.isEmpty || expName.contains("/") { try fail("exp-name", "'\(expName)' must be a non-empty name without '/'") }
        if let e = evalSteps, e < 1 { try fail("eval-steps", "\(e) must be >= 1") }
        if loraR < 0 { try fail("lora-r", "\(loraR) must be >= 0 (0: no LoRA)") }
        if let l = lora {
            do { try l.validate(file: "options") } catch { try fail("lora-" + "r/alpha/dropout/target-modules", "\(error)") }
        }
    }
}

/// The reference's WarmupDecayLR (DeepSpeed, warmup_type "linear", warmup_min_lr 0): the k-th optimizer step
/// (k = 0, 1, ...) uses lr * k / warmup while k < warmup, then lr * max(0, (total - k) / (total - warmup)).
public struct WarmupDecayLR: Codable, Equatable, Sendable {
    public var maxLR: Float
    public var warmupSteps: Int
    public var totalSteps: Int

    public init(maxLR: Float, warmupSteps: Int, totalSteps: Int) {
        self.maxLR = maxLR
        self.warmupSteps = warmupSteps
        self.totalSteps = totalSteps
    }

    public func lr(step k: Int) -> Float {
        if k < warmupSteps { return Float(Double(maxLR) * Double(k) / Double(warmupSteps)) }
        let span = Double(max(1, totalSteps - warmupSteps))
        return Float(Double(maxLR) * max(0, Double(totalSteps - k) / span))
    }
}

public enum TrainError: Error, CustomStringConvertible {
    case option(String, String)
    case file(String, String)
    case mismatch(field: String, String)

    public var description: String {
        switch self {
        case let .option(o, why): return "\(o): \(why)"
        case let .file(f, why): return "\(f): \(why)"
        case let .mismatch(field, why): return "\(field): \(why)"
        }
    }
}
