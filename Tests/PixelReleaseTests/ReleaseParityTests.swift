import Foundation
import XCTest
import PixelData
import PixelModel
import PixelTensor
import PixelText

/// Parity with the RELEASED PixelLM code itself (MaverickRen/PixelLM @ ebf0792, transformers 4.31.0, torch 2.13
/// CPU), not with our PyTorch port: Fixtures/release was written by tools/reference/release_parity.py, which
/// built a tiny PixelLM with the released classes from a tiny LLaVA base the way train_ds.py does, exported it as
/// merge_lora_weights_and_save_hf_model.py does (pytorch_model.bin bf16, no vision keys, tokenizer), reloaded it
/// as chat.py does (fp32) and recorded what the released code computes (see the script's docstring).
///
/// Every tensor must match within 1e-5 relative to its largest magnitude; ids, labels and generated tokens
/// exactly. Python is not needed to run this test.
final class ReleaseParityTests: XCTestCase {
    /// (a missing fixture directory fails the tests that read it, not the bundle)
    static var dir: String { Bundle.module.url(forResource: "Fixtures/release", withExtension: nil)?.path ?? "<missing Fixtures/release>" }
    static func sub(_ name: String) -> String { (dir as NSString).appendingPathComponent(name) }
    static let tolerance = 1e-5

    struct Fixture {
        let meta: [String: Any]
        let tensors: [String: Tensor]
        func t(_ name: String) throws -> Tensor { try XCTUnwrap(tensors[name], "fixture tensor \(name)") }
        func dict(_ path: String...) throws -> [String: Any] {
            var d = meta
            for p in path { d = try XCTUnwrap(d[p] as? [String: Any], "release.json: \(path)") }
            return d
        }
    }

    static let fixture: Result<Fixture, Error> = Result {
        let data = try Data(contentsOf: URL(fileURLWithPath: sub("release.json")))
        let meta = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        return Fixture(meta: meta, tensors: try SafetensorsFile(sub("release.safetensors")).floatTensors())
    }
    func fixture() throws -> Fixture { try Self.fixture.get() }

    static func ints(_ v: Any?) -> [Int] { (v as? [Any] ?? []).map { ($0 as! NSNumber).intValue } }
    static func intRows(_ v: Any?) -> [[Int]] { (v as? [Any] ?? []).map { ints($0) } }

    /// max |a - b| / max |b|
    static func relError(_ a: Tensor, _ b: Tensor) -> Double {
        let x = a.contiguousData().toArray(), y = b.contiguousData().toArray()
        var num = 0.0, den = 0.0
        for i in 0..<min(x.count, y.count) {
            num = max(num, abs(Double(x[i]) - Double(y[i])))
            den = max(den, abs(Double(y[i])))
        }
        return num / max(den, 1e-12)
    }

    func assertClose(_ a: Tensor?, _ b: Tensor, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        guard let a else { return XCTFail("\(what): no tensor", file: file, line: line) }
        XCTAssertEqual(a.shape, b.shape, "\(what): shape", file: file, line: line)
        guard a.shape == b.shape else { return }
        let e = Self.relError(a, b)
        print("release parity \(what): \(String(format: "%.2e", e)) relative")
        XCTAssertLessThanOrEqual(e, Self.tolerance, "\(what): \(e) relative to the released code", file: file, line: line)
    }

    // MARK: - the model, the tokenizer, the images, as a user opens them

    static let segIds = Array(1503...1508)
    static let model: Result<PixelLMForCausalLM, Error> = Result {
        try PixelLMModelDirectory.open(sub("pixellm"), visionTower: sub("clip"), segTokenIds: segIds).model
    }
    func model() throws -> PixelLMForCausalLM { try Self.model.get() }
    static let tokenizer: Result<Tokenizer, Error> = Result { try Tokenizer(directory: sub("pixellm")) }

    func image(_ name: String) throws -> (input: CLIPImageInput, original: (height: Int, width: Int)) {
        let rgb = try RGBImage.load(Self.sub(name + ".png"))
        return (CLIPImagePreprocessor(size: 448)(rgb), (rgb.height, rgb.width))
    }

