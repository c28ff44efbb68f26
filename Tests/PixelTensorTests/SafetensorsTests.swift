import Foundation
import XCTest
@testable import PixelTensor

/// safetensors reading and writing against files written by the official Python writers
/// (tools/fixtures/safetensors_files.py), plus malformed files built here byte by byte.
final class SafetensorsTests: CheckpointTestCase {
    override class var fixtureName: String { "safetensors" }
    override class var fixtureScript: String { "tools/fixtures/safetensors_files.py" }

    // MARK: reading official files

    func testReadsFilesWrittenBySaveFileExactly() throws {
        let floats = ["model.embed_tokens.weight", "layers.0.mlp.bias", "logit_scale", "empty", "wide"]
        for (key, dtype) in [("f32", DType.f32), ("f16", .f16), ("bf16", .bf16)] {
            let f = try SafetensorsFile(Self.fixture("basic_\(key).safetensors"))
            XCTAssertEqual(Set(f.names), Set(floats + ["position_ids"]), key)
            XCTAssertEqual(f.metadata, ["format": "pt"], key)
            XCTAssertEqual(f.dataOffset % 8, 0, "the official writer pads the header")
            try assertBasicTensors(f, key: key, floats: floats) { _ in dtype }
            XCTAssertEqual(try f.floatTensors().keys.sorted(), floats.sorted())
            assertThrows(.unsupportedDType, ["basic_\(key).safetensors", "position_ids", "ints(_:)"]) { _ = try f.tensor("position_ids") }
            assertThrows(.tensorNotFound, ["basic_\(key).safetensors", "nope"]) { _ = try f.tensor("nope") }
        }
    }

    func testReadsUnpaddedHeaderWithUnalignedData() throws {
        let path = Self.fixture("unaligned.safetensors")
        let f = try SafetensorsFile(path)
        XCTAssertEqual(f.dataOffset % 2, 1, "fixture must put the data at an odd offset")
        XCTAssertEqual(f.names, ["w", "h", "b", "ids"])
        for n in ["w", "h", "b"] { assertBitsEqual(try f.tensor(n), try expected("unaligned", n), n) }
        XCTAssertEqual(try f.ints("ids"), [3, -1, 7])
        let w = try f.bf16("w")
        XCTAssertEqual(Int(bitPattern: w.base) % 2, 1, "BF16 data is used in place, unaligned")
        XCTAssertTrue(w.owner != nil)
        assertBitsEqual(w.toTensor(), try expected("unaligned", "w"), "bf16 view")
        // F32 and F16 sources are rounded to bf16
        let hb = try f.bf16("h").toTensor().toArray()
        XCTAssertEqual(hb, try expected("unaligned", "h").toArray().map { Convert.float(bf16: Convert.bf16($0)) })
    }

    func testReadsShardedCheckpointWrittenByHuggingFace() throws {
        let d = try SafetensorsDirectory(Self.fixture("sharded"))
        XCTAssertEqual(d.files.count, 3)
        XCTAssertEqual(d.totalSize, 296)
        XCTAssertEqual(d.names.count, 7)
        for n in d.names {
            XCTAssertEqual(try d.info(n).dtype, .bf16)
            assertBitsEqual(try d.tensor(n), try expected("sharded", n), n)
        }
        XCTAssertTrue(try d.file(for: "norm.weight").path.hasSuffix("model-00003-of-00003.safetensors"))
        assertThrows(.tensorNotFound, ["model.safetensors.index.json", "missing.weight"]) { _ = try d.tensor("missing.weight") }
    }

    // MARK: writing

    static func writerReference() -> [String: Tensor] {
        [
            "alpha": Tensor((0..<6).map { Float($0) * 0.5 - 1.25 }, shape: [2, 3]),
            "beta.weight": Tensor([1, -2, 0.375, 1024], shape: [4]),
            "gamma": Tensor(scalar: 3.5),
            "delta": Tensor.zeros([0, 2]),
        ]
    }

    func testWriterBytesMatchThePythonWriter() throws {
        let meta: [String: [String: String]?] = ["f32": ["format": "pt"], "f16": nil, "bf16": ["format": "pt"]]
        for (key, dtype) in [("f32", DType.f32), ("f16", .f16), ("bf16", .bf16)] {
            let out = tmp + "/ref_\(key).safetensors"
            try Safetensors.write(Self.writerReference(), to: out, dtype: dtype, metadata: meta[key]!)
            let mine = try Data(contentsOf: URL(fileURLWithPath: out))
            let theirs = try Data(contentsOf: URL(fileURLWithPath: Self.fixture("writer_ref_\(key).safetensors")))
            XCTAssertEqual(mine, theirs, "\(key): our bytes differ from safetensors.torch.save_file's")
        }
    }

