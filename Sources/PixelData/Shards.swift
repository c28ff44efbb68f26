// HDF5 shards of prepared samples (docs/shards.md): one file per shard, every per-sample field stored as flat
// arrays plus offsets (Megatron's indexed-dataset layout), readable by h5py. Written by `pixellm prepare`
// (Prepare.swift), read by training, evaluation and `pixellm inspect` so that no JPEG is decoded in the loop.
import CHDF5
import CPixelShims
import Foundation
import PixelTensor
import PixelText

public struct ShardError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let message: String
    public init(file: String, _ message: String) { self.file = file; self.message = message }
    public var description: String { "\(file): \(message)" }
}

/// The on-disk format constants.
public enum ShardFormat {
    public static let name = "pixellm-shards"
    public static let version = 1
    public static let manifestName = "index.json"
    public static let skipLogName = "skipped.log"
    public static func shardName(_ k: Int) -> String { String(format: "shard-%05d.h5", k) }
    /// Temporary files of shard k: `shard-00007.h5.tmp-<pid>`.
    public static func isTemporary(_ name: String) -> Bool { name.hasPrefix("shard-") && name.contains(".h5.tmp-") }
}

// MARK: - per-sample records

/// The metadata JSON of one sample (dataset `meta`).
public struct ShardSampleMeta: Codable, Equatable, Sendable {
    public struct Target: Codable, Equatable, Sendable {
        public var name: String
        public var provenance: String
    }
    public var dataset: String
    public var subset: String
    public var index: Int
    /// Position of the item in the work plan (the list of (reader, item) pairs of the run).
    public var item: Int
    public var imagePath: String
    public var source: String
    public var height: Int
    public var width: Int
    public var conversations: [[DialogueRound]]
    /// The llava_v1 training text of each conversation (with `<im_start><image><im_end>`), as tokenized.
    public var prompts: [String]
    public var targets: [Target]

    enum CodingKeys: String, CodingKey {
        case dataset, subset, index, item, source, height, width, conversations, prompts, targets
        case imagePath = "image_path"
    }
}

/// One skipped item, as stored in its shard (dataset `skips`) and in skipped.log.
public struct ShardSkip: Error, Codable, Equatable, Sendable {
    public var file: String
    public var reason: String
    public var subset: String
    /// Raw item index in the sub-dataset; -1 for items a reader dropped while indexing.
    public var index: Int
}

/// One sample ready to be written.
public struct PackedSample: Sendable {
    /// S x S x 3 bytes: the resized image top-left, zeros elsewhere.
    public var image: [UInt8]
    public var validHeight: Int
    public var validWidth: Int
    public var height: Int
    public var width: Int
    public var masks: [RLE]
    public var meta: ShardSampleMeta
    public var inputIds: [[Int32]]
    public var labels: [[Int32]]
}

// MARK: - HDF5 helpers

/// Serialises every HDF5 call made by the shard code (the serial HDF5 build is not thread-safe).
enum H5 {
    static let lock = NSRecursiveLock()

    @discardableResult
    static func ck<T: BinaryInteger>(_ rc: T, _ call: String, _ file: String, _ what: String = "") throws -> T {
        if rc < 0 { throw ShardError(file: file, "\(call) failed\(what.isEmpty ? "" : " for '\(what)'")") }
        return rc
    }

    /// Dataset creation properties: no object timestamps (so a re-packed shard is byte-identical).
    static func dcpl(_ file: String, chunk: [Int]? = nil) throws -> hid_t {
        let p = try ck(H5Pcreate(H5P_CLS_DATASET_CREATE_ID_g), "H5Pcreate", file)
        try ck(H5Pset_obj_track_times(p, false), "H5Pset_obj_track_times", file)
        if let chunk {
            var c = chunk.map { hsize_t($0) }
            try ck(H5Pset_chunk(p, Int32(c.count), &c), "H5Pset_chunk", file)
        }
        return p
    }

    static func writeArray(_ fid: hid_t, _ name: String, type: hid_t, dims: [Int], _ data: UnsafeRawPointer?, _ file: String) throws {
        var d = dims.map { hsize_t($0) }
        let space = try ck(H5Screate_simple(Int32(d.count), &d, nil), "H5Screate_simple", file, name)
        defer { H5Sclose(space) }
        let p = try dcpl(file)
        defer { H5Pclose(p) }
        let ds = try ck(H5Dcreate2(fid, name, type, space, pixel_h5p_default(), p, pixel_h5p_default()), "H5Dcreate2", file, name)
        defer { H5Dclose(ds) }
        if dims.reduce(1, *) > 0, let data {
            try ck(H5Dwrite(ds, type, pixel_h5s_all(), pixel_h5s_all(), pixel_h5p_default(), data), "H5Dwrite", file, name)
        }
    }

