import Foundation
import XCTest
@testable import PixelTensor

/// PyTorch `.bin` reading against files written by torch.save (tools/fixtures/torch_bin.py), plus damaged
/// and hostile files: the fixture's, and ones built here byte by byte.
final class TorchBinTests: CheckpointTestCase {
    override class var fixtureName: String { "torch_bin" }
    override class var fixtureScript: String { "tools/fixtures/torch_bin.py" }
    static var safetensorsDir: String { (dir as NSString).deletingLastPathComponent + "/safetensors" }

    func assertThrows(_ kind: TorchBinError.Kind, _ mentions: [String], file: StaticString = #filePath, line: UInt = #line,
                      _ body: () throws -> Void) {
        assertCheckpointError(kind, mentions, file: file, line: line, body)
    }

    func assertOpenFails(_ path: String, _ kind: TorchBinError.Kind, _ mentions: [String],
                         file: StaticString = #filePath, line: UInt = #line) {
        assertThrows(kind, [path] + mentions, file: file, line: line) { _ = try TorchBinFile(path) }
    }

    // MARK: files written by torch.save

    static let basicNames = ["model.embed_tokens.weight", "layers.0.mlp.bias", "logit_scale", "empty", "wide", "position_ids",
                             "transposed", "shared.base", "shared.rows", "shared.col", "double"]

    func testReadsBasicFilesExactly() throws {
        for (key, dtype) in [("f32", DType.f32), ("f16", .f16), ("bf16", .bf16)] {
            let f = try TorchBinFile(Self.fixture("basic_\(key).bin"))
            XCTAssertEqual(f.names, Self.basicNames, key)
            XCTAssertEqual(f.archivePrefix, "basic_\(key)")
            XCTAssertFalse(f.isLegacyFormat)
            XCTAssertTrue(f.isZip64, "torch 2.x (miniz) always writes the ZIP64 end records")
            XCTAssertEqual(f.ignoredKeys, [])
            try assertBasicTensors(f, key: key, floats: Self.basicNames.filter { $0 != "position_ids" }) { $0 == "double" ? .f64 : dtype }

            // layouts: a transposed view and three views of one storage
            let tr = try f.info("transposed")
            XCTAssertEqual(tr.shape, [5, 3]); XCTAssertEqual(tr.strides, [1, 5]); XCTAssertFalse(tr.isContiguous)
            let base = try f.info("shared.base"), rows = try f.info("shared.rows"), col = try f.info("shared.col")
            XCTAssertEqual(Set([base.storageKey, rows.storageKey, col.storageKey]).count, 1, "one storage")
            XCTAssertEqual(base.storageCount, 24)
            XCTAssertEqual(rows.storageOffset, 6); XCTAssertEqual(rows.shape, [2, 6]); XCTAssertTrue(rows.isContiguous)
            XCTAssertEqual(col.storageOffset, 2); XCTAssertEqual(col.shape, [4]); XCTAssertEqual(col.strides, [6])
            XCTAssertFalse(col.isContiguous)

            XCTAssertEqual(try f.floatTensors().keys.sorted(), Self.basicNames.filter { $0 != "position_ids" }.sorted())
            assertThrows(.unsupportedDType, ["basic_\(key).bin", "position_ids", "ints(_:)"]) { _ = try f.tensor("position_ids") }
            assertThrows(.unsupportedDType, ["basic_\(key).bin", "wide", "integer"]) { _ = try f.ints("wide") }
            assertThrows(.tensorNotFound, ["basic_\(key).bin", "nope"]) { _ = try f.tensor("nope") }
            try f.verifyChecksums()
        }
    }