    // MARK: - what goes in: pixels, prompts, ids, labels

    func testImagesPromptsIdsAndLabelsAreTheReleasedOnes() throws {
        let f = try fixture()
        let tok = try Self.tokenizer.get()
        XCTAssertEqual(tok.segIds, Self.segIds)
        for name in ["landscape", "portrait"] {
            let (input, original) = try image(name)
            let info = try f.dict("images", name)
            XCTAssertEqual([input.validHeight, input.validWidth], Self.ints(info["clip_resize"]), "\(name): clip_resize")
            XCTAssertEqual([original.height, original.width], Self.ints(info["original"]), "\(name): original size")
            XCTAssertEqual(input.pixels.toArray(), try f.t(name + ".pixels").toArray(), "\(name): CLIP input tensor")
        }
        XCTAssertNotEqual(try f.dict("images", "portrait")["clip_resize"].map { Self.ints($0)[1] % 14 }, 0,
                          "the portrait's valid width is not a multiple of the patch size")

        // training conversations: our template gives the same text; collate gives the same ids and labels
        let train = try f.dict("train")
        let texts = try XCTUnwrap(train["conversations"] as? [String])
        let qa: [(String, String)] = [
            ("<image>\n What is the red ball in this image? Please output segmentation mask.", Self.seg6 + "."),
            ("<image>\n What is the tree, the blue car and the left cup in this image? Please output segmentation mask.",
             Self.seg6 + ", " + Self.seg6 + " and " + Self.seg6 + "."),
            ("<image>\nWhere could a person sit down here? Please output segmentation mask.",
             "A person could sit on the bench " + Self.seg6 + " or on the low wall " + Self.seg6 + "."),
        ]
        let ours = qa.map { PixelLMPrompt.trainingConversation(rounds: [(question: $0.0, answer: $0.1)]) }
        XCTAssertEqual(ours, texts)
        let collated = try ConversationLabels.collate(texts, tokenizer: tok)
        XCTAssertEqual(collated.inputIds, Self.intRows(train["input_ids"]))
        XCTAssertEqual(collated.labels, Self.intRows(train["labels"]))

        // inference prompts (MUSE evaluate): text and ids
        let ev = try f.dict("evaluate", "muse_two_targets")
        let prompts = try XCTUnwrap(ev["prompts"] as? [String])
        let sents = ["Find the places where one could sit.", "Which things are red?", "Show the two largest objects."]
        XCTAssertEqual(sents.map { PixelLMPrompt.inferencePrompt(question: $0 + " Please output segmentation mask.") }, prompts)
        for (p, want) in zip(prompts, Self.intRows(ev["prompt_ids"])) {
            XCTAssertEqual(PixelLMPrompt.tokenizerImageToken(p, tokenizer: tok), want.filter { $0 != 0 })
        }
    }

    static let seg6 = "[SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5]"

    // MARK: - the training path: every tensor up to the losses

    /// The batch of the fixture: both images, their conversations (ids and labels from the release's collate_fn),
    /// the ground-truth masks in SEG-group order.
    func trainingBatch(_ f: Fixture, images names: [String]) throws -> PixelLMBatch {
        let train = try f.dict("train")
        let ids = Self.intRows(train["input_ids"]), labels = Self.intRows(train["labels"])
        let offset = Self.ints(train["offset"]), perConv = Self.ints(train["targets_per_conversation"])
        let all = ["landscape", "portrait"]
        var pixels: [Tensor] = [], valid: [(height: Int, width: Int)] = [], original: [(height: Int, width: Int)] = []
        var convs: [PixelLMConversation] = []
        for (b, name) in names.enumerated() {
            let i = try XCTUnwrap(all.firstIndex(of: name))
            let (input, orig) = try image(name)
            pixels.append(input.pixels.reshape([1, 3, 448, 448]))
            valid.append(input.validSize)
            original.append(orig)
            let gt = try f.t(name + ".gt_masks")
            var k = 0
            for c in offset[i]..<offset[i + 1] {
                let n = perConv[c]
                convs.append(PixelLMConversation(imageIndex: b, inputIds: ids[c], labels: labels[c],
                                                 targetMasks: gt.slice(axis: 0, k, k + n).contiguous()))
                k += n
            }
        }
        return PixelLMBatch(pixels: pixels.count == 1 ? pixels[0] : concat(pixels, axis: 0), validSizes: valid,
                            originalSizes: original, conversations: convs)
    }

