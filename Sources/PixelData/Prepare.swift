// The packing job of `pixellm prepare` (docs/shards.md), independent of the command line and of MPI: the
// caller passes its rank, the world size and a barrier.
//
// Work plan: the (reader, item) pairs of every reader in order (at most `limit` items per reader), cut into
// shards of `shardSize` items; shard k is packed by rank k % worldSize. A shard is written atomically, so a
// shard file that exists is complete: a second run keeps every shard whose recorded options match and packs
// the others. Rank 0 writes index.json and skipped.log after the barrier, reading the shards' own skip lists.
import Foundation
import PixelTensor
import PixelText

/// Everything that determines the content of the shards (recorded in each shard and in index.json).
public struct PrepareOptions: Codable, Equatable, Sendable {
    public var imageSize = 448
    public var shardSize = 512
    public var seed: UInt64 = 0
    public var modelMaxLength = 512
    /// At most this many items per sub-dataset (nil: all).
    public var limit: Int?
    /// The dataset selection as given (`--dataset` and the per-kind lists), for the record.
    public var datasetSpec = ""
    /// The dataset directory (absolute): shards of another tree are not reused.
    public var datasetDir = ""
    public var tokenizerPath = ""
    /// FNV-1a 64 of the tokenizer files (see `tokenizerFingerprint`).
    public var tokenizerHash = ""
    public var useMMStartEnd = true
    /// Deflate level of the image chunks (0: none; recorded as "compression").
    public var compression = 0
    /// The readers' options (recorded flat, next to the others, in index.json and each shard).
    public var reader = ReaderOptions()

    public init() {}

    enum CodingKeys: String, CodingKey {
        case imageSize = "image_size", shardSize = "shard_size", seed, modelMaxLength = "model_max_length", limit
        case datasetSpec = "dataset_spec", datasetDir = "dataset_dir", tokenizerPath = "tokenizer_path", tokenizerHash = "tokenizer_hash"
        case useMMStartEnd = "use_mm_start_end", compression
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        imageSize = try c.decode(Int.self, forKey: .imageSize)
        shardSize = try c.decode(Int.self, forKey: .shardSize)
        seed = try c.decode(UInt64.self, forKey: .seed)
        modelMaxLength = try c.decode(Int.self, forKey: .modelMaxLength)
        limit = try c.decodeIfPresent(Int.self, forKey: .limit)
        datasetSpec = try c.decode(String.self, forKey: .datasetSpec)
        datasetDir = try c.decode(String.self, forKey: .datasetDir)
        tokenizerPath = try c.decode(String.self, forKey: .tokenizerPath)
        tokenizerHash = try c.decode(String.self, forKey: .tokenizerHash)
        useMMStartEnd = try c.decode(Bool.self, forKey: .useMMStartEnd)
        compression = try c.decodeIfPresent(Int.self, forKey: .compression) ?? 0
        reader = try ReaderOptions(from: decoder)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(imageSize, forKey: .imageSize)
        try c.encode(shardSize, forKey: .shardSize)
        try c.encode(seed, forKey: .seed)
        try c.encode(modelMaxLength, forKey: .modelMaxLength)
        try c.encodeIfPresent(limit, forKey: .limit)
        try c.encode(datasetSpec, forKey: .datasetSpec)
        try c.encode(datasetDir, forKey: .datasetDir)
        try c.encode(tokenizerPath, forKey: .tokenizerPath)
        try c.encode(tokenizerHash, forKey: .tokenizerHash)
        try c.encode(useMMStartEnd, forKey: .useMMStartEnd)
        try c.encode(compression, forKey: .compression)
        try reader.encode(to: encoder)
    }

    /// The options that must match for a shard to be reused: all but where the tokenizer lives.
    public var identity: PrepareOptions { var o = self; o.tokenizerPath = ""; return o }

