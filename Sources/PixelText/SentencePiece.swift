/// A SentencePiece `tokenizer.model` (ModelProto, parsed here without a protobuf library) and its BPE
/// encoding/decoding, matching the `sentencepiece` library for BPE models with the identity normaliser
/// (LLaMA's settings).
///
/// Encoding (`bpe_model.cc` + `sentencepiece_processor.cc`): normalise (optionally strip/collapse spaces,
/// dummy "▁" prefix, ' ' -> "▁"), split into Unicode scalars (user-defined pieces kept whole and never
/// merged), repeatedly merge the adjacent pair whose concatenation is a piece with the highest score (ties:
/// leftmost), re-split UNUSED pieces, then spell any piece that is not in the vocabulary as `<0xXX>` byte
/// pieces (byte_fallback) or `<unk>`.
public final class SentencePieceModel: @unchecked Sendable {
    public enum PieceType: Int, Sendable {
        case normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
    }

    public struct Piece: Sendable {
        public let piece: String
        public let score: Float
        public let type: PieceType
    }

    public let path: String
    public let pieces: [Piece]
    public let byteFallback: Bool
    public let addDummyPrefix: Bool
    public let removeExtraWhitespaces: Bool
    public let escapeWhitespaces: Bool
    public let unkId: Int
    public let bosId: Int
    public let eosId: Int
    public let padId: Int
    public let unkSurface: String
    public let normalizerName: String

    let pieceBytes: [[UInt8]]
    /// NORMAL, USER_DEFINED and UNUSED pieces (`pieces_` in model_interface.cc).
    private let normalPieces: [[UInt8]: Int32]
    /// CONTROL, UNKNOWN and BYTE pieces (`reserved_id_map_`).
    private let reservedPieces: [[UInt8]: Int32]
    /// (left id << 32 | right id) -> merged piece id, for every split of every mergeable piece.
    private let pairs: [UInt64: Int32]
    private let charIds: [UInt32: Int32]
    private let userDefined: TokenMatcher
    private let byteIds: [Int32]
    private let hasUnused: Bool

    public convenience init(path: String) throws {
        try self.init(data: try readFileBytes(path), path: path)
    }

