import PixelJSON

/// A HF `tokenizer.json` (huggingface/tokenizers serialisation) for LLaMA-family files, encoded and decoded
/// the way the `tokenizers` library does it.
///
/// Supported components (anything else is a load error naming the file and the type):
/// - model: `BPE` (vocab, merges as "a b" strings or ["a","b"] pairs, byte_fallback, fuse_unk, unk_token,
///   ignore_merges, continuing_subword_prefix, end_of_word_suffix; dropout must be null/0);
/// - normalizer: null, `Sequence`, `Prepend`, `Replace` (string pattern);
/// - pre_tokenizer: null, `Sequence`, `Metaspace` (prepend_scheme first/always/never, split true/false);
/// - post_processor: null, `TemplateProcessing`;
/// - decoder: null, `Sequence`, `Replace` (string pattern), `ByteFallback`, `Fuse`, `Strip`, `Metaspace`;
/// - added_tokens with special / normalized / lstrip / rstrip / single_word.
public final class HFTokenizer: @unchecked Sendable {
    public struct AddedToken: Sendable, Equatable {
        public let id: Int
        public let content: String
        public let special: Bool
        public let normalized: Bool
        public let lstrip: Bool
        public let rstrip: Bool
        public let singleWord: Bool
    }

    indirect enum Normalizer {
        case sequence([Normalizer])
        case prepend([UInt8])
        case replace([UInt8], [UInt8])

        func apply(_ s: [UInt8]) -> [UInt8] {
            switch self {
            case let .sequence(list): return list.reduce(s) { $1.apply($0) }
            case let .prepend(p): return s.isEmpty ? s : p + s
            case let .replace(pat, content): return replaceAll(s, pat, content)
            }
        }
    }

    enum PrependScheme: String { case first, always, never }

    indirect enum PreTokenizer {
        case sequence([PreTokenizer])
        case metaspace(replacement: [UInt8], scheme: PrependScheme, split: Bool)
    }

    indirect enum Decoder {
        case sequence([Decoder])
        case replace([UInt8], [UInt8])
        case byteFallback
        case fuse
        case strip(content: Unicode.Scalar, start: Int, stop: Int)
        case metaspace(replacement: Unicode.Scalar, scheme: PrependScheme)
    }

    enum TemplateItem {
        case sequence
        case special([Int])
    }

    public let path: String
    let model: BPEModel
    let normalizer: Normalizer?
    let preTokenizer: PreTokenizer?
    let decoder: Decoder?
    let template: [TemplateItem]?
    public let addedTokens: [AddedToken]
    private let addedById: [Int: AddedToken]
    /// The token string of each added token: its content, normalized when the token is `normalized`
    /// (what `id_to_token` and `decode` use in tokenizers 0.23).
    private let addedTokenString: [Int: [UInt8]]
    private let addedByContent: [[UInt8]: AddedToken]
    private let rawMatcher: TokenMatcher
    private let normalizedMatcher: TokenMatcher

    /// Loads and validates a tokenizer.json.
    public convenience init(path: String) throws {
        try self.init(json: try JSONParser.parseFile(path), path: path)
    }

