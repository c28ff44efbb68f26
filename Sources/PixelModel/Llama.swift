import Foundation
import PixelTensor

// The LLaMA decoder (HF LlamaForCausalLM: names "model.embed_tokens.weight", "model.layers.N...",
// "model.norm.weight", "lm_head.weight"): RMSNorm, rotate-half RoPE, grouped-query attention with a causal
// and key-validity mask, SiLU-gated MLP. It runs from input embeddings so that the caller can splice the
// image tokens in, and returns the final hidden state after the last RMSNorm (what PixelLM gathers for the
// [SEG] tokens); `logits` applies lm_head.

/// LlamaAttention: q/k/v/o projections without bias, RoPE on q and k, Hq query heads sharing Hkv KV heads.
public final class LlamaAttention: Module {
    public let qProj: Linear, kProj: Linear, vProj: Linear, oProj: Linear
    public let heads: Int, kvHeads: Int, headDim: Int

    public init(config: PixelLMConfig, init initKind: Init?, rng: inout RNG) {
        let H = config.hiddenSize
        heads = config.numAttentionHeads
        kvHeads = config.numKeyValueHeads
        headDim = config.headDim
        qProj = WeightSkeleton.linear(H, heads * headDim, bias: false, initKind, &rng)
        kProj = WeightSkeleton.linear(H, kvHeads * headDim, bias: false, initKind, &rng)
        vProj = WeightSkeleton.linear(H, kvHeads * headDim, bias: false, initKind, &rng)
        oProj = WeightSkeleton.linear(heads * headDim, H, bias: false, initKind, &rng)
    }

    public func namedTensors() -> [(String, Tensor)] {
        gather([("q_proj", qProj), ("k_proj", kProj), ("v_proj", vProj), ("o_proj", oProj)])
    }

    /// x [B, T, H]; `rotary` holds the T positions (or B * T); mask additive [B, 1, 1, Tk] or nil;
    /// with a cache, keys and values are appended to `layer`'s and the queries see every cached position.
    public func callAsFunction(_ x: Tensor, rotary: RotaryTable, mask: Tensor?, cache: KVCache? = nil, layer: Int = 0) -> Tensor {
        let B = x.dim(0), T = x.dim(1)
        let q = applyRotary(qProj(x).reshape([B, T, heads, headDim]).transpose(1, 2), rotary)
        var k = applyRotary(kProj(x).reshape([B, T, kvHeads, headDim]).transpose(1, 2), rotary)
        var v = vProj(x).reshape([B, T, kvHeads, headDim]).transpose(1, 2)
        if let cache { (k, v) = cache.update(layer: layer, keys: k, values: v) }
        let o = scaledDotProductAttention(q, k, v, mask: mask, causal: true)
        return oProj(o.transpose(1, 2).reshape([B, T, heads * headDim]))
    }
}

/// LlamaMLP: down(silu(gate(x)) * up(x)), no biases.
public final class LlamaMLP: Module {
    public let gateProj: Linear, upProj: Linear, downProj: Linear

    public init(config: PixelLMConfig, init initKind: Init?, rng: inout RNG) {
        let H = config.hiddenSize, I = config.intermediateSize
        gateProj = WeightSkeleton.linear(H, I, bias: false, initKind, &rng)
        upProj = WeightSkeleton.linear(H, I, bias: false, initKind, &rng)
        downProj = WeightSkeleton.linear(I, H, bias: false, initKind, &rng)
    }

    public func namedTensors() -> [(String, Tensor)] {
        gather([("gate_proj", gateProj), ("up_proj", upProj), ("down_proj", downProj)])
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { downProj(swiglu(gateProj(x), upProj(x))) }
}

/// LlamaDecoderLayer: x + attn(rmsnorm(x)), then h + mlp(rmsnorm(h)).
public final class LlamaDecoderLayer: Module {
    public let inputLayernorm: RMSNorm, selfAttn: LlamaAttention, postAttentionLayernorm: RMSNorm, mlp: LlamaMLP

