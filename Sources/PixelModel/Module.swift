import Foundation
import PixelTensor

/// How new weights are initialised.
public enum Init: Sendable {
    /// HF transformers' `_init_weights`: weights ~ N(0, std) (std = initializer_range, 0.02), biases 0.
    case normal(std: Float)
    /// PyTorch's default for nn.Linear / nn.Conv2d: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    case torchDefault
}

/// A component of the model. Names are relative to the component and follow the released PixelLM
/// `hf_model` (and HF CLIP / LLaMA) parameter names, so a parameter table maps every checkpoint key to
/// its tensor.
public protocol Module: AnyObject {
    /// Every parameter and persistent buffer, with its name relative to this module, in a fixed order.
    func namedTensors() -> [(String, Tensor)]
}

extension Module {
    /// Names prefixed with `prefix` + "." (no dot when `prefix` is empty).
    public func namedTensors(prefix: String) -> [(String, Tensor)] {
        namedTensors().map { (prefix.isEmpty ? $0.0 : prefix + "." + $0.0, $0.1) }
    }

    public var parameterCount: Int { namedTensors().reduce(0) { $0 + $1.1.count } }
}

/// Collects children's tensors under their names.
public func gather(_ children: [(String, Module?)]) -> [(String, Tensor)] {
    var out: [(String, Tensor)] = []
    for (name, m) in children { if let m { out += m.namedTensors(prefix: name) } }
    return out
}

public func newWeight(_ shape: [Int], fanIn: Int, _ initKind: Init, rng: inout RNG) -> Tensor {
    switch initKind {
    case .normal(let std): return Tensor.randn(shape, std: std, rng: &rng)
    case .torchDefault:
        let b = 1 / Float(max(fanIn, 1)).squareRoot()
        return Tensor.uniform(shape, -b, b, rng: &rng)
    }
}

public func newBias(_ n: Int, fanIn: Int, _ initKind: Init, rng: inout RNG) -> Tensor {
    switch initKind {
    case .normal: return Tensor.zeros([n])
    case .torchDefault:
        let b = 1 / Float(max(fanIn, 1)).squareRoot()
        return Tensor.uniform([n], -b, b, rng: &rng)
    }
}

// MARK: - basic layers (names as in PyTorch: weight, bias)

/// nn.Linear: weight [out, in], optional bias [out].
public final class Linear: Module {
    public var weight: Tensor
    public var bias: Tensor?
    /// Inference only (bf16 checkpoints loaded by `PixelLMModelDirectory` with `.bf16` precision): the
    /// weight kept in bf16, used through `linearBF16`; `weight` is then an empty [out, 0] placeholder.
    /// nil (the default, and always in training) leaves this layer exactly as before.
    public var bf16Weight: BF16Tensor?
    /// A LoRA update (LoRA.swift): y = W x + b + (alpha / r) B A dropout(x); its tensors are named beside the
    /// weight ("lora_A.default.weight", "lora_B.default.weight", PEFT's names).
    public var lora: LoRAAdapter?
    public init(_ inFeatures: Int, _ outFeatures: Int, bias: Bool = true, init initKind: Init, rng: inout RNG) {
        weight = newWeight([outFeatures, inFeatures], fanIn: inFeatures, initKind, rng: &rng)
        self.bias = bias ? newBias(outFeatures, fanIn: inFeatures, initKind, rng: &rng) : nil
    }
    /// The weight's [out, in] (from the bf16 weight when the fp32 one is its empty placeholder).
    public var outFeatures: Int { bf16Weight?.shape[0] ?? weight.dim(0) }
    public var inFeatures: Int { bf16Weight?.shape[1] ?? weight.dim(1) }
    public func callAsFunction(_ x: Tensor) -> Tensor {
        if let w = bf16Weight { return withLoRA(x, base: linearBF16(x: x, w: w, bias: bias)) }
        return withLoRA(x, base: linear(x, weight, bias))
    }
    public func namedTensors() -> [(String, Tensor)] {
        [("weight", weight)] + (bias.map { [("bias", $0)] } ?? []) + (lora?.namedTensors() ?? [])
    }
}

/// nn.LayerNorm over the last dim: weight 1, bias 0.
public final class LayerNorm: Module {
    public var weight: Tensor, bias: Tensor
    public let eps: Float
    public init(_ dim: Int, eps: Float = 1e-5) {
        weight = Tensor.ones([dim]); bias = Tensor.zeros([dim]); self.eps = eps
    }
    public func callAsFunction(_ x: Tensor) -> Tensor { layerNorm(x, weight: weight, bias: bias, eps: eps) }
    public func namedTensors() -> [(String, Tensor)] { [("weight", weight), ("bias", bias)] }
}

/// SAM's LayerNorm2d over the channels of [B, C, H, W] (eps 1e-6).
public final class LayerNorm2d: Module {
    public var weight: Tensor, bias: Tensor
    public let eps: Float
    public init(_ channels: Int, eps: Float = 1e-6) {
        weight = Tensor.ones([channels]); bias = Tensor.zeros([channels]); self.eps = eps
    }
    public func callAsFunction(_ x: Tensor) -> Tensor { layerNorm2d(x, weight: weight, bias: bias, eps: eps) }
    public func namedTensors() -> [(String, Tensor)] { [("weight", weight), ("bias", bias)] }
}

