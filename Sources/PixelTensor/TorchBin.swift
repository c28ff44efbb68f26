import Foundation

// PyTorch checkpoints (`pytorch_model.bin`, torch.save): a zip archive (torch >= 1.6) holding
// `<prefix>/data.pkl`, a pickle of the state dict whose tensors point through persistent ids at storages
// stored as `<prefix>/data/<key>`, plus `<prefix>/byteorder` (torch >= 1.12; "little" when absent) and
// bookkeeping entries; or the legacy stream (torch < 1.6): five pickles (magic number, protocol version,
// sys info, the object, the storage keys) followed by each storage as an int64 element count and the raw
// elements. The pickles are read by a restricted unpickler that builds plain data only: the globals a
// state dict needs (OrderedDict, the tensor/parameter rebuild functions, storage types, torch.device) are
// recognised by name, never imported or called, and any other global is refused. Tensor data stays in
// the memory-mapped file until asked for.

/// What is wrong with a PyTorch checkpoint (`TorchBinError.kind`).
public enum TorchBinErrorKind: String, Sendable {
    case io, notCheckpoint, truncated, zipFormat, compressedEntry, missingEntry, checksum
    case pickle, refusedGlobal, unsupportedObject, invalidTensor, bigEndian, unsupportedFormat
    case tensorNotFound, unsupportedDType, invalidIndex, invalidJSON, duplicateKey, missingShard
}

public typealias TorchBinError = CheckpointError<TorchBinErrorKind>

public enum TorchBin {
    public static let indexName = "pytorch_model.bin.index.json"
    public static let singleName = "pytorch_model.bin"

    /// Storage classes as they appear in pickles (`torch.FloatStorage`, ...) and the element type each holds.
    static let storageTypes: [String: DType] = [
        "FloatStorage": .f32, "HalfStorage": .f16, "BFloat16Storage": .bf16, "DoubleStorage": .f64,
        "LongStorage": .i64, "IntStorage": .i32, "ShortStorage": .i16, "CharStorage": .i8, "ByteStorage": .u8,
        "BoolStorage": .bool, "UntypedStorage": .u8, "UInt16Storage": .u16, "UInt32Storage": .u32,
        "UInt64Storage": .u64, "ComplexFloatStorage": .c64, "Float8_e4m3fnStorage": .f8e4m3,
        "Float8_e5m2Storage": .f8e5m2, "Float8_e4m3fnuzStorage": .f8e4m3fnuz, "Float8_e5m2fnuzStorage": .f8e5m2fnuz,
    ]

    /// Float types converted to fp32 by `tensor(_:)`.
    static func isFloat(_ d: DType) -> Bool { d == .f32 || d == .f16 || d == .bf16 || d == .f64 }
    /// Integer types read by `ints(_:)`.
    static func isInteger(_ d: DType) -> Bool { [.i64, .i32, .i16, .i8, .u8, .bool].contains(d) }
}

// MARK: - restricted unpickler

/// A global a checkpoint pickle may name. Recognised by name; nothing is imported.
enum PickleGlobal: Equatable {
    case orderedDict
    case rebuildTensorV2, rebuildTensor, rebuildParameter, rebuildParameterWithState
    case device
    case storage(DType, String)

    static func allowed(module: String, name: String) -> PickleGlobal? {
        switch (module, name) {
        case ("collections", "OrderedDict"): return .orderedDict
        case ("torch._utils", "_rebuild_tensor_v2"): return .rebuildTensorV2
        case ("torch._utils", "_rebuild_tensor"): return .rebuildTensor
        case ("torch._utils", "_rebuild_parameter"): return .rebuildParameter
        case ("torch._utils", "_rebuild_parameter_with_state"): return .rebuildParameterWithState
        case ("torch", "device"): return .device
        case ("torch", _), ("torch.storage", "UntypedStorage"):
            return TorchBin.storageTypes[name].map { .storage($0, name) }
        default: return nil
        }
    }

    var qualifiedName: String {
        switch self {
        case .orderedDict: return "collections.OrderedDict"
        case .rebuildTensorV2: return "torch._utils._rebuild_tensor_v2"
        case .rebuildTensor: return "torch._utils._rebuild_tensor"
        case .rebuildParameter: return "torch._utils._rebuild_parameter"
        case .rebuildParameterWithState: return "torch._utils._rebuild_parameter_with_state"
        case .device: return "torch.device"
        case .storage(_, let n): return "torch.\(n)"
        }
    }
}

/// A storage as a persistent id describes it.
struct TorchStorageRef: Equatable {
    /// Zip: the entry `data/<key>`; legacy: the root storage's key.
    let key: String
    let dtype: DType
    let typeName: String
    /// Elements of this storage (of the view, for legacy storage views).
    let count: Int
    /// Legacy storage views: where the view starts in its root storage, in elements.
    let elementOffset: Int
    /// Legacy: elements of the root storage.
    let rootCount: Int
}

struct TorchTensorRef {
    let storage: TorchStorageRef
    let offset: Int
    let shape: [Int]
    let strides: [Int]
}

/// Containers are classes: pickles mutate them after memoising them (SETITEMS after BINPUT), and
/// `dismantle` empties them so deep or cyclic structures are freed without recursion.
/// `depth` (1 + the deepest container inside) is bounded by the unpickler (`Unpickler.maxDepth`), so nothing that walks
/// or frees a structure can run out of stack.
final class PickleTuple { var items: [PickleValue]; var depth = 1; init(_ i: [PickleValue]) { items = i } }
final class PickleList { var items: [PickleValue] = []; var depth = 1 }
final class PickleDict {
    enum Key: Hashable { case string(String), int(Int64) }
    var depth = 1
    var keys: [Key] = []
    var values: [PickleValue] = []
    var slot: [Key: Int] = [:]
    var isOrdered = false

