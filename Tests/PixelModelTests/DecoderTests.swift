import Foundation
import XCTest
import PixelTensor
@testable import PixelModel

/// The pixel-decoder side (MaskDecoder.swift, PromptEncoder.swift, PixelHeads.swift) against the PyTorch
/// port in tools/reference/pixellm_torch.py (fixture Fixtures/decoder.h5 from tools/fixtures/model_decoder.py,
/// tiny config), finite differences on the small pieces, the released parameter counts (spec section 0) and
/// the SEG gathering rules.
final class DecoderTests: XCTestCase {
    static let forwardTol = 1e-4
    static let gradTol = 1e-3

    static var tinyConfig: PixelLMConfig {
        get throws { try PixelLMConfig.load(ConfigTests.configsDir.appendingPathComponent("tiny/config.json").path) }
    }

    /// The fixture's fixed projection: sin(1.7 i + 0.5) over the row-major index (float64 -> float32).
    static func projection(_ shape: [Int]) -> Tensor {
        let n = shape.reduce(1, *)
        return Tensor((0..<n).map { Float(Foundation.sin(1.7 * Double($0) + 0.5)) }, shape: shape)
    }

    static func ints(_ t: Tensor) -> [Int] { t.toArray().map { Int($0) } }

    /// The tiny decoder side with the fixture's weights (strict load), parameters requiring grad.
    static func loadedTiny(_ all: [String: Tensor]) throws -> PixelDecoderSide {
        var rng = RNG(seed: 7)
        let side = PixelDecoderSide(config: try tinyConfig, rng: &rng)
        try side.load(ModelFixture.group(all, "weights"), prefix: "model")
        for (_, p) in side.parameters() { p.requiresGrad = true }
        return side
    }

    // MARK: - fixture: strict load, forward, gradients

    func testMatchesPyTorchPortForwardAndGradients() throws {
        let all = try ModelFixture.load("decoder")
        let side = try Self.loadedTiny(all)
        let features = all["inputs/features"]!, hidden = all["inputs/hidden"]!
        features.requiresGrad = true
        hidden.requiresGrad = true
        let ids = Self.ints(all["inputs/ids"]!), segIds = Set(Self.ints(all["inputs/seg_ids"]!))
        let inSize = Self.ints(all["inputs/input_size"]!), origSize = Self.ints(all["inputs/original_size"]!)

        let rows = segHiddenRows(tokenIds: ids, segTokenIds: segIds)
        XCTAssertEqual(rows, Self.ints(all["out/positions"]!))

        assertMatches(side.promptEncoder.densePE().squeeze(0), all["out/pe0"]!, tol: Self.forwardTol, "dense PE (level 0)")
        let E = side.imageEmbeddings(features)
        assertMatches(E, all["out/E"]!, tol: Self.forwardTol, "neck output E")
        let sq = side.queries(hidden: hidden, rows: rows)
        XCTAssertNil(sq.reason)
        XCTAssertEqual(sq.targetCount, 3)
        let q = try XCTUnwrap(sq.queries)
        assertMatches(sq.projected!, all["out/fcs"]!, tol: Self.forwardTol, "text_hidden_fcs at the SEG rows")
        assertMatches(q, all["out/queries"]!, tol: Self.forwardTol, "fused queries")

        let out = side.decode(embeddings: E, queries: q)
        XCTAssertEqual(out.levels.count, 2)
        assertMatches(out.levels[0], all["out/level0"]!, tol: Self.forwardTol, "level 0 mask [K,1,2g,2g]")
        assertMatches(out.levels[1], all["out/level1"]!, tol: Self.forwardTol, "level 1 mask [K,1,4g,4g]")
        assertMatches(out.lowRes, all["out/low"]!, tol: Self.forwardTol, "low-res logits [K,1,4g,4g]")
        let post = postprocessMasks(out.lowRes, inputSize: (inSize[0], inSize[1]), originalSize: (origSize[0], origSize[1]))
        assertMatches(post, all["out/post"]!, tol: Self.forwardTol, "post-processed logits")
        for (what, t) in [("pe0", side.promptEncoder.densePE().squeeze(0)), ("fcs", sq.projected!), ("queries", q), ("E", E),
                          ("level0", out.levels[0]), ("level1", out.levels[1]), ("low", out.lowRes), ("post", post)] {
            print("decoder fixture forward \(what): rel error \(modelRelError(t, all["out/\(what)"]!))")
        }

        let loss = (out.lowRes * Self.projection(out.lowRes.shape)).sum() + (post * Self.projection(post.shape)).sum()
        loss.backward()
        var worst = (0.0, ""), checked = 0, unused = 0
        for (name, p) in side.parameters(prefix: "model") {
            if let ref = all["grads/" + name] {
                let g = try XCTUnwrap(p.grad, "no gradient for \(name)")
                var e = modelRelError(g, ref)
                if name.hasSuffix("k_proj.bias") {
                    // exactly zero in exact arithmetic (softmax ignores a per-query constant): both sides hold
                    // rounding noise (~1e-9), so measure against the scale of the k_proj.weight gradient
                    let wref = all["grads/" + name.dropLast(4) + "weight"]!
                    let scale = Double(wref.toArray().map(abs).max() ?? 1)
                    let diff = zip(g.toArray(), ref.toArray()).map { Double(abs($0 - $1)) }.max() ?? 0
                    e = diff / scale
                    XCTAssertLessThanOrEqual(e, Self.gradTol, "gradient of \(name) (vs the k_proj.weight gradient scale)")
                } else {
                    assertMatches(g, ref, tol: Self.gradTol, "gradient of \(name)")
                }
                if e > worst.0 { worst = (e, name) }
                checked += 1
            } else {
                // parameters the forward does not use (IoU head, hypernetwork MLPs 1-3, SAM prompt pieces)
                let maxAbs = p.grad.map { $0.toArray().map(abs).max() ?? 0 } ?? 0
                XCTAssertEqual(maxAbs, 0, "\(name) is unused by the reference but got a gradient")
                unused += 1
            }
        }
        for (what, t) in [("features", features), ("hidden", hidden)] {
            let g = try XCTUnwrap(t.grad)
            assertMatches(g, all["grads/inputs/\(what)"]!, tol: Self.gradTol, "gradient of input \(what)")
            let e = modelRelError(g, all["grads/inputs/\(what)"]!)
            if e > worst.0 { worst = (e, "inputs/\(what)") }
        }
        let expectedGrads = all.keys.filter { $0.hasPrefix("grads/model.") }.count
        XCTAssertEqual(checked, expectedGrads)
        XCTAssertEqual(checked + unused, side.parameters().count)
        XCTAssertEqual(unused, 39)
        print("decoder fixture gradients: \(checked) parameters + 2 inputs, worst rel error \(worst.0) (\(worst.1)); \(unused) unused parameters have none")
    }

