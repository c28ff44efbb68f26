import Foundation
import XCTest
@testable import PixelTensor

/// Softmax, scaled dot-product attention and RoPE: finite differences, masking semantics, and PyTorch
/// 2.13 fixtures (tools/fixtures/norms_attention.py).
final class AttentionTests: XCTestCase {
    static let cases = try! Fixtures.load("norms_attention")
    func c(_ n: String) -> FixtureCase? { Self.cases[n] }

    static let negInf = -Float.infinity
    static let finfoMin = -Float.greatestFiniteMagnitude

    /// [B, 1, 1, Tk] additive mask removing keys at positions >= length.
    static func keyPadding(_ lengths: [Int], _ tk: Int, value: Float = negInf) -> Tensor {
        let m = Tensor.zeros([lengths.count, 1, 1, tk])
        for (b, n) in lengths.enumerated() { for j in n..<tk { m.ptr[b * tk + j] = value } }
        return m
    }

    /// [Tq, Tk] additive mask: query i sees keys j <= Tk - Tq + i.
    static func bottomRightCausal(_ tq: Int, _ tk: Int) -> Tensor {
        let m = Tensor.zeros([tq, tk])
        for i in 0..<tq { for j in 0..<tk where j > tk - tq + i { m.ptr[i * tk + j] = negInf } }
        return m
    }

    /// Attention composed from matmul, scaling and softmax, with the KV heads repeated (HF repeat_kv).
    static func composed(_ q: Tensor, _ k: Tensor, _ v: Tensor, mask: Tensor?, causal: Bool, scale: Float) -> Tensor {
        let nRep = q.dim(1) / k.dim(1)
        func rep(_ t: Tensor) -> Tensor {
            let s = t.shape
            return t.unsqueeze(2).expand([s[0], s[1], nRep, s[2], s[3]]).reshape([s[0], s[1] * nRep, s[2], s[3]])
        }
        let scores = q.matmul(rep(k).transpose(2, 3)) * scale
        return softmax(scores, mask: mask, causal: causal).matmul(rep(v))
    }

    // MARK: softmax

    func testSoftmaxGrad() {
        GradCheck.assertGrads([rand([3, 7], seed: 1, std: 2)]) { softmax($0[0]) }
        GradCheck.assertGrads([rand([2, 4, 6], seed: 2)]) { softmax($0[0], causal: true) }
        GradCheck.assertGrads([rand([2, 4, 6], seed: 3)]) { softmax($0[0], mask: Self.keyPadding([5, 2], 6).reshape([2, 1, 6])) }
        // a learned additive bias receives the gradient too
        GradCheck.assertGrads([rand([2, 3, 5], seed: 4), rand([3, 5], seed: 5)]) { softmax($0[0], mask: $0[1]) }
        GradCheck.assertGrads([rand([2, 3, 5], seed: 4), rand([3, 5], seed: 5)]) { softmax($0[0], mask: $0[1], causal: true) }
    }

    func testSoftmaxCausalIsBottomRight() {
        let x = rand([2, 3, 5], seed: 1, grad: false)
        assertClose(softmax(x, causal: true), softmax(x, mask: Self.bottomRightCausal(3, 5)), tol: 0, "causal vs explicit mask")
        let p = softmax(x, causal: true)
        XCTAssertEqual(p[0, 0, 3], 0)   // query 0 of 3 with 5 keys sees keys 0...2
        XCTAssertEqual(p[0, 0, 4], 0)
        XCTAssertGreaterThan(p[0, 0, 2], 0)
        XCTAssertGreaterThan(p[0, 2, 4], 0)
    }

    func testSoftmaxEmptyRowsGiveZerosNotNaN() {
        // -inf everywhere in a row (PyTorch's F.softmax gives NaN), and more queries than keys under causal
        let x = rand([2, 4], seed: 1)
        let mask = Tensor([0, 0, 0, 0, Self.negInf, Self.negInf, Self.negInf, Self.negInf], shape: [2, 4])
        let y = softmax(x, mask: mask)
        XCTAssertEqual(Array(y.toArray()[4...]), [0, 0, 0, 0])
        y.backward(rand([2, 4], seed: 2, grad: false))
        XCTAssertEqual(Array(x.grad!.toArray()[4...]), [0, 0, 0, 0])
        XCTAssertFalse(x.grad!.toArray().contains { !$0.isFinite })
        let z = softmax(rand([5, 3], seed: 3, grad: false), causal: true)   // rows 0 and 1 see no key
        XCTAssertEqual(Array(z.toArray()[..<6]), [0, 0, 0, 0, 0, 0])
        XCTAssertEqual(z[2, 0], 1)
        // finfo.min everywhere: every score rounds to finfo.min, the row is uniform (as in PyTorch)
        let u = softmax(rand([1, 4], seed: 4, grad: false), mask: Tensor.full([4], Self.finfoMin))
        XCTAssertEqual(u.toArray(), [0.25, 0.25, 0.25, 0.25])
    }

