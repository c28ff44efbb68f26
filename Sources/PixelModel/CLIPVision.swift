import Foundation
import PixelTensor

// The CLIP vision tower as PixelLM runs it (spec 1.3-1.5): HF CLIPVisionModel weights (names under
// "vision_model."), run at `resize_vision_tower_size` with a resized position table and a key mask for
// the zero padding, returning hidden states -2 ("deep") and -11 ("mid") without CLS and without the
// post-layernorm. Plus the projector helpers: 2x2 pooling of the deep grid for the LLM, the LLM-side
// image mask, and the Linear-GELU-Linear projectors.

/// Additive key masks (HF convention): 0 for a key that may be attended, finfo(float32).min for a
/// masked one, added to the attention scores of every query.
public enum KeyMask {
    /// finfo(float32).min = -3.4028235e38.
    public static let masked: Float = -Float.greatestFiniteMagnitude

    /// validity [B, T] of 1 (attend) / 0 (masked) -> additive [B, 1, 1, T]; nil when nothing is masked.
    public static func additive(_ validity: Tensor) -> Tensor? {
        guard validity.rank == 2 else {
            shapeFailure(ShapeError("KeyMask.additive", "validity \(describe(validity.shape)) is not [B, T]"))
        }
        let v = validity.toArray()
        guard v.contains(where: { $0 == 0 }) else { return nil }
        return Tensor(v.map { $0 == 0 ? masked : 0 }, shape: [validity.dim(0), 1, 1, validity.dim(1)])
    }
}

/// How the checkpoint's position table ((g0*g0 + 1) rows: CLS, then the g0 x g0 patches in raster order)
/// becomes the run table for a g x g grid.
public enum PositionTableResize: String, Sendable, CaseIterable {
    /// The released PixelLM (clip_encoder.py, spec 1.4): the *first* g0*g0 rows (the CLS row and every
    /// patch row but the last) are read as the g0 x g0 grid and resized bilinearly to g x g, and the old
    /// *last* patch row is appended as the CLS row: token 0 (CLS) gets the resized grid's (0, 0), patch
    /// k - 1 gets resized entry k, and the last patch gets the old last patch row. The released weights
    /// were trained with this off-by-one.
    case reference
    /// The intended resize: the CLS row stays row 0, rows 1... (the patches) are resized.
    case corrected
}

/// Creates layers whose weights are drawn with an `Init`, or left uninitialised (`nil`) for a model that
/// is about to be filled from a checkpoint (no random draws and no memory touched: a 7B skeleton costs
/// nothing until it is loaded).
enum WeightSkeleton {
    static func linear(_ inF: Int, _ outF: Int, bias: Bool, _ initKind: Init?, _ rng: inout RNG) -> Linear {
        if let initKind { return Linear(inF, outF, bias: bias, init: initKind, rng: &rng) }
        let l = Linear(0, 0, bias: false, init: .normal(std: 0), rng: &rng)
        l.weight = Tensor(empty: [outF, inF])
        l.bias = bias ? Tensor(empty: [outF]) : nil
        return l
    }

    static func embedding(_ num: Int, _ dim: Int, _ initKind: Init?, _ rng: inout RNG) -> Embedding {
        if let initKind { return Embedding(num, dim, init: initKind, rng: &rng) }
        let e = Embedding(0, dim, init: .normal(std: 0), rng: &rng)
        e.weight = Tensor(empty: [num, dim])
        return e
    }

    static func tensor(_ shape: [Int], std: Float, _ initKind: Init?, _ rng: inout RNG) -> Tensor {
        guard initKind != nil else { return Tensor(empty: shape) }
        return Tensor.randn(shape, std: std, rng: &rng)
    }
}

// MARK: - embeddings