    public init(data: [UInt8], path: String) throws {
        self.path = path
        var reader = ProtoReader(data: data, path: path)
        var pieces: [Piece] = []
        var trainer: [Int: ProtoReader.Field] = [:]
        var normalizer: [Int: ProtoReader.Field] = [:]
        var sawTrainer = false
        while let f = try reader.next() {
            switch f.number {
            case 1:
                guard case let .bytes(r) = f.value else { throw reader.corrupt("pieces is not length-delimited") }
                var sub = ProtoReader(data: data, range: r, path: path)
                var text: String? = nil
                var score: Float = 0
                var type = 1
                while let g = try sub.next() {
                    switch (g.number, g.value) {
                    case let (1, .bytes(rr)):
                        guard let s = String(validatingUTF8Bytes: Array(data[rr])) else {
                            throw sub.corrupt("piece \(pieces.count) is not valid UTF-8")
                        }
                        text = s
                    case let (2, .fixed32(v)): score = Float(bitPattern: v)
                    case let (3, .varint(v)): type = Int(truncatingIfNeeded: v)
                    default: break
                    }
                }
                guard let text else { throw reader.corrupt("piece \(pieces.count) has no text") }
                guard let t = PieceType(rawValue: type) else { throw reader.corrupt("piece \(pieces.count) has unknown type \(type)") }
                pieces.append(Piece(piece: text, score: score, type: t))
            case 2, 3:
                guard case let .bytes(r) = f.value else { throw reader.corrupt("spec is not length-delimited") }
                var sub = ProtoReader(data: data, range: r, path: path)
                var fields: [Int: ProtoReader.Field] = [:]
                while let g = try sub.next() { fields[g.number] = g }
                if f.number == 2 { trainer = fields; sawTrainer = true } else { normalizer = fields }
            default:
                break
            }
        }
        guard !pieces.isEmpty else { throw TokenizerError.invalidProtobuf(path: path, offset: data.count, reason: "no pieces") }
        guard sawTrainer else { throw TokenizerError.invalidProtobuf(path: path, offset: data.count, reason: "no trainer_spec") }

        func int(_ f: [Int: ProtoReader.Field], _ n: Int, _ d: Int) -> Int {
            if case let .varint(v)? = f[n]?.value { return Int(Int32(truncatingIfNeeded: v)) }
            return d
        }
        func bool(_ f: [Int: ProtoReader.Field], _ n: Int, _ d: Bool) -> Bool {
            if case let .varint(v)? = f[n]?.value { return v != 0 }
            return d
        }
        func str(_ f: [Int: ProtoReader.Field], _ n: Int, _ d: String) -> String {
            if case let .bytes(r)? = f[n]?.value { return String(decoding: data[r], as: UTF8.self) }
            return d
        }
        let modelType = int(trainer, 3, 1)
        guard modelType == 2 else {
            let names = [1: "UNIGRAM", 2: "BPE", 3: "WORD", 4: "CHAR"]
            throw TokenizerError.unsupported(path: path, component: "SentencePiece model", type: names[modelType] ?? "\(modelType)")
        }
        if bool(trainer, 24, false) {
            throw TokenizerError.unsupported(path: path, component: "SentencePiece option", type: "treat_whitespace_as_suffix")
        }
        normalizerName = str(normalizer, 1, "")
        if case let .bytes(r)? = normalizer[2]?.value, !r.isEmpty {
            throw TokenizerError.unsupported(
                path: path, component: "SentencePiece normalizer",
                type: "\(normalizerName.isEmpty ? "precompiled" : normalizerName) (precompiled_charsmap; only identity is implemented)")
        }
        if case .bytes? = normalizer[6]?.value {
            throw TokenizerError.unsupported(path: path, component: "SentencePiece normalizer", type: "normalization_rule_tsv")
        }
        addDummyPrefix = bool(normalizer, 3, true)
        removeExtraWhitespaces = bool(normalizer, 4, true)
        escapeWhitespaces = bool(normalizer, 5, true)
        byteFallback = bool(trainer, 35, false)
        unkSurface = str(trainer, 44, " \u{2047} ")
        bosId = int(trainer, 41, 1)
        eosId = int(trainer, 42, 2)
        padId = int(trainer, 43, -1)
        self.pieces = pieces

        var pb: [[UInt8]] = []
        pb.reserveCapacity(pieces.count)
        var normal: [[UInt8]: Int32] = [:]
        var reserved: [[UInt8]: Int32] = [:]
        var unk = -1
        var unusedSeen = false
        var udPatterns: [([UInt8], HFTokenizer.AddedToken)] = []
        for (i, p) in pieces.enumerated() {
            let b = bytes(p.piece)
            pb.append(b)
            let isNormal = p.type == .normal || p.type == .userDefined || p.type == .unused
            if isNormal {
                if normal[b] != nil { throw TokenizerError.invalidProtobuf(path: path, offset: 0, reason: "piece \"\(p.piece)\" is defined twice") }
                normal[b] = Int32(i)
            } else {
                if reserved[b] != nil { throw TokenizerError.invalidProtobuf(path: path, offset: 0, reason: "piece \"\(p.piece)\" is defined twice") }
                reserved[b] = Int32(i)
            }
            if p.type == .unknown {
                if unk >= 0 { throw TokenizerError.invalidProtobuf(path: path, offset: 0, reason: "more than one UNKNOWN piece") }
                unk = i
            }
            if p.type == .unused { unusedSeen = true }
            if p.type == .userDefined {
                udPatterns.append((b, HFTokenizer.AddedToken(id: i, content: p.piece, special: false, normalized: false,
                                                             lstrip: false, rstrip: false, singleWord: false)))
            }
            if p.type == .byte, !byteFallback {
                throw TokenizerError.invalidProtobuf(path: path, offset: 0, reason: "BYTE piece \"\(p.piece)\" without byte_fallback")
            }
        }
        guard unk >= 0 else { throw TokenizerError.invalidProtobuf(path: path, offset: 0, reason: "no UNKNOWN piece") }
        unkId = unk
        pieceBytes = pb
        normalPieces = normal
        reservedPieces = reserved
        hasUnused = unusedSeen
        userDefined = TokenMatcher(udPatterns)
        var chars: [UInt32: Int32] = [:]
        for (b, id) in normal where utf8Length(b[0]) == b.count { chars[scalarAt(b, 0).0] = id }
        charIds = chars
        // Every way of writing a mergeable piece as (piece, piece): the pair table that replaces string
        // concatenation + lookup in the merge loop.
        var pr: [UInt64: Int32] = [:]
        for (b, id) in normal where b.count > 1 {
            var k = utf8Length(b[0])
            while k < b.count {
                if let l = normal[Array(b[0..<k])], let r = normal[Array(b[k...])] {
                    pr[UInt64(UInt32(l)) << 32 | UInt64(UInt32(r))] = id
                }
                k += utf8Length(b[k])
            }
        }
        pairs = pr
        var bids = [Int32](repeating: -1, count: 256)
        for b in 0..<256 {
            if let id = reserved[byteTokenName(UInt8(b))], pieces[Int(id)].type == .byte { bids[b] = id }
        }
        byteIds = bids
    }

