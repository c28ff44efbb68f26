import Foundation
import XCTest
@testable import PixelModel
import PixelTensor

/// Checkpoint directories (Fixtures/ckpt from tools/fixtures/model_checkpoint_dirs.py: the tiny PixelLM with
/// vocab 1509 as safetensors f32, sharded safetensors bf16 and pytorch_model.bin bf16, CLIP as a CLIPModel
/// directory) and generation with the KV cache, against the PyTorch forward (reference.safetensors) and
/// against our own teacher-forced forward.
final class GenerateTests: XCTestCase {
    static var dir: String {
        Bundle.module.url(forResource: "Fixtures/ckpt", withExtension: nil)!.path
    }
    static func sub(_ name: String) -> String { (dir as NSString).appendingPathComponent(name) }
    static let segIds = Array(1503...1508)
    static var reference: [String: Tensor] {
        get throws { try SafetensorsFile(sub("reference.safetensors")).floatTensors() }
    }
    /// image.png is 60 x 45; ResizeLongestSide(112) gives 84 x 112.
    static func image(_ ref: [String: Tensor]) -> GenerationImage {
        GenerationImage(pixels: ref["image.pixels"]!, validSize: (84, 112), originalSize: (45, 60))
    }
    static func ints(_ t: Tensor) -> [Int] { t.toArray().map { Int($0) } }

    func open(_ name: String, _ p: WeightPrecision = .f32) throws -> PixelLMForCausalLM {
        try PixelLMModelDirectory.open(Self.sub(name), segTokenIds: Self.segIds, precision: p).model
    }

    func testEveryFormatLoadsAndBF16FilesAgree() throws {
        let (f32, report) = try PixelLMModelDirectory.open(Self.sub("st-f32"), segTokenIds: Self.segIds)
        XCTAssertEqual(report.dtypes, ["F32"])
        // CLIP came from ../clip (config's relative mm_vision_tower); its text tower was ignored
        XCTAssertTrue(report.ignored.contains("logit_scale") && report.ignored.contains("vision_model.embeddings.position_ids"), "\(report.ignored)")
        let st = try open("st-bf16"), bin = try open("bin-bf16")
        for ((n, a), (_, b)) in zip(st.allNamedTensors(), bin.allNamedTensors()) {
            XCTAssertEqual(a.toArray(), b.toArray(), "\(n): safetensors and .bin bf16 differ")
        }
        for ((n, a), (_, b)) in zip(f32.namedTensors(), st.namedTensors()) where a.count > 0 {
            XCTAssertLessThanOrEqual(modelRelError(b, a), 1e-2, "\(n): bf16 is not f32 rounded")
        }
    }

    /// An f16 pytorch_model.bin holds the f32 weights rounded to half: every loaded tensor equals that rounding
    /// exactly, and the report names the dtype.
    func testF16BinHoldsTheF32WeightsRoundedToHalf() throws {
        let (f32, _) = try PixelLMModelDirectory.open(Self.sub("st-f32"), segTokenIds: Self.segIds)
        let (f16, report) = try PixelLMModelDirectory.open(Self.sub("bin-f16"), segTokenIds: Self.segIds)
        XCTAssertTrue(report.dtypes.contains("F16"), "\(report.dtypes)")  // (the CLIP tower in ../clip is f32)
        var checked = 0
        for ((n, a), (m, b)) in zip(f32.namedTensors(), f16.namedTensors()) where a.count > 0 {
            XCTAssertEqual(n, m)
            let want = a.toArray().map { Float(Float16($0)) }
            XCTAssertEqual(b.toArray(), want, "\(n): not the f32 weights rounded to half")
            checked += 1
        }
        XCTAssertGreaterThan(checked, 100)
    }

