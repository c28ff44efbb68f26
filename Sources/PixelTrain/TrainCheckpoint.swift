import Foundation
import PixelDistributed
import PixelModel
import PixelTensor

// Training checkpoints (docs/training.md):
//
//   RUN/checkpoints/step-000050/rank-00000-of-00002.h5   this rank's slice of every bucket: "b<k>/value" (the fp32
//                                                         master values of its owned range), "b<k>/m", "b<k>/v"
//   RUN/checkpoints/step-000050/manifest.json             format, world size, bucket layout (every parameter's
//                                                         bucket, offset, shape), step, consumed samples, the
//                                                         options and model config, CRC-32 and size of every file
//   RUN/latest                                            "checkpoints/step-000050", moved after every rank wrote
//
// Every file is written under a temporary name, fsynced and renamed; the manifest only after every rank's file is
// complete (a barrier), `latest` only after the manifest. A crash at any point leaves the previous checkpoint and
// `latest` as they were. Because the manifest holds the layout, a resume at another world size reads the slices of
// all old ranks and cuts its own: any N -> any M.

public struct TrainCheckpointManifest: Codable, Equatable, Sendable {
    public struct File: Codable, Equatable, Sendable {
        public var name: String
        public var bytes: Int
        public var crc32: UInt32
    }
    public static let formatName = "pixellm-train-checkpoint"
    public static let currentVersion = 1

    public var format = formatName
    public var formatVersion = currentVersion
    public var worldSize: Int
    public var zeroStage: Int
    /// Optimizer steps done.
    public var step: Int
    /// AdamW's bias-correction step (steps minus skipped updates).
    public var adamStep: Int
    /// Samples of the global sequence consumed.
    public var consumedSamples: Int
    public var skippedUpdates: Int
    public var layout: BucketLayout
    public var files: [File]
    public var options: TrainOptions
    public var config: PixelLMConfig
    /// The shards' index.json checksum (a resume on other data is refused).
    public var datasetChecksum: String
    /// SEG token ids of the model.
    public var segTokenIds: [Int]
    public var tokenizer: String
    public var created: String

    enum CodingKeys: String, CodingKey {
        case format, formatVersion = "format_version", worldSize = "world_size", zeroStage = "zero_stage", step
        case adamStep = "adam_step", consumedSamples = "consumed_samples", skippedUpdates = "skipped_updates", layout, files
        case options, config, datasetChecksum = "dataset_checksum", segTokenIds = "seg_token_ids", tokenizer, created
    }

    public static let manifestName = "manifest.json"
    public static func rankFileName(_ r: Int, of n: Int) -> String { String(format: "rank-%05d-of-%05d.h5", r, n) }
    public static func directoryName(step: Int) -> String { String(format: "step-%06d", step) }

    public static func load(_ dir: String) throws -> TrainCheckpointManifest {
        let path = (dir as NSString).appendingPathComponent(manifestName)
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TrainError.file(path, "missing: not a complete checkpoint (the manifest is written last)")
        }
        let m: TrainCheckpointManifest
        do { m = try JSONDecoder().decode(TrainCheckpointManifest.self, from: withOptionDefaults(data)) } catch {
            throw TrainError.file(path, "not a training checkpoint manifest: \(error)")
        }
        guard m.format == formatName else { throw TrainError.file(path, "format '\(m.format)' is not '\(formatName)'") }
        guard m.formatVersion <= currentVersion else {
            throw TrainError.file(path, "format version \(m.formatVersion) is newer than this pixellm reads (\(currentVersion))")
        }
        if let bad = m.files.first(where: { !isPlainFileName($0.name) }) {
            throw TrainError.file(path, "rank file name '\(bad.name)' is not a plain file name in the checkpoint directory")
        }
        guard m.worldSize >= 1, m.worldSize <= 1 << 20 else { throw TrainError.file(path, "world_size \(m.worldSize) is not in 1...\(1 << 20)") }
        guard m.files.count == m.worldSize, m.layout.worldSize == m.worldSize else {
            throw TrainError.file(path, "\(m.files.count) rank files and a layout for \(m.layout.worldSize) ranks in a world of \(m.worldSize)")
        }
        for (k, v) in [("step", m.step), ("adam_step", m.adamStep), ("consumed_samples", m.consumedSamples), ("skipped_updates", m.skippedUpdates)] where v < 0 {
            throw TrainError.file(path, "\(k) \(v) is negative")
        }
        if let problem = m.layout.problem(fileBytes: m.files.map(\.bytes)) { throw TrainError.file(path, "layout: \(problem)") }
        return m
    }

    /// The manifest with every training option it does not mention (written before that option existed) set to
    /// its default, so that newer builds read older checkpoints; anything unparsable is returned as it was.
    static func withOptionDefaults(_ data: Data) -> Data {
        guard var obj = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any],
              let given = obj["options"] as? [String: Any],
              var full = (try? JSONSerialization.jsonObject(with: JSONEncoder().encode(TrainOptions()))) as? [String: Any]
        else { return data }
        for (k, v) in given { full[k] = v }
        obj["options"] = full
        return (try? JSONSerialization.data(withJSONObject: obj)) ?? data
    }

    /// Checks every rank file's size and CRC-32 against the manifest; the error names the file.
    public func verifyFiles(in dir: String) throws {
        for f in files {
            let path = (dir as NSString).appendingPathComponent(f.name)
            if let why = linkLeavesDirectory(path) { throw TrainError.file(path, why) }
            guard let size = fileSize(path) else {
                throw TrainError.file(path, "missing (the manifest lists it)")
            }
            guard size == f.bytes else { throw TrainError.file(path, "\(size) bytes, the manifest says \(f.bytes) (truncated or replaced?)") }
            let crc = try TrainCheckpoint.fileCRC(path)
            guard crc == f.crc32 else {
                throw TrainError.file(path, "CRC-32 \(String(crc, radix: 16)) differs from the manifest's \(String(f.crc32, radix: 16)) (damaged)")
            }
        }
    }
}

