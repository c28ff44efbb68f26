// The reference's dataset options (train_ds.py: --dataset, --sem_seg_data, --refer_seg_data, --vqa_data,
// --multi_reason_seg_data, --reason_seg_data) mapped to dataset readers, in the order the options list them.
import Foundation

public enum DatasetRegistry {
    /// The top-level dataset kinds of `--dataset` ("||"-separated).
    public static let kinds = ["sem_seg", "refer_seg", "vqa", "multi_reason_seg", "reason_seg"]
    public static let semSegNames = ["ade20k", "cocostuff", "pascal_part", "paco_lvis", "mapillary"]
    public static let referSegNames = ["refclef", "refcoco", "refcoco+", "refcocog"]
    public static let museSplits = ["train", "val", "test_less", "test_many"]
    public static let reasonSegSplits = ["train", "val", "test"]

    /// Defaults of the reference (README command) for each option.
    public static let defaultSemSegData = "ade20k||cocostuff||pascal_part||paco_lvis||mapillary"
    public static let defaultReferSegData = "refclef||refcoco||refcoco+||refcocog"
    public static let defaultVQAData = "llava_instruct_150k"
    public static let defaultMultiReasonSegData = "train"
    public static let defaultReasonSegData = "ReasonSeg|train"

    /// One sub-dataset to read.
    public struct Entry: Equatable, Sendable {
        /// "sem_seg", "refer_seg", "vqa", "multi_reason_seg" or "reason_seg".
        public var kind: String
        /// ade20k / refcoco / llava_instruct_150k / MUSE split / ReasonSeg split.
        public var name: String
        /// refer_seg: "train"; multi_reason_seg and reason_seg: the split; otherwise "".
        public var split: String
        /// The file or directory the reader needs (relative to the dataset directory).
        public var requiredPath: String
    }

