import PixelTensor

/// Loss weights and options (train_ds.py defaults: ce 1.0, bce 2.0, dice 0.5).
public struct LossOptions: Sendable, Equatable {
    public var ceWeight: Float = 1.0
    public var bceWeight: Float = 2.0
    public var diceWeight: Float = 0.5
    /// The paper's target refinement loss: pixels that two or more of one question's predicted masks
    /// claim get BCE weight `alpha` instead of 1. nil = off (the released code has it commented out).
    public var refinementAlpha: Float? = nil
    /// pixellm's auxiliary SEG-query separation (not in the reference; nil = off): per image, for every pair of its
    /// targets whose ground truths differ (IoU < 0.5), relu(cos(q_i, q_j) - margin) of their fused queries (summed;
    /// `LossTerms.separation`). It pushes the queries of different targets apart, against the collapse of the SEG
    /// hidden states of a model trained from scratch. The weight is the trainer's.
    public var separationMargin: Float? = nil
    /// pixellm's auxiliary SEG-query grounding (not in the reference; nil = off): per image and feature level, each
    /// supervised target's fused query must pick out its own region among the image's distinct target regions:
    /// cross-entropy over cos(q_k, r_j) / temperature, r_j the mean of the decoder's image embedding E over target j's
    /// ground truth (area-weighted on E's grid) minus its mean over the whole grid. Summed over targets and levels (`LossTerms.grounding`).
    public var groundingTemperature: Float? = nil
    /// pixellm's auxiliary SEG-query appearance loss (not in the reference; false = off): the first half of the
    /// channels of each supervised target's fused query, at every level, regress a fixed projection of the target's
    /// appearance measured on the model input (mean colour, size, fill of its box; `QueryAppearance`).
    /// Summed over targets of the mean squared error over levels and channels (`LossTerms.appearance`).
    public var queryAppearance = false
    /// pixellm's auxiliary image-token appearance loss (not in the reference; false = off): half the channels of
    /// each LLM image token whose cell holds an object some ground truth of the micro-batch shows state what the
    /// objects there look like (`ImageTokenAppearance`). Summed over images and cells (`LossTerms.tokenAppearance`).
    public var imageTokenAppearance = false
    /// Compute the LM head only at the positions whose next token is supervised (training): the same cross-entropy
    /// and gradients without the logits of the image and prompt positions ([M, V] instead of [Cn, T', V]: at the 7B
    /// recipe about 1 GB and a tenth of the step less). Off by default: `pixellm forward` and the parity tests compare
    /// every position's logits.
    public var supervisedLogitsOnly = false
    public init() {}
}

/// Every loss term of a step, reported separately (scalars with autograd history).
public struct LossTerms {
    /// Answer-token cross-entropy.
    public var ce: Tensor
    /// Per-mask-mean sigmoid BCE, averaged over all masks of the micro-batch.
    public var bce: Tensor
    /// DICE, averaged over masks.
    public var dice: Tensor
    /// Target refinement: the extra BCE on pixels claimed by >= 2 predictions of one question,
    /// (alpha - 1) x BCE there, averaged like `bce`. Zero when off.
    public var refine: Tensor
    /// ce_w * ce + bce_w * (bce + refine) + dice_w * dice.
    public var total: Tensor
    /// Masks in the micro-batch.
    public var maskCount: Int
    /// The query separation sum (zero when off) and the target pairs it covers.
    public var separation: Tensor = Tensor(scalar: 0)
    public var separationPairs = 0
    /// The query grounding sum (zero when off) and the (target, level) terms in it.
    public var grounding: Tensor = Tensor(scalar: 0)
    public var groundingTerms = 0
    /// The query appearance sum (zero when off) and the targets in it.
    public var appearance: Tensor = Tensor(scalar: 0)
    public var appearanceTargets = 0
    /// The image-token appearance sum (zero when off) and the cells in it.
    public var tokenAppearance: Tensor = Tensor(scalar: 0)
    public var tokenAppearanceCells = 0
}

