import Foundation
import XCTest
@testable import PixelData

/// RLE and polygon masks against pycocotools (tools/fixtures/images_masks.py -> masks.json).
final class COCOMaskTests: XCTestCase {
    static let fixture: [String: Any] = (try? DataFixtures.json("masks.json")) ?? [:]

    func cases(_ key: String) -> [[String: Any]] { Self.fixture[key] as? [[String: Any]] ?? [] }

    func rowsMask(_ rows: [String], h: Int, w: Int) -> BinaryMask {
        BinaryMask(height: h, width: w, data: rows.flatMap { $0.utf8.map { $0 == UInt8(ascii: "1") ? 1 : 0 } })
    }

    func testPolygonRasterisationMatchesPycocotools() throws {
        let all = cases("polygons")
        XCTAssertGreaterThanOrEqual(all.count, 300)
        var exact = 0, kinds: [String: Int] = [:]
        for c in all {
            let name = c["name"] as! String, h = c["h"] as! Int, w = c["w"] as! Int
            let poly = (c["polygons"] as! [[Double]])[0]
            let rle = try RLE.polygon(poly, height: h, width: w, item: name)
            let want = (c["rles"] as! [String])[0]
            XCTAssertEqual(rle.compressed, want, "\(name) \(h)x\(w) polygon \(poly)")
            XCTAssertEqual(rle.area, c["area"] as! Int, name)
            XCTAssertEqual(rle.counts.reduce(0, +), h * w, name)
            if let rows = c["rows"] as? [String] {
                XCTAssertEqual(rle.decode(), rowsMask(rows, h: h, w: w), "\(name) decoded")
            }
            if rle.compressed == want { exact += 1 }
            kinds[String(name.split(separator: "_")[0]), default: 0] += 1
        }
        print("polygons: \(exact)/\(all.count) RLE strings equal to pycocotools; kinds \(kinds.sorted { $0.key < $1.key })")
    }

    func testMultiPolygonObjectsSumThenBinarise() throws {
        let all = cases("objects")
        XCTAssertGreaterThanOrEqual(all.count, 20)
        var overlapping = 0
        for c in all {
            let name = c["name"] as! String, h = c["h"] as! Int, w = c["w"] as! Int
            let seg = try COCOSegmentation(json: c["segmentation"]!, item: name)
            let parts = try seg.rles(height: h, width: w, item: name)
            XCTAssertEqual(parts.map(\.compressed), c["rles"] as! [String], "\(name) frPyObjects")
            let merged = try RLE.merge(parts)
            XCTAssertEqual(merged.compressed, c["merged"] as! String, "\(name) merge")
            let mask = try seg.mask(height: h, width: w, item: name)
            XCTAssertEqual(RLE(encoding: mask).compressed, c["union"] as! String, "\(name) decode-sum > 0")
            if (c["max_overlap"] as! Int) > 1 { overlapping += 1 }
        }
        XCTAssertGreaterThan(overlapping, 3, "objects whose parts overlap (sum > 1 somewhere)")
    }

    func testRLEEncodeDecodeAreaAndStrings() throws {
        let all = cases("rle")
        XCTAssertGreaterThanOrEqual(all.count, 40)
        for c in all {
            let name = c["name"] as! String, h = c["h"] as! Int, w = c["w"] as! Int
            let string = c["string"] as! String
            let parsed = try RLE(height: h, width: w, compressed: string, item: name)
            XCTAssertEqual(parsed.compressed, string, "\(name) string round trip")
            XCTAssertEqual(parsed.area, c["area"] as! Int, name)
            if let rows = c["rows"] as? [String] {
                let mask = rowsMask(rows, h: h, w: w)
                let enc = RLE(encoding: mask)
                XCTAssertEqual(enc.counts, c["counts"] as! [Int], "\(name) encode (column-major runs)")
                XCTAssertEqual(enc.compressed, string, "\(name) encode string")
                XCTAssertEqual(parsed.decode(), mask, "\(name) decode")
                XCTAssertEqual(parsed.counts, enc.counts)
                XCTAssertEqual(mask.area, enc.area)
            } else {
                XCTAssertEqual(RLE(encoding: parsed.decode()), parsed, "\(name) decode/encode")
            }
        }
    }