    init(json root: JSONValue, path: String) throws {
        self.path = path
        guard root.members != nil else { throw TokenizerError.invalidFormat(path: path, reason: "top level is not an object") }
        guard let modelJSON = root["model"], !modelJSON.isNull else {
            throw TokenizerError.invalidFormat(path: path, reason: "no \"model\"")
        }
        model = try Self.parseModel(modelJSON, path: path)
        normalizer = try Self.parseNormalizer(root["normalizer"] ?? .null, path: path)
        preTokenizer = try Self.parsePreTokenizer(root["pre_tokenizer"] ?? .null, path: path)
        decoder = try Self.parseDecoder(root["decoder"] ?? .null, path: path)
        template = try Self.parsePostProcessor(root["post_processor"] ?? .null, path: path)

        var added: [AddedToken] = []
        if let list = root["added_tokens"], !list.isNull {
            guard let arr = list.array else { throw TokenizerError.invalidFormat(path: path, reason: "added_tokens is not an array") }
            for (k, t) in arr.enumerated() {
                guard let id = t["id"]?.int, let content = t["content"]?.string else {
                    throw TokenizerError.invalidFormat(path: path, reason: "added_tokens[\(k)] needs an integer id and a string content")
                }
                let special = t["special"]?.bool ?? false
                added.append(AddedToken(
                    id: id, content: content, special: special,
                    normalized: t["normalized"]?.bool ?? !special, lstrip: t["lstrip"]?.bool ?? false,
                    rstrip: t["rstrip"]?.bool ?? false, singleWord: t["single_word"]?.bool ?? false))
            }
        }
        addedTokens = added
        var byId: [Int: AddedToken] = [:]
        var byContent: [[UInt8]: AddedToken] = [:]
        for t in added {
            byId[t.id] = t
            byContent[bytes(t.content)] = t
        }
        addedById = byId
        addedByContent = byContent
        var strings: [Int: [UInt8]] = [:]
        for t in added {
            let c = bytes(t.content)
            strings[t.id] = t.normalized ? (normalizer?.apply(c) ?? c) : c
        }
        addedTokenString = strings
        // Non-normalized tokens are matched on the raw text, normalized ones on the normalized text, with the
        // token itself normalized (AddedVocabulary::refresh_added_tokens).
        rawMatcher = TokenMatcher(added.filter { !$0.normalized }.map { (bytes($0.content), $0) })
        let norm = normalizer
        normalizedMatcher = TokenMatcher(added.filter { $0.normalized }.map { t in
            let c = bytes(t.content)
            return (norm?.apply(c) ?? c, t)
        })
    }

    // MARK: parsing

    private static func typeName(_ v: JSONValue) -> String? { v["type"]?.string }

    private static func stringPattern(_ v: JSONValue?, component: String, path: String) throws -> [UInt8] {
        guard let v else { throw TokenizerError.invalidFormat(path: path, reason: "\(component): no pattern") }
        if let s = v["String"]?.string { return bytes(s) }
        if v["Regex"] != nil { throw TokenizerError.unsupported(path: path, component: component, type: "Replace with a Regex pattern") }
        if let s = v.string { return bytes(s) }
        throw TokenizerError.invalidFormat(path: path, reason: "\(component): bad pattern")
    }

    static func parseModel(_ m: JSONValue, path: String) throws -> BPEModel {
        let type = typeName(m) ?? (m["merges"] != nil ? "BPE" : "unknown")
        guard type == "BPE" else { throw TokenizerError.unsupported(path: path, component: "model", type: type) }
        if let d = m["dropout"]?.double, d > 0 {
            throw TokenizerError.unsupported(path: path, component: "model", type: "BPE with dropout \(d)")
        }
        guard let vocabMembers = m["vocab"]?.members else {
            throw TokenizerError.invalidFormat(path: path, reason: "model.vocab is missing or not an object")
        }
        var vocab: [([UInt8], Int)] = []
        vocab.reserveCapacity(vocabMembers.count)
        for (k, v) in vocabMembers {
            guard let id = v.int else { throw TokenizerError.invalidFormat(path: path, reason: "model.vocab[\"\(k)\"] is not an integer") }
            vocab.append((bytes(k), id))
        }
        var merges: [([UInt8], [UInt8])] = []
        if let ml = m["merges"], !ml.isNull {
            guard let arr = ml.array else { throw TokenizerError.invalidFormat(path: path, reason: "model.merges is not an array") }
            merges.reserveCapacity(arr.count)
            for (rank, e) in arr.enumerated() {
                if let s = e.string {
                    let parts = bytes(s).split(separator: 0x20, omittingEmptySubsequences: false)
                    guard parts.count == 2 else {
                        throw TokenizerError.invalidFormat(path: path, reason: "model.merges[\(rank)] \"\(s)\" is not \"left right\"")
                    }
                    merges.append((Array(parts[0]), Array(parts[1])))
                } else if let pair = e.array, pair.count == 2, let a = pair[0].string, let b = pair[1].string {
                    merges.append((bytes(a), bytes(b)))
                } else {
                    throw TokenizerError.invalidFormat(path: path, reason: "model.merges[\(rank)] is neither \"a b\" nor [\"a\", \"b\"]")
                }
            }
        }
        let unk = m["unk_token"]?.string.map(bytes)
        return try BPEModel(
            vocab: vocab, merges: merges, unkToken: unk, fuseUnk: m["fuse_unk"]?.bool ?? false,
            byteFallback: m["byte_fallback"]?.bool ?? false, ignoreMerges: m["ignore_merges"]?.bool ?? false,
            continuingSubwordPrefix: m["continuing_subword_prefix"]?.string.map(bytes),
            endOfWordSuffix: m["end_of_word_suffix"]?.string.map(bytes), path: path)
    }

