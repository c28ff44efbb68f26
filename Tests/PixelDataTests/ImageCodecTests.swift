import CPixelImage
import Foundation
import XCTest
@testable import PixelData

/// Decoding against OpenCV / Pillow (tools/fixtures/images_masks.py), encoding round trips, atomic
/// writes, EXIF orientation, and malformed files.
final class ImageCodecTests: XCTestCase {

    // MARK: decoding as the reference (cv2.imread -> RGB)

    func testDecodesEveryFixtureAsOpenCV() throws {
        let names = DataFixtures.imageNames
        XCTAssertGreaterThanOrEqual(names.count, 30)
        for name in names {
            let img = try Image.load(DataFixtures.image(name))
            let (expected, shape) = try DataFixtures.bytes("rgb/\(name)")
            XCTAssertEqual([img.height, img.width, 3], shape, name)
            let d = maxDiff(img.pixels, expected)
            print("decode \(name): \(img.width)x\(img.height), max |ours - cv2.imread| = \(d)")
            XCTAssertEqual(d, 0, "\(name): decode differs from cv2.imread")
        }
    }

    func testPillowJPEGDecodeSpread() throws {
        // Pillow and OpenCV bundle other libjpeg-turbo builds (3.2.0 / 3.1.2) than Debian's 2.1.5; the
        // fixture stores Pillow's decode only where it differs from OpenCV's: the CMYK conversion.
        for name in DataFixtures.imageNames where name.hasSuffix(".jpg") {
            let ours = try Image.load(DataFixtures.image(name), applyEXIFOrientation: false)
            guard DataFixtures.has("pil/\(name)") else { continue }
            let d = maxDiff(ours.pixels, try DataFixtures.bytes("pil/\(name)").values)
            print("decode \(name): max |ours - Pillow| = \(d) (Pillow converts CMYK differently from OpenCV)")
            XCTAssertLessThanOrEqual(d, 1, name)
        }
    }

    func testEXIFOrientationAppliedByDefaultAndOnRequestNot() throws {
        var seen = 0
        for name in DataFixtures.imageNames {
            let stored = try DataFixtures.ints("orientation/\(name)")[0]
            let bytes = try Image.readFile(DataFixtures.image(name))
            XCTAssertEqual(try Image.exifOrientation(bytes, name: name), stored == 0 ? nil : stored, name)
            guard stored != 0 else { continue }
            seen += 1
            let raw = try Image.load(DataFixtures.image(name), applyEXIFOrientation: false)
            let (expected, shape) = try DataFixtures.bytes("rgb_noorient/\(name)")
            XCTAssertEqual([raw.height, raw.width, 3], shape, name)
            XCTAssertEqual(raw.pixels, expected, "\(name) without orientation")
            let oriented = try Image.load(DataFixtures.image(name))
            if stored >= 5 { XCTAssertEqual([oriented.width, oriented.height], [raw.height, raw.width], name) }
        }
        XCTAssertEqual(seen, 5, "orientation fixtures (JPEG 3/6/8, PNG eXIf before and after IDAT)")
    }

    func testRGBADecodeAsPillowConvert() throws {
        var seen = 0
        for name in DataFixtures.imageNames where DataFixtures.has("rgba/\(name)") {
            seen += 1
            let img = try Image.loadRGBA(DataFixtures.image(name))
            let (expected, shape) = try DataFixtures.bytes("rgba/\(name)")
            XCTAssertEqual([img.height, img.width, 4], shape, name)
            XCTAssertEqual(maxDiff(img.pixels, expected), 0, "\(name) RGBA")
            XCTAssertEqual(img.rgb, try Image.load(DataFixtures.image(name)), "\(name): RGBA minus alpha is the RGB decode")
        }
        XCTAssertGreaterThanOrEqual(seen, 15)
    }

