import Foundation
import XCTest
import PixelTensor
@testable import PixelModel

/// The whole PixelLM (PixelLM.swift, ParameterTable.swift, Checkpoint.swift, FLOPs.swift) against the PyTorch
/// reference of the released training forward (tools/reference/pixellm_full.py, fixture Fixtures/full.h5 from
/// tools/fixtures/model_full.py, tiny config): strict loading, forward, gradients of every trainable
/// parameter, a 20-step AdamW loss curve; checkpoint round trips and errors; SEG-count rejection; FLOPs.
final class PixelLMTests: XCTestCase {
    static let forwardTol = 1e-4
    static let gradTol = 1e-3
    /// The AdamW curve: |swift - torch| / |torch| per step.
    static let curveTol = 1e-3

    static var tinyConfig: PixelLMConfig {
        get throws { try PixelLMConfig.load(ConfigTests.configsDir.appendingPathComponent("tiny/config.json").path) }
    }

    nonisolated(unsafe) static var cached: [String: Tensor]?
    static func fixture() throws -> [String: Tensor] {
        if let cached { return cached }
        let f = try ModelFixture.load("full")
        cached = f
        return f
    }

    static func ints(_ t: Tensor) -> [Int] { t.toArray().map { Int($0) } }

    /// The tiny model with the fixture's weights (PixelLM checkpoint and CLIP, both strict).
    static func loadedModel(_ f: [String: Tensor]) throws -> PixelLMForCausalLM {
        var rng = RNG(seed: 3)
        let model = PixelLMForCausalLM(config: try tinyConfig, segTokenIds: ints(f["inputs/seg_ids"]!), skeleton: true, rng: &rng)
        try model.load(ModelFixture.group(f, "weights"))
        try model.visionTower.load(ModelFixture.group(f, "clip"))
        return model
    }

    static func batch(_ f: [String: Tensor]) -> PixelLMBatch {
        let ids = f["inputs/input_ids"]!, labels = f["inputs/labels"]!
        let imageIndex = ints(f["inputs/image_index"]!)
        let T = ids.dim(1)
        let idv = ints(ids), labv = ints(labels)
        let convs = imageIndex.enumerated().map { c, img in
            PixelLMConversation(imageIndex: img, inputIds: Array(idv[(c * T)..<((c + 1) * T)]),
                                labels: Array(labv[(c * T)..<((c + 1) * T)]), targetMasks: f["inputs/masks/\(c)"]!)
        }
        let sizes = { (t: Tensor) in stride(from: 0, to: t.count, by: 2).map { (height: ints(t)[$0], width: ints(t)[$0 + 1]) } }
        return PixelLMBatch(pixels: f["inputs/pixels"]!, validSizes: sizes(f["inputs/valid_sizes"]!),
                            originalSizes: sizes(f["inputs/original_sizes"]!), conversations: convs)
    }

    /// Per-image concatenation (conversation order) of a per-conversation output, as the reference decodes.
    static func perImage(_ out: PixelLMOutput, _ batch: PixelLMBatch, _ image: Int,
                         _ pick: (PixelLMConversationOutput) -> Tensor?) -> Tensor {
        let parts = zip(out.conversations, batch.conversations).filter { $0.1.imageIndex == image }.compactMap { pick($0.0) }
        return parts.count == 1 ? parts[0] : concat(parts, axis: 0)
    }

    static func scalarRel(_ a: Tensor, _ b: Tensor) -> Double {
        let x = Double(a.item), y = Double(b.toArray()[0])
        return abs(x - y) / max(abs(y), 1e-12)
    }

    // MARK: - fixture: forward

