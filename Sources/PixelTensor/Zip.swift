import Foundation

// A reader for the zip archives torch.save writes (PKWARE APPNOTE 6.3): the end-of-central-directory
// record (and its ZIP64 record and locator), the central directory, and each entry's local header, over a
// memory-mapped file. Only STORED entries can be read (torch never compresses); archives split over
// several disks and encrypted entries are refused. Entries are located when the archive is opened, so a
// damaged archive fails early; entry contents are not read (nor checksummed) until asked for.

/// One entry of a zip archive. Offsets and sizes are 64-bit clean (ZIP64).
struct ZipEntry {
    let name: String
    /// 0 = STORED, 8 = DEFLATE, ...
    let method: UInt16
    let flags: UInt16
    let crc32: UInt32
    let compressedSize: Int
    let size: Int
    let localHeaderOffset: Int
    /// File offset of the entry's (stored) bytes, after the local header.
    let dataOffset: Int

    var methodName: String {
        switch method {
        case 0: return "STORED"
        case 8: return "DEFLATE"
        case 9: return "DEFLATE64"
        case 12: return "BZIP2"
        case 14: return "LZMA"
        case 93: return "ZSTD"
        case 95: return "XZ"
        default: return "method \(method)"
        }
    }
}

struct ZipArchive {
    let path: String
    let map: MappedFile
    /// Entries in central-directory order.
    let entries: [ZipEntry]
    let index: [String: Int]
    /// Whether the end records use ZIP64.
    let isZip64: Bool

    static let eocdSignature: UInt32 = 0x0605_4B50
    static let eocd64Signature: UInt32 = 0x0606_4B50
    static let locatorSignature: UInt32 = 0x0706_4B50
    static let centralSignature: UInt32 = 0x0201_4B50
    static let localSignature: UInt32 = 0x0403_4B50

    /// Bounds-checked little-endian reads from the mapped file.
    struct Bytes {
        let base: UnsafeRawPointer
        let size: Int
        func has(_ offset: Int, _ n: Int) -> Bool { offset >= 0 && n >= 0 && offset <= size && n <= size - offset }
        func u16(_ o: Int) -> UInt16 { UInt16(littleEndian: base.loadUnaligned(fromByteOffset: o, as: UInt16.self)) }
        func u32(_ o: Int) -> UInt32 { UInt32(littleEndian: base.loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
        func u64(_ o: Int) -> UInt64 { UInt64(littleEndian: base.loadUnaligned(fromByteOffset: o, as: UInt64.self)) }
        func raw(_ o: Int, _ n: Int) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base + o, count: n) }
    }

    /// Whether the mapped bytes start like a zip archive (a local header, or an empty archive's EOCD).
    static func looksLikeZip(_ map: MappedFile) -> Bool {
        guard let base = map.base, map.size >= 4 else { return false }
        let sig = UInt32(littleEndian: base.loadUnaligned(as: UInt32.self))
        return sig == localSignature || sig == eocdSignature
    }

