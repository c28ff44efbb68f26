import Foundation
import XCTest
@testable import PixelData
import PixelTensor

final class OverlayTests: XCTestCase {
    func testBinaryMasksThresholdAtZero() {
        let logits = Tensor([-1, 0, 0.001, 5, 2, -3], shape: [2, 1, 3])
        let m = MaskOverlay.binaryMasks(logits)
        XCTAssertEqual(m.count, 2)
        XCTAssertEqual(m[0].pixels, [0, 0, 255])
        XCTAssertEqual(m[1].pixels, [255, 255, 0])
        XCTAssertEqual(m[0].width, 3)
        XCTAssertEqual(m[0].height, 1)
    }

    func testOverlayBlendsOutlinesAndAddsALegend() {
        let W = 40, H = 30
        let image = RGBImage(width: W, height: H, pixels: [UInt8](repeating: 100, count: W * H * 3))
        var mask = GrayImage(width: W, height: H)
        for y in 10..<20 { for x in 10..<30 { mask.pixels[y * W + x] = 255 } }
        let out = MaskOverlay.render(image: image, masks: [mask, GrayImage(width: W, height: H)])
        XCTAssertEqual(out.height, H + 2 * (9 + 4) + 4)
        XCTAssertGreaterThanOrEqual(out.width, W)
        let c = MaskOverlay.palette[0]
        // inside: 50% blend of 100 and the colour; edge: the colour; outside: untouched
        let inside = out[15, 15]
        XCTAssertEqual(inside.r, UInt8((0.5 * 100 + 0.5 * Float(c.0)).rounded()))
        XCTAssertEqual(out[10, 15].r, c.0)
        XCTAssertEqual(out[10, 15].g, c.1)
        XCTAssertEqual(out[5, 5].r, 100)
        // legend: swatch of each colour, and black text pixels
        XCTAssertEqual(out[4, H + 6].r, c.0)
        let c1 = MaskOverlay.palette[1]
        XCTAssertEqual(out[4, H + 6 + 13].g, c1.1)
        var black = 0
        for y in H..<out.height { for x in 0..<out.width where out[x, y] == (0, 0, 0) { black += 1 } }
        XCTAssertGreaterThan(black, 10)
    }

    func testLegendWidensASmallImage() {
        let image = RGBImage(width: 8, height: 8)
        let out = MaskOverlay.render(image: image, masks: [GrayImage(width: 8, height: 8)], labels: ["a long label"])
        XCTAssertEqual(out.width, MaskOverlay.textWidth("1 a long label") + 2 + 7 + 6 + 2)
        XCTAssertEqual(out.height, 8 + 13 + 4)
    }

    func testFontGlyphsAreFiveBySeven() {
        for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ -.:,'()/#?" {
            XCTAssertTrue(BitmapFont.has(c), "\(c)")
            let g = BitmapFont.glyph(c)
            XCTAssertEqual(g.count, 7, "\(c)")
            XCTAssertTrue(g.allSatisfy { $0 < 32 }, "\(c)")
        }
        XCTAssertEqual(BitmapFont.glyph("~"), BitmapFont.glyph("?"))
        // '1' drawn at scale 2: its stem column is set
        var img = RGBImage(width: 12, height: 14, pixels: [UInt8](repeating: 255, count: 12 * 14 * 3))
        MaskOverlay.drawText(&img, "1", x: 0, y: 0, scale: 2, color: (0, 0, 0))
        XCTAssertEqual(img[4, 6].r, 0)      // column 2 of row 3
        XCTAssertEqual(img[0, 6].r, 255)
        // drawing off the image is clipped, not a crash
        MaskOverlay.drawText(&img, "WIDE TEXT", x: 10, y: 12, scale: 3, color: (0, 0, 0))
    }

    func testWriteProducesDecodablePNGsAtTheImageSize() throws {
        let d = NSTemporaryDirectory() + "pixellm-overlay-\(getpid())"
        try? FileManager.default.removeItem(atPath: d)
        let image = RGBImage(width: 23, height: 17, pixels: (0..<(23 * 17 * 3)).map { UInt8($0 % 251) })
        let logits = Tensor.randn([3, 17, 23], rng: &RNGHolder.rng)
        let paths = try MaskOverlay.write(image: image, logits: logits, to: d)
        XCTAssertEqual(paths.map { ($0 as NSString).lastPathComponent }, ["mask_1.png", "mask_2.png", "mask_3.png", "overlay.png"])
        let expected = MaskOverlay.binaryMasks(logits)
        for k in 0..<3 {
            let m = try GrayImage.load(paths[k])
            XCTAssertEqual(m, expected[k])
        }
        let o = try RGBImage.load(paths[3])
        XCTAssertEqual(o.height, 17 + 3 * 13 + 4)
        // no masks: only the overlay (the image itself)
        let d2 = d + "-none"
        let p2 = try MaskOverlay.write(image: image, logits: nil, to: d2)
        XCTAssertEqual(p2.count, 1)
        XCTAssertEqual(try RGBImage.load(p2[0]), image)
    }
}

enum RNGHolder { nonisolated(unsafe) static var rng = RNG(seed: 4) }
