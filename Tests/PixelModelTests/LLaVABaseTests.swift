import Foundation
import XCTest
@testable import PixelModel
import PixelTensor

/// PixelLM initialised from a LLaVA base directory (Fixtures/ckpt/llava-st, llava-bin from
/// tools/fixtures/model_llava_dir.py: tiny LLaMA weights + LLaVA's single-Linear mm_projector, a tokenizer
/// without [SEG0..5]; llava-expected.safetensors: HF LlamaForCausalLM logits on those weights).
final class LLaVABaseTests: XCTestCase {
    static var dir: String { Bundle.module.url(forResource: "Fixtures/ckpt", withExtension: nil)!.path }
    static func sub(_ name: String) -> String { (dir as NSString).appendingPathComponent(name) }
    /// The LLaVA tokenizer of the fixture: 1500 pieces + <im_patch>, <im_start>, <im_end> (1500..1502).
    static func tokenizer(_ count: Int = 1503, known: [String: Int] = ["<im_start>": 1501, "<im_end>": 1502]) -> LLaVATokenizerInfo {
        LLaVATokenizerInfo(name: sub("llava-st"), count: count, known: known)
    }
    /// The tiny model's PixelLM sizes (configs/tiny: 112 px, out_dim 32, the small decoder).
    static var tiny: PixelLMSettings {
        get throws { PixelLMSettings(of: try PixelLMConfig.load(sub("st-f32/config.json"))) }
    }
    static func temp(_ name: String) -> String {
        let d = NSTemporaryDirectory() + "pixellm-llava-\(name)-\(getpid())"
        try? FileManager.default.removeItem(atPath: d)
        return d
    }

    func initialize(_ name: String = "llava-st", seed: UInt64 = 7, tokenizer: LLaVATokenizerInfo = LLaVABaseTests.tokenizer(),
                    vision: String? = LLaVABaseTests.sub("clip")) throws -> (PixelLMForCausalLM, LLaVAInitReport) {
        try LLaVABase.initialize(fromLLaVA: Self.sub(name), visionTower: vision, tokenizer: tokenizer, settings: try Self.tiny, seed: seed)
    }

    func assertError(_ body: @autoclosure () throws -> Any, mentions: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { e in
            let s = "\(e)"
            print("expected error: \(s)")
            for m in mentions { XCTAssertTrue(s.contains(m), "error '\(s)' does not mention '\(m)'", file: file, line: line) }
        }
    }

    static func stats(_ v: [Float]) -> (mean: Float, std: Float) {
        let m = v.reduce(0, +) / Float(v.count)
        let s = (v.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Float(v.count)).squareRoot()
        return (m, s)
    }

