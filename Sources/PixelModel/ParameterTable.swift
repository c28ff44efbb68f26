import Foundation
import PixelTensor

// Every tensor of a PixelLMForCausalLM by name, with its group and whether it is trained.
//
// The released recipe (train_ds.py after PEFT, spec section 4):
//   trained: lm_head, embed_tokens (whole matrix), mask_decoder, text_hidden_fcs, mm_projector and
//            out_mm_projector (every name containing "mm_projector"); token_fusion (not released) when learned
//   frozen:  CLIP, image_feature_neck and prompt_encoder (at their random init), the LLaMA layers and final norm
//   LoRA:    r 8 on every q_proj / v_proj of the LLaMA layers. LoRA adapters are not modelled yet (a later
//            issue): the base q_proj / v_proj weights form the group `lora-target`, frozen like the rest of
//            the layers, so the recipe without LoRA is exactly the released one minus the adapters.
// Buffers (the random-Fourier PE matrices) are never trained.

public enum ParameterGroup: String, CaseIterable, Sendable, Comparable {
    /// "vision_model...." (or "model.vision_tower.vision_tower.vision_model....").
    case clip
    /// model.embed_tokens.
    case embed
    /// lm_head.
    case lmHead = "lm-head"
    /// The LLaMA layers (except q_proj / v_proj) and the final norm.
    case llm
    /// The LLaMA layers' q_proj and v_proj (the LoRA targets).
    case loraTarget = "lora-target"
    /// model.mm_projector and model.out_mm_projector.
    case projector
    /// model.mask_decoder.
    case decoder
    /// model.image_feature_neck.
    case neck
    /// model.prompt_encoder.
    case prompt
    /// model.text_hidden_fcs.
    case fcs
    /// model.token_fusion (learned fusion only).
    case fusion
    /// LoRA adapters of the LLaMA layers ("...q_proj.lora_A.default.weight").
    case lora

    public static func < (a: ParameterGroup, b: ParameterGroup) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }

    /// The group of a checkpoint name (PixelLM or CLIP names); nil for a name that belongs to none.
    public static func of(_ name: String) -> ParameterGroup? {
        if name.hasPrefix("vision_model.") || name.hasPrefix(PixelLMForCausalLM.visionPrefix + ".") { return .clip }
        if name.hasPrefix("model.embed_tokens.") { return .embed }
        if name.hasPrefix("lm_head.") { return .lmHead }
        if name.hasPrefix("model.layers.") {
            if name.contains(".lora_A.") || name.contains(".lora_B.") { return .lora }
            return name.contains(".self_attn.q_proj.") || name.contains(".self_attn.v_proj.") ? .loraTarget : .llm
        }
        if name.hasPrefix("model.norm.") { return .llm }
        if name.hasPrefix("model.mm_projector.") || name.hasPrefix("model.out_mm_projector.") { return .projector }
        if name.hasPrefix("model.mask_decoder.") { return .decoder }
        if name.hasPrefix("model.image_feature_neck.") { return .neck }
        if name.hasPrefix("model.prompt_encoder.") { return .prompt }
        if name.hasPrefix("model.text_hidden_fcs.") { return .fcs }
        if name.hasPrefix("model.token_fusion.") { return .fusion }
        return nil
    }

    /// Parses a comma-separated list ("neck,prompt"); errors list the valid names.
    public static func parseList(_ text: String) throws -> [ParameterGroup] {
        try text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }.map { s in
            guard let g = ParameterGroup(rawValue: s) else {
                throw ParameterGroupError(message: "unknown parameter group '\(s)' (groups: \(allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            return g
        }
    }
}

public struct ParameterGroupError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
    public init(message: String) { self.message = message }
}

/// One named tensor of the model.
public struct ParameterEntry {
    public let name: String
    public let tensor: Tensor
    public let group: ParameterGroup
    /// A persistent buffer (never trained).
    public let isBuffer: Bool
    public let trainable: Bool
}

public struct ParameterTable {
    /// The released recipe's trained groups.
    public static let releasedTrainableGroups: Set<ParameterGroup> = [.embed, .lmHead, .projector, .decoder, .fcs, .fusion, .lora]

    /// Every tensor (PixelLM names, then CLIP's "vision_model...." names), in model order.
    public let entries: [ParameterEntry]
    public let trainableGroups: Set<ParameterGroup>

    /// The table for `trainableGroups`.
    public init(model: PixelLMForCausalLM, trainableGroups: Set<ParameterGroup>) {
        self.trainableGroups = trainableGroups
        entries = model.allNamedTensors().map { name, t in
            guard let g = ParameterGroup.of(name) else { preconditionFailure("ParameterTable: '\(name)' belongs to no group") }
            let buffer = PositionEmbeddingRandom.isBuffer(name)
            return ParameterEntry(name: name, tensor: t, group: g, isBuffer: buffer, trainable: !buffer && trainableGroups.contains(g))
        }
    }

    /// The released recipe, plus the groups in `include`, minus those in `exclude` (`--train neck`,
    /// `--freeze projector` style). Exclusion wins.
    public init(model: PixelLMForCausalLM, include: [ParameterGroup] = [], exclude: [ParameterGroup] = []) {
        self.init(model: model, trainableGroups: Self.releasedTrainableGroups.union(include).subtracting(exclude))
    }

    public subscript(name: String) -> ParameterEntry? { entries.first { $0.name == name } }

    public var trainable: [ParameterEntry] { entries.filter(\.trainable) }
    public var frozen: [ParameterEntry] { entries.filter { !$0.trainable } }
    /// The tensors to hand to the optimizer, in table order.
    public var trainableParameters: [Tensor] { trainable.map(\.tensor) }
    public var trainableCount: Int { trainable.reduce(0) { $0 + $1.tensor.count } }
    public var totalCount: Int { entries.reduce(0) { $0 + $1.tensor.count } }

    /// Sets `requiresGrad` of every tensor to its trainable flag and clears all gradients.
    public func setRequiresGrad() {
        for e in entries {
            e.tensor.requiresGrad = e.trainable
            e.tensor.grad = nil
        }
    }

    /// Element counts per group: (group, total, trainable).
    public func groupCounts() -> [(group: ParameterGroup, total: Int, trainable: Int)] {
        var total: [ParameterGroup: Int] = [:], train: [ParameterGroup: Int] = [:]
        for e in entries {
            total[e.group, default: 0] += e.tensor.count
            if e.trainable { train[e.group, default: 0] += e.tensor.count }
        }
        return total.keys.sorted().map { ($0, total[$0]!, train[$0] ?? 0) }
    }

    /// A readable summary: one line per group.
    public var summary: String {
        var lines = groupCounts().map { g in
            "\(g.group.rawValue.padding(toLength: 12, withPad: " ", startingAt: 0)) \(String(g.total).leftPad(13)) elements, "
                + (g.trainable == 0 ? "frozen" : g.trainable == g.total ? "trained" : "\(g.trainable) trained")
        }
        lines.append("trainable \(trainableCount) of \(totalCount) elements")
        return lines.joined(separator: "\n")
    }
}

extension String {
    fileprivate func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}
