import Foundation
import XCTest
@testable import PixelTrain

/// Process faults of a training job under mpirun (docs/RELIABILITY.md, "Faults"), on TrainRunTests' tiny model and
/// data: a rank killed with SIGKILL in the middle of a step, a kill in the middle of a checkpoint write, a stalled
/// rank, and a full or read-only output disk. Each fault is injected by a test hook (PIXELLM_FAULT_*) at a known
/// point, so the outcome is exact: the job ends within a bounded time with a message that names what happened, the
/// previous checkpoint stays usable, and a resumed run continues the loss curve of an uninterrupted one.
final class FaultTests: XCTestCase {
    typealias T = TrainRunTests

    /// 2 ranks x 1 image x 2 micro-batches, ZeRO-2, a checkpoint every 4 steps.
    func args(_ name: String, steps: Int = 12, save: Int = 4, extra: [String] = []) throws -> [String] {
        try Self.args(name, steps: steps, save: save, extra: extra)
    }

    static func args(_ name: String, steps: Int = 12, save: Int = 4, extra: [String] = []) throws -> [String] {
        let (shards, config) = try T.data.get()
        return ["train", "--config", config, "--dataset-dir", shards, "--max-steps", "\(steps)", "--warmup-steps", "3",
                "--lr", "2e-3", "--batch-size", "1", "--grad-accumulation-steps", "2", "--log-base-dir", T.root + "/runs",
                "--exp-name", name, "--bucket-mib", "0.3", "--save-steps", "\(save)", "--quiet"] + extra
    }

    static func latest(_ name: String) -> String? { try? String(contentsOfFile: T.runDir(name) + "/latest", encoding: .utf8) }

    /// The uninterrupted 12-step run every interrupted one is compared with (made once).
    static let reference: Result<(losses: [Double], weights: [String: [Float]]), Error> = Result {
        let r = try T.mpi(2, try args("f-full"))
        guard r.status == 0 else { throw NSError(domain: "f-full", code: 1, userInfo: [NSLocalizedDescriptionKey: r.err]) }
        return (try T.losses("f-full"), try T.weights("f-full"))
    }

    /// Resumes `name` with the plain command and checks it ends on the uninterrupted run's curve and weights.
    func resumeMatchesTheUninterruptedRun(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let ref = try Self.reference.get()
        let r = try T.mpi(2, try args(name))
        XCTAssertEqual(r.status, 0, "resume of \(name): \(r.err)", file: file, line: line)
        XCTAssertEqual(try T.losses(name), ref.losses, "\(name): the loss curve after --resume", file: file, line: line)
        XCTAssertEqual(try T.weights(name), ref.weights, "\(name): the weights after --resume", file: file, line: line)
        let left = try FileManager.default.subpathsOfDirectory(atPath: T.runDir(name)).filter { $0.contains(".tmp-") }
        XCTAssertEqual(left, [], "\(name): temporary files of the killed write were cleaned up", file: file, line: line)
    }

    func testAKilledRankEndsTheJobAndResumeContinuesTheLossCurve() throws {
        let ref = try Self.reference.get()
        XCTAssertEqual(ref.losses.count, 12)
        let t0 = Date()
        let r = try T.mpi(2, try args("f-kill"), extra: ["-x", "PIXELLM_FAULT_KILL=1:6"], timeout: 180)
        let seconds = Date().timeIntervalSince(t0)
        XCTAssertNotEqual(r.status, 0, "a job with a killed rank fails")
        XCTAssertLessThan(seconds, 90, "the job ended by itself, it did not hang (\(seconds) s)")
        let all = r.out + r.err
        XCTAssertTrue(all.contains("signal 9") || all.contains("Killed"), "mpirun names the signal: \(all)")
        XCTAssertEqual(Self.latest("f-kill"), "checkpoints/step-000004\n")
        XCTAssertEqual(try T.losses("f-kill"), Array(ref.losses.prefix(5)), "steps 1-5 were logged before rank 1 died in step 6")
        try resumeMatchesTheUninterruptedRun("f-kill")
    }

    func testAKillDuringACheckpointWriteKeepsThePreviousCheckpoint() throws {
        // rank 1's file of step 8 written but not renamed; rank 0's manifest of step 8 written but not renamed;
        // step 8 complete but `latest` not moved yet (its second write)
        for (name, pattern, complete) in [("f-kw-rank", "step-000008/rank-00001", false),
                                          ("f-kw-manifest", "step-000008/manifest.json", false),
                                          ("f-kw-latest", "/latest@2", true)] {
            let r = try T.mpi(2, try args(name), extra: ["-x", "PIXELLM_FAULT_KILL_IN_WRITE=\(pattern)"], timeout: 180)
            XCTAssertNotEqual(r.status, 0, name)
            XCTAssertEqual(Self.latest(name), "checkpoints/step-000004\n", "\(name): latest still names the previous checkpoint")
            let previous = T.runDir(name) + "/checkpoints/step-000004"
            XCTAssertNoThrow(try TrainCheckpointManifest.load(previous).verifyFiles(in: previous), "\(name): the previous checkpoint is intact")
            let eight = T.runDir(name) + "/checkpoints/step-000008/manifest.json"
            XCTAssertEqual(FileManager.default.fileExists(atPath: eight), complete, "\(name): step 8's manifest")
            try resumeMatchesTheUninterruptedRun(name)
        }
    }

