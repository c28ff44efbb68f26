// A LLaMA-style tokenizer for the synthetic dataset, trained here by a small deterministic BPE:
// SentencePiece-like pieces (a word starts with "▁"), ids 0, 1, 2 = <unk>, <s>, </s>, byte-fallback pieces
// <0x00>..<0xFF> at 3..258, then the merged pieces in merge order, the single characters, padding, and
// the PixelLM added tokens <im_patch>, <im_start>, <im_end>, [SEG0]..[SEG5] as the last ids (the released
// checkpoints' order: 32000..32008 of 32009). Written the way HF writes a LLaMA tokenizer (the legacy
// tokenizer.json: Prepend/Replace normalizer, no pre-tokenizer, BPE with byte_fallback and fuse_unk) plus
// tokenizer_config.json, special_tokens_map.json and added_tokens.json as transformers 4.31 saves them.
//
// The corpus is every kind of text the synthetic data and the reference templates produce: all candidate
// questions, answers and explanations of a fixed sample of scenes (the words are a closed set, so the
// sample covers them), the reference question/answer templates filled with synthetic names, and llava_v1
// conversations (system prompt, roles). It does not depend on the tree's seed or size, so one tokenizer
// serves every synthetic tree of the same vocabulary size.
import Foundation
import PixelText

public struct SynthTokenizer: Sendable {
    public static let specialTokens = ["<unk>", "<s>", "</s>"]
    /// Added after the base vocabulary, in the released PixelLM order.
    public static let addedTokens = ["<im_patch>", "<im_start>", "<im_end>"] + (0..<6).map { "[SEG\($0)]" }
    public static let defaultVocabSize = 1024
    /// Scenes per split of the training sample.
    public static let corpusScenesPerSplit = 40

    /// The base vocabulary by id (special, byte, merged, character and padding pieces).
    public let pieces: [String]
    /// Merges by rank.
    public let merges: [(String, String)]
    /// How many pieces are merges, single characters, and unused padding.
    public let mergedPieces: Int
    public let characterPieces: Int
    public let paddingPieces: Int

    /// Base vocabulary plus the added tokens (len(tokenizer)); every id is below this.
    public var vocabSize: Int { pieces.count + Self.addedTokens.count }

    public static func byteToken(_ b: Int) -> String { String(format: "<0x%02X>", b) }

    // MARK: - corpus

    /// The training texts, in a fixed order.
    public static func corpus(scenesPerSplit: Int = corpusScenesPerSplit) -> [String] {
        var texts: [String] = []
        let conv = Conversation.llavaV1
        let seg3 = "[SEG0] [SEG1] [SEG2]"
        let segForms = [seg3, "[SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5]", "[SEG]"]
        var names: [String] = SynthShape.allCases.flatMap { [$0.name, $0.plural] }
        names += ["object", "objects"]
        var sents: [String] = []
        var answers: [String] = []
        let config = SynthConfig(seed: 0, size: 64)
        for split in SynthGenerator.splits {
            for i in 0..<scenesPerSplit {
                let (scene, picked) = SynthGenerator.sample(config: config, split: split, index: i)
                for q in SynthQuestions.candidates(scene) {
                    texts.append(q.question)
                    texts.append(q.textAnswer)
                    texts.append(q.textAnswer.replacingOccurrences(of: "{seg}", with: seg3))
                    texts.append(q.explanation)
                }
                for (k, o) in scene.objects.enumerated() {
                    names.append(o.phrase)
                    if let d = SynthQuestions.uniqueDescription(scene, k) { names.append(d) }
                }
                // one llava_v1 conversation per scene, as training tokenizes it
                var c = conv
                for (t, q) in picked.enumerated() {
                    let question = Templates.fill(Templates.longQuestions[(i + t) % Templates.longQuestions.count], sent: q.question)
                    let answer = q.targets.isEmpty ? q.textAnswer : q.textAnswer.replacingOccurrences(of: "{seg}", with: seg3)
                    c.append(role: conv.roles[0], t == 0 ? PixelLMPrompt.replaceImageToken(question) : String(question.dropFirst(8)))
                    c.append(role: conv.roles[1], answer)
                    sents.append(q.question)
                    answers.append(answer)
                }
                texts.append(c.prompt)
            }
        }
        // the reference templates, filled with synthetic names and sentences
        let short = Templates.shortQuestions + Templates.expandQuestions
        let long = Templates.longQuestions + Templates.expandLongQuestions
        let answerLists = Templates.answers + Templates.singleAnswers + Templates.multiAnswers
        for (k, name) in names.enumerated() where k % 3 == 0 || k < 20 {
            texts.append(Templates.fill(short[k % short.count], className: name))
            let a = answerLists[k % answerLists.count].replacingOccurrences(of: "[SEG]", with: segForms[k % segForms.count])
            texts.append(Templates.fill(a, className: name, seg: segForms[(k + 1) % segForms.count]))
        }
        for (k, s) in sents.enumerated() {
            texts.append(Templates.fill(long[k % long.count], sent: s))
            if k % 4 == 0 {
                texts.append(s + " " + Templates.explanatoryQuestions[k % Templates.explanatoryQuestions.count])
            }
        }
        texts += short + long + Templates.explanatoryQuestions + answerLists + Templates.mrSingleAnswers
        texts += [conv.system] + conv.roles.map { $0 + ":" } + answers
        texts.append("0 1 2 3 4 5 6 7 8 9 10 100")
        texts.append("! \" # $ % & ' ( ) * + , - . / : ; < = > ? @ [ \\ ] ^ _ ` { | } ~")
        return texts
    }