    static func split(_ s: String, _ sep: String) -> [String] {
        s.components(separatedBy: sep).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    static func check(_ names: [String], valid: [String], option: String) throws {
        for n in names where !valid.contains(n) {
            throw DatasetError(file: option, "unknown name \"\(n)\"; valid: \(valid.joined(separator: ", "))")
        }
    }

    /// Parses and validates the options into the list of sub-datasets (no file access).
    public static func entries(dataset: String, semSegData: String = defaultSemSegData, referSegData: String = defaultReferSegData,
                               vqaData: String = defaultVQAData, multiReasonSegData: String = defaultMultiReasonSegData,
                               reasonSegData: String = defaultReasonSegData) throws -> [Entry] {
        let ks = split(dataset, "||")
        if ks.isEmpty { throw DatasetError(file: "--dataset", "empty; valid kinds: \(kinds.joined(separator: ", "))") }
        try check(ks, valid: kinds, option: "--dataset")
        var out: [Entry] = []
        for k in ks {
            switch k {
            case "sem_seg":
                let names = split(semSegData, "||")
                try check(names, valid: semSegNames, option: "--sem-seg-data")
                for n in names {
                    let dir: String
                    switch n {
                    case "pascal_part": dir = "vlpart/pascal_part"
                    case "paco_lvis": dir = "vlpart/paco"
                    default: dir = n
                    }
                    out.append(Entry(kind: k, name: n, split: "", requiredPath: dir))
                }
            case "refer_seg":
                let names = split(referSegData, "||")
                try check(names, valid: referSegNames, option: "--refer-seg-data")
                for n in names { out.append(Entry(kind: k, name: n, split: "train", requiredPath: "refer_seg/\(n)")) }
            case "vqa":
                let names = split(vqaData, "||")
                if names.isEmpty { throw DatasetError(file: "--vqa-data", "empty; e.g. \(defaultVQAData)") }
                for n in names {
                    if n.contains("/") { throw DatasetError(file: "--vqa-data", "\"\(n)\": give the json name under llava_dataset/, without a directory") }
                    let file = n.hasSuffix(".json") ? String(n.dropLast(5)) : n
                    out.append(Entry(kind: k, name: file, split: "", requiredPath: "llava_dataset/\(file).json"))
                }
            case "multi_reason_seg":
                let splits = split(multiReasonSegData, "||")
                if splits.isEmpty { throw DatasetError(file: "--multi-reason-seg-data", "empty; valid: \(museSplits.joined(separator: ", "))") }
                try check(splits, valid: museSplits, option: "--multi-reason-seg-data")
                for s in splits { out.append(Entry(kind: k, name: "muse_\(s)", split: s, requiredPath: "muse_\(s).json")) }
            default:  // reason_seg: "ReasonSeg|train" or "ReasonSeg|train_val" (the reference splits the splits on "_")
                let parts = reasonSegData.components(separatedBy: "|")
                guard parts.count == 2, parts[0] == "ReasonSeg" else {
                    throw DatasetError(file: "--reason-seg-data", "\"\(reasonSegData)\": expected ReasonSeg|<split>[_<split>...], e.g. \(defaultReasonSegData)")
                }
                let splits = split(parts[1], "_")
                if splits.isEmpty { throw DatasetError(file: "--reason-seg-data", "no split; valid: \(reasonSegSplits.joined(separator: ", "))") }
                try check(splits, valid: reasonSegSplits, option: "--reason-seg-data")
                for s in splits { out.append(Entry(kind: k, name: "ReasonSeg/\(s)", split: s, requiredPath: "reason_seg/ReasonSeg/\(s)")) }
            }
        }
        return out
    }

    /// The readers of the selection, in option order. A sub-dataset whose directory or file is missing is left
    /// out with a warning, or is an error with `strict`.
    public static func readers(datasetDir: String, dataset: String, semSegData: String = defaultSemSegData,
                               referSegData: String = defaultReferSegData, vqaData: String = defaultVQAData,
                               multiReasonSegData: String = defaultMultiReasonSegData, reasonSegData: String = defaultReasonSegData,
                               options: ReaderOptions, strict: Bool = false,
                               warn: (String) -> Void = { FileHandle.standardError.write(Data(("warning: " + $0 + "\n").utf8)) })
        throws -> [any DatasetReader]
    {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: datasetDir, isDirectory: &isDir), isDir.boolValue else {
            throw DatasetError(file: datasetDir, "dataset directory does not exist")
        }
        let es = try entries(dataset: dataset, semSegData: semSegData, referSegData: referSegData, vqaData: vqaData,
                             multiReasonSegData: multiReasonSegData, reasonSegData: reasonSegData)
        var out: [any DatasetReader] = []
        var readable = 0
        for e in es {
            // MUSE files sit at the dataset root (the reference's ./dataset/muse_train.json) or under muse/.
            let candidates = e.kind == "multi_reason_seg" ? [e.requiredPath, "muse/" + e.requiredPath] : [e.requiredPath]
            let paths = candidates.map { (datasetDir as NSString).appendingPathComponent($0) }
            guard paths.contains(where: { FileManager.default.fileExists(atPath: $0) }) else {
                if strict { throw DatasetError(file: paths[0], "\(e.kind) \(e.name): missing (--strict)") }
                warn("\(e.kind) \(e.name): \(paths.joined(separator: " or ")) does not exist; skipping this sub-dataset")
                continue
            }
            do {
                out.append(try makeReader(e, datasetDir: datasetDir, options: options))
                readable += 1
            } catch let err as DatasetError where !strict {
                // A malformed index file (json, pickle, class list): the sub-dataset is skipped and counted.
                warn("\(e.kind) \(e.name): \(err); skipping this sub-dataset")
                out.append(UnreadableDataset(dataset: e.kind, subset: e.name, error: err))
            }
        }
        if readable == 0 {
            throw DatasetError(file: datasetDir, "none of the selected sub-datasets exists or reads (\(es.map(\.name).joined(separator: ", ")))")
        }
        return out
    }

    /// The reader of one sub-dataset.
    public static func makeReader(_ e: Entry, datasetDir: String, options: ReaderOptions) throws -> any DatasetReader {
        switch e.kind {
        case "multi_reason_seg":
            return try MUSEReader(datasetDir: datasetDir, split: e.split, options: options)
        case "reason_seg":
            return try ReasonSegReader(datasetDir: datasetDir, split: e.split, options: options)
        case "vqa":
            return try VQAReader(datasetDir: datasetDir, file: e.name, options: options)
        case "refer_seg":
            return try ReferSegReader(datasetDir: datasetDir, name: e.name, split: e.split, options: options)
        case "sem_seg":
            return try SemSegReader(datasetDir: datasetDir, name: e.name, options: options)
        default:
            throw DatasetError(file: "--dataset", "unknown kind \"\(e.kind)\"; valid: \(kinds.joined(separator: ", "))")
        }
    }
}

/// A sub-dataset whose index file could not be read: no items, and one index skip naming the file and the
/// reason, so that `prepare` counts and logs it with the other skips.
public struct UnreadableDataset: DatasetReader {
    public let dataset: String
    public let subset: String
    public let indexSkips: SkipLog
    public var count: Int { 0 }
    public init(dataset: String, subset: String, error: DatasetError) {
        self.dataset = dataset
        self.subset = subset
        var log = SkipLog()
        log.record(SampleSkip(file: error.file, "unreadable dataset: \(error.message)"))
        indexSkips = log
    }
    public func sample(_ index: Int, seed: UInt64) throws -> DataSample {
        throw SampleSkip(file: indexSkips.entries.first?.file ?? subset, "unreadable dataset has no items")
    }
}
