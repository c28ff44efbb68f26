import Foundation
import PixelTensor

// The pieces around the pixel decoder (spec sections 1.5-1.7 and 2):
//   ImageFeatureNeck      model.image_feature_neck: out_mm_projector features [L, g*g, H] -> E [L, C, g, g]
//   TextHiddenFCs         model.text_hidden_fcs: Linear(H, H) ReLU Linear(H, C) Dropout(0)
//   TokenFusion           N codebook tokens of a scale -> one query (the released fixed 1/(N*L) sum, or learned)
//   segHiddenRows / gatherSegQueries   the SEG gathering math
//   postprocessMasks      low-res logits -> the original image size; maskScores
//   PixelDecoderSide      all of it for one config, named like the released checkpoint (prefix "model")
//
// Token fusion. The paper fuses the N tokens h_l^1..h_l^N of scale l with "a linear projection layer phi".
// The released code instead sums them with fixed weights that live in a plain Python list (constants, not in
// the checkpoint; spec section 1.6). The weight is 1/(N*L), not 1/N: `seg_token_idx` holds all N*L codebook ids
// and `multiseg_scalar = [1/len(seg_token_idx)] * len(seg_token_idx)` (model/PixelLM.py:282-287), while the
// fusion loop sums only the N tokens of one scale (PixelLM.py:455-458, evaluate 714-718). So the released
// query of a scale is (h0 + h1 + h2) / 6: half of a mean. `.released` reproduces it (config "released"; the
// older name "mean" is read as "released": it always meant "the released fixed fusion").
// `.learned` is the paper's phi, chosen as one Linear(N*C -> C) over the concatenation
// cat(h_l^1, ..., h_l^N) (n-major), shared by the scales: it can express any per-token, per-channel mix
// (learned per-token weights are the special case W = [w_1 I ... w_N I]). It is initialised to the released
// fusion (W = [I/(N*L) ... I/(N*L)], b = 0), so an untrained learned fusion gives exactly the released numbers
// and training starts from the released behaviour. Its weights are `model.token_fusion.proj.{weight,bias}`; a
// released checkpoint does not have them, so load a released checkpoint with token_fusion = "released".

// MARK: - neck

/// `model.image_feature_neck`: Conv1x1(H -> C, no bias), LayerNorm2d(C), Conv3x3(C -> C, pad 1, no bias),
/// LayerNorm2d(C); shared by both feature levels.
public final class ImageFeatureNeck: Module {
    public let conv0: Conv2d, norm1: LayerNorm2d, conv2: Conv2d, norm3: LayerNorm2d

    public init(hidden H: Int, dim C: Int, rng: inout RNG) {
        conv0 = Conv2d(H, C, kernel: 1, bias: false, init: .torchDefault, rng: &rng)
        norm1 = LayerNorm2d(C)
        conv2 = Conv2d(C, C, kernel: 3, padding: 1, bias: false, init: .torchDefault, rng: &rng)
        norm3 = LayerNorm2d(C)
    }

    public func namedTensors() -> [(String, Tensor)] { gather([("0", conv0), ("1", norm1), ("2", conv2), ("3", norm3)]) }

    /// x [L, H, g, g] -> [L, C, g, g].
    public func callAsFunction(_ x: Tensor) -> Tensor { norm3(conv2(norm1(conv0(x)))) }

    /// The out_mm_projector outputs [L, g*g, H] (row-major patches) as a grid [L, H, g, g].
    public static func grid(_ features: Tensor) -> Tensor {
        precondition(features.rank == 3, "ImageFeatureNeck.grid: features \(describe(features.shape)) must be [L, g*g, H]")
        let L = features.dim(0), P = features.dim(1), H = features.dim(2)
        let g = Int(Double(P).squareRoot().rounded())
        precondition(g * g == P, "ImageFeatureNeck.grid: \(P) patches is not a square grid")
        return features.transpose(1, 2).reshape([L, H, g, g])
    }
}

// MARK: - text_hidden_fcs

/// `model.text_hidden_fcs`: a ModuleList holding one Sequential(Linear(H, H), ReLU, Linear(H, C), Dropout(0)),
/// hence the names "0.0.weight", "0.0.bias", "0.2.weight", "0.2.bias".
public final class TextHiddenFCs: Module {
    public let fc1: Linear, fc2: Linear

    public init(hidden H: Int, outDim C: Int, rng: inout RNG) {
        fc1 = Linear(H, H, init: .torchDefault, rng: &rng)
        fc2 = Linear(H, C, init: .torchDefault, rng: &rng)
    }