    // MARK: - pre-tokenization for training

    enum CharClass { case space, letter, digit, other, control }

    static let spaceSymbol: Unicode.Scalar = "\u{2581}"

    static func charClass(_ u: Unicode.Scalar) -> CharClass {
        if u == spaceSymbol { return .space }
        if u.value < 0x20 || u.value == 0x7F || (u.value >= 0x80 && u.value < 0xA0) || u.properties.isWhitespace { return .control }
        if u.properties.numericType != nil { return .digit }
        if u.properties.isAlphabetic { return .letter }
        return .other
    }

    /// Text outside these strings is what the tokenizer model sees (they are added/special tokens, or
    /// `<image>`, which tokenizer_image_token cuts out).
    static let noSplit = addedTokens + specialTokens + ["<image>"]

    /// The pieces of `text` the model encodes (reference mode): split on the no-split strings, whitespace
    /// around them stripped, each piece with the SentencePiece dummy prefix and spaces as "▁". (4.31 keeps
    /// the whitespace next to <s> and </s>; for counting training words the difference does not matter.)
    static func modelPieces(_ text: String) -> [[Unicode.Scalar]] {
        var pieces: [String] = [text]
        if text.utf8.contains(where: { $0 == UInt8(ascii: "<") || $0 == UInt8(ascii: "[") }) {
            for t in noSplit where text.contains(t) {
                pieces = pieces.flatMap { $0.components(separatedBy: t) }
            }
        }
        var out: [[Unicode.Scalar]] = []
        for p in pieces {
            let trimmed = p.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty { continue }
            var s: [Unicode.Scalar] = [spaceSymbol]
            for u in trimmed.unicodeScalars { s.append(u == " " ? spaceSymbol : u) }
            out.append(s)
        }
        return out
    }

    /// Training words of a piece: an optional leading "▁" and a run of letters or of other symbols;
    /// digits alone (LLaMA splits digits); control characters (newline, tab) are left to byte fallback.
    /// No piece produced by training crosses these boundaries, so HF's whole-string BPE (no pre-tokenizer)
    /// gives the same tokens as word-by-word BPE.
    static func words(_ piece: [Unicode.Scalar], into emit: ([Unicode.Scalar]) -> Void) {
        var cur: [Unicode.Scalar] = []
        var curClass: CharClass? = nil
        func flush() { if !cur.isEmpty { emit(cur) }; cur = []; curClass = nil }
        for u in piece {
            let c = charClass(u)
            switch c {
            case .control: flush()
            case .space: flush(); cur = [u]
            case .digit: flush(); emit([u])
            case .letter, .other:
                if cur.isEmpty || (cur.count == 1 && cur[0] == spaceSymbol) || curClass == c {
                    cur.append(u); curClass = c
                } else {
                    flush(); cur = [u]; curClass = c
                }
            }
        }
        flush()
    }

