// A plain-data unpickler: lists, tuples, dicts, strings, bytes, numbers, booleans and None, in pickle
// protocols 0-5. It is what the REFER `refs(unc).p` files need (Python 2 protocol-2 pickles of lists of
// dicts) and nothing more: any opcode that would import or build an object (GLOBAL, STACK_GLOBAL, REDUCE,
// BUILD, INST, OBJ, NEWOBJ, PERSID, EXT*, out-of-band buffers) is refused with the file, the opcode and
// its byte offset. Sets are refused too (no plain-data reader needs them).
//
// Python 2 `str` values (STRING / BINSTRING / SHORT_BINSTRING) are decoded the way REFER reads the file
// under Python 3 — `pickle.load(open(ref_file, "rb"))`, i.e. encoding "ASCII", errors "strict": a
// non-ASCII byte in such a string is an error. `.latin1` (pickle.load(..., encoding="latin1")) and `.bytes`
// are available for other callers.
//
// Shared references (memo GET of a list or dict that is filled later) keep Python's identity semantics
// while unpickling; the result is then copied into values. Cycles, nesting deeper than `maxDepth` and
// shared references that expand to far more values than the file holds are errors, not crashes.
import Foundation

/// A value of a plain-data pickle.
public indirect enum PickleValue: Hashable, Sendable {
    case none
    case bool(Bool)
    case int(Int)
    case float(Double)
    case string(String)
    case bytes([UInt8])
    case list([PickleValue])
    case tuple([PickleValue])
    /// Keys in insertion order (Python 3.7+ dict order); a key set twice keeps its first position.
    case dict([PickleEntry])

    /// The value of `key` in a dict with string keys.
    public subscript(key: String) -> PickleValue? {
        guard case .dict(let entries) = self else { return nil }
        for e in entries { if case .string(let k) = e.key, k == key { return e.value } }
        return nil
    }

    public var stringValue: String? { if case .string(let s) = self { return s }; return nil }
    /// Ints (bools are not ints here).
    public var intValue: Int? { if case .int(let i) = self { return i }; return nil }
    /// The items of a list or a tuple.
    public var items: [PickleValue]? {
        switch self {
        case .list(let a), .tuple(let a): return a
        default: return nil
        }
    }
    public var entries: [PickleEntry]? { if case .dict(let e) = self { return e }; return nil }

    /// "a list", "a dict", ... for error messages.
    public var typeName: String {
        switch self {
        case .none: return "None"
        case .bool: return "a bool"
        case .int: return "an int"
        case .float: return "a float"
        case .string: return "a string"
        case .bytes: return "bytes"
        case .list: return "a list"
        case .tuple: return "a tuple"
        case .dict: return "a dict"
        }
    }
}

public struct PickleEntry: Hashable, Sendable {
    public var key: PickleValue
    public var value: PickleValue
    public init(key: PickleValue, value: PickleValue) { self.key = key; self.value = value }
}

/// A pickle that is not plain data or not well formed: the file, the byte offset of the opcode and what is wrong.
public struct PickleError: Error, CustomStringConvertible, Equatable, Sendable {
    public let file: String
    public let offset: Int
    public let message: String
    public init(file: String, offset: Int, _ message: String) { self.file = file; self.offset = offset; self.message = message }
    public var description: String { "\(file): pickle byte \(offset): \(message)" }
}

public enum PlainPickle {
    /// How Python 2 `str` values are decoded.
    public enum StrEncoding: Sendable {
        /// `pickle.load(f)` in Python 3 (encoding "ASCII", strict): what REFER does.
        case ascii
        /// `pickle.load(f, encoding="latin1")`.
        case latin1
        /// `pickle.load(f, encoding="bytes")`: kept as `.bytes`.
        case bytes
    }

    public static let maxDepth = 256

    public static func load(_ bytes: [UInt8], file: String, strEncoding: StrEncoding = .ascii) throws -> PickleValue {
        var u = Unpickler(bytes: bytes, file: file, strEncoding: strEncoding)
        var root: Node?
        // a list or dict that contains itself is a reference cycle: empty every box afterwards (found by fuzz/FuzzRefsPickle)
        defer { u.dismantle(root) }
        root = try u.run()
        var budget = 4 * bytes.count + 1_000_000
        var active = Set<ObjectIdentifier>()
        return try u.value(of: root!, depth: 0, budget: &budget, active: &active)
    }

