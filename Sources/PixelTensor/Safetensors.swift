import CPixelShims
import Foundation
import PixelJSON

// safetensors files: `[u64 little-endian N][N bytes of UTF-8 JSON header][data]`. The reader applies the
// checks of huggingface/safetensors `tensor.rs` (`read_metadata`, `Metadata::validate`) and also rejects
// duplicate keys, which the format forbids but serde lets through.

/// What is wrong with a safetensors file (`SafetensorsError.kind`).
public enum SafetensorsErrorKind: String, Sendable {
    case io, headerTooSmall, headerTooLarge, invalidHeaderLength, invalidUTF8, invalidHeaderStart, invalidJSON
    case invalidHeader, duplicateKey, unknownDType, invalidOffset, tensorInvalidInfo, misalignedSlice
    case validationOverflow, incompleteBuffer, tensorNotFound, unsupportedDType, invalidName, invalidIndex
    case missingShard
}

public typealias SafetensorsError = CheckpointError<SafetensorsErrorKind>

/// One tensor of a safetensors header. `begin` and `end` are byte offsets into the data section (the file
/// offset is `8 + headerLength + begin`).
public struct SafetensorsEntry: Sendable, Equatable {
    public let dtype: DType
    public let shape: [Int]
    public let begin: Int
    public let end: Int
    public var count: Int { product(shape) }
    public var byteCount: Int { end - begin }
}

// MARK: - reading

/// A read-only memory map of a whole file, unmapped when the last user (file, `BF16Tensor`) goes away.
///
/// A mapping reads the file, not a copy: a file truncated or rewritten in place under a running job would hand out
/// other bytes, or a SIGBUS on the pages that are gone. So the map keeps its descriptor and, at open, the file's
/// identity (device, inode), size, modification time and a CRC-32 over sampled pages (up to 256 pages of 4 KiB spread
/// over the file: every page of a file up to 1 MiB); `verify()` compares them again (`MappedFiles.verifyAll()`, which
/// the trainer calls every step and chat / eval before they generate). A SIGBUS inside the mapping (a truncation
/// between two checks) names the file and exits with status 74 (CPixelShims mapguard.c) instead of dying by the signal.
/// A file replaced by rename or removed is no change: the mapping keeps the old inode's bytes.
final class MappedFile: @unchecked Sendable {
    let base: UnsafeRawPointer?
    let size: Int
    let path: String
    private let fd: Int32
    private let identity: (device: UInt64, inode: UInt64, seconds: Int, nanoseconds: Int)
    let sampleCRC: UInt32

