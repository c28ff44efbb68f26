import Foundation
import PixelTensor

// The whole PixelLM (spec sections 1-3): CLIP vision tower, mm_projector, LLaMA with the image tokens spliced
// in, out_mm_projector + neck, SEG gathering, the pixel decoder and the losses, assembled as the released
// training forward (PixelLM.py model_forward + llava_arch.py prepare_inputs_labels_for_multimodal) computes
// it. Names follow the released `hf_model` checkpoint:
//   model.embed_tokens.weight, model.layers.N...., model.norm.weight, lm_head.weight     (LlamaForCausalLM)
//   model.mm_projector.{0,2}.{weight,bias}, model.out_mm_projector.{0,2}.{weight,bias}
//   model.mask_decoder..., model.prompt_encoder..., model.image_feature_neck..., model.text_hidden_fcs...,
//   model.token_fusion.proj.* (learned fusion only; not in released checkpoints)
// The released checkpoint has no vision tower (merge_lora_weights_and_save_hf_model.py drops every key with
// "vision_tower"): CLIP is loaded from its own checkpoint with HF names "vision_model....". `namedTensors()`
// is therefore the PixelLM checkpoint without CLIP; `visionNamedTensors()` is the CLIP checkpoint; a checkpoint
// that keeps CLIP inside uses "model.vision_tower.vision_tower." + the CLIP names (`checkpointTensors`).
//
// Differences from the released forward, none of which changes a number the released code produces:
// * CLIP, mm_projector and out_mm_projector run once per image; the released code runs them once per
//   conversation on copies of the image and uses the first copy for the decoder (same values; the projector
//   gradients are the same sums).
// * The hidden row gathered for a SEG token is the row before it in the *expanded* sequence. The released
//   code shifts the SEG mask by a constant 255 (it assumes the image comes before every SEG token); both give
//   the same rows whenever that holds, which is always the case for the released prompt format.
// * text_hidden_fcs runs on the gathered rows only (the released code runs it on every position and then
//   selects): identical values and gradients, less work.
// * The masks of each image are decoded together (all conversations of the image), as the released code does.
// * A question whose SEG count is not a multiple of seg_token_num x image_feature_scale_num yields no masks
//   and a reason (the released training asserts); its ground-truth masks are left out of the mask losses and
//   counted in `excludedTargets`. The same happens when a question's predicted and ground-truth mask counts
//   differ (the released code asserts per image).

/// Special token ids of the released pipeline.
public enum PixelLMTokens {
    /// IMAGE_TOKEN_INDEX: the one placeholder in the token ids replaced by the image tokens.
    public static let image = -200
    /// IGNORE_INDEX of the labels.
    public static let ignore = -100
    /// The pad id (`<unk>`, right padding).
    public static let pad = 0
}

// MARK: - batch

/// One single-turn conversation (one question) about one image of the batch.
public struct PixelLMConversation {
    /// Index of the image in the batch.
    public var imageIndex: Int
    /// Token ids with exactly one `PixelLMTokens.image` (-200) at the image position; trailing pad ids (0) are
    /// allowed (the batch right-pads anyway).
    public var inputIds: [Int]
    /// Labels, same length as `inputIds`: -100 where not supervised.
    public var labels: [Int]
    /// Ground-truth masks [K, H, W] at the image's original size, in SEG-group order; nil means none (K = 0).
    public var targetMasks: Tensor?

    public init(imageIndex: Int, inputIds: [Int], labels: [Int], targetMasks: Tensor? = nil) {
        self.imageIndex = imageIndex
        self.inputIds = inputIds
        self.labels = labels
        self.targetMasks = targetMasks
    }

    public var targetCount: Int { targetMasks?.dim(0) ?? 0 }
}

/// A micro-batch: preprocessed images and the conversations about them.
public struct PixelLMBatch {
    /// [B, 3, S, S] normalised, zero-padded bottom/right (spec 1.3).
    public var pixels: Tensor
    /// Valid (unpadded) size (h', w') of every image at the CLIP input size.
    public var validSizes: [(height: Int, width: Int)]
    /// Original size (H, W) of every image: the size of the masks.
    public var originalSizes: [(height: Int, width: Int)]
    public var conversations: [PixelLMConversation]

