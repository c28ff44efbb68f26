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

/// pixellm's auxiliary SEG-query separation: the differing pairs, the value by hand, the gradient.
final class QuerySeparationTests: XCTestCase {
    func testPairsValueAndGradient() {
        // masks: 0 and 1 identical (IoU 1: not a pair), 2 disjoint from both, 3 empty like nothing else (IoU 0)
        let a: [Float] = [1, 1, 0, 0], c: [Float] = [0, 0, 1, 1], e: [Float] = [0, 0, 0, 0]
        let pairs = QuerySeparation.differingPairs([a, a, c, e])
        XCTAssertEqual(pairs.map { [$0.0, $0.1] }, [[0, 2], [0, 3], [1, 2], [1, 3], [2, 3]])
        // by hand: q0 = (1, 0), q1 = (1, 1) / |.|, q2 = (1, 0.1): cos(0, 2) = 1 / sqrt(1.01); the (0, 1) pair is not counted
        let q = Tensor([1, 0, 3, 3, 2, 0.2], shape: [3, 1, 2], requiresGrad: true)
        let l = QuerySeparation.loss(queries: q, pairs: [(0, 2), (1, 2)], margin: 0.2)
        let cos02 = 1 / (1.01).squareRoot(), cos12 = (1 + 0.1) / ((2.0).squareRoot() * (1.01).squareRoot())
        XCTAssertEqual(Double(l.item), (cos02 - 0.2) + (cos12 - 0.2), accuracy: 1e-5)
        // below the margin: zero
        XCTAssertEqual(QuerySeparation.loss(queries: Tensor([1, 0, 0, 1], shape: [2, 1, 2]), pairs: [(0, 1)], margin: 0.2).item, 0)
        var rng = RNG(seed: 3)
        let x = Tensor((0..<(4 * 2 * 5)).map { _ in rng.normal() }, shape: [4, 2, 5], requiresGrad: true)
        let r = GradCheckLite.run([x], tol: 5e-3) { QuerySeparation.loss(queries: $0[0], pairs: [(0, 1), (0, 3), (2, 3), (1, 2)], margin: -0.5) }
        XCTAssertTrue(r.isEmpty, r.joined(separator: "; "))
    }
}

/// pixellm's auxiliary SEG-query grounding: the grid weights, the value by hand, the gradient.
final class QueryGroundingTests: XCTestCase {
    func testGridWeightsValueAndGradient() {
        // a 4 x 8 image resized into the top half of an 8 x 8 input (valid 4 x 8) on a 2 x 2 grid: the mask's left
        // half lands in cell (0, 0), the lower grid row is padding
        var mask = [Float](repeating: 0, count: 32)
        for y in 0..<4 { for x in 0..<4 { mask[y * 8 + x] = 1 } }
        mask[0 * 8 + 4] = 1   // one pixel of cell (0, 1): 1 of its 16
        XCTAssertEqual(QueryGrounding.gridWeights(mask, height: 4, width: 8, valid: (4, 8), input: 8, grid: 2), [1, 1.0 / 16, 0, 0])

        // by hand: L = 1, C = 2, E on a 1 x 2 grid: cell 0 = (1, 0), cell 1 = (0, 1), mean (0.5, 0.5); regions = the
        // two cells: r0 = (0.5, -0.5), r1 = -r0; query (1, 0) for region 0: logits (s, -s) / t with s = cos 45 degrees;
        // loss = -log softmax = log(1 + e^(-2 s / t))
        let E = Tensor([1, 0, 0, 1], shape: [1, 2, 1, 2])
        let q = Tensor([1, 0], shape: [1, 1, 2], requiresGrad: true)
        let l = QueryGrounding.loss(queries: q, embeddings: E, regions: [[1, 0], [0, 1]], group: [0], temperature: 0.5)
        XCTAssertEqual(Double(l.item), log(1 + exp(-2 * (0.5).squareRoot() / 0.5)), accuracy: 1e-5)

        var rng = RNG(seed: 5)
        let qs = Tensor((0..<(3 * 2 * 4)).map { _ in rng.normal() }, shape: [3, 2, 4], requiresGrad: true)
        let emb = Tensor((0..<(2 * 4 * 3 * 3)).map { _ in rng.normal() }, shape: [2, 4, 3, 3], requiresGrad: true)
        let regions: [[Float]] = [[1, 1, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0.5, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1, 1, 0.25]]
        let r = GradCheckLite.run([qs, emb], tol: 5e-3) {
            QueryGrounding.loss(queries: $0[0], embeddings: $0[1], regions: regions, group: [2, 0, 1], temperature: 0.3)
        }
        XCTAssertTrue(r.isEmpty, r.joined(separator: "; "))
    }
}