    init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw SafetensorsError(.io, file: path, "cannot open: \(String(cString: strerror(errno)))")
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let why = String(cString: strerror(errno))
            close(fd)
            throw SafetensorsError(.io, file: path, "fstat failed: \(why)")
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else { close(fd); throw SafetensorsError(.io, file: path, "not a regular file") }
        size = Int(st.st_size)
        identity = Self.identity(st)
        if size == 0 { base = nil; self.fd = fd; sampleCRC = 0; return }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != UnsafeMutableRawPointer(bitPattern: -1) else {
            let why = String(cString: strerror(errno))
            close(fd)
            throw SafetensorsError(.io, file: path, "mmap of \(size) bytes failed: \(why)")
        }
        base = UnsafeRawPointer(p)
        self.fd = fd
        _ = pixel_mapguard_register(p, size, path)
        sampleCRC = Self.sampledCRC(UnsafeRawPointer(p), size: size)
        Self.faultHook(path, fd: fd, size: size)
        MappedFiles.add(self)
    }

    deinit {
        MappedFiles.remove(self)
        if let base {
            pixel_mapguard_unregister(base)
            munmap(UnsafeMutableRawPointer(mutating: base), size)
        }
        close(fd)
    }

    static func identity(_ st: stat) -> (device: UInt64, inode: UInt64, seconds: Int, nanoseconds: Int) {
        (UInt64(st.st_dev), UInt64(st.st_ino), Int(st.st_mtim.tv_sec), Int(st.st_mtim.tv_nsec))
    }

    static let samplePage = 4096, maxSamples = 256

    /// CRC-32 over up to `maxSamples` pages spread evenly over the file (every page of a small file).
    static func sampledCRC(_ base: UnsafeRawPointer, size: Int) -> UInt32 {
        let pages = (size + samplePage - 1) / samplePage
        let stride = max(1, (pages + maxSamples - 1) / maxSamples)
        var crc: UInt32 = 0
        for page in Swift.stride(from: 0, to: pages, by: stride) {
            let off = page * samplePage
            crc = CRC32.checksum(UnsafeRawBufferPointer(start: base + off, count: min(samplePage, size - off)), initial: crc)
        }
        return crc
    }

    /// What changed since open (nil: nothing). Reads only the sampled pages, and only when the size still holds them.
    func verify() -> String? {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return "fstat failed: \(String(cString: strerror(errno)))" }
        let now = Self.identity(st)
        if Int(st.st_size) != size {
            return Int(st.st_size) < size ? "truncated under this process: \(st.st_size) bytes, \(size) when it was mapped"
                : "grown under this process: \(st.st_size) bytes, \(size) when it was mapped (rewritten in place?)"
        }
        if let base, Self.sampledCRC(base, size: size) != sampleCRC {
            return "its bytes changed under this process (CRC-32 of the sampled pages differs from the one at open)"
        }
        if now.seconds != identity.seconds || now.nanoseconds != identity.nanoseconds {
            return "modified under this process (its modification time changed since it was mapped)"
        }
        return nil
    }

    /// Fault injection for tests (RELIABILITY.md): PIXELLM_FAULT_TRUNCATE_MAPPED=NAME halves the file whose name ends
    /// with NAME right after it is mapped, so that a later read of its second half meets the SIGBUS guard.
    static func faultHook(_ path: String, fd: Int32, size: Int) {
        guard let name = ProcessInfo.processInfo.environment["PIXELLM_FAULT_TRUNCATE_MAPPED"], !name.isEmpty, path.hasSuffix(name) else { return }
        let w = open(path, O_WRONLY | O_CLOEXEC)
        if w >= 0 { _ = ftruncate(w, off_t(size / 2)); close(w) }
    }
}

/// The mapped files alive in this process (every `SafetensorsFile` and what it lent out).
public enum MappedFiles {
    nonisolated(unsafe) private static var live: [ObjectIdentifier: Weak] = [:]
    private static let lock = NSLock()
    private struct Weak { weak var file: MappedFile? }

    static func add(_ f: MappedFile) { lock.lock(); live[ObjectIdentifier(f)] = Weak(file: f); lock.unlock() }
    static func remove(_ f: MappedFile) { lock.lock(); live[ObjectIdentifier(f)] = nil; lock.unlock() }

    /// How many files are mapped now.
    public static var count: Int { lock.lock(); defer { lock.unlock() }; return live.values.filter { $0.file != nil }.count }

    /// Drops every mapped file's resident pages from this process (madvise DONTNEED; the page cache keeps them, so a
    /// later read faults them back in without I/O). After a load, the pages of the tensors that were copied to fp32
    /// (embeddings, LM head, CLIP in fp32) would otherwise stay in the process's RSS as long as the file stays mapped
    /// for the tensors used in place (0.5-1.1 GB at the 7B shape).
    public static func releaseResidentPages() {
        lock.lock()
        let files = live.values.compactMap(\.file)
        lock.unlock()
        for f in files {
            if let base = f.base { _ = madvise(UnsafeMutableRawPointer(mutating: base), f.size, MADV_DONTNEED) }
        }
    }

    /// CRC-32 over every mapped file's name (without its directory), size and sampled-page CRC, in name order: equal on
    /// two ranks that mapped the same files (each node may hold its own copy of a base, at another path).
    public static func fingerprint() -> UInt32 {
        lock.lock()
        let files = live.values.compactMap(\.file)
        lock.unlock()
        var crc: UInt32 = 0
        for f in files.map({ (($0.path as NSString).lastPathComponent, $0.size, $0.sampleCRC) }).sorted(by: { ($0.0, $0.1) < ($1.0, $1.1) }) {
            let text = "\(f.0) \(f.1) \(f.2)\n"
            crc = Array(text.utf8).withUnsafeBytes { CRC32.checksum($0, initial: crc) }
        }
        return crc
    }

