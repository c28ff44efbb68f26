import ArgumentParser
import Foundation
import PixelData
import PixelModel
import PixelTensor
import PixelText
import PixelTrain

/// `pixellm chat`: greedy (or sampled) generation with the KV cache; the answer with its targets numbered,
/// one mask PNG per target and an overlay; interactive without --prompt.
struct Chat: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Answer questions about an image with masks (greedy, KV cache); writes mask_N.png and overlay.png.",
        discussion: "--model is a consolidated directory, or a run directory / training checkpoint (RUN, RUN/best, RUN/checkpoints/step-N; loaded without consolidating).")

    @OptionGroup var options: ModelOptions
    @Option(help: "Image file (JPEG or PNG).") var image: String
    @Option(help: "The question; without it, questions are read from standard input, one per line.") var prompt: String?
    @Option(help: "Where the masks and the overlay go (interactive: one subdirectory q1, q2, ... per question).") var outDir = "pixellm-out"
    @Option(help: "New tokens at most.") var maxNewTokens = 512
    @Option(help: "0: greedy (as the released chat.py); > 0: sampling temperature.") var temperature: Float = 0
    @Option(help: "Nucleus sampling threshold (with --temperature > 0).") var topP: Float = 1
    @Option(help: "Sampling seed.") var seed: UInt64 = 0
    @Option(help: "Teacher-force this answer text first (e.g. \"It is [SEG0][SEG1][SEG2][SEG3][SEG4][SEG5].\"), then continue greedily: referring segmentation with a fixed answer.")
    var forceAnswer: String?

    func validate() throws {
        if maxNewTokens < 1 { throw ValidationError("--max-new-tokens must be >= 1 (got \(maxNewTokens))") }
        if !(temperature >= 0) || !temperature.isFinite { throw ValidationError("--temperature must be 0 (greedy) or a finite number > 0 (got \(temperature))") }
        if !(topP > 0 && topP <= 1) { throw ValidationError("--top-p must be in (0, 1] (got \(topP))") }
    }

    func run() throws {
        // the output directory is checked before the model loads and answers, not after
        try OutputDirectory.prepare(outDir, option: "--out-dir")
        let rgb = try RGBImage.load(image)
        let t0 = Date()
        let (tok, model, what, _) = try options.loadModelOrCheckpoint()
        let load = Date().timeIntervalSince(t0)
        print("loaded \(what.joined(separator: "\n")) in \(String(format: "%.2f", load)) s (peak RSS \(String(format: "%.2f", peakRSSGB())) GB)")
        let (img, gi) = prepareImage(rgb, size: model.config.resizeVisionTowerSize)
        let generator = PixelLMGenerator(model: model)
        let forced = forceAnswer.map { tok.encode($0, addBos: false) } ?? []
        let opts = GenerationOptions(maxNewTokens: maxNewTokens, temperature: temperature, topP: topP, seed: seed, eosId: tok.eosId,
                                     forcedTokens: forced)
        if let prompt {
            try answer(prompt, generator, tok, img, gi, opts, outDir)
            return
        }
        var n = 0
        while true {
            print("question> ", terminator: "")
            fflush(stdout)
            guard let line = readLine(strippingNewline: true) else { break }
            let q = line.trimmingCharacters(in: .whitespaces)
            if q.isEmpty { continue }
            if q == "exit" || q == "quit" { break }
            n += 1
            try answer(q, generator, tok, img, gi, opts, (outDir as NSString).appendingPathComponent("q\(n)"))
        }
    }

    func answer(_ question: String, _ g: PixelLMGenerator, _ tok: Tokenizer, _ img: RGBImage, _ gi: GenerationImage,
                _ opts: GenerationOptions, _ dir: String) throws {
        let model = g.model
        let ids = PixelLMPrompt.tokenizerImageToken(
            PixelLMPrompt.inferencePrompt(question: question, useMMStartEnd: model.config.mmUseImStartEnd), tokenizer: tok)
        try MappedFiles.verifyAll()   // the weights a mapping lends are still the file's
        let r = try g.generate(promptIds: ids, image: gi, options: opts)
        let text = Self.numberedAnswer(r.tokens, tokenizer: tok, segIds: model.segTokenIds, eos: opts.eosId)
        print("answer: \(text)")
        if let reason = r.masks.reason { print("no masks: \(reason)") }
        let paths = try MaskOverlay.write(image: img, logits: r.masks.logits, to: dir)
        let masks: [GrayImage] = r.masks.logits.map { MaskOverlay.binaryMasks($0) } ?? []
        for (k, m) in masks.enumerated() {
            let area = m.pixels.reduce(0) { $0 + ($1 != 0 ? 1 : 0) }
            print("  [\(k + 1)] \(paths[k]) (\(m.width)x\(m.height), \(area) px)")
        }
        print("  overlay: \(paths.last!)")
        // one new token comes from the prefill itself: decode steps can be 0 (an answer of one token)
        let decode = r.decodeSteps > 0
            ? String(format: "%.3f s/token (%.2f tokens/s) decode", r.decodeSeconds / Double(r.decodeSteps), Double(r.decodeSteps) / r.decodeSeconds)
            : "no decode steps"
        print(String(format: "vision %.2f s, prefill %.2f s (%d positions), %d tokens, ", r.visionSeconds, r.prefillSeconds, r.prefillLength, r.tokens.count)
              + decode + String(format: ", peak RSS %.2f GB", peakRSSGB()) + (r.stoppedAtEOS ? " (EOS)" : " (token limit)"))
    }

    /// The answer with its SEG groups numbered (shared with `pixellm eval`).
    static func numberedAnswer(_ tokens: [Int], tokenizer: Tokenizer, segIds: [Int], eos: Int) -> String {
        Evaluator.numberedAnswer(tokens, tokenizer: tokenizer, segIds: segIds, eos: eos)
    }
}