    func testTrainingPathMatchesTheReleasedModelForward() throws {
        let f = try fixture()
        let model = try model()
        let batch = try trainingBatch(f, images: ["landscape", "portrait"])
        let out = try Autograd.noGrad { try model.forward(batch) }
        assertClose(out.vision.deep, try f.t("train.vision.deep"), "vision.deep (CLIP layer -2)")
        assertClose(out.vision.mid, try f.t("train.vision.mid"), "vision.mid (CLIP layer -11)")
        assertClose(out.imageTokens, try f.t("train.image_tokens"), "mm_projector image tokens")
        assertClose(out.hidden, try f.t("train.lm.hidden"), "LLM final-norm hidden states")
        let rows = try XCTUnwrap(try f.dict("train")["logit_rows"] as? [[Any]]).map { Self.ints($0) }
        let picked = concat(rows.map { out.logits.slice(axis: 0, $0[0], $0[0] + 1).slice(axis: 1, $0[1], $0[1] + 1)
            .reshape([1, model.config.vocabSize]) }, axis: 0)
        assertClose(picked, try f.t("train.lm.logits_at_labels"), "logits at the supervised rows")
        // per image: the fused queries, the neck output, the mask logits (conversations concatenated)
        for (i, convIdx) in [[0, 1], [2]].enumerated() {
            let cs = convIdx.map { out.conversations[$0] }
            assertClose(concat(try cs.map { try XCTUnwrap($0.queries) }, axis: 0), try f.t("train.seg.queries.\(i)"),
                        "image \(i): SEG queries (fusion weight 1/6)")
            assertClose(out.imageEmbeddings[i], try f.t("train.image.embeddings.\(i)"), "image \(i): neck embeddings")
            assertClose(concat(try cs.map { try XCTUnwrap($0.lowRes) }, axis: 0).squeeze(1),
                        try f.t("train.mask.logits_low.\(i)"), "image \(i): low-res mask logits")
            assertClose(concat(try cs.map { try XCTUnwrap($0.maskLogits) }, axis: 0), try f.t("train.mask.logits.\(i)"),
                        "image \(i): mask logits at the original size")
        }
        // the released losses: ce, bce_w * bce, dice_w * dice, and their sum
        let o = LossOptions()
        assertClose(out.losses.ce, try f.t("train.ce_loss"), "CE loss")
        assertClose(out.losses.bce * o.bceWeight, try f.t("train.mask_bce_loss"), "BCE loss (x2)")
        assertClose(out.losses.dice * o.diceWeight, try f.t("train.mask_dice_loss"), "DICE loss (x0.5)")
        assertClose(out.losses.total, try f.t("train.loss"), "total loss")
        XCTAssertEqual(out.losses.maskCount, 6)
    }