    func testColumnMajorOrder() throws {
        // 2 x 3 mask [[1, 0, 0], [1, 1, 0]]: columns (1,1) (0,1) (0,0) -> 1 1 0 1 0 0 -> runs 0, 2, 1, 1, 2
        let m = BinaryMask(height: 2, width: 3, data: [1, 0, 0, 1, 1, 0])
        let r = RLE(encoding: m)
        XCTAssertEqual(r.counts, [0, 2, 1, 1, 2])
        XCTAssertEqual(r.decode(), m)
        XCTAssertEqual(try RLE(height: 2, width: 3, counts: [1, 2, 3]).decode().data, [0, 1, 0, 1, 0, 0])
    }

    func testMergeUnionAndIntersection() throws {
        for (i, c) in cases("merges").enumerated() {
            let h = c["h"] as! Int, w = c["w"] as! Int
            let rles = try (c["strings"] as! [String]).map { try RLE(height: h, width: w, compressed: $0) }
            XCTAssertEqual(try RLE.merge(rles).compressed, c["union"] as! String, "merge \(i) union")
            XCTAssertEqual(try RLE.merge(rles, intersect: true).compressed, c["intersection"] as! String, "merge \(i) intersection")
        }
        let a = try RLE(height: 2, width: 2, counts: [4]), b = try RLE(height: 2, width: 3, counts: [6])
        assertThrows(try RLE.merge([a, b], item: "ann 7"), containing: ["ann 7", "2x3", "2x2"], "size mismatch")
        // leading empty run and empty runs inside are handled
        let c = try RLE(height: 1, width: 6, counts: [0, 2, 0, 1, 3])
        XCTAssertEqual(try RLE.merge([c, try RLE(height: 1, width: 6, counts: [6])]).counts, [0, 3, 3])
    }

    func testSegmentationForms() throws {
        for c in cases("segmentations") {
            let name = c["name"] as! String, h = c["h"] as! Int, w = c["w"] as! Int
            let seg = try COCOSegmentation(json: c["json"]!, item: name)
            XCTAssertEqual(RLE(encoding: try seg.mask(height: h, width: w, item: name)).compressed, c["mask"] as! String, name)
        }
        XCTAssertEqual(try COCOSegmentation(json: [Any](), item: "e").mask(height: 2, width: 3, item: "e"), BinaryMask(height: 2, width: 3))
    }

