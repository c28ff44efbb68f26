import CHDF5
import CPixelShims
import Foundation

/// Errors from file I/O name the file, the dataset and the HDF5 call that failed.
public struct TensorFileError: Error, CustomStringConvertible {
    public let file: String
    public let message: String
    public var description: String { "\(file): \(message)" }
}

/// Named fp32 tensors in an HDF5 file (one dataset per tensor; '/' in a name makes groups), readable by h5py.
/// HDF5's serial build is not thread-safe: every call is made under one lock.
public enum TensorFile {
    static let lock = NSLock()

    @discardableResult
    static func h5<T: BinaryInteger>(_ rc: T, _ call: String, _ file: String, _ what: String = "") throws -> T {
        if rc < 0 { throw TensorFileError(file: file, message: "\(call) failed\(what.isEmpty ? "" : " for '\(what)'")") }
        return rc
    }

    /// Writes the tensors atomically (`AtomicFile.replace`: a temporary file, fsync, rename over `path`).
    public static func write(_ tensors: [String: Tensor], to path: String, attributes: [String: String] = [:]) throws {
        try write(names: Array(tensors.keys), to: path, attributes: attributes) { tensors[$0]! }
    }

    /// As `write`, with each tensor made when it is written (`make(name)`, names in sorted order), so that a file of
    /// several GB is written holding one of its tensors at a time.
    public static func write(names: [String], to path: String, attributes: [String: String] = [:], _ make: (String) throws -> Tensor) throws {
        lock.lock(); defer { lock.unlock() }
        pixel_h5_quiet()
        try AtomicFile.replace(path) { tmp in
            let file = try h5(H5Fcreate(tmp, pixel_h5f_acc_trunc(), pixel_h5p_default(), pixel_h5p_default()), "H5Fcreate", tmp)
            var ok = false
            defer {
                if !ok { H5Fclose(file) }
            }
            // intermediate groups are created on demand
            let lcpl = try h5(H5Pcreate(H5P_CLS_LINK_CREATE_ID_g), "H5Pcreate", tmp)
            defer { H5Pclose(lcpl) }
            try h5(H5Pset_create_intermediate_group(lcpl, 1), "H5Pset_create_intermediate_group", tmp)
            for name in names.sorted() {
                let t = try make(name).contiguousData()
                var dims = t.shape.map { hsize_t($0) }
                let space = try h5(H5Screate_simple(Int32(dims.count), &dims, nil), "H5Screate_simple", tmp, name)
                defer { H5Sclose(space) }
                let dset = try h5(H5Dcreate2(file, name, pixel_h5t_native_float(), space, lcpl, pixel_h5p_default(), pixel_h5p_default()),
                                  "H5Dcreate2", tmp, name)
                defer { H5Dclose(dset) }
                try h5(H5Dwrite(dset, pixel_h5t_native_float(), pixel_h5s_all(), pixel_h5s_all(), pixel_h5p_default(), t.ptr),
                       "H5Dwrite", tmp, name)
            }
            for (k, v) in attributes.sorted(by: { $0.key < $1.key }) {
                try writeStringAttribute(file, k, v, tmp)
            }
            try h5(H5Fflush(file, H5F_SCOPE_GLOBAL), "H5Fflush", tmp)
            ok = true
            try h5(H5Fclose(file), "H5Fclose", tmp)
        }
    }

    static func writeStringAttribute(_ file: hid_t, _ key: String, _ value: String, _ path: String) throws {
        let type = try h5(H5Tcopy(H5T_C_S1_g), "H5Tcopy", path)
        defer { H5Tclose(type) }
        H5Tset_size(type, max(value.utf8.count, 1))
        let space = try h5(H5Screate(H5S_SCALAR), "H5Screate", path)
        defer { H5Sclose(space) }
        let attr = try h5(H5Acreate2(file, key, type, space, pixel_h5p_default(), pixel_h5p_default()), "H5Acreate2", path, key)
        defer { H5Aclose(attr) }
        var bytes = Array(value.utf8)
        if bytes.isEmpty { bytes = [0] }
        try h5(H5Awrite(attr, type, bytes), "H5Awrite", path, key)
    }