    func set(_ k: Key, _ v: PickleValue) {
        if let i = slot[k] { values[i] = v; return }
        slot[k] = keys.count
        keys.append(k)
        values.append(v)
    }
    func get(_ k: Key) -> PickleValue? { slot[k].map { values[$0] } }
}

enum PickleValue {
    case none
    case bool(Bool)
    case int(Int64)
    /// An integer that does not fit in 64 bits: little-endian two's complement bytes.
    case bigInt([UInt8])
    case float(Double)
    case string(String)
    case bytes([UInt8])
    case tuple(PickleTuple)
    case list(PickleList)
    case dict(PickleDict)
    case global(PickleGlobal)
    case storage(TorchStorageRef)
    case tensor(TorchTensorRef)
    case device(String)

    var kindName: String {
        switch self {
        case .none: return "None"
        case .bool: return "bool"
        case .int, .bigInt: return "int"
        case .float: return "float"
        case .string: return "str"
        case .bytes: return "bytes"
        case .tuple(let t): return "tuple of \(t.items.count)"
        case .list: return "list"
        case .dict(let d): return d.isOrdered ? "OrderedDict" : "dict"
        case .global(let g): return g.qualifiedName
        case .storage(let s): return "torch.\(s.typeName)"
        case .tensor: return "tensor"
        case .device: return "torch.device"
        }
    }

    /// Frees a value graph without recursion (a pickle can nest a million tuples, or build cycles).
    static func dismantle(_ roots: [PickleValue]) {
        var work = roots
        while let v = work.popLast() {
            switch v {
            case .tuple(let t): work.append(contentsOf: t.items); t.items = []
            case .list(let l): work.append(contentsOf: l.items); l.items = []
            case .dict(let d): work.append(contentsOf: d.values); d.values = []; d.keys = []; d.slot = [:]
            default: break
            }
        }
    }
}

/// A pickle virtual machine for the opcodes of protocols 2-5 that plain data uses. `persistentLoad`
/// turns BINPERSID ids into storages.
struct Unpickler {
    let data: UnsafeRawBufferPointer
    var pos: Int
    let file: String
    /// The zip entry or stream part being read, for messages.
    let part: String
    let persistentLoad: (PickleValue, Unpickler) throws -> PickleValue
    var stack: [PickleValue] = []
    var marks: [Int] = []
    var memo: [Int: PickleValue] = [:]
    var opcodeStart = 0
    /// Every list and dict made (a failing opcode may hold the only other reference to one that contains itself).
    final class Made { var values: [PickleValue] = [] }
    let made = Made()
    func newList() -> PickleList { let l = PickleList(); made.values.append(.list(l)); return l }
    func newDict() -> PickleDict { let d = PickleDict(); made.values.append(.dict(d)); return d }

    init(_ data: UnsafeRawBufferPointer, at pos: Int = 0, file: String, part: String,
         persistentLoad: @escaping (PickleValue, Unpickler) throws -> PickleValue) {
        self.data = data
        self.pos = pos
        self.file = file
        self.part = part
        self.persistentLoad = persistentLoad
    }

    func fail(_ m: String, at: Int? = nil) -> TorchBinError {
        TorchBinError(.pickle, file: file, key: part, "invalid pickle at byte \(at ?? opcodeStart): \(m)")
    }
    func unsupported(_ m: String) -> TorchBinError {
        TorchBinError(.unsupportedObject, file: file, key: part, "\(m) (at pickle byte \(opcodeStart); only plain tensor data is allowed)")
    }

    // MARK: reading

    mutating func bytes(_ n: Int) throws -> UnsafeRawBufferPointer {
        guard n >= 0, n <= data.count - pos else {
            throw fail("the pickle ends inside an opcode argument (\(n) bytes needed at byte \(pos), \(data.count) in all; truncated?)")
        }
        defer { pos += n }
        return UnsafeRawBufferPointer(rebasing: data[pos..<(pos + n)])
    }
    mutating func u8() throws -> UInt8 { try bytes(1)[0] }
    mutating func le<T: FixedWidthInteger>(_: T.Type) throws -> T {
        T(littleEndian: try bytes(MemoryLayout<T>.size).loadUnaligned(as: T.self))
    }
    mutating func length<T: FixedWidthInteger>(_: T.Type) throws -> Int {
        let n = try le(T.self)
        guard n >= 0, UInt64(n) <= UInt64(data.count - pos) else {
            throw fail("length \(n) runs past the end of the pickle (\(data.count - pos) bytes left)")
        }
        return Int(n)
    }
    mutating func utf8(_ n: Int) throws -> String {
        let b = try bytes(n)
        guard let s = String(validating: b, as: UTF8.self) else { throw fail("a string is not valid UTF-8") }
        return s
    }
    mutating func line() throws -> String {
        guard let nl = data[pos...].firstIndex(of: 0x0A) else { throw fail("a GLOBAL argument has no terminating newline") }
        let s = try utf8(nl - pos)
        pos += 1
        return s
    }

    // MARK: the stack

    mutating func pop() throws -> PickleValue {
        guard let v = stack.popLast(), stack.count >= (marks.last ?? 0) else { throw fail("stack underflow") }
        return v
    }
    func top() throws -> PickleValue {
        guard let v = stack.last, stack.count > (marks.last ?? 0) else { throw fail("stack underflow") }
        return v
    }
    mutating func popMark() throws -> [PickleValue] {
        guard let m = marks.popLast() else { throw fail("no MARK on the stack") }
        let items = Array(stack[m...])
        stack.removeSubrange(m...)
        return items
    }
    func dictKey(_ v: PickleValue) throws -> PickleDict.Key {
        switch v {
        case .string(let s): return .string(s)
        case .int(let i): return .int(i)
        default: throw unsupported("a dict key of type \(v.kindName)")
        }
    }
    mutating func setItems(_ items: [PickleValue]) throws {
        guard items.count % 2 == 0 else { throw fail("SETITEMS with an odd number of items") }
        guard case .dict(let d) = try top() else { throw unsupported("setting items on a \(try top().kindName)") }
        d.depth = max(d.depth, try nesting(items))
        for i in stride(from: 0, to: items.count, by: 2) { d.set(try dictKey(items[i]), items[i + 1]) }
    }
    mutating func append(_ items: [PickleValue]) throws {
        guard case .list(let l) = try top() else { throw unsupported("appending to a \(try top().kindName)") }
        l.depth = max(l.depth, try nesting(items))
        l.items.append(contentsOf: items)
    }