/// pixellm's auxiliary SEG-query separation (LossOptions.separationMargin).
public enum QuerySeparation {
    /// Pairs (i < j) of targets whose ground-truth masks differ: IoU < 0.5. `masks`: K masks of one image, equal sizes.
    public static func differingPairs(_ masks: [[Float]]) -> [(Int, Int)] {
        var out: [(Int, Int)] = []
        for i in masks.indices {
            for j in (i + 1)..<masks.count {
                var inter = 0, union = 0
                for (a, b) in zip(masks[i], masks[j]) {
                    let x = a > 0.5, y = b > 0.5
                    if x && y { inter += 1 }
                    if x || y { union += 1 }
                }
                if union == 0 || Double(inter) < 0.5 * Double(union) { out.append((i, j)) }
            }
        }
        return out
    }

    /// sum over `pairs` of relu(cos(q_i, q_j) - margin), q the flattened queries [K, L, C] -> [K, L*C].
    public static func loss(queries: Tensor, pairs: [(Int, Int)], margin: Float) -> Tensor {
        let K = queries.dim(0)
        guard !pairs.isEmpty, K > 1 else { return Tensor(scalar: 0) }
        let q = queries.reshape([K, queries.count / K])
        let norm = (q.square().sum(axes: [1], keepDims: true) + Tensor(scalar: 1e-8)).sqrt()
        let n = q / norm
        let cos = n.matmul(n.transpose(0, 1))
        let w = Tensor.zeros([K, K])
        for (i, j) in pairs { w[i, j] = 1 }
        return ((cos - margin).relu() * w).sum()
    }
}

/// pixellm's auxiliary SEG-query grounding (LossOptions.groundingTemperature).
public enum QueryGrounding {
    /// A ground-truth mask [H, W] (original size, row-major, > 0.5 = target) as area fractions on the g x g grid of the
    /// S x S model input, where the image occupies the top-left `valid` (h', w') after the longest-side resize.
    public static func gridWeights(_ mask: [Float], height H: Int, width W: Int, valid: (height: Int, width: Int), input S: Int,
                                   grid g: Int) -> [Float] {
        var w = [Float](repeating: 0, count: g * g), area = [Float](repeating: 0, count: g * g)
        let sy = Double(valid.height) / Double(H) * Double(g) / Double(S), sx = Double(valid.width) / Double(W) * Double(g) / Double(S)
        for y in 0..<H {
            let i = min(g - 1, Int((Double(y) + 0.5) * sy))
            for x in 0..<W {
                let j = min(g - 1, Int((Double(x) + 0.5) * sx))
                area[i * g + j] += 1
                if mask[y * W + x] > 0.5 { w[i * g + j] += 1 }
            }
        }
        for k in 0..<(g * g) where area[k] > 0 { w[k] /= area[k] }
        return w
    }

    /// sum over targets k (rows of `queries` [K, L, C]) and levels l of -log softmax_j(cos(q_kl, r_jl) / t)[group(k)],
    /// r_jl = sum_p E[l, :, p] w_j(p) / sum_p w_j(p) - mean_p E[l, :, p] for the distinct regions j (`regions` [J, g*g] grid weights, each
    /// with a positive sum; `group[k]` the region of target k). E: [L, C, g, g].
    public static func loss(queries: Tensor, embeddings E: Tensor, regions: [[Float]], group: [Int], temperature t: Float) -> Tensor {
        let K = queries.dim(0), L = queries.dim(1), C = queries.dim(2), J = regions.count
        let G = E.dim(2) * E.dim(3)
        guard K > 0, J > 1 else { return Tensor(scalar: 0) }
        // region means minus the image mean (over every grid cell): what tells the regions apart, not what they share
        var wv: [Float] = []
        for r in regions { let s = r.reduce(0, +); wv += r.map { $0 / s - 1 / Float(G) } }
        let w = Tensor(wv, shape: [J, G])
        var total: Tensor? = nil
        func unit(_ x: Tensor) -> Tensor { x / (x.square().sum(axes: [1], keepDims: true) + Tensor(scalar: 1e-8)).sqrt() }
        for l in 0..<L {
            let feats = E.slice(axis: 0, l, l + 1).reshape([C, G])                      // [C, G]
            let r = unit(w.matmul(feats.transpose(0, 1)))                               // [J, C]
            let q = unit(queries.slice(axis: 1, l, l + 1).reshape([K, C]))              // [K, C]
            let logits = q.matmul(r.transpose(0, 1)) * (1 / t)                          // [K, J]
            let ce = crossEntropy(logits, targets: group, ignoreIndex: -100) * Float(K)  // mean -> sum
            total = total.map { $0 + ce } ?? ce
        }
        return total!
    }
}