public enum TrainCheckpoint {
    public static let latestName = "latest"
    /// The run directory's pointer to its best checkpoint by evaluation gIoU (with `best.json`: step, split, figures).
    public static let bestName = "best"

    /// Points RUN/best at `checkpoint` and records its figures in RUN/best.json (rank 0; atomic writes).
    public static func markBest(run: String, checkpoint: String, step: Int, dataset: String, gIoU: Double, cIoU: Double) throws {
        let rel = "checkpoints/" + (checkpoint as NSString).lastPathComponent
        let info: [String: Any] = ["step": step, "checkpoint": rel, "dataset": dataset, "gIoU": gIoU, "cIoU": cIoU]
        try AtomicFile.write(Array(try JSONSerialization.data(withJSONObject: info, options: [.sortedKeys, .prettyPrinted])),
                             to: (run as NSString).appendingPathComponent(bestName + ".json"), error: { TrainError.file($0, $1) })
        try AtomicFile.write(Array((rel + "\n").utf8), to: (run as NSString).appendingPathComponent(bestName), error: { TrainError.file($0, $1) })
    }

    public static func fileCRC(_ path: String) throws -> UInt32 {
        switch CRC32.file(path) {
        case .success(let c): return c
        case .failure(let e): throw TrainError.file(path, "cannot be read: \(e.reason)")
        }
    }

    /// The checkpoint directory a path means: a checkpoint (has manifest.json) or a run directory (its `latest`).
    public static func resolve(_ path: String) throws -> String {
        let fm = FileManager.default
        if fm.fileExists(atPath: (path as NSString).appendingPathComponent(TrainCheckpointManifest.manifestName)) { return path }
        // a pointer file itself (RUN/latest, RUN/best): resolved against its run directory
        var isDir: ObjCBool = false
        let pointer = fm.fileExists(atPath: path, isDirectory: &isDir) && !isDir.boolValue
            && [latestName, bestName].contains((path as NSString).lastPathComponent)
        let run = pointer ? (path as NSString).deletingLastPathComponent : path
        let latest = pointer ? path : (path as NSString).appendingPathComponent(latestName)
        guard let data = fm.contents(atPath: latest), let rel = String(data: data, encoding: .utf8)?
            .trimmingCharacters(in: .whitespacesAndNewlines), !rel.isEmpty else {
            throw TrainError.file(path, "neither a checkpoint (no \(TrainCheckpointManifest.manifestName)) nor a run directory with a '\(latestName)' file")
        }
        guard !rel.hasPrefix("/"), !rel.split(separator: "/").contains("..") else {
            throw TrainError.file(latest, "'\(rel)' leaves the run directory")
        }
        return (run as NSString).appendingPathComponent(rel)
    }

    /// Bytes this rank's file of a checkpoint takes: value, m and v of its slices, plus HDF5's headers.
    public static func rankFileBytes(_ opt: ZeroAdamW) -> Int {
        let L = opt.buckets.layout
        let owned = L.buckets.indices.reduce(0) { $0 + L.ownedRange($1, rank: opt.comm.rank).count }
        return owned * 12 + 64 * 1024 + L.buckets.count * 3 * 4096
    }

    /// Why `bytes` cannot be written into directory `dir` (read-only, not writable, not enough free space), or nil.
    public static func spaceProblem(_ dir: String, bytes: Int) -> String? {
        var st = statvfs()
        guard statvfs(dir, &st) == 0 else { return "cannot inspect: \(String(cString: strerror(errno)))" }
        if st.f_flag & UInt(ST_RDONLY) != 0 { return "the file system is read-only" }
        if access(dir, W_OK) != 0 { return "cannot write: \(String(cString: strerror(errno)))" }
        let free = Int(st.f_bavail) &* Int(st.f_frsize)
        if free < bytes {
            return "\(mib(free)) free, a checkpoint needs \(mib(bytes)) here (free some space, or point --log-base-dir elsewhere)"
        }
        return nil
    }