    /// Throws naming the first mapped file that was truncated or changed since it was mapped.
    public static func verifyAll() throws {
        lock.lock()
        let files = live.values.compactMap(\.file)
        lock.unlock()
        for f in files.sorted(by: { $0.path < $1.path }) {
            if let why = f.verify() {
                throw SafetensorsError(.io, file: f.path, "a memory-mapped weight file changed: \(why); restore it and start again (a training run resumes from its last checkpoint)")
            }
        }
    }
}

/// A safetensors file, memory-mapped and validated on open. Tensor data is converted on request:
/// F32/F16/BF16 into fp32 `Tensor`s (or kept as bf16 with `bf16(_:)`), I64/I32/U8/BOOL into `[Int64]`.
/// Other dtypes are listed and described but refused when their data is asked for.
public final class SafetensorsFile: @unchecked Sendable {
    public static let maxHeaderSize = 100_000_000

    public let path: String
    /// Tensor names in the order of their data in the file.
    public let names: [String]
    /// The `__metadata__` map (empty when the file has none).
    public let metadata: [String: String]
    /// N, the header length in bytes.
    public let headerLength: Int
    public var fileSize: Int { map.size }
    /// Data section start (8 + N); unaligned when the header is not padded (MLX).
    public var dataOffset: Int { 8 + headerLength }

    let map: MappedFile
    let entries: [String: SafetensorsEntry]

    public init(_ path: String) throws {
        self.path = path
        map = try MappedFile(path: path)
        let size = map.size
        guard size >= 8, let base = map.base else {
            throw SafetensorsError(.headerTooSmall, file: path, "truncated: the file has \(size) bytes, fewer than the 8-byte header length")
        }
        let n64 = base.loadUnaligned(as: UInt64.self).littleEndian
        guard n64 <= UInt64(Self.maxHeaderSize) else {
            throw SafetensorsError(.headerTooLarge, file: path, "header length \(n64) exceeds the limit of \(Self.maxHeaderSize) bytes")
        }
        let n = Int(n64)
        guard 8 + n <= size else {
            throw SafetensorsError(.invalidHeaderLength, file: path,
                                   "truncated: header length \(n) runs past the end of the file (\(size) bytes, so at most \(size - 8) header bytes)")
        }
        headerLength = n
        let header = UnsafeRawBufferPointer(start: base + 8, count: n)
        guard let _ = String(validating: header, as: UTF8.self) else {
            throw SafetensorsError(.invalidUTF8, file: path, "the header is not valid UTF-8")
        }
        guard n > 0, header[0] == UInt8(ascii: "{") else {
            throw SafetensorsError(.invalidHeaderStart, file: path, "the header does not start with '{' (not a safetensors file?)")
        }
        let json: JSONValue
        do {
            json = try JSONParser.parse(header)
        } catch let e as JSONParser.Failure {
            if let dup = e.duplicateKey {
                throw SafetensorsError(.duplicateKey, file: path, key: dup, "duplicate key in the header\(e.context)")
            }
            throw SafetensorsError(.invalidJSON, file: path, "the header is not valid JSON: \(e.message) at header byte \(e.offset)")
        }
        guard case .object(let members) = json else {
            throw SafetensorsError(.invalidHeader, file: path, "the header is not a JSON object")
        }
        var meta: [String: String] = [:]
        var list: [(String, SafetensorsEntry)] = []
        for (key, value) in members {
            if key == "__metadata__" {
                meta = try Self.parseMetadata(value, path)
            } else {
                list.append((key, try Self.parseEntry(key, value, path)))
            }
        }
        metadata = meta
        list.sort { ($0.1.begin, $0.1.end) < ($1.1.begin, $1.1.end) }
        try Self.validate(list, dataSize: size - 8 - n, path: path)
        names = list.map(\.0)
        entries = Dictionary(uniqueKeysWithValues: list)
    }