    public static func load(path: String, strEncoding: StrEncoding = .ascii) throws -> PickleValue {
        try load(try Image.readFile(path), file: path, strEncoding: strEncoding)
    }

    static let opcodeNames: [UInt8: String] = [
        0x28: "MARK", 0x2e: "STOP", 0x30: "POP", 0x31: "POP_MARK", 0x32: "DUP", 0x46: "FLOAT", 0x49: "INT",
        0x4a: "BININT", 0x4b: "BININT1", 0x4c: "LONG", 0x4d: "BININT2", 0x4e: "NONE", 0x50: "PERSID",
        0x51: "BINPERSID", 0x52: "REDUCE", 0x53: "STRING", 0x54: "BINSTRING", 0x55: "SHORT_BINSTRING",
        0x56: "UNICODE", 0x58: "BINUNICODE", 0x61: "APPEND", 0x62: "BUILD", 0x63: "GLOBAL", 0x64: "DICT",
        0x7d: "EMPTY_DICT", 0x65: "APPENDS", 0x67: "GET", 0x68: "BINGET", 0x69: "INST", 0x6a: "LONG_BINGET",
        0x6c: "LIST", 0x5d: "EMPTY_LIST", 0x6f: "OBJ", 0x70: "PUT", 0x71: "BINPUT", 0x72: "LONG_BINPUT",
        0x73: "SETITEM", 0x74: "TUPLE", 0x29: "EMPTY_TUPLE", 0x75: "SETITEMS", 0x47: "BINFLOAT",
        0x80: "PROTO", 0x81: "NEWOBJ", 0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4", 0x85: "TUPLE1", 0x86: "TUPLE2",
        0x87: "TUPLE3", 0x88: "NEWTRUE", 0x89: "NEWFALSE", 0x8a: "LONG1", 0x8b: "LONG4", 0x42: "BINBYTES",
        0x43: "SHORT_BINBYTES", 0x8c: "SHORT_BINUNICODE", 0x8d: "BINUNICODE8", 0x8e: "BINBYTES8",
        0x8f: "EMPTY_SET", 0x90: "ADDITEMS", 0x91: "FROZENSET", 0x92: "NEWOBJ_EX", 0x93: "STACK_GLOBAL",
        0x94: "MEMOIZE", 0x95: "FRAME", 0x96: "BYTEARRAY8", 0x97: "NEXT_BUFFER", 0x98: "READONLY_BUFFER",
    ]

    static func opcodeName(_ op: UInt8) -> String {
        opcodeNames[op] ?? String(format: "unknown opcode 0x%02x", op)
    }
}

// MARK: - the machine

// Containers carry their nesting depth (1 + the deepest container inside), bounded by PlainPickle.maxDepth while
// the machine runs, so no structure is ever deep enough for a recursive walk or release to exhaust the stack.
private final class ListBox { var items: [Node] = []; var depth = 1 }

private final class DictBox {
    var depth = 1
    var keys: [PickleValue] = []
    var values: [Node] = []
    var index: [PickleValue: Int] = [:]
    func set(_ k: PickleValue, _ v: Node) {
        if let i = index[k] { values[i] = v; return }
        index[k] = keys.count
        keys.append(k)
        values.append(v)
    }
}

/// An unpickled object while the machine runs: lists and dicts are references, as in Python.
private enum Node {
    case value(PickleValue)
    case list(ListBox)
    case dict(DictBox)
    case tuple([Node], depth: Int)
}

private struct Unpickler {
    let b: [UInt8]
    let file: String
    let strEncoding: PlainPickle.StrEncoding
    var pos = 0
    var opStart = 0
    var op: UInt8 = 0
    var stack: [Node] = []
    var marks: [Int] = []
    var memo: [Int: Node] = [:]

    init(bytes: [UInt8], file: String, strEncoding: PlainPickle.StrEncoding) {
        self.b = bytes; self.file = file; self.strEncoding = strEncoding
    }

    func fail(_ msg: String) -> PickleError {
        PickleError(file: file, offset: opStart, "\(PlainPickle.opcodeName(op)): \(msg)")
    }

    mutating func read(_ n: Int) throws -> ArraySlice<UInt8> {
        guard n >= 0, n <= b.count - pos else {
            throw fail("truncated: needs \(n) bytes at offset \(pos), the file has \(b.count - pos) left")
        }
        defer { pos += n }
        return b[pos..<(pos + n)]
    }