    /// Containers nested deeper than this are refused (a state dict is a few levels deep).
    static let maxDepth = 1000

    /// The depth of a container holding `items`: 1 + the deepest of them; an error past `maxDepth`.
    func nesting(_ items: [PickleValue]) throws -> Int {
        var d = 0
        for v in items {
            switch v {
            case .tuple(let t): d = max(d, t.depth)
            case .list(let l): d = max(d, l.depth)
            case .dict(let x): d = max(d, x.depth)
            default: break
            }
        }
        guard d < Self.maxDepth else { throw fail("containers nested deeper than \(Self.maxDepth)") }
        return d + 1
    }
    func tuple(_ items: [PickleValue]) throws -> PickleValue {
        let t = PickleTuple(items)
        t.depth = try nesting(items)
        return .tuple(t)
    }

    // MARK: running

    /// Runs the pickle to STOP and hands the result to `use`; everything the pickle built is freed after.
    mutating func load<R>(_ use: (PickleValue) throws -> R) throws -> R {
        var result: PickleValue?
        defer { PickleValue.dismantle(stack + Array(memo.values) + made.values + (result.map { [$0] } ?? [])); made.values = [] }
        result = try run()
        return try use(result!)
    }

    private mutating func run() throws -> PickleValue {
        while true {
            guard pos < data.count else { throw fail("the pickle ends without STOP (truncated?)", at: pos) }
            opcodeStart = pos
            let op = data[pos]
            pos += 1
            switch op {
            case 0x80:  // PROTO
                let v = try u8()
                guard v <= 5 else { throw fail("pickle protocol \(v) is not supported (at most 5)") }
            case 0x95: _ = try le(UInt64.self)  // FRAME: the opcodes follow inline
            case 0x2E:  // STOP
                let v = try pop()
                guard stack.isEmpty, marks.isEmpty else { throw fail("STOP with \(stack.count) values left on the stack") }
                return v
            case 0x28: marks.append(stack.count)  // MARK
            case 0x30: _ = try pop()  // POP
            case 0x31: _ = try popMark()  // POP_MARK
            case 0x32: stack.append(try top())  // DUP
            case 0x4E: stack.append(.none)  // NONE
            case 0x88: stack.append(.bool(true))  // NEWTRUE
            case 0x89: stack.append(.bool(false))  // NEWFALSE
            case 0x4A: stack.append(.int(Int64(try le(Int32.self))))  // BININT
            case 0x4B: stack.append(.int(Int64(try u8())))  // BININT1
            case 0x4D: stack.append(.int(Int64(try le(UInt16.self))))  // BININT2
            case 0x8A: stack.append(Self.long(try bytes(Int(try u8()))))  // LONG1
            case 0x8B:  // LONG4
                let n = try length(Int32.self)
                guard n <= 64 else { throw unsupported("an integer of \(n) bytes") }
                stack.append(Self.long(try bytes(n)))
            case 0x47:  // BINFLOAT (big-endian)
                stack.append(.float(Double(bitPattern: UInt64(bigEndian: try bytes(8).loadUnaligned(as: UInt64.self)))))
            case 0x58: stack.append(.string(try utf8(try length(UInt32.self))))  // BINUNICODE
            case 0x8D: stack.append(.string(try utf8(try length(UInt64.self))))  // BINUNICODE8
            case 0x8C: stack.append(.string(try utf8(Int(try u8()))))  // SHORT_BINUNICODE
            case 0x54: stack.append(.string(try utf8(try length(Int32.self))))  // BINSTRING (protocol 1 str)
            case 0x55: stack.append(.string(try utf8(Int(try u8()))))  // SHORT_BINSTRING
            case 0x42: stack.append(.bytes(Array(try bytes(try length(UInt32.self)))))  // BINBYTES
            case 0x43: stack.append(.bytes(Array(try bytes(Int(try u8())))))  // SHORT_BINBYTES
            case 0x8E: stack.append(.bytes(Array(try bytes(try length(UInt64.self)))))  // BINBYTES8
            case 0x29: stack.append(.tuple(PickleTuple([])))  // EMPTY_TUPLE
            case 0x85, 0x86, 0x87:  // TUPLE1, TUPLE2, TUPLE3
                let n = Int(op - 0x84)
                guard stack.count - n >= (marks.last ?? 0) else { throw fail("stack underflow") }
                let items = Array(stack.suffix(n))
                stack.removeLast(n)
                stack.append(try tuple(items))
            case 0x74: stack.append(try tuple(try popMark()))  // TUPLE
            case 0x5D: stack.append(.list(newList()))  // EMPTY_LIST
            case 0x6C:  // LIST
                let l = newList()
                l.items = try popMark()
                l.depth = try nesting(l.items)
                stack.append(.list(l))
            case 0x61: try append([try pop()])  // APPEND
            case 0x65: try append(try popMark())  // APPENDS
            case 0x7D: stack.append(.dict(newDict()))  // EMPTY_DICT
            case 0x64:  // DICT
                let items = try popMark()
                stack.append(.dict(newDict()))
                try setItems(items)
            case 0x73:  // SETITEM
                let v = try pop(), k = try pop()
                try setItems([k, v])
            case 0x75: try setItems(try popMark())  // SETITEMS
            case 0x71: memo[Int(try u8())] = try top()  // BINPUT
            case 0x72: memo[Int(try le(UInt32.self))] = try top()  // LONG_BINPUT
            case 0x94: memo[memo.count] = try top()  // MEMOIZE
            case 0x68, 0x6A:  // BINGET, LONG_BINGET
                let i = op == 0x68 ? Int(try u8()) : Int(try le(UInt32.self))
                guard let v = memo[i] else { throw fail("memo entry \(i) is used before it is defined") }
                stack.append(v)
            case 0x63:  // GLOBAL
                let module = try line(), name = try line()
                stack.append(.global(try global(module, name)))
            case 0x93:  // STACK_GLOBAL
                guard case .string(let name) = try pop(), case .string(let module) = try pop() else {
                    throw fail("STACK_GLOBAL needs two strings")
                }
                stack.append(.global(try global(module, name)))
            case 0x52:  // REDUCE
                let args = try pop(), callable = try pop()
                stack.append(try call(callable, args))
            case 0x81:  // NEWOBJ
                let args = try pop(), cls = try pop()
                stack.append(try newObject(cls, args))
            case 0x92:  // NEWOBJ_EX
                _ = try pop()  // kwargs
                let args = try pop(), cls = try pop()
                stack.append(try newObject(cls, args))
            case 0x62:  // BUILD
                let state = try pop()
                try build(try top(), state)
            case 0x51:  // BINPERSID
                let pid = try pop()
                stack.append(try persistentLoad(pid, self))
            default:
                if let name = Self.unsupportedOpcodes[op] {
                    throw fail("opcode \(name) (0x\(String(op, radix: 16))) is not supported (torch.save writes protocol 2)")
                }
                throw fail("unknown pickle opcode 0x\(String(op, radix: 16))")
            }
        }
    }

