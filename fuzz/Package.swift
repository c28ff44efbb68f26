// swift-tools-version:6.0
// Coverage-guided fuzzers (libFuzzer) for pixellm's parsers of files from strangers. A package of its own because
// everything here, the main package's parser targets included, is compiled with -sanitize=fuzzer,address:
// `fuzz/run.sh TARGET SECONDS` builds and runs one (fuzz/README.md).
import PackageDescription

let parsers: [Target.Dependency] = ["FuzzCommon", .product(name: "PixelParsers", package: "pixellm")]
let targets = ["FuzzJSON", "FuzzSafetensors", "FuzzTorchBin", "FuzzRefsPickle", "FuzzTokenizerJSON", "FuzzSentencePiece",
               "FuzzRLE", "FuzzImage", "FuzzCheckpointManifest", "FuzzZip", "FuzzShard", "FuzzShardHDF5", "FuzzLabelme"]

let package = Package(
    name: "pixellm-fuzz",
    dependencies: [.package(name: "pixellm", path: "..")],
    targets: [.target(name: "FuzzCommon")] + targets.map { .executableTarget(name: $0, dependencies: parsers) },
    swiftLanguageModes: [.v5]
)
