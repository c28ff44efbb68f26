import XCTest
@testable import PixelModel
import PixelTensor

final class AdamWTests: XCTestCase {
    func testMatchesTorchAdamW() throws {
        let f = try ModelFixture.load("adamw")
        let p1 = f["p1"]!.detachedCopy(), p2 = f["p2"]!.detachedCopy()
        let opt = AdamW(params: [p1, p2], lr: 3e-2, betas: (0.9, 0.95), eps: 1e-8, weightDecay: 0.1)
        for s in 0..<5 {
            p1.grad = f["step\(s)/g1"]!.detachedCopy()
            p2.grad = f["step\(s)/g2"]!.detachedCopy()
            opt.update()
            assertMatches(p1, f["step\(s)/p1"]!, tol: 1e-6, "p1 after step \(s + 1)")
            assertMatches(p2, f["step\(s)/p2"]!, tol: 1e-6, "p2 after step \(s + 1)")
        }
        XCTAssertEqual(opt.step, 5)
    }
}
