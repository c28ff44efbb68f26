// CLIP-branch image preprocessing (spec 1.3): ResizeLongestSide(448) with PIL's bilinear resampling,
// SAM/ImageNet normalisation in 0-255 space, zero padding bottom/right, and the valid size.
import Foundation
import PixelTensor

// MARK: - Pillow's bilinear resampling

/// `PIL.Image.resize(size, Image.BILINEAR)` for 8-bit images, to the byte.
///
/// Pillow resamples separably, one axis at a time, with an 8-bit intermediate image. For each output
/// sample along an axis of `inSize -> outSize`:
///   scale = inSize / outSize, filterscale = max(scale, 1) (so downsampling widens the triangle: the
///   antialiasing), support = 1 * filterscale, centre = (i + 0.5) * scale,
///   taps j in [trunc(centre - support + 0.5), trunc(centre + support + 0.5)) clipped to the image,
///   weight_j = triangle((j - centre + 0.5) / filterscale), triangle(x) = max(0, 1 - |x|),
///   weights divided by their sum, then turned into fixed point with 22 fractional bits
///   (trunc(w * 2^22 + 0.5)). A sample is  clamp((2^21 + sum_j pixel_j * weight_j) >> 22, 0, 255).
/// An axis whose size does not change is not resampled.
///
/// Which axis goes first changes the rounding of the intermediate image (by 1 in a fraction of the
/// pixels). Pillow 10.4 always resamples horizontally first. Pillow 13 resamples vertically first when
/// the height shrinks by more than twice as many pixels as the width loses, h' < h and
/// h - h' > 2 (w - w'); this rule was inferred from Pillow 13.0.0's output (no exception among 1,500
/// random small and 60 large size pairs). It does not apply to ResizeLongestSide of images less than
/// about twice as tall as wide. The default is horizontal first: the reference pins Pillow==9.4.0
/// (requirements.txt), and Tests/PixelDataTests/Fixtures/pil94_resize.h5 holds Pillow 9.4.0's output.
public enum PILBilinear {
    static let precisionBits = 22

    public enum PassOrder: Sendable {
        /// Pillow 13: vertical first when h' < h and h - h' > 2 (w - w'), else horizontal first.
        case pillow13
        /// Pillow 10.4 and earlier (9.4.0, which the reference pins): always horizontal first. The default.
        case horizontalFirst
    }

    /// Taps of one axis: for output i, `count[i]` weights starting at input `first[i]`, stored at
    /// `weights[i * stride ..< i * stride + count[i]]`.
    struct Taps {
        var first: [Int]
        var count: [Int]
        var weights: [Int32]
        var stride: Int
    }

    static func triangle(_ x: Double) -> Double {
        let a = x < 0 ? -x : x
        return a < 1 ? 1 - a : 0
    }

    static func taps(inSize: Int, outSize: Int) -> Taps {
        // Pillow keeps the source box in single precision; integer sizes are exact there.
        let scale = Double(Float(inSize)) / Double(outSize)
        let filterscale = max(scale, 1)
        let support = 1.0 * filterscale
        let stride = Int(support.rounded(.up)) * 2 + 1
        var taps = Taps(first: [Int](repeating: 0, count: outSize), count: [Int](repeating: 0, count: outSize),
                        weights: [Int32](repeating: 0, count: outSize * stride), stride: stride)
        var w = [Double](repeating: 0, count: stride)
        let inverse = 1.0 / filterscale
        for i in 0..<outSize {
            let centre = 0.0 + (Double(i) + 0.5) * scale
            let lo = max(Int(centre - support + 0.5), 0)
            let hi = min(Int(centre + support + 0.5), inSize)
            let n = hi - lo
            var sum = 0.0
            for j in 0..<n {
                w[j] = triangle((Double(j + lo) - centre + 0.5) * inverse)
                sum += w[j]
            }
            for j in 0..<n {
                let v = sum != 0 ? w[j] / sum : w[j]
                let fixed = v < 0 ? -0.5 + v * Double(1 << precisionBits) : 0.5 + v * Double(1 << precisionBits)
                taps.weights[i * stride + j] = Int32(fixed)   // truncation toward zero, as C's (int)
            }
            taps.first[i] = lo
            taps.count[i] = n
        }
        return taps
    }

    @inline(__always) static func clip8(_ v: Int) -> UInt8 {
        let s = v >> precisionBits
        return s < 0 ? 0 : (s > 255 ? 255 : UInt8(s))
    }