    /// Decoding K targets together equals decoding each alone (the batch of targets is independent).
    func testTargetsAreIndependent() throws {
        let all = try ModelFixture.load("decoder")
        let side = try Self.loadedTiny(all)
        let (E, q) = Autograd.noGrad { () -> (Tensor, Tensor) in
            let E = side.imageEmbeddings(all["inputs/features"]!)
            let rows = segHiddenRows(tokenIds: Self.ints(all["inputs/ids"]!), segTokenIds: Set(Self.ints(all["inputs/seg_ids"]!)))
            return (E, side.queries(hidden: all["inputs/hidden"]!, rows: rows).queries!)
        }
        let together = Autograd.noGrad { side.decode(embeddings: E, queries: q).lowRes }
        for k in 0..<q.dim(0) {
            let alone = Autograd.noGrad { side.decode(embeddings: E, queries: q.slice(axis: 0, k, k + 1).contiguous()).lowRes }
            assertMatches(alone, together.slice(axis: 0, k, k + 1).contiguous(), tol: 1e-5, "target \(k) alone")
        }
    }

    // MARK: - strict loading and names

    func testStrictLoadingNamesMissingAndUnexpectedWeights() throws {
        let all = try ModelFixture.load("decoder")
        var weights = ModelFixture.group(all, "weights")
        var rng = RNG(seed: 3)
        let side = PixelDecoderSide(config: try Self.tinyConfig, rng: &rng)
        let dropped = "model.mask_decoder.iou_prediction_head.layers.2.bias"
        let saved = weights.removeValue(forKey: dropped)
        XCTAssertNotNil(saved)
        weights["model.mask_decoder.extra.weight"] = Tensor.zeros([1])
        XCTAssertThrowsError(try side.load(weights, prefix: "model")) { e in
            XCTAssertTrue("\(e)".contains(dropped) && "\(e)".contains("model.mask_decoder.extra.weight"), "\(e)")
        }
        // the learned fusion adds model.token_fusion.proj.*, which a released checkpoint lacks
        var cfg = try Self.tinyConfig
        cfg.tokenFusion = "learned"
        let learned = PixelDecoderSide(config: cfg, rng: &rng)
        XCTAssertThrowsError(try learned.load(ModelFixture.group(all, "weights"), prefix: "model")) { e in
            XCTAssertTrue("\(e)".contains("model.token_fusion.proj.weight"), "\(e)")
        }
    }

