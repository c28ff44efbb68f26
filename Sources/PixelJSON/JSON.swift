// A strict JSON parser shared by the safetensors/checkpoint readers (PixelTensor) and the tokenizer
// loaders (PixelText). It has no dependencies, so neither of those modules depends on the other.

/// A parsed JSON value. Objects keep their members in file order as (key, value) pairs, so duplicates can
/// be reported and lookups never hash keys as Swift `String`s (whose equality is canonical equivalence,
/// "é" == "e\u{301}", while tokenizer vocabularies distinguish byte sequences). Numbers keep their literal
/// text: offsets need exact 64-bit integers.
public enum JSONValue {
    case object([(key: String, value: JSONValue)])
    case array([JSONValue])
    case string(String)
    case number(String)
    case bool(Bool)
    case null

    /// Member lookup by field name, compared byte for byte; the first occurrence wins.
    public subscript(key: String) -> JSONValue? {
        guard case let .object(members) = self else { return nil }
        for (k, v) in members where k.utf8.elementsEqual(key.utf8) { return v }
        return nil
    }

    public var isNull: Bool { if case .null = self { return true } else { return false } }
    public var string: String? { if case let .string(s) = self { return s } else { return nil } }
    public var bool: Bool? { if case let .bool(b) = self { return b } else { return nil } }
    public var array: [JSONValue]? { if case let .array(a) = self { return a } else { return nil } }
    public var members: [(key: String, value: JSONValue)]? { if case let .object(m) = self { return m } else { return nil } }
    public var double: Double? { if case let .number(t) = self { return Double(t) } else { return nil } }

    /// A number with an integral value (`3`, `3.0`, `3e0`) of magnitude below 9e15, else nil.
    public var int: Int? {
        guard let d = double, d == d.rounded(), abs(d) < 9.0e15 else { return nil }
        return Int(d)
    }

    /// A non-negative integer literal (digits only) that fits in Int (serde's `usize`), else nil.
    public func usize() -> Int? {
        guard case .number(let t) = self, !t.isEmpty, t.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
        return Int(t)
    }

    /// Short text for error messages.
    public var text: String {
        switch self {
        case .object(let m): return "{" + m.prefix(3).map { "\"\($0.key)\": \($0.value.text)" }.joined(separator: ", ") + (m.count > 3 ? ", ...}" : "}")
        case .array(let a): return "[" + a.prefix(8).map(\.text).joined(separator: ", ") + (a.count > 8 ? ", ...]" : "]")
        case .string(let s): return "\"\(s.prefix(40))\""
        case .number(let t): return t
        case .bool(let b): return b ? "true" : "false"
        case .null: return "null"
        }
    }
}

/// A strict RFC 8259 parser over UTF-8 bytes (what serde_json accepts): no trailing commas, no comments,
/// no raw control characters or invalid UTF-8 in strings, trailing whitespace allowed. Failures carry the
/// byte offset. `Options` choose what the two users differ on: duplicate keys, lone surrogate escapes
/// and the nesting limit.
public struct JSONParser {
    public struct Options: Sendable {
        /// A key repeated in an object is an error. Keys are compared as Swift strings, so two spellings
        /// of the same text (NFC vs NFD) also count as duplicates, where serde would keep both: they could
        /// not be told apart by name anyway.
        public var rejectDuplicateKeys: Bool
        /// A `\u` escape of an unpaired surrogate becomes U+FFFD (as Python writes them); else an error.
        public var replaceLoneSurrogates: Bool
        public var maxDepth: Int

        public init(rejectDuplicateKeys: Bool, replaceLoneSurrogates: Bool, maxDepth: Int) {
            self.rejectDuplicateKeys = rejectDuplicateKeys
            self.replaceLoneSurrogates = replaceLoneSurrogates
            self.maxDepth = maxDepth
        }

        /// serde_json's rules plus duplicate-key detection (safetensors headers, checkpoint indexes).
        public static let strict = Options(rejectDuplicateKeys: true, replaceLoneSurrogates: false, maxDepth: 128)
    }

    public struct Failure: Error {
        public let message: String
        public let offset: Int
        /// Set when the failure is a repeated key.
        public var duplicateKey: String?
        /// " (nested at depth d, byte o)" for a repeated key below the top level, else "".
        public var context = ""
    }

    let b: UnsafeRawBufferPointer
    let options: Options
    var i = 0
    var depth = 0

    public static func parse(_ bytes: UnsafeRawBufferPointer, options: Options = .strict) throws -> JSONValue {
        var p = JSONParser(b: bytes, options: options)
        p.skipWS()
        let v = try p.value()
        p.skipWS()
        if p.i != bytes.count { throw p.fail("trailing characters after the JSON value") }
        return v
    }

    public static func parse(_ bytes: [UInt8], options: Options = .strict) throws -> JSONValue {
        try bytes.withUnsafeBytes { try parse($0, options: options) }
    }

    /// At the end of the input every failure is a truncation.
    func fail(_ m: String) -> Failure { Failure(message: i >= b.count ? "unexpected end of data (truncated file?)" : m, offset: i) }

    mutating func skipWS() {
        while i < b.count, b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x0D || b[i] == 0x09 { i += 1 }
    }

    mutating func expect(_ lit: String) throws {
        for c in lit.utf8 {
            guard i < b.count, b[i] == c else { throw fail("invalid literal, expected \(lit)") }
            i += 1
        }
    }