    mutating func byte() throws -> UInt8 { try read(1).first! }

    mutating func uint(_ n: Int) throws -> UInt64 {
        var x: UInt64 = 0
        for (k, v) in try read(n).enumerated() { x |= UInt64(v) << (8 * UInt64(k)) }
        return x
    }

    mutating func length(_ n: Int) throws -> Int {
        let x = try uint(n)
        guard x <= UInt64(b.count - pos) else {
            throw fail("truncated: length \(x) exceeds the \(b.count - pos) bytes left")
        }
        return Int(x)
    }

    /// A text argument up to (not including) the newline.
    mutating func line() throws -> [UInt8] {
        guard let nl = b[pos...].firstIndex(of: 0x0a) else { throw fail("truncated: no newline after the text argument") }
        defer { pos = nl + 1 }
        return Array(b[pos..<nl])
    }

    mutating func push(_ n: Node) { stack.append(n) }

    var floor: Int { marks.last ?? 0 }

    mutating func pop() throws -> Node {
        guard stack.count > floor else { throw fail("stack underflow") }
        return stack.removeLast()
    }

    func top() throws -> Node {
        guard stack.count > floor else { throw fail("stack underflow") }
        return stack[stack.count - 1]
    }

    mutating func popMark() throws -> [Node] {
        guard let m = marks.popLast() else { throw fail("no MARK on the stack") }
        let items = Array(stack[m...])
        stack.removeSubrange(m...)
        return items
    }

    func parseInt(_ text: [UInt8]) throws -> Int {
        let s = String(decoding: text, as: UTF8.self).trimmingCharacters(in: .whitespaces)
        guard let v = Int(s) else { throw fail("\"\(s)\" is not an integer in the 64-bit range") }
        return v
    }

    func makeTuple(_ items: [Node]) throws -> Node { .tuple(items, depth: try nesting(items)) }

    /// 1 + the deepest of `items` (a plain value counts 1); an error past PlainPickle.maxDepth.
    func nesting(_ items: [Node]) throws -> Int {
        var d = 0
        for n in items {
            switch n {
            case .value: d = max(d, 1)
            case .tuple(_, let k): d = max(d, k)
            case .list(let box): d = max(d, box.depth)
            case .dict(let box): d = max(d, box.depth)
            }
        }
        guard d < PlainPickle.maxDepth else { throw fail("nesting deeper than \(PlainPickle.maxDepth) levels") }
        return d + 1
    }

    /// A dict key: hashable (no list or dict inside).
    func key(_ n: Node) throws -> PickleValue {
        switch n {
        case .value(let v): return v
        case .tuple(let items, _): return .tuple(try items.map { try key($0) })
        case .list: throw fail("unhashable dict key (a list)")
        case .dict: throw fail("unhashable dict key (a dict)")
        }
    }

    func decodeStr(_ raw: [UInt8]) throws -> PickleValue {
        switch strEncoding {
        case .bytes: return .bytes(raw)
        case .latin1: return .string(String(String.UnicodeScalarView(raw.map { Unicode.Scalar($0) })))
        case .ascii:
            if let i = raw.firstIndex(where: { $0 >= 0x80 }) {
                throw fail(String(format: "Python 2 str is not ASCII (byte 0x%02x at position %d); ", raw[i], i)
                    + "Python 3 pickle.load(f) fails on it too (load with encoding latin1 to read it)")
            }
            return .string(String(decoding: raw, as: UTF8.self))
        }
    }

    func utf8(_ raw: ArraySlice<UInt8>) throws -> String {
        guard let s = String(validating: raw, as: UTF8.self) else { throw fail("invalid UTF-8 string") }
        return s
    }

