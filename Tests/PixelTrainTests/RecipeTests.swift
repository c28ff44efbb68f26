import Foundation
import XCTest
import PixelModel
@testable import PixelTrain

/// Every committed recipe (configs/recipes/*.json) parses, validates, and names a model config that loads.
final class RecipeTests: XCTestCase {
    static var recipesDir: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("configs/recipes").path
    }

    func testCommittedRecipesLoadAndValidate() throws {
        let names = try FileManager.default.contentsOfDirectory(atPath: Self.recipesDir).filter { $0.hasSuffix(".json") }.sorted()
        XCTAssertTrue(names.contains("smoke.json") && names.contains("smoke-long.json"), "\(names)")
        for name in names {
            var o = try TrainOptions.recipe(Self.recipesDir + "/" + name)
            // what the command line gives: the shards, and the base checkpoint of the released recipes
            if o.datasetDir.isEmpty { o.datasetDir = "shards" }
            if o.version == nil && o.config == nil { o.version = "base" }
            XCTAssertNoThrow(try o.validate(), name)
            if let c = o.config {
                XCTAssertNoThrow(try PixelLMConfig.load(TrainModelSource.configPath(c)), "\(name): config \(c)")
            }
        }
        // the synthetic recipes train with the appearance loss (issue 11's measured lever)
        for name in ["smoke.json", "smoke-long.json"] {
            let o = try TrainOptions.recipe(Self.recipesDir + "/" + name)
            XCTAssertGreaterThan(o.queryAppearanceWeight ?? 0, 0, name)
            XCTAssertEqual(o.valDataset, "MultiReasonSeg|val", name)
        }
    }

    func testAppearanceWeightIsChecked() throws {
        var o = TrainOptions()
        o.config = "synth-smoke"
        o.datasetDir = "shards"
        XCTAssertNoThrow(try o.validate())
        // each weight: negative and non-finite refused by its option's name, a positive one kept
        for (key, name) in [(\TrainOptions.queryAppearanceWeight, "query-appearance-weight"),
                            (\TrainOptions.imageAppearanceWeight, "image-appearance-weight")] {
            o[keyPath: key] = -1
            XCTAssertThrowsError(try o.validate()) { XCTAssertTrue("\($0)".contains(name), "\($0)") }
            o[keyPath: key] = .nan
            XCTAssertThrowsError(try o.validate(), name)
            o[keyPath: key] = .infinity
            XCTAssertThrowsError(try o.validate(), name)
            o[keyPath: key] = 2
            XCTAssertNoThrow(try o.validate())
        }
        o.refinementAlpha = 0.5
        XCTAssertThrowsError(try o.validate()) { XCTAssertTrue("\($0)".contains("refinement-alpha"), "\($0)") }
        o.refinementAlpha = .infinity
        XCTAssertThrowsError(try o.validate())
        o.refinementAlpha = 2
        XCTAssertNoThrow(try o.validate())
    }
}
