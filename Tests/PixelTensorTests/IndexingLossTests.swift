import Foundation
import XCTest
@testable import PixelTensor

/// Indexing ops, losses and dropout: finite-difference gradient checks, behaviour tests, and checks
/// against PyTorch 2.13 (tools/fixtures/indexing_losses.py).
final class IndexingLossTests: XCTestCase {
    static let cases = try! Fixtures.load("indexing_losses")
    func c(_ n: String) -> FixtureCase? { Self.cases[n] }

    /// Fixture tolerances (relative to the reference's max |value|). The largest errors measured are
    /// ~1e-7 (fp32 rounding: sums in another order, exp/log1p from another libm).
    static let fwdTol = 2e-6, gradTol = 2e-6

    func check(_ name: String, file: StaticString = #filePath, line: UInt = #line, _ f: (FixtureCase) -> Tensor) {
        Fixtures.check(c(name), fwdTol: Self.fwdTol, gradTol: Self.gradTol, file: file, line: line, f)
    }

    /// Integer input `i` of a fixture case as [Int], with its shape.
    func ints(_ c: FixtureCase?, _ i: Int) -> (values: [Int], shape: [Int]) {
        guard let c, let v = c.intInputs[i] else { return ([], []) }
        return (v.map { Int($0) }, c.inputs[i].shape)
    }

    /// Binary 0/1 targets.
    func mask(_ shape: [Int], seed: UInt64, grad: Bool = false) -> Tensor {
        let t = rand(shape, seed: seed, grad: false)
        for i in 0..<t.count { t.ptr[i] = t.ptr[i] > 0.3 ? 1 : 0 }
        t.requiresGrad = grad
        return t
    }

    // MARK: gradient checks

    func testConcatSplitGrads() {
        GradCheck.assertGrads([rand([2, 3], seed: 1), rand([1, 3], seed: 2), rand([3, 3], seed: 3)]) { concat($0, axis: 0) }
        GradCheck.assertGrads([rand([2, 1, 4], seed: 1), rand([2, 3, 4], seed: 2), rand([2, 2, 4], seed: 3)]) { concat($0, axis: 1) }
        // a non-contiguous input, and an input that does not require grad
        let fixed = rand([3, 2], seed: 5, grad: false)
        GradCheck.assertGrads([rand([4, 3], seed: 4), fixed]) { concat([$0[0].transpose(0, 1), $0[1]], axis: -1) }
        GradCheck.assertGrads([rand([2, 6, 3], seed: 6)]) { x in
            concat(x[0].split(sizes: [1, 3, 0, 2], axis: 1).enumerated().map { $1 * Float($0 + 1) }, axis: 1)
        }
        GradCheck.assertGrads([rand([4, 5], seed: 7)]) { $0[0].transpose(0, 1).split(sizes: [2, 3], axis: 0)[1] }
        let x = Tensor((0..<12).map(Float.init), shape: [2, 6])
        let parts = x.split(sizes: [2, 4], axis: 1)
        XCTAssertEqual(parts[0].toArray(), [0, 1, 6, 7])
        XCTAssertEqual(parts[1].toArray(), [2, 3, 4, 5, 8, 9, 10, 11])
        XCTAssertEqual(concat(parts.reversed(), axis: 1).toArray(), [2, 3, 4, 5, 0, 1, 8, 9, 10, 11, 6, 7])
    }