/// pixellm's auxiliary SEG-query appearance loss (LossOptions.queryAppearance). A model trained from scratch starts
/// with SEG queries that say nothing about their target and a decoder that therefore learns to ignore them: the masks
/// stay question-agnostic foreground blobs. Feeding the decoder a query that is a fixed projection of the target's
/// appearance instead (a diagnostic run) makes the same decoder learn target-specific masks at once (DICE 0.41 against
/// 0.73 after 230 steps). This loss asks the language model for such queries: half of each query's channels must
/// state what the target looks like, measured from the pixels under its ground truth. Nothing about a dataset's
/// vocabulary is assumed; any dataset with masks supplies the targets. Where the target is (its centre) is left out:
/// the words of a question cannot say it, and regressing it fought the language loss without helping the masks.
public enum QueryAppearance {
    /// Channels of the descriptor: mean normalised R, G, B of the target's pixels; 4 sqrt(area fraction); 2 x area /
    /// box area - 1 (how much of its bounding box the target fills: a shape cue).
    public static let size = 5

    /// The descriptor of one target. `mask`: [H, W] at the original size (> 0.5 = target); `pixels`: the model input
    /// [3, S, S] (normalised, row-major) in which the image occupies the top-left `valid` (h', w'). The model input is
    /// sampled every `stride` pixels; a pixel belongs to the target when its position in the original image does.
    /// An empty target (no sampled pixel) gives zeros.
    public static func descriptor(mask: [Float], height H: Int, width W: Int, pixels: UnsafePointer<Float>, input S: Int,
                                  valid: (height: Int, width: Int), stride: Int = 2) -> [Float] {
        var sum = [Double](repeating: 0, count: 3), n = 0.0, total = 0.0
        var minX = Int.max, maxX = -1, minY = Int.max, maxY = -1
        let plane = S * S
        for sy in Swift.stride(from: 0, to: valid.height, by: stride) {
            let y = min(H - 1, Int((Double(sy) + 0.5) * Double(H) / Double(valid.height)))
            for sx in Swift.stride(from: 0, to: valid.width, by: stride) {
                total += 1
                let x = min(W - 1, Int((Double(sx) + 0.5) * Double(W) / Double(valid.width)))
                guard mask[y * W + x] > 0.5 else { continue }
                for c in 0..<3 { sum[c] += Double(pixels[c * plane + sy * S + sx]) }
                n += 1
                minX = min(minX, sx); maxX = max(maxX, sx); minY = min(minY, sy); maxY = max(maxY, sy)
            }
        }
        guard n > 0, total > 0 else { return [Float](repeating: 0, count: size) }
        let box = Double((maxX - minX) / stride + 1) * Double((maxY - minY) / stride + 1)
        return [Float(sum[0] / n), Float(sum[1] / n), Float(sum[2] / n), Float(4 * (n / total).squareRoot()), Float(2 * n / box - 1)]
    }

    /// The fixed projection P [C/2, size] spreading a descriptor over the first half of a C-channel query: entries
    /// N(0, 1/size) from a fixed seed, so that every target channel has about the descriptor's mean square and the
    /// target's norm is about sqrt(C/2) times the descriptor's RMS: the scale of the decoder's own tokens.
    public static func projection(channels C: Int) -> [Float] {
        fixedProjection(rows: C / 2, columns: size, seed: 0x5145_5259_4150_5052)
    }

    /// N(0, 1/columns) entries of a rows x columns matrix (row-major) from `seed`: the fixed projections of the
    /// appearance losses.
    static func fixedProjection(rows: Int, columns: Int, seed: UInt64) -> [Float] {
        var rng = RNG(seed: seed)
        let s = Float(1 / Double(columns).squareRoot())
        return (0..<(rows * columns)).map { _ in rng.normal() * s }
    }

