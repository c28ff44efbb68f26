import Foundation

// Large dataset index files (muse_train.json, llava_instruct_150k.json, COCO/LVIS-style instances json) are not
// turned into one Foundation object tree: the file is memory-mapped, a scanner that follows only strings (with
// escapes) and nesting finds the byte ranges of a container's elements, and each element is parsed on its own.
// A multi-GB file then costs its mapped pages plus one range per element, instead of several times its size.

extension ReaderJSON {
    /// The file's bytes, memory-mapped; missing / unreadable files are DatasetErrors naming it.
    static func mapped(_ path: String) throws -> Data {
        guard FileManager.default.fileExists(atPath: path) else { throw DatasetError(file: path, "file not found") }
        do { return try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) } catch {
            throw DatasetError(file: path, "cannot read: \(error.localizedDescription)")
        }
    }

    static func isSpace(_ c: UInt8) -> Bool { c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 }

    /// The byte ranges of the elements of the top-level list of `data` (leading BOM and whitespace allowed,
    /// nothing but whitespace after the list). Errors: not a list, unterminated, trailing bytes, empty element.
    static func listElementRanges(_ data: Data, file: String) throws -> [Range<Int>] {
        try data.withUnsafeBytes { raw -> [Range<Int>] in
            let b = raw.bindMemory(to: UInt8.self)
            var i = 0
            if b.count >= 3 && b[0] == 0xEF && b[1] == 0xBB && b[2] == 0xBF { i = 3 }
            while i < b.count && isSpace(b[i]) { i += 1 }
            guard i < b.count, b[i] == UInt8(ascii: "[") else {
                throw DatasetError(file: file, "the top level is not a list")
            }
            let (parts, end) = try scanContainer(b, open: i, file: file)
            var k = end
            while k < b.count && isSpace(b[k]) { k += 1 }
            if k < b.count { throw DatasetError(file: file, "not valid JSON (bytes after the top-level list at byte \(k))") }
            return parts
        }
    }

    /// The members of the top-level dict of `data`: key -> byte range of its value. Errors as for lists, plus
    /// a member without ':' or with a key that is not a string.
    static func objectMemberRanges(_ data: Data, file: String) throws -> [String: Range<Int>] {
        try data.withUnsafeBytes { raw -> [String: Range<Int>] in
            let b = raw.bindMemory(to: UInt8.self)
            var i = 0
            if b.count >= 3 && b[0] == 0xEF && b[1] == 0xBB && b[2] == 0xBF { i = 3 }
            while i < b.count && isSpace(b[i]) { i += 1 }
            guard i < b.count, b[i] == UInt8(ascii: "{") else { throw DatasetError(file: file, "the top level is not a dict") }
            let (parts, end) = try scanContainer(b, open: i, file: file)
            var k = end
            while k < b.count && isSpace(b[k]) { k += 1 }
            if k < b.count { throw DatasetError(file: file, "not valid JSON (bytes after the top-level dict at byte \(k))") }
            var out: [String: Range<Int>] = [:]
            for m in parts {
                // "key" : value — the key is a string; the first ':' after it splits the member.
                guard b[m.lowerBound] == UInt8(ascii: "\"") else {
                    throw DatasetError(file: file, "not valid JSON (a dict key at byte \(m.lowerBound) is not a string)")
                }
                var j = m.lowerBound + 1, escaped = false
                while j < m.upperBound {
                    let c = b[j]
                    if escaped { escaped = false } else if c == UInt8(ascii: "\\") { escaped = true } else if c == UInt8(ascii: "\"") { break }
                    j += 1
                }
                let keyEnd = j + 1
                var colon = keyEnd
                while colon < m.upperBound && isSpace(b[colon]) { colon += 1 }
                guard colon < m.upperBound, b[colon] == UInt8(ascii: ":") else {
                    throw DatasetError(file: file, "not valid JSON (no ':' after the key at byte \(m.lowerBound))")
                }
                var v = colon + 1
                while v < m.upperBound && isSpace(b[v]) { v += 1 }
                guard v < m.upperBound else { throw DatasetError(file: file, "not valid JSON (no value after the key at byte \(m.lowerBound))") }
                let keyData = Data(UnsafeRawBufferPointer(rebasing: raw[m.lowerBound..<keyEnd]))
                guard let key = (try? JSONSerialization.jsonObject(with: keyData, options: [.fragmentsAllowed])) as? String else {
                    throw DatasetError(file: file, "not valid JSON (bad key string at byte \(m.lowerBound))")
                }
                out[key] = v..<m.upperBound
            }
            return out
        }
    }

    /// The element ranges of the list whose '[' is at `range.lowerBound` (a member value found above).
    static func listElementRanges(_ data: Data, in range: Range<Int>, file: String, what: String) throws -> [Range<Int>] {
        try data.withUnsafeBytes { raw -> [Range<Int>] in
            let b = raw.bindMemory(to: UInt8.self)
            guard b[range.lowerBound] == UInt8(ascii: "[") else { throw DatasetError(file: file, "\(what) is not a list") }
            return try scanContainer(b, open: range.lowerBound, file: file).parts
        }
    }

    /// Scans the list or dict opening at `open`: the byte ranges of its top-level parts (elements, or
    /// "key": value members), trimmed of whitespace, and the index just past its closing bracket.
    static func scanContainer(_ b: UnsafeBufferPointer<UInt8>, open: Int, file: String) throws -> (parts: [Range<Int>], end: Int) {
        let closer = b[open] == UInt8(ascii: "[") ? UInt8(ascii: "]") : UInt8(ascii: "}")
        var parts: [Range<Int>] = []
        var depth = 0, start = -1
        var inString = false, escaped = false
        var i = open + 1
        func trimmed(_ s: Int, _ e: Int) -> Range<Int> {
            var e = e
            while e > s && isSpace(b[e - 1]) { e -= 1 }
            return s..<e
        }
        while i < b.count {
            let c = b[i]
            if inString {
                if escaped { escaped = false } else if c == UInt8(ascii: "\\") { escaped = true } else if c == UInt8(ascii: "\"") { inString = false }
                i += 1
                continue
            }
            switch c {
            case UInt8(ascii: "\""):
                inString = true
                if depth == 0 && start < 0 { start = i }
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                if depth == 0 && start < 0 { start = i }
                depth += 1
            case UInt8(ascii: "]"), UInt8(ascii: "}"):
                if depth == 0 {
                    guard c == closer else { throw DatasetError(file: file, "not valid JSON (unbalanced '\(Character(UnicodeScalar(c)))' at byte \(i))") }
                    if start >= 0 { parts.append(trimmed(start, i)) }
                    return (parts, i + 1)
                }
                depth -= 1
            case UInt8(ascii: ","):
                if depth == 0 {
                    guard start >= 0 else { throw DatasetError(file: file, "not valid JSON (empty element before byte \(i))") }
                    parts.append(trimmed(start, i))
                    start = -1
                }
            default:
                if depth == 0 && start < 0 && !isSpace(c) { start = i }
            }
            i += 1
        }
        throw DatasetError(file: file, "not valid JSON (a list or dict is not terminated: truncated file?)")
    }

    /// Calls `body` with each element of the top-level list in `path`, parsed one at a time. `what` names the
    /// elements in the "not a list" error.
    static func forEachListElement(_ path: String, what: String, _ body: (Int, Any) throws -> Void) throws {
        let data = try mapped(path)
        let ranges: [Range<Int>]
        do { ranges = try listElementRanges(data, file: path) } catch let e as DatasetError where e.message.hasPrefix("the top level") {
            throw DatasetError(file: path, "the top level is not a list of \(what)")
        }
        for (k, r) in ranges.enumerated() { try body(k, try parseElement(data.subdata(in: r), file: path, entry: k)) }
    }

    /// Calls `body` with each element of the list under `key` of the top-level dict in `path`, parsed one at a
    /// time; a missing key gives `missing` (nil: an error naming the key).
    static func forEachElement(ofListAt key: String, in data: Data, members: [String: Range<Int>], file: String,
                               required: Bool = true, _ body: (Int, Any) throws -> Void) throws {
        guard let r = members[key] else {
            if required { throw DatasetError(file: file, "\"\(key)\" is missing or not a list") }
            return
        }
        let ranges: [Range<Int>]
        do { ranges = try listElementRanges(data, in: r, file: file, what: "\"\(key)\"") } catch let e as DatasetError where e.message.hasSuffix("is not a list") {
            throw DatasetError(file: file, "\"\(key)\" is missing or not a list")
        }
        for (k, er) in ranges.enumerated() {
            let v: Any
            do { v = try JSONSerialization.jsonObject(with: data.subdata(in: er), options: [.fragmentsAllowed]) } catch {
                throw DatasetError(file: file, "\(key)[\(k)]: not valid JSON (\(error.localizedDescription))")
            }
            try body(k, v)
        }
    }
}
