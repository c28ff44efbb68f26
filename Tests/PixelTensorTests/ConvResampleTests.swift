import XCTest
@testable import PixelTensor

/// conv2d, conv_transpose2d, bilinear resize and avg_pool2d: finite-difference gradient checks, small
/// reference loops, and fixtures from PyTorch 2.13 (tools/fixtures/conv_resample.py).
final class ConvResampleTests: XCTestCase {
    static let cases = try! Fixtures.load("conv_resample")
    func c(_ n: String) -> FixtureCase? { Self.cases[n] }

    // MARK: reference loops

    /// Direct 6-deep conv2d loop (zero padding), for cross-checking im2col + sgemm.
    func naiveConv2d(_ x: Tensor, _ w: Tensor, _ b: Tensor?, stride: (Int, Int), padding: (Int, Int)) -> Tensor {
        let N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3), O = w.dim(0), kH = w.dim(2), kW = w.dim(3)
        let OH = (H + 2 * padding.0 - kH) / stride.0 + 1, OW = (W + 2 * padding.1 - kW) / stride.1 + 1
        let out = Tensor.zeros([N, O, OH, OW])
        for n in 0..<N { for o in 0..<O { for oh in 0..<OH { for ow in 0..<OW {
            var s = b.map { $0[o] } ?? 0
            for ci in 0..<C { for ki in 0..<kH { for kj in 0..<kW {
                let ih = oh * stride.0 - padding.0 + ki, iw = ow * stride.1 - padding.1 + kj
                if ih >= 0 && ih < H && iw >= 0 && iw < W { s += x[n, ci, ih, iw] * w[o, ci, ki, kj] }
            }}}
            out[n, o, oh, ow] = s
        }}}}
        return out
    }

    func testConv2dMatchesNaiveLoop() {
        let geoms: [(x: [Int], w: [Int], s: (Int, Int), p: (Int, Int))] = [
            ([2, 3, 5, 4], [4, 3, 1, 1], (1, 1), (0, 0)),
            ([2, 3, 5, 4], [4, 3, 1, 1], (2, 2), (0, 0)),
            ([1, 2, 6, 7], [3, 2, 3, 3], (1, 1), (1, 1)),
            ([1, 2, 7, 8], [3, 2, 3, 3], (2, 3), (1, 2)),
            ([1, 2, 9, 10], [3, 2, 3, 3], (1, 2), (2, 0)),
            ([2, 3, 8, 12], [5, 3, 4, 4], (4, 4), (0, 0)),
            ([1, 1, 5, 5], [2, 1, 5, 5], (1, 1), (0, 0)),
        ]
        for (i, g) in geoms.enumerated() {
            let x = rand(g.x, seed: UInt64(10 + i), grad: false), w = rand(g.w, seed: UInt64(20 + i), grad: false)
            let b = rand([g.w[0]], seed: UInt64(30 + i), grad: false)
            assertClose(conv2d(x, w, b, stride: g.s, padding: g.p), naiveConv2d(x, w, b, stride: g.s, padding: g.p),
                        tol: 1e-5, "conv2d geometry \(i)")
        }
    }

    // MARK: gradient checks

    func testConv2dGrads() {
        // 1x1 (no im2col), with and without bias
        GradCheck.assertGrads([rand([2, 3, 4, 3], seed: 1), rand([4, 3, 1, 1], seed: 2), rand([4], seed: 3)]) {
            conv2d($0[0], $0[1], $0[2])
        }
        GradCheck.assertGrads([rand([2, 3, 4, 3], seed: 1), rand([4, 3, 1, 1], seed: 2)]) { conv2d($0[0], $0[1]) }
        // 3x3 padding 1
        GradCheck.assertGrads([rand([2, 2, 5, 5], seed: 4), rand([3, 2, 3, 3], seed: 5), rand([3], seed: 6)]) {
            conv2d($0[0], $0[1], $0[2], padding: 1)
        }
        GradCheck.assertGrads([rand([1, 2, 5, 6], seed: 4), rand([3, 2, 3, 3], seed: 5)]) { conv2d($0[0], $0[1], padding: 1) }
        // strided, rectangular, asymmetric padding
        GradCheck.assertGrads([rand([1, 2, 7, 6], seed: 7), rand([3, 2, 3, 2], seed: 8), rand([3], seed: 9)]) {
            conv2d($0[0], $0[1], $0[2], stride: (2, 1), padding: (1, 0))
        }
        // patch embedding (stride == kernel), with a remainder that is dropped
        GradCheck.assertGrads([rand([2, 3, 9, 8], seed: 10), rand([4, 3, 4, 4], seed: 11)]) { conv2d($0[0], $0[1], stride: 4) }
        // a non-contiguous input
        GradCheck.assertGrads([rand([2, 5, 5, 3], seed: 12), rand([3, 3, 3, 3], seed: 13)]) {
            conv2d($0[0].permute(0, 3, 1, 2), $0[1], padding: 1)
        }
    }

    func testConvTranspose2dGrads() {
        GradCheck.assertGrads([rand([2, 3, 3, 2], seed: 1), rand([3, 4, 2, 2], seed: 2), rand([4], seed: 3)]) {
            convTranspose2d($0[0], $0[1], $0[2], stride: 2)
        }
        GradCheck.assertGrads([rand([1, 3, 2, 3], seed: 4), rand([3, 2, 2, 2], seed: 5)]) { convTranspose2d($0[0], $0[1], stride: 2) }
        // overlapping windows with padding
        GradCheck.assertGrads([rand([1, 2, 3, 4], seed: 6), rand([2, 3, 3, 3], seed: 7), rand([3], seed: 8)]) {
            convTranspose2d($0[0], $0[1], $0[2], stride: 2, padding: 1)
        }
    }

    func testConvTransposeIsAdjointOfConv() {
        // <conv(x, w), y> == <x, conv_transpose(y, w)> for the same geometry
        for (s, p) in [(2, 0), (2, 1), (1, 1), (3, 0)] {
            // 9 x 7 so that conv2d reads no row or column that conv_transpose2d (no output padding) omits
            let x = rand([2, 3, 9, 7], seed: 1, grad: false), w = rand([4, 3, 3, 3], seed: 2, grad: false)
            let y = conv2d(x, w, stride: s, padding: p)
            let z = rand(y.shape, seed: 3, grad: false)
            let xt = convTranspose2d(z, w, stride: s, padding: p)
            var lhs = 0.0, rhs = 0.0
            for i in 0..<y.count { lhs += Double(y.ptr[i]) * Double(z.ptr[i]) }
            // conv_transpose's output covers every row and column conv2d read (the rest of x is unused)
            for n in 0..<2 { for ci in 0..<3 { for h in 0..<xt.dim(2) { for ww in 0..<xt.dim(3) {
                rhs += Double(x[n, ci, h, ww]) * Double(xt[n, ci, h, ww])
            }}}}
            XCTAssertEqual(lhs, rhs, accuracy: 1e-3 * max(1, Swift.abs(lhs)), "stride \(s) padding \(p)")
        }
    }

    func testBilinearGrads() {
        for (h, w) in [(8, 10), (3, 2), (5, 7), (2, 9), (4, 4), (1, 1)] {
            GradCheck.assertGrads([rand([2, 2, 4, 5], seed: 1)]) { resizeBilinear($0[0], height: h, width: w) }
        }
    }

    func testAvgPoolGrads() {
        GradCheck.assertGrads([rand([2, 3, 6, 4], seed: 1)]) { avgPool2d($0[0], kernel: 2) }
        GradCheck.assertGrads([rand([1, 2, 7, 9], seed: 2)]) { avgPool2d($0[0], kernel: (3, 2)) }
        GradCheck.assertGrads([rand([1, 2, 9, 7], seed: 3)]) { avgPool2d($0[0], kernel: 3, stride: 2) }
    }

    func testBilinearHalvingEqualsAvgPool() {
        let x = rand([2, 3, 32, 32], seed: 5, grad: false)
        assertClose(resizeBilinear(x, height: 16, width: 16), avgPool2d(x, kernel: 2), tol: 1e-6, "32 -> 16")
    }

    func testBilinearIdentityAndConstant() {
        let x = rand([1, 2, 6, 5], seed: 6, grad: false)
        XCTAssertEqual(resizeBilinear(x, height: 6, width: 5).toArray(), x.toArray())
        let k = Tensor.full([1, 1, 7, 3], 2.5)
        for v in resizeBilinear(k, height: 19, width: 4).toArray() { XCTAssertEqual(v, 2.5, accuracy: 1e-6) }
    }

    func testShapeErrorsNameOpAndShapes() {
        let g = Conv2dGeometry(kernel: (3, 3), stride: (1, 1), padding: (1, 1))
        let x = Tensor.zeros([1, 3, 5, 5]), w = Tensor.zeros([4, 2, 3, 3])
        XCTAssertThrowsError(try ConvShapes.check("conv2d", x, w, nil, weightChannelsIn: 2, outChannels: 4, g)) { e in
            let s = "\(e)"
            XCTAssertTrue(s.hasPrefix("conv2d:") && s.contains("[1, 3, 5, 5]") && s.contains("[4, 2, 3, 3]"), s)
        }
        let w2 = Tensor.zeros([4, 3, 3, 3])
        XCTAssertThrowsError(try ConvShapes.check("conv2d", x, w2, Tensor.zeros([3]), weightChannelsIn: 3, outChannels: 4, g)) { e in
            XCTAssertTrue("\(e)".contains("bias [3]"), "\(e)")
        }
        XCTAssertNoThrow(try ConvShapes.check("conv2d", x, w2, Tensor.zeros([4]), weightChannelsIn: 3, outChannels: 4, g))
    }

    // MARK: PyTorch fixtures

    func testConv2dFixtures() {
        let tol = (fwd: 1e-5, grad: 1e-5)
        Fixtures.check(c("conv1x1_bias"), fwdTol: tol.fwd, gradTol: tol.grad) { conv2d($0.inputs[0], $0.inputs[1], $0.inputs[2]) }
        Fixtures.check(c("conv1x1_nobias"), fwdTol: tol.fwd, gradTol: tol.grad) { conv2d($0.inputs[0], $0.inputs[1]) }
        Fixtures.check(c("conv3x3_pad1_bias"), fwdTol: tol.fwd, gradTol: tol.grad) {
            conv2d($0.inputs[0], $0.inputs[1], $0.inputs[2], padding: 1)
        }
        Fixtures.check(c("conv3x3_pad1_nobias"), fwdTol: tol.fwd, gradTol: tol.grad) { conv2d($0.inputs[0], $0.inputs[1], padding: 1) }
        Fixtures.check(c("conv3x3_stride2_pad1_bias"), fwdTol: tol.fwd, gradTol: tol.grad) {
            conv2d($0.inputs[0], $0.inputs[1], $0.inputs[2], stride: 2, padding: 1)
        }
        Fixtures.check(c("conv3x2_rect_stride_pad"), fwdTol: tol.fwd, gradTol: tol.grad) {
            conv2d($0.inputs[0], $0.inputs[1], $0.inputs[2], stride: (2, 1), padding: (1, 0))
        }
        Fixtures.check(c("conv_patch14_nobias"), fwdTol: tol.fwd, gradTol: tol.grad) { conv2d($0.inputs[0], $0.inputs[1], stride: 14) }
        Fixtures.check(c("conv_patch14_bias"), fwdTol: tol.fwd, gradTol: tol.grad) {
            conv2d($0.inputs[0], $0.inputs[1], $0.inputs[2], stride: 14)
        }
        Fixtures.check(c("conv_patch4_remainder"), fwdTol: tol.fwd, gradTol: tol.grad) { conv2d($0.inputs[0], $0.inputs[1], stride: 4) }
    }

    func testConvTranspose2dFixtures() {
        let tol = (fwd: 1e-5, grad: 1e-5)
        Fixtures.check(c("convT_k2s2_bias"), fwdTol: tol.fwd, gradTol: tol.grad) {
            convTranspose2d($0.inputs[0], $0.inputs[1], $0.inputs[2], stride: 2)
        }
        Fixtures.check(c("convT_k2s2_nobias"), fwdTol: tol.fwd, gradTol: tol.grad) { convTranspose2d($0.inputs[0], $0.inputs[1], stride: 2) }
        Fixtures.check(c("convT_k3s2p1_bias"), fwdTol: tol.fwd, gradTol: tol.grad) {
            convTranspose2d($0.inputs[0], $0.inputs[1], $0.inputs[2], stride: 2, padding: 1)
        }
    }

    func testBilinearFixtures() {
        let tol = (fwd: 1e-6, grad: 1e-6)
        let sizes: [(String, Int, Int)] = [
            ("bilinear_24_32", 32, 32), ("bilinear_32_16", 16, 16), ("bilinear_64_128", 128, 128),
            ("bilinear_128_448_h", 448, 28), ("bilinear_128_448_w", 28, 448), ("bilinear_up_nonint", 11, 17),
            ("bilinear_down_nonint", 7, 5), ("bilinear_mixed", 3, 20), ("bilinear_same_h", 6, 9), ("bilinear_to_1x1", 1, 1),
        ]
        for (name, h, w) in sizes {
            Fixtures.check(c(name), fwdTol: tol.fwd, gradTol: tol.grad) { resizeBilinear($0.inputs[0], height: h, width: w) }
        }
    }

    func testAvgPoolFixtures() {
        let tol = (fwd: 1e-6, grad: 1e-6)
        Fixtures.check(c("avgpool2x2"), fwdTol: tol.fwd, gradTol: tol.grad) { avgPool2d($0.inputs[0], kernel: 2) }
        Fixtures.check(c("avgpool2x2_odd"), fwdTol: tol.fwd, gradTol: tol.grad) { avgPool2d($0.inputs[0], kernel: 2) }
        Fixtures.check(c("avgpool3x2_rect"), fwdTol: tol.fwd, gradTol: tol.grad) { avgPool2d($0.inputs[0], kernel: (3, 2)) }
        Fixtures.check(c("avgpool_k3s2"), fwdTol: tol.fwd, gradTol: tol.grad) { avgPool2d($0.inputs[0], kernel: 3, stride: 2) }
    }
}