    // MARK: - training

    public enum TrainError: Error, CustomStringConvertible {
        case vocabTooSmall(Int, minimum: Int)
        public var description: String {
            switch self {
            case let .vocabTooSmall(v, m): return "--vocab-size \(v) is too small: bytes, characters and added tokens need \(m)"
            }
        }
    }

    /// Trains on `corpus` until base vocabulary + added tokens = `vocabSize` (merges by pair frequency, ties
    /// to the smallest (left, right) by UTF-8 bytes); when no pair is left, the rest is `<unused_N>` padding.
    public static func train(corpus: [String] = corpus(), vocabSize: Int = defaultVocabSize) throws -> SynthTokenizer {
        // distinct texts with their counts, then word -> count, both in first-seen order
        var textIndex: [String: Int] = [:]
        var textList: [String] = []
        var textCounts: [Int] = []
        for t in corpus {
            if let k = textIndex[t] { textCounts[k] += 1 } else { textIndex[t] = textList.count; textList.append(t); textCounts.append(1) }
        }
        var wordIndex: [[Unicode.Scalar]: Int] = [:]
        var wordList: [[Unicode.Scalar]] = []
        var counts: [Int] = []
        var charFreq: [Unicode.Scalar: Int] = [:]
        for (text, n) in zip(textList, textCounts) {
            for p in modelPieces(text) {
                words(p) { w in
                    if let k = wordIndex[w] { counts[k] += n } else {
                        wordIndex[w] = wordList.count; wordList.append(w); counts.append(n)
                    }
                }
            }
        }
        for (w, n) in zip(wordList, counts) { for u in w { charFreq[u, default: 0] += n } }
        // the alphabet: corpus characters plus printable ASCII and "▁"
        for v in 0x21...0x7E { charFreq[Unicode.Scalar(UInt8(v)), default: 0] += 0 }
        charFreq[spaceSymbol, default: 0] += 0
        let alphabet = charFreq.keys.sorted { a, b in
            charFreq[a]! != charFreq[b]! ? charFreq[a]! > charFreq[b]! : a.value < b.value
        }
        let fixed = specialTokens.count + 256
        let baseTarget = vocabSize - addedTokens.count
        let minimum = fixed + alphabet.count + addedTokens.count
        guard vocabSize >= minimum else { throw TrainError.vocabTooSmall(vocabSize, minimum: minimum) }
        let mergeBudget = baseTarget - fixed - alphabet.count

        // symbols: ids into `symbolText`
        var symbolText: [[UInt8]] = alphabet.map { Array(String(Character($0)).utf8) }
        var symbolId: [[UInt8]: Int32] = [:]
        for (i, t) in symbolText.enumerated() { symbolId[t] = Int32(i) }
        var words: [[Int32]] = wordList.map { w in w.map { symbolId[Array(String(Character($0)).utf8)]! } }
        var merges: [(String, String)] = []
        var merged: [String] = []
        while merged.count < mergeBudget {
            var pairCount: [UInt64: Int] = [:]
            for (w, n) in zip(words, counts) where w.count > 1 {
                for k in 0..<(w.count - 1) {
                    pairCount[UInt64(UInt32(w[k])) << 32 | UInt64(UInt32(w[k + 1])), default: 0] += n
                }
            }
            var best: UInt64 = 0
            var bestCount = 0
            for (p, n) in pairCount {
                if n > bestCount { best = p; bestCount = n; continue }
                if n == bestCount {
                    let a = (symbolText[Int(p >> 32)], symbolText[Int(p & 0xFFFF_FFFF)])
                    let b = (symbolText[Int(best >> 32)], symbolText[Int(best & 0xFFFF_FFFF)])
                    if a.0.lexicographicallyPrecedes(b.0) || (a.0 == b.0 && a.1.lexicographicallyPrecedes(b.1)) { best = p }
                }
            }
            if bestCount == 0 { break }
            let l = Int32(best >> 32), r = Int32(best & 0xFFFF_FFFF)
            let text = symbolText[Int(l)] + symbolText[Int(r)]
            merges.append((String(decoding: symbolText[Int(l)], as: UTF8.self), String(decoding: symbolText[Int(r)], as: UTF8.self)))
            let id: Int32
            if let old = symbolId[text] { id = old } else {
                id = Int32(symbolText.count)
                symbolText.append(text)
                symbolId[text] = id
                merged.append(String(decoding: text, as: UTF8.self))
            }
            for k in words.indices where words[k].count > 1 {
                var w = words[k]
                var i = 0, o = 0
                while i < w.count {
                    if i + 1 < w.count && w[i] == l && w[i + 1] == r { w[o] = id; i += 2 } else { w[o] = w[i]; i += 1 }
                    o += 1
                }
                if o != w.count { w.removeLast(w.count - o); words[k] = w }
            }
        }
        var pieces = specialTokens + (0..<256).map(byteToken) + merged + alphabet.map { String(Character($0)) }
        let padding = baseTarget - pieces.count
        pieces += (0..<padding).map { "<unused_\($0)>" }
        return SynthTokenizer(pieces: pieces, merges: merges, mergedPieces: merged.count,
                              characterPieces: alphabet.count, paddingPieces: padding)
    }