/// CLIPVisionEmbeddings: patch conv (no bias), class embedding, position table. The position table is
/// stored at the checkpoint size ((imageSize / patch)^2 + 1 rows, as in the checkpoint) and resized to the
/// run grid on every forward with differentiable ops (cheap next to the encoder; always consistent with
/// the stored weights, so `Module.load` needs no hook).
public final class CLIPVisionEmbeddings: Module {
    public let patchEmbedding: Conv2d
    /// [D]
    public var classEmbedding: Tensor
    /// [g0 * g0 + 1, D], the checkpoint's table.
    public var positionEmbedding: Tensor
    public let dim: Int, patchSize: Int
    /// Checkpoint grid g0 (imageSize / patch) and run grid g (runSize / patch).
    public let checkpointGrid: Int, runGrid: Int
    public var positionResize: PositionTableResize

    public init(config: CLIPVisionConfig, runSize: Int, positionResize: PositionTableResize = .reference,
                init initKind: Init?, rng: inout RNG) {
        dim = config.hiddenSize
        patchSize = config.patchSize
        checkpointGrid = config.imageSize / config.patchSize
        runGrid = runSize / config.patchSize
        self.positionResize = positionResize
        let p = config.patchSize
        if let initKind {
            patchEmbedding = Conv2d(config.numChannels, dim, kernel: p, stride: p, bias: false, init: initKind, rng: &rng)
        } else {
            patchEmbedding = Conv2d(0, 0, kernel: p, stride: p, bias: false, init: .normal(std: 0), rng: &rng)
            patchEmbedding.weight = Tensor(empty: [dim, config.numChannels, p, p])
        }
        classEmbedding = WeightSkeleton.tensor([dim], std: config.initializerRange, initKind, &rng)
        positionEmbedding = WeightSkeleton.tensor([checkpointGrid * checkpointGrid + 1, dim], std: config.initializerRange,
                                                  initKind, &rng)
    }

    public func namedTensors() -> [(String, Tensor)] {
        [("class_embedding", classEmbedding)] + patchEmbedding.namedTensors(prefix: "patch_embedding")
            + [("position_embedding.weight", positionEmbedding)]
    }

    /// The run table [g * g + 1, D] (row t for token t; t = 0 is CLS).
    public func positionTable() -> Tensor {
        Self.resizePositionTable(positionEmbedding, from: checkpointGrid, to: runGrid, mode: positionResize)
    }

    /// Resizes a position table [g0 * g0 + 1, D] to [g * g + 1, D] (bilinear, align_corners=False) as
    /// `mode` says. Equal grids give the table unchanged in both modes (the reference's shuffle is then the
    /// identity).
    public static func resizePositionTable(_ table: Tensor, from g0: Int, to g: Int, mode: PositionTableResize) -> Tensor {
        guard table.rank == 2, table.dim(0) == g0 * g0 + 1 else {
            shapeFailure(ShapeError("resizePositionTable", "table \(describe(table.shape)) is not [\(g0 * g0 + 1), D] for a \(g0)x\(g0) grid"))
        }
        if g == g0 { return table }
        let D = table.dim(1), n0 = g0 * g0
        let gridRows: Tensor, clsRow: Tensor
        switch mode {
        case .reference:
            gridRows = table.slice(axis: 0, 0, n0)
            clsRow = table.slice(axis: 0, n0, n0 + 1)
        case .corrected:
            clsRow = table.slice(axis: 0, 0, 1)
            gridRows = table.slice(axis: 0, 1, n0 + 1)
        }
        let grid = gridRows.transpose(0, 1).reshape([1, D, g0, g0])
        let resized = resizeBilinear(grid, height: g, width: g).reshape([D, g * g]).transpose(0, 1)
        switch mode {
        case .reference: return concat([resized, clsRow], axis: 0)
        case .corrected: return concat([clsRow, resized], axis: 0)
        }
    }

