import Foundation
import XCTest
import PixelData
import PixelTensor

/// `pixellm forward` and `pixellm chat` end to end, as a user runs them (the built binary next to this test
/// bundle), on the checkpoint fixtures of tools/fixtures/model_checkpoint_dirs.py.
final class CLITests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../PixelModelTests/Fixtures/ckpt").standardized.path
    static func sub(_ n: String) -> String { (fixtures as NSString).appendingPathComponent(n) }
    static var binary: String {
        let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for d in [dir, dir.deletingLastPathComponent()] {
            let p = d.appendingPathComponent("pixellm").path
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        return Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent("pixellm").path
    }
    static let answer = "It is [SEG0][SEG1][SEG2][SEG3][SEG4][SEG5]."

    struct Run { var status: Int32; var out: String; var err: String; var signalled: Bool }

    func run(_ args: [String], stdin: String? = nil, cwd: String? = nil) throws -> Run { try Self.runBinary(args, stdin: stdin, cwd: cwd) }

    static func runBinary(_ args: [String], stdin: String? = nil, cwd: String? = nil) throws -> Run {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.binary)
        p.arguments = args
        if let cwd { p.currentDirectoryURL = URL(fileURLWithPath: cwd) }
        let o = Pipe(), e = Pipe(), i = Pipe()
        p.standardOutput = o
        p.standardError = e
        p.standardInput = i
        try p.run()
        if let stdin { i.fileHandleForWriting.write(stdin.data(using: .utf8)!) }
        try i.fileHandleForWriting.close()
        let od = o.fileHandleForReading.readDataToEndOfFile(), ed = e.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Run(status: p.terminationStatus, out: String(decoding: od, as: UTF8.self), err: String(decoding: ed, as: UTF8.self),
                   signalled: p.terminationReason == .uncaughtSignal)
    }

    static func temp(_ n: String) -> String {
        let d = NSTemporaryDirectory() + "pixellm-cli-\(n)-\(getpid())"
        try? FileManager.default.removeItem(atPath: d)
        return d
    }

    func forward(_ model: String, _ dump: String, extra: [String] = []) throws {
        let r = try run(["forward", "--model", Self.sub(model), "--image", Self.sub("image.png"), "--prompt", "Where is the cat?",
                         "--answer", Self.answer, "--dump", dump] + extra)
        XCTAssertEqual(r.status, 0, r.err + r.out)
    }

    func testForwardDumpsAreIdenticalAcrossFormatsAndMatchPyTorch() throws {
        let a = Self.temp("st.safetensors"), b = Self.temp("bin.safetensors"), f = Self.temp("f32.safetensors")
        try forward("st-bf16", a)
        try forward("bin-bf16", b)
        try forward("st-f32", f)
        let da = try SafetensorsFile(a).floatTensors(), db = try SafetensorsFile(b).floatTensors()
        XCTAssertEqual(Set(da.keys), ["input_ids", "image.pixels", "vision.deep", "vision.mid", "lm.hidden", "lm.logits", "seg.rows",
                                      "seg.embeddings", "seg.queries", "image.embeddings", "mask.logits_low", "mask.logits"])
        for (k, v) in da { XCTAssertEqual(v.toArray(), db[k]?.toArray(), "\(k): safetensors vs .bin dumps differ") }
        XCTAssertEqual(da["mask.logits"]?.shape, [1, 45, 60])
        XCTAssertEqual(da["mask.logits_low"]?.shape, [1, 32, 32])
        let ref = try SafetensorsFile(Self.sub("reference.safetensors")).floatTensors()
        let df = try SafetensorsFile(f).floatTensors()
        for (k, want) in ref {
            let got = k == "lm.logits.tail" ? df["lm.logits"]!.slice(axis: 0, df["lm.logits"]!.dim(0) - want.dim(0), df["lm.logits"]!.dim(0)) : df[k]!
            XCTAssertEqual(got.shape, want.shape, k)
            let x = got.toArray(), y = want.toArray()
            var num: Float = 0, den: Float = 1e-12
            for i in 0..<min(x.count, y.count) { num = max(num, abs(x[i] - y[i])); den = max(den, abs(y[i])) }
            XCTAssertLessThanOrEqual(num / den, 1e-4, "\(k) vs PyTorch")
        }
    }

    /// `pixellm forward` on a checkpoint exported by the released code (Tests/PixelReleaseTests/Fixtures/release:
    /// pytorch_model.bin in bf16, a released-style config.json without vision_config, CLIP given separately) gives
    /// the masks the released code computes for the same teacher-forced answer (its validate() path).
    func testForwardOnAReleasedCheckpointGivesTheReleasedMasks() throws {
        let rel = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../PixelReleaseTests/Fixtures/release").standardized.path
        func r(_ n: String) -> String { (rel as NSString).appendingPathComponent(n) }
        let out = Self.temp("release.safetensors")
        let seg = "[SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5]"
        let res = try run(["forward", "--model", r("pixellm"), "--vision-tower", r("clip"), "--image", r("portrait.png"),
                           "--prompt", "Where could a person sit down here? Please output segmentation mask.",
                           "--answer", "A person could sit on the bench \(seg) or on the low wall \(seg).", "--dump", out])
        XCTAssertEqual(res.status, 0, res.err)
        defer { try? FileManager.default.removeItem(atPath: out) }
        let got = try XCTUnwrap(try SafetensorsFile(out).floatTensors()["mask.logits"])
        let want = try XCTUnwrap(try SafetensorsFile(r("release.safetensors")).floatTensors()["validate.portrait.mask.logits"])
        XCTAssertEqual(got.shape, want.shape)
        let x = got.toArray(), y = want.toArray()
        var num: Float = 0, den: Float = 1e-12
        for i in 0..<min(x.count, y.count) { num = max(num, abs(x[i] - y[i])); den = max(den, abs(y[i])) }
        XCTAssertLessThanOrEqual(num / den, 1e-5, "mask.logits vs the released code")
        XCTAssertEqual(zip(x, y).filter { ($0 > 0) != ($1 > 0) }.count, 0, "masks (logit > 0) differ from the release's")
    }

    func testChatWritesMasksAndOverlay() throws {
        let d = Self.temp("chat")
        let r = try run(["chat", "--model", Self.sub("st-f32"), "--image", Self.sub("image.png"), "--prompt", "Where is the cat?",
                         "--force-answer", Self.answer, "--max-new-tokens", "12", "--out-dir", d])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("answer: It is [1]"), r.out)
        XCTAssertTrue(r.out.contains("s/token"), r.out)
        XCTAssertTrue(r.out.contains("prefill"), r.out)
        let m = try GrayImage.load(d + "/mask_1.png")
        XCTAssertEqual(m.width, 60)
        XCTAssertEqual(m.height, 45)
        XCTAssertTrue(m.pixels.allSatisfy { $0 == 0 || $0 == 255 })
        // as PyTorch's mask.logits > 0 (373 pixels with the released 1/6 fusion)
        let want = try XCTUnwrap(try SafetensorsFile(Self.sub("reference.safetensors")).floatTensors()["mask.logits"])
        XCTAssertEqual(m.pixels.filter { $0 == 255 }.count, want.toArray().filter { $0 > 0 }.count)
        let o = try RGBImage.load(d + "/overlay.png")
        XCTAssertGreaterThanOrEqual(o.width, 60)
        XCTAssertGreaterThan(o.height, 45)
        // interactive: two questions from stdin, bf16 precision
        let d2 = Self.temp("chat-i")
        let r2 = try run(["chat", "--model", Self.sub("st-bf16"), "--precision", "bf16", "--image", Self.sub("image.png"),
                          "--max-new-tokens", "3", "--out-dir", d2], stdin: "Where?\nWhat?\n")
        XCTAssertEqual(r2.status, 0, r2.err)
        XCTAssertTrue(FileManager.default.fileExists(atPath: d2 + "/q1/overlay.png"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: d2 + "/q2/overlay.png"))
    }

    /// A LLaVA base directory (tools/fixtures/model_llava_dir.py) is no longer refused: PixelLM is initialised from
    /// it as training starts (released PixelLM settings, new projectors / decoder / SEG rows), the report is printed,
    /// the tokenizer gets [SEG0..5] appended, and the forward produces masks; without a vision tower it is a named error.
    func testLLaVABaseDirectoryIsInitialisedNotRefused() throws {
        let dump = Self.temp("llava.safetensors")
        let r = try run(["forward", "--model", Self.sub("llava-st"), "--vision-tower", Self.sub("clip"), "--image", Self.sub("image.png"),
                         "--prompt", "Where is the cat?", "--answer", Self.answer, "--dump", dump])
        XCTAssertEqual(r.status, 0, r.err + r.out)
        for s in ["LLaVA base", "model.mm_projector.weight", "single-Linear", "untrained", "[SEG0]=1503", "[SEG5]=1508", "6 SEG tokens, 1 masks"] {
            XCTAssertTrue(r.out.contains(s), "output does not mention '\(s)': \(r.out)")
        }
        let d = try SafetensorsFile(dump).floatTensors()
        XCTAssertEqual(d["mask.logits"]?.shape, [1, 45, 60])
        XCTAssertEqual(d["lm.logits"]?.dim(1), 1509)
        XCTAssertEqual(d["seg.queries"]?.shape, [1, 2, 256])   // the released out_dim: the tiny LLaVA gets PixelLM's real decoder
        // the SEG tokens of the teacher-forced answer are single tokens of the appended ids
        let ids = d["input_ids"]!.toArray().map { Int($0) }
        XCTAssertEqual(ids.filter { (1503...1508).contains($0) }, Array(1503...1508))
        // chat from the .bin (bf16) LLaVA base
        let out = Self.temp("llava-chat")
        let c = try run(["chat", "--model", Self.sub("llava-bin"), "--vision-tower", Self.sub("clip"), "--image", Self.sub("image.png"),
                         "--prompt", "Where?", "--force-answer", Self.answer, "--max-new-tokens", "8", "--out-dir", out])
        XCTAssertEqual(c.status, 0, c.err + c.out)
        XCTAssertTrue(c.out.contains("answer: It is [1]"), c.out)
        XCTAssertTrue(c.out.contains("untrained"), c.out)
        // no vision tower: config.json's mm_vision_tower is a hub name
        let e = try run(["forward", "--model", Self.sub("llava-st"), "--image", Self.sub("image.png"), "--prompt", "x", "--dump", Self.temp("x.st")])
        XCTAssertFalse(e.signalled, e.err)
        XCTAssertNotEqual(e.status, 0)
        XCTAssertTrue(e.err.contains(Self.sub("llava-st")) && e.err.contains("--vision-tower"), e.err)
    }

    /// Bad input ends with a message naming the file and the problem, exit status 1, never a crash.
    func testBadInputsAreNamedErrors() throws {
        func expectError(_ args: [String], _ mentions: [String], file: StaticString = #filePath, line: UInt = #line) throws {
            let r = try run(args)
            XCTAssertFalse(r.signalled, "crashed: \(r.err)", file: file, line: line)
            XCTAssertNotEqual(r.status, 0, file: file, line: line)
            for m in mentions { XCTAssertTrue(r.err.contains(m), "stderr '\(r.err)' does not mention '\(m)'", file: file, line: line) }
        }
        let img = Self.sub("image.png")
        let missing = Self.temp("nope")
        try expectError(["chat", "--model", missing, "--image", img, "--prompt", "x"], [missing])
        try expectError(["chat", "--model", Self.sub("st-f32"), "--image", missing + ".png", "--prompt", "x"], [missing + ".png"])
        // an image that does not decode
        let bad = Self.temp("bad.png")
        try Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 1, 2, 3]).write(to: URL(fileURLWithPath: bad))
        try expectError(["forward", "--model", Self.sub("st-f32"), "--image", bad, "--prompt", "x", "--dump", Self.temp("d.st")], [bad])
        // an unsupported pickle
        try expectError(["chat", "--model", Self.sub("bad-pickle"), "--tokenizer", Self.sub("st-f32"), "--image", img, "--prompt", "x"],
                        ["bad-pickle/pytorch_model.bin", "NotATensor"])
        // a truncated .bin
        let tb = Self.temp("truncbin")
        try FileManager.default.copyItem(atPath: Self.sub("bin-bf16"), toPath: tb)
        let binPath = tb + "/pytorch_model.bin"
        let bytes = try Data(contentsOf: URL(fileURLWithPath: binPath))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: binPath))
        try expectError(["chat", "--model", tb, "--vision-tower", Self.sub("clip"), "--image", img, "--prompt", "x"], [binPath])
        // a tokenizer type we do not support
        let tk = Self.temp("tok")
        try FileManager.default.copyItem(atPath: Self.sub("st-f32"), toPath: tk)
        for f in ["tokenizer.model", "added_tokens.json", "special_tokens_map.json", "tokenizer_config.json"] {
            try FileManager.default.removeItem(atPath: tk + "/" + f)
        }
        try #"{"version": "1.0", "model": {"type": "WordPiece", "vocab": {"a": 0}}, "added_tokens": []}"#
            .write(toFile: tk + "/tokenizer.json", atomically: true, encoding: .utf8)
        try expectError(["chat", "--model", tk, "--vision-tower", Self.sub("clip"), "--image", img, "--prompt", "x"], [tk, "WordPiece"])
    }

    /// The inputs issue 13 found "as a new user would": each is a clear error naming the option, field or file,
    /// before any work, never a signal or a hang.
    /// doctor measures the memory read bandwidth and states the bf16 7B decode bound it implies.
    func testDoctorReportsMemoryBandwidth() throws {
        let r = try run(["doctor", "--reps", "1"])
        XCTAssertEqual(r.status, 0, r.err)
        guard let line = r.out.split(separator: "\n").first(where: { $0.contains("memory read") }) else {
            return XCTFail("no memory read line: \(r.out)")
        }
        let words = line.split(separator: " ")
        let gbs = words.firstIndex(of: "GB/s").flatMap { Double(words[$0 - 1]) }
        XCTAssertNotNil(gbs, String(line))
        XCTAssertGreaterThan(gbs ?? 0, 0.1, String(line))
        XCTAssertTrue(line.contains("s/token"), String(line))
    }

    func testNewUserMistakesAreNamedErrors() throws {
        func expectError(_ args: [String], _ mentions: [String], cwd: String? = nil, file: StaticString = #filePath, line: UInt = #line) throws {
            let r = try run(args, cwd: cwd)
            XCTAssertFalse(r.signalled, "crashed: \(r.err)", file: file, line: line)
            XCTAssertEqual(r.status, r.status == 0 ? 1 : r.status, file: file, line: line)
            XCTAssertNotEqual(r.status, 0, "\(args) succeeded: \(r.out)", file: file, line: line)
            for m in mentions { XCTAssertTrue(r.err.contains(m), "\(args): stderr '\(r.err)' does not mention '\(m)'", file: file, line: line) }
        }
        let img = Self.sub("image.png"), model = Self.sub("st-f32")
        let chat = ["chat", "--model", model, "--image", img, "--prompt", "Where is the cat?"]
        try expectError(["demo", "--steps=-5"], ["--steps"])
        try expectError(chat + ["--max-new-tokens", "0"], ["--max-new-tokens"])
        try expectError(chat + ["--temperature", "-1"], ["--temperature"])
        try expectError(chat + ["--top-p", "5"], ["--top-p"])
        try expectError(["bench", "gemm", "--only", "nosuchmodel"], ["nosuchmodel", "llama-7b"])
        try expectError(["doctor", "--reps", "0"], ["--reps"])
        try expectError(["tokenize", "--tokenizer", model, "--decode", "--text", "[1, 99999]"], ["99999", "outside the vocabulary"])
        // --out-dir naming a file fails before the model answers (no "answer:" line)
        let aFile = Self.temp("outfile")
        try Data("x".utf8).write(to: URL(fileURLWithPath: aFile))
        let r = try run(chat + ["--out-dir", aFile])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("--out-dir") && r.err.contains("not a directory"), r.err)
        XCTAssertFalse(r.out.contains("answer:"), "the check came after generating: \(r.out)")
        // --model naming an image
        try expectError(["chat", "--model", img, "--image", img, "--prompt", "x"], ["--model", img, "not a directory"])
        // config.json fields that used to kill the process (SIGFPE, SIGSEGV) or silently become a 7B
        for (field, value) in [("num_attention_heads", "0"), ("hidden_size", "-32"), ("num_hidden_layers", "-1")] {
            let dir = Self.temp("cfg-\(field)")
            try FileManager.default.copyItem(atPath: model, toPath: dir)
            let cfgPath = dir + "/config.json"
            var cfg = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: cfgPath))) as! [String: Any]
            cfg[field] = Int(value)!
            try JSONSerialization.data(withJSONObject: cfg).write(to: URL(fileURLWithPath: cfgPath))
            try expectError(["chat", "--model", dir, "--vision-tower", Self.sub("clip"), "--image", img, "--prompt", "x"], [cfgPath, field])
        }
        let empty = Self.temp("cfg-empty")
        try FileManager.default.copyItem(atPath: model, toPath: empty)
        try Data("{}".utf8).write(to: URL(fileURLWithPath: empty + "/config.json"))
        try expectError(["chat", "--model", empty, "--vision-tower", Self.sub("clip"), "--image", img, "--prompt", "x"],
                        [empty + "/config.json", "vocab_size", "missing"])
        // --random-weights NAME finds configs/NAME from any directory (here a fresh temporary one); this tokenizer's
        // SEG ids (1503...) have no rows in tiny's 128-id vocabulary, which is said instead of indexing past the table
        let elsewhere = Self.temp("cwd")
        try FileManager.default.createDirectory(atPath: elsewhere, withIntermediateDirectories: true)
        try expectError(["forward", "--random-weights", "tiny", "--tokenizer", model, "--image", img, "--prompt", "x",
                         "--dump", elsewhere + "/d.safetensors"], ["configs/tiny/config.json", "vocab_size 128", "SEG token id"], cwd: elsewhere)
    }
}
