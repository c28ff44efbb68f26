/// The llava_v1 conversation template, the `<image>` handling and the training label masking of the
/// reference (model/llava/conversation.py, model/llava/mm_utils.py, utils/dataset.py collate_fn).

public enum SeparatorStyle: Sendable {
    /// `system + sep`, then `role: message + sep` per message.
    case single
    /// `system + sep`, then `role: message` followed by sep and sep2 alternately (llava_v1).
    case two
}

/// `Conversation` of the reference (only the SINGLE and TWO separator styles).
public struct Conversation: Sendable {
    public struct Message: Sendable, Equatable {
        public var role: String
        /// nil for the open assistant turn of an inference prompt (renders as "ROLE:").
        public var text: String?
    }

    public var system: String
    public var roles: [String]
    public var messages: [Message]
    public var style: SeparatorStyle
    public var sep: String
    public var sep2: String?

    public init(system: String, roles: [String], messages: [Message] = [], style: SeparatorStyle, sep: String, sep2: String?) {
        self.system = system
        self.roles = roles
        self.messages = messages
        self.style = style
        self.sep = sep
        self.sep2 = sep2
    }

    /// `conv_templates["llava_v1"]`.
    public static let llavaV1 = Conversation(
        system: "A chat between a curious human and an artificial intelligence assistant. "
            + "The assistant gives helpful, detailed, and polite answers to the human's questions.",
        roles: ["USER", "ASSISTANT"], style: .two, sep: " ", sep2: "</s>")

    public mutating func append(role: String, _ text: String?) {
        messages.append(Message(role: role, text: text))
    }

    /// `get_prompt()`. Empty messages count as absent, as in Python.
    public var prompt: String {
        var ret = system + sep
        switch style {
        case .single:
            for m in messages {
                if let t = m.text, !t.isEmpty { ret += m.role + ": " + t + sep } else { ret += m.role + ":" }
            }
        case .two:
            let seps = [sep, sep2 ?? sep]
            for (i, m) in messages.enumerated() {
                if let t = m.text, !t.isEmpty { ret += m.role + ": " + t + seps[i % 2] } else { ret += m.role + ":" }
            }
        }
        return ret
    }
}

/// PixelLM's prompt strings and the reference's `tokenizer_image_token`.
public enum PixelLMPrompt {
    public static let imageToken = "<image>"
    public static let imStartToken = "<im_start>"
    public static let imEndToken = "<im_end>"
    public static let imPatchToken = "<im_patch>"
    /// The sentinel id put where the image goes (replaced by the image embeddings).
    public static let imageTokenIndex = -200
    /// Label value ignored by the loss.
    public static let ignoreIndex = -100

    /// `<image>` -> `<im_start><image><im_end>` (mm_use_im_start_end).
    public static func replaceImageToken(_ text: String, useMMStartEnd: Bool = true) -> String {
        guard useMMStartEnd else { return text }
        return string(replaceAll(bytes(text), bytes(imageToken), bytes(imStartToken + imageToken + imEndToken)))
    }

    /// A training conversation: llava_v1 with alternating USER question / ASSISTANT answer, each answer
    /// closed by "</s>"; the first question normally starts with "<image>\n".
    public static func trainingConversation(rounds: [(question: String, answer: String)], useMMStartEnd: Bool = true,
                                            template: Conversation = .llavaV1) -> String {
        var conv = template
        conv.messages = []
        for (q, a) in rounds {
            conv.append(role: conv.roles[0], q)
            conv.append(role: conv.roles[1], a)
        }
        return replaceImageToken(conv.prompt, useMMStartEnd: useMMStartEnd)
    }

    /// The inference prompt of chat.py: `<image>\n{question}`, ending in "ASSISTANT:" (no trailing space).
    public static func inferencePrompt(question: String, useMMStartEnd: Bool = true, template: Conversation = .llavaV1) -> String {
        var conv = template
        conv.messages = []
        conv.append(role: conv.roles[0], replaceImageToken(imageToken + "\n" + question, useMMStartEnd: useMMStartEnd))
        conv.append(role: conv.roles[1], nil)
        return conv.prompt
    }

    /// `tokenizer_image_token`: the prompt split on the literal "<image>", each chunk tokenized (with BOS),
    /// BOS kept only once at the front, `imageTokenIndex` between chunks.
    public static func tokenizerImageToken(_ prompt: String, tokenizer: Tokenizer) -> [Int] {
        let chunks = splitExact(prompt, imageToken).map { tokenizer.encode($0, addBos: true) }
        var ids: [Int] = []
        var offset = 0
        if let first = chunks.first, let f = first.first, f == tokenizer.bosId {
            offset = 1
            ids.append(f)
        }
        for (k, c) in chunks.enumerated() {
            if k > 0 { ids.append(imageTokenIndex) }
            ids += c.dropFirst(offset)
        }
        return ids
    }
}

/// Python `str.split(sep)` over exact bytes.
func splitExact(_ s: String, _ sep: String) -> [String] {
    let b = bytes(s), p = bytes(sep)
    var out: [String] = []
    var start = 0, i = 0
    while i + p.count <= b.count {
        if hasPrefix(b, p, at: i) {
            out.append(string(b[start..<i]))
            i += p.count
            start = i
        } else {
            i += 1
        }
    }
    out.append(string(b[start...]))
    return out
}

func containsExact(_ s: String, _ sub: String) -> Bool {
    let b = bytes(s), p = bytes(sub)
    if p.isEmpty { return true }
    if b.count < p.count { return false }
    for i in 0...(b.count - p.count) where hasPrefix(b, p, at: i) { return true }
    return false
}

