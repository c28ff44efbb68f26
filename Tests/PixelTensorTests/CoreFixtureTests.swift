import XCTest
@testable import PixelTensor

/// Core ops against PyTorch 2.13 (tools/fixtures/core.py).
final class CoreFixtureTests: XCTestCase {
    static let cases = try! Fixtures.load("core")
    func c(_ n: String) -> FixtureCase? { Self.cases[n] }

    func testMatmul() {
        XCTAssertEqual(Self.cases.count, 22, "every core fixture case is present")
        Fixtures.check(c("matmul_nn")) { $0.inputs[0].matmul($0.inputs[1]) }
        Fixtures.check(c("matmul_tn")) { $0.inputs[0].transpose(0, 1).matmul($0.inputs[1]) }
        Fixtures.check(c("matmul_nt")) { $0.inputs[0].matmul($0.inputs[1].transpose(0, 1)) }
        Fixtures.check(c("matmul_tt")) { $0.inputs[0].transpose(0, 1).matmul($0.inputs[1].transpose(0, 1)) }
        Fixtures.check(c("matmul_batched")) { $0.inputs[0].matmul($0.inputs[1]) }
        Fixtures.check(c("matmul_broadcast")) { $0.inputs[0].matmul($0.inputs[1]) }
        Fixtures.check(c("matmul_shared_rhs")) { $0.inputs[0].matmul($0.inputs[1]) }
    }

    func testLinear() {
        Fixtures.check(c("linear_bias")) { linear($0.inputs[0], $0.inputs[1], $0.inputs[2]) }
        Fixtures.check(c("linear_nobias")) { linear($0.inputs[0], $0.inputs[1]) }
    }

    func testArithmetic() {
        Fixtures.check(c("add_broadcast")) { $0.inputs[0] + $0.inputs[1] }
        Fixtures.check(c("sub_broadcast")) { $0.inputs[0] - $0.inputs[1] }
        Fixtures.check(c("mul_broadcast")) { $0.inputs[0] * $0.inputs[1] }
        Fixtures.check(c("div_broadcast")) { $0.inputs[0] / $0.inputs[1] }
        Fixtures.check(c("scalar_ops")) { (2 - $0.inputs[0] * 3 + 1) / 4 }
        Fixtures.check(c("exp_log")) { ($0.inputs[0].abs() + 0.5).log() + $0.inputs[0].exp() }
    }

    func testReductionsAndViews() {
        Fixtures.check(c("sum_axis1")) { $0.inputs[0].sum(axes: [1]) }
        Fixtures.check(c("sum_axes02_keep")) { $0.inputs[0].sum(axes: [0, 2], keepDims: true) }
        Fixtures.check(c("mean_last")) { $0.inputs[0].mean(axes: [-1]) }
        Fixtures.check(c("mean_all")) { $0.inputs[0].mean().reshape([1]) }
        Fixtures.check(c("permute_reshape")) { $0.inputs[0].permute(2, 0, 1).reshape([4, 6]) }
        Fixtures.check(c("slice_mid")) { $0.inputs[0].slice(axis: 1, 1, 3) * 2 }
        Fixtures.check(c("expand")) { $0.inputs[0].expand([2, 3, 4]) * 1 }
    }
}