    public init(config: PixelLMConfig, init initKind: Init?, rng: inout RNG) {
        inputLayernorm = RMSNorm(config.hiddenSize, eps: config.rmsNormEps)
        selfAttn = LlamaAttention(config: config, init: initKind, rng: &rng)
        postAttentionLayernorm = RMSNorm(config.hiddenSize, eps: config.rmsNormEps)
        mlp = LlamaMLP(config: config, init: initKind, rng: &rng)
    }

    public func namedTensors() -> [(String, Tensor)] {
        gather([("input_layernorm", inputLayernorm), ("self_attn", selfAttn),
                ("post_attention_layernorm", postAttentionLayernorm), ("mlp", mlp)])
    }

    public func callAsFunction(_ x: Tensor, rotary: RotaryTable, mask: Tensor?, cache: KVCache? = nil, layer: Int = 0) -> Tensor {
        let h = x + selfAttn(inputLayernorm(x), rotary: rotary, mask: mask, cache: cache, layer: layer)
        return h + mlp(postAttentionLayernorm(h))
    }

    /// Runs `f` with this layer's LoRA adapters drawing the dropout of batch row r alone (its seed), then restores
    /// them: row r of a batch computed by itself (`Autograd.checkpointRows`).
    func withDropoutRow<T>(_ r: Int, _ f: () -> T) -> T {
        let adapters = [selfAttn.qProj, selfAttn.kProj, selfAttn.vProj, selfAttn.oProj, mlp.gateProj, mlp.upProj, mlp.downProj].compactMap(\.lora)
        let saved = adapters.map(\.dropoutSeeds)
        for a in adapters { if let s = a.dropoutSeeds { a.dropoutSeeds = [s[r]] } }
        defer { for (a, s) in zip(adapters, saved) { a.dropoutSeeds = s } }
        return f()
    }
}

/// HF LlamaModel (names relative to it: "embed_tokens.weight", "layers.N...", "norm.weight").
public final class LlamaModel: Module {
    public let config: PixelLMConfig
    public let embedTokens: Embedding
    public let layers: [LlamaDecoderLayer]
    public let norm: RMSNorm
    /// Training: each decoder layer keeps only its input and is recomputed in backward (Autograd.checkpoint;
    /// the reference's --gradient_checkpointing). Ignored with a KV cache and without recording.
    public var gradientCheckpointing = false

    /// `init` nil: a skeleton with uninitialised weights, to be filled by `load`.
    public init(config: PixelLMConfig, init initKind: Init?, rng: inout RNG) {
        self.config = config
        embedTokens = WeightSkeleton.embedding(config.vocabSize, config.hiddenSize, initKind, &rng)
        var ls: [LlamaDecoderLayer] = []
        for _ in 0..<config.numHiddenLayers { ls.append(LlamaDecoderLayer(config: config, init: initKind, rng: &rng)) }
        layers = ls
        norm = RMSNorm(config.hiddenSize, eps: config.rmsNormEps)
    }

    public func namedTensors() -> [(String, Tensor)] {
        var out = embedTokens.namedTensors(prefix: "embed_tokens")
        for (i, l) in layers.enumerated() { out += l.namedTensors(prefix: "layers.\(i)") }
        return out + norm.namedTensors(prefix: "norm")
    }

    /// Token embeddings [shape..., H] of `ids` (row-major with `shape`, default [ids.count]).
    public func embed(_ ids: [Int], shape: [Int]? = nil) -> Tensor { embedTokens(ids, shape: shape) }