final class QueryAppearanceTests: XCTestCase {
    func testDescriptorByHand() {
        // an 8 x 8 input holding an 8 x 8 image; the target is the 2 x 2 block x 2...3, y 4...5
        let S = 8
        var pixels = [Float](repeating: 0, count: 3 * S * S)
        for c in 0..<3 { for i in 0..<(S * S) { pixels[c * S * S + i] = Float(c + 1) * Float(i % 7) } }
        var mask = [Float](repeating: 0, count: S * S)
        let cells = [(4, 2), (4, 3), (5, 2), (5, 3)]
        for (y, x) in cells { mask[y * S + x] = 1 }
        let f = pixels.withUnsafeBufferPointer {
            QueryAppearance.descriptor(mask: mask, height: S, width: S, pixels: $0.baseAddress!, input: S, valid: (S, S), stride: 1)
        }
        XCTAssertEqual(f.count, QueryAppearance.size)
        for c in 0..<3 {
            let mean = cells.map { Float(c + 1) * Float(($0.0 * S + $0.1) % 7) }.reduce(0, +) / 4
            XCTAssertEqual(f[c], mean, accuracy: 1e-6)
        }
        XCTAssertEqual(f[3], 4 * (4.0 / 64).squareRoot(), accuracy: 1e-6)   // 4 sqrt(area fraction)
        XCTAssertEqual(f[4], 1, accuracy: 1e-6)                              // fills its box

        // a 4 x 4 original image resized into the top half (valid 4 x 8) of the 8 x 8 input: the original's right half
        // column 2...3 maps to input columns 4...7; a triangle-ish target fills half of its box
        var small = [Float](repeating: 0, count: 16)
        small[0 * 4 + 2] = 1; small[0 * 4 + 3] = 1; small[1 * 4 + 3] = 1
        let g = pixels.withUnsafeBufferPointer {
            QueryAppearance.descriptor(mask: small, height: 4, width: 4, pixels: $0.baseAddress!, input: S, valid: (4, 8), stride: 1)
        }
        // input pixels (y 0, x 4...7) and (y 1, x 6...7)... rows: original y = (sy + 0.5) * 4 / 4 -> sy 0 -> 0, sy 1 -> 1
        let members = [(0, 4), (0, 5), (0, 6), (0, 7), (1, 6), (1, 7)]
        XCTAssertEqual(g[0], members.map { Float(($0.0 * S + $0.1) % 7) }.reduce(0, +) / 6, accuracy: 1e-6)
        XCTAssertEqual(g[3], 4 * (6.0 / 32).squareRoot(), accuracy: 1e-6)
        XCTAssertEqual(g[4], 2 * 6.0 / 8 - 1, accuracy: 1e-6)                // 6 of its 4 x 2 box

        // sampled every 2nd pixel: the block x 2...3, y 4...5 keeps one sample (2, 4) of the 16
        let h = pixels.withUnsafeBufferPointer {
            QueryAppearance.descriptor(mask: mask, height: S, width: S, pixels: $0.baseAddress!, input: S, valid: (S, S), stride: 2)
        }
        XCTAssertEqual(h[0], Float((4 * S + 2) % 7), accuracy: 1e-6)
        XCTAssertEqual(h[3], 4 * (1.0 / 16).squareRoot(), accuracy: 1e-6)
        XCTAssertEqual(h[4], 1, accuracy: 1e-6)

        // an empty target gives zeros, never a division by zero
        let z = pixels.withUnsafeBufferPointer {
            QueryAppearance.descriptor(mask: [Float](repeating: 0, count: 64), height: S, width: S, pixels: $0.baseAddress!,
                                       input: S, valid: (S, S))
        }
        XCTAssertEqual(z, [Float](repeating: 0, count: QueryAppearance.size))
    }