    func testIndexSelectGatherScatterGrads() {
        GradCheck.assertGrads([rand([2, 4, 3], seed: 1)]) { $0[0].indexSelect(axis: 1, [2, 0, 2, 3, 2]) }
        GradCheck.assertGrads([rand([5, 3], seed: 2)]) { $0[0].indexSelect(axis: -2, [4, 4, 1]) }
        let gi = [0, 4, 4, 1, 2, 0, 3, 3, 1, 0, 4, 2]  // [2, 3, 2] into [3, 5, 4] along axis 1
        GradCheck.assertGrads([rand([3, 5, 4], seed: 3)]) { $0[0].gather(axis: 1, index: gi, indexShape: [2, 3, 2]) }
        GradCheck.assertGrads([rand([3, 4], seed: 4)]) { $0[0].gather(axis: -1, index: [3, 3, 0, 1, 1, 1], indexShape: [3, 2]) }
        // src larger than the index: entries outside the index get zero gradient
        let si = [0, 4, 4, 1, 2, 2, 2, 2, 3, 0, 1, 4]  // [3, 4] into base [3, 5] along axis 1
        GradCheck.assertGrads([rand([3, 5], seed: 5), rand([4, 6], seed: 6)]) {
            scatterAdd($0[0], axis: 1, index: si, indexShape: [3, 4], src: $0[1])
        }
        GradCheck.assertGrads([rand([3, 2], seed: 7), rand([4, 2], seed: 8)]) {
            scatterAdd($0[0], axis: 0, index: [0, 2, 2, 2, 1, 0, 0, 1], indexShape: [4, 2], src: $0[1])
        }
        let x = Tensor((0..<6).map(Float.init), shape: [2, 3])
        XCTAssertEqual(x.indexSelect(axis: 1, [2, 2, 0]).toArray(), [2, 2, 0, 5, 5, 3])
        XCTAssertEqual(x.gather(axis: 1, index: [2, 0, 1, 1], indexShape: [2, 2]).toArray(), [2, 0, 4, 4])
        let s = scatterAdd(Tensor.zeros([2, 3]), axis: 1, index: [1, 1, 0, 2], indexShape: [2, 2],
                           src: Tensor([1, 2, 3, 4], shape: [2, 2]))
        XCTAssertEqual(s.toArray(), [0, 3, 0, 3, 0, 4])
    }

    func testEmbeddingGradsAndPadding() {
        let ids = [1, 3, 3, 0, 5, 1, 2, 3]
        GradCheck.assertGrads([rand([6, 4], seed: 1)]) { embedding($0[0], ids: ids, idsShape: [2, 4]) }
        // the padding row (elements 12..<16) is used but, by definition, gets no gradient: skip it here
        GradCheck.assertGrads([rand([6, 4], seed: 1)], skip: { _, i in (12..<16).contains(i) }) {
            embedding($0[0], ids: ids, idsShape: [2, 4], paddingIdx: 3)
        }
        let w = rand([6, 4], seed: 2)
        let out = embedding(w, ids: ids, idsShape: [2, 2, 2], paddingIdx: -3)  // -3 is row 3
        XCTAssertEqual(out.shape, [2, 2, 2, 4])
        XCTAssertEqual(Array(out.toArray()[4..<8]), Array(w.toArray()[12..<16]), "the padding row is still looked up")
        out.sum().backward()
        let g = w.grad!.toArray()
        XCTAssertEqual(Array(g[12..<16]), [0, 0, 0, 0], "the padding row gets no gradient")
        XCTAssertEqual(Array(g[4..<8]), [2, 2, 2, 2], "repeated ids add up")
        XCTAssertEqual(Array(g[16..<20]), [0, 0, 0, 0], "an unused row gets no gradient")
    }

    func testCrossEntropyGrads() {
        let t = [2, -100, 0, 6, -100, 3]
        GradCheck.assertGrads([rand([6, 7], seed: 1)], atol: 1e-4) { crossEntropy($0[0], targets: t) }
        GradCheck.assertGrads([rand([6, 7], seed: 2)]) { crossEntropy($0[0], targets: t, reduction: .sum) }
        GradCheck.assertGrads([rand([6, 7], seed: 3)]) { crossEntropy($0[0], targets: t, reduction: .none) }
        GradCheck.assertGrads([rand([4, 5], seed: 4)]) { crossEntropy($0[0].transpose(0, 1), targets: [0, 1, 3, 3, 2]) }
    }

    func testCrossEntropyValuesAndEdgeCases() {
        // uniform logits: loss = log C
        let u = Tensor.zeros([3, 4])
        XCTAssertEqual(crossEntropy(u, targets: [0, 1, 2]).item, Float(Foundation.log(4.0)), accuracy: 1e-6)
        // huge logits stay finite (log-sum-exp is max-shifted)
        let big = Tensor([1000, 0, -1000, 500], shape: [2, 2])
        let l = crossEntropy(big, targets: [1, 0], reduction: .none).toArray()
        XCTAssertEqual(l[0], 1000, accuracy: 1e-3)
        XCTAssertEqual(l[1], 1500, accuracy: 1e-3)
        // every target ignored: 0 with zero gradients (PyTorch gives NaN for the mean)
        let x = rand([3, 4], seed: 5)
        let loss = crossEntropy(x, targets: [-100, -100, -100])
        XCTAssertEqual(loss.shape, [])
        XCTAssertEqual(loss.item, 0)
        loss.backward()
        XCTAssertEqual(x.grad?.toArray() ?? [], [Float](repeating: 0, count: 12))
        // a custom ignore index
        let y = rand([3, 4], seed: 6, grad: false)
        XCTAssertEqual(crossEntropy(y, targets: [1, 7, 2], ignoreIndex: 7).item,
                       crossEntropy(y.indexSelect(axis: 0, [0, 2]), targets: [1, 2]).item, accuracy: 1e-6)
    }