/// LLaMA RMSNorm: weight 1.
public final class RMSNorm: Module {
    public var weight: Tensor
    public let eps: Float
    public init(_ dim: Int, eps: Float) { weight = Tensor.ones([dim]); self.eps = eps }
    public func callAsFunction(_ x: Tensor) -> Tensor { rmsNorm(x, weight: weight, eps: eps) }
    public func namedTensors() -> [(String, Tensor)] { [("weight", weight)] }
}

/// nn.Embedding: weight [num, dim].
public final class Embedding: Module {
    public var weight: Tensor
    public init(_ num: Int, _ dim: Int, init initKind: Init, rng: inout RNG) {
        switch initKind {
        case .normal(let std): weight = Tensor.randn([num, dim], std: std, rng: &rng)
        case .torchDefault: weight = Tensor.randn([num, dim], rng: &rng)  // nn.Embedding default N(0, 1)
        }
    }
    public func callAsFunction(_ ids: [Int], shape: [Int]? = nil) -> Tensor { embedding(weight, ids: ids, idsShape: shape) }
    public func namedTensors() -> [(String, Tensor)] { [("weight", weight)] }
}

/// nn.Conv2d: weight [out, in, kH, kW], optional bias.
public final class Conv2d: Module {
    public var weight: Tensor
    public var bias: Tensor?
    public let stride: Int, padding: Int
    public init(_ inC: Int, _ outC: Int, kernel: Int, stride: Int = 1, padding: Int = 0, bias: Bool = true,
                init initKind: Init, rng: inout RNG) {
        let fanIn = inC * kernel * kernel
        weight = newWeight([outC, inC, kernel, kernel], fanIn: fanIn, initKind, rng: &rng)
        self.bias = bias ? newBias(outC, fanIn: fanIn, initKind, rng: &rng) : nil
        self.stride = stride; self.padding = padding
    }
    public func callAsFunction(_ x: Tensor) -> Tensor { conv2d(x, weight, bias, stride: stride, padding: padding) }
    public func namedTensors() -> [(String, Tensor)] { [("weight", weight)] + (bias.map { [("bias", $0)] } ?? []) }
}

/// nn.ConvTranspose2d: weight [in, out, kH, kW], optional bias.
public final class ConvTranspose2d: Module {
    public var weight: Tensor
    public var bias: Tensor?
    public let stride: Int
    public init(_ inC: Int, _ outC: Int, kernel: Int, stride: Int, bias: Bool = true, init initKind: Init, rng: inout RNG) {
        // PyTorch computes fan_in of a transposed conv weight [in, out, k, k] as out * k * k
        let fanIn = outC * kernel * kernel
        weight = newWeight([inC, outC, kernel, kernel], fanIn: fanIn, initKind, rng: &rng)
        self.bias = bias ? newBias(outC, fanIn: fanIn, initKind, rng: &rng) : nil
        self.stride = stride
    }
    public func callAsFunction(_ x: Tensor) -> Tensor { convTranspose2d(x, weight, bias, stride: stride) }
    public func namedTensors() -> [(String, Tensor)] { [("weight", weight)] + (bias.map { [("bias", $0)] } ?? []) }
}

/// Loads named tensors into a module: every expected name must be present with its shape and no name
/// may be left over; otherwise the error lists the names.
public struct WeightMismatch: Error, CustomStringConvertible {
    public var missing: [String] = []
    public var unexpected: [String] = []
    public var wrongShape: [(String, expected: [Int], found: [Int])] = []
    public var description: String {
        var parts: [String] = []
        if !missing.isEmpty { parts.append("missing \(missing.count): " + missing.sorted().joined(separator: ", ")) }
        if !unexpected.isEmpty { parts.append("unexpected \(unexpected.count): " + unexpected.sorted().joined(separator: ", ")) }
        if !wrongShape.isEmpty {
            parts.append("wrong shape: " + wrongShape.map { "\($0.0) expected \(describe($0.expected)) found \(describe($0.found))" }.joined(separator: ", "))
        }
        return "weights do not match the model: " + parts.joined(separator: "; ")
    }
}

extension Module {
    /// Copies `weights` into this module's tensors (strict: names and shapes must match exactly).
    public func load(_ weights: [String: Tensor], prefix: String = "") throws {
        let mine = namedTensors(prefix: prefix)
        var err = WeightMismatch()
        let names = Set(mine.map { $0.0 })
        for (n, t) in mine {
            guard let w = weights[n] else { err.missing.append(n); continue }
            if w.shape != t.shape { err.wrongShape.append((n, t.shape, w.shape)) }
        }
        for k in weights.keys where !names.contains(k) && (prefix.isEmpty || k.hasPrefix(prefix + ".")) {
            err.unexpected.append(k)
        }
        if !err.missing.isEmpty || !err.unexpected.isEmpty || !err.wrongShape.isEmpty { throw err }
        for (n, t) in mine {
            let w = weights[n]!.contiguousData()
            t.ptr.update(from: w.ptr, count: t.count)
        }
    }
}