    static func write(_ fid: hid_t, _ name: String, _ v: [Int64], dims: [Int]? = nil, _ file: String) throws {
        try v.withUnsafeBytes { try writeArray(fid, name, type: pixel_h5t_native_int64(), dims: dims ?? [v.count], $0.baseAddress, file) }
    }
    static func write(_ fid: hid_t, _ name: String, _ v: [Int32], dims: [Int]? = nil, _ file: String) throws {
        try v.withUnsafeBytes { try writeArray(fid, name, type: pixel_h5t_native_int32(), dims: dims ?? [v.count], $0.baseAddress, file) }
    }
    static func write(_ fid: hid_t, _ name: String, _ v: [UInt8], _ file: String) throws {
        try v.withUnsafeBytes { try writeArray(fid, name, type: pixel_h5t_native_uint8(), dims: [v.count], $0.baseAddress, file) }
    }

    static func writeStringAttr(_ obj: hid_t, _ key: String, _ value: String, _ file: String) throws {
        let type = try ck(H5Tcopy(H5T_C_S1_g), "H5Tcopy", file)
        defer { H5Tclose(type) }
        var bytes = Array(value.utf8)
        if bytes.isEmpty { bytes = [0] }
        try ck(H5Tset_size(type, bytes.count), "H5Tset_size", file, key)
        let space = try ck(H5Screate(H5S_SCALAR), "H5Screate", file)
        defer { H5Sclose(space) }
        let attr = try ck(H5Acreate2(obj, key, type, space, pixel_h5p_default(), pixel_h5p_default()), "H5Acreate2", file, key)
        defer { H5Aclose(attr) }
        try ck(H5Awrite(attr, type, bytes), "H5Awrite", file, key)
    }

    static func writeIntAttr(_ obj: hid_t, _ key: String, _ value: Int64, _ file: String) throws {
        let space = try ck(H5Screate(H5S_SCALAR), "H5Screate", file)
        defer { H5Sclose(space) }
        let attr = try ck(H5Acreate2(obj, key, pixel_h5t_native_int64(), space, pixel_h5p_default(), pixel_h5p_default()),
                          "H5Acreate2", file, key)
        defer { H5Aclose(attr) }
        var v = value
        try ck(H5Awrite(attr, pixel_h5t_native_int64(), &v), "H5Awrite", file, key)
    }

    static func readStringAttr(_ obj: hid_t, _ key: String, _ file: String) throws -> String {
        guard H5Aexists(obj, key) > 0 else { throw ShardError(file: file, "no attribute '\(key)' (not a pixellm shard?)") }
        let attr = try ck(H5Aopen(obj, key, pixel_h5p_default()), "H5Aopen", file, key)
        defer { H5Aclose(attr) }
        let type = try ck(H5Aget_type(attr), "H5Aget_type", file, key)
        defer { H5Tclose(type) }
        guard H5Tget_class(type) == H5T_STRING, H5Tis_variable_str(type) == 0 else {
            throw ShardError(file: file, "attribute '\(key)' is not a fixed-length string")
        }
        let n = H5Tget_size(type)
        var buf = [UInt8](repeating: 0, count: n + 1)
        try ck(H5Aread(attr, type, &buf), "H5Aread", file, key)
        if let z = buf.firstIndex(of: 0) { buf.removeSubrange(z...) }
        return String(decoding: buf, as: UTF8.self)
    }

    static func readIntAttr(_ obj: hid_t, _ key: String, _ file: String) throws -> Int64 {
        guard H5Aexists(obj, key) > 0 else { throw ShardError(file: file, "no attribute '\(key)' (not a pixellm shard?)") }
        let attr = try ck(H5Aopen(obj, key, pixel_h5p_default()), "H5Aopen", file, key)
        defer { H5Aclose(attr) }
        var v: Int64 = 0
        try ck(H5Aread(attr, pixel_h5t_native_int64(), &v), "H5Aread", file, key)
        return v
    }

    /// Shape of dataset `name`.
    static func shape(_ fid: hid_t, _ name: String, _ file: String) throws -> [Int] {
        guard H5Lexists(fid, name, pixel_h5p_default()) > 0 else { throw ShardError(file: file, "no dataset '\(name)'") }
        let ds = try ck(H5Dopen2(fid, name, pixel_h5p_default()), "H5Dopen2", file, name)
        defer { H5Dclose(ds) }
        let space = try ck(H5Dget_space(ds), "H5Dget_space", file, name)
        defer { H5Sclose(space) }
        let r = Int(H5Sget_simple_extent_ndims(space))
        guard r >= 0, r <= 32 else { throw ShardError(file: file, "dataset '\(name)' has rank \(r)") }
        var dims = [hsize_t](repeating: 0, count: max(r, 1))
        H5Sget_simple_extent_dims(space, &dims, nil)
        return try (0..<r).map {
            guard let d = Int(exactly: dims[$0]), d <= 1 << 40 else { throw ShardError(file: file, "dataset '\(name)' has a dimension of \(dims[$0])") }
            return d
        }
    }

