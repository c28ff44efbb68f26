import Foundation
import XCTest
import PixelTensor

/// Issue 13, "Bad inputs": a catalogue of malformed inputs given to the built `pixellm` binary, one case each:
/// json, images, masks / RLE, safetensors, `.bin` pickles, tokenizer files, configs, HDF5 shards, training
/// checkpoint manifests and command-line values. Every case must end without a signal or a Swift runtime trap,
/// with a non-zero exit status and a message that names the file or option and says what is wrong; a few are bad
/// samples that `pixellm prepare` skips, counts and logs (exit 0, the reason in OUT/skipped.log).
///
/// With PIXELLM_BAD_INPUT_TABLE=FILE the test writes the Markdown table of docs/RELIABILITY.md to FILE: one row per
/// case with the first line of what the user sees (temporary paths shortened to TMP/...).
final class BadInputCatalogueTests: XCTestCase {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../..").standardized.path

    enum Outcome { case error, skipped }

    /// What a case runs and what the user must see.
    struct Invocation {
        var args: [String]
        /// Substrings of stderr + stdout (`.error`), or of the skip log (`.skipped`).
        var expect: [String]
        var outcome: Outcome = .error
        /// `.skipped`: the log the reason goes to (OUT/skipped.log).
        var skipLog: String? = nil
    }

    struct Case {
        let id: String
        let category: String
        let input: String
        let make: (Workspace) throws -> Invocation
    }

    struct Result {
        var status: Int32
        var out: String
        var err: String
        var signalled: Bool
        var timedOut: Bool
    }

    // MARK: running the binary

