import Foundation
import XCTest
import PixelData
import PixelTensor
@testable import PixelTrain

/// `pixellm probe`'s arithmetic: the ridge solve by hand, a planted signal found, independent labels at chance, the
/// centroid cell by hand, the word positions and the held-out images.
final class ProbeTests: XCTestCase {
    func testSolveSymmetricMatchesAHandSolution() {
        // [[4, 2], [2, 3]] x = [2, 1] and [0, 8]: the inverse is [[3, -2], [-2, 4]] / 8
        let x = LinearProbe.solveSymmetric([4, 2, 2, 3], [2, 0, 1, 8], n: 2, columns: 2)
        for (a, b) in zip(x, [0.5, -2, 0, 4]) { XCTAssertEqual(a, b, accuracy: 1e-12) }
    }

    /// Rows whose class is the image index mod 5: parts as the probe assigns them.
    static func parts(_ images: [Int]) -> [LinearProbe.Part] {
        images.map { $0 % 5 == 4 ? .test : ($0 % 5 == 3 ? .validation : .train) }
    }

    func testPlantedLinearSignalIsFoundAndIndependentLabelsScoreChance() throws {
        var rng = RNG(seed: 5)
        let n = 1000, classes = 4
        let labels = (0..<n).map { _ in rng.int(classes) }
        let noise = (0..<n).map { _ in (0..<12).map { _ in rng.normal() } }
        // the class is stated by a direction in two of the channels (plus the noise the other channels carry)
        let code: [[Float]] = [[3, 0], [0, 3], [-3, 0], [0, -3]]
        let planted = (0..<n).map { noise[$0] + code[labels[$0]] }
        let parts = Self.parts(Array(0..<n))
        let found = try XCTUnwrap(LinearProbe.fit(features: planted, labels: labels, classCount: classes, parts: parts))
        XCTAssertGreaterThan(found.accuracy, 0.9)
        XCTAssertEqual(found.trainRows, 800)
        XCTAssertEqual(found.testRows, 200)
        XCTAssert(LinearProbe.defaultLambdas.contains(found.lambda))
        // the features without the code: nothing to find
        let blind = try XCTUnwrap(LinearProbe.fit(features: noise, labels: labels, classCount: classes, parts: parts))
        XCTAssertLessThan(blind.accuracy, 0.4)
        XCTAssertGreaterThan(blind.chance, 0.2)
        XCTAssertLessThan(blind.chance, 0.35)
        // a constant channel says nothing and does not break the solve
        let padded = planted.map { $0 + [7] }
        let same = try XCTUnwrap(LinearProbe.fit(features: padded, labels: labels, classCount: classes, parts: parts))
        XCTAssertEqual(same.accuracy, found.accuracy, accuracy: 0.02)
    }

    func testChanceIsTheMostFrequentTrainingClassOnTheHeldOutRows() throws {
        // class 1 dominates the fitted rows; on the held-out rows it is right 1 time in 4
        let labels = [1, 1, 1, 0, 1, 0, 0, 0, 1, 0]
        let parts: [LinearProbe.Part] = [.train, .train, .train, .validation, .validation, .test, .test, .test, .test, .train]
        let features: [[Float]] = (0..<10).map { [Float($0)] }
        let r = try XCTUnwrap(LinearProbe.fit(features: features, labels: labels, classCount: 2, parts: parts))
        XCTAssertEqual(r.chance, 0.25)
        XCTAssertNil(LinearProbe.fit(features: features, labels: labels, classCount: 2, parts: parts.map { $0 == .test ? .train : $0 }))
    }

    func testCentroidCellByHand() {
        // a 100 x 200 image shown as 112 x 224 in a 224 input, 8 x 8 grid (28 px cells); a 10 x 10 block at
        // x 150..159, y 40..49: centroid (155, 45) -> (173.6, 50.4) at the input -> row 1, column 6
        var m = BinaryMask(height: 100, width: 200)
        for y in 40..<50 { for x in 150..<160 { m.data[y * 200 + x] = 1 } }
        XCTAssertEqual(ObjectProbe.centroidCell(m, valid: (112, 224), input: 224, grid: 8), 1 * 8 + 6)
        XCTAssertNil(ObjectProbe.centroidCell(BinaryMask(height: 100, width: 200), valid: (112, 224), input: 224, grid: 8))
    }

    func testProbeReportsEveryWordPositionOfTheCommonNameLength() throws {
        // names "size colour": the features state the colour, not the size; one-word names are left out
        var rng = RNG(seed: 9)
        let sizes = ["small", "large"], colours = ["red", "green", "blue"]
        var objects: [ObjectProbe.Object] = []
        for image in 0..<200 {
            for _ in 0..<3 {
                let s = rng.int(2), c = rng.int(3)
                var f = (0..<6).map { _ in rng.normal() * 0.3 }
                f[c] += 2
                let features = ObjectProbe.kinds.map { _ in f }
                objects.append(ObjectProbe.Object(image: image, name: "\(sizes[s]) \(colours[c])", features: features))
            }
            objects.append(ObjectProbe.Object(image: image, name: "thing", features: ObjectProbe.kinds.map { _ in [0, 0, 0, 0, 0, 0] }))
        }
        let (words, used, reports) = ObjectProbe.probe(objects)
        XCTAssertEqual(words, 2)
        XCTAssertEqual(used, 600)
        XCTAssertEqual(reports.map(\.position), [1, 2])
        XCTAssertEqual(reports[0].classes, ["large", "small"])
        XCTAssertEqual(reports[1].classes, ["blue", "green", "red"])
        for k in ObjectProbe.kinds.indices {
            let size = try XCTUnwrap(reports[0].results[k]), colour = try XCTUnwrap(reports[1].results[k])
            XCTAssertEqual(colour.accuracy, 1, accuracy: 0.02)
            XCTAssertLessThan(size.accuracy, 0.7)
            // every fifth image held out (40 images x 3 objects)
            XCTAssertEqual(colour.testRows, 120)
            XCTAssertEqual(colour.trainRows, 480)
        }
    }
}
