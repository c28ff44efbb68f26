import Foundation

/// A file name that an index, manifest or checkpoint written by someone else may use: one plain name inside the
/// directory it sits in (no `/`, so no absolute path or `a/../..`, and not `.` or `..`).
public func isPlainFileName(_ name: String) -> Bool {
    !name.isEmpty && !name.contains("/") && name != "." && name != ".."
}

/// The size in bytes of the file at `path`, following symbolic links (as libhdf5 and mmap see it); nil when
/// it cannot be examined.
public func fileSize(_ path: String) -> Int? {
    var st = stat()
    return stat(path, &st) == 0 ? Int(st.st_size) : nil
}

/// Why the file at `path`, a name an index or manifest gave inside `path`'s directory, is not allowed: it is a
/// symbolic link that leads outside that directory (datasets may link their images anywhere; the files of a shard
/// directory, a checkpoint or a sharded safetensors checkpoint may not). nil when it is fine or does not exist.
public func linkLeavesDirectory(_ path: String) -> String? {
    guard let dest = try? FileManager.default.destinationOfSymbolicLink(atPath: path) else { return nil }
    let dir = URL(fileURLWithPath: (path as NSString).deletingLastPathComponent).resolvingSymlinksInPath().path
    let target = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
    guard !target.hasPrefix(dir + "/") else { return nil }
    return "is a symbolic link to \(dest), outside its directory \(dir)"
}

private func posixWrite(_ fd: Int32, _ p: UnsafeRawPointer, _ n: Int) -> Int { write(fd, p, n) }

/// Atomic file replacement: the content goes to `<path>.tmp-<pid>-<n>` (unique per process and call),
/// which is fsynced and renamed over `path`, and then the directory is fsynced. On any error the
/// temporary file is removed and `path` is left as it was. Failures are reported through `error` (the
/// caller's error type: the file is always `path`, the message names the temporary file and the call
/// that failed); errors thrown by the caller's own closures pass through unchanged.
public enum AtomicFile {
    public typealias MakeError = (_ file: String, _ message: String) -> Error

    public static func defaultError(_ file: String, _ message: String) -> Error { TensorFileError(file: file, message: message) }

    private final class Counter: @unchecked Sendable {
        private var value = 0
        private let lock = NSLock()
        func next() -> Int { lock.lock(); defer { lock.unlock() }; value += 1; return value }
    }
    private static let counter = Counter()

    private static func reason() -> String { String(cString: strerror(errno)) }

    /// Writes through file descriptor `fd` to the temporary file, retrying short writes and EINTR.
    public struct Writer {
        let fd: Int32
        let path: String
        let tmp: String
        let error: MakeError

        public func write(_ bytes: UnsafeRawBufferPointer) throws {
            var done = 0
            while done < bytes.count {
                let r = posixWrite(fd, bytes.baseAddress! + done, bytes.count - done)
                if r < 0 {
                    if errno == EINTR { continue }
                    throw error(path, "write to \(tmp) failed: \(reason())")
                }
                done += r
            }
        }

        public func write(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try write($0) } }
    }

    /// `create` makes the file at the temporary path it is given (by any means: a library that opens it
    /// by name, ...); the file is then fsynced and renamed over `path`.
    public static func replace(_ path: String, error: MakeError = defaultError, _ create: (_ tmp: String) throws -> Void) throws {
        let tmp = "\(path).tmp-\(getpid())-\(counter.next())"
        do {
            try create(tmp)
            let fd = open(tmp, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw error(path, "cannot reopen \(tmp): \(reason())") }
            let synced = fsync(fd) == 0
            let why = reason()
            close(fd)
            guard synced else { throw error(path, "fsync of \(tmp) failed: \(why)") }
            faultKillBeforeRename(path)
            guard rename(tmp, path) == 0 else { throw error(path, "rename from \(tmp) failed: \(reason())") }
        } catch let e {
            unlink(tmp)
            throw e
        }
        fsyncDirectory(containing: path)
    }

    /// Test hook for a crash in the middle of a write (RELIABILITY.md, faults): with
    /// PIXELLM_FAULT_KILL_IN_WRITE=TEXT[@N], the process kills itself with SIGKILL when the temporary file of the
    /// N-th (default first) path containing TEXT is written and synced but not yet renamed.
    static let faultKill: (pattern: String, nth: Int)? = {
        let v = ProcessInfo.processInfo.environment["PIXELLM_FAULT_KILL_IN_WRITE"] ?? ""
        guard !v.isEmpty else { return nil }
        let parts = v.split(separator: "@", maxSplits: 1)
        return (String(parts[0]), parts.count == 2 ? Int(parts[1]) ?? 1 : 1)
    }()
    private static let faultMatches = Counter()

    static func faultKillBeforeRename(_ path: String) {
        if let f = faultKill, path.contains(f.pattern), faultMatches.next() == f.nth { kill(getpid(), SIGKILL) }
    }

    /// Writes the file's bytes through `body`.
    public static func write(_ path: String, error: MakeError = defaultError, _ body: (Writer) throws -> Void) throws {
        try replace(path, error: error) { tmp in
            let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw error(path, "cannot create \(tmp): \(reason())") }
            var closed = false
            defer { if !closed { close(fd) } }
            try withoutActuallyEscaping(error) { try body(Writer(fd: fd, path: path, tmp: tmp, error: $0)) }
            closed = true
            guard close(fd) == 0 else { throw error(path, "close of \(tmp) failed: \(reason())") }
        }
    }

    /// Writes `bytes` as the whole file.
    public static func write(_ bytes: [UInt8], to path: String, error: MakeError = defaultError) throws {
        try write(path, error: error) { try $0.write(bytes) }
    }

    /// fsync of the directory holding `path` (after a rename into it); failures are ignored.
    public static func fsyncDirectory(containing path: String) {
        let dir = (path as NSString).deletingLastPathComponent
        let dfd = open(dir.isEmpty ? "." : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 { fsync(dfd); close(dfd) }
    }
}