    public var vocabSize: Int { pieces.count }

    /// `PieceToId`: reserved pieces first, then normal ones, else unk.
    public func pieceToId(_ piece: String) -> Int {
        let b = bytes(piece)
        if let id = reservedPieces[b] { return Int(id) }
        if let id = normalPieces[b] { return Int(id) }
        return unkId
    }

    /// nil when the piece is not in the model (PieceToId would give unk).
    func lookup(_ b: [UInt8]) -> Int? {
        if let id = reservedPieces[b] { return Int(id) }
        if let id = normalPieces[b] { return Int(id) }
        return nil
    }

    public func idToPiece(_ id: Int) -> String? { id >= 0 && id < pieces.count ? pieces[id].piece : nil }

    public func isControl(_ id: Int) -> Bool { id >= 0 && id < pieces.count && pieces[id].type == .control }

    // MARK: normalisation

    /// The identity normaliser: leading/trailing/repeated spaces removed when remove_extra_whitespaces, dummy
    /// prefix, ' ' -> "▁" when escape_whitespaces. Only U+0020 counts as a space here, as in SentencePiece.
    func normalize(_ text: [UInt8]) -> [UInt8] {
        var s = text[...]
        if removeExtraWhitespaces { while s.first == 0x20 { s = s.dropFirst() } }
        if s.isEmpty { return [] }
        let ws: [UInt8] = escapeWhitespaces ? spaceSymbolBytes : [0x20]
        var out: [UInt8] = []
        out.reserveCapacity(s.count + 8)
        if addDummyPrefix { out += ws }
        var prevSpace = removeExtraWhitespaces
        for c in s {
            if c == 0x20 {
                if prevSpace { continue }
                out += ws
                prevSpace = removeExtraWhitespaces
            } else {
                out.append(c)
                prevSpace = false
            }
        }
        if removeExtraWhitespaces {
            while out.count >= ws.count, hasPrefix(out, ws, at: out.count - ws.count) { out.removeLast(ws.count) }
        }
        return out
    }

    // MARK: encoding

    public func encode(_ text: String) -> [Int] {
        var ids: [Int] = []
        encode(bytes(text), into: &ids)
        return ids
    }

    /// One symbol of the merge loop: a byte range of the normalised text and its piece id (-1 when the
    /// range is not a piece, i.e. an unknown character).
    private struct Symbol {
        var start: Int32
        var end: Int32
        var id: Int32
        var prev: Int32
        var next: Int32
        var frozen: Bool
    }

