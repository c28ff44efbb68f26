import Foundation
import XCTest
@testable import PixelTensor

/// What the checkpoint format tests share: the fixture directory `Fixtures/<fixtureName>` (written by
/// `fixtureScript`), a scratch directory per test, expected tensors, bit-exact comparison and checks of
/// `CheckpointError`s.
class CheckpointTestCase: XCTestCase {
    class var fixtureName: String { fatalError("override fixtureName") }
    class var fixtureScript: String { fatalError("override fixtureScript") }

    class var dir: String {
        guard let u = Bundle.module.url(forResource: "Fixtures/\(fixtureName)", withExtension: nil) else {
            fatalError("Fixtures/\(fixtureName) missing: run \(fixtureScript)")
        }
        return u.path
    }
    class var expectedPath: String { dir + "/expected.h5" }
    class func fixture(_ name: String) -> String { dir + "/" + name }

    var tmp = ""

    override func setUpWithError() throws {
        tmp = NSTemporaryDirectory() + "pixellm-\(Self.fixtureName)-\(getpid())-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: tmp)
    }

    func expected(_ group: String, _ name: String) throws -> Tensor {
        try TensorFile.read(Self.expectedPath, name: "\(group)/\(name)")
    }

    /// Same shape and the same bits in every element (so -0.0 and NaN payloads count).
    func assertBitsEqual(_ a: Tensor, _ b: Tensor, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.shape, b.shape, "\(what): shape", file: file, line: line)
        XCTAssertEqual(a.toArray().map(\.bitPattern), b.toArray().map(\.bitPattern), "\(what): values", file: file, line: line)
    }

    /// Expects `body` to throw a `CheckpointError` of `kind` whose description contains every string in `mentions`.
    func assertCheckpointError<K>(_ kind: K, _ mentions: [String], file: StaticString, line: UInt, _ body: () throws -> Void)
        where K: RawRepresentable & Sendable & Equatable, K.RawValue == String {
        do {
            try body()
            XCTFail("expected a \(kind) error", file: file, line: line)
        } catch let e as CheckpointError<K> {
            XCTAssertEqual(e.kind, kind, "\(e)", file: file, line: line)
            for m in mentions { XCTAssertTrue(e.description.contains(m), "'\(e)' does not mention '\(m)'", file: file, line: line) }
        } catch {
            XCTFail("unexpected error \(error)", file: file, line: line)
        }
    }
}