    mutating func value() throws -> JSONValue {
        guard i < b.count else { throw fail("") }
        switch b[i] {
        case UInt8(ascii: "{"): return try object()
        case UInt8(ascii: "["): return try array()
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try expect("true"); return .bool(true)
        case UInt8(ascii: "f"): try expect("false"); return .bool(false)
        case UInt8(ascii: "n"): try expect("null"); return .null
        case UInt8(ascii: "-"), 48...57: return try number()
        default: throw fail("unexpected character '\(Character(Unicode.Scalar(b[i])))'")
        }
    }

    mutating func nest() throws {
        depth += 1
        if depth > options.maxDepth { throw fail("nesting deeper than \(options.maxDepth)") }
    }

    mutating func object() throws -> JSONValue {
        try nest()
        i += 1
        var members: [(key: String, value: JSONValue)] = []
        var seen = Set<String>()
        skipWS()
        if i < b.count, b[i] == UInt8(ascii: "}") { i += 1; depth -= 1; return .object(members) }
        while true {
            skipWS()
            guard i < b.count, b[i] == UInt8(ascii: "\"") else { throw fail("expected a string key") }
            let keyAt = i
            let key = try string()
            if options.rejectDuplicateKeys, !seen.insert(key).inserted {
                var f = Failure(message: "duplicate key '\(key)'", offset: keyAt)
                f.duplicateKey = key
                if depth > 1 { f.context = " (nested at depth \(depth), byte \(keyAt))" }
                throw f
            }
            skipWS()
            guard i < b.count, b[i] == UInt8(ascii: ":") else { throw fail("expected ':' after a key") }
            i += 1
            skipWS()
            let v = try value()
            members.append((key, v))
            skipWS()
            guard i < b.count else { throw fail("") }
            if b[i] == UInt8(ascii: ",") { i += 1; continue }
            if b[i] == UInt8(ascii: "}") { i += 1; break }
            throw fail("expected ',' or '}' in an object")
        }
        depth -= 1
        return .object(members)
    }

    mutating func array() throws -> JSONValue {
        try nest()
        i += 1
        var items: [JSONValue] = []
        skipWS()
        if i < b.count, b[i] == UInt8(ascii: "]") { i += 1; depth -= 1; return .array(items) }
        while true {
            skipWS()
            items.append(try value())
            skipWS()
            guard i < b.count else { throw fail("") }
            if b[i] == UInt8(ascii: ",") { i += 1; continue }
            if b[i] == UInt8(ascii: "]") { i += 1; break }
            throw fail("expected ',' or ']' in an array")
        }
        depth -= 1
        return .array(items)
    }

    mutating func hex4() throws -> UInt32 {
        guard i + 4 <= b.count else { i = b.count; throw fail("") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = b[i]
            let d: UInt32
            switch c {
            case 48...57: d = UInt32(c - 48)
            case 65...70: d = UInt32(c - 55)
            case 97...102: d = UInt32(c - 87)
            default: throw fail("invalid hex digit in \\u escape")
            }
            v = v << 4 | d
            i += 1
        }
        return v
    }

    /// The code point of a `\u` escape (the `\u` already read), joining a surrogate pair.
    mutating func unicodeEscape() throws -> UInt32 {
        let cp = try hex4()
        if cp >= 0xDC00 && cp < 0xE000 {
            if options.replaceLoneSurrogates { return 0xFFFD }
            throw fail("lone trailing surrogate in \\u escape")
        }
        guard cp >= 0xD800 && cp < 0xDC00 else { return cp }
        guard i + 1 < b.count, b[i] == UInt8(ascii: "\\"), b[i + 1] == UInt8(ascii: "u") else {
            if options.replaceLoneSurrogates { return 0xFFFD }
            throw fail("lone leading surrogate in \\u escape")
        }
        let save = i
        i += 2
        let lo = try hex4()
        guard lo >= 0xDC00 && lo < 0xE000 else {
            if options.replaceLoneSurrogates { i = save; return 0xFFFD }  // the next escape is read on its own
            throw fail("invalid trailing surrogate in \\u escape")
        }
        return 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
    }

    mutating func string() throws -> String {
        i += 1  // opening quote
        var out: [UInt8] = []
        while true {
            guard i < b.count else { throw fail("") }
            let c = b[i]
            if c == UInt8(ascii: "\"") { i += 1; break }
            if c < 0x20 { throw fail("raw control character in a string") }
            if c != UInt8(ascii: "\\") { out.append(c); i += 1; continue }
            i += 1
            guard i < b.count else { throw fail("") }
            let e = b[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"): out.append(contentsOf: String(Unicode.Scalar(try unicodeEscape())!).utf8)
            default:
                i -= 1
                throw fail("invalid escape '\\\(Character(Unicode.Scalar(e)))'")
            }
        }
        guard let s = String(validating: out, as: UTF8.self) else { throw fail("invalid UTF-8 in a string") }
        return s
    }

    mutating func number() throws -> JSONValue {
        let start = i
        func digits(_ p: inout JSONParser) -> Int {
            let s = p.i
            while p.i < p.b.count, p.b[p.i] >= 48 && p.b[p.i] <= 57 { p.i += 1 }
            return p.i - s
        }
        if b[i] == UInt8(ascii: "-") { i += 1 }
        guard i < b.count, b[i] >= 48 && b[i] <= 57 else { throw fail("invalid number") }
        if b[i] == 48 { i += 1 } else { _ = digits(&self) }
        if i < b.count, b[i] == UInt8(ascii: ".") {
            i += 1
            if digits(&self) == 0 { throw fail("invalid number: no digits after '.'") }
        }
        if i < b.count, b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E") {
            i += 1
            if i < b.count, b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-") { i += 1 }
            if digits(&self) == 0 { throw fail("invalid number: no exponent digits") }
        }
        return .number(String(decoding: UnsafeRawBufferPointer(rebasing: b[start..<i]), as: UTF8.self))
    }
}