    public var json: String {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try! e.encode(self), as: UTF8.self)
    }

    /// The differing fields of two option sets, for error messages.
    public func differences(from o: PrepareOptions) -> [String] {
        func obj(_ x: PrepareOptions) -> [String: Any] {
            (try? JSONSerialization.jsonObject(with: Data(x.identity.json.utf8))) as? [String: Any] ?? [:]
        }
        let a = obj(self), b = obj(o)
        return Set(a.keys).union(b.keys).sorted().compactMap { k in
            let x = a[k].map { "\($0)" } ?? "absent", y = b[k].map { "\($0)" } ?? "absent"
            return x == y ? nil : "\(k): \(y) -> \(x)"
        }
    }

    /// FNV-1a 64 (hex) over the tokenizer files present in `directory` (name, NUL, bytes, in name order).
    public static func tokenizerFingerprint(directory: String) throws -> String {
        let names = ["added_tokens.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json"]
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        var found = 0
        for n in names {
            let p = (directory as NSString).appendingPathComponent(n)
            guard FileManager.default.fileExists(atPath: p) else { continue }
            guard let d = FileManager.default.contents(atPath: p) else { throw ShardError(file: p, "cannot read the tokenizer file") }
            found += 1
            for b in Array(n.utf8) + [0] + [UInt8](d) { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
        }
        if found == 0 { throw ShardError(file: directory, "no tokenizer.json or tokenizer.model") }
        return String(format: "%016llx", h)
    }
}

/// The deterministic list of (reader, item) pairs.
public struct WorkPlan {
    public let readers: [any DatasetReader]
    public let counts: [Int]
    public let starts: [Int]
    public let total: Int
    public let shardSize: Int

    public init(readers: [any DatasetReader], limit: Int?, shardSize: Int) {
        precondition(shardSize > 0, "WorkPlan: shard size \(shardSize)")
        self.readers = readers
        counts = readers.map { r in limit.map { min($0, r.count) } ?? r.count }
        var s: [Int] = [], n = 0
        for c in counts { s.append(n); n += c }
        starts = s
        total = n
        self.shardSize = shardSize
    }

    public var shardCount: Int { (total + shardSize - 1) / shardSize }
    public func items(ofShard k: Int) -> Range<Int> { (k * shardSize)..<min((k + 1) * shardSize, total) }

    /// Reader number and raw index of plan item `item`.
    public func locate(_ item: Int) -> (reader: Int, index: Int) {
        var r = 0
        while r + 1 < starts.count && starts[r + 1] <= item { r += 1 }
        while counts[r] == 0 || item >= starts[r] + counts[r] { r += 1 }
        return (r, item - starts[r])
    }

    /// "dataset/subset:count" per reader: recorded so that a changed selection is not mistaken for a resume.
    public var fingerprint: String { zip(readers, counts).map { "\($0.dataset)/\($0.subset):\($1)" }.joined(separator: ",") }
}

/// What one rank did.
public struct PrepareSummary {
    public var shardsTotal = 0
    /// Shards this rank packed / found complete and kept.
    public var shardsPacked = 0
    public var shardsKept = 0
    public var itemsPacked = 0
    public var samplesWritten = 0
    /// Skips of the items this rank packed (kept shards excluded).
    public var skips: [ShardSkip] = []
    /// Rank 0: the manifest written.
    public var manifest: ShardManifest?
}

public final class PrepareJob {
    public let plan: WorkPlan
    public let tokenizer: Tokenizer
    public let options: PrepareOptions
    public let outDir: String
    public let datasetDir: String
    public let strict: Bool
    public let overwrite: Bool
    /// Warnings and notes (stderr in the CLI).
    public var log: (String) -> Void = { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }

    public init(readers: [any DatasetReader], tokenizer: Tokenizer, options: PrepareOptions, outDir: String, datasetDir: String,
                strict: Bool = false, overwrite: Bool = false) {
        plan = WorkPlan(readers: readers, limit: options.limit, shardSize: options.shardSize)
        self.tokenizer = tokenizer
        self.options = options
        self.outDir = outDir
        self.datasetDir = datasetDir
        self.strict = strict
        self.overwrite = overwrite
    }

    func path(_ name: String) -> String { (outDir as NSString).appendingPathComponent(name) }

