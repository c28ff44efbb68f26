import Foundation
import PixelJSON

/// The tokenizer the rest of pixellm uses: a checkpoint's tokenizer directory (tokenizer.json preferred,
/// else tokenizer.model; plus added_tokens.json, special_tokens_map.json and tokenizer_config.json when
/// present), the ids PixelLM needs, and encode/decode in one of two behaviours:
///
/// - `.reference`: transformers 4.31's slow `LlamaTokenizer` (legacy=True), which is what PixelLM/LLaVA
///   trained and evaluated with. The text is split on every added or special token (leftmost-longest);
///   whitespace (Python `str.isspace`) on both sides of an added token is stripped, except for special
///   tokens that the files declare as `AddedToken` objects, whose own lstrip/rstrip apply; empty pieces are
///   dropped; each remaining piece is encoded on its own the SentencePiece way (dummy "▁" prefix, spaces to
///   "▁"). BOS in front when `addBos` (and EOS behind if tokenizer_config says add_eos_token). Decoding
///   joins added tokens with spaces as 4.31's `_decode` does. The `legacy` key of tokenizer_config.json is
///   ignored: the reference checkpoints load with legacy=True.
/// - `.hfFast`: exactly what HF tokenizers does with the tokenizer.json (its added-token flags, normalizer,
///   pre-tokenizer, post-processor, decoder). Needs a tokenizer.json.
public final class Tokenizer: @unchecked Sendable {
    public enum Mode: String, Sendable, CaseIterable {
        case reference
        case hfFast
    }

    public enum Backend {
        case tokenizerJSON(HFTokenizer)
        case sentencePiece(SentencePieceModel)
    }

    public let directory: String
    public let mode: Mode
    public let backend: Backend

    public let bosToken: String
    public let eosToken: String
    public let unkToken: String
    public let bosId: Int
    public let eosId: Int
    public let unkId: Int
    /// pad_token's id when the files name one, else unk's (PixelLM sets pad = unk).
    public let padId: Int
    /// `[SEG0]`, `[SEG1]`, ... (consecutive from 0), or `[SEG]` alone; empty when the files have none.
    public let segTokens: [String]
    public let segIds: [Int]
    public let imStartId: Int?
    public let imEndId: Int?
    public let imPatchId: Int?
    /// len(tokenizer): base vocabulary plus added tokens (the embedding rows PixelLM resizes to).
    public let vocabSize: Int
    /// tokenizer_config.json add_bos_token / add_eos_token (defaults true / false).
    public let addBosToken: Bool
    public let addEosToken: Bool

    // .reference data
    private struct NoSplit {
        let id: Int
        let lstrip: Bool
        let rstrip: Bool
    }

    private let noSplit: [[UInt8]: NoSplit]
    private let matcher: TokenMatcher
    /// 4.31 `added_tokens_encoder`: added tokens outside the base vocabulary (id -> content).
    private let addedBeyondBase: [Int: String]
    private let specialIds: Set<Int>
    private let specialStrings: Set<[UInt8]>

    /// Loads `directory`. `preferSentencePiece` uses tokenizer.model even when a tokenizer.json is present
    /// (`.reference` only).
    public init(directory: String, mode: Mode = .reference, preferSentencePiece: Bool = false) throws {
        self.directory = directory
        self.mode = mode
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: directory, isDirectory: &isDir), isDir.boolValue else {
            throw TokenizerError.missingFile(path: directory, reason: "tokenizer directory does not exist")
        }
        func file(_ name: String) -> String? {
            let p = (directory as NSString).appendingPathComponent(name)
            return fm.fileExists(atPath: p) ? p : nil
        }
        let jsonPath = file("tokenizer.json"), modelPath = file("tokenizer.model")
        if mode == .hfFast, jsonPath == nil {
            throw TokenizerError.missingFile(
                path: (directory as NSString).appendingPathComponent("tokenizer.json"),
                reason: "mode .hfFast needs a tokenizer.json")
        }
        if let jsonPath, !(preferSentencePiece && modelPath != nil) {
            backend = .tokenizerJSON(try HFTokenizer(path: jsonPath))
        } else if let modelPath {
            backend = .sentencePiece(try SentencePieceModel(path: modelPath))
        } else {
            throw TokenizerError.missingFile(path: directory, reason: "no tokenizer.json or tokenizer.model")
        }
        let config = try file("tokenizer_config.json").map { try JSONParser.parseFile($0) }
        let specialMap = try file("special_tokens_map.json").map { try JSONParser.parseFile($0) }
        let addedPath = file("added_tokens.json")
        let addedJSON = try addedPath.map { try JSONParser.parseFile($0) }
        let describePath = jsonPath ?? modelPath ?? directory