    func testLLaMALoadedVocabularyGrownAndLogitsMatchTransformers() throws {
        let (m, r) = try initialize()
        let meta = try SafetensorsFile(Self.sub("llava-expected.safetensors")).metadata["info"]!
        let info = try JSONSerialization.jsonObject(with: Data(meta.utf8)) as! [String: Any]
        let base = info["base_rows"] as! Int, after = info["vocab_after"] as! Int, seg = info["seg_ids"] as! [Int]
        XCTAssertEqual(m.config.vocabSize, after)
        XCTAssertEqual(m.segTokenIds, seg)
        XCTAssertEqual(r.vocabulary.checkpointRows, base)
        XCTAssertEqual(r.vocabulary.appended.map { $0.token }, (0..<6).map { "[SEG\($0)]" })
        XCTAssertEqual(r.vocabulary.appended.map { $0.id }, seg)
        XCTAssertEqual(r.vocabulary.newRows, base..<after)
        XCTAssertEqual(r.dtypes, ["F32"])
        XCTAssertEqual(m.config.hiddenSize, 32)
        XCTAssertEqual(m.config.resizeVisionTowerSize, 112)

        // every LLaMA tensor equals the file's (embed_tokens / lm_head: the first 1503 rows)
        let file = try SafetensorsFile(Self.sub("llava-st/model.safetensors")).floatTensors()
        let H = 32
        for (n, t) in m.llm.namedTensors() {
            let want = file[n]!.toArray(), got = t.toArray()
            XCTAssertEqual(Array(got.prefix(want.count)), want, n)
            if n == "model.embed_tokens.weight" || n == "lm_head.weight" {
                XCTAssertEqual(t.shape, [after, H])
                let new = Array(got[(base * H)...])
                XCTAssertEqual(new.count, 6 * H)
                XCTAssertTrue(new.allSatisfy { $0.isFinite })
                let s = Self.stats(new)
                XCTAssertLessThan(abs(s.mean), 0.006, "\(n) new rows: mean \(s.mean)")
                XCTAssertEqual(s.std, 0.02, accuracy: 0.005, "\(n) new rows: N(0, initializer_range)")
            }
        }
        XCTAssertEqual(r.loaded.count, file.keys.filter { !$0.hasPrefix("model.mm_projector") }.count)
        XCTAssertEqual(r.vision.loaded, m.visionNamedTensors().count)

        // the LLM part equals HF LlamaForCausalLM on the same weights
        let exp = try SafetensorsFile(Self.sub("llava-expected.safetensors")).floatTensors()
        let ids = exp["input_ids"]!.toArray().map { Int($0) }
        let logits = try Autograd.noGrad { m.llm.logits(m.llm(m.llm.model.embed(ids, shape: [1, ids.count]))) }
        XCTAssertEqual(logits.shape, [1, ids.count, after])
        let want = exp["logits"]!.toArray(), got = logits.toArray()
        var err: Float = 0, scale: Float = 1
        for t in 0..<ids.count {
            for v in 0..<base {
                err = max(err, abs(got[t * after + v] - want[t * base + v]))
                scale = max(scale, abs(want[t * base + v]))
            }
        }
        XCTAssertLessThanOrEqual(err / scale, 1e-5, "LLM logits vs transformers: max abs diff \(err)")

        // seeded: the same seed gives the same model, another seed other new weights (and only those)
        let (same, _) = try initialize()
        for ((n, a), (_, b)) in zip(m.allNamedTensors(), same.allNamedTensors()) { XCTAssertEqual(a.toArray(), b.toArray(), n) }
        let (other, _) = try initialize(seed: 8)
        XCTAssertEqual(other.llm.model.layers[1].mlp.downProj.weight.toArray(), m.llm.model.layers[1].mlp.downProj.weight.toArray())
        XCTAssertNotEqual(Array(other.llm.model.embedTokens.weight.toArray()[(base * H)...]), Array(m.llm.model.embedTokens.weight.toArray()[(base * H)...]))
        XCTAssertNotEqual(other.mmProjector.fc0.weight.toArray(), m.mmProjector.fc0.weight.toArray())
    }

    func testProjectorsAreNewTwoLayerMLPsAndTheReportSaysSo() throws {
        let (m, r) = try initialize()
        let file = try SafetensorsFile(Self.sub("llava-st/model.safetensors")).floatTensors()
        XCTAssertEqual(file["model.mm_projector.weight"]!.shape, [32, 32])
        for (name, p) in [("mm_projector", m.mmProjector), ("out_mm_projector", m.outMMProjector)] {
            XCTAssertEqual(p.fc0.weight.shape, [64, 32], name)
            XCTAssertEqual(p.fc2.weight.shape, [32, 64], name)
            XCTAssertTrue(p.fc0.bias!.toArray().allSatisfy { $0 == 0 } && p.fc2.bias!.toArray().allSatisfy { $0 == 0 }, "\(name) biases are 0")
            for w in [p.fc0.weight, p.fc2.weight] {
                let s = Self.stats(w.toArray())
                XCTAssertEqual(s.std, 0.02, accuracy: 0.002, "\(name): N(0, 0.02), not LLaVA's projector (std 0.3)")
                XCTAssertLessThan(abs(s.mean), 0.002)
            }
        }
        let fileValues = Set(file["model.mm_projector.weight"]!.toArray())
        XCTAssertTrue(m.mmProjector.fc0.weight.toArray().allSatisfy { !fileValues.contains($0) })
        XCTAssertEqual(r.ignored.map { $0.name }, ["model.mm_projector.bias", "model.mm_projector.weight"])
        XCTAssertTrue(r.ignored.allSatisfy { $0.reason.contains("single-Linear") })
        let inits = r.initialized.joined(separator: "\n")
        for s in ["model.mm_projector (2-layer)", "model.out_mm_projector (2-layer)", "PyTorch default", "rows 1503..<1509"] {
            XCTAssertTrue(inits.contains(s), "initialised list does not mention \(s): \(inits)")
        }
        XCTAssertEqual(r.summary.count, 2)
        XCTAssertTrue(r.summary[0].contains("model.mm_projector.weight"), r.summary[0])
        XCTAssertTrue(r.summary[1].contains("untrained"), r.summary[1])
        // the decoder side has PyTorch's default init: finite, not all zero
        for (n, t) in m.decoderSide.namedTensors(prefix: "model") where t.count > 0 {
            XCTAssertTrue(t.toArray().allSatisfy { $0.isFinite }, n)
        }
    }