    /// Runs this rank's part. `progress(done, total, skipped)` is called after each item this rank packs.
    public func run(rank: Int = 0, worldSize: Int = 1, barrier: () -> Void = {},
                    progress: ((_ done: Int, _ total: Int, _ skipped: Int) -> Void)? = nil) throws -> PrepareSummary {
        precondition(worldSize > 0 && rank >= 0 && rank < worldSize, "PrepareJob.run: rank \(rank) of \(worldSize)")
        let fm = FileManager.default
        try fm.createDirectory(atPath: outDir, withIntermediateDirectories: true)
        if strict {
            for r in plan.readers { if let s = r.indexSkips.entries.first { throw strictError(s, subset: r.subset, index: -1) } }
        }
        let nShards = plan.shardCount
        let mine = (0..<nShards).filter { $0 % worldSize == rank }
        var summary = PrepareSummary()
        summary.shardsTotal = nShards

        // 1. the manifest of an earlier run (rank 0) and this rank's complete shards: same options or an error
        if rank == 0, let old = try? ShardManifest.load(outDir) {
            if old.options.identity != options.identity || old.formatVersion != ShardFormat.version {
                if !overwrite { throw mismatch(path(ShardFormat.manifestName), old.options) }
            }
        }
        if rank == 0 && overwrite { unlink(path(ShardFormat.manifestName)) }
        let names = (try? fm.contentsOfDirectory(atPath: outDir)) ?? []
        for n in names where ShardFormat.isTemporary(n) {
            // leftovers of a crashed run: each rank removes those of its own shards, rank 0 those beyond the plan
            let k = Int(n.dropFirst("shard-".count).prefix(while: { $0.isNumber })) ?? -1
            if mine.contains(k) || (rank == 0 && (k < 0 || k >= nShards)) {
                unlink(path(n))
                log("prepare: removed the unfinished temporary file \(path(n))")
            }
        }
        if rank == 0 && overwrite {
            for n in names where n.hasPrefix("shard-") && n.hasSuffix(".h5") {
                if let k = Int(n.dropFirst("shard-".count).dropLast(3)), k >= nShards { unlink(path(n)) }
            }
        }
        var todo: [Int] = []
        for k in mine {
            let p = path(ShardFormat.shardName(k))
            guard fm.fileExists(atPath: p) else { todo.append(k); continue }
            let f: ShardFile, recorded: PrepareOptions
            do {
                f = try ShardFile(path: p)
                recorded = try JSONDecoder().decode(PrepareOptions.self, from: Data((f.attributes["options"] ?? "").utf8))
            } catch {
                log("prepare: \(p) is unreadable (\(error)); packing it again")
                todo.append(k)
                continue
            }
            let range = plan.items(ofShard: k)
            let sameOptions = recorded.identity == options.identity && f.attributes["plan"] == plan.fingerprint
            let sameRange = f.intAttributes["item_begin"] == Int64(range.lowerBound) && f.intAttributes["item_end"] == Int64(range.upperBound)
            if sameOptions && sameRange {
                summary.shardsKept += 1
            } else if overwrite {
                todo.append(k)
            } else if recorded.identity != options.identity {
                throw mismatch(p, recorded)
            } else {
                throw ShardError(file: p, "was packed for a different work plan (\(f.attributes["plan"] ?? "?")); use --overwrite or another --out")
            }
        }

        // 2. pack
        let total = todo.reduce(0) { $0 + plan.items(ofShard: $1).count }
        var done = 0
        for k in todo {
            let writer = try ShardWriter(path: path(ShardFormat.shardName(k)), imageSize: options.imageSize, compression: options.compression)
            let range = plan.items(ofShard: k)
            for item in range {
                switch try packItem(item) {
                case let .success(s):
                    try writer.append(s)
                    summary.samplesWritten += 1
                case let .failure(skip):
                    writer.recordSkip(skip)
                    summary.skips.append(skip)
                }
                done += 1
                summary.itemsPacked += 1
                progress?(done, total, summary.skips.count)
            }
            try writer.finish(attributes: ["options": options.json, "plan": plan.fingerprint, "tokenizer_path": options.tokenizerPath,
                                           "tokenizer_hash": options.tokenizerHash],
                              intAttributes: ["shard_index": Int64(k), "item_begin": Int64(range.lowerBound),
                                              "item_end": Int64(range.upperBound), "seed": Int64(bitPattern: options.seed)])
            summary.shardsPacked += 1
        }

        // 3. manifest and skip log
        barrier()
        if rank == 0 { summary.manifest = try writeManifest() }
        barrier()
        return summary
    }

    func mismatch(_ file: String, _ recorded: PrepareOptions) -> ShardError {
        ShardError(file: file, "was written with different options (\(options.differences(from: recorded).joined(separator: "; "))): "
                   + "use --overwrite to replace the shards, or another --out")
    }

    func strictError(_ s: SampleSkip, subset: String, index: Int) -> ShardError {
        ShardError(file: s.file, "--strict: \(s.reason) (\(subset) item \(index))")
    }