    /// Parameter counts at the released sizes (C 256, MLP 2048, 8 heads, H 4096, g 32): spec section 0.
    func testReleasedParameterCountsAndNames() throws {
        let cfg = PixelLMConfig()
        XCTAssertEqual(cfg.visionGrid, 32)
        var rng = RNG(seed: 11)
        let dec = MaskDecoderMultiScale(config: cfg, rng: &rng)
        let neck = ImageFeatureNeck(hidden: cfg.hiddenSize, dim: 256, rng: &rng)
        let pe = PromptEncoder(config: cfg, rng: &rng)
        func count(_ m: Module) -> Int { decoderParameters(m).reduce(0) { $0 + $1.1.count } }
        XCTAssertEqual(count(dec), 7_571_940)
        XCTAssertEqual(count(neck), 1_639_424)
        XCTAssertEqual(count(pe), 6_220)
        // buffers come on top: one 2 x 128 Gaussian in each of the decoder and the prompt encoder
        XCTAssertEqual(dec.parameterCount, 7_571_940 + 256)
        XCTAssertEqual(pe.parameterCount, 6_220 + 256)
        let fcs = TextHiddenFCs(hidden: 4096, outDim: 256, rng: &rng)
        XCTAssertEqual(fcs.parameterCount, 17_830_144)
        let names = Dictionary(uniqueKeysWithValues: dec.namedTensors(prefix: "model.mask_decoder").map { ($0.0, $0.1.shape) })
        XCTAssertEqual(names["model.mask_decoder.transformer.1.layers.0.cross_attn_token_to_image.q_proj.weight"], [128, 256])
        XCTAssertEqual(names["model.mask_decoder.transformer.0.layers.1.self_attn.out_proj.weight"], [256, 256])
        XCTAssertEqual(names["model.mask_decoder.transformer.0.layers.1.mlp.lin1.weight"], [2048, 256])
        XCTAssertEqual(names["model.mask_decoder.transformer.1.norm_final_attn.bias"], [256])
        XCTAssertEqual(names["model.mask_decoder.output_upscaling.0.weight"], [256, 32, 2, 2])
        XCTAssertEqual(names["model.mask_decoder.upsample_2x.1.weight"], [256])
        XCTAssertEqual(names["model.mask_decoder.pe1.positional_encoding_gaussian_matrix"], [2, 128])
        XCTAssertEqual(names["model.mask_decoder.output_hypernetworks_mlps.3.layers.2.weight"], [32, 256])
        XCTAssertEqual(names["model.mask_decoder.iou_prediction_head.layers.2.weight"], [4, 256])
        XCTAssertEqual(names["model.mask_decoder.level_embed.weight"], [2, 256])
        XCTAssertEqual(names["model.mask_decoder.mask_tokens.weight"], [4, 256])
        XCTAssertEqual(names.count, 2 * 82 + 11 + 4 * 6 + 6 + 1)
        let peNames = Set(pe.namedTensors().map(\.0))
        XCTAssertTrue(peNames.isSuperset(of: ["pe_layer.positional_encoding_gaussian_matrix", "point_embeddings.3.weight",
                                              "not_a_point_embed.weight", "mask_downscaling.0.bias", "mask_downscaling.4.weight",
                                              "mask_downscaling.6.weight", "no_mask_embed.weight"]))
        XCTAssertEqual(Set(fcs.namedTensors().map(\.0)), ["0.0.weight", "0.0.bias", "0.2.weight", "0.2.bias"])
        XCTAssertEqual(Set(neck.namedTensors().map(\.0)), ["0.weight", "1.weight", "1.bias", "2.weight", "3.weight", "3.bias"])
    }

    // MARK: - SEG gathering rules