    /// Python's codecs.escape_decode (the STRING opcode's repr escapes).
    func escapeDecode(_ s: [UInt8]) throws -> [UInt8] {
        var out: [UInt8] = []
        var i = 0
        func hex(_ c: UInt8) -> Int? {
            switch c {
            case 0x30...0x39: return Int(c - 0x30)
            case 0x61...0x66: return Int(c - 0x61 + 10)
            case 0x41...0x46: return Int(c - 0x41 + 10)
            default: return nil
            }
        }
        while i < s.count {
            let c = s[i]
            if c != 0x5c { out.append(c); i += 1; continue }
            i += 1
            guard i < s.count else { throw fail("STRING ends with a lone backslash") }
            let e = s[i]
            i += 1
            switch e {
            case 0x0a: break
            case 0x5c: out.append(0x5c)
            case 0x27: out.append(0x27)
            case 0x22: out.append(0x22)
            case 0x62: out.append(0x08)
            case 0x66: out.append(0x0c)
            case 0x74: out.append(0x09)
            case 0x6e: out.append(0x0a)
            case 0x72: out.append(0x0d)
            case 0x76: out.append(0x0b)
            case 0x61: out.append(0x07)
            case 0x30...0x37:
                var v = Int(e - 0x30)
                var k = 0
                while k < 2, i < s.count, (0x30...0x37).contains(s[i]) { v = v * 8 + Int(s[i] - 0x30); i += 1; k += 1 }
                out.append(UInt8(v & 0xff))
            case 0x78:
                guard i + 1 < s.count, let h1 = hex(s[i]), let h2 = hex(s[i + 1]) else { throw fail("invalid \\x escape in STRING") }
                out.append(UInt8(h1 * 16 + h2)); i += 2
            default: out.append(0x5c); out.append(e)
            }
        }
        return out
    }

    /// Python's raw-unicode-escape decoding (the UNICODE opcode).
    func rawUnicodeEscape(_ s: [UInt8]) throws -> String {
        var scalars: [UInt32] = []
        var i = 0
        while i < s.count {
            if s[i] != 0x5c { scalars.append(UInt32(s[i])); i += 1; continue }
            let start = i
            while i < s.count, s[i] == 0x5c { scalars.append(0x5c); i += 1 }
            guard (i - start) % 2 == 1, i < s.count, s[i] == 0x75 || s[i] == 0x55 else { continue }
            scalars.removeLast()
            let n = s[i] == 0x75 ? 4 : 8
            i += 1
            guard i + n <= s.count else { throw fail("truncated \\u escape in UNICODE") }
            var v: UInt32 = 0
            for k in 0..<n {
                guard let d = Int(String(UnicodeScalar(s[i + k])), radix: 16) else { throw fail("truncated \\u escape in UNICODE") }
                v = v * 16 + UInt32(d)
            }
            i += n
            scalars.append(v)
        }
        var out = String.UnicodeScalarView()
        var k = 0
        while k < scalars.count {
            var v = scalars[k]
            if (0xd800..<0xdc00).contains(v), k + 1 < scalars.count, (0xdc00..<0xe000).contains(scalars[k + 1]) {
                v = 0x10000 + ((v - 0xd800) << 10) + (scalars[k + 1] - 0xdc00)
                k += 1
            }
            guard let u = Unicode.Scalar(v) else { throw fail(String(format: "UNICODE has an invalid code point U+%04X", v)) }
            out.append(u)
            k += 1
        }
        return String(out)
    }

    mutating func memoPut(_ i: Int) throws {
        guard i >= 0 else { throw fail("negative memo index \(i)") }
        memo[i] = try top()
    }

    mutating func memoGet(_ i: Int) throws {
        guard let n = memo[i] else { throw fail("memo index \(i) was never stored") }
        push(n)
    }

    /// Every list and dict the machine made (a failing opcode may hold the only other reference).
    var lists: [ListBox] = []
    var dicts: [DictBox] = []
    mutating func newList() -> ListBox { let b = ListBox(); lists.append(b); return b }
    mutating func newDict() -> DictBox { let b = DictBox(); dicts.append(b); return b }

    /// Empties every list and dict the machine made, so reference cycles (a list that contains itself) are freed
    /// and nothing is released recursively; `root` and the stack go with them.
    mutating func dismantle(_ root: Node?) {
        var work = stack + Array(memo.values) + (root.map { [$0] } ?? [])
        stack = []
        memo = [:]
        for b in lists { work.append(contentsOf: b.items); b.items = [] }
        for b in dicts { work.append(contentsOf: b.values); b.values = []; b.keys = []; b.index = [:] }
        lists = []
        dicts = []
        // what remains are tuples (values): taken apart one level at a time
        while let n = work.popLast() {
            if case .tuple(let items, _) = n { work.append(contentsOf: items) }
        }
    }

