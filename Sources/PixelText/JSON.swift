import Foundation
import PixelJSON

extension JSONParser.Options {
    /// Tokenizer files as Python writes them: lone surrogate escapes become U+FFFD, repeated keys are kept
    /// (lookups take the first), deep nesting allowed.
    static let tokenizer = JSONParser.Options(rejectDuplicateKeys: false, replaceLoneSurrogates: true, maxDepth: 512)
}

extension JSONParser {
    /// Reads and parses a file; failures carry the path.
    static func parseFile(_ path: String) throws -> JSONValue {
        let bytes = try readFileBytes(path)
        do {
            return try parse(bytes, options: .tokenizer)
        } catch let f as Failure {
            throw TokenizerError.invalidJSON(path: path, offset: f.offset, reason: f.message)
        }
    }
}

extension String {
    /// Strict UTF-8 decoding: nil on any invalid sequence (no repair).
    init?(validatingUTF8Bytes bytes: [UInt8]) {
        var it = bytes.makeIterator()
        var dec = UTF8()
        var scalars = String.UnicodeScalarView()
        loop: while true {
            switch dec.decode(&it) {
            case let .scalarValue(s): scalars.append(s)
            case .emptyInput: break loop
            case .error: return nil
            }
        }
        self = String(scalars)
    }
}

func readFileBytes(_ path: String) throws -> [UInt8] {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
        throw TokenizerError.missingFile(path: path, reason: "no such file")
    }
    if isDir.boolValue { throw TokenizerError.missingFile(path: path, reason: "is a directory") }
    guard let data = FileManager.default.contents(atPath: path) else {
        throw TokenizerError.missingFile(path: path, reason: "not readable")
    }
    return [UInt8](data)
}