    /// Elements of `shape`, checked against what the file can hold: the arrays read whole are stored uncompressed
    /// (one byte or more per element), so a dataset that declares more elements than the file has bytes is damaged
    /// or crafted; refused before any allocation.
    static func elementCount(_ shape: [Int], _ name: String, _ file: String) throws -> Int {
        var n = 1
        for d in shape {
            let (m, overflow) = n.multipliedReportingOverflow(by: d)
            guard !overflow else { throw ShardError(file: file, "dataset '\(name)' has shape \(shape): too many elements") }
            n = m
        }
        let bytes = fileSize(file) ?? Int.max   // follows links, as HDF5 does
        guard n <= bytes else {
            throw ShardError(file: file, "dataset '\(name)' declares \(n) elements, more than the file's \(bytes) bytes can hold: damaged shard")
        }
        return n
    }

    /// Reads a whole dataset converted to `T` (HDF5 converts between integer types).
    static func read<T: FixedWidthInteger>(_ fid: hid_t, _ name: String, as _: T.Type, type: hid_t, _ file: String) throws -> (values: [T], shape: [Int]) {
        let sh = try shape(fid, name, file)
        let n = try elementCount(sh, name, file)
        var out = [T](repeating: 0, count: n)
        if n > 0 {
            let ds = try ck(H5Dopen2(fid, name, pixel_h5p_default()), "H5Dopen2", file, name)
            defer { H5Dclose(ds) }
            try out.withUnsafeMutableBytes {
                _ = try ck(H5Dread(ds, type, pixel_h5s_all(), pixel_h5s_all(), pixel_h5p_default(), $0.baseAddress), "H5Dread", file, name)
            }
        }
        return (out, sh)
    }

    static func ints(_ fid: hid_t, _ name: String, _ file: String) throws -> [Int] {
        try read(fid, name, as: Int64.self, type: pixel_h5t_native_int64(), file).values.map { Int($0) }
    }
    static func int32s(_ fid: hid_t, _ name: String, _ file: String) throws -> [Int32] {
        try read(fid, name, as: Int32.self, type: pixel_h5t_native_int32(), file).values
    }
    static func bytes(_ fid: hid_t, _ name: String, _ file: String) throws -> [UInt8] {
        try read(fid, name, as: UInt8.self, type: pixel_h5t_native_uint8(), file).values
    }
}

/// A shard file written field by field with whatever values are given, consistent or not: the structure-aware
/// shard fuzzer and tests use it to reach ShardFile's checks with well-formed HDF5 (libhdf5's own parser is not
/// what they test). `images` gives the images dataset's shape (uint8, chunked per image, never written: HDF5
/// reads its fill value, 0).
public enum RawShardFile {
    public static func write(path: String, int64s: [String: [Int64]], int32s: [String: [Int32]], bytes: [String: [UInt8]],
                             images: [Int], stringAttributes: [String: String], intAttributes: [String: Int64]) throws {
        H5.lock.lock(); defer { H5.lock.unlock() }
        pixel_h5_quiet()
        let fid = try H5.ck(H5Fcreate(path, pixel_h5f_acc_trunc(), pixel_h5p_default(), pixel_h5p_default()), "H5Fcreate", path)
        defer { H5Fclose(fid) }
        for (k, v) in int64s.sorted(by: { $0.key < $1.key }) { try H5.write(fid, k, v, path) }
        for (k, v) in int32s.sorted(by: { $0.key < $1.key }) { try H5.write(fid, k, v, path) }
        for (k, v) in bytes.sorted(by: { $0.key < $1.key }) { try H5.write(fid, k, v, path) }
        if images.count == 4, images.allSatisfy({ $0 >= 0 }) {
            var d = images.map { hsize_t($0) }
            let space = try H5.ck(H5Screate_simple(4, &d, nil), "H5Screate_simple", path, "images")
            defer { H5Sclose(space) }
            let p = try H5.dcpl(path, chunk: [1, max(images[1], 1), max(images[2], 1), 3])
            defer { H5Pclose(p) }
            let ds = try H5.ck(H5Dcreate2(fid, "images", pixel_h5t_native_uint8(), space, pixel_h5p_default(), p, pixel_h5p_default()),
                               "H5Dcreate2", path, "images")
            H5Dclose(ds)
        }
        for (k, v) in stringAttributes.sorted(by: { $0.key < $1.key }) { try H5.writeStringAttr(fid, k, v, path) }
        for (k, v) in intAttributes.sorted(by: { $0.key < $1.key }) { try H5.writeIntAttr(fid, k, v, path) }
    }
}

// MARK: - writer