    func testLossValueAndGradient() {
        // the projection: fixed (same values every call), N(0, 1/size) entries, C/2 rows
        let P = QueryAppearance.projection(channels: 64), D = QueryAppearance.size
        XCTAssertEqual(P.count, 32 * D)
        XCTAssertEqual(P, QueryAppearance.projection(channels: 64))
        let meanSquare = P.reduce(0) { $0 + Double($1 * $1) } / Double(P.count)
        XCTAssertEqual(meanSquare, 1 / Double(D), accuracy: 0.35 / Double(D))
        // targets P f, by hand for a one-hot and a general descriptor
        let onehot: [Float] = [0, 0, 1, 0, 0]
        XCTAssertEqual(QueryAppearance.targets([onehot], channels: 64)[0], (0..<32).map { P[$0 * D + 2] })

        // K = 1, L = 2, C = 8: only the first 4 channels count; mean over the 8 (level, channel) terms
        let q = Tensor((0..<16).map { Float($0) / 10 }, shape: [1, 2, 8], requiresGrad: true)
        let f: [Float] = [0.5, -1, 0.25, 1, 0.5]
        let P8 = QueryAppearance.projection(channels: 8)
        var expected = 0.0
        for l in 0..<2 {
            for c in 0..<4 {
                var t = 0.0
                for d in 0..<D { t += Double(P8[c * D + d]) * Double(f[d]) }
                let v = Double(l * 8 + c) / 10 - t
                expected += v * v
            }
        }
        XCTAssertEqual(Double(QueryAppearance.loss(queries: q, descriptors: [f]).item), expected / 8, accuracy: 1e-5)

        var rng = RNG(seed: 9)
        let qs = Tensor((0..<(3 * 2 * 10)).map { _ in rng.normal() }, shape: [3, 2, 10], requiresGrad: true)
        let ds = (0..<3).map { _ in (0..<D).map { _ in rng.normal() } }
        let r = GradCheckLite.run([qs], tol: 5e-3) { QueryAppearance.loss(queries: $0[0], descriptors: ds) }
        XCTAssertTrue(r.isEmpty, r.joined(separator: "; "))
        let g = qs.grad!.toArray()
        XCTAssertEqual(g[5..<10].map { $0 }, [Float](repeating: 0, count: 5), "channels C/2 ..< C are free")
        XCTAssertNotEqual(g[0], 0)
    }
}

final class ImageTokenAppearanceTests: XCTestCase {
    /// A 16 x 16 input holding a 16 x 16 image, a 2 x 2 token grid (8 x 8 pixel cells), sampled every pixel.
    let S = 16

    func pixels() -> [Float] {
        var p = [Float](repeating: 0, count: 3 * 16 * 16)
        for c in 0..<3 { for i in 0..<(16 * 16) { p[c * 256 + i] = Float(c + 1) * Float(i % 5) } }
        return p
    }

    func testPartsByHand() {
        let px = pixels()
        // one target of two separate parts: a 4 x 4 square at y 1...4, x 1...4 (cell 0) and a triangle-like
        // staircase at y 9...12 (row r holds x 8 ..< 9 + r: 1 + 2 + 3 + 4 = 10 pixels), in cell 3; one stray pixel
        // (y 0, x 15) too small to count
        var mask = [Float](repeating: 0, count: S * S)
        var square: [(Int, Int)] = [], stairs: [(Int, Int)] = []
        for y in 1...4 { for x in 1...4 { mask[y * S + x] = 1; square.append((y, x)) } }
        for r in 0..<4 { for x in 8..<(9 + r) { mask[(9 + r) * S + x] = 1; stairs.append((9 + r, x)) } }
        mask[0 * S + 15] = 1
        let parts = px.withUnsafeBufferPointer {
            ImageTokenAppearance.parts(mask: mask, height: S, width: S, pixels: $0.baseAddress!, input: S, valid: (S, S),
                                       grid: 2, stride: 1, minSamples: 4)
        }
        XCTAssertEqual(parts.count, 2, "the stray pixel is dropped")
        let a = parts[0], b = parts[1]
        XCTAssertEqual(a.descriptor.count, ImageTokenAppearance.size)
        for c in 0..<3 {
            XCTAssertEqual(a.descriptor[c], square.map { Float(c + 1) * Float(($0.0 * S + $0.1) % 5) }.reduce(0, +) / 16, accuracy: 1e-5)
            XCTAssertEqual(b.descriptor[c], stairs.map { Float(c + 1) * Float(($0.0 * S + $0.1) % 5) }.reduce(0, +) / 10, accuracy: 1e-5)
        }
        XCTAssertEqual(a.descriptor[3], 4 * (16.0 / 256).squareRoot(), accuracy: 1e-6)
        XCTAssertEqual(b.descriptor[3], 4 * (10.0 / 256).squareRoot(), accuracy: 1e-6)
        XCTAssertEqual(a.descriptor[4], 1, accuracy: 1e-6)
        XCTAssertEqual(b.descriptor[4], 2 * 10.0 / 16 - 1, accuracy: 1e-6)
        // the square fills every ninth of its box; the staircase's 4 x 4 box split into rows {0, 1}, {2}, {3} and
        // columns {0, 1}, {2}, {3} (offset * 3 / 4): top-left ninth 3 of 4, top-middle 0 of 2, right column of the
        // top rows empty, bottom row full
        XCTAssertEqual(Array(a.descriptor[5...]), [Float](repeating: 1, count: 9))
        let fills: [Double] = [3.0 / 4, 0, 0, 1, 1, 0, 1, 1, 1]
        for k in 0..<9 { XCTAssertEqual(Double(b.descriptor[5 + k]), 2 * fills[k] - 1, accuracy: 1e-6, "ninth \(k)") }
        XCTAssertEqual(a.cells, [0])
        XCTAssertEqual(b.cells, [3])

        // a part across the middle lies in every cell it covers enough of (2 % of a 64-pixel cell: 2 pixels)
        var wide = [Float](repeating: 0, count: S * S)
        for y in 6...9 { for x in 7...8 { wide[y * S + x] = 1 } }
        let w = px.withUnsafeBufferPointer {
            ImageTokenAppearance.parts(mask: wide, height: S, width: S, pixels: $0.baseAddress!, input: S, valid: (S, S),
                                       grid: 2, stride: 1, minSamples: 4)
        }
        XCTAssertEqual(w.map(\.cells), [[0, 1, 2, 3]])
        // an empty mask and a mask of the wrong size give no parts, never a trap
        XCTAssertTrue(px.withUnsafeBufferPointer {
            ImageTokenAppearance.parts(mask: [Float](repeating: 0, count: S * S), height: S, width: S, pixels: $0.baseAddress!,
                                       input: S, valid: (S, S), grid: 2)
        }.isEmpty)
        XCTAssertTrue(px.withUnsafeBufferPointer {
            ImageTokenAppearance.parts(mask: [1, 1], height: S, width: S, pixels: $0.baseAddress!, input: S, valid: (S, S), grid: 2)
        }.isEmpty)
    }

