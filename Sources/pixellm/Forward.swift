import ArgumentParser
import Foundation
import PixelData
import PixelModel
import PixelTensor
import PixelText
import PixelTrain

/// What `forward` and `chat` share: the model directory (or benchmark weights), the tokenizer, the image.
struct ModelOptions: ParsableArguments {
    @Option(help: "PixelLM hf_model directory: config.json, weights (safetensors or pytorch_model.bin, single or sharded; f32/f16/bf16), tokenizer files.")
    var model: String?
    @Option(help: "CLIP directory (HF layout, e.g. clip-vit-large-patch14-336) when the checkpoint has no vision tower; default: config's mm_vision_tower if it is a local directory.")
    var visionTower: String?
    @Option(help: "Tokenizer directory (default: the model directory).") var tokenizer: String?
    @Option(help: "Weights in memory: f32, or bf16 (the LLaMA layer matrices stay bf16; inference only). Default: bf16 when the checkpoint is stored in bf16 and has more than 1e9 parameters, else f32.")
    var precision: String?
    @Option(help: "BENCHMARK ONLY: no checkpoint; a config directory (or configs/<name>) whose model gets hashed pseudo-random weights (meaningless answers, real sizes and speed).")
    var randomWeights: String?
    @Option(help: "LLaVA base directory only (--model a LLaVA checkpoint: PixelLM as training starts from it): seed of the newly initialised weights (projectors, decoder, SEG rows).")
    var initSeed: UInt64 = 0

    func validate() throws {
        if (model == nil) == (randomWeights == nil) { throw ValidationError("give exactly one of --model and --random-weights") }
        if let p = precision, WeightPrecision(rawValue: p) == nil { throw ValidationError("--precision must be f32 or bf16") }
        if randomWeights != nil && tokenizer == nil { throw ValidationError("--random-weights needs --tokenizer DIR") }
        for (option, path) in [("--model", model), ("--tokenizer", tokenizer), ("--vision-tower", visionTower)] {
            guard let path else { continue }
            var isDir: ObjCBool = false
            if !FileManager.default.fileExists(atPath: path, isDirectory: &isDir) {
                throw ValidationError("\(option) \(path): no such directory")
            }
            // RUN/latest and RUN/best are files that name a training checkpoint (eval takes them)
            if !isDir.boolValue && !(option == "--model" && (try? TrainCheckpoint.resolve(path)) != nil) {
                throw ValidationError("\(option) \(path): a file, not a directory (a model directory holds config.json, the weights and the tokenizer files)")
            }
        }
    }

    func loadTokenizer() throws -> Tokenizer {
        let tok = try Tokenizer(directory: tokenizer ?? model!)
        return tok
    }

    /// The tokenizer, the model and the lines describing what was loaded. A LLaVA base directory (LLaMA weights,
    /// no PixelLM decoder) gives PixelLM as training initialises it (LLaVABase); when its tokenizer lacks the SEG
    /// tokens, they are appended as train_ds.py does, in a temporary copy of the tokenizer.
    func load() throws -> (Tokenizer, PixelLMForCausalLM, [String]) {
        guard randomWeights == nil, let dir = model, LLaVABase.isLLaVADirectory(dir) else {
            let tok = try loadTokenizer()
            let (m, what) = try loadModel(segTokenIds: tok.segIds)
            return (tok, m, [what])
        }
        let tokDir = tokenizer ?? dir
        var tok = try Tokenizer(directory: tokDir)
        let info = LLaVATokenizerInfo(tokenizer: tok, name: tokDir)
        var p = WeightPrecision(rawValue: precision ?? "f32")!
        if precision == nil, let src = try? WeightSources.open(dir), let up = src.names.first(where: { $0.hasSuffix("mlp.up_proj.weight") }),
           let info = try? src.info(up), info.dtype == .bf16,
           src.names.filter({ $0.hasSuffix("mlp.up_proj.weight") }).count * info.shape.reduce(1, *) * 3 > 1_000_000_000 {
            p = .bf16   // as for a PixelLM directory: a bf16 7B/13B base keeps its layer matrices in bf16
        }
        let (m, report) = try LLaVABase.initialize(fromLLaVA: dir, visionTower: visionTower, tokenizer: info, seed: initSeed, precision: p)
        var lines = report.summary
        if !report.vocabulary.appended.isEmpty {
            let ext = NSTemporaryDirectory() + "pixellm-tokenizer-\(getpid())"
            try LLaVABase.writeExtendedTokenizer(from: tokDir, to: ext, vocabulary: report.vocabulary)
            tok = try Tokenizer(directory: ext)
            try? FileManager.default.removeItem(atPath: ext)
            guard tok.segIds == m.segTokenIds, tok.vocabSize == m.config.vocabSize else {
                throw ValidationError("\(tokDir): the tokenizer with PixelLM's tokens appended has SEG ids \(tok.segIds) and \(tok.vocabSize) tokens, "
                                      + "the model \(m.segTokenIds) and \(m.config.vocabSize)")
            }
        }
        lines[0] += ", in memory \(p.rawValue)"
        return (tok, m, lines)
    }