    func testLabelMapsAsPillowArrays() throws {
        var seen = 0
        for name in DataFixtures.imageNames where DataFixtures.has("labels/\(name)") {
            seen += 1
            let img = try Image.loadLabels(DataFixtures.image(name))
            let (expected, shape) = try DataFixtures.bytes("labels/\(name)")
            XCTAssertEqual([img.height, img.width], Array(shape.prefix(2)), name)
            XCTAssertEqual(img.pixels, expected, "\(name) labels")
        }
        XCTAssertGreaterThanOrEqual(seen, 9)
        assertThrows(try Image.loadLabels(DataFixtures.image("rgb8_37x53.png")), containing: ["rgb8_37x53.png", "RGB PNG", "label"], "colour label map")
        assertThrows(try Image.loadLabels(DataFixtures.image("gray16_interlaced_35x45.png")), containing: ["16-bit"], "16-bit label map")
        assertThrows(try Image.loadLabels(DataFixtures.image("gray_29x23.jpg")), containing: ["gray_29x23.jpg", "JPEG"], "JPEG label map")
    }

    // MARK: orientation transforms

    func testOrientationTransformsMatchTransposeAndFlips() throws {
        // 3 wide, 2 tall; pixel value = 10 * y + x
        let w = 3, h = 2
        let src = (0..<(w * h)).map { UInt8(10 * ($0 / w) + $0 % w) }
        func grid(_ p: [UInt8], _ w: Int, _ h: Int) -> [[UInt8]] { (0..<h).map { y in Array(p[(y * w)..<(y * w + w)]) } }
        let g = grid(src, w, h)
        let transpose = (0..<w).map { x in (0..<h).map { y in g[y][x] } }
        let flipLR: ([[UInt8]]) -> [[UInt8]] = { $0.map { $0.reversed() } }
        let flipTB: ([[UInt8]]) -> [[UInt8]] = { $0.reversed() }
        // what OpenCV's ApplyExifOrientation does for each tag
        let expected: [Int: [[UInt8]]] = [
            1: g, 2: flipLR(g), 3: flipTB(flipLR(g)), 4: flipTB(g),
            5: transpose, 6: flipLR(transpose), 7: flipTB(flipLR(transpose)), 8: flipTB(transpose),
        ]
        for o in 1...8 {
            var img = PixelImage()
            img.width = Int32(w); img.height = Int32(h); img.channels = 1
            img.pixels = malloc(src.count)!.assumingMemoryBound(to: UInt8.self)   // the C side frees it
            img.pixels.initialize(from: src, count: src.count)
            XCTAssertEqual(pixel_apply_orientation(&img, Int32(o), nil, 0), 0)
            let out = Array(UnsafeBufferPointer(start: img.pixels, count: src.count))
            pixel_free(img.pixels)
            XCTAssertEqual(grid(out, Int(img.width), Int(img.height)), expected[o], "orientation \(o)")
        }
    }

