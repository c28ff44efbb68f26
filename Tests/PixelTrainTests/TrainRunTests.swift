import Foundation
import XCTest
import PixelData
import PixelDistributed
import PixelModel
import PixelTensor
@testable import PixelTrain

/// `pixellm train` and `pixellm consolidate` as a user runs them (the built binary beside this bundle, mpirun for
/// N > 1), on a synthetic dataset prepared here (`pixellm synth` + `prepare` at 112 px) and a tiny model config
/// (configs/tiny with the synthetic tokenizer's 1024 ids). Every run directory is in a fresh temp directory.
///
/// (a) N = 2 with ZeRO-1 and ZeRO-2, N = 2 with ZeRO-0, N = 3, and N = 2 forced onto TCP give the weights of N = 1
///     with the same global batch after 20 steps; (b) a run stopped at step 8 and resumed equals an uninterrupted one
///     exactly (loss curve and weights); (c) N = 2 -> resume at N = 1 and N = 3 -> N = 2 continue the same sample
///     sequence; (d) consolidated weights equal the in-memory ones; (e) optimizer-state bytes per rank are 1/N.
final class TrainRunTests: XCTestCase {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../..").standardized.path
    static var binary: String {
        let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for d in [dir, dir.deletingLastPathComponent()] {
            let p = d.appendingPathComponent("pixellm").path
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        return Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent("pixellm").path
    }

    struct Run { var status: Int32; var out: String; var err: String }

    @discardableResult
    static func run(_ exe: String, _ args: [String], env: [String: String] = [:], timeout: Double = 300) throws -> Run {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        var e = ProcessInfo.processInfo.environment
        // this test process may itself have initialised MPI (another suite in the same bundle, as a singleton):
        // its Open MPI / PMIx variables would make the child mpirun or pixellm think it is part of that job
        for k in e.keys where ["OMPI_", "PMIX_", "OPAL_", "ORTE_", "PMI_", "HWLOC_"].contains(where: { k.hasPrefix($0) }) { e[k] = nil }
        for (k, v) in env { e[k] = v }
        p.environment = e
        let o = Pipe(), r = Pipe()
        p.standardOutput = o
        p.standardError = r
        try p.run()
        // read while it runs (a full pipe would block the child)
        var outData = Data(), errData = Data()
        let g = DispatchGroup()
        g.enter(); DispatchQueue.global().async { outData = o.fileHandleForReading.readDataToEndOfFile(); g.leave() }
        g.enter(); DispatchQueue.global().async { errData = r.fileHandleForReading.readDataToEndOfFile(); g.leave() }
        let deadline = Date().addingTimeInterval(timeout)
        while p.isRunning && Date() < deadline { usleep(20_000) }
        if p.isRunning { p.terminate(); p.waitUntilExit(); throw NSError(domain: "timeout", code: 1, userInfo: [NSLocalizedDescriptionKey: "\(exe) \(args) timed out"]) }
        p.waitUntilExit()
        g.wait()
        return Run(status: p.terminationStatus, out: String(decoding: outData, as: UTF8.self), err: String(decoding: errData, as: UTF8.self))
    }

    static func pixellm(_ args: [String]) throws -> Run { try run(binary, args) }

    static var mpirun: String? {
        for d in ["/usr/bin", "/usr/local/bin"] where FileManager.default.isExecutableFile(atPath: d + "/mpirun") { return d + "/mpirun" }
        return nil
    }

    static func mpi(_ n: Int, _ args: [String], extra: [String] = [], timeout: Double = 300) throws -> Run {
        guard let m = mpirun else { throw XCTSkip("mpirun is not installed") }
        var flags = ["--oversubscribe", "-np", "\(n)", "-x", "OPENBLAS_NUM_THREADS=1"]
        if getuid() == 0 { flags.insert("--allow-run-as-root", at: 0) }
        return try run(m, flags + extra + [binary] + args, timeout: timeout)
    }

    /// Shared data for the class: synth -> prepare at 112 px, and the tiny config with 1024 ids.
    static let root: String = {
        let d = NSTemporaryDirectory() + "pixellm-train-tests-\(getpid())"
        try? FileManager.default.removeItem(atPath: d)
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }()
    static let data: Result<(shards: String, config: String), Error> = Result {
        let d = root
        var r = try pixellm(["synth", "--out", d + "/data", "--train", "16", "--val", "2", "--test", "2", "--size", "112"])
        guard r.status == 0 else { throw NSError(domain: "synth", code: 1, userInfo: [NSLocalizedDescriptionKey: r.err]) }
        r = try pixellm(["prepare", "--dataset-dir", d + "/data", "--out", d + "/shards", "--image-size", "112", "--shard-size", "16"])
        guard r.status == 0 else { throw NSError(domain: "prepare", code: 1, userInfo: [NSLocalizedDescriptionKey: r.err]) }
        let cfgData = try Data(contentsOf: URL(fileURLWithPath: repo + "/configs/tiny/config.json"))
        var cfg = try JSONSerialization.jsonObject(with: cfgData) as! [String: Any]
        cfg["vocab_size"] = 1024
        let cfgPath = d + "/tiny-1024.json"
        try JSONSerialization.data(withJSONObject: cfg).write(to: URL(fileURLWithPath: cfgPath))
        return (d + "/shards", cfgPath)
    }

    func common(_ name: String, steps: Int = 20, bs: Int, ga: Int, extra: [String] = []) throws -> [String] {
        let (shards, config) = try Self.data.get()
        return ["train", "--config", config, "--dataset-dir", shards, "--max-steps", "\(steps)", "--warmup-steps", "3",
                "--lr", "2e-3", "--batch-size", "\(bs)", "--grad-accumulation-steps", "\(ga)", "--log-base-dir", Self.root + "/runs",
                "--exp-name", name, "--bucket-mib", "0.3", "--save-steps", "1000", "--quiet"] + extra
    }

    static func runDir(_ name: String) -> String { root + "/runs/" + name }

    /// The trained tensors of a run's latest checkpoint (full, unpadded, by name).
    static func weights(_ name: String) throws -> [String: [Float]] {
        let dir = try TrainCheckpoint.resolve(runDir(name))
        let m = try TrainCheckpointManifest.load(dir)
        let full = try TrainCheckpoint.readFull(dir, manifest: m)
        var out: [String: [Float]] = [:]
        for p in m.layout.params { out[p.name] = Array(full.values[p.bucket][p.offset..<(p.offset + p.count)]) }
        return out
    }

    static func losses(_ name: String) throws -> [Double] {
        let text = try String(contentsOfFile: runDir(name) + "/metrics.jsonl", encoding: .utf8)
        return text.split(separator: "\n").compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["loss"] as? Double
        }
    }

