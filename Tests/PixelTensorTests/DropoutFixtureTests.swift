import XCTest
@testable import PixelTensor

/// Dropout against PyTorch with the same mask: tools/fixtures/dropout.py re-implements pixellm's RNG
/// stream to draw it, and PyTorch computes x * mask and its gradient.
final class DropoutFixtureTests: XCTestCase {
    func testDropoutMatchesPyTorchWithTheSameStream() throws {
        let cases = try Fixtures.load("dropout")
        XCTAssertEqual(cases.count, 3)
        for (name, p, seed) in [("p25_seed7", Float(0.25), UInt64(7)), ("p50_seed123", 0.5, 123), ("p10_seed0", 0.1, 0)] {
            Fixtures.check(cases[name], fwdTol: 0, gradTol: 0) { c in
                var rng = RNG(seed: seed)
                return dropout(c.inputs[0], p: p, rng: &rng, training: true)
            }
        }
    }
}