    func testBCEWithLogitsGrads() {
        let y = Tensor([0, 1, 1, 0, 1, 0, 0.3, 1, 0.7, 1, 0, 0], shape: [3, 4], requiresGrad: true)
        for red in [LossReduction.none, .mean, .sum] {
            GradCheck.assertGrads([rand([3, 4], seed: 1, std: 3), y]) { bceWithLogits($0[0], $0[1], reduction: red) }
        }
        // stable for large |x|: BCE(100, 0) = 100, BCE(-100, 0) = 0, BCE(100, 1) = 0
        let x = Tensor([100, -100, 100], shape: [3])
        let l = bceWithLogits(x, Tensor([0, 0, 1], shape: [3]), reduction: .none).toArray()
        XCTAssertEqual(l[0], 100)
        XCTAssertEqual(l[1], 0, accuracy: 1e-30)
        XCTAssertEqual(l[2], 0, accuracy: 1e-30)
    }

    func testMaskLossGrads() {
        // per-element gradients here are ~1e-2 (a scalar loss spread over 90 pixels), so the absolute
        // tolerance is tightened from the default 2e-3 to 5e-5
        let y = mask([3, 5, 6], seed: 2, grad: true)
        GradCheck.assertGrads([rand([3, 5, 6], seed: 1, std: 2), y], atol: 5e-5) { diceLoss($0[0], $0[1]) }
        GradCheck.assertGrads([rand([3, 5, 6], seed: 1, std: 2), y], atol: 5e-5) { sigmoidCELoss($0[0], $0[1]) }
        GradCheck.assertGrads([rand([2, 30], seed: 3, std: 2), mask([2, 30], seed: 4)], atol: 5e-5) {
            diceLoss($0[0], $0[1], numMasks: 5)
        }
        GradCheck.assertGrads([rand([2, 30], seed: 3, std: 2), mask([2, 30], seed: 4)], atol: 5e-5) {
            sigmoidCELoss($0[0], $0[1], numMasks: 5)
        }
    }

    func testMaskLossValues() {
        // [M, H*W] and [M, H, W] agree
        let x = rand([3, 5, 6], seed: 1, grad: false), y = mask([3, 5, 6], seed: 2)
        XCTAssertEqual(diceLoss(x, y).item, diceLoss(x.reshape([3, 30]), y.reshape([3, 30])).item)
        XCTAssertEqual(sigmoidCELoss(x, y).item, sigmoidCELoss(x.reshape([3, 30]), y.reshape([3, 30])).item)
        // a confident perfect prediction has (almost) zero dice loss; an all-wrong one is near 1
        let t = mask([2, 40], seed: 3)
        let perfect = Tensor(t.toArray().map { $0 > 0 ? 30 : -30 }, shape: [2, 40])
        XCTAssertEqual(diceLoss(perfect, t).item, 0, accuracy: 1e-5)
        XCTAssertEqual(diceLoss(-perfect, t).item, 1, accuracy: 1e-3)
        // sigmoid CE is the mean BCE per mask, averaged over masks (all masks have the same size)
        XCTAssertEqual(sigmoidCELoss(x, y).item, bceWithLogits(x, y).item, accuracy: 1e-6)
        // no masks: both losses are 0
        XCTAssertEqual(diceLoss(Tensor.zeros([0, 4, 4]), Tensor.zeros([0, 4, 4])).item, 0)
        XCTAssertEqual(sigmoidCELoss(Tensor.zeros([0, 16]), Tensor.zeros([0, 16])).item, 0)
    }

    // MARK: dropout