    static func parseMetadata(_ value: JSONValue, _ path: String) throws -> [String: String] {
        if case .null = value { return [:] }
        guard case .object(let kv) = value else {
            throw SafetensorsError(.invalidHeader, file: path, key: "__metadata__", "must be an object of strings")
        }
        var out: [String: String] = [:]
        for (k, v) in kv {
            guard case .string(let s) = v else {
                throw SafetensorsError(.invalidHeader, file: path, key: "__metadata__", "value of '\(k)' is not a string")
            }
            out[k] = s
        }
        return out
    }

    static func parseEntry(_ name: String, _ value: JSONValue, _ path: String) throws -> SafetensorsEntry {
        func bad(_ m: String) -> SafetensorsError { SafetensorsError(.invalidHeader, file: path, key: name, m) }
        func naturals(_ a: [JSONValue], _ what: String, _ v: JSONValue) throws -> [Int] {
            try a.map { x in
                guard let n = x.usize() else { throw bad("\(what) \(v.text) holds something other than a non-negative integer") }
                return n
            }
        }
        guard case .object(let fields) = value else { throw bad("entry is not an object with dtype, shape and data_offsets") }
        var dtype: DType?, shape: [Int]?, offsets: [Int]?
        for (k, v) in fields {
            switch k {
            case "dtype":
                guard case .string(let s) = v else { throw bad("dtype is not a string") }
                guard let d = DType(rawValue: s) else {
                    throw SafetensorsError(.unknownDType, file: path, key: name, "unknown dtype '\(s)'")
                }
                dtype = d
            case "shape":
                guard case .array(let a) = v else { throw bad("shape is not an array") }
                shape = try naturals(a, "shape", v)
            case "data_offsets":
                guard case .array(let a) = v, a.count == 2 else { throw bad("data_offsets is not an array [begin, end]") }
                offsets = try naturals(a, "data_offsets", v)
            default:
                break  // serde ignores unknown fields
            }
        }
        guard let dtype else { throw bad("missing field dtype") }
        guard let shape else { throw bad("missing field shape") }
        guard let offsets else { throw bad("missing field data_offsets") }
        return SafetensorsEntry(dtype: dtype, shape: shape, begin: offsets[0], end: offsets[1])
    }

    /// `Metadata::validate` plus the final size check of `read_metadata`, with messages that say what is wrong.
    static func validate(_ list: [(String, SafetensorsEntry)], dataSize: Int, path: String) throws {
        var start = 0
        var previous: String?
        for (name, e) in list {
            if e.end < e.begin {
                throw SafetensorsError(.invalidOffset, file: path, key: name, "data_offsets [\(e.begin), \(e.end)] end before they begin")
            }
            if e.begin > start {
                throw SafetensorsError(.invalidOffset, file: path, key: name,
                                       "hole in the data: bytes \(start)..<\(e.begin) belong to no tensor (this tensor begins at \(e.begin), "
                                           + (previous.map { "'\($0)' ends at \(start)" } ?? "the data section begins at 0") + ")")
            }
            if e.begin < start {
                throw SafetensorsError(.invalidOffset, file: path, key: name,
                                       "overlaps '\(previous ?? "")': it begins at \(e.begin) but '\(previous ?? "")' ends at \(start)")
            }
            start = e.end
            previous = name
            var numel = 1
            for d in e.shape {
                let (m, o) = numel.multipliedReportingOverflow(by: d)
                if o { throw SafetensorsError(.validationOverflow, file: path, key: name, "shape \(describe(e.shape)) overflows") }
                numel = m
            }
            let (bits, o) = numel.multipliedReportingOverflow(by: e.dtype.bitSize)
            if o { throw SafetensorsError(.validationOverflow, file: path, key: name, "shape \(describe(e.shape)) of \(e.dtype.name) overflows") }
            if bits % 8 != 0 {
                throw SafetensorsError(.misalignedSlice, file: path, key: name,
                                       "\(numel) elements of \(e.dtype.name) (\(e.dtype.bitSize) bits) do not fill whole bytes")
            }
            if e.end - e.begin != bits / 8 {
                throw SafetensorsError(.tensorInvalidInfo, file: path, key: name,
                                       "data_offsets [\(e.begin), \(e.end)] hold \(e.end - e.begin) bytes but dtype \(e.dtype.name) and shape \(describe(e.shape)) need \(bits / 8)")
            }
            if e.end > dataSize {
                throw SafetensorsError(.incompleteBuffer, file: path, key: name,
                                       "data_offsets [\(e.begin), \(e.end)] run past the end of the file: the data section has \(dataSize) bytes (truncated file?)")
            }
        }
        if start != dataSize {
            throw SafetensorsError(.incompleteBuffer, file: path,
                                   "the tensors cover \(start) bytes but the data section has \(dataSize): \(dataSize - start) trailing bytes after the last tensor")
        }
    }