    func testSegGatheringRowsRejectionsAndNoTargets() throws {
        var rng = RNG(seed: 5)
        let side = PixelDecoderSide(config: try Self.tinyConfig, rng: &rng)
        let seg: Set<Int> = [100, 101, 102, 103, 104, 105]
        // the row before each SEG token, shifted by the image expansion
        XCTAssertEqual(segHiddenRows(tokenIds: [1, 7, 100, 101, 9], segTokenIds: seg), [1, 2])
        XCTAssertEqual(segHiddenRows(tokenIds: [1, 7, 100, 101, 9], segTokenIds: seg, rowOffset: 255), [256, 257])
        XCTAssertEqual(segHiddenRows(tokenIds: [100, 5], segTokenIds: seg), [-1])
        let hidden = DecoderCheck.rand([20, 32], seed: 1)
        let E = Autograd.noGrad { side.imageEmbeddings(DecoderCheck.rand([2, 64, 32], seed: 2)) }

        // 5 SEG tokens: not a multiple of 6 -> no masks, a reason, no crash
        let five = side.predict(embeddings: E, hidden: hidden, rows: [1, 2, 3, 4, 5], inputSize: (112, 84), originalSize: (30, 20))
        XCTAssertNil(five.logits)
        XCTAssertEqual(five.targetCount, 0)
        XCTAssertTrue(five.reason?.contains("not a multiple") == true, five.reason ?? "nil")
        // 7 SEG tokens (one target and one stray) -> rejected as a whole
        XCTAssertNotNil(side.queries(hidden: hidden, rows: Array(1...7)).reason)
        // no SEG tokens: zero targets, no masks, not an error
        let none = side.predict(embeddings: E, hidden: hidden, rows: [], inputSize: (112, 84), originalSize: (30, 20))
        XCTAssertNil(none.logits)
        XCTAssertNil(none.reason)
        XCTAssertEqual(none.targetCount, 0)
        // a SEG token at position 0 or a row past the end -> rejected with a reason
        XCTAssertNotNil(side.queries(hidden: hidden, rows: [-1, 1, 2, 3, 4, 5]).reason)
        XCTAssertNotNil(side.queries(hidden: hidden, rows: [15, 16, 17, 18, 19, 20]).reason)
        // 12 SEG tokens: two targets, masks at the original size
        let two = side.predict(embeddings: E, hidden: hidden, rows: Array(0..<12), inputSize: (112, 84), originalSize: (30, 20))
        XCTAssertNil(two.reason)
        XCTAssertEqual(two.targetCount, 2)
        XCTAssertEqual(two.logits?.shape, [2, 30, 20])
        XCTAssertEqual(two.lowRes?.shape, [2, 1, 32, 32])
        XCTAssertEqual(two.levels.map(\.shape), [[2, 1, 16, 16], [2, 1, 32, 32]])
        // scale-major grouping: rows 0-2 feed level 0 and rows 3-5 level 1 of target 0
        let sq = side.queries(hidden: hidden, rows: Array(0..<6))
        let h = side.textHiddenFCs(hidden.slice(axis: 0, 0, 6))
        let level1 = (h.slice(axis: 0, 3, 4) + h.slice(axis: 0, 4, 5) + h.slice(axis: 0, 5, 6)) * (1 / Float(6))
        assertMatches(sq.queries!.slice(axis: 1, 1, 2).reshape([1, 32]), level1, tol: 1e-5, "level-1 query = (SEG3 + SEG4 + SEG5) / 6")
    }

    func testMaskScores() {
        let x = Tensor([2, -1, 0, 0.5, /* target 1: nothing above 0 */ -3, -2, 0, -0.1], shape: [2, 2, 2])
        let s = maskScores(x)
        let sig = { (v: Double) in 1 / (1 + Foundation.exp(-v)) }
        XCTAssertEqual(Double(s[0]), (sig(2) + sig(0.5)) / (2 + 1e-6), accuracy: 1e-6)
        XCTAssertEqual(s[1], 0)
    }

    func testSingleLevelConfigDecodesAtTwiceTheGrid() throws {
        var cfg = try Self.tinyConfig
        cfg.imageFeatureScaleNum = 1
        var rng = RNG(seed: 9)
        let side = PixelDecoderSide(config: cfg, rng: &rng)
        let out = Autograd.noGrad { () -> MaskDecoderOutput in
            let E = side.imageEmbeddings(DecoderCheck.rand([1, 64, 32], seed: 4, grad: false))
            let q = side.queries(hidden: DecoderCheck.rand([10, 32], seed: 5, grad: false), rows: [1, 2, 3]).queries!
            return side.decode(embeddings: E, queries: q)
        }
        XCTAssertEqual(out.lowRes.shape, [1, 1, 16, 16])
    }