    init(map: MappedFile, path: String) throws {
        self.path = path
        self.map = map
        func fail(_ kind: TorchBinError.Kind, _ m: String) -> TorchBinError { TorchBinError(kind, file: path, m) }
        guard let base = map.base, map.size >= 22 else {
            throw fail(.truncated, "truncated zip archive: \(map.size) bytes, fewer than an end-of-central-directory record (22)")
        }
        let b = Bytes(base: base, size: map.size)
        let size = map.size

        // 1. the end-of-central-directory record: the last signature whose comment ends the file exactly;
        // else the last signature at all (a file with trailing junk)
        var eocd: Int?, loose: Int?
        var pos = size - 22
        let lowest = max(0, size - 22 - 0xFFFF)
        while pos >= lowest {
            if b.u32(pos) == Self.eocdSignature {
                if pos + 22 + Int(b.u16(pos + 20)) == size { eocd = pos; break }
                if loose == nil { loose = pos }
            }
            pos -= 1
        }
        guard let e = eocd ?? loose else {
            throw fail(.truncated, "truncated or damaged zip archive: no end-of-central-directory record in the last \(size - lowest) bytes of \(size)")
        }
        var disk = Int(b.u16(e + 4)), cdDisk = Int(b.u16(e + 6))
        var onDisk = Int(b.u16(e + 8)), count = Int(b.u16(e + 10))
        var cdSize = Int(b.u32(e + 12)), cdOffset = Int(b.u32(e + 16))
        var endOfCD = e  // the central directory must end before this
        let saturated = b.u16(e + 8) == 0xFFFF || b.u16(e + 10) == 0xFFFF || b.u32(e + 12) == 0xFFFF_FFFF
            || b.u32(e + 16) == 0xFFFF_FFFF
        var zip64 = false
        if e >= 20 && b.u32(e - 20) == Self.locatorSignature {
            // 2. ZIP64: locator (20 bytes just before the EOCD) -> EOCD64 record
            let l = e - 20
            let locDisk = b.u32(l + 4), totalDisks = b.u32(l + 16)
            let r64 = b.u64(l + 8)
            guard locDisk == 0, totalDisks <= 1 else {
                throw fail(.zipFormat, "multi-disk zip archive (ZIP64 locator: disk \(locDisk) of \(totalDisks)) is not supported")
            }
            guard l >= 56, r64 <= UInt64(l - 56), b.has(Int(r64), 56), b.u32(Int(r64)) == Self.eocd64Signature else {
                throw fail(.truncated, "truncated or damaged zip archive: the ZIP64 locator points to offset \(r64), where there is no ZIP64 end-of-central-directory record")
            }
            let r = Int(r64)
            let fields = [b.u64(r + 24), b.u64(r + 32), b.u64(r + 40), b.u64(r + 48)]
            guard fields.allSatisfy({ $0 <= UInt64(Int.max) }) else {
                throw fail(.zipFormat, "damaged zip archive: ZIP64 end record holds sizes past 2^63")
            }
            disk = Int(b.u32(r + 16)); cdDisk = Int(b.u32(r + 20))
            onDisk = Int(fields[0]); count = Int(fields[1]); cdSize = Int(fields[2]); cdOffset = Int(fields[3])
            endOfCD = r
            zip64 = true
        } else if saturated {
            throw fail(.zipFormat, "damaged zip archive: the end-of-central-directory record has ZIP64 placeholders (0xFFFF...) but there is no ZIP64 locator")
        }
        isZip64 = zip64
        guard disk == 0, cdDisk == 0, onDisk == count else {
            throw fail(.zipFormat, "multi-disk zip archive (disk \(disk), central directory on disk \(cdDisk)) is not supported")
        }
        guard cdOffset <= endOfCD, cdSize <= endOfCD - cdOffset else {
            throw fail(.truncated, "truncated or damaged zip archive: the central directory (\(cdSize) bytes at offset \(cdOffset)) runs past its end record at \(endOfCD)")
        }
        guard count <= cdSize / 46 else {
            throw fail(.zipFormat, "damaged zip archive: \(count) entries cannot fit in a central directory of \(cdSize) bytes")
        }

        // 3. central directory
        var list: [ZipEntry] = []
        var idx: [String: Int] = [:]
        list.reserveCapacity(count)
        var p = cdOffset
        let cdEnd = cdOffset + cdSize
        for i in 0..<count {
            guard p + 46 <= cdEnd, b.u32(p) == Self.centralSignature else {
                throw fail(.truncated, "truncated or damaged zip archive: central directory entry \(i) at offset \(p) has no valid header")
            }
            let flags = b.u16(p + 8), method = b.u16(p + 10), crc = b.u32(p + 16)
            let c32 = b.u32(p + 20), u32 = b.u32(p + 24)
            let nlen = Int(b.u16(p + 28)), elen = Int(b.u16(p + 30)), clen = Int(b.u16(p + 32))
            let diskStart = b.u16(p + 34), off32 = b.u32(p + 42)
            guard p + 46 + nlen + elen + clen <= cdEnd else {
                throw fail(.zipFormat, "damaged zip archive: central directory entry \(i) runs past the end of the directory")
            }
            let nameBytes = b.raw(p + 46, nlen)
            let name = String(decoding: nameBytes, as: UTF8.self)
            func bad(_ m: String) -> TorchBinError { TorchBinError(.zipFormat, file: path, key: name, m) }
            // zip64 extended information (header 0x0001): only the fields saturated in the fixed header, in order
            var usize = UInt64(u32), csize = UInt64(c32), offset = UInt64(off32)
            let need = [u32 == 0xFFFF_FFFF, c32 == 0xFFFF_FFFF, off32 == 0xFFFF_FFFF, diskStart == 0xFFFF]
            if need.contains(true) {
                guard let x = Self.extraField(b, p + 46 + nlen, elen, id: 0x0001) else {
                    throw bad("damaged zip archive: sizes or offset are 0xFFFFFFFF but there is no ZIP64 extra field")
                }
                var q = x.offset
                func next() throws -> UInt64 {
                    guard q + 8 <= x.offset + x.count else { throw bad("damaged zip archive: the ZIP64 extra field is too short") }
                    defer { q += 8 }
                    return b.u64(q)
                }
                if need[0] { usize = try next() }
                if need[1] { csize = try next() }
                if need[2] { offset = try next() }
                if need[3] {
                    guard q + 4 <= x.offset + x.count else { throw bad("damaged zip archive: the ZIP64 extra field is too short") }
                    guard b.u32(q) == 0 else { throw bad("multi-disk zip archive: the entry starts on another disk") }
                }
            } else if diskStart != 0 {
                throw bad("multi-disk zip archive: the entry starts on disk \(diskStart)")
            }
            guard usize <= UInt64(Int.max), csize <= UInt64(Int.max), offset <= UInt64(Int.max) else {
                throw bad("damaged zip archive: sizes or offset past 2^63")
            }
            guard flags & 1 == 0 else { throw bad("encrypted zip entries are not supported") }
            // 4. the local header: where the data starts
            let lo = Int(offset)
            guard b.has(lo, 30), b.u32(lo) == Self.localSignature else {
                throw TorchBinError(.truncated, file: path, key: name,
                                    "truncated or damaged zip archive: no local header at offset \(lo) (the file has \(size) bytes)")
            }
            let lnlen = Int(b.u16(lo + 26)), lelen = Int(b.u16(lo + 28))
            guard b.has(lo + 30, lnlen + lelen) else {
                throw TorchBinError(.truncated, file: path, key: name, "truncated zip archive: the local header at \(lo) runs past the end of the file")
            }
            guard lnlen == nlen, memcmp(b.base + lo + 30, nameBytes.baseAddress ?? b.base, nlen) == 0 else {
                throw bad("damaged zip archive: the local header at \(lo) names '\(String(decoding: b.raw(lo + 30, lnlen), as: UTF8.self))'")
            }
            if b.u16(lo + 6) & 8 == 0 {  // without a data descriptor the local sizes must agree
                var lc = UInt64(b.u32(lo + 18)), lu = UInt64(b.u32(lo + 22))
                if lc == 0xFFFF_FFFF || lu == 0xFFFF_FFFF {
                    guard let x = Self.extraField(b, lo + 30 + lnlen, lelen, id: 0x0001), x.count >= 16 else {
                        throw bad("damaged zip archive: local header sizes are 0xFFFFFFFF but it has no ZIP64 extra field with both sizes")
                    }
                    lu = b.u64(x.offset); lc = b.u64(x.offset + 8)
                }
                guard lc == csize, lu == usize else {
                    throw bad("damaged zip archive: local header sizes (\(lc) compressed, \(lu) uncompressed) disagree with the central directory (\(csize), \(usize))")
                }
            }
            let data = lo + 30 + lnlen + lelen
            guard Int(csize) <= size - data else {
                throw TorchBinError(.truncated, file: path, key: name,
                                    "truncated zip archive: the entry's \(csize) bytes at offset \(data) run past the end of the file (\(size) bytes)")
            }
            if idx[name] != nil { throw bad("damaged zip archive: duplicate entry") }
            idx[name] = list.count
            list.append(ZipEntry(name: name, method: method, flags: flags, crc32: crc, compressedSize: Int(csize),
                                 size: Int(usize), localHeaderOffset: lo, dataOffset: data))
            p += 46 + nlen + elen + clen
        }
        entries = list
        index = idx
    }

