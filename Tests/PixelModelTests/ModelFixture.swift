import Foundation
import XCTest
import PixelTensor

/// PyTorch reference outputs for the model tests: HDF5 files under Tests/PixelModelTests/Fixtures made by
/// the scripts in tools/ (see tools/make_fixtures.sh). Names inside a file are chosen by its script.
enum ModelFixture {
    static func path(_ name: String) -> String {
        guard let u = Bundle.module.url(forResource: "Fixtures/\(name)", withExtension: "h5") else {
            fatalError("fixture Fixtures/\(name).h5 missing: run tools/make_fixtures.sh")
        }
        return u.path
    }

    /// Every dataset of a fixture file, by its full name ("a/b/c").
    static func load(_ name: String) throws -> [String: Tensor] { try TensorFile.read(path(name)) }

    /// The datasets under `group/` with that prefix removed (e.g. the weights of one component).
    static func group(_ all: [String: Tensor], _ group: String) -> [String: Tensor] {
        var out: [String: Tensor] = [:]
        for (k, v) in all where k.hasPrefix(group + "/") { out[String(k.dropFirst(group.count + 1))] = v }
        return out
    }
}

/// max |a - b| / max |b|.
func modelRelError(_ a: Tensor, _ b: Tensor) -> Double {
    let x = a.toArray(), y = b.toArray()
    precondition(x.count == y.count, "sizes \(x.count) vs \(y.count)")
    var num = 0.0, den = 0.0
    for i in 0..<x.count {
        num = max(num, abs(Double(x[i]) - Double(y[i])))
        den = max(den, abs(Double(y[i])))
    }
    return num / max(den, 1e-12)
}

/// Asserts equal shapes and relative error <= tol.
func assertMatches(_ a: Tensor, _ b: Tensor, tol: Double, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.shape, b.shape, "\(what): shape", file: file, line: line)
    guard a.count == b.count else { return }
    let e = modelRelError(a, b)
    XCTAssertLessThanOrEqual(e, tol, "\(what): relative error \(e) > \(tol)", file: file, line: line)
}