    /// Packs plan item `item`: the sample, or why it is skipped. Throws only what must stop the run
    /// (a DatasetError, a skip under --strict).
    public func packItem(_ item: Int) throws -> Result<PackedSample, ShardSkip> {
        let (r, index) = plan.locate(item)
        let reader = plan.readers[r]
        func skip(_ file: String, _ reason: String) throws -> Result<PackedSample, ShardSkip> {
            if strict { throw strictError(SampleSkip(file: file, reason), subset: reader.subset, index: index) }
            return .failure(ShardSkip(file: file, reason: reason, subset: reader.subset, index: index))
        }
        let s: DataSample
        do {
            s = try reader.sample(index, seed: options.seed)
        } catch let e as SampleSkip {
            return try skip(e.file, e.reason)
        } catch let e as DatasetError {
            throw e
        } catch let e as ImageError {
            return try skip(e.file, "image does not decode: \(e.message)")
        } catch let e as MaskError {
            return try skip(e.item, "bad mask: \(e.message)")
        } catch {
            return try skip("\(reader.subset) item \(index)", "reader error: \(error)")
        }
        let imagePath = s.imagePath.hasPrefix("/") ? s.imagePath : (datasetDir as NSString).appendingPathComponent(s.imagePath)
        let image: RGBImage
        do {
            image = try Image.load(imagePath)
        } catch let e as ImageError {
            if e.message == "no such file" { return try skip(imagePath, "missing image: no such file") }
            return try skip(imagePath, "image does not decode: \(e.message)")
        } catch {
            return try skip(imagePath, "image does not decode: \(error)")
        }
        if image.height != s.height || image.width != s.width {
            return try skip(imagePath, "image size mismatch: decoded \(image.height)x\(image.width) (HxW), the annotation says \(s.height)x\(s.width) (\(s.source))")
        }
        if s.targets.count != s.segGroupCount {
            return try skip(s.source, "target count mismatch: \(s.targets.count) masks for \(s.segGroupCount) [SEG] groups")
        }
        for (k, t) in s.targets.enumerated() where t.mask.height != s.height || t.mask.width != s.width {
            return try skip(s.source, "mask size mismatch: mask \(k) is \(t.mask.height)x\(t.mask.width), the image \(s.height)x\(s.width)")
        }
        var prompts: [String] = [], ids: [[Int32]] = [], labels: [[Int32]] = []
        for conv in s.conversations {
            let prompt = PixelLMPrompt.trainingConversation(rounds: conv.map { ($0.question, $0.answer) }, useMMStartEnd: options.useMMStartEnd)
            do {
                let b = try ConversationLabels.collate([prompt], tokenizer: tokenizer, modelMaxLength: options.modelMaxLength,
                                                       inference: true, onMismatch: .fail)
                prompts.append(prompt)
                ids.append(b.inputIds[0].map { Int32($0) })
                labels.append(b.labels[0].map { Int32($0) })
            } catch {
                return try skip(s.source, "label masking: \(error)")
            }
        }
        let resized = ResizeLongestSide(options.imageSize).apply(image)
        let S = options.imageSize
        var padded = [UInt8](repeating: 0, count: S * S * 3)
        resized.pixels.withUnsafeBufferPointer { src in
            for y in 0..<resized.height {
                for k in 0..<(resized.width * 3) { padded[y * S * 3 + k] = src[y * resized.width * 3 + k] }
            }
        }
        let meta = ShardSampleMeta(dataset: s.dataset, subset: s.subset, index: s.index, item: item, imagePath: s.imagePath, source: s.source,
                                   height: s.height, width: s.width, conversations: s.conversations, prompts: prompts,
                                   targets: s.targets.map { .init(name: $0.name, provenance: $0.provenance) })
        return .success(PackedSample(image: padded, validHeight: resized.height, validWidth: resized.width, height: s.height, width: s.width,
                                     masks: s.targets.map(\.mask), meta: meta, inputIds: ids, labels: labels))
    }

