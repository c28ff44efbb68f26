// Waiting for a slow or stalled rank (`pixellm train --heartbeat-seconds S --collective-timeout T`).
//
// A collective blocks until every rank has called it; when one rank is stalled (a hung disk, a swapping node, a
// debugger) the others wait inside MPI without a word, forever. `Communicator.checkIn(_:)` is called by the
// trainer just before each point where the ranks wait for each other anyway (the step's first allreduce, the end
// of each ZeRO-2 micro-batch, the update, a checkpoint, the validation and evaluation reductions), so it adds no
// synchronisation of its own: every rank
// tells rank 0 it has arrived (one small message), and waits for rank 0's release. While it waits, rank 0 names
// the ranks that have not arrived every `heartbeat` seconds, and after `timeout` seconds aborts the job naming
// them (MPI_Abort: mpirun ends every rank). The other ranks name rank 0 when it is the one that does not answer
// (after the timeout and a grace period, so that rank 0's message, which names the culprit, comes first).
// PyTorch's equivalent is the process group timeout (30 minutes by default) and NCCL's watchdog; Horovod's
// stall inspector prints the missing ranks after 60 s. Ours does the same: 60 s and 1,800 s by default.

import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The heartbeat and timeout of `Communicator.checkIn(_:)`. 0 turns either off.
public struct CommWatchdog: Equatable, Sendable {
    /// Seconds between "still waiting for rank r" messages (0: none).
    public var heartbeat: Double
    /// Seconds after which a wait aborts the job (0: wait forever).
    public var timeout: Double

    public init(heartbeat: Double = 60, timeout: Double = 1800) {
        self.heartbeat = heartbeat
        self.timeout = timeout
    }

    /// What `checkIn` uses in this process.
    nonisolated(unsafe) public static var current = CommWatchdog()

    /// Extra seconds the non-root ranks wait beyond `timeout` before they give up on rank 0.
    public var grace: Double { max(5, min(heartbeat > 0 ? heartbeat : 5, 60)) }

    /// Monotonic seconds.
    public static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    /// Polls `done` until it returns true. Every `heartbeat` seconds calls `beat(seconds waited)`; after `limit`
    /// seconds (0: never) calls `expire(seconds waited)`, which does not return. Spins (yielding) for the first
    /// 10 ms, then sleeps 200 us between polls: a check-in is tiny, and a long wait should not burn a core
    /// that an oversubscribed slow rank may need.
    public static func poll(limit: Double, heartbeat: Double, done: () -> Bool, beat: (Double) -> Void,
                            expire: (Double) -> Never) {
        let start = now()
        var nextBeat = heartbeat > 0 ? heartbeat : .infinity
        while !done() {
            let waited = now() - start
            if limit > 0 && waited >= limit { expire(waited) }
            if waited >= nextBeat {
                beat(waited)
                nextBeat += heartbeat
            }
            if waited < 0.01 { sched_yield() } else { usleep(200) }
        }
    }

    /// "12 s", "3 min 5 s".
    public static func duration(_ s: Double) -> String {
        let t = Int(s.rounded())
        return t < 60 ? "\(t) s" : "\(t / 60) min \(t % 60) s"
    }
}
