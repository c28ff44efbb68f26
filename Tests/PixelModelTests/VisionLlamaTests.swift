import Foundation
import XCTest
import PixelTensor
@testable import PixelModel

/// CLIP vision tower, projector helpers, LLaMA decoder and KV cache against HF transformers 5.24
/// (tools/fixtures/model_vision_llama.py -> Fixtures/vision_llama.h5), plus finite differences on small
/// pieces and the full-size shapes.
final class VisionLlamaTests: XCTestCase {
    static let fwdTol = 1e-4
    static let gradTol = 1e-3

    static var tinyConfig: PixelLMConfig {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return try! PixelLMConfig.load(dir.appendingPathComponent("configs/tiny/config.json").path)
    }

    nonisolated(unsafe) static var cached: [String: Tensor]?
    static func fixture() throws -> [String: Tensor] {
        if let cached { return cached }
        let f = try ModelFixture.load("vision_llama")
        cached = f
        return f
    }

    static func weights(_ f: [String: Tensor], vision: Bool) -> [String: Tensor] {
        ModelFixture.group(f, "weights").filter { $0.key.hasPrefix("vision_model.") == vision }
    }

    static func ints(_ t: Tensor) -> [Int] { t.toArray().map { Int($0) } }

    /// sum(out * r) as a scalar tensor.
    static func project(_ pairs: [(Tensor, Tensor)]) -> Tensor {
        let terms = pairs.map { ($0.0 * $0.1).sum() }
        return terms.dropFirst().reduce(terms[0], +)
    }

    /// Compares every parameter's gradient with the fixture's; returns the largest relative error.
    /// Gradients that are exactly zero in exact arithmetic (`analyticallyZero`, e.g. an attention key bias:
    /// softmax ignores a per-query constant) are rounding noise on both sides; they must stay below 1e-6 of
    /// the largest gradient of the module instead.
    @discardableResult
    static func checkGrads(_ m: Module, _ f: [String: Tensor], prefix: String = "grads/", tol: Double,
                           analyticallyZero: (String) -> Bool = { _ in false },
                           file: StaticString = #filePath, line: UInt = #line) -> Double {
        var worst = 0.0
        let scale = m.namedTensors().compactMap { f[prefix + $0.0] }.map { $0.toArray().map { abs($0) }.max() ?? 0 }.max() ?? 0
        for (name, t) in m.namedTensors() {
            guard let want = f[prefix + name] else { XCTFail("fixture has no \(prefix + name)", file: file, line: line); continue }
            let got = t.grad ?? Tensor.zeros(t.shape)
            if analyticallyZero(name) {
                for (label, g) in [("ours", got), ("reference", want)] {
                    let mx = g.toArray().map { abs($0) }.max() ?? 0
                    XCTAssertLessThanOrEqual(mx, 1e-6 * scale, "grad \(name) (\(label)) should be ~0", file: file, line: line)
                }
                continue
            }
            assertMatches(got, want, tol: tol, "grad \(name)", file: file, line: line)
            worst = max(worst, modelRelError(got, want))
        }
        return worst
    }

    static func requireGrads(_ m: Module) { for (_, t) in m.namedTensors() { t.requiresGrad = true; t.grad = nil } }

    // MARK: - fixtures