    public func namedTensors() -> [(String, Tensor)] { gather([("0.0", fc1), ("0.2", fc2)]) }

    /// [..., H] -> [..., C] (the dropout has p = 0).
    public func callAsFunction(_ x: Tensor) -> Tensor { fc2(fc1(x).relu()) }
}

// MARK: - token fusion

/// Fuses the N codebook tokens of every scale into one query: [K, L, N, C] -> [K, L, C].
public final class TokenFusion: Module {
    public enum Kind: String, Sendable {
        /// The released fixed fusion: q = sum_n h_n / (N * L).
        case released
        /// The paper's linear fusion phi, initialised to the released weights.
        case learned

        /// A config's `token_fusion` value; "mean" is the former name of `.released`.
        public init?(configValue: String) {
            if configValue == "mean" { self = .released } else if let k = Kind(rawValue: configValue) { self = k } else { return nil }
        }
    }
    public let kind: Kind
    public let tokens: Int
    public let scales: Int
    public let dim: Int
    /// `.learned` only: Linear(N*C, C) over the n-major concatenation (names "proj.weight", "proj.bias").
    public let proj: Linear?

    /// The released per-token weight 1/(N*L) (a Python float 1/len(seg_token_idx) held in fp32).
    public var releasedWeight: Float { Float(1.0 / Double(tokens * scales)) }

    public init(kind: Kind, tokens N: Int, scales L: Int, dim C: Int, rng: inout RNG) {
        self.kind = kind
        tokens = N
        scales = L
        dim = C
        if kind == .learned {
            let l = Linear(N * C, C, init: .torchDefault, rng: &rng)
            // start at the released fusion: W[c, n*C + c] = 1/(N*L), b = 0
            let w = Float(1.0 / Double(N * L))
            l.weight.fill(0)
            for n in 0..<N { for c in 0..<C { l.weight[c, n * C + c] = w } }
            l.bias!.fill(0)
            proj = l
        } else {
            proj = nil
        }
    }

    public convenience init(config: PixelLMConfig, rng: inout RNG) {
        self.init(kind: Kind(configValue: config.tokenFusion) ?? .released, tokens: config.segTokenNum,
                  scales: config.imageFeatureScaleNum, dim: config.outDim, rng: &rng)
    }

    public func namedTensors() -> [(String, Tensor)] { proj.map { $0.namedTensors(prefix: "proj") } ?? [] }

    public func callAsFunction(_ h: Tensor) -> Tensor {
        precondition(h.rank == 4 && h.dim(2) == tokens && h.dim(3) == dim,
                     "TokenFusion: input \(describe(h.shape)) must be [K, L, \(tokens), \(dim)]")
        if let proj { return proj(h.reshape([h.dim(0), h.dim(1), tokens * dim])) }
        // the released sum, in its order: 0 * h0 + s h0 + s h1 + ... with s = 1/(N*L) in fp32
        let s = releasedWeight
        var out = h.slice(axis: 2, 0, 1) * 0
        for n in 0..<tokens { out = out + h.slice(axis: 2, n, n + 1) * s }
        return out.squeeze(2)
    }
}

// MARK: - SEG gathering

/// The codebook queries of one question (or why there are none).
public struct SegQueries {
    /// [K, L, C] fused queries; nil when K == 0 or when the question is rejected.
    public var queries: Tensor?
    /// The text_hidden_fcs outputs at the gathered rows, [K*L*N, C] in sequence order; nil as `queries`.
    public var projected: Tensor?
    /// Targets (mask count) of the question.
    public var targetCount: Int
    /// Why the question yields no masks although it has SEG tokens (nil otherwise).
    public var reason: String?
}

/// Rows of the hidden states to gather for the SEG tokens of `tokenIds`: the row *before* each SEG token,
/// i.e. the state whose logits predicted it (spec 1.6), in sequence order. `rowOffset` maps token index t
/// to hidden row t + rowOffset (0 when the hidden states are indexed like the tokens; imageTokenCount - 1
/// when the ids hold one image placeholder expanded to imageTokenCount rows before the SEG tokens).
/// A SEG token whose previous row does not exist gives a row of -1 (gatherSegQueries rejects it).
public func segHiddenRows(tokenIds: [Int], segTokenIds: Set<Int>, rowOffset: Int = 0) -> [Int] {
    var rows: [Int] = []
    for (t, id) in tokenIds.enumerated() where segTokenIds.contains(id) {
        rows.append(t == 0 ? -1 : t - 1 + rowOffset)
    }
    return rows
}

