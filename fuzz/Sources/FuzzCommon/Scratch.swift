import Foundation

/// Parsers that take a path get the input through a file: one scratch directory per fuzzing process (in /dev/shm
/// when there is one), rewritten on every input.
public enum Scratch {
    public static let directory: String = {
        let base = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
        let d = (base as NSString).appendingPathComponent("pixellm-fuzz-\(getpid())")
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }()

    /// Writes the input to `name` inside the scratch directory and returns its path.
    public static func file(_ name: String, _ start: UnsafeRawPointer, _ count: Int) -> String {
        let path = (directory as NSString).appendingPathComponent(name)
        FileManager.default.createFile(atPath: path, contents: Data(bytes: start, count: count))
        return path
    }

    public static func bytes(_ start: UnsafeRawPointer, _ count: Int) -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: start, count: count))
    }
}