    static func parseNormalizer(_ n: JSONValue, path: String) throws -> Normalizer? {
        if n.isNull { return nil }
        let type = typeName(n) ?? "(no type)"
        switch type {
        case "Sequence":
            guard let list = n["normalizers"]?.array else {
                throw TokenizerError.invalidFormat(path: path, reason: "normalizer Sequence without \"normalizers\"")
            }
            return .sequence(try list.map { e -> Normalizer in
                guard let x = try parseNormalizer(e, path: path) else {
                    throw TokenizerError.invalidFormat(path: path, reason: "null inside normalizer Sequence")
                }
                return x
            })
        case "Prepend":
            guard let p = n["prepend"]?.string else { throw TokenizerError.invalidFormat(path: path, reason: "Prepend without \"prepend\"") }
            return .prepend(bytes(p))
        case "Replace":
            let pat = try stringPattern(n["pattern"], component: "normalizer", path: path)
            guard let c = n["content"]?.string else { throw TokenizerError.invalidFormat(path: path, reason: "Replace without \"content\"") }
            return .replace(pat, bytes(c))
        default:
            throw TokenizerError.unsupported(path: path, component: "normalizer", type: type)
        }
    }

    static func parsePreTokenizer(_ p: JSONValue, path: String) throws -> PreTokenizer? {
        if p.isNull { return nil }
        let type = typeName(p) ?? "(no type)"
        switch type {
        case "Sequence":
            guard let list = p["pretokenizers"]?.array else {
                throw TokenizerError.invalidFormat(path: path, reason: "pre_tokenizer Sequence without \"pretokenizers\"")
            }
            return .sequence(try list.map { e -> PreTokenizer in
                guard let x = try parsePreTokenizer(e, path: path) else {
                    throw TokenizerError.invalidFormat(path: path, reason: "null inside pre_tokenizer Sequence")
                }
                return x
            })
        case "Metaspace":
            let r = p["replacement"]?.string ?? "\u{2581}"
            let scheme: PrependScheme
            if let s = p["prepend_scheme"]?.string {
                guard let x = PrependScheme(rawValue: s) else {
                    throw TokenizerError.unsupported(path: path, component: "Metaspace prepend_scheme", type: s)
                }
                scheme = x
            } else {
                // Files from before prepend_scheme existed carry add_prefix_space.
                scheme = (p["add_prefix_space"]?.bool ?? true) ? .always : .never
            }
            guard r.unicodeScalars.count == 1 else {
                throw TokenizerError.invalidFormat(path: path, reason: "Metaspace replacement must be one character")
            }
            return .metaspace(replacement: bytes(r), scheme: scheme, split: p["split"]?.bool ?? true)
        default:
            throw TokenizerError.unsupported(path: path, component: "pre_tokenizer", type: type)
        }
    }

    static func parseDecoder(_ d: JSONValue, path: String) throws -> Decoder? {
        if d.isNull { return nil }
        let type = typeName(d) ?? "(no type)"
        switch type {
        case "Sequence":
            guard let list = d["decoders"]?.array else {
                throw TokenizerError.invalidFormat(path: path, reason: "decoder Sequence without \"decoders\"")
            }
            return .sequence(try list.map { e -> Decoder in
                guard let x = try parseDecoder(e, path: path) else {
                    throw TokenizerError.invalidFormat(path: path, reason: "null inside decoder Sequence")
                }
                return x
            })
        case "Replace":
            let pat = try stringPattern(d["pattern"], component: "decoder", path: path)
            guard let c = d["content"]?.string else { throw TokenizerError.invalidFormat(path: path, reason: "Replace without \"content\"") }
            return .replace(pat, bytes(c))
        case "ByteFallback": return .byteFallback
        case "Fuse": return .fuse
        case "Strip":
            guard let c = d["content"]?.string, c.unicodeScalars.count == 1 else {
                throw TokenizerError.invalidFormat(path: path, reason: "Strip needs a one-character \"content\"")
            }
            return .strip(content: c.unicodeScalars.first!, start: d["start"]?.int ?? 0, stop: d["stop"]?.int ?? 0)
        case "Metaspace":
            let r = d["replacement"]?.string ?? "\u{2581}"
            guard r.unicodeScalars.count == 1 else {
                throw TokenizerError.invalidFormat(path: path, reason: "Metaspace replacement must be one character")
            }
            var scheme: PrependScheme = (d["add_prefix_space"]?.bool ?? true) ? .always : .never
            if let s = d["prepend_scheme"]?.string {
                guard let x = PrependScheme(rawValue: s) else {
                    throw TokenizerError.unsupported(path: path, component: "Metaspace prepend_scheme", type: s)
                }
                scheme = x
            }
            return .metaspace(replacement: r.unicodeScalars.first!, scheme: scheme)
        default:
            throw TokenizerError.unsupported(path: path, component: "decoder", type: type)
        }
    }