    // MARK: - files

    static func json(_ v: SynthJSON) -> String { v.text }

    static func addedTokenJSON(id: Int, _ content: String, special: Bool, normalized: Bool) -> SynthJSON {
        .object([("id", .int(id)), ("content", .string(content)), ("single_word", .bool(false)), ("lstrip", .bool(false)),
                 ("rstrip", .bool(false)), ("normalized", .bool(normalized)), ("special", .bool(special))])
    }

    static func savedToken(_ content: String, typed: Bool) -> SynthJSON {
        var o: [(String, SynthJSON)] = typed ? [("__type", .string("AddedToken"))] : []
        o += [("content", .string(content)), ("lstrip", .bool(false)), ("normalized", .bool(true)), ("rstrip", .bool(false)),
              ("single_word", .bool(false))]
        return .object(o)
    }

    /// tokenizer.json: the layout of a LLaMA/LLaVA tokenizer saved by HF tokenizers (legacy normalizer).
    public var tokenizerJSON: String {
        var added: [SynthJSON] = Self.specialTokens.enumerated().map { Self.addedTokenJSON(id: $0, $1, special: true, normalized: false) }
        for (k, t) in Self.addedTokens.enumerated() {
            // tokenizer.add_tokens([...], special_tokens=True) for the image tokens, add_tokens("[SEGk]") for SEG
            let isImage = t.hasPrefix("<")
            added.append(Self.addedTokenJSON(id: pieces.count + k, t, special: isImage, normalized: !isImage))
        }
        let space = "\u{2581}"
        let normalizer: SynthJSON = .object([("type", .string("Sequence")), ("normalizers", .array([
            .object([("type", .string("Prepend")), ("prepend", .string(space))]),
            .object([("type", .string("Replace")), ("pattern", .object([("String", .string(" "))])), ("content", .string(space))]),
        ]))])
        let bos: SynthJSON = .object([("SpecialToken", .object([("id", .string("<s>")), ("type_id", .int(0))]))])
        func seq(_ s: String, _ t: Int) -> SynthJSON { .object([("Sequence", .object([("id", .string(s)), ("type_id", .int(t))]))]) }
        let bos1: SynthJSON = .object([("SpecialToken", .object([("id", .string("<s>")), ("type_id", .int(1))]))])
        let post: SynthJSON = .object([
            ("type", .string("TemplateProcessing")), ("single", .array([bos, seq("A", 0)])),
            ("pair", .array([bos, seq("A", 0), bos1, seq("B", 1)])),
            ("special_tokens", .object([("<s>", .object([("id", .string("<s>")), ("ids", .array([.int(1)])),
                                                          ("tokens", .array([.string("<s>")]))]))])),
        ])
        let decoder: SynthJSON = .object([("type", .string("Sequence")), ("decoders", .array([
            .object([("type", .string("Replace")), ("pattern", .object([("String", .string(space))])), ("content", .string(" "))]),
            .object([("type", .string("ByteFallback"))]),
            .object([("type", .string("Fuse"))]),
            .object([("type", .string("Strip")), ("content", .string(" ")), ("start", .int(1)), ("stop", .int(0))]),
        ]))])
        var s = "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [\n"
        s += added.map { "    " + $0.text }.joined(separator: ",\n")
        s += "\n  ],\n  \"normalizer\": \(normalizer.text),\n  \"pre_tokenizer\": null,\n  \"post_processor\": \(post.text),\n"
        s += "  \"decoder\": \(decoder.text),\n  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n"
        s += "    \"unk_token\": \"<unk>\",\n    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n"
        s += "    \"fuse_unk\": true,\n    \"byte_fallback\": true,\n    \"ignore_merges\": false,\n    \"vocab\": {\n"
        s += pieces.enumerated().map { id, p in "      " + SynthJSON.string(p).text + ": " + String(id) }.joined(separator: ",\n")
        s += "\n    },\n    \"merges\": [\n"
        s += merges.map { "      " + SynthJSON.array([.string($0.0), .string($0.1)]).text }.joined(separator: ",\n")
        s += "\n    ]\n  }\n}\n"
        return s
    }

