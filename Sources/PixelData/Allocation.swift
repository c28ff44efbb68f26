// The refer_seg / sem_seg sampling of targets and their distribution into questions, and the question and
// answer text built for each question (utils/refer_seg_dataset.py and utils/sem_seg_dataset.py
// `__getitem__` and `allocate_class`, which the two files share):
//
//   * up to numClassesPerSample x numClassesPerQuestion candidates (sentences, classes, part annotations)
//     are drawn without replacement (np.random.choice(..., replace=False)); with fewer, all are used in order;
//   * allocate_class: min(numClassesPerSample, n) questions; the candidates are shuffled, then each goes to
//     a random question that is still empty, or, once none is, to a random question holding fewer than
//     numClassesPerQuestion;
//   * per question: a SHORT_QUESTION_LIST (+ EXPAND) template with the names joined "a, b and c", lowercased;
//     one target: an ANSWER_LIST template; several: 50/50 one SINGLE_ANSWER_LIST template per target
//     ("{name} is [SEG]" with the unlowered name, the final "." dropped, joined "x, y and z" + ".") or a
//     MULTI_ANSWER_LIST template with the lowered joined names and the groups joined "g, g and g".
//   `[SEG]` becomes `options.segGroup`. The draws follow the reference's order (question template, the 50/50
//   coin, the answer template) from the generator passed in.
import Foundation
import PixelTensor

public enum Allocation {
    /// Questions per image and targets per question as used (at least 1 each).
    static func limits(_ o: ReaderOptions) -> (questions: Int, perQuestion: Int) {
        (max(1, o.numClassesPerSample), max(1, o.numClassesPerQuestion))
    }

    /// The candidates used for one image: all of them when there are at most numClassesPerSample x
    /// numClassesPerQuestion, else that many drawn without replacement (in draw order).
    public static func sample<T>(_ items: [T], options: ReaderOptions, rng: inout RNG) -> [T] {
        let (q, p) = limits(options)
        let k = q * p
        return items.count >= k ? DataRNG.sample(items, k, &rng) : items
    }

    /// `allocate_class`: the items distributed into min(maxQuestions, n) questions, each with 1 ...
    /// maxPerQuestion items. Needs n <= maxQuestions x maxPerQuestion (what `sample` returns); extra items
    /// beyond that are dropped rather than overfilling a question.
    public static func allocate<T>(_ items: [T], maxQuestions: Int, maxPerQuestion: Int, rng: inout RNG) -> [[T]] {
        let nq = min(max(1, maxQuestions), items.count)
        let cap = max(1, maxPerQuestion)
        var questions = [[T]](repeating: [], count: nq)
        var order = Array(items.indices)
        // np.random.shuffle (Fisher-Yates)
        if order.count > 1 {
            for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, rng.int(i + 1)) }
        }
        for i in order {
            let empty = questions.indices.filter { questions[$0].isEmpty }
            let open = empty.isEmpty ? questions.indices.filter { questions[$0].count < cap } : empty
            guard !open.isEmpty else { break }
            questions[DataRNG.choice(open, &rng)].append(items[i])
        }
        return questions
    }

    /// `sample` then `allocate` with the options' limits.
    public static func sampleAndAllocate<T>(_ items: [T], options: ReaderOptions, rng: inout RNG) -> [[T]] {
        let (q, p) = limits(options)
        return allocate(sample(items, options: options, rng: &rng), maxQuestions: q, maxPerQuestion: p, rng: &rng)
    }

    /// The question and answer for one question's target names (in target order).
    public static func round(names: [String], options: ReaderOptions, rng: inout RNG) -> DialogueRound {
        let group = options.segGroup
        let target = SegText.joinAnd(names)
        let lowered = target.lowercased()
        let qList = Templates.questionList(short: true, expand: options.useExpandQuestionList)
        let question = format(DataRNG.choice(qList, &rng), ["class_name": lowered])
        let separate = rng.int(2) == 1
        let answer: String
        if names.count == 1 {
            let t = DataRNG.choice(Templates.answers, &rng).replacingOccurrences(of: "[SEG]", with: group)
            answer = format(t, ["class_name": lowered])
        } else if separate {
            let t = DataRNG.choice(Templates.singleAnswers, &rng).replacingOccurrences(of: "[SEG]", with: group)
            answer = SegText.joinAnd(names.map { String(format(t, ["class_name": $0]).dropLast()) }) + "."
        } else {
            let t = DataRNG.choice(Templates.multiAnswers, &rng)
            let segs = SegText.joinAnd(Array(repeating: group, count: names.count))
            answer = format(t, ["class_name": lowered, "seg": segs])
        }
        return DialogueRound(question: question, answer: answer)
    }

    /// One single-round conversation per question.
    public static func conversations(_ names: [[String]], options: ReaderOptions, rng: inout RNG) -> [[DialogueRound]] {
        names.map { [round(names: $0, options: options, rng: &rng)] }
    }

    /// `str.format` with named fields, in one pass (a substituted value is not formatted again).
    static func format(_ template: String, _ fields: [String: String]) -> String {
        var out = ""
        var rest = Substring(template)
        while let open = rest.firstIndex(of: "{") {
            out += rest[..<open]
            let after = rest[rest.index(after: open)...]
            if let close = after.firstIndex(of: "}"), let v = fields[String(after[..<close])] {
                out += v
                rest = after[after.index(after: close)...]
            } else {
                out += "{"
                rest = after
            }
        }
        out += rest
        return out
    }
}
