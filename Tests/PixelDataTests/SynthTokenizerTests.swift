import Foundation
import XCTest
@testable import PixelData
import PixelText

/// The tokenizer `pixellm synth` writes to OUT/tokenizer: loads with the facade, round-trips the tree's
/// texts, PixelLM token ids, compression, determinism, the vocab-size option.
final class SynthTokenizerTests: XCTestCase {
    static let config = SynthConfig(seed: 3, train: 6, val: 2, test: 3, size: 64)

    /// One tree (with its tokenizer) for the tests that only read it.
    static let tree: String = {
        let dir = NSTemporaryDirectory() + "pixellm-synthtok-\(getpid())-\(UUID().uuidString)"
        _ = try! SynthGenerator(config: config, out: dir).run()
        return dir
    }()

    override class func tearDown() {
        try? FileManager.default.removeItem(atPath: tree)
        super.tearDown()
    }

    func json(_ path: String) throws -> Any {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Self.tree + "/" + path)))
    }

    /// Every string of the tree the data pipeline tokenizes, plus the reference templates and the llava_v1
    /// system prompt.
    func treeTexts() throws -> [String] {
        var texts: [String] = []
        for split in SynthGenerator.splits {
            for r in try json("muse_\(split).json") as! [[String: Any]] {
                texts += r["questions"] as! [String]
                texts += r["text_answers"] as! [String]
            }
        }
        for item in try json("llava_dataset/llava_instruct_150k.json") as! [[String: Any]] {
            texts += (item["conversations"] as! [[String: String]]).map { $0["value"]! }
        }
        for item in try json("reason_seg/ReasonSeg/explanatory/train.json") as! [[String: String]] {
            texts += [item["query"]!, item["outputs"]!]
        }
        texts += Templates.shortQuestions + Templates.longQuestions + Templates.explanatoryQuestions + Templates.answers
        texts += Templates.singleAnswers + Templates.multiAnswers + Templates.expandLongQuestions + Templates.expandQuestions
        texts.append(Conversation.llavaV1.system)
        var seen = Set<String>()
        return texts.filter { seen.insert($0).inserted }
    }

    func load(_ mode: Tokenizer.Mode) throws -> Tokenizer {
        try Tokenizer(directory: Self.tree + "/tokenizer", mode: mode)
    }

    func testDirectoryLoadsWithTheFacade() throws {
        for mode in Tokenizer.Mode.allCases {
            let tok = try load(mode)
            guard case .tokenizerJSON = tok.backend else { return XCTFail("expected the tokenizer.json backend") }
            XCTAssertEqual(tok.vocabSize, 1024, "len(tokenizer) = configs/synth-small vocab_size")
            XCTAssertEqual([tok.unkId, tok.bosId, tok.eosId, tok.padId], [0, 1, 2, 0])
            XCTAssertTrue(tok.addBosToken)
            XCTAssertFalse(tok.addEosToken)
            XCTAssertEqual(tok.encode("Where is the circle?").first, 1, "BOS in front")
        }
        for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: Self.tree + "/tokenizer/" + f), f)
        }
    }

    func testPixelLMTokensHaveTheirOwnIds() throws {
        for mode in Tokenizer.Mode.allCases {
            let tok = try load(mode)
            // the released order: <im_patch>, <im_start>, <im_end>, [SEG0..5] as the last ids
            XCTAssertEqual(tok.segTokens, (0..<6).map { "[SEG\($0)]" })
            XCTAssertEqual(tok.segIds, Array(1018..<1024))
            XCTAssertEqual([tok.imPatchId, tok.imStartId, tok.imEndId], [1015, 1016, 1017])
            XCTAssertNoThrow(try tok.requirePixelLMTokens(segTokenCount: 6), "\(mode)")
            XCTAssertNoThrow(try tok.requirePixelLMTokens(segTokenCount: 3), "\(mode)")
            let all = [tok.bosId, tok.eosId, tok.unkId, tok.imPatchId!, tok.imStartId!, tok.imEndId!] + tok.segIds
            XCTAssertEqual(Set(all).count, all.count)
            XCTAssert(all.allSatisfy { $0 < 1024 })
            // inside text, each stays one id
            let ids = tok.encode("The circle [SEG0] [SEG1] [SEG2].", addBos: false)
            XCTAssertEqual(ids.filter { $0 >= 1018 }, [1018, 1019, 1020], "\(mode): \(ids)")
        }
    }

    func testRoundTripsEveryTreeText() throws {
        let texts = try treeTexts()
        XCTAssertGreaterThan(texts.count, 100)
        let ref = try load(.reference), fast = try load(.hfFast)
        let newline = ref.tokenToId("<0x0A>")!
        for t in texts {
            let r = ref.encode(t, addBos: false), f = fast.encode(t, addBos: true)
            XCTAssertEqual(ref.decode(r), t, "reference round trip: \(r)")
            XCTAssertEqual(fast.decode(f, skipSpecial: true), t, "hfFast round trip: \(f)")
            // no text comes out unknown; only control characters use byte fallback
            XCTAssertFalse(r.contains(0), t)
            XCTAssert(r.allSatisfy { !(3...258).contains($0) || $0 == newline }, "byte fallback in \(t): \(r)")
            // no added token is involved, so the two modes agree
            XCTAssertEqual(r, Array(f.dropFirst()), t)
        }
        // with the SEG tokens filled in (as training tokenizes answers), hfFast still round-trips exactly
        for split in SynthGenerator.splits {
            for r in try json("muse_\(split).json") as! [[String: Any]] {
                for a in r["text_answers"] as! [String] {
                    let t = a.replacingOccurrences(of: "{seg}", with: "[SEG0] [SEG1] [SEG2]")
                    XCTAssertEqual(fast.decode(fast.encode(t), skipSpecial: true), t)
                    XCTAssertEqual(ref.encode(t).filter { $0 >= 1018 }.count, 3 * (t.components(separatedBy: "[SEG0]").count - 1))
                }
            }
        }
    }

    func testCompressesTheSynthText() throws {
        let tok = try load(.reference)
        func perWord(_ texts: [String]) -> Double {
            var words = 0, tokens = 0
            for t in texts {
                words += t.split(whereSeparator: { $0 == " " || $0 == "\n" }).count
                tokens += tok.encode(t, addBos: false).count
            }
            return Double(tokens) / Double(words)
        }
        // every tree text, raw templates ("{class_name}", "<image>\n") and "{seg}" placeholders included
        let all = perWord(try treeTexts())
        // the questions and the answers as training sees them ({seg} filled with SEG tokens)
        var qa: [String] = []
        for split in SynthGenerator.splits {
            for r in try json("muse_\(split).json") as! [[String: Any]] {
                qa += r["questions"] as! [String]
                qa += (r["text_answers"] as! [String]).map { $0.replacingOccurrences(of: "{seg}", with: "[SEG0] [SEG1] [SEG2]") }
            }
        }
        let muse = perWord(qa)
        print("tokens per word: tree texts \(all), MUSE questions and filled answers \(muse)")
        // characters alone would be ~6 per word
        XCTAssertLessThan(all, 1.5, "measured 1.41")
        XCTAssertLessThan(muse, 1.2, "measured 1.12")
        XCTAssertGreaterThan(muse, 1.0)
        var common = SynthShape.allCases.flatMap { [$0.name, $0.plural] } + SynthColor.allCases.map(\.name)
        common += SynthSize.allCases.map(\.name) + ["the", "The", "image", "object", "objects", "Segment", "segment", "segmentation",
                                                    "mask", "Which", "shape", "shapes", "largest", "smallest", "there", "Please"]
        for w in common {
            XCTAssertEqual(tok.encode(w, addBos: false).count, 1, "\"\(w)\" is not a single token")
            XCTAssertEqual(tok.encode("the \(w)", addBos: false).count, 2, "\"▁\(w)\" is not a single token")
        }
    }

    func testSameBytesEveryRunAndSeed() throws {
        let a = try SynthTokenizer.train(), b = try SynthTokenizer.train()
        XCTAssertEqual(a.tokenizerJSON, b.tokenizerJSON)
        XCTAssertEqual(a.merges.count, b.merges.count)
        // trees of other seeds get the same tokenizer (its corpus is a fixed sample), byte for byte
        let other = try makeScratchDirectory(self)
        var c = Self.config
        c.seed = 99
        c.train = 2
        _ = try SynthGenerator(config: c, out: other).run()
        for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"] {
            let x = try Data(contentsOf: URL(fileURLWithPath: Self.tree + "/tokenizer/" + f))
            let y = try Data(contentsOf: URL(fileURLWithPath: other + "/tokenizer/" + f))
            XCTAssertEqual(x, y, f)
        }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: Self.tree + "/tokenizer/tokenizer.json")), Data(a.tokenizerJSON.utf8))
    }

    func testTrainingFillsTheVocabulary() throws {
        let t = try SynthTokenizer.train()
        XCTAssertEqual(t.vocabSize, 1024)
        XCTAssertEqual(t.pieces.count, 1015)
        XCTAssertEqual(Set(t.pieces).count, t.pieces.count, "duplicate pieces")
        XCTAssertEqual(Array(t.pieces.prefix(4)), ["<unk>", "<s>", "</s>", "<0x00>"])
        XCTAssertEqual(t.pieces[258], "<0xFF>")
        XCTAssertGreaterThan(t.mergedPieces, 300)
        XCTAssertEqual(3 + 256 + t.mergedPieces + t.characterPieces + t.paddingPieces, t.pieces.count)
        // every merge is left + right of two pieces that exist
        let index = Set(t.pieces)
        for (l, r) in t.merges { XCTAssert(index.contains(l) && index.contains(r) && index.contains(l + r), "\(l) \(r)") }
        // merged pieces start with "▁" or have none: words never merge across a space
        for p in t.pieces[259..<(259 + t.mergedPieces)] { XCTAssertFalse(p.dropFirst().contains("\u{2581}"), p) }
    }

    func testVocabSizeOption() throws {
        // a small vocabulary cuts the merges (no padding) and still loads and round-trips
        let dir = try makeScratchDirectory(self)
        let small = try SynthTokenizer.train(vocabSize: 512)
        XCTAssertEqual(small.paddingPieces, 0)
        XCTAssertEqual(small.vocabSize, 512)
        try small.write(to: dir)
        let tok = try Tokenizer(directory: dir)
        XCTAssertEqual(tok.vocabSize, 512)
        XCTAssertEqual(tok.segIds, Array(506..<512))
        let text = "Which shapes are left of the small yellow pentagon? Segment every object in the image."
        XCTAssertEqual(tok.decode(tok.encode(text, addBos: false)), text)
        let full = try Tokenizer(directory: Self.tree + "/tokenizer")
        XCTAssertGreaterThan(tok.encode(text).count, full.encode(text).count, "fewer merges, more tokens")
        // too small for bytes + characters + added tokens
        XCTAssertThrowsError(try SynthTokenizer.train(vocabSize: 300)) { e in
            XCTAssert("\(e)".contains("too small"), "\(e)")
        }
        // the option reaches the files; 0 writes none
        let none = try makeScratchDirectory(self)
        var c = Self.config
        c.train = 1; c.val = 0; c.test = 0; c.vocabSize = 0
        _ = try SynthGenerator(config: c, out: none).run()
        XCTAssertFalse(FileManager.default.fileExists(atPath: none + "/tokenizer"))
    }
}