    func testSoftmaxFixtures() {
        Fixtures.check(c("softmax"), fwdTol: 1e-6, gradTol: 1e-6) { softmax($0.inputs[0]) }
        Fixtures.check(c("softmax_keypad_inf"), fwdTol: 1e-6, gradTol: 1e-6) { softmax($0.inputs[0], mask: $0.inputs[1]) }
        Fixtures.check(c("softmax_finfo_full_row"), fwdTol: 1e-6, gradTol: 1e-6) { softmax($0.inputs[0], mask: $0.inputs[1]) }
        Fixtures.check(c("softmax_causal"), fwdTol: 1e-6, gradTol: 1e-6) { softmax($0.inputs[0], causal: true) }
        Fixtures.check(c("softmax_bias_grad"), fwdTol: 1e-6, gradTol: 1e-6) { softmax($0.inputs[0], mask: $0.inputs[1]) }
    }

    // MARK: scaled dot-product attention

    func testAttentionGrad() {
        // GQA: 4 query heads over 2 KV heads, Tq != Tk
        GradCheck.assertGrads([rand([2, 4, 3, 4], seed: 1), rand([2, 2, 5, 4], seed: 2), rand([2, 2, 5, 4], seed: 3)]) {
            scaledDotProductAttention($0[0], $0[1], $0[2])
        }
        // key padding + bottom-right causal
        let pad = Self.keyPadding([5, 4], 5)
        GradCheck.assertGrads([rand([2, 2, 3, 4], seed: 4), rand([2, 1, 5, 4], seed: 5), rand([2, 1, 5, 3], seed: 6)]) {
            scaledDotProductAttention($0[0], $0[1], $0[2], mask: pad, causal: true)
        }
        // a learned bias per head with a custom scale, and strided (transposed) q, k, v
        GradCheck.assertGrads([rand([1, 4, 2, 3], seed: 7), rand([1, 5, 2, 3], seed: 8), rand([1, 5, 2, 3], seed: 9),
                               rand([1, 2, 4, 5], seed: 10)]) {
            scaledDotProductAttention($0[0].transpose(1, 2), $0[1].transpose(1, 2), $0[2].transpose(1, 2),
                                      mask: $0[3], scale: 0.7)
        }
    }

    func testAttentionMatchesComposition() {
        let q = rand([2, 4, 3, 8], seed: 1), k = rand([2, 2, 6, 8], seed: 2), v = rand([2, 2, 6, 5], seed: 3)
        let mask = Self.keyPadding([6, 4], 6, value: Self.finfoMin)
        let scale = 1 / Float(8).squareRoot()
        let a = scaledDotProductAttention(q, k, v, mask: mask, causal: true)
        let b = Self.composed(q, k, v, mask: mask, causal: true, scale: scale)
        assertClose(a, b, tol: 1e-6, "sdpa vs composition")
        let g = rand(a.shape, seed: 4, grad: false)
        a.backward(g)
        let ga = [q, k, v].map { $0.grad!.detachedCopy() }
        for t in [q, k, v] { t.grad = nil }
        b.backward(g)
        for (x, y) in zip(ga, [q, k, v].map { $0.grad! }) { assertClose(x, y, tol: 1e-5, "sdpa grad vs composition") }
        // inference (no grad recorded, probabilities not kept; 3 query rows take the few-rows kernel) gives the same output
        let n = Autograd.noGrad { scaledDotProductAttention(q, k, v, mask: mask, causal: true) }
        XCTAssertNil(n.node)
        assertClose(n, a, tol: 1e-6, "no-grad path")
    }