    /// Prompt = everything up to two tokens before [SEG0]; the rest of the reference ids teacher-forced
    /// through the cached steps. Masks and per-step logits must match the PyTorch (uncached) forward.
    func testForcedGenerationMatchesPyTorch() throws {
        let ref = try Self.reference
        let ids = Self.ints(ref["input_ids"]!)
        let p = ids.firstIndex(of: Self.segIds[0])! - 2
        let model = try open("st-f32")
        var o = GenerationOptions(maxNewTokens: 64, forcedTokens: Array(ids[p...]))
        o.keepLogits = true
        let r = try PixelLMGenerator(model: model).generate(promptIds: Array(ids[..<p]), image: Self.image(ref), options: o)
        XCTAssertEqual(r.tokens, Array(ids[p...]))
        XCTAssertTrue(r.stoppedAtEOS)
        XCTAssertEqual(r.segHidden?.shape, [6, 32])
        assertMatches(try XCTUnwrap(r.masks.logits), ref["mask.logits"]!, tol: 1e-4, "mask.logits")
        assertMatches(try XCTUnwrap(r.masks.lowRes).squeeze(1), ref["mask.logits_low"]!, tol: 1e-4, "mask.logits_low")
        // step k's logits are row (prefill length - 1 + k) of the expanded sequence
        let tail = ref["lm.logits.tail"]!, total = ids.count - 1 + model.config.imageTokenCount
        var checked = 0
        for (k, l) in r.stepLogits.enumerated() {
            let row = r.prefillLength - 1 + k - (total - tail.dim(0))
            guard row >= 0 else { continue }
            assertMatches(l, tail.slice(axis: 0, row, row + 1).squeeze(0), tol: 1e-4, "logits of step \(k)")
            checked += 1
        }
        XCTAssertGreaterThan(checked, 5)
    }

    /// Greedy generation (no forcing) equals argmax of our teacher-forced forward over prompt + answer.
    func testGreedyMatchesTeacherForcedForward() throws {
        try greedyMatchesTeacherForcedForward(try open("st-f32"))
    }

    /// mm_image_pool 4 and 1 (4 and 64 LLM image tokens from the 8 x 8 grid instead of 16): generation with
    /// the KV cache still gives the teacher-forced forward's logits, and the image tokens are the k x k means.
    func testImagePoolingOtherThanTwoGeneratesAsTheForward() throws {
        for pool in [4, 1] {
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pixellm-pool\(pool)-\(getpid())").path
            try? FileManager.default.removeItem(atPath: dir)
            try FileManager.default.copyItem(atPath: Self.sub("st-f32"), toPath: dir)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let configPath = (dir as NSString).appendingPathComponent("config.json")
            var config = try PixelLMConfig.load(configPath, validate: false)
            config.mmImagePool = pool
            try FileManager.default.removeItem(atPath: configPath)
            try PixelLMCheckpoint.writeConfig(config, to: dir)
            let model = try PixelLMModelDirectory.open(dir, visionTower: Self.sub("clip"), segTokenIds: Self.segIds).model
            XCTAssertEqual(model.config.imageTokenCount, (8 / pool) * (8 / pool))
            try greedyMatchesTeacherForcedForward(model)
            let ref = try Self.reference
            let feats = try Autograd.noGrad { model.visionTower(Self.image(ref).pixels.reshape([1, 3, 112, 112])) }
            let pooled = model.visionTower.poolTokens(feats.deep)
            let D = feats.deep.dim(2), h = 8 / pool
            XCTAssertEqual(pooled.shape, [1, h * h, D])
            let deep = feats.deep.toArray(), got = pooled.toArray()
            for cell in [0, h * h - 1] {
                let (ci, cj) = (cell / h, cell % h)
                for d in [0, D - 1] {
                    var sum: Float = 0
                    for i in 0..<pool { for j in 0..<pool { sum += deep[((ci * pool + i) * 8 + cj * pool + j) * D + d] } }
                    XCTAssertEqual(got[cell * D + d], sum / Float(pool * pool), accuracy: 1e-5, "pool \(pool) cell \(cell) channel \(d)")
                }
            }
            // 84 x 112 valid of 112: patch rows 0-5 valid; pooled row i is valid when patch row pool * i is
            let mask = model.visionTower.llmImageMask(validSizes: [(84, 112)]).toArray()
            XCTAssertEqual(mask, (0..<(h * h)).map { ($0 / h) * pool < 6 ? 1 : 0 }, "pool \(pool)")
        }
    }