    func testTargetsSumThePartsOfACellOnce() {
        let D = ImageTokenAppearance.size, C = 8
        let P = ImageTokenAppearance.projection(channels: C)
        XCTAssertEqual(P.count, 4 * D)
        XCTAssertEqual(P, ImageTokenAppearance.projection(channels: C))
        XCTAssertNotEqual(Array(P.prefix(5)), Array(QueryAppearance.projection(channels: C).prefix(5)), "its own seed")
        func onehot(_ i: Int) -> [Float] { (0..<D).map { $0 == i ? 1 : 0 } }
        let p = ImageTokenAppearance.Part(descriptor: onehot(0), cells: [0, 2], key: [1, 2, 3])
        let q = ImageTokenAppearance.Part(descriptor: onehot(6), cells: [2], key: [7, 8])
        // p shown twice (two questions about the same object) counts once; a part in no cell adds nothing
        let none = ImageTokenAppearance.Part(descriptor: onehot(1), cells: [], key: [9])
        let (cells, t) = ImageTokenAppearance.targets([p, q, p, none], channels: C)
        XCTAssertEqual(cells, [0, 2])
        XCTAssertEqual(t[0], (0..<4).map { P[$0 * D + 0] })
        for c in 0..<4 { XCTAssertEqual(t[1][c], P[c * D + 0] + P[c * D + 6], accuracy: 1e-6) }
    }

    func testLossValueAndGradient() {
        // G = 4 tokens of C = 6 channels; cells 1 and 3 supervised; only the first 3 channels count, the tokens read
        // at 1 / scale
        let x = Tensor((0..<24).map { Float($0) / 100 }, shape: [4, 6], requiresGrad: true)
        let t: [[Float]] = [[0.5, -1, 0.25], [1, 0, -0.5]]
        var expected = 0.0
        for (k, cell) in [1, 3].enumerated() {
            for c in 0..<3 {
                let v = Double(cell * 6 + c) / 100 / Double(ImageTokenAppearance.scale) - Double(t[k][c])
                expected += v * v
            }
        }
        XCTAssertEqual(Double(ImageTokenAppearance.loss(tokens: x, cells: [1, 3], targets: t).item), expected / 3, accuracy: 1e-5)
        XCTAssertEqual(ImageTokenAppearance.loss(tokens: x, cells: [], targets: []).item, 0)

        var rng = RNG(seed: 11)
        let xs = Tensor((0..<(5 * 8)).map { _ in rng.normal() * 0.1 }, shape: [5, 8], requiresGrad: true)
        let ts = (0..<2).map { _ in (0..<4).map { _ in rng.normal() } }
        let r = GradCheckLite.run([xs], tol: 5e-3) { ImageTokenAppearance.loss(tokens: $0[0], cells: [0, 4], targets: ts) }
        XCTAssertTrue(r.isEmpty, r.joined(separator: "; "))
        let g = xs.grad!.toArray()
        XCTAssertEqual(Array(g[4..<8]), [Float](repeating: 0, count: 4), "channels C/2 ..< C are free")
        XCTAssertEqual(Array(g[8..<32]), [Float](repeating: 0, count: 24), "unsupervised cells are free")
        XCTAssertNotEqual(g[0], 0)
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