/// Gathers and fuses the codebook queries of one question.
/// - hidden: [T, H] final-norm LLM hidden states
/// - rows: from `segHiddenRows` (one per SEG token, sequence order)
/// The SEG count must be a multiple of N*L (6 released); otherwise, as the released evaluation does, the
/// whole question yields no masks and `reason` says why. K = count / (N*L); the gathered rows are grouped
/// [K, L, N, C] scale-major ([SEG0..N-1] -> level 0 = deep) and fused to [K, L, C].
public func gatherSegQueries(hidden: Tensor, rows: [Int], fcs: TextHiddenFCs, fusion: TokenFusion,
                             scales L: Int) -> SegQueries {
    let N = fusion.tokens, per = N * L
    if rows.isEmpty { return SegQueries(queries: nil, projected: nil, targetCount: 0, reason: nil) }
    if rows.count % per != 0 {
        return SegQueries(queries: nil, projected: nil, targetCount: 0,
                          reason: "\(rows.count) SEG tokens is not a multiple of seg_token_num x image_feature_scale_num = \(per); no masks")
    }
    guard hidden.rank == 2 else {
        return SegQueries(queries: nil, projected: nil, targetCount: 0,
                          reason: "hidden states \(describe(hidden.shape)) are not [T, H]; no masks")
    }
    if let bad = rows.first(where: { $0 < 0 || $0 >= hidden.dim(0) }) {
        return SegQueries(queries: nil, projected: nil, targetCount: 0,
                          reason: "SEG hidden row \(bad) is outside the \(hidden.dim(0)) hidden states (a SEG token without a preceding state); no masks")
    }
    let K = rows.count / per
    let h = fcs(hidden.indexSelect(axis: 0, rows))                          // [K*L*N, C]
    let q = fusion(h.reshape([K, L, N, h.dim(1)]))
    return SegQueries(queries: q, projected: h, targetCount: K, reason: nil)
}

// MARK: - post-processing

/// `postprocess_masks`: low-res logits [K, 1, s, s] -> bilinear to t x t with t = max(h', w') (the CLIP
/// input size after ResizeLongestSide) -> crop [:h', :w'] -> bilinear to the original (H, W).
/// All resizes are bilinear, align_corners = False, no antialias. Returns [K, 1, H, W].
public func postprocessMasks(_ low: Tensor, inputSize: (height: Int, width: Int),
                             originalSize: (height: Int, width: Int)) -> Tensor {
    precondition(low.rank == 4, "postprocessMasks: logits \(describe(low.shape)) must be [K, 1, s, s]")
    precondition(inputSize.height > 0 && inputSize.width > 0 && originalSize.height > 0 && originalSize.width > 0,
                 "postprocessMasks: sizes must be positive")
    let t = max(inputSize.height, inputSize.width)
    let full = resizeBilinear(low, height: t, width: t)
    let crop = full.slice(axis: 2, 0, inputSize.height).slice(axis: 3, 0, inputSize.width)
    return resizeBilinear(crop, height: originalSize.height, width: originalSize.width)
}

/// The released `mask_score` of each mask (returned, never used in metrics): the mean of sigmoid(logit)
/// over the pixels with logit > 0, i.e. sum(sigmoid(x) [x > 0]) / (count(x > 0) + 1e-6). logits [K, ...] -> K values.
public func maskScores(_ logits: Tensor) -> [Float] {
    guard logits.rank >= 1, logits.dim(0) > 0 else { return [] }
    let K = logits.dim(0), n = logits.count / K
    let x = logits.contiguousData()
    return (0..<K).map { k in
        var s = 0.0, c = 0.0
        for i in 0..<n {
            let v = Double(x.ptr[k * n + i])
            if v > 0 { s += 1 / (1 + Foundation.exp(-v)); c += 1 }
        }
        return Float(s / (c + 1e-6))
    }
}

// MARK: - everything on the decoder side

/// The masks of one question.
public struct MaskPrediction {
    /// [K, H, W] logits at the original size (mask = logit > 0); nil when K == 0 or the question was rejected.
    public var logits: Tensor?
    /// [K, 1, 4g, 4g] low-resolution logits.
    public var lowRes: Tensor?
    /// Per-level mask logits (see MaskDecoderOutput).
    public var levels: [Tensor]
    public var targetCount: Int
    /// Why there are no masks although the question has SEG tokens.
    public var reason: String?
}

