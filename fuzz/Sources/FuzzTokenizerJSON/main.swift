import Foundation
import FuzzCommon
import PixelText

/// tokenizer.json (HF fast tokenizer: BPE model, merges, added tokens), then an encode and a decode.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTokenizerJSON(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    _ = Scratch.file("tokenizer.json", start, count)
    guard let t = try? Tokenizer(directory: Scratch.directory) else { return 0 }
    let ids = t.encode("Can you segment the red circle? [SEG0]", addBos: true)
    _ = t.decode(ids, skipSpecial: false)
    return 0
}