    /// embeds [B, T, H] -> the final hidden state after the last RMSNorm, [B, T, H].
    /// - attentionMask: [B, T] of 1 (attend) / 0 (masked as a key for every query: padding, padded image
    ///   tokens), combined with the causal mask, like HF's attention_mask; nil means all 1. With a cache it
    ///   covers the new positions only; the cache keeps the earlier ones.
    /// - positions: the position ids (T of them, or B * T), default arange(T) continuing after the cache.
    /// - cache: appends this step's keys and values (see `KVCache`).
    public func callAsFunction(_ embeds: Tensor, attentionMask: Tensor? = nil, positions: [Int]? = nil,
                               cache: KVCache? = nil) -> Tensor {
        guard embeds.rank == 3, embeds.dim(2) == config.hiddenSize else {
            shapeFailure(ShapeError("LlamaModel", "input embeddings \(describe(embeds.shape)) are not [B, T, \(config.hiddenSize)]"))
        }
        let B = embeds.dim(0), T = embeds.dim(1)
        if let attentionMask, attentionMask.shape != [B, T] {
            shapeFailure(ShapeError("LlamaModel", "attention mask \(describe(attentionMask.shape)) for input \(describe(embeds.shape)) (want [\(B), \(T)])"))
        }
        if let cache, cache.batch != B || cache.layers != layers.count {
            shapeFailure(ShapeError("LlamaModel", "cache for batch \(cache.batch) / \(cache.layers) layers used with batch \(B) / \(layers.count) layers"))
        }
        let past = cache?.length ?? 0
        let pos = positions ?? Array(past..<(past + T))
        let rotary = RotaryTable(positions: pos, dim: config.headDim, theta: config.ropeTheta)
        let mask: Tensor?
        if let cache { mask = cache.begin(T, validity: attentionMask) } else { mask = attentionMask.flatMap(KeyMask.additive) }
        var h = embeds
        for (i, l) in layers.enumerated() {
            if gradientCheckpointing && cache == nil && Autograd.isEnabled {
                // conversations do not interact inside a layer: backward recomputes them one at a time
                h = Autograd.checkpointRows(h, params: l.namedTensors().map { $0.1 }, { x in
                    l(x, rotary: rotary, mask: mask, cache: nil, layer: i)
                }, row: { r, x in
                    l.withDropoutRow(r) { l(x, rotary: rotary, mask: mask?.slice(axis: 0, r, r + 1).contiguousData(), cache: nil, layer: i) }
                })
            } else {
                h = l(h, rotary: rotary, mask: mask, cache: cache, layer: i)
            }
        }
        cache?.commit()
        return norm(h)
    }
}

/// HF LlamaForCausalLM: "model." + LlamaModel and "lm_head.weight" (absent, and shared with
/// embed_tokens, when tie_word_embeddings).
public final class LlamaForCausalLM: Module {
    public let model: LlamaModel
    /// nil when the embeddings are tied.
    public let lmHead: Linear?
    public var config: PixelLMConfig { model.config }

    /// `init` defaults to HF's normal(initializer_range); nil gives a skeleton to load into.
    public init(config: PixelLMConfig, init initKind: Init?, rng: inout RNG) {
        model = LlamaModel(config: config, init: initKind, rng: &rng)
        lmHead = config.tieWordEmbeddings ? nil : WeightSkeleton.linear(config.hiddenSize, config.vocabSize, bias: false, initKind, &rng)
    }

    public convenience init(config: PixelLMConfig, rng: inout RNG) {
        self.init(config: config, init: .normal(std: config.initializerRange), rng: &rng)
    }

    public func namedTensors() -> [(String, Tensor)] {
        model.namedTensors(prefix: "model") + (lmHead.map { $0.namedTensors(prefix: "lm_head") } ?? [])
    }

    /// See `LlamaModel.callAsFunction`: the final hidden state after the last RMSNorm, [B, T, H].
    public func callAsFunction(_ embeds: Tensor, attentionMask: Tensor? = nil, positions: [Int]? = nil,
                               cache: KVCache? = nil) -> Tensor {
        model(embeds, attentionMask: attentionMask, positions: positions, cache: cache)
    }

    /// hidden [..., H] -> logits [..., vocab].
    public func logits(_ hidden: Tensor) -> Tensor {
        if let lmHead { return lmHead(hidden) }   // (in bf16 when loaded for inference with precision .bf16)
        return linear(hidden, model.embedTokens.weight)
    }

    /// A cache sized for this model.
    public func makeCache(batch: Int, capacity: Int = 256) -> KVCache { KVCache(config: config, batch: batch, capacity: capacity) }
}
