import FuzzCommon
import Foundation
import PixelData

/// ReasonSeg's labelme annotations: the first two bytes give the image height and width (1...64), the rest is the
/// annotation JSON; its "shapes" (labels and polygon points) are rasterised as OpenCV's polylines + fillPoly.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzLabelme(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let b = Scratch.bytes(start, count)
    guard b.count >= 2 else { return 0 }
    let h = Int(b[0] % 64) + 1, w = Int(b[1] % 64) + 1
    guard let obj = try? JSONSerialization.jsonObject(with: Data(b[2...]), options: [.fragmentsAllowed]),
          let shapes = (obj as? [String: Any])?["shapes"] as? [Any] else { return 0 }
    _ = try? ReasonSegReader.labelMask(shapes, height: h, width: w, file: "fuzz.json")
    return 0
}
