// Questions about a SynthScene, correct by construction: single referring expressions use a
// description only one object matches, multi-target questions list every matching object, relations
// come from the visible boxes, superlatives need a clear winner, counts are exact.
import Foundation
import PixelTensor

public enum SynthQuestionKind: String, CaseIterable, Sendable {
    case single, multi, relational, attribute, counting, textOnly = "text"
}

public struct SynthQuestion: Sendable {
    public var kind: SynthQuestionKind
    public var question: String
    /// Object indices (into the scene), in the order of the `{seg}` mentions in `textAnswer`.
    public var targets: [Int]
    /// The answer with `{seg}` after each target mention (none for text-only answers).
    public var textAnswer: String
    /// Why the answer is right, in one sentence (ReasonSeg explanatory "outputs"); true by construction.
    public var explanation: String = ""
}

public enum SynthQuestions {
    static func listJoin(_ items: [String]) -> String {
        if items.count <= 1 { return items.first ?? "" }
        return items.dropLast().joined(separator: ", ") + " and " + items.last!
    }

    static func capitalised(_ s: String) -> String { s.prefix(1).uppercased() + s.dropFirst() }

    /// The shortest description (shape; colour shape; size shape; size colour shape) only `index` matches.
    public static func uniqueDescription(_ scene: SynthScene, _ index: Int) -> String? {
        let o = scene.objects[index]
        let options: [(String, (SynthObject) -> Bool)] = [
            (o.shape.name, { $0.shape == o.shape }),
            ("\(o.color.name) \(o.shape.name)", { $0.shape == o.shape && $0.color == o.color }),
            ("\(o.size.name) \(o.shape.name)", { $0.shape == o.shape && $0.size == o.size }),
            (o.phrase, { $0.shape == o.shape && $0.color == o.color && $0.size == o.size }),
        ]
        for (text, match) in options where scene.objects.filter(match).count == 1 { return text }
        return nil
    }

    /// "the small red triangle {seg}, the blue circle {seg} and ..." for the targets.
    static func mentions(_ scene: SynthScene, _ targets: [Int]) -> String {
        listJoin(targets.map { "the \(scene.objects[$0].phrase) {seg}" })
    }

    /// "the small red triangle, the blue circle and ..." (no {seg}).
    static func phrases(_ scene: SynthScene, _ targets: [Int]) -> String {
        listJoin(targets.map { "the \(scene.objects[$0].phrase)" })
    }

    /// "a" or "an" for a noun phrase.
    static func article(_ s: String) -> String { "aeiou".contains(s.first ?? "x") ? "an" : "a" }

    /// Groups of objects with a name: (singular phrase, plural phrase, members).
    static func groups(_ scene: SynthScene) -> [(String, String, [Int])] {
        let all = Array(scene.objects.indices)
        var g: [(String, String, [Int])] = [("object", "objects", all)]
        g.append(("object with corners", "objects with corners", all.filter { scene.objects[$0].shape.hasCorners }))
        for c in SynthColor.allCases { g.append(("\(c.name) object", "\(c.name) objects", all.filter { scene.objects[$0].color == c })) }
        for s in SynthShape.allCases { g.append((s.name, s.plural, all.filter { scene.objects[$0].shape == s })) }
        for z in SynthSize.allCases { g.append(("\(z.name) object", "\(z.name) objects", all.filter { scene.objects[$0].size == z })) }
        return g
    }