    /// pixels [B, C, S, S] -> [B, 1 + g * g, D] (CLS first, then the patches in raster order).
    public func callAsFunction(_ pixels: Tensor) -> Tensor {
        let S = runGrid * patchSize
        guard pixels.rank == 4, pixels.dim(2) == S, pixels.dim(3) == S else {
            shapeFailure(ShapeError("CLIPVisionEmbeddings", "pixels \(describe(pixels.shape)) are not [B, C, \(S), \(S)] (the run size)"))
        }
        let B = pixels.dim(0), g = runGrid
        let tokens = patchEmbedding(pixels).reshape([B, dim, g * g]).transpose(1, 2)
        let cls = classEmbedding.reshape([1, 1, dim]).expand([B, 1, dim])
        return concat([cls, tokens], axis: 1) + positionTable()
    }
}

// MARK: - encoder

/// CLIPAttention: q/k/v/out projections with bias, scale 1 / sqrt(head dim), an additive key mask.
public final class CLIPAttention: Module {
    public let qProj: Linear, kProj: Linear, vProj: Linear, outProj: Linear
    public let heads: Int, headDim: Int

    public init(config: CLIPVisionConfig, init initKind: Init?, rng: inout RNG) {
        let D = config.hiddenSize
        heads = config.numAttentionHeads
        headDim = D / heads
        qProj = WeightSkeleton.linear(D, D, bias: true, initKind, &rng)
        kProj = WeightSkeleton.linear(D, D, bias: true, initKind, &rng)
        vProj = WeightSkeleton.linear(D, D, bias: true, initKind, &rng)
        outProj = WeightSkeleton.linear(D, D, bias: true, initKind, &rng)
    }

    public func namedTensors() -> [(String, Tensor)] {
        gather([("q_proj", qProj), ("k_proj", kProj), ("v_proj", vProj), ("out_proj", outProj)])
    }

    /// x [B, T, D], mask additive [B, 1, 1, T] or nil -> [B, T, D].
    public func callAsFunction(_ x: Tensor, mask: Tensor?) -> Tensor {
        let B = x.dim(0), T = x.dim(1)
        func heads(_ t: Tensor) -> Tensor { t.reshape([B, T, self.heads, headDim]).transpose(1, 2) }
        let o = scaledDotProductAttention(heads(qProj(x)), heads(kProj(x)), heads(vProj(x)), mask: mask)
        return outProj(o.transpose(1, 2).reshape([B, T, self.heads * headDim]))
    }
}

/// CLIPMLP: fc1 -> activation (quick_gelu for CLIP-L) -> fc2.
public final class CLIPMLP: Module {
    public let fc1: Linear, fc2: Linear
    public let activation: String

    public init(config: CLIPVisionConfig, init initKind: Init?, rng: inout RNG) {
        guard ["quick_gelu", "gelu"].contains(config.hiddenAct) else {
            fatalError("CLIPMLP: hidden_act '\(config.hiddenAct)' is not supported (quick_gelu, gelu)")
        }
        activation = config.hiddenAct
        fc1 = WeightSkeleton.linear(config.hiddenSize, config.intermediateSize, bias: true, initKind, &rng)
        fc2 = WeightSkeleton.linear(config.intermediateSize, config.hiddenSize, bias: true, initKind, &rng)
    }

    public func namedTensors() -> [(String, Tensor)] { gather([("fc1", fc1), ("fc2", fc2)]) }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        let h = fc1(x)
        return fc2(activation == "quick_gelu" ? h.quickGelu() : h.gelu())
    }
}

/// CLIPEncoderLayer: pre-LN attention and MLP blocks with residuals.
public final class CLIPEncoderLayer: Module {
    public let layerNorm1: LayerNorm, selfAttn: CLIPAttention, layerNorm2: LayerNorm, mlp: CLIPMLP

    public init(config: CLIPVisionConfig, init initKind: Init?, rng: inout RNG) {
        layerNorm1 = LayerNorm(config.hiddenSize, eps: config.layerNormEps)
        selfAttn = CLIPAttention(config: config, init: initKind, rng: &rng)
        layerNorm2 = LayerNorm(config.hiddenSize, eps: config.layerNormEps)
        mlp = CLIPMLP(config: config, init: initKind, rng: &rng)
    }

    public func namedTensors() -> [(String, Tensor)] {
        gather([("layer_norm1", layerNorm1), ("self_attn", selfAttn), ("layer_norm2", layerNorm2), ("mlp", mlp)])
    }