    public init(pixels: Tensor, validSizes: [(height: Int, width: Int)], originalSizes: [(height: Int, width: Int)],
                conversations: [PixelLMConversation]) {
        self.pixels = pixels
        self.validSizes = validSizes
        self.originalSizes = originalSizes
        self.conversations = conversations
    }

    public var imageCount: Int { pixels.rank == 4 ? pixels.dim(0) : 0 }
    /// Length of the right-padded token rows (before the image expansion).
    public var paddedLength: Int { conversations.map { $0.inputIds.count }.max() ?? 0 }

    /// Checks the structure; errors say which image or conversation is wrong.
    public func validate(config: PixelLMConfig) throws {
        let S = config.resizeVisionTowerSize
        func fail(_ m: String) throws { throw PixelLMBatchError(message: m) }
        guard pixels.rank == 4, pixels.dim(1) == config.visionConfig.numChannels, pixels.dim(2) == S, pixels.dim(3) == S else {
            throw PixelLMBatchError(message: "pixels \(describe(pixels.shape)) are not [B, \(config.visionConfig.numChannels), \(S), \(S)]")
        }
        let B = pixels.dim(0)
        if validSizes.count != B { try fail("\(validSizes.count) valid sizes for \(B) images") }
        if originalSizes.count != B { try fail("\(originalSizes.count) original sizes for \(B) images") }
        for (i, v) in validSizes.enumerated() where v.height < 1 || v.width < 1 || v.height > S || v.width > S {
            try fail("image \(i): valid size \(v.height)x\(v.width) is not within 1...\(S)")
        }
        for (i, o) in originalSizes.enumerated() where o.height < 1 || o.width < 1 {
            try fail("image \(i): original size \(o.height)x\(o.width) is empty")
        }
        if conversations.isEmpty { try fail("no conversations") }
        for (c, conv) in conversations.enumerated() {
            if conv.imageIndex < 0 || conv.imageIndex >= B { try fail("conversation \(c): image index \(conv.imageIndex) with \(B) images") }
            let n = conv.inputIds.filter { $0 == PixelLMTokens.image }.count
            if n != 1 { try fail("conversation \(c): \(n) image tokens (-200); exactly one is supported") }
            if conv.labels.count != conv.inputIds.count {
                try fail("conversation \(c): \(conv.labels.count) labels for \(conv.inputIds.count) tokens")
            }
            if let bad = conv.inputIds.first(where: { $0 != PixelLMTokens.image && ($0 < 0 || $0 >= config.vocabSize) }) {
                try fail("conversation \(c): token id \(bad) outside the vocabulary of \(config.vocabSize)")
            }
            if let bad = conv.labels.first(where: { $0 != PixelLMTokens.ignore && ($0 < 0 || $0 >= config.vocabSize) }) {
                try fail("conversation \(c): label \(bad) is neither -100 nor a token id < \(config.vocabSize)")
            }
            if let m = conv.targetMasks {
                let o = originalSizes[conv.imageIndex]
                if m.rank != 3 || m.dim(1) != o.height || m.dim(2) != o.width {
                    try fail("conversation \(c): target masks \(describe(m.shape)) are not [K, \(o.height), \(o.width)] (image \(conv.imageIndex)'s original size)")
                }
            }
        }
    }
}

public struct PixelLMBatchError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { "invalid PixelLM batch: \(message)" }
}

// MARK: - output