/// Writes one shard: samples are appended (the image immediately, the rest kept in memory), `finish()` writes
/// the arrays and attributes to `<path>.tmp-<pid>`, fsyncs it and renames it to `path`. Until then nothing
/// exists under `path`; `abort()` (or a crash) leaves at most the temporary file, which `prepare` removes.
public final class ShardWriter {
    public let path: String
    public let imageSize: Int
    let tmp: String
    var fid: hid_t = -1
    var images: hid_t = -1
    var count = 0
    var validSize: [Int32] = [], origSize: [Int32] = [], items: [Int64] = []
    var maskOffsets: [Int64] = [0], rleOffsets: [Int64] = [0], rleBytes: [UInt8] = [], maskSize: [Int32] = []
    var metaOffsets: [Int64] = [0], metaBytes: [UInt8] = []
    var convOffsets: [Int64] = [0], tokenOffsets: [Int64] = [0], ids: [Int32] = [], labels: [Int32] = []
    var skips: [ShardSkip] = []
    let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }()

    /// `compression`: deflate level 0 (none) ... 9 of the image chunks (one chunk per sample; h5py reads it).
    public init(path: String, imageSize: Int, compression: Int = 0) throws {
        self.path = path
        self.imageSize = imageSize
        tmp = path + ".tmp-\(getpid())"
        H5.lock.lock(); defer { H5.lock.unlock() }
        pixel_h5_quiet()
        unlink(tmp)
        let fcpl = try H5.ck(H5Pcreate(H5P_CLS_FILE_CREATE_ID_g), "H5Pcreate", tmp)
        defer { H5Pclose(fcpl) }
        try H5.ck(H5Pset_obj_track_times(fcpl, false), "H5Pset_obj_track_times", tmp)
        fid = try H5.ck(H5Fcreate(tmp, pixel_h5f_acc_trunc(), fcpl, pixel_h5p_default()), "H5Fcreate", tmp)
        do {
            var dims: [hsize_t] = [0, hsize_t(imageSize), hsize_t(imageSize), 3]
            var maxd: [hsize_t] = [hsize_t.max, hsize_t(imageSize), hsize_t(imageSize), 3]
            let space = try H5.ck(H5Screate_simple(4, &dims, &maxd), "H5Screate_simple", tmp, "images")
            defer { H5Sclose(space) }
            let p = try H5.dcpl(tmp, chunk: [1, imageSize, imageSize, 3])
            defer { H5Pclose(p) }
            if compression > 0 {
                guard H5Zfilter_avail(H5Z_filter_t(1)) > 0 else { throw ShardError(file: tmp, "this HDF5 library has no deflate filter (--compression 0 works)") }
                try H5.ck(H5Pset_deflate(p, UInt32(min(compression, 9))), "H5Pset_deflate", tmp, "images")
            }
            images = try H5.ck(H5Dcreate2(fid, "images", pixel_h5t_native_uint8(), space, pixel_h5p_default(), p, pixel_h5p_default()),
                               "H5Dcreate2", tmp, "images")
        } catch {
            H5Fclose(fid); fid = -1; unlink(tmp)
            throw error
        }
    }

    deinit { abort() }

    public var sampleCount: Int { count }

    public func append(_ s: PackedSample) throws {
        let S = imageSize
        precondition(s.image.count == S * S * 3, "ShardWriter.append: image of \(s.image.count) bytes for \(S)x\(S)x3")
        precondition(s.inputIds.count == s.labels.count && s.inputIds.count == s.meta.conversations.count, "ShardWriter.append: conversations")
        H5.lock.lock(); defer { H5.lock.unlock() }
        var newDims: [hsize_t] = [hsize_t(count + 1), hsize_t(S), hsize_t(S), 3]
        try H5.ck(H5Dset_extent(images, &newDims), "H5Dset_extent", tmp, "images")
        let fs = try H5.ck(H5Dget_space(images), "H5Dget_space", tmp, "images")
        defer { H5Sclose(fs) }
        var start: [hsize_t] = [hsize_t(count), 0, 0, 0]
        var cnt: [hsize_t] = [1, hsize_t(S), hsize_t(S), 3]
        try H5.ck(H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, nil, &cnt, nil), "H5Sselect_hyperslab", tmp, "images")
        let ms = try H5.ck(H5Screate_simple(4, &cnt, nil), "H5Screate_simple", tmp, "images")
        defer { H5Sclose(ms) }
        try s.image.withUnsafeBytes {
            _ = try H5.ck(H5Dwrite(images, pixel_h5t_native_uint8(), ms, fs, pixel_h5p_default(), $0.baseAddress), "H5Dwrite", tmp, "images")
        }
        count += 1
        validSize += [Int32(s.validHeight), Int32(s.validWidth)]
        origSize += [Int32(s.height), Int32(s.width)]
        items.append(Int64(s.meta.item))
        for m in s.masks {
            rleBytes += Array(m.compressed.utf8)
            rleOffsets.append(Int64(rleBytes.count))
            maskSize += [Int32(m.height), Int32(m.width)]
        }
        maskOffsets.append(Int64(maskSize.count / 2))
        metaBytes += try encoder.encode(s.meta)
        metaOffsets.append(Int64(metaBytes.count))
        for (i, l) in zip(s.inputIds, s.labels) {
            precondition(i.count == l.count, "ShardWriter.append: ids and labels of different lengths")
            ids += i; labels += l
            tokenOffsets.append(Int64(ids.count))
        }
        convOffsets.append(Int64(tokenOffsets.count - 1))
    }

    public func recordSkip(_ s: ShardSkip) { skips.append(s) }

    /// Writes the remaining arrays and the attributes, then makes the shard visible under `path`.
    public func finish(attributes: [String: String], intAttributes: [String: Int64]) throws {
        H5.lock.lock(); defer { H5.lock.unlock() }
        guard fid >= 0 else { throw ShardError(file: path, "shard writer already closed") }
        let n = count
        try H5.write(fid, "valid_size", validSize, dims: [n, 2], tmp)
        try H5.write(fid, "orig_size", origSize, dims: [n, 2], tmp)
        try H5.write(fid, "item", items, tmp)
        try H5.write(fid, "mask_offsets", maskOffsets, tmp)
        try H5.write(fid, "mask_rle_offsets", rleOffsets, tmp)
        try H5.write(fid, "mask_rle", rleBytes, tmp)
        try H5.write(fid, "mask_size", maskSize, dims: [maskSize.count / 2, 2], tmp)
        try H5.write(fid, "meta_offsets", metaOffsets, tmp)
        try H5.write(fid, "meta", metaBytes, tmp)
        try H5.write(fid, "conv_offsets", convOffsets, tmp)
        try H5.write(fid, "token_offsets", tokenOffsets, tmp)
        try H5.write(fid, "input_ids", ids, tmp)
        try H5.write(fid, "labels", labels, tmp)
        try H5.write(fid, "skips", Array(try encoder.encode(skips)), tmp)
        var a = attributes
        a["format"] = ShardFormat.name
        var ia = intAttributes
        ia["format_version"] = Int64(ShardFormat.version)
        ia["image_size"] = Int64(imageSize)
        ia["num_samples"] = Int64(n)
        ia["num_skipped"] = Int64(skips.count)
        for (k, v) in a.sorted(by: { $0.key < $1.key }) { try H5.writeStringAttr(fid, k, v, tmp) }
        for (k, v) in ia.sorted(by: { $0.key < $1.key }) { try H5.writeIntAttr(fid, k, v, tmp) }
        H5Dclose(images); images = -1
        try H5.ck(H5Fflush(fid, H5F_SCOPE_GLOBAL), "H5Fflush", tmp)
        let rc = H5Fclose(fid)
        fid = -1
        if rc < 0 { unlink(tmp); throw ShardError(file: tmp, "H5Fclose failed") }
        let fd = open(tmp, O_RDONLY | O_CLOEXEC)
        guard fd >= 0, fsync(fd) == 0 else {
            if fd >= 0 { close(fd) }
            unlink(tmp)
            throw ShardError(file: tmp, "fsync failed: \(String(cString: strerror(errno)))")
        }
        close(fd)
        guard rename(tmp, path) == 0 else {
            let e = String(cString: strerror(errno))
            unlink(tmp)
            throw ShardError(file: path, "rename from \(tmp) failed: \(e)")
        }
        AtomicFile.fsyncDirectory(containing: path)
    }

    /// Drops the temporary file (nothing appears under `path`).
    public func abort() {
        H5.lock.lock(); defer { H5.lock.unlock() }
        if images >= 0 { H5Dclose(images); images = -1 }
        if fid >= 0 { H5Fclose(fid); fid = -1; unlink(tmp) }
    }
}