    public func callAsFunction(_ x: Tensor, mask: Tensor?) -> Tensor {
        let h = x + selfAttn(layerNorm1(x), mask: mask)
        return h + mlp(layerNorm2(h))
    }
}

/// The two CLIP feature levels PixelLM uses, CLS removed: [B, g * g, D] each.
public struct CLIPVisionFeatures {
    /// hidden_states[mm_vision_select_layer] (-2): level 0, also pooled for the LLM.
    public let deep: Tensor
    /// hidden_states[mm_vision_mid_layer] (-11): level 1.
    public let mid: Tensor
}

// MARK: - the tower

/// HF CLIPVisionModel (names "vision_model.embeddings...", "vision_model.pre_layrnorm...",
/// "vision_model.encoder.layers.N...", "vision_model.post_layernorm..."), run as PixelLM does: the
/// post-layernorm is loaded but never applied, and only the layers up to the deepest selected hidden state
/// run (the last layer's output is never used with select layer -2).
public final class CLIPVisionModel: Module {
    public let config: CLIPVisionConfig
    public let embeddings: CLIPVisionEmbeddings
    public let preLayrnorm: LayerNorm
    public let layers: [CLIPEncoderLayer]
    public let postLayernorm: LayerNorm
    /// Hidden-state selections as in HF (negative counts from the end of the num_layers + 1 states).
    public let selectLayer: Int, midLayer: Int
    /// Run size S (pixels) and grid g = S / patch.
    public let runSize: Int
    public var grid: Int { embeddings.runGrid }
    /// The LLM image tokens pool the grid in llmPool x llmPool cells (PixelLMConfig.mmImagePool).
    public let llmPool: Int
    /// Training: each encoder layer keeps only its input and is recomputed in backward (Autograd.checkpoint).
    public var gradientCheckpointing = false

    public init(vision: CLIPVisionConfig, runSize: Int, selectLayer: Int = -2, midLayer: Int = -11, llmPool: Int = 2,
                positionResize: PositionTableResize = .reference, init initKind: Init?, rng: inout RNG) {
        config = vision
        self.llmPool = llmPool
        self.runSize = runSize
        self.selectLayer = selectLayer
        self.midLayer = midLayer
        precondition(runSize % vision.patchSize == 0, "CLIPVisionModel: run size \(runSize) is not a multiple of patch \(vision.patchSize)")
        embeddings = CLIPVisionEmbeddings(config: vision, runSize: runSize, positionResize: positionResize, init: initKind, rng: &rng)
        preLayrnorm = LayerNorm(vision.hiddenSize, eps: vision.layerNormEps)
        var ls: [CLIPEncoderLayer] = []
        for _ in 0..<vision.numHiddenLayers { ls.append(CLIPEncoderLayer(config: vision, init: initKind, rng: &rng)) }
        layers = ls
        postLayernorm = LayerNorm(vision.hiddenSize, eps: vision.layerNormEps)
        for k in [selectLayer, midLayer] {
            let i = hiddenStateIndex(k)
            precondition(i >= 0 && i <= vision.numHiddenLayers,
                         "CLIPVisionModel: hidden state \(k) does not exist with \(vision.numHiddenLayers) layers")
        }
    }

    /// From a PixelLM config: vision_config, resize_vision_tower_size, mm_vision_select_layer / mid layer.
    /// `init` nil gives a skeleton with uninitialised weights, to be filled by `load` (CLIP always comes
    /// from a checkpoint).
    public convenience init(config: PixelLMConfig, positionResize: PositionTableResize = .reference, init initKind: Init?,
                            rng: inout RNG) {
        self.init(vision: config.visionConfig, runSize: config.resizeVisionTowerSize, selectLayer: config.mmVisionSelectLayer,
                  midLayer: config.mmVisionMidLayer, llmPool: config.mmImagePool, positionResize: positionResize,
                  init: initKind, rng: &rng)
    }

