import FuzzCommon
import PixelText

/// tokenizer.model: the SentencePiece protobuf (pieces, scores, types, normaliser spec).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSentencePiece(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    _ = try? SentencePieceModel(data: Scratch.bytes(start, count), path: "tokenizer.model")
    return 0
}
