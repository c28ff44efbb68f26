import Foundation
import PixelTensor

// PixelLM's lightweight pixel decoder (`model.mask_decoder`, SAM's two-way transformer made multi-scale),
// spec section 2. Letters: K targets, C = prompt_embed_dim (256 released), g = image grid (32 released),
// T = 2 + num_multimask_outputs + 1 decoder tokens (iou token, 4 mask tokens, the text query).
//
// The released code computes the IoU head and the hypernetwork MLPs 1..3 but only ever uses mask slot 0;
// they exist here (strict checkpoint loading) and are not run, which changes no output or gradient.

// MARK: - pieces

/// SAM's `Attention`: q/k/v project C -> C / downsample, heads split the internal dim, softmax scaling
/// 1 / sqrt(head dim), `out_proj` maps back to C.
public final class SAMAttention: Module {
    public let qProj: Linear, kProj: Linear, vProj: Linear, outProj: Linear
    public let heads: Int
    public let internalDim: Int

    public init(dim: Int, heads: Int, downsample: Int = 1, rng: inout RNG) {
        internalDim = dim / downsample
        precondition(internalDim % heads == 0, "SAMAttention: internal dim \(internalDim) is not a multiple of \(heads) heads")
        self.heads = heads
        qProj = Linear(dim, internalDim, init: .torchDefault, rng: &rng)
        kProj = Linear(dim, internalDim, init: .torchDefault, rng: &rng)
        vProj = Linear(dim, internalDim, init: .torchDefault, rng: &rng)
        outProj = Linear(internalDim, dim, init: .torchDefault, rng: &rng)
    }

    public func namedTensors() -> [(String, Tensor)] {
        gather([("q_proj", qProj), ("k_proj", kProj), ("v_proj", vProj), ("out_proj", outProj)])
    }

    /// q [B, Nq, C], k [B, Nk, C], v [B, Nk, C] -> [B, Nq, C].
    public func callAsFunction(q: Tensor, k: Tensor, v: Tensor) -> Tensor {
        let d = internalDim / heads
        func split(_ x: Tensor) -> Tensor { x.reshape([x.dim(0), x.dim(1), heads, d]).transpose(1, 2) }
        let o = scaledDotProductAttention(split(qProj(q)), split(kProj(k)), split(vProj(v)))   // [B, h, Nq, d]
        return outProj(o.transpose(1, 2).reshape([q.dim(0), q.dim(1), internalDim]))
    }
}

/// SAM's `MLPBlock` in the two-way transformer: lin2(ReLU(lin1(x))).
public final class SAMMLPBlock: Module {
    public let lin1: Linear, lin2: Linear

    public init(dim: Int, hidden: Int, rng: inout RNG) {
        lin1 = Linear(dim, hidden, init: .torchDefault, rng: &rng)
        lin2 = Linear(hidden, dim, init: .torchDefault, rng: &rng)
    }

    public func namedTensors() -> [(String, Tensor)] { gather([("lin1", lin1), ("lin2", lin2)]) }
    public func callAsFunction(_ x: Tensor) -> Tensor { lin2(lin1(x).relu()) }
}

/// SAM's `MLP` (hypernetwork MLPs, IoU head): `layers.i` Linear layers with ReLU between them.
public final class SAMMLP: Module {
    public let layers: [Linear]

    public init(input: Int, hidden: Int, output: Int, numLayers: Int, rng: inout RNG) {
        precondition(numLayers >= 1)
        let ins = [input] + Array(repeating: hidden, count: numLayers - 1)
        let outs = Array(repeating: hidden, count: numLayers - 1) + [output]
        layers = zip(ins, outs).map { Linear($0.0, $0.1, init: .torchDefault, rng: &rng) }
    }

    public func namedTensors() -> [(String, Tensor)] {
        layers.enumerated().flatMap { $0.element.namedTensors(prefix: "layers.\($0.offset)") }
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = x
        for (i, l) in layers.enumerated() {
            h = l(h)
            if i < layers.count - 1 { h = h.relu() }
        }
        return h
    }
}

/// One block of the two-way transformer: token self-attention, token -> image cross-attention, token MLP,
/// image -> token cross-attention, each followed by a residual and a LayerNorm. The first block
/// (`skipFirstLayerPE`) runs self-attention without the PE and, as SAM does, without the residual.
public final class TwoWayAttentionBlock: Module {
    public let selfAttn: SAMAttention, norm1: LayerNorm
    public let crossAttnTokenToImage: SAMAttention, norm2: LayerNorm
    public let mlp: SAMMLPBlock, norm3: LayerNorm
    public let norm4: LayerNorm, crossAttnImageToToken: SAMAttention
    public let skipFirstLayerPE: Bool