    /// New weights drawn from HF's normal(vision_config.initializer_range) (LayerNorms 1 / 0).
    public convenience init(config: PixelLMConfig, positionResize: PositionTableResize = .reference, rng: inout RNG) {
        self.init(config: config, positionResize: positionResize, init: .normal(std: config.visionConfig.initializerRange), rng: &rng)
    }

    public func namedTensors() -> [(String, Tensor)] {
        var out = embeddings.namedTensors(prefix: "vision_model.embeddings")
        out += preLayrnorm.namedTensors(prefix: "vision_model.pre_layrnorm")
        for (i, l) in layers.enumerated() { out += l.namedTensors(prefix: "vision_model.encoder.layers.\(i)") }
        out += postLayernorm.namedTensors(prefix: "vision_model.post_layernorm")
        return out
    }

    /// Index into hidden_states (0 = embeddings after pre_layrnorm, i = output of layer i - 1).
    public func hiddenStateIndex(_ k: Int) -> Int { k < 0 ? config.numHiddenLayers + 1 + k : k }

    /// valid(i, j) = patch * i < h' and patch * j < w' for the g x g grid in raster order: the nearest
    /// resize of the S x S validity map of an image occupying the top-left h' x w' (spec 1.4).
    public static func patchValidity(height: Int, width: Int, grid: Int, patch: Int) -> [Bool] {
        var v = [Bool](repeating: false, count: grid * grid)
        for i in 0..<grid where patch * i < height {
            for j in 0..<grid where patch * j < width { v[i * grid + j] = true }
        }
        return v
    }

    /// The additive key mask [B, 1, 1, 1 + g * g] for images whose valid (unpadded) regions are
    /// `validSizes` (h', w') at the run size: 0 for valid keys and CLS, finfo.min for padding patches.
    public func keyMask(validSizes: [(height: Int, width: Int)]) -> Tensor {
        let g = grid, T = 1 + g * g
        let m = Tensor.zeros([validSizes.count, 1, 1, T])
        for (b, s) in validSizes.enumerated() {
            let v = Self.patchValidity(height: s.height, width: s.width, grid: g, patch: config.patchSize)
            for (k, ok) in v.enumerated() where !ok { m.ptr[b * T + 1 + k] = KeyMask.masked }
        }
        return m
    }

    /// hidden_states[0 ... count - 1] (index 0 = embeddings after pre_layrnorm), running count - 1 layers.
    public func hiddenStates(_ pixels: Tensor, keyMask: Tensor?, count: Int) -> [Tensor] {
        precondition(count >= 1 && count <= layers.count + 1, "hiddenStates: count \(count) with \(layers.count) layers")
        var h = preLayrnorm(embeddings(pixels))
        var states = [h]
        for l in layers.prefix(count - 1) {
            h = l(h, mask: keyMask)
            states.append(h)
        }
        return states
    }

    /// pixels [B, C, S, S] (normalised, zero-padded bottom/right) and the valid size of each image (nil:
    /// no padding, no mask) -> deep and mid features [B, g * g, D]. Masked patches are still computed as
    /// queries; they are only removed as keys.
    public func callAsFunction(_ pixels: Tensor, validSizes: [(height: Int, width: Int)]? = nil) -> CLIPVisionFeatures {
        if let validSizes, validSizes.count != pixels.dim(0) {
            shapeFailure(ShapeError("CLIPVisionModel", "\(validSizes.count) valid sizes for \(pixels.dim(0)) images"))
        }
        let iDeep = hiddenStateIndex(selectLayer), iMid = hiddenStateIndex(midLayer)
        let mask = validSizes.map { keyMask(validSizes: $0) }
        // only the two selected states are kept (not all 25)
        var h = preLayrnorm(embeddings(pixels))
        var deep = h, mid = h
        for (i, l) in layers.prefix(max(iDeep, iMid)).enumerated() {
            if gradientCheckpointing && Autograd.isEnabled {
                h = Autograd.checkpoint([h], params: l.namedTensors().map { $0.1 }) { xs in l(xs[0], mask: mask) }
            } else {
                h = l(h, mask: mask)
            }
            if i + 1 == iDeep { deep = h }
            if i + 1 == iMid { mid = h }
        }
        let T = h.dim(1)
        return CLIPVisionFeatures(deep: deep.slice(axis: 1, 1, T), mid: mid.slice(axis: 1, 1, T))
    }