    // MARK: - token fusion

    /// The released fusion weights every token 1/(N*L) (model/PixelLM.py:282-287: 1/len(seg_token_idx) with all
    /// N*L ids in the list), so a scale's query is (h0 + h1 + h2) / 6 with N = 3, L = 2: half of a mean.
    func testReleasedFusionIsTheSumOverNTimesL() throws {
        var rng = RNG(seed: 20)
        for (N, L) in [(3, 2), (3, 1), (2, 2), (1, 2)] {
            let f = TokenFusion(kind: .released, tokens: N, scales: L, dim: 4, rng: &rng)
            XCTAssertEqual(f.releasedWeight, Float(1.0 / Double(N * L)))
            let h = DecoderCheck.rand([2, L, N, 4], seed: 22, grad: false)
            let q = f(h)
            XCTAssertEqual(q.shape, [2, L, 4])
            for k in 0..<2 { for l in 0..<L { for c in 0..<4 {
                var want: Float = h[k, l, 0, c] * 0
                for n in 0..<N { want = want + h[k, l, n, c] * f.releasedWeight }
                XCTAssertEqual(q[k, l, c], want, "N \(N) L \(L) [\(k), \(l), \(c)]")
            } } }
        }
        // a config (or checkpoint config) that says "mean", the former name, loads as the released fusion
        var cfg = PixelLMConfig()
        cfg.tokenFusion = "mean"
        let data = try JSONEncoder().encode(cfg)
        let back = try JSONDecoder().decode(PixelLMConfig.self, from: data)
        XCTAssertEqual(back.tokenFusion, "released")
        XCTAssertEqual(TokenFusion.Kind(configValue: "mean"), .released)
        XCTAssertNil(TokenFusion.Kind(configValue: "average"))
        cfg.tokenFusion = "average"
        XCTAssertThrowsError(try cfg.validate(file: "c.json")) { XCTAssertTrue("\($0)".contains("token_fusion"), "\($0)") }
    }

    func testLearnedFusionStartsAtTheReleasedFusionAndHasCorrectGradients() throws {
        var rng = RNG(seed: 21)
        let released = TokenFusion(kind: .released, tokens: 3, scales: 2, dim: 4, rng: &rng)
        let learned = TokenFusion(kind: .learned, tokens: 3, scales: 2, dim: 4, rng: &rng)
        XCTAssertTrue(released.namedTensors().isEmpty)
        XCTAssertEqual(learned.namedTensors().map(\.0), ["proj.weight", "proj.bias"])
        let h = DecoderCheck.rand([2, 2, 3, 4], seed: 22, grad: false)
        assertMatches(learned(h), released(h), tol: 1e-6, "learned fusion at init")
        // move the weights off the released init, then finite differences
        let w = learned.proj!.weight, b = learned.proj!.bias!
        let noise = DecoderCheck.rand(w.shape, seed: 23, std: 0.1, grad: false)
        for i in 0..<w.count { w.ptr[i] += noise.ptr[i] }
        w.requiresGrad = true
        b.requiresGrad = true
        h.requiresGrad = true
        DecoderCheck.finiteDifferences([h, w, b]) { learned(h) }
    }

    // MARK: - finite differences on the small pieces

    func testAttentionGradients() {
        var rng = RNG(seed: 31)
        let attn = SAMAttention(dim: 8, heads: 2, downsample: 2, rng: &rng)
        let q = DecoderCheck.rand([2, 3, 8], seed: 32), k = DecoderCheck.rand([2, 5, 8], seed: 33), v = DecoderCheck.rand([2, 5, 8], seed: 34)
        let params = attn.namedTensors().map(\.1)
        for p in params { p.requiresGrad = true }
        DecoderCheck.finiteDifferences([q, k, v] + params) { attn(q: q, k: k, v: v) }
    }