    func testCLIPAndProjectorMatchHF() throws {
        let f = try Self.fixture()
        let c = Self.tinyConfig
        var rng = RNG(seed: 1)
        let clip = CLIPVisionModel(config: c, rng: &rng)
        try clip.load(Self.weights(f, vision: true))
        let proj = ProjectorMLP(config: c, rng: &rng)
        try proj.load(ModelFixture.group(f, "projector"))
        Self.requireGrads(clip)
        Self.requireGrads(proj)

        XCTAssertEqual(clip.embeddings.positionEmbedding.shape, [37, 32], "the checkpoint table (6x6 + 1)")
        let table = clip.embeddings.positionTable()
        assertMatches(table, f["outputs/position_table"]!, tol: 1e-6, "resized position table (reference off-by-one)")

        let pixels = f["inputs/pixels"]!
        pixels.requiresGrad = true
        let vs = Self.ints(f["inputs/valid_sizes"]!)
        let sizes = (0..<pixels.dim(0)).map { (height: vs[2 * $0], width: vs[2 * $0 + 1]) }
        let feats = clip(pixels, validSizes: sizes)
        let pooled = clip.poolTokens(feats.deep)
        let projected = proj(pooled)
        var errs: [String: Double] = [:]
        for (name, t) in [("deep", feats.deep), ("mid", feats.mid), ("pooled", pooled), ("projected", projected)] {
            assertMatches(t, f["outputs/\(name)"]!, tol: Self.fwdTol, name)
            errs[name] = modelRelError(t, f["outputs/\(name)"]!)
        }
        let loss = Self.project([(feats.deep, f["proj/deep"]!), (feats.mid, f["proj/mid"]!), (pooled, f["proj/pooled"]!),
                                 (projected, f["proj/projected"]!)])
        loss.backward()
        errs["grad CLIP params (worst)"] = Self.checkGrads(clip, f, tol: Self.gradTol) { $0.hasSuffix("k_proj.bias") }
        errs["grad projector params (worst)"] = Self.checkGrads(proj, f, prefix: "grads/projector/", tol: Self.gradTol)
        assertMatches(pixels.grad!, f["grads/pixels"]!, tol: Self.gradTol, "grad pixels")
        errs["grad pixels"] = modelRelError(pixels.grad!, f["grads/pixels"]!)
        XCTAssertNil(clip.layers.last!.mlp.fc1.weight.grad, "the last layer (after hidden state -2) does not run")
        XCTAssertNil(clip.postLayernorm.weight.grad, "no post-layernorm")
        print("VisionLlamaTests CLIP relative errors:", errs.sorted { $0.key < $1.key }.map { "\($0.key) \(String(format: "%.2e", $0.value))" })
    }

    /// The LLM input of the fixture: embed(ids[:, :2]) ++ image tokens ++ embed(ids[:, 2:]).
    static func splicedEmbeds(_ llm: LlamaForCausalLM, _ f: [String: Tensor], image: Tensor) -> Tensor {
        let ids = ints(f["inputs/ids"]!)
        let B = image.dim(0), n = ids.count / B
        let head = (0..<B).flatMap { b in ids[(b * n)..<(b * n + 2)] }
        let tail = (0..<B).flatMap { b in ids[(b * n + 2)..<(b * n + n)] }
        return concat([llm.model.embed(head, shape: [B, 2]), image, llm.model.embed(tail, shape: [B, n - 2])], axis: 1)
    }

    func testLlamaMatchesHF() throws {
        let f = try Self.fixture()
        var rng = RNG(seed: 2)
        let llm = LlamaForCausalLM(config: Self.tinyConfig, rng: &rng)
        try llm.load(Self.weights(f, vision: false))
        Self.requireGrads(llm)
        let image = f["inputs/image_embeds"]!
        image.requiresGrad = true
        let mask = f["inputs/llm_mask"]!
        let hidden = llm(Self.splicedEmbeds(llm, f, image: image), attentionMask: mask)
        let logits = llm.logits(hidden)
        assertMatches(hidden, f["outputs/hidden"]!, tol: Self.fwdTol, "hidden after norm")
        assertMatches(logits, f["outputs/logits"]!, tol: Self.fwdTol, "logits")
        Self.project([(hidden, f["proj/hidden"]!), (logits, f["proj/logits"]!)]).backward()
        let worst = Self.checkGrads(llm, f, tol: Self.gradTol)
        assertMatches(image.grad!, f["grads/image_embeds"]!, tol: Self.gradTol, "grad image embeds")
        print("VisionLlamaTests LLaMA relative errors: hidden", String(format: "%.2e", modelRelError(hidden, f["outputs/hidden"]!)),
              "logits", String(format: "%.2e", modelRelError(logits, f["outputs/logits"]!)),
              "grad params (worst)", String(format: "%.2e", worst),
              "grad image embeds", String(format: "%.2e", modelRelError(image.grad!, f["grads/image_embeds"]!)))
    }