    func testRoundTripInEveryDType() throws {
        var rng = RNG(seed: 7)
        let tensors: [String: Tensor] = [
            "a.weight": Tensor.randn([3, 17], std: 3, rng: &rng),
            "scalar": Tensor(scalar: -0.0),
            "empty": Tensor.zeros([2, 0, 4]),
            "quote\"and\\back\nslash é 🙂": Tensor.randn([5], rng: &rng),
            "strided": Tensor.randn([4, 3], rng: &rng).transpose(0, 1),
        ]
        let meta = ["format": "pt", "note": "tab\there \"quoted\""]
        for dtype in [DType.f32, .f16, .bf16] {
            let path = tmp + "/rt_\(dtype.name).safetensors"
            try Safetensors.write(tensors, to: path, dtype: dtype, metadata: meta)
            let f = try SafetensorsFile(path)
            XCTAssertEqual(f.metadata, meta)
            XCTAssertEqual(f.dataOffset % 8, 0)
            XCTAssertEqual(Set(f.names), Set(tensors.keys))
            for (n, t) in tensors {
                XCTAssertEqual(try f.info(n).dtype, dtype)
                let want: [Float]
                switch dtype {
                case .f16: want = t.toArray().map { Float(Float16($0)) }
                case .bf16: want = t.toArray().map { Convert.float(bf16: Convert.bf16($0)) }
                default: want = t.toArray()
                }
                let got = try f.tensor(n)
                XCTAssertEqual(got.shape, t.shape, n)
                XCTAssertEqual(got.toArray().map(\.bitPattern), want.map(\.bitPattern), "\(dtype.name) \(n)")
            }
        }
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: tmp).filter { $0.contains(".tmp-") }
        XCTAssertEqual(leftovers, [])
    }

    func testShardedWriterAndDirectoryReader() throws {
        var rng = RNG(seed: 3)
        var tensors: [String: Tensor] = [:]
        for i in 0..<5 { tensors["layers.\(i).weight"] = Tensor.randn([4, 8], rng: &rng) }  // 64 bytes each in bf16
        tensors["big"] = Tensor.randn([100], rng: &rng)  // 200 bytes: larger than a shard, gets its own
        let d = tmp + "/ckpt"
        let written = try Safetensors.writeSharded(tensors, to: d, maxShardBytes: 130, dtype: .bf16)
        // name order: big | layers.0 layers.1 | layers.2 layers.3 | layers.4
        XCTAssertEqual(written, (1...4).map { Safetensors.shardName($0, of: 4) } + [Safetensors.indexName])
        XCTAssertEqual(Safetensors.shardName(1, of: 4), "model-00001-of-00004.safetensors")
        let index = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: d + "/" + Safetensors.indexName))) as! [String: Any]
        XCTAssertEqual((index["metadata"] as! [String: Any])["total_size"] as? Int, 5 * 64 + 200)
        let wm = index["weight_map"] as! [String: String]
        XCTAssertEqual(wm["big"], "model-00001-of-00004.safetensors")
        XCTAssertEqual(wm["layers.4.weight"], "model-00004-of-00004.safetensors")
        let r = try SafetensorsDirectory(d)
        XCTAssertEqual(r.files.count, 4)
        XCTAssertEqual(r.names, tensors.keys.sorted())
        for (n, t) in tensors {
            XCTAssertEqual(try r.tensor(n).toArray(), t.toArray().map { Convert.float(bf16: Convert.bf16($0)) }, n)
        }
        // saving again in one shard replaces the old checkpoint completely
        XCTAssertEqual(try Safetensors.writeSharded(tensors, to: d, maxShardBytes: 1 << 20), [Safetensors.singleName])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: d), [Safetensors.singleName])
        let single = try SafetensorsDirectory(d)
        XCTAssertNil(single.indexPath)
        XCTAssertEqual(single.files[0].metadata, ["format": "pt"])
        for (n, t) in tensors { assertBitsEqual(try single.tensor(n), t, n) }
    }

    func testFailedWriteLeavesNothingBehind() throws {
        let target = tmp + "/adir"  // a directory: the final rename fails after the data was written
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: false)
        assertThrows(.io, ["adir", "rename"]) { try Safetensors.write(["x": Tensor.ones([3])], to: target) }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: tmp), ["adir"])
        // an existing file is untouched by a refused write
        let good = tmp + "/good.safetensors"
        try Safetensors.write(["x": Tensor.ones([3])], to: good)
        let before = try Data(contentsOf: URL(fileURLWithPath: good))
        assertThrows(.unsupportedDType, ["good.safetensors", "I64"]) { try Safetensors.write(["x": Tensor.ones([2])], to: good, dtype: .i64) }
        assertThrows(.invalidName, ["__metadata__"]) { try Safetensors.write(["__metadata__": Tensor.ones([2])], to: good) }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: good)), before)
    }

    // MARK: conversions

    func testBF16AndF16RoundingMatchesTorch() throws {
        let x = try TensorFile.read(Self.expectedPath, name: "rounding/input").toArray()
        let bf = try TensorFile.readInts(Self.expectedPath, name: "rounding/bf16_bits").values.map { UInt16($0) }
        let hf = try TensorFile.readInts(Self.expectedPath, name: "rounding/f16_bits").values.map { UInt16($0) }
        XCTAssertEqual(x.count, bf.count)
        var bulkB = [UInt16](repeating: 0, count: x.count), bulkH = bulkB
        x.withUnsafeBufferPointer { src in
            bulkB.withUnsafeMutableBytes { Convert.f32ToBF16(src.baseAddress!, $0.baseAddress!, count: x.count) }
            bulkH.withUnsafeMutableBytes { Convert.f32ToF16(src.baseAddress!, $0.baseAddress!, count: x.count) }
        }
        var nans = 0
        for i in 0..<x.count {
            let mine = Convert.bf16(x[i])
            XCTAssertEqual(bulkB[i], mine)
            XCTAssertEqual(bulkH[i], Convert.f16(x[i]))
            if x[i].isNaN {
                nans += 1
                XCTAssertTrue(Convert.float(bf16: mine).isNaN && Convert.float(bf16: bf[i]).isNaN, "NaN at \(i)")
                XCTAssertTrue(Convert.float(f16: Convert.f16(x[i])).isNaN && Convert.float(f16: hf[i]).isNaN, "NaN at \(i)")
            } else {
                XCTAssertEqual(mine, bf[i], "bf16 of \(x[i]) (bits \(String(x[i].bitPattern, radix: 16)))")
                XCTAssertEqual(Convert.f16(x[i]), hf[i], "f16 of \(x[i])")
            }
        }
        XCTAssertEqual(nans, 4)
    }

    func testHalfToFloatIsExactForEveryBitPattern() {
        var halves = [UInt8](repeating: 0, count: 2 * 65536 + 1)  // +1: read from an odd address
        for b in 0..<65536 { halves[1 + 2 * b] = UInt8(b & 0xFF); halves[2 + 2 * b] = UInt8(b >> 8) }
        var f16 = [Float](repeating: 0, count: 65536), bf16 = f16
        halves.withUnsafeBytes { raw in
            Convert.f16ToF32(raw.baseAddress! + 1, &f16, count: 65536)
            Convert.bf16ToF32(raw.baseAddress! + 1, &bf16, count: 65536)
        }
        for b in 0..<65536 {
            let bits = UInt16(b)
            let ref = Float(Float16(bitPattern: bits))
            if ref.isNaN {
                XCTAssertTrue(f16[b].isNaN, "f16 \(b)")
            } else {
                XCTAssertEqual(f16[b].bitPattern, ref.bitPattern, "f16 bits \(String(b, radix: 16))")
                XCTAssertEqual(Convert.f16(f16[b]), bits, "f16 round trip \(String(b, radix: 16))")
            }
            XCTAssertEqual(bf16[b].bitPattern, UInt32(bits) << 16)
            XCTAssertEqual(Convert.float(f16: bits).bitPattern, f16[b].bitPattern)
            if !bf16[b].isNaN { XCTAssertEqual(Convert.bf16(bf16[b]), bits, "bf16 round trip \(b)") }
        }
    }

    func testLinearBF16MatchesTheConvertedMatrix() {
        let x = rand([2, 3, 37], seed: 1, grad: false)
        let w = BF16Matrix(rand([70, 37], seed: 2, grad: false))
        let bias = rand([70], seed: 3, grad: false)
        let full = w.toTensor()
        for tile in [nil, 1, 8, 70, 500] as [Int?] {
            assertClose(linearBF16(x: x, w: w, bias: bias, tileRows: tile), linear(x, full, bias), tol: 1e-6, "tile \(tile ?? 0)")
            assertClose(linearBF16(x: x, w: w, tileRows: tile), linear(x, full), tol: 1e-6, "no bias, tile \(tile ?? 0)")
        }
        let v = rand([37], seed: 4, grad: false)
        assertClose(linearBF16(x: v, w: w, bias: bias), linear(v, full, bias), tol: 1e-6, "vector input")
        XCTAssertEqual(linearBF16(x: Tensor.zeros([0, 37]), w: w).shape, [0, 70])
    }

    /// Every bf16 kernel the CPU can run (the widening GEMV at each instruction set, the tile conversion) gives the
    /// fp32 product of the rounded weights, up to summation order: 1 to 7 input rows (the GEMV), 8 and more (SGEMM),
    /// odd sizes (tails of the vector loops, an odd number of output rows), with and without bias.
    func testBF16KernelsAgree() {
        let saved = BF16Kernel.current
        defer { BF16Kernel.current = saved }
        var kernels: [BF16Kernel] = [.convert, .gemv(isa: 0)]
        if case .gemv(let best) = BF16Kernel.best { for isa in 1...max(1, best) where isa <= best { kernels.append(.gemv(isa: isa)) } }
        print("bf16 kernels tested: \(kernels.map(\.name)); this CPU's best: \(BF16Kernel.best.name)")
        for (outF, inF) in [(70, 37), (33, 4096), (5, 1)] {
            let w = BF16Matrix(rand([outF, inF], seed: 2, grad: false))
            let full = w.toTensor(), bias = rand([outF], seed: 3, grad: false)
            for rows in [1, 3, 7, 8, 11] {
                let x = rand([rows, inF], seed: UInt64(rows), grad: false)
                let want = linear(x, full, bias), wantNoBias = linear(x, full)
                for k in kernels {
                    BF16Kernel.current = k
                    assertClose(linearBF16(x: x, w: w, bias: bias), want, tol: 1e-5, "\(k.name) \(rows)x\(inF)->\(outF)")
                    assertClose(linearBF16(x: x, w: w), wantNoBias, tol: 1e-5, "\(k.name) no bias \(rows)x\(inF)->\(outF)")
                }
            }
        }
    }

    /// The AVX-512 BF16 dot-product path for 8 rows and more (inference): equal, up to fp32 summation order, to the
    /// fp32 product of the bf16-rounded inputs and weights computed in Double, and within bf16 rounding of the
    /// input of the tile-conversion path; odd K (the last pair half empty), K past one packed block (256 pairs),
    /// output columns off the 32-wide panels, row counts off the 12-row micro-kernel, with and without bias; a
    /// product whose gradient is recorded keeps the conversion path's fp32 input exactly.
    func testDotBF16PrefillMatchesTheRoundedProduct() throws {
        guard BF16PrefillKernel.available else {
            throw XCTSkip("this CPU has no AVX-512 BF16 (the bf16 dot-product path cannot run here)")
        }
        let saved = BF16PrefillKernel.current
        defer { BF16PrefillKernel.current = saved }
        for (outF, inF) in [(70, 37), (45, 601), (32, 2), (33, 1)] {
            let w = BF16Matrix(rand([outF, inF], seed: 2, grad: false))
            let wf = w.toTensor(), bias = rand([outF], seed: 3, grad: false)
            for rows in [8, 12, 13, 25] {
                let x = rand([rows, inF], seed: UInt64(rows), grad: false)
                let xr = BF16Tensor(x).toTensor()
                BF16PrefillKernel.current = .convert
                let conv = Autograd.noGrad { linearBF16(x: x, w: w, bias: bias) }
                BF16PrefillKernel.current = .dotBF16
                let dot = Autograd.noGrad { linearBF16(x: x, w: w, bias: bias) }
                let dotNoBias = Autograd.noGrad { linearBF16(x: x, w: w) }
                XCTAssertEqual(dot.shape, [rows, outF])
                let xa = x.contiguousData().toArray(), xra = xr.contiguousData().toArray(), wa = wf.contiguousData().toArray()
                let da = dot.contiguousData().toArray(), dna = dotNoBias.contiguousData().toArray()
                let ca = conv.contiguousData().toArray(), ba = bias.contiguousData().toArray()
                for r in 0..<rows {
                    for o in 0..<outF {
                        var exact = 0.0, magnitude = 0.0, magnitudeFP32 = 0.0
                        for k in 0..<inF {
                            exact += Double(xra[r * inF + k]) * Double(wa[o * inF + k])
                            magnitude += abs(Double(xra[r * inF + k]) * Double(wa[o * inF + k]))
                            magnitudeFP32 += abs(Double(xa[r * inF + k]) * Double(wa[o * inF + k]))
                        }
                        let tag = "\(rows)x\(inF)->\(outF) at [\(r), \(o)]"
                        XCTAssertEqual(Double(dna[r * outF + o]), exact, accuracy: 1e-6 * magnitude + 1e-7, tag)
                        XCTAssertEqual(Double(da[r * outF + o]), exact + Double(ba[o]), accuracy: 1e-6 * magnitude + 1e-6, "bias " + tag)
                        // the input rounded to bf16 (8 significant bits, nearest) moves each term by at most 2^-8 of itself
                        XCTAssertEqual(da[r * outF + o], ca[r * outF + o], accuracy: Float(magnitudeFP32 / 256 + 1e-5), "against convert " + tag)
                    }
                }
                // with a gradient recorded the fp32 input is kept: the conversion path's numbers exactly
                let xg = rand([rows, inF], seed: UInt64(rows), grad: true)
                let recorded = linearBF16(x: xg, w: w, bias: bias)
                XCTAssertEqual(recorded.contiguousData().toArray(), conv.contiguousData().toArray(), "recorded \(rows)x\(inF)->\(outF)")
            }
        }
    }

    /// A frozen bf16 weight inside a trained model: the input's and the bias's gradients equal those of the fp32
    /// layer on the bf16-rounded weight, at every tile size; a weight read from a mapped bf16 file is used in place.
    func testLinearBF16BackwardMatchesTheConvertedMatrix() throws {
        let w = BF16Matrix(rand([70, 37], seed: 2, grad: false))
        let full = w.toTensor()
        for tile in [nil, 1, 8, 70, 500] as [Int?] {
            for shape in [[2, 3, 37], [37]] {
                let x1 = rand(shape, seed: 1, grad: true), b1 = rand([70], seed: 3, grad: true)
                let x2 = rand(shape, seed: 1, grad: true), b2 = rand([70], seed: 3, grad: true)
                let up = rand(Array(shape.dropLast()) + [70], seed: 5, grad: false)
                (linearBF16(x: x1, w: w, bias: b1, tileRows: tile) * up).sum().backward()
                (linear(x2, full, b2) * up).sum().backward()
                assertClose(x1.grad!, x2.grad!, tol: 1e-6, "input gradient, tile \(tile ?? 0), \(shape)")
                assertClose(b1.grad!, b2.grad!, tol: 1e-6, "bias gradient, tile \(tile ?? 0), \(shape)")
            }
        }
        // the weight straight from a bf16 file (a view into the mapping, not a copy)
        let dir = NSTemporaryDirectory() + "pixellm-bf16-backward-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Safetensors.write(["w": full], to: dir + "/w.safetensors", dtype: .bf16)
        let file = try SafetensorsFile(dir + "/w.safetensors")
        let mapped = try file.bf16("w")
        XCTAssertNotNil(mapped.owner, "bf16 data is used in place")
        let x1 = rand([4, 37], seed: 6, grad: true), x2 = rand([4, 37], seed: 6, grad: true)
        linearBF16(x: x1, w: mapped).sum().backward()
        linear(x2, full).sum().backward()
        assertClose(x1.grad!, x2.grad!, tol: 1e-6, "mapped weight")
    }

    /// A mapped file truncated, rewritten in place or touched under the process is named by `MappedFiles.verifyAll()`
    /// (with what changed); a file replaced by rename is no change (the mapping keeps the old bytes), and a mapping
    /// whose last user is gone is no longer checked.
    func testChangedMappedFilesAreNamed() throws {
        let path = tmp + "/mapped.safetensors"
        try Safetensors.write(["w": rand([300, 40], seed: 4, grad: false)], to: path, dtype: .bf16)
        var weight: BF16Tensor? = try SafetensorsFile(path).bf16("w")
        XCTAssertNotNil(weight?.owner, "mapped in place")
        XCTAssertNoThrow(try MappedFiles.verifyAll())
        func failure() -> String? {
            do { try MappedFiles.verifyAll(); return nil } catch { return "\(error)" }
        }
        // modification times to the nanosecond (Foundation's Date rounds them)
        func mtime() -> timespec { var st = stat(); XCTAssertEqual(stat(path, &st), 0); return st.st_mtim }
        func setMtime(_ t: timespec) { var ts = [t, t]; XCTAssertEqual(utimensat(AT_FDCWD, path, &ts, 0), 0) }
        let opened = mtime()
        // one data byte rewritten in place, the modification time put back: the sampled CRC sees it
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        let offset = UInt64(try SafetensorsFile(path).dataOffset + 1001)
        try h.seek(toOffset: offset)
        let old = try h.read(upToCount: 1)!
        try h.seek(toOffset: offset)
        try h.write(contentsOf: Data([old[0] ^ 0x55]))
        try h.synchronize()
        setMtime(opened)
        var why = failure()
        XCTAssertTrue(why?.contains(path) == true && why?.contains("bytes changed") == true, why ?? "not detected")
        // put back: nothing to report
        try h.seek(toOffset: offset)
        try h.write(contentsOf: old)
        try h.synchronize()
        setMtime(opened)
        XCTAssertNil(failure())
        // touched only
        setMtime(timespec(tv_sec: opened.tv_sec + 5, tv_nsec: opened.tv_nsec))
        why = failure()
        XCTAssertTrue(why?.contains(path) == true && why?.contains("modification time") == true, why ?? "not detected")
        setMtime(opened)
        // truncated
        try h.truncate(atOffset: 1000)
        try h.close()
        why = failure()
        XCTAssertTrue(why?.contains(path) == true && why?.contains("truncated") == true && why?.contains("1000 bytes") == true, why ?? "not detected")
        // replaced by rename: the mapping reads the old inode, unchanged
        let other = tmp + "/mapped-2.safetensors"
        try Safetensors.write(["w": rand([300, 40], seed: 4, grad: false)], to: other, dtype: .bf16)
        var second: BF16Tensor? = try SafetensorsFile(other).bf16("w")
        XCTAssertEqual(rename(tmp + "/mapped-2.safetensors", tmp + "/mapped-3.safetensors"), 0)
        try Safetensors.write(["w": rand([30, 4], seed: 5, grad: false)], to: other, dtype: .bf16)
        weight = nil   // the truncated file's mapping is gone with its last user
        XCTAssertNil(failure(), "a renamed or replaced file is not a change of the mapping")
        XCTAssertEqual(second?.count, 12_000)
        second = nil
    }

    // MARK: malformed files

    /// Writes `[u64 N][header][data]` (N = header length unless given) and returns the path.
    func raw(_ name: String, _ header: String, data: [UInt8] = [], length: UInt64? = nil) -> String {
        let h = Array(header.utf8)
        var bytes = withUnsafeBytes(of: (length ?? UInt64(h.count)).littleEndian) { Array($0) }
        bytes += h + data
        let path = tmp + "/" + name
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        return path
    }

    func entry(_ name: String, _ dtype: String, _ shape: [Int], _ b: Int, _ e: Int) -> String {
        "\"\(name)\":{\"dtype\":\"\(dtype)\",\"shape\":[\(shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(b),\(e)]}"
    }

    func assertThrows(_ kind: SafetensorsError.Kind, _ mentions: [String], file: StaticString = #filePath, line: UInt = #line,
                      _ body: () throws -> Void) {
        assertCheckpointError(kind, mentions, file: file, line: line, body)
    }

    func assertOpenFails(_ path: String, _ kind: SafetensorsError.Kind, _ mentions: [String],
                         file: StaticString = #filePath, line: UInt = #line) {
        assertThrows(kind, [path] + mentions, file: file, line: line) { _ = try SafetensorsFile(path) }
    }

    func testTruncatedFiles() throws {
        let tiny = tmp + "/tiny.safetensors"
        FileManager.default.createFile(atPath: tiny, contents: Data([1, 0, 0]))
        assertOpenFails(tiny, .headerTooSmall, ["truncated", "3 bytes"])
        // a real file cut short inside the data of its last tensor
        let full = try Data(contentsOf: URL(fileURLWithPath: Self.fixture("basic_f32.safetensors")))
        let cut = tmp + "/cut.safetensors"
        FileManager.default.createFile(atPath: cut, contents: full.prefix(full.count - 10))
        let last = try SafetensorsFile(Self.fixture("basic_f32.safetensors")).names.last!
        assertOpenFails(cut, .incompleteBuffer, [last, "past the end", "truncated"])
        // cut inside the header
        let cutHeader = tmp + "/cut_header.safetensors"
        FileManager.default.createFile(atPath: cutHeader, contents: full.prefix(40))
        assertOpenFails(cutHeader, .invalidHeaderLength, ["truncated", "header length"])
    }

    func testHeaderLengthChecks() {
        assertOpenFails(raw("long.safetensors", "{}", length: 1000), .invalidHeaderLength, ["1000", "past the end"])
        assertOpenFails(raw("huge.safetensors", "{}", length: 200_000_000), .headerTooLarge, ["200000000", "100000000"])
        assertOpenFails(raw("max.safetensors", "{}", length: UInt64.max), .headerTooLarge, ["exceeds"])
    }

    func testOffsetsPastTheEnd() {
        let p = raw("past.safetensors", "{" + entry("a", "F32", [4], 0, 16) + "}", data: [UInt8](repeating: 0, count: 8))
        assertOpenFails(p, .incompleteBuffer, ["'a'", "[0, 16]", "past the end", "8 bytes"])
    }

    func testHoleAndOverlap() {
        let hole = raw("hole.safetensors", "{" + entry("a", "F32", [2], 0, 8) + "," + entry("b", "F32", [2], 12, 20) + "}",
                       data: [UInt8](repeating: 0, count: 20))
        assertOpenFails(hole, .invalidOffset, ["'b'", "hole", "8..<12"])
        let first = raw("first.safetensors", "{" + entry("a", "F32", [2], 4, 12) + "}", data: [UInt8](repeating: 0, count: 12))
        assertOpenFails(first, .invalidOffset, ["'a'", "hole", "0..<4"])
        let overlap = raw("overlap.safetensors", "{" + entry("a", "F32", [2], 0, 8) + "," + entry("b", "F32", [2], 4, 12) + "}",
                          data: [UInt8](repeating: 0, count: 12))
        assertOpenFails(overlap, .invalidOffset, ["'b'", "overlaps 'a'"])
        let backwards = raw("backwards.safetensors", "{" + entry("a", "F32", [0], 8, 0) + "}", data: [UInt8](repeating: 0, count: 8))
        assertOpenFails(backwards, .invalidOffset, ["'a'", "end before they begin"])
        let trailing = raw("trailing.safetensors", "{" + entry("a", "F32", [2], 0, 8) + "}", data: [UInt8](repeating: 0, count: 11))
        assertOpenFails(trailing, .incompleteBuffer, ["3 trailing bytes"])
    }

    func testByteCountMustMatchShape() {
        let p = raw("count.safetensors", "{" + entry("w", "F32", [3], 0, 8) + "}", data: [UInt8](repeating: 0, count: 8))
        assertOpenFails(p, .tensorInvalidInfo, ["'w'", "8 bytes", "need 12"])
        let f4 = raw("f4.safetensors", "{" + entry("q", "F4", [3], 0, 2) + "}", data: [0, 0])
        assertOpenFails(f4, .misalignedSlice, ["'q'", "whole bytes"])
        let big = raw("overflow.safetensors", "{" + entry("o", "F32", [1 << 40, 1 << 40], 0, 0) + "}")
        assertOpenFails(big, .validationOverflow, ["'o'", "overflows"])
    }

    func testHeaderContentErrors() {
        assertOpenFails(raw("dtype.safetensors", "{" + entry("x", "F128", [1], 0, 16) + "}", data: [UInt8](repeating: 0, count: 16)),
                        .unknownDType, ["'x'", "unknown dtype 'F128'"])
        let dup = raw("dup.safetensors", "{" + entry("a", "F32", [1], 0, 4) + "," + entry("a", "F32", [1], 4, 8) + "}",
                      data: [UInt8](repeating: 0, count: 8))
        assertOpenFails(dup, .duplicateKey, ["'a'", "duplicate key"])
        let dupField = raw("dupfield.safetensors", "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                           data: [0, 0, 0, 0])
        assertOpenFails(dupField, .duplicateKey, ["'dtype'", "duplicate key"])
        let dupMeta = raw("dupmeta.safetensors", "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}")
        assertOpenFails(dupMeta, .duplicateKey, ["'k'"])
        assertOpenFails(raw("array.safetensors", "[1, 2]"), .invalidHeaderStart, ["does not start with '{'"])
        assertOpenFails(raw("space.safetensors", " {}"), .invalidHeaderStart, ["does not start with '{'"])
        assertOpenFails(raw("json.safetensors", "{\"a\": {\"dtype\": \"F32\",}}"), .invalidJSON, ["not valid JSON"])
        assertOpenFails(raw("trail.safetensors", "{} x"), .invalidJSON, ["trailing characters"])
        assertOpenFails(raw("nul.safetensors", "{}\u{0}"), .invalidJSON, ["trailing characters"])
        var bad = withUnsafeBytes(of: UInt64(4).littleEndian) { Array($0) }
        bad += [0x7B, 0xFF, 0xFE, 0x7D]
        let utf8 = tmp + "/badutf8.safetensors"
        FileManager.default.createFile(atPath: utf8, contents: Data(bad))
        assertOpenFails(utf8, .invalidUTF8, ["UTF-8"])
        assertOpenFails(raw("meta.safetensors", "{\"__metadata__\":{\"k\":1}}"), .invalidHeader, ["__metadata__", "not a string"])
        assertOpenFails(raw("noshape.safetensors", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,0]}}"), .invalidHeader, ["'a'", "missing field shape"])
        assertOpenFails(raw("neg.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}"), .invalidHeader,
                        ["'a'", "non-negative integer"])
        assertOpenFails(raw("notobj.safetensors", "{\"a\":3}"), .invalidHeader, ["'a'", "not an object"])
    }

    func testZeroRankEmptyAndUnsupportedDTypesAreLegal() throws {
        // header padded with spaces like the official writer; extra fields are ignored as serde does
        let header = "{" + entry("s", "F32", [], 0, 4) + "," + entry("e", "F16", [0, 5], 4, 4) + ","
            + entry("d", "F64", [2], 4, 20) + "," + entry("m", "BOOL", [3], 20, 23) + ",\"z\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[23,24],\"extra\":true}}    "
        var data = withUnsafeBytes(of: Float(1.5).bitPattern.littleEndian) { Array($0) }
        data += [UInt8](repeating: 0, count: 16) + [1, 0, 5, 200]
        let p = raw("legal.safetensors", header, data: data)
        let f = try SafetensorsFile(p)
        XCTAssertEqual(f.names, ["s", "e", "d", "m", "z"])
        XCTAssertEqual(try f.tensor("s").shape, [])
        XCTAssertEqual(try f.tensor("s").item, 1.5)
        XCTAssertEqual(try f.tensor("e").shape, [0, 5])
        XCTAssertEqual(try f.info("d").dtype, .f64)
        XCTAssertEqual(try f.info("d").shape, [2])
        assertThrows(.unsupportedDType, [p, "'d'", "F64"]) { _ = try f.tensor("d") }
        assertThrows(.unsupportedDType, [p, "'d'", "F64"]) { _ = try f.ints("d") }
        XCTAssertEqual(try f.ints("m"), [1, 0, 1])
        XCTAssertEqual(try f.ints("z"), [200])
        // an empty file of tensors is legal too
        XCTAssertEqual(try SafetensorsFile(raw("none.safetensors", "{}      ")).names, [])
    }

    func testShardedDirectoryErrors() throws {
        func copySharded(_ name: String) throws -> String {
            let d = tmp + "/" + name
            try FileManager.default.copyItem(atPath: Self.fixture("sharded"), toPath: d)
            return d
        }
        let missing = try copySharded("missing")
        try FileManager.default.removeItem(atPath: missing + "/model-00002-of-00003.safetensors")
        assertThrows(.missingShard, [missing + "/model.safetensors.index.json", "model-00002-of-00003.safetensors", "does not exist"]) {
            _ = try SafetensorsDirectory(missing)
        }
        // the index puts a tensor in the wrong shard
        let wrong = try copySharded("wrong")
        let idx = wrong + "/model.safetensors.index.json"
        var text = try String(contentsOfFile: idx, encoding: .utf8)
        text = text.replacingOccurrences(of: "\"norm.weight\": \"model-00003-of-00003.safetensors\"",
                                         with: "\"norm.weight\": \"model-00001-of-00003.safetensors\"")
        try text.write(toFile: idx, atomically: true, encoding: .utf8)
        assertThrows(.invalidIndex, ["norm.weight", "model-00001-of-00003.safetensors"]) { _ = try SafetensorsDirectory(wrong) }
        // a tensor listed twice in the index
        let twice = try copySharded("twice")
        let idx2 = twice + "/model.safetensors.index.json"
        let t2 = try String(contentsOfFile: idx2, encoding: .utf8)
            .replacingOccurrences(of: "\"norm.weight\":", with: "\"layers.0.q.weight\": \"model-00001-of-00003.safetensors\",\n    \"norm.weight\":")
        try t2.write(toFile: idx2, atomically: true, encoding: .utf8)
        assertThrows(.duplicateKey, [idx2, "layers.0.q.weight"]) { _ = try SafetensorsDirectory(twice) }
        // a tensor in a shard but not in the index
        let extra = try copySharded("extra")
        let idx3 = extra + "/model.safetensors.index.json"
        let t3 = try String(contentsOfFile: idx3, encoding: .utf8)
            .replacingOccurrences(of: "    \"layers.1.k.weight\": \"model-00002-of-00003.safetensors\",\n", with: "")
        try t3.write(toFile: idx3, atomically: true, encoding: .utf8)
        assertThrows(.invalidIndex, ["layers.1.k.weight", "missing from the index"]) { _ = try SafetensorsDirectory(extra) }
        // neither index nor single file
        let empty = tmp + "/empty"
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: false)
        assertThrows(.missingShard, [empty, "model.safetensors"]) { _ = try SafetensorsDirectory(empty) }
    }
}