    func testSameNamesAndValuesAsTheSafetensorsFiles() throws {
        for key in ["f32", "f16", "bf16"] {
            let bin = try TorchBinFile(Self.fixture("basic_\(key).bin"))
            let st = try SafetensorsFile(Self.safetensorsDir + "/basic_\(key).safetensors")
            let common = Set(st.names).intersection(bin.names)
            XCTAssertEqual(common, Set(st.names), "every safetensors tensor is in the .bin")
            for n in common {
                XCTAssertEqual(try bin.info(n).dtype, try st.info(n).dtype, n)
                XCTAssertEqual(try bin.info(n).shape, try st.info(n).shape, n)
                if try st.info(n).dtype == .i64 {
                    XCTAssertEqual(try bin.ints(n), try st.ints(n), n)
                } else {
                    assertBitsEqual(try bin.tensor(n), try st.tensor(n), "\(key) \(n)")
                    XCTAssertEqual(try bin.bf16(n).toTensor().toArray().map(\.bitPattern),
                                   try st.bf16(n).toTensor().toArray().map(\.bitPattern), "\(key) \(n) as bf16")
                }
            }
        }
    }

    func testBF16InPlaceOnlyWhenContiguous() throws {
        let f = try TorchBinFile(Self.fixture("basic_bf16.bin"))
        let mapped = UnsafeRawPointer(f.map.base!)
        let w = try f.bf16("shared.rows")
        XCTAssertTrue(w.owner === f.map, "contiguous bf16 is used in place")
        XCTAssertEqual(w.base, mapped + (try f.info("shared.rows")).storageFileOffset + 2 * 6)
        assertBitsEqual(w.toTensor(), try expected("basic_bf16", "shared.rows"), "bf16 view")
        for n in ["transposed", "shared.col"] {  // gathered into an owned copy, exactly
            let b = try f.bf16(n)
            XCTAssertNil(b.owner, n)
            assertBitsEqual(b.toTensor(), try expected("basic_bf16", n), n)
        }
        // F32 sources are rounded to bf16
        let g = try TorchBinFile(Self.fixture("basic_f32.bin"))
        XCTAssertEqual(try g.bf16("transposed").toTensor().toArray(),
                       try expected("basic_f32", "transposed").toArray().map { Convert.float(bf16: Convert.bf16($0)) })
    }

    func testModuleStateDictWithParametersAndBuffer() throws {
        let f = try TorchBinFile(Self.fixture("module.bin"))
        // the root module's buffers come before the children's parameters, as in torch
        XCTAssertEqual(f.names, ["position_ids", "grid", "proj.weight", "proj.bias", "norm.weight", "norm.bias"])
        for n in f.names.dropFirst() { assertBitsEqual(try f.tensor(n), try expected("module", n), n) }
        let grid = try f.info("grid")
        XCTAssertEqual(grid.strides, [0, 1], "expand() leaves a zero stride")
        XCTAssertEqual(grid.storageCount, 3)
        XCTAssertEqual(try f.tensor("grid").toArray(), [0, 1, 2, 0, 1, 2])
        XCTAssertEqual(try f.info("position_ids").shape, [1, 5])
        XCTAssertEqual(try f.ints("position_ids"), [0, 1, 2, 3, 4])
    }

    func testShardedDirectoryMatchesTheSafetensorsOne() throws {
        let d = try TorchBinDirectory(Self.fixture("sharded"))
        let s = try SafetensorsDirectory(Self.safetensorsDir + "/sharded")
        XCTAssertEqual(d.files.count, 3)
        XCTAssertEqual(d.totalSize, 296)
        XCTAssertEqual(d.names, s.names)
        for n in d.names {
            XCTAssertEqual(try d.info(n).dtype, .bf16)
            assertBitsEqual(try d.tensor(n), try expected("sharded", n), n)
            assertBitsEqual(try d.tensor(n), try s.tensor(n), "\(n) vs safetensors")
        }
        XCTAssertTrue(try d.file(for: "norm.weight").path.hasSuffix("pytorch_model-00003-of-00003.bin"))
        assertThrows(.tensorNotFound, ["pytorch_model.bin.index.json", "missing.weight"]) { _ = try d.tensor("missing.weight") }

        // the same code reads either format
        func checksum(_ w: any WeightSource) throws -> (Int, Double) {
            var sum = 0.0
            for n in w.names where w.contains(n) {
                guard try w.info(n).dtype == .bf16 else { continue }
                sum += try w.tensor(n).toArray().reduce(0) { $0 + Double($1) }
                XCTAssertEqual(try w.bf16(n).shape, try w.info(n).shape)
            }
            return (w.names.count, sum)
        }
        let a = try WeightSources.open(Self.fixture("sharded")), b = try WeightSources.open(Self.safetensorsDir + "/sharded")
        XCTAssertTrue(a is TorchBinDirectory)
        XCTAssertTrue(b is SafetensorsDirectory)
        let (ca, cb) = (try checksum(a), try checksum(b))
        XCTAssertEqual(ca.0, cb.0)
        XCTAssertEqual(ca.1, cb.1)
        XCTAssertEqual(try a.floatTensors().count, 7)
    }

