import ArgumentParser
import PixelTensor

@main
struct PixelLM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pixellm",
        abstract: "PixelLM in Swift: pixel-level reasoning segmentation, trained on CPU clusters with MPI.",
        subcommands: [])
}
