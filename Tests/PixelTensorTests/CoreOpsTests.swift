import XCTest
@testable import PixelTensor

final class CoreOpsTests: XCTestCase {
    func testMatmulAgainstNaiveLoop() {
        let a = rand([3, 5], seed: 1, grad: false), b = rand([5, 4], seed: 2, grad: false)
        let c = a.matmul(b)
        for i in 0..<3 {
            for j in 0..<4 {
                var s: Float = 0
                for k in 0..<5 { s += a[i, k] * b[k, j] }
                XCTAssertEqual(c[i, j], s, accuracy: 1e-5)
            }
        }
    }

    func testMatmulGradEveryTransposeAndBatch() {
        GradCheck.assertGrads([rand([3, 4], seed: 1), rand([4, 5], seed: 2)]) { $0[0].matmul($0[1]) }
        GradCheck.assertGrads([rand([4, 3], seed: 1), rand([4, 5], seed: 2)]) { $0[0].transpose(0, 1).matmul($0[1]) }
        GradCheck.assertGrads([rand([3, 4], seed: 1), rand([5, 4], seed: 2)]) { $0[0].matmul($0[1].transpose(0, 1)) }
        GradCheck.assertGrads([rand([4, 3], seed: 1), rand([5, 4], seed: 2)]) {
            $0[0].transpose(0, 1).matmul($0[1].transpose(0, 1))
        }
        GradCheck.assertGrads([rand([2, 3, 4], seed: 1), rand([2, 4, 5], seed: 2)]) { $0[0].matmul($0[1]) }
        GradCheck.assertGrads([rand([2, 3, 4], seed: 1), rand([4, 5], seed: 2)]) { $0[0].matmul($0[1]) }
        GradCheck.assertGrads([rand([2, 1, 3, 4], seed: 1), rand([3, 4, 2], seed: 2)]) { $0[0].matmul($0[1]) }
        GradCheck.assertGrads([rand([2, 4, 3], seed: 1), rand([2, 5, 4], seed: 2)]) {
            $0[0].transpose(1, 2).matmul($0[1].transpose(1, 2))
        }
    }

    func testLinearGrad() {
        GradCheck.assertGrads([rand([2, 3, 6], seed: 1), rand([4, 6], seed: 2), rand([4], seed: 3)]) {
            linear($0[0], $0[1], $0[2])
        }
        GradCheck.assertGrads([rand([5, 6], seed: 1), rand([4, 6], seed: 2)]) { linear($0[0], $0[1]) }
    }

    func testBroadcastBinaryGrads() {
        for op in [BinaryOp.add, .sub, .mul, .div] {
            let b = rand([1, 4], seed: 2)
            if op == .div { for i in 0..<b.count { b.ptr[i] = 1.5 + Swift.abs(b.ptr[i]) } }
            GradCheck.assertGrads([rand([3, 4], seed: 1), b]) { binary(op, $0[0], $0[1]) }
            let c = rand([2, 3, 1], seed: 3)
            if op == .div { for i in 0..<c.count { c.ptr[i] = 1.5 + Swift.abs(c.ptr[i]) } }
            GradCheck.assertGrads([rand([4], seed: 4), c]) { binary(op, $0[0], $0[1]) }
        }
    }

    func testScalarAndUnaryGrads() {
        GradCheck.assertGrads([rand([3, 4], seed: 1)]) { ($0[0] * 3 + 1) - 2 }
        GradCheck.assertGrads([rand([3, 4], seed: 1)]) { 2 - $0[0] / 4 }
        GradCheck.assertGrads([rand([3, 4], seed: 1)]) { $0[0].exp() }
        GradCheck.assertGrads([rand([3, 4], seed: 1)]) { $0[0].tanh() }
        GradCheck.assertGrads([rand([3, 4], seed: 1)]) { $0[0].square() }
        let pos = rand([3, 4], seed: 2, grad: true)
        for i in 0..<pos.count { pos.ptr[i] = 0.5 + Swift.abs(pos.ptr[i]) }
        GradCheck.assertGrads([pos]) { $0[0].log() }
        GradCheck.assertGrads([pos]) { $0[0].sqrt() }
        GradCheck.assertGrads([pos]) { $0[0].pow(1.7) }
    }

    func testReductionGrads() {
        GradCheck.assertGrads([rand([2, 3, 4], seed: 1)]) { $0[0].sum(axes: [1]) }
        GradCheck.assertGrads([rand([2, 3, 4], seed: 1)]) { $0[0].sum(axes: [0, 2], keepDims: true) }
        GradCheck.assertGrads([rand([2, 3, 4], seed: 1)]) { $0[0].mean(axes: [-1]) }
        GradCheck.assertGrads([rand([2, 3, 4], seed: 1)]) { $0[0].mean().reshape([1]) }
        let x = Tensor([1, 2, 3, 4, 5, 6], shape: [2, 3])
        XCTAssertEqual(x.sum(axes: [0]).toArray(), [5, 7, 9])
        XCTAssertEqual(x.sum(axes: [1]).toArray(), [6, 15])
        XCTAssertEqual(x.mean().item, 3.5)
    }