    func testForwardMatchesPyTorch() throws {
        let f = try Self.fixture()
        let model = try Self.loadedModel(f)
        let batch = Self.batch(f)
        let out = try Autograd.noGrad { try model.forward(batch) }
        var report: [(String, Double)] = []
        func check(_ a: Tensor, _ key: String) {
            let b = f[key]!
            assertMatches(a, b, tol: Self.forwardTol, key)
            if a.shape == b.shape { report.append((key, modelRelError(a, b))) }
        }
        for b in 0..<2 {
            check(out.vision.deep.slice(axis: 0, b, b + 1).squeeze(0), "out/deep/\(b)")
            check(out.vision.mid.slice(axis: 0, b, b + 1).squeeze(0), "out/mid/\(b)")
            check(try XCTUnwrap(out.imageEmbeddings[b]), "out/E/\(b)")
            check(Self.perImage(out, batch, b) { $0.projected }, "out/projected/\(b)")
            check(Self.perImage(out, batch, b) { $0.queries }, "out/queries/\(b)")
            check(Self.perImage(out, batch, b) { $0.lowRes }, "out/low/\(b)")
            check(Self.perImage(out, batch, b) { $0.maskLogits }, "out/masks/\(b)")
        }
        check(out.logits, "out/logits")
        check(out.hidden, "out/hidden")
        XCTAssertEqual(out.attentionMask.toArray(), f["out/attention_mask"]!.toArray(), "attention mask")
        XCTAssertEqual(out.labels.flatMap { $0 }, Self.ints(f["out/labels"]!), "expanded labels")
        for (c, o) in out.conversations.enumerated() {
            XCTAssertEqual(o.segRows, Self.ints(f["out/seg_rows/\(c)"]!), "SEG rows of conversation \(c)")
            XCTAssertNil(o.reason)
            XCTAssertTrue(o.inMaskLoss)
        }
        XCTAssertEqual(out.excludedTargets, 0)
        XCTAssertEqual(out.losses.maskCount, 5)
        for (name, t) in [("ce", out.losses.ce), ("bce", out.losses.bce), ("dice", out.losses.dice), ("total", out.losses.total)] {
            let e = Self.scalarRel(t, f["out/loss_\(name)"]!)
            XCTAssertLessThanOrEqual(e, Self.forwardTol, "loss \(name): \(t.item) vs \(f["out/loss_\(name)"]!.toArray()[0])")
            report.append(("loss_\(name)", e))
        }
        XCTAssertEqual(out.losses.refine.item, 0, "refinement off by default")
        let worst = report.max { $0.1 < $1.1 }!
        print("full fixture forward: \(report.count) outputs, worst rel error \(worst.1) (\(worst.0)); "
              + report.map { "\($0.0) \(String(format: "%.1e", $0.1))" }.joined(separator: ", "))
    }

    // MARK: - fixture: gradients of every trainable parameter

    func testGradientsMatchPyTorch() throws {
        let f = try Self.fixture()
        let model = try Self.loadedModel(f)
        let table = ParameterTable(model: model)
        table.setRequiresGrad()
        let out = try model.forward(Self.batch(f))
        out.losses.total.backward()

        let expected = Set(f.keys.filter { $0.hasPrefix("grads/") }.map { String($0.dropFirst("grads/".count)) })
        XCTAssertEqual(Set(table.trainable.map(\.name)), expected, "trainable names = the reference recipe")
        var worst = (0.0, ""), checked = 0
        for e in table.trainable {
            guard let ref = f["grads/" + e.name] else { continue }
            let g = e.tensor.grad ?? Tensor.zeros(e.tensor.shape)
            var err: Double
            if e.name.hasSuffix("k_proj.bias") {
                // exactly zero in exact arithmetic (softmax ignores a per-query constant): both sides hold
                // rounding noise, so measure the difference against the k_proj.weight gradient's scale
                let wref = f["grads/" + e.name.dropLast(4) + "weight"]!
                let scale = Double(wref.toArray().map(abs).max() ?? 1)
                err = (zip(g.toArray(), ref.toArray()).map { Double(abs($0 - $1)) }.max() ?? 0) / scale
                XCTAssertLessThanOrEqual(err, Self.gradTol, "gradient of \(e.name) (vs the k_proj.weight gradient scale)")
            } else {
                assertMatches(g, ref, tol: Self.gradTol, "gradient of \(e.name)")
                err = modelRelError(g, ref)
            }
            if err > worst.0 { worst = (err, e.name) }
            checked += 1
        }
        for e in table.frozen { XCTAssertNil(e.tensor.grad, "frozen \(e.name) got a gradient") }
        XCTAssertEqual(checked, expected.count)
        print("full fixture gradients: \(checked) trainable tensors (\(table.trainableCount) elements), worst rel error \(worst.0) (\(worst.1))")
    }