    /// Reads every shard of the plan (all must exist) and writes index.json and skipped.log atomically.
    public func writeManifest() throws -> ShardManifest {
        var subsets = zip(plan.readers, plan.counts).map {
            ShardManifest.Subset(dataset: $0.dataset, subset: $0.subset, items: $1, samples: 0, skipped: 0, indexSkipped: $0.indexSkips.count)
        }
        var shards: [ShardManifest.Shard] = []
        var log = ""
        var reasons: [String: Int] = [:]
        func reasonKey(_ r: String) -> String { r.split(separator: ":", maxSplits: 1).first.map(String.init) ?? r }
        func line(_ s: ShardSkip) -> String {
            func clean(_ x: String) -> String { x.replacingOccurrences(of: "\t", with: " ").replacingOccurrences(of: "\n", with: " ") }
            return "\(clean(s.file))\t\(clean(s.reason))\t\(clean(s.subset))\t\(s.index)\n"
        }
        for r in plan.readers {
            for e in r.indexSkips.entries {
                log += line(ShardSkip(file: e.file, reason: e.reason, subset: r.subset, index: -1))
                reasons[reasonKey(e.reason), default: 0] += 1
            }
        }
        for k in 0..<plan.shardCount {
            let name = ShardFormat.shardName(k)
            let f = try ShardFile(path: path(name))
            let range = plan.items(ofShard: k)
            for it in f.items { subsets[plan.locate(it).reader].samples += 1 }
            for s in f.skips {
                log += line(s)
                reasons[reasonKey(s.reason), default: 0] += 1
            }
            let skippedItems = range.count - f.count
            let size = fileSize(path(name))
            guard case .success(let crc) = CRC32.file(path(name)) else { throw ShardError(file: path(name), "cannot be read back") }
            shards.append(.init(file: name, itemBegin: range.lowerBound, itemEnd: range.upperBound, samples: f.count, skipped: skippedItems,
                                bytes: size, crc32: crc))
        }
        for i in subsets.indices { subsets[i].skipped = subsets[i].items - subsets[i].samples }
        let m = ShardManifest(format: ShardFormat.name, formatVersion: ShardFormat.version, options: options, subsets: subsets, shards: shards,
                              totalItems: plan.total, totalSamples: shards.reduce(0) { $0 + $1.samples },
                              totalSkipped: reasons.values.reduce(0, +), skipsByReason: reasons)
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        try AtomicWrite.write(Array(log.utf8), to: path(ShardFormat.skipLogName))
        try AtomicWrite.write(Array(try e.encode(m)) + [10], to: path(ShardFormat.manifestName))
        return m
    }
}

/// A progress line on stderr: items done/total, items/s, ETA, skips. In place on a terminal, otherwise a line
/// every `interval` seconds.
public final class ProgressBar {
    let label: String
    let tty: Bool
    let interval: Double
    let start = Date()
    var last = Date.distantPast
    var lastLine = ""
    let write: (String) -> Void

    public init(label: String = "prepare", interval: Double = 5, isTTY: Bool = isatty(2) != 0,
                write: @escaping (String) -> Void = { FileHandle.standardError.write(Data($0.utf8)) }) {
        self.label = label
        self.tty = isTTY
        self.interval = interval
        self.write = write
    }

    public static func format(label: String, done: Int, total: Int, skipped: Int, elapsed: Double) -> String {
        let rate = elapsed > 0 ? Double(done) / elapsed : 0
        let eta = rate > 0 ? Double(total - done) / rate : 0
        func hms(_ t: Double) -> String {
            let s = Int(t.rounded())
            return s >= 3600 ? String(format: "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60) : String(format: "%d:%02d", s / 60, s % 60)
        }
        let pct = total > 0 ? 100 * Double(done) / Double(total) : 100
        let width = 24, fill = total > 0 ? width * done / total : width
        let bar = String(repeating: "#", count: fill) + String(repeating: ".", count: width - fill)
        return String(format: "%@ [%@] %d/%d items (%.0f%%) %.1f items/s ETA %@ skipped %d", label, bar, done, total, pct, rate,
                      rate > 0 ? hms(eta) : "?", skipped)
    }

    public func update(done: Int, total: Int, skipped: Int) {
        let now = Date()
        let final = done >= total
        if !final && now.timeIntervalSince(last) < (tty ? 0.2 : interval) { return }
        last = now
        let line = ProgressBar.format(label: label, done: done, total: total, skipped: skipped, elapsed: now.timeIntervalSince(start))
        lastLine = line
        write(tty ? "\r\u{1B}[K" + line + (final ? "\n" : "") : line + "\n")
    }
}