    func encode(_ text: [UInt8], into out: inout [Int]) {
        let s = normalize(text)
        if s.isEmpty { return }
        var sym: [Symbol] = []
        sym.reserveCapacity(s.count)
        var i = 0
        while i < s.count {
            var n = utf8Length(s[i])
            var frozen = false
            var id: Int32 = -1
            if !userDefined.isEmpty, let (p, t) = userDefined.match(s, at: i) {
                n = p.count
                frozen = true
                id = Int32(t.id)
            } else {
                id = charIds[scalarAt(s, i).0] ?? -1
            }
            let k = Int32(sym.count)
            sym.append(Symbol(start: Int32(i), end: Int32(i + n), id: id, prev: k - 1, next: k + 1, frozen: frozen))
            i += n
        }
        sym[sym.count - 1].next = -1

        // Agenda: highest score first, ties to the smallest left index. Key = ~ordered(score) << 32 | left.
        var heap = KeyHeap(capacity: sym.count)
        var revMerge: [[UInt8]: ([UInt8], [UInt8])] = [:]
        func pairId(_ l: Int, _ r: Int) -> Int32? {
            let a = sym[l], b = sym[r]
            if a.id >= 0, b.id >= 0 { return pairs[UInt64(UInt32(a.id)) << 32 | UInt64(UInt32(b.id))] }
            // an unknown character on either side: look the concatenation up as a string
            return normalPieces[Array(s[Int(a.start)..<Int(b.end)])]
        }
        func maybeAdd(_ l: Int32, _ r: Int32) {
            if l < 0 || r < 0 { return }
            let li = Int(l), ri = Int(r)
            if sym[li].frozen || sym[ri].frozen { return }
            guard let id = pairId(li, ri) else { return }
            let key = UInt64(~orderedBits(pieces[Int(id)].score)) << 32 | UInt64(UInt32(li))
            heap.push(key, id)
            if hasUnused, pieces[Int(id)].type == .unused {
                revMerge[pieceBytes[Int(id)]] = (Array(s[Int(sym[li].start)..<Int(sym[li].end)]),
                                                 Array(s[Int(sym[ri].start)..<Int(sym[ri].end)]))
            }
        }
        for k in 1..<sym.count { maybeAdd(Int32(k - 1), Int32(k)) }
        while let top = heap.pop() {
            let l = Int(top.key & 0xFFFF_FFFF)
            let r = Int(sym[l].next)
            // stale unless both symbols are alive, adjacent and unchanged (same total size)
            if sym[l].start == sym[l].end || r < 0 || sym[r].start == sym[r].end { continue }
            let size = Int(sym[l].end - sym[l].start) + Int(sym[r].end - sym[r].start)
            if size != pieceBytes[Int(top.value)].count { continue }
            sym[l].end = sym[r].end
            sym[l].id = top.value
            sym[l].next = sym[r].next
            if sym[r].next >= 0 { sym[Int(sym[r].next)].prev = Int32(l) }
            sym[r].start = sym[r].end  // empty = removed
            maybeAdd(sym[l].prev, Int32(l))
            maybeAdd(Int32(l), sym[l].next)
        }

        var k: Int32 = 0
        while k >= 0 {
            let x = sym[Int(k)]
            emit(Array(s[Int(x.start)..<Int(x.end)]), revMerge, into: &out)
            k = x.next
        }
    }

    /// Resegments UNUSED pieces into the pieces they were merged from, then spells unknown pieces as bytes
    /// (byte_fallback) or unk.
    private func emit(_ w: [UInt8], _ revMerge: [[UInt8]: ([UInt8], [UInt8])], into out: inout [Int]) {
        let id = lookup(w)
        if let id, pieces[id].type == .unused, let (a, b) = revMerge[w] {
            emit(a, revMerge, into: &out)
            emit(b, revMerge, into: &out)
            return
        }
        if let id, pieces[id].type != .unknown {
            out.append(id)
            return
        }
        if byteFallback {
            for c in w { out.append(byteIds[Int(c)] >= 0 ? Int(byteIds[Int(c)]) : unkId) }
        } else {
            out.append(unkId)
        }
    }

    // MARK: decoding

    /// `SentencePieceProcessor::Decode`: control pieces vanish, unk becomes unk_surface, runs of byte pieces
    /// become UTF-8 (each invalid byte one U+FFFD), "▁" becomes ' ', and the first piece that is not a
    /// control piece loses one leading "▁". Ids outside the vocabulary are skipped.
    public func decode(_ ids: [Int]) -> String {
        decodePieces(ids.compactMap { id -> (bytes: [UInt8], type: PieceType)? in
            guard id >= 0, id < pieces.count else { return nil }
            return (pieceBytes[id], pieces[id].type)
        })
    }

    /// Decoding of (piece, type) pairs; also used for `.reference` decoding over tokenizer.json backends.
    func decodePieces(_ list: [(bytes: [UInt8], type: PieceType)]) -> String {
        Self.decodePieces(list, unkSurface: bytes(unkSurface), stripLeading: addDummyPrefix || removeExtraWhitespaces)
    }

    static func decodePieces(_ list: [(bytes: [UInt8], type: PieceType)], unkSurface: [UInt8], stripLeading: Bool) -> String {
        var out: [UInt8] = []
        var pending: [UInt8] = []
        func flush() {
            var k = 0
            while k < pending.count {
                if let n = validUTF8CharLength(pending, k) {
                    out += pending[k..<(k + n)]
                    k += n
                } else {
                    out += [0xEF, 0xBF, 0xBD]
                    k += 1
                }
            }
            pending = []
        }
        var atStart = true
        for (b, type) in list {
            if type == .byte, let v = byteTokenValue(b) {
                pending.append(v)
                atStart = false
                continue
            }
            flush()
            switch type {
            case .control: continue
            case .unknown: out += unkSurface
            default:
                var p = b[...]
                if stripLeading, atStart, hasPrefix(b, spaceSymbolBytes) { p = p.dropFirst(3) }
                out += replaceAll(Array(p), spaceSymbolBytes, [0x20])
            }
            atStart = false
        }
        flush()
        return string(out)
    }
}