    static let unsupportedOpcodes: [UInt8: String] = [
        0x49: "INT", 0x4C: "LONG", 0x53: "STRING", 0x56: "UNICODE", 0x46: "FLOAT", 0x70: "PUT", 0x67: "GET",
        0x50: "PERSID", 0x69: "INST", 0x6F: "OBJ", 0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4", 0x8F: "EMPTY_SET",
        0x90: "ADDITEMS", 0x91: "FROZENSET", 0x96: "BYTEARRAY8", 0x97: "NEXT_BUFFER", 0x98: "READONLY_BUFFER",
    ]

    static func long(_ b: UnsafeRawBufferPointer) -> PickleValue {
        if b.isEmpty { return .int(0) }
        if b.count <= 8 {
            var v: UInt64 = 0
            for (i, x) in b.enumerated() { v |= UInt64(x) << (8 * UInt64(i)) }
            let shift = UInt64(64 - 8 * b.count)
            return .int(Int64(bitPattern: v << shift) >> Int64(shift))  // sign-extend
        }
        return .bigInt(Array(b))
    }

    func global(_ module: String, _ name: String) throws -> PickleGlobal {
        guard let g = PickleGlobal.allowed(module: module, name: name) else {
            throw TorchBinError(.refusedGlobal, file: file, "refusing pickle global \(module).\(name) (only plain tensor data is allowed)")
        }
        return g
    }

    func ints(_ v: PickleValue, _ what: String) throws -> [Int] {
        guard case .tuple(let t) = v else { throw unsupported("\(what) is a \(v.kindName), not a tuple of integers") }
        return try t.items.map {
            guard case .int(let i) = $0, i >= 0, i <= Int64(Int32.max) * 1024 else {
                throw unsupported("\(what) holds \($0.kindName == "int" ? "an integer out of range" : "a \($0.kindName)")")
            }
            return Int(i)
        }
    }

    func tensorArgs(_ a: [PickleValue], _ fn: String) throws -> TorchTensorRef {
        guard case .storage(let s) = a[0] else { throw unsupported("\(fn) called with a \(a[0].kindName) where a storage belongs") }
        guard case .int(let off) = a[1], off >= 0, off <= Int64(Int.max / 2) else { throw unsupported("\(fn) with a storage offset that is not a non-negative integer") }
        let shape = try ints(a[2], "the size given to \(fn)")
        let strides = try ints(a[3], "the stride given to \(fn)")
        guard shape.count == strides.count else {
            throw unsupported("\(fn) with size \(describe(shape)) and stride \(describe(strides)) of different lengths")
        }
        return TorchTensorRef(storage: s, offset: Int(off), shape: shape, strides: strides)
    }

    func call(_ callable: PickleValue, _ argsValue: PickleValue) throws -> PickleValue {
        guard case .global(let g) = callable else { throw unsupported("calling a \(callable.kindName)") }
        guard case .tuple(let t) = argsValue else { throw unsupported("calling \(g.qualifiedName) with arguments that are a \(argsValue.kindName)") }
        let a = t.items
        func arity(_ ok: Bool) throws {
            if !ok { throw unsupported("\(g.qualifiedName) called with \(a.count) arguments") }
        }
        switch g {
        case .orderedDict:
            let d = newDict()
            d.isOrdered = true
            try arity(a.count <= 1)
            if let items = a.first {  // OrderedDict([(k, v), ...])
                guard case .list(let l) = items else { throw unsupported("OrderedDict built from a \(items.kindName)") }
                for p in l.items {
                    guard case .tuple(let kv) = p, kv.items.count == 2 else { throw unsupported("OrderedDict built from a list of \(p.kindName)") }
                    d.set(try dictKey(kv.items[0]), kv.items[1])
                }
            }
            return .dict(d)
        case .rebuildTensorV2:
            // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
            try arity(a.count == 6 || a.count == 7)
            return .tensor(try tensorArgs(a, g.qualifiedName))
        case .rebuildTensor:
            try arity(a.count == 4)
            return .tensor(try tensorArgs(a, g.qualifiedName))
        case .rebuildParameter, .rebuildParameterWithState:
            // (data, requires_grad, backward_hooks[, state])
            try arity(a.count == (g == .rebuildParameter ? 3 : 4))
            guard case .tensor = a[0] else { throw unsupported("\(g.qualifiedName) of a \(a[0].kindName)") }
            return a[0]
        case .device:
            try arity(a.count == 1 || a.count == 2)
            guard case .string(let s) = a[0] else { throw unsupported("torch.device of a \(a[0].kindName)") }
            if a.count == 2, case .int(let i) = a[1] { return .device("\(s):\(i)") }
            return .device(s)
        case .storage:
            throw unsupported("calling \(g.qualifiedName) (storages may only come from persistent ids)")
        }
    }