    func testHypernetworkMLPGradients() throws {
        // the first seed whose ReLU inputs all keep a margin from the kink (central differences across a kink
        // are meaningless); deterministic
        func margin(_ mlp: SAMMLP, _ x: Tensor) -> Float {
            Autograd.noGrad {
                var h = x, m = Float.infinity
                for l in mlp.layers.dropLast() {
                    h = l(h)
                    m = min(m, h.toArray().map(abs).min()!)
                    h = h.relu()
                }
                return m
            }
        }
        for seed in UInt64(41)..<UInt64(80) {
            var rng = RNG(seed: seed)
            let mlp = SAMMLP(input: 8, hidden: 8, output: 4, numLayers: 3, rng: &rng)
            let x = DecoderCheck.rand([3, 1, 8], seed: seed + 1000)
            guard margin(mlp, x) > 0.01 else { continue }
            let params = mlp.namedTensors().map(\.1)
            for p in params { p.requiresGrad = true }
            DecoderCheck.finiteDifferences([x] + params, eps: 1e-3) { mlp(x) }
            return
        }
        XCTFail("no seed gave ReLU inputs away from the kink")
    }

    func testTwoWayBlockGradients() {
        for skip in [true, false] {
            var rng = RNG(seed: skip ? 51 : 52)
            let block = TwoWayAttentionBlock(dim: 8, heads: 2, mlpDim: 16, downsample: 2, skipFirstLayerPE: skip, rng: &rng)
            let tok = DecoderCheck.rand([2, 3, 8], seed: 53), img = DecoderCheck.rand([2, 6, 8], seed: 54)
            let tokPE = DecoderCheck.rand([2, 3, 8], seed: 55), imgPE = DecoderCheck.rand([1, 6, 8], seed: 56)
            let params = block.namedTensors().map(\.1)
            for p in params { p.requiresGrad = true }
            // eps 1e-3: the LayerNorms over 8 channels are too curved for 1e-2
            DecoderCheck.finiteDifferences([tok, img, tokPE, imgPE] + params, eps: 1e-3) {
                let (t, i) = block(tokens: tok, image: img, tokenPE: tokPE, imagePE: imgPE)
                return concat([t, i], axis: 1)
            }
        }
    }
}

// MARK: - helpers

enum DecoderCheck {
    /// Leaf tensor ~ N(0, std^2) from a seed.
    static func rand(_ shape: [Int], seed: UInt64, std: Float = 1, grad: Bool = true) -> Tensor {
        var rng = RNG(seed: seed)
        return Tensor.randn(shape, std: std, rng: &rng, requiresGrad: grad)
    }

    /// Central differences of loss = sum(f() * R) (R fixed random, accumulated in Double) against backward,
    /// for every element of every input (inputs must be small and contiguous). An element passes when
    /// |analytic - numeric| <= atol + rtol * max(|analytic|, |numeric|).
    static func finiteDifferences(_ inputs: [Tensor], eps: Float = 1e-2, atol: Double = 2e-3, rtol: Double = 2e-2,
                                  file: StaticString = #filePath, line: UInt = #line, _ f: () -> Tensor) {
        let out0 = Autograd.noGrad { f() }
        let R = DecoderCheck.rand(out0.shape, seed: 99, grad: false)
        func loss() -> Double {
            Autograd.noGrad {
                let o = f().contiguousData()
                var s = 0.0
                for i in 0..<o.count { s += Double(o.ptr[i]) * Double(R.ptr[i]) }
                return s
            }
        }
        for x in inputs { x.grad = nil }
        f().backward(R)
        var failures: [String] = [], checked = 0, worst = 0.0
        for (k, x) in inputs.enumerated() {
            precondition(x.isContiguous && x.requiresGrad)
            let g = x.grad?.toArray() ?? [Float](repeating: 0, count: x.count)
            for i in 0..<x.count {
                let orig = x.ptr[i]
                x.ptr[i] = orig + eps
                let lp = loss()
                x.ptr[i] = orig - eps
                let lm = loss()
                x.ptr[i] = orig
                let numeric = (lp - lm) / (2 * Double(eps)), analytic = Double(g[i])
                let err = abs(numeric - analytic), scale = max(abs(numeric), abs(analytic))
                if scale > 1e-6 { worst = max(worst, err / scale) }
                checked += 1
                if err > atol + rtol * scale && failures.count < 5 {
                    failures.append("input \(k) element \(i): analytic \(analytic) numeric \(numeric)")
                }
            }
        }
        XCTAssertGreaterThan(checked, 0, file: file, line: line)
        XCTAssertTrue(failures.isEmpty, "finite differences: \(failures.joined(separator: "; "))", file: file, line: line)
    }
}
