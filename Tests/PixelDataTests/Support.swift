import Foundation
import XCTest
@testable import PixelData
import PixelTensor

/// Fixtures written by tools/fixtures/images_masks.py.
enum DataFixtures {
    static let dir: String = {
        guard let u = Bundle.module.url(forResource: "Fixtures", withExtension: nil) else {
            fatalError("Fixtures missing: run tools/fixtures/images_masks.py")
        }
        return u.path
    }()
    static var h5: String { dir + "/images.h5" }
    static func image(_ name: String) -> String { dir + "/images/" + name }

    /// Names of the fixture images.
    static var imageNames: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir + "/images")) ?? []).sorted()
    }

    static let datasetNames: Set<String> = Set((try? TensorFile.names(in: h5)) ?? [])

    static func has(_ key: String) -> Bool {
        datasetNames.contains(key) || FileManager.default.fileExists(atPath: pngPath(key))
    }

    static func pngPath(_ key: String) -> String { dir + "/expected/" + key.replacingOccurrences(of: "/", with: "__") + ".png" }

    /// An expected uint8 array: from the HDF5 file, or (large RGB arrays) from expected/<key>.png.
    static func bytes(_ key: String) throws -> (values: [UInt8], shape: [Int]) {
        if datasetNames.contains(key) {
            let (v, shape) = try TensorFile.readInts(h5, name: key)
            return (v.map { UInt8($0) }, shape)
        }
        let img = try Image.load(pngPath(key), applyEXIFOrientation: false)
        return (img.pixels, [img.height, img.width, 3])
    }

    static func ints(_ key: String) throws -> [Int] { try TensorFile.readInts(h5, name: key).values.map { Int($0) } }

    static func floats(_ key: String) throws -> Tensor { try TensorFile.read(h5, name: key) }

    static func json(_ name: String) throws -> [String: Any] {
        let data = try Data(contentsOf: URL(fileURLWithPath: dir + "/" + name))
        return try JSONSerialization.jsonObject(with: data) as! [String: Any]
    }
}

/// Largest absolute difference of two byte arrays of the same length (Int.max when lengths differ).
func maxDiff(_ a: [UInt8], _ b: [UInt8]) -> Int {
    guard a.count == b.count else { return Int.max }
    var m = 0
    for i in 0..<a.count { m = max(m, abs(Int(a[i]) - Int(b[i]))) }
    return m
}

/// A scratch directory removed at the end of the test.
func makeScratchDirectory(_ test: XCTestCase) throws -> String {
    let dir = NSTemporaryDirectory() + "pixellm-data-\(getpid())-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
    return dir
}

/// Asserts that `body` throws an error whose description contains every fragment.
func assertThrows<T>(_ body: @autoclosure () throws -> T, containing fragments: [String], _ what: String,
                     file: StaticString = #filePath, line: UInt = #line) {
    do {
        _ = try body()
        XCTFail("\(what): no error", file: file, line: line)
    } catch {
        let text = "\(error)"
        for f in fragments where !text.contains(f) {
            XCTFail("\(what): error \"\(text)\" does not mention \"\(f)\"", file: file, line: line)
        }
    }
}
