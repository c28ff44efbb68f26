import FuzzCommon
import Foundation
import PixelData

/// A prepared dataset shard, structure-aware: the input bytes choose every attribute and array of a well-formed
/// HDF5 file (RawShardFile writes it), consistent or not, so each input reaches ShardFile's own checks (sizes,
/// offsets, image size, metadata JSON, RLE strings) rather than stopping in libhdf5's parser (FuzzShardHDF5).
/// Then every sample's image, masks, metadata and tokens are read.
struct Fields {
    let b: [UInt8]
    var at = 0
    mutating func u8() -> UInt8 { defer { at += 1 }; return at < b.count ? b[at] : 0 }
    /// Mostly small values (the sizes and offsets that almost agree), sometimes any 64-bit value.
    mutating func int() -> Int64 {
        switch u8() % 4 {
        case 0: return Int64(Int8(bitPattern: u8()))
        case 1: return Int64(u8())
        case 2: return Int64(u8()) << 8 | Int64(u8())
        default: return (0..<8).reduce(Int64(0)) { acc, _ in acc << 8 | Int64(u8()) }
        }
    }
    mutating func int64s() -> [Int64] { (0..<Int(u8() % 13)).map { _ in int() } }
    mutating func int32s() -> [Int32] { (0..<Int(u8() % 13)).map { _ in Int32(truncatingIfNeeded: int()) } }
    mutating func bytes() -> [UInt8] { (0..<Int(u8() % 96)).map { _ in u8() } }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzShard(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    var f = Fields(b: Scratch.bytes(start, count))
    let present = UInt16(f.u8()) << 8 | UInt16(f.u8())   // bit k clear: array k is left out
    var i64: [String: [Int64]] = [:], i32: [String: [Int32]] = [:], raw: [String: [UInt8]] = [:]
    let names64 = ["item", "mask_offsets", "mask_rle_offsets", "meta_offsets", "conv_offsets", "token_offsets"]
    let names32 = ["valid_size", "orig_size", "mask_size", "input_ids", "labels"]
    for (k, n) in names64.enumerated() where present & (1 << k) == 0 { i64[n] = f.int64s() }
    for (k, n) in names32.enumerated() where present & (1 << (6 + k)) == 0 { i32[n] = f.int32s() }
    if present & (1 << 11) == 0 { raw["mask_rle"] = f.bytes() }
    if present & (1 << 12) == 0 { raw["meta"] = f.bytes() }
    if present & (1 << 13) == 0 { raw["skips"] = f.u8() % 4 == 0 ? f.bytes() : Array("[]".utf8) }
    let images = [f.int(), Int64(f.u8() % 20), Int64(f.u8() % 20), Int64(f.u8() % 5)].map { Int($0) }
    var ints: [String: Int64] = [:]
    ints["format_version"] = f.u8() % 8 == 0 ? f.int() : 1
    ints["image_size"] = f.u8() % 4 == 0 ? f.int() : Int64(images[1])
    ints["num_samples"] = f.u8() % 4 == 0 ? f.int() : Int64(images[0])
    let strings = ["format": f.u8() % 16 == 0 ? "other" : "pixellm-shards"]
    let path = (Scratch.directory as NSString).appendingPathComponent("shard-00000.h5")
    guard (try? RawShardFile.write(path: path, int64s: i64, int32s: i32, bytes: raw, images: images,
                                   stringAttributes: strings, intAttributes: ints)) != nil,
          let shard = try? ShardFile(path: path) else { return 0 }
    for i in 0..<min(shard.count, 64) {
        _ = try? shard.paddedImage(i)
        _ = try? shard.masks(i).map { $0.decode() }
        _ = try? shard.meta(i)
        _ = try? shard.tokens(i)
        _ = shard.validSize(i)
        _ = shard.originalSize(i)
    }
    return 0
}
