import Foundation
import PixelTensor

// Generation for `pixellm chat` (spec 1.6): CLIP once, the prompt with the image tokens spliced in is
// prefilled into a KV cache, then one token per step (greedy by default; temperature / top-p sampling on
// request) until EOS or the token limit. The final-norm hidden state of every step that *emitted* a SEG
// token (the row whose logits chose it) is kept; after generation those rows go through text_hidden_fcs,
// the token fusion and the decoder, and the masks are post-processed to the original size (mask = logit > 0).
// This gives the same rows as the teacher-forced forward (`PixelLMForCausalLM.forward`, rows before each SEG
// token), which the tests check.

public struct GenerationOptions: Sendable {
    /// New tokens at most (EOS included).
    public var maxNewTokens = 512
    /// 0: greedy (the released chat.py); > 0: sampling from softmax(logits / temperature).
    public var temperature: Float = 0
    /// Nucleus sampling: keep the most likely tokens whose probabilities sum to top_p (1: all).
    public var topP: Float = 1
    public var seed: UInt64 = 0
    /// Stop token (`</s>`, 2 for LLaMA tokenizers).
    public var eosId: Int = 2
    /// Answer tokens to teacher-force before generating freely (empty: none). They go through the same
    /// cached steps as generated tokens (their SEG rows are collected the same way): referring segmentation
    /// with a fixed answer ("It is [SEG0]...[SEG5]."), and the tests.
    public var forcedTokens: [Int] = []
    /// Keep every step's logits in the result (tests, debugging).
    public var keepLogits = false
    public init(maxNewTokens: Int = 512, temperature: Float = 0, topP: Float = 1, seed: UInt64 = 0, eosId: Int = 2,
                forcedTokens: [Int] = []) {
        self.forcedTokens = forcedTokens
        self.maxNewTokens = maxNewTokens
        self.temperature = temperature
        self.topP = topP
        self.seed = seed
        self.eosId = eosId
    }
}

/// One image prepared for the model.
public struct GenerationImage {
    /// [3, S, S] or [1, 3, S, S], normalised and padded (CLIPImagePreprocessor).
    public var pixels: Tensor
    public var validSize: (height: Int, width: Int)
    public var originalSize: (height: Int, width: Int)
    public init(pixels: Tensor, validSize: (height: Int, width: Int), originalSize: (height: Int, width: Int)) {
        self.pixels = pixels
        self.validSize = validSize
        self.originalSize = originalSize
    }
}

public struct GenerationResult {
    /// Logits [V] of every step (row k chose tokens[k]) when `keepLogits`.
    public var stepLogits: [Tensor] = []
    /// Generated ids (EOS included when it was produced).
    public var tokens: [Int]
    public var stoppedAtEOS: Bool
    /// Final hidden states gathered for the SEG tokens, [count, H], in generation order (nil: none).
    public var segHidden: Tensor?
    /// The masks of the answer (logits [K, H, W] at the original size; nil when no SEG group was produced or
    /// the SEG count is not a multiple of N*L, with `reason`).
    public var masks: MaskPrediction
    /// Seconds: CLIP + projectors, the prompt prefill, and the decode steps (one per generated token after the first).
    public var visionSeconds: Double
    public var prefillSeconds: Double
    public var decodeSeconds: Double
    /// Prompt length after the image expansion.
    public var prefillLength: Int
    public var decodeSteps: Int
}

public final class PixelLMGenerator {
    public let model: PixelLMForCausalLM
    public init(model: PixelLMForCausalLM) { self.model = model }

    /// Generates the answer to `promptIds` (one `PixelLMTokens.image` placeholder) about `image`.
    public func generate(promptIds: [Int], image: GenerationImage, options: GenerationOptions = GenerationOptions(),
                         onToken: ((Int) -> Void)? = nil) throws -> GenerationResult {
        try Autograd.noGrad { try run(promptIds, image, options, onToken) }
    }

