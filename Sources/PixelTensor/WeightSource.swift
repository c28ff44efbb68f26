import Foundation
import PixelJSON

// MARK: - one API for both checkpoint formats

/// An error reading or writing a checkpoint (`SafetensorsError`, `TorchBinError`): the file, the tensor,
/// zip entry or key concerned (if any), and what is wrong. `kind`, one enum per format, lets callers and
/// tests tell the cases apart.
public struct CheckpointError<K: RawRepresentable & Sendable & Equatable>: Error, CustomStringConvertible, Sendable
    where K.RawValue == String {
    public typealias Kind = K
    public let kind: Kind
    public let file: String
    public let key: String?
    public let message: String

    public init(_ kind: Kind, file: String, key: String? = nil, _ message: String) {
        self.kind = kind
        self.file = file
        self.key = key
        self.message = message
    }

    public var description: String {
        if let key { return "\(file): '\(key)': \(message)" }
        return "\(file): \(message)"
    }
}

/// What `info(_:)` tells about a tensor in any checkpoint format.
public protocol WeightInfo {
    var dtype: DType { get }
    var shape: [Int] { get }
}

extension SafetensorsEntry: WeightInfo {}

/// A checkpoint file or directory of either format (safetensors or PyTorch `.bin`): callers load weights
/// through this and do not care which one the user brought.
public protocol WeightSource: AnyObject {
    associatedtype Info: WeightInfo
    /// All tensor names.
    var names: [String] { get }
    func contains(_ name: String) -> Bool
    /// dtype and shape (and format-specific layout) of a tensor.
    func info(_ name: String) throws -> Info
    /// The tensor converted to fp32.
    func tensor(_ name: String) throws -> Tensor
    /// An integer tensor (position ids, masks) in row-major order.
    func ints(_ name: String) throws -> [Int64]
    /// The tensor as bf16, in place when it is stored as contiguous bf16.
    func bf16(_ name: String) throws -> BF16Tensor
    /// Every float tensor in fp32, by name.
    func floatTensors() throws -> [String: Tensor]
}

extension SafetensorsFile: WeightSource {}
extension TorchBinFile: WeightSource {}

public enum WeightSources {
    /// The checkpoint in a Hugging Face model directory: safetensors when present (index or single file,
    /// as transformers prefers), else PyTorch `.bin` (index or single file).
    public static func open(_ directory: String) throws -> any WeightSource {
        let fm = FileManager.default
        func has(_ f: String) -> Bool { fm.fileExists(atPath: (directory as NSString).appendingPathComponent(f)) }
        if has(Safetensors.indexName) || has(Safetensors.singleName) { return try SafetensorsDirectory(directory) }
        if has(TorchBin.indexName) || has(TorchBin.singleName) { return try TorchBinDirectory(directory) }
        throw TorchBinError(.missingShard, file: directory,
                            "no checkpoint in this directory: none of \(Safetensors.indexName), \(Safetensors.singleName), \(TorchBin.indexName), \(TorchBin.singleName)")
    }
}

// MARK: - sharded checkpoint directories

/// The failures of reading a checkpoint directory; each format reports them as its own error type.
public enum WeightDirectoryErrorKind: String, Sendable {
    case io, invalidJSON, duplicateKey, invalidIndex, missingShard, tensorNotFound
}

/// A checkpoint file format that transformers shards: the file names of its index and single-file
/// checkpoint, and how its errors are reported.
public protocol ShardedWeightFile: WeightSource {
    /// `model.safetensors.index.json`, `pytorch_model.bin.index.json`.
    static var indexName: String { get }
    /// `model.safetensors`, `pytorch_model.bin`.
    static var singleName: String { get }
    /// The kinds of the format's `CheckpointError`; they include every `WeightDirectoryErrorKind` by name.
    associatedtype ErrorKind: RawRepresentable & Sendable & Equatable where ErrorKind.RawValue == String
    /// Opens and validates one shard.
    init(_ path: String) throws
    var path: String { get }
}

extension SafetensorsFile: ShardedWeightFile {
    public typealias ErrorKind = SafetensorsErrorKind
    public static var indexName: String { Safetensors.indexName }
    public static var singleName: String { Safetensors.singleName }
}

extension TorchBinFile: ShardedWeightFile {
    public typealias ErrorKind = TorchBinErrorKind
    public static var indexName: String { TorchBin.indexName }
    public static var singleName: String { TorchBin.singleName }
}

/// A safetensors checkpoint directory: `model.safetensors.index.json` with its shards, or `model.safetensors`.
public typealias SafetensorsDirectory = ShardedWeightDirectory<SafetensorsFile>
/// A PyTorch checkpoint directory: `pytorch_model.bin.index.json` with its shards, or `pytorch_model.bin`.
public typealias TorchBinDirectory = ShardedWeightDirectory<TorchBinFile>

/// A checkpoint directory: the index (`Shard.indexName`) with its shards when present, else the single
/// file (`Shard.singleName`). Opening validates every shard and that each tensor appears exactly once, in
/// the shard the index names. Errors are the shard format's own.
public final class ShardedWeightDirectory<Shard: ShardedWeightFile>: WeightSource, @unchecked Sendable {
    public let directory: String
    /// The index file, or nil for a single-file checkpoint.
    public let indexPath: String?
    /// The shard files in name order.
    public let files: [Shard]
    /// All tensor names, sorted.
    public let names: [String]
    /// `metadata.total_size` of the index, if given.
    public let totalSize: Int?
    private let fileOf: [String: Shard]