    /// Resamples along one axis. The source has `lines` independent lines (`lineStride` apart), each with
    /// `samplesPerLine` interleaved sample streams (stream s starts at offset s) whose consecutive
    /// positions are `tapStride` apart. Output position o of stream s of line l goes to
    /// l * outLineStride + o * outSampleStride + s.
    static func pass(_ src: [UInt8], lines: Int, lineStride: Int, samplesPerLine: Int, tapStride: Int,
                     taps t: Taps, outLines: Int, outLineStride: Int, outSampleStride: Int, outCount: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: outCount)
        let half = 1 << (precisionBits - 1)
        src.withUnsafeBufferPointer { s in
            out.withUnsafeMutableBufferPointer { d in
                t.weights.withUnsafeBufferPointer { k in
                    let sp = s.baseAddress!, dp = d.baseAddress!, kp = k.baseAddress!
                    for line in 0..<lines {
                        for o in 0..<outLines {
                            let first = t.first[o], n = t.count[o]
                            let kw = kp + o * t.stride
                            for ch in 0..<samplesPerLine {
                                var ss = half
                                let base = sp + line * lineStride + ch + first * tapStride
                                for j in 0..<n { ss += Int(base[j * tapStride]) * Int(kw[j]) }
                                dp[line * outLineStride + o * outSampleStride + ch] = clip8(ss)
                            }
                        }
                    }
                }
            }
        }
        return out
    }

    /// Each row: `width` pixels of `c` channels -> `newWidth`.
    static func horizontal(_ src: [UInt8], width: Int, height: Int, channels c: Int, newWidth: Int) -> [UInt8] {
        pass(src, lines: height, lineStride: width * c, samplesPerLine: c, tapStride: c,
             taps: taps(inSize: width, outSize: newWidth), outLines: newWidth, outLineStride: newWidth * c,
             outSampleStride: c, outCount: newWidth * height * c)
    }

    static func vertical(_ src: [UInt8], width: Int, height: Int, channels c: Int, newHeight: Int) -> [UInt8] {
        // one "line": the width * c sample columns, stepping a row at a time
        pass(src, lines: 1, lineStride: 0, samplesPerLine: width * c, tapStride: width * c,
             taps: taps(inSize: height, outSize: newHeight), outLines: newHeight, outLineStride: 0,
             outSampleStride: width * c, outCount: width * newHeight * c)
    }

    /// Resizes `width x height x channels` interleaved 8-bit pixels to `newWidth x newHeight`.
    public static func resize(_ pixels: [UInt8], width: Int, height: Int, channels: Int,
                              newWidth: Int, newHeight: Int, order: PassOrder = .horizontalFirst) -> [UInt8] {
        precondition(pixels.count == width * height * channels && width > 0 && height > 0 && newWidth > 0 && newHeight > 0,
                     "PILBilinear.resize: \(pixels.count) bytes for \(width)x\(height)x\(channels) -> \(newWidth)x\(newHeight)")
        let c = channels
        let verticalFirst = order == .pillow13 && newHeight < height && height - newHeight > 2 * (width - newWidth)
        var img = pixels
        if verticalFirst {
            if newHeight != height { img = vertical(img, width: width, height: height, channels: c, newHeight: newHeight) }
            if newWidth != width { img = horizontal(img, width: width, height: newHeight, channels: c, newWidth: newWidth) }
        } else {
            if newWidth != width { img = horizontal(img, width: width, height: height, channels: c, newWidth: newWidth) }
            if newHeight != height { img = vertical(img, width: newWidth, height: height, channels: c, newHeight: newHeight) }
        }
        return img
    }
}

extension RGBImage {
    /// PIL bilinear resize (`Image.resize((width, height), Image.BILINEAR)`), antialiased when shrinking.
    public func resized(width newWidth: Int, height newHeight: Int, order: PILBilinear.PassOrder = .horizontalFirst) -> RGBImage {
        RGBImage(width: newWidth, height: newHeight,
                 pixels: PILBilinear.resize(pixels, width: width, height: height, channels: 3, newWidth: newWidth, newHeight: newHeight,
                                            order: order))
    }
}

extension GrayImage {
    /// PIL bilinear resize of an "L" image.
    public func resized(width newWidth: Int, height newHeight: Int, order: PILBilinear.PassOrder = .horizontalFirst) -> GrayImage {
        GrayImage(width: newWidth, height: newHeight,
                  pixels: PILBilinear.resize(pixels, width: width, height: height, channels: 1, newWidth: newWidth, newHeight: newHeight,
                                             order: order))
    }
}

