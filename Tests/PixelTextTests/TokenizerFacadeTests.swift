import Foundation
import XCTest
import PixelText

final class TokenizerFacadeTests: XCTestCase {
    private let layouts: [(String, Tokenizer.Mode)] = [
        ("llava-sp", .reference), ("llava-legacy", .reference), ("llava-legacy", .hfFast),
        ("llava-metaspace", .reference), ("llava-metaspace", .hfFast),
    ]

    func testPixelLMIdsFromFiles() throws {
        for (dir, mode) in layouts {
            let t = try Tokenizer(directory: TextFixture.dir(dir), mode: mode)
            XCTAssertEqual([t.unkId, t.bosId, t.eosId, t.padId], [0, 1, 2, 0], "\(dir) \(mode)")
            XCTAssertEqual(t.segTokens, (0..<6).map { "[SEG\($0)]" })
            XCTAssertEqual(t.segIds, Array(1503...1508), "\(dir)")
            XCTAssertEqual([t.imPatchId, t.imStartId, t.imEndId], [1500, 1501, 1502])
            XCTAssertEqual(t.vocabSize, 1509)
            XCTAssertEqual(t.tokenToId("[SEG3]"), 1506)
            XCTAssertEqual(t.idToToken(1501), "<im_start>")
            XCTAssertEqual(t.idToToken(1), "<s>")
            XCTAssertNoThrow(try t.requirePixelLMTokens(segTokenCount: 6), "\(dir) \(mode)")
            XCTAssertThrowsError(try t.requirePixelLMTokens(segTokenCount: 1))
            XCTAssertThrowsError(try t.requirePixelLMTokens(segTokenCount: 7))
        }
    }

    /// Spec 1.1: "It is [SEG0] [SEG1] … [SEG5]." -> ▁It ▁is [SEG0]…[SEG5] ▁. in the reference.
    func testReferenceWhitespaceAroundAddedTokens() throws {
        let t = try Tokenizer(directory: TextFixture.dir("llava-sp"))
        let ids = t.encode("It is [SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5].", addBos: false)
        XCTAssertEqual(Array(ids[2..<8]), t.segIds)
        XCTAssertEqual(t.idToToken(ids[0]), "\u{2581}It")
        XCTAssertEqual(t.idToToken(ids[1]), "\u{2581}is")
        XCTAssertEqual(Array(ids[8...]), t.encode(".", addBos: false))  // "." encoded alone, dummy prefix included
        XCTAssertEqual(t.idToToken(ids[8]), "\u{2581}")
        // "<im_end>\n..." loses the newline; each piece gets its own dummy prefix
        let e = t.encode("<im_end>\nWhat", addBos: false)
        XCTAssertEqual(e.first, t.imEndId)
        XCTAssertEqual(t.idToToken(e[1])?.hasPrefix("\u{2581}"), true)
        // HF fast with the Metaspace file keeps the spaces as "▁" tokens
        let f = try Tokenizer(directory: TextFixture.dir("llava-metaspace"), mode: .hfFast)
        XCTAssertGreaterThan(f.encode("It is [SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5].", addBos: false).count, 9)
    }

    func testHFFastNeedsTokenizerJSON() {
        XCTAssertThrowsError(try Tokenizer(directory: TextFixture.dir("llava-sp"), mode: .hfFast)) { e in
            XCTAssertTrue("\(e)".contains("tokenizer.json"), "\(e)")
        }
    }

    private func copyDir(_ name: String, _ tag: String) -> String {
        let d = tmpDir(tag)
        for f in try! FileManager.default.contentsOfDirectory(atPath: TextFixture.dir(name)) {
            try! FileManager.default.copyItem(atPath: TextFixture.dir(name) + "/" + f, toPath: d + "/" + f)
        }
        return d
    }