    // MARK: access

    public func contains(_ name: String) -> Bool { entries[name] != nil }

    /// dtype, shape and offsets of a tensor.
    public func info(_ name: String) throws -> SafetensorsEntry {
        guard let e = entries[name] else {
            throw SafetensorsError(.tensorNotFound, file: path, key: name, "no such tensor (the file has \(names.count))")
        }
        return e
    }

    /// Calls `body` with the tensor's raw little-endian bytes (any alignment; valid only inside `body`).
    public func withRawBytes<R>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        let e = try info(name)
        let p = map.base.map { $0 + dataOffset + e.begin }
        return try withExtendedLifetime(map) { try body(UnsafeRawBufferPointer(start: e.byteCount == 0 ? nil : p, count: e.byteCount)) }
    }

    private func requireFloat(_ name: String, _ e: SafetensorsEntry) throws {
        guard e.dtype.isFloatReadable else {
            let hint = e.dtype.isIntegerReadable ? "it is an integer tensor: read it with ints(_:)" :
                "only F32, F16 and BF16 convert to fp32 (I64, I32, U8, BOOL read as integers)"
            throw SafetensorsError(.unsupportedDType, file: path, key: name, "dtype \(e.dtype.name) is not supported here: \(hint)")
        }
    }

    /// The tensor converted to fp32 (F32, F16, BF16; exact).
    public func tensor(_ name: String) throws -> Tensor {
        let e = try info(name)
        try requireFloat(name, e)
        let t = Tensor(empty: e.shape)
        if e.count > 0 {
            try withRawBytes(name) { Convert.toF32(e.dtype, $0.baseAddress!, t.ptr, count: e.count) }
        }
        return t
    }

    /// Every F32/F16/BF16 tensor in fp32, by name (integer buffers such as position_ids are skipped).
    public func floatTensors() throws -> [String: Tensor] {
        var out: [String: Tensor] = [:]
        for n in names where entries[n]!.dtype.isFloatReadable { out[n] = try tensor(n) }
        return out
    }

    /// An integer tensor (I64, I32, U8, BOOL as 0/1) in row-major order; the shape is `info(name).shape`.
    public func ints(_ name: String) throws -> [Int64] {
        let e = try info(name)
        guard e.dtype.isIntegerReadable else {
            throw SafetensorsError(.unsupportedDType, file: path, key: name,
                                   "dtype \(e.dtype.name) is not an integer type we read (I64, I32, U8, BOOL)")
        }
        if e.count == 0 { return [] }
        return try withRawBytes(name) { raw in
            let p = raw.baseAddress!
            switch e.dtype {
            case .i64: return (0..<e.count).map { Int64(littleEndian: p.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self)) }
            case .i32: return (0..<e.count).map { Int64(Int32(littleEndian: p.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self))) }
            case .u8: return (0..<e.count).map { Int64(raw[$0]) }
            default: return (0..<e.count).map { raw[$0] != 0 ? 1 : 0 }
            }
        }
    }

    /// The tensor as bf16. BF16 data is not copied: the result points into the mapped file and keeps it
    /// alive. F32 and F16 are rounded to bf16 (nearest even).
    public func bf16(_ name: String) throws -> BF16Tensor {
        let e = try info(name)
        try requireFloat(name, e)
        if e.dtype == .bf16, e.count > 0, let base = map.base {
            return BF16Tensor(base: base + dataOffset + e.begin, shape: e.shape, owner: map)
        }
        return BF16Tensor(try tensor(name))
    }
}