// MARK: - ResizeLongestSide

/// SAM's `ResizeLongestSide(target)`: scale so the longer side becomes `target`,
/// h' = int(H * scale + 0.5), w' = int(W * scale + 0.5) with scale = target / max(H, W) in double
/// precision; the image is resized with PIL bilinear (torchvision's resize on a PIL image).
public struct ResizeLongestSide: Sendable, Equatable {
    public let target: Int
    public let order: PILBilinear.PassOrder

    public init(_ target: Int, order: PILBilinear.PassOrder = .horizontalFirst) {
        precondition(target > 0, "ResizeLongestSide: target \(target)")
        self.target = target
        self.order = order
    }

    /// The resized (height, width) of an H x W image.
    public func size(height: Int, width: Int) -> (height: Int, width: Int) {
        precondition(height > 0 && width > 0, "ResizeLongestSide: image \(height)x\(width)")
        let scale = Double(target) * 1.0 / Double(max(height, width))
        return (Int(Double(height) * scale + 0.5), Int(Double(width) * scale + 0.5))
    }

    public func apply(_ image: RGBImage) -> RGBImage {
        let s = size(height: image.height, width: image.width)
        return image.resized(width: s.width, height: s.height, order: order)
    }
}

// MARK: - CLIP-branch tensor

/// The CLIP-branch input of one image: [3, S, S] normalised and zero-padded, and the size (h', w') of
/// the valid top-left region (`clip_resize` in the reference).
public struct CLIPImageInput {
    public let pixels: Tensor
    public let validHeight: Int
    public let validWidth: Int
    public var validSize: (height: Int, width: Int) { (validHeight, validWidth) }
}

/// `pad_train_clip_images=True` preprocessing (spec 1.3): ResizeLongestSide(S) with PIL bilinear,
/// x = (x - mean) / std per channel in 0-255 space with the SAM/ImageNet constants (float32, as torch
/// computes `(uint8 - float32) / float32`), zero padding bottom and right to S x S, layout [3, S, S].
public struct CLIPImagePreprocessor: Sendable {
    public static let samMean: [Float] = [123.675, 116.28, 103.53]
    public static let samStd: [Float] = [58.395, 57.12, 57.375]

    public let size: Int
    public let mean: [Float]
    public let std: [Float]
    public let order: PILBilinear.PassOrder

    public init(size: Int = 448, mean: [Float] = samMean, std: [Float] = samStd, order: PILBilinear.PassOrder = .horizontalFirst) {
        precondition(size > 0 && mean.count == 3 && std.count == 3, "CLIPImagePreprocessor: size \(size), mean/std of 3")
        self.size = size
        self.mean = mean
        self.std = std
        self.order = order
    }

    public func callAsFunction(_ image: RGBImage) -> CLIPImageInput {
        let resized = ResizeLongestSide(size, order: order).apply(image)
        return normalizeAndPad(resized)
    }

    /// Normalises an already resized image (at most S x S) and pads it to S x S.
    public func normalizeAndPad(_ image: RGBImage) -> CLIPImageInput {
        precondition(image.width <= size && image.height <= size,
                     "CLIPImagePreprocessor: \(image.width)x\(image.height) image does not fit \(size)x\(size)")
        let t = Tensor.zeros([3, size, size])
        let s = size, w = image.width, h = image.height
        // 256-entry table per channel: the same float32 operations for every pixel value.
        var table = [Float](repeating: 0, count: 3 * 256)
        for c in 0..<3 { for v in 0..<256 { table[c * 256 + v] = (Float(v) - mean[c]) / std[c] } }
        let p = t.ptr
        image.pixels.withUnsafeBufferPointer { src in
            for c in 0..<3 {
                let plane = p + c * s * s
                for y in 0..<h {
                    for x in 0..<w { plane[y * s + x] = table[c * 256 + Int(src[(y * w + x) * 3 + c])] }
                }
            }
        }
        return CLIPImageInput(pixels: t, validHeight: h, validWidth: w)
    }

    /// [S, S] map of 1 inside the valid h' x w' region and 0 in the padding.
    public static func validityMap(size: Int, validHeight: Int, validWidth: Int) -> Tensor {
        precondition(validHeight <= size && validWidth <= size, "validityMap: \(validHeight)x\(validWidth) in \(size)")
        let t = Tensor.zeros([size, size])
        for y in 0..<validHeight { for x in 0..<validWidth { t.ptr[y * size + x] = 1 } }
        return t
    }
}
