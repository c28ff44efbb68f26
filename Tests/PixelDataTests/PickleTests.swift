import Foundation
import XCTest
@testable import PixelData

/// Fixtures and expected values written by tools/fixtures/reader_fixtures_refsem.py.
enum RefSemFixtures {
    static var dir: String { DataFixtures.dir + "/datasets" }
    static let expected: [String: Any] = {
        let data = try! Data(contentsOf: URL(fileURLWithPath: DataFixtures.dir + "/datasets/expected_refsem.json"))
        return try! JSONSerialization.jsonObject(with: data) as! [String: Any]
    }()

    /// A tagged JSON value ({"int": 1}, {"list": [...]}, {"dict": [[k, v], ...]}, floats as hex) as a PickleValue.
    static func value(_ j: Any) -> PickleValue {
        let d = j as! [String: Any]
        let (k, v) = d.first!
        switch k {
        case "none": return .none
        case "bool": return .bool(v as! Bool)
        case "int": return .int((v as! NSNumber).intValue)
        case "float": return .float(Double(v as! String)!)
        case "str": return .string(v as! String)
        case "bytes":
            let s = Array((v as! String).utf8)
            return .bytes(stride(from: 0, to: s.count, by: 2).map { UInt8(String(decoding: s[$0..<($0 + 2)], as: UTF8.self), radix: 16)! })
        case "list": return .list((v as! [Any]).map(value))
        case "tuple": return .tuple((v as! [Any]).map(value))
        case "dict": return .dict((v as! [[Any]]).map { PickleEntry(key: value($0[0]), value: value($0[1])) })
        default: fatalError("tag \(k)")
        }
    }
}

final class PickleTests: XCTestCase {
    func file(_ name: String) -> String { RefSemFixtures.dir + "/pickles/" + name }

    func testProtocolsMatchPython() throws {
        let exp = RefSemFixtures.expected["pickles"] as! [String: Any]
        for name in ["p0", "p1", "p2", "p4", "p5", "py2"] {
            let v = try PlainPickle.load(path: file(name + ".p"))
            XCTAssertEqual(v, RefSemFixtures.value(exp[name]!), name)
        }
        // spot checks that do not go through the tagged JSON
        let p0 = try PlainPickle.load(path: file("p0.p"))
        XCTAssertEqual(p0["text"]?.items?[2], .string("h\u{e9}llo \u{2603} \u{1F600}"))
        XCTAssertEqual(p0["text"]?.items?[3], .string("back\\slash\nnewline\r\u{1a}\u{0} quote' \""))
        XCTAssertEqual(p0["ints"]?.items?.last, .int(Int.max))
        XCTAssertEqual(p0["shared"], .list([.int(1), .int(2)]))
        XCTAssertEqual(p0["shared_again"], p0["shared"])
        let py2 = try PlainPickle.load(path: file("py2.p"))
        XCTAssertEqual(py2["sent"], .string("a man"))
        XCTAssertEqual(py2["ids"], .list([.int(1), .int(300), .int(70000), .int(-5), .int(1 << 40)]))
        XCTAssertEqual(py2["raw"], .string("caf\u{e9}"))
    }

    func testPython2NonASCIIStr() throws {
        // Python 3's pickle.load(f) (REFER) fails on it; encoding="latin1" reads it.
        assertThrows(try PlainPickle.load(path: file("py2_nonascii.p")), containing: ["py2_nonascii.p", "SHORT_BINSTRING", "not ASCII", "byte 6:"], "ascii")
        let exp = (RefSemFixtures.expected["pickles"] as! [String: Any])["py2_nonascii_latin1"]!
        XCTAssertEqual(try PlainPickle.load(path: file("py2_nonascii.p"), strEncoding: .latin1), RefSemFixtures.value(exp))
        XCTAssertEqual(try PlainPickle.load(path: file("py2_nonascii.p"), strEncoding: .bytes).items?.first, .bytes([0x63, 0x61, 0x66, 0xe9]))
    }

    func testRefusesObjects() {
        let exp = RefSemFixtures.expected["pickle_refused"] as! [String: [String: Any]]
        XCTAssertEqual(exp.count, 5)
        for (name, e) in exp {
            let op = e["opcode"] as! String, off = (e["offset"] as! NSNumber).intValue
            assertThrows(try PlainPickle.load(path: file(name + ".p")), containing: [name + ".p", "byte \(off):", op, "refused"], name)
        }
    }

    func testMalformed() {
        assertThrows(try PlainPickle.load(path: file("truncated_half.p")), containing: ["truncated_half.p", "truncated"], "half")
        assertThrows(try PlainPickle.load(path: file("truncated_nostop.p")), containing: ["truncated_nostop.p", "no STOP"], "no stop")
        assertThrows(try PlainPickle.load(path: file("cycle.p")), containing: ["cycle.p", "contains itself"], "cycle")
        assertThrows(try PlainPickle.load(path: file("laughs.p")), containing: ["laughs.p", "shared references"], "laughs")
        assertThrows(try PlainPickle.load(path: file("deep.p")), containing: ["deep.p", "nesting deeper"], "deep")
        assertThrows(try PlainPickle.load([], file: "empty.p"), containing: ["empty.p", "empty"], "empty")
        assertThrows(try PlainPickle.load([0x80, 0x02, 0x2e], file: "x.p"), containing: ["x.p", "STOP", "underflow"], "stop on empty")
        assertThrows(try PlainPickle.load([0x80, 0x09, 0x4e, 0x2e], file: "x.p"), containing: ["PROTO", "protocol 9"], "proto")
        assertThrows(try PlainPickle.load([0x80, 0x02, 0x68, 0x05, 0x2e], file: "x.p"), containing: ["BINGET", "memo index 5"], "memo")
        assertThrows(try PlainPickle.load([0x80, 0x02, 0x4e, 0x61, 0x2e], file: "x.p"), containing: ["APPEND", "byte 3"], "append underflow")
        assertThrows(try PlainPickle.load([0x80, 0x02, 0x4b, 0x01, 0x4e, 0x61, 0x2e], file: "x.p"), containing: ["APPEND", "non-list"], "append to int")
        assertThrows(try PlainPickle.load([0x80, 0x02, 0x58, 0xff, 0xff, 0xff, 0x7f, 0x41, 0x2e], file: "x.p"), containing: ["BINUNICODE", "truncated"], "long length")
        assertThrows(try PlainPickle.load([0x80, 0x02, 0x58, 0x01, 0, 0, 0, 0xff, 0x2e], file: "x.p"), containing: ["UTF-8"], "utf8")
        assertThrows(try PlainPickle.load([0x80, 0x02, 0x7d, 0x5d, 0x4e, 0x73, 0x2e], file: "x.p"), containing: ["unhashable"], "list key")
        assertThrows(try PlainPickle.load([0x80, 0x02, 0xff, 0x2e], file: "x.p"), containing: ["0xff", "not a pickle opcode"], "unknown")
        // a dict key set twice keeps its first position and the last value (Python)
        let d: [UInt8] = [0x80, 0x02, 0x7d, 0x28, 0x4b, 1, 0x4b, 2, 0x4b, 3, 0x4b, 4, 0x4b, 1, 0x4b, 5, 0x75, 0x2e]
        XCTAssertEqual(try PlainPickle.load(d, file: "x.p"),
                       .dict([PickleEntry(key: .int(1), value: .int(5)), PickleEntry(key: .int(3), value: .int(4))]))
    }
}
