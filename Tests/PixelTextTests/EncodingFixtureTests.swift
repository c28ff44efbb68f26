import Foundation
import XCTest
import PixelText

/// Every test line, encoded and decoded, against HF tokenizers (tokenizer.json), sentencepiece
/// (tokenizer.model) and transformers 4.31 (`.reference`).
final class HFTokenizerFixtureTests: XCTestCase {
    private func check(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let exp = dict(dict(TextFixture.json("expected_hf.json"))[name])
        let tok = try HFTokenizer(path: TextFixture.dir(name) + "/tokenizer.json")
        XCTAssertEqual(tok.vocabSize, (exp["vocab_size"] as! NSNumber).intValue, name)
        let lines = list(exp["lines"])
        XCTAssertEqual(lines.count, TextFixture.lines.count)
        var bad = 0
        for (k, text) in TextFixture.lines.enumerated() {
            let e = dict(lines[k])
            let ids = tok.encode(text, addSpecialTokens: true)
            if ids != ints(e["ids"]) { bad += 1 }
            XCTAssertEqual(ids, ints(e["ids"]), "\(name) encode \(text.debugDescription)", file: file, line: line)
            XCTAssertEqual(tok.encode(text, addSpecialTokens: false), ints(e["ids_plain"]), "\(name) plain \(text.debugDescription)", file: file, line: line)
            assertSameText(tok.decode(ints(e["ids"])), e["decode"] as! String, "\(name) decode \(text.debugDescription)", file: file, line: line)
            assertSameText(tok.decode(ints(e["ids"]), skipSpecialTokens: true), e["decode_skip"] as! String,
                           "\(name) decode skip \(text.debugDescription)", file: file, line: line)
        }
        for c in list(exp["decode_cases"]) {
            let c = dict(c)
            assertSameText(tok.decode(ints(c["ids"])), c["text"] as! String, "\(name) decode \(ints(c["ids"]))", file: file, line: line)
            assertSameText(tok.decode(ints(c["ids"]), skipSpecialTokens: true), c["text_skip"] as! String,
                           "\(name) decode skip \(ints(c["ids"]))", file: file, line: line)
        }
    }

    /// normalizer Prepend+Replace, decoder Replace/ByteFallback/Fuse/Strip, normalized [SEG*] tokens.
    func testLegacyLlamaJSON() throws { try check("llava-legacy") }
    /// transformers' LlamaTokenizer(legacy=False): Metaspace prepend_scheme "first", split false.
    func testMetaspaceFirstJSON() throws { try check("llava-metaspace") }
    /// Metaspace always + split, Metaspace decoder, lstrip/rstrip/single_word/normalized added tokens, BOS+EOS template.
    func testFlagsJSON() throws { try check("hf-flags") }
    /// Metaspace never, no post-processor, "a b" string merges.
    func testNeverJSONWithStringMerges() throws { try check("hf-never") }

    /// The facade in `.hfFast` is the same pipeline.
    func testFacadeHFFastMatches() throws {
        for name in ["llava-legacy", "llava-metaspace"] {
            let exp = list(dict(dict(TextFixture.json("expected_hf.json"))[name])["lines"])
            let t = try Tokenizer(directory: TextFixture.dir(name), mode: .hfFast)
            for (k, text) in TextFixture.lines.enumerated() {
                let e = dict(exp[k])
                XCTAssertEqual(t.encode(text, addBos: true), ints(e["ids"]), "\(name) \(text.debugDescription)")
                XCTAssertEqual(t.encode(text, addBos: false), ints(e["ids_plain"]), "\(name) \(text.debugDescription)")
                assertSameText(t.decode(ints(e["ids"]), skipSpecial: true), e["decode_skip"] as! String)
            }
        }
    }
}

