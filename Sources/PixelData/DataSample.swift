import Foundation
import PixelTensor

// The contract between the dataset readers (MUSE, refer_seg, sem_seg, vqa, reason_seg) and `pixellm prepare`.
//
// A reader turns one raw item of a real dataset (one image with its annotations) into a `DataSample`: the image
// file, the conversations the reference's `__getitem__` would build for it (templates and target allocation
// drawn from a generator seeded by (seed, subset, index), so `prepare` is deterministic), and one mask per
// `[SEG0..5]` group at the original resolution, in conversation order then target order. A problem with one
// item (a missing image, a segmentation that is neither polygon nor RLE, an RLE whose counts do not sum to
// h x w, a `{seg}` count that differs from the answers) is a `SampleSkip` naming the file and the reason:
// `prepare` counts it and goes on, or stops on it with `--strict`.

/// One round of a conversation: the human turn and the assistant turn (the assistant turn may be empty for
/// evaluation prompts).
public struct DialogueRound: Equatable, Sendable, Codable {
    public var question: String
    public var answer: String
    public init(question: String, answer: String) { self.question = question; self.answer = answer }
}

/// One target: its mask at the original image size and where it came from.
public struct SampleTarget: Equatable, Sendable {
    public var mask: RLE
    /// A readable name ("the small red triangle", "wall", "person's arm"), for inspect and provenance.
    public var name: String
    /// The annotation this mask came from ("ann 1234", "class 12", "ref 55 / ann 901").
    public var provenance: String
    public init(mask: RLE, name: String, provenance: String) { self.mask = mask; self.name = name; self.provenance = provenance }
}

public struct DataSample: Equatable, Sendable {
    /// The top-level dataset: "sem_seg", "refer_seg", "vqa", "multi_reason_seg" or "reason_seg".
    public var dataset: String
    /// The sub-dataset ("ade20k", "refcoco", "muse_train", "llava_instruct_150k", "ReasonSeg/train").
    public var subset: String
    /// Index of the raw item inside the sub-dataset.
    public var index: Int
    /// The image file, absolute or relative to the dataset directory.
    public var imagePath: String
    /// Original image size as the annotations give it (checked against the decoded image by `prepare`).
    public var height: Int
    public var width: Int
    /// One conversation per entry (MUSE and sem/refer build single-round conversations; vqa is multi-round).
    public var conversations: [[DialogueRound]]
    /// The masks, in conversation order, then target order: exactly one per `[SEG0..5]` group.
    public var targets: [SampleTarget]
    /// Where the sample came from: the annotation file and the entry ("muse_train.json entry 12").
    public var source: String

    public init(dataset: String, subset: String, index: Int, imagePath: String, height: Int, width: Int,
                conversations: [[DialogueRound]], targets: [SampleTarget], source: String) {
        self.dataset = dataset; self.subset = subset; self.index = index; self.imagePath = imagePath
        self.height = height; self.width = width; self.conversations = conversations; self.targets = targets
        self.source = source
    }

    /// Number of `[SEG0..5]` groups (or legacy `[SEG]` / `<SEG6>` placeholders, each one target) in the answers.
    public var segGroupCount: Int {
        conversations.reduce(0) { $0 + $1.reduce(0) { $0 + SegText.countGroups($1.answer) } }
    }
}

/// Why one raw item was skipped: the file (annotation json, image, label PNG) and what is wrong with it.
public struct SampleSkip: Error, CustomStringConvertible, Equatable, Sendable {
    public let file: String
    public let reason: String
    public init(file: String, _ reason: String) { self.file = file; self.reason = reason }
    public var description: String { "\(file): \(reason)" }
}

/// A fatal problem with a whole dataset (its directory or index file is missing or unreadable).
public struct DatasetError: Error, CustomStringConvertible, Equatable, Sendable {
    public let file: String
    public let message: String
    public init(file: String, _ message: String) { self.file = file; self.message = message }
    public var description: String { "\(file): \(message)" }
}

/// Skipped samples, counted by reason and kept with their file for the log.
public struct SkipLog: Sendable {
    public private(set) var entries: [SampleSkip] = []
    public init() {}
    public mutating func record(_ s: SampleSkip) { entries.append(s) }
    public var count: Int { entries.count }
    /// Counts per reason kind (the reason text up to the first ':' or the whole reason).
    public var countsByReason: [(reason: String, count: Int)] {
        var c: [String: Int] = [:]
        for e in entries {
            let key = e.reason.split(separator: ":", maxSplits: 1).first.map(String.init) ?? e.reason
            c[key, default: 0] += 1
        }
        return c.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }.map { ($0.key, $0.value) }
    }
}