    public init(dim: Int, heads: Int, mlpDim: Int, downsample: Int, skipFirstLayerPE: Bool, rng: inout RNG) {
        selfAttn = SAMAttention(dim: dim, heads: heads, rng: &rng)
        norm1 = LayerNorm(dim)
        crossAttnTokenToImage = SAMAttention(dim: dim, heads: heads, downsample: downsample, rng: &rng)
        norm2 = LayerNorm(dim)
        mlp = SAMMLPBlock(dim: dim, hidden: mlpDim, rng: &rng)
        norm3 = LayerNorm(dim)
        norm4 = LayerNorm(dim)
        crossAttnImageToToken = SAMAttention(dim: dim, heads: heads, downsample: downsample, rng: &rng)
        self.skipFirstLayerPE = skipFirstLayerPE
    }

    public func namedTensors() -> [(String, Tensor)] {
        gather([("self_attn", selfAttn), ("norm1", norm1), ("cross_attn_token_to_image", crossAttnTokenToImage),
                ("norm2", norm2), ("mlp", mlp), ("norm3", norm3), ("norm4", norm4),
                ("cross_attn_image_to_token", crossAttnImageToToken)])
    }

    /// tokens [B, T, C], image [B, N, C], tokenPE [B, T, C], imagePE [B or 1, N, C] -> (tokens, image).
    public func callAsFunction(tokens: Tensor, image: Tensor, tokenPE: Tensor, imagePE: Tensor) -> (Tensor, Tensor) {
        var tok: Tensor
        if skipFirstLayerPE {
            tok = selfAttn(q: tokens, k: tokens, v: tokens)
        } else {
            let q = tokens + tokenPE
            tok = tokens + selfAttn(q: q, k: q, v: tokens)
        }
        tok = norm1(tok)
        let imgPos = image + imagePE
        tok = norm2(tok + crossAttnTokenToImage(q: tok + tokenPE, k: imgPos, v: image))
        tok = norm3(tok + mlp(tok))
        let img = norm4(image + crossAttnImageToToken(q: imgPos, k: tok + tokenPE, v: tok))
        return (tok, img)
    }
}

/// SAM's `TwoWayTransformer`: `depth` blocks and a final token -> image attention + LayerNorm.
public final class TwoWayTransformer: Module {
    public let layers: [TwoWayAttentionBlock]
    public let finalAttnTokenToImage: SAMAttention
    public let normFinalAttn: LayerNorm

    public init(depth: Int, dim: Int, heads: Int, mlpDim: Int, downsample: Int = 2, rng: inout RNG) {
        layers = (0..<depth).map {
            TwoWayAttentionBlock(dim: dim, heads: heads, mlpDim: mlpDim, downsample: downsample, skipFirstLayerPE: $0 == 0, rng: &rng)
        }
        finalAttnTokenToImage = SAMAttention(dim: dim, heads: heads, downsample: downsample, rng: &rng)
        normFinalAttn = LayerNorm(dim)
    }

    public func namedTensors() -> [(String, Tensor)] {
        layers.enumerated().flatMap { $0.element.namedTensors(prefix: "layers.\($0.offset)") }
            + gather([("final_attn_token_to_image", finalAttnTokenToImage), ("norm_final_attn", normFinalAttn)])
    }

    /// image [B, C, h, w], imagePE [1, h*w, C] (raster order, broadcast over B), tokens [B, T, C] (also
    /// their PE) -> (tokens [B, T, C], image tokens [B, h*w, C]).
    public func callAsFunction(image: Tensor, imagePE: Tensor, tokens: Tensor) -> (Tensor, Tensor) {
        var img = image.flatten(2).transpose(1, 2)
        var tok = tokens
        for layer in layers {
            (tok, img) = layer(tokens: tok, image: img, tokenPE: tokens, imagePE: imagePE)
        }
        tok = normFinalAttn(tok + finalAttnTokenToImage(q: tok + tokens, k: img + imagePE, v: img))
        return (tok, img)
    }
}

// MARK: - the multi-scale decoder

/// Per-level results of one decoding.
public struct MaskDecoderOutput {
    /// The low-resolution logits [K, 1, 4g, 4g] (the sum of 0.5 x each level resized to 4g; with one level,
    /// that level's [K, 1, 2g, 2g] mask as is).
    public let lowRes: Tensor
    /// The mask-slot-0 logits of each level: level 0 [K, 1, 2g, 2g], level 1 [K, 1, 4g, 4g].
    public let levels: [Tensor]
}