    /// The shard format's error (`SafetensorsError`, `TorchBinError`).
    private static func error(_ kind: WeightDirectoryErrorKind, file: String, key: String? = nil, _ message: String) -> Error {
        CheckpointError(Shard.ErrorKind(rawValue: kind.rawValue)!, file: file, key: key, message)
    }

    public init(_ directory: String) throws {
        self.directory = directory
        let index = (directory as NSString).appendingPathComponent(Shard.indexName)
        let single = (directory as NSString).appendingPathComponent(Shard.singleName)
        let fm = FileManager.default
        if fm.fileExists(atPath: index) {
            indexPath = index
            let (map, total) = try Self.readIndex(index)
            totalSize = total
            var byFile: [String: [String]] = [:]
            for (t, f) in map { byFile[f, default: []].append(t) }
            var opened: [Shard] = []
            var owner: [String: Shard] = [:]
            for f in byFile.keys.sorted() {
                let p = (directory as NSString).appendingPathComponent(f)
                guard fm.fileExists(atPath: p) else {
                    let example = byFile[f]!.sorted()[0]
                    throw Self.error(.missingShard, file: index, key: f,
                                     "the weight_map names this shard (for \(byFile[f]!.count) tensors, e.g. '\(example)') but \(p) does not exist")
                }
                let file = try Shard(p)
                for t in byFile[f]! where !file.contains(t) {
                    throw Self.error(.invalidIndex, file: index, key: t, "the weight_map puts this tensor in \(f), which does not contain it")
                }
                for t in file.names {
                    if let other = owner[t] {
                        throw Self.error(.invalidIndex, file: p, key: t, "tensor also present in \(other.path)")
                    }
                    guard map[t] == f else {
                        throw Self.error(.invalidIndex, file: p, key: t,
                                         map[t].map { "tensor is in this shard but the index maps it to \($0)" } ?? "tensor is missing from the index's weight_map")
                    }
                    owner[t] = file
                }
                opened.append(file)
            }
            files = opened
            fileOf = owner
        } else if fm.fileExists(atPath: single) {
            indexPath = nil
            totalSize = nil
            let file = try Shard(single)
            files = [file]
            fileOf = Dictionary(uniqueKeysWithValues: file.names.map { ($0, file) })
        } else {
            throw Self.error(.missingShard, file: directory, "neither \(Shard.indexName) nor \(Shard.singleName) in this directory")
        }
        names = fileOf.keys.sorted()
    }

    /// `{"metadata": {"total_size": n}, "weight_map": {tensor: shard file}}`, as transformers writes it.
    static func readIndex(_ path: String) throws -> (map: [String: String], total: Int?) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw error(.io, file: path, "cannot read the index")
        }
        let json: JSONValue
        do {
            json = try data.withUnsafeBytes { try JSONParser.parse($0) }
        } catch let e as JSONParser.Failure {
            if let dup = e.duplicateKey { throw error(.duplicateKey, file: path, key: dup, "duplicate key in the index\(e.context)") }
            throw error(.invalidJSON, file: path, "the index is not valid JSON: \(e.message) at byte \(e.offset)")
        }
        guard case .object(let top) = json, let wm = top.first(where: { $0.key == "weight_map" })?.value,
              case .object(let pairs) = wm else {
            throw error(.invalidIndex, file: path, "the index has no \"weight_map\" object")
        }
        var map: [String: String] = [:]
        for (t, v) in pairs {
            guard case .string(let f) = v, isPlainFileName(f) else {
                throw error(.invalidIndex, file: path, key: t, "weight_map value \(v.text) is not a shard file name")
            }
            map[t] = f
        }
        var total: Int?
        if let m = top.first(where: { $0.key == "metadata" })?.value, case .object(let mm) = m,
           let ts = mm.first(where: { $0.key == "total_size" })?.value {
            total = ts.usize()
        }
        return (map, total)
    }

    public func contains(_ name: String) -> Bool { fileOf[name] != nil }

    /// The shard holding `name`.
    public func file(for name: String) throws -> Shard {
        guard let f = fileOf[name] else {
            throw Self.error(.tensorNotFound, file: indexPath ?? directory, key: name, "no such tensor in the checkpoint (\(names.count) tensors)")
        }
        return f
    }

    public func info(_ name: String) throws -> Shard.Info { try file(for: name).info(name) }
    public func tensor(_ name: String) throws -> Tensor { try file(for: name).tensor(name) }
    public func ints(_ name: String) throws -> [Int64] { try file(for: name).ints(name) }
    public func bf16(_ name: String) throws -> BF16Tensor { try file(for: name).bf16(name) }

    /// Every float tensor of the shards (the types the format converts to fp32), by name.
    public func floatTensors() throws -> [String: Tensor] {
        var out: [String: Tensor] = [:]
        for f in files { out.merge(try f.floatTensors()) { a, _ in a } }
        return out
    }
}
