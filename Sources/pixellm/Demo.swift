import ArgumentParser
import Foundation
import PixelModel
import PixelTensor

/// `pixellm demo`: the autograd core learning something small, start to finish, on this machine.
/// A 2-32-32-1 MLP learns which points of the plane lie inside a disc (a one-pixel-at-a-time
/// segmentation), with a tape-recorded forward, `backward()`, and AdamW.
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a tiny MLP with the autograd core to segment a disc (until the smoke training run exists).")

    @Option(help: "Training steps.") var steps = 400
    @Option(help: "Learning rate.") var lr: Float = 0.01
    @Option(help: "Random seed.") var seed: UInt64 = 0

    func validate() throws {
        if steps < 1 || steps > 1_000_000 { throw ValidationError("--steps must be in 1...1000000 (got \(steps))") }
        if !(lr > 0) || !lr.isFinite { throw ValidationError("--lr must be a finite number > 0 (got \(lr))") }
    }

    func run() throws {
        var rng = RNG(seed: seed)
        let n = 512
        // points in [-1, 1]^2, label +1 inside the disc of radius 0.6 around (0.1, -0.1), else -1
        let pts = Tensor.uniform([n, 2], -1, 1, rng: &rng)
        let labels = Tensor(empty: [n, 1])
        for i in 0..<n {
            let dx = pts[i, 0] - 0.1, dy = pts[i, 1] + 0.1
            labels.ptr[i] = dx * dx + dy * dy < 0.36 ? 1 : -1
        }
        func layer(_ i: Int, _ o: Int) -> (Tensor, Tensor) {
            (Tensor.randn([o, i], std: (1 / Float(i)).squareRoot(), rng: &rng, requiresGrad: true), Tensor.zeros([o], requiresGrad: true))
        }
        let (w1, b1) = layer(2, 32), (w2, b2) = layer(32, 32), (w3, b3) = layer(32, 1)
        let params = [w1, b1, w2, b2, w3, b3]
        let opt = AdamW(params: params, lr: lr, weightDecay: 0)
        func forward() -> Tensor { linear(linear(linear(pts, w1, b1).tanh(), w2, b2).tanh(), w3, b3).tanh() }
        func accuracy(_ pred: Tensor) -> Double {
            var ok = 0
            for i in 0..<n where (pred.ptr[i] > 0) == (labels.ptr[i] > 0) { ok += 1 }
            return Double(ok) / Double(n)
        }
        print("pixellm demo: a 2-32-32-1 MLP learns a disc mask on \(n) points (MSE, AdamW lr \(lr))")
        let t0 = Date()
        var first: Float = 0, last: Float = 0
        for step in 0...steps {
            for p in params { p.zeroGrad() }
            let pred = forward()
            let loss = (pred - labels).square().mean()
            loss.backward()
            opt.update()
            if step == 0 { first = loss.item }
            last = loss.item
            if step % max(steps / 8, 1) == 0 {
                print(String(format: "  step %4d  loss %.4f  pixel accuracy %.1f%%", step, loss.item, 100 * accuracy(pred)))
            }
        }
        let acc = Autograd.noGrad { accuracy(forward()) }
        print(String(format: "  done in %.2f s: loss %.4f -> %.4f, pixel accuracy %.1f%%", Date().timeIntervalSince(t0), first, last, 100 * acc))
        if !(last < first * 0.5) { throw ValidationError("the demo did not learn (loss \(first) -> \(last))") }
    }
}
