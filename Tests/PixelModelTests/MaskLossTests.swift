import XCTest
@testable import PixelModel
@testable import PixelTensor

final class MaskLossTests: XCTestCase {
    func randLogits(_ shape: [Int], seed: UInt64) -> Tensor {
        var rng = RNG(seed: seed)
        return Tensor.randn(shape, std: 2, rng: &rng, requiresGrad: true)
    }

    func randMask(_ shape: [Int], seed: UInt64) -> Tensor {
        var rng = RNG(seed: seed)
        let t = Tensor(empty: shape)
        for i in 0..<t.count { t.ptr[i] = rng.uniform() < 0.4 ? 1 : 0 }
        return t
    }

    func testRefinementWeightsMarkOverlapsWithinAQuestion() {
        // 3 masks over 4 pixels: pixel 0 claimed by two, pixel 1 by one, pixel 2 by three, pixel 3 by none
        let x = Tensor([1, -1, 2, -1,
                        1, 1, 3, -2,
                        -1, -3, 0.5, -1], shape: [3, 4])
        XCTAssertEqual(MaskLosses.refinementWeights(x, alpha: 3).toArray(), [2, 0, 2, 0])
    }

    func testOffAndAlphaOneGiveZeroRefinement() {
        let q = QuestionMasks(logits: randLogits([3, 5, 6], seed: 1), targets: randMask([3, 5, 6], seed: 2))
        XCTAssertEqual(MaskLosses.compute([q], alpha: nil).refine.item, 0)
        XCTAssertEqual(MaskLosses.compute([q], alpha: 1).refine.item, 0)
        XCTAssertGreaterThan(MaskLosses.compute([q], alpha: 2).refine.item, 0)
    }

    /// The terms are normalised by the total mask count across questions, as the reference does.
    func testValuesAgainstDirectComputation() {
        let q1 = QuestionMasks(logits: randLogits([2, 4, 5], seed: 3), targets: randMask([2, 4, 5], seed: 4))
        let q2 = QuestionMasks(logits: randLogits([3, 6, 2], seed: 5), targets: randMask([3, 6, 2], seed: 6))
        let (bce, dice, refine, m) = MaskLosses.compute([q1, q2], alpha: 2)
        XCTAssertEqual(m, 5)
        var eBCE = 0.0, eDice = 0.0, eRef = 0.0
        for q in [q1, q2] {
            let K = q.logits.dim(0), P = q.logits.count / K
            let x = q.logits.toArray(), y = q.targets.toArray()
            for k in 0..<K {
                var s = 0.0, sp = 0.0, sy = 0.0, spy = 0.0, r = 0.0
                for j in 0..<P {
                    let xv = Double(x[k * P + j]), yv = Double(y[k * P + j])
                    let l = max(xv, 0) - xv * yv + log1p(exp(-abs(xv)))
                    s += l
                    let p = 1 / (1 + exp(-xv))
                    sp += p; sy += yv; spy += p * yv
                    var pos = 0
                    for kk in 0..<K where x[kk * P + j] > 0 { pos += 1 }
                    if pos >= 2 { r += l }
                }
                eBCE += s / Double(P)
                eRef += r / Double(P)
                eDice += 1 - (2 * spy / 1000 + 1e-6) / ((sp + sy) / 1000 + 1e-6)
            }
        }
        XCTAssertEqual(Double(bce.item), eBCE / 5, accuracy: 1e-5)
        XCTAssertEqual(Double(dice.item), eDice / 5, accuracy: 1e-5)
        XCTAssertEqual(Double(refine.item), eRef / 5, accuracy: 1e-5)
    }

    func testTotalGradientMatchesFiniteDifferences() {
        let l1 = randLogits([2, 3, 4], seed: 7), l2 = randLogits([3, 2, 3], seed: 8)
        let t1 = randMask([2, 3, 4], seed: 9), t2 = randMask([3, 2, 3], seed: 10)
        let ce = Tensor([0.7], shape: [], requiresGrad: true)
        var opts = LossOptions()
        opts.refinementAlpha = 2
        let r = GradCheckLite.run([l1, l2, ce]) { ins in
            MaskLosses.total(ce: ins[2], questions: [QuestionMasks(logits: ins[0], targets: t1),
                                                    QuestionMasks(logits: ins[1], targets: t2)], options: opts).total
        }
        XCTAssertTrue(r.isEmpty, r.joined(separator: "; "))
    }
}

/// A small central-difference checker for scalar-valued functions (the refinement weights are piecewise
/// constant in the logits, so elements within 1e-2 of a sign change are skipped).
enum GradCheckLite {
    static func run(_ inputs: [Tensor], eps: Float = 1e-3, tol: Double = 2e-3, _ f: ([Tensor]) -> Tensor) -> [String] {
        for x in inputs { x.grad = nil }
        f(inputs).backward()
        var failures: [String] = []
        for (k, x) in inputs.enumerated() {
            let g = x.grad!.toArray()
            for i in 0..<x.count {
                let orig = x.ptr[i]
                if Swift.abs(orig) < 1e-2 { continue }
                x.ptr[i] = orig + eps
                let lp = Double(Autograd.noGrad { f(inputs) }.item)
                x.ptr[i] = orig - eps
                let lm = Double(Autograd.noGrad { f(inputs) }.item)
                x.ptr[i] = orig
                let num = (lp - lm) / (2 * Double(eps))
                if Swift.abs(num - Double(g[i])) > tol * max(1, Swift.abs(num)) {
                    failures.append("input \(k)[\(i)]: analytic \(g[i]) numeric \(num)")
                }
            }
        }
        return failures
    }
}