    static func parsePostProcessor(_ p: JSONValue, path: String) throws -> [TemplateItem]? {
        if p.isNull { return nil }
        let type = typeName(p) ?? "(no type)"
        guard type == "TemplateProcessing" else {
            throw TokenizerError.unsupported(path: path, component: "post_processor", type: type)
        }
        guard let single = p["single"]?.array else {
            throw TokenizerError.invalidFormat(path: path, reason: "TemplateProcessing without \"single\"")
        }
        var specials: [String: [Int]] = [:]
        for (k, v) in p["special_tokens"]?.members ?? [] {
            guard let ids = v["ids"]?.array?.compactMap({ $0.int }) else {
                throw TokenizerError.invalidFormat(path: path, reason: "TemplateProcessing special token \(k) has no ids")
            }
            specials[k] = ids
        }
        return try single.map { item in
            if item["Sequence"] != nil { return .sequence }
            if let s = item["SpecialToken"], let id = s["id"]?.string {
                guard let ids = specials.first(where: { $0.key.utf8.elementsEqual(id.utf8) })?.value else {
                    throw TokenizerError.invalidFormat(path: path, reason: "TemplateProcessing uses undefined special token \(id)")
                }
                return .special(ids)
            }
            throw TokenizerError.invalidFormat(path: path, reason: "TemplateProcessing item is neither Sequence nor SpecialToken")
        }
    }

    // MARK: vocabulary

    /// Number of ids (base vocab plus added tokens beyond it).
    public var vocabSize: Int {
        var n = model.idToToken.count
        for t in addedTokens { n = max(n, t.id + 1) }
        return n
    }

    public func tokenToId(_ token: String) -> Int? {
        let b = bytes(token)
        if let t = addedByContent[b] { return t.id }
        return model.vocab[b]
    }

    public func idToToken(_ id: Int) -> String? {
        if let t = addedTokenString[id] { return string(t) }
        return model.token(id).map { string($0) }
    }

    func addedToken(id: Int) -> AddedToken? { addedById[id] }

    /// Whether the file carries this token as a *special* added token.
    public func isSpecial(_ id: Int) -> Bool { addedById[id]?.special ?? false }

    var unkToken: [UInt8]? { model.unkId.flatMap { model.token(Int($0)) } }
    var byteFallback: Bool { model.byteFallback }

    // MARK: encoding

    /// A piece of input on its way through the pipeline: either an id already (added token) or text, with
    /// whether it starts at offset 0 of the original input (Metaspace prepend_scheme "first").
    private enum Piece {
        case token(Int)
        case text([UInt8], atStart: Bool)
    }