    func greedyMatchesTeacherForcedForward(_ model: PixelLMForCausalLM, file: StaticString = #filePath, line: UInt = #line) throws {
        let ref = try Self.reference
        let ids = Self.ints(ref["input_ids"]!)
        let prompt = Array(ids[..<(ids.firstIndex(of: Self.segIds[0])! - 2)])
        var o = GenerationOptions(maxNewTokens: 8)
        o.keepLogits = true
        let r = try PixelLMGenerator(model: model).generate(promptIds: prompt, image: Self.image(ref), options: o)
        XCTAssertEqual(r.tokens.count, 8)
        XCTAssertEqual(r.decodeSteps, 7)
        let full = prompt + r.tokens
        let batch = PixelLMBatch(pixels: ref["image.pixels"]!.reshape([1, 3, 112, 112]), validSizes: [(84, 112)], originalSizes: [(45, 60)],
                                 conversations: [PixelLMConversation(imageIndex: 0, inputIds: full, labels: full.map { $0 == -200 ? -100 : $0 })])
        let out = try Autograd.noGrad { try model.forward(batch) }
        for k in 0..<r.tokens.count {
            let row = out.logits.slice(axis: 1, r.prefillLength - 1 + k, r.prefillLength + k).reshape([model.config.vocabSize])
            assertMatches(r.stepLogits[k], row, tol: 1e-5, "step \(k)")
            XCTAssertEqual(r.tokens[k], PixelLMGenerator.pick(row, GenerationOptions(), &RNGBox.rng), "greedy token \(k)")
        }
    }

    /// `writeHashed` (pixellm init) writes the weights `hashedModel` (chat --random-weights) builds: f32 files load
    /// to the same tensors bit for bit, sharded or not; bf16 files hold the same values rounded, which are the
    /// bf16 LLaMA matrices of hashedModel(.bf16).
    func testWrittenHashedWeightsAreTheInMemoryOnes() throws {
        let config = try PixelLMConfig.load(ConfigTests.configsDir.appendingPathComponent("tiny/config.json").path)
        let reference = PixelLMModelDirectory.hashedModel(config: config, precision: .f32, seed: 5)
        let want = Dictionary(uniqueKeysWithValues: reference.checkpointTensors(includeVision: true))
        for (dtype, shard) in [(DType.f32, 5 << 30), (.f32, 20_000), (.bf16, 5 << 30)] {
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pixellm-hashed-\(dtype.name)-\(shard)-\(getpid())").path
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let files = try PixelLMModelDirectory.writeHashed(config: config, seed: 5, to: dir, dtype: dtype, maxShardBytes: shard)
            XCTAssertEqual(files.contains("model.safetensors.index.json"), shard < 1_000_000, "\(files)")
            let src = try WeightSources.open(dir)
            XCTAssertEqual(Set(src.names), Set(want.keys))
            for (n, t) in want {
                let stored = try src.tensor(n)
                XCTAssertEqual(stored.shape, t.shape, n)
                let expected = dtype == .f32 ? t.toArray() : t.toArray().map { Convert.float(bf16: Convert.bf16($0)) }
                XCTAssertEqual(stored.toArray(), expected, "\(n) (\(dtype.name), shard \(shard))")
            }
            let (loaded, _) = try PixelLMModelDirectory.open(dir)
            XCTAssertEqual(loaded.config, config)
            // bf16 precision keeps CLIP's matrices in place when the files store them in bf16, and never rounds fp32 ones
            let (b, _) = try PixelLMModelDirectory.open(dir, precision: .bf16)
            let fc1 = b.visionTower.layers[0].mlp.fc1
            XCTAssertEqual(fc1.bf16Weight != nil, dtype == .bf16, "CLIP fc1 kept in bf16 (\(dtype.name) on disk)")
            XCTAssertEqual(fc1.weight.count == 0, dtype == .bf16)
            XCTAssertNotNil(b.llm.model.layers[0].selfAttn.qProj.bf16Weight)
        }
        let bf = PixelLMModelDirectory.hashedModel(config: config, precision: .bf16, seed: 5)
        let q = bf.llm.model.layers[0].selfAttn.qProj
        XCTAssertEqual(q.bf16Weight?.toTensor().toArray(),
                       reference.llm.model.layers[0].selfAttn.qProj.weight.toArray().map { Convert.float(bf16: Convert.bf16($0)) })
    }

