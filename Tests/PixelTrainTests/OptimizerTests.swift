import Foundation
import XCTest
import PixelDistributed
import PixelModel
import PixelTensor
@testable import PixelTrain

/// The pieces of training that need no data: bucket layouts, the LR schedule, the sharded AdamW against the
/// reference AdamW (torch.optim.AdamW-exact, PixelModel), clipping and skipped updates.
final class OptimizerTests: XCTestCase {
    static func tensors(_ shapes: [[Int]], seed: UInt64) -> [Tensor] {
        var rng = RNG(seed: seed)
        return shapes.map { s in
            let t = Tensor.zeros(s)
            for i in 0..<t.count { t.ptr[i] = rng.normal() }
            return t
        }
    }

    func testBucketLayoutPaddingOwnershipAndResharding() {
        let shapes = [[3, 4], [5], [10, 10], [7], [1]]
        let L = BucketLayout(tensors: shapes.enumerated().map { ("t\($0.offset)", $0.element) }, worldSize: 3, capElements: 20)
        // 12 + 5 = 17, then 100 alone (> cap), then 7 + 1
        XCTAssertEqual(L.buckets.map(\.count), [17, 100, 8])
        XCTAssertEqual(L.buckets.map(\.padded), [18, 102, 9])
        XCTAssertEqual(L.params.map(\.bucket), [0, 0, 1, 2, 2])
        XCTAssertEqual(L.params.map(\.offset), [0, 12, 0, 0, 7])
        for b in L.buckets.indices {
            // the owned ranges of the ranks tile the unpadded bucket
            let ranges = (0..<3).map { L.ownedRange(b, rank: $0) }
            XCTAssertEqual(ranges.reduce(0) { $0 + $1.count }, L.buckets[b].count)
            for r in 1..<3 { XCTAssertEqual(ranges[r].lowerBound, ranges[r - 1].upperBound) }
        }
        let R = L.resharded(worldSize: 2)
        XCTAssertEqual(R.buckets.map(\.padded), [18, 100, 8])
        XCTAssertEqual(R.signature, L.signature)
        XCTAssertEqual(R.params, L.params)
    }

    func testWarmupDecayLRIsDeepSpeedsLinearSchedule() {
        let s = WarmupDecayLR(maxLR: 3e-4, warmupSteps: 100, totalSteps: 5000)
        XCTAssertEqual(s.lr(step: 0), 0)
        XCTAssertEqual(s.lr(step: 50), 1.5e-4, accuracy: 1e-10)
        XCTAssertEqual(s.lr(step: 100), 3e-4, accuracy: 1e-10)
        XCTAssertEqual(s.lr(step: 2550), 1.5e-4, accuracy: 1e-10)
        XCTAssertEqual(s.lr(step: 5000), 0)
        XCTAssertEqual(s.lr(step: 6000), 0)
        XCTAssertEqual(WarmupDecayLR(maxLR: 1, warmupSteps: 0, totalSteps: 4).lr(step: 0), 1)
    }

    /// One rank, every stage: 6 steps of ZeroAdamW on flat buckets equal torch-exact AdamW on the same gradients,
    /// with the global-norm clipping of torch.nn.utils.clip_grad_norm_ done by hand for the reference.
    func testShardedAdamWEqualsAdamWWithClipping() {
        let shapes = [[4, 3], [7], [2, 5, 3], [1]]
        for stage in [0, 1, 2] {
            let ours = Self.tensors(shapes, seed: 1), ref = Self.tensors(shapes, seed: 1)
            let layout = BucketLayout(tensors: shapes.enumerated().map { ("p\($0.offset)", $0.element) }, worldSize: 1, capElements: 16)
            let flat = FlatBuckets(layout: layout, tensors: ours)
            let opt = ZeroAdamW(buckets: flat, comm: LocalCommunicator(), stage: stage, betas: (0.9, 0.95), weightDecay: 0.1)
            let adam = AdamW(params: ref, lr: 1e-2, betas: (0.9, 0.95), weightDecay: 0.1)
            for step in 0..<6 {
                let grads = Self.tensors(shapes, seed: 100 + UInt64(step))
                let scale: Float = step % 2 == 0 ? 10 : 0.1   // clipping active on even steps
                opt.beginMicroBatch()
                for (t, g) in zip(ours, grads) {
                    for i in 0..<t.count { t.grad!.ptr[i] += g.ptr[i] * scale }
                    opt.leafComplete(t)
                }
                opt.endMicroBatch()
                let lr: Float = 1e-2 * Float(step + 1) / 6
                let rep = opt.update(lr: lr, maxGradNorm: 1.0)
                // reference: the same clipping, then AdamW
                var sumsq = 0.0
                for g in grads { for i in 0..<g.count { let x = Double(g.ptr[i] * scale); sumsq += x * x } }
                let norm = sumsq.squareRoot()
                XCTAssertEqual(rep.gradNorm, norm, accuracy: norm * 1e-6, "stage \(stage) step \(step): norm")
                let coef = min(1, 1.0 / (norm + 1e-6))
                for (p, g) in zip(ref, grads) {
                    let gg = Tensor.zeros(p.shape)
                    for i in 0..<p.count { gg.ptr[i] = g.ptr[i] * scale }
                    if coef < 1 { for i in 0..<p.count { gg.ptr[i] *= Float(coef) } }
                    p.grad = gg
                }
                adam.lr = lr
                adam.update()
                for (k, (a, b)) in zip(ours, ref).enumerated() {
                    XCTAssertEqual(a.toArray(), b.toArray(), "stage \(stage) step \(step) tensor \(k)")
                }
            }
            XCTAssertEqual(opt.step, 6)
        }
    }