        // ---- added tokens: content -> id, from every file that carries them
        var added: [([UInt8], Int)] = []
        var addedIndex: [[UInt8]: Int] = [:]
        func addToken(_ content: String, _ id: Int, from path: String) throws {
            let b = bytes(content)
            if let old = addedIndex[b] {
                if old != id {
                    throw TokenizerError.tokenIds(path: path, reason: "added token \"\(content)\" has id \(id) here but \(old) elsewhere")
                }
                return
            }
            addedIndex[b] = id
            added.append((b, id))
        }
        let baseCount: Int
        switch backend {
        case let .tokenizerJSON(h):
            baseCount = h.model.idToToken.count
            for t in h.addedTokens { try addToken(t.content, t.id, from: h.path) }
        case let .sentencePiece(sp):
            baseCount = sp.vocabSize
        }
        if let addedJSON, let addedPath {
            guard let members = addedJSON.members else {
                throw TokenizerError.invalidFormat(path: addedPath, reason: "added_tokens.json is not an object")
            }
            var entries: [(String, Int)] = []
            for (k, v) in members {
                guard let id = v.int else { throw TokenizerError.invalidFormat(path: addedPath, reason: "\"\(k)\" has no integer id") }
                entries.append((k, id))
            }
            entries.sort { $0.1 < $1.1 }
            if case let .sentencePiece(sp) = backend {
                // transformers 4.31 appends these in id order after the SentencePiece vocabulary.
                var next = sp.vocabSize
                for (k, id) in entries where sp.lookup(bytes(k)) == nil {
                    guard id == next else {
                        throw TokenizerError.tokenIds(path: addedPath, reason: "added token \"\(k)\" has id \(id), expected \(next) (ids must follow the \(sp.vocabSize)-piece vocabulary without gaps)")
                    }
                    next += 1
                }
            }
            for (k, id) in entries {
                if case let .tokenizerJSON(h) = backend, h.tokenToId(k) != id {
                    throw TokenizerError.tokenIds(path: addedPath, reason: "added token \"\(k)\" has id \(id) but tokenizer.json gives \(h.tokenToId(k).map(String.init) ?? "none")")
                }
                try addToken(k, id, from: addedPath)
            }
        }
        if let dec = config?["added_tokens_decoder"]?.members, let cfgPath = file("tokenizer_config.json") {
            for (k, v) in dec {
                guard let id = Int(k), let content = v["content"]?.string else {
                    throw TokenizerError.invalidFormat(path: cfgPath, reason: "added_tokens_decoder entry \"\(k)\" needs an integer key and a content")
                }
                if case let .tokenizerJSON(h) = backend, h.tokenToId(content) != id {
                    throw TokenizerError.tokenIds(path: cfgPath, reason: "added_tokens_decoder \(id) \"\(content)\" disagrees with tokenizer.json")
                }
                try addToken(content, id, from: cfgPath)
            }
        }