    /// Gradient checkpointing (every LLaMA and CLIP layer recomputed in backward, the mask decoder target by target)
    /// changes no gradient: every
    /// tensor trainable (CLIP's input gradients flow through checkpointed layers), with LoRA adapters inside the
    /// checkpointed layers, against the same model without it. The loss is the same number; a gradient may differ
    /// in the last bits where a layer's output has a second reader (CLIP's mid features feed the decoder too): the
    /// recomputed layer hands its whole contribution over at once, so the float sum is taken in another order.
    func testGradientCheckpointingChangesNoGradient() throws {
        let f = try Self.fixture()
        func run(_ checkpointing: Bool) throws -> (Float, [String: [Float]]) {
            let model = try Self.loadedModel(f)
            var rng = RNG(seed: 3)
            model.attachLoRA(LoRAConfig(r: 2, alpha: 4, dropout: 0, targetModules: ["q_proj", "v_proj"]), rng: &rng)
            for (_, a) in model.loraAdapters { a.b.ptr.update(repeating: 0.01, count: a.b.count) }   // B = 0 would hide A's gradient
            model.gradientCheckpointing = checkpointing
            let table = ParameterTable(model: model, trainableGroups: Set(ParameterGroup.allCases))
            table.setRequiresGrad()
            let out = try model.forward(Self.batch(f))
            out.losses.total.backward()
            var g: [String: [Float]] = [:]
            for (n, t) in model.allNamedTensors() where t.requiresGrad { g[n] = t.grad?.toArray() ?? [] }
            return (out.losses.total.item, g)
        }
        let (l0, g0) = try run(false), (l1, g1) = try run(true)
        XCTAssertEqual(l0, l1)
        XCTAssertEqual(Set(g0.keys), Set(g1.keys))
        XCTAssertTrue(g0.keys.contains("vision_model.encoder.layers.0.self_attn.q_proj.weight"), "CLIP trains here")
        XCTAssertTrue(g0.keys.contains { $0.contains("lora_A") })
        XCTAssertGreaterThan(g0.values.filter { !$0.isEmpty }.count, 100)
        var worst = (0.0, ""), exact = 0
        for (n, a) in g0 {
            let b = g1[n]!
            XCTAssertEqual(a.count, b.count, n)
            XCTAssertEqual(a.isEmpty, b.isEmpty, "\(n) has a gradient in one run only")
            // an attention key bias's gradient is zero in exact arithmetic (rounding noise on both sides): measure
            // it against its weight's gradient, as testGradientsMatchPyTorch does
            // the mask decoder's attention q / k gradients pass through a softmax over a few tokens and cancel to
            // 1e-4 of the layer's other gradients (the decoder is recomputed target by target, so its weights'
            // gradients are summed in another order): measure them against the same attention's v_proj gradient
            var ref = n.hasSuffix("k_proj.bias") ? g0[String(n.dropLast(4)) + "weight"]! : a
            if n.contains("mask_decoder"), let r = n.range(of: "q_proj") ?? n.range(of: "k_proj") {
                ref = g0[n.replacingCharacters(in: r, with: "v_proj")] ?? ref
            }
            let scale = Double(ref.map(abs).max() ?? 0)
            let d = zip(a, b).map { Double(abs($0 - $1)) }.max() ?? 0
            if d == 0 { exact += 1 }
            let rel = scale > 0 ? d / scale : d
            if rel > worst.0 { worst = (rel, n) }
        }
        print("gradient checkpointing: \(exact) of \(g0.count) gradients bit-identical, worst rel difference \(worst.0) (\(worst.1))")
        XCTAssertLessThanOrEqual(worst.0, 1e-6, worst.1)
    }

    // MARK: - fixture: 20 AdamW steps

    func testAdamWLossCurveMatchesPyTorch() throws {
        let f = try Self.fixture()
        let model = try Self.loadedModel(f)
        let batch = Self.batch(f)
        let table = ParameterTable(model: model)
        table.setRequiresGrad()
        let lr = f["train/lr"]!.toArray()[0]
        let want = f["train/losses"]!.toArray()
        let opt = AdamW(params: table.trainableParameters, lr: lr, betas: (0.9, 0.95), eps: 1e-8, weightDecay: 0)
        var got: [Float] = []
        for step in 0..<want.count {
            opt.zeroGrad()
            if step == want.count - 1 {
                got.append(try Autograd.noGrad { try model.forward(batch) }.losses.total.item)
                break
            }
            let out = try model.forward(batch)
            got.append(out.losses.total.item)
            out.losses.total.backward()
            opt.update()
        }
        var worst = 0.0, worstAbs = 0.0
        for (i, (a, b)) in zip(got, want).enumerated() {
            let e = Double(abs(a - b)) / Double(abs(b))
            worst = max(worst, e)
            worstAbs = max(worstAbs, Double(abs(a - b)))
            XCTAssertLessThanOrEqual(e, Self.curveTol, "step \(i): \(a) vs \(b)")
        }
        XCTAssertLessThan(got.last!, got.first! * 0.9, "the loss moves")
        print("AdamW 20 steps: \(got.first!) -> \(got.last!) (torch \(want.first!) -> \(want.last!)), worst rel \(worst), worst abs \(worstAbs)")
    }

    // MARK: - checkpoints

    static func tempDir(_ name: String) -> String {
        let d = (NSTemporaryDirectory() as NSString).appendingPathComponent("pixellm-\(name)-\(getpid())")
        try? FileManager.default.removeItem(atPath: d)
        return d
    }