// MARK: - reader of one shard file

/// One shard file, opened read-only: the small arrays are loaded at open, images are read per sample.
public final class ShardFile {
    public let path: String
    public let count: Int
    public let imageSize: Int
    public let formatVersion: Int
    /// String attributes (`format`, `options`, `tokenizer_path`, `tokenizer_hash`, ...).
    public let attributes: [String: String]
    public let intAttributes: [String: Int64]
    public let skips: [ShardSkip]
    let fid: hid_t
    let validSize: [Int32], origSize: [Int32]
    public let items: [Int]
    let maskOffsets: [Int], rleOffsets: [Int], rleBytes: [UInt8], maskSize: [Int32]
    let metaOffsets: [Int], metaBytes: [UInt8]
    let convOffsets: [Int], tokenOffsets: [Int], ids: [Int32], labels: [Int32]

    public static let stringAttributeNames = ["format", "options", "tokenizer_path", "tokenizer_hash", "plan"]
    public static let intAttributeNames = ["format_version", "image_size", "num_samples", "num_skipped", "seed", "shard_index",
                                           "item_begin", "item_end"]

    public init(path: String) throws {
        self.path = path
        H5.lock.lock(); defer { H5.lock.unlock() }
        pixel_h5_quiet()
        guard FileManager.default.fileExists(atPath: path) else { throw ShardError(file: path, "no such shard file") }
        fid = try H5.ck(H5Fopen(path, pixel_h5f_acc_rdonly(), pixel_h5p_default()), "H5Fopen (not an HDF5 file?)", path)
        do {
            var a: [String: String] = [:]
            for k in ShardFile.stringAttributeNames where H5Aexists(fid, k) > 0 { a[k] = try H5.readStringAttr(fid, k, path) }
            guard a["format"] == ShardFormat.name else { throw ShardError(file: path, "not a pixellm shard (attribute format = \(a["format"] ?? "absent"))") }
            var ia: [String: Int64] = [:]
            for k in ShardFile.intAttributeNames where H5Aexists(fid, k) > 0 { ia[k] = try H5.readIntAttr(fid, k, path) }
            attributes = a
            intAttributes = ia
            formatVersion = Int(ia["format_version"] ?? 0)
            guard formatVersion == ShardFormat.version else {
                throw ShardError(file: path, "shard format version \(formatVersion), this build reads version \(ShardFormat.version)")
            }
            imageSize = Int(ia["image_size"] ?? 0)
            guard imageSize >= 1 && imageSize <= 4096 else { throw ShardError(file: path, "image_size \(imageSize) is not in 1...4096") }
            count = Int(ia["num_samples"] ?? -1)
            validSize = try H5.int32s(fid, "valid_size", path)
            origSize = try H5.int32s(fid, "orig_size", path)
            items = try H5.ints(fid, "item", path)
            maskOffsets = try H5.ints(fid, "mask_offsets", path)
            rleOffsets = try H5.ints(fid, "mask_rle_offsets", path)
            rleBytes = try H5.bytes(fid, "mask_rle", path)
            maskSize = try H5.int32s(fid, "mask_size", path)
            metaOffsets = try H5.ints(fid, "meta_offsets", path)
            metaBytes = try H5.bytes(fid, "meta", path)
            convOffsets = try H5.ints(fid, "conv_offsets", path)
            tokenOffsets = try H5.ints(fid, "token_offsets", path)
            ids = try H5.int32s(fid, "input_ids", path)
            labels = try H5.int32s(fid, "labels", path)
            skips = try JSONDecoder().decode([ShardSkip].self, from: Data(try H5.bytes(fid, "skips", path)))
            let imgShape = try H5.shape(fid, "images", path)
            let n = count
            guard imgShape == [n, imageSize, imageSize, 3], validSize.count == 2 * n, origSize.count == 2 * n, items.count == n,
                  maskOffsets.count == n + 1, metaOffsets.count == n + 1, convOffsets.count == n + 1,
                  rleOffsets.count == maskSize.count / 2 + 1, maskOffsets.last == maskSize.count / 2,
                  rleOffsets.last == rleBytes.count, metaOffsets.last == metaBytes.count,
                  tokenOffsets.last == ids.count, ids.count == labels.count, convOffsets.last == tokenOffsets.count - 1
            else { throw ShardError(file: path, "inconsistent array sizes (\(n) samples, images \(imgShape)): damaged shard") }
            // every offset array runs from 0, never backwards, to the end of what it indexes
            func ordered(_ a: [Int]) -> Bool { a.first == 0 && zip(a, a.dropFirst()).allSatisfy { $0 <= $1 } }
            for (k, a) in [("mask_offsets", maskOffsets), ("mask_rle_offsets", rleOffsets), ("meta_offsets", metaOffsets),
                           ("conv_offsets", convOffsets), ("token_offsets", tokenOffsets)] where !ordered(a) {
                throw ShardError(file: path, "\(k) do not run in order from 0: damaged shard")
            }
            for k in 0..<n {
                let (h, w) = (Int(validSize[2 * k]), Int(validSize[2 * k + 1]))
                guard h >= 0, h <= imageSize, w >= 0, w <= imageSize, origSize[2 * k] >= 0, origSize[2 * k + 1] >= 0 else {
                    throw ShardError(file: path, "sample \(k): valid size \(h) x \(w) (image size \(imageSize)), original \(origSize[2 * k]) x \(origSize[2 * k + 1]): damaged shard")
                }
            }
            if let bad = maskSize.first(where: { $0 < 0 || $0 > 1 << 16 }) { throw ShardError(file: path, "a mask size of \(bad): damaged shard") }
        } catch {
            H5Fclose(fid)
            throw error
        }
    }