/// A reader of one sub-dataset on its real on-disk layout. `count` is the number of raw items (images, or
/// images x questions where the reference indexes that way); `sample(i, seed:)` builds item i with the
/// reference's templates and target allocation drawn from `DataRNG(seed:, subset:, index:)`.
public protocol DatasetReader {
    /// "multi_reason_seg", "refer_seg", "sem_seg", "vqa" or "reason_seg".
    var dataset: String { get }
    /// "muse_train", "refcoco", "ade20k", ...
    var subset: String { get }
    var count: Int { get }
    /// Items the reader dropped while indexing (e.g. MUSE questions whose `{seg}` count differs from the answers).
    var indexSkips: SkipLog { get }
    func sample(_ index: Int, seed: UInt64) throws -> DataSample
}

/// The generator a reader draws templates and allocations from: seeded by (seed, subset, index), so one item
/// gives the same conversations whatever order or rank prepares it.
public enum DataRNG {
    public static func make(seed: UInt64, subset: String, index: Int) -> RNG {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a of the subset name
        for b in subset.utf8 { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
        return RNG(seed: seed ^ h ^ (UInt64(truncatingIfNeeded: index) &* 0x9e37_79b9_7f4a_7c15))
    }

    /// random.choice
    public static func choice<T>(_ xs: [T], _ rng: inout RNG) -> T { xs[rng.int(xs.count)] }

    /// random.sample(xs, k) without replacement (k <= xs.count), in draw order.
    public static func sample<T>(_ xs: [T], _ k: Int, _ rng: inout RNG) -> [T] {
        var pool = xs
        var out: [T] = []
        for _ in 0..<min(k, pool.count) { out.append(pool.remove(at: rng.int(pool.count))) }
        return out
    }
}

/// The codebook text: `[SEG]` in templates becomes "[SEG0] [SEG1] ... [SEG5]" (seg_token_num 3 x 2 scales).
public enum SegText {
    public static func group(segTokenNum: Int = 3, scales: Int = 2) -> String {
        (0..<(segTokenNum * scales)).map { "[SEG\($0)]" }.joined(separator: " ")
    }
    public static let defaultGroup = group()

    /// Targets referenced in an answer: "[SEG0]" starts a group; a bare "[SEG]" or "<SEG6>" is one target.
    public static func countGroups(_ text: String) -> Int {
        count("[SEG0]", in: text) + count("[SEG]", in: text) + count("<SEG6>", in: text)
    }

    static func count(_ needle: String, in hay: String) -> Int {
        hay.components(separatedBy: needle).count - 1
    }