/// The training batch of utils/dataset.py `collate_fn` (conv_type llava_v1): ids, labels, attention.
public struct CollatedBatch: Sendable, Equatable {
    public var inputIds: [[Int]]
    public var labels: [[Int]]
    public var attentionMask: [[Bool]]
    public var status: [ConversationLabels.Status]
}

public enum ConversationLabels {
    /// What the masking loop did with each conversation of a batch.
    public enum Status: Sendable, Equatable {
        /// Masked; `curLen` tokens accounted for by the rounds, `totalLen` non-pad tokens in the row.
        case masked(curLen: Int, totalLen: Int)
        /// The conversation has no "</s>": the reference `break`s out of the batch loop here, so this row and
        /// every later row keep labels == input ids (padding included), unmasked.
        case noSeparatorBreak
        /// Left unmasked because an earlier conversation hit `noSeparatorBreak`.
        case skippedAfterBreak
        /// cur_len != total_len (with cur_len < model_max_length) and the policy was `.maskAll`.
        case mismatchMasked(curLen: Int, totalLen: Int)
    }

    /// What to do when the per-round token counts do not add up to the row (cur_len != total_len).
    public enum MismatchPolicy: Sendable {
        /// The reference: `assert cur_len == total_len` fails and the batch is lost (thrown here).
        case fail
        /// LLaVA's train.py behaviour: mask the whole row.
        case maskAll
    }

    /// `collate_fn`'s token and label part for prompts that already carry `<im_start><image><im_end>`
    /// (see `PixelLMPrompt.trainingConversation`). Rows are right-padded with the pad id (unk), attention =
    /// id != pad. Labels start as the ids; for each conversation with "</s>": label[0] = -100; per round
    /// (split on "</s>"; an empty round ends the loop) the instruction part is masked, its length being
    /// len(tokens("...ASSISTANT: ")) - 2 (BOS, and the trailing-space "▁" that merges into the answer's first
    /// token in the full text); cur_len advances by len(tokens(round)) (its BOS stands in for the "</s>" that
    /// the split removed, so "</s>" stays a target); everything from cur_len on is masked. Token counts use
    /// `tokenizerImageToken` when the conversation contains "<image>", else `encode` with BOS. Unless
    /// `inference`, rows are truncated to model_max_length - 255.
    public static func collate(_ conversations: [String], tokenizer: Tokenizer, modelMaxLength: Int = 512,
                               inference: Bool = false, onMismatch: MismatchPolicy = .fail) throws -> CollatedBatch {
        let pad = tokenizer.padId
        var ids = conversations.map { PixelLMPrompt.tokenizerImageToken($0, tokenizer: tokenizer) }
        let width = ids.map(\.count).max() ?? 0
        for k in ids.indices { ids[k] += [Int](repeating: pad, count: width - ids[k].count) }
        var targets = ids
        var attention = ids.map { $0.map { $0 != pad } }
        var status = [Status](repeating: .skippedAfterBreak, count: conversations.count)
        let sep = Conversation.llavaV1.sep + Conversation.llavaV1.roles[1] + ": "
        let sep2 = Conversation.llavaV1.sep2!
        for (k, conversation) in conversations.enumerated() {
            let totalLen = targets[k].reduce(0) { $0 + ($1 != pad ? 1 : 0) }
            if !containsExact(conversation, sep2) {
                status[k] = .noSeparatorBreak
                break
            }
            let hasImage = containsExact(conversation, PixelLMPrompt.imageToken)
            func count(_ s: String) -> Int {
                hasImage ? PixelLMPrompt.tokenizerImageToken(s, tokenizer: tokenizer).count : tokenizer.encode(s, addBos: true).count
            }
            var curLen = 1
            targets[k][0] = PixelLMPrompt.ignoreIndex
            for (r, rou) in splitExact(conversation, sep2).enumerated() {
                if rou.isEmpty { break }
                let parts = splitExact(rou, sep)
                guard parts.count == 2 else {
                    throw TokenizerError.conversation(reason: "round \(r) splits into \(parts.count) parts on \"\(sep)\" (the reference asserts 2): \(rou)")
                }
                let roundLen = count(rou)
                let instructionLen = count(parts[0] + sep) - 2
                let hi = min(curLen + instructionLen, width)
                if curLen < hi { for j in curLen..<hi { targets[k][j] = PixelLMPrompt.ignoreIndex } }
                curLen += roundLen
            }
            if curLen < width { for j in curLen..<width { targets[k][j] = PixelLMPrompt.ignoreIndex } }
            status[k] = .masked(curLen: curLen, totalLen: totalLen)
            if curLen < modelMaxLength, curLen != totalLen {
                switch onMismatch {
                case .fail:
                    throw TokenizerError.conversation(reason: "conversation \(k): the rounds account for \(curLen) tokens but the row has \(totalLen) (reference: AssertionError cur_len == total_len)")
                case .maskAll:
                    for j in 0..<width { targets[k][j] = PixelLMPrompt.ignoreIndex }
                    status[k] = .mismatchMasked(curLen: curLen, totalLen: totalLen)
                }
            }
        }
        if !inference {
            let t = modelMaxLength - 255
            if width > t, t >= 0 {
                ids = ids.map { Array($0.prefix(t)) }
                targets = targets.map { Array($0.prefix(t)) }
                attention = attention.map { Array($0.prefix(t)) }
            }
        }
        return CollatedBatch(inputIds: ids, labels: targets, attentionMask: attention, status: status)
    }
}
