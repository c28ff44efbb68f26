/// Every load-time failure names the file it came from and what is wrong with it.
public enum TokenizerError: Error, CustomStringConvertible, Equatable {
    /// The file (or directory) does not exist or cannot be read.
    case missingFile(path: String, reason: String)
    /// The file is not valid JSON (truncated, bad syntax); `offset` is the byte where parsing stopped.
    case invalidJSON(path: String, offset: Int, reason: String)
    /// Valid JSON, but not the structure a tokenizer file must have.
    case invalidFormat(path: String, reason: String)
    /// A component type (model, normalizer, pre_tokenizer, decoder, post_processor, SentencePiece option) that
    /// PixelText does not implement.
    case unsupported(path: String, component: String, type: String)
    /// The SentencePiece protobuf is corrupt.
    case invalidProtobuf(path: String, offset: Int, reason: String)
    /// Two of the special ids PixelLM needs (<s>, </s>, <unk>, [SEG*], <im_*>) resolve to the same id, or a
    /// required token is missing.
    case tokenIds(path: String, reason: String)
    /// A conversation the reference's label masking rejects (see `ConversationLabels`).
    case conversation(reason: String)

    public var description: String {
        switch self {
        case let .missingFile(path, reason): return "\(path): cannot read file: \(reason)"
        case let .invalidJSON(path, offset, reason): return "\(path): invalid JSON at byte \(offset): \(reason)"
        case let .invalidFormat(path, reason): return "\(path): \(reason)"
        case let .unsupported(path, component, type): return "\(path): unsupported \(component) type \"\(type)\""
        case let .invalidProtobuf(path, offset, reason):
            return "\(path): corrupt SentencePiece model protobuf at byte \(offset): \(reason)"
        case let .tokenIds(path, reason): return "\(path): \(reason)"
        case let .conversation(reason): return "conversation: \(reason)"
        }
    }
}