    func testMalformedSegmentationsAreErrorsNamingTheItem() throws {
        func parse(_ json: String) throws -> COCOSegmentation {
            try COCOSegmentation(json: try JSONSerialization.jsonObject(with: Data(json.utf8), options: .fragmentsAllowed), item: "muse_val.json ann 12")
        }
        let item = "muse_val.json ann 12"
        assertThrows(try parse("[[1, 2, 3, 4, 5, 6, 7]]"), containing: [item, "polygon 0", "odd number"], "odd coordinates")
        assertThrows(try parse("[[1, 2, 3, 4, 5, 6], [1, 2, 3]]"), containing: [item, "polygon 1", "odd number"], "odd coordinates, part 1")
        assertThrows(try parse("[[1, 2, 3, 4]]"), containing: [item, "4 coordinates", "bounding box"], "bbox-like polygon")
        assertThrows(try parse("[[1, 2]]"), containing: [item, "2 coordinates"], "one point")
        assertThrows(try parse("[[1, 2, 3, 4, 5, 6], []]"), containing: [item, "polygon 1 is empty"], "empty polygon")
        assertThrows(try parse("[1, 2, 3, 4, 5, 6]"), containing: [item, "flat list"], "flat list")
        assertThrows(try parse("[[1, 2, \"a\", 4, 5, 6]]"), containing: [item, "coordinate 2", "string"], "string coordinate")
        assertThrows(try parse("[[1, 2, true, 4, 5, 6]]"), containing: [item, "coordinate 2", "a boolean"], "bool coordinate")
        assertThrows(try parse("\"abc\""), containing: [item, "neither polygons nor RLE"], "string")
        assertThrows(try parse("42"), containing: [item, "neither polygons nor RLE"], "number")
        assertThrows(try parse("[\"abc\"]"), containing: [item, "neither polygons nor RLE"], "list of strings")
        assertThrows(try parse("{\"counts\": [1, 2]}"), containing: [item, "size"], "RLE without size")
        assertThrows(try parse("{\"size\": [2, 3]}"), containing: [item, "no \"counts\""], "RLE without counts")
        assertThrows(try parse("{\"size\": [2, 3], \"counts\": 5}"), containing: [item, "neither a list of runs nor a string"], "counts number")
        assertThrows(try parse("{\"size\": [2, 3], \"counts\": [1, 2]}"), containing: [item, "sum to 3", "6"], "counts short")
        assertThrows(try parse("{\"size\": [2, 3], \"counts\": [1, 2, 4]}"), containing: [item, "sum to 7"], "counts long")
        assertThrows(try parse("{\"size\": [2, 3], \"counts\": [7, -1]}"), containing: [item, "negative"], "negative count")
        assertThrows(try parse("{\"size\": [2, 3], \"counts\": [1.5, 4.5]}"), containing: [item, "count 0", "not an integer"], "fractional count")
        assertThrows(try parse("{\"size\": [2, 3], \"counts\": \"3\"}"), containing: [item, "sum to 3"], "compressed short")
        assertThrows(try parse("{\"size\": [2, 3], \"counts\": \"6 \"}"), containing: [item, "invalid character"], "compressed bad char")
        assertThrows(try parse("{\"size\": [2, 3], \"counts\": \"6P\"}"), containing: [item, "ends inside a value"], "compressed cut")
        assertThrows(try parse("{\"size\": [2, 3], \"counts\": \"ooooooooooooooo1\"}"), containing: [item, "too long"], "compressed overlong")
        assertThrows(try parse("[{\"size\": [2, 3], \"counts\": \"6\"}, [1, 2]]"), containing: [item, "part 1"], "mixed list")
        let seg = try parse("{\"size\": [2, 3], \"counts\": [6]}")
        assertThrows(try seg.mask(height: 3, width: 2, item: item), containing: [item, "[2, 3]", "[3, 2]"], "RLE size vs image")
        assertThrows(try RLE.polygon([0, 0, .nan, 1, 2, 2], height: 4, width: 4, item: "p"), containing: ["p", "coordinate 2"], "NaN")
        assertThrows(try RLE.polygon([0, 0, 1e300, 1, 2, 2], height: 4, width: 4, item: "p"), containing: ["p", "coordinate 2"], "huge")
        assertThrows(try RLE.polygon([0, 0, 1], height: 4, width: 4, item: "p"), containing: ["p", "3 coordinates"], "odd")
        assertThrows(try RLE(height: 2, width: 2, counts: [1, 2], item: "r"), containing: ["r", "sum to 3", "4"], "bad RLE")
        // counts whose sum passes Int.max (found by FuzzRLE: an overflow trap), plain and compressed (each "o" group of
        // 12 characters is a delta near 2^59, added to the count two before it)
        assertThrows(try RLE(height: 2, width: 2, counts: [Int.max, Int.max], item: "r"), containing: ["r", "overflow"], "sum overflow")
        let huge = String(repeating: "0", count: 2) + String(repeating: "ooooooooooo?", count: 40)
        assertThrows(try RLE(height: 2, width: 2, compressed: huge, item: "c"), containing: ["c", "overflow"], "delta overflow")
        assertThrows(try RLE(height: Int.max, width: 2, counts: [], item: "s"), containing: ["s", "size"], "size overflow")
    }

    func testPolygonEdgeCases() throws {
        // a 1-point polygon, a 2-point polygon and repeated vertices draw nothing harmful
        XCTAssertEqual(try RLE.polygon([2, 2], height: 5, width: 5).counts, [25])
        XCTAssertEqual(try RLE.polygon([1, 1, 3, 3], height: 5, width: 5).counts.reduce(0, +), 25)
        XCTAssertEqual(try RLE.polygon([1, 1, 1, 1, 4, 1, 4, 4, 1, 4], height: 6, width: 6),
                       try RLE.polygon([1, 1, 4, 1, 4, 4, 1, 4], height: 6, width: 6))
        // the 1 x 1 and 0 x 0 images
        XCTAssertEqual(try RLE.polygon([-1, -1, 2, -1, 2, 2, -1, 2], height: 1, width: 1).counts, [0, 1])
        XCTAssertEqual(try RLE.polygon([-1, -1, 2, -1, 2, 2], height: 0, width: 0).counts, [0])
    }
}
