import FuzzCommon
import PixelTensor

/// The zip container of pytorch_model.bin on its own: end of central directory (and ZIP64 records), central
/// directory, local headers, every STORED entry's CRC-32.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzZip(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let path = Scratch.file("archive.zip", start, count)
    _ = try? ZipListing.entries(path)
    return 0
}