    /// The inference kernel for a few query rows (decode: AttentionKernel.forwardFewRows, no BLAS, heads over threads)
    /// against the general path (BLAS per head, taken whenever a gradient is recorded): GQA, key padding with -inf and
    /// with finfo.min, bottom-right causal with more queries than keys, strided keys and values as a KV cache holds
    /// them, a value dim unlike the key dim, sizes off the SIMD width, and a shape large enough to split over threads.
    func testFewRowsInferenceAttentionMatchesGeneralPath() {
        func check(B: Int, Hq: Int, Hkv: Int, Tq: Int, Tk: Int, D: Int, Dv: Int, lengths: [Int]?, maskValue: Float = Self.negInf,
                   causal: Bool, strided: Bool, seed: UInt64, _ what: String) {
            let q = rand([B, Hq, Tq, D], seed: seed)
            var k = rand([B, Hkv, Tk, D], seed: seed + 1), v = rand([B, Hkv, Tk, Dv], seed: seed + 2)
            if strided {
                // a cache of capacity Tk + 3 read as its first Tk positions
                let kc = rand([B, Hkv, Tk + 3, D], seed: seed + 1), vc = rand([B, Hkv, Tk + 3, Dv], seed: seed + 2)
                k = Tensor(storage: kc.storage, shape: [B, Hkv, Tk, D], strides: [Hkv * (Tk + 3) * D, (Tk + 3) * D, D, 1], offset: 0,
                           requiresGrad: true)
                v = Tensor(storage: vc.storage, shape: [B, Hkv, Tk, Dv], strides: [Hkv * (Tk + 3) * Dv, (Tk + 3) * Dv, Dv, 1], offset: 0,
                           requiresGrad: true)
            }
            let mask = lengths.map { Self.keyPadding($0, Tk, value: maskValue) }
            let general = scaledDotProductAttention(q, k, v, mask: mask, causal: causal)
            XCTAssertNotNil(general.node, what)
            let few = Autograd.noGrad { scaledDotProductAttention(q, k, v, mask: mask, causal: causal) }
            XCTAssertNil(few.node, what)
            XCTAssertEqual(few.shape, [B, Hq, Tq, Dv], what)
            XCTAssertFalse(few.toArray().contains { !$0.isFinite }, what)
            assertClose(few, general, tol: 2e-6, what)
        }
        check(B: 1, Hq: 4, Hkv: 4, Tq: 1, Tk: 9, D: 16, Dv: 16, lengths: nil, causal: true, strided: false, seed: 1, "one decode row")
        check(B: 2, Hq: 6, Hkv: 2, Tq: 1, Tk: 13, D: 12, Dv: 5, lengths: [13, 7], causal: true, strided: true, seed: 4, "GQA, padding, cache")
        check(B: 2, Hq: 2, Hkv: 1, Tq: 3, Tk: 11, D: 8, Dv: 8, lengths: [11, 0], maskValue: Self.finfoMin, causal: true,
              strided: true, seed: 7, "a row masked everywhere with finfo.min is uniform")
        check(B: 1, Hq: 2, Hkv: 2, Tq: 4, Tk: 2, D: 8, Dv: 3, lengths: nil, causal: true, strided: false, seed: 10,
              "more queries than keys: rows that see nothing are 0")
        check(B: 1, Hq: 3, Hkv: 3, Tq: 2, Tk: 5, D: 7, Dv: 9, lengths: [3], causal: false, strided: false, seed: 13, "not causal")
        check(B: 1, Hq: 32, Hkv: 8, Tq: 1, Tk: 300, D: 64, Dv: 64, lengths: [290], causal: true, strided: true, seed: 16,
              "large enough to split the heads over threads")
    }

    func testAttentionEmptyRowsGiveZerosNotNaN() {
        // more queries than keys under causal: the first rows see nothing
        let q = rand([1, 2, 4, 4], seed: 1), k = rand([1, 2, 2, 4], seed: 2), v = rand([1, 2, 2, 4], seed: 3)
        let o = scaledDotProductAttention(q, k, v, causal: true)
        XCTAssertEqual(Array(o.toArray()[..<8]), [Float](repeating: 0, count: 8))
        o.backward(rand(o.shape, seed: 4, grad: false))
        for t in [q, k, v] { XCTAssertFalse(t.grad!.toArray().contains { !$0.isFinite }) }
        XCTAssertEqual(Array(q.grad!.toArray()[..<8]), [Float](repeating: 0, count: 8))
    }