// MARK: - writing

public enum Safetensors {
    public static let indexName = "model.safetensors.index.json"
    public static let singleName = "model.safetensors"

    /// Shard file name as written by transformers: `model-00001-of-00003.safetensors`.
    public static func shardName(_ i: Int, of n: Int) -> String {
        func pad(_ v: Int) -> String { let s = String(v); return String(repeating: "0", count: max(0, 5 - s.count)) + s }
        return "model-\(pad(i))-of-\(pad(n)).safetensors"
    }

    /// Byte order of names, as Rust's `str::cmp`.
    static func sortedNames<S: Sequence>(_ names: S) -> [String] where S.Element == String {
        names.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
    }

    static func ioError(_ file: String, _ message: String) -> Error { SafetensorsError(.io, file: file, message) }

    static func checkWritable(_ dtype: DType, _ path: String) throws {
        guard dtype == .f32 || dtype == .f16 || dtype == .bf16 else {
            throw SafetensorsError(.unsupportedDType, file: path, "cannot write dtype \(dtype.name): only F32, F16 and BF16")
        }
    }

    /// The padded header for tensors written in name order (what `safetensors.torch.save_file` produces
    /// when every tensor has the same dtype): compact JSON, `__metadata__` first, spaces up to a multiple of 8.
    static func header(_ tensors: [(String, [Int])], dtype: DType, metadata: [String: String]?) -> [UInt8] {
        var s = "{"
        var first = true
        if let metadata {
            s += "\"__metadata__\":{"
            s += sortedNames(metadata.keys).map { jsonString($0) + ":" + jsonString(metadata[$0]!) }.joined(separator: ",")
            s += "}"
            first = false
        }
        var offset = 0
        for (name, shape) in tensors {
            let bytes = product(shape) * dtype.byteSize
            if !first { s += "," }
            first = false
            s += jsonString(name) + ":{\"dtype\":\"\(dtype.name)\",\"shape\":[" + shape.map(String.init).joined(separator: ",")
                + "],\"data_offsets\":[\(offset),\(offset + bytes)]}"
            offset += bytes
        }
        s += "}"
        var out = Array(s.utf8)
        out += [UInt8](repeating: UInt8(ascii: " "), count: (8 - out.count % 8) % 8)
        return out
    }

