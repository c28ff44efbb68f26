import Foundation
import PixelModel
import PixelTensor

/// What a training run will hold in memory, estimated before the gradient buffers, the optimizer state and the first
/// step are allocated (issue 12: refuse a recipe that cannot fit, with the numbers and what to change, instead of
/// being killed by the kernel an hour later).
///
/// Per rank:
///   weights      every fp32 tensor of the model (frozen and trainable, CLIP, LoRA adapters), 4 bytes each;
///   mapped       frozen LLaMA and CLIP matrices used in place from bf16 files, 2 bytes each: page cache, counted once
///                per node (every page is read each pass, so they count against the node's memory like the rest);
///   gradients    the flat gradient buckets (4 bytes per padded trainable element);
///   optimizer    AdamW m and v (8 bytes per element; 1/N of them from ZeRO-1 on) and the reduced slice (4 / N; none
///                on one rank, where the gradients accumulate in the buckets);
///   activations  what backward keeps of one micro-batch: per LLaMA layer and position about 10 h + 3 i floats plus two
///                attention rows (heads x the conversation's length); with gradient checkpointing only each layer's
///                input (h floats); on top, backward's working set of one layer (its activations, their gradients and
///                the products' temporaries: 2.5 such sets; with checkpointing, of one conversation); the logits three times (values, log-softmax, gradient)
///                over the vocabulary at the supervised positions; CLIP the same way over its patches.
/// The working-set factor was measured (peak of live tensors and peak RSS after the first step, which `pixellm train`
/// prints beside the estimate: 7B width at 8 layers, 1,873 positions: 12.71 GB estimated, 12.71 GB peak RSS, 8.87 GB
/// of tensors estimated against 8.40 GB measured); it is an estimate, shown with its parts so a user can judge it.
public struct MemoryEstimate: Sendable, Equatable {
    public var weightBytes = 0
    public var mappedBytes = 0
    public var gradientBytes = 0
    public var optimizerBytes = 0
    public var activationBytes = 0
    /// Frozen LLaMA matrices held in fp32 (a bf16 base would keep them mapped at half the bytes, shared).
    public var frozenLLaMAFP32Bytes = 0
    /// Positions (tokens + image tokens) of the largest micro-batch the estimate assumes, and its longest conversation.
    public var positions = 0
    /// Supervised positions (the LM head's rows in training) of that micro-batch.
    public var supervised = 0
    public var longestConversation = 0
    public var ranksOnNode = 1

    /// Bytes one rank holds privately (everything but the shared mapping).
    public var perRank: Int { weightBytes + gradientBytes + optimizerBytes + activationBytes }
    /// Bytes the node needs: every local rank's private memory and the mapped files once.
    public var node: Int { perRank * ranksOnNode + mappedBytes }

    /// Activation bytes of one micro-batch (see the type's comment).
    public static func activations(config c: PixelLMConfig, images: Int, positions: Int, supervised: Int, longestConversation T: Int,
                                   checkpointing: Bool) -> Int {
        let h = c.hiddenSize, i = c.intermediateSize, L = c.numHiddenLayers
        let perPosition = 10 * h + 3 * i + 2 * c.numAttentionHeads * T
        // backward holds one layer's activations, their gradients and the products' temporaries at once: measured at
        // about 2.5 layer sets on top of what forward stored (7B width, 8 and 32 layers, 1,873 positions); with
        // checkpointing the layer is recomputed one conversation at a time (Autograd.checkpointRows)
        let llm = checkpointing ? L * positions * h + 5 * min(T, positions) * perPosition / 2
                                : (L - 1) * positions * perPosition + 5 * positions * perPosition / 2
        let logits = 3 * supervised * c.vocabSize
        let v = c.visionConfig
        let patches = c.visionGrid * c.visionGrid + 1
        let vPerPatch = 10 * v.hiddenSize + 3 * v.intermediateSize + 2 * v.numAttentionHeads * patches
        let clip = images * (checkpointing ? v.numHiddenLayers * patches * v.hiddenSize + 5 * patches * vPerPatch / 2
                                           : (v.numHiddenLayers - 1) * patches * vPerPatch + 5 * patches * vPerPatch / 2)
        return 4 * (llm + logits + clip)
    }