    func testViewGrads() {
        GradCheck.assertGrads([rand([2, 3, 4], seed: 1)]) { $0[0].permute(2, 0, 1).contiguous().reshape([4, 6]) }
        GradCheck.assertGrads([rand([2, 3, 4], seed: 1)]) { $0[0].slice(axis: 1, 1, 3) * 2 }
        GradCheck.assertGrads([rand([2, 1, 4], seed: 1)]) { $0[0].expand([2, 3, 4]) * 1 }
        GradCheck.assertGrads([rand([6], seed: 1)]) { $0[0].reshape([2, 3]).transpose(0, 1).reshape([6]) }
        let x = Tensor((0..<24).map(Float.init), shape: [2, 3, 4])
        XCTAssertEqual(x.permute(2, 0, 1).toArray().prefix(6), [0, 4, 8, 12, 16, 20])
        XCTAssertEqual(x.slice(axis: 2, 1, 3).toArray(), [1, 2, 5, 6, 9, 10, 13, 14, 17, 18, 21, 22])
    }

    func testFanInAccumulates() {
        let x = rand([3], seed: 5)
        let y = (x * x + x).sum()
        y.backward()
        let xs = x.toArray(), g = x.grad!.toArray()
        for i in 0..<3 { XCTAssertEqual(g[i], 2 * xs[i] + 1, accuracy: 1e-5) }
    }

    func testNoGradRecordsNothing() {
        let x = rand([3], seed: 5)
        let y = Autograd.noGrad { x * 2 }
        XCTAssertNil(y.node)
        XCTAssertFalse(y.requiresGrad)
    }

    /// A deliberately broken backward (flipped sign, or a missed accumulation) must be caught.
    func testGradCheckCatchesBrokenBackward() {
        func brokenScale(_ x: Tensor, sign: Float, accumulate: Bool) -> Tensor {
            let out = Tensor(x.toArray().map { $0 * 3 }, shape: x.shape)
            return Autograd.record("broken", out, inputs: [x]) { _, g in
                let d = x.gradBuffer().ptr, gg = g.contiguousData().ptr
                for i in 0..<x.count { if accumulate { d[i] += sign * 3 * gg[i] } else { d[i] = sign * 3 * gg[i] } }
            }
        }
        let good = GradCheck.run([rand([4], seed: 1)]) { brokenScale($0[0], sign: 1, accumulate: true) }
        XCTAssertTrue(good.failures.isEmpty)
        let flipped = GradCheck.run([rand([4], seed: 1)]) { brokenScale($0[0], sign: -1, accumulate: true) }
        XCTAssertFalse(flipped.failures.isEmpty, "a flipped sign must fail the check")
        // fan-in: x used twice; an overwriting backward loses one contribution
        let missed = GradCheck.run([rand([4], seed: 1)]) { brokenScale($0[0], sign: 1, accumulate: false) + $0[0] }
        XCTAssertFalse(missed.failures.isEmpty, "a missed accumulation must fail the check")
    }

    func testShapeErrorsNameOpAndShapes() {
        XCTAssertThrowsError(try Shapes.broadcast([2, 3], [4, 3], op: "add")) { e in
            XCTAssertEqual("\(e)", "add: shapes [2, 3] and [4, 3] do not broadcast")
        }
        XCTAssertThrowsError(try Shapes.inferReshape([2, 3], [4, 2])) { e in
            XCTAssertTrue("\(e)".contains("reshape") && "\(e)".contains("[2, 3]") && "\(e)".contains("[4, 2]"))
        }
    }

    func testHDF5RoundTripAndErrors() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pixellm-h5-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("t.h5").path
        let a = rand([2, 3], seed: 1, grad: false), b = rand([4], seed: 2, grad: false)
        try TensorFile.write(["layer/a": a, "b": b, "s": Tensor(scalar: 2)], to: path)
        XCTAssertEqual(try TensorFile.names(in: path).sorted(), ["b", "layer/a", "s"])
        let back = try TensorFile.read(path)
        XCTAssertEqual(back["layer/a"]!.toArray(), a.toArray())
        XCTAssertEqual(back["layer/a"]!.shape, [2, 3])
        XCTAssertEqual(back["s"]!.shape, [])
        XCTAssertThrowsError(try TensorFile.read(path, name: "missing")) { e in
            XCTAssertTrue("\(e)".contains("missing") && "\(e)".contains(path))
        }
        XCTAssertThrowsError(try TensorFile.read(dir.appendingPathComponent("none.h5").path))
        // no temporary file is left behind
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["t.h5"])
    }

    func testCachingAllocatorReuses() {
        let before = CachingAllocator.shared.reuses
        for _ in 0..<10 { _ = Tensor.zeros([1000]) }
        XCTAssertGreaterThan(CachingAllocator.shared.reuses, before)
    }

    func testBLASCoreIsNotGeneric() {
        let info = BLAS.info
        XCTAssertFalse(info.isGenericCore, "OpenBLAS runs the generic core \(info.corename)")
        XCTAssertGreaterThanOrEqual(info.threads, 1)
    }
}

final class RandnParallelTests: XCTestCase {
    /// Large fills take the threaded Box-Muller path; values and the generator's state must equal the serial draw.
    func testLargeRandnEqualsSerialDraws() {
        for n in [Tensor.parallelNormalThreshold + 1, Tensor.parallelNormalThreshold * 3 + 2] {
            var a = RNG(seed: 5), b = RNG(seed: 5)
            _ = a.normal(); _ = b.normal()   // start with a pending spare value
            let t = Tensor.randn([n], std: 0.5, rng: &a)
            let p = t.ptr
            var mismatches = 0
            for i in 0..<n where p[i] != b.normal() * 0.5 { mismatches += 1 }
            XCTAssertEqual(mismatches, 0, "n = \(n)")
            XCTAssertEqual(a.normal(), b.normal(), "generator state after the fill")
        }
    }
}