    /// "a", "a and b", "a, b and c" (the reference's joining of names and of SEG groups).
    public static func joinAnd(_ xs: [String]) -> String {
        if xs.count <= 1 { return xs.first ?? "" }
        return xs.dropLast().joined(separator: ", ") + " and " + xs.last!
    }
}

/// The reference's question and answer templates (utils/utils.py).
public enum Templates {
    public static let shortQuestions = [
        "<image>\nCan you segment the {class_name} in this image?",
        "<image>\nPlease segment the {class_name} in this image.",
        "<image>\nWhat is {class_name} in this image? Please respond with segmentation mask.",
        "<image>\nWhat is {class_name} in this image? Please output segmentation mask.",
    ]
    public static let longQuestions = [
        "<image>\n{sent} Please respond with segmentation mask.",
        "<image>\n{sent} Please output segmentation mask.",
    ]
    public static let explanatoryQuestions = [
        "Please output segmentation mask and explain why.",
        "Please output segmentation mask and explain the reason.",
        "Please output segmentation mask and give some explanation.",
    ]
    public static let answers = [
        "It is [SEG].", "Sure, [SEG].", "Sure, it is [SEG].", "Sure, the segmentation result is [SEG].", "[SEG].",
    ]
    public static let singleAnswers = [
        "{class_name} is [SEG].", "The segmentation result of {class_name} is [SEG].", "[SEG].",
    ]
    public static let multiAnswers = [
        "{class_name} are {seg}, separately.", "{class_name} are {seg}.",
        "Sure, {class_name} are {seg}, separately.", "Sure, {class_name} are {seg}.",
        "the segmentation result of {class_name} are {seg}.",
        "the segmentation result of {class_name} are {seg}, separately.",
        "Sure, the segmentation result of {class_name} are {seg}.",
        "Sure, the segmentation result of {class_name} are {seg}, separately.",
        "Sure, they are {seg}.", "They are {seg}.", "{seg}.",
    ]
    public static let mrSingleAnswers = ["{class_name} is [SEG]."]
    public static let mrMultiAnswers = Array(multiAnswers.prefix(8))
    public static let expandLongQuestions = [
        "<image>\n{sent} Provide the segmentation mask.",
        "<image>\n{sent} Output the segmentation mask.",
        "<image>\n{sent} Please show the segmentation mask.",
        "<image>\n{sent} I'd appreciate segmentation masks.",
        "<image>\n{sent} Please highlight the segmentation mask.",
    ]
    public static let expandQuestions = [
        "<image>\nCould you identify the {class_name} in this picture?",
        "<image>\nAre you able to delineate the {class_name} in the image?",
        "<image>\nCan you pinpoint the {class_name} in this photo?",
        "<image>\nIs it possible for you to highlight the {class_name} in this image?",
        "<image>\nCan you discern the {class_name} in the given picture?",
        "<image>\nCan you provide me with asegment of the {class_name}?",
        "<image>\nPlease perform image segmentation to isolate the {class_name} in this image.",
        "<image>\nHelp me segment the {class_name}.",
        "<image>\nWould you be willing to segment the {class_name}?",
        "<image>\nCan you identify {class_name} in this picture? Please provide a segmentation mask.",
        "<image>\nCould you point out {class_name} in this image and show it with a segmentation mask?",
        "<image>\nIn this image, where is {class_name}? I'd appreciate a segmentation mask.",
        "<image>\nPlease highlight {class_name} in this image using a segmentation mask.",
        "<image>\nIn the picture provided, can you show where {class_name} is with a segmentation mask?",
    ]

    /// Question lists as a dataset sees them with `use_expand_question_list` (README: on). The reference
    /// extends the global lists once per dataset constructor, so duplicates change the template probabilities;
    /// pixellm uses each template once (documented).
    public static func questionList(short: Bool, expand: Bool) -> [String] {
        short ? shortQuestions + (expand ? expandQuestions : []) : longQuestions + (expand ? expandLongQuestions : [])
    }

    public static func fill(_ template: String, className: String? = nil, sent: String? = nil, seg: String? = nil) -> String {
        var s = template
        if let c = className { s = s.replacingOccurrences(of: "{class_name}", with: c) }
        if let t = sent { s = s.replacingOccurrences(of: "{sent}", with: t) }
        if let g = seg { s = s.replacingOccurrences(of: "{seg}", with: g) }
        return s
    }
}

/// The reference's data options (train_ds.py), with the README command's values as defaults.
public struct ReaderOptions: Codable, Equatable, Sendable {
    /// `--num_classes_per_sample`: questions per image for sem_seg / refer_seg (up to 3 x 3 = 9 classes sampled).
    public var numClassesPerSample = 3
    /// `--num_classes_per_question` (README: 3): targets per question for sem_seg / refer_seg.
    public var numClassesPerQuestion = 3
    /// `--use_expand_question_list` (README: on).
    public var useExpandQuestionList = true
    /// `--seg_token_num` x `--image_feature_scale_num`: the `[SEG0..5]` group.
    public var segTokenNum = 3
    public var imageFeatureScaleNum = 2
    /// ReasonSeg `--explanatory` probability (reference default 0.1; -1 disables).
    public var explanatory = 0.1
    public init() {}
    public var segGroup: String { SegText.group(segTokenNum: segTokenNum, scales: imageFeatureScaleNum) }

    /// The reference's option names.
    enum CodingKeys: String, CodingKey {
        case numClassesPerSample = "num_classes_per_sample", numClassesPerQuestion = "num_classes_per_question"
        case useExpandQuestionList = "use_expand_question_list", segTokenNum = "seg_token_num"
        case imageFeatureScaleNum = "image_feature_scale_num", explanatory
    }
}