    func testDropoutIsSeededAndUnbiased() {
        let x = Tensor.ones([200_000])
        var r1 = RNG(seed: 42), r2 = RNG(seed: 42), r3 = RNG(seed: 43)
        let a = dropout(x, p: 0.25, rng: &r1, training: true).toArray()
        let b = dropout(x, p: 0.25, rng: &r2, training: true).toArray()
        let c = dropout(x, p: 0.25, rng: &r3, training: true).toArray()
        XCTAssertEqual(a, b, "the same seed gives the same mask")
        XCTAssertNotEqual(a, c, "another seed gives another mask")
        XCTAssertEqual(r1.next(), r2.next(), "the generators advance alike")
        XCTAssertTrue(a.allSatisfy { $0 == 0 || Swift.abs($0 - 1 / 0.75) < 1e-6 }, "kept entries are scaled by 1/(1-p)")
        let kept = Double(a.filter { $0 != 0 }.count) / Double(a.count)
        XCTAssertEqual(kept, 0.75, accuracy: 0.005, "mean of the mask ~ 1 - p")
        let mean = a.reduce(0.0) { $0 + Double($1) } / Double(a.count)
        XCTAssertEqual(mean, 1, accuracy: 0.01, "inverted scaling keeps the expectation")
    }

    func testDropoutIdentityAndEdgeCases() {
        let x = rand([4, 5], seed: 1)
        var r = RNG(seed: 1)
        XCTAssertTrue(dropout(x, p: 0.5, rng: &r, training: false) === x)
        XCTAssertTrue(dropout(x, p: 0, rng: &r, training: true) === x)
        var fresh = RNG(seed: 1)
        XCTAssertEqual(r.next(), fresh.next(), "identity draws nothing")
        XCTAssertEqual(dropout(x, p: 1, rng: &r, training: true).toArray(), [Float](repeating: 0, count: 20))
        XCTAssertThrowsError(try DropoutOp.validate(p: 1.5)) { XCTAssertEqual("\($0)", "dropout: probability 1.5 outside [0, 1]") }
    }

    func testDropoutGradUsesTheSameMask() {
        GradCheck.assertGrads([rand([6, 7], seed: 1)]) { var r = RNG(seed: 7); return dropout($0[0], p: 0.3, rng: &r, training: true) }
        GradCheck.assertGrads([rand([7, 6], seed: 2)]) {
            var r = RNG(seed: 8); return dropout($0[0].transpose(0, 1), p: 0.5, rng: &r, training: true)
        }
        // the gradient is exactly the mask
        let x = rand([50], seed: 3)
        var r = RNG(seed: 9)
        let y = dropout(x, p: 0.4, rng: &r, training: true)
        y.sum().backward()
        var r2 = RNG(seed: 9)
        let m = dropout(Tensor.ones([50]), p: 0.4, rng: &r2, training: true).toArray()
        XCTAssertEqual(x.grad!.toArray(), m)
        XCTAssertEqual(y.toArray(), zip(x.toArray(), m).map { $0 * $1 })
    }

    // MARK: errors

