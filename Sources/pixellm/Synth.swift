import ArgumentParser
import Foundation
import PixelData

/// `pixellm synth`: a deterministic procedural dataset in the reference's dataset/ layout (MUSE,
/// refer_seg, sem_seg, vqa, reason_seg).
struct Synth: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a deterministic synthetic dataset (shapes scenes) in the reference's dataset/ layout.")

    @Option(help: "Output directory (the reference's dataset/ root).") var out: String
    @Option(help: "Random seed; the same seed gives byte-identical files.") var seed: UInt64 = 0
    @Option(help: "Training images.") var train: Int = 20
    @Option(help: "Validation images.") var val: Int = 5
    @Option(help: "Images in each of test_less and test_many.") var test: Int = 5
    @Option(help: "Image width in pixels (height is the same or 3/4 of it).") var size: Int = 224
    @Option(help: "Ids of the tokenizer written to OUT/tokenizer (base BPE vocabulary + 9 PixelLM tokens; configs/synth-small: 1024); 0 for none.")
    var vocabSize: Int = SynthTokenizer.defaultVocabSize
    @Option(help: "Objects per train / val scene: 1 to this many (1-8; 8 the standard scenes).") var maxObjects: Int = 8
    @Flag(help: "Start every VQA conversation with a caption turn that names every object, left to right (the other files do not change).")
    var vqaCaptions = false
    @Option(help: "Train scenes only: each object after the first repeats a colour already in the scene with this probability (0-1; default 0, the standard scenes). Colour then tells fewer objects apart, so the masks and names need the shape more often; val and test do not change.")
    var repeatColours: Double = 0
    @Option(help: "Also write the tokenizer's training texts (distinct, first-seen order) to this file as a JSON array.")
    var tokenizerCorpus: String?

    func validate() throws {
        if train < 0 || val < 0 || test < 0 { throw ValidationError("--train, --val and --test must be >= 0") }
        if size < 32 || size > 4096 { throw ValidationError("--size must be in 32...4096") }
        if vocabSize < 0 { throw ValidationError("--vocab-size must be >= 0") }
        if maxObjects < 1 || maxObjects > 8 { throw ValidationError("--max-objects must be in 1...8") }
        if !(0...1).contains(repeatColours) { throw ValidationError("--repeat-colours must be in 0...1") }
    }

    func run() throws {
        try OutputDirectory.prepare(out, option: "--out")
        let gen = SynthGenerator(config: SynthConfig(seed: seed, train: train, val: val, test: test, size: size, vocabSize: vocabSize,
                                                          maxObjects: maxObjects, vqaCaptions: vqaCaptions,
                                                          repeatColours: repeatColours), out: out)
        let summary = try gen.run()
        print("\(summary) -> \(out)")
        if let path = tokenizerCorpus {
            var seen = Set<String>()
            let texts = SynthTokenizer.corpus().filter { seen.insert($0).inserted }
            try Data(SynthJSON.array(texts.map { .string($0) }).text.utf8).write(to: URL(fileURLWithPath: path))
        }
    }
}
