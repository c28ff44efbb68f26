import Foundation
import XCTest
import PixelText

/// Fixtures made by tools/fixtures/tokenizers.py (HF tokenizers 0.23.3, sentencepiece 0.2.3, and a
/// re-implementation of transformers 4.31's slow LlamaTokenizer checked against the real 4.31).
enum TextFixture {
    static var root: String {
        guard let u = Bundle.module.url(forResource: "Fixtures", withExtension: nil) else {
            fatalError("Fixtures missing: run /work/venv/bin/python tools/fixtures/tokenizers.py")
        }
        return u.path
    }

    static func dir(_ name: String) -> String { (root as NSString).appendingPathComponent(name) }

    static func json(_ name: String) -> Any {
        let p = (root as NSString).appendingPathComponent(name)
        guard let d = FileManager.default.contents(atPath: p) else { fatalError("missing fixture \(p)") }
        return try! JSONSerialization.jsonObject(with: d, options: [.fragmentsAllowed])
    }

    static let lines: [String] = json("test_lines.json") as! [String]
}

func ints(_ a: Any?) -> [Int] { (a as! [Any]).map { ($0 as! NSNumber).intValue } }
func dict(_ a: Any?) -> [String: Any] { a as! [String: Any] }
func list(_ a: Any?) -> [Any] { a as! [Any] }

/// Byte-exact string comparison (Swift `==` on String is canonical equivalence: "é" == "e\u{301}").
func assertSameText(_ a: String, _ b: String, _ msg: @autoclosure () -> String = "", file: StaticString = #filePath, line: UInt = #line) {
    if !Array(a.utf8).elementsEqual(Array(b.utf8)) {
        XCTFail("text differs: \(a.debugDescription) vs expected \(b.debugDescription) \(msg())", file: file, line: line)
    }
}

func tmpDir(_ tag: String) -> String {
    let p = (NSTemporaryDirectory() as NSString).appendingPathComponent("pixeltext-\(tag)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
    try! FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
    return p
}

func write(_ path: String, _ text: String) { FileManager.default.createFile(atPath: path, contents: Data(text.utf8)) }
func write(_ path: String, _ bytes: [UInt8]) { FileManager.default.createFile(atPath: path, contents: Data(bytes)) }