/// `model.mask_decoder`: `MaskDecoderMultiScale` with one TwoWayTransformer per feature level, shared
/// iou / mask tokens, `output_upscaling`, `upsample_2x`, `pe1`, 4 hypernetwork MLPs, the IoU head and
/// `level_embed`.
public final class MaskDecoderMultiScale: Module {
    public let dim: Int
    public let levelCount: Int
    public let numMaskTokens: Int
    public let transformer: [TwoWayTransformer]
    public let iouToken: Embedding
    public let maskTokens: Embedding
    /// ConvTranspose2d(C, C/8, 2, s2), LayerNorm2d(C/8), GELU.
    public let outputUpscaling0: ConvTranspose2d, outputUpscaling1: LayerNorm2d
    /// ConvTranspose2d(C, C, 2, s2), LayerNorm2d(C), GELU.
    public let upsample2x0: ConvTranspose2d, upsample2x1: LayerNorm2d
    public let pe1: PositionEmbeddingRandom
    public let outputHypernetworksMLPs: [SAMMLP]
    public let iouPredictionHead: SAMMLP
    public let levelEmbed: Embedding

    public init(dim C: Int, depth: Int, heads: Int, mlpDim: Int, levels: Int, numMultimaskOutputs: Int = 3,
                iouHeadDepth: Int = 3, iouHeadHiddenDim: Int = 256, attentionDownsampleRate: Int = 2, rng: inout RNG) {
        precondition(levels == 1 || levels == 2, "MaskDecoderMultiScale: \(levels) feature levels (1 or 2 supported)")
        precondition(C % 8 == 0, "MaskDecoderMultiScale: dim \(C) must be a multiple of 8")
        dim = C
        levelCount = levels
        numMaskTokens = numMultimaskOutputs + 1
        transformer = (0..<levels).map { _ in
            TwoWayTransformer(depth: depth, dim: C, heads: heads, mlpDim: mlpDim, downsample: attentionDownsampleRate, rng: &rng)
        }
        iouToken = Embedding(1, C, init: .torchDefault, rng: &rng)
        maskTokens = Embedding(numMaskTokens, C, init: .torchDefault, rng: &rng)
        outputUpscaling0 = ConvTranspose2d(C, C / 8, kernel: 2, stride: 2, init: .torchDefault, rng: &rng)
        outputUpscaling1 = LayerNorm2d(C / 8)
        upsample2x0 = ConvTranspose2d(C, C, kernel: 2, stride: 2, init: .torchDefault, rng: &rng)
        upsample2x1 = LayerNorm2d(C)
        pe1 = PositionEmbeddingRandom(numFeatures: C / 2, rng: &rng)
        var mlps: [SAMMLP] = []
        for _ in 0..<numMaskTokens { mlps.append(SAMMLP(input: C, hidden: C, output: C / 8, numLayers: 3, rng: &rng)) }
        outputHypernetworksMLPs = mlps
        iouPredictionHead = SAMMLP(input: C, hidden: iouHeadHiddenDim, output: numMaskTokens, numLayers: iouHeadDepth, rng: &rng)
        levelEmbed = Embedding(levels, C, init: .torchDefault, rng: &rng)
    }

    public convenience init(config: PixelLMConfig, rng: inout RNG) {
        let d = config.decoderConfig
        self.init(dim: d.promptEmbedDim, depth: d.transformerDepth, heads: d.numHeads, mlpDim: d.mlpDim,
                  levels: config.imageFeatureScaleNum, numMultimaskOutputs: d.numMultimaskOutputs,
                  iouHeadDepth: d.iouHeadDepth, iouHeadHiddenDim: d.iouHeadHiddenDim,
                  attentionDownsampleRate: d.attentionDownsampleRate, rng: &rng)
    }

    public func namedTensors() -> [(String, Tensor)] {
        var out: [(String, Tensor)] = []
        for (i, t) in transformer.enumerated() { out += t.namedTensors(prefix: "transformer.\(i)") }
        out += gather([("iou_token", iouToken), ("mask_tokens", maskTokens),
                       ("output_upscaling.0", outputUpscaling0), ("output_upscaling.1", outputUpscaling1),
                       ("upsample_2x.0", upsample2x0), ("upsample_2x.1", upsample2x1), ("pe1", pe1)])
        for (i, m) in outputHypernetworksMLPs.enumerated() { out += m.namedTensors(prefix: "output_hypernetworks_mlps.\(i)") }
        out += gather([("iou_prediction_head", iouPredictionHead), ("level_embed", levelEmbed)])
        return out
    }