    func newObject(_ cls: PickleValue, _ args: PickleValue) throws -> PickleValue {
        guard case .global(.orderedDict) = cls else { throw unsupported("instantiating \(cls.kindName)") }
        let d = newDict()
        d.isOrdered = true
        return .dict(d)
    }

    func build(_ target: PickleValue, _ state: PickleValue) throws {
        // torch sets `_metadata` (versions of each module) on state-dict OrderedDicts; nothing to keep
        switch (target, state) {
        case (.dict, .dict), (.dict, .none), (.tensor, .dict), (.tensor, .none): return
        case (.dict, .tuple(let t)) where t.items.count == 2: return  // (dict state, slot state)
        default: throw unsupported("setting the state of a \(target.kindName) from a \(state.kindName)")
        }
    }
}

// MARK: - one file

/// Where a tensor of a `.bin` file lives: its storage (a zip entry, or a block of the legacy stream) and
/// the view into it (offset and strides in elements, as torch keeps them).
public struct TorchBinEntry: WeightInfo, Sendable, Equatable {
    public let dtype: DType
    public let shape: [Int]
    public let strides: [Int]
    /// First element of the tensor in its storage.
    public let storageOffset: Int
    /// The storage's key (`data/<key>` in the archive); tensors sharing a storage have the same key.
    public let storageKey: String
    /// Elements in the storage.
    public let storageCount: Int
    /// File offset of storage element 0.
    public let storageFileOffset: Int

    public var count: Int { product(shape) }
    /// Row-major contiguous (strides of size-1 dimensions do not matter, as in torch).
    public var isContiguous: Bool {
        if count == 0 { return true }
        var expected = 1
        for i in stride(from: shape.count - 1, through: 0, by: -1) where shape[i] != 1 {
            if strides[i] != expected { return false }
            expected *= shape[i]
        }
        return true
    }
}

/// A PyTorch checkpoint file (`torch.save` zip archive, or the legacy pre-1.6 stream), memory-mapped and
/// validated on open: the pickle may only describe tensors, every storage must be present and stored
/// uncompressed, every tensor must lie inside its storage, and the data must be little-endian. Tensor
/// data is converted on request, like `SafetensorsFile`: F32/F16/BF16/F64 to fp32, integers to `[Int64]`.
public final class TorchBinFile: @unchecked Sendable {
    public let path: String
    /// Tensor names in the order of the pickled dict.
    public let names: [String]
    /// Top-level keys whose values are not tensors (left out of `names`).
    public let ignoredKeys: [String]
    /// The directory name inside the zip archive (`archive`, or the file's stem since torch 2.x); nil for
    /// the legacy format.
    public let archivePrefix: String?
    public let isLegacyFormat: Bool
    public let isZip64: Bool
    public var fileSize: Int { map.size }

    let map: MappedFile
    let entries: [String: TorchBinEntry]
    let zip: ZipArchive?