/// What one conversation produced.
public struct PixelLMConversationOutput {
    /// Rows of the expanded sequence gathered for its SEG tokens (the row before each SEG token).
    public var segRows: [Int]
    /// text_hidden_fcs outputs at those rows [K*L*N, C]; nil when the question yields no masks.
    public var projected: Tensor?
    /// Fused queries [K, L, C]; nil as `projected`.
    public var queries: Tensor?
    /// Mask logits at the original size [K, H, W] (mask = logit > 0); nil as `projected`.
    public var maskLogits: Tensor?
    /// Low-resolution logits [K, 1, 4g, 4g].
    public var lowRes: Tensor?
    /// Predicted masks K.
    public var predictedCount: Int
    /// Ground-truth masks.
    public var targetCount: Int
    /// Whether its masks are part of the mask losses.
    public var inMaskLoss: Bool
    /// Why it yields no masks, or why its masks are left out of the losses.
    public var reason: String?
}

/// Everything the forward computed.
public struct PixelLMOutput {
    /// [Bc, T', V], T' = T - 1 + (g/2)^2; with `LossOptions.supervisedLogitsOnly`, [M, V]: the rows of the M positions
    /// whose next label is supervised, in order.
    public var logits: Tensor
    /// Final-norm hidden states [Bc, T', H].
    public var hidden: Tensor
    /// [Bc, T'] of 1 / 0: text non-pad and image validity.
    public var attentionMask: Tensor
    /// Expanded labels, [Bc][T'] (-100 at the image positions).
    public var labels: [[Int]]
    /// CLIP hidden states used (deep -2, mid -11), [B, g*g, D] each.
    public var vision: CLIPVisionFeatures
    /// mm_projector(pool(deep)) [B, (g/2)^2, H].
    public var imageTokens: Tensor
    /// Neck output E [L, C, g, g] per image; nil for an image whose conversations produced no queries.
    public var imageEmbeddings: [Tensor?]
    public var conversations: [PixelLMConversationOutput]
    /// ce, bce, dice, refine (unweighted) and the weighted total.
    public var losses: LossTerms
    /// Ground-truth masks left out of the mask losses (see the conversations' reasons).
    public var excludedTargets: Int
}

// MARK: - the model

public final class PixelLMForCausalLM: Module {
    /// (`lora` changes when adapters are attached or merged.)
    public internal(set) var config: PixelLMConfig
    /// HF CLIPVisionModel ("vision_model...."), not part of the PixelLM checkpoint.
    public let visionTower: CLIPVisionModel
    /// "model.embed_tokens", "model.layers.N", "model.norm", "lm_head".
    public let llm: LlamaForCausalLM
    /// "model.mm_projector": CLIP deep (pooled) -> LLM image tokens.
    public let mmProjector: ProjectorMLP
    /// "model.out_mm_projector": CLIP deep and mid -> decoder features.
    public let outMMProjector: ProjectorMLP
    /// "model.mask_decoder", "model.prompt_encoder", "model.image_feature_neck", "model.text_hidden_fcs",
    /// "model.token_fusion".
    public let decoderSide: PixelDecoderSide
    /// [SEG0] ... [SEG{N*L-1}] ids (scale-major: the first N belong to level 0).
    public let segTokenIds: [Int]

    /// Prefix of the CLIP names when a PixelLM checkpoint keeps the vision tower inside.
    public static let visionPrefix = "model.vision_tower.vision_tower"

    /// The SEG ids when nothing else is known: the last N*L rows of the vocabulary ([SEG0..5] are the last
    /// tokens added to the released tokenizer: 32003..32008 of 32009). Read them from the tokenizer when there is one.
    public static func defaultSegTokenIds(_ config: PixelLMConfig) -> [Int] {
        Array((config.vocabSize - config.segTokensPerTarget)..<config.vocabSize)
    }