    /// The model and a line describing what was loaded.
    func loadModel(segTokenIds: [Int]) throws -> (PixelLMForCausalLM, String) {
        if let r = randomWeights {
            // a directory, a config.json, or a name under configs/ (found from the current directory or the checkout
            // the executable was built in, so it works from anywhere)
            let dir = (try BenchModel.configPath(r) as NSString).deletingLastPathComponent
            let (config, _) = try PixelLMModelDirectory.readConfig(dir)
            if let bad = segTokenIds.first(where: { $0 < 0 || $0 >= config.vocabSize }) {
                throw ValidationError("\(dir)/config.json: vocab_size \(config.vocabSize) has no row for SEG token id \(bad) of the tokenizer \(tokenizer ?? "")")
            }
            let p = WeightPrecision(rawValue: precision ?? "bf16")!
            let m = PixelLMModelDirectory.hashedModel(config: config, segTokenIds: segTokenIds, precision: p)
            return (m, "BENCHMARK weights (hashed, meaningless) for \(dir)/config.json, LLaMA matrices in \(p.rawValue)")
        }
        let dir = model!
        var p = WeightPrecision(rawValue: precision ?? "f32")!
        if precision == nil, let src = try? WeightSources.open(dir), let first = src.names.first(where: { $0.hasSuffix("mlp.up_proj.weight") }),
           let info = try? src.info(first), info.dtype == .bf16, let (c, _) = try? PixelLMModelDirectory.readConfig(dir, visionTower: visionTower),
           c.numHiddenLayers * c.hiddenSize * c.intermediateSize * 3 > 1_000_000_000 {
            p = .bf16
        }
        let (m, report) = try PixelLMModelDirectory.open(dir, visionTower: visionTower, segTokenIds: segTokenIds, precision: p)
        var line = "\(report.loaded) tensors (\(report.dtypes.sorted().joined(separator: "/")) on disk), in memory \(p.rawValue)"
        if !report.ignored.isEmpty { line += "; ignored \(report.ignored.count) names (e.g. \(report.ignored.prefix(3).joined(separator: ", ")))" }
        return (m, line)
    }
}

func prepareImage(_ img: RGBImage, size: Int) -> (RGBImage, GenerationImage) {
    let input = CLIPImagePreprocessor(size: size)(img)
    return (img, GenerationImage(pixels: input.pixels, validSize: input.validSize, originalSize: (img.height, img.width)))
}

func peakRSSGB() -> Double {
    guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
          let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
          let kb = Double(line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first ?? "") else { return .nan }
    return kb * 1024 / 1e9
}

/// `pixellm forward`: one forward pass (teacher-forced with --answer), named tensors dumped to safetensors.
struct Forward: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "One forward pass on an image and a prompt (teacher-forced answer with --answer); dumps named tensors (see README).")

    @OptionGroup var options: ModelOptions
    @Option(help: "Image file (JPEG or PNG).") var image: String
    @Option(help: "The question.") var prompt: String
    @Option(help: "Answer to teacher-force (e.g. \"It is [SEG0][SEG1][SEG2][SEG3][SEG4][SEG5].\"), as the refCOCO evaluation does.") var answer: String?
    @Option(help: "Output .safetensors file.") var dump: String

    func run() throws {
        let rgb = try RGBImage.load(image)
        let t0 = Date()
        let (tok, model, what) = try options.load()
        print("loaded \(what.joined(separator: "\n")) in \(String(format: "%.2f", Date().timeIntervalSince(t0))) s")
        let (img, gi) = prepareImage(rgb, size: model.config.resizeVisionTowerSize)
        let text: String
        if let answer {
            text = PixelLMPrompt.trainingConversation(rounds: [(question: PixelLMPrompt.imageToken + "\n" + prompt, answer: answer)],
                                                      useMMStartEnd: model.config.mmUseImStartEnd)
        } else {
            text = PixelLMPrompt.inferencePrompt(question: prompt, useMMStartEnd: model.config.mmUseImStartEnd)
        }
        let ids = PixelLMPrompt.tokenizerImageToken(text, tokenizer: tok)
        let labels = ids.map { $0 == PixelLMTokens.image ? PixelLMTokens.ignore : $0 }
        let batch = PixelLMBatch(pixels: gi.pixels.reshape([1] + gi.pixels.shape), validSizes: [gi.validSize],
                                 originalSizes: [gi.originalSize],
                                 conversations: [PixelLMConversation(imageIndex: 0, inputIds: ids, labels: labels)])
        let t1 = Date()
        let out = try Autograd.noGrad { try model.forward(batch) }
        let secs = Date().timeIntervalSince(t1)
        let c = out.conversations[0]
        var d: [String: Tensor] = [
            "input_ids": Tensor(ids.map(Float.init), shape: [ids.count]),
            "image.pixels": gi.pixels,
            "vision.deep": out.vision.deep.squeeze(0), "vision.mid": out.vision.mid.squeeze(0),
            "lm.hidden": out.hidden.squeeze(0), "lm.logits": out.logits.squeeze(0),
            "seg.rows": Tensor(c.segRows.map(Float.init), shape: [c.segRows.count]),
        ]
        if let p = c.projected { d["seg.embeddings"] = p }
        if let q = c.queries { d["seg.queries"] = q }
        if let e = out.imageEmbeddings[0] { d["image.embeddings"] = e }
        if let l = c.lowRes { d["mask.logits_low"] = l.squeeze(1) }
        if let m = c.maskLogits { d["mask.logits"] = m }
        try Safetensors.write(d, to: dump, metadata: ["prompt": prompt, "answer": answer ?? "", "image": image])
        print("forward: \(ids.count) tokens -> \(out.logits.dim(1)) positions, image \(img.width)x\(img.height), "
              + "\(c.segRows.count) SEG tokens, \(c.predictedCount) masks\(c.maskLogits == nil ? (c.reason.map { " (\($0))" } ?? "") : ""), "
              + String(format: "%.2f s", secs))
        print("wrote \(dump): " + d.keys.sorted().map { "\($0) \(describe(d[$0]!.shape))" }.joined(separator: ", "))
    }
}
