import Foundation
import XCTest
@testable import PixelTensor

/// One PyTorch fixture case (see tools/fixtures/common.py): inputs, output, upstream gradient and the
/// gradient of every input that required grad.
struct FixtureCase {
    let name: String
    let inputs: [Tensor]
    let intInputs: [Int: [Int64]]
    let out: Tensor
    let gout: Tensor
    let grads: [Tensor?]
}

enum Fixtures {
    static func url(_ family: String) -> URL {
        guard let u = Bundle.module.url(forResource: "Fixtures/\(family)", withExtension: "h5") else {
            fatalError("fixture file Fixtures/\(family).h5 missing: run tools/make_fixtures.sh")
        }
        return u
    }

    /// Loads every case of a fixture file.
    static func load(_ family: String) throws -> [String: FixtureCase] {
        let path = url(family).path
        let names = try TensorFile.names(in: path)
        var groups: [String: [String]] = [:]
        for n in names {
            let parts = n.split(separator: "/")
            groups[String(parts[0]), default: []].append(String(parts.last!))
        }
        var cases: [String: FixtureCase] = [:]
        for (g, members) in groups {
            let nIn = members.filter { $0.hasPrefix("in") }.count
            var inputs: [Tensor] = [], grads: [Tensor?] = [], ints: [Int: [Int64]] = [:]
            for i in 0..<nIn {
                let t = try TensorFile.read(path, name: "\(g)/in\(i)")
                if members.contains("grad\(i)") {
                    t.requiresGrad = true
                    grads.append(try TensorFile.read(path, name: "\(g)/grad\(i)"))
                } else {
                    grads.append(nil)
                }
                // integer datasets (indices, token ids) are also kept exactly
                if !members.contains("grad\(i)"), try TensorFile.isInteger(path, name: "\(g)/in\(i)") {
                    ints[i] = try TensorFile.readInts(path, name: "\(g)/in\(i)").values
                }
                inputs.append(t)
            }
            cases[g] = FixtureCase(name: g, inputs: inputs, intInputs: ints,
                                   out: try TensorFile.read(path, name: "\(g)/out"),
                                   gout: try TensorFile.read(path, name: "\(g)/gout"), grads: grads)
        }
        return cases
    }

    /// Runs `f` on the case's inputs, compares the output, backpropagates the fixture's upstream
    /// gradient and compares every input gradient. Tolerances are relative to the reference's max |value|.
    static func check(_ c: FixtureCase?, fwdTol: Double = 1e-5, gradTol: Double = 1e-4,
                      file: StaticString = #filePath, line: UInt = #line, _ f: (FixtureCase) -> Tensor) {
        guard let c else { XCTFail("fixture case missing", file: file, line: line); return }
        for x in c.inputs { x.grad = nil }
        let out = f(c)
        assertClose(out, c.out, tol: fwdTol, "\(c.name) forward", file: file, line: line)
        guard c.grads.contains(where: { $0 != nil }) else { return }
        out.backward(c.gout)
        for (i, g) in c.grads.enumerated() {
            guard let g else { continue }
            let mine = c.inputs[i].grad ?? Tensor.zeros(g.shape)
            assertClose(mine, g, tol: gradTol, "\(c.name) grad of input \(i)", file: file, line: line)
        }
    }
}
