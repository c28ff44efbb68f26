import Foundation
import XCTest
@testable import PixelData
import PixelTensor

/// PIL bilinear resize, ResizeLongestSide and the CLIP-branch tensor against Pillow 13 and torch
/// (tools/fixtures/images_masks.py; these pass `order: .pillow13`), and the default order against
/// Pillow 9.4.0, which the reference pins (tools/fixtures/pil94_resize.py).
final class PreprocessTests: XCTestCase {

    func testPILBilinearMatchesPillowExactly() throws {
        let names = DataFixtures.datasetNames.filter { $0.hasPrefix("resize/") }.sorted()
        XCTAssertGreaterThanOrEqual(names.count, 11)
        for key in names {
            // resize/<kind>_<W>x<H>_to_<W'>x<H'>; the source is resize_src/<H>x<W>x<C>
            let parts = key.dropFirst("resize/".count).split(separator: "_")
            let from = parts[1].split(separator: "x").map { Int($0)! }, to = parts[3].split(separator: "x").map { Int($0)! }
            let c = parts[0] == "gray" ? 1 : 3
            let (src, _) = try DataFixtures.bytes("resize_src/\(from[1])x\(from[0])x\(c)")
            let (expected, shape) = try DataFixtures.bytes(key)
            XCTAssertEqual(shape, [to[1], to[0], c], key)
            let out = PILBilinear.resize(src, width: from[0], height: from[1], channels: c, newWidth: to[0], newHeight: to[1],
                                       order: .pillow13)
            let d = maxDiff(out, expected)
            print("PIL bilinear \(key.dropFirst(7)): max |ours - Pillow| = \(d)")
            XCTAssertEqual(d, 0, key)
        }
    }

    func testResizeLongestSideSizes() {
        let r = ResizeLongestSide(448)
        XCTAssert(r.size(height: 480, width: 640) == (336, 448))
        XCTAssert(r.size(height: 120, width: 200) == (269, 448))
        XCTAssert(r.size(height: 53, width: 37) == (448, 313))
        XCTAssert(r.size(height: 50, width: 1) == (448, 9))
        XCTAssert(r.size(height: 448, width: 448) == (448, 448))
        XCTAssert(r.size(height: 427, width: 640) == (299, 448))   // 427 * 0.7 = 298.9
        XCTAssert(r.size(height: 1, width: 10000) == (0, 448))      // int(0.0448 + 0.5) = 0, as the reference
        // h' = int(H * (448 / max) + 0.5) in double precision, for every size up to 1000 x 1000 against
        // the same formula written out with Double arithmetic of a different order of evaluation
        for h in stride(from: 1, through: 1000, by: 7) {
            for w in stride(from: 1, through: 1000, by: 13) {
                let s = r.size(height: h, width: w)
                let scale = 448.0 / Double(max(h, w))
                XCTAssertEqual(s.height, Int((Double(h) * scale + 0.5).rounded(.towardZero)))
                XCTAssertEqual(s.width, Int((Double(w) * scale + 0.5).rounded(.towardZero)))
                XCTAssertEqual(max(s.height, s.width), 448)
            }
        }
    }

    func testNormalisationConstantsAndTableMatchTorch() throws {
        let p = CLIPImagePreprocessor()
        XCTAssertEqual(p.mean.map(\.bitPattern), try DataFixtures.floats("norm/mean").toArray().map(\.bitPattern))
        XCTAssertEqual(p.std.map(\.bitPattern), try DataFixtures.floats("norm/std").toArray().map(\.bitPattern))
        // a 1 x 256 image holding every value in every channel
        let table = try DataFixtures.floats("norm/table").toArray()
        let img = RGBImage(width: 256, height: 1, pixels: (0..<256).flatMap { [UInt8($0), UInt8($0), UInt8($0)] })
        let t = CLIPImagePreprocessor(size: 256).normalizeAndPad(img).pixels.toArray()
        for c in 0..<3 {
            XCTAssertEqual((0..<256).map { t[c * 256 * 256 + $0].bitPattern }, (0..<256).map { table[c * 256 + $0].bitPattern },
                           "channel \(c): (v - mean) / std in float32 as torch")
        }
    }

