import FuzzCommon
import PixelTrain

/// A training checkpoint's manifest.json: format, world size, files, bucket layout, options, config.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCheckpointManifest(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    _ = Scratch.file("manifest.json", start, count)
    _ = try? TrainCheckpointManifest.load(Scratch.directory)
    return 0
}