    /// (attention key biases, everything else)
    static func split(_ w: [String: [Float]]) -> ([String: [Float]], [String: [Float]]) {
        let isKeyBias: (String) -> Bool = { $0.hasSuffix("k_proj.bias") }
        return (w.filter { isKeyBias($0.key) }, w.filter { !isKeyBias($0.key) })
    }

    /// max |a - b| / max |b| over every tensor (and the tensor where |a - b| is largest).
    static func relDiff(_ a: [String: [Float]], _ b: [String: [Float]]) -> Double { relDiffWhere(a, b).0 }

    static func relDiffWhere(_ a: [String: [Float]], _ b: [String: [Float]]) -> (Double, String) {
        var num = 0.0, den = 0.0, worst = ""
        for (k, y) in b {
            guard let x = a[k], x.count == y.count else { return (.infinity, k) }
            for i in 0..<y.count {
                let d = Double(abs(x[i] - y[i]))
                if d > num { num = d; worst = "\(k)[\(i)] \(x[i]) vs \(y[i])" }
                den = max(den, Double(abs(y[i])))
            }
        }
        return (num / max(den, 1e-30), worst)
    }

    func train(_ args: [String], ranks: Int = 1, mpiExtra: [String] = []) throws {
        let r = ranks == 1 ? try Self.pixellm(args) : try Self.mpi(ranks, args, extra: mpiExtra)
        XCTAssertEqual(r.status, 0, "train \(args) on \(ranks) rank(s): \(r.err)\n\(r.out)")
    }

    // MARK: (a)

    func testDataParallelRanksGiveTheWeightsOfOneRank() throws {
        // global batch 12 samples per step everywhere
        try train(try common("a-n1", bs: 2, ga: 6))
        let one = try Self.weights("a-n1")
        XCTAssertGreaterThan(one.count, 100)
        let cases: [(String, Int, [String], [String])] = [
            ("a-n2-z1", 2, ["--zero-stage", "1"], []), ("a-n2-z2", 2, ["--zero-stage", "2"], []),
            ("a-n2-z0", 2, ["--zero-stage", "0"], []), ("a-n3-z2", 3, ["--zero-stage", "2"], []),
            ("a-n2-tcp", 2, ["--zero-stage", "2"], ["--mca", "btl", "tcp,self"]),
        ]
        for (name, n, extra, mpiExtra) in cases {
            try train(try common(name, bs: 2, ga: 6 / n, extra: extra), ranks: n, mpiExtra: mpiExtra)
            let w = try Self.weights(name)
            // The attention key biases have an identically zero gradient (softmax is invariant to adding q.b to every
            // key of a query), so what reaches AdamW there is rounding noise, which m / sqrt(v) turns into steps of up
            // to lr in either direction: their trajectory depends on the order of any float sum (PyTorch's too).
            // Everything else must agree within 1e-5; the key biases within the bound lr x steps.
            let (keyBias, rest) = Self.split(w)
            let (keyBias1, rest1) = Self.split(one)
            let (d, worst) = Self.relDiffWhere(rest, rest1)
            print("train parity \(name): weights after 20 steps differ from N = 1 by \(String(format: "%.2e", d)) relative (largest: \(worst)); attention key biases (zero gradient) excluded")
            XCTAssertLessThanOrEqual(d, 1e-5, "\(name) vs N = 1")
            var drift: Float = 0
            for (k, y) in keyBias1 { for (a, b) in zip(keyBias[k] ?? [], y) { drift = max(drift, abs(a - b)) } }
            XCTAssertLessThanOrEqual(drift, 2e-3 * 20, "\(name): key-bias drift beyond lr x steps")
            let l1 = try Self.losses("a-n1"), l2 = try Self.losses(name)
            XCTAssertEqual(l1.count, 20)
            XCTAssertEqual(l2.count, 20)
            for (x, y) in zip(l1, l2) { XCTAssertEqual(x, y, accuracy: 1e-5 * abs(x), "\(name) loss curve") }
        }
        // the weights moved
        XCTAssertGreaterThan(try Self.losses("a-n1").first! - Self.losses("a-n1").last!, 0.05, "the loss went down")
    }

    /// Single-image micro-batches: some hold no mask at all (a VQA sample), so the decoder's gradients are final
    /// at another point of backward on one rank than on the other. ZeRO-2 must still reduce the buckets in the same
    /// order on every rank (the collectives' messages are matched by call order).
    func testZeRO2WithMicroBatchesWithoutMasks() throws {
        try train(try common("u-n1", bs: 1, ga: 4))
        try train(try common("u-n2", bs: 1, ga: 2, extra: ["--zero-stage", "2"]), ranks: 2)
        let (d, worst) = Self.relDiffWhere(Self.split(try Self.weights("u-n2")).1, Self.split(try Self.weights("u-n1")).1)
        print("train parity, single-image micro-batches: \(String(format: "%.2e", d)) relative (largest: \(worst))")
        XCTAssertLessThanOrEqual(d, 1e-5)
        // some micro-batch had no mask (otherwise this test shows nothing)
        let masks = try String(contentsOfFile: Self.runDir("u-n1") + "/metrics.jsonl", encoding: .utf8)
        XCTAssertTrue(masks.contains("\"masks\":"), "metrics log has mask counts")
    }

    /// The auxiliary query losses (separation, grounding, appearance), the image-token appearance and the target refinement term are normalised by
    /// the global mask count like the mask losses: 2 ranks give the weights of 1; every term is logged and moves the weights.
    func testAuxiliaryQueryLossesAreRankIndependent() throws {
        let aux = ["--query-separation-weight", "0.5", "--query-grounding-weight", "0.5", "--query-appearance-weight", "0.25",
                   "--image-appearance-weight", "0.75", "--refinement-alpha", "3"]
        try train(try common("aux-n1", steps: 8, bs: 2, ga: 2, extra: aux))
        try train(try common("aux-n2", steps: 8, bs: 2, ga: 1, extra: aux + ["--zero-stage", "2"]), ranks: 2)
        let (d, worst) = Self.relDiffWhere(Self.split(try Self.weights("aux-n2")).1, Self.split(try Self.weights("aux-n1")).1)
        XCTAssertLessThanOrEqual(d, 1e-5, "largest: \(worst)")
        let lines = try String(contentsOfFile: Self.runDir("aux-n1") + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }.filter { $0["loss"] != nil }
        XCTAssertEqual(lines.count, 8)
        XCTAssertTrue(lines.contains { ($0["separation"] as? Double ?? 0) > 0 }, "separation logged")
        XCTAssertTrue(lines.contains { ($0["grounding"] as? Double ?? 0) > 0 }, "grounding logged")
        XCTAssertTrue(lines.allSatisfy { ($0["appearance"] as? Double ?? 0) > 0 }, "appearance logged")
        XCTAssertTrue(lines.allSatisfy { ($0["image_appearance"] as? Double ?? 0) > 0 }, "image-token appearance logged")
        XCTAssertTrue(lines.contains { ($0["refine"] as? Double ?? 0) > 0 }, "refinement logged (overlapping predictions)")
        // the terms are in the loss: the total exceeds the reference's three terms by weight x term (refine x the BCE's)
        for l in lines {
            let base = (l["ce"] as! Double) + 2 * ((l["bce"] as! Double) + (l["refine"] as! Double)) + 0.5 * (l["dice"] as! Double)
            XCTAssertEqual(l["loss"] as! Double, base + 0.5 * (l["separation"] as! Double) + 0.5 * (l["grounding"] as! Double)
                           + 0.25 * (l["appearance"] as! Double) + 0.75 * (l["image_appearance"] as! Double), accuracy: 1e-9)
        }
        try train(try common("aux-off", steps: 8, bs: 2, ga: 2))
        XCTAssertGreaterThan(Self.relDiff(try Self.weights("aux-off"), try Self.weights("aux-n1")), 1e-4, "the auxiliary losses change the update")
    }