    func testSafetensorsRoundTripSingleAndSharded() throws {
        let f = try Self.fixture()
        let model = try Self.loadedModel(f)
        let batch = Self.batch(f)
        let ref = try Autograd.noGrad { try model.forward(batch) }
        let visionDir = Self.tempDir("clip")
        defer { try? FileManager.default.removeItem(atPath: visionDir) }
        try PixelLMCheckpoint.saveVision(model, to: visionDir)
        XCTAssertTrue(FileManager.default.fileExists(atPath: visionDir + "/model.safetensors"))

        for (label, shard) in [("single", 5 << 30), ("sharded", 200_000)] {
            let dir = Self.tempDir(label)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let files = try PixelLMCheckpoint.save(model, to: dir, maxShardBytes: shard)
            if label == "sharded" {
                XCTAssertTrue(files.contains(Safetensors.indexName), "\(files)")
                XCTAssertGreaterThan(files.filter { $0.hasSuffix(".safetensors") }.count, 2)
            } else {
                XCTAssertEqual(files, [Safetensors.singleName, PixelLMCheckpoint.configName])
            }
            let names = try SafetensorsDirectory(dir).names
            XCTAssertFalse(names.contains { $0.contains("vision") }, "the PixelLM checkpoint has no vision tower")
            XCTAssertTrue(names.contains("model.mm_projector.0.weight") && names.contains("model.out_mm_projector.2.bias"))
            let loaded = try PixelLMCheckpoint.open(dir, visionDirectory: visionDir, segTokenIds: model.segTokenIds)
            for ((n1, t1), (n2, t2)) in zip(model.allNamedTensors(), loaded.allNamedTensors()) {
                XCTAssertEqual(n1, n2)
                XCTAssertEqual(t1.toArray(), t2.toArray(), "\(label): \(n1)")
            }
            let again = try Autograd.noGrad { try loaded.forward(batch) }
            XCTAssertEqual(again.logits.toArray(), ref.logits.toArray(), "\(label): identical logits")
            XCTAssertEqual(again.losses.total.item, ref.losses.total.item, "\(label): identical loss")
            for (a, b) in zip(again.conversations, ref.conversations) {
                XCTAssertEqual(a.maskLogits!.toArray(), b.maskLogits!.toArray(), "\(label): identical masks")
            }
        }

        // CLIP inside the PixelLM checkpoint ("model.vision_tower.vision_tower.vision_model....") also loads
        let dir = Self.tempDir("with-vision")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try PixelLMCheckpoint.save(model, to: dir, includeVision: true)
        XCTAssertTrue(try SafetensorsDirectory(dir).names.contains("model.vision_tower.vision_tower.vision_model.pre_layrnorm.weight"))
        var rng = RNG(seed: 9)
        let m2 = PixelLMForCausalLM(config: model.config, segTokenIds: model.segTokenIds, skeleton: true, rng: &rng)
        let report = try PixelLMCheckpoint.load(m2, from: dir)
        XCTAssertTrue(report.visionLoaded)
        XCTAssertEqual(report.loaded, model.checkpointTensors(includeVision: true).count)
        XCTAssertEqual(try Autograd.noGrad { try m2.forward(batch) }.logits.toArray(), ref.logits.toArray())
    }

    func testHalfPrecisionCheckpointsLoadAsRoundedFP32() throws {
        let f = try Self.fixture()
        let model = try Self.loadedModel(f)
        for dtype in [DType.bf16, .f16] {
            let dir = Self.tempDir(dtype.name)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try PixelLMCheckpoint.save(model, to: dir, dtype: dtype)
            var rng = RNG(seed: 2)
            let m2 = PixelLMForCausalLM(config: model.config, segTokenIds: model.segTokenIds, skeleton: true, rng: &rng)
            let report = try PixelLMCheckpoint.load(m2, from: dir)
            XCTAssertEqual(report.dtypes, [dtype.name])
            for ((n, a), (_, b)) in zip(model.namedTensors(), m2.namedTensors()) {
                let rounded = a.toArray().map { dtype == .bf16 ? Convert.float(bf16: Convert.bf16($0)) : Convert.float(f16: Convert.f16($0)) }
                XCTAssertEqual(b.toArray(), rounded, "\(dtype.name): \(n)")
            }
        }
    }