    /// Learning-rate multipliers (param groups): every tensor steps as AdamW at lr x its multiplier, also where
    /// tensors of different multipliers share a bucket; multiplier 0 leaves the values as they were.
    func testLearningRateMultipliersArePerTensorAdamW() throws {
        let shapes = [[4, 3], [7], [2, 5, 3], [1], [6]]
        let mult: [Float] = [2, 1, 0, 0.5, 1]
        for stage in [0, 1, 2] {
            let ours = Self.tensors(shapes, seed: 7), ref = Self.tensors(shapes, seed: 7)
            let layout = BucketLayout(tensors: shapes.enumerated().map { ("p\($0.offset)", $0.element) }, worldSize: 1, capElements: 20)
            XCTAssertLessThan(layout.buckets.count, shapes.count, "some bucket holds tensors of different multipliers")
            let opt = ZeroAdamW(buckets: FlatBuckets(layout: layout, tensors: ours), comm: LocalCommunicator(), stage: stage,
                                betas: (0.9, 0.95), weightDecay: 0.1)
            opt.lrMultipliers = ["p0": 2, "p2": 0, "p3": 0.5]
            let adams = ref.map { AdamW(params: [$0], lr: 0, betas: (0.9, 0.95), weightDecay: 0.1) }
            let frozen = ref[2].toArray()
            for step in 0..<4 {
                let grads = Self.tensors(shapes, seed: 200 + UInt64(step))
                opt.beginMicroBatch()
                for (t, g) in zip(ours, grads) {
                    for i in 0..<t.count { t.grad!.ptr[i] += g.ptr[i] }
                    opt.leafComplete(t)
                }
                opt.endMicroBatch()
                let lr: Float = 1e-2 * Float(step + 1) / 4
                _ = opt.update(lr: lr, maxGradNorm: nil)
                for (k, p) in ref.enumerated() {
                    p.grad = grads[k]
                    adams[k].lr = lr * mult[k]
                    adams[k].update()
                }
                for (k, (a, b)) in zip(ours, ref).enumerated() {
                    XCTAssertEqual(a.toArray(), b.toArray(), "stage \(stage) step \(step) tensor \(k) (x\(mult[k]))")
                }
            }
            XCTAssertEqual(ours[2].toArray(), frozen, "multiplier 0: unchanged")
            XCTAssertNotEqual(ours[0].toArray(), Self.tensors(shapes, seed: 7)[0].toArray())
        }
        // the option: groups by name, numbers >= 0
        XCTAssertEqual(try TrainOptions.parseMultipliers("decoder=2, llm=0.5"), [.decoder: 2, .llm: 0.5])
        for bad in ["decoder", "decoder=-1", "decoder=x", "nosuch=1", "llm=1,llm=2", "decoder=inf"] {
            XCTAssertThrowsError(try TrainOptions.parseMultipliers(bad), bad)
        }
        var o = TrainOptions()
        o.config = "c"
        o.datasetDir = "d"
        o.lrMultipliers = "decoder=-2"
        XCTAssertThrowsError(try o.validate()) { XCTAssertTrue("\($0)".contains("--lr-multipliers"), "\($0)") }
    }

    /// The global batch dealt to ranks by cost: a partition with equal counts, deterministic, and far better
    /// balanced than the strided split on skewed costs.
    func testCostBalancedSplitOfTheGlobalBatch() {
        var rng = RNG(seed: 5)
        for (N, per) in [(2, 4), (3, 2), (4, 5)] {
            let costs = (0..<(N * per)).map { _ in Double(100 + Int(rng.uniform() * 1000)) }
            let split = Trainer.balance(costs: costs, ranks: N, perRank: per)
            XCTAssertEqual(split.flatMap { $0 }.sorted(), Array(0..<(N * per)), "a partition")
            XCTAssertTrue(split.allSatisfy { $0.count == per })
            XCTAssertEqual(split, Trainer.balance(costs: costs, ranks: N, perRank: per))
            let loads = split.map { $0.reduce(0) { $0 + costs[$1] } }
            let strided = (0..<N).map { r in stride(from: r, to: N * per, by: N).reduce(0.0) { $0 + costs[$1] } }
            XCTAssertLessThanOrEqual(loads.max()! - loads.min()!, strided.max()! - strided.min()! + 1e-9)
            XCTAssertLessThanOrEqual(loads.max()! - loads.min()!, costs.max()!, "within one item of even")
        }
    }

    func testNonFiniteGradientSkipsTheUpdate() {
        let shapes = [[3], [2, 2]]
        let ours = Self.tensors(shapes, seed: 3)
        let before = ours.map { $0.toArray() }
        let flat = FlatBuckets(layout: BucketLayout(tensors: [("a", [3]), ("b", [2, 2])], worldSize: 1, capElements: 100), tensors: ours)
        let opt = ZeroAdamW(buckets: flat, comm: LocalCommunicator(), stage: 1, betas: (0.9, 0.95), weightDecay: 0)
        ours[1].grad!.ptr[2] = .nan
        let rep = opt.update(lr: 0.1, maxGradNorm: 1)
        XCTAssertTrue(rep.skipped)
        XCTAssertEqual(opt.step, 0)
        XCTAssertEqual(ours.map { $0.toArray() }, before)
        // the gradients were cleared: the next finite step updates
        ours[0].grad!.ptr[0] = 1
        XCTAssertFalse(opt.update(lr: 0.1, maxGradNorm: 1).skipped)
        XCTAssertNotEqual(ours[0].toArray(), before[0])
    }
}
