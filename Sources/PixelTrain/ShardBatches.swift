import Foundation
import PixelData
import PixelModel
import PixelTensor

/// Micro-batches from prepared shards: a sample's CLIP tensor (stored at the training size), its conversations'
/// ids and labels (cut to model_max_length - 255 as the reference's training collate does), and its ground-truth
/// masks decoded at the original size and handed to the conversations in SEG-group order.
public struct ShardBatches {
    public let reader: ShardReader
    public let config: PixelLMConfig
    public let segStart: Int
    public let modelMaxLength: Int

    public init(reader: ShardReader, config: PixelLMConfig, segTokenIds: [Int], modelMaxLength: Int) throws {
        guard reader.imageSize == config.resizeVisionTowerSize else {
            throw TrainError.mismatch(field: "image_size",
                                      "the shards in \(reader.directory) hold \(reader.imageSize) px images, the model's resize_vision_tower_size is \(config.resizeVisionTowerSize): prepare with --image-size \(config.resizeVisionTowerSize)")
        }
        self.reader = reader
        self.config = config
        segStart = segTokenIds[0]
        self.modelMaxLength = modelMaxLength
    }

    /// Supervised tokens (the CE's count: labels after the first position that are not -100) and masks of a batch.
    public static func counts(_ b: PixelLMBatch) -> (tokens: Int, masks: Int) {
        var t = 0, m = 0
        for c in b.conversations {
            t += c.labels.dropFirst().filter { $0 != PixelLMTokens.ignore }.count
            m += c.targetCount
        }
        return (t, m)
    }

    /// The micro-batch of these samples (indices into the shards).
    public func batch(samples: [Int]) throws -> PixelLMBatch {
        var pixels: [Tensor] = [], valid: [(height: Int, width: Int)] = [], original: [(height: Int, width: Int)] = []
        var convs: [PixelLMConversation] = []
        let cut = modelMaxLength - 255
        for (b, i) in samples.enumerated() {
            let input = try reader.clipTensor(i)
            pixels.append(input.pixels.reshape([1] + input.pixels.shape))
            valid.append(input.validSize)
            let (H, W) = try reader.originalSize(i)
            original.append((H, W))
            let masks = try reader.masks(i)
            let (ids, labels) = try reader.tokens(i)
            var next = 0
            for (k, full) in ids.enumerated() {
                let seq = Array(full.prefix(cut)), lab = Array(labels[k].prefix(cut))
                let groups = seq.filter { $0 == segStart }.count
                var target: Tensor?
                if groups > 0 {
                    guard next + groups <= masks.count else {
                        throw TrainError.file(reader.directory, "sample \(i): conversation \(k) has \(groups) SEG groups but only \(masks.count - next) masks remain")
                    }
                    let t = Tensor.zeros([groups, H, W])
                    for g in 0..<groups {
                        let m = masks[next + g].decode()
                        guard m.height == H && m.width == W else {
                            throw TrainError.file(reader.directory, "sample \(i): mask \(next + g) is \(m.height)x\(m.width), the image \(H)x\(W)")
                        }
                        let dst = t.ptr + g * H * W
                        m.data.withUnsafeBufferPointer { src in for p in 0..<(H * W) { dst[p] = src[p] != 0 ? 1 : 0 } }
                    }
                    target = t
                }
                // groups cut away by the truncation still consume their masks
                next += full.filter { $0 == segStart }.count
                convs.append(PixelLMConversation(imageIndex: b, inputIds: seq, labels: lab, targetMasks: target))
            }
        }
        let batch = PixelLMBatch(pixels: pixels.count == 1 ? pixels[0] : concat(pixels, axis: 0), validSizes: valid,
                                 originalSizes: original, conversations: convs)
        try batch.validate(config: config)
        return batch
    }
}
