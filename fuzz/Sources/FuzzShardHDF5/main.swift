import FuzzCommon
import PixelData

/// A prepared dataset shard as raw bytes (HDF5, through libhdf5); run by hand: most of what it finds is in libhdf5
/// itself (fuzz/libhdf5-findings). FuzzShard is the structure-aware one.
/// A prepared dataset shard (HDF5, through libhdf5): attributes, array sizes, then every sample's image, masks,
/// metadata and tokens (at most 64 samples).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzShardHDF5(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let path = Scratch.file("shard-00000.h5", start, count)
    guard let f = try? ShardFile(path: path) else { return 0 }
    for i in 0..<min(f.count, 64) {
        _ = try? f.paddedImage(i)
        _ = try? f.masks(i).map { $0.decode() }
        _ = try? f.meta(i)
        _ = try? f.tokens(i)
    }
    return 0
}