    func testConfigMismatchNamesTheFieldAndBothValues() throws {
        var rng = RNG(seed: 4)
        let tiny = try Self.tinyConfig
        let model = PixelLMForCausalLM(config: tiny, rng: &rng)
        let dir = Self.tempDir("mismatch")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try PixelLMCheckpoint.save(model, to: dir)
        let cases: [(String, (inout PixelLMConfig) -> Void, String, String)] = [
            ("hidden_size", { $0.hiddenSize = 48 }, "48", "32"),
            ("num_hidden_layers", { $0.numHiddenLayers = 3 }, "3", "2"),
            ("vocab_size", { $0.vocabSize = 130 }, "130", "128"),
            ("intermediate_size", { $0.intermediateSize = 96 }, "96", "64"),
            ("token_fusion", { $0.tokenFusion = "learned" }, "learned", "released"),
        ]
        for (field, mutate, configValue, checkpointValue) in cases {
            var c = tiny
            mutate(&c)
            let m = PixelLMForCausalLM(config: c, skeleton: true, rng: &rng)
            do {
                try PixelLMCheckpoint.load(m, from: dir)
                XCTFail("\(field): loaded a mismatching checkpoint")
            } catch let e as CheckpointConfigMismatch {
                XCTAssertEqual(e.field, field, e.description)
                XCTAssertTrue(e.configValue.contains(configValue) && e.checkpointValue.contains(checkpointValue), e.description)
                XCTAssertTrue(e.description.contains(field) && e.description.contains(configValue) && e.description.contains(checkpointValue))
                print("config mismatch: \(e)")
            }
        }
        // the number of SEG tokens: N shows in the learned fusion's weight; SEG ids must be vocabulary rows
        var learned = tiny
        learned.tokenFusion = "learned"
        let ldir = Self.tempDir("mismatch-learned")
        defer { try? FileManager.default.removeItem(atPath: ldir) }
        try PixelLMCheckpoint.save(PixelLMForCausalLM(config: learned, rng: &rng), to: ldir)
        var twoTokens = learned
        twoTokens.segTokenNum = 2
        XCTAssertThrowsError(try PixelLMCheckpoint.load(PixelLMForCausalLM(config: twoTokens, skeleton: true, rng: &rng), from: ldir)) { e in
            XCTAssertEqual((e as? CheckpointConfigMismatch)?.field, "seg_token_num", "\(e)")
            XCTAssertTrue("\(e)".contains("is 2 in the config but 96 / out_dim 32"), "\(e)")
        }
        let shapes = Dictionary(uniqueKeysWithValues: model.namedTensors().map { ($0.0, $0.1.shape) })
        XCTAssertThrowsError(try PixelLMCheckpoint.checkConfig(tiny, segTokenIds: [120, 121, 122, 123, 124, 200], shapes: shapes, source: "x")) { e in
            XCTAssertEqual((e as? CheckpointConfigMismatch)?.field, "seg_token_ids", "\(e)")
        }
        XCTAssertNoThrow(try PixelLMCheckpoint.checkConfig(tiny, segTokenIds: model.segTokenIds, shapes: shapes, source: "x"))

        // CLIP: a checkpoint for another vision size is refused the same way
        let vdir = Self.tempDir("mismatch-clip")
        defer { try? FileManager.default.removeItem(atPath: vdir) }
        try PixelLMCheckpoint.saveVision(model, to: vdir)
        var c = tiny
        c.visionConfig.numHiddenLayers = 13
        let m = PixelLMForCausalLM(config: c, skeleton: true, rng: &rng)
        XCTAssertThrowsError(try PixelLMCheckpoint.loadVision(m, from: vdir)) { e in
            XCTAssertEqual((e as? CheckpointConfigMismatch)?.field, "vision_config.num_hidden_layers", "\(e)")
        }
    }

    func testMissingAndUnexpectedNamesAreListed() throws {
        var rng = RNG(seed: 5)
        let model = PixelLMForCausalLM(config: try Self.tinyConfig, rng: &rng)
        var tensors = Dictionary(uniqueKeysWithValues: model.namedTensors())
        let dropped = ["model.mask_decoder.level_embed.weight", "model.text_hidden_fcs.0.0.bias"]
        for d in dropped { tensors[d] = nil }
        tensors["model.extra.weight"] = Tensor.zeros([2])
        tensors["model.layers.1.self_attn.rotary_emb.inv_freq"] = Tensor.zeros([4])   // ignored
        tensors["lm_head.weight"] = Tensor.zeros([128, 32])
        tensors["model.image_feature_neck.1.weight"] = Tensor.zeros([31])              // wrong shape
        let dir = Self.tempDir("names")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Safetensors.write(tensors, to: dir + "/model.safetensors")
        XCTAssertThrowsError(try PixelLMCheckpoint.load(model, from: dir)) { e in
            guard let w = e as? WeightMismatch else { return XCTFail("\(e)") }
            XCTAssertEqual(w.missing.sorted(), dropped.sorted())
            XCTAssertEqual(w.unexpected, ["model.extra.weight"])
            XCTAssertEqual(w.wrongShape.map(\.0), ["model.image_feature_neck.1.weight"])
            for n in dropped + ["model.extra.weight", "model.image_feature_neck.1.weight"] {
                XCTAssertTrue(w.description.contains(n), w.description)
            }
            XCTAssertFalse(w.description.contains("inv_freq"))
            print("name mismatch: \(w)")
        }
        // with the damage repaired, only the inv_freq buffer is left: it is ignored
        for (n, t) in model.namedTensors() where dropped.contains(n) || n == "model.image_feature_neck.1.weight" { tensors[n] = t }
        tensors["model.extra.weight"] = nil
        try Safetensors.write(tensors, to: dir + "/model.safetensors")
        let report = try PixelLMCheckpoint.load(model, from: dir)
        XCTAssertEqual(report.ignored, ["model.layers.1.self_attn.rotary_emb.inv_freq"])
        XCTAssertEqual(report.loaded, model.namedTensors().count)
    }