    /// bf16 precision keeps the LLaMA matrices in bf16 (linearBF16) and gives the f32 model's numbers for the
    /// same (bf16) weights.
    func testBF16PrecisionMatchesF32OfTheSameWeights() throws {
        // the storage contract (bf16 weights, fp32 activations); a CPU whose bf16 dot product is faster would round the
        // prefill's activations to bf16 too (SafetensorsTests.testDotBF16PrefillMatchesTheRoundedProduct)
        let saved = BF16PrefillKernel.current
        BF16PrefillKernel.current = .convert
        defer { BF16PrefillKernel.current = saved }
        let ref = try Self.reference
        let ids = Self.ints(ref["input_ids"]!)
        let p = ids.firstIndex(of: Self.segIds[0])! - 2
        let a = try open("bin-bf16", .f32), b = try open("st-bf16", .bf16)
        XCTAssertNotNil(b.llm.model.layers[1].mlp.downProj.bf16Weight)
        XCTAssertEqual(b.llm.model.layers[1].mlp.downProj.weight.count, 0)
        XCTAssertNotNil(b.llm.lmHead?.bf16Weight, "the lm_head is read once per generated token: bf16 too")
        XCTAssertNil(b.visionTower.layers[0].mlp.fc1.bf16Weight, "the fixtures' CLIP is stored in fp32: never rounded")
        let o = GenerationOptions(maxNewTokens: 64, forcedTokens: Array(ids[p...]))
        let ra = try PixelLMGenerator(model: a).generate(promptIds: Array(ids[..<p]), image: Self.image(ref), options: o)
        let rb = try PixelLMGenerator(model: b).generate(promptIds: Array(ids[..<p]), image: Self.image(ref), options: o)
        assertMatches(try XCTUnwrap(rb.masks.logits), try XCTUnwrap(ra.masks.logits), tol: 1e-5, "bf16 vs f32 masks")
    }

    func testTopPSamplingStaysInTheNucleus() {
        let logits = Tensor([0, 3, 2.5, -1], shape: [4])
        var rng = RNG(seed: 1)
        let o = GenerationOptions(temperature: 1, topP: 0.5)
        for _ in 0..<50 { XCTAssertEqual(PixelLMGenerator.pick(logits, o, &rng), 1) }
        let o2 = GenerationOptions(temperature: 1, topP: 1)
        var seen = Set<Int>()
        for _ in 0..<400 { seen.insert(PixelLMGenerator.pick(logits, o2, &rng)) }
        XCTAssertEqual(seen, [0, 1, 2, 3])
    }

    // MARK: - bad directories: each error names the file and the problem

    static func temp(_ name: String) -> String {
        let d = NSTemporaryDirectory() + "pixellm-gen-\(name)-\(getpid())"
        try? FileManager.default.removeItem(atPath: d)
        return d
    }

    /// st-f32 copied to a temp dir with `model.safetensors` replaced by `bytes`.
    static func copyWithWeights(_ name: String, _ edit: (inout [UInt8]) -> Void) throws -> String {
        let d = temp(name)
        try FileManager.default.copyItem(atPath: sub("st-f32"), toPath: d)
        let f = (d as NSString).appendingPathComponent("model.safetensors")
        var b = [UInt8](try Data(contentsOf: URL(fileURLWithPath: f)))
        edit(&b)
        try Data(b).write(to: URL(fileURLWithPath: f))
        return d
    }

