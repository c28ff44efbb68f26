import Foundation
import PixelData
import PixelModel
import PixelTensor

// pixellm's vision pretraining stage (`pixellm pretrain-vision`; not in the reference, whose CLIP comes pretrained on
// 400M image-text pairs). A CLIP trained from scratch inside the PixelLM mixture learns colour and size within the
// smoke budget but not shape (`pixellm probe`: shape at chance after 700-3,200 steps; docs/evaluation.md), and most
// synthetic questions hinge on it. This stage trains the vision tower alone, with the supervision that is cheapest to
// state: at the patch-grid cell under the centroid of every object of a MUSE-layout split, a linear head per word
// position of the object's name ("large orange hexagon": size, colour, shape) classifies that word from CLIP's deep
// features (the hidden state PixelLM selects). The heads are thrown away; what is kept is a PixelLM directory whose
// vision tower is the trained one, the rest as a fresh model of the config (`train --version DIR` starts from it).
// Images with index % 5 == 4 are held out and scored, as `pixellm probe` does.

public enum VisionPretrain {
    public struct Object: Equatable, Sendable {
        public var image: Int
        /// Row-major cell of the patch grid under the mask's centroid.
        public var cell: Int
        /// Class index per word position.
        public var labels: [Int]
    }

    /// The split's images and objects. Images are read when a batch needs them (a JPEG of the synthetic set decodes
    /// and resizes in about a millisecond, a step takes a few hundred), so any number fits in memory.
    public struct Data {
        public var imageCount: Int
        /// The model input of image i: [3, S, S] normalised and padded, and its valid size.
        public var input: (Int) throws -> (pixels: [Float], valid: (height: Int, width: Int))
        public var objects: [Object]
        /// Per word position, the class names (sorted).
        public var classes: [[String]]
        public var skipped: [String]
        public var trainImages: [Int]
        public var heldOutImages: [Int]
        /// Objects whose name has another word count than the most common one (left out).
        public var otherWordCount = 0
        public var objectsByImage: [Int: [Int]] {
            var m: [Int: [Int]] = [:]
            for (i, o) in objects.enumerated() { m[o.image, default: []].append(i) }
            return m
        }

        public init(imageCount: Int, input: @escaping (Int) throws -> (pixels: [Float], valid: (height: Int, width: Int)),
                    objects: [Object], classes: [[String]], skipped: [String] = []) {
            self.imageCount = imageCount
            self.input = input
            self.objects = objects
            self.classes = classes
            self.skipped = skipped
            let all = Array(0..<imageCount)
            trainImages = all.filter { !isHeldOut($0) }
            heldOutImages = all.filter(isHeldOut)
        }
    }

    public static func isHeldOut(_ image: Int) -> Bool { image % 5 == 4 }

    public struct PretrainError: Error, CustomStringConvertible {
        public var description: String
        public init(_ d: String) { description = d }
    }

    /// Reads the first `images` images of `reader` (each decoded once here for its size at the model input, and again
    /// for every batch that holds it): each object (an annotation once per image) labelled by the words of its name at
    /// the centroid cell of a g x g grid over PixelLM's CLIP input of size `S`. Only names with the most common word
    /// count are kept (the synthetic set: all of them).
    public static func load(reader: MUSEReader, images: Int, size S: Int, grid g: Int,
                            progress: ((Int, Int) -> Void)? = nil) throws -> Data {
        var paths: [String] = []
        var raw: [(image: Int, cell: Int, words: [String])] = []
        let skipped = try ObjectProbe.forEachImage(reader: reader, images: images, size: S, grid: g, progress: progress) { _, sample, _, found in
            let image = paths.count
            paths.append(sample.imagePath)
            for (name, cell) in found { raw.append((image, cell, name.split(separator: " ").map(String.init))) }
        }
        let words = ObjectProbe.commonWordCount(raw.map(\.words))
        let kept = raw.filter { $0.words.count == words && words > 0 }
        let classes = (0..<words).map { p in Array(Set(kept.map { $0.words[p] })).sorted() }
        let objects = kept.map { r in
            Object(image: r.image, cell: r.cell, labels: (0..<words).map { classes[$0].firstIndex(of: r.words[$0])! })
        }
        let pre = CLIPImagePreprocessor(size: S)
        var d = Data(imageCount: paths.count, input: { i in
            let x = pre(try RGBImage.load(paths[i]))
            return (x.pixels.toArray(), x.validSize)
        }, objects: objects, classes: classes, skipped: skipped)
        d.otherWordCount = raw.count - kept.count
        return d
    }