    deinit {
        H5.lock.lock(); defer { H5.lock.unlock() }
        H5Fclose(fid)
    }

    func check(_ i: Int) throws {
        guard i >= 0 && i < count else { throw ShardError(file: path, "sample \(i) out of range (the shard holds \(count))") }
    }

    /// The S x S x 3 stored image (resized top-left region, zero padding).
    public func paddedImage(_ i: Int) throws -> RGBImage {
        try check(i)
        let S = imageSize
        var px = [UInt8](repeating: 0, count: S * S * 3)
        H5.lock.lock(); defer { H5.lock.unlock() }
        let ds = try H5.ck(H5Dopen2(fid, "images", pixel_h5p_default()), "H5Dopen2", path, "images")
        defer { H5Dclose(ds) }
        let fs = try H5.ck(H5Dget_space(ds), "H5Dget_space", path, "images")
        defer { H5Sclose(fs) }
        var start: [hsize_t] = [hsize_t(i), 0, 0, 0]
        var cnt: [hsize_t] = [1, hsize_t(S), hsize_t(S), 3]
        try H5.ck(H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, nil, &cnt, nil), "H5Sselect_hyperslab", path, "images")
        let ms = try H5.ck(H5Screate_simple(4, &cnt, nil), "H5Screate_simple", path, "images")
        defer { H5Sclose(ms) }
        try px.withUnsafeMutableBytes {
            _ = try H5.ck(H5Dread(ds, pixel_h5t_native_uint8(), ms, fs, pixel_h5p_default(), $0.baseAddress), "H5Dread", path, "images")
        }
        return RGBImage(width: S, height: S, pixels: px)
    }

    public func validSize(_ i: Int) -> (height: Int, width: Int) { (Int(validSize[2 * i]), Int(validSize[2 * i + 1])) }
    public func originalSize(_ i: Int) -> (height: Int, width: Int) { (Int(origSize[2 * i]), Int(origSize[2 * i + 1])) }

    public func masks(_ i: Int) throws -> [RLE] {
        try check(i)
        return try (maskOffsets[i]..<maskOffsets[i + 1]).map { m in
            let s = String(decoding: rleBytes[rleOffsets[m]..<rleOffsets[m + 1]], as: UTF8.self)
            return try RLE(height: Int(maskSize[2 * m]), width: Int(maskSize[2 * m + 1]), compressed: s, item: "\(path) mask \(m)")
        }
    }

    public func meta(_ i: Int) throws -> ShardSampleMeta {
        try check(i)
        do {
            return try JSONDecoder().decode(ShardSampleMeta.self, from: Data(metaBytes[metaOffsets[i]..<metaOffsets[i + 1]]))
        } catch {
            throw ShardError(file: path, "metadata of sample \(i) does not decode: \(error)")
        }
    }

    /// Token ids and labels of each conversation of sample i (full length, not truncated).
    public func tokens(_ i: Int) throws -> (inputIds: [[Int]], labels: [[Int]]) {
        try check(i)
        var a: [[Int]] = [], b: [[Int]] = []
        for c in convOffsets[i]..<convOffsets[i + 1] {
            let r = tokenOffsets[c]..<tokenOffsets[c + 1]
            a.append(ids[r].map { Int($0) })
            b.append(labels[r].map { Int($0) })
        }
        return (a, b)
    }
}

