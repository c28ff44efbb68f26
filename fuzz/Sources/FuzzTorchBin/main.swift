import FuzzCommon
import PixelTensor

/// pytorch_model.bin: the zip reader, the pickle machine, storages and views; then every tensor is read.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTorchBin(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let path = Scratch.file("pytorch_model.bin", start, count)
    guard let f = try? TorchBinFile(path) else { return 0 }
    for name in f.names { _ = try? f.tensor(name) }
    return 0
}