    public init(_ path: String) throws {
        self.path = path
        do {
            map = try MappedFile(path: path)
        } catch let e as SafetensorsError {
            throw TorchBinError(.io, file: path, e.message)
        }
        guard map.size > 0, let base = map.base else { throw TorchBinError(.truncated, file: path, "the file is empty") }
        let bytes = UnsafeRawBufferPointer(start: base, count: map.size)
        var tensors: [(String, TorchTensorRef)] = []
        var ignored: [String] = []
        var storageOffsets: [String: (offset: Int, bytes: Int)] = [:]
        var refs: [String: TorchStorageRef] = [:]

        if ZipArchive.looksLikeZip(map) {
            let z = try ZipArchive(map: map, path: path)
            zip = z
            isLegacyFormat = false
            isZip64 = z.isZip64
            let prefix = try Self.findPrefix(z, path)
            archivePrefix = prefix
            if let bo = z.entry("\(prefix)/byteorder") {
                let text = String(decoding: try z.verifiedBytes(bo), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                if text == "big" {
                    throw TorchBinError(.bigEndian, file: path, key: bo.name, "the tensors were saved big-endian (byteorder 'big'): only little-endian data is supported")
                }
                guard text == "little" else { throw TorchBinError(.zipFormat, file: path, key: bo.name, "unknown byteorder '\(text.prefix(20))'") }
            }
            let pklEntry = z.entry("\(prefix)/data.pkl")!
            let pkl = try z.verifiedBytes(pklEntry)
            var u = Unpickler(pkl, file: path, part: pklEntry.name) { pid, u in
                let s = try Self.storage(fromPersistentID: pid, legacy: false, u)
                if let old = refs[s.key], old.dtype != s.dtype || old.rootCount != s.rootCount {
                    throw u.unsupported("storage '\(s.key)' is used as \(old.count) \(old.dtype.name) and as \(s.count) \(s.dtype.name) elements")
                }
                refs[s.key] = s
                return .storage(s)
            }
            (tensors, ignored) = try u.load { try Self.collect($0, path, pklEntry.name) }
            for (key, s) in refs.sorted(by: { $0.key < $1.key }) {
                let name = "\(prefix)/data/\(key)"
                guard let e = z.entry(name) else {
                    let user = tensors.first { $0.1.storage.key == key }?.0
                    throw TorchBinError(.missingEntry, file: path, key: name,
                                        "missing zip entry: \(user.map { "tensor '\($0)'" } ?? "a tensor") needs storage '\(key)' (\(s.rootCount) \(s.dtype.name) elements) but the archive has no such entry")
                }
                let raw = try z.storedBytes(e)
                let need = s.rootCount.multipliedReportingOverflow(by: s.dtype.byteSize)
                guard !need.overflow, raw.count >= need.partialValue else {
                    throw TorchBinError(.invalidTensor, file: path, key: name,
                                        "the storage holds \(raw.count) bytes but the pickle describes \(s.rootCount) \(s.dtype.name) elements")
                }
                storageOffsets[key] = (e.dataOffset, raw.count)
            }
        } else if let legacy = try Self.readLegacy(bytes, path) {
            zip = nil
            isLegacyFormat = true
            isZip64 = false
            archivePrefix = nil
            (tensors, ignored, storageOffsets) = legacy
        } else {
            let head = bytes.prefix(8).map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }
            var hint = ""
            if bytes.count >= 8, bytes.loadUnaligned(as: UInt64.self) < 100_000_000, bytes.count > 8, bytes[8] == UInt8(ascii: "{") {
                hint = " (it looks like a safetensors file: open it with SafetensorsFile)"
            } else if bytes.count > 262, String(decoding: UnsafeRawBufferPointer(rebasing: bytes[257..<262]), as: UTF8.self) == "ustar" {
                hint = " (it is a tar archive: the torch < 0.4 tar format is not supported; re-save the checkpoint with a recent torch)"
            }
            throw TorchBinError(.notCheckpoint, file: path,
                                "not a PyTorch checkpoint: neither a zip archive (torch.save since 1.6) nor the legacy torch.save stream; it starts with \(head.joined(separator: " "))\(hint)")
        }

        // resolve every tensor: inside its storage
        var out: [String: TorchBinEntry] = [:]
        var order: [String] = []
        for (name, t) in tensors {
            let s = t.storage
            guard let loc = storageOffsets[s.key] else {
                throw TorchBinError(.missingEntry, file: path, key: name, "storage '\(s.key)' of this tensor is missing")
            }
            var last = t.offset, count = 1
            for (n, st) in Swift.zip(t.shape, t.strides) {
                let c = count.multipliedReportingOverflow(by: n)
                let span = (n == 0 ? 0 : n - 1).multipliedReportingOverflow(by: st)
                guard !c.overflow, !span.overflow, !last.addingReportingOverflow(span.partialValue).overflow else {
                    throw TorchBinError(.invalidTensor, file: path, key: name, "size \(describe(t.shape)) with stride \(describe(t.strides)) overflows")
                }
                count = c.partialValue
                last += span.partialValue
            }
            if count > 0 && last >= s.count {
                throw TorchBinError(.invalidTensor, file: path, key: name,
                                    "size \(describe(t.shape)), stride \(describe(t.strides)) and offset \(t.offset) reach element \(last) of a storage of \(s.count) \(s.dtype.name) elements")
            }
            if out[name] == nil { order.append(name) }
            out[name] = TorchBinEntry(dtype: s.dtype, shape: t.shape, strides: t.strides, storageOffset: t.offset,
                                      storageKey: s.key, storageCount: s.count,
                                      storageFileOffset: loc.offset + s.elementOffset * s.dtype.byteSize)
        }
        names = order
        entries = out
        ignoredKeys = ignored
    }

    /// The archive's directory: the one holding `data.pkl` (torch reads the first entry's directory).
    static func findPrefix(_ z: ZipArchive, _ path: String) throws -> String {
        if let first = z.entries.first, let slash = first.name.firstIndex(of: "/") {
            let p = String(first.name[..<slash])
            if z.entry("\(p)/data.pkl") != nil { return p }
        }
        let candidates = z.entries.compactMap { e -> String? in
            let parts = e.name.split(separator: "/", omittingEmptySubsequences: false)
            return parts.count == 2 && parts[1] == "data.pkl" ? String(parts[0]) : nil
        }
        if candidates.count == 1 { return candidates[0] }
        if candidates.count > 1 {
            throw TorchBinError(.zipFormat, file: path, "the archive has several data.pkl entries (\(candidates.map { "\($0)/data.pkl" }.joined(separator: ", ")))")
        }
        let hint = z.entries.contains { $0.name.hasSuffix("/constants.pkl") || $0.name.contains("/code/") }
            ? ": it looks like a TorchScript archive (torch.jit.save), not a torch.save checkpoint" : " (not a torch.save checkpoint?)"
        throw TorchBinError(.missingEntry, file: path, "missing zip entry: no '<dir>/data.pkl' in the archive's \(z.entries.count) entries\(hint)")
    }

    /// `('storage', torch.XStorage, key, location, numel)`, and in the legacy format
    /// `('storage', torch.XStorage, root_key, location, root_numel, view_metadata)` where view_metadata is
    /// None or `(view_key, offset, view_numel)`.
    static func storage(fromPersistentID pid: PickleValue, legacy: Bool, _ u: Unpickler) throws -> TorchStorageRef {
        guard case .tuple(let t) = pid, t.items.count == (legacy ? 6 : 5), case .string("storage") = t.items[0] else {
            let what: String
            if case .tuple(let t) = pid, let f = t.items.first, case .string(let s) = f { what = "'\(s)' with \(t.items.count) fields" } else { what = pid.kindName }
            throw u.unsupported("a persistent id \(what) (expected ('storage', type, key, location, numel\(legacy ? ", view" : "")))")
        }
        let a = t.items
        guard case .global(.storage(let dtype, let typeName)) = a[1] else { throw u.unsupported("a persistent id whose storage type is a \(a[1].kindName)") }
        guard case .string(let key) = a[2], !key.isEmpty, !key.contains("/") else { throw u.unsupported("a persistent id whose key is not a plain string") }
        guard case .string = a[3] else { throw u.unsupported("a persistent id whose location is a \(a[3].kindName)") }
        guard case .int(let n) = a[4], n >= 0, n <= Int64(Int.max / 16) else { throw u.unsupported("a persistent id whose element count is not a non-negative integer") }
        var count = Int(n), offset = 0
        if legacy, case .tuple(let view) = a[5] {
            guard view.items.count == 3, case .int(let o) = view.items[1], case .int(let vn) = view.items[2],
                  o >= 0, vn >= 0, o <= n, vn <= n - o else { throw u.unsupported("a storage view outside its storage") }
            offset = Int(o)
            count = Int(vn)
        } else if legacy, case .none = a[5] {
        } else if legacy {
            throw u.unsupported("a persistent id whose view is a \(a[5].kindName)")
        }
        return TorchStorageRef(key: key, dtype: dtype, typeName: typeName, count: count, elementOffset: offset, rootCount: Int(n))
    }