    // MARK: - SEG rules

    func testFiveSegTokensGiveNoMasksAndAReason() throws {
        let f = try Self.fixture()
        let model = try Self.loadedModel(f)
        var batch = Self.batch(f)
        // conversation 1 (one target): drop its last SEG token -> 5 SEG tokens
        var conv = batch.conversations[1]
        let last = conv.inputIds.lastIndex { model.segTokenIds.contains($0) }!
        conv.inputIds.remove(at: last)
        conv.labels.remove(at: last)
        batch.conversations[1] = conv
        let out = try Autograd.noGrad { try model.forward(batch) }
        let o = out.conversations[1]
        XCTAssertNil(o.maskLogits)
        XCTAssertNil(o.queries)
        XCTAssertFalse(o.inMaskLoss)
        XCTAssertEqual(o.segRows.count, 5)
        let reason = try XCTUnwrap(o.reason)
        XCTAssertTrue(reason.contains("5 SEG tokens") && reason.contains("ground-truth"), reason)
        XCTAssertEqual(out.excludedTargets, 1)
        XCTAssertEqual(out.losses.maskCount, 4)
        XCTAssertNotNil(out.conversations[0].maskLogits)
        XCTAssertNotNil(out.conversations[2].maskLogits)
        XCTAssertTrue(out.losses.total.item.isFinite)
        print("5 SEG tokens: \(reason)")

        // a question whose SEG groups and ground-truth masks disagree keeps its masks but leaves the losses
        var b2 = Self.batch(f)
        b2.conversations[1].targetMasks = concat([b2.conversations[1].targetMasks!, b2.conversations[1].targetMasks!], axis: 0)
        let out2 = try Autograd.noGrad { try model.forward(b2) }
        XCTAssertNotNil(out2.conversations[1].maskLogits)
        XCTAssertFalse(out2.conversations[1].inMaskLoss)
        XCTAssertEqual(out2.excludedTargets, 2)
        XCTAssertEqual(out2.losses.maskCount, 4)

        // malformed batches are errors, not crashes
        var b3 = Self.batch(f)
        b3.conversations[0].inputIds.removeAll { $0 == PixelLMTokens.image }
        b3.conversations[0].labels.removeLast()
        XCTAssertThrowsError(try model.forward(b3)) { XCTAssertTrue("\($0)".contains("conversation 0"), "\($0)") }
    }

    /// The image placeholder first or last in the ids: the splice has an empty text part on one side.
    func testImagePlaceholderAtEitherEnd() throws {
        let f = try Self.fixture()
        let model = try Self.loadedModel(f)
        var batch = Self.batch(f)
        let seg = model.segTokenIds
        batch.conversations = [
            PixelLMConversation(imageIndex: 0, inputIds: [PixelLMTokens.image, 5, 6] + seg + [2],
                                labels: [-100, -100, 6] + seg + [2], targetMasks: f["inputs/masks/1"]!),
            PixelLMConversation(imageIndex: 1, inputIds: [1, 7, 8, PixelLMTokens.image], labels: [-100, 7, 8, -100]),
        ]
        let out = try Autograd.noGrad { try model.forward(batch) }
        let n = model.config.imageTokenCount, T = 4 + seg.count, Tx = T - 1 + n
        XCTAssertEqual(out.logits.shape, [2, Tx, 128])
        XCTAssertEqual(out.conversations[0].segRows, Array((n + 1)..<(n + 1 + seg.count)), "after the image and 2 tokens")
        XCTAssertEqual(out.labels[0].prefix(n + 2), ArraySlice([Int](repeating: -100, count: n + 1) + [6]))
        let row1 = Array(out.attentionMask.toArray()[Tx...])
        XCTAssertEqual(Array(row1[..<3]), [1, 1, 1])
        XCTAssertEqual(Array(row1[(3 + n)...]), [Float](repeating: 0, count: Tx - 3 - n), "padding after the trailing image")
        XCTAssertEqual(out.conversations[0].maskLogits?.shape, [1, 60, 45])
        XCTAssertNil(out.conversations[1].maskLogits)
        XCTAssertNil(out.conversations[1].reason, "no SEG tokens is no rejection")
        XCTAssertTrue(out.losses.total.item.isFinite)
    }

