import FuzzCommon
import PixelData

/// Image files through libpng / libjpeg (and the EXIF orientation reader): RGB, RGBA and label decodes.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzImage(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let b = Scratch.bytes(start, count)
    _ = try? Image.decode(b, name: "image")
    _ = try? Image.decodeLabels(b, name: "labels")
    return 0
}