    func testCLIPPipelineAt448MatchesReference() throws {
        let table = try DataFixtures.floats("norm/table").toArray()
        for name in ["photo_640x480.jpg", "photo_200x120.png", "photo_100x500.png"] {
            let image = try Image.load(DataFixtures.image(name))
            let input = CLIPImagePreprocessor(order: .pillow13)(image)
            let valid = try DataFixtures.ints("clip/\(name)/valid")
            XCTAssertEqual([input.validHeight, input.validWidth], valid, name)
            XCTAssertEqual(input.pixels.shape, [3, 448, 448])
            let (resized, _) = try DataFixtures.bytes("clip/\(name)/resized")
            let ours = ResizeLongestSide(448, order: .pillow13).apply(image)
            let d = maxDiff(ours.pixels, resized)
            print("CLIP 448 \(name): valid \(valid), resize max |ours - reference| = \(d)")
            XCTAssertEqual(d, 0, name)
            // the tensor is the torch-normalised resize, zeros in the padding
            let t = input.pixels.toArray()
            let (h, w) = (valid[0], valid[1])
            var mismatches = 0
            for c in 0..<3 {
                for y in 0..<448 {
                    for x in 0..<448 {
                        let want: Float = (y < h && x < w) ? table[c * 256 + Int(resized[(y * w + x) * 3 + c])] : 0
                        if t[(c * 448 + y) * 448 + x].bitPattern != want.bitPattern { mismatches += 1 }
                    }
                }
            }
            XCTAssertEqual(mismatches, 0, "\(name): tensor elements differing from the reference")
        }
    }

    func testCLIPPipelineEndToEndSmall() throws {
        // the whole reference pipeline at target 64, tensor stored by torch
        for name in ["photo_200x120.png", "rgb8_37x53.png"] {
            let input = CLIPImagePreprocessor(size: 64, order: .pillow13)(try Image.load(DataFixtures.image(name)))
            let expected = try DataFixtures.floats("clip_small/\(name)/tensor")
            XCTAssertEqual(input.pixels.shape, expected.shape)
            XCTAssertEqual(input.pixels.toArray().map(\.bitPattern), expected.toArray().map(\.bitPattern), name)
            XCTAssertEqual([input.validHeight, input.validWidth], try DataFixtures.ints("clip_small/\(name)/valid"))
        }
    }

    func testValidityMap() {
        let m = CLIPImagePreprocessor.validityMap(size: 8, validHeight: 3, validWidth: 5).toArray()
        for y in 0..<8 { for x in 0..<8 { XCTAssertEqual(m[y * 8 + x], (y < 3 && x < 5) ? 1 : 0) } }
        let input = CLIPImagePreprocessor(size: 16)(RGBImage(width: 10, height: 4))
        XCTAssert(input.validSize == (6, 16))
    }

    func testPassOrderRule() throws {
        // Pillow 13 goes vertical first when h' < h and h - h' > 2 (w - w'); Pillow 10.4 never does.
        // Where the rule keeps horizontal first, both orders are the same computation.
        let (src, _) = try DataFixtures.bytes("resize_src/53x37x3")
        for (w, h) in [(19, 27), (74, 106), (37, 20), (5, 3), (100, 7), (36, 12), (30, 40)] {
            let a = PILBilinear.resize(src, width: 37, height: 53, channels: 3, newWidth: w, newHeight: h, order: .pillow13)
            let b = PILBilinear.resize(src, width: 37, height: 53, channels: 3, newWidth: w, newHeight: h, order: .horizontalFirst)
            let verticalFirst = h < 53 && 53 - h > 2 * (37 - w)
            let d = maxDiff(a, b)
            print("37x53 -> \(w)x\(h): vertical first \(verticalFirst), max |Pillow 13 order - horizontal first| = \(d)")
            if verticalFirst { XCTAssertLessThanOrEqual(d, 1) } else { XCTAssertEqual(d, 0) }
        }
        // the 100x7 fixture is a vertical-first case: horizontal first is off by one somewhere
        let hf = PILBilinear.resize(src, width: 37, height: 53, channels: 3, newWidth: 100, newHeight: 7, order: .horizontalFirst)
        XCTAssertEqual(maxDiff(hf, try DataFixtures.bytes("resize/rgb_37x53_to_100x7").values), 1)
        // the tall photo through ResizeLongestSide(448): 100x500 -> 90x448 is vertical first in Pillow 13
        let tall = try Image.load(DataFixtures.image("photo_100x500.png"))
        let old = PILBilinear.resize(tall.pixels, width: 100, height: 500, channels: 3, newWidth: 90, newHeight: 448, order: .horizontalFirst)
        let want = try DataFixtures.bytes("clip/photo_100x500.png/resized").values
        let differing = zip(old, want).filter { $0 != $1 }.count
        print("photo_100x500 -> 90x448 horizontal first (Pillow <= 10.4): max |diff| to Pillow 13 = \(maxDiff(old, want)), \(differing) of \(want.count) values differ")
        XCTAssertLessThanOrEqual(maxDiff(old, want), 1)
        XCTAssertGreaterThan(differing, 0)
    }