/// Length of the valid UTF-8 character at `k` (SentencePiece's strict DecodeUTF8), nil when invalid.
func validUTF8CharLength(_ b: [UInt8], _ k: Int) -> Int? {
    let c0 = b[k]
    let left = b.count - k
    func trail(_ x: UInt8) -> Bool { x & 0xC0 == 0x80 }
    func ok(_ cp: UInt32) -> Bool { cp < 0xD800 || (cp >= 0xE000 && cp <= 0x10FFFF) }
    if c0 < 0x80 { return 1 }
    if left >= 2, c0 & 0xE0 == 0xC0 {
        let cp = UInt32(c0 & 0x1F) << 6 | UInt32(b[k + 1] & 0x3F)
        if trail(b[k + 1]), cp >= 0x80, ok(cp) { return 2 }
    } else if left >= 3, c0 & 0xF0 == 0xE0 {
        let cp = UInt32(c0 & 0x0F) << 12 | UInt32(b[k + 1] & 0x3F) << 6 | UInt32(b[k + 2] & 0x3F)
        if trail(b[k + 1]), trail(b[k + 2]), cp >= 0x800, ok(cp) { return 3 }
    } else if left >= 4, c0 & 0xF8 == 0xF0 {
        let cp = UInt32(c0 & 0x07) << 18 | UInt32(b[k + 1] & 0x3F) << 12 | UInt32(b[k + 2] & 0x3F) << 6
            | UInt32(b[k + 3] & 0x3F)
        if trail(b[k + 1]), trail(b[k + 2]), trail(b[k + 3]), cp >= 0x10000, ok(cp) { return 4 }
    }
    return nil
}

/// A protobuf wire-format reader (enough for ModelProto: varint, fixed32/64, length-delimited; groups are
/// rejected).
struct ProtoReader {
    enum Value {
        case varint(UInt64)
        case fixed64(UInt64)
        case bytes(Range<Int>)
        case fixed32(UInt32)
    }

    struct Field {
        let number: Int
        let value: Value
    }

    let data: [UInt8]
    let path: String
    var pos: Int
    let end: Int

    init(data: [UInt8], path: String) {
        self.data = data
        self.path = path
        pos = 0
        end = data.count
    }

    init(data: [UInt8], range: Range<Int>, path: String) {
        self.data = data
        self.path = path
        pos = range.lowerBound
        end = range.upperBound
    }

    func corrupt(_ reason: String) -> TokenizerError {
        .invalidProtobuf(path: path, offset: pos, reason: reason)
    }

    mutating func varint() throws -> UInt64 {
        var v: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard pos < end else { throw corrupt("truncated varint") }
            let b = data[pos]
            pos += 1
            if shift >= 64 { throw corrupt("varint too long") }
            v |= UInt64(b & 0x7F) << shift
            if b & 0x80 == 0 { return v }
            shift += 7
        }
    }

    mutating func next() throws -> Field? {
        if pos >= end { return nil }
        let tag = try varint()
        let number = Int(tag >> 3)
        guard number > 0 else { throw corrupt("field number 0") }
        switch tag & 7 {
        case 0: return Field(number: number, value: .varint(try varint()))
        case 1:
            guard end - pos >= 8 else { throw corrupt("truncated fixed64 field \(number)") }
            var v: UInt64 = 0
            for k in 0..<8 { v |= UInt64(data[pos + k]) << (8 * UInt64(k)) }
            pos += 8
            return Field(number: number, value: .fixed64(v))
        case 2:
            let n = try varint()
            guard n <= UInt64(end - pos) else { throw corrupt("length \(n) of field \(number) runs past the end") }
            let r = pos..<(pos + Int(n))
            pos += Int(n)
            return Field(number: number, value: .bytes(r))
        case 5:
            guard end - pos >= 4 else { throw corrupt("truncated fixed32 field \(number)") }
            var v: UInt32 = 0
            for k in 0..<4 { v |= UInt32(data[pos + k]) << (8 * UInt32(k)) }
            pos += 4
            return Field(number: number, value: .fixed32(v))
        default:
            throw corrupt("unsupported wire type \(tag & 7) for field \(number)")
        }
    }
}