    /// Names of every dataset in the file (full paths without the leading '/').
    public static func names(in path: String) throws -> [String] {
        lock.lock(); defer { lock.unlock() }
        pixel_h5_quiet()
        guard FileManager.default.fileExists(atPath: path) else { throw TensorFileError(file: path, message: "no such file") }
        let file = try h5(H5Fopen(path, pixel_h5f_acc_rdonly(), pixel_h5p_default()), "H5Fopen (not an HDF5 file?)", path)
        defer { H5Fclose(file) }
        guard let c = pixel_h5_list_datasets(file) else { throw TensorFileError(file: path, message: "listing datasets failed") }
        defer { free(c) }
        return String(cString: c).split(separator: "\n").map(String.init)
    }

    /// Reads every dataset (float or integer; converted to fp32).
    public static func read(_ path: String) throws -> [String: Tensor] {
        var out: [String: Tensor] = [:]
        for n in try names(in: path) { out[n] = try read(path, name: n) }
        return out
    }

    /// Opens dataset `name` of `path` (under the lock) and passes it with its shape and type class
    /// (0 float, 1 integer, 2 other) to `body`. Errors name the file and the dataset.
    static func withDataset<T>(_ path: String, _ name: String,
                               _ body: (_ dset: hid_t, _ shape: [Int], _ typeClass: Int32) throws -> T) throws -> T {
        lock.lock(); defer { lock.unlock() }
        pixel_h5_quiet()
        guard FileManager.default.fileExists(atPath: path) else { throw TensorFileError(file: path, message: "no such file") }
        let file = try h5(H5Fopen(path, pixel_h5f_acc_rdonly(), pixel_h5p_default()), "H5Fopen (not an HDF5 file?)", path)
        defer { H5Fclose(file) }
        guard H5Lexists(file, name, pixel_h5p_default()) > 0 else {
            throw TensorFileError(file: path, message: "no dataset named '\(name)'")
        }
        let dset = try h5(H5Dopen2(file, name, pixel_h5p_default()), "H5Dopen2", path, name)
        defer { H5Dclose(dset) }
        let space = try h5(H5Dget_space(dset), "H5Dget_space", path, name)
        defer { H5Sclose(space) }
        let r = Int(H5Sget_simple_extent_ndims(space))
        var dims = [hsize_t](repeating: 0, count: max(r, 1))
        H5Sget_simple_extent_dims(space, &dims, nil)
        var size = 0
        let cls = pixel_h5_dataset_type_class(dset, &size)
        return try body(dset, (0..<r).map { Int(dims[$0]) }, cls)
    }

    static func readInt64(_ dset: hid_t, count: Int, _ path: String, _ name: String) throws -> [Int64] {
        var tmp = [Int64](repeating: 0, count: count)
        try h5(H5Dread(dset, pixel_h5t_native_int64(), pixel_h5s_all(), pixel_h5s_all(), pixel_h5p_default(), &tmp), "H5Dread", path, name)
        return tmp
    }

    /// Reads one dataset, converted to fp32.
    public static func read(_ path: String, name: String) throws -> Tensor {
        try withDataset(path, name) { dset, shape, cls in
            guard cls == 0 || cls == 1 else {
                throw TensorFileError(file: path, message: "dataset '\(name)' is neither float nor integer")
            }
            let t = Tensor(empty: shape)
            if cls == 0 {
                try h5(H5Dread(dset, pixel_h5t_native_float(), pixel_h5s_all(), pixel_h5s_all(), pixel_h5p_default(), t.ptr), "H5Dread", path, name)
            } else {
                let v = try readInt64(dset, count: t.count, path, name)
                for i in 0..<t.count { t.ptr[i] = Float(v[i]) }
            }
            return t
        }
    }

    /// True when the dataset holds integers.
    public static func isInteger(_ path: String, name: String) throws -> Bool {
        try withDataset(path, name) { _, _, cls in cls == 1 }
    }

    /// Reads an integer dataset exactly (indices, token ids).
    public static func readInts(_ path: String, name: String) throws -> (values: [Int64], shape: [Int]) {
        try withDataset(path, name) { dset, shape, cls in
            guard cls == 1 else { throw TensorFileError(file: path, message: "dataset '\(name)' does not hold integers") }
            return (try readInt64(dset, count: product(shape), path, name), shape)
        }
    }
}