    func testMasksMatchReference() throws {
        let f = try Self.fixture()
        var rng = RNG(seed: 3)
        let clip = CLIPVisionModel(config: Self.tinyConfig, init: nil, rng: &rng)
        let vs = Self.ints(f["inputs/valid_sizes"]!)
        let sizes = [(height: vs[0], width: vs[1]), (height: vs[2], width: vs[3])]
        let additive = clip.keyMask(validSizes: sizes)
        XCTAssertEqual(additive.shape, [2, 1, 1, 65])
        let want = f["outputs/vit_key_mask"]!.toArray()
        XCTAssertEqual(additive.toArray().map { $0 == 0 ? Float(1) : ($0 == KeyMask.masked ? 0 : -1) }, want)
        XCTAssertEqual(clip.llmImageMask(validSizes: sizes).toArray(), f["outputs/llm_image_mask"]!.toArray())
        // the LLM mask of the fixture splices the image mask after two text tokens
        let llmMask = f["inputs/llm_mask"]!
        XCTAssertEqual(llmMask.slice(axis: 1, 2, 18).toArray(), f["outputs/llm_image_mask"]!.toArray())
        // 448 px / patch 14: valid(i, j) = 14 i < h' and 14 j < w'
        let v = CLIPVisionModel.patchValidity(height: 300, width: 448, grid: 32, patch: 14)
        XCTAssertEqual(v.filter { $0 }.count, 22 * 32)   // 14 * 21 = 294 < 300, 14 * 22 = 308
        XCTAssertNil(KeyMask.additive(Tensor.ones([2, 3])), "nothing masked: no mask tensor")
    }

    // MARK: - behaviour

    func testKVCacheMatchesFullForward() throws {
        let f = try Self.fixture()
        var rng = RNG(seed: 4)
        let llm = LlamaForCausalLM(config: Self.tinyConfig, rng: &rng)
        try llm.load(Self.weights(f, vision: false))
        let mask = f["inputs/llm_mask"]!
        try Autograd.noGrad {
            let embeds = Self.splicedEmbeds(llm, f, image: f["inputs/image_embeds"]!)
            let T = embeds.dim(1), prefill = 19
            let full = llm(embeds, attentionMask: mask)
            let fullLogits = llm.logits(full)
            // a small capacity makes the cache grow during prefill and decoding
            let cache = llm.makeCache(batch: 2, capacity: 4)
            let h0 = llm(embeds.slice(axis: 1, 0, prefill), attentionMask: mask.slice(axis: 1, 0, prefill), cache: cache)
            var worst = modelRelError(h0, full.slice(axis: 1, 0, prefill))
            XCTAssertEqual(cache.length, prefill)
            for t in prefill..<T {
                // the padding of the second sequence (its last two positions) is masked as it arrives
                let h = llm(embeds.slice(axis: 1, t, t + 1), attentionMask: mask.slice(axis: 1, t, t + 1), cache: cache)
                assertMatches(h, full.slice(axis: 1, t, t + 1), tol: 1e-5, "cached hidden at \(t)")
                assertMatches(llm.logits(h), fullLogits.slice(axis: 1, t, t + 1), tol: 1e-5, "cached logits at \(t)")
                worst = max(worst, modelRelError(h, full.slice(axis: 1, t, t + 1)))
            }
            XCTAssertEqual(cache.length, T)
            XCTAssertEqual(cache.keyValidity.toArray(), mask.toArray(), "the cache keeps the key mask of every position")
            // steps without a mask after masked positions: the old mask still applies
            let more = Tensor.randn([2, 1, 32], rng: &rng)
            let stepped = llm(more, cache: cache)
            let whole = llm(concat([embeds, more], axis: 1), attentionMask: concat([mask, Tensor.ones([2, 1])], axis: 1))
            assertMatches(stepped, whole.slice(axis: 1, T, T + 1), tol: 1e-5, "step after the masked prefix")
            print("VisionLlamaTests KV cache: worst relative error vs full forward", String(format: "%.2e", worst))
            cache.reset()
            XCTAssertEqual(cache.length, 0)
            let again = llm(embeds, attentionMask: mask, cache: cache)
            assertMatches(again, full, tol: 1e-6, "after reset")
        }
        // with gradients on, the step's own keys and values stay on the tape (the past is constant)
        Self.requireGrads(llm)
        let embeds = Autograd.noGrad { Self.splicedEmbeds(llm, f, image: f["inputs/image_embeds"]!) }
        let full = llm(embeds, attentionMask: mask)
        let cache = llm.makeCache(batch: 2)
        _ = llm(embeds.slice(axis: 1, 0, 20), attentionMask: mask.slice(axis: 1, 0, 20), cache: cache)
        let step = llm(embeds.slice(axis: 1, 20, 24), attentionMask: mask.slice(axis: 1, 20, 24), cache: cache)
        assertMatches(step, full.slice(axis: 1, 20, 24), tol: 1e-5, "cached step with gradients on")
        XCTAssertTrue(step.requiresGrad)
    }