    func testAStalledRankIsNamedAndTheTimeoutEndsTheJob() throws {
        let watch = ["--heartbeat-seconds", "1"]
        // a 3 s stall: rank 0 names rank 1 while it waits, and the run completes
        var r = try T.mpi(2, try args("f-slow", steps: 3, save: 100, extra: watch + ["--collective-timeout", "60"]),
                          extra: ["-x", "PIXELLM_FAULT_STALL=1:2:3"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("step 2") && r.err.contains("waiting") && r.err.contains("for rank 1 ("), r.err)
        // a stall beyond --collective-timeout 3: the job aborts naming rank 1
        var t0 = Date()
        r = try T.mpi(2, try args("f-stall1", steps: 3, save: 100, extra: watch + ["--collective-timeout", "3"]),
                      extra: ["-x", "PIXELLM_FAULT_STALL=1:2:600"], timeout: 120)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertLessThan(Date().timeIntervalSince(t0), 60, "aborted after the timeout, not after the 600 s stall")
        XCTAssertTrue(r.err.contains("rank 1 (") && r.err.contains("did not arrive within --collective-timeout"), r.err)
        // rank 0 stalled: rank 1 names it after the timeout and its grace
        t0 = Date()
        r = try T.mpi(2, try args("f-stall0", steps: 3, save: 100, extra: watch + ["--collective-timeout", "3"]),
                      extra: ["-x", "PIXELLM_FAULT_STALL=0:2:600"], timeout: 120)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertLessThan(Date().timeIntervalSince(t0), 60)
        XCTAssertTrue(r.err.contains("no word from rank 0"), r.err)
        // bad values are named
        r = try T.pixellm(try args("f-bad", extra: ["--collective-timeout", "-1"]))
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("collective-timeout"), r.err)
    }

    /// A small tmpfs as the output disk (needs root and a kernel that lets the test mount; skipped otherwise).
    func withSmallDisk(_ kib: Int, _ body: (String) throws -> Void) throws {
        let dir = T.root + "/disk-\(kib)k"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        guard getuid() == 0, let mount = ["/usr/bin/mount", "/bin/mount"].first(where: FileManager.default.isExecutableFile) else {
            throw XCTSkip("mounting a small tmpfs needs root and mount(8)")
        }
        let m = try T.run(mount, ["-t", "tmpfs", "-o", "size=\(kib)k", "tmpfs", dir])
        guard m.status == 0 else { throw XCTSkip("cannot mount a tmpfs here: \(m.err)") }
        defer { _ = try? T.run(mount.replacingOccurrences(of: "mount", with: "umount"), [dir]) }
        try body(dir)
    }

    func testAFullOrReadOnlyDiskIsAClearErrorAndKeepsThePreviousCheckpoint() throws {
        let (shards, config) = try T.data.get()
        // a disk too small for one checkpoint: refused before the first step
        try withSmallDisk(64) { disk in
            let r = try T.mpi(2, ["train", "--config", config, "--dataset-dir", shards, "--max-steps", "4", "--batch-size", "1",
                                  "--grad-accumulation-steps", "1", "--log-base-dir", disk, "--exp-name", "full", "--quiet"], timeout: 120)
            XCTAssertNotEqual(r.status, 0)
            XCTAssertTrue(r.err.contains(disk) && r.err.contains("free, a checkpoint needs"), r.err)
            XCTAssertFalse(FileManager.default.fileExists(atPath: disk + "/full/metrics.jsonl"), "no step was trained")
        }
        // a disk with room for about two checkpoints: the third save fails, is named, and the run stops with
        // the previous checkpoint intact; a resume elsewhere goes on from it
        let need = try checkpointBytes(config: config, shards: shards)
        try withSmallDisk((need * 5 / 2) / 1024 + 64) { disk in
            let run = disk + "/filling"
            let a = ["train", "--config", config, "--dataset-dir", shards, "--max-steps", "12", "--warmup-steps", "3",
                     "--lr", "2e-3", "--batch-size", "1", "--grad-accumulation-steps", "2", "--bucket-mib", "0.3",
                     "--save-steps", "4", "--log-base-dir", disk, "--exp-name", "filling", "--quiet"]
            let r = try T.mpi(2, a, timeout: 180)
            XCTAssertNotEqual(r.status, 0)
            XCTAssertTrue(r.err.contains("checkpoint not written") && r.err.contains("is intact"), r.err)
            let latest = try String(contentsOfFile: run + "/latest", encoding: .utf8)
            let previous = run + "/" + latest.trimmingCharacters(in: .whitespacesAndNewlines)
            XCTAssertNoThrow(try TrainCheckpointManifest.load(previous).verifyFiles(in: previous))
            // read-only: refused before any work, naming the reason
            let mount = ["/usr/bin/mount", "/bin/mount"].first(where: FileManager.default.isExecutableFile)!
            XCTAssertEqual(try T.run(mount, ["-o", "remount,ro", disk]).status, 0)
            let ro = try T.mpi(2, a, timeout: 120)
            XCTAssertNotEqual(ro.status, 0)
            XCTAssertTrue(ro.err.contains("read-only") && ro.err.contains(disk), ro.err)
        }
    }

    /// This rank layout's checkpoint file size (a 1-step run on a normal disk), to size the small disk.
    func checkpointBytes(config: String, shards: String) throws -> Int {
        let r = try T.mpi(2, try args("f-size", steps: 1))
        XCTAssertEqual(r.status, 0, r.err)
        let dir = try TrainCheckpoint.resolve(T.runDir("f-size"))
        let files = try FileManager.default.contentsOfDirectory(atPath: dir)
        return try files.reduce(0) { $0 + ((try FileManager.default.attributesOfItem(atPath: dir + "/" + $1)[.size] as? Int) ?? 0) }
    }
}