    /// `Tokenizer::encode(text, add_special_tokens)` ids.
    public func encode(_ text: String, addSpecialTokens: Bool = true) -> [Int] {
        var ids: [Int] = []
        let input = bytes(text)
        // 1. non-normalized added tokens on the raw text
        var pieces: [Piece] = []
        for (tok, r) in rawMatcher.split(input, hf: true) {
            if let tok { pieces.append(.token(tok.id)) } else { pieces.append(.text(Array(input[r]), atStart: r.lowerBound == 0)) }
        }
        // 2. normalize the remaining pieces, then normalized added tokens on the normalized text
        var pieces2: [Piece] = []
        for p in pieces {
            guard case let .text(raw, atStart) = p else { pieces2.append(p); continue }
            let n = normalizer?.apply(raw) ?? raw
            if n.isEmpty { continue }
            for (tok, r) in normalizedMatcher.split(n, hf: true) {
                if let tok { pieces2.append(.token(tok.id)) } else {
                    pieces2.append(.text(Array(n[r]), atStart: atStart && r.lowerBound == 0))
                }
            }
        }
        // 3. pre-tokenize and run the model
        for p in pieces2 {
            switch p {
            case let .token(id): ids.append(id)
            case let .text(t, atStart):
                for w in preTokenize(t, atStart: atStart, with: preTokenizer) { model.tokenize(w, into: &ids) }
            }
        }
        guard addSpecialTokens, let template else { return ids }
        var out: [Int] = []
        out.reserveCapacity(ids.count + 2)
        for item in template {
            switch item {
            case .sequence: out += ids
            case let .special(s): out += s
            }
        }
        return out
    }

    /// Encodes `text` as a single SentencePiece-style piece: dummy "▁" prefix, spaces escaped, model only
    /// (no added-token splitting, no normalizer/pre-tokenizer). Used by `Tokenizer` in `.reference` mode.
    func encodeSentencePieceStyle(_ text: String, into ids: inout [Int]) {
        if text.isEmpty { return }
        model.tokenize(spaceSymbolBytes + replaceAll(bytes(text), [0x20], spaceSymbolBytes), into: &ids)
    }

    private func preTokenize(_ t: [UInt8], atStart: Bool, with pre: PreTokenizer?) -> [[UInt8]] {
        guard let pre else { return t.isEmpty ? [] : [t] }
        switch pre {
        case let .sequence(list):
            var cur = [t]
            var first = true
            for p in list {
                var nxt: [[UInt8]] = []
                for (k, w) in cur.enumerated() { nxt += preTokenize(w, atStart: atStart && first && k == 0, with: p) }
                cur = nxt
                first = false
            }
            return cur
        case let .metaspace(rep, scheme, split):
            var s = replaceAll(t, [0x20], rep)
            switch scheme {
            case .always: if !hasPrefix(s, rep) { s = rep + s }
            case .first: if !hasPrefix(s, rep), atStart { s = rep + s }
            case .never: break
            }
            if s.isEmpty { return [] }
            guard split else { return [s] }
            // Every replacement character starts a new piece (a run of them gives one piece each, the last
            // one carrying the text after it), as tokenizers 0.23 does.
            var out: [[UInt8]] = []
            var cur: [UInt8] = []
            var i = 0
            while i < s.count {
                let isMatch = hasPrefix(s, rep, at: i)
                let n = isMatch ? rep.count : utf8Length(s[i])
                if isMatch && !cur.isEmpty {
                    out.append(cur)
                    cur = []
                }
                cur += s[i..<(i + n)]
                i += n
            }
            if !cur.isEmpty { out.append(cur) }
            return out
        }
    }

    // MARK: decoding

    /// `Tokenizer::decode(ids, skip_special_tokens)`: unknown ids are dropped.
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = false) -> String {
        var tokens: [[UInt8]] = []
        tokens.reserveCapacity(ids.count)
        for id in ids {
            if let t = addedById[id] {
                if skipSpecialTokens && t.special { continue }
                tokens.append(addedTokenString[id]!)
            } else if let t = model.token(id) {
                if skipSpecialTokens, let a = addedByContent[t], a.special { continue }
                tokens.append(t)
            }
        }
        guard let decoder else {
            return tokens.map { string($0) }.joined(separator: " ")
        }
        return string(Array(Self.decodeChain(decoder, tokens).joined()))
    }

    static func decodeChain(_ d: Decoder, _ tokens: [[UInt8]]) -> [[UInt8]] {
        switch d {
        case let .sequence(list):
            return list.reduce(tokens) { decodeChain($1, $0) }
        case let .replace(pat, content):
            return tokens.map { replaceAll($0, pat, content) }
        case .byteFallback:
            var out: [[UInt8]] = []
            var pending: [UInt8] = []
            func flush() {
                if pending.isEmpty { return }
                if String(validatingUTF8Bytes: pending) != nil {
                    out.append(pending)
                } else {
                    for _ in pending { out.append([0xEF, 0xBF, 0xBD]) }
                }
                pending = []
            }
            for t in tokens {
                if let b = byteTokenValue(t) { pending.append(b) } else { flush(); out.append(t) }
            }
            flush()
            return out
        case .fuse:
            return [tokens.reduce(into: [UInt8]()) { $0 += $1 }]
        case let .strip(content, start, stop):
            return tokens.map { t in
                let scalars = Array(string(t).unicodeScalars)
                var lo = 0
                for k in 0..<min(start, scalars.count) {
                    if scalars[k] == content { lo = k + 1 } else { break }
                }
                var hi = scalars.count
                if stop > 0 {
                    for k in 0..<min(stop, scalars.count) {
                        let idx = scalars.count - k - 1
                        if scalars[idx] == content { hi = idx } else { break }
                    }
                }
                if hi < lo { return [] }
                var s = String.UnicodeScalarView()
                s.append(contentsOf: scalars[lo..<hi])
                return bytes(String(s))
            }
        case let .metaspace(rep, scheme):
            return tokens.enumerated().map { i, t in
                var s = String.UnicodeScalarView()
                for c in string(t).unicodeScalars {
                    if c == rep {
                        if i == 0 && scheme != .never { continue }
                        s.append(" ")
                    } else {
                        s.append(c)
                    }
                }
                return bytes(String(s))
            }
        }
    }
}