        // ---- special tokens: a plain string in special_tokens_map.json stays a str in 4.31 (strips both sides);
        // dicts, and bos/eos/unk strings given to LlamaTokenizer.__init__ (tokenizer_config.json), are AddedTokens
        struct Special {
            let content: String
            let lstrip: Bool
            let rstrip: Bool
            let isAddedToken: Bool
        }
        func special(_ name: String, default def: String?) throws -> Special? {
            func fromDict(_ v: JSONValue, _ file: String) throws -> Special {
                guard let c = v["content"]?.string else {
                    throw TokenizerError.invalidFormat(path: file, reason: "\(name) must be a string or an object with a \"content\" string")
                }
                return Special(content: c, lstrip: v["lstrip"]?.bool ?? false, rstrip: v["rstrip"]?.bool ?? false, isAddedToken: true)
            }
            if let v = specialMap?[name], !v.isNull {
                if let s = v.string { return Special(content: s, lstrip: false, rstrip: false, isAddedToken: false) }
                return try fromDict(v, file("special_tokens_map.json") ?? "special_tokens_map.json")
            }
            if let v = config?[name], !v.isNull {
                if let s = v.string {
                    // LlamaTokenizer.__init__ wraps bos/eos/unk strings in AddedToken(lstrip=False, rstrip=False)
                    return Special(content: s, lstrip: false, rstrip: false, isAddedToken: name != "pad_token")
                }
                return try fromDict(v, file("tokenizer_config.json") ?? "tokenizer_config.json")
            }
            return def.map { Special(content: $0, lstrip: false, rstrip: false, isAddedToken: true) }
        }
        // (a default is given for these three, so they are never nil)
        let bos = try special("bos_token", default: "<s>")!, eos = try special("eos_token", default: "</s>")!
        let unk = try special("unk_token", default: "<unk>")!
        let pad = try special("pad_token", default: nil)
        var extra: [Special] = []
        for v in (specialMap?["additional_special_tokens"]?.array ?? config?["additional_special_tokens"]?.array ?? []) {
            if let s = v.string {
                extra.append(Special(content: s, lstrip: false, rstrip: false, isAddedToken: false))
            } else if let c = v["content"]?.string {
                extra.append(Special(content: c, lstrip: v["lstrip"]?.bool ?? false, rstrip: v["rstrip"]?.bool ?? false, isAddedToken: true))
            }
        }
        let backendRef = backend
        func resolve(_ content: String) -> Int? {
            if let id = addedIndex[bytes(content)] { return id }
            switch backendRef {
            case let .tokenizerJSON(h): return h.tokenToId(content)
            case let .sentencePiece(sp): return sp.lookup(bytes(content))
            }
        }
        func require(_ s: Special, _ what: String) throws -> Int {
            guard let id = resolve(s.content) else {
                throw TokenizerError.tokenIds(path: describePath, reason: "\(what) \"\(s.content)\" is not in the vocabulary")
            }
            return id
        }
        bosToken = bos.content
        eosToken = eos.content
        unkToken = unk.content
        bosId = try require(bos, "bos_token")
        eosId = try require(eos, "eos_token")
        unkId = try require(unk, "unk_token")
        padId = try pad.map { try require($0, "pad_token") } ?? unkId

        // ---- PixelLM tokens
        var segs: [String] = []
        var segIds: [Int] = []
        while let id = resolve("[SEG\(segs.count)]") {
            segs.append("[SEG\(segs.count)]")
            segIds.append(id)
        }
        if segs.isEmpty, let id = resolve("[SEG]") {
            segs = ["[SEG]"]
            segIds = [id]
        }
        segTokens = segs
        self.segIds = segIds
        imStartId = resolve("<im_start>")
        imEndId = resolve("<im_end>")
        imPatchId = resolve("<im_patch>")
        var named: [(String, Int)] = [(bos.content, bosId), (eos.content, eosId), (unk.content, unkId)]
        named += zip(segs, segIds).map { ($0, $1) }
        if let i = imStartId { named.append(("<im_start>", i)) }
        if let i = imEndId { named.append(("<im_end>", i)) }
        if let i = imPatchId { named.append(("<im_patch>", i)) }
        var seen: [Int: String] = [:]
        for (name, id) in named {
            if let other = seen[id] {
                throw TokenizerError.tokenIds(path: describePath, reason: "\"\(name)\" and \"\(other)\" both have id \(id); PixelLM needs distinct ids (see spec 1.1)")
            }
            seen[id] = name
        }

        addBosToken = config?["add_bos_token"]?.bool ?? true
        addEosToken = config?["add_eos_token"]?.bool ?? false
        var maxId = baseCount - 1
        for (_, id) in added { maxId = max(maxId, id) }
        vocabSize = maxId + 1