    func testEXIFParserEndiannessAndGarbage() {
        func tiff(_ o: UInt16, little: Bool, type: UInt16 = 3) -> [UInt8] {
            func u16(_ v: UInt16) -> [UInt8] { little ? [UInt8(v & 0xFF), UInt8(v >> 8)] : [UInt8(v >> 8), UInt8(v & 0xFF)] }
            func u32(_ v: UInt32) -> [UInt8] { little ? (0..<4).map { UInt8((v >> (8 * $0)) & 0xFF) } : (0..<4).reversed().map { UInt8((v >> (8 * $0)) & 0xFF) } }
            let head: [UInt8] = little ? [0x49, 0x49, 42, 0] : [0x4D, 0x4D, 0, 42]
            // two entries: an unrelated tag, then the orientation
            return head + u32(8) + u16(2) + u16(0x010F) + u16(2) + u32(4) + u32(0) + u16(0x0112) + u16(type) + u32(1) + u16(o) + u16(0) + u32(0)
        }
        for o: UInt16 in 1...8 {
            XCTAssertEqual(pixel_exif_orientation(tiff(o, little: true), tiff(o, little: true).count), Int32(o))
            XCTAssertEqual(pixel_exif_orientation(tiff(o, little: false), tiff(o, little: false).count), Int32(o))
        }
        XCTAssertEqual(pixel_exif_orientation(tiff(9, little: true), 38), 0, "out-of-range value")
        XCTAssertEqual(pixel_exif_orientation(tiff(6, little: true, type: 7), 38), 0, "wrong type")
        let t = tiff(6, little: true)
        // header 8 + entry count 2 + two 12-byte entries: the orientation entry ends at byte 34
        for n in 0..<t.count { XCTAssertEqual(pixel_exif_orientation(t, n), n >= 34 ? 6 : 0, "cut at \(n)") }
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            var b = t
            for _ in 0..<3 { b[Int.random(in: 0..<b.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
            let o = pixel_exif_orientation(b, b.count)
            XCTAssert((0...8).contains(o))
        }
    }

    // MARK: encoding

    func testPNGRoundTripsExactly() throws {
        let dir = try makeScratchDirectory(self)
        var gen = SplitMix(seed: 7)
        for (w, h) in [(1, 1), (37, 53), (64, 3), (5, 200)] {
            let rgb = RGBImage(width: w, height: h, pixels: (0..<(w * h * 3)).map { _ in gen.byte() })
            for level in [-1, 0, 9] {
                let bytes = try rgb.encodePNG(compressionLevel: level)
                XCTAssertEqual(ImageFormat.detect(bytes), .png)
                XCTAssertEqual(try Image.decode(bytes, name: "rgb"), rgb, "RGB \(w)x\(h) level \(level)")
            }
            let gray = GrayImage(width: w, height: h, pixels: (0..<(w * h)).map { _ in gen.byte() })
            try gray.writePNG(dir + "/g.png")
            XCTAssertEqual(try GrayImage.load(dir + "/g.png"), gray, "gray \(w)x\(h)")
            let rgbFromGray = try Image.load(dir + "/g.png")
            XCTAssertEqual(rgbFromGray.pixels, gray.pixels.flatMap { [$0, $0, $0] }, "gray replicated to RGB")
            let rgba = RGBAImage(width: w, height: h, pixels: (0..<(w * h * 4)).map { _ in gen.byte() })
            try rgba.writePNG(dir + "/a.png")
            XCTAssertEqual(try Image.loadRGBA(dir + "/a.png"), rgba)
            try rgb.writePNG(dir + "/c.png")
            XCTAssertEqual(try RGBImage.load(dir + "/c.png"), rgb)
        }
        assertThrows(try Codec.encodePNG([], width: 0, height: 0, channels: 3, level: -1, name: "empty.png"),
                     containing: ["empty.png", "0x0"], "empty PNG")
        assertThrows(try RGBImage(width: 2, height: 2).encodePNG(compressionLevel: 12, name: "x.png"),
                     containing: ["x.png", "compression level 12"], "bad level")
    }

    func testJPEGEncodeDecodes() throws {
        let dir = try makeScratchDirectory(self)
        let src = try Image.load(DataFixtures.image("photo_200x120.png"))
        var sizes: [Int] = []
        for q in [30, 75, 95] {
            try src.writeJPEG(dir + "/p.jpg", quality: q)
            let back = try Image.load(dir + "/p.jpg")
            XCTAssertEqual([back.width, back.height], [src.width, src.height])
            var sum = 0.0
            for i in 0..<src.pixels.count { sum += abs(Double(src.pixels[i]) - Double(back.pixels[i])) }
            let mae = sum / Double(src.pixels.count)
            print("JPEG quality \(q): \(try Image.readFile(dir + "/p.jpg").count) bytes, mean |diff| \(String(format: "%.2f", mae))")
            XCTAssertLessThan(mae, q >= 75 ? 6 : 10, "quality \(q)")
            sizes.append(try Image.readFile(dir + "/p.jpg").count)
        }
        XCTAssertLessThan(sizes[0], sizes[1]); XCTAssertLessThan(sizes[1], sizes[2])
        let gray = GrayImage(width: 40, height: 24, pixels: (0..<960).map { UInt8(($0 % 40) * 6) })
        try gray.writeJPEG(dir + "/g.jpg", quality: 100)
        let back = try Image.load(dir + "/g.jpg")
        XCTAssertLessThanOrEqual(maxDiff(back.pixels, gray.pixels.flatMap { [$0, $0, $0] }), 2)
        assertThrows(try src.encodeJPEG(quality: 0, name: "q.jpg"), containing: ["q.jpg", "quality 0"], "quality 0")
        assertThrows(try Codec.encodeJPEG([0, 0, 0, 0], width: 1, height: 1, channels: 4, quality: 90, name: "rgba.jpg"),
                     containing: ["rgba.jpg", "1 or 3 channels"], "RGBA JPEG")
    }

    func testAtomicWrites() throws {
        let dir = try makeScratchDirectory(self)
        let a = RGBImage(width: 4, height: 3, pixels: [UInt8](repeating: 10, count: 36))
        let b = RGBImage(width: 2, height: 2, pixels: [UInt8](repeating: 200, count: 12))
        try a.writePNG(dir + "/x.png")
        try b.writePNG(dir + "/x.png")   // replaces
        XCTAssertEqual(try Image.load(dir + "/x.png"), b)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["x.png"], "no temporary files left")
        assertThrows(try a.writePNG(dir + "/missing/x.png"), containing: [dir + "/missing/x.png", "cannot create"], "missing directory")
        assertThrows(try a.writeJPEG(dir + "/x.png/y.jpg"), containing: ["y.jpg"], "file as directory")
        XCTAssertEqual(try Image.load(dir + "/x.png"), b, "a failed write leaves the old file alone")
    }

    // MARK: malformed input

    func testMalformedFilesAreErrorsNamingTheFileAndProblem() throws {
        let dir = try makeScratchDirectory(self)
        func file(_ name: String, _ bytes: [UInt8]) -> String {
            let p = dir + "/" + name
            _ = FileManager.default.createFile(atPath: p, contents: Data(bytes))
            return p
        }
        let png = try Image.readFile(DataFixtures.image("rgb8_37x53.png"))
        let ipng = try Image.readFile(DataFixtures.image("rgb8_interlaced_45x35.png"))
        let jpg = try Image.readFile(DataFixtures.image("baseline420_64x48.jpg"))
        let pjpg = try Image.readFile(DataFixtures.image("progressive_57x39.jpg"))

        assertThrows(try Image.load(dir + "/nope.png"), containing: ["nope.png", "no such file"], "missing file")
        assertThrows(try Image.load(dir), containing: [dir, "directory"], "directory")
        assertThrows(try Image.load(file("empty.jpg", [])), containing: ["empty.jpg", "empty file"], "empty file")
        var gen = SplitMix(seed: 3)
        assertThrows(try Image.load(file("random.bin", (0..<500).map { _ in gen.byte() })),
                     containing: ["random.bin", "unknown image format"], "random bytes")
        assertThrows(try Image.load(file("gif.gif", Array("GIF89a....".utf8))), containing: ["gif.gif", "GIF"], "GIF")
        assertThrows(try Image.load(file("sig.png", Array(png.prefix(8)))), containing: ["sig.png", "PNG decode error", "truncated"], "PNG signature only")
        assertThrows(try Image.load(file("head.png", Array(png.prefix(40)))), containing: ["head.png", "truncated"], "PNG header only")
        assertThrows(try Image.load(file("half.png", Array(png.prefix(png.count / 2)))), containing: ["half.png", "PNG decode error"], "PNG half")
        assertThrows(try Image.load(file("noend.png", Array(png.dropLast(12)))), containing: ["noend.png", "truncated"], "PNG without IEND")
        assertThrows(try Image.load(file("ihalf.png", Array(ipng.prefix(ipng.count * 2 / 3)))), containing: ["ihalf.png", "PNG decode error"], "interlaced PNG cut")
        var crc = png
        crc[60] ^= 0x55   // inside IDAT
        assertThrows(try Image.load(file("crc.png", crc)), containing: ["crc.png", "PNG decode error"], "PNG CRC")
        assertThrows(try Image.load(file("randpng.png", Array(png.prefix(8)) + (0..<300).map { _ in gen.byte() })),
                     containing: ["randpng.png", "PNG decode error"], "PNG signature + random bytes")
        assertThrows(try Image.load(file("soi.jpg", Array(jpg.prefix(3)))), containing: ["soi.jpg", "JPEG decode error"], "JPEG SOI only")
        assertThrows(try Image.load(file("half.jpg", Array(jpg.prefix(jpg.count / 2)))),
                     containing: ["half.jpg", "JPEG decode error", "premature end"], "JPEG half")
        assertThrows(try Image.load(file("phalf.jpg", Array(pjpg.prefix(pjpg.count * 3 / 4)))),
                     containing: ["phalf.jpg", "JPEG decode error"], "progressive JPEG cut")
        assertThrows(try Image.load(file("hdr.jpg", Array(jpg.prefix(300)))), containing: ["hdr.jpg", "JPEG decode error"], "JPEG headers only")
        assertThrows(try Image.load(file("cut.jpg", Array(jpg.dropLast(40)))), containing: ["cut.jpg", "premature end"], "JPEG cut near the end")
        // complete data without the final EOI marker decodes as the whole file (OpenCV only warns)
        for (name, bytes) in [("noeoi.jpg", jpg), ("pnoeoi.jpg", pjpg)] {
            XCTAssertEqual(Array(bytes.suffix(2)), [0xFF, 0xD9])
            XCTAssertEqual(try Image.load(file(name, Array(bytes.dropLast(2)))), try Image.decode(bytes, name: name), name)
        }
        XCTAssertEqual(try Image.load(file("junk.jpg", jpg + Array("trailing junk".utf8))), try Image.decode(jpg, name: "jpg"), "data after EOI")
        assertThrows(try Image.load(file("randjpg.jpg", [0xFF, 0xD8, 0xFF] + (0..<400).map { _ in gen.byte() })),
                     containing: ["randjpg.jpg", "JPEG decode error"], "JPEG magic + random bytes")
    }

    func testCorruptedFixturesNeverCrash() throws {
        // Random truncations and byte flips of real files: each either decodes or throws.
        var gen = SplitMix(seed: 11)
        var decoded = 0, failed = 0
        for name in ["rgb8_interlaced_45x35.png", "pal4_interlaced_27x14.png", "rgb16_29x13.png", "baseline420_64x48.jpg",
                     "progressive_57x39.jpg", "cmyk_24x16.jpg", "exif6_20x12.jpg"] {
            let bytes = try Image.readFile(DataFixtures.image(name))
            for i in 0..<40 {
                var b = bytes
                if i % 2 == 0 {
                    b = Array(b.prefix(Int(gen.next() % UInt64(b.count))))
                } else {
                    for _ in 0..<(1 + Int(gen.next() % 8)) { b[3 + Int(gen.next() % UInt64(b.count - 3))] = gen.byte() }
                }
                do { _ = try Image.decode(b, name: name); decoded += 1 } catch { failed += 1 }
            }
        }
        print("corrupted fixtures: \(decoded) decoded, \(failed) rejected")
        XCTAssertGreaterThan(failed, 100)
    }
}

/// Deterministic generator for test data.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func byte() -> UInt8 { UInt8(truncatingIfNeeded: next() >> 32) }
}