    mutating func appendTo(_ target: Node, _ items: [Node]) throws {
        guard case .list(let box) = target else { throw fail("appends to a non-list") }
        box.depth = max(box.depth, try nesting(items))
        box.items.append(contentsOf: items)
    }

    mutating func setItems(_ target: Node, _ items: [Node]) throws {
        guard case .dict(let box) = target else { throw fail("sets items of a non-dict") }
        guard items.count % 2 == 0 else { throw fail("odd number of items (\(items.count)) for key/value pairs") }
        box.depth = max(box.depth, try nesting(items))
        for k in stride(from: 0, to: items.count, by: 2) { box.set(try key(items[k]), items[k + 1]) }
    }

    mutating func run() throws -> Node {
        while true {
            opStart = pos
            guard pos < b.count else {
                op = 0x2e
                throw PickleError(file: file, offset: pos, pos == 0 ? "empty file" : "truncated: no STOP opcode before the end of the file")
            }
            op = b[pos]
            pos += 1
            switch op {
            case 0x80: // PROTO
                let p = try byte()
                guard p <= 5 else { throw fail("unsupported pickle protocol \(p)") }
            case 0x95: // FRAME
                _ = try length(8)
            case 0x2e: // STOP
                return try pop()
            case 0x28: marks.append(stack.count)
            case 0x30: // POP
                if stack.count > floor { stack.removeLast() } else { _ = try popMark() }
            case 0x31: _ = try popMark()
            case 0x32: push(try top())
            case 0x4e: push(.value(.none))
            case 0x88: push(.value(.bool(true)))
            case 0x89: push(.value(.bool(false)))
            case 0x49: // INT
                let t = try line()
                if t == Array("00".utf8) { push(.value(.bool(false))) }
                else if t == Array("01".utf8) { push(.value(.bool(true))) }
                else { push(.value(.int(try parseInt(t)))) }
            case 0x4a: push(.value(.int(Int(Int32(bitPattern: UInt32(try uint(4)))))))
            case 0x4b: push(.value(.int(Int(try byte()))))
            case 0x4d: push(.value(.int(Int(try uint(2)))))
            case 0x4c: // LONG
                var t = try line()
                if t.last == 0x4c { t.removeLast() }
                push(.value(.int(try parseInt(t))))
            case 0x8a, 0x8b: // LONG1, LONG4
                let n = op == 0x8a ? Int(try byte()) : Int(Int32(bitPattern: UInt32(try uint(4))))
                guard n >= 0 else { throw fail("negative byte count \(n)") }
                let raw = Array(try read(n))
                push(.value(.int(try twosComplement(raw))))
            case 0x46: // FLOAT
                let s = String(decoding: try line(), as: UTF8.self).trimmingCharacters(in: .whitespaces)
                guard let d = Double(s) else { throw fail("\"\(s)\" is not a float") }
                push(.value(.float(d)))
            case 0x47: // BINFLOAT (big-endian)
                var x: UInt64 = 0
                for v in try read(8) { x = x << 8 | UInt64(v) }
                push(.value(.float(Double(bitPattern: x))))
            case 0x53: // STRING
                let t = try line()
                guard t.count >= 2, t.first == t.last, t.first == 0x27 || t.first == 0x22 else {
                    throw fail("the argument must be a quoted string")
                }
                push(.value(try decodeStr(try escapeDecode(Array(t[1..<(t.count - 1)])))))
            case 0x54: // BINSTRING
                let n = Int32(bitPattern: UInt32(try uint(4)))
                guard n >= 0 else { throw fail("negative byte count \(n)") }
                push(.value(try decodeStr(Array(try read(Int(n))))))
            case 0x55: push(.value(try decodeStr(Array(try read(Int(try byte()))))))
            case 0x56: push(.value(.string(try rawUnicodeEscape(try line()))))
            case 0x58: push(.value(.string(try utf8(try read(try length(4))))))
            case 0x8c: push(.value(.string(try utf8(try read(Int(try byte()))))))
            case 0x8d: push(.value(.string(try utf8(try read(try length(8))))))
            case 0x42: push(.value(.bytes(Array(try read(try length(4))))))
            case 0x43: push(.value(.bytes(Array(try read(Int(try byte()))))))
            case 0x8e, 0x96: push(.value(.bytes(Array(try read(try length(8))))))
            case 0x5d: push(.list(newList()))
            case 0x7d: push(.dict(newDict()))
            case 0x29: push(.value(.tuple([])))
            case 0x6c: // LIST
                let box = newList(); box.items = try popMark(); box.depth = try nesting(box.items); push(.list(box))
            case 0x74: push(try makeTuple(try popMark()))
            case 0x85, 0x86, 0x87:
                let n = Int(op - 0x84)
                var items: [Node] = []
                for _ in 0..<n { items.insert(try pop(), at: 0) }
                push(try makeTuple(items))
            case 0x64: // DICT
                let items = try popMark()
                let d = Node.dict(newDict())
                try setItems(d, items)
                push(d)
            case 0x61: // APPEND
                let v = try pop()
                try appendTo(try top(), [v])
            case 0x65: // APPENDS
                let items = try popMark()
                try appendTo(try top(), items)
            case 0x73: // SETITEM
                let v = try pop(), k = try pop()
                try setItems(try top(), [k, v])
            case 0x75: // SETITEMS
                let items = try popMark()
                try setItems(try top(), items)
            case 0x70: try memoPut(try parseInt(try line()))
            case 0x71: try memoPut(Int(try byte()))
            case 0x72: try memoPut(Int(try uint(4)))
            case 0x94: try memoPut(memo.count)
            case 0x67: try memoGet(try parseInt(try line()))
            case 0x68: try memoGet(Int(try byte()))
            case 0x6a: try memoGet(Int(try uint(4)))
            case 0x63, 0x93, 0x52, 0x62, 0x69, 0x6f, 0x81, 0x92, 0x50, 0x51, 0x82, 0x83, 0x84, 0x97, 0x98:
                throw fail("refused: the pickle imports or builds Python objects, only plain data "
                    + "(lists, tuples, dicts, strings, bytes, numbers, None) is read")
            case 0x8f, 0x90, 0x91:
                throw fail("refused: sets are not supported by the plain-data reader")
            default:
                throw fail("not a pickle opcode")
            }
        }
    }