    /// JSON string literal escaped as serde_json does.
    static func jsonString(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if u.value < 0x20 {
                    let h = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }

    /// Writes `tensors` as one safetensors file in `dtype` (F32, F16 or BF16; rounding to nearest even),
    /// sorted by name, header padded to 8 bytes. Atomic: a temporary file is written, fsynced and renamed
    /// over `path`, so `path` is never left half-written.
    public static func write(_ tensors: [String: Tensor], to path: String, dtype: DType = .f32,
                             metadata: [String: String]? = nil) throws {
        try write(shapes: tensors.mapValues(\.shape), to: path, dtype: dtype, metadata: metadata) { tensors[$0]! }
    }

    /// Streaming form: the header from `shapes`, then `produce(name)` once per tensor in name order, each written
    /// and dropped before the next is asked for (peak memory: the largest tensor). A produced tensor must have its
    /// declared shape.
    public static func write(shapes: [String: [Int]], to path: String, dtype: DType = .f32, metadata: [String: String]? = nil,
                             produce: (String) throws -> Tensor) throws {
        try checkWritable(dtype, path)
        if shapes["__metadata__"] != nil {
            throw SafetensorsError(.invalidName, file: path, key: "__metadata__", "reserved name, cannot be a tensor")
        }
        let order = sortedNames(shapes.keys)
        let head = header(order.map { ($0, shapes[$0]!) }, dtype: dtype, metadata: metadata)
        try AtomicFile.write(path, error: ioError) { w in
            var n = UInt64(head.count).littleEndian
            try withUnsafeBytes(of: &n) { try w.write($0) }
            try head.withUnsafeBytes { try w.write($0) }
            let chunk = 1 << 18
            let buf = UnsafeMutableRawPointer.allocate(byteCount: chunk * 4, alignment: 64)
            defer { buf.deallocate() }
            for name in order {
                let t = try produce(name).contiguousData()
                guard t.shape == shapes[name]! else {
                    throw SafetensorsError(.tensorInvalidInfo, file: path, key: name, "produced \(t.shape), declared \(shapes[name]!)")
                }
                var i = 0
                while i < t.count {
                    let m = min(chunk, t.count - i)
                    if dtype == .f32 {
                        try w.write(UnsafeRawBufferPointer(start: t.ptr + i, count: 4 * m))
                    } else {
                        Convert.fromF32(dtype, t.ptr + i, buf, count: m)
                        try w.write(UnsafeRawBufferPointer(start: buf, count: 2 * m))
                    }
                    i += m
                }
            }
        }
    }

    /// Writes a checkpoint directory the way transformers' `save_pretrained` does: tensors in name order
    /// are packed greedily into shards of at most `maxShardBytes` (a larger tensor gets a shard of its
    /// own), written as `model-0000i-of-0000N.safetensors` plus `model.safetensors.index.json`
    /// (`{"metadata": {"total_size": bytes}, "weight_map": {name: file}}`); a checkpoint that fits in one
    /// shard is written as `model.safetensors` without an index. Every file is written atomically, the
    /// index last; checkpoint files left from an earlier save and not part of this one are then removed.
    /// Returns the file names written.
    @discardableResult
    public static func writeSharded(_ tensors: [String: Tensor], to directory: String, maxShardBytes: Int,
                                    dtype: DType = .f32, metadata: [String: String]? = ["format": "pt"]) throws -> [String] {
        try writeSharded(shapes: tensors.mapValues(\.shape), to: directory, maxShardBytes: maxShardBytes, dtype: dtype,
                         metadata: metadata) { tensors[$0]! }
    }

    /// Streaming form of `writeSharded` (see `write(shapes:...)`).
    @discardableResult
    public static func writeSharded(shapes: [String: [Int]], to directory: String, maxShardBytes: Int, dtype: DType = .f32,
                                    metadata: [String: String]? = ["format": "pt"], produce: (String) throws -> Tensor) throws -> [String] {
        try checkWritable(dtype, directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var shards: [[String]] = []
        var current: [String] = [], currentBytes = 0, total = 0
        for name in sortedNames(shapes.keys) {
            let bytes = shapes[name]!.reduce(1, *) * dtype.byteSize
            if !current.isEmpty && currentBytes + bytes > maxShardBytes {
                shards.append(current)
                current = []
                currentBytes = 0
            }
            current.append(name)
            currentBytes += bytes
            total += bytes
        }
        if !current.isEmpty || shards.isEmpty { shards.append(current) }
        func path(_ f: String) -> String { (directory as NSString).appendingPathComponent(f) }
        var written: [String] = []
        if shards.count == 1 {
            try write(shapes: shapes, to: path(singleName), dtype: dtype, metadata: metadata, produce: produce)
            written = [singleName]
        } else {
            var weightMap: [(String, String)] = []
            for (i, names) in shards.enumerated() {
                let f = shardName(i + 1, of: shards.count)
                var part: [String: [Int]] = [:]
                for n in names { part[n] = shapes[n]!; weightMap.append((n, f)) }
                try write(shapes: part, to: path(f), dtype: dtype, metadata: metadata, produce: produce)
                written.append(f)
            }
            var s = "{\n  \"metadata\": {\n    \"total_size\": \(total)\n  },\n  \"weight_map\": {\n"
            s += weightMap.map { "    \(jsonString($0.0)): \(jsonString($0.1))" }.joined(separator: ",\n")
            s += "\n  }\n}\n"
            let bytes = Array(s.utf8)
            try AtomicFile.write(bytes, to: path(indexName), error: ioError)
            written.append(indexName)
        }
        // remove what an earlier save left behind, so the directory reader never mixes two checkpoints
        let keep = Set(written)
        for f in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where !keep.contains(f) {
            let stale = f == indexName || f == singleName
                || (f.hasPrefix("model-") && f.hasSuffix(".safetensors") && f.contains("-of-"))
            if stale { unlink(path(f)) }
        }
        return written
    }
}