    func testSingleFileDirectory() throws {
        let dir = tmp + "/single"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Self.fixture("module.bin"), toPath: dir + "/pytorch_model.bin")
        let d = try TorchBinDirectory(dir)
        XCTAssertNil(d.indexPath)
        XCTAssertEqual(d.names, ["grid", "norm.bias", "norm.weight", "position_ids", "proj.bias", "proj.weight"])
        XCTAssertEqual(try d.ints("position_ids"), [0, 1, 2, 3, 4])
        XCTAssertTrue(try WeightSources.open(dir) is TorchBinDirectory)
        assertThrows(.missingShard, [tmp, "pytorch_model.bin"]) { _ = try TorchBinDirectory(self.tmp) }
        assertThrows(.missingShard, [tmp, "model.safetensors", "pytorch_model.bin"]) { _ = try WeightSources.open(self.tmp) }
    }

    func testZip64AndOldLayoutAndLegacyFormat() throws {
        let z = try TorchBinFile(Self.fixture("zip64.bin"))
        XCTAssertTrue(z.isZip64)
        XCTAssertEqual(z.names, Self.basicNames)
        for n in Self.basicNames where n != "position_ids" && n != "empty" {
            assertBitsEqual(try z.tensor(n), try expected("basic_f32", n), "zip64 \(n)")
        }
        XCTAssertEqual(try z.ints("position_ids"), [0, 1, 2, 3, 4, 5])
        try z.verifyChecksums()

        // torch 1.x: directory `archive`, no byteorder record, no alignment
        let o = try TorchBinFile(Self.fixture("old_layout.bin"))
        XCTAssertEqual(o.archivePrefix, "archive")
        XCTAssertNotEqual((try o.info("wide")).storageFileOffset % 64, 0)
        for n in Self.basicNames where n != "position_ids" && n != "empty" {
            assertBitsEqual(try o.tensor(n), try expected("basic_f16", n), "old layout \(n)")
        }

        let l = try TorchBinFile(Self.fixture("legacy.bin"))
        XCTAssertTrue(l.isLegacyFormat)
        XCTAssertNil(l.archivePrefix)
        XCTAssertEqual(l.names, ["w", "h", "t", "ids"])
        for n in ["w", "h", "t"] { assertBitsEqual(try l.tensor(n), try expected("legacy", n), "legacy \(n)") }
        XCTAssertEqual(try l.info("t").strides, [1, 2])
        XCTAssertEqual(try l.info("h").dtype, .f16)
        XCTAssertEqual(try l.ints("ids"), [0, 1, 2])
    }

    // MARK: building archives here

    /// A STORED zip: ZIP64 structures throughout when `zip64`, and a sparse hole of `gap` bytes after the
    /// first entry (the layout of tools/fixtures/torch_bin.py's `write_zip`, without alignment).
    func writeZip(_ path: String, _ entries: [(String, [UInt8])], zip64: Bool = false, gap: Int = 0,
                  method: UInt16 = 0) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        var pos = 0
        func put(_ b: [UInt8]) { b.withUnsafeBytes { XCTAssertEqual(write(fd, $0.baseAddress, $0.count), b.count) }; pos += b.count }
        func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
        var central: [UInt8] = []
        for (i, (name, data)) in entries.enumerated() {
            if i == 1 && gap > 0 { pos = Int(lseek(fd, off_t(gap), SEEK_CUR)) }
            let off = pos
            let crc = data.withUnsafeBytes { CRC32.checksum($0) }
            let nb = Array(name.utf8)
            let s32 = zip64 ? UInt32.max : UInt32(data.count)
            let extra: [UInt8] = zip64 ? le(UInt16(1)) + le(UInt16(16)) + le(UInt64(data.count)) + le(UInt64(data.count)) : []
            put(le(UInt32(0x0403_4B50)) + le(UInt16(45)) + le(UInt16(0)) + le(method) + le(UInt16(0)) + le(UInt16(0x21)) + le(crc)
                + le(s32) + le(s32) + le(UInt16(nb.count)) + le(UInt16(extra.count)) + nb + extra + data)
            let cextra: [UInt8] = zip64 ? le(UInt16(1)) + le(UInt16(24)) + le(UInt64(data.count)) + le(UInt64(data.count)) + le(UInt64(off)) : []
            central += le(UInt32(0x0201_4B50)) + le(UInt16(45)) + le(UInt16(45)) + le(UInt16(0)) + le(method) + le(UInt16(0))
                + le(UInt16(0x21)) + le(crc) + le(s32) + le(s32) + le(UInt16(nb.count)) + le(UInt16(cextra.count))
                + le(UInt16(0)) + le(UInt16(0)) + le(UInt16(0)) + le(UInt32(0)) + le(zip64 ? UInt32.max : UInt32(off)) + nb + cextra
        }
        let cdOff = pos
        put(central)
        let n = UInt64(entries.count)
        if zip64 {
            let r = pos
            put(le(UInt32(0x0606_4B50)) + le(UInt64(44)) + le(UInt16(45)) + le(UInt16(45)) + le(UInt32(0)) + le(UInt32(0))
                + le(n) + le(n) + le(UInt64(central.count)) + le(UInt64(cdOff)))
            put(le(UInt32(0x0706_4B50)) + le(UInt32(0)) + le(UInt64(r)) + le(UInt32(1)))
            put(le(UInt32(0x0605_4B50)) + le(UInt16(0)) + le(UInt16(0)) + le(UInt16.max) + le(UInt16.max) + le(UInt32.max) + le(UInt32.max) + le(UInt16(0)))
        } else {
            put(le(UInt32(0x0605_4B50)) + le(UInt16(0)) + le(UInt16(0)) + le(UInt16(n)) + le(UInt16(n)) + le(UInt32(central.count))
                + le(UInt32(cdOff)) + le(UInt16(0)))
        }
    }

    /// The entries of a fixture archive.
    func entries(_ fixture: String) throws -> [(String, [UInt8])] {
        let path = Self.fixture(fixture)
        let z = try ZipArchive(map: try MappedFile(path: path), path: path)
        return try z.entries.map { ($0.name, Array(try z.storedBytes($0))) }
    }

    func bytes(_ fixture: String) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: Self.fixture(fixture)))) }

    func save(_ name: String, _ b: [UInt8]) -> String {
        let p = tmp + "/" + name
        FileManager.default.createFile(atPath: p, contents: Data(b))
        return p
    }

    /// A torch zip layout around a hand-made data.pkl.
    func pickleFile(_ name: String, _ pkl: [UInt8]) throws -> String {
        let p = tmp + "/" + name
        try writeZip(p, [("x/data.pkl", pkl), ("x/byteorder", Array("little".utf8))])
        return p
    }

    func testReadsAnArchiveLargerThan4GB() throws {
        let path = tmp + "/big.bin"
        try writeZip(path, try entries("basic_f32.bin"), zip64: true, gap: (1 << 32) + 12345)
        var st = stat()
        XCTAssertEqual(stat(path, &st), 0)
        XCTAssertGreaterThan(Int(st.st_size), 1 << 32)
        XCTAssertLessThan(Int(st.st_blocks) * 512, 1 << 24, "the hole must stay sparse")
        let f = try TorchBinFile(path)
        XCTAssertTrue(f.isZip64)
        for n in Self.basicNames where n != "position_ids" && n != "empty" {
            XCTAssertGreaterThan(try f.info(n).storageFileOffset, 1 << 32, n)
            assertBitsEqual(try f.tensor(n), try expected("basic_f32", n), "> 4 GB \(n)")
        }
        XCTAssertEqual(try f.ints("position_ids"), [0, 1, 2, 3, 4, 5])
        try f.verifyChecksums()
    }

    // MARK: hostile pickles

    func testRefusesGlobalsOtherThanTensorData() throws {
        for (file, global) in [("evil_system.bin", "os.system"), ("evil_eval.bin", "builtins.eval"), ("evil_class.bin", "__main__.Payload")] {
            let p = Self.fixture(file)
            assertOpenFails(p, .refusedGlobal, ["\(file): refusing pickle global \(global) (only plain tensor data is allowed)"])
        }
        // STACK_GLOBAL (protocol 4) and numpy's reconstruct are refused alike
        let sg: [UInt8] = [0x80, 4, 0x8C, 2] + Array("os".utf8) + [0x8C, 6] + Array("system".utf8) + [0x93, 0x29, 0x52, 0x2E]
        assertOpenFails(try pickleFile("sg.bin", sg), .refusedGlobal, ["os.system"])
        let np = [0x80, 2, 0x63] + Array("numpy.core.multiarray\n_reconstruct\n".utf8) + [0x29, 0x52, 0x2E]
        assertOpenFails(try pickleFile("np.bin", np), .refusedGlobal, ["numpy.core.multiarray._reconstruct"])
        // allowed globals used the wrong way
        let callStorage = [0x80, 2, 0x63] + Array("torch\nFloatStorage\n".utf8) + [0x29, 0x52, 0x2E]
        assertOpenFails(try pickleFile("cs.bin", callStorage), .unsupportedObject, ["torch.FloatStorage", "persistent ids"])
        let newTensor = [0x80, 2, 0x63] + Array("torch._utils\n_rebuild_tensor_v2\n".utf8) + [0x29, 0x81, 0x2E]
        assertOpenFails(try pickleFile("nt.bin", newTensor), .unsupportedObject, ["instantiating torch._utils._rebuild_tensor_v2"])
        let badPID: [UInt8] = [0x80, 2, 0x8C, 6] + Array("module".utf8) + [0x85, 0x51, 0x2E]
        assertOpenFails(try pickleFile("pid.bin", badPID), .unsupportedObject, ["persistent id 'module'"])
        let notDict: [UInt8] = [0x80, 2, 0x5D, 0x2E]
        assertOpenFails(try pickleFile("list.bin", notDict), .unsupportedObject, ["holds a list, not a dict of tensors"])
    }

    func testDeepCyclicAndExponentialPicklesAreFreedSafely() throws {
        // 300,000 nested tuples: refused at depth 1,000 while the machine runs (walking or freeing such a
        // structure recursively would overflow the stack)
        var deep: [UInt8] = [0x80, 2, 0x29]
        deep += [UInt8](repeating: 0x85, count: 300_000)
        deep.append(0x2E)
        assertOpenFails(try pickleFile("deep.bin", deep), .pickle, ["nested deeper than 1000"])
        // 999 levels are still plain data (refused only for not being a dict of tensors)
        var nested: [UInt8] = [0x80, 2, 0x29]
        nested += [UInt8](repeating: 0x85, count: 998)
        nested.append(0x2E)
        assertOpenFails(try pickleFile("nested.bin", nested), .unsupportedObject, ["holds a tuple of 1"])
        // a list containing itself
        let cycle: [UInt8] = [0x80, 2, 0x5D, 0x71, 0, 0x68, 0, 0x61, 0x2E]
        assertOpenFails(try pickleFile("cycle.bin", cycle), .unsupportedObject, ["holds a list"])
        // t(k+1) = (t(k), t(k)) 200 times: 2^200 paths, 201 objects
        var dag: [UInt8] = [0x80, 2, 0x29]
        for _ in 0..<200 { dag += [0x71, 0, 0x68, 0, 0x86] }
        dag.append(0x2E)
        assertOpenFails(try pickleFile("dag.bin", dag), .unsupportedObject, ["holds a tuple of 2"])
    }

    func testBadPickles() throws {
        assertOpenFails(Self.fixture("bad_opcode.bin"), .pickle, ["bad_opcode.bin", "basic_f32/data.pkl", "unknown pickle opcode 0xff", "byte 2"])
        let text: [UInt8] = [0x80, 2, 0x49] + Array("1\n".utf8) + [0x2E]  // protocol 0 INT
        assertOpenFails(try pickleFile("int.bin", text), .pickle, ["opcode INT (0x49) is not supported"])
        assertOpenFails(try pickleFile("nostop.bin", [0x80, 2, 0x7D]), .pickle, ["ends without STOP"])
        assertOpenFails(try pickleFile("short.bin", [0x80, 2, 0x58, 9, 0, 0, 0, 0x61]), .pickle, ["runs past the end of the pickle"])
        assertOpenFails(try pickleFile("memo.bin", [0x80, 2, 0x68, 7, 0x2E]), .pickle, ["memo entry 7"])
        assertOpenFails(try pickleFile("under.bin", [0x80, 2, 0x73, 0x2E]), .pickle, ["stack underflow"])
        assertOpenFails(try pickleFile("proto.bin", [0x80, 9, 0x7D, 0x2E]), .pickle, ["protocol 9"])
        assertOpenFails(try pickleFile("utf8.bin", [0x80, 2, 0x8C, 2, 0xC3, 0x28, 0x2E]), .pickle, ["UTF-8"])
    }

    // MARK: damaged archives

    func testDamagedArchives() throws {
        assertOpenFails(Self.fixture("deflated.bin"), .compressedEntry,
                        ["deflated.bin", "basic_f32/data/0", "compressed entry not supported", "DEFLATE"])
        assertOpenFails(Self.fixture("bigendian.bin"), .bigEndian, ["bigendian.bin", "big-endian"])
        assertOpenFails(Self.fixture("missing_data.bin"), .missingEntry,
                        ["missing_data.bin", "basic_f32/data/1", "missing zip entry", "tensor 'layers.0.mlp.bias'"])

        let full = try bytes("basic_f32.bin")
        assertOpenFails(save("empty.bin", []), .truncated, ["empty"])
        assertOpenFails(save("tiny.bin", Array(full.prefix(12))), .truncated, ["12 bytes, fewer than an end-of-central-directory record"])
        assertOpenFails(save("cut_tail.bin", Array(full.prefix(full.count - 10))), .truncated, ["end-of-central-directory"])
        assertOpenFails(save("cut_half.bin", Array(full.prefix(full.count / 2))), .truncated, ["end-of-central-directory"])
        assertOpenFails(save("pk.bin", Array(full.prefix(30))), .truncated, ["no end-of-central-directory record"])
        // the end record kept, the middle of the file gone: local headers and data are missing
        let z = try ZipArchive(map: try MappedFile(path: Self.fixture("basic_f32.bin")), path: "")
        let last = z.entries.map(\.localHeaderOffset).max()!
        let cdStart = z.entries.map { $0.dataOffset + $0.size }.max()!
        var shifted = Array(full.prefix(last - 100))
        shifted += full[cdStart...]
        assertOpenFails(save("holed.bin", shifted), .truncated, ["truncated or damaged"])

        // a flipped byte in data.pkl fails its CRC; one in a storage fails verifyChecksums()
        let pkl = z.entry("basic_f32/data.pkl")!
        var bad = full
        bad[pkl.dataOffset + 40] ^= 0x20
        assertOpenFails(save("crc.bin", bad), .checksum, ["basic_f32/data.pkl", "CRC-32 mismatch"])
        var badData = full
        badData[z.entry("basic_f32/data/0")!.dataOffset] ^= 1
        let f = try TorchBinFile(save("crc_data.bin", badData))
        assertThrows(.checksum, ["crc_data.bin", "basic_f32/data/0"]) { try f.verifyChecksums() }

        // a storage shorter than its tensors need
        var ents = try entries("basic_f32.bin")
        let i = ents.firstIndex { $0.0 == "basic_f32/data/0" }!
        ents[i].1.removeLast(4)
        let short = tmp + "/short_storage.bin"
        try writeZip(short, ents)
        assertOpenFails(short, .invalidTensor, ["basic_f32/data/0", "bytes"])

        // not checkpoints at all
        assertOpenFails(Self.safetensorsDir + "/basic_f32.safetensors", .notCheckpoint, ["not a PyTorch checkpoint", "safetensors"])
        assertOpenFails(save("text.bin", Array("hello world, this is text".utf8)), .notCheckpoint, ["68 65 6c 6c"])
        assertOpenFails(tmp + "/absent.bin", .io, ["cannot open"])
        let noPkl = tmp + "/nopkl.bin"
        try writeZip(noPkl, [("m/constants.pkl", [0x80, 2, 0x29, 0x2E]), ("m/code/m.py", [])])
        assertOpenFails(noPkl, .missingEntry, ["data.pkl", "TorchScript"])

        // a legacy stream cut inside its storages
        let legacy = try bytes("legacy.bin")
        assertOpenFails(save("legacy_cut.bin", Array(legacy.prefix(legacy.count - 3))), .truncated, ["legacy_cut.bin", "truncated"])
    }

    func testDirectoryChecks() throws {
        let src = Self.fixture("sharded")
        func copy(_ name: String) throws -> String {
            let d = tmp + "/" + name
            try FileManager.default.copyItem(atPath: src, toPath: d)
            return d
        }
        let missing = try copy("missing")
        try FileManager.default.removeItem(atPath: missing + "/pytorch_model-00002-of-00003.bin")
        assertThrows(.missingShard, ["pytorch_model.bin.index.json", "pytorch_model-00002-of-00003.bin", "does not exist"]) {
            _ = try TorchBinDirectory(missing)
        }
        let wrong = try copy("wrong")
        let idx = wrong + "/pytorch_model.bin.index.json"
        var text = try String(contentsOfFile: idx, encoding: .utf8)
        text = text.replacingOccurrences(of: "\"norm.weight\": \"pytorch_model-00003-of-00003.bin\"",
                                         with: "\"norm.weight\": \"pytorch_model-00001-of-00003.bin\"")
        try text.write(toFile: idx, atomically: true, encoding: .utf8)
        assertThrows(.invalidIndex, ["norm.weight", "pytorch_model-00001-of-00003.bin", "does not contain it"]) { _ = try TorchBinDirectory(wrong) }
        let dup = try copy("dup")
        try FileManager.default.removeItem(atPath: dup + "/pytorch_model-00001-of-00003.bin")
        try FileManager.default.copyItem(atPath: dup + "/pytorch_model-00002-of-00003.bin", toPath: dup + "/pytorch_model-00001-of-00003.bin")
        assertThrows(.invalidIndex, ["pytorch_model-00001-of-00003.bin"]) { _ = try TorchBinDirectory(dup) }
        let badJSON = try copy("badjson")
        try "{\"weight_map\": {".write(toFile: badJSON + "/pytorch_model.bin.index.json", atomically: true, encoding: .utf8)
        assertThrows(.invalidJSON, ["pytorch_model.bin.index.json", "not valid JSON"]) { _ = try TorchBinDirectory(badJSON) }
    }

    /// One-off load speed: PIXELLM_TORCHBIN_BENCH=<a large f32 .bin> swift test -c release --filter testLoadSpeed
    func testLoadSpeed() throws {
        guard let path = ProcessInfo.processInfo.environment["PIXELLM_TORCHBIN_BENCH"] else { throw XCTSkip("set PIXELLM_TORCHBIN_BENCH") }
        let t0 = Date()
        let f = try TorchBinFile(path)
        var bytes = 0
        for n in f.names { bytes += try f.tensor(n).count * 4 }
        let s = Date().timeIntervalSince(t0)
        print(String(format: "torch .bin load: %d tensors, %.1f MB in %.3f s = %.2f GB/s", f.names.count, Double(bytes) / 1e6, s, Double(bytes) / s / 1e9))
    }
}
