import Foundation
import XCTest
@testable import PixelData

/// The top-level list scanner the MUSE reader indexes its json with (elements parsed one at a time).
final class ReaderJSONTests: XCTestCase {
    func ranges(_ s: String) throws -> [String] {
        let d = Data(s.utf8)
        return try ReaderJSON.listElementRanges(d, file: "x.json").map { String(decoding: d.subdata(in: $0), as: UTF8.self) }
    }

    func testElementsAreFoundAsJSONSerializationSeesThem() throws {
        let doc = """
        \u{FEFF}  [ {"a": "x],}[{\\"", "b": [1, {"c": "\\\\"}]} ,
          [ ] , "s,]\\u005d" ,12.5e3, true,null , {"nested": {"deep": [[["]"]]]}} ]\n
        """
        let got = try ranges(doc)
        XCTAssertEqual(got.count, 7)
        let whole = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(doc.utf8.dropFirst(3))) as? [Any])
        for (k, (text, want)) in zip(got, whole).enumerated() {
            let one = try ReaderJSON.parseElement(Data(text.utf8), file: "x.json", entry: k)
            func canonical(_ v: Any) throws -> Data { try JSONSerialization.data(withJSONObject: v, options: [.sortedKeys, .fragmentsAllowed]) }
            XCTAssertEqual(try canonical(one), try canonical(want), "element \(k): \(text)")
        }
        XCTAssertEqual(try ranges("[]"), [])
        XCTAssertEqual(try ranges(" [ ] "), [])
    }

    func testStructureErrorsNameTheFile() {
        func expect(_ s: String, _ words: [String]) {
            XCTAssertThrowsError(try ranges(s)) { e in
                for w in ["x.json"] + words { XCTAssertTrue("\(e)".contains(w), "\(e) lacks \(w)") }
            }
        }
        expect("{\"a\": 1}", ["not a list"])
        expect("[{\"a\": 1}, {\"b\": ", ["not terminated", "truncated"])
        expect("[1, 2] x", ["bytes after the top-level list"])
        expect("[1, , 2]", ["empty element"])
        expect("[1 }", ["unbalanced"])
        expect("[\"unterminated]", ["not terminated"])
        XCTAssertThrowsError(try ReaderJSON.parseElement(Data("{\"a\": }".utf8), file: "x.json", entry: 4)) { e in
            XCTAssertTrue("\(e)".contains("x.json") && "\(e)".contains("entry 4"), "\(e)")
        }
    }

    func testDictMembersAndTheirLists() throws {
        let doc = #"{ "images" : [ {"id": 1, "file_name": "a,}.jpg"}, {"id": 2} ], "k\"ey" : {"x": [1, 2]}, "annotations": [] , "n": 3 }"#
        let data = Data(doc.utf8)
        let m = try ReaderJSON.objectMemberRanges(data, file: "i.json")
        XCTAssertEqual(Set(m.keys), ["images", "k\"ey", "annotations", "n"])
        XCTAssertEqual(String(decoding: data.subdata(in: m["n"]!), as: UTF8.self), "3")
        var ids: [Int] = []
        try ReaderJSON.forEachElement(ofListAt: "images", in: data, members: m, file: "i.json") { _, v in
            ids.append(((v as? [String: Any])?["id"] as? NSNumber)?.intValue ?? -1)
        }
        XCTAssertEqual(ids, [1, 2])
        var none = 0
        try ReaderJSON.forEachElement(ofListAt: "annotations", in: data, members: m, file: "i.json") { _, _ in none += 1 }
        try ReaderJSON.forEachElement(ofListAt: "segments", in: data, members: m, file: "i.json", required: false) { _, _ in none += 1 }
        XCTAssertEqual(none, 0)
        XCTAssertThrowsError(try ReaderJSON.forEachElement(ofListAt: "segments", in: data, members: m, file: "i.json") { _, _ in }) { e in
            XCTAssertTrue("\(e)".contains("i.json") && "\(e)".contains("\"segments\" is missing"), "\(e)")
        }
        XCTAssertThrowsError(try ReaderJSON.forEachElement(ofListAt: "n", in: data, members: m, file: "i.json") { _, _ in }) { e in
            XCTAssertTrue("\(e)".contains("\"n\" is missing or not a list"), "\(e)")
        }
        for (bad, word) in [("{\"a\" 1}", "no ':'"), ("{1: 2}", "not a string"), ("{\"a\": [1, 2}", "not valid JSON"),
                            ("{\"a\": 1} x", "bytes after"), ("[1]", "not a dict"), ("{\"a\": ", "not terminated")] {
            XCTAssertThrowsError(try ReaderJSON.objectMemberRanges(Data(bad.utf8), file: "i.json")) { e in
                XCTAssertTrue("\(e)".contains("i.json") && "\(e)".contains(word), "\(bad): \(e)")
            }
        }
    }
}