    /// tokenizer_config.json as transformers 4.31 saves LlamaTokenizer (the PixelLM checkpoints' shape).
    public var tokenizerConfigJSON: String {
        let o: SynthJSON = .object([
            ("add_bos_token", .bool(true)), ("add_eos_token", .bool(false)), ("bos_token", Self.savedToken("<s>", typed: true)),
            ("clean_up_tokenization_spaces", .bool(false)), ("eos_token", Self.savedToken("</s>", typed: true)),
            ("legacy", .bool(true)), ("model_max_length", .int(512)), ("pad_token", .null), ("padding_side", .string("right")),
            ("sp_model_kwargs", .object([])), ("tokenizer_class", .string("LlamaTokenizer")),
            ("unk_token", Self.savedToken("<unk>", typed: true)),
        ])
        return Self.pretty(o)
    }

    public var specialTokensMapJSON: String {
        Self.pretty(.object([("bos_token", Self.savedToken("<s>", typed: false)), ("eos_token", Self.savedToken("</s>", typed: false)),
                             ("pad_token", .string("<unk>")), ("unk_token", Self.savedToken("<unk>", typed: false))]))
    }

    public var addedTokensJSON: String {
        Self.pretty(.object(Self.addedTokens.enumerated().map { ($1, .int(pieces.count + $0)) }))
    }

    /// Objects one key per line (two-space indent), nested objects inline-indented; enough for these files.
    static func pretty(_ v: SynthJSON, indent: String = "") -> String {
        guard case let .object(o) = v, !o.isEmpty else { return v.text + (indent.isEmpty ? "\n" : "") }
        let inner = indent + "  "
        var s = "{\n"
        s += o.map { k, e in inner + SynthJSON.string(k).text + ": " + pretty(e, indent: inner).trimmingCharacters(in: .newlines) }
            .joined(separator: ",\n")
        s += "\n" + indent + "}" + (indent.isEmpty ? "\n" : "")
        return s
    }

    /// Writes tokenizer.json, tokenizer_config.json, special_tokens_map.json and added_tokens.json into `dir`.
    public func write(to dir: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for (name, text) in [("tokenizer.json", tokenizerJSON), ("tokenizer_config.json", tokenizerConfigJSON),
                             ("special_tokens_map.json", specialTokensMapJSON), ("added_tokens.json", addedTokensJSON)] {
            try AtomicWrite.write(Array(text.utf8), to: dir + "/" + name)
        }
    }
}