        // ---- .reference: no-split tokens and their stripping
        // Every added and special token is no-split and strips both sides, unless its content is among the
        // specials held as AddedToken objects (4.31's all_special_tokens_extended; the last one wins, in the
        // order bos, eos, unk, pad, additional), whose lstrip/rstrip apply.
        var ns: [[UInt8]: NoSplit] = [:]
        for (b, id) in added { ns[b] = NoSplit(id: id, lstrip: true, rstrip: true) }
        var specials = [bos, eos, unk]
        if let pad { specials.append(pad) }
        specials += extra
        var sIds = Set<Int>()
        var sStrings = Set<[UInt8]>()
        for s in specials {
            guard let id = resolve(s.content) else { continue }
            let b = bytes(s.content)
            sIds.insert(id)
            sStrings.insert(b)
            if ns[b] == nil { ns[b] = NoSplit(id: id, lstrip: true, rstrip: true) }
        }
        for s in specials where s.isAddedToken {
            guard let id = resolve(s.content) else { continue }
            ns[bytes(s.content)] = NoSplit(id: id, lstrip: s.lstrip, rstrip: s.rstrip)
        }
        noSplit = ns
        matcher = TokenMatcher(ns.map { b, t in
            (b, HFTokenizer.AddedToken(id: t.id, content: string(b), special: false, normalized: false, lstrip: false, rstrip: false, singleWord: false))
        })
        var beyond: [Int: String] = [:]
        for (b, id) in added where id >= baseCount { beyond[id] = string(b) }
        if case let .tokenizerJSON(h) = backend {
            // tokens of tokenizer.json's added_tokens that the BPE vocab does not have
            for t in h.addedTokens where h.model.token(t.id) == nil { beyond[t.id] = t.content }
        }
        addedBeyondBase = beyond
        specialIds = sIds
        specialStrings = sStrings
    }

    // MARK: ids

    public func tokenToId(_ token: String) -> Int? {
        let b = bytes(token)
        if let t = noSplit[b] { return t.id }
        switch backend {
        case let .tokenizerJSON(h): return h.tokenToId(token)
        case let .sentencePiece(sp): return sp.lookup(b)
        }
    }

    public func idToToken(_ id: Int) -> String? {
        if let s = addedBeyondBase[id] { return s }
        switch backend {
        case let .tokenizerJSON(h): return h.idToToken(id)
        case let .sentencePiece(sp): return sp.idToPiece(id)
        }
    }

    /// Throws unless the files define `segTokenCount` codebook tokens and (when `imageTokens`) <im_start>
    /// and <im_end>, and each of them encodes (without BOS, in this mode) to exactly its own id: the
    /// spec 1.1 pitfall where "[SEG0]" comes out as [▁, id] and `.input_ids[0]` collapses every SEG to "▁".
    public func requirePixelLMTokens(segTokenCount: Int, imageTokens: Bool = true) throws {
        let expected = segTokenCount == 1 ? ["[SEG]"] : (0..<segTokenCount).map { "[SEG\($0)]" }
        guard segTokens == expected || (segTokenCount > 1 && Array(segTokens.prefix(segTokenCount)) == expected) else {
            throw TokenizerError.tokenIds(path: directory, reason: "expected codebook tokens \(expected), the files have \(segTokens)")
        }
        var check = Array(zip(expected, segIds))
        if imageTokens {
            guard let s = imStartId, let e = imEndId else {
                throw TokenizerError.tokenIds(path: directory, reason: "<im_start>/<im_end> are not in the vocabulary")
            }
            check += [("<im_start>", s), ("<im_end>", e)]
        }
        for (t, id) in check {
            let got = encode(t, addBos: false)
            if got != [id] {
                throw TokenizerError.tokenIds(path: directory, reason: "\"\(t)\" encodes to \(got), not [\(id)] (mode \(mode))")
            }
        }
    }

    // MARK: encode / decode

    /// Token ids of `text`. `addBos` adds the special tokens the files ask for: BOS (and EOS when
    /// add_eos_token) in `.reference`; the post_processor template in `.hfFast`.
    public func encode(_ text: String, addBos: Bool = true) -> [Int] {
        switch mode {
        case .hfFast:
            guard case let .tokenizerJSON(h) = backend else { return [] }
            return h.encode(text, addSpecialTokens: addBos)
        case .reference:
            return referenceEncode(text, addBos: addBos)
        }
    }

    public func decode(_ ids: [Int], skipSpecial: Bool = false) -> String {
        switch mode {
        case .hfFast:
            guard case let .tokenizerJSON(h) = backend else { return "" }
            return h.decode(ids, skipSpecialTokens: skipSpecial)
        case .reference:
            return referenceDecode(ids, skipSpecial: skipSpecial)
        }
    }

    /// The pieces 4.31's `tokenize` produces before SentencePiece: (text, nil) or (token, id).
    func referencePieces(_ text: String) -> [([UInt8], Int?)] {
        let input = bytes(text)
        var parts: [([UInt8], Int?)] = matcher.split(input, hf: false).map { tok, r in (Array(input[r]), tok?.id) }
        for i in parts.indices {
            guard parts[i].1 != nil, let rule = noSplit[parts[i].0] else { continue }
            if rule.rstrip, i + 1 < parts.count, !parts[i + 1].0.isEmpty {
                parts[i + 1].0 = pythonLStrip(parts[i + 1].0)
            }
            if rule.lstrip, i > 0, !parts[i - 1].0.isEmpty {
                parts[i - 1].0 = pythonRStrip(parts[i - 1].0)
            }
        }
        return parts.filter { !$0.0.isEmpty }
    }

    private func referenceEncode(_ text: String, addBos: Bool) -> [Int] {
        var ids: [Int] = []
        if addBos && addBosToken { ids.append(bosId) }
        for (b, id) in referencePieces(text) {
            if let id { ids.append(id); continue }
            switch backend {
            case let .tokenizerJSON(h): h.encodeSentencePieceStyle(string(b), into: &ids)
            case let .sentencePiece(sp): sp.encode(b, into: &ids)
            }
        }
        if addBos && addEosToken { ids.append(eosId) }
        return ids
    }

    /// 4.31 `PreTrainedTokenizer._decode` (spaces_between_special_tokens=True, no clean-up) with
    /// `LlamaTokenizer.convert_tokens_to_string`.
    private func referenceDecode(_ ids: [Int], skipSpecial: Bool) -> String {
        var subs: [String] = []
        var cur: [(Int, [UInt8])] = []
        for id in ids {
            if skipSpecial && specialIds.contains(id) { continue }
            if let s = addedBeyondBase[id] {
                if !cur.isEmpty { subs.append(tokensToString(cur)); cur = [] }
                subs.append(s)
                continue
            }
            guard let t = idToToken(id) else { continue }
            cur.append((id, bytes(t)))
        }
        if !cur.isEmpty { subs.append(tokensToString(cur)) }
        return subs.joined(separator: " ")
    }

    private func tokensToString(_ tokens: [(Int, [UInt8])]) -> String {
        var out = ""
        var sub: [(Int, [UInt8])] = []
        var prevSpecial = false
        for (i, (id, t)) in tokens.enumerated() {
            if specialStrings.contains(t) {
                if !prevSpecial && i != 0 { out += " " }
                out += sentencePieceDecode(sub) + string(t)
                prevSpecial = true
                sub = []
            } else {
                sub.append((id, t))
                prevSpecial = false
            }
        }
        return out + sentencePieceDecode(sub)
    }

    /// `sp_model.decode(pieces)` over either backend.
    private func sentencePieceDecode(_ tokens: [(Int, [UInt8])]) -> String {
        switch backend {
        case let .sentencePiece(sp):
            return sp.decodePieces(tokens.map { id, t in (t, sp.pieces[id].type) })
        case let .tokenizerJSON(h):
            let unk = h.unkToken ?? bytes(unkToken)
            let list = tokens.map { id, t -> (bytes: [UInt8], type: SentencePieceModel.PieceType) in
                if t == unk { return (t, .unknown) }
                if h.byteFallback, byteTokenValue(t) != nil { return (t, .byte) }
                if h.isSpecial(id) || specialIds.contains(id) { return (t, .control) }
                return (t, .normal)
            }
            return SentencePieceModel.decodePieces(list, unkSurface: bytes(" \u{2047} "), stripLeading: true)
        }
    }
}

func pythonLStrip(_ b: [UInt8]) -> [UInt8] {
    var i = 0
    while i < b.count {
        let (c, n) = scalarAt(b, i)
        if !isPythonSpace(Unicode.Scalar(c)!) { break }
        i += n
    }
    return Array(b[i...])
}

func pythonRStrip(_ b: [UInt8]) -> [UInt8] {
    var e = b.count
    while e > 0 {
        let (c, n) = scalarBefore(b, e)
        if !isPythonSpace(Unicode.Scalar(c)!) { break }
        e -= n
    }
    return Array(b[..<e])
}
