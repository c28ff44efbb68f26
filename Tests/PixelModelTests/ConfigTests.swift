import Foundation
import XCTest
@testable import PixelModel

final class ConfigTests: XCTestCase {
    static var configsDir: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("configs")
    }

    func testPresetsLoadAndValidate() throws {
        let tiny = try PixelLMConfig.load(Self.configsDir.appendingPathComponent("tiny/config.json").path)
        XCTAssertEqual(tiny.hiddenSize, 32)
        XCTAssertEqual(tiny.visionGrid, 8)
        XCTAssertEqual(tiny.imageTokenCount, 16)
        XCTAssertEqual(tiny.segTokensPerTarget, 6)
        let b7 = try PixelLMConfig.load(Self.configsDir.appendingPathComponent("pixellm-7b/config.json").path)
        XCTAssertEqual(b7.visionGrid, 32)
        XCTAssertEqual(b7.imageTokenCount, 256)
        XCTAssertEqual(b7, PixelLMConfig(), "the 7B preset is the built-in default")
        let b13 = try PixelLMConfig.load(Self.configsDir.appendingPathComponent("pixellm-13b/config.json").path)
        XCTAssertEqual(b13.hiddenSize, 5120)
        XCTAssertEqual(b13.numHiddenLayers, 40)
        _ = try PixelLMConfig.load(Self.configsDir.appendingPathComponent("synth-small/config.json").path)
        let smoke = try PixelLMConfig.load(Self.configsDir.appendingPathComponent("synth-smoke/config.json").path)
        XCTAssertEqual(smoke.visionGrid, 8)
        XCTAssertEqual(smoke.imageTokenCount, 16)
        XCTAssertEqual(smoke.visionConfig.numHiddenLayers, 6)
    }

    func testBadConfigNamesFileAndField() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pixellm-cfg-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let p = dir.appendingPathComponent("config.json").path
        try #"{"hidden_size": 30, "num_attention_heads": 4}"#.write(toFile: p, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try PixelLMConfig.load(p)) { e in
            XCTAssertTrue("\(e)".contains(p) && "\(e)".contains("hidden_size"), "\(e)")
        }
        try #"{"hidden_size": "big"}"#.write(toFile: p, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try PixelLMConfig.load(p)) { e in XCTAssertTrue("\(e)".contains("hidden_size"), "\(e)") }
        try #"{"hidden_size": "#.write(toFile: p, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try PixelLMConfig.load(p)) { e in XCTAssertTrue("\(e)".contains("JSON"), "\(e)") }
    }
}
