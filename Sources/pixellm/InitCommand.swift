import ArgumentParser
import Foundation
import PixelModel
import PixelTensor
import PixelText
import PixelTrain

/// `pixellm init`: a checkpoint directory of pseudo-random weights at a config's real size, for benchmarks and
/// tests of big shapes (the weights `chat --random-weights` builds in memory, written once and loaded like any
/// checkpoint by chat, forward, eval, bench and `train --version`).
struct InitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Write a checkpoint directory of pseudo-random weights at a config's size (benchmarks and tests of big shapes; meaningless answers).",
        discussion: """
            The values are hashed from the element index (norms 1, biases 0, other tensors uniform in +-sqrt(3 / fan_in)), \
            one tensor at a time, so a 7B directory is written in the memory of its largest tensor; the same --seed \
            gives the same files. CLIP is written inside (model.vision_tower.vision_tower.*) unless --no-vision.
            """)

    @Option(help: "Model config: a directory with config.json, the file, or a name under configs/ (pixellm-7b, synth-smoke, ...).")
    var config: String
    @Option(help: "Output directory (created; an existing checkpoint there is replaced).") var out: String
    @Option(help: "Stored dtype: f32, bf16 or f16 (default: bf16 above 1e9 parameters, else f32).") var dtype: String?
    @Option(help: "Seed of the pseudo-random values.") var seed: UInt64 = 1
    @Option(help: "Cut the LLaMA depth to this many layers (tests and benchmarks of a 7B-wide model that fits).") var layers: Int?
    @Option(help: "Tokenizer directory whose files are copied in (its SEG tokens must have rows in the config's vocabulary); without it the directory has no tokenizer and chat needs --tokenizer.")
    var tokenizer: String?
    @Flag(help: "Leave CLIP out (a checkpoint that takes --vision-tower).") var noVision = false
    @Option(help: "Largest safetensors shard in GB (transformers' save_pretrained: 5).") var maxShardGb: Double = 5

    func validate() throws {
        if let d = dtype, !["f32", "bf16", "f16"].contains(d) { throw ValidationError("--dtype must be f32, bf16 or f16") }
        if let l = layers, l < 1 { throw ValidationError("--layers must be >= 1") }
        if !(maxShardGb > 0) { throw ValidationError("--max-shard-gb must be > 0") }
    }

    func run() throws {
        let t0 = Date()
        let path = try BenchModel.configPath(config)
        var c = try PixelLMConfig.load(path, validate: false)
        if let l = layers { c.numHiddenLayers = l }
        try c.validate(file: path)
        var segIds: [Int]? = nil
        if let tokenizer {
            let tok = try Tokenizer(directory: tokenizer)
            if let bad = tok.segIds.first(where: { $0 >= c.vocabSize }) {
                throw ValidationError("\(path): vocab_size \(c.vocabSize) has no row for SEG token id \(bad) of the tokenizer \(tokenizer)")
            }
            if tok.segIds.count != c.segTokensPerTarget {
                throw ValidationError("\(tokenizer): \(tok.segIds.count) SEG tokens, the config needs \(c.segTokensPerTarget)")
            }
            segIds = tok.segIds
        }
        try OutputDirectory.prepare(out, option: "--out")
        let parameters = Self.parameterCount(c, includeVision: !noVision)
        let dt: DType = dtype.map { $0 == "bf16" ? .bf16 : $0 == "f16" ? .f16 : .f32 } ?? (parameters > 1_000_000_000 ? .bf16 : .f32)
        var st = statvfs()
        let need = parameters * dt.byteSize
        if statvfs(out, &st) == 0, Int(st.f_bavail) &* Int(st.f_frsize) < need {
            throw ValidationError(String(format: "--out %@: %.2f GB free, the %@ weights need %.2f GB", out,
                                         Double(Int(st.f_bavail) &* Int(st.f_frsize)) / 1e9, dt.name, Double(need) / 1e9))
        }
        var files = try PixelLMModelDirectory.writeHashed(config: c, segTokenIds: segIds, seed: seed, to: out, dtype: dt,
                                                          includeVision: !noVision, maxShardBytes: Int(maxShardGb * 1e9))
        if let tokenizer { files += try copyTokenizerFiles(from: tokenizer, to: out) }
        let bytes = files.reduce(0) { $0 + (fileSize((out as NSString).appendingPathComponent($1)) ?? 0) }
        print(String(format: "%@: %.3g parameters (%d LLaMA layers%@), %@, %d files, %.2f GB in %.1f s",
                     out, Double(parameters), c.numHiddenLayers, noVision ? ", no CLIP" : ", CLIP inside", dt.name, files.count,
                     Double(bytes) / 1e9, Date().timeIntervalSince(t0)))
        if tokenizer == nil { print("no tokenizer written: give chat / forward / eval --tokenizer DIR, or rerun with --tokenizer") }
    }

    /// Parameters of the model (from a skeleton: no weights touched).
    static func parameterCount(_ c: PixelLMConfig, includeVision: Bool) -> Int {
        var rng = RNG(seed: 0)
        let m = PixelLMForCausalLM(config: c, skeleton: true, rng: &rng)
        return m.checkpointTensors(includeVision: includeVision).reduce(0) { $0 + $1.1.count }
    }
}