    func testCollidingIdsAreRejected() throws {
        // eos resolving to <s>: two PixelLM ids collapse to one
        let d = copyDir("llava-sp", "collide")
        defer { try? FileManager.default.removeItem(atPath: d) }
        write(d + "/special_tokens_map.json", #"{"bos_token": "<s>", "eos_token": "<s>", "unk_token": "<unk>"}"#)
        XCTAssertThrowsError(try Tokenizer(directory: d)) { e in
            XCTAssertTrue("\(e)".contains("both have id 1"), "\(e)")
        }
        // every [SEG*] on one id (the spec 1.1 pitfall, here through the files)
        let d2 = copyDir("llava-legacy", "collide2")
        defer { try? FileManager.default.removeItem(atPath: d2) }
        var json = String(decoding: FileManager.default.contents(atPath: d2 + "/tokenizer.json")!, as: UTF8.self)
        json = json.replacingOccurrences(of: #""id":1504,"content":"[SEG1]""#, with: #""id":1503,"content":"[SEG1]""#)
        write(d2 + "/tokenizer.json", json)
        try FileManager.default.removeItem(atPath: d2 + "/added_tokens.json")
        XCTAssertThrowsError(try Tokenizer(directory: d2, mode: .hfFast)) { e in
            XCTAssertTrue("\(e)".contains("1503"), "\(e)")
            XCTAssertTrue("\(e)".contains("tokenizer.json"), "\(e)")
        }
    }

    func testAddedTokensJSONMustAgree() throws {
        let d = copyDir("llava-legacy", "disagree")
        defer { try? FileManager.default.removeItem(atPath: d) }
        write(d + "/added_tokens.json", #"{"<im_patch>": 1500, "<im_start>": 1502, "<im_end>": 1501}"#)
        XCTAssertThrowsError(try Tokenizer(directory: d)) { e in
            XCTAssertTrue("\(e)".contains("added_tokens.json"), "\(e)")
        }
        let d2 = copyDir("llava-sp", "gap")
        defer { try? FileManager.default.removeItem(atPath: d2) }
        write(d2 + "/added_tokens.json", #"{"<im_patch>": 1500, "<im_start>": 1502}"#)
        XCTAssertThrowsError(try Tokenizer(directory: d2)) { e in
            XCTAssertTrue("\(e)".contains("expected 1501"), "\(e)")
        }
    }

    /// A 10k-word text (one BPE word of ~60k scalars: no added tokens, no pre-splitting) in every backend.
    func testLongTextSpeedAndAgreement() throws {
        var words: [String] = []
        let corpus = TextFixture.lines.filter { !$0.contains("[") && !$0.contains("<") && !$0.contains("\u{2581}") }
            .joined(separator: " ")
        let base = corpus.split(separator: " ").map(String.init).filter { !$0.isEmpty }
        while words.count < 10_000 { words += base }
        let text = words.prefix(10_000).joined(separator: " ")
        var results: [String: [Int]] = [:]
        for (dir, mode, preferSP) in [("llava-legacy", Tokenizer.Mode.hfFast, false), ("llava-metaspace", .hfFast, false),
                                      ("llava-legacy", .reference, false), ("llava-legacy", .reference, true)] {
            let t = try Tokenizer(directory: TextFixture.dir(dir), mode: mode, preferSentencePiece: preferSP)
            let start = Date()
            let ids = t.encode(text)
            let dt = Date().timeIntervalSince(start)
            print("encode 10k words (\(text.utf8.count) bytes) \(dir) \(mode)\(preferSP ? " tokenizer.model" : ""): \(ids.count) ids in \(String(format: "%.1f", dt * 1000)) ms")
            XCTAssertLessThan(dt, 10)
            results["\(dir) \(mode) \(preferSP)"] = ids
            let back = t.decode(ids, skipSpecial: true)
            XCTAssertTrue(Array(back.utf8) == Array(text.utf8), "\(dir) \(mode): decode(encode(text)) differs from text")
        }
        // The merges tokenizer.json derives from piece scores give the same segmentation as SentencePiece here.
        XCTAssertEqual(results["llava-legacy reference false"], results["llava-legacy reference true"])
        XCTAssertEqual(results["llava-legacy hfFast false"], results["llava-legacy reference true"])
    }
}