    /// The payload of extra field `id` within `extra[start..<start+length]`.
    static func extraField(_ b: Bytes, _ start: Int, _ length: Int, id: UInt16) -> (offset: Int, count: Int)? {
        var q = start
        let end = start + length
        while q + 4 <= end {
            let fid = b.u16(q), flen = Int(b.u16(q + 2))
            if q + 4 + flen > end { return nil }
            if fid == id { return (q + 4, flen) }
            q += 4 + flen
        }
        return nil
    }

    func entry(_ name: String) -> ZipEntry? { index[name].map { entries[$0] } }

    /// The bytes of a STORED entry (valid while `map` lives).
    func storedBytes(_ e: ZipEntry) throws -> UnsafeRawBufferPointer {
        guard e.method == 0 else {
            throw TorchBinError(.compressedEntry, file: path, key: e.name,
                                "compressed entry not supported: the entry is \(e.methodName)-compressed, but only STORED (uncompressed) entries can be memory-mapped (torch.save never compresses)")
        }
        guard e.compressedSize == e.size else {
            throw TorchBinError(.zipFormat, file: path, key: e.name,
                                "damaged zip archive: a STORED entry with \(e.compressedSize) stored bytes for \(e.size) uncompressed bytes")
        }
        return UnsafeRawBufferPointer(start: e.size == 0 ? nil : map.base! + e.dataOffset, count: e.size)
    }

