/// Byte- and scalar-level helpers. Tokenizers work on Unicode scalars and UTF-8 bytes, never on Swift
/// `Character`s (grapheme clusters) and never with `String` equality (canonical equivalence).

/// "▁" (U+2581), SentencePiece's whitespace symbol.
let spaceSymbol: Unicode.Scalar = "\u{2581}"
let spaceSymbolBytes: [UInt8] = [0xE2, 0x96, 0x81]

@inline(__always) func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }
@inline(__always) func string(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }
@inline(__always) func string(_ b: ArraySlice<UInt8>) -> String { String(decoding: b, as: UTF8.self) }

/// Python's `str.isspace()` (what transformers 4.31 `str.strip()` removes): Unicode category Zs or bidi class
/// WS, B or S. Differs from Unicode White_Space by U+001C...U+001F.
func isPythonSpace(_ s: Unicode.Scalar) -> Bool {
    switch s.value {
    case 0x09...0x0D, 0x1C...0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000:
        return true
    default:
        return false
    }
}

/// Rust's `char::is_whitespace` (Unicode White_Space), used by HF tokenizers' lstrip/rstrip.
func isRustWhitespace(_ s: Unicode.Scalar) -> Bool {
    switch s.value {
    case 0x09...0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000:
        return true
    default:
        return false
    }
}

/// Rust's `char::is_alphanumeric() || c == '_'` (HF tokenizers' single_word word characters).
func isRustWordChar(_ s: Unicode.Scalar) -> Bool {
    if s == "_" { return true }
    let p = s.properties
    if p.isAlphabetic { return true }
    switch p.generalCategory {
    case .decimalNumber, .letterNumber, .otherNumber: return true
    default: return false
    }
}

/// Decodes the scalar starting at byte `i` of valid UTF-8; returns it and its length.
@inline(__always) func scalarAt(_ b: [UInt8], _ i: Int) -> (UInt32, Int) {
    let c0 = UInt32(b[i])
    if c0 < 0x80 { return (c0, 1) }
    if c0 < 0xE0 { return ((c0 & 0x1F) << 6 | UInt32(b[i + 1] & 0x3F), 2) }
    if c0 < 0xF0 {
        return ((c0 & 0x0F) << 12 | UInt32(b[i + 1] & 0x3F) << 6 | UInt32(b[i + 2] & 0x3F), 3)
    }
    return ((c0 & 0x07) << 18 | UInt32(b[i + 1] & 0x3F) << 12 | UInt32(b[i + 2] & 0x3F) << 6
        | UInt32(b[i + 3] & 0x3F), 4)
}

/// Length of the UTF-8 sequence whose lead byte is `c` (valid UTF-8 assumed).
@inline(__always) func utf8Length(_ c: UInt8) -> Int {
    c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4
}

/// The scalar ending just before byte `end` of valid UTF-8.
@inline(__always) func scalarBefore(_ b: [UInt8], _ end: Int) -> (UInt32, Int) {
    var s = end - 1
    while s > 0, b[s] & 0xC0 == 0x80 { s -= 1 }
    return (scalarAt(b, s).0, end - s)
}

/// Byte-literal replace-all, left to right, non-overlapping (Rust `str::replace`).
func replaceAll(_ b: [UInt8], _ pattern: [UInt8], _ content: [UInt8]) -> [UInt8] {
    if pattern.isEmpty || b.count < pattern.count { return b }
    var out: [UInt8] = []
    out.reserveCapacity(b.count + 8)
    var i = 0
    let p0 = pattern[0], n = pattern.count
    while i < b.count {
        if b[i] == p0, i + n <= b.count {
            var match = true
            for k in 1..<n where b[i + k] != pattern[k] { match = false; break }
            if match {
                out.append(contentsOf: content)
                i += n
                continue
            }
        }
        out.append(b[i])
        i += 1
    }
    return out
}

func hasPrefix(_ b: [UInt8], _ p: [UInt8], at i: Int = 0) -> Bool {
    if i + p.count > b.count { return false }
    for k in 0..<p.count where b[i + k] != p[k] { return false }
    return true
}

/// "<0xAB>" -> 0xAB (the byte-fallback token spelling: exactly 6 characters, two hex digits).
func byteTokenValue(_ t: [UInt8]) -> UInt8? {
    guard t.count == 6, t[0] == UInt8(ascii: "<"), t[1] == UInt8(ascii: "0"), t[2] == UInt8(ascii: "x"),
          t[5] == UInt8(ascii: ">") else { return nil }
    func hex(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x41...0x46: return c - 0x41 + 10
        case 0x61...0x66: return c - 0x61 + 10
        default: return nil
        }
    }
    // Rust's u8::from_str_radix also accepts a leading '+'.
    if t[3] == UInt8(ascii: "+") { return hex(t[4]) }
    guard let h = hex(t[3]), let l = hex(t[4]) else { return nil }
    return h << 4 | l
}

/// `format!("<{b:#04X}>")`.
func byteTokenName(_ b: UInt8) -> [UInt8] {
    let digits = Array("0123456789ABCDEF".utf8)
    return [UInt8(ascii: "<"), UInt8(ascii: "0"), UInt8(ascii: "x"), digits[Int(b >> 4)], digits[Int(b & 15)],
            UInt8(ascii: ">")]
}

/// A min-heap of (key, value) pairs ordered by key alone (the BPE agendas pack their priority into the key).
struct KeyHeap {
    struct Entry {
        var key: UInt64
        var value: Int32
    }

    private(set) var items: [Entry] = []

    init(capacity: Int = 0) { items.reserveCapacity(capacity) }

    var isEmpty: Bool { items.isEmpty }

    mutating func push(_ key: UInt64, _ value: Int32) {
        items.append(Entry(key: key, value: value))
        var c = items.count - 1
        while c > 0 {
            let p = (c - 1) >> 1
            if items[c].key >= items[p].key { break }
            items.swapAt(c, p)
            c = p
        }
    }

    mutating func pop() -> Entry? {
        guard !items.isEmpty else { return nil }
        let top = items[0]
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var p = 0
            let n = items.count
            while true {
                let l = 2 * p + 1, r = l + 1
                var m = p
                if l < n, items[l].key < items[m].key { m = l }
                if r < n, items[r].key < items[m].key { m = r }
                if m == p { break }
                items.swapAt(p, m)
                p = m
            }
        }
        return top
    }
}

/// Maps a Float to a UInt32 with the same order (for packing scores into heap keys).
@inline(__always) func orderedBits(_ f: Float) -> UInt32 {
    let x = f == 0 ? Float(0) : f  // -0 == +0
    let b = x.bitPattern
    return b & 0x8000_0000 != 0 ? ~b : b | 0x8000_0000
}