    func testAttentionFixtures() {
        func sdpa(_ c: FixtureCase, causal: Bool = false, scale: Float? = nil) -> Tensor {
            scaledDotProductAttention(c.inputs[0], c.inputs[1], c.inputs[2], mask: c.inputs.count > 3 ? c.inputs[3] : nil,
                                      causal: causal, scale: scale)
        }
        Fixtures.check(c("sdpa_basic"), fwdTol: 1e-6, gradTol: 1e-5) { sdpa($0) }
        Fixtures.check(c("sdpa_gqa"), fwdTol: 1e-6, gradTol: 1e-5) { sdpa($0) }
        Fixtures.check(c("sdpa_keypad"), fwdTol: 1e-6, gradTol: 1e-5) { sdpa($0) }
        Fixtures.check(c("sdpa_keypad_finfo"), fwdTol: 1e-6, gradTol: 1e-5) { sdpa($0) }
        Fixtures.check(c("sdpa_causal"), fwdTol: 1e-6, gradTol: 1e-5) { sdpa($0, causal: true) }
        Fixtures.check(c("sdpa_causal_kvcache"), fwdTol: 1e-6, gradTol: 1e-5) { sdpa($0, causal: true) }
        Fixtures.check(c("sdpa_mask_causal"), fwdTol: 1e-6, gradTol: 1e-5) { sdpa($0, causal: true) }
        Fixtures.check(c("sdpa_bias_grad_scale"), fwdTol: 1e-6, gradTol: 1e-5) { sdpa($0, scale: 0.3) }
        Fixtures.check(c("sdpa_value_dim"), fwdTol: 1e-6, gradTol: 1e-5) { sdpa($0) }
        Fixtures.check(c("sdpa_empty_row"), fwdTol: 1e-6, gradTol: 1e-5) { sdpa($0) }
        Fixtures.check(c("sdpa_transposed_inputs"), fwdTol: 1e-6, gradTol: 1e-5) {
            scaledDotProductAttention($0.inputs[0].transpose(1, 2), $0.inputs[1].transpose(1, 2), $0.inputs[2].transpose(1, 2))
        }
    }

    // MARK: RoPE

    func testRoPEGrad() {
        GradCheck.assertGrads([rand([2, 2, 3, 8], seed: 1)]) { rope($0[0], positions: [0, 5, 9]) }
        GradCheck.assertGrads([rand([2, 3, 2, 4], seed: 2)]) {   // per-batch positions, strided input
            rope($0[0].transpose(1, 2), positions: [1, 2, 40, 41, 7, 8], theta: 500)
        }
    }

    func testRoPEByHand() {
        // position 0 is the identity; position p rotates pair (i, i + D/2) by p * theta^(-2i/D)
        let x = rand([1, 1, 2, 4], seed: 1, grad: false)
        let y = rope(x, positions: [0, 3])
        XCTAssertEqual(Array(y.toArray()[..<4]), Array(x.toArray()[..<4]))
        let xs = x.toArray(), ys = y.toArray()
        for i in 0..<2 {
            let angle = Float(3) * (1 / Foundation.pow(Float(10000), Float(2 * i) / 4))
            let a = xs[4 + i], b = xs[6 + i]
            XCTAssertEqual(ys[4 + i], a * Foundation.cos(angle) - b * Foundation.sin(angle), accuracy: 1e-6)
            XCTAssertEqual(ys[6 + i], b * Foundation.cos(angle) + a * Foundation.sin(angle), accuracy: 1e-6)
        }
        // a shared table gives the same result as building it per call
        let table = RotaryTable(positions: [0, 3], dim: 4)
        assertClose(applyRotary(x, table), y, tol: 0, "shared table")
    }

    func testRoPEFixtures() {
        func positions(_ c: FixtureCase) -> [Int] { c.intInputs[1]!.map { Int($0) } }
        Fixtures.check(c("rope"), fwdTol: 1e-6, gradTol: 1e-6) { rope($0.inputs[0], positions: positions($0)) }
        Fixtures.check(c("rope_batch_positions"), fwdTol: 1e-6, gradTol: 1e-6) { rope($0.inputs[0], positions: positions($0)) }
        Fixtures.check(c("rope_theta_5e5"), fwdTol: 1e-6, gradTol: 1e-6) {
            rope($0.inputs[0], positions: positions($0), theta: 500_000)
        }
    }
}
