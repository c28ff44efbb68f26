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

    /// mm_image_pool: the LLM's image tokens pool the CLIP grid k x k; a config that pools 2x2 (the release)
    /// writes no such field, another writes it and reads back the same; a pooling that does not divide the
    /// grid is refused by name.
    func testImagePoolCountsWritesAndValidates() throws {
        var c = try PixelLMConfig.load(Self.configsDir.appendingPathComponent("synth-smoke/config.json").path)
        let enc = JSONEncoder()
        XCTAssertFalse(String(decoding: try enc.encode(c), as: UTF8.self).contains("mm_image_pool"))
        c.visionConfig.patchSize = 14
        c.mmImagePool = 4
        XCTAssertEqual(c.visionGrid, 16)
        XCTAssertEqual(c.imageTokenCount, 16)
        let data = try enc.encode(c)
        XCTAssertTrue(String(decoding: data, as: UTF8.self).contains("\"mm_image_pool\":4"))
        XCTAssertEqual(try JSONDecoder().decode(PixelLMConfig.self, from: data), c)
        XCTAssertNoThrow(try c.validate(file: "x.json"))
        c.mmImagePool = 3
        XCTAssertThrowsError(try c.validate(file: "x.json")) { e in
            XCTAssertTrue("\(e)".contains("x.json") && "\(e)".contains("mm_image_pool 3"), "\(e)")
        }
        c.mmImagePool = 0
        XCTAssertThrowsError(try c.validate(file: "x.json")) { e in XCTAssertTrue("\(e)".contains("mm_image_pool"), "\(e)") }
    }

    func testBadConfigNamesFileAndField() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pixellm-cfg-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let p = dir.appendingPathComponent("config.json").path
        try #"{"vocab_size": 100, "intermediate_size": 64, "num_hidden_layers": 2, "hidden_size": 30, "num_attention_heads": 4}"#.write(toFile: p, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try PixelLMConfig.load(p)) { e in
            XCTAssertTrue("\(e)".contains(p) && "\(e)".contains("hidden_size"), "\(e)")
        }
        try #"{"vocab_size": 100, "intermediate_size": 64, "num_hidden_layers": 2, "hidden_size": "big", "num_attention_heads": 4}"#.write(toFile: p, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try PixelLMConfig.load(p)) { e in XCTAssertTrue("\(e)".contains("hidden_size"), "\(e)") }
        try #"{"hidden_size": "#.write(toFile: p, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try PixelLMConfig.load(p)) { e in XCTAssertTrue("\(e)".contains("JSON"), "\(e)") }
    }

    /// Sizes that used to divide by zero, size buffers from a negative number, or run on for ever are refused
    /// with the file and the field; `{}` is refused instead of silently becoming a 7B.
    func testSizesAreCheckedBeforeUse() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pixellm-cfg-sizes-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let base = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.configsDir.appendingPathComponent("tiny/config.json"))) as! [String: Any]
        let p = dir.appendingPathComponent("config.json").path
        func expect(_ edit: (inout [String: Any]) -> Void, _ field: String, line: UInt = #line) throws {
            var c = base
            edit(&c)
            try JSONSerialization.data(withJSONObject: c).write(to: URL(fileURLWithPath: p))
            XCTAssertThrowsError(try PixelLMConfig.load(p), line: line) { e in
                XCTAssertTrue("\(e)".contains(p) && "\(e)".contains("'\(field)'"), "\(e)", line: line)
            }
        }
        func nested(_ key: String, _ field: String, _ v: Any) -> (inout [String: Any]) -> Void {
            { c in var n = (c[key] as? [String: Any]) ?? [:]; n[field] = v; c[key] = n }
        }
        for f in ["num_attention_heads", "num_key_value_heads", "hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size",
                  "resize_vision_tower_size", "out_dim", "seg_token_num", "max_position_embeddings"] {
            try expect({ $0[f] = 0 }, f)
            try expect({ $0[f] = -32 }, f)
        }
        for f in ["patch_size", "num_attention_heads", "hidden_size", "num_hidden_layers"] {
            try expect(nested("vision_config", f, 0), "vision_config.\(f)")
        }
        for f in ["num_heads", "prompt_embed_dim", "attention_downsample_rate", "transformer_depth"] {
            try expect(nested("decoder_config", f, 0), "decoder_config.\(f)")
        }
        try expect({ $0["hidden_size"] = 1 << 40 }, "hidden_size")
        try expect({ $0["rms_norm_eps"] = -1 }, "rms_norm_eps")
        try expect({ $0["mm_vision_select_layer"] = 3 }, "mm_vision_select_layer")
        try expect(nested("vision_config", "hidden_act", "relu6"), "vision_config.hidden_act")
        try expect(nested("vision_config", "num_channels", 1), "vision_config.num_channels")
        // a config without the LLaMA sizes
        try Data("{}".utf8).write(to: URL(fileURLWithPath: p))
        XCTAssertThrowsError(try PixelLMConfig.load(p)) { e in XCTAssertTrue("\(e)".contains("'vocab_size' is missing"), "\(e)") }
    }

    /// A relative `mm_vision_tower` is looked up beside the model directory only, never from the current
    /// directory (whether CLIP loads must not depend on where the command runs).
    func testRelativeVisionTowerIsRelativeToTheModel() throws {
        let fm = FileManager.default
        let root = fm.temporaryDirectory.appendingPathComponent("pixellm-tower-\(getpid())").path
        defer { try? fm.removeItem(atPath: root) }
        try fm.createDirectory(atPath: root + "/cwd/clip", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: root + "/models/m", withIntermediateDirectories: true)
        let saved = fm.currentDirectoryPath
        defer { fm.changeCurrentDirectoryPath(saved) }
        XCTAssertTrue(fm.changeCurrentDirectoryPath(root + "/cwd"))
        XCTAssertNil(PixelLMModelDirectory.localVisionTower("clip", modelDirectory: root + "/models/m"))
        try fm.createDirectory(atPath: root + "/models/clip", withIntermediateDirectories: true)
        XCTAssertEqual(PixelLMModelDirectory.localVisionTower("../clip", modelDirectory: root + "/models/m"), root + "/models/m/../clip")
        XCTAssertEqual(PixelLMModelDirectory.localVisionTower(root + "/cwd/clip", modelDirectory: root + "/models/m"), root + "/cwd/clip")
        XCTAssertNil(PixelLMModelDirectory.localVisionTower("openai/clip-vit-large-patch14-336", modelDirectory: root + "/models/m"))
    }
}