/// The decoder-side modules of PixelLM for one config, named as in the released checkpoint without the
/// leading "model." (use `namedTensors(prefix: "model")` / `load(_:prefix: "model")`).
/// `token_fusion.*` exists only with token_fusion = "learned".
public final class PixelDecoderSide: Module {
    public let promptEncoder: PromptEncoder
    public let maskDecoder: MaskDecoderMultiScale
    public let imageFeatureNeck: ImageFeatureNeck
    public let textHiddenFCs: TextHiddenFCs
    public let tokenFusion: TokenFusion
    public let scales: Int

    public init(config: PixelLMConfig, rng: inout RNG) {
        promptEncoder = PromptEncoder(config: config, rng: &rng)
        maskDecoder = MaskDecoderMultiScale(config: config, rng: &rng)
        imageFeatureNeck = ImageFeatureNeck(hidden: config.hiddenSize, dim: config.decoderConfig.promptEmbedDim, rng: &rng)
        textHiddenFCs = TextHiddenFCs(hidden: config.hiddenSize, outDim: config.outDim, rng: &rng)
        tokenFusion = TokenFusion(config: config, rng: &rng)
        scales = config.imageFeatureScaleNum
    }

    public func namedTensors() -> [(String, Tensor)] {
        gather([("mask_decoder", maskDecoder), ("prompt_encoder", promptEncoder), ("image_feature_neck", imageFeatureNeck),
                ("text_hidden_fcs", textHiddenFCs), ("token_fusion", tokenFusion)])
    }

    /// Trainable parameters (everything but the PE buffers). The released training freezes
    /// image_feature_neck and prompt_encoder at their random init (spec section 4); that is the caller's choice.
    public func parameters(prefix: String = "") -> [(String, Tensor)] {
        namedTensors(prefix: prefix).filter { !PositionEmbeddingRandom.isBuffer($0.0) }
    }

    /// Gathers the queries of one question (see gatherSegQueries).
    public func queries(hidden: Tensor, rows: [Int]) -> SegQueries {
        gatherSegQueries(hidden: hidden, rows: rows, fcs: textHiddenFCs, fusion: tokenFusion, scales: scales)
    }

    /// Image features -> E [L, C, g, g]: `features` are the out_mm_projector outputs [L, g*g, H].
    public func imageEmbeddings(_ features: Tensor) -> Tensor { imageFeatureNeck(ImageFeatureNeck.grid(features)) }

    /// Decodes K >= 1 fused queries [K, L, C] against E [L, C, g, g].
    public func decode(embeddings: Tensor, queries: Tensor) -> MaskDecoderOutput {
        maskDecoder.decode(embeddings: embeddings, queries: queries, promptEncoder: promptEncoder)
    }

    /// Training with activation checkpointing: the mask decoder keeps only E and the queries in forward and is
    /// recomputed in backward one target at a time (targets do not interact in it), so backward holds one target's
    /// activations at the finest level (64 x 64 x 256 per tensor at 448 px) instead of every target's.
    public var gradientCheckpointing = false

    /// `decode(...).lowRes` (what training's losses read), checkpointed per target when `gradientCheckpointing` is on
    /// and autograd records.
    public func decodeLowRes(embeddings: Tensor, queries: Tensor) -> Tensor {
        guard gradientCheckpointing && Autograd.isEnabled else { return decode(embeddings: embeddings, queries: queries).lowRes }
        let params = maskDecoder.namedTensors().map(\.1) + promptEncoder.namedTensors().map(\.1)
        // a target's row is decoded exactly as in the batch (K is only a batch dimension here)
        let run: (Tensor, [Tensor]) -> Tensor = { q, e in self.decode(embeddings: e[0], queries: q).lowRes }
        return Autograd.checkpointRows(queries, shared: [embeddings], params: params, run, row: { _, q, e in run(q, e) })
    }

    /// One question end to end: hidden states and SEG rows -> masks at the original size.
    /// `embeddings` from `imageEmbeddings` (compute once per image, share across its questions).
    public func predict(embeddings: Tensor, hidden: Tensor, rows: [Int], inputSize: (height: Int, width: Int),
                        originalSize: (height: Int, width: Int)) -> MaskPrediction {
        let sq = queries(hidden: hidden, rows: rows)
        guard let q = sq.queries else {
            return MaskPrediction(logits: nil, lowRes: nil, levels: [], targetCount: 0, reason: sq.reason)
        }
        let out = decode(embeddings: embeddings, queries: q)
        let post = postprocessMasks(out.lowRes, inputSize: inputSize, originalSize: originalSize)
        return MaskPrediction(logits: post.squeeze(1), lowRes: out.lowRes, levels: out.levels,
                              targetCount: sq.targetCount, reason: nil)
    }
}