    func testBinBF16DirectoryLoadsTheSameWeightsRounded() throws {
        let (st, _) = try initialize()
        let (bin, r) = try initialize("llava-bin")
        XCTAssertEqual(r.dtypes, ["BF16"])
        for ((n, a), (_, b)) in zip(st.allNamedTensors(), bin.allNamedTensors()) {
            let x = a.toArray(), y = b.toArray()
            if ParameterGroup.of(n) == .projector || ParameterGroup.of(n) == .decoder || ParameterGroup.of(n) == .clip
                || ParameterGroup.of(n) == .neck || ParameterGroup.of(n) == .fcs || ParameterGroup.of(n) == .prompt {
                XCTAssertEqual(x, y, "\(n): the same seed gives the same new weights")
                continue
            }
            for i in 0..<x.count { XCTAssertLessThanOrEqual(abs(x[i] - y[i]), abs(x[i]) / 128 + 1e-30, "\(n)[\(i)] is not the bf16 rounding") }
        }
        // .bf16 precision keeps the layer matrices in bf16: the same logits as the f32 copy of the bf16 file
        let (b16, _) = try LLaVABase.initialize(fromLLaVA: Self.sub("llava-bin"), visionTower: Self.sub("clip"), tokenizer: Self.tokenizer(),
                                                settings: try Self.tiny, seed: 7, precision: .bf16)
        XCTAssertNotNil(b16.llm.model.layers[0].selfAttn.qProj.bf16Weight)
        let ids = [1, 450, 7, 1200, 1503, 1504]
        let a = try Autograd.noGrad { bin.llm.logits(bin.llm(bin.llm.model.embed(ids, shape: [1, ids.count]))) }.toArray()
        let b = try Autograd.noGrad { b16.llm.logits(b16.llm(b16.llm.model.embed(ids, shape: [1, ids.count]))) }.toArray()
        let scale = max(1, a.map { abs($0) }.max()!)
        XCTAssertLessThanOrEqual(zip(a, b).map { abs($0 - $1) }.max()! / scale, 2e-2)
    }

    func testForwardWithAnImageProducesMasks() throws {
        let (m, _) = try initialize()
        let ref = try SafetensorsFile(Self.sub("reference.safetensors")).floatTensors()
        let pixels = ref["image.pixels"]!
        let ids = [1, 319, 1013, 1501, PixelLMTokens.image, 1502, 13, 450, 338] + m.segTokenIds + [889, 2]
        let labels = ids.map { $0 == PixelLMTokens.image ? PixelLMTokens.ignore : $0 }
        let batch = PixelLMBatch(pixels: pixels.reshape([1] + pixels.shape), validSizes: [(84, 112)], originalSizes: [(45, 60)],
                                 conversations: [PixelLMConversation(imageIndex: 0, inputIds: ids, labels: labels,
                                                                     targetMasks: Tensor.zeros([1, 45, 60]))])
        let out = try Autograd.noGrad { try m.forward(batch) }
        let c = out.conversations[0]
        XCTAssertNil(c.reason)
        XCTAssertEqual(c.predictedCount, 1)
        XCTAssertEqual(c.maskLogits?.shape, [1, 45, 60])
        XCTAssertEqual(c.lowRes?.shape, [1, 1, 32, 32])
        XCTAssertEqual(out.logits.shape, [1, ids.count - 1 + 16, 1509])
        XCTAssertTrue(c.maskLogits!.toArray().allSatisfy { $0.isFinite })
        XCTAssertTrue(out.losses.total.toArray().allSatisfy { $0.isFinite })
    }

