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
    /// The tensors every `basic_<key>` fixture holds (whatever its format), read through `WeightSource`:
    /// `floats` bit-equal to the expected values with `dtype(name)`, "empty" as a [0, 3] shape, a scalar
    /// logit_scale and int64 position_ids 0..5.
    func assertBasicTensors(_ f: some WeightSource, key: String, floats: [String], dtype: (String) -> DType) throws {
        for n in floats {
            XCTAssertEqual(try f.info(n).dtype, dtype(n), "\(key) \(n)")
            let t = try f.tensor(n)
            if n == "empty" {  // h5py stores zero-size datasets; compare the shape only
                XCTAssertEqual(t.shape, [0, 3]); XCTAssertEqual(t.count, 0)
            } else {
                assertBitsEqual(t, try expected("basic_\(key)", n), "\(key) \(n)")
            }
        }
        XCTAssertEqual(try f.tensor("logit_scale").shape, [])
        let ids = try f.info("position_ids")
        XCTAssertEqual(ids.dtype, .i64)
        XCTAssertEqual(ids.shape, [1, 6])
        XCTAssertEqual(try f.ints("position_ids"), [0, 1, 2, 3, 4, 5])
    }

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