    /// P f for a row-major P of `f.count` columns.
    static func project(_ P: [Float], _ f: [Float]) -> [Float] {
        let D = f.count
        return (0..<(P.count / D)).map { c in (0..<D).reduce(Float(0)) { $0 + P[c * D + $1] * f[$1] } }
    }

    /// The regression targets P f of `descriptors` (K rows of `size` values): K rows of C/2 values.
    public static func targets(_ descriptors: [[Float]], channels C: Int) -> [[Float]] {
        let P = projection(channels: C)
        return descriptors.map { project(P, $0) }
    }

    /// sum over targets k of mean over levels l and channels c < C/2 of (q[k, l, c] - (P f_k)[c])^2; queries [K, L, C],
    /// `descriptors` K rows of `size` values.
    public static func loss(queries: Tensor, descriptors: [[Float]]) -> Tensor {
        let K = queries.dim(0), L = queries.dim(1), C = queries.dim(2), half = C / 2
        precondition(descriptors.count == K && descriptors.allSatisfy { $0.count == size } && half >= 1,
                     "QueryAppearance.loss: \(K) queries of \(C) channels, \(descriptors.count) descriptors")
        guard K > 0 else { return Tensor(scalar: 0) }
        var t: [Float] = []
        for row in targets(descriptors, channels: C) { for _ in 0..<L { t += row } }
        let diff = queries.slice(axis: 2, 0, half) - Tensor(t, shape: [K, L, half])
        return diff.square().sum() * (1 / Float(L * half))
    }
}

/// pixellm's auxiliary image-token appearance loss (LossOptions.imageTokenAppearance): the dense counterpart of
/// `QueryAppearance`, on the LLM's image tokens (the mm_projector output spliced into the prompt). A model trained
/// from scratch answers "Where are all the orange objects?" with objects the scene does not hold: its language
/// model never learns to read what is where out of the image tokens, which nothing asks to say it. Here every
/// object the micro-batch's ground truths show (each connected part of a target mask, counted once per image)
/// is described from the pixels under it (mean colour, size, fill of its box and a 3 x 3 map of that fill: a shape
/// cue), and half the channels of every image token whose cell holds such an object must state the sum of a fixed
/// projection of those descriptions. Nothing about a dataset's vocabulary is assumed.
public enum ImageTokenAppearance {
    /// Channels of a description: `QueryAppearance`'s five (mean normalised R, G, B; 4 sqrt(area fraction);
    /// 2 x fill of the box - 1), then 2 x fill - 1 of each cell of a 3 x 3 split of the box, row by row.
    public static let size = QueryAppearance.size + 9
    /// Target scale: the tokens' channels regress `scale` times a unit-variance target (the image tokens live at
    /// the scale of the LLM's embeddings, not at 1).
    public static let scale: Float = 0.1
    /// A part of an object counts in a grid cell when it covers at least this fraction of the cell.
    public static let minCellFraction = 0.02

    /// One object: its description and the cells (row-major on the token grid) it occupies.
    public struct Part: Equatable {
        public var descriptor: [Float]
        public var cells: [Int]
        /// The sampled positions it covers (index into the sampling grid), to count an object once per image.
        public var key: [Int]
    }