    /// A NaN in one rank's gradient (PIXELLM_FAULT_NAN_GRADIENT, rank 0) skips that update on every rank (ZeRO
    /// stages 0 and 2), is logged and counted, and training goes on; K skipped updates in a row stop the job with
    /// a message naming the steps.
    func testNonFiniteGradientIsSkippedAndRepeatedOnesStopTheRun() throws {
        func lines(_ name: String) throws -> [[String: Any]] {
            try String(contentsOfFile: Self.runDir(name) + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").compactMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }.filter { $0["loss"] != nil }
        }
        for stage in ["0", "2"] {
            let name = "nan-z\(stage)"
            try train(try common(name, steps: 6, bs: 1, ga: 2, extra: ["--zero-stage", stage]), ranks: 2,
                      mpiExtra: ["-x", "PIXELLM_FAULT_NAN_GRADIENT=3"])
            let l = try lines(name)
            XCTAssertEqual(l.count, 6, name)
            XCTAssertEqual(l.map { $0["skipped"] as? Bool ?? false }, [false, false, true, false, false, false], name)
            XCTAssertEqual(l.last?["skipped_total"] as? Int, 1, name)
            XCTAssertTrue(l[2]["grad_norm"] is NSNull, "\(name): a non-finite norm is logged as null (JSON has no NaN)")
            XCTAssertTrue(l.allSatisfy { ($0["loss"] as? Double)?.isFinite ?? false }, "\(name): the weights stayed finite")
        }
        let r = try Self.mpi(2, try common("nan-stop", steps: 10, bs: 1, ga: 2, extra: ["--max-skipped-in-a-row", "3"]),
                             extra: ["-x", "PIXELLM_FAULT_NAN_GRADIENT=2,3,4"])
        XCTAssertNotEqual(r.status, 0, r.out)
        XCTAssertTrue(r.err.contains("--max-skipped-in-a-row") && r.err.contains("steps 2...4"), r.err)
        XCTAssertEqual(try lines("nan-stop").count, 4, "the run stopped at the third skipped update in a row")
    }

    /// Learning-rate multipliers under ZeRO-2 slices (each rank steps its slice piece by piece): N = 2 gives the
    /// weights of N = 1; a group at multiplier 0 keeps its initial values.
    func testLearningRateMultipliersAreRankIndependent() throws {
        let mult = ["--lr-multipliers", "decoder=0,llm=3"]
        try train(try common("lrm-n1", steps: 6, bs: 2, ga: 2, extra: mult))
        try train(try common("lrm-n2", steps: 6, bs: 2, ga: 1, extra: mult + ["--zero-stage", "2"]), ranks: 2)
        try train(try common("lrm-1step", steps: 1, bs: 2, ga: 2, extra: mult))
        let one = try Self.weights("lrm-n1"), two = try Self.weights("lrm-n2"), first = try Self.weights("lrm-1step")
        let (d, worst) = Self.relDiffWhere(Self.split(two).1, Self.split(one).1)
        print("train parity with lr multipliers: \(String(format: "%.2e", d)) relative (largest: \(worst))")
        XCTAssertLessThanOrEqual(d, 1e-5)
        let decoder = one.keys.filter { $0.hasPrefix("model.mask_decoder.") }
        XCTAssertFalse(decoder.isEmpty)
        for k in decoder { XCTAssertEqual(two[k], first[k], "\(k): multiplier 0 keeps the initial values") }
        XCTAssertNotEqual(two["lm_head.weight"], first["lm_head.weight"], "the other groups train")
    }

    // MARK: (b), (c)

    func testStoppedAndResumedRunEqualsAnUninterruptedOne() throws {
        try train(try common("b-full", bs: 2, ga: 2))
        try train(try common("b-cut", bs: 2, ga: 2, extra: ["--stop-at-step", "8"]))
        XCTAssertEqual(try Self.losses("b-cut").count, 8)
        XCTAssertEqual(try String(contentsOfFile: Self.runDir("b-cut") + "/latest", encoding: .utf8), "checkpoints/step-000008\n")
        try train(try common("b-cut", bs: 2, ga: 2))   // resumes from latest (auto)
        XCTAssertEqual(try Self.losses("b-cut"), try Self.losses("b-full"), "the loss curve of the resumed run")
        XCTAssertEqual(try Self.weights("b-cut"), try Self.weights("b-full"), "weights of the resumed run")
    }

    func testResumingAtAnotherWorldSizeContinuesTheSameSequence() throws {
        try train(try common("c-full", bs: 2, ga: 6))
        // N = 2 for 7 steps, then N = 1 (global batch kept: ga doubled)
        try train(try common("c-21", bs: 2, ga: 3, extra: ["--stop-at-step", "7"]), ranks: 2)
        try train(try common("c-21", bs: 2, ga: 6))
        let full = Self.split(try Self.weights("c-full")).1
        let d21 = Self.relDiff(Self.split(try Self.weights("c-21")).1, full)
        print("train resume N=2 -> N=1: \(String(format: "%.2e", d21)) relative (attention key biases excluded, see above)")
        XCTAssertLessThanOrEqual(d21, 1e-5)
        // N = 3 for 5 steps, then N = 2
        try train(try common("c-32", bs: 2, ga: 2, extra: ["--stop-at-step", "5"]), ranks: 3)
        try train(try common("c-32", bs: 2, ga: 3), ranks: 2)
        let d32 = Self.relDiff(Self.split(try Self.weights("c-32")).1, full)
        print("train resume N=3 -> N=2: \(String(format: "%.2e", d32)) relative")
        XCTAssertLessThanOrEqual(d32, 1e-5)
        let lf = try Self.losses("c-full"), l32 = try Self.losses("c-32")
        XCTAssertEqual(l32.count, 20)
        for (x, y) in zip(lf, l32) { XCTAssertEqual(x, y, accuracy: 1e-5 * abs(x)) }
    }

    // MARK: (d), (e)

    func testConsolidatedWeightsEqualTheTrainedOnesAndStateIsSharded() throws {
        try train(try common("d", steps: 3, bs: 2, ga: 1, extra: ["--zero-stage", "2"]), ranks: 2)
        let out = Self.root + "/d-consolidated"
        let r = try Self.pixellm(["consolidate", "--checkpoint", Self.runDir("d"), "--out", out])
        XCTAssertEqual(r.status, 0, r.err)
        let st = try WeightSources.open(out)
        let trained = try Self.weights("d")
        var differing: [String] = []
        for (name, values) in trained {
            // CLIP (trained here: --config trains everything) is written inside the PixelLM checkpoint
            let stored = name.hasPrefix("vision_model.") ? PixelLMForCausalLM.visionPrefix + "." + name : name
            if try st.tensor(stored).toArray() != values { differing.append(name) }
        }
        XCTAssertEqual(differing, [], "consolidated tensors that differ from the checkpoint")
        // frozen tensors: the seeded initialisation (none here: --config trains everything), CLIP inside
        XCTAssertTrue(st.names.contains { $0.hasPrefix(PixelLMForCausalLM.visionPrefix + ".") })
        // the output opens as a model and runs
        let (m, _) = try PixelLMModelDirectory.open(out)
        XCTAssertEqual(m.config.vocabSize, 1024)
        // (e) per-rank optimizer state: the manifest's layout, each rank file holds 1/N (+ padding) of m and v
        let dir = try TrainCheckpoint.resolve(Self.runDir("d"))
        let man = try TrainCheckpointManifest.load(dir)
        XCTAssertEqual(man.worldSize, 2)
        for b in man.layout.buckets.indices {
            XCTAssertEqual(man.layout.sliceLength(b) * 2, man.layout.buckets[b].padded)
            XCTAssertLessThanOrEqual(man.layout.buckets[b].padded - man.layout.buckets[b].count, 1)
        }
    }

    /// `pixellm init` writes a sharded checkpoint (index, tokenizer) that `train --version` starts from and
    /// `consolidate` gives back: with every group's learning rate at 0 the consolidated weights are the init's,
    /// bit for bit; the result answers in `chat`. A tokenizer whose SEG ids have no rows is refused by name.
    func testInitOutputTrainsConsolidatesAndChats() throws {
        let (shards, config) = try Self.data.get()
        let initDir = Self.root + "/init-tiny", out = Self.root + "/init-consolidated"
        var r = try Self.pixellm(["init", "--config", config, "--out", initDir, "--tokenizer", Self.root + "/data/tokenizer",
                                  "--max-shard-gb", "0.0002", "--seed", "7"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(FileManager.default.fileExists(atPath: initDir + "/model.safetensors.index.json"), "sharded with an index")
        XCTAssertTrue(FileManager.default.fileExists(atPath: initDir + "/tokenizer.json"))
        let zero = "embed=0,lm-head=0,llm=0,projector=0,decoder=0,neck=0,prompt=0,fcs=0,clip=0"
        try train(["train", "--version", initDir, "--trainable", "all", "--lora-r", "0", "--dataset-dir", shards, "--max-steps", "2",
                   "--batch-size", "2", "--grad-accumulation-steps", "1", "--lr-multipliers", zero, "--log-base-dir", Self.root + "/runs",
                   "--exp-name", "init-zero", "--quiet"])
        r = try Self.pixellm(["consolidate", "--checkpoint", Self.runDir("init-zero"), "--out", out])
        XCTAssertEqual(r.status, 0, r.err)
        let a = try WeightSources.open(initDir), b = try WeightSources.open(out)
        XCTAssertEqual(Set(a.names), Set(b.names))
        var differing: [String] = []
        for n in a.names where try a.tensor(n).toArray() != b.tensor(n).toArray() { differing.append(n) }
        XCTAssertEqual(differing, [], "tensors that changed through train (lr 0) and consolidate")
        let image = Self.root + "/data/refer_seg/images/mscoco/images/val2017/synth_val_000001.png"
        r = try Self.pixellm(["chat", "--model", out, "--image", image, "--prompt", "Where is the circle?", "--max-new-tokens", "6",
                              "--out-dir", Self.root + "/init-chat"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("answer:"), r.out)
        // a 64-id vocabulary has no rows for the tokenizer's SEG ids
        var cfg = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: config))) as! [String: Any]
        cfg["vocab_size"] = 64
        let small = Self.root + "/tiny-64.json"
        try JSONSerialization.data(withJSONObject: cfg).write(to: URL(fileURLWithPath: small))
        r = try Self.pixellm(["init", "--config", small, "--out", Self.root + "/init-bad", "--tokenizer", Self.root + "/data/tokenizer"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains(small) && r.err.contains("vocab_size 64"), r.err)
    }

    /// --gradient-checkpointing under ZeRO-2 on 2 ranks (buckets reduced while backward runs, so a gradient must be
    /// final when the recomputation hands it over), with LoRA dropout inside the recomputed layers: the same loss
    /// curve and weights as without it, up to the order of float sums (see PixelLMTests; measured 4e-8 relative).
    func testGradientCheckpointingTrainsTheSameRun() throws {
        let lora = ["--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0.1", "--trainable", "all", "--zero-stage", "2"]
        try train(try common("gc-off", steps: 4, bs: 1, ga: 2, extra: lora), ranks: 2)
        try train(try common("gc-on", steps: 4, bs: 1, ga: 2, extra: lora + ["--gradient-checkpointing"]), ranks: 2)
        let on = try Self.losses("gc-on"), off = try Self.losses("gc-off")
        XCTAssertEqual(on.count, 4)
        for (a, b) in zip(on, off) { XCTAssertEqual(a, b, accuracy: 1e-7 * abs(b), "loss curve") }
        let (d, worst) = Self.relDiffWhere(Self.split(try Self.weights("gc-on")).1, Self.split(try Self.weights("gc-off")).1)
        print("train with gradient checkpointing: \(String(format: "%.2e", d)) relative (largest: \(worst))")
        XCTAssertLessThanOrEqual(d, 1e-6)
    }

    /// A base whose LLaMA matrices are stored in bf16 and frozen (LoRA, the released groups) trains with them kept
    /// in bf16, mapped (the trainer says how many), and gives the run of the same base stored as fp32 copies of the
    /// rounded values: the same loss curve and weights up to the order of float sums in the tiled products.
    func testFrozenBF16BaseTrainsAsItsFP32Copy() throws {
        let (shards, config) = try Self.data.get()
        let bf = Self.root + "/bf16-base", fp = Self.root + "/bf16-as-f32"
        var r = try Self.pixellm(["init", "--config", config, "--out", bf, "--tokenizer", Self.root + "/data/tokenizer", "--dtype", "bf16", "--seed", "3"])
        XCTAssertEqual(r.status, 0, r.err)
        let src = try WeightSources.open(bf)
        var tensors: [String: Tensor] = [:]
        for n in src.names { tensors[n] = try src.tensor(n) }
        try Safetensors.writeSharded(tensors, to: fp, maxShardBytes: 5 << 30, dtype: .f32)
        try FileManager.default.copyItem(atPath: bf + "/config.json", toPath: fp + "/config.json")
        _ = try copyTokenizerFiles(from: bf, to: fp)
        func args(_ name: String, _ dir: String) -> [String] {
            ["train", "--version", dir, "--trainable", "released", "--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0",
             "--dataset-dir", shards, "--max-steps", "4", "--warmup-steps", "1", "--lr", "2e-3", "--batch-size", "2",
             "--grad-accumulation-steps", "1", "--bucket-mib", "0.3", "--log-base-dir", Self.root + "/runs", "--exp-name", name]
        }
        r = try Self.pixellm(args("bf16-run", bf))
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("14 frozen LLaMA matrices kept in bf16"), r.out)
        r = try Self.pixellm(args("f32-run", fp))
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertFalse(r.out.contains("kept in bf16"), "f32 files are never rounded: \(r.out)")
        XCTAssertTrue(r.out.contains("note: 14 frozen LLaMA matrices are stored in F32 and were copied to fp32"), r.out)
        let a = try Self.losses("bf16-run"), b = try Self.losses("f32-run")
        XCTAssertEqual(a.count, 4)
        for (x, y) in zip(a, b) { XCTAssertEqual(x, y, accuracy: 1e-5 * abs(y), "loss curve") }
        let (d, worst) = Self.relDiffWhere(Self.split(try Self.weights("bf16-run")).1, Self.split(try Self.weights("f32-run")).1)
        print("frozen bf16 base against its fp32 copy: \(String(format: "%.2e", d)) relative (largest: \(worst))")
        XCTAssertLessThanOrEqual(d, 1e-5)
    }

    /// A bf16 base mapped by a training run and rewritten in place under it: the run stops at the next step naming the
    /// file (not a signal, not a hang); a base truncated under `chat` (the fault hook halves it right after it is
    /// mapped) meets the SIGBUS guard: status 74 and the file named, no core dump.
    func testMappedBaseChangedUnderAJobIsNamed() throws {
        let (shards, config) = try Self.data.get()
        let base = Self.root + "/mapped-base"
        var r = try Self.pixellm(["init", "--config", config, "--out", base, "--tokenizer", Self.root + "/data/tokenizer", "--dtype", "bf16"])
        XCTAssertEqual(r.status, 0, r.err)
        let file = base + "/model.safetensors"
        let args = ["train", "--version", base, "--trainable", "released", "--lora-r", "4", "--dataset-dir", shards, "--max-steps", "6",
                    "--batch-size", "1", "--grad-accumulation-steps", "1", "--log-base-dir", Self.root + "/runs", "--exp-name", "mapped-changed"]
        let metrics = Self.runDir("mapped-changed") + "/metrics.jsonl"
        var result: Run?
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            // rank 0 stalls 20 s in step 2, so the change lands while the run is alive
            result = try? Self.run(Self.binary, args, env: ["PIXELLM_FAULT_STALL": "0:2:20"])
            done.signal()
        }
        let deadline = Date().addingTimeInterval(240)
        while Date() < deadline, ((try? String(contentsOfFile: metrics, encoding: .utf8)) ?? "").isEmpty { usleep(50_000) }
        XCTAssertFalse(((try? String(contentsOfFile: metrics, encoding: .utf8)) ?? "").isEmpty, "step 1 was logged")
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: file))
        let size = try h.seekToEnd()
        try h.seek(toOffset: size / 2)
        let old = try h.read(upToCount: 1)!
        try h.seek(toOffset: size / 2)
        try h.write(contentsOf: Data([old[0] ^ 0xFF]))
        try h.close()
        XCTAssertEqual(done.wait(timeout: .now() + 300), .success)
        let run = try XCTUnwrap(result)
        XCTAssertEqual(run.status, 1, run.out + run.err)
        XCTAssertTrue(run.err.contains(file) && run.err.contains("changed"), run.err)
        XCTAssertLessThan(try Self.losses("mapped-changed").count, 6, "stopped before the end")

        // truncated right after chat maps it: the guard turns the SIGBUS into a named error
        let image = Self.root + "/data/refer_seg/images/mscoco/images/val2017/synth_val_000001.png"
        r = try Self.run(Self.binary, ["chat", "--model", base, "--image", image, "--prompt", "Where is the circle?", "--max-new-tokens", "4",
                                       "--out-dir", Self.root + "/mapped-chat"], env: ["PIXELLM_FAULT_TRUNCATE_MAPPED": "mapped-base/model.safetensors"])
        XCTAssertEqual(r.status, 74, r.out + r.err)
        XCTAssertTrue(r.err.contains(file) && r.err.contains("truncated"), r.err)
        XCTAssertLessThan(try FileManager.default.attributesOfItem(atPath: file)[.size] as! UInt64, size, "the hook halved the file")
    }

    /// The memory estimate is printed before training; a budget it exceeds is refused before any step, with the
    /// estimate's parts and the levers that apply (gradient checkpointing, batch size, a bf16 base); --skip-memory-check
    /// runs anyway.
    func testMemoryEstimateRefusesWhatCannotFit() throws {
        let args = try common("mem-small", steps: 1, bs: 2, ga: 1, extra: ["--lora-r", "4", "--trainable", "released"]).filter { $0 != "--quiet" }
        var r = try Self.pixellm(args + ["--memory-limit", "20MB"])
        XCTAssertEqual(r.status, 1, r.out)
        for part in ["needs about", "has 0.02 GB (--memory-limit)", "weights", "activations", "positions per micro-batch",
                     "--gradient-checkpointing (activations", "--batch-size 1 with --grad-accumulation-steps 2",
                     "a bf16 copy of the base", "--skip-memory-check"] {
            XCTAssertTrue(r.err.contains(part), "'\(part)' missing: \(r.err)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: Self.runDir("mem-small") + "/metrics.jsonl"), "no step ran")
        r = try Self.pixellm(args + ["--memory-limit", "20MB", "--skip-memory-check", "--exp-name", "mem-skip"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("train: memory estimate per rank: weights") && r.out.contains("of 0.02 GB"), r.out)
        XCTAssertEqual(try Self.losses("mem-skip").count, 1)
        r = try Self.pixellm(args + ["--memory-limit", "lots"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("--memory-limit: 'lots'"), r.err)
    }

    // MARK: LoRA

    /// LoRA with dropout 0.1 (the masks keyed by sample and step): N = 2 equals N = 1; the consolidation keeps the
    /// adapters under PEFT's names (and loads back as a model with them), --merge-lora gives W + (alpha / r) B A.
    func testLoRATrainingIsRankIndependentAndMerges() throws {
        let lora = ["--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0.1", "--trainable", "released"]
        try train(try common("l-n1", steps: 8, bs: 1, ga: 4, extra: lora))
        try train(try common("l-n2", steps: 8, bs: 1, ga: 2, extra: lora), ranks: 2)
        let w1 = try Self.weights("l-n1"), w2 = try Self.weights("l-n2")
        XCTAssertEqual(w1.keys.filter { $0.contains("lora_") }.count, 8, "A and B of q_proj and v_proj in 2 layers")
        XCTAssertFalse(w1.keys.contains("model.layers.0.self_attn.q_proj.weight"), "the wrapped weight is frozen")
        let (d, worst) = Self.relDiffWhere(Self.split(w2).1, Self.split(w1).1)
        print("train parity with LoRA dropout: \(String(format: "%.2e", d)) (largest: \(worst))")
        XCTAssertLessThanOrEqual(d, 1e-5)
        // B moved away from zero
        XCTAssertGreaterThan(w1["model.layers.0.self_attn.q_proj.lora_B.default.weight"]!.map(abs).max()!, 0)

        let kept = Self.root + "/l-kept", merged = Self.root + "/l-merged"
        XCTAssertEqual(try Self.pixellm(["consolidate", "--checkpoint", Self.runDir("l-n1"), "--out", kept]).status, 0)
        XCTAssertEqual(try Self.pixellm(["consolidate", "--checkpoint", Self.runDir("l-n1"), "--out", merged, "--merge-lora"]).status, 0)
        let k = try WeightSources.open(kept), m = try WeightSources.open(merged)
        XCTAssertTrue(k.names.contains("model.layers.1.self_attn.v_proj.lora_A.default.weight"))
        XCTAssertFalse(m.names.contains { $0.contains("lora_") })
        for layer in 0..<2 {
            for proj in ["q_proj", "v_proj"] {
                let p = "model.layers.\(layer).self_attn.\(proj)."
                let W = try k.tensor(p + "weight"), A = try k.tensor(p + "lora_A.default.weight"), B = try k.tensor(p + "lora_B.default.weight")
                let want = Autograd.noGrad { W + B.matmul(A) * Float(8.0 / 4.0) }
                let got = try m.tensor(p + "weight")
                var err: Float = 0
                for (x, y) in zip(got.toArray(), want.toArray()) { err = max(err, abs(x - y)) }
                XCTAssertLessThanOrEqual(err, 1e-6, "\(p)weight merged")
            }
        }
        // the kept consolidation opens as a model with its adapters
        let (model, _) = try PixelLMModelDirectory.open(kept)
        XCTAssertEqual(model.config.lora?.r, 4)
        XCTAssertEqual(model.loraAdapters.count, 4)
        // merge-lora on the kept consolidation gives the same weights as --merge-lora
        let later = Self.root + "/l-later"
        let r = try Self.pixellm(["merge-lora", "--base", kept, "--out", later])
        XCTAssertEqual(r.status, 0, r.err)
        let l = try WeightSources.open(later)
        XCTAssertEqual(try l.tensor("model.layers.1.self_attn.q_proj.weight").toArray(), try m.tensor("model.layers.1.self_attn.q_proj.weight").toArray())
    }

    // MARK: a dataset tree

    /// --dataset-dir a dataset tree (not shards): packed first into RUN/shards by both ranks, then trained on.
    func testADatasetTreeIsPreparedFirst() throws {
        let (_, config) = try Self.data.get()
        let args = ["train", "--config", config, "--dataset-dir", Self.root + "/data", "--max-steps", "2", "--batch-size", "1",
                    "--grad-accumulation-steps", "1", "--log-base-dir", Self.root + "/runs", "--exp-name", "tree", "--quiet"]
        let r = try Self.mpi(2, args)
        XCTAssertEqual(r.status, 0, r.err + r.out)
        XCTAssertTrue(r.out.contains("is a dataset tree"), r.out)
        let shards = Self.runDir("tree") + "/shards"
        let manifest = try ShardManifest.load(shards)
        XCTAssertEqual(manifest.options.imageSize, 112, "the model's image size")
        XCTAssertGreaterThan(manifest.totalSamples, 16)
        XCTAssertEqual(try Self.losses("tree").count, 2)
    }

    // MARK: evaluation

    /// --val-dataset during training (every 2 steps and at the end, on 2 ranks): the figures in metrics.jsonl, RUN/best
    /// at the best first-split gIoU; `pixellm eval` on the run directory (no consolidation) gives the training's last
    /// figures, the same records on 1 and 2 ranks, and the same as on the consolidated model.
    func testEvaluationDuringTrainingAndEvalAtAnyRankCount() throws {
        let names = "MultiReasonSeg|val||refcoco|unc|val"
        try train(try common("ev", steps: 4, bs: 1, ga: 1, extra: ["--val-dataset", names, "--eval-steps", "2", "--eval-max-new-tokens", "6"]), ranks: 2)
        let run = Self.runDir("ev")
        let lines = try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        let evals = lines.filter { $0["eval_dataset"] != nil }
        XCTAssertEqual(evals.map { $0["step"] as! Int }, [2, 2, 4, 4])
        XCTAssertEqual(evals.map { $0["eval_dataset"] as! String }, ["MultiReasonSeg|val", "refcoco|unc|val", "MultiReasonSeg|val", "refcoco|unc|val"])
        XCTAssertNotNil(evals[0]["gIoU_clean"], "MUSE reports the clean reading too")
        // per kind: the kinds with masks have a gIoU, the text-only kinds (nothing to score) none
        let kinds = evals[0].keys.filter { $0.hasPrefix("gIoU_") && $0 != "gIoU_clean" }
        XCTAssertFalse(kinds.isEmpty, "per-kind figures")
        XCTAssertTrue(Set(kinds).isDisjoint(with: ["gIoU_counting", "gIoU_text"]), "a text-only kind has no masks to score: \(kinds)")
        let muse = evals.filter { $0["eval_dataset"] as! String == "MultiReasonSeg|val" }
        let bestData = try Data(contentsOf: URL(fileURLWithPath: run + "/best.json"))
        let best = try XCTUnwrap(try JSONSerialization.jsonObject(with: bestData) as? [String: Any])
        let top = muse.max { ($0["gIoU"] as! Double) < ($1["gIoU"] as! Double) }!
        XCTAssertEqual(best["gIoU"] as! Double, top["gIoU"] as! Double)
        let bestDir = try TrainCheckpoint.resolve(run + "/best")
        XCTAssertEqual(try TrainCheckpointManifest.load(bestDir).step, best["step"] as! Int)

        // pixellm eval on the run directory (its latest = step 4), 1 and 2 ranks, the training's seed
        let common = ["eval", "--model", run, "--dataset-dir", Self.root + "/data", "--val-dataset", names, "--max-new-tokens", "6",
                      "--seed", "42", "--quiet"]
        var r = try Self.pixellm(common + ["--out", Self.root + "/ev1.json"])
        XCTAssertEqual(r.status, 0, r.err)
        r = try Self.mpi(2, common + ["--out", Self.root + "/ev2.json"])
        XCTAssertEqual(r.status, 0, r.err)
        func report(_ p: String) throws -> [[String: Any]] {
            let o = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: p))) as! [String: Any]
            return o["datasets"] as! [[String: Any]]
        }
        let one = try report(Self.root + "/ev1.json"), two = try report(Self.root + "/ev2.json")
        XCTAssertEqual(one.count, 2)
        for (a, b) in zip(one, two) {
            XCTAssertEqual(a["records"] as! NSArray, b["records"] as! NSArray, "records at 1 and 2 ranks")
            XCTAssertEqual(a["overall"] as! NSDictionary, b["overall"] as! NSDictionary)
        }
        let last = evals.filter { $0["step"] as! Int == 4 }
        for (a, e) in zip(one, last) {
            let o = a["overall"] as! [String: Any]
            XCTAssertEqual(o["gIoU"] as! Double, e["gIoU"] as! Double, accuracy: 1e-12, "\(e["eval_dataset"]!): eval = training's evaluation")
            XCTAssertEqual(o["cIoU"] as! Double, e["cIoU"] as! Double, accuracy: 1e-12)
        }
        // the consolidated model gives the same records
        r = try Self.pixellm(["consolidate", "--checkpoint", run, "--out", Self.root + "/ev-model"])
        XCTAssertEqual(r.status, 0, r.err)
        r = try Self.pixellm(["eval", "--model", Self.root + "/ev-model", "--dataset-dir", Self.root + "/data", "--val-dataset", names,
                              "--max-new-tokens", "6", "--seed", "42", "--quiet", "--out", Self.root + "/ev3.json"])
        XCTAssertEqual(r.status, 0, r.err)
        for (a, c) in zip(one, try report(Self.root + "/ev3.json")) {
            XCTAssertEqual(a["overall"] as! NSDictionary, c["overall"] as! NSDictionary, "consolidated = run directory")
        }
        // chat takes a run directory (and RUN/best) too, and answers as the consolidated model does
        let photo = Self.repo + "/Tests/PixelDataTests/Fixtures/images/photo_640x480.jpg"
        var answers: [String] = []
        for (k, m) in [run, Self.root + "/ev-model", run + "/best"].enumerated() {
            let c = try Self.pixellm(["chat", "--model", m, "--image", photo, "--prompt", "Where is the circle?", "--max-new-tokens", "5",
                                      "--out-dir", Self.root + "/ev-chat\(k)"])
            XCTAssertEqual(c.status, 0, c.err)
            answers.append(c.out.split(separator: "\n").first { $0.hasPrefix("answer:") }.map(String.init) ?? "")
        }
        XCTAssertFalse(answers[0].isEmpty)
        XCTAssertEqual(answers[0], answers[1], "chat on the run directory = chat on the consolidated model")
        XCTAssertFalse(answers[2].isEmpty)

        // every split the synthetic set provides (the first image of each)
        let all = ["MultiReasonSeg|val", "MultiReasonSeg|test_less", "MultiReasonSeg|test_many", "refcoco|unc|val", "refcoco|unc|testA",
                   "refcoco|unc|testB", "multirefcoco|unc|val", "multirefcoco|unc|testA", "ReasonSeg|val"]
        r = try Self.pixellm(["eval", "--model", run + "/best", "--dataset-dir", Self.root + "/data", "--val-dataset", all.joined(separator: "||"),
                              "--max-new-tokens", "4", "--limit", "1", "--quiet", "--out", Self.root + "/ev-all.json"])
        XCTAssertEqual(r.status, 0, r.err)
        let every = try report(Self.root + "/ev-all.json")
        XCTAssertEqual(every.map { $0["dataset"] as! String }, all)
        XCTAssertTrue(every.allSatisfy { (($0["overall"] as! [String: Any])["images"] as! Int) == 1 })
        XCTAssertTrue(every.allSatisfy { ($0["records"] as! [Any]).count >= 1 })

        // bad input: an unknown split lists the known ones; a tokenizer without the SEG tokens is refused by name
        r = try Self.pixellm(["eval", "--model", run, "--dataset-dir", Self.root + "/data", "--val-dataset", "refcoco|unc|nope"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("unknown evaluation dataset 'refcoco|unc|nope'") && r.err.contains("MultiReasonSeg|val"), r.err)
        let noSeg = Self.repo + "/Tests/PixelModelTests/Fixtures/ckpt/llava-st"
        r = try Self.pixellm(["eval", "--model", run, "--tokenizer", noSeg, "--dataset-dir", Self.root + "/data", "--val-dataset", "refcoco|unc|val"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains(noSeg) && r.err.contains("SEG"), r.err)
    }

    // MARK: a LLaVA base

    /// --version a LLaVA base (the tiny one of Tests/PixelModelTests/Fixtures/ckpt, with its CLIP) and --config for
    /// the PixelLM sizes, on shards tokenized with that LLaVA tokenizer plus the SEG tokens: the released trainable
    /// set with LoRA (default r 8), and a consolidation that loads again.
    func testTrainingFromALLaVABase() throws {
        let ckpt = Self.repo + "/Tests/PixelModelTests/Fixtures/ckpt", tok = Self.repo + "/Tests/PixelTextTests/Fixtures/llava-sp"
        let d = Self.root
        _ = try Self.data.get()   // the synthetic tree
        var r = try Self.pixellm(["prepare", "--dataset-dir", d + "/data", "--out", d + "/llava-shards", "--image-size", "112",
                                  "--tokenizer", tok, "--dataset", "multi_reason_seg"])
        XCTAssertEqual(r.status, 0, r.err)
        r = try Self.pixellm(["train", "--version", ckpt + "/llava-st", "--vision-tower", ckpt + "/clip", "--config", Self.repo + "/configs/tiny",
                              "--dataset-dir", d + "/llava-shards", "--dataset", "multi_reason_seg", "--sample-rates", "1",
                              "--max-steps", "3", "--batch-size", "1", "--grad-accumulation-steps", "2", "--log-base-dir", d + "/runs",
                              "--exp-name", "llava", "--quiet"])
        XCTAssertEqual(r.status, 0, r.err + r.out)
        let w = try Self.weights("llava")
        XCTAssertTrue(w.keys.contains("model.layers.0.self_attn.q_proj.lora_A.default.weight"), "LoRA r 8 by default with --version")
        XCTAssertEqual(w["model.layers.0.self_attn.q_proj.lora_A.default.weight"]?.count, 8 * 32)
        XCTAssertTrue(w.keys.contains("model.mask_decoder.iou_token.weight"))
        XCTAssertFalse(w.keys.contains("model.layers.0.mlp.up_proj.weight"), "the LLaMA layers stay frozen")
        XCTAssertFalse(w.keys.contains { $0.hasPrefix("vision_model.") }, "CLIP stays frozen")
        let out = d + "/llava-model"
        r = try Self.pixellm(["consolidate", "--checkpoint", Self.runDir("llava"), "--out", out, "--merge-lora"])
        XCTAssertEqual(r.status, 0, r.err)
        let (m, _) = try PixelLMModelDirectory.open(out, visionTower: ckpt + "/clip")
        XCTAssertEqual(m.config.vocabSize, 1509)
        XCTAssertNil(m.config.lora)
        // the LLaMA weights that were not trained are the base's
        let base = try WeightSources.open(ckpt + "/llava-st"), got = try WeightSources.open(out)
        XCTAssertEqual(try got.tensor("model.layers.1.mlp.down_proj.weight").toArray(), try base.tensor("model.layers.1.mlp.down_proj.weight").toArray())
    }

    /// A run from a --version PixelLM checkpoint (the consolidation of a --config run, CLIP inside): consolidation
    /// streams every frozen tensor from the base's file (identical bytes) and takes the trained ones from the
    /// checkpoint; the output is complete (CLIP inside) and opens as a model.
    func testConsolidationStreamsFrozenTensorsFromTheBase() throws {
        try train(try common("s-base", steps: 2, bs: 1, ga: 1))
        let base = Self.root + "/s-base-model"
        XCTAssertEqual(try Self.pixellm(["consolidate", "--checkpoint", Self.runDir("s-base"), "--out", base]).status, 0)
        let (shards, _) = try Self.data.get()
        try train(["train", "--version", base, "--dataset-dir", shards, "--max-steps", "2", "--batch-size", "1",
                   "--grad-accumulation-steps", "1", "--trainable", "decoder", "--lora-r", "0", "--log-base-dir", Self.root + "/runs",
                   "--exp-name", "s-ft", "--quiet"])
        let out = Self.root + "/s-ft-model"
        let r = try Self.pixellm(["consolidate", "--checkpoint", Self.runDir("s-ft"), "--out", out, "--dtype", "f32"])
        XCTAssertEqual(r.status, 0, r.err)
        let b = try WeightSources.open(base), o = try WeightSources.open(out)
        XCTAssertEqual(Set(o.names), Set(b.names), "the same tensors as the base (CLIP inside)")
        let trained = try Self.weights("s-ft")
        var frozen = 0
        for n in o.names {
            if let v = trained[n] {
                XCTAssertEqual(try o.tensor(n).toArray(), v, "\(n): not the trained value")
                XCTAssertTrue(n.hasPrefix("model.mask_decoder."), n)
            } else {
                XCTAssertEqual(try o.tensor(n).toArray(), try b.tensor(n).toArray(), "\(n): not the base's")
                frozen += 1
            }
        }
        XCTAssertGreaterThan(frozen, 200)
        XCTAssertGreaterThan(trained.count, 50)
        XCTAssertNoThrow(try PixelLMModelDirectory.open(out))
    }

    // MARK: bad input and faults

    /// Ranks started with different options (mpirun's MPMD form): the job stops before training, naming the rank and
    /// the field, within seconds. An unwritable run directory is an error before any work.
    func testMismatchedRanksAndUnwritableRunDirectoryStopTheJob() throws {
        guard let mpirun = Self.mpirun else { throw XCTSkip("mpirun is not installed") }
        let a = try common("m", steps: 2, bs: 1, ga: 1), b = try common("m", steps: 2, bs: 1, ga: 1, extra: ["--lr", "5e-3"])
        var flags = ["--oversubscribe", "-x", "OPENBLAS_NUM_THREADS=1"]
        if getuid() == 0 { flags.insert("--allow-run-as-root", at: 0) }
        let t0 = Date()
        let r = try Self.run(mpirun, flags + ["-np", "1", Self.binary] + a + [":", "-np", "1", Self.binary] + b, timeout: 120)
        XCTAssertNotEqual(r.status, 0)
        let all = r.out + r.err
        XCTAssertTrue(all.contains("rank 1") && all.contains("lr"), all)
        XCTAssertLessThan(Date().timeIntervalSince(t0), 60)
        XCTAssertFalse(FileManager.default.fileExists(atPath: Self.runDir("m") + "/latest"), "no checkpoint from a refused job")
        // a run directory under a regular file cannot be created
        let file = Self.root + "/not-a-directory"
        FileManager.default.createFile(atPath: file, contents: Data("x".utf8))
        let (shards, config) = try Self.data.get()
        let w = try Self.pixellm(["train", "--config", config, "--dataset-dir", shards, "--max-steps", "1", "--log-base-dir", file, "--quiet"])
        XCTAssertNotEqual(w.status, 0)
        XCTAssertTrue(w.err.contains(file), w.err)
    }

    func testDamagedCheckpointAndMismatchedResumeAreNamed() throws {
        try train(try common("e", steps: 2, bs: 1, ga: 1))
        let dir = try TrainCheckpoint.resolve(Self.runDir("e"))
        // a different model config: refused naming the field
        let (shards, config) = try Self.data.get()
        var cfg = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: config))) as! [String: Any]
        cfg["intermediate_size"] = 96
        let other = Self.root + "/tiny-96.json"
        try JSONSerialization.data(withJSONObject: cfg).write(to: URL(fileURLWithPath: other))
        var r = try Self.pixellm(["train", "--config", other, "--dataset-dir", shards, "--max-steps", "3", "--log-base-dir", Self.root + "/runs",
                                  "--exp-name", "e", "--batch-size", "1", "--grad-accumulation-steps", "1", "--quiet"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("intermediate_size"), r.err)
        // a flipped byte in a rank file: consolidate names the file
        let rank0 = dir + "/" + TrainCheckpointManifest.rankFileName(0, of: 1)
        var bytes = try Data(contentsOf: URL(fileURLWithPath: rank0))
        bytes[bytes.count / 2] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: rank0))
        r = try Self.pixellm(["consolidate", "--checkpoint", Self.runDir("e"), "--out", Self.root + "/e-out"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("rank-00000-of-00001.h5") && r.err.contains("CRC-32"), r.err)
        // a missing manifest: not a checkpoint
        try FileManager.default.removeItem(atPath: dir + "/manifest.json")
        r = try Self.pixellm(["consolidate", "--checkpoint", dir, "--out", Self.root + "/e-out"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("neither a checkpoint"), r.err)
        // bad options are named
        r = try Self.pixellm(["train", "--config", config, "--dataset-dir", shards, "--zero-stage", "3"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("zero-stage"), r.err)
    }
}