    /// - skeleton: false (default) draws new weights as HF does: normal(initializer_range) for the LLM, the
    ///   projectors and CLIP (vision_config.initializer_range), as the released training creates the projectors;
    ///   true leaves the LLM, projectors and CLIP uninitialised for a checkpoint to fill (no random draws,
    ///   nothing touched). The decoder side always gets PyTorch's default init (as the released modules); a
    ///   checkpoint overwrites it, buffers included.
    public init(config: PixelLMConfig, segTokenIds: [Int]? = nil, skeleton: Bool = false,
                positionResize: PositionTableResize = .reference, rng: inout RNG) {
        let seg = segTokenIds ?? Self.defaultSegTokenIds(config)
        precondition(seg.count == config.segTokensPerTarget,
                     "PixelLMForCausalLM: \(seg.count) SEG ids for seg_token_num x image_feature_scale_num = \(config.segTokensPerTarget)")
        precondition(Set(seg).count == seg.count && seg.allSatisfy { $0 >= 0 && $0 < config.vocabSize },
                     "PixelLMForCausalLM: SEG ids \(seg) must be distinct ids below vocab_size \(config.vocabSize)")
        self.config = config
        self.segTokenIds = seg
        let llmInit: Init? = skeleton ? nil : .normal(std: config.initializerRange)
        let visionInit: Init? = skeleton ? nil : .normal(std: config.visionConfig.initializerRange)
        visionTower = CLIPVisionModel(config: config, positionResize: positionResize, init: visionInit, rng: &rng)
        llm = LlamaForCausalLM(config: config, init: llmInit, rng: &rng)
        mmProjector = ProjectorMLP(config: config, init: llmInit, rng: &rng)
        outMMProjector = ProjectorMLP(config: config, init: llmInit, rng: &rng)
        decoderSide = PixelDecoderSide(config: config, rng: &rng)
        if let l = config.lora { attachLoRA(l, rng: &rng) }
    }

    /// The PixelLM checkpoint (released names, no vision tower): parameters and the PE buffers.
    public func namedTensors() -> [(String, Tensor)] {
        llm.namedTensors() + mmProjector.namedTensors(prefix: "model.mm_projector")
            + outMMProjector.namedTensors(prefix: "model.out_mm_projector") + decoderSide.namedTensors(prefix: "model")
    }

    /// Activation checkpointing of the LLaMA and CLIP layers (see LlamaModel.gradientCheckpointing) and of the mask
    /// decoder (PixelDecoderSide.decodeLowRes).
    public var gradientCheckpointing: Bool {
        get { llm.model.gradientCheckpointing }
        set {
            llm.model.gradientCheckpointing = newValue
            visionTower.gradientCheckpointing = newValue
            decoderSide.gradientCheckpointing = newValue
        }
    }

    /// The CLIP checkpoint ("vision_model....").
    public func visionNamedTensors() -> [(String, Tensor)] { visionTower.namedTensors() }

    /// The PixelLM checkpoint, with CLIP inside under `visionPrefix` when `includeVision`.
    public func checkpointTensors(includeVision: Bool) -> [(String, Tensor)] {
        namedTensors() + (includeVision ? visionTower.namedTensors(prefix: Self.visionPrefix) : [])
    }

    /// Every tensor of the model: the PixelLM names and the CLIP names ("vision_model....").
    public func allNamedTensors() -> [(String, Tensor)] { namedTensors() + visionNamedTensors() }

    // MARK: forward

    /// The K masks of a [K, H, W] target tensor as K flat rows (none for nil or K = 0).
    static func maskRows(_ t: Tensor?) -> [[Float]] {
        guard let t, t.dim(0) > 0 else { return [] }
        let per = t.count / t.dim(0), data = t.contiguousData().toArray()
        return (0..<t.dim(0)).map { Array(data[($0 * per)..<(($0 + 1) * per)]) }
    }