    /// One level for K targets (`predict_masks` with mask slot 0).
    /// - embedding: the neck output of this level, [1, C, g, g]
    /// - query: the fused text query of this level, [K, 1, C]
    /// - previous: level > 0 only: the previous level's mask [K, 1, 2g, 2g]
    /// Returns the mask logits [K, 1, 2g, 2g] (level 0) or [K, 1, 4g, 4g] (level 1).
    public func predictLevel(_ level: Int, embedding: Tensor, query: Tensor, previous: Tensor?,
                             promptEncoder: PromptEncoder) -> Tensor {
        let K = query.dim(0), C = dim
        precondition(embedding.rank == 4 && embedding.dim(0) == 1 && embedding.dim(1) == C,
                     "predictLevel: embedding \(describe(embedding.shape)) must be [1, \(C), g, g]")
        precondition(query.shape == [K, 1, C], "predictLevel: query \(describe(query.shape)) must be [K, 1, \(C)]")
        // tokens: iou token, mask tokens, the query; plus this level's embedding (also the token PE)
        let outTokens = concat([iouToken.weight, maskTokens.weight], axis: 0).unsqueeze(0).expand([K, numMaskTokens + 1, C])
        let tokens = concat([outTokens, query], axis: 1) + levelEmbed.weight.slice(axis: 0, level, level + 1).unsqueeze(0)
        let dense = promptEncoder.noMaskDense()                                    // [1, C, 1, 1]
        var src: Tensor, pe: Tensor
        if level == 0 {
            src = (embedding + dense).expand([K, C, embedding.dim(2), embedding.dim(3)])
            pe = promptEncoder.densePETokens()
        } else {
            guard let previous else { preconditionFailure("predictLevel: level \(level) needs the previous level's mask") }
            let up = upsample2x1(upsample2x0(embedding)).gelu()                   // [1, C, 2g, 2g]
            let h = up.dim(2), w = up.dim(3)
            precondition(previous.shape == [K, 1, h, w],
                         "predictLevel: previous mask \(describe(previous.shape)) must be [\(K), 1, \(h), \(w)]")
            let gate = previous.sigmoid() + 1                                       // [K, 1, h, w]
            let g = embedding.dim(2)
            let denseUp = resizeBilinear(dense.expand([1, C, g, embedding.dim(3)]), height: h, width: w)
            src = up * gate + denseUp
            pe = pe1.tokens(height: h, width: w).unsqueeze(0)
        }
        let h = src.dim(2), w = src.dim(3)
        let (hs, keys) = transformer[level](image: src, imagePE: pe, tokens: tokens)
        let grid = keys.transpose(1, 2).reshape([K, C, h, w])
        let up = outputUpscaling1(outputUpscaling0(grid)).gelu()                    // [K, C/8, 2h, 2w]
        let w0 = outputHypernetworksMLPs[0](hs.slice(axis: 1, 1, 2))                // [K, 1, C/8]
        return w0.matmul(up.reshape([K, C / 8, 4 * h * w])).reshape([K, 1, 2 * h, 2 * w])
    }

    /// The multi-level loop for one image: `embeddings` [L, C, g, g] (neck output, level 0 = deep) and the
    /// fused queries [K, L, C] (K >= 1) -> low-resolution logits [K, 1, 4g, 4g] (one level: [K, 1, 2g, 2g]).
    public func decode(embeddings: Tensor, queries: Tensor, promptEncoder: PromptEncoder) -> MaskDecoderOutput {
        let L = levelCount, K = queries.dim(0)
        precondition(embeddings.rank == 4 && embeddings.dim(0) == L && embeddings.dim(1) == dim,
                     "decode: embeddings \(describe(embeddings.shape)) must be [\(L), \(dim), g, g]")
        precondition(queries.rank == 3 && K >= 1 && queries.dim(1) == L && queries.dim(2) == dim,
                     "decode: queries \(describe(queries.shape)) must be [K >= 1, \(L), \(dim)]")
        let g = embeddings.dim(2)
        var levels: [Tensor] = []
        var low: Tensor? = nil
        for l in 0..<L {
            let m = predictLevel(l, embedding: embeddings.slice(axis: 0, l, l + 1), query: queries.slice(axis: 1, l, l + 1),
                                 previous: levels.last, promptEncoder: promptEncoder)
            levels.append(m)
            if L > 1 {
                // multiscale_scalar = 1/L (a fixed constant in the released code)
                let term = resizeBilinear(m, height: 4 * g, width: 4 * g) * (1 / Float(L))
                low = low.map { $0 + term } ?? term
            }
        }
        return MaskDecoderOutput(lowRes: low ?? levels[0], levels: levels)
    }
}
