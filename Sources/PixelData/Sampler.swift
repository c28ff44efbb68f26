import Foundation
import PixelTensor

/// The coordinator's sampler: one global, deterministic sequence over all datasets, shared by every rank.
///
/// - Blending: position i of the sequence goes to the dataset with the largest deficit
///   `rate_d * (i + 1) - taken_d(i)` (ties to the lower index), Megatron's BlendableDataset rule. Unlike
///   the reference's i.i.d. draws, every prefix then holds each dataset within one sample of its share.
/// - Within a dataset, the j-th sample taken is element `j mod n` of a permutation of 0..<n seeded by
///   (seed, dataset, epoch = j / n): every sample once per epoch, a new order each epoch.
/// - Ranks: rank r of N takes global positions consumed + r, consumed + r + N, ... The only state is
///   `consumedSamples`, so resuming at any world size continues the same sequence.
public struct SamplerEntry: Equatable, Sendable, CustomStringConvertible {
    /// Global position in the sequence.
    public let position: Int
    public let dataset: Int
    /// Index of the sample inside its dataset.
    public let index: Int
    /// Epoch of that dataset the sample belongs to.
    public let epoch: Int
    public var description: String { "#\(position): dataset \(dataset) sample \(index) (epoch \(epoch))" }
}

public final class BlendedSampler {
    public let sizes: [Int]
    public let rates: [Double]
    public let seed: UInt64

    /// Blend state at `cursor`: how many samples each dataset has given before position `cursor`.
    private var cursor = 0
    private var taken: [Int]
    /// Permutation cache: (dataset, epoch) -> permutation.
    private var perms: [Int: (epoch: Int, perm: [Int32])] = [:]

    /// `sizes`: samples per dataset (each > 0); `rates`: relative sample rates (e.g. 2, 9, 2, 4).
    public init(sizes: [Int], rates: [Double], seed: UInt64) throws {
        guard !sizes.isEmpty, sizes.count == rates.count else {
            throw SamplerError("\(sizes.count) datasets but \(rates.count) sample rates")
        }
        if let i = sizes.firstIndex(where: { $0 <= 0 }) { throw SamplerError("dataset \(i) is empty") }
        if let i = rates.firstIndex(where: { !($0 > 0) || !$0.isFinite }) {
            throw SamplerError("sample rate \(i) is \(rates[i]); rates must be positive")
        }
        let total = rates.reduce(0, +)
        self.sizes = sizes
        self.rates = rates.map { $0 / total }
        self.seed = seed
        taken = [Int](repeating: 0, count: sizes.count)
    }

    /// Parses "2,9,2,4".
    public static func parseRates(_ s: String) throws -> [Double] {
        try s.split(separator: ",").map {
            guard let v = Double($0.trimmingCharacters(in: .whitespaces)) else { throw SamplerError("bad sample rate '\($0)' in '\(s)'") }
            return v
        }
    }

    /// The dataset of position `cursor` by the max-deficit rule; advances the blend state.
    private func step() -> (dataset: Int, j: Int) {
        var best = 0
        var bestDeficit = -Double.infinity
        let next = Double(cursor + 1)
        for d in 0..<sizes.count {
            let deficit = rates[d] * next - Double(taken[d])
            if deficit > bestDeficit + 1e-12 { best = d; bestDeficit = deficit }
        }
        let j = taken[best]
        taken[best] += 1
        cursor += 1
        return (best, j)
    }

    private func seek(_ position: Int) {
        if position < cursor {
            cursor = 0
            for d in 0..<taken.count { taken[d] = 0 }
        }
        while cursor < position { _ = step() }
    }

    private func permutation(dataset d: Int, epoch e: Int) -> [Int32] {
        if let c = perms[d], c.epoch == e { return c.perm }
        var rng = RNG(seed: seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(d) &* 0xBF58_476D_1CE4_E5B9 &+ UInt64(e) &* 0x94D0_49BB_1331_11EB)
        var p = (0..<Int32(sizes[d])).map { $0 }
        if p.count > 1 {
            for i in stride(from: p.count - 1, to: 0, by: -1) { p.swapAt(i, rng.int(i + 1)) }
        }
        perms[d] = (e, p)
        return p
    }

    /// The entry at a global position.
    public func entry(at position: Int) -> SamplerEntry {
        precondition(position >= 0)
        seek(position)
        let (d, j) = step()
        let e = j / sizes[d]
        return SamplerEntry(position: position, dataset: d, index: Int(permutation(dataset: d, epoch: e)[j % sizes[d]]), epoch: e)
    }

    /// The global positions rank `rank` of `worldSize` takes for its next `count` samples after
    /// `consumedSamples` samples were consumed globally.
    public static func positions(rank: Int, worldSize: Int, consumedSamples: Int, count: Int) -> [Int] {
        (0..<count).map { consumedSamples + rank + $0 * worldSize }
    }

    /// This rank's next `count` samples.
    public func next(rank: Int, worldSize: Int, consumedSamples: Int, count: Int) -> [SamplerEntry] {
        Self.positions(rank: rank, worldSize: worldSize, consumedSamples: consumedSamples, count: count).map { entry(at: $0) }
    }
}

public struct SamplerError: Error, CustomStringConvertible {
    public let message: String
    public init(_ m: String) { message = m }
    public var description: String { "sampler: \(message)" }
}
