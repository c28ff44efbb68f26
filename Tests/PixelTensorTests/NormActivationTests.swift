import Foundation
import XCTest
@testable import PixelTensor

/// RMSNorm, LayerNorm, LayerNorm2d and the activations: finite differences, hand-computed values, and
/// PyTorch 2.13 fixtures (tools/fixtures/norms_attention.py).
final class NormActivationTests: XCTestCase {
    static let cases = try! Fixtures.load("norms_attention")
    func c(_ n: String) -> FixtureCase? { Self.cases[n] }

    // MARK: finite differences

    func testRMSNormGrad() {
        GradCheck.assertGrads([rand([2, 3, 8], seed: 1), rand([8], seed: 2)]) { rmsNorm($0[0], weight: $0[1]) }
        // a long row exercises the SIMD body and the scalar tail
        GradCheck.assertGrads([rand([2, 19], seed: 3), rand([19], seed: 4)]) { rmsNorm($0[0], weight: $0[1], eps: 1e-5) }
    }

    func testLayerNormGrad() {
        GradCheck.assertGrads([rand([2, 3, 8], seed: 1), rand([8], seed: 2), rand([8], seed: 3)]) {
            layerNorm($0[0], weight: $0[1], bias: $0[2])
        }
        GradCheck.assertGrads([rand([3, 13], seed: 4)]) { layerNorm($0[0], weight: nil, bias: nil) }
        // a strided (transposed) input
        GradCheck.assertGrads([rand([6, 4], seed: 5), rand([6], seed: 6), rand([6], seed: 7)]) {
            layerNorm($0[0].transpose(0, 1), weight: $0[1], bias: $0[2])
        }
    }

    func testLayerNorm2dGrad() {
        GradCheck.assertGrads([rand([2, 3, 4, 5], seed: 1), rand([3], seed: 2), rand([3], seed: 3)]) {
            layerNorm2d($0[0], weight: $0[1], bias: $0[2])
        }
    }

    func testActivationGrads() {
        let x = rand([4, 9], seed: 1, std: 2)
        GradCheck.assertGrads([x], skip: { _, i in Swift.abs(x.ptr[i]) < 0.05 }) { $0[0].relu() }
        GradCheck.assertGrads([x]) { $0[0].sigmoid() }
        GradCheck.assertGrads([x]) { $0[0].silu() }
        GradCheck.assertGrads([x]) { $0[0].quickGelu() }
        GradCheck.assertGrads([x]) { $0[0].gelu() }
        GradCheck.assertGrads([rand([4, 9], seed: 2, std: 2), rand([4, 9], seed: 3)]) { swiglu($0[0], $0[1]) }
    }

    // MARK: values

    func testNormsByHand() {
        let x = Tensor([1, 2, 3, 4], shape: [1, 4])
        // rms = sqrt(30 / 4)
        let y = rmsNorm(x, weight: Tensor([1, 1, 2, 1], shape: [4]), eps: 0).toArray()
        let s = Float(1 / (30.0 / 4).squareRoot())
        for (a, b) in zip(y, [1 * s, 2 * s, 6 * s, 4 * s]) { XCTAssertEqual(a, b, accuracy: 1e-6, "rmsNorm") }
        // mean 2.5, var 1.25
        let l = layerNorm(x, weight: nil, bias: Tensor.full([4], 1), eps: 0).toArray()
        let r = Float(1 / 1.25.squareRoot())
        for (a, b) in zip(l, [-1.5 * r + 1, -0.5 * r + 1, 0.5 * r + 1, 1.5 * r + 1]) { XCTAssertEqual(a, b, accuracy: 1e-6) }
        // LayerNorm2d on [B, C, H, W] equals LayerNorm over the last dim of the channels-last tensor
        let x4 = rand([2, 5, 3, 2], seed: 9, grad: false)
        let w = rand([5], seed: 10, grad: false), b = rand([5], seed: 11, grad: false)
        let viaRows = layerNorm(x4.permute(0, 2, 3, 1), weight: w, bias: b, eps: 1e-6).permute(0, 3, 1, 2)
        assertClose(layerNorm2d(x4, weight: w, bias: b), viaRows, tol: 1e-6, "layerNorm2d vs layerNorm")
    }

    func testActivationsByHand() {
        let x = Tensor([-100, -1, 0, 1, 100], shape: [5])
        XCTAssertEqual(x.relu().toArray(), [0, 0, 0, 1, 100])
        let s = x.sigmoid().toArray()
        XCTAssertEqual(s[0], 0, accuracy: 1e-30)   // no overflow of exp(100)
        XCTAssertEqual(s[2], 0.5)
        XCTAssertEqual(s[4], 1)
        XCTAssertEqual(x.silu().toArray()[0], 0, accuracy: 1e-30)
        XCTAssertFalse(x.silu().toArray().contains { !$0.isFinite })
        XCTAssertEqual(x.gelu().toArray()[3], 0.8413447, accuracy: 1e-6)
        XCTAssertEqual(x.quickGelu().toArray()[3], 1 / (1 + Foundation.exp(-1.702)), accuracy: 1e-6)
        assertClose(swiglu(x, Tensor.full([5], 2)), x.silu() * 2, tol: 0, "swiglu")
    }

    // MARK: PyTorch fixtures

    func testNormFixtures() {
        Fixtures.check(c("rmsnorm"), fwdTol: 1e-6, gradTol: 1e-5) { rmsNorm($0.inputs[0], weight: $0.inputs[1], eps: 1e-6) }
        Fixtures.check(c("rmsnorm_small_eps5"), fwdTol: 1e-6, gradTol: 1e-5) {
            rmsNorm($0.inputs[0], weight: $0.inputs[1], eps: 1e-5)
        }
        Fixtures.check(c("layernorm"), fwdTol: 1e-6, gradTol: 1e-5) {
            layerNorm($0.inputs[0], weight: $0.inputs[1], bias: $0.inputs[2], eps: 1e-5)
        }
        Fixtures.check(c("layernorm_offset"), fwdTol: 1e-6, gradTol: 1e-5) {
            layerNorm($0.inputs[0], weight: $0.inputs[1], bias: $0.inputs[2], eps: 1e-5)
        }
        Fixtures.check(c("layernorm2d"), fwdTol: 1e-6, gradTol: 1e-5) {
            layerNorm2d($0.inputs[0], weight: $0.inputs[1], bias: $0.inputs[2], eps: 1e-6)
        }
    }

    func testActivationFixtures() {
        Fixtures.check(c("relu"), fwdTol: 0, gradTol: 0) { $0.inputs[0].relu() }
        Fixtures.check(c("sigmoid"), fwdTol: 1e-6, gradTol: 1e-6) { $0.inputs[0].sigmoid() }
        Fixtures.check(c("silu"), fwdTol: 1e-6, gradTol: 1e-6) { $0.inputs[0].silu() }
        Fixtures.check(c("quick_gelu"), fwdTol: 1e-6, gradTol: 1e-6) { $0.inputs[0].quickGelu() }
        Fixtures.check(c("gelu"), fwdTol: 1e-6, gradTol: 1e-6) { $0.inputs[0].gelu() }
        Fixtures.check(c("swiglu"), fwdTol: 1e-6, gradTol: 1e-6) { swiglu($0.inputs[0], $0.inputs[1]) }
    }
}