/// Leftmost-longest multi-pattern matching over UTF-8 bytes (the Aho-Corasick LeftmostLongest semantics of
/// HF's AddedVocabulary; also transformers 4.31's Trie for the tokens PixelLM has). Patterns are few, so a
/// first-byte index and direct comparison are enough.
struct TokenMatcher {
    typealias Token = HFTokenizer.AddedToken
    private var byFirst: [UInt8: [([UInt8], Token)]] = [:]

    init(_ patterns: [([UInt8], Token)]) {
        for (p, t) in patterns where !p.isEmpty { byFirst[p[0], default: []].append((p, t)) }
        for k in byFirst.keys { byFirst[k]!.sort { $0.0.count > $1.0.count } }
    }

    var isEmpty: Bool { byFirst.isEmpty }

    /// The longest pattern starting at `i`, if any.
    func match(_ s: [UInt8], at i: Int) -> ([UInt8], Token)? {
        guard let cands = byFirst[s[i]] else { return nil }
        for c in cands where hasPrefix(s, c.0, at: i) { return c }
        return nil
    }

    /// Splits `s` into (token?, byte range) pieces covering it. With `hf`, applies the tokens' single_word /
    /// lstrip / rstrip like `AddedVocabulary::find_matches`.
    func split(_ s: [UInt8], hf: Bool) -> [(Token?, Range<Int>)] {
        if byFirst.isEmpty || s.isEmpty { return [(nil, 0..<s.count)] }
        var out: [(Token?, Range<Int>)] = []
        var startOffset = 0
        var i = 0
        while i < s.count {
            guard let (p, tok) = match(s, at: i) else { i += 1; continue }
            var start = i, stop = i + p.count
            if hf && tok.singleWord {
                let startSpace = start == 0 || !isRustWordChar(Unicode.Scalar(scalarBefore(s, start).0)!)
                let stopSpace = stop == s.count || !isRustWordChar(Unicode.Scalar(scalarAt(s, stop).0)!)
                if !startSpace || !stopSpace {
                    // discarded, but the match still consumed its bytes (non-overlapping find_iter)
                    i += p.count
                    continue
                }
            }
            if hf && tok.lstrip {
                var ns = start
                while ns > 0 {
                    let (c, n) = scalarBefore(s, ns)
                    if !isRustWhitespace(Unicode.Scalar(c)!) { break }
                    ns -= n
                }
                start = max(ns, startOffset)
            }
            if hf && tok.rstrip {
                while stop < s.count {
                    let (c, n) = scalarAt(s, stop)
                    if !isRustWhitespace(Unicode.Scalar(c)!) { break }
                    stop += n
                }
            }
            if startOffset < start { out.append((nil, startOffset..<start)) }
            out.append((tok, start..<stop))
            startOffset = stop
            // the search resumes at the end of the match itself, not of the stripped span
            i += p.count
        }
        if startOffset < s.count { out.append((nil, startOffset..<s.count)) }
        return out
    }
}