    /// The binary with a deadline (a hang is a failure, not a stuck test), pipes read while it runs, MPI variables of
    /// this test process removed, one BLAS thread.
    static func run(_ args: [String], cwd: String, timeout: Double = 90) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLITests.binary)
        p.arguments = args
        p.currentDirectoryURL = URL(fileURLWithPath: cwd)
        var env = ProcessInfo.processInfo.environment
        for k in env.keys where ["OMPI_", "PMIX_", "OPAL_", "ORTE_", "PMI_", "HWLOC_"].contains(where: { k.hasPrefix($0) }) { env[k] = nil }
        env["OPENBLAS_NUM_THREADS"] = "1"
        p.environment = env
        let o = Pipe(), e = Pipe()
        p.standardOutput = o
        p.standardError = e
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let outData = Box(), errData = Box()
        let g = DispatchGroup()
        g.enter(); DispatchQueue.global().async { outData.data = o.fileHandleForReading.readDataToEndOfFile(); g.leave() }
        g.enter(); DispatchQueue.global().async { errData.data = e.fileHandleForReading.readDataToEndOfFile(); g.leave() }
        let deadline = Date().addingTimeInterval(timeout)
        var timedOut = false
        while p.isRunning {
            if Date() > deadline { timedOut = true; p.terminate(); break }
            usleep(5_000)
        }
        p.waitUntilExit()
        g.wait()
        return Result(status: p.terminationStatus, out: String(decoding: outData.data, as: UTF8.self),
                      err: String(decoding: errData.data, as: UTF8.self),
                      signalled: p.terminationReason == .uncaughtSignal && !timedOut, timedOut: timedOut)
    }

    /// A pipe's bytes, filled by the reader thread (read after the group's wait).
    final class Box: @unchecked Sendable { var data = Data() }

    // MARK: shared inputs, made once with the binary

    /// A synthetic dataset, its shards, the tiny config with the synthetic tokenizer's 1024 ids and a 2-step
    /// training run (checkpoint at step 2), all under `root/shared`.
    struct Shared {
        let data: String, shards: String, config: String, run: String
    }

    static func makeShared(_ root: String) throws -> Shared {
        let d = root + "/shared"
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        func must(_ args: [String]) throws {
            let r = try run(args, cwd: d, timeout: 300)
            guard r.status == 0, !r.signalled, !r.timedOut else {
                throw NSError(domain: "BadInputCatalogue", code: 1, userInfo: [NSLocalizedDescriptionKey: "\(args): \(r.err)"])
            }
        }
        try must(["synth", "--out", d + "/data", "--train", "4", "--val", "2", "--test", "2", "--size", "112"])
        try must(["prepare", "--dataset-dir", d + "/data", "--out", d + "/shards", "--image-size", "112"])
        var cfg = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: repo + "/configs/tiny/config.json"))) as! [String: Any]
        cfg["vocab_size"] = 1024
        let config = d + "/tiny-1024.json"
        try JSONSerialization.data(withJSONObject: cfg).write(to: URL(fileURLWithPath: config))
        try must(["train", "--config", config, "--dataset-dir", d + "/shards", "--max-steps", "2", "--warmup-steps", "1",
                  "--batch-size", "1", "--grad-accumulation-steps", "1", "--log-base-dir", d + "/runs", "--exp-name", "r",
                  "--save-steps", "1000", "--quiet"])
        return Shared(data: d + "/data", shards: d + "/shards", config: config, run: d + "/runs/r")
    }

    /// A fresh directory per case, with helpers to copy the shared inputs and fixtures and to damage them.
    struct Workspace {
        let dir: String
        let shared: Shared
        var fm: FileManager { .default }

        func fixture(_ n: String) -> String { CLITests.sub(n) }
        var image: String { fixture("image.png") }
        var clip: String { fixture("clip") }

        /// Copies a file or directory (a fixture name, or an absolute path) into the workspace.
        func copy(_ src: String, as name: String? = nil) throws -> String {
            let from = src.hasPrefix("/") ? src : fixture(src)
            let to = dir + "/" + (name ?? (from as NSString).lastPathComponent)
            try fm.copyItem(atPath: from, toPath: to)
            return to
        }
        @discardableResult
        func write(_ path: String, _ data: Data) throws -> String {
            let p = path.hasPrefix("/") ? path : dir + "/" + path
            try data.write(to: URL(fileURLWithPath: p))
            return p
        }
        @discardableResult
        func write(_ path: String, _ text: String) throws -> String { try write(path, Data(text.utf8)) }
        @discardableResult
        func write(_ path: String, _ bytes: [UInt8]) throws -> String { try write(path, Data(bytes)) }
        func read(_ path: String) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: path))) }
        func truncate(_ path: String, to n: Int) throws { try write(path, Array(try read(path).prefix(n))) }
        func json(_ path: String) throws -> Any { try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) }
        func editJSON(_ path: String, _ edit: (inout [String: Any]) throws -> Void) throws {
            var o = try json(path) as! [String: Any]
            try edit(&o)
            try JSONSerialization.data(withJSONObject: o).write(to: URL(fileURLWithPath: path))
        }

        /// `pixellm chat` on a model directory (one new token at most), with the fixture CLIP and image.
        func chat(_ model: String, image: String? = nil, vision: Bool = true) -> [String] {
            ["chat", "--model", model] + (vision ? ["--vision-tower", clip] : []) + ["--image", image ?? self.image,
             "--prompt", "Where is the cat?", "--max-new-tokens", "1", "--out-dir", dir + "/chat-out"]
        }
        func tokenize(_ tok: String) -> [String] { ["tokenize", "--tokenizer", tok, "--text", "hello"] }

        /// A copy of st-f32's tokenizer files.
        func tokenizerDir() throws -> String {
            let t = dir + "/tok"
            try fm.createDirectory(atPath: t, withIntermediateDirectories: true)
            for f in ["tokenizer.model", "added_tokens.json", "special_tokens_map.json", "tokenizer_config.json"] {
                try fm.copyItem(atPath: fixture("st-f32") + "/" + f, toPath: t + "/" + f)
            }
            return t
        }

        func data() throws -> String { try copy(shared.data, as: "data") }
        func shards() throws -> String { try copy(shared.shards, as: "shards") }
        /// A copy of the training run and the directory of its latest checkpoint.
        func run() throws -> (run: String, ckpt: String) {
            let r = try copy(shared.run, as: "run")
            let rel = try String(contentsOfFile: r + "/latest", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            return (r, r + "/" + rel)
        }
        func prepare(_ data: String, _ kinds: String, strict: Bool = true, extra: [String] = []) -> [String] {
            ["prepare", "--dataset-dir", data, "--dataset", kinds, "--out", dir + "/out", "--image-size", "112"]
                + (strict ? ["--strict"] : []) + extra
        }
        func consolidate(_ run: String) -> [String] { ["consolidate", "--checkpoint", run, "--out", dir + "/consolidated"] }
        func train(_ extra: [String]) -> [String] {
            ["train", "--config", shared.config, "--dataset-dir", shared.shards, "--max-steps", "3", "--batch-size", "1",
             "--grad-accumulation-steps", "1", "--log-base-dir", dir + "/runs", "--quiet"] + extra
        }

        /// MUSE training json: sets `field` of entry 0's annotation `ann` (and of the same target in its answers).
        func museTarget(_ data: String, ann: Int = 1, field: String = "segmentation", _ value: Any?) throws -> String {
            let p = data + "/muse_train.json"
            var list = try json(p) as! [[String: Any]]
            var anns = list[0]["ann_list"] as! [[String: Any]]
            let id = anns[ann]["id"] as! Int
            anns[ann][field] = value
            list[0]["ann_list"] = anns
            var answers = list[0]["answers"] as! [[[String: Any]]]
            for q in answers.indices {
                for t in answers[q].indices where answers[q][t]["id"] as? Int == id { answers[q][t][field] = value }
            }
            list[0]["answers"] = answers
            try JSONSerialization.data(withJSONObject: list).write(to: URL(fileURLWithPath: p))
            return p
        }
    }

    // MARK: building damaged files

    static func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    static func be<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.bigEndian) { Array($0) } }
    static func crc(_ b: [UInt8]) -> UInt32 { b.withUnsafeBytes { CRC32.checksum($0) } }

    /// A PNG with the given IHDR (valid chunk CRCs) and a few bytes of IDAT.
    static func png(width: UInt32, height: UInt32, depth: UInt8 = 8, colour: UInt8 = 2) -> [UInt8] {
        func chunk(_ type: String, _ d: [UInt8]) -> [UInt8] { be(UInt32(d.count)) + Array(type.utf8) + d + be(crc(Array(type.utf8) + d)) }
        return [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
            + chunk("IHDR", be(width) + be(height) + [depth, colour, 0, 0, 0])
            + chunk("IDAT", [0x78, 0x9C, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01]) + chunk("IEND", [])
    }

    /// A safetensors file from a header object and data bytes.
    static func safetensors(_ header: [String: Any], _ data: [UInt8]) throws -> [UInt8] {
        let h = Array(try JSONSerialization.data(withJSONObject: header))
        return le(UInt64(h.count)) + h + data
    }
    /// The header object and the data section of a safetensors file.
    static func splitSafetensors(_ b: [UInt8]) throws -> ([String: Any], [UInt8]) {
        let n = Int(b.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }.littleEndian)
        let h = try JSONSerialization.jsonObject(with: Data(b[8..<(8 + n)])) as! [String: Any]
        return (h, Array(b[(8 + n)...]))
    }

    /// The entries of a STORED zip (torch.save's layout), read through its central directory.
    static func zipEntries(_ b: [UInt8]) -> [(String, [UInt8])] {
        func u16(_ i: Int) -> Int { Int(b[i]) | Int(b[i + 1]) << 8 }
        func u32(_ i: Int) -> Int { u16(i) | u16(i + 2) << 16 }
        var eocd = b.count - 22
        while eocd > 0 && u32(eocd) != 0x0605_4B50 { eocd -= 1 }
        var p = u32(eocd + 16)
        var out: [(String, [UInt8])] = []
        for _ in 0..<u16(eocd + 10) {
            let size = u32(p + 20), nlen = u16(p + 28), xlen = u16(p + 30), clen = u16(p + 32), off = u32(p + 42)
            let name = String(decoding: b[(p + 46)..<(p + 46 + nlen)], as: UTF8.self)
            let data = off + 30 + u16(off + 26) + u16(off + 28)
            out.append((name, Array(b[data..<(data + size)])))
            p += 46 + nlen + xlen + clen
        }
        return out
    }

    /// A zip of the entries (STORED data; `method` is only what the headers claim).
    static func zip(_ entries: [(String, [UInt8])], method: UInt16 = 0) -> [UInt8] {
        var out: [UInt8] = [], central: [UInt8] = []
        for (name, data) in entries {
            let off = out.count, c = crc(data), nb = Array(name.utf8), n = UInt32(data.count)
            out += le(UInt32(0x0403_4B50)) + le(UInt16(20)) + le(UInt16(0)) + le(method) + le(UInt16(0)) + le(UInt16(0x21)) + le(c)
                + le(n) + le(n) + le(UInt16(nb.count)) + le(UInt16(0)) + nb + data
            central += le(UInt32(0x0201_4B50)) + le(UInt16(20)) + le(UInt16(20)) + le(UInt16(0)) + le(method) + le(UInt16(0))
                + le(UInt16(0x21)) + le(c) + le(n) + le(n) + le(UInt16(nb.count)) + le(UInt16(0)) + le(UInt16(0)) + le(UInt16(0))
                + le(UInt16(0)) + le(UInt32(0)) + le(UInt32(off)) + nb
        }
        let cd = out.count
        out += central
        return out + le(UInt32(0x0605_4B50)) + le(UInt16(0)) + le(UInt16(0)) + le(UInt16(entries.count)) + le(UInt16(entries.count))
            + le(UInt32(central.count)) + le(UInt32(cd)) + le(UInt16(0))
    }

    /// bin-bf16's pytorch_model.bin with its entries changed (`nil`: dropped).
    static func damagedBin(_ w: Workspace, method: UInt16 = 0, _ change: (String, [UInt8]) -> [UInt8]?) throws -> String {
        let d = try w.copy("bin-bf16", as: "model")
        let p = d + "/pytorch_model.bin"
        let entries = zipEntries(try w.read(p)).compactMap { (n, b) in change(n, b).map { (n, $0) } }
        try w.write(p, zip(entries, method: method))
        return d
    }

    /// A pickle of `n` nested tuples (MARK ... TUPLE), protocol 2.
    static func deepPickle(_ n: Int) -> [UInt8] {
        var b: [UInt8] = [0x80, 0x02]
        b += [UInt8](repeating: 0x28, count: n)
        b.append(0x29)
        b += [UInt8](repeating: 0x74, count: n - 1)
        b.append(0x2E)
        return b
    }
    /// A pickle of `n` nested lists (EMPTY_LIST ... APPEND), protocol 2.
    static func deepListPickle(_ n: Int) -> [UInt8] {
        var b: [UInt8] = [0x80, 0x02]
        b += [UInt8](repeating: 0x5D, count: n)
        b += [UInt8](repeating: 0x61, count: n - 1)
        b.append(0x2E)
        return b
    }

    static let refs = "refer_seg/refcoco/refs(unc).p"

    // MARK: the catalogue

    static var cases: [Case] {
        var c: [Case] = []
        func add(_ id: String, _ category: String, _ input: String, _ make: @escaping (Workspace) throws -> Invocation) {
            c.append(Case(id: id, category: category, input: input, make: make))
        }

        // ---- json
        add("json-config-truncated", "json", "config.json cut off inside a key") { w in
            let m = try w.copy("st-f32", as: "model")
            let p = try w.write(m + "/config.json", #"{"vocab_size": 1509, "hidden"#)
            return Invocation(args: w.chat(m), expect: [p, "not valid JSON"])
        }
        add("json-config-array", "json", "config.json is a JSON array, not an object") { w in
            let m = try w.copy("st-f32", as: "model")
            let p = try w.write(m + "/config.json", "[1, 2, 3]")
            return Invocation(args: w.chat(m), expect: [p, "array"])
        }
        add("json-config-deep-nesting", "json", "config.json: 100000 nested arrays") { w in
            let m = try w.copy("st-f32", as: "model")
            let p = try w.write(m + "/config.json", String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000))
            return Invocation(args: w.chat(m), expect: [p, "not valid JSON"])
        }
        add("json-added-tokens-truncated", "json", "added_tokens.json cut off after a value") { w in
            let t = try w.tokenizerDir()
            let p = try w.write(t + "/added_tokens.json", #"{"[SEG0]": 15"#)
            return Invocation(args: w.tokenize(t), expect: [p, "invalid JSON", "truncated"])
        }
        add("json-added-tokens-deep-nesting", "json", "added_tokens.json: 200000 nested arrays") { w in
            let t = try w.tokenizerDir()
            let p = try w.write(t + "/added_tokens.json", #"{"a":"# + String(repeating: "[", count: 200_000) + String(repeating: "]", count: 200_000) + "}")
            return Invocation(args: w.tokenize(t), expect: [p, "nesting deeper than"])
        }
        add("json-tokenizer-config-truncated", "json", "tokenizer_config.json cut off") { w in
            let t = try w.tokenizerDir()
            let p = try w.write(t + "/tokenizer_config.json", #"{"bos_token": "#)
            return Invocation(args: w.tokenize(t), expect: [p, "invalid JSON"])
        }
        add("json-muse-truncated", "json", "muse_train.json cut off inside the first entry (prepare --strict)") { w in
            let d = try w.data()
            let p = try w.write(d + "/muse_train.json", #"[{"file_name": "#)
            return Invocation(args: w.prepare(d, "multi_reason_seg"), expect: [p, "not valid JSON", "truncated"])
        }
        add("json-instances-deep-nesting", "json", "refcoco instances.json: images holds 200000 nested arrays") { w in
            let d = try w.data()
            let p = try w.write(d + "/refer_seg/refcoco/instances.json",
                                #"{"images":"# + String(repeating: "[", count: 200_000) + String(repeating: "]", count: 200_000) + "}")
            return Invocation(args: w.prepare(d, "refer_seg", extra: ["--refer-seg-data", "refcoco"]), expect: [p, "not valid JSON"])
        }
        add("json-llava-truncated", "json", "llava_instruct_150k.json cut off inside the first conversation") { w in
            let d = try w.data()
            let p = try w.write(d + "/llava_dataset/llava_instruct_150k.json", #"[{"id": "1", "conversations": ["#)
            return Invocation(args: w.prepare(d, "vqa"), expect: [p, "not valid JSON"])
        }
        add("json-safetensors-index-truncated", "json", "model.safetensors.index.json cut off") { w in
            let m = try w.copy("st-bf16", as: "model")
            let p = try w.write(m + "/model.safetensors.index.json", #"{"weight_map": {"#)
            return Invocation(args: w.chat(m), expect: [p, "not valid JSON", "truncated"])
        }
        add("json-recipe-wrong-type", "json", "training recipe with \"lr\": \"fast\"") { w in
            let p = try w.write("recipe.json", #"{"lr": "fast"}"#)
            return Invocation(args: w.train(["--recipe", p]), expect: [p, "lr", "wrong type"])
        }
        add("json-recipe-unknown-key", "json", "training recipe with an unknown key") { w in
            let p = try w.write("recipe.json", #"{"learning_rate_x": 1}"#)
            return Invocation(args: w.train(["--recipe", p]), expect: [p, "unknown key 'learning_rate_x'"])
        }

        // ---- image
        add("image-empty", "image", "a 0-byte .png") { w in
            let p = try w.write("empty.png", [UInt8]())
            return Invocation(args: w.chat(w.fixture("st-f32"), image: p, vision: false), expect: [p, "empty file"])
        }
        add("image-png-truncated", "image", "image.png cut to its first 40 bytes") { w in
            let p = try w.write("trunc.png", Array(try w.read(w.image).prefix(40)))
            return Invocation(args: w.chat(w.fixture("st-f32"), image: p, vision: false), expect: [p, "truncated PNG"])
        }
        add("image-png-huge", "image", "PNG header claiming 100000 x 100000 pixels") { w in
            let p = try w.write("huge.png", png(width: 100_000, height: 100_000))
            return Invocation(args: w.chat(w.fixture("st-f32"), image: p, vision: false), expect: [p, "100000x100000"])
        }
        add("image-png-zero-width", "image", "PNG header with width 0") { w in
            let p = try w.write("zero.png", png(width: 0, height: 10))
            return Invocation(args: w.chat(w.fixture("st-f32"), image: p, vision: false), expect: [p, "IHDR"])
        }
        add("image-png-bad-crc", "image", "image.png with its IHDR CRC zeroed") { w in
            var b = try w.read(w.image)
            for i in 29..<33 { b[i] = 0 }
            let p = try w.write("crc.png", b)
            return Invocation(args: w.chat(w.fixture("st-f32"), image: p, vision: false), expect: [p, "CRC"])
        }
        add("image-gif", "image", "a GIF named .png") { w in
            let p = try w.write("gif.png", Array("GIF89a".utf8) + [1, 0, 1, 0, 0, 0, 0, 0x3B] as [UInt8])
            return Invocation(args: w.chat(w.fixture("st-f32"), image: p, vision: false), expect: [p, "GIF", "only JPEG and PNG"])
        }
        add("image-jpeg-header-only", "image", "a JPEG that stops after its APP0 marker") { w in
            let p = try w.write("head.jpg", [0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10] as [UInt8] + Array("JFIF".utf8) + [0])
            return Invocation(args: w.chat(w.fixture("st-f32"), image: p, vision: false), expect: [p, "JPEG"])
        }
        add("image-directory", "image", "--image names a directory") { w in
            return Invocation(args: w.chat(w.fixture("st-f32"), image: w.dir, vision: false), expect: [w.dir, "is a directory"])
        }
        add("image-dataset-jpeg-strict", "image", "a dataset JPEG cut to 6 bytes (prepare --strict)") { w in
            let d = try w.data()
            let dir = d + "/refer_seg/images/mscoco/images/train2014"
            let victim = try w.fm.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("synth_train") }.sorted()[0]
            try w.write(dir + "/" + victim, [0xFF, 0xD8, 0xFF, 0xE0, 0, 16] as [UInt8])
            return Invocation(args: w.prepare(d, "refer_seg", extra: ["--refer-seg-data", "refcoco"]), expect: [victim, "--strict"])
        }
        add("image-dataset-jpeg-skipped", "image", "a dataset JPEG cut to 6 bytes (prepare: skipped and counted)") { w in
            let d = try w.data()
            let dir = d + "/refer_seg/images/mscoco/images/train2014"
            let victim = try w.fm.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("synth_train") }.sorted()[0]
            try w.write(dir + "/" + victim, [0xFF, 0xD8, 0xFF, 0xE0, 0, 16] as [UInt8])
            return Invocation(args: w.prepare(d, "refer_seg", strict: false, extra: ["--refer-seg-data", "refcoco"]), expect: [victim],
                              outcome: .skipped, skipLog: w.dir + "/out/skipped.log")
        }

        // ---- mask / RLE (MUSE targets, prepare --strict)
        func mask(_ id: String, _ input: String, _ value: Any?, field: String = "segmentation", _ expect: [String]) {
            add(id, "mask/RLE", input) { w in
                let p = try w.museTarget(try w.data(), field: field, value)
                return Invocation(args: w.prepare(p.replacingOccurrences(of: "/muse_train.json", with: ""), "multi_reason_seg"),
                                  expect: [p, "entry 0"] + expect)
            }
        }
        mask("rle-invalid-character", "compressed RLE counts with a character outside the alphabet",
             ["size": [84, 112], "counts": "\u{7f}\u{7f}~~{{"] as [String: Any], ["invalid character"])
        mask("rle-size-mismatch", "RLE size [10, 10] on a 84 x 112 image", ["size": [10, 10], "counts": [100, 9308]], ["height * width"])
        mask("rle-counts-overflow", "RLE counts summing past height * width", ["size": [84, 112], "counts": [5000, 5000, 5000]], ["sum to 15000"])
        mask("rle-negative-count", "RLE with a negative run length", ["size": [84, 112], "counts": [-5, 100]], ["negative"])
        mask("rle-no-size", "RLE without \"size\"", ["counts": [100]], ["\"size\""])
        mask("rle-short-string", "compressed RLE string ending inside a value", ["size": [84, 112], "counts": "a"] as [String: Any], ["ends inside a value"])
        mask("polygon-odd", "polygon with 3 coordinates", [[1.0, 2.0, 3.0]], ["polygon 0 has 3 coordinates"])
        mask("polygon-out-of-range", "polygon with coordinates of 1e308", [[1e308, 1e308, -1e308, 5, 7, 1e308]], ["not a finite value in range"])
        mask("segmentation-string", "segmentation is a string", "abc", ["neither polygons nor RLE"])
        mask("segmentation-missing", "a target without segmentation", nil, ["no 'segmentation'"])
        add("rle-invalid-character-skipped", "mask/RLE", "bad compressed RLE (prepare: skipped and counted)") { w in
            let p = try w.museTarget(try w.data(), ["size": [84, 112], "counts": "\u{7f}~~"] as [String: Any])
            return Invocation(args: w.prepare(p.replacingOccurrences(of: "/muse_train.json", with: ""), "multi_reason_seg", strict: false),
                              expect: ["muse_train.json", "bad segmentation", "invalid character"], outcome: .skipped,
                              skipLog: w.dir + "/out/skipped.log")
        }

        // ---- safetensors (st-f32's model.safetensors damaged)
        func st(_ id: String, _ input: String, _ expect: @escaping (String, String) -> [String],
                _ make: @escaping ([String: Any], [UInt8]) throws -> [UInt8]) {
            add(id, "safetensors", input) { w in
                let m = try w.copy("st-f32", as: "model")
                let p = m + "/model.safetensors"
                let (h, d) = try splitSafetensors(try w.read(p))
                try w.write(p, try make(h, d))
                return Invocation(args: w.chat(m), expect: expect(m, p))
            }
        }
        func entry(_ h: [String: Any], _ k: String, _ f: String, _ v: Any) -> [String: Any] {
            var h = h, e = h[k] as! [String: Any]
            e[f] = v
            h[k] = e
            return h
        }
        st("safetensors-empty", "0-byte model.safetensors", { [$1, "fewer than the 8-byte header length"] }) { _, _ in [] }
        st("safetensors-header-too-long", "header length 2^63", { [$1, "exceeds the limit"] }) { _, _ in le(UInt64(1) << 63) + Array("{}".utf8) }
        st("safetensors-header-past-end", "header length 1000000 in a 15-byte file", { [$1, "runs past the end of the file"] }) { _, _ in
            le(UInt64(1_000_000)) + Array(#"{"a":1}"#.utf8)
        }
        st("safetensors-header-not-json", "header {abc}", { [$1, "not valid JSON"] }) { _, d in le(UInt64(5)) + Array("{abc}".utf8) + d }
        st("safetensors-header-not-utf8", "header with bytes FF FE", { [$1, "not valid UTF-8"] }) { _, d in le(UInt64(4)) + [0x7B, 0xFF, 0xFE, 0x7D] + d }
        st("safetensors-unknown-dtype", "dtype F128", { [$1, "lm_head.weight", "unknown dtype 'F128'"] }) { h, d in
            try safetensors(entry(h, "lm_head.weight", "dtype", "F128"), d)
        }
        st("safetensors-negative-shape", "shape [-1]", { [$1, "lm_head.weight", "non-negative integer"] }) { h, d in
            try safetensors(entry(h, "lm_head.weight", "shape", [-1]), d)
        }
        st("safetensors-shape-overflow", "shape [2^40, 2^40]", { [$1, "lm_head.weight", "overflows"] }) { h, d in
            try safetensors(entry(h, "lm_head.weight", "shape", [1 << 40, 1 << 40]), d)
        }
        st("safetensors-offsets-huge", "data_offsets [0, 2^62]", { [$1, "lm_head.weight", "data_offsets"] }) { h, d in
            try safetensors(entry(h, "lm_head.weight", "data_offsets", [0, 1 << 62]), d)
        }
        st("safetensors-data-truncated", "data section cut in half", { [$1, "run past the end of the file", "truncated"] }) { h, d in
            try safetensors(h, Array(d.prefix(d.count / 2)))
        }
        st("safetensors-hole", "a tensor's entry removed (its bytes belong to nothing)", { [$1, "hole in the data"] }) { h, d in
            var h = h
            h["lm_head.weight"] = nil
            return try safetensors(h, d)
        }
        st("safetensors-int-weights", "lm_head.weight stored as I32", { m, _ in [m, "lm_head.weight", "not supported for weights"] }) { h, d in
            try safetensors(entry(h, "lm_head.weight", "dtype", "I32"), d)
        }
        st("safetensors-transposed", "lm_head.weight with shape [32, 1509]", { m, _ in [m, "does not match the config", "vocab_size"] }) { h, d in
            try safetensors(entry(h, "lm_head.weight", "shape", [32, 1509]), d)
        }
        add("safetensors-missing-shard", "safetensors", "sharded checkpoint without its second shard") { w in
            let m = try w.copy("st-bf16", as: "model")
            try w.fm.removeItem(atPath: m + "/model-00002-of-00002.safetensors")
            return Invocation(args: w.chat(m), expect: [m + "/model.safetensors.index.json", "model-00002-of-00002.safetensors", "does not exist"])
        }

        // ---- pickle (.bin): torch.save zips, and the refs(unc).p pickle of refCOCO
        let pkl = "pytorch_model/data.pkl"
        func bin(_ id: String, _ input: String, method: UInt16 = 0, _ expect: [String], _ change: @escaping (String, [UInt8]) -> [UInt8]?) {
            add(id, "pickle (.bin)", input) { w in
                let m = try damagedBin(w, method: method, change)
                return Invocation(args: w.chat(m), expect: [m + "/pytorch_model.bin"] + expect)
            }
        }
        add("bin-not-a-zip", "pickle (.bin)", "pytorch_model.bin holding text") { w in
            let m = try w.copy("bin-bf16", as: "model")
            let p = try w.write(m + "/pytorch_model.bin", String(repeating: "hello, not a checkpoint ", count: 10))
            return Invocation(args: w.chat(m), expect: [p, "not a PyTorch checkpoint"])
        }
        add("bin-zip-truncated", "pickle (.bin)", "pytorch_model.bin without its last 10 bytes") { w in
            let m = try w.copy("bin-bf16", as: "model")
            let p = m + "/pytorch_model.bin"
            try w.truncate(p, to: try w.read(p).count - 10)
            return Invocation(args: w.chat(m), expect: [p, "end-of-central-directory"])
        }
        bin("bin-no-data-pkl", "zip without data.pkl", ["data.pkl"]) { n, b in n == pkl ? nil : b }
        bin("bin-pickle-truncated", "data.pkl cut in half", ["data.pkl", "truncated"]) { n, b in n == pkl ? Array(b.prefix(b.count / 2)) : b }
        bin("bin-pickle-no-stop", "data.pkl without its STOP opcode", ["data.pkl", "without STOP"]) { n, b in n == pkl ? Array(b.dropLast()) : b }
        bin("bin-storage-missing", "the zip entry of storage 0 removed", ["data/0", "no such entry"]) { n, b in n == "pytorch_model/data/0" ? nil : b }
        bin("bin-storage-short", "storage 0 cut to 10 bytes", ["data/0", "holds 10 bytes"]) { n, b in n == "pytorch_model/data/0" ? Array(b.prefix(10)) : b }
        bin("bin-deflate", "entries marked DEFLATE-compressed", method: 8, ["compressed entry not supported"]) { _, b in b }
        bin("bin-global-os-system", "data.pkl importing os.system", ["refusing pickle global os.system"]) { n, b in
            n == pkl ? [UInt8]([0x80, 0x02]) + Array("cos\nsystem\n".utf8) + [UInt8]([0x2E]) : b
        }
        bin("bin-unknown-opcode", "data.pkl with opcode 0xFE", ["unknown pickle opcode 0xfe"]) { n, b in
            n == pkl ? [UInt8]([0x80, 0x02, 0xFE]) + Array(b.dropFirst(3)) : b
        }
        bin("bin-protocol-9", "data.pkl claiming pickle protocol 9", ["pickle protocol 9"]) { n, b in n == pkl ? [UInt8]([0x80, 0x09]) + Array(b.dropFirst(2)) : b }
        bin("bin-deep-nesting", "data.pkl of 200000 nested tuples", ["data.pkl", "nest"]) { n, b in n == pkl ? deepPickle(200_000) : b }
        func refs(_ id: String, _ input: String, _ expect: [String], _ bytes: @escaping ([UInt8]) -> [UInt8]) {
            add(id, "pickle (.bin)", input) { w in
                let d = try w.data()
                let p = d + "/" + Self.refs
                try w.write(p, bytes(try w.read(p)))
                return Invocation(args: w.prepare(d, "refer_seg", extra: ["--refer-seg-data", "refcoco"]), expect: [p] + expect)
            }
        }
        refs("refs-pickle-truncated", "refs(unc).p cut to 100 bytes", ["truncated"]) { Array($0.prefix(100)) }
        refs("refs-pickle-global", "refs(unc).p calling os.system", ["GLOBAL", "refused"]) { _ in Array("cos\nsystem\n(S'echo hi'\ntR.".utf8) }
        refs("refs-pickle-dict", "refs(unc).p holding a dict", ["holds a dict, not a list of refs"]) { _ in
            [0x80, 0x02, 0x7D, 0x58, 1, 0, 0, 0, 0x61, 0x4B, 1, 0x73, 0x2E]   // {'a': 1}
        }
        refs("refs-pickle-deep-nesting", "refs(unc).p of 200000 nested lists", ["nest"]) { _ in deepListPickle(200_000) }

        // ---- tokenizer
        func tok(_ id: String, _ input: String, _ file: String, _ content: String?, _ expect: [String]) {
            add(id, "tokenizer", input) { w in
                let t = try w.tokenizerDir()
                let p = t + "/" + file
                if let content { try w.write(p, content) } else { try w.fm.removeItem(atPath: p) }
                return Invocation(args: w.tokenize(t), expect: (content == nil ? [t] : [p]) + expect)
            }
        }
        tok("tokenizer-model-garbage", "tokenizer.model holding text", "tokenizer.model", "hello world, not a protobuf", ["corrupt SentencePiece model"])
        add("tokenizer-model-truncated", "tokenizer", "tokenizer.model cut to 5000 bytes") { w in
            let t = try w.tokenizerDir()
            try w.truncate(t + "/tokenizer.model", to: 5000)
            return Invocation(args: w.tokenize(t), expect: [t + "/tokenizer.model", "runs past the end"])
        }
        tok("tokenizer-model-empty", "0-byte tokenizer.model", "tokenizer.model", "", ["no pieces"])
        tok("tokenizer-none", "no tokenizer.model or tokenizer.json", "tokenizer.model", nil, ["no tokenizer.json or tokenizer.model"])
        tok("tokenizer-added-string-id", "added_tokens.json: \"[SEG0]\": \"x\"", "added_tokens.json", #"{"[SEG0]": "x"}"#, ["[SEG0]", "no integer id"])
        tok("tokenizer-added-id-gap", "added_tokens.json: \"[SEG0]\": 99999", "added_tokens.json", #"{"[SEG0]": 99999}"#, ["99999", "without gaps"])
        tok("tokenizer-added-not-object", "added_tokens.json is an array", "added_tokens.json", "[1, 2]", ["not an object"])
        tok("tokenizer-json-merge-unknown", "tokenizer.json merge of a token not in the vocab", "tokenizer.json",
            #"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}, "added_tokens": []}"#, ["model.merges[0]", "not in the vocab"])
        tok("tokenizer-json-negative-id", "tokenizer.json vocab id -1", "tokenizer.json",
            #"{"model": {"type": "BPE", "vocab": {"a": -1}, "merges": []}, "added_tokens": []}"#, ["model.vocab", "-1"])
        tok("tokenizer-special-map-number", "special_tokens_map.json: \"bos_token\": 5", "special_tokens_map.json", #"{"bos_token": 5}"#, ["bos_token"])
        add("tokenizer-config-bos-number", "tokenizer", "tokenizer_config.json: \"bos_token\": 5 (no special_tokens_map.json)") { w in
            let t = try w.tokenizerDir()
            try w.fm.removeItem(atPath: t + "/special_tokens_map.json")
            try w.editJSON(t + "/tokenizer_config.json") { $0["bos_token"] = 5 }
            return Invocation(args: w.tokenize(t), expect: [t + "/tokenizer_config.json", "bos_token"])
        }

        // ---- config (st-f32's config.json with one field changed)
        func cfg(_ id: String, _ input: String, _ field: String, _ value: Any, _ expect: [String]) {
            add(id, "config", input) { w in
                let m = try w.copy("st-f32", as: "model")
                let p = m + "/config.json"
                try w.editJSON(p) { o in
                    if field.hasPrefix("vision_config.") {
                        var v = o["vision_config"] as! [String: Any]
                        v[String(field.dropFirst("vision_config.".count))] = value
                        o["vision_config"] = v
                    } else { o[field] = value }
                }
                return Invocation(args: w.chat(m), expect: [p] + expect)
            }
        }
        cfg("config-vocab-huge", "vocab_size 10^15", "vocab_size", 1_000_000_000_000_000, ["vocab_size", "not a size"])
        cfg("config-heads-not-dividing", "num_attention_heads 5 for hidden_size 32", "num_attention_heads", 5, ["hidden_size", "num_attention_heads 5"])
        cfg("config-kv-heads", "num_key_value_heads 3 with 4 attention heads", "num_key_value_heads", 3, ["num_key_value_heads"])
        cfg("config-eps-negative", "rms_norm_eps -1", "rms_norm_eps", -1.0, ["rms_norm_eps"])
        cfg("config-seg-token-num-zero", "seg_token_num 0", "seg_token_num", 0, ["seg_token_num"])
        cfg("config-scale-num-zero", "image_feature_scale_num 0", "image_feature_scale_num", 0, ["image_feature_scale_num"])
        cfg("config-token-fusion", "token_fusion \"bogus\"", "token_fusion", "bogus", ["token_fusion", "bogus"])
        cfg("config-select-layer", "mm_vision_select_layer -100", "mm_vision_select_layer", -100, ["num_hidden_layers", "-100"])
        cfg("config-patch-size-zero", "vision_config.patch_size 0", "vision_config.patch_size", 0, ["patch_size"])
        cfg("config-string-number", "hidden_size \"32\" (a string)", "hidden_size", "32", ["hidden_size", "string"])
        cfg("config-fractional-size", "hidden_size 32.5", "hidden_size", 32.5, ["hidden_size"])
        add("config-train-missing-field", "config", "train --config {\"vocab_size\": 1024}") { w in
            let p = try w.write("config.json", #"{"vocab_size": 1024}"#)
            var args = w.train([])
            args[2] = p
            return Invocation(args: args, expect: [p, "hidden_size", "missing"])
        }

        // ---- HDF5 shards (a copy of the prepared shards)
        func shard(_ id: String, _ input: String, _ expect: @escaping (String, String) -> [String], command: String = "inspect",
                   _ damage: @escaping (Workspace, String) throws -> Void) {
            add(id, "HDF5 shard", input) { w in
                let s = try w.shards()
                try damage(w, s)
                var args = ["inspect", "--shards", s, "--index", "0", "--out", w.dir + "/inspect"]
                if command == "train" {
                    args = w.train([])
                    args[4] = s
                }
                return Invocation(args: args, expect: expect(s, s + "/shard-00000.h5"))
            }
        }
        shard("h5-truncated", "shard-00000.h5 cut to 3000 bytes", { [$1, "3000 bytes, index.json says", "truncated"] }) { w, s in try w.truncate(s + "/shard-00000.h5", to: 3000) }
        shard("h5-garbage", "shard-00000.h5 holding text", { [$1, "truncated or replaced"] }) { w, s in try w.write(s + "/shard-00000.h5", "not hdf5\n") }
        shard("h5-empty", "0-byte shard-00000.h5", { [$1, "0 bytes, index.json says"] }) { w, s in try w.write(s + "/shard-00000.h5", [UInt8]()) }
        shard("h5-bit-flip", "one bit of shard-00000.h5 flipped (same size)", { [$1, "CRC-32", "damaged"] }) { w, s in
            var d = try Data(contentsOf: URL(fileURLWithPath: s + "/shard-00000.h5"))
            d[d.count / 2] ^= 0x04
            try d.write(to: URL(fileURLWithPath: s + "/shard-00000.h5"))
        }
        shard("h5-train-bit-flip", "train on a shard with one bit flipped", { [$1, "CRC-32"] }, command: "train") { w, s in
            var d = try Data(contentsOf: URL(fileURLWithPath: s + "/shard-00000.h5"))
            d[d.count / 3] ^= 0x80
            try d.write(to: URL(fileURLWithPath: s + "/shard-00000.h5"))
        }
        shard("h5-missing", "shard-00000.h5 deleted", { [$1, "no such shard file"] }) { w, s in try w.fm.removeItem(atPath: s + "/shard-00000.h5") }
        shard("h5-directory", "shard-00000.h5 is a directory", { [$1, "is a directory"] }) { w, s in
            try w.fm.removeItem(atPath: s + "/shard-00000.h5")
            try w.fm.createDirectory(atPath: s + "/shard-00000.h5", withIntermediateDirectories: false)
        }
        shard("h5-count-mismatch", "index.json says the shard holds 99 samples (total_samples agreeing)", { [$1, "the manifest says 99"] }) { w, s in
            try w.editJSON(s + "/index.json") { o in
                var sh = o["shards"] as! [[String: Any]]
                let old = sh[0]["samples"] as! Int
                sh[0]["samples"] = 99
                sh[0]["item_end"] = 99
                o["shards"] = sh
                o["total_samples"] = (o["total_samples"] as! Int) - old + 99
            }
        }
        shard("h5-total-mismatch", "index.json's total_samples disagrees with its shards", { s, _ in [s + "/index.json", "total_samples says 12345"] }) { w, s in
            try w.editJSON(s + "/index.json") { $0["total_samples"] = 12345 }
        }
        shard("h5-shard-path-escapes", "index.json names a shard file ../outside.h5", { s, _ in [s + "/index.json", "not a plain file name"] }) { w, s in
            try w.editJSON(s + "/index.json") { o in
                var sh = o["shards"] as! [[String: Any]]
                sh[0]["file"] = "../outside.h5"
                o["shards"] = sh
            }
        }
        shard("h5-index-truncated", "index.json cut off", { s, _ in [s + "/index.json", "manifest does not decode"] }) { w, s in
            try w.write(s + "/index.json", #"{"format": "pixellm-shards""#)
        }
        shard("h5-index-missing", "index.json deleted", { s, _ in [s + "/index.json", "no manifest"] }) { w, s in try w.fm.removeItem(atPath: s + "/index.json") }
        shard("h5-format-version", "index.json with format_version 99", { s, _ in [s + "/index.json", "format version 99"] }) { w, s in
            try w.editJSON(s + "/index.json") { $0["format_version"] = 99 }
        }
        shard("h5-train-truncated", "train on a shard cut to 3000 bytes", { [$1, "truncated"] }, command: "train") { w, s in
            try w.truncate(s + "/shard-00000.h5", to: 3000)
        }

        // ---- training checkpoint (a copy of the 2-step run; consolidate unless said otherwise)
        func ckpt(_ id: String, _ input: String, _ expect: @escaping (String, String) -> [String],
                  command: ((Workspace, String) -> [String])? = nil, _ damage: @escaping (Workspace, String, String) throws -> Void) {
            add(id, "checkpoint manifest", input) { w in
                let (run, dir) = try w.run()
                try damage(w, run, dir)
                return Invocation(args: command?(w, run) ?? w.consolidate(run), expect: expect(run, dir))
            }
        }
        let rank0 = "/rank-00000-of-00001.h5", manifest = "/manifest.json"
        func layout(_ w: Workspace, _ dir: String, _ f: (inout [String: Any]) -> Void) throws {
            try w.editJSON(dir + manifest) { o in
                var l = o["layout"] as! [String: Any]
                f(&l)
                o["layout"] = l
            }
        }
        ckpt("ckpt-latest-parent", "latest = ../x", { r, _ in [r + "/latest", "leaves the run directory"] }) { w, r, _ in try w.write(r + "/latest", "../x") }
        ckpt("ckpt-latest-absolute", "latest = /etc", { r, _ in [r + "/latest", "leaves the run directory"] }) { w, r, _ in try w.write(r + "/latest", "/etc") }
        ckpt("ckpt-latest-empty", "empty latest", { r, _ in [r, "neither a checkpoint"] }) { w, r, _ in try w.write(r + "/latest", "") }
        ckpt("ckpt-latest-missing-step", "latest naming a step that does not exist", { r, _ in [r + "/checkpoints/step-000009" + manifest, "not a complete checkpoint"] }) { w, r, _ in
            try w.write(r + "/latest", "checkpoints/step-000009")
        }
        ckpt("ckpt-manifest-truncated", "manifest.json cut off", { [$1 + manifest, "not a training checkpoint manifest"] }) { w, _, d in
            try w.write(d + manifest, #"{"format": "#)
        }
        ckpt("ckpt-manifest-version", "manifest format_version 99", { [$1 + manifest, "format version 99"] }) { w, _, d in
            try w.editJSON(d + manifest) { $0["format_version"] = 99 }
        }
        ckpt("ckpt-rank-file-escapes", "manifest names its rank file ../../x.h5", { [$1 + manifest, "not a plain file name"] }) { w, _, d in
            try w.editJSON(d + manifest) { o in
                var f = o["files"] as! [[String: Any]]
                f[0]["name"] = "../../x.h5"
                o["files"] = f
            }
        }
        ckpt("ckpt-manifest-format", "manifest format \"other\"", { [$1 + manifest, "format 'other'"] }) { w, _, d in
            try w.editJSON(d + manifest) { $0["format"] = "other" }
        }
        ckpt("ckpt-manifest-world-size", "manifest world_size 2 with one rank file", { [$1 + manifest, "world of 2"] }) { w, _, d in
            try w.editJSON(d + manifest) { $0["world_size"] = 2 }
        }
        ckpt("ckpt-rank-missing", "rank file deleted", { [$1 + rank0, "missing"] }) { w, _, d in try w.fm.removeItem(atPath: d + rank0) }
        ckpt("ckpt-rank-truncated", "rank file cut to 1000 bytes", { [$1 + rank0, "truncated or replaced"] }) { w, _, d in try w.truncate(d + rank0, to: 1000) }
        ckpt("ckpt-rank-flipped", "one byte of the rank file flipped", { [$1 + rank0, "CRC-32"] }) { w, _, d in
            var b = try w.read(d + rank0)
            b[b.count / 2] ^= 0xFF
            try w.write(d + rank0, b)
        }
        ckpt("ckpt-bucket-count-huge", "manifest layout: bucket 0 count 10^12", { [$1 + manifest, "bucket"] }) { w, _, d in
            try layout(w, d) { l in
                var b = l["buckets"] as! [[String: Any]]
                b[0]["count"] = 1_000_000_000_000
                l["buckets"] = b
            }
        }
        ckpt("ckpt-no-buckets", "manifest layout with no buckets", { [$1 + manifest, "bucket"] }) { w, _, d in
            try layout(w, d) { $0["buckets"] = [Any]() }
        }
        ckpt("ckpt-world-size-zero", "manifest world_size 0, no rank files", { [$1 + manifest, "world"] }) { w, _, d in
            try w.editJSON(d + manifest) { o in
                o["world_size"] = 0
                o["files"] = [Any]()
                var l = o["layout"] as! [String: Any]
                l["world_size"] = 0
                o["layout"] = l
            }
        }
        // the last tensor taken out of the layout consistently (its bucket no longer lists it): every size still agrees
        func dropLastParam(_ l: inout [String: Any]) {
            let params = l["params"] as! [Any]
            let gone = params.count - 1
            l["params"] = Array(params.dropLast())
            l["buckets"] = (l["buckets"] as! [[String: Any]]).map { b in
                var b = b
                b["params"] = (b["params"] as! [Int]).filter { $0 != gone }
                return b
            }
        }
        ckpt("ckpt-params-dropped", "manifest layout without one trained tensor (sizes consistent)", { [$1 + manifest, "lacks 1 of the"] }) { w, _, d in
            try layout(w, d, dropLastParam)
        }
        ckpt("ckpt-resume-params-dropped", "train --resume a run whose layout lacks a trained tensor", { [$1, "other trainable tensors"] },
             command: { w, r in w.train(["--resume", r]) }) { w, _, d in
            try layout(w, d, dropLastParam)
        }
        ckpt("ckpt-resume-truncated", "train --resume a run whose rank file is cut to 1000 bytes", { [$1 + rank0, "truncated or replaced"] },
             command: { w, r in w.train(["--resume", r]) }) { w, _, d in try w.truncate(d + rank0, to: 1000) }
        ckpt("ckpt-eval-rank-missing", "eval --model a run whose rank file is deleted", { [$1 + rank0, "missing"] },
             command: { w, r in ["eval", "--model", r, "--dataset-dir", w.shared.data, "--val-dataset", "MultiReasonSeg|val", "--limit", "1", "--quiet"] }) { w, _, d in
            try w.fm.removeItem(atPath: d + rank0)
        }

        // ---- command line
        func cli(_ id: String, _ input: String, _ expect: [String], _ args: @escaping (Workspace) throws -> [String]) {
            add(id, "command line", input) { w in Invocation(args: try args(w), expect: expect) }
        }
        cli("cli-prepare-image-size", "prepare --image-size 0", ["--image-size", "1...4096"]) { w in
            ["prepare", "--dataset-dir", w.shared.data, "--out", w.dir + "/out", "--image-size", "0"]
        }
        cli("cli-prepare-compression", "prepare --compression 12", ["--compression", "0...9"]) { w in
            ["prepare", "--dataset-dir", w.shared.data, "--out", w.dir + "/out", "--compression", "12"]
        }
        cli("cli-prepare-unknown-kind", "prepare --dataset bogus", ["--dataset", "bogus", "valid:"]) { w in
            ["prepare", "--dataset-dir", w.shared.data, "--out", w.dir + "/out", "--dataset", "bogus"]
        }
        cli("cli-inspect-negative-index", "inspect --index=-1", ["index.json", "-1", "out of range"]) { w in
            ["inspect", "--shards", w.shared.shards, "--index=-1", "--out", w.dir + "/out"]
        }
        cli("cli-consolidate-dtype", "consolidate --dtype f64", ["--dtype", "f32 or bf16"]) { w in
            ["consolidate", "--checkpoint", w.shared.run, "--out", w.dir + "/out", "--dtype", "f64"]
        }
        cli("cli-consolidate-shard-size", "consolidate --max-shard-size 5XB", ["--max-shard-size", "5XB"]) { w in
            ["consolidate", "--checkpoint", w.shared.run, "--out", w.dir + "/out", "--max-shard-size", "5XB"]
        }
        cli("cli-train-time-budget", "train --time-budget abc", ["--time-budget", "abc"]) { w in w.train(["--time-budget", "abc"]) }
        cli("cli-train-lr-nan", "train --lr nan", ["--lr", "nan"]) { w in w.train(["--lr", "nan"]) }
        cli("cli-train-zero-stage", "train --zero-stage 3", ["--zero-stage", "3"]) { w in w.train(["--zero-stage", "3"]) }
        cli("cli-train-sample-rates", "train --sample-rates 1,x", ["sample_rates", "'x'"]) { w in w.train(["--sample-rates", "1,x"]) }
        cli("cli-train-resume-word", "train --resume sometimes", ["sometimes", "--resume"]) { w in w.train(["--resume", "sometimes"]) }
        cli("cli-chat-precision", "chat --precision f8", ["--precision", "f32 or bf16"]) { w in w.chat(w.fixture("st-f32"), vision: false) + ["--precision", "f8"] }
        cli("cli-tokenize-decode-negative", "tokenize --decode --text [1, -5]", ["--text", "-5", "outside the vocabulary"]) { w in
            ["tokenize", "--tokenizer", w.fixture("st-f32"), "--decode", "--text", "[1, -5]"]
        }
        cli("cli-eval-unknown-split", "eval --val-dataset Bogus|val", ["Bogus|val", "known:"]) { w in
            ["eval", "--model", w.fixture("st-f32"), "--dataset-dir", w.shared.data, "--val-dataset", "Bogus|val"]
        }
        cli("cli-synth-vocab-size", "synth --vocab-size 5", ["--vocab-size", "5"]) { w in
            ["synth", "--out", w.dir + "/synth", "--train", "1", "--val", "1", "--test", "1", "--size", "64", "--vocab-size", "5"]
        }
        cli("cli-synth-out-under-file", "synth --out FILE/sub (FILE a regular file)", ["--out", "not a directory"]) { w in
            let f = try w.write("a-file", "x")
            return ["synth", "--out", f + "/sub", "--train", "1", "--val", "1", "--test", "1", "--size", "64"]
        }
        cli("cli-consolidate-out-under-file", "consolidate --out FILE/sub (FILE a regular file)", ["--out", "not a directory"]) { w in
            let f = try w.write("a-file", "x")
            return ["consolidate", "--checkpoint", w.shared.run, "--out", f + "/sub"]
        }
        cli("cli-train-log-dir-file", "train --log-base-dir FILE (a regular file)", ["--log-base-dir", "not a directory"]) { w in
            let f = try w.write("a-file", "x")
            var a = w.train([])
            a[a.firstIndex(of: "--log-base-dir")! + 1] = f
            return a
        }
        return c
    }

    // MARK: the test

    func testEveryBadInputIsANamedErrorNotACrash() throws {
        let root = NSTemporaryDirectory() + "pixellm-bad-inputs-\(getpid())"
        try? FileManager.default.removeItem(atPath: root)
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let shared = try Self.makeShared(root)
        let all = Self.cases
        XCTAssertGreaterThanOrEqual(all.count, 45)
        XCTAssertEqual(Set(all.map(\.id)).count, all.count, "case ids are unique")
        let categories = Dictionary(grouping: all, by: \.category).mapValues(\.count)
        XCTAssertEqual(Set(categories.keys), ["json", "image", "mask/RLE", "safetensors", "pickle (.bin)", "tokenizer", "config",
                                              "HDF5 shard", "checkpoint manifest", "command line"])
        XCTAssert(categories.values.allSatisfy { $0 >= 3 }, "\(categories)")

        var rows: [String] = []
        for (n, c) in all.enumerated() {
            let dir = root + "/" + c.id
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            let w = Workspace(dir: dir, shared: shared)
            let inv: Invocation
            do { inv = try c.make(w) } catch {
                XCTFail("\(c.id): setting up the input failed: \(error)")
                continue
            }
            let r = try Self.run(inv.args, cwd: dir)
            let text = r.err + "\n" + r.out
            let what = "\(c.id) (pixellm \(inv.args.joined(separator: " ")))"
            XCTAssertFalse(r.signalled, "\(what): killed by signal \(r.status): \(text.prefix(2000))")
            XCTAssertFalse(r.timedOut, "\(what): did not finish")
            var seen: String
            switch inv.outcome {
            case .error:
                XCTAssertNotEqual(r.status, 0, "\(what): succeeded: \(text.suffix(1000))")
                for m in inv.expect { XCTAssertTrue(text.contains(m), "\(what): the message does not mention '\(m)': \(text.prefix(2000))") }
                seen = Self.firstErrorLine(r)
            case .skipped:
                XCTAssertEqual(r.status, 0, "\(what): \(text.suffix(1000))")
                let log = inv.skipLog.flatMap { try? String(contentsOfFile: $0, encoding: .utf8) } ?? ""
                for m in inv.expect { XCTAssertTrue(log.contains(m), "\(what): the skip log does not mention '\(m)': \(log)") }
                XCTAssertTrue(r.out.contains("skipped") || r.err.contains("skipped"), "\(what): the skip is not counted: \(text.suffix(1000))")
                let line = log.split(separator: "\n").first.map(String.init)?.replacingOccurrences(of: "\t", with: " ") ?? ""
                seen = "exit 0, counted as skipped; skipped.log: " + line
            }
            if r.signalled { seen = "CRASH (signal \(r.status)): " + seen } else if r.timedOut { seen = "HANG: " + seen }
            rows.append("| \(n + 1) | \(c.category) | \(Self.cell(c.input, root)) | `\(Self.cell(Self.command(inv.args), root))` | \(Self.cell(seen, root)) |")
        }
        if let path = ProcessInfo.processInfo.environment["PIXELLM_BAD_INPUT_TABLE"], !path.isEmpty {
            let table = ["| # | category | input | command | what the user sees |", "|---|---|---|---|---|"] + rows
            try (table.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        }
    }

    // MARK: the table

    /// The first line of the message: after a signal the trap's "Fatal error" / "runtime failure" / "Program crashed"
    /// line; else a line starting with "error" (any case), else one holding "error:", else the first non-empty line.
    static func firstErrorLine(_ r: Result) -> String {
        let lines = (r.err + "\n" + r.out).split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        if r.signalled, let trap = lines.first(where: { $0.hasPrefix("Fatal error") || $0.contains("runtime failure") })
            ?? lines.first(where: { $0.contains("Program crashed") }) { return trap }
        return lines.first { $0.lowercased().hasPrefix("error") }
            ?? lines.first { $0.contains("error:") || $0.contains("Fatal error") || $0.contains("runtime failure") }
            ?? lines.first ?? "(no message)"
    }

    static func command(_ args: [String]) -> String {
        "pixellm " + args.map { a in a.contains(" ") || a.contains("|") || a.isEmpty ? "'\(a)'" : a }.joined(separator: " ")
    }

    /// Temporary and repository paths shortened, `|` escaped, long cells cut.
    static func cell(_ s: String, _ root: String) -> String {
        var t = s.replacingOccurrences(of: root + "/shared", with: "TMP")
            .replacingOccurrences(of: root, with: "TMP")
            .replacingOccurrences(of: CLITests.fixtures, with: "FIXTURES")
            .replacingOccurrences(of: repo, with: "REPO")
            .replacingOccurrences(of: "\n", with: " ")
        let r = (root as NSString).resolvingSymlinksInPath
        if r != root { t = t.replacingOccurrences(of: r, with: "TMP") }
        if t.count > 300 { t = String(t.prefix(297)) + "..." }
        return t.replacingOccurrences(of: "|", with: "\\|")
    }
}

