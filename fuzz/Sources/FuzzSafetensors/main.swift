import FuzzCommon
import PixelTensor

/// safetensors: the 8-byte header length, the JSON header, dtypes, shapes and offsets; then every tensor is read.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSafetensors(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let path = Scratch.file("model.safetensors", start, count)
    guard let f = try? SafetensorsFile(path) else { return 0 }
    for name in f.names { _ = try? f.tensor(name) }
    return 0
}