    func testTokenizerThatAlreadyHasTheSEGTokens() throws {
        var known = Self.tokenizer().known
        for i in 0..<6 { known["[SEG\(i)]"] = 1503 + i }
        let (m, r) = try initialize(tokenizer: Self.tokenizer(1509, known: known))
        XCTAssertTrue(r.vocabulary.appended.isEmpty)
        XCTAssertEqual(m.config.vocabSize, 1509)
        XCTAssertEqual(m.segTokenIds, Array(1503...1508))
        // a tokenizer without <im_start>/<im_end>: appended after the SEG tokens, as train_ds.py adds them
        let v = try LLaVABase.planVocabulary(checkpointRows: 1500, checkpointName: "x", tokenizer: LLaVATokenizerInfo(name: "t", count: 1500, known: [:]))
        XCTAssertEqual(v.appended.map { $0.token }, (0..<6).map { "[SEG\($0)]" } + ["<im_start>", "<im_end>"])
        XCTAssertEqual(v.appended.map { $0.id }, Array(1500..<1508))
        XCTAssertEqual(v.vocabSize, 1508)
        // the tokenizer train_ds.py saves: added_tokens.json with the appended tokens
        let out = Self.temp("tok")
        let (_, r2) = try initialize()
        try LLaVABase.writeExtendedTokenizer(from: Self.sub("llava-st"), to: out, vocabulary: r2.vocabulary)
        let added = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/added_tokens.json"))) as! [String: Int]
        XCTAssertEqual(added.count, 9)
        XCTAssertEqual(added["<im_end>"], 1502)
        XCTAssertEqual(added["[SEG5]"], 1508)
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/tokenizer.model"))
    }

    func testBadLLaVADirectoriesAreNamedErrors() throws {
        func edited(_ name: String, _ edit: (inout [String: Any]) -> Void) throws -> String {
            let d = Self.temp(name)
            try FileManager.default.copyItem(atPath: Self.sub("llava-st"), toPath: d)
            let p = d + "/config.json"
            var c = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: p))) as! [String: Any]
            edit(&c)
            try JSONSerialization.data(withJSONObject: c).write(to: URL(fileURLWithPath: p))
            return d
        }
        let tiny = try Self.tiny
        func open(_ d: String, _ tok: LLaVATokenizerInfo = LLaVABaseTests.tokenizer(), vision: String? = LLaVABaseTests.sub("clip")) throws -> Any {
            try LLaVABase.initialize(fromLLaVA: d, visionTower: vision, tokenizer: tok, settings: tiny)
        }
        for (field, value) in [("hidden_size", 48), ("num_hidden_layers", 3), ("vocab_size", 1600), ("intermediate_size", 96)] {
            let d = try edited(field) { $0[field] = value }
            assertError(try open(d), mentions: [d + "/config.json", "'\(field)'"])
        }
        // a tokenizer smaller than the checkpoint's vocabulary
        assertError(try open(Self.sub("llava-st"), Self.tokenizer(1400)), mentions: [Self.sub("llava-st"), "1400", "1503"])
        // no vision tower (config.json's mm_vision_tower is a hub name)
        assertError(try open(Self.sub("llava-st"), vision: nil), mentions: [Self.sub("llava-st"), "--vision-tower", "openai/clip-vit-large-patch14"])
        assertError(try open(Self.sub("llava-st"), vision: Self.temp("none")), mentions: [Self.temp("none"), "does not exist"])
        // a PixelLM directory is not a LLaVA base, and the PixelLM loader refuses a LLaVA base, pointing here
        assertError(try open(Self.sub("st-f32")), mentions: [Self.sub("st-f32"), "PixelLM checkpoint"])
        assertError(try PixelLMModelDirectory.open(Self.sub("llava-st"), visionTower: Self.sub("clip")),
                    mentions: [Self.sub("llava-st"), "LLaVA", "LLaVABase.initialize"])
        // an unknown tensor
        let extra = Self.temp("extra")
        try FileManager.default.copyItem(atPath: Self.sub("llava-st"), toPath: extra)
        var w = try SafetensorsFile(extra + "/model.safetensors").floatTensors()
        w["model.something_else.weight"] = Tensor.zeros([2])
        try Safetensors.write(w, to: extra + "/model.safetensors")
        assertError(try open(extra), mentions: [extra, "model.something_else.weight"])
    }
}