    /// validate() (refCOCO family): one image per forward, SEG tokens teacher-forced, masks of every sentence;
    /// with the weights in memory as f32, and with the LLaMA matrices kept in bf16 (as 7B models are run).
    func testRefCOCOValidatePathMatchesTheRelease() throws {
        // bf16 here is the storage contract (bf16 weights, fp32 activations): the activations' rounding that a CPU with a
        // faster bf16 dot product adds is tested in SafetensorsTests.testDotBF16PrefillMatchesTheRoundedProduct
        let saved = BF16PrefillKernel.current
        BF16PrefillKernel.current = .convert
        defer { BF16PrefillKernel.current = saved }
        let f = try fixture()
        let bf16 = try PixelLMModelDirectory.open(Self.sub("pixellm"), visionTower: Self.sub("clip"), segTokenIds: Self.segIds,
                                                  precision: .bf16).model
        for (model, precision) in [(try model(), "f32"), (bf16, "bf16")] {
            for name in ["landscape", "portrait"] {
                var batch = try trainingBatch(f, images: [name])
                // the release collates one image's conversations alone (padded to that image's longest)
                let vids = Self.intRows(try f.dict("validate", name)["input_ids"])
                XCTAssertEqual(batch.conversations.map { $0.inputIds.filter { $0 != 0 } }, vids.map { $0.filter { $0 != 0 } }, "\(name): ids")
                for c in batch.conversations.indices {
                    batch.conversations[c].inputIds = vids[c]
                    batch.conversations[c].labels = [Int](repeating: -100, count: vids[c].count)   // inference: no labels
                }
                let out = try Autograd.noGrad { try model.forward(batch) }
                assertClose(out.hidden, try f.t("validate.\(name).lm.hidden"), "\(name) (\(precision) in memory): hidden states")
                let logits = concat(try out.conversations.map { try XCTUnwrap($0.maskLogits) }, axis: 0)
                assertClose(logits, try f.t("validate.\(name).mask.logits"), "\(name) (\(precision) in memory): mask logits")
            }
        }
    }

    // MARK: - MUSE evaluate(): greedy generation and SEG gathering

    func runEvaluate(_ f: Fixture, _ model: PixelLMForCausalLM, case key: String, tag: String) throws {
        let ev = try f.dict("evaluate", key)
        let name = try XCTUnwrap(ev["image"] as? String)
        let (input, original) = try image(name)
        let maxNew = Self.ints([try XCTUnwrap(ev["max_new_tokens"])])[0]
        let prompts = Self.intRows(ev["prompt_ids"]).map { $0.filter { $0 != 0 } }
        let outputs = Self.intRows(ev["output_ids"])
        let counts = Self.ints(ev["targets_per_question"])
        var masks: [Tensor] = [], queries: [Tensor] = []
        for (q, prompt) in prompts.enumerated() {
            let r = try PixelLMGenerator(model: model).generate(
                promptIds: prompt, image: GenerationImage(pixels: input.pixels, validSize: input.validSize, originalSize: original),
                options: GenerationOptions(maxNewTokens: maxNew))
            XCTAssertEqual(prompt + r.tokens, outputs[q], "\(key) question \(q): generated tokens")
            XCTAssertEqual(r.masks.targetCount, counts[q], "\(key) question \(q): targets")
            if let m = r.masks.logits { masks.append(m) }
            if let h = r.segHidden, counts[q] > 0 {
                let sq = Autograd.noGrad { model.decoderSide.queries(hidden: h, rows: Array(0..<h.dim(0))) }
                queries.append(try XCTUnwrap(sq.queries))
            } else if counts[q] == 0 {
                XCTAssertNil(r.masks.logits, "\(key) question \(q): a SEG count that is not a multiple of 6 gives no masks")
                XCTAssertNotNil(r.masks.reason)
            }
        }
        let want = try f.t("\(tag).mask.logits")
        if want.dim(0) == 0 {
            XCTAssertTrue(masks.isEmpty, "\(key): the release produced no masks")
        } else {
            assertClose(concat(masks, axis: 0), want, "\(key): mask logits")
            assertClose(concat(queries, axis: 0), try f.t("\(tag).seg.queries"), "\(key): SEG queries")
        }
    }

    func testMUSEEvaluateGeneratesTheReleasedTokensAndMasks() throws {
        let f = try fixture()
        let model = try model()
        try runEvaluate(f, model, case: "muse_two_targets", tag: "evaluate.two")
        try runEvaluate(f, model, case: "muse_cut_in_group", tag: "evaluate.cut")
    }

