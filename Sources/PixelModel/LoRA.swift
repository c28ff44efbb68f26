import Foundation
import PixelTensor

// LoRA as PEFT 0.4 builds it for the released recipe (train_ds.py: r 8, alpha 16, dropout 0.05, every nn.Linear
// of the LLaMA layers whose name contains q_proj or v_proj):
//   y = W x + b + (alpha / r) * B (A (dropout(x)))      A [r, in] ~ kaiming_uniform(a = sqrt(5)), B [out, r] = 0
// with PEFT's names beside the wrapped layer: "...q_proj.lora_A.default.weight", "...q_proj.lora_B.default.weight".
// Merging (merge_and_unload, the release's export) replaces W by W + (alpha / r) B A.
//
// Dropout: PEFT draws it from torch's global generator, so it depends on the rank and the order of everything drawn
// before. Here the mask of each conversation row is drawn from a stream seeded by (the run's seed, the step, the
// sample's position in the global sequence, the conversation, the adapter), so it is the same whichever rank or
// micro-batch the sample lands in (`dropoutSeeds`, set by the trainer; nil: no dropout, as in evaluation).

/// The `lora` block of a config.json (PEFT's LoraConfig names).
public struct LoRAConfig: Codable, Equatable, Sendable {
    public var r: Int
    public var alpha: Float
    public var dropout: Float
    public var targetModules: [String]

    public init(r: Int = 8, alpha: Float = 16, dropout: Float = 0.05, targetModules: [String] = ["q_proj", "v_proj"]) {
        self.r = r
        self.alpha = alpha
        self.dropout = dropout
        self.targetModules = targetModules
    }

    enum CodingKeys: String, CodingKey { case r, alpha = "lora_alpha", dropout = "lora_dropout", targetModules = "target_modules" }

    public var scaling: Float { alpha / Float(r) }

    public func validate(file: String) throws {
        func fail(_ f: String, _ why: String) throws { throw ConfigError(file: file, message: "field 'lora.\(f)': \(why)") }
        if r < 1 { try fail("r", "\(r) must be >= 1") }
        if !(alpha > 0) || !alpha.isFinite { try fail("lora_alpha", "\(alpha) must be > 0") }
        if !(dropout >= 0 && dropout < 1) { try fail("lora_dropout", "\(dropout) must be in [0, 1)") }
        let known: Set<String> = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        if targetModules.isEmpty { try fail("target_modules", "is empty") }
        if let bad = targetModules.first(where: { !known.contains($0) }) {
            try fail("target_modules", "'\(bad)' is not a LLaMA linear layer (\(known.sorted().joined(separator: ", ")))")
        }
    }
}

/// The low-rank update of one Linear.
public final class LoRAAdapter: Module {
    public let a: Tensor
    public let b: Tensor
    public let scaling: Float
    public let dropout: Float
    /// Distinguishes this adapter's dropout stream from the others' (layer and module).
    public let key: UInt64
    /// One seed per row of the input's leading dimension (conversation), or nil for no dropout.
    public var dropoutSeeds: [UInt64]?

    public init(inFeatures: Int, outFeatures: Int, config: LoRAConfig, key: UInt64, rng: inout RNG) {
        // kaiming_uniform_(a = sqrt(5)) on [r, in]: bound 1 / sqrt(in), as nn.Linear's default
        a = newWeight([config.r, inFeatures], fanIn: inFeatures, .torchDefault, rng: &rng)
        b = Tensor.zeros([outFeatures, config.r])
        scaling = config.scaling
        dropout = config.dropout
        self.key = key
    }

    public func namedTensors() -> [(String, Tensor)] { [("lora_A.default.weight", a), ("lora_B.default.weight", b)] }

