import Foundation
import PixelData
import PixelModel
import PixelTensor

/// Linear probes (`pixellm probe`): how much of a label a feature vector states linearly. A ridge classifier on
/// one-hot targets over standardised features, the ridge chosen on a validation part of the training rows, refitted
/// on all training rows and scored on held-out rows. Used to ask what a vision tower encodes about the objects of
/// a scene (the word positions of their names: size, colour, shape in the synthetic set) without training a model.
public enum LinearProbe {
    /// Which part a row belongs to.
    public enum Part: Sendable { case train, validation, test }

    public struct Result: Equatable, Sendable {
        /// Held-out accuracy of the refitted classifier.
        public var accuracy: Double
        /// Held-out accuracy of always answering the most frequent training class.
        public var chance: Double
        /// The ridge the validation part chose.
        public var lambda: Double
        public var trainRows: Int
        public var testRows: Int
    }

    public static let defaultLambdas: [Double] = [0.01, 0.1, 1, 10, 100, 1000]

    /// `features`: rows of equal length; `labels`: class index per row (0 ..< classCount); `parts`: the role of each
    /// row. Returns nil when a part the fit needs is empty. Deterministic (no random draws).
    public static func fit(features: [[Float]], labels: [Int], classCount: Int, parts: [Part],
                           lambdas: [Double] = defaultLambdas) -> Result? {
        precondition(features.count == labels.count && labels.count == parts.count, "LinearProbe.fit: rows, labels and parts differ in count")
        precondition(classCount >= 1 && labels.allSatisfy { $0 >= 0 && $0 < classCount }, "LinearProbe.fit: a label outside 0..<\(classCount)")
        precondition(!lambdas.isEmpty && lambdas.allSatisfy { $0 > 0 }, "LinearProbe.fit: ridges must be > 0")
        let train = parts.indices.filter { parts[$0] == .train }
        let validation = parts.indices.filter { parts[$0] == .validation }
        let test = parts.indices.filter { parts[$0] == .test }
        guard !train.isEmpty, !validation.isEmpty, !test.isEmpty, let D = features.first?.count, D > 0 else { return nil }
        precondition(features.allSatisfy { $0.count == D }, "LinearProbe.fit: rows of different lengths")

        func standardiser(_ rows: [Int]) -> (mean: [Double], scale: [Double]) {
            var mean = [Double](repeating: 0, count: D), sq = [Double](repeating: 0, count: D)
            for r in rows { for d in 0..<D { let v = Double(features[r][d]); mean[d] += v; sq[d] += v * v } }
            let n = Double(rows.count)
            var scale = [Double](repeating: 1, count: D)
            for d in 0..<D {
                mean[d] /= n
                let variance = max(0, sq[d] / n - mean[d] * mean[d])
                scale[d] = variance > 1e-12 ? 1 / variance.squareRoot() : 0   // a constant feature says nothing
            }
            return (mean, scale)
        }
        // the standardised rows with a bias column, and their Gram matrix, per set of fitting rows (the ridge and
        // the labels change only the diagonal and the right-hand side)
        let E = D + 1
        struct Fit { var rows: [Int]; var x: [Int: [Double]]; var gram: [Double] }
        func prepare(_ fitRows: [Int], scoring: [Int]) -> Fit {
            let (mean, scale) = standardiser(fitRows)
            var x: [Int: [Double]] = [:]
            for r in fitRows + scoring { x[r] = (0..<D).map { (Double(features[r][$0]) - mean[$0]) * scale[$0] } + [1] }
            var A = [Double](repeating: 0, count: E * E)
            for r in fitRows {
                let v = x[r]!
                for i in 0..<E where v[i] != 0 {
                    let vi = v[i]
                    for j in 0...i { A[i * E + j] += vi * v[j] }
                }
            }
            for i in 0..<E { for j in 0..<i { A[j * E + i] = A[i * E + j] } }
            return Fit(rows: fitRows, x: x, gram: A)
        }
        func accuracy(_ fit: Fit, _ scoreRows: [Int], lambda: Double) -> Double {
            // (X^T X + lambda I) W = X^T Y; the bias column is left unpenalised (but for a tiny ridge)
            var A = fit.gram, B = [Double](repeating: 0, count: E * classCount)
            for i in 0..<D { A[i * E + i] += lambda }
            A[D * E + D] += 1e-9 * Double(fit.rows.count)
            for r in fit.rows {
                let v = fit.x[r]!
                for i in 0..<E { B[i * classCount + labels[r]] += v[i] }
            }
            let W = solveSymmetric(A, B, n: E, columns: classCount)
            var right = 0
            for r in scoreRows {
                let v = fit.x[r]!
                var best = 0, bestScore = -Double.infinity
                for c in 0..<classCount {
                    var s = 0.0
                    for i in 0..<E { s += v[i] * W[i * classCount + c] }
                    if s > bestScore { bestScore = s; best = c }
                }
                if best == labels[r] { right += 1 }
            }
            return Double(right) / Double(scoreRows.count)
        }
        let first = prepare(train, scoring: validation)
        var chosen = lambdas[0], bestValidation = -1.0
        for l in lambdas {
            let a = accuracy(first, validation, lambda: l)
            if a > bestValidation { bestValidation = a; chosen = l }
        }
        let fitRows = train + validation
        var counts = [Int](repeating: 0, count: classCount)
        for r in fitRows { counts[labels[r]] += 1 }
        let majority = counts.indices.max { counts[$0] < counts[$1] }!
        let chance = Double(test.filter { labels[$0] == majority }.count) / Double(test.count)
        return Result(accuracy: accuracy(prepare(fitRows, scoring: test), test, lambda: chosen), chance: chance, lambda: chosen,
                      trainRows: fitRows.count, testRows: test.count)
    }