    /// The bytes of a STORED entry after checking its CRC-32.
    func verifiedBytes(_ e: ZipEntry) throws -> UnsafeRawBufferPointer {
        let bytes = try storedBytes(e)
        let crc = CRC32.checksum(bytes)
        guard crc == e.crc32 else {
            throw TorchBinError(.checksum, file: path, key: e.name,
                                "CRC-32 mismatch: the data gives \(String(crc, radix: 16)), the archive records \(String(e.crc32, radix: 16)) (corrupt file?)")
        }
        return bytes
    }
}

/// A zip archive on its own (the container of pytorch_model.bin): `pixellm inspect`-style listing and the fuzzer.
public enum ZipListing {
    /// Every entry's name and size, after checking the central directory, each local header and, for STORED
    /// entries, the CRC-32; errors name the file and entry.
    public static func entries(_ path: String) throws -> [(name: String, bytes: Int)] {
        let map: MappedFile
        do { map = try MappedFile(path: path) } catch let e as SafetensorsError { throw TorchBinError(.io, file: path, e.message) }
        guard map.size > 0, ZipArchive.looksLikeZip(map) else { throw TorchBinError(.zipFormat, file: path, "not a zip archive") }
        let z = try ZipArchive(map: map, path: path)
        return try z.entries.map { e in
            if e.method == 0 { _ = try z.verifiedBytes(e) }
            return (e.name, e.size)
        }
    }
}

/// CRC-32 (IEEE, as zip and zlib; slicing-by-8): zip entries, and the checksums of training checkpoint files.
public enum CRC32 {
    /// 8 tables of 256 entries, back to back.
    static let table: [UInt32] = {
        var t = [UInt32](repeating: 0, count: 8 * 256)
        for i in 0..<256 {
            var c = UInt32(i)
            for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
            t[i] = c
        }
        for k in 1..<8 {
            for i in 0..<256 { t[k * 256 + i] = (t[(k - 1) * 256 + i] >> 8) ^ t[Int(t[(k - 1) * 256 + i] & 0xFF)] }
        }
        return t
    }()

    /// The CRC-32 of a whole file, read 4 MiB at a time; nil with the reason when it cannot be read.
    public static func file(_ path: String) -> Result<UInt32, FileReadError> {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return .failure(FileReadError(reason: String(cString: strerror(errno)))) }
        defer { close(fd) }
        let n = 1 << 22
        let buf = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 64)
        defer { buf.deallocate() }
        var crc: UInt32 = 0
        while true {
            let r = read(fd, buf, n)
            if r < 0 {
                if errno == EINTR { continue }
                return .failure(FileReadError(reason: String(cString: strerror(errno))))
            }
            if r == 0 { return .success(crc) }
            crc = checksum(UnsafeRawBufferPointer(start: buf, count: r), initial: crc)
        }
    }

    public struct FileReadError: Error, CustomStringConvertible {
        public let reason: String
        public var description: String { reason }
    }

    public static func checksum(_ bytes: UnsafeRawBufferPointer, initial: UInt32 = 0) -> UInt32 {
        guard let p = bytes.baseAddress else { return initial }
        let n = bytes.count
        var c = ~initial
        return table.withUnsafeBufferPointer { t in
            var i = 0
            while i + 8 <= n {
                let lo = c ^ UInt32(littleEndian: p.loadUnaligned(fromByteOffset: i, as: UInt32.self))
                let hi = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: i + 4, as: UInt32.self))
                c = t[7 * 256 + Int(lo & 0xFF)] ^ t[6 * 256 + Int((lo >> 8) & 0xFF)]
                    ^ t[5 * 256 + Int((lo >> 16) & 0xFF)] ^ t[4 * 256 + Int(lo >> 24)]
                    ^ t[3 * 256 + Int(hi & 0xFF)] ^ t[2 * 256 + Int((hi >> 8) & 0xFF)]
                    ^ t[1 * 256 + Int((hi >> 16) & 0xFF)] ^ t[Int(hi >> 24)]
                i += 8
            }
            while i < n {
                c = t[Int((c ^ UInt32(p.load(fromByteOffset: i, as: UInt8.self))) & 0xFF)] ^ (c >> 8)
                i += 1
            }
            return ~c
        }
    }
}