    /// The connected parts (4-neighbours on the model input sampled every `stride` pixels; parts of fewer than
    /// `minSamples` samples dropped) of one target. `mask`: [H, W] at the original size (> 0.5 = target);
    /// `pixels`: the model input [3, S, S] in which the image occupies the top-left `valid`; `grid`: the token grid.
    public static func parts(mask: [Float], height H: Int, width W: Int, pixels: UnsafePointer<Float>, input S: Int,
                             valid: (height: Int, width: Int), grid g: Int, stride: Int = 2, minSamples: Int = 4) -> [Part] {
        let h = (valid.height + stride - 1) / stride, w = (valid.width + stride - 1) / stride
        guard h > 0, w > 0, H > 0, W > 0, mask.count == H * W, g > 0 else { return [] }
        var inside = [Bool](repeating: false, count: h * w)
        for i in 0..<h {
            let y = min(H - 1, Int((Double(i * stride) + 0.5) * Double(H) / Double(valid.height)))
            for j in 0..<w {
                let x = min(W - 1, Int((Double(j * stride) + 0.5) * Double(W) / Double(valid.width)))
                inside[i * w + j] = mask[y * W + x] > 0.5
            }
        }
        let total = Double(h * w), plane = S * S
        let perCell = Double(S) / Double(g) / Double(stride)
        var seen = [Bool](repeating: false, count: h * w)
        var result: [Part] = []
        for start in 0..<(h * w) where inside[start] && !seen[start] {
            var stack = [start], members: [Int] = []
            seen[start] = true
            while let p = stack.popLast() {
                members.append(p)
                let i = p / w, j = p % w
                for (di, dj) in [(-1, 0), (1, 0), (0, -1), (0, 1)] {
                    let a = i + di, b = j + dj
                    guard a >= 0, a < h, b >= 0, b < w else { continue }
                    let q = a * w + b
                    if inside[q] && !seen[q] { seen[q] = true; stack.append(q) }
                }
            }
            guard members.count >= minSamples else { continue }
            members.sort()
            var sum = [Double](repeating: 0, count: 3)
            var minI = Int.max, maxI = -1, minJ = Int.max, maxJ = -1
            var cellCount = [Int: Int]()
            for p in members {
                let i = p / w, j = p % w, sy = i * stride, sx = j * stride
                for c in 0..<3 { sum[c] += Double(pixels[c * plane + sy * S + sx]) }
                minI = min(minI, i); maxI = max(maxI, i); minJ = min(minJ, j); maxJ = max(maxJ, j)
                let cell = min(g - 1, sy * g / S) * g + min(g - 1, sx * g / S)
                cellCount[cell, default: 0] += 1
            }
            let n = Double(members.count), bh = maxI - minI + 1, bw = maxJ - minJ + 1
            var d: [Float] = [Float(sum[0] / n), Float(sum[1] / n), Float(sum[2] / n), Float(4 * (n / total).squareRoot()),
                              Float(2 * n / Double(bh * bw) - 1)]
            // the 3 x 3 fill map: each sample of the box in the third (of rows, of columns) its offset falls in
            var hit = [Double](repeating: 0, count: 9), all = [Double](repeating: 0, count: 9)
            let memberSet = Set(members)
            for i in minI...maxI {
                let r = min(2, (i - minI) * 3 / bh)
                for j in minJ...maxJ {
                    let k = r * 3 + min(2, (j - minJ) * 3 / bw)
                    all[k] += 1
                    if memberSet.contains(i * w + j) { hit[k] += 1 }
                }
            }
            for k in 0..<9 { d.append(all[k] > 0 ? Float(2 * hit[k] / all[k] - 1) : -1) }
            let cells = cellCount.filter { Double($0.value) >= minCellFraction * perCell * perCell }.keys.sorted()
            result.append(Part(descriptor: d, cells: cells, key: members))
        }
        return result
    }

    /// The fixed projection [C/2, size] (N(0, 1/size) from its own seed), as `QueryAppearance.projection`.
    public static func projection(channels C: Int) -> [Float] {
        QueryAppearance.fixedProjection(rows: C / 2, columns: size, seed: 0x494D_4147_4541_5050)
    }

    /// The supervised cells (sorted) and their targets (C/2 values each): per cell, the sum over the parts in it
    /// of P f. Parts with the same `key` count once.
    public static func targets(_ parts: [Part], channels C: Int) -> (cells: [Int], targets: [[Float]]) {
        let P = projection(channels: C), D = size, half = C / 2
        var seen = Set<[Int]>(), sums: [Int: [Float]] = [:]
        for part in parts where !part.cells.isEmpty && seen.insert(part.key).inserted {
            precondition(part.descriptor.count == D, "ImageTokenAppearance: a description of \(part.descriptor.count) values, not \(D)")
            let t = QueryAppearance.project(P, part.descriptor)
            for cell in part.cells {
                sums[cell] = zip(sums[cell] ?? [Float](repeating: 0, count: half), t).map { $0 + $1 }
            }
        }
        let cells = sums.keys.sorted()
        return (cells, cells.map { sums[$0]! })
    }

