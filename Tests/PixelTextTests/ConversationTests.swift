import Foundation
import XCTest
import PixelText

/// llava_v1 prompts, tokenizer_image_token and collate_fn label masking against the reference functions
/// (re-implemented in tools/fixtures/tokenizers.py on top of the 4.31 tokenizer and of HF tokenizers).
final class ConversationTests: XCTestCase {
    private static let fixture = dict(TextFixture.json("expected_conversations.json"))

    private func tokenizer(_ key: String) throws -> Tokenizer {
        let parts = key.split(separator: ":").map(String.init)
        return try Tokenizer(directory: TextFixture.dir(parts[1]), mode: parts[0] == "reference" ? .reference : .hfFast)
    }

    private func rounds(_ a: Any?) -> [(question: String, answer: String)] {
        list(a).map { r in let r = r as! [String]; return (r[0], r[1]) }
    }

    func testTemplateText() {
        assertSameText(Conversation.llavaV1.system, Self.fixture["system"] as! String)
        for (name, c) in dict(Self.fixture["cases"]) {
            let c = dict(c)
            assertSameText(PixelLMPrompt.trainingConversation(rounds: rounds(c["rounds"])), c["conversation"] as! String, name)
        }
        var conv = Conversation.llavaV1
        conv.append(role: "USER", "<image>\nHi")
        conv.append(role: "ASSISTANT", "Hello.")
        conv.append(role: "USER", "Bye")
        conv.append(role: "ASSISTANT", nil)
        assertSameText(conv.prompt, Conversation.llavaV1.system + " USER: <image>\nHi ASSISTANT: Hello.</s>USER: Bye ASSISTANT:")
        XCTAssertEqual(PixelLMPrompt.replaceImageToken("a<image>b<image>", useMMStartEnd: true),
                       "a<im_start><image><im_end>b<im_start><image><im_end>")
        XCTAssertEqual(PixelLMPrompt.replaceImageToken("a<image>b", useMMStartEnd: false), "a<image>b")
    }

    func testInferencePromptAndIds() throws {
        let t = try tokenizer("reference:llava-sp")
        for e in list(Self.fixture["inference"]) {
            let e = dict(e)
            let p = PixelLMPrompt.inferencePrompt(question: e["question"] as! String)
            assertSameText(p, e["prompt"] as! String)
            XCTAssertTrue(p.hasSuffix("ASSISTANT:"))
            let ids = PixelLMPrompt.tokenizerImageToken(p, tokenizer: t)
            XCTAssertEqual(ids, ints(e["ids"]))
            XCTAssertEqual(ids.filter { $0 == PixelLMPrompt.imageTokenIndex }.count, 1)
            XCTAssertEqual(ids.first, t.bosId)
            // <im_start> right before the image sentinel, <im_end> right after
            let k = ids.firstIndex(of: -200)!
            XCTAssertEqual(ids[k - 1], t.imStartId)
            XCTAssertEqual(ids[k + 1], t.imEndId)
        }
    }

    func testLabelsMatchReferenceForEveryTokenizer() throws {
        var checked = 0, mismatches = 0
        for (name, c) in dict(Self.fixture["cases"]) {
            let c = dict(c)
            let text = c["conversation"] as! String
            for (key, r) in dict(c["results"]) {
                let r = dict(r)
                let t = try tokenizer(key)
                XCTAssertEqual(PixelLMPrompt.tokenizerImageToken(text, tokenizer: t), ints(r["input_ids"]), "\(name) \(key) ids")
                let st = dict(r["status"])
                let cur = (st["cur_len"] as! NSNumber).intValue, total = (st["total_len"] as! NSNumber).intValue
                if r["labels"] is NSNull {
                    // the reference's assert cur_len == total_len fails
                    mismatches += 1
                    XCTAssertThrowsError(try ConversationLabels.collate([text], tokenizer: t), "\(name) \(key)") { e in
                        XCTAssertTrue("\(e)".contains("AssertionError"), "\(e)")
                    }
                    let b = try ConversationLabels.collate([text], tokenizer: t, onMismatch: .maskAll)
                    XCTAssertEqual(b.status, [.mismatchMasked(curLen: cur, totalLen: total)])
                    XCTAssertTrue(b.labels[0].allSatisfy { $0 == -100 })
                } else {
                    let b = try ConversationLabels.collate([text], tokenizer: t)
                    XCTAssertEqual(b.inputIds, [ints(r["input_ids"])], "\(name) \(key)")
                    XCTAssertEqual(b.labels, [ints(r["labels"])], "\(name) \(key) labels")
                    XCTAssertEqual(b.status, [.masked(curLen: cur, totalLen: total)], "\(name) \(key)")
                    XCTAssertEqual(b.attentionMask, [ints(r["input_ids"]).map { $0 != t.padId }])
                }
                checked += 1
            }
        }
        XCTAssertEqual(checked, 28)
        // trailing space before </s> (reference, plain-string specials) and the Metaspace-first tokenizer's
        // "</s>USER" boundary
        XCTAssertEqual(mismatches, 4)
    }