// MARK: - manifest and reader of a shard directory

/// `SHARDS/index.json`.
public struct ShardManifest: Codable, Equatable, Sendable {
    public struct Subset: Codable, Equatable, Sendable {
        public var dataset: String
        public var subset: String
        /// Raw items in the plan (after --limit).
        public var items: Int
        public var samples: Int
        public var skipped: Int
        /// Items the reader dropped while indexing.
        public var indexSkipped: Int
        enum CodingKeys: String, CodingKey { case dataset, subset, items, samples, skipped, indexSkipped = "index_skipped" }
    }
    public struct Shard: Codable, Equatable, Sendable {
        public var file: String
        public var itemBegin: Int
        public var itemEnd: Int
        public var samples: Int
        public var skipped: Int
        /// The file's size and CRC-32, checked when a reader opens it (absent in indexes written before 2026-12-07:
        /// those shards are read unchecked).
        public var bytes: Int?
        public var crc32: UInt32?
        enum CodingKeys: String, CodingKey { case file, samples, skipped, itemBegin = "item_begin", itemEnd = "item_end", bytes, crc32 }

        public init(file: String, itemBegin: Int, itemEnd: Int, samples: Int, skipped: Int, bytes: Int? = nil, crc32: UInt32? = nil) {
            self.file = file
            self.itemBegin = itemBegin
            self.itemEnd = itemEnd
            self.samples = samples
            self.skipped = skipped
            self.bytes = bytes
            self.crc32 = crc32
        }

        /// Checks the file's size and CRC-32 against these (when recorded); the error names the file.
        public func verify(_ path: String) throws {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { throw ShardError(file: path, "no such shard file") }
            if isDir.boolValue { throw ShardError(file: path, "is a directory, not a shard file") }
            if let why = linkLeavesDirectory(path) { throw ShardError(file: path, why) }
            if let want = bytes {
                let size = fileSize(path) ?? -1
                guard size == want else {
                    throw ShardError(file: path, "\(size) bytes, index.json says \(want): truncated or replaced (run pixellm prepare again)")
                }
            }
            if let want = crc32 {
                switch CRC32.file(path) {
                case .failure(let e): throw ShardError(file: path, "cannot be read: \(e.reason)")
                case .success(let crc) where crc != want:
                    throw ShardError(file: path, "CRC-32 \(String(crc, radix: 16)) differs from index.json's \(String(want, radix: 16)): the file is damaged (run pixellm prepare again)")
                case .success: break
                }
            }
        }
    }
    public var format: String
    public var formatVersion: Int
    public var options: PrepareOptions
    public var subsets: [Subset]
    public var shards: [Shard]
    public var totalItems: Int
    public var totalSamples: Int
    public var totalSkipped: Int
    public var skipsByReason: [String: Int]

    enum CodingKeys: String, CodingKey {
        case format, options, subsets, shards
        case formatVersion = "format_version", totalItems = "total_items", totalSamples = "total_samples"
        case totalSkipped = "total_skipped", skipsByReason = "skips_by_reason"
    }

