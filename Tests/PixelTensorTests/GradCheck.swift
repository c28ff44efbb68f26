import Foundation
import XCTest
@testable import PixelTensor

/// Finite-difference gradient checking (central differences, loss accumulated in Double), in the
/// manner of ggml's test-backend-ops: loss = sum(f(inputs) * R) for a fixed random R.
struct GradCheckResult {
    var maxAbsError: Double = 0
    var maxRelError: Double = 0
    var checked = 0
    var failures: [String] = []
}

enum GradCheck {
    /// Compares the analytical gradient of every input that requires grad with central differences.
    /// An element passes when |analytic - numeric| <= atol + rtol * max(|analytic|, |numeric|).
    static func run(_ inputs: [Tensor], eps: Float = 1e-2, atol: Double = 2e-3, rtol: Double = 2e-2,
                    maxElements: Int = 4000, seed: UInt64 = 99, skip: ((Int, Int) -> Bool)? = nil,
                    _ f: ([Tensor]) -> Tensor) -> GradCheckResult {
        var rng = RNG(seed: seed)
        let out0 = Autograd.noGrad { f(inputs) }
        let R = Tensor.randn(out0.shape, rng: &rng)
        func loss() -> Double {
            Autograd.noGrad {
                let o = f(inputs).contiguousData()
                var s = 0.0
                for i in 0..<o.count { s += Double(o.ptr[i]) * Double(R.ptr[i]) }
                return s
            }
        }
        for x in inputs { x.grad = nil }
        let out = f(inputs)
        out.backward(R)
        var result = GradCheckResult()
        for (k, x) in inputs.enumerated() where x.requiresGrad {
            precondition(x.isContiguous, "grad check inputs must be contiguous")
            let g = x.grad?.toArray() ?? [Float](repeating: 0, count: x.count)
            let stride = max(1, x.count / maxElements)
            for i in Swift.stride(from: 0, to: x.count, by: stride) {
                if let skip, skip(k, i) { continue }
                let orig = x.ptr[i]
                x.ptr[i] = orig + eps
                let lp = loss()
                x.ptr[i] = orig - eps
                let lm = loss()
                x.ptr[i] = orig
                let numeric = (lp - lm) / (2 * Double(eps))
                let analytic = Double(g[i])
                let err = Swift.abs(numeric - analytic)
                let scale = max(Swift.abs(numeric), Swift.abs(analytic))
                result.maxAbsError = max(result.maxAbsError, err)
                if scale > 1e-6 { result.maxRelError = max(result.maxRelError, err / scale) }
                result.checked += 1
                if err > atol + rtol * scale && result.failures.count < 5 {
                    result.failures.append("input \(k) element \(i): analytic \(analytic) numeric \(numeric)")
                }
            }
        }
        return result
    }

    static func assertGrads(_ inputs: [Tensor], eps: Float = 1e-2, atol: Double = 2e-3, rtol: Double = 2e-2,
                            skip: ((Int, Int) -> Bool)? = nil,
                            file: StaticString = #filePath, line: UInt = #line, _ f: ([Tensor]) -> Tensor) {
        let r = run(inputs, eps: eps, atol: atol, rtol: rtol, skip: skip, f)
        XCTAssertGreaterThan(r.checked, 0, "no gradient elements were checked", file: file, line: line)
        XCTAssertTrue(r.failures.isEmpty, "gradient check failed: \(r.failures.joined(separator: "; "))", file: file, line: line)
    }
}

/// Random leaf tensors for tests.
func rand(_ shape: [Int], seed: UInt64, std: Float = 1, grad: Bool = true) -> Tensor {
    var rng = RNG(seed: seed)
    return Tensor.randn(shape, std: std, rng: &rng, requiresGrad: grad)
}

/// Max |a - b| / max(max|b|, tiny): the relative error used by the fixture checks.
func relError(_ a: Tensor, _ b: Tensor) -> Double {
    let x = a.toArray(), y = b.toArray()
    precondition(x.count == y.count)
    var num = 0.0, den = 0.0
    for i in 0..<x.count {
        num = max(num, Swift.abs(Double(x[i]) - Double(y[i])))
        den = max(den, Swift.abs(Double(y[i])))
    }
    return num / max(den, 1e-12)
}

func assertClose(_ a: Tensor, _ b: Tensor, tol: Double, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.shape, b.shape, "\(what): shape", file: file, line: line)
    guard a.shape == b.shape else { return }
    let e = relError(a, b)
    XCTAssertLessThanOrEqual(e, tol, "\(what): relative error \(e) > \(tol)", file: file, line: line)
}