    /// (alpha / r) B A dropout(x) for x [..., in].
    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = x
        if dropout > 0, let seeds = dropoutSeeds { h = x * dropoutMask(shape: x.shape, seeds: seeds) }
        return linear(linear(h, a, nil), b, nil) * scaling
    }

    /// Mask [rows, ..., in]: row k's elements, in order, from RNG(seeds[k] ^ key); 0 with probability p, else 1/(1-p).
    func dropoutMask(shape: [Int], seeds: [UInt64]) -> Tensor {
        let rows = shape[0], per = shape.dropFirst().reduce(1, *)
        precondition(seeds.count == rows, "LoRA dropout: \(seeds.count) seeds for \(rows) rows")
        let m = Tensor(empty: shape)
        let keep = 1 / (1 - dropout)
        for r in 0..<rows {
            var rng = RNG(seed: LoRASeeds.mix(seeds[r], key))
            let p = m.ptr + r * per
            for i in 0..<per { p[i] = rng.uniform() < dropout ? 0 : keep }
        }
        return m
    }

    /// W + (alpha / r) B A (the merged weight), in fp32.
    public func merged(into w: Tensor) -> Tensor {
        Autograd.noGrad { (w + b.matmul(a) * scaling).contiguousData().detachedCopy() }
    }
}

public enum LoRASeeds {
    /// splitmix64 of the xor, for seeds made of several parts.
    public static func mix(_ a: UInt64, _ b: UInt64) -> UInt64 {
        var z = a ^ (b &* 0x9E37_79B9_7F4A_7C15)
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// The seed of one conversation row: (run seed, step, global sample position, conversation index).
    public static func row(seed: UInt64, step: Int, position: Int, conversation: Int) -> UInt64 {
        mix(mix(mix(seed, UInt64(step) &+ 1), UInt64(position) &+ 0x1000), UInt64(conversation) &+ 0x2000_0000)
    }
}

extension Linear {
    /// y = W x + b (+ the LoRA update when attached).
    public func withLoRA(_ x: Tensor, base: Tensor) -> Tensor {
        guard let lora else { return base }
        return base + lora(x)
    }
}

extension PixelLMForCausalLM {
    /// The LoRA adapters by the name of the Linear they wrap ("model.layers.3.self_attn.q_proj").
    public var loraAdapters: [(String, LoRAAdapter)] {
        var out: [(String, LoRAAdapter)] = []
        for (i, l) in llm.model.layers.enumerated() {
            for (n, lin) in LlamaLinears.named(l) { if let a = lin.lora { out.append(("model.layers.\(i).\(n)", a)) } }
        }
        return out
    }

    /// Attaches fresh adapters (A from `rng`, B = 0) to the target modules of every LLaMA layer.
    public func attachLoRA(_ config: LoRAConfig, rng: inout RNG) {
        self.config.lora = config
        for (i, l) in llm.model.layers.enumerated() {
            for (n, lin) in LlamaLinears.named(l) where config.targetModules.contains(where: { n.hasSuffix("." + $0) }) {
                lin.lora = LoRAAdapter(inFeatures: lin.inFeatures, outFeatures: lin.outFeatures, config: config,
                                       key: UInt64(i) << 8 | UInt64(LlamaLinears.index(n)), rng: &rng)
            }
        }
    }

    /// Sets the dropout rows of every adapter (nil: none).
    public func setLoRADropout(seeds: [UInt64]?) {
        for (_, a) in loraAdapters { a.dropoutSeeds = seeds }
    }

    /// Folds every adapter into its weight (W + (alpha / r) B A) and removes the adapters.
    public func mergeLoRA() {
        config.lora = nil
        for l in llm.model.layers {
            for (_, lin) in LlamaLinears.named(l) {
                guard let a = lin.lora else { continue }
                precondition(lin.bf16Weight == nil, "mergeLoRA: a layer whose weight is kept in bf16 (load it in fp32 to merge)")
                let m = a.merged(into: lin.weight)
                lin.weight.ptr.update(from: m.ptr, count: m.count)
                lin.lora = nil
            }
        }
    }
}

/// The linear layers of a LLaMA decoder layer with their names relative to the layer.
public enum LlamaLinears {
    static let order = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    public static func named(_ l: LlamaDecoderLayer) -> [(String, Linear)] {
        [("self_attn.q_proj", l.selfAttn.qProj), ("self_attn.k_proj", l.selfAttn.kProj), ("self_attn.v_proj", l.selfAttn.vProj),
         ("self_attn.o_proj", l.selfAttn.oProj), ("mlp.gate_proj", l.mlp.gateProj), ("mlp.up_proj", l.mlp.upProj),
         ("mlp.down_proj", l.mlp.downProj)]
    }
    static func index(_ n: String) -> Int { order.firstIndex(of: n) ?? 0 }
}