    public static func load(_ dir: String) throws -> ShardManifest {
        let p = (dir as NSString).appendingPathComponent(ShardFormat.manifestName)
        guard let d = FileManager.default.contents(atPath: p) else {
            throw ShardError(file: p, "no manifest (not a shard directory written by `pixellm prepare`, or the run did not finish)")
        }
        let m: ShardManifest
        do { m = try JSONDecoder().decode(ShardManifest.self, from: d) } catch {
            throw ShardError(file: p, "manifest does not decode: \(error)")
        }
        guard m.format == ShardFormat.name else { throw ShardError(file: p, "format '\(m.format)' is not '\(ShardFormat.name)'") }
        guard m.formatVersion == ShardFormat.version else {
            throw ShardError(file: p, "format version \(m.formatVersion), this build reads version \(ShardFormat.version)")
        }
        var total = 0
        for sh in m.shards {
            // a shard file is a plain name in this directory (never ../ or an absolute path)
            guard isPlainFileName(sh.file) else {
                throw ShardError(file: p, "shard file '\(sh.file)' is not a plain file name in the shard directory")
            }
            guard sh.samples >= 0, sh.samples <= 1 << 40, sh.skipped >= 0 else {
                throw ShardError(file: p, "shard '\(sh.file)': \(sh.samples) samples, \(sh.skipped) skipped")
            }
            total += sh.samples
        }
        guard total == m.totalSamples else {
            throw ShardError(file: p, "the shards hold \(total) samples in all, total_samples says \(m.totalSamples)")
        }
        return m
    }
}

/// The shards of a directory in manifest order; sample i is the i-th sample of the concatenated shards.
public final class ShardReader {
    public let directory: String
    public let manifest: ShardManifest
    public let count: Int
    let starts: [Int]
    var open: [Int: ShardFile] = [:]
    let lock = NSLock()

    public init(directory: String) throws {
        self.directory = directory
        manifest = try ShardManifest.load(directory)
        var s: [Int] = [], n = 0
        for sh in manifest.shards { s.append(n); n += sh.samples }
        starts = s
        count = n
    }

    public var imageSize: Int { manifest.options.imageSize }

    /// The shard and the position in it of global sample i.
    public func locate(_ i: Int) throws -> (shard: ShardFile, local: Int) {
        guard i >= 0 && i < count else {
            throw ShardError(file: (directory as NSString).appendingPathComponent(ShardFormat.manifestName),
                             "sample index \(i) out of range: the shards hold \(count) samples (0...\(max(count - 1, 0)))")
        }
        var lo = 0, hi = starts.count - 1
        while lo < hi {   // the last shard starting at or before i holds it (empty shards share the next start)
            let mid = (lo + hi + 1) / 2
            if starts[mid] <= i { lo = mid } else { hi = mid - 1 }
        }
        lock.lock(); defer { lock.unlock() }
        if let f = open[lo] { return (f, i - starts[lo]) }
        let path = (directory as NSString).appendingPathComponent(manifest.shards[lo].file)
        try manifest.shards[lo].verify(path)
        let f = try ShardFile(path: path)
        guard f.count == manifest.shards[lo].samples else {
            throw ShardError(file: path, "holds \(f.count) samples, the manifest says \(manifest.shards[lo].samples)")
        }
        open[lo] = f
        return (f, i - starts[lo])
    }

    public func paddedImage(_ i: Int) throws -> RGBImage { let (f, j) = try locate(i); return try f.paddedImage(j) }

    /// The resized image without the padding (h' x w').
    public func validImage(_ i: Int) throws -> RGBImage {
        let (f, j) = try locate(i)
        let full = try f.paddedImage(j)
        let (h, w) = f.validSize(j)
        let S = f.imageSize
        var px = [UInt8](repeating: 0, count: h * w * 3)
        for y in 0..<h {
            for k in 0..<(w * 3) { px[y * w * 3 + k] = full.pixels[y * S * 3 + k] }
        }
        return RGBImage(width: w, height: h, pixels: px)
    }

    /// The CLIP-branch input [3, S, S]: the valid region normalised, zeros elsewhere; bit-identical to
    /// `CLIPImagePreprocessor(size: S)(originalImage)`.
    public func clipTensor(_ i: Int) throws -> CLIPImageInput {
        CLIPImagePreprocessor(size: imageSize).normalizeAndPad(try validImage(i))
    }

    public func validSize(_ i: Int) throws -> (height: Int, width: Int) { let (f, j) = try locate(i); return f.validSize(j) }
    public func originalSize(_ i: Int) throws -> (height: Int, width: Int) { let (f, j) = try locate(i); return f.originalSize(j) }
    public func masks(_ i: Int) throws -> [RLE] { let (f, j) = try locate(i); return try f.masks(j) }
    public func meta(_ i: Int) throws -> ShardSampleMeta { let (f, j) = try locate(i); return try f.meta(j) }
    public func tokens(_ i: Int) throws -> (inputIds: [[Int]], labels: [[Int]]) { let (f, j) = try locate(i); return try f.tokens(j) }
}