    // MARK: - parameter table

    func testParameterTableFollowsTheReleasedRecipe() throws {
        var rng = RNG(seed: 6)
        let model = PixelLMForCausalLM(config: try Self.tinyConfig, rng: &rng)
        let table = ParameterTable(model: model)
        func group(_ n: String) -> ParameterEntry { table[n]! }
        XCTAssertEqual(group("lm_head.weight").group, .lmHead)
        XCTAssertTrue(group("lm_head.weight").trainable)
        XCTAssertTrue(group("model.embed_tokens.weight").trainable)
        XCTAssertEqual(group("model.layers.0.self_attn.q_proj.weight").group, .loraTarget)
        XCTAssertFalse(group("model.layers.0.self_attn.q_proj.weight").trainable)
        XCTAssertFalse(group("model.layers.1.mlp.down_proj.weight").trainable)
        XCTAssertFalse(group("model.norm.weight").trainable)
        XCTAssertTrue(group("model.mm_projector.0.weight").trainable)
        XCTAssertTrue(group("model.out_mm_projector.2.bias").trainable)
        XCTAssertTrue(group("model.mask_decoder.level_embed.weight").trainable)
        XCTAssertFalse(group("model.mask_decoder.pe1.positional_encoding_gaussian_matrix").trainable, "buffers are never trained")
        XCTAssertTrue(group("model.mask_decoder.pe1.positional_encoding_gaussian_matrix").isBuffer)
        XCTAssertTrue(group("model.text_hidden_fcs.0.2.weight").trainable)
        XCTAssertFalse(group("model.image_feature_neck.0.weight").trainable)
        XCTAssertFalse(group("model.prompt_encoder.no_mask_embed.weight").trainable)
        XCTAssertEqual(group("vision_model.embeddings.class_embedding").group, .clip)
        XCTAssertFalse(group("vision_model.embeddings.class_embedding").trainable)
        XCTAssertEqual(table.entries.count, model.allNamedTensors().count)

        let custom = ParameterTable(model: model, include: try ParameterGroup.parseList("neck, prompt"), exclude: [.projector])
        XCTAssertTrue(custom["model.image_feature_neck.0.weight"]!.trainable)
        XCTAssertTrue(custom["model.prompt_encoder.no_mask_embed.weight"]!.trainable)
        XCTAssertFalse(custom["model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]!.trainable)
        XCTAssertFalse(custom["model.mm_projector.0.weight"]!.trainable)
        custom.setRequiresGrad()
        XCTAssertTrue(model.decoderSide.imageFeatureNeck.conv0.weight.requiresGrad)
        XCTAssertFalse(model.mmProjector.fc0.weight.requiresGrad)
        XCTAssertFalse(model.visionTower.preLayrnorm.weight.requiresGrad)
        XCTAssertThrowsError(try ParameterGroup.parseList("neck,necks")) { XCTAssertTrue("\($0)".contains("necks")) }
        print(table.summary)
    }

    // MARK: - FLOPs

    func testFLOPsAgainstHandCounts() throws {
        let c = try Self.tinyConfig
        // tiny: D = H = 32, (g/2)^2 = 16 image tokens, V = 128, I = 64, 4 heads, 2 KV heads of 8
        let shape = FLOPBatchShape(images: 2, conversations: 3, sequenceLength: 30, targets: 5)
        let r = FLOPCounter.count(config: c, batch: shape)
        // T' = 30 - 1 + 16 = 45 positions, 3 * 45 = 135 rows
        let lm = try XCTUnwrap(r["lm_head"])
        XCTAssertEqual(lm.forward, 2 * 135 * 32 * 128)                 // 1,105,920
        XCTAssertEqual(lm.backward, 2 * lm.forward)                     // dX + dW
        let mm = try XCTUnwrap(r["mm_projector"])
        XCTAssertEqual(mm.forward, 2 * 32 * 32 * 64 + 2 * 32 * 64 * 32) // 2 images x 16 tokens = 32 rows: 262,144
        XCTAssertEqual(mm.backward, 131_072 + 2 * 131_072)              // fc0 dW only (CLIP frozen); fc2 dX + dW
        // one LLaMA layer: q 276,480, k 138,240, v 138,240, QK^T 388,800, PV 388,800, o 276,480, gate/up/down 552,960 each
        let llm = try XCTUnwrap(r["llm"])
        XCTAssertEqual(llm.forward, 2 * 3_265_920)
        XCTAssertEqual(llm.backward, 2 * (2_488_320 + 2 * 777_600))     // frozen: dX only; attention products x2
        XCTAssertEqual(r["clip"]!.backward, 0, "CLIP is frozen")
        // CLIP runs 11 of its 12 layers (state -2) on 1 + 64 tokens of 2 images
        let clipLayer = 4 * 2 * 130 * 32 * 32 + 2 * (2 * 2 * 65 * 65 * 32) + 2 * (2 * 130 * 32 * 64)
        XCTAssertEqual(r["clip"]!.forward, 2 * 128 * 588 * 32 + 11 * clipLayer)
        let neck = try XCTUnwrap(r["neck"])
        XCTAssertEqual(neck.forward, 2 * (2 * 2 * 64) * 32 * 32 + 2 * (2 * 2 * 64) * 32 * 288)
        XCTAssertEqual(neck.backward, neck.forward, "frozen neck: dX only")
        // training the neck adds its dW
        let r2 = FLOPCounter.count(config: c, batch: shape, trainable: ParameterTable.releasedTrainableGroups.union([.neck]))
        XCTAssertEqual(r2["neck"]!.backward, 2 * neck.forward)
        XCTAssertEqual(r.total, r.components.reduce(0) { $0 + $1.forward + $1.backward })
        print("tiny FLOPs (2 images, 3 conversations, T 30, 5 targets):\n\(r.description)")

        // the released 7B step: 2 images x 3 questions of 100 tokens, 6 targets
        let big = FLOPCounter.count(config: PixelLMConfig(), batch: FLOPBatchShape(images: 2, conversations: 6, sequenceLength: 100, targets: 6))
        XCTAssertGreaterThan(big["llm"]!.forward, big["clip"]!.forward)
        print("7B FLOPs (2 images, 6 conversations, T 100, 6 targets):\n\(big.description)")
    }

    // MARK: - 7B shapes, 2 LLaMA layers (PIXELLM_BIG_TESTS=1)

    func testSevenBTwoLayersOneForward() throws {
        guard ProcessInfo.processInfo.environment["PIXELLM_BIG_TESTS"] == "1" else {
            throw XCTSkip("set PIXELLM_BIG_TESTS=1 (builds the 7B shapes with 2 LLaMA layers and full CLIP-L: ~5 GB, tens of seconds)")
        }
        var c = PixelLMConfig()
        c.numHiddenLayers = 2
        let t0 = Date()
        var rng = RNG(seed: 7)
        let model = PixelLMForCausalLM(config: c, rng: &rng)
        let built = Date().timeIntervalSince(t0)
        let weightsBytes = CachingAllocator.shared.liveBytes
        let S = c.resizeVisionTowerSize
        let pixels = Tensor.randn([1, 3, S, S], rng: &rng)
        let seg = model.segTokenIds
        let prompt = [1] + (0..<8).map { 100 + $0 } + [32001, PixelLMTokens.image, 32002] + (0..<6).map { 200 + $0 }
        let answer = [300, 301] + seg + [2]
        let ids = prompt + answer
        let labels = [Int](repeating: PixelLMTokens.ignore, count: prompt.count) + answer
        let batch = PixelLMBatch(pixels: pixels, validSizes: [(S, 336)], originalSizes: [(640, 480)],
                                 conversations: [PixelLMConversation(imageIndex: 0, inputIds: ids, labels: labels,
                                                                     targetMasks: Tensor.zeros([1, 640, 480]))])
        CachingAllocator.shared.resetPeak()
        let t1 = Date()
        let out = try Autograd.noGrad { try model.forward(batch) }
        let forward = Date().timeIntervalSince(t1)
        XCTAssertEqual(out.logits.shape, [1, ids.count - 1 + 256, 32009])
        XCTAssertEqual(out.conversations[0].maskLogits?.shape, [1, 640, 480])
        XCTAssertTrue(out.losses.total.item.isFinite)
        let flops = FLOPCounter.count(config: c, batch: FLOPBatchShape(images: 1, conversations: 1, sequenceLength: ids.count, targets: 1))
        print("7B 2-layer forward FLOPs:\n\(flops.description)\n= \(String(format: "%.1f", Double(flops.forward) / forward / 1e9)) GFLOP/s")
        let gb = { (b: Int) in String(format: "%.2f GB", Double(b) / 1e9) }
        print("7B shapes with 2 LLaMA layers + CLIP-L at \(S) px: build \(String(format: "%.1f", built)) s, weights \(gb(weightsBytes)); "
              + "one forward (\(ids.count) tokens -> \(ids.count - 1 + 256) positions, 1 target) \(String(format: "%.1f", forward)) s, "
              + "peak \(gb(CachingAllocator.shared.peakBytes)) (allocator, weights included)")
    }
}