    /// A X = B for a symmetric positive definite A [n, n] (row-major) and B [n, columns], by Cholesky.
    public static func solveSymmetric(_ A: [Double], _ B: [Double], n: Int, columns: Int) -> [Double] {
        precondition(A.count == n * n && B.count == n * columns, "solveSymmetric: shapes")
        var L = [Double](repeating: 0, count: n * n)
        for i in 0..<n {
            for j in 0...i {
                var s = A[i * n + j]
                for k in 0..<j { s -= L[i * n + k] * L[j * n + k] }
                if i == j {
                    L[i * n + i] = max(s, 1e-300).squareRoot()
                } else {
                    L[i * n + j] = s / L[j * n + j]
                }
            }
        }
        var X = B
        for c in 0..<columns {
            for i in 0..<n {   // L y = b
                var s = X[i * columns + c]
                for k in 0..<i { s -= L[i * n + k] * X[k * columns + c] }
                X[i * columns + c] = s / L[i * n + i]
            }
            for i in stride(from: n - 1, through: 0, by: -1) {   // L^T x = y
                var s = X[i * columns + c]
                for k in (i + 1)..<n { s -= L[k * n + i] * X[k * columns + c] }
                X[i * columns + c] = s / L[i * n + i]
            }
        }
        return X
    }
}

/// The objects of a MUSE-layout split and what a model's vision side holds at each of them: the features of the
/// patch-grid cell under the centroid of the object's mask (CLIP's deep and mid hidden states) and of the LLM image
/// token whose pooled cell holds it (the mm_projector output). Each object counts once per image (the same
/// annotation answering several questions), labelled with the words of its name.
public enum ObjectProbe {
    /// The feature kinds, in report order.
    public static let kinds = ["vision.deep", "vision.mid", "llm.image_token"]

    public struct Object: Sendable {
        public var image: Int
        public var name: String
        /// One vector per kind in `kinds`.
        public var features: [[Float]]
    }

    /// The row-major cell (of a g x g grid over the S x S model input) under the centroid of `mask` ([H, W] at the
    /// original size), the image occupying the top-left `valid` (h', w') of the input; nil for an empty mask.
    public static func centroidCell(_ mask: BinaryMask, valid: (height: Int, width: Int), input S: Int, grid g: Int) -> Int? {
        var sx = 0.0, sy = 0.0, n = 0.0
        for y in 0..<mask.height {
            for x in 0..<mask.width where mask.data[y * mask.width + x] != 0 { sx += Double(x) + 0.5; sy += Double(y) + 0.5; n += 1 }
        }
        guard n > 0, g > 0, S > 0 else { return nil }
        let px = sx / n * Double(valid.width) / Double(mask.width), py = sy / n * Double(valid.height) / Double(mask.height)
        let i = min(g - 1, max(0, Int(py * Double(g) / Double(S)))), j = min(g - 1, max(0, Int(px * Double(g) / Double(S))))
        return i * g + j
    }