    func testErrorsNameOpShapesAndBounds() {
        func msg(_ body: () throws -> Void) -> String {
            do { try body(); return "no error" } catch { return "\(error)" }
        }
        XCTAssertEqual(msg { _ = try ConcatOp.validate([[2, 3], [2, 4]], axis: 0) },
                       "concat: tensor 1 has shape [2, 4], tensor 0 has [2, 3]; they must match except on axis 0")
        XCTAssertEqual(msg { _ = try SplitOp.validate([2, 5], sizes: [2, 2], axis: 1) },
                       "split: sizes [2, 2] do not add up to 5, the length of axis 1 of [2, 5]")
        XCTAssertEqual(msg { _ = try IndexSelectOp.validate([2, 5], axis: 1, indices: [0, 5]) },
                       "index_select: index 5 (position 1) out of range 0..<5 on axis 1 of [2, 5]")
        XCTAssertEqual(msg { _ = try IndexSelectOp.validate([2, 5], axis: 2, indices: [0]) },
                       "index_select: axis 2 out of range for shape [2, 5]")
        XCTAssertEqual(msg { _ = try indexedOffsets(op: "gather", target: [3, 4], axis: 1, index: [0, 4], indexShape: [1, 2]) },
                       "gather: index 4 at position [0, 1] out of range 0..<4 on axis 1 of [3, 4]")
        XCTAssertEqual(msg { _ = try indexedOffsets(op: "gather", target: [3, 4], axis: 1, index: [0, 1, 2, 3], indexShape: [4, 1]) },
                       "gather: index shape [4, 1] exceeds [3, 4] on axis 0")
        XCTAssertEqual(msg { _ = try indexedOffsets(op: "scatter_add", target: [3, 4], axis: 0, index: [0, 1], indexShape: [1, 2],
                                                     other: [1, 1], otherName: "src") },
                       "scatter_add: index shape [1, 2] exceeds src [1, 1]")
        XCTAssertEqual(msg { _ = try EmbeddingOp.validate(weight: [6, 4], ids: [1, 6], idsShape: [2], paddingIdx: nil) },
                       "embedding: id 6 (position 1) out of range 0..<6 for weight [6, 4]")
        XCTAssertEqual(msg { try CrossEntropyOp.validate([3, 4], targets: [0, -1, 2], ignoreIndex: -100) },
                       "cross_entropy: target -1 at row 1 out of range 0..<4 (ignore index -100)")
        XCTAssertEqual(msg { try CrossEntropyOp.validate([3, 4], targets: [0, 1], ignoreIndex: -100) },
                       "cross_entropy: 2 targets for logits [3, 4]")
        XCTAssertEqual(msg { _ = try maskLossShape([3, 30], [3, 5, 6], op: "dice_loss") },
                       "dice_loss: logits [3, 30] and targets [3, 5, 6] must have the same shape")
    }

    // MARK: PyTorch fixtures

    func testIndexingFixtures() {
        check("concat_axis0") { concat($0.inputs, axis: 0) }
        check("concat_axis1") { concat($0.inputs, axis: 1) }
        check("concat_last") { concat($0.inputs, axis: -1) }
        for k in 0..<3 {
            check("split_piece\(k)") { $0.inputs[0].split(sizes: [1, 3, 2], axis: 1)[k] }
        }
        check("split_all") { f in
            concat(f.inputs[0].split(sizes: [2, 0, 3], axis: -1).enumerated().map { $1.flatten() * Float($0 + 1) })
        }
        for (name, axis) in [("index_select_axis1", 1), ("index_select_axis0", 0)] {
            let (i, _) = ints(c(name), 1)
            check(name) { $0.inputs[0].indexSelect(axis: axis, i) }
        }
        for (name, axis) in [("gather_axis1", 1), ("gather_axis0", 0)] {
            let (i, s) = ints(c(name), 1)
            check(name) { $0.inputs[0].gather(axis: axis, index: i, indexShape: s) }
        }
        for (name, axis) in [("scatter_add_axis1", 1), ("scatter_add_axis0", 0)] {
            let (i, s) = ints(c(name), 1)
            check(name) { scatterAdd($0.inputs[0], axis: axis, index: i, indexShape: s, src: $0.inputs[2]) }
        }
        let (ids, idsShape) = ints(c("embedding"), 1)
        check("embedding") { embedding($0.inputs[0], ids: ids, idsShape: idsShape) }
        check("embedding_padding") { embedding($0.inputs[0], ids: ids, idsShape: idsShape, paddingIdx: 3) }
    }

    func testLossFixtures() {
        for (name, red) in [("cross_entropy_mean", LossReduction.mean), ("cross_entropy_sum", .sum),
                            ("cross_entropy_none", .none), ("cross_entropy_large", .mean)] {
            let (t, _) = ints(c(name), 1)
            check(name) { crossEntropy($0.inputs[0], targets: t, reduction: red) }
        }
        for red in [LossReduction.none, .mean, .sum] {
            check("bce_\(red.rawValue)") { bceWithLogits($0.inputs[0], $0.inputs[1], reduction: red) }
        }
        check("bce_large") { bceWithLogits($0.inputs[0], $0.inputs[1]) }
        check("dice") { diceLoss($0.inputs[0], $0.inputs[1]) }
        check("dice_logits_only") { diceLoss($0.inputs[0], $0.inputs[1]) }
        check("sigmoid_ce") { sigmoidCELoss($0.inputs[0], $0.inputs[1]) }
        check("sigmoid_ce_logits_only") { sigmoidCELoss($0.inputs[0], $0.inputs[1]) }
    }
}