    /// The EOS variant: the same model with other embed_tokens / lm_head rows; generation stops at </s>.
    func testMUSEEvaluateStopsAtEOSAsTheRelease() throws {
        let f = try fixture()
        let model = try PixelLMModelDirectory.open(Self.sub("pixellm"), visionTower: Self.sub("clip"), segTokenIds: Self.segIds).model
        let named = Dictionary(uniqueKeysWithValues: model.namedTensors())
        for n in ["model.embed_tokens.weight", "lm_head.weight"] {
            let dst = try XCTUnwrap(named[n]), src = try f.t("variant_eos." + n)
            XCTAssertEqual(dst.shape, src.shape)
            XCTAssertTrue(dst.isContiguous)
            dst.ptr.update(from: src.contiguousData().ptr, count: dst.count)
        }
        try runEvaluate(f, model, case: "muse_eos", tag: "evaluate.eos")
    }

    // MARK: - LLaVA-base initialisation

    /// PixelLM from the tiny LLaVA base, as train_ds.py makes it: the same tensor names and shapes; every tensor
    /// the release took from the base (embed_tokens / lm_head: the first 1503 rows) equal to the base's, and the
    /// rest (new vocabulary rows, the 2-layer projectors, the decoder side) new; LLaVA's single-Linear projector
    /// ignored.
    func testLLaVABaseInitialisationMakesTheReleasedTensors() throws {
        let f = try fixture()
        let info = try f.dict("llava_init")
        let names = try XCTUnwrap(info["names"] as? [String: Any]).mapValues { Self.ints($0) }
        let fromBase = try XCTUnwrap(info["from_base"] as? [String])
        let ignored = try XCTUnwrap(info["ignored_from_base"] as? [String])
        let tokenizer = LLaVATokenizerInfo(name: Self.sub("llava"), count: 1503, known: ["<im_start>": 1501, "<im_end>": 1502])
        let (m, report) = try LLaVABase.initialize(fromLLaVA: Self.sub("llava"), visionTower: Self.sub("clip"), tokenizer: tokenizer)
        XCTAssertEqual(m.segTokenIds, Self.segIds)
        let ours = Dictionary(uniqueKeysWithValues: m.namedTensors().filter { !$0.0.hasPrefix("model.token_fusion") })
        // transformers 4.31 keeps LLaMA's RoPE table as a persistent buffer (rotary_emb.inv_freq, so it is in the
        // released checkpoints); we compute it from rope_theta. Every other name is on both sides.
        let release = Set(names.keys.filter { !$0.hasSuffix("rotary_emb.inv_freq") })
        XCTAssertEqual(names.count - release.count, m.config.numHiddenLayers)
        XCTAssertEqual(Set(ours.keys).subtracting(release), [], "names we make that the release does not")
        XCTAssertEqual(release.subtracting(ours.keys), [], "names the release makes that we do not")
        for (n, shape) in names { if let t = ours[n] { XCTAssertEqual(t.shape, shape, n) } }
        let base = try WeightSources.open(Self.sub("llava"))
        for entry in fromBase where !entry.hasSuffix("rotary_emb.inv_freq") {
            var name = entry, rows: Int?
            if let r = entry.range(of: "[:") {
                name = String(entry[..<r.lowerBound])
                rows = Int(entry[r.upperBound...].dropLast())
            }
            let want = try base.tensor(name)
            var got = try XCTUnwrap(ours[name], name)
            if let rows { got = got.slice(axis: 0, 0, rows) }
            XCTAssertEqual(got.contiguousData().toArray(), want.toArray(), "\(entry): not the LLaVA base's")
        }
        // LLaVA's single-Linear projector is ignored by both; we also list the RoPE buffers as ignored (see above)
        XCTAssertEqual(Set(report.ignored.map { $0.name }.filter { !$0.hasSuffix("rotary_emb.inv_freq") }), Set(ignored),
                       "ignored LLaVA tensors")
        XCTAssertEqual(Set(ignored), ["model.mm_projector.weight", "model.mm_projector.bias"])
    }
}
