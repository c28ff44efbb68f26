import PixelTensor

/// Loss weights and options (train_ds.py defaults: ce 1.0, bce 2.0, dice 0.5).
public struct LossOptions: Sendable, Equatable {
    public var ceWeight: Float = 1.0
    public var bceWeight: Float = 2.0
    public var diceWeight: Float = 0.5
    /// The paper's target refinement loss: pixels that two or more of one question's predicted masks
    /// claim get BCE weight `alpha` instead of 1. nil = off (the released code has it commented out).
    public var refinementAlpha: Float? = nil
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
