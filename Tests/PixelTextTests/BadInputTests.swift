import Foundation
import XCTest
import PixelText

/// Missing files, broken JSON, unsupported components and corrupt protobufs: each error names the file and
/// the problem.
final class BadInputTests: XCTestCase {
    private var dir = ""

    override func setUp() { dir = tmpDir("bad") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    private func expectError(_ body: () throws -> Void, contains parts: [String], file: StaticString = #filePath, line: UInt = #line) {
        do {
            try body()
            XCTFail("no error (expected \(parts))", file: file, line: line)
        } catch {
            let s = "\(error)"
            for p in parts { XCTAssertTrue(s.contains(p), "\"\(s)\" lacks \"\(p)\"", file: file, line: line) }
        }
    }

    /// A minimal valid tokenizer.json with one component replaced.
    private func tokenizerJSON(model: String? = nil, normalizer: String = "null", pre: String = "null",
                               post: String = "null", decoder: String = "null") -> String {
        let m = model ?? #"{"type":"BPE","dropout":null,"unk_token":"<unk>","fuse_unk":true,"byte_fallback":false,"vocab":{"<unk>":0,"<s>":1,"</s>":2,"a":3,"b":4,"ab":5},"merges":["a b"]}"#
        return #"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":\#(normalizer),"pre_tokenizer":\#(pre),"post_processor":\#(post),"decoder":\#(decoder),"model":\#(m)}"#
    }

    private func writeJSON(_ text: String) -> String {
        let p = dir + "/tokenizer.json"
        write(p, text)
        return p
    }

    func testMinimalJSONWorks() throws {
        let t = try HFTokenizer(path: writeJSON(tokenizerJSON()))
        XCTAssertEqual(t.encode("abba", addSpecialTokens: false), [5, 4, 3])
        XCTAssertEqual(t.encode("abc", addSpecialTokens: false), [5, 0])
        // pairs format for merges
        let t2 = try HFTokenizer(path: writeJSON(tokenizerJSON(model: #"{"type":"BPE","vocab":{"<unk>":0,"a":1,"b":2,"ab":3},"merges":[["a","b"]],"unk_token":"<unk>"}"#)))
        XCTAssertEqual(t2.encode("aab", addSpecialTokens: false), [1, 3])
    }

    /// BPE options the LLaMA files do not use but the format has.
    func testOtherBPEOptions() throws {
        let v = ###""vocab":{"<unk>":0,"a":1,"b":2,"ab":3,"##b":4,"a</w>":5,"b</w>":6}"###
        // fuse_unk on/off
        var t = try HFTokenizer(path: writeJSON(tokenizerJSON(model: #"{"type":"BPE",\#(v),"merges":[],"unk_token":"<unk>","fuse_unk":true}"#)))
        XCTAssertEqual(t.encode("xyab", addSpecialTokens: false), [0, 1, 2])
        t = try HFTokenizer(path: writeJSON(tokenizerJSON(model: #"{"type":"BPE",\#(v),"merges":[],"unk_token":"<unk>","fuse_unk":false}"#)))
        XCTAssertEqual(t.encode("xyab", addSpecialTokens: false), [0, 0, 1, 2])
        // no unk_token: unknown characters vanish
        t = try HFTokenizer(path: writeJSON(tokenizerJSON(model: #"{"type":"BPE",\#(v),"merges":[]}"#)))
        XCTAssertEqual(t.encode("xab", addSpecialTokens: false), [1, 2])
        // ignore_merges: a whole word in the vocab is taken as is
        t = try HFTokenizer(path: writeJSON(tokenizerJSON(model: #"{"type":"BPE",\#(v),"merges":[],"ignore_merges":true}"#)))
        XCTAssertEqual(t.encode("ab", addSpecialTokens: false), [3])
        // continuing_subword_prefix / end_of_word_suffix
        t = try HFTokenizer(path: writeJSON(tokenizerJSON(model: ###"{"type":"BPE",\###(v),"merges":[],"continuing_subword_prefix":"##"}"###)))
        XCTAssertEqual(t.encode("ab", addSpecialTokens: false), [1, 4])
        t = try HFTokenizer(path: writeJSON(tokenizerJSON(model: #"{"type":"BPE",\#(v),"merges":[],"end_of_word_suffix":"</w>"}"#)))
        XCTAssertEqual(t.encode("ab", addSpecialTokens: false), [1, 6])
        // no decoder: tokens joined by spaces; Strip with stop
        t = try HFTokenizer(path: writeJSON(tokenizerJSON(model: #"{"type":"BPE",\#(v),"merges":[]}"#)))
        XCTAssertEqual(t.decode([1, 2, 3]), "a b ab")
        t = try HFTokenizer(path: writeJSON(tokenizerJSON(
            model: #"{"type":"BPE",\#(v),"merges":[]}"#,
            decoder: #"{"type":"Sequence","decoders":[{"type":"Fuse"},{"type":"Strip","content":"a","start":1,"stop":2}]}"#)))
        XCTAssertEqual(t.decode([1, 2, 3, 1]), "bab")
    }

    func testMissingFiles() {
        expectError({ _ = try HFTokenizer(path: dir + "/nope.json") }, contains: ["nope.json", "no such file"])
        expectError({ _ = try SentencePieceModel(path: dir + "/nope.model") }, contains: ["nope.model", "no such file"])
        expectError({ _ = try Tokenizer(directory: dir + "/absent") }, contains: ["absent", "does not exist"])
        expectError({ _ = try Tokenizer(directory: dir) }, contains: [dir, "no tokenizer.json or tokenizer.model"])
    }

    func testTruncatedAndInvalidJSON() throws {
        let full = try String(contentsOfFile: TextFixture.dir("llava-legacy") + "/tokenizer.json", encoding: .utf8)
        let half = String(full.utf8.prefix(full.utf8.count / 2))!
        let p = writeJSON(half)
        expectError({ _ = try HFTokenizer(path: p) }, contains: [p, "invalid JSON", "truncated"])
        _ = writeJSON(#"{"model": [1, 2,}"#)
        expectError({ _ = try HFTokenizer(path: p) }, contains: [p, "invalid JSON at byte 16"])
        _ = writeJSON("[]")
        expectError({ _ = try HFTokenizer(path: p) }, contains: [p, "not an object"])
        _ = writeJSON(#"{"version":"1.0"}"#)
        expectError({ _ = try HFTokenizer(path: p) }, contains: [p, "no \"model\""])
        // a side file of the directory
        let d = dir + "/tok"
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: TextFixture.dir("llava-sp") + "/tokenizer.model", toPath: d + "/tokenizer.model")
        write(d + "/added_tokens.json", #"{"<im_patch>": 1500,"#)
        expectError({ _ = try Tokenizer(directory: d) }, contains: ["added_tokens.json", "invalid JSON"])
    }

    func testUnsupportedComponents() {
        let cases: [(String, [String])] = [
            (tokenizerJSON(model: #"{"type":"WordPiece","vocab":{"a":0}}"#), ["model", "WordPiece"]),
            (tokenizerJSON(model: #"{"type":"Unigram","vocab":[["a",0.0]]}"#), ["model", "Unigram"]),
            (tokenizerJSON(normalizer: #"{"type":"NFKC"}"#), ["normalizer", "NFKC"]),
            (tokenizerJSON(normalizer: #"{"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"▁"},{"type":"Lowercase"}]}"#), ["normalizer", "Lowercase"]),
            (tokenizerJSON(normalizer: #"{"type":"Replace","pattern":{"Regex":" {2,}"},"content":"▁"}"#), ["normalizer", "Regex"]),
            (tokenizerJSON(pre: #"{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}"#), ["pre_tokenizer", "ByteLevel"]),
            (tokenizerJSON(pre: #"{"type":"Metaspace","replacement":"▁","prepend_scheme":"sometimes","split":false}"#), ["prepend_scheme", "sometimes"]),
            (tokenizerJSON(decoder: ###"{"type":"WordPiece","prefix":"##","cleanup":true}"###), ["decoder", "WordPiece"]),
            (tokenizerJSON(post: #"{"type":"BertProcessing","sep":["</s>",2],"cls":["<s>",1]}"#), ["post_processor", "BertProcessing"]),
            (tokenizerJSON(model: #"{"type":"BPE","vocab":{"a":0},"merges":[],"dropout":0.1}"#), ["dropout"]),
        ]
        for (json, parts) in cases {
            let p = writeJSON(json)
            expectError({ _ = try HFTokenizer(path: p) }, contains: [p, "unsupported"] + parts)
        }
    }

    func testInvalidModelContents() {
        let cases: [(String, String)] = [
            (#"{"type":"BPE","vocab":{"a":0,"b":1},"merges":["a c"]}"#, "\"c\" is not in the vocab"),
            (#"{"type":"BPE","vocab":{"a":0,"b":1},"merges":["a b"]}"#, "merged token \"ab\" is not in the vocab"),
            (#"{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":["a b c"]}"#, "is not \"left right\""),
            (#"{"type":"BPE","vocab":{"a":0},"merges":[],"unk_token":"<unk>"}"#, "unk_token"),
            (#"{"type":"BPE","vocab":{"a":"x"},"merges":[]}"#, "not an integer"),
        ]
        for (m, part) in cases {
            let p = writeJSON(tokenizerJSON(model: m))
            expectError({ _ = try HFTokenizer(path: p) }, contains: [p, part])
        }
    }

    // MARK: SentencePiece protobuf

    private func varint(_ v: UInt64) -> [UInt8] {
        var v = v, out: [UInt8] = []
        repeat {
            var b = UInt8(v & 0x7F)
            v >>= 7
            if v != 0 { b |= 0x80 }
            out.append(b)
        } while v != 0
        return out
    }

    private func field(_ n: Int, _ payload: [UInt8]) -> [UInt8] { varint(UInt64(n << 3 | 2)) + varint(UInt64(payload.count)) + payload }
    private func vfield(_ n: Int, _ v: UInt64) -> [UInt8] { varint(UInt64(n << 3)) + varint(v) }

    private func piece(_ s: String, _ score: Float, _ type: Int) -> [UInt8] {
        var p = field(1, Array(s.utf8))
        p += varint(UInt64(2 << 3 | 5)) + withUnsafeBytes(of: score.bitPattern.littleEndian) { Array($0) }
        p += vfield(3, UInt64(type))
        return field(1, p)
    }

    private func model(modelType: Int = 2, charsmap: [UInt8] = [], extraPieces: [[UInt8]] = []) -> [UInt8] {
        var m: [UInt8] = []
        m += piece("<unk>", 0, 2) + piece("<s>", 0, 3) + piece("</s>", 0, 3)
        m += piece("\u{2581}", -1, 1) + piece("a", -2, 1) + piece("b", -3, 1) + piece("\u{2581}a", -0.5, 1) + piece("ab", -0.25, 1)
        for p in extraPieces { m += p }
        m += field(2, vfield(3, UInt64(modelType)))
        var norm = field(1, Array("identity".utf8))
        if !charsmap.isEmpty { norm += field(2, charsmap) }
        norm += vfield(4, 0)
        m += field(3, norm)
        return m
    }

    func testHandMadeModelEncodes() throws {
        let p = dir + "/m.model"
        write(p, model())
        let sp = try SentencePieceModel(path: p)
        // "▁ab": ab (-0.25) beats ▁a (-0.5)
        XCTAssertEqual(sp.encode("ab"), [3, 7])
        XCTAssertEqual(sp.encode("b a"), [3, 5, 6])
        XCTAssertEqual(sp.encode("c"), [3, 0])  // no byte_fallback: unk
        XCTAssertEqual(sp.decode([3, 7, 0, 1]), "ab \u{2047} ")
    }

    func testCorruptProtobuf() throws {
        let real = try Data(contentsOf: URL(fileURLWithPath: TextFixture.dir("llava-sp") + "/tokenizer.model"))
        let p = dir + "/tokenizer.model"
        write(p, Array(real.prefix(real.count / 3)))
        expectError({ _ = try SentencePieceModel(path: p) }, contains: [p, "corrupt", "runs past the end"])
        write(p, [0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])
        expectError({ _ = try SentencePieceModel(path: p) }, contains: [p, "corrupt"])
        write(p, [0x0B, 0x00])  // field 1, wire type 3 (group)
        expectError({ _ = try SentencePieceModel(path: p) }, contains: [p, "wire type 3"])
        write(p, Array("this is not a protobuf at all".utf8))
        expectError({ _ = try SentencePieceModel(path: p) }, contains: [p, "corrupt"])
        write(p, [UInt8]())
        expectError({ _ = try SentencePieceModel(path: p) }, contains: [p, "no pieces"])
        write(p, model(extraPieces: [piece("<0x41>", 0, 6)]))
        expectError({ _ = try SentencePieceModel(path: p) }, contains: [p, "without byte_fallback"])
        write(p, model(extraPieces: [piece("a", 0, 1)]))
        expectError({ _ = try SentencePieceModel(path: p) }, contains: [p, "defined twice"])
    }

    func testUnsupportedSentencePieceModels() {
        let p = dir + "/tokenizer.model"
        write(p, model(modelType: 1))
        expectError({ _ = try SentencePieceModel(path: p) }, contains: [p, "unsupported", "UNIGRAM"])
        write(p, model(charsmap: [1, 2, 3, 4]))
        expectError({ _ = try SentencePieceModel(path: p) }, contains: [p, "unsupported", "identity", "precompiled_charsmap"])
    }
}
