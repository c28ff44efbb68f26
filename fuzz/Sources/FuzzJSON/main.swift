import PixelJSON

/// The strict JSON parser (safetensors headers, checkpoint indexes, tokenizer.json, dataset annotations).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzJSON(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    _ = try? JSONParser.parse(UnsafeRawBufferPointer(start: start, count: count))
    return 0
}