    /// The vision tower and one linear head per word position, trained together with AdamW.
    public final class Trainer {
        public let tower: CLIPVisionModel
        public let heads: [Linear]
        public let optimizer: AdamW
        public let size: Int
        public private(set) var step = 0

        public init(tower: CLIPVisionModel, classes: [[String]], lr: Float, weightDecay: Float = 0, seed: UInt64) {
            self.tower = tower
            size = tower.runSize
            var rng = RNG(seed: seed)
            let D = tower.config.hiddenSize
            heads = classes.map { Linear(D, max($0.count, 1), init: .normal(std: 0.02), rng: &rng) }
            var params = tower.namedTensors().map(\.1)
            // the post-layernorm and the layers past the deepest selected state are not run: no gradient reaches them
            params += heads.flatMap { $0.namedTensors().map(\.1) }
            for p in params { p.requiresGrad = true }
            optimizer = AdamW(params: params, lr: lr, betas: (0.9, 0.999), weightDecay: weightDecay)
        }

        /// The deep features of `images` at their objects' cells: [objects, D], and the labels per word position.
        func features(_ data: Data, images: [Int], byImage: [Int: [Int]]) throws -> (Tensor, [[Int]])? {
            let S = size, plane = 3 * S * S
            var values = [Float](), valid: [(height: Int, width: Int)] = []
            values.reserveCapacity(images.count * plane)
            for i in images {
                let x = try data.input(i)
                guard x.pixels.count == plane else { throw PretrainError("image \(i): \(x.pixels.count) input values, the tower takes 3 x \(S) x \(S)") }
                values += x.pixels
                valid.append(x.valid)
            }
            let f = tower(Tensor(values, shape: [images.count, 3, S, S]), validSizes: valid)
            let cells = f.deep.dim(1), D = f.deep.dim(2)
            var rows: [Int] = [], labels = [[Int]](repeating: [], count: heads.count)
            for (b, i) in images.enumerated() {
                for o in byImage[i] ?? [] {
                    rows.append(b * cells + data.objects[o].cell)
                    for p in heads.indices { labels[p].append(data.objects[o].labels[p]) }
                }
            }
            guard !rows.isEmpty else { return nil }
            return (f.deep.reshape([images.count * cells, D]).indexSelect(axis: 0, rows), labels)
        }

        /// One optimizer step on `images`: the sum over word positions of the mean cross-entropy. Returns the loss
        /// (nil when the images hold no object; nothing is updated then).
        @discardableResult
        public func train(_ data: Data, images: [Int], byImage: [Int: [Int]]) throws -> Float? {
            guard let (x, labels) = try features(data, images: images, byImage: byImage) else { return nil }
            var loss: Tensor? = nil
            for (p, head) in heads.enumerated() {
                let l = crossEntropy(head(x), targets: labels[p])
                loss = loss.map { $0 + l } ?? l
            }
            optimizer.zeroGrad()
            loss!.backward()
            optimizer.update()
            step += 1
            return loss!.item
        }

        /// Accuracy per word position on `images` (chunks of `chunk`), and the object count.
        public func accuracy(_ data: Data, images: [Int], byImage: [Int: [Int]], chunk: Int = 16) throws -> (accuracy: [Double], objects: Int) {
            var right = [Int](repeating: 0, count: heads.count), n = 0
            try Autograd.noGrad {
                for start in stride(from: 0, to: images.count, by: chunk) {
                    guard let (x, labels) = try features(data, images: Array(images[start..<min(images.count, start + chunk)]),
                                                     byImage: byImage) else { continue }
                    n += labels.first?.count ?? 0
                    for (p, head) in heads.enumerated() {
                        let logits = head(x), C = logits.dim(1), v = logits.contiguousData()
                        for (r, t) in labels[p].enumerated() {
                            var best = 0
                            for c in 1..<C where v.ptr[r * C + c] > v.ptr[r * C + best] { best = c }
                            if best == t { right[p] += 1 }
                        }
                    }
                }
            }
            return (right.map { n > 0 ? Double($0) / Double(n) : 0 }, n)
        }
    }
}
