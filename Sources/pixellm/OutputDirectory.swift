import ArgumentParser
import Foundation

/// Output directories named on the command line are checked (and created) before any work, so a typo or a
/// read-only place fails at once with the option's name instead of after minutes of loading and generating.
enum OutputDirectory {
    static func prepare(_ path: String, option: String) throws {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: path, isDirectory: &isDir) {
            if !isDir.boolValue { throw ValidationError("\(option) \(path): exists and is a file, not a directory") }
        } else {
            do {
                try fm.createDirectory(atPath: path, withIntermediateDirectories: true)
            } catch {
                throw ValidationError("\(option) \(path): cannot create the directory (\(reason(path, error)))")
            }
        }
        if access(path, W_OK) != 0 {
            let why = errno == EROFS ? "it is on a read-only file system" : String(cString: strerror(errno))
            throw ValidationError("\(option) \(path): the directory is not writable (\(why))")
        }
    }

    /// Why `path` cannot be created, in words: the nearest existing ancestor is a file, or is not writable.
    static func reason(_ path: String, _ error: Error) -> String {
        let fm = FileManager.default
        var p = (path as NSString).standardizingPath
        while !p.isEmpty && p != "/" && !fm.fileExists(atPath: p) { p = (p as NSString).deletingLastPathComponent }
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: p, isDirectory: &isDir) {
            if !isDir.boolValue { return "\(p) is a file, not a directory" }
            if !fm.isWritableFile(atPath: p) { return "\(p) is not writable" }
        }
        return error.localizedDescription
    }

    /// A file to be written: not a directory, and its directory exists (or is created) and is writable.
    static func prepareFile(_ path: String, option: String) throws {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue {
            throw ValidationError("\(option) \(path): is a directory, not a file")
        }
        let parent = (path as NSString).deletingLastPathComponent
        try prepare(parent.isEmpty ? "." : parent, option: option)
    }
}