    func twosComplement(_ raw: [UInt8]) throws -> Int {
        if raw.isEmpty { return 0 }
        let negative = raw.last! & 0x80 != 0
        let fill: UInt8 = negative ? 0xff : 0
        if raw.count > 8 {
            // Larger encodings fit when the extra bytes only extend the sign of byte 7.
            let signOK = raw[8...].allSatisfy { $0 == fill } && ((raw[7] & 0x80 != 0) == negative)
            guard signOK else { throw fail("integer wider than 64 bits") }
        }
        var x: UInt64 = 0
        for k in 0..<8 {
            let v = k < raw.count ? raw[k] : fill
            x |= UInt64(v) << (8 * UInt64(k))
        }
        return Int(Int64(bitPattern: x))
    }

    /// The finished value of a node (lists and dicts copied out of their boxes).
    func value(of n: Node, depth: Int, budget: inout Int, active: inout Set<ObjectIdentifier>) throws -> PickleValue {
        budget -= 1
        guard budget >= 0 else {
            throw PickleError(file: file, offset: b.count, "shared references expand to more values than the file can hold plainly")
        }
        guard depth <= PlainPickle.maxDepth else {
            throw PickleError(file: file, offset: b.count, "nesting deeper than \(PlainPickle.maxDepth) levels")
        }
        switch n {
        case .value(let v): return v
        case .tuple(let items, _):
            return .tuple(try items.map { try value(of: $0, depth: depth + 1, budget: &budget, active: &active) })
        case .list(let box):
            let id = ObjectIdentifier(box)
            guard active.insert(id).inserted else { throw PickleError(file: file, offset: b.count, "a list contains itself") }
            defer { active.remove(id) }
            return .list(try box.items.map { try value(of: $0, depth: depth + 1, budget: &budget, active: &active) })
        case .dict(let box):
            let id = ObjectIdentifier(box)
            guard active.insert(id).inserted else { throw PickleError(file: file, offset: b.count, "a dict contains itself") }
            defer { active.remove(id) }
            var entries: [PickleEntry] = []
            entries.reserveCapacity(box.keys.count)
            for (k, v) in zip(box.keys, box.values) {
                entries.append(PickleEntry(key: k, value: try value(of: v, depth: depth + 1, budget: &budget, active: &active)))
            }
            return .dict(entries)
        }
    }
}