    /// A single-round PixelLM answer: instruction masked up to and including "ASSISTANT:", answer and "</s>"
    /// kept as targets.
    func testMaskingShape() throws {
        let t = try tokenizer("reference:llava-sp")
        let text = PixelLMPrompt.trainingConversation(rounds: [("<image>\nCan you segment the dog?", "It is [SEG0][SEG1][SEG2][SEG3][SEG4][SEG5].")])
        let b = try ConversationLabels.collate([text], tokenizer: t)
        let ids = b.inputIds[0], labels = b.labels[0]
        let kept = zip(ids, labels).filter { $0.1 != -100 }.map(\.0)
        XCTAssertEqual(Array(kept.suffix(1)), [t.eosId])
        // 4.31 decoding: added tokens joined with spaces, and " " before a special token that follows text
        XCTAssertEqual(t.decode(kept), "It is [SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5]  .</s>")
        XCTAssertEqual(kept.filter { t.segIds.contains($0) }, t.segIds)
        XCTAssertFalse(labels.contains(-200))
    }

    func testBatchBreakOnConversationWithoutSeparator() throws {
        let f = dict(Self.fixture["batch_break"])
        let t = try tokenizer("reference:llava-sp")
        let b = try ConversationLabels.collate(f["conversations"] as! [String], tokenizer: t)
        XCTAssertEqual(b.inputIds, list(f["input_ids"]).map { ints($0) })
        XCTAssertEqual(b.labels, list(f["labels"]).map { ints($0) })
        XCTAssertEqual(b.attentionMask, list(f["attention"]).map { ($0 as! [Any]).map { ($0 as! NSNumber).boolValue } })
        XCTAssertEqual(b.status[1], .noSeparatorBreak)
        XCTAssertEqual(b.status[2], .skippedAfterBreak)
        XCTAssertEqual(b.labels[2], b.inputIds[2])  // unmasked, padding included
    }

    func testTruncation() throws {
        let f = dict(Self.fixture["truncated"])
        let t = try tokenizer("reference:llava-sp")
        let text = PixelLMPrompt.trainingConversation(rounds: rounds(dict(dict(Self.fixture["cases"])["vqa_multi_round"])["rounds"]))
        let b = try ConversationLabels.collate([text], tokenizer: t, modelMaxLength: (f["model_max_length"] as! NSNumber).intValue)
        XCTAssertEqual(b.inputIds, list(f["input_ids"]).map { ints($0) })
        XCTAssertEqual(b.labels, list(f["labels"]).map { ints($0) })
        XCTAssertEqual(b.inputIds[0].count, 300 - 255)
        let inf = try ConversationLabels.collate([text], tokenizer: t, modelMaxLength: 300, inference: true)
        XCTAssertGreaterThan(inf.inputIds[0].count, 45)
    }

    func testTextOnlyConversation() throws {
        let f = dict(Self.fixture["text_only"])
        let t = try tokenizer("reference:llava-sp")
        let b = try ConversationLabels.collate([f["conversation"] as! String], tokenizer: t)
        XCTAssertEqual(b.inputIds, [ints(f["input_ids"])])
        XCTAssertEqual(b.labels, [ints(f["labels"])])
    }

    func testMalformedRoundThrows() throws {
        let t = try tokenizer("reference:llava-sp")
        // a round without " ASSISTANT: " (the reference's assert len(parts) == 2)
        let bad = Conversation.llavaV1.system + " USER: hello</s>"
        XCTAssertThrowsError(try ConversationLabels.collate([bad], tokenizer: t)) { e in
            XCTAssertTrue("\(e)".contains("parts"), "\(e)")
        }
    }
}
