// swift-tools-version:6.0
import PackageDescription

// Every target keeps Swift's checks (bounds, overflow, preconditions) in release builds: -O, not -Ounchecked.
// Files from strangers (checkpoints, pickles, zip, tokenizers, RLE, shards, images) are parsed in most targets, and
// -Ounchecked bought nothing measurable where it could have: on 2026-12-06 (Xeon, AVX-512, OpenBLAS SkylakeX, 2
// threads) `pixellm bench model --config synth-smoke --batch-images 2 --seq-len 100 --original-size 224x224`
// gave 75.6 ms (-Ounchecked) against 75.9 ms (-O) per forward+backward+AdamW step, and `pixellm chat
// --random-weights` on the 7B width at 4 layers 5.2-5.6 s vision, 3.2-3.5 s prefill and 0.27-0.30 s/token decode
// with either (docs/RELIABILITY.md). The time is in OpenBLAS, not in Swift loops.
let releaseSettings: [SwiftSetting] = [
    .unsafeFlags(["-wmo"], .when(configuration: .release)),
]

let package = Package(
    name: "pixellm",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "pixellm", targets: ["pixellm"]),
        // the parsers, for the fuzz targets of fuzz/ (a package of its own: built with --sanitize=fuzzer)
        .library(name: "PixelParsers", targets: ["PixelJSON", "PixelText", "PixelTensor", "PixelData", "PixelModel", "PixelTrain"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(name: "CMPI", pkgConfig: "ompi-c", providers: [.apt(["libopenmpi-dev"])]),
        .systemLibrary(name: "CHDF5", pkgConfig: "hdf5", providers: [.apt(["libhdf5-dev"])]),
        // C shims: constants/macros Swift cannot import (MPI_COMM_WORLD, H5T_NATIVE_FLOAT, ...), and the
        // OpenBLAS loader that picks the CPU core before the library initialises.
        .target(
            name: "CPixelShims",
            dependencies: ["CMPI", "CHDF5"],
            cSettings: [.define("_GNU_SOURCE"), .unsafeFlags(["-O2"])],
            linkerSettings: [.linkedLibrary("dl"), .linkedLibrary("m")]
        ),
        // the strict JSON parser of safetensors headers, checkpoint indexes and tokenizer files
        .target(name: "PixelJSON", dependencies: [], swiftSettings: releaseSettings),
        .target(name: "PixelTensor", dependencies: ["CPixelShims", "CHDF5", "PixelJSON"], swiftSettings: releaseSettings),
        .target(name: "PixelModel", dependencies: ["PixelTensor"], swiftSettings: releaseSettings),
        .target(name: "PixelText", dependencies: ["PixelJSON"], swiftSettings: releaseSettings),
        .systemLibrary(name: "CJPEG", pkgConfig: "libjpeg", providers: [.apt(["libjpeg-dev"])]),
        .systemLibrary(name: "CPNG", pkgConfig: "libpng", providers: [.apt(["libpng-dev"])]),
        .target(name: "CPixelImage", dependencies: ["CJPEG", "CPNG"], cSettings: [.unsafeFlags(["-O2"])]),
        .target(name: "PixelData", dependencies: ["CPixelImage", "CHDF5", "PixelTensor", "PixelText"], swiftSettings: releaseSettings),
        .target(name: "PixelDistributed", dependencies: ["CPixelShims"], swiftSettings: releaseSettings),
        .target(
            name: "PixelTrain",
            dependencies: ["PixelModel", "PixelData", "PixelDistributed", "PixelTensor", "PixelText"],
            swiftSettings: releaseSettings
        ),
        .executableTarget(
            name: "pixellm",
            dependencies: [
                "PixelTensor", "PixelModel", "PixelText", "PixelData", "PixelDistributed", "PixelTrain", "CPixelShims",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: releaseSettings
        ),
        .testTarget(
            name: "PixelTensorTests",
            dependencies: ["PixelTensor"],
            resources: [.copy("Fixtures")]
        ),
        .testTarget(
            name: "PixelModelTests",
            dependencies: ["PixelModel", "PixelTensor"],
            resources: [.copy("Fixtures")]
        ),
        .testTarget(name: "PixelTextTests", dependencies: ["PixelText"], resources: [.copy("Fixtures")]),
        .testTarget(name: "PixelDataTests", dependencies: ["PixelData", "PixelTensor", "PixelText"], resources: [.copy("Fixtures")]),
        .testTarget(name: "PixelDistributedTests", dependencies: ["PixelDistributed"]),
        .testTarget(name: "PixelTrainTests", dependencies: ["PixelTrain", "PixelModel", "PixelData", "PixelDistributed", "PixelTensor"],
                    resources: [.copy("Fixtures")]),
        .testTarget(
            name: "PixelReleaseTests",
            dependencies: ["PixelModel", "PixelTensor", "PixelText", "PixelData"],
            resources: [.copy("Fixtures")]
        ),
        // runs the built `pixellm` binary (forward / chat) on Tests/PixelModelTests/Fixtures/ckpt
        .testTarget(name: "PixelCLITests", dependencies: ["pixellm", "PixelData", "PixelTensor"]),
    ],
    swiftLanguageModes: [.v5]
)