final class SentencePieceFixtureTests: XCTestCase {
    func testEncodeDecodeMatchSentencePiece() throws {
        let exp = dict(TextFixture.json("expected_sp.json"))
        let sp = try SentencePieceModel(path: TextFixture.dir("llava-sp") + "/tokenizer.model")
        XCTAssertEqual(sp.vocabSize, (exp["vocab_size"] as! NSNumber).intValue)
        XCTAssertTrue(sp.byteFallback)
        XCTAssertTrue(sp.addDummyPrefix)
        XCTAssertFalse(sp.removeExtraWhitespaces)
        XCTAssertEqual([sp.unkId, sp.bosId, sp.eosId, sp.padId], [0, 1, 2, -1])
        XCTAssertEqual(sp.pieces[0].type, .unknown)
        XCTAssertEqual(sp.pieces[1].type, .control)
        XCTAssertEqual(sp.pieces[3].type, .byte)
        XCTAssertEqual(sp.pieces[3].piece, "<0x00>")
        let lines = list(exp["lines"])
        for (k, text) in TextFixture.lines.enumerated() {
            let e = dict(lines[k])
            XCTAssertEqual(sp.encode(text), ints(e["ids"]), "encode \(text.debugDescription)")
            assertSameText(sp.decode(ints(e["ids"])), e["decode"] as! String, "decode \(text.debugDescription)")
        }
        for c in list(exp["decode_cases"]) {
            let c = dict(c)
            assertSameText(sp.decode(ints(c["ids"])), c["text"] as! String, "decode \(ints(c["ids"]))")
        }
    }
}

final class ReferenceModeFixtureTests: XCTestCase {
    private func check(dir: String, expected: String, preferSentencePiece: Bool = false,
                       file: StaticString = #filePath, line: UInt = #line) throws {
        let exp = dict(dict(dict(TextFixture.json("expected_reference.json"))["dirs"])[expected])
        let t = try Tokenizer(directory: TextFixture.dir(dir), mode: .reference, preferSentencePiece: preferSentencePiece)
        let lines = list(exp["lines"])
        for (k, text) in TextFixture.lines.enumerated() {
            let e = dict(lines[k])
            XCTAssertEqual(t.encode(text), ints(e["ids"]), "\(dir) encode \(text.debugDescription)", file: file, line: line)
            XCTAssertEqual(t.encode(text, addBos: false), Array(ints(e["ids"]).dropFirst()), file: file, line: line)
            assertSameText(t.decode(ints(e["ids"])), e["decode"] as! String, "\(dir) decode \(text.debugDescription)", file: file, line: line)
            assertSameText(t.decode(ints(e["ids"]), skipSpecial: true), e["decode_skip"] as! String,
                           "\(dir) decode skip \(text.debugDescription)", file: file, line: line)
        }
        for c in list(exp["decode_cases"]) {
            let c = dict(c)
            assertSameText(t.decode(ints(c["ids"])), c["text"] as! String, "\(dir) decode \(ints(c["ids"]))", file: file, line: line)
            assertSameText(t.decode(ints(c["ids"]), skipSpecial: true), c["text_skip"] as! String,
                           "\(dir) decode skip \(ints(c["ids"]))", file: file, line: line)
        }
    }

    func testFixturesWereVerifiedAgainstTransformers431() {
        XCTAssertEqual(dict(TextFixture.json("expected_reference.json"))["verified_with_transformers"] as? String, "4.31.0")
    }

    /// tokenizer.model only; special_tokens_map.json with plain strings (strip around <s>, </s>, <unk> too).
    func testSentencePieceBackend() throws { try check(dir: "llava-sp", expected: "llava-sp") }
    /// tokenizer.json (legacy layout) preferred; special tokens as AddedToken dicts (no stripping around them).
    func testTokenizerJSONBackend() throws { try check(dir: "llava-legacy", expected: "llava-legacy") }
    func testTokenizerModelPreferred() throws { try check(dir: "llava-legacy", expected: "llava-legacy", preferSentencePiece: true) }
    /// A Metaspace-style tokenizer.json (transformers 5 save) still encodes as 4.31 did in `.reference`.
    func testMetaspaceJSONInReferenceMode() throws { try check(dir: "llava-metaspace", expected: "llava-legacy") }
}
