import ArgumentParser
import PixelTensor

@main
struct PixelLM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pixellm",
        abstract: "PixelLM in Swift: pixel-level reasoning segmentation, trained on CPU clusters with MPI.",
        version: "0.1.0",
        subcommands: [Doctor.self, Tokenize.self, Forward.self, Chat.self, Synth.self, Prepare.self, Inspect.self, InitCommand.self, Train.self,
                      ConsolidateCommand.self, MergeLoRACommand.self, Plot.self, Eval.self, ProbeCommand.self, PretrainVision.self, Bench.self, Demo.self])
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Performance figures beside the reference (raw OpenBLAS, raw MPI), as ratios.",
        subcommands: [BenchGemm.self, BenchComm.self, BenchModel.self])
}
