import Foundation
import PixelTensor

// SAM's prompt encoder as PixelLM builds it (spec section 2), and the random-Fourier position encoding
// that the mask decoder also uses (`mask_decoder.pe1`). Names are relative to `model.prompt_encoder`.
//
// PixelLM uses only two pieces: `pe_layer` (the dense PE of the g x g grid) and `no_mask_embed` (the dense
// prompt, a constant per channel). The point embeddings, `not_a_point_embed` and `mask_downscaling` are
// never run but are part of the checkpoint, so they exist here for strict loading.

/// Random-Fourier position encoding: a Gaussian buffer G [2, F] (saved in the checkpoint, never trained).
/// For a grid of h x w cells, u = 2 ((j + 0.5) / w, (i + 0.5) / h) - 1 and pe = cat(sin z, cos z) with
/// z = 2 pi u G, i.e. 2F channels.
public final class PositionEmbeddingRandom: Module {
    /// The persistent buffer's name (relative to this module).
    public static let bufferName = "positional_encoding_gaussian_matrix"
    /// G [2, F].
    public var gaussian: Tensor

    /// G = scale * N(0, 1) as SAM initialises it (scale <= 0 means 1).
    public init(numFeatures: Int, scale: Float = 1, rng: inout RNG) {
        gaussian = Tensor.randn([2, numFeatures], std: scale > 0 ? scale : 1, rng: &rng)
    }

    public func namedTensors() -> [(String, Tensor)] { [(Self.bufferName, gaussian)] }

    /// Whether a (possibly prefixed) tensor name is one of these buffers.
    public static func isBuffer(_ name: String) -> Bool { name == bufferName || name.hasSuffix("." + bufferName) }

    /// The encoding of every grid cell in raster order: [h * w, 2F] (the layout the two-way transformer
    /// attends over).
    public func tokens(height h: Int, width w: Int) -> Tensor {
        var coords = [Float](repeating: 0, count: h * w * 2)
        for i in 0..<h {
            for j in 0..<w {
                // as PyTorch computes it in fp32: (cumsum - 0.5) / size, then 2 x - 1
                let x = (Float(j + 1) - 0.5) / Float(w), y = (Float(i + 1) - 0.5) / Float(h)
                coords[(i * w + j) * 2] = 2 * x - 1
                coords[(i * w + j) * 2 + 1] = 2 * y - 1
            }
        }
        let u = Tensor(coords, shape: [h * w, 2])
        let z = u.matmul(gaussian) * (2 * Float.pi)
        return concat([z.sin(), z.cos()], axis: 1)
    }

    /// The dense encoding [1, 2F, h, w] (SAM's `pe_layer((h, w)).unsqueeze(0)`).
    public func dense(height h: Int, width w: Int) -> Tensor {
        tokens(height: h, width: w).transpose(0, 1).reshape([1, gaussian.dim(1) * 2, h, w])
    }
}

/// `model.prompt_encoder`: SAM `PromptEncoder(embed_dim C, image_embedding_size (g, g), mask_in_chans)`.
public final class PromptEncoder: Module {
    public let embedDim: Int
    /// The image-embedding grid g (resize_vision_tower_size / patch_size).
    public let grid: Int
    public let peLayer: PositionEmbeddingRandom
    /// Four [1, C] point/box-corner embeddings (unused by PixelLM).
    public let pointEmbeddings: [Embedding]
    public let notAPointEmbed: Embedding
    /// Conv2d(1, m/4, 2, s2), LayerNorm2d, GELU, Conv2d(m/4, m, 2, s2), LayerNorm2d, GELU, Conv2d(m, C, 1)
    /// (unused by PixelLM; indices 0, 1, 3, 4, 6 carry weights).
    public let maskDownscaling0: Conv2d, maskDownscaling1: LayerNorm2d
    public let maskDownscaling3: Conv2d, maskDownscaling4: LayerNorm2d
    public let maskDownscaling6: Conv2d
    public let noMaskEmbed: Embedding

    public init(embedDim C: Int, grid: Int, maskInChans m: Int, rng: inout RNG) {
        precondition(C % 2 == 0 && m % 4 == 0 && m > 0, "PromptEncoder: embed dim \(C) must be even, mask_in_chans \(m) a multiple of 4")
        embedDim = C
        self.grid = grid
        peLayer = PositionEmbeddingRandom(numFeatures: C / 2, rng: &rng)
        pointEmbeddings = (0..<4).map { _ in Embedding(1, C, init: .torchDefault, rng: &rng) }
        notAPointEmbed = Embedding(1, C, init: .torchDefault, rng: &rng)
        maskDownscaling0 = Conv2d(1, m / 4, kernel: 2, stride: 2, init: .torchDefault, rng: &rng)
        maskDownscaling1 = LayerNorm2d(m / 4)
        maskDownscaling3 = Conv2d(m / 4, m, kernel: 2, stride: 2, init: .torchDefault, rng: &rng)
        maskDownscaling4 = LayerNorm2d(m)
        maskDownscaling6 = Conv2d(m, C, kernel: 1, init: .torchDefault, rng: &rng)
        noMaskEmbed = Embedding(1, C, init: .torchDefault, rng: &rng)
    }

    public convenience init(config: PixelLMConfig, rng: inout RNG) {
        self.init(embedDim: config.decoderConfig.promptEmbedDim, grid: config.visionGrid,
                  maskInChans: config.decoderConfig.maskInChans, rng: &rng)
    }

    public func namedTensors() -> [(String, Tensor)] {
        var out = gather([("pe_layer", peLayer)])
        for (i, e) in pointEmbeddings.enumerated() { out += e.namedTensors(prefix: "point_embeddings.\(i)") }
        out += gather([("not_a_point_embed", notAPointEmbed),
                       ("mask_downscaling.0", maskDownscaling0), ("mask_downscaling.1", maskDownscaling1),
                       ("mask_downscaling.3", maskDownscaling3), ("mask_downscaling.4", maskDownscaling4),
                       ("mask_downscaling.6", maskDownscaling6), ("no_mask_embed", noMaskEmbed)])
        return out
    }

    /// The level-0 image PE as tokens [1, g*g, C] (`get_dense_pe()` flattened to raster order).
    public func densePETokens() -> Tensor { peLayer.tokens(height: grid, width: grid).unsqueeze(0) }

    /// `get_dense_pe()`: [1, C, g, g].
    public func densePE() -> Tensor { peLayer.dense(height: grid, width: grid) }

    /// The dense prompt without a mask: `no_mask_embed` as [1, C, 1, 1] (broadcast it over K and the grid).
    public func noMaskDense() -> Tensor { noMaskEmbed.weight.reshape([1, embedDim, 1, 1]) }
}

/// The trainable parameters of a decoder-side module, as torch's `parameters()` counts them: every named
/// tensor except the position-encoding buffers.
public func decoderParameters(_ m: Module) -> [(String, Tensor)] {
    m.namedTensors().filter { !PositionEmbeddingRandom.isBuffer($0.0) }
}
