import Foundation
import XCTest
import PixelData
import PixelModel
import PixelTensor
@testable import PixelTrain

/// `pixellm pretrain-vision`'s trainer: a tiny CLIP learns a word the pixels state and not one they do not; the
/// gradient reaches the tower; held-out images are every fifth.
final class VisionPretrainTests: XCTestCase {
    /// A 2-layer CLIP at 56 px, patch 14: a 4 x 4 grid.
    static func tower(seed: UInt64) -> CLIPVisionModel {
        var v = CLIPVisionConfig()
        v.hiddenSize = 32; v.intermediateSize = 64; v.numHiddenLayers = 2; v.numAttentionHeads = 4
        v.imageSize = 56; v.patchSize = 14
        var rng = RNG(seed: seed)
        return CLIPVisionModel(vision: v, runSize: 56, selectLayer: -1, midLayer: -2, llmPool: 2, init: .normal(std: 0.02), rng: &rng)
    }

    /// Images of one object each: a 14 x 14 block of colour c (word 1) in a random cell; word 2 is a coin the
    /// pixels do not show.
    static func data(images n: Int, seed: UInt64) -> VisionPretrain.Data {
        var rng = RNG(seed: seed)
        let S = 56, g = 4, colours: [[Float]] = [[1.5, -1, -1], [-1, 1.5, -1], [-1, -1, 1.5]]
        var pixels: [[Float]] = [], objects: [VisionPretrain.Object] = []
        for i in 0..<n {
            var p = (0..<(3 * S * S)).map { _ in rng.normal() * 0.1 }
            let c = rng.int(3), coin = rng.int(2), cell = rng.int(g * g)
            let y0 = (cell / g) * 14, x0 = (cell % g) * 14
            for ch in 0..<3 { for y in y0..<(y0 + 14) { for x in x0..<(x0 + 14) { p[ch * S * S + y * S + x] += colours[c][ch] } } }
            pixels.append(p)
            objects.append(VisionPretrain.Object(image: i, cell: cell, labels: [c, coin]))
        }
        return VisionPretrain.Data(imageCount: n, input: { (pixels[$0], (S, S)) }, objects: objects,
                                   classes: [["blue", "green", "red"], ["heads", "tails"]])
    }

    func testTheTowerLearnsTheWordThePixelsStateAndNotTheOtherOne() throws {
        let data = Self.data(images: 200, seed: 3)
        XCTAssertEqual(data.trainImages.count, 160)
        let byImage = data.objectsByImage
        XCTAssertEqual(data.heldOutImages.count, 40)
        XCTAssert(data.heldOutImages.allSatisfy { $0 % 5 == 4 } && data.trainImages.allSatisfy { $0 % 5 != 4 })
        let tower = Self.tower(seed: 1)
        let before = tower.namedTensors().map { $0.1.toArray() }
        let trainer = VisionPretrain.Trainer(tower: tower, classes: data.classes, lr: 3e-3, seed: 2)
        let start = try trainer.accuracy(data, images: data.heldOutImages, byImage: byImage)
        XCTAssertEqual(start.objects, 40)
        var rng = RNG(seed: 4)
        var losses: [Float] = []
        for _ in 0..<80 {
            let batch = (0..<8).map { _ in data.trainImages[rng.int(data.trainImages.count)] }
            losses.append(try XCTUnwrap(try trainer.train(data, images: batch, byImage: byImage)))
        }
        XCTAssertEqual(trainer.step, 80)
        let end = try trainer.accuracy(data, images: data.heldOutImages, byImage: byImage)
        XCTAssertGreaterThan(end.accuracy[0], 0.9, "the colour word: \(start.accuracy) -> \(end.accuracy)")
        XCTAssertLessThan(end.accuracy[1], 0.75, "a coin the pixels do not show cannot be learned for held-out images")
        XCTAssertLessThan(losses.suffix(10).reduce(0, +), losses.prefix(10).reduce(0, +))
        // the gradient reached the tower: its patch embedding and its first layer moved
        let after = tower.namedTensors()
        let moved = zip(before, after).filter { b, a in zip(b, a.1.toArray()).contains { $0 != $1 } }.map(\.1.0)
        XCTAssert(moved.contains("vision_model.embeddings.patch_embedding.weight"), "\(moved)")
        XCTAssert(moved.contains { $0.hasPrefix("vision_model.encoder.layers.0.") }, "\(moved)")
        // the post-layernorm is never run: untouched
        XCTAssertFalse(moved.contains { $0.hasPrefix("vision_model.post_layernorm") }, "\(moved)")
    }

    func testImagesWithoutObjectsUpdateNothing() throws {
        var data = Self.data(images: 10, seed: 5)
        data.objects = data.objects.filter { $0.image != 0 }
        let tower = Self.tower(seed: 1)
        let before = tower.namedTensors().map { $0.1.toArray() }
        let trainer = VisionPretrain.Trainer(tower: tower, classes: data.classes, lr: 1e-2, seed: 2)
        XCTAssertNil(try trainer.train(data, images: [0], byImage: data.objectsByImage))
        XCTAssertEqual(trainer.step, 0)
        XCTAssertEqual(tower.namedTensors().map { $0.1.toArray() }, before)
    }
}
