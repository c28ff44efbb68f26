import Foundation
import XCTest
@testable import PixelModel
import PixelTensor

/// LoRA against PEFT 0.4.0 itself (Fixtures/lora_peft.safetensors from tools/fixtures/lora_peft.py: HF transformers
/// 4.31 LlamaForCausalLM at the tiny config's LLaMA sizes, LoRA r 4 / alpha 8 on q_proj and v_proj with random B):
/// logits, loss and the gradients of every A and B; merge_and_unload's weights; names; dropout keyed by rows.
final class LoRATests: XCTestCase {
    static var fixture: [String: Tensor] {
        get throws {
            let url = try XCTUnwrap(Bundle.module.url(forResource: "Fixtures/lora_peft", withExtension: "safetensors"), "missing fixture")
            return try SafetensorsFile(url.path).floatTensors()
        }
    }

    func model(_ f: [String: Tensor]) throws -> PixelLMForCausalLM {
        var cfg = try PixelLMTests.tinyConfig
        cfg.vocabSize = 128
        var rng = RNG(seed: 1)
        let m = PixelLMForCausalLM(config: cfg, segTokenIds: Array(122..<128), rng: &rng)
        m.attachLoRA(LoRAConfig(r: 4, alpha: 8, dropout: 0, targetModules: ["q_proj", "v_proj"]), rng: &rng)
        let llmNames = m.llm.namedTensors()
        var weights: [String: Tensor] = [:]
        for (n, _) in llmNames { weights[n] = try XCTUnwrap(f[n], "fixture lacks \(n)") }
        try m.llm.load(weights)
        return m
    }

    static func rel(_ a: Tensor, _ b: Tensor) -> Double {
        let x = a.contiguousData().toArray(), y = b.contiguousData().toArray()
        var num = 0.0, den = 0.0
        for i in 0..<min(x.count, y.count) { num = max(num, Double(abs(x[i] - y[i]))); den = max(den, Double(abs(y[i]))) }
        return num / max(den, 1e-12)
    }

    func testLoRAForwardGradientsAndMergeMatchPEFT() throws {
        let f = try Self.fixture
        let m = try model(f)
        XCTAssertEqual(m.loraAdapters.count, 4)
        XCTAssertEqual(m.config.lora?.r, 4)
        // PEFT's names, beside the wrapped layer, and in the released-names checkpoint order
        let names = m.namedTensors().map(\.0).filter { $0.contains("lora_") }
        XCTAssertEqual(Set(names), Set(f.keys.filter { $0.hasPrefix("model.") && $0.contains("lora_") }))
        XCTAssertEqual(names.filter { ParameterGroup.of($0) == .lora }.count, 8)
        let table = ParameterTable(model: m)
        XCTAssertTrue(table.trainable.contains { $0.name.hasSuffix("q_proj.lora_A.default.weight") })
        XCTAssertFalse(table.trainable.contains { $0.name == "model.layers.0.self_attn.q_proj.weight" }, "the wrapped weight stays frozen")
        table.setRequiresGrad()

        let ids = f["input_ids"]!.toArray().map { Int($0) }, labels = f["labels"]!.toArray().map { Int($0) }
        let logits = m.llm.logits(m.llm(m.llm.model.embed(ids, shape: [1, ids.count])))
        let T = ids.count
        let loss = crossEntropy(logits.reshape([T, 128]).slice(axis: 0, 0, T - 1), targets: Array(labels.dropFirst()), ignoreIndex: -100)
        let eLogits = Self.rel(logits, f["logits"]!), eLoss = Self.rel(loss.reshape([1]), f["loss"]!.reshape([1]))
        print("LoRA vs PEFT: logits \(eLogits), loss \(eLoss)")
        XCTAssertLessThanOrEqual(eLogits, 1e-5)
        XCTAssertLessThanOrEqual(eLoss, 1e-6)
        loss.backward()
        var worst = 0.0
        for (n, t) in m.namedTensors() where n.contains("lora_") {
            let e = Self.rel(try XCTUnwrap(t.grad, n), try XCTUnwrap(f["grad." + n], n))
            worst = max(worst, e)
            XCTAssertLessThanOrEqual(e, 1e-4, "gradient of \(n)")
        }
        print("LoRA vs PEFT: worst A/B gradient \(worst)")
        // merge_and_unload: W + (alpha / r) B A
        m.mergeLoRA()
        XCTAssertNil(m.config.lora)
        XCTAssertTrue(m.loraAdapters.isEmpty)
        XCTAssertFalse(m.namedTensors().contains { $0.0.contains("lora_") })
        for (n, t) in m.llm.namedTensors() where n.hasSuffix("q_proj.weight") || n.hasSuffix("v_proj.weight") {
            XCTAssertLessThanOrEqual(Self.rel(t, try XCTUnwrap(f["merged." + n], n)), 1e-6, "merged \(n)")
        }
    }

    func testDropoutMaskIsKeyedByRowNotByBatch() {
        var rng = RNG(seed: 3)
        let a = LoRAAdapter(inFeatures: 8, outFeatures: 4, config: LoRAConfig(r: 2, alpha: 4, dropout: 0.5), key: 7, rng: &rng)
        let s1 = LoRASeeds.row(seed: 1, step: 3, position: 10, conversation: 0)
        let s2 = LoRASeeds.row(seed: 1, step: 3, position: 11, conversation: 0)
        // the same row in two different batches (another partner row, another padded length) gets the same mask
        let m1 = a.dropoutMask(shape: [2, 5, 8], seeds: [s1, s2]).toArray()
        let m2 = a.dropoutMask(shape: [1, 5, 8], seeds: [s2]).toArray()
        XCTAssertEqual(Array(m1[40..<80]), m2)
        XCTAssertNotEqual(Array(m1[0..<40]), m2)
        XCTAssertTrue(m1.allSatisfy { $0 == 0 || $0 == 2 })
        let kept = Double(m1.filter { $0 > 0 }.count) / Double(m1.count)
        XCTAssertEqual(kept, 0.5, accuracy: 0.2)
        XCTAssertNotEqual(LoRASeeds.row(seed: 1, step: 4, position: 10, conversation: 0), s1)
        XCTAssertNotEqual(LoRASeeds.row(seed: 1, step: 3, position: 10, conversation: 1), s1)
    }

    func testLoRAConfigIsValidatedAndRoundTrips() throws {
        var cfg = try PixelLMTests.tinyConfig
        cfg.lora = LoRAConfig(r: 8, alpha: 16, dropout: 0.05, targetModules: ["q_proj", "v_proj"])
        let back = try JSONDecoder().decode(PixelLMConfig.self, from: JSONEncoder().encode(cfg))
        XCTAssertEqual(back.lora, cfg.lora)
        cfg.lora?.targetModules = ["qkv"]
        XCTAssertThrowsError(try cfg.validate(file: "c.json")) { XCTAssertTrue("\($0)".contains("lora.target_modules"), "\($0)") }
        cfg.lora = LoRAConfig(r: 0)
        XCTAssertThrowsError(try cfg.validate(file: "c.json")) { XCTAssertTrue("\($0)".contains("lora.r"), "\($0)") }
    }
}