    /// The tensors of the top-level dict, in order, and the keys of its other values.
    static func collect(_ v: PickleValue, _ path: String, _ part: String) throws -> ([(String, TorchTensorRef)], [String]) {
        guard case .dict(let d) = v else {
            throw TorchBinError(.unsupportedObject, file: path, key: part, "the checkpoint holds a \(v.kindName), not a dict of tensors")
        }
        var tensors: [(String, TorchTensorRef)] = [], other: [String] = []
        for (k, value) in Swift.zip(d.keys, d.values) {
            guard case .string(let name) = k else {
                throw TorchBinError(.unsupportedObject, file: path, key: part, "the checkpoint dict has a key that is not a string")
            }
            if case .tensor(let t) = value { tensors.append((name, t)) } else { other.append(name) }
        }
        return (tensors, other)
    }

    static let legacyMagic: [UInt8] = [0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19]  // 0x1950a86a20f9469cfc6c

    /// The legacy stream, or nil when the file does not start with its magic number.
    static func readLegacy(_ bytes: UnsafeRawBufferPointer, _ path: String) throws
        -> (tensors: [(String, TorchTensorRef)], ignored: [String], storages: [String: (offset: Int, bytes: Int)])? {
        // PROTO 2, LONG1 10 <magic>
        guard bytes.count >= 14, bytes[0] == 0x80, bytes[2] == 0x8A, bytes[3] == 10,
              Array(bytes[4..<14]) == legacyMagic else { return nil }
        let noPID: (PickleValue, Unpickler) throws -> PickleValue = { _, u in throw u.unsupported("a persistent id outside the object pickle") }
        var pos = 0
        func plain<R>(_ part: String, _ use: (PickleValue) throws -> R) throws -> R {
            var u = Unpickler(bytes, at: pos, file: path, part: part, persistentLoad: noPID)
            let r = try u.load(use)
            pos = u.pos
            return r
        }
        _ = try plain("legacy magic number") { _ in 0 }
        let version = try plain("legacy protocol version") { v -> Int64 in if case .int(let i) = v { return i } else { return -1 } }
        guard version == 1001 else {
            throw TorchBinError(.unsupportedFormat, file: path, "legacy torch.save stream with protocol version \(version) (only 1001 is known)")
        }
        let little = try plain("legacy sys_info") { v -> Bool? in
            guard case .dict(let d) = v, case .bool(let b)? = d.get(.string("little_endian")) else { return nil }
            return b
        }
        guard let little else { throw TorchBinError(.unsupportedFormat, file: path, key: "legacy sys_info", "no little_endian flag") }
        guard little else {
            throw TorchBinError(.bigEndian, file: path, key: "legacy sys_info", "the tensors were saved big-endian (little_endian False): only little-endian data is supported")
        }
        var refs: [String: TorchStorageRef] = [:]
        var u = Unpickler(bytes, at: pos, file: path, part: "legacy object pickle") { pid, u in
            let s = try storage(fromPersistentID: pid, legacy: true, u)
            if let old = refs[s.key], old.dtype != s.dtype || old.rootCount != s.rootCount {
                throw u.unsupported("storage '\(s.key)' is used as \(old.rootCount) \(old.dtype.name) and as \(s.rootCount) \(s.dtype.name) elements")
            }
            refs[s.key] = s
            return .storage(s)
        }
        let (tensors, ignored) = try u.load { try collect($0, path, "legacy object pickle") }
        pos = u.pos
        let keys = try plain("legacy storage keys") { v -> [String]? in
            guard case .list(let l) = v else { return nil }
            return l.items.compactMap { if case .string(let s) = $0 { return s } else { return nil } }
        }
        guard let keys else { throw TorchBinError(.unsupportedFormat, file: path, key: "legacy storage keys", "not a list of strings") }
        var storages: [String: (offset: Int, bytes: Int)] = [:]
        for key in keys {
            guard let s = refs[key] else {
                throw TorchBinError(.unsupportedFormat, file: path, key: key, "the legacy stream stores a storage that no tensor uses (its element size is unknown)")
            }
            guard pos + 8 <= bytes.count else {
                throw TorchBinError(.truncated, file: path, key: key, "truncated: the stream ends before storage '\(key)' (at byte \(pos) of \(bytes.count))")
            }
            let n = Int64(littleEndian: bytes.loadUnaligned(fromByteOffset: pos, as: Int64.self))
            guard n == Int64(s.rootCount) else {
                throw TorchBinError(.invalidTensor, file: path, key: key, "storage '\(key)' holds \(n) elements but the pickle describes \(s.rootCount)")
            }
            let nbytes = s.rootCount * s.dtype.byteSize
            guard nbytes <= bytes.count - pos - 8 else {
                throw TorchBinError(.truncated, file: path, key: key,
                                    "truncated: storage '\(key)' needs \(nbytes) bytes at byte \(pos + 8) but the file has \(bytes.count)")
            }
            storages[key] = (pos + 8, nbytes)
            pos += 8 + nbytes
        }
        return (tensors, ignored, storages)
    }

