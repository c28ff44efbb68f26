import FuzzCommon
import PixelData

/// refs(unc).p: the plain-data pickle reader (protocols 0-5, no globals).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRefsPickle(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    _ = try? PlainPickle.load(Scratch.bytes(start, count), file: "refs(unc).p")
    return 0
}