    /// Each of the first `images` images of `reader` (fewer when the split is smaller) that reads: its index, the sample,
    /// the model input of size `S`, and its objects (each annotation once per image) with the cell of a g x g grid under each
    /// one's mask centroid. Images the reader skips (a missing file, a bad mask) are returned, in words.
    public static func forEachImage(reader: MUSEReader, images: Int, size S: Int, grid g: Int, progress: ((Int, Int) -> Void)? = nil,
                                    _ body: (_ index: Int, _ sample: DataSample, _ input: CLIPImageInput, _ objects: [(name: String, cell: Int)]) throws -> Void)
        throws -> [String] {
        let pre = CLIPImagePreprocessor(size: S)
        var skipped: [String] = []
        let n = min(images, reader.count)
        for index in 0..<n {
            progress?(index, n)
            let sample: DataSample
            do { sample = try reader.sample(index, seed: 0) } catch let e as SampleSkip { skipped.append("\(e)"); continue }
            let input = pre(try RGBImage.load(sample.imagePath))
            var seen = Set<String>(), objects: [(name: String, cell: Int)] = []
            for target in sample.targets where seen.insert(target.provenance).inserted {
                let mask = target.mask.decode()
                guard mask.height == sample.height, mask.width == sample.width,
                      let cell = centroidCell(mask, valid: input.validSize, input: S, grid: g) else { continue }
                objects.append((target.name, cell))
            }
            try body(index, sample, input, objects)
        }
        return skipped
    }

    /// The most common word count of `names` (ties: the smaller), 0 when every name is empty.
    public static func commonWordCount(_ names: [[String]]) -> Int {
        var byCount = [Int: Int]()
        for w in names where !w.isEmpty { byCount[w.count, default: 0] += 1 }
        return byCount.max(by: { $0.value < $1.value || ($0.value == $1.value && $0.key > $1.key) })?.key ?? 0
    }

    /// The objects of the first `images` images of `reader` and their features. Images the reader skips are counted.
    public static func collect(model: PixelLMForCausalLM, reader: MUSEReader, images: Int,
                               progress: ((Int, Int) -> Void)? = nil) throws -> (objects: [Object], skipped: [String]) {
        let S = model.config.resizeVisionTowerSize, tower = model.visionTower
        let g = tower.grid, k = tower.llmPool, h = g / k
        var objects: [Object] = []
        let skipped = try forEachImage(reader: reader, images: images, size: S, grid: g, progress: progress) { index, _, input, found in
            let (deep, mid, tokens) = Autograd.noGrad { () -> (Tensor, Tensor, Tensor) in
                let f = tower(input.pixels.reshape([1] + input.pixels.shape), validSizes: [input.validSize])
                return (f.deep.squeeze(0), f.mid.squeeze(0), model.mmProjector(tower.poolTokens(f.deep)).squeeze(0))
            }
            // each [cells, C] feature map read out once per image; an object takes its row
            let maps = [(deep.toArray(), deep.dim(1)), (mid.toArray(), mid.dim(1)), (tokens.toArray(), tokens.dim(1))]
            func row(_ k: Int, _ r: Int) -> [Float] { Array(maps[k].0[(r * maps[k].1)..<((r + 1) * maps[k].1)]) }
            for (name, cell) in found {
                let pooled = (cell / g / k) * h + (cell % g) / k
                objects.append(Object(image: index, name: name, features: [row(0, cell), row(1, cell), row(2, pooled)]))
            }
        }
        return (objects, skipped)
    }

    public struct WordReport: Sendable {
        /// 1-based word position in the names.
        public var position: Int
        public var classes: [String]
        /// One result per feature kind (nil when a part was empty).
        public var results: [LinearProbe.Result?]
    }

    /// Per word position of the names (those of the most common word count), a linear probe per feature kind;
    /// images with index % 5 == 4 are held out, == 3 choose the ridge. Returns the word count used and the reports.
    public static func probe(_ objects: [Object]) -> (words: Int, used: Int, reports: [WordReport]) {
        let split = objects.map { $0.name.split(separator: " ").map(String.init) }
        let words = commonWordCount(split)
        guard words > 0 else { return (0, 0, []) }
        let rows = objects.indices.filter { split[$0].count == words }
        let parts: [LinearProbe.Part] = rows.map { r in
            switch objects[r].image % 5 { case 4: return .test; case 3: return .validation; default: return .train }
        }
        var reports: [WordReport] = []
        for position in 0..<words {
            let classes = Array(Set(rows.map { split[$0][position] })).sorted()
            let labels = rows.map { classes.firstIndex(of: split[$0][position])! }
            let results = kinds.indices.map { kind in
                LinearProbe.fit(features: rows.map { objects[$0].features[kind] }, labels: labels, classCount: classes.count, parts: parts)
            }
            reports.append(WordReport(position: position + 1, classes: classes, results: results))
        }
        return (words, rows.count, reports)
    }
}