    func assertError(_ body: @autoclosure () throws -> Any, mentions: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { e in
            let s = "\(e)"
            print("expected error: \(s)")
            for m in mentions { XCTAssertTrue(s.contains(m), "error '\(s)' does not mention '\(m)'", file: file, line: line) }
        }
    }

    func testBadDirectoriesAreNamedErrors() throws {
        let missing = Self.temp("missing")
        assertError(try PixelLMModelDirectory.open(missing), mentions: [missing, "does not exist"])
        // truncated weights
        let trunc = try Self.copyWithWeights("trunc") { $0.removeLast(1000) }
        assertError(try PixelLMModelDirectory.open(trunc, segTokenIds: Self.segIds), mentions: [trunc + "/model.safetensors"])
        // a header whose offsets run past the file: grow the first data_offsets end
        let past = try Self.copyWithWeights("past") { b in
            let hlen = Int(b[0]) | Int(b[1]) << 8 | Int(b[2]) << 16
            var h = String(decoding: b[8..<(8 + hlen)], as: UTF8.self)
            h = h.replacingOccurrences(of: "\"data_offsets\":[0,", with: "\"data_offsets\":[0,9")
            let nb = Array(h.utf8)
            var n = nb.count
            var head: [UInt8] = []
            for _ in 0..<8 { head.append(UInt8(n & 255)); n >>= 8 }
            b = head + nb + Array(b[(8 + hlen)...])
        }
        assertError(try PixelLMModelDirectory.open(past, segTokenIds: Self.segIds), mentions: [past + "/model.safetensors"])
        // an unknown dtype
        let dt = try Self.copyWithWeights("dtype") { b in
            if let r = Self.find(b, Array("\"F32\"".utf8)) { b.replaceSubrange(r, with: Array("\"Q7X\"".utf8)) }
        }
        assertError(try PixelLMModelDirectory.open(dt, segTokenIds: Self.segIds), mentions: [dt + "/model.safetensors", "Q7X"])
        // an unsupported pickle
        let pk = Self.sub("bad-pickle")
        assertError(try PixelLMModelDirectory.open(pk, segTokenIds: Self.segIds), mentions: [pk + "/pytorch_model.bin", "NotATensor"])
        // no CLIP anywhere
        let noClip = Self.temp("noclip")
        try FileManager.default.copyItem(atPath: Self.sub("st-f32"), toPath: noClip)
        assertError(try PixelLMModelDirectory.open(noClip, segTokenIds: Self.segIds), mentions: [noClip, "--vision-tower"])
        // a LLaVA directory (single-Linear mm_projector) is refused with the reason
        let llava = Self.temp("llava")
        try FileManager.default.createDirectory(atPath: llava, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Self.sub("st-f32/config.json"), toPath: llava + "/config.json")
        try Safetensors.write(["model.mm_projector.weight": Tensor.zeros([32, 32]), "model.embed_tokens.weight": Tensor.zeros([1509, 32])],
                              to: llava + "/model.safetensors")
        assertError(try PixelLMModelDirectory.open(llava, segTokenIds: Self.segIds), mentions: [llava, "LLaVA"])
        // the wrong number of SEG ids
        assertError(try PixelLMModelDirectory.open(Self.sub("st-f32"), segTokenIds: [1503]), mentions: ["SEG"])
    }

    static func find(_ b: [UInt8], _ p: [UInt8]) -> Range<Int>? {
        guard b.count >= p.count else { return nil }
        for i in 0...(b.count - p.count) where Array(b[i..<(i + p.count)]) == p { return i..<(i + p.count) }
        return nil
    }
}

enum RNGBox { nonisolated(unsafe) static var rng = RNG(seed: 0) }
