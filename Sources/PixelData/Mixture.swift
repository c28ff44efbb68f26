import Foundation

/// The training mixture over prepared shards: the reference's HybridDataset (`--dataset "sem_seg||refer_seg||
/// vqa||multi_reason_seg" --sample_rates "2,9,2,4"`) as one deterministic sequence.
///
/// Each sub-dataset of the shards (ade20k, refcoco, muse_train, ...) is one stream. The reference draws a kind
/// with probability rate / sum, then a sub-dataset of that kind uniformly, then an image uniformly; here a kind's
/// rate is split evenly over its non-empty sub-datasets and the streams are blended by `BlendedSampler` (max-error
/// rule, per-stream permutations seeded by (seed, stream, epoch)), so every prefix holds each stream within one
/// sample of its share, rank r of N takes positions r, r + N, ..., and `consumed_samples` alone resumes the
/// sequence at any world size.
public final class ShardMixture {
    public struct Stream: Equatable, Sendable {
        public let dataset: String
        public let subset: String
        /// Global sample indices of the shard directory (ShardReader order) that belong to this sub-dataset.
        public let samples: [Int]
        /// Share of the sequence (the kind's rate / total, split over the kind's streams).
        public let share: Double
    }

    /// One position of the sequence: which stream, and the global shard sample to read.
    public struct Pick: Equatable, Sendable {
        public let position: Int
        public let stream: Int
        public let sample: Int
        public let epoch: Int
    }

    public let reader: ShardReader
    public let streams: [Stream]
    public let sampler: BlendedSampler

    /// `datasets`: the kinds in `--dataset` order; `rates`: one per kind (`--sample_rates`).
    public init(reader: ShardReader, datasets: [String], rates: [Double], seed: UInt64) throws {
        let manifestPath = (reader.directory as NSString).appendingPathComponent(ShardFormat.manifestName)
        guard datasets.count == rates.count else {
            throw ShardError(file: "--sample_rates", "\(rates.count) sample rates for \(datasets.count) datasets (\(datasets.joined(separator: "||")))")
        }
        if let i = rates.firstIndex(where: { !($0 >= 0) || !$0.isFinite }) {
            throw ShardError(file: "--sample_rates", "rate \(i) (\(datasets[i])) is \(rates[i]); rates must be >= 0")
        }
        if Set(datasets).count != datasets.count { throw ShardError(file: "--dataset", "a dataset is listed twice: \(datasets.joined(separator: "||"))") }
        // Plan item -> sub-dataset: the manifest's subsets hold their items in plan order.
        let subsets = reader.manifest.subsets
        var itemEnds: [Int] = [], n = 0
        for s in subsets { n += s.items; itemEnds.append(n) }
        func subsetOf(item: Int) -> Int? { itemEnds.firstIndex { item < $0 } }
        var members = [[Int]](repeating: [], count: subsets.count)
        var global = 0
        for (k, sh) in reader.manifest.shards.enumerated() {
            guard sh.samples > 0 else { continue }
            let f = try reader.locate(global).shard
            guard f.items.count == sh.samples else {
                throw ShardError(file: f.path, "holds \(f.items.count) item records for \(sh.samples) samples (shard \(k))")
            }
            for it in f.items {
                guard let s = subsetOf(item: it) else {
                    throw ShardError(file: f.path, "plan item \(it) lies past the \(n) items of the manifest")
                }
                members[s].append(global)
                global += 1
            }
        }
        // Streams: the non-empty sub-datasets of the selected kinds, in kind order then manifest order.
        let total = rates.reduce(0, +)
        guard total > 0 else { throw ShardError(file: "--sample_rates", "every rate is 0") }
        var streams: [Stream] = []
        for (kind, rate) in zip(datasets, rates) where rate > 0 {
            let ids = subsets.indices.filter { subsets[$0].dataset == kind && !members[$0].isEmpty }
            guard !ids.isEmpty else {
                let have = Set(subsets.filter { $0.samples > 0 }.map(\.dataset)).sorted()
                throw ShardError(file: manifestPath, "\(kind) has sample rate \(rate) but the shards hold no \(kind) samples (they hold: \(have.joined(separator: ", ")))")
            }
            for i in ids {
                streams.append(Stream(dataset: kind, subset: subsets[i].subset, samples: members[i], share: rate / total / Double(ids.count)))
            }
        }
        self.reader = reader
        self.streams = streams
        sampler = try BlendedSampler(sizes: streams.map(\.samples.count), rates: streams.map(\.share), seed: seed)
    }

    /// Parses `--dataset "a||b"` and `--sample_rates "2,9,2,4"`.
    public convenience init(reader: ShardReader, dataset: String, sampleRates: String, seed: UInt64) throws {
        let kinds = dataset.components(separatedBy: "||").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        let rates: [Double]
        do { rates = try BlendedSampler.parseRates(sampleRates) } catch { throw ShardError(file: "--sample_rates", "\(error)") }
        try self.init(reader: reader, datasets: kinds, rates: rates, seed: seed)
    }

    /// The pick at a global position of the sequence.
    public func pick(at position: Int) -> Pick {
        let e = sampler.entry(at: position)
        return Pick(position: position, stream: e.dataset, sample: streams[e.dataset].samples[e.index], epoch: e.epoch)
    }

    /// Rank `rank` of `worldSize`: its next `count` picks after `consumedSamples` samples were consumed globally.
    public func next(rank: Int, worldSize: Int, consumedSamples: Int, count: Int) -> [Pick] {
        BlendedSampler.positions(rank: rank, worldSize: worldSize, consumedSamples: consumedSamples, count: count).map { pick(at: $0) }
    }
}