    /// The training forward of one micro-batch (see the file comment). Throws `PixelLMBatchError` for a
    /// malformed batch; a question without usable SEG tokens is not an error (see the conversation's reason).
    public func forward(_ batch: PixelLMBatch, options: LossOptions = LossOptions()) throws -> PixelLMOutput {
        try batch.validate(config: config)
        let B = batch.imageCount, Cn = batch.conversations.count
        let n = config.imageTokenCount, L = config.imageFeatureScaleNum
        let T = batch.paddedLength, Tx = T - 1 + n
        let image = PixelLMTokens.image, pad = PixelLMTokens.pad, ignore = PixelLMTokens.ignore

        // 1. CLIP once per image; 2x2 pooling and mm_projector give the LLM image tokens
        let vision = visionTower(batch.pixels, validSizes: batch.validSizes)
        let imageTokens = mmProjector(visionTower.poolTokens(vision.deep))                 // [B, n, H]
        let imageMask = visionTower.llmImageMask(validSizes: batch.validSizes).toArray()   // [B * n]

        // 2. right-pad, embed, splice the image tokens in place of the -200
        var paddedIds: [Int] = [], starts: [Int] = []
        var maskValues: [Float] = [], expandedLabels: [[Int]] = [], expandedIds: [[Int]] = []
        for conv in batch.conversations {
            let ids = conv.inputIds + [Int](repeating: pad, count: T - conv.inputIds.count)
            let labs = conv.labels + [Int](repeating: ignore, count: T - conv.labels.count)
            let s = ids.firstIndex(of: image)!
            starts.append(s)
            paddedIds += ids.map { $0 == image ? pad : $0 }
            let img = conv.imageIndex
            maskValues += ids[..<s].map { $0 != pad ? Float(1) : 0 }
            maskValues += imageMask[(img * n)..<((img + 1) * n)]
            maskValues += ids[(s + 1)...].map { $0 != pad ? Float(1) : 0 }
            expandedLabels.append(Array(labs[..<s]) + [Int](repeating: ignore, count: n) + Array(labs[(s + 1)...]))
            expandedIds.append(Array(ids[..<s]) + [Int](repeating: image, count: n) + Array(ids[(s + 1)...]))
        }
        let text = llm.model.embed(paddedIds, shape: [Cn, T])                                // [Cn, T, H]
        var rows: [Tensor] = []
        for (c, conv) in batch.conversations.enumerated() {
            let s = starts[c]
            let e = text.slice(axis: 0, c, c + 1)
            let img = imageTokens.slice(axis: 0, conv.imageIndex, conv.imageIndex + 1)
            let parts = [e.slice(axis: 1, 0, s), img, e.slice(axis: 1, s + 1, T)].filter { $0.dim(1) > 0 }
            rows.append(concat(parts, axis: 1))
        }
        let embeds = rows.count == 1 ? rows[0] : concat(rows, axis: 0)                        // [Cn, Tx, H]
        let attentionMask = Tensor(maskValues, shape: [Cn, Tx])

        // 3. LLM, logits, the causal-LM cross-entropy (logits[:, :-1] vs labels[:, 1:], mean over the batch)
        let hidden = llm(embeds, attentionMask: attentionMask)                                 // [Cn, Tx, H]
        let logits: Tensor, ce: Tensor
        if options.supervisedLogitsOnly {
            // only the rows whose next label is supervised: the same loss, without the [Cn, Tx, V] logits (image and
            // prompt positions are most of Tx) and their gradient
            var rows: [Int] = [], targets: [Int] = []
            for c in 0..<Cn {
                for t in 0..<(Tx - 1) where expandedLabels[c][t + 1] != ignore {
                    rows.append(c * Tx + t)
                    targets.append(expandedLabels[c][t + 1])
                }
            }
            logits = llm.logits(hidden.reshape([Cn * Tx, hidden.dim(2)]).indexSelect(axis: 0, rows))   // [M, V]
            ce = crossEntropy(logits, targets: targets, ignoreIndex: ignore)
        } else {
            logits = llm.logits(hidden)                                                         // [Cn, Tx, V]
            let V = logits.dim(2)
            let shifted = logits.slice(axis: 1, 0, Tx - 1).reshape([Cn * (Tx - 1), V])
            ce = crossEntropy(shifted, targets: expandedLabels.flatMap { $0.dropFirst() }, ignoreIndex: ignore)
        }

        // 4. SEG gathering per conversation
        let segSet = Set(segTokenIds)
        var convOut: [PixelLMConversationOutput] = []
        for (c, conv) in batch.conversations.enumerated() {
            let segRows = segHiddenRows(tokenIds: expandedIds[c], segTokenIds: segSet)
            let sq = decoderSide.queries(hidden: hidden.slice(axis: 0, c, c + 1).squeeze(0), rows: segRows)
            var o = PixelLMConversationOutput(segRows: segRows, projected: sq.projected, queries: sq.queries, maskLogits: nil,
                                              lowRes: nil, predictedCount: sq.targetCount, targetCount: conv.targetCount,
                                              inMaskLoss: false, reason: sq.reason)
            if o.reason == nil && o.predictedCount != o.targetCount {
                o.reason = "\(o.predictedCount) predicted masks (SEG groups) for \(o.targetCount) ground-truth masks; left out of the mask losses"
            }
            o.inMaskLoss = o.reason == nil && o.targetCount > 0
            if let r = o.reason, o.targetCount > 0, sq.queries == nil {
                o.reason = r + "; its \(o.targetCount) ground-truth masks are left out of the mask losses"
            }
            convOut.append(o)
        }

        // 5. decoder features per image (out_mm_projector, neck) and the masks of all its questions together
        let outDeep = outMMProjector(vision.deep)                                              // [B, g*g, H]
        let outMid = L > 1 ? outMMProjector(vision.mid) : nil
        var embeddings: [Tensor?] = Array(repeating: nil, count: B)
        var separation: Tensor? = nil, separationPairs = 0, grounding: Tensor? = nil, groundingTerms = 0
        var appearance: Tensor? = nil, appearanceTargets = 0
        let pixelValues = options.queryAppearance || options.imageTokenAppearance ? batch.pixels.contiguousData() : nil
        var tokenAppearance: Tensor? = nil, tokenAppearanceCells = 0
        if options.imageTokenAppearance, let pixelValues {
            // every object the image's ground truths show, described, on the LLM's image-token grid
            let g = Int(Double(n).squareRoot().rounded()), S = config.resizeVisionTowerSize
            for b in 0..<B {
                let (H, W) = batch.originalSizes[b]
                var parts: [ImageTokenAppearance.Part] = []
                for conv in batch.conversations where conv.imageIndex == b {
                    for mask in Self.maskRows(conv.targetMasks) {
                        parts += ImageTokenAppearance.parts(mask: mask, height: H, width: W, pixels: pixelValues.ptr + b * 3 * S * S,
                                                            input: S, valid: batch.validSizes[b], grid: g)
                    }
                }
                let (cells, targets) = ImageTokenAppearance.targets(parts, channels: imageTokens.dim(2))
                guard !cells.isEmpty else { continue }
                let l = ImageTokenAppearance.loss(tokens: imageTokens.slice(axis: 0, b, b + 1).squeeze(0), cells: cells, targets: targets)
                tokenAppearance = tokenAppearance.map { $0 + l } ?? l
                tokenAppearanceCells += cells.count
            }
        }
        for b in 0..<B {
            let members = convOut.indices.filter { batch.conversations[$0].imageIndex == b && convOut[$0].queries != nil }
            if members.isEmpty { continue }
            var levels = [outDeep.slice(axis: 0, b, b + 1)]
            if let outMid { levels.append(outMid.slice(axis: 0, b, b + 1)) }
            let E = decoderSide.imageEmbeddings(levels.count == 1 ? levels[0] : concat(levels, axis: 0))
            embeddings[b] = E
            let qs = members.map { convOut[$0].queries! }
            let allQueries = qs.count == 1 ? qs[0] : concat(qs, axis: 0)
            // the rows (in allQueries) and ground truths of this image's supervised targets (masks matching their
            // ground truth), for the auxiliary query losses
            var rows: [Int] = [], gts: [[Float]] = []
            if options.groundingTemperature != nil || options.separationMargin != nil || options.queryAppearance {
                var k0 = 0
                for m in members {
                    let k = convOut[m].predictedCount
                    if convOut[m].inMaskLoss {
                        let masks = Self.maskRows(batch.conversations[m].targetMasks)
                        for i in 0..<k { rows.append(k0 + i); gts.append(masks[i]) }
                    }
                    k0 += k
                }
            }
            // the queries of some of those rows (all of allQueries when they are all its rows, in order)
            func picked(_ rs: [Int]) -> Tensor {
                rs == Array(0..<allQueries.dim(0)) ? allQueries : concat(rs.map { allQueries.slice(axis: 0, $0, $0 + 1) }, axis: 0)
            }
            if let temperature = options.groundingTemperature {
                // each supervised target's query against the image's distinct target regions on E's grid
                var kept: [Int] = [], regions: [[Float]] = [], group: [Int] = [], masks: [[Float]] = []
                let (H, W) = batch.originalSizes[b], g = E.dim(2)
                for (row, mask) in zip(rows, gts) {
                    let weights = QueryGrounding.gridWeights(mask, height: H, width: W, valid: batch.validSizes[b],
                                                             input: config.resizeVisionTowerSize, grid: g)
                    guard weights.reduce(0, +) > 0 else { continue }
                    // a region equal (IoU >= 0.5) to one seen before is the same candidate
                    let same = masks.indices.first { QuerySeparation.differingPairs([masks[$0], mask]).isEmpty }
                    if let j = same { group.append(group[j]) } else {
                        group.append(regions.count)
                        regions.append(weights)
                    }
                    masks.append(mask)
                    kept.append(row)
                }
                if regions.count > 1 {
                    let l = QueryGrounding.loss(queries: picked(kept), embeddings: E, regions: regions, group: group, temperature: temperature)
                    grounding = grounding.map { $0 + l } ?? l
                    groundingTerms += kept.count * allQueries.dim(1)
                }
            }
            if let pixelValues, !rows.isEmpty {
                let (H, W) = batch.originalSizes[b], S = config.resizeVisionTowerSize
                let base = pixelValues.ptr + b * 3 * S * S
                let descriptors = gts.map {
                    QueryAppearance.descriptor(mask: $0, height: H, width: W, pixels: base, input: S, valid: batch.validSizes[b])
                }
                let l = QueryAppearance.loss(queries: picked(rows), descriptors: descriptors)
                appearance = appearance.map { $0 + l } ?? l
                appearanceTargets += rows.count
            }
            if let margin = options.separationMargin {
                let pairs = QuerySeparation.differingPairs(gts)
                if !pairs.isEmpty {
                    let l = QuerySeparation.loss(queries: picked(rows), pairs: pairs, margin: margin)
                    separation = separation.map { $0 + l } ?? l
                    separationPairs += pairs.count
                }
            }
            let lowRes = decoderSide.decodeLowRes(embeddings: E, queries: allQueries)
            let post = postprocessMasks(lowRes, inputSize: batch.validSizes[b], originalSize: batch.originalSizes[b])
            var k0 = 0
            for m in members {
                let k = convOut[m].predictedCount
                convOut[m].lowRes = lowRes.slice(axis: 0, k0, k0 + k)
                convOut[m].maskLogits = post.slice(axis: 0, k0, k0 + k).squeeze(1)
                k0 += k
            }
        }

        // 6. losses: mask terms over the questions whose masks match their ground truth
        var questions: [QuestionMasks] = []
        var excluded = 0
        for (c, o) in convOut.enumerated() {
            if o.inMaskLoss, let logits = o.maskLogits, let gt = batch.conversations[c].targetMasks {
                questions.append(QuestionMasks(logits: logits, targets: gt))
            } else {
                excluded += o.targetCount
            }
        }
        var losses = MaskLosses.total(ce: ce, questions: questions, options: options)
        if let separation {
            losses.separation = separation
            losses.separationPairs = separationPairs
        }
        if let grounding {
            losses.grounding = grounding
            losses.groundingTerms = groundingTerms
        }
        if let appearance {
            losses.appearance = appearance
            losses.appearanceTargets = appearanceTargets
        }
        if let tokenAppearance {
            losses.tokenAppearance = tokenAppearance
            losses.tokenAppearanceCells = tokenAppearanceCells
        }
        return PixelLMOutput(logits: logits, hidden: hidden, attentionMask: attentionMask, labels: expandedLabels,
                             vision: vision, imageTokens: imageTokens, imageEmbeddings: embeddings,
                             conversations: convOut, losses: losses, excludedTargets: excluded)
    }
}