    func testDefaultOrderMatchesPillow94Exactly() throws {
        // Pillow 9.4.0 (requirements.txt of the reference) always resamples horizontally first
        let path = DataFixtures.dir + "/pil94_resize.h5"
        let cases = try TensorFile.names(in: path).filter { $0.hasPrefix("out/") }.sorted()
        XCTAssertEqual(cases.count, 10)
        var differFromPillow13 = 0
        for key in cases {
            // out/<source>/<W>x<H>
            let parts = key.split(separator: "/"), size = parts[2].split(separator: "x").map { Int($0)! }
            let (src, srcShape) = try TensorFile.readInts(path, name: "src/\(parts[1])")
            let (want, shape) = try TensorFile.readInts(path, name: key)
            let (h, w, c) = (srcShape[0], srcShape[1], srcShape[2])
            XCTAssertEqual(shape, [size[1], size[0], c], key)
            let bytes = src.map { UInt8($0) }, expected = want.map { UInt8($0) }
            let out = PILBilinear.resize(bytes, width: w, height: h, channels: c, newWidth: size[0], newHeight: size[1])
            XCTAssertEqual(maxDiff(out, expected), 0, "\(key): default order vs Pillow 9.4.0")
            if c == 3 {
                let img = RGBImage(width: w, height: h, pixels: bytes).resized(width: size[0], height: size[1])
                XCTAssertEqual(img.pixels, expected, "\(key): RGBImage.resized default")
            } else {
                let img = GrayImage(width: w, height: h, pixels: bytes).resized(width: size[0], height: size[1])
                XCTAssertEqual(img.pixels, expected, "\(key): GrayImage.resized default")
            }
            let p13 = PILBilinear.resize(bytes, width: w, height: h, channels: c, newWidth: size[0], newHeight: size[1], order: .pillow13)
            if p13 != expected { differFromPillow13 += 1 }
        }
        XCTAssertGreaterThanOrEqual(differFromPillow13, 4, "cases where Pillow 13's vertical-first order gives other bytes")
        // the tall shrink through ResizeLongestSide(150) and the CLIP preprocessor, default order
        let (src, _) = try TensorFile.readInts(path, name: "src/rgb_tall_40x200")
        let tall = RGBImage(width: 40, height: 200, pixels: src.map { UInt8($0) })
        let want = try TensorFile.readInts(path, name: "out/rgb_tall_40x200/30x150").values.map { UInt8($0) }
        XCTAssertEqual(ResizeLongestSide(150).apply(tall).pixels, want)
        XCTAssertNotEqual(ResizeLongestSide(150, order: .pillow13).apply(tall).pixels, want)
        let input = CLIPImagePreprocessor(size: 150)(tall)
        XCTAssert(input.validSize == (150, 30))
    }

    func testResizeIdentityAndGray() {
        var gen = SplitMix(seed: 5)
        let img = RGBImage(width: 9, height: 7, pixels: (0..<189).map { _ in gen.byte() })
        XCTAssertEqual(img.resized(width: 9, height: 7), img, "same size: a copy, as Pillow")
        // gray and RGB resampling agree channel by channel
        let gray = GrayImage(width: 9, height: 7, pixels: stride(from: 0, to: 189, by: 3).map { img.pixels[$0] })
        let rg = img.resized(width: 4, height: 12), gg = gray.resized(width: 4, height: 12)
        XCTAssertEqual(stride(from: 0, to: rg.pixels.count, by: 3).map { rg.pixels[$0] }, gg.pixels)
    }
}