    // MARK: projector helpers

    /// PixelLM's bilinear resize of the deep grid to half size, which is exactly 2x2 average pooling:
    /// tokens [B, g * g, D] -> [B, (g / 2)^2, D] (raster order). `pool` k generalises it to k x k average
    /// pooling (mm_image_pool; ours: for k > 2 it is not the bilinear resize, which would skip pixels).
    public static func poolTokens(_ tokens: Tensor, grid g: Int, pool k: Int = 2) -> Tensor {
        guard tokens.rank == 3, tokens.dim(1) == g * g, k >= 1, g % k == 0 else {
            shapeFailure(ShapeError("poolTokens", "tokens \(describe(tokens.shape)) are not [B, \(g * g), D] for a grid \(g) divisible by the pooling \(k)"))
        }
        if k == 1 { return tokens }
        let B = tokens.dim(0), D = tokens.dim(2), h = g / k
        let x = tokens.transpose(1, 2).reshape([B, D, g, g])
        return avgPool2d(x, kernel: k).reshape([B, D, h * h]).transpose(1, 2)
    }

    /// The deep features pooled to the LLM's image tokens (mm_image_pool, the released 2).
    public func poolTokens(_ tokens: Tensor) -> Tensor { Self.poolTokens(tokens, grid: grid, pool: llmPool) }

    /// The LLM attention-mask entries of the (g / k)^2 image tokens, [B, (g / k)^2] of 1 (valid) / 0:
    /// valid(i, j) = patch valid(k i, k j) (nearest resize of the patch mask, spec 1.5, k = 2 there).
    public func llmImageMask(validSizes: [(height: Int, width: Int)]) -> Tensor {
        let g = grid, k = llmPool, h = g / k
        let m = Tensor.zeros([validSizes.count, h * h])
        for (b, s) in validSizes.enumerated() {
            let v = Self.patchValidity(height: s.height, width: s.width, grid: g, patch: config.patchSize)
            for i in 0..<h { for j in 0..<h where v[k * i * g + k * j] { m.ptr[b * h * h + i * h + j] = 1 } }
        }
        return m
    }
}

/// `mm_projector` / `out_mm_projector`: nn.Sequential(Linear(in, hidden), GELU(erf), Linear(hidden, out)),
/// names "0.weight", "0.bias", "2.weight", "2.bias".
public final class ProjectorMLP: Module {
    public let fc0: Linear, fc2: Linear

    public init(inFeatures: Int, hidden: Int, outFeatures: Int, init initKind: Init?, rng: inout RNG) {
        fc0 = WeightSkeleton.linear(inFeatures, hidden, bias: true, initKind, &rng)
        fc2 = WeightSkeleton.linear(hidden, outFeatures, bias: true, initKind, &rng)
    }

    /// PixelLM's shape: Linear(mm_hidden_size, 2 H) -> GELU -> Linear(2 H, H) (both projectors).
    public convenience init(config: PixelLMConfig, init initKind: Init?, rng: inout RNG) {
        self.init(inFeatures: config.mmHiddenSize, hidden: 2 * config.hiddenSize, outFeatures: config.hiddenSize,
                  init: initKind, rng: &rng)
    }

    /// New weights drawn from HF's normal(initializer_range).
    public convenience init(config: PixelLMConfig, rng: inout RNG) {
        self.init(config: config, init: .normal(std: config.initializerRange), rng: &rng)
    }

    public func namedTensors() -> [(String, Tensor)] { gather([("0", fc0), ("2", fc2)]) }

    public func callAsFunction(_ x: Tensor) -> Tensor { fc2(fc0(x).gelu()) }
}