    func testPositionTableResizeModes() {
        // D = 1, g0 = 2: rows CLS = 100, patches 1, 2, 3, 4 (raster order)
        let table = Tensor([100, 1, 2, 3, 4], shape: [5, 1])
        let ref = CLIPVisionEmbeddings.resizePositionTable(table, from: 2, to: 4, mode: .reference).toArray()
        XCTAssertEqual(ref.count, 17)
        // the reference reads [100, 1; 2, 3] as the grid and appends the last patch row (4) for CLS
        XCTAssertEqual(ref[0], 100, "CLS token gets the grid corner made from the old CLS row")
        XCTAssertEqual(ref[16], 4, "the last run row is the old last patch row")
        // bilinear 2 -> 4, align_corners=False: taps (1, 0), (.75, .25), (.25, .75), (0, 1)
        let w: [[Float]] = [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]]
        func up(_ g: [[Float]], _ i: Int, _ j: Int) -> Float {
            var s: Float = 0
            for a in 0..<2 { for b in 0..<2 { s += w[i][a] * w[j][b] * g[a][b] } }
            return s
        }
        let refGrid: [[Float]] = [[100, 1], [2, 3]], goodGrid: [[Float]] = [[1, 2], [3, 4]]
        let good = CLIPVisionEmbeddings.resizePositionTable(table, from: 2, to: 4, mode: .corrected).toArray()
        XCTAssertEqual(good[0], 100, "corrected: CLS stays row 0")
        for i in 0..<4 {
            for j in 0..<4 {
                XCTAssertEqual(ref[i * 4 + j], up(refGrid, i, j), accuracy: 1e-5)
                XCTAssertEqual(good[1 + i * 4 + j], up(goodGrid, i, j), accuracy: 1e-5)
            }
        }
        for mode in PositionTableResize.allCases {
            XCTAssertEqual(CLIPVisionEmbeddings.resizePositionTable(table, from: 2, to: 2, mode: mode).toArray(), table.toArray())
        }
    }

    func testStrictLoadRejectsRunSizeTable() throws {
        let f = try Self.fixture()
        var rng = RNG(seed: 5)
        let clip = CLIPVisionModel(config: Self.tinyConfig, init: nil, rng: &rng)
        var w = Self.weights(f, vision: true)
        w["vision_model.embeddings.position_embedding.weight"] = f["outputs/position_table"]!
        XCTAssertThrowsError(try clip.load(w)) { e in
            XCTAssertTrue("\(e)".contains("position_embedding.weight expected [37, 32] found [65, 32]"), "\(e)")
        }
        w = Self.weights(f, vision: true)
        w.removeValue(forKey: "vision_model.post_layernorm.weight")
        XCTAssertThrowsError(try clip.load(w)) { e in XCTAssertTrue("\(e)".contains("post_layernorm.weight"), "\(e)") }
    }

    // MARK: - finite differences

    /// Central differences of sum(f() * R) (accumulated in Double) against backward, on up to `samples`
    /// elements of each input. Returns the worst |analytic - numeric| / max(|analytic|, |numeric|, 0.05 max|analytic|)
    /// (the floor keeps fp32 rounding on near-zero entries from counting as relative error).
    static func finiteDifferences(_ inputs: [Tensor], samples: Int = 24, eps: Float = 1e-2, seed: UInt64 = 7,
                                  _ f: () -> Tensor) -> Double {
        var rng = RNG(seed: seed)
        let out0 = Autograd.noGrad { f() }
        let R = Tensor.randn(out0.shape, rng: &rng)
        func loss() -> Double {
            Autograd.noGrad {
                let o = f().contiguousData()
                var s = 0.0
                for i in 0..<o.count { s += Double(o.ptr[i]) * Double(R.ptr[i]) }
                return s
            }
        }
        for x in inputs { x.requiresGrad = true; x.grad = nil }
        f().backward(R)
        var worst = 0.0
        for x in inputs {
            let g = x.grad?.toArray() ?? [Float](repeating: 0, count: x.count)
            let gmax = Double(g.map { abs($0) }.max() ?? 0)
            for k in 0..<min(samples, x.count) {
                let i = x.count <= samples ? k : rng.int(x.count)
                let orig = x.ptr[i]
                x.ptr[i] = orig + eps
                let lp = loss()
                x.ptr[i] = orig - eps
                let lm = loss()
                x.ptr[i] = orig
                let numeric = (lp - lm) / (2 * Double(eps)), analytic = Double(g[i])
                worst = max(worst, abs(numeric - analytic) / max(abs(numeric), abs(analytic), 0.05 * gmax))
            }
        }
        return worst
    }

    func testFiniteDifferencesSmallPieces() {
        var rng = RNG(seed: 6)
        // a CLIP encoder layer with a masked key
        var vc = CLIPVisionConfig()
        vc.hiddenSize = 8; vc.intermediateSize = 16; vc.numAttentionHeads = 2
        let layer = CLIPEncoderLayer(config: vc, init: .normal(std: 0.4), rng: &rng)
        let x = Tensor.randn([2, 5, 8], rng: &rng)
        let mask = KeyMask.additive(Tensor([1, 1, 0, 1, 1, 1, 1, 1, 1, 0], shape: [2, 5]))!
        let e1 = Self.finiteDifferences([x, layer.selfAttn.qProj.weight, layer.mlp.fc1.weight, layer.layerNorm1.weight]) {
            layer(x, mask: mask)
        }
        XCTAssertLessThan(e1, 1e-2, "CLIP layer")
        // a LLaMA layer: GQA 4 / 2 heads, RoPE, causal + key mask
        var c = PixelLMConfig()
        c.hiddenSize = 16; c.intermediateSize = 24; c.numAttentionHeads = 4; c.numKeyValueHeads = 2; c.numHiddenLayers = 1
        let dl = LlamaDecoderLayer(config: c, init: .normal(std: 0.3), rng: &rng)
        let y = Tensor.randn([2, 6, 16], rng: &rng)
        let rot = RotaryTable(positions: Array(0..<6), dim: 4, theta: 10000)
        let m2 = KeyMask.additive(Tensor([1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 0], shape: [2, 6]))!
        let e2 = Self.finiteDifferences([y, dl.selfAttn.kProj.weight, dl.mlp.gateProj.weight, dl.inputLayernorm.weight]) {
            dl(y, rotary: rot, mask: m2)
        }
        XCTAssertLessThan(e2, 1e-2, "LLaMA layer")
        // the position-table resize and the 2x2 pooling
        let table = Tensor.randn([10, 3], rng: &rng)
        let e3 = Self.finiteDifferences([table]) { CLIPVisionEmbeddings.resizePositionTable(table, from: 3, to: 4, mode: .reference) }
        let tokens = Tensor.randn([1, 16, 3], rng: &rng)
        let e4 = Self.finiteDifferences([tokens]) { CLIPVisionModel.poolTokens(tokens, grid: 4) }
        XCTAssertLessThan(max(e3, e4), 1e-2, "resize / pooling")
        print("VisionLlamaTests finite differences: CLIP layer", String(format: "%.2e", e1), "LLaMA layer", String(format: "%.2e", e2),
              "resize", String(format: "%.2e", e3), "pool", String(format: "%.2e", e4))
    }

    // MARK: - full-size shapes

    func testFullSizeShapesConstruct() {
        var c = PixelLMConfig()   // the 7B preset
        c.numHiddenLayers = 2
        var rng = RNG(seed: 8)
        let llm = LlamaForCausalLM(config: c, init: nil, rng: &rng)   // skeleton: no random draws
        XCTAssertEqual(llm.model.layers[0].parameterCount, 202_383_360, "one LLaMA-7B layer")
        XCTAssertEqual(llm.parameterCount, 2 * 202_383_360 + 2 * 32009 * 4096 + 4096)
        XCTAssertEqual(llm.model.layers[1].selfAttn.kProj.weight.shape, [4096, 4096])
        let clip = CLIPVisionModel(config: c, init: nil, rng: &rng)
        XCTAssertEqual(clip.parameterCount, 303_507_456, "CLIP ViT-L/14-336 (HF CLIPVisionModel)")
        XCTAssertEqual(clip.embeddings.positionEmbedding.shape, [577, 1024])
        XCTAssertEqual(clip.grid, 32)
        XCTAssertEqual(clip.hiddenStateIndex(c.mmVisionSelectLayer), 23)
        XCTAssertEqual(clip.hiddenStateIndex(c.mmVisionMidLayer), 14)
        XCTAssertEqual(ProjectorMLP(config: c, init: nil, rng: &rng).parameterCount, 41_955_328, "mm_projector (spec 0)")
        let names = Set(clip.namedTensors().map { $0.0 })
        XCTAssertTrue(names.contains("vision_model.pre_layrnorm.weight") && names.contains("vision_model.encoder.layers.23.mlp.fc2.bias"))
    }
}