    // MARK: access

    public func contains(_ name: String) -> Bool { entries[name] != nil }

    /// dtype, shape and layout of a tensor.
    public func info(_ name: String) throws -> TorchBinEntry {
        guard let e = entries[name] else {
            throw TorchBinError(.tensorNotFound, file: path, key: name, "no such tensor (the file has \(names.count))")
        }
        return e
    }

    /// Checks the CRC-32 of every storage entry against the archive's records (reads all the data; the
    /// legacy format has no checksums).
    public func verifyChecksums() throws {
        guard let zip, let prefix = archivePrefix else { return }
        for key in Set(entries.values.map(\.storageKey)).sorted() {
            _ = try zip.verifiedBytes(zip.entry("\(prefix)/data/\(key)")!)
        }
    }

    /// Calls `body` for each innermost row of a strided view: (storage element of the row's start, index
    /// of the row's first element in row-major order, row length, stride along the row).
    static func forEachRow(_ e: TorchBinEntry, _ body: (Int, Int, Int, Int) -> Void) {
        let r = e.shape.count
        if r == 0 { body(e.storageOffset, 0, 1, 1); return }
        let n = e.shape[r - 1], s = e.strides[r - 1]
        let outer = product(Array(e.shape.dropLast()))
        var idx = [Int](repeating: 0, count: r - 1)
        var src = e.storageOffset
        for o in 0..<outer {
            body(src, o * n, n, s)
            var k = r - 2
            while k >= 0 {
                idx[k] += 1
                src += e.strides[k]
                if idx[k] < e.shape[k] { break }
                src -= e.strides[k] * e.shape[k]
                idx[k] = 0
                k -= 1
            }
        }
    }

    private func storageBase(_ e: TorchBinEntry) -> UnsafeRawPointer { map.base! + e.storageFileOffset }

    /// The tensor converted to fp32 (F32, F16, BF16 exactly; F64 rounded to nearest). Non-contiguous
    /// views are gathered into a contiguous tensor.
    public func tensor(_ name: String) throws -> Tensor {
        let e = try info(name)
        guard TorchBin.isFloat(e.dtype) else {
            let hint = TorchBin.isInteger(e.dtype) ? "it is an integer tensor: read it with ints(_:)" :
                "only F32, F16, BF16 and F64 convert to fp32"
            throw TorchBinError(.unsupportedDType, file: path, key: name, "dtype \(e.dtype.name) is not supported here: \(hint)")
        }
        let t = Tensor(empty: e.shape)
        if e.count == 0 { return t }
        let src = storageBase(e), es = e.dtype.byteSize, dst = t.ptr
        func run(_ p: UnsafeRawPointer, _ d: UnsafeMutablePointer<Float>, _ n: Int) {
            if e.dtype == .f64 {
                for i in 0..<n { d[i] = Float(p.loadUnaligned(fromByteOffset: 8 * i, as: Double.self)) }
            } else {
                Convert.toF32(e.dtype, p, d, count: n)
            }
        }
        withExtendedLifetime(map) {
            if e.isContiguous {
                run(src + e.storageOffset * es, dst, e.count)
                return
            }
            Self.forEachRow(e) { start, at, n, stride in
                if stride == 1 { run(src + start * es, dst + at, n); return }
                for j in 0..<n { run(src + (start + j * stride) * es, dst + at + j, 1) }
            }
        }
        return t
    }

    /// Every F32/F16/BF16/F64 tensor in fp32, by name (integer buffers such as position_ids are skipped).
    public func floatTensors() throws -> [String: Tensor] {
        var out: [String: Tensor] = [:]
        for n in names where TorchBin.isFloat(entries[n]!.dtype) { out[n] = try tensor(n) }
        return out
    }

    /// An integer tensor (I64, I32, I16, I8, U8, BOOL as 0/1) in row-major order; the shape is
    /// `info(name).shape`.
    public func ints(_ name: String) throws -> [Int64] {
        let e = try info(name)
        guard TorchBin.isInteger(e.dtype) else {
            throw TorchBinError(.unsupportedDType, file: path, key: name,
                                "dtype \(e.dtype.name) is not an integer type we read (I64, I32, I16, I8, U8, BOOL)")
        }
        if e.count == 0 { return [] }
        let src = storageBase(e), es = e.dtype.byteSize
        func load(_ i: Int) -> Int64 {
            let o = i * es
            switch e.dtype {
            case .i64: return Int64(littleEndian: src.loadUnaligned(fromByteOffset: o, as: Int64.self))
            case .i32: return Int64(Int32(littleEndian: src.loadUnaligned(fromByteOffset: o, as: Int32.self)))
            case .i16: return Int64(Int16(littleEndian: src.loadUnaligned(fromByteOffset: o, as: Int16.self)))
            case .i8: return Int64(src.load(fromByteOffset: o, as: Int8.self))
            case .u8: return Int64(src.load(fromByteOffset: o, as: UInt8.self))
            default: return src.load(fromByteOffset: o, as: UInt8.self) != 0 ? 1 : 0
            }
        }
        var out = [Int64](repeating: 0, count: e.count)
        withExtendedLifetime(map) {
            Self.forEachRow(e) { start, at, n, stride in
                for j in 0..<n { out[at + j] = load(start + j * stride) }
            }
        }
        return out
    }

    /// The tensor as bf16. Contiguous BF16 data is not copied: the result points into the mapped file and
    /// keeps it alive. Other float tensors are converted (F32, F16 and F64 rounded to nearest even).
    public func bf16(_ name: String) throws -> BF16Tensor {
        let e = try info(name)
        if e.dtype == .bf16, e.count > 0, e.isContiguous {
            return BF16Tensor(base: storageBase(e) + 2 * e.storageOffset, shape: e.shape, owner: map)
        }
        return BF16Tensor(try tensor(name))
    }
}