    private func run(_ promptIds: [Int], _ image: GenerationImage, _ options: GenerationOptions,
                     _ onToken: ((Int) -> Void)?) throws -> GenerationResult {
        let config = model.config, llm = model.llm
        let n = config.imageTokenCount
        let placeholders = promptIds.indices.filter { promptIds[$0] == PixelLMTokens.image }
        guard placeholders.count == 1 else {
            throw PixelLMBatchError(message: "the prompt has \(placeholders.count) image placeholders (-200); exactly one is supported")
        }
        if let bad = promptIds.first(where: { $0 != PixelLMTokens.image && ($0 < 0 || $0 >= config.vocabSize) }) {
            throw PixelLMBatchError(message: "prompt token id \(bad) outside the vocabulary of \(config.vocabSize)")
        }
        let S = config.resizeVisionTowerSize
        let pixels = image.pixels.rank == 3 ? image.pixels.reshape([1] + image.pixels.shape) : image.pixels
        guard pixels.shape == [1, config.visionConfig.numChannels, S, S] else {
            throw PixelLMBatchError(message: "pixels \(describe(image.pixels.shape)) are not [3, \(S), \(S)]")
        }
        let s = placeholders[0], T = promptIds.count, Tx = T - 1 + n

        // CLIP and the LLM image tokens
        let t0 = Date()
        let vision = model.visionTower(pixels, validSizes: [image.validSize])
        let imageTokens = model.mmProjector(model.visionTower.poolTokens(vision.deep))          // [1, n, H]
        let imageMask = model.visionTower.llmImageMask(validSizes: [image.validSize]).toArray()
        let visionSeconds = Date().timeIntervalSince(t0)

        // prefill
        let t1 = Date()
        let text = llm.model.embed(promptIds.map { $0 == PixelLMTokens.image ? PixelLMTokens.pad : $0 }, shape: [1, T])
        let parts = [text.slice(axis: 1, 0, s), imageTokens, text.slice(axis: 1, s + 1, T)].filter { $0.dim(1) > 0 }
        let embeds = concat(parts, axis: 1)
        let mask = Tensor([Float](repeating: 1, count: s) + imageMask + [Float](repeating: 1, count: T - s - 1), shape: [1, Tx])
        let cache = llm.makeCache(batch: 1, capacity: Tx + max(options.maxNewTokens, 1))
        var hidden = llm(embeds, attentionMask: mask, cache: cache).slice(axis: 1, Tx - 1, Tx)  // [1, 1, H]
        var logits = llm.logits(hidden)
        let prefillSeconds = Date().timeIntervalSince(t1)

        // decode
        let t2 = Date()
        var rng = RNG(seed: options.seed)
        let segSet = Set(model.segTokenIds)
        var tokens: [Int] = [], segRows: [Tensor] = [], eos = false, steps = 0, kept: [Tensor] = []
        while tokens.count < options.maxNewTokens {
            if options.keepLogits { kept.append(logits.reshape([config.vocabSize]).contiguousData()) }
            let next = tokens.count < options.forcedTokens.count ? options.forcedTokens[tokens.count]
                : Self.pick(logits.contiguousData(), options, &rng)
            tokens.append(next)
            onToken?(next)
            if segSet.contains(next) { segRows.append(hidden.reshape([1, config.hiddenSize]).contiguousData()) }
            if next == options.eosId { eos = true; break }
            if tokens.count == options.maxNewTokens { break }
            hidden = llm(llm.model.embed([next], shape: [1, 1]), cache: cache)
            logits = llm.logits(hidden)
            steps += 1
        }
        let decodeSeconds = Date().timeIntervalSince(t2)

        // masks
        var prediction = MaskPrediction(logits: nil, lowRes: nil, levels: [], targetCount: 0, reason: nil)
        var segHidden: Tensor?
        if !segRows.isEmpty {
            let h = segRows.count == 1 ? segRows[0] : concat(segRows, axis: 0)
            segHidden = h
            let levels = [model.outMMProjector(vision.deep)] + (config.imageFeatureScaleNum > 1 ? [model.outMMProjector(vision.mid)] : [])
            let E = model.decoderSide.imageEmbeddings(levels.count == 1 ? levels[0] : concat(levels, axis: 0))
            prediction = model.decoderSide.predict(embeddings: E, hidden: h, rows: Array(0..<segRows.count),
                                                   inputSize: image.validSize, originalSize: image.originalSize)
        }
        var result = GenerationResult(tokens: tokens, stoppedAtEOS: eos, segHidden: segHidden, masks: prediction,
                                visionSeconds: visionSeconds, prefillSeconds: prefillSeconds, decodeSeconds: decodeSeconds,
                                prefillLength: Tx, decodeSteps: steps)
        result.stepLogits = kept
        return result
    }

    /// Greedy argmax (first maximum, as torch.argmax), or temperature / top-p sampling.
    static func pick(_ logits: Tensor, _ o: GenerationOptions, _ rng: inout RNG) -> Int {
        let V = logits.count, p = logits.ptr
        if o.temperature <= 0 {
            var best = 0
            for i in 1..<V where p[i] > p[best] { best = i }
            return best
        }
        var m = -Float.infinity
        for i in 0..<V { m = max(m, p[i]) }
        var probs = [Double](repeating: 0, count: V), sum = 0.0
        for i in 0..<V { probs[i] = Foundation.exp(Double((p[i] - m) / o.temperature)); sum += probs[i] }
        var order = Array(0..<V)
        order.sort { probs[$0] > probs[$1] }
        var keep = V, acc = 0.0
        if o.topP < 1 {
            for (k, i) in order.enumerated() {
                acc += probs[i] / sum
                if acc >= Double(o.topP) { keep = k + 1; break }
            }
        }
        let kept = order.prefix(keep)
        let total = kept.reduce(0.0) { $0 + probs[$1] }
        var u = Double(rng.uniform()) * total
        for i in kept {
            u -= probs[i]
            if u <= 0 { return i }
        }
        return kept.last!
    }
}
