import FuzzCommon
import PixelData

/// COCO masks: the first two bytes give the height and width (1...64); the rest is a compressed RLE string,
/// then the same bytes read as polygon coordinates. Whatever validates is decoded.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRLE(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let b = Scratch.bytes(start, count)
    guard b.count >= 2 else { return 0 }
    let h = Int(b[0] % 64) + 1, w = Int(b[1] % 64) + 1
    let body = Array(b[2...])
    if let r = try? RLE(height: h, width: w, compressed: String(decoding: body, as: UTF8.self)) { _ = r.decode() }
    let xy = body.map { Double(Int($0) - 64) }
    if let r = try? RLE.polygon(xy, height: h, width: w) { _ = r.decode() }
    return 0
}