    /// The estimate for `model` trained with `layout` (its trainable buckets) under `options` on `worldSize` ranks,
    /// `ranksOnNode` of them on this node; `batch` = (positions, longest conversation) of the largest micro-batch.
    public static func make(model: PixelLMForCausalLM, table: ParameterTable, layout: BucketLayout, options o: TrainOptions,
                            worldSize N: Int, ranksOnNode: Int, batch: (positions: Int, supervised: Int, longest: Int)) -> MemoryEstimate {
        var e = MemoryEstimate()
        e.ranksOnNode = ranksOnNode
        var seen = Set<ObjectIdentifier>()
        for entry in table.entries where seen.insert(ObjectIdentifier(entry.tensor.storage)).inserted {
            e.weightBytes += 4 * entry.tensor.storage.count
            if (entry.group == .llm || entry.group == .loraTarget) && !entry.trainable && entry.tensor.rank == 2 { e.frozenLLaMAFP32Bytes += 4 * entry.tensor.count }
        }
        for (_, lin) in PixelLMModelDirectory.bf16Linears(model) + PixelLMModelDirectory.clipLinears(model) {
            if let w = lin.bf16Weight { e.mappedBytes += 2 * w.count }
        }
        let padded = layout.paddedElements
        e.gradientBytes = 4 * padded
        e.optimizerBytes = o.zeroStage == 0 || N == 1 ? 8 * padded : (8 * padded + 4 * padded) / N
        e.positions = batch.positions
        e.supervised = batch.supervised
        e.longestConversation = batch.longest
        e.activationBytes = activations(config: model.config, images: o.batchSize, positions: batch.positions, supervised: batch.supervised,
                                        longestConversation: batch.longest, checkpointing: o.gradientCheckpointing)
        return e
    }

    public static func gb(_ b: Int) -> String { String(format: "%.2f GB", Double(b) / 1e9) }

    /// One line per part, for the log.
    public func summary(limit: Int?) -> String {
        var s = "memory estimate per rank: weights \(Self.gb(weightBytes)) fp32"
        if mappedBytes > 0 { s += " + \(Self.gb(mappedBytes)) bf16 mapped (page cache, once per node)" }
        s += "; gradients \(Self.gb(gradientBytes)), AdamW state \(Self.gb(optimizerBytes))"
        s += "; activations \(Self.gb(activationBytes)) (\(positions) positions per micro-batch, longest conversation \(longestConversation))"
        s += "; node: \(Self.gb(node)) for \(ranksOnNode) rank(s)"
        if let limit { s += " of \(Self.gb(limit))" }
        return s
    }

    /// What would bring the node's need down, each with its saving (nothing when no lever applies).
    public func levers(options o: TrainOptions, config: PixelLMConfig, worldSize N: Int) -> [String] {
        var out: [String] = []
        if !o.gradientCheckpointing {
            let with = Self.activations(config: config, images: o.batchSize, positions: positions, supervised: supervised,
                                        longestConversation: longestConversation, checkpointing: true)
            if with < activationBytes { out.append("--gradient-checkpointing (activations \(Self.gb(activationBytes)) -> \(Self.gb(with)) per rank)") }
        }
        if o.batchSize > 1 {
            out.append("--batch-size 1 with --grad-accumulation-steps \(o.gradAccumulationSteps * o.batchSize) (the same global batch; activations about 1/\(o.batchSize))")
        }
        if frozenLLaMAFP32Bytes > 0 {
            out.append("a bf16 copy of the base (pixellm consolidate --dtype bf16, or pixellm init --dtype bf16): its \(Self.gb(frozenLLaMAFP32Bytes)) of frozen fp32 LLaMA matrices stay mapped as \(Self.gb(frozenLLaMAFP32Bytes / 2)), shared by the node's ranks")
        }
        if o.zeroStage == 0 && N > 1 {
            out.append("--zero-stage 2 (AdamW state \(Self.gb(optimizerBytes)) -> \(Self.gb(optimizerBytes / N)) per rank)")
        }
        if ranksOnNode > 1 { out.append("fewer ranks on this node (each adds \(Self.gb(perRank)))") }
        if o.trainable != "released" && o.lora != nil {
            out.append("--trainable released (fewer trained tensors: less gradient and AdamW state)")
        }
        return out
    }

    // MARK: the node

    /// The memory this process may use: the smaller of MemTotal and the cgroup's limit (v2 memory.max, v1
    /// memory.limit_in_bytes); nil when neither can be read.
    public static func nodeLimit() -> Int? {
        var limits: [Int] = []
        if let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) {
            for line in text.split(separator: "\n") where line.hasPrefix("MemTotal:") {
                let parts = line.split(separator: " ")
                if parts.count >= 2, let kb = Int(parts[1]) { limits.append(kb * 1024) }
            }
        }
        for path in ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"] {
            if let t = try? String(contentsOfFile: path, encoding: .utf8), let v = Int(t.trimmingCharacters(in: .whitespacesAndNewlines)),
               v > 0, v < (1 << 60) { limits.append(v) }
        }
        return limits.min()
    }

    /// Parses "24GB", "500MB", "1.5G", or a number of bytes.
    public static func parseSize(_ s: String) -> Int? {
        let u = s.uppercased().trimmingCharacters(in: .whitespaces)
        for (suffix, f) in [("GB", 1e9), ("G", 1e9), ("MB", 1e6), ("M", 1e6), ("KB", 1e3), ("K", 1e3), ("B", 1.0)] where u.hasSuffix(suffix) {
            if let v = Double(u.dropLast(suffix.count)), v > 0, v * f < 0x1p60 { return Int(v * f) }
        }
        if let v = Int(u), v > 0 { return v }
        return nil
    }
}