    /// sum over the supervised cells of the mean over channels c < C/2 of (x[cell, c] / scale - target[c])^2;
    /// `tokens` [G, C] (one image's LLM image tokens).
    public static func loss(tokens: Tensor, cells: [Int], targets: [[Float]]) -> Tensor {
        let C = tokens.dim(1), half = C / 2
        precondition(cells.count == targets.count && targets.allSatisfy { $0.count == half } && half >= 1,
                     "ImageTokenAppearance.loss: \(cells.count) cells, \(targets.count) targets of \(C / 2) channels")
        guard !cells.isEmpty else { return Tensor(scalar: 0) }
        let x = tokens.indexSelect(axis: 0, cells).slice(axis: 1, 0, half) * (1 / scale)
        let diff = x - Tensor(targets.flatMap { $0 }, shape: [cells.count, half])
        return diff.square().sum() * (1 / Float(half))
    }
}

/// One question's masks: predicted logits and targets, [K, H, W] at the image's original resolution.
public struct QuestionMasks {
    public var logits: Tensor
    public var targets: Tensor
    public init(logits: Tensor, targets: Tensor) { self.logits = logits; self.targets = targets }
}

public enum MaskLosses {
    /// Weight map of the target refinement loss for one question: (alpha - 1) where at least two of the
    /// K predictions are positive (logit > 0), else 0. Shape [1, H*W]; no autograd (predictions are
    /// thresholded).
    public static func refinementWeights(_ logits: Tensor, alpha: Float) -> Tensor {
        let K = logits.dim(0), P = logits.count / max(K, 1)
        let x = logits.contiguousData()
        let w = Tensor.zeros([1, P])
        let px = x.ptr, pw = w.ptr
        for j in 0..<P {
            var positive = 0
            for k in 0..<K where px[k * P + j] > 0 { positive += 1 }
            if positive >= 2 { pw[j] = alpha - 1 }
        }
        return w
    }

    /// BCE, DICE and the refinement term over the masks of a micro-batch, grouped by question. Each term
    /// is sum over masks / (M + 1e-8) with M the total mask count, as the reference normalises.
    public static func compute(_ questions: [QuestionMasks], alpha: Float?) -> (bce: Tensor, dice: Tensor, refine: Tensor, count: Int) {
        let M = questions.reduce(0) { $0 + $1.logits.dim(0) }
        var bce: Tensor? = nil, dice: Tensor? = nil, refine: Tensor? = nil
        func add(_ acc: inout Tensor?, _ t: Tensor) { acc = acc.map { $0 + t } ?? t }
        for q in questions where q.logits.dim(0) > 0 {
            precondition(q.logits.shape == q.targets.shape,
                         "mask losses: logits \(describe(q.logits.shape)) and targets \(describe(q.targets.shape)) differ")
            let K = q.logits.dim(0), P = q.logits.count / K
            let x = q.logits.reshape([K, P]), y = q.targets.reshape([K, P])
            add(&bce, sigmoidCELoss(x, y, numMasks: Float(M)))
            add(&dice, diceLoss(x, y, numMasks: Float(M)))
            if let alpha, alpha != 1 {
                let w = Autograd.noGrad { refinementWeights(x, alpha: alpha) }
                let weighted = (bceWithLogits(x, y, reduction: .none) * w).sum()
                add(&refine, weighted * (1 / (Float(P) * (Float(M) + 1e-8))))
            }
        }
        return (bce ?? Tensor(scalar: 0), dice ?? Tensor(scalar: 0), refine ?? Tensor(scalar: 0), M)
    }

    /// Combines the cross-entropy with the mask terms into `LossTerms`.
    public static func total(ce: Tensor, questions: [QuestionMasks], options: LossOptions) -> LossTerms {
        let (bce, dice, refine, m) = compute(questions, alpha: options.refinementAlpha)
        let total = ce * options.ceWeight + (bce + refine) * options.bceWeight + dice * options.diceWeight
        return LossTerms(ce: ce, bce: bce, dice: dice, refine: refine, total: total, maskCount: m)
    }
}