    static func mib(_ b: Int) -> String { String(format: "%.1f MiB", Double(b) / 1_048_576) }

    /// Writes this rank's file and (rank 0) the manifest and `latest`. Collective: every rank calls it.
    public static func save(run: String, optimizer opt: ZeroAdamW, manifest base: TrainCheckpointManifest,
                            keep limit: Int?) throws -> String {
        let comm = opt.comm
        let name = TrainCheckpointManifest.directoryName(step: base.step)
        let rel = "checkpoints/" + name
        let dir = (run as NSString).appendingPathComponent(rel)
        var failure: String?
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            if let problem = spaceProblem(dir, bytes: rankFileBytes(opt)) { throw TrainError.file(dir, problem) }
            let L = opt.buckets.layout
            // written one tensor at a time: this rank's values (copied from the parameters, one bucket's slice at a
            // time), m and v (views of the optimizer state, no copy); 4.5 GB of copies at the 7B recipe otherwise
            let path = (dir as NSString).appendingPathComponent(TrainCheckpointManifest.rankFileName(comm.rank, of: comm.size))
            let names = L.buckets.indices.flatMap { b in ["b\(b)/value", "b\(b)/m", "b\(b)/v"] }
            try TensorFile.write(names: names, to: path, attributes: ["format": TrainCheckpointManifest.formatName]) { name in
                let parts = name.dropFirst().split(separator: "/")
                let b = Int(parts[0])!, own = L.ownedRange(b, rank: comm.rank), s = L.sliceLength(b)
                let stateBase = opt.stage == 0 ? comm.rank * s : 0
                switch parts[1] {
                case "value": return Tensor(opt.buckets.readValues(b, own), shape: [own.count])
                case "m": return Tensor(storage: opt.m[b].storage, shape: [own.count], offset: opt.m[b].offset + stateBase)
                default: return Tensor(storage: opt.v[b].storage, shape: [own.count], offset: opt.v[b].offset + stateBase)
                }
            }
        } catch {
            failure = "\(error)"
        }
        // every rank reports; any failure fails the save on every rank (the previous checkpoint stays `latest`)
        comm.checkIn("checkpoint \(name): rank files written")
        let failed = comm.allreduce(Int32(failure == nil ? 0 : 1), op: .sum)
        if failed > 0 {
            let previous = (try? resolve(run)).map { "; the previous checkpoint \($0) is intact and '\(latestName)' names it" } ?? ""
            throw TrainError.file(dir, "checkpoint not written (\(failed) rank(s) failed)" + (failure.map { ": \($0)" } ?? "") + previous)
        }
        let mine = (dir as NSString).appendingPathComponent(TrainCheckpointManifest.rankFileName(comm.rank, of: comm.size))
        let size = fileSize(mine) ?? -1
        let crc = try fileCRC(mine)
        let sizes = comm.allgather([Int64(size)]), crcs = comm.allgather([Int64(crc)])
        var result: Int32 = 0
        if comm.rank == 0 {
            do {
                var m = base
                m.files = (0..<comm.size).map {
                    .init(name: TrainCheckpointManifest.rankFileName($0, of: comm.size), bytes: Int(sizes[$0]), crc32: UInt32(crcs[$0]))
                }
                let enc = JSONEncoder()
                enc.outputFormatting = [.prettyPrinted, .sortedKeys]
                try AtomicFile.write(Array(try enc.encode(m)), to: (dir as NSString).appendingPathComponent(TrainCheckpointManifest.manifestName),
                                     error: { TrainError.file($0, $1) })
                try AtomicFile.write(Array((rel + "\n").utf8), to: (run as NSString).appendingPathComponent(latestName),
                                     error: { TrainError.file($0, $1) })
                if let limit { try prune(run: run, keep: limit) }
            } catch {
                result = 1
                FileHandle.standardError.write(Data("checkpoint: \(error)\n".utf8))
            }
        }
        if comm.allreduce(result, op: .sum) > 0 { throw TrainError.file(dir, "the manifest or 'latest' could not be written") }
        return dir
    }

    /// Removes the checkpoint directories of `run` that have no manifest (a save that did not finish) and the
    /// temporary files a killed writer left in complete ones; returns the directories removed. Call only while no
    /// rank is writing.
    static func removeIncomplete(run: String) -> [String] {
        let fm = FileManager.default
        let root = (run as NSString).appendingPathComponent("checkpoints")
        var removed: [String] = []
        for n in ((try? fm.contentsOfDirectory(atPath: root)) ?? []).sorted() where n.hasPrefix("step-") {
            let d = (root as NSString).appendingPathComponent(n)
            if !fm.fileExists(atPath: (d as NSString).appendingPathComponent(TrainCheckpointManifest.manifestName)) {
                if (try? fm.removeItem(atPath: d)) != nil { removed.append(d) }
            } else {
                for f in (try? fm.contentsOfDirectory(atPath: d)) ?? [] where f.contains(".tmp-") {
                    try? fm.removeItem(atPath: (d as NSString).appendingPathComponent(f))
                }
            }
        }
        for f in (try? fm.contentsOfDirectory(atPath: run)) ?? [] where f.hasPrefix(latestName + ".tmp-") || f.hasPrefix(bestName + ".tmp-") {
            try? fm.removeItem(atPath: (run as NSString).appendingPathComponent(f))
        }
        return removed
    }

    /// Removes the oldest complete checkpoints beyond `keep` (never the ones `latest` and `best` name).
    static func prune(run: String, keep: Int) throws {
        let root = (run as NSString).appendingPathComponent("checkpoints")
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).filter { $0.hasPrefix("step-") }.sorted()
        let latest = (try? resolve(run)).map { ($0 as NSString).lastPathComponent }
        let best = (try? resolve((run as NSString).appendingPathComponent(bestName))).map { ($0 as NSString).lastPathComponent }
        let complete = names.filter {
            FileManager.default.fileExists(atPath: (root as NSString).appendingPathComponent($0 + "/" + TrainCheckpointManifest.manifestName))
        }
        guard complete.count > keep else { return }
        for n in complete.prefix(complete.count - keep) where n != latest && n != best {
            try? FileManager.default.removeItem(atPath: (root as NSString).appendingPathComponent(n))
        }
    }

    /// One bucket's full (unpadded) `key` ("value", "m" or "v"), assembled from every rank's slice; the element
    /// counts are checked against the layout.
    public static func readBucket(_ dir: String, manifest m: TrainCheckpointManifest, bucket b: Int, key: String) throws -> [Float] {
        let L = m.layout
        var out = [Float](repeating: 0, count: L.buckets[b].count)
        for r in 0..<m.worldSize {
            let path = (dir as NSString).appendingPathComponent(m.files[r].name)
            let own = L.ownedRange(b, rank: r)
            let t: Tensor
            do { t = try TensorFile.read(path, name: "b\(b)/\(key)") } catch {
                throw TrainError.file(path, "dataset b\(b)/\(key): \(error)")
            }
            guard t.count == own.count else {
                throw TrainError.file(path, "b\(b)/\(key) has \(t.count) elements, the layout gives rank \(r) \(own.count)")
            }
            out.replaceSubrange(own, with: t.toArray())
        }
        return out
    }

    /// The full (unpadded) values, m and v of every bucket, assembled from all rank files of a checkpoint.
    public static func readFull(_ dir: String, manifest m: TrainCheckpointManifest) throws -> (values: [[Float]], m: [[Float]], v: [[Float]]) {
        let buckets = m.layout.buckets.indices
        return (try buckets.map { try readBucket(dir, manifest: m, bucket: $0, key: "value") },
                try buckets.map { try readBucket(dir, manifest: m, bucket: $0, key: "m") },
                try buckets.map { try readBucket(dir, manifest: m, bucket: $0, key: "v") })
    }

    /// Loads a checkpoint into the optimizer of this run (any world size): values into every replica, this rank's
    /// m and v. The layouts must hold the same tensors.
    public static func restore(_ dir: String, manifest m: TrainCheckpointManifest, into opt: ZeroAdamW) throws {
        let L = opt.buckets.layout
        guard m.layout.signature == L.signature, m.layout.capElements == L.capElements else {
            throw TrainError.mismatch(field: "trainable parameters", "the checkpoint \(dir) holds other trainable tensors or buckets than this run (--trainable, LoRA or the model config differ)")
        }
        // bucket by bucket (one bucket's values, m and v in memory at a time, not the whole checkpoint)
        for b in L.buckets.indices {
            let values = try readBucket(dir, manifest: m, bucket: b, key: "value")
            values.withUnsafeBufferPointer { if let a = $0.baseAddress { opt.buckets.writeValues(b, 0..<$0.count, from: a) } }
            let padded = L.buckets[b].padded, s = L.sliceLength(b)
            var state: [[Float]] = []
            for key in ["m", "v"] {
                let full = try readBucket(dir, manifest: m, bucket: b, key: key)
                let p = full + [Float](repeating: 0, count: padded - full.count)
                state.append(opt.stage != 0 ? Array(p[(opt.comm.rank * s)..<((opt.comm.rank + 1) * s)]) : p)
            }
            opt.restoreBucket(b, m: state[0], v: state[1])
        }
        opt.step = m.adamStep
    }
}