    /// Every question the scene supports, in a fixed order.
    public static func candidates(_ scene: SynthScene) -> [SynthQuestion] {
        var out: [SynthQuestion] = []
        let objs = scene.objects
        let n = objs.count
        let unique = (0..<n).map { uniqueDescription(scene, $0) }
        // single referring
        for i in 0..<n {
            guard let d = unique[i] else { continue }
            let q = ["Where is the \(d)?", "Can you segment the \(d) in this image?", "Please find the \(d)."][i % 3]
            out.append(SynthQuestion(kind: .single, question: q, targets: [i], textAnswer: "The \(d) {seg}.",
                                     explanation: "The \(objs[i].phrase) is the only \(d) in the image."))
        }
        // multi-target groups
        for (_, plural, members) in groups(scene) where members.count >= 2 {
            let q = plural == "objects" ? "Segment every object in the image." : "Where are all the \(plural)?"
            out.append(SynthQuestion(kind: .multi, question: q, targets: members,
                                     textAnswer: capitalised("\(mentions(scene, members))."),
                                     explanation: "There are \(members.count) \(plural) in the image: \(phrases(scene, members))."))
        }
        if n >= 3 {
            for i in 0..<n {
                guard let d = unique[i] else { continue }
                let rest = (0..<n).filter { $0 != i }
                out.append(SynthQuestion(kind: .multi, question: "Segment all objects except the \(d).", targets: rest,
                                         textAnswer: capitalised("\(mentions(scene, rest))."),
                                         explanation: "Every object other than the \(d) is a target: \(phrases(scene, rest))."))
                break
            }
        }
        // relations between visible boxes: a target lies wholly on one side of the anchor
        for a in 0..<n {
            guard let d = unique[a] else { continue }
            let ab = objs[a].bbox
            let relations: [(String, (SynthObject) -> Bool)] = [
                ("left of", { $0.bbox[0] + $0.bbox[2] <= ab[0] }),
                ("right of", { $0.bbox[0] >= ab[0] + ab[2] }),
                ("above", { $0.bbox[1] + $0.bbox[3] <= ab[1] }),
                ("below", { $0.bbox[1] >= ab[1] + ab[3] }),
            ]
            for (word, test) in relations {
                let ts = (0..<n).filter { $0 != a && test(objs[$0]) }
                if ts.isEmpty { continue }
                if ts.count == 1 {
                    out.append(SynthQuestion(kind: .relational, question: "Which shape is \(word) the \(d)?", targets: ts,
                                             textAnswer: "The shape \(word) the \(d) is the \(objs[ts[0]].phrase) {seg}.",
                                             explanation: "Only the \(objs[ts[0]].phrase) lies entirely \(word) the \(d)."))
                } else {
                    out.append(SynthQuestion(kind: .relational, question: "Which shapes are \(word) the \(d)?", targets: ts,
                                             textAnswer: "The shapes \(word) the \(d) are \(mentions(scene, ts)).",
                                             explanation: "\(capitalised(phrases(scene, ts))) lie entirely \(word) the \(d)."))
                }
            }
        }
        // superlatives with a clear winner (full shape areas differ by at least 25 %)
        for (singular, plural, members) in groups(scene) where members.count >= 2 {
            let sorted = members.sorted { objs[$0].fullArea > objs[$1].fullArea || (objs[$0].fullArea == objs[$1].fullArea && $0 < $1) }
            if Double(objs[sorted[0]].fullArea) >= 1.25 * Double(objs[sorted[1]].fullArea) {
                out.append(SynthQuestion(kind: .attribute, question: "Which is the largest \(singular)?", targets: [sorted[0]],
                                         textAnswer: "The largest \(singular) is the \(objs[sorted[0]].phrase) {seg}.",
                                         explanation: "Of the \(members.count) \(plural), the \(objs[sorted[0]].phrase) covers the largest area."))
            }
            let last = sorted.count - 1
            if Double(objs[sorted[last - 1]].fullArea) >= 1.25 * Double(objs[sorted[last]].fullArea) {
                out.append(SynthQuestion(kind: .attribute, question: "Which is the smallest \(singular)?", targets: [sorted[last]],
                                         textAnswer: "The smallest \(singular) is the \(objs[sorted[last]].phrase) {seg}.",
                                         explanation: "Of the \(members.count) \(plural), the \(objs[sorted[last]].phrase) covers the smallest area."))
            }
        }
        // counting (exact, zero included)
        for (singular, plural, members) in groups(scene) {
            let c = members.count
            let answer = c == 0 ? "There are no \(plural)." : (c == 1 ? "There is 1 \(singular)." : "There are \(c) \(plural).")
            out.append(SynthQuestion(kind: .counting, question: "How many \(plural) are there in the image?", targets: [], textAnswer: answer,
                                     explanation: c == 0 ? "No object in the image is \(article(singular)) \(singular)."
                                        : "Counting the \(plural) in the image gives \(c): \(phrases(scene, members))."))
        }
        // other text-only answers: colour of a uniquely named shape, presence
        for s in SynthShape.allCases {
            let members = (0..<n).filter { objs[$0].shape == s }
            if members.count == 1 {
                out.append(SynthQuestion(kind: .textOnly, question: "What colour is the \(s.name)?", targets: [],
                                         textAnswer: "The \(s.name) is \(objs[members[0]].color.name).",
                                         explanation: "The only \(s.name) in the image is the \(objs[members[0]].phrase)."))
            }
        }
        for s in SynthShape.allCases {
            for c in [SynthColor.red, .blue, .green] {
                let yes = objs.contains { $0.shape == s && $0.color == c }
                out.append(SynthQuestion(kind: .textOnly, question: "Is there a \(c.name) \(s.name) in the image?", targets: [],
                                         textAnswer: yes ? "Yes, there is a \(c.name) \(s.name)." : "No, there is no \(c.name) \(s.name).",
                                         explanation: yes ? "The image contains a \(c.name) \(s.name)." : "No \(s.name) in the image is \(c.name)."))
            }
        }
        return out
    }

    /// The VQA caption turn: "What objects are there in the image?" answered with every object's phrase, left to
    /// right by the centre of its visible box (top to bottom on a tie). Not among `candidates` (the MUSE questions).
    public static func caption(_ scene: SynthScene) -> SynthQuestion {
        let order = scene.objects.indices.sorted {
            let a = scene.objects[$0], b = scene.objects[$1]
            return (a.centreX, a.centreY, $0) < (b.centreX, b.centreY, $1)
        }
        let n = order.count
        let answer = n == 0 ? "There are no objects." : (n == 1 ? "There is 1 object: \(phrases(scene, order))."
                                                         : "There are \(n) objects: \(phrases(scene, order)).")
        return SynthQuestion(kind: .textOnly, question: "What objects are there in the image?", targets: [], textAnswer: answer,
                             explanation: "Reading the image from left to right gives \(n) objects.")
    }

    /// Picks up to `count` questions, trying to cover the kinds in turn; `targetRange` limits the
    /// number of targets of segmentation questions; text-only questions only when `allowText`.
    public static func pick(_ scene: SynthScene, count: Int, targetRange: ClosedRange<Int>, allowText: Bool,
                            rng: inout RNG) -> [SynthQuestion] {
        let all = candidates(scene).filter { q in
            q.targets.isEmpty ? allowText : targetRange.contains(q.targets.count)
        }
        var byKind: [SynthQuestionKind: [SynthQuestion]] = [:]
        for q in all { byKind[q.kind, default: []].append(q) }
        var chosen: [SynthQuestion] = []
        var seen = Set<String>()
        let order = SynthQuestionKind.allCases
        var k = rng.int(order.count)
        var idle = 0
        while chosen.count < count && idle < order.count {
            let kind = order[k % order.count]
            k += 1
            guard var pool = byKind[kind], !pool.isEmpty else { idle += 1; continue }
            let q = pool.remove(at: rng.int(pool.count))
            byKind[kind] = pool
            if seen.insert(q.question).inserted { chosen.append(q); idle = 0 }
        }
        return chosen
    }
}
