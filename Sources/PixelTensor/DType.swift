import CPixelShims
import Foundation

/// Element types of checkpoint files, named as in safetensors headers (`safetensors/src/tensor.rs`,
/// `Dtype`). Tensors in memory are always fp32; these only describe bytes on disk (and `BF16Tensor`).
public enum DType: String, CaseIterable, Sendable {
    case bool = "BOOL"
    case f4 = "F4"
    case f6e2m3 = "F6_E2M3"
    case f6e3m2 = "F6_E3M2"
    case u8 = "U8"
    case i8 = "I8"
    case f8e5m2 = "F8_E5M2"
    case f8e4m3 = "F8_E4M3"
    case f8e8m0 = "F8_E8M0"
    case f8e4m3fnuz = "F8_E4M3FNUZ"
    case f8e5m2fnuz = "F8_E5M2FNUZ"
    case i16 = "I16"
    case u16 = "U16"
    case f16 = "F16"
    case bf16 = "BF16"
    case i32 = "I32"
    case u32 = "U32"
    case f32 = "F32"
    case c64 = "C64"
    case f64 = "F64"
    case i64 = "I64"
    case u64 = "U64"

    /// The name used in safetensors headers ("F32", "BF16", ...).
    public var name: String { rawValue }

    /// Bits per element (F4 and F6 are sub-byte).
    public var bitSize: Int {
        switch self {
        case .f4: return 4
        case .f6e2m3, .f6e3m2: return 6
        case .bool, .u8, .i8, .f8e5m2, .f8e4m3, .f8e8m0, .f8e4m3fnuz, .f8e5m2fnuz: return 8
        case .i16, .u16, .f16, .bf16: return 16
        case .i32, .u32, .f32: return 32
        case .c64, .f64, .i64, .u64: return 64
        }
    }

    /// Whole bytes per element (0 for sub-byte types).
    public var byteSize: Int { bitSize / 8 }

    /// Types we convert to fp32 tensors.
    public var isFloatReadable: Bool { self == .f32 || self == .f16 || self == .bf16 }

    /// Types we read exactly as `[Int64]` (position ids, masks).
    public var isIntegerReadable: Bool { self == .i64 || self == .i32 || self == .u8 || self == .bool }
}

/// Scalar and bulk conversions between fp32 and the 16-bit float formats. Sources and destinations are
/// raw pointers accessed with unaligned loads and stores, so they may point anywhere into an mmap'ed
/// checkpoint (MLX writes unpadded headers). Little-endian, like the files and the hosts we run on.
public enum Convert {
    // MARK: bf16

    /// bf16 bits -> fp32 (exact).
    @inlinable @inline(__always)
    public static func float(bf16 bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }

    /// fp32 -> bf16 bits, rounding to nearest with ties to even (torch's `round_to_nearest_even`):
    /// finite values past the bf16 range become ±inf. NaN stays NaN (quiet, sign kept; torch canonicalises
    /// the payload, so compare NaNs by `isNaN`, not by bits).
    @inlinable @inline(__always)
    public static func bf16(_ x: Float) -> UInt16 {
        let u = x.bitPattern
        let rounded = (u &+ 0x7FFF &+ ((u >> 16) & 1)) >> 16
        let nan = (u >> 16) | 0x0040
        return UInt16(truncatingIfNeeded: x.isNaN ? nan : rounded)
    }

    // MARK: f16

    /// fp16 bits -> fp32 (exact, including subnormals, ±inf and NaN payloads). Branch-free bit arithmetic
    /// so bulk loops vectorise (`Float(Float16(bitPattern:))` is a library call per element without F16C).
    @inlinable @inline(__always)
    public static func float(f16 bits: UInt16) -> Float {
        let h = UInt32(bits)
        let sign = (h & 0x8000) << 16
        let em = (h & 0x7FFF) << 13
        // Exponent and mantissa land in fp32 position; scaling by 2^(127-15) rebiases normals and turns
        // fp16 subnormals (which become fp32 subnormals here) into the right normal values, exactly.
        let finite = (Float(bitPattern: em) * 0x1p112).bitPattern
        let special = em | 0x7F80_0000
        return Float(bitPattern: ((h & 0x7C00) == 0x7C00 ? special : finite) | sign)
    }

    /// fp32 -> fp16 bits, round to nearest even (what `tensor.to(torch.float16)` does); overflow gives ±inf.
    @inlinable @inline(__always)
    public static func f16(_ x: Float) -> UInt16 { Float16(x).bitPattern }

    // MARK: bulk

    /// `count` bf16 values at `src` (any alignment) -> fp32.
    public static func bf16ToF32(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count {
            dst[i] = float(bf16: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
        }
    }

    /// `count` fp16 values at `src` (any alignment) -> fp32.
    public static func f16ToF32(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count {
            dst[i] = float(f16: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
        }
    }

    /// `count` fp32 values at `src` (any alignment) -> fp32.
    public static func f32ToF32(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: 4 * count)
    }

    /// fp32 -> `count` bf16 values at `dst` (any alignment), round to nearest even.
    public static func f32ToBF16(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, count: Int) {
        for i in 0..<count {
            dst.storeBytes(of: bf16(src[i]), toByteOffset: 2 * i, as: UInt16.self)
        }
    }

    /// fp32 -> `count` fp16 values at `dst` (any alignment), round to nearest even.
    public static func f32ToF16(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, count: Int) {
        for i in 0..<count {
            dst.storeBytes(of: f16(src[i]), toByteOffset: 2 * i, as: UInt16.self)
        }
    }

    /// `count` elements of a float type at `src` -> fp32. `dtype` must be F32, F16 or BF16.
    public static func toF32(_ dtype: DType, _ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        switch dtype {
        case .f32: f32ToF32(src, dst, count: count)
        case .f16: f16ToF32(src, dst, count: count)
        case .bf16: bf16ToF32(src, dst, count: count)
        default: preconditionFailure("Convert.toF32: \(dtype.name) is not a float type we convert")
        }
    }

    /// fp32 -> `count` elements of `dtype` (F32, F16 or BF16) at `dst`.
    public static func fromF32(_ dtype: DType, _ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, count: Int) {
        switch dtype {
        case .f32: dst.copyMemory(from: src, byteCount: 4 * count)
        case .f16: f32ToF16(src, dst, count: count)
        case .bf16: f32ToBF16(src, dst, count: count)
        default: preconditionFailure("Convert.fromF32: \(dtype.name) is not a float type we convert")
        }
    }
}

/// A compact bf16 tensor: 2 bytes per element, contiguous row-major, converted to fp32 a few rows at a
/// time when used, so a 7B model can keep its weights in bf16 (13.5 GB instead of 27). The bits live in
/// a buffer this object owns, or in memory kept alive by `owner` (e.g. an mmap'ed safetensors file, in
/// which case `base` may be unaligned). Read-only.
public final class BF16Tensor: @unchecked Sendable {
    public let shape: [Int]
    /// Element 0 (any alignment).
    public let base: UnsafeRawPointer
    private let owned: UnsafeMutableRawPointer?
    /// Keeps foreign memory alive.
    public let owner: AnyObject?

    /// Wraps `product(shape)` bf16 values at `base`, kept alive by `owner`.
    public init(base: UnsafeRawPointer, shape: [Int], owner: AnyObject?) {
        self.base = base
        self.shape = shape
        self.owner = owner
        owned = nil
    }

    private init(ownedCount n: Int, shape: [Int]) {
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(2 * n, 2), alignment: 64)
        owned = p
        base = UnsafeRawPointer(p)
        self.shape = shape
        owner = nil
    }

    /// Rounds an fp32 tensor to bf16 (nearest even).
    public convenience init(_ t: Tensor) {
        let c = t.contiguousData()
        self.init(ownedCount: c.count, shape: c.shape)
        Convert.f32ToBF16(c.ptr, owned!, count: c.count)
    }

    /// Copies raw bf16 bit patterns.
    public convenience init(bits: [UInt16], shape: [Int]) {
        precondition(bits.count == product(shape), "BF16Tensor: \(bits.count) values for shape \(describe(shape))")
        self.init(ownedCount: bits.count, shape: shape)
        bits.withUnsafeBytes { owned!.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    deinit { owned?.deallocate() }

    public var count: Int { product(shape) }
    public var rank: Int { shape.count }
    public var byteCount: Int { 2 * count }
    /// Length of the last dimension (1 for a 0-rank tensor).
    public var rowLength: Int { shape.last ?? 1 }
    /// Number of rows of length `rowLength`.
    public var rowCount: Int { rowLength == 0 ? product(shape.dropLast()) : count / rowLength }

    /// Bits of element `i` in row-major order.
    public func bits(at i: Int) -> UInt16 { base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self) }

    /// Element `i` in row-major order, as fp32.
    public subscript(i: Int) -> Float { Convert.float(bf16: bits(at: i)) }

    /// Converts rows `rows` into `dst` (rows.count * rowLength floats).
    public func convertRows(_ rows: Range<Int>, into dst: UnsafeMutablePointer<Float>) {
        precondition(rows.lowerBound >= 0 && rows.upperBound <= rowCount, "BF16Tensor: rows \(rows) of \(rowCount)")
        let src = base + 2 * rows.lowerBound * rowLength, n = rows.count * rowLength
        guard Int(bitPattern: src) % 2 == 0 else { Convert.bf16ToF32(src, dst, count: n); return }
        let p = src.assumingMemoryBound(to: UInt16.self), len = rowLength
        // both cores: a tile converted by one while the other waits would idle half the machine (prefill)
        Parallel.forRows(rows.count, rowCost: len) { lo, hi in
            pixel_bf16_to_f32(p + lo * len, dst + lo * len, (hi - lo) * len)
        }
    }

    /// The whole tensor in fp32.
    public func toTensor() -> Tensor {
        let t = Tensor(empty: shape)
        Convert.bf16ToF32(base, t.ptr, count: count)
        return t
    }
}

/// A `BF16Tensor` used as a weight matrix `[out, in]`.
public typealias BF16Matrix = BF16Tensor

/// How `linearBF16` multiplies fewer than 8 input rows (decode): `gemv` widens the bf16 weights to fp32 in
/// registers (CPixelShims/bf16.c, AVX-512 or AVX2 + FMA as the CPU allows, portable C otherwise), reading each
/// weight once; `convert` converts weight tiles to fp32 and calls SGEMM (the only path for 8 rows and more).
/// PIXELLM_BF16_KERNEL = convert | avx512 | avx2 | c overrides the choice (benchmarks, tests).
public enum BF16Kernel: Equatable, Sendable {
    case convert
    case gemv(isa: Int)

    public static let best: BF16Kernel = .gemv(isa: Int(pixel_bf16_gemv_isa()))

    nonisolated(unsafe) public static var current: BF16Kernel = {
        switch ProcessInfo.processInfo.environment["PIXELLM_BF16_KERNEL"] {
        case "convert": return .convert
        case "avx512": return .gemv(isa: min(2, Int(pixel_bf16_gemv_isa())))
        case "avx2": return .gemv(isa: min(1, Int(pixel_bf16_gemv_isa())))
        case "c": return .gemv(isa: 0)
        default: return best
        }
    }()

    public var name: String {
        switch self {
        case .convert: return "convert (bf16 tiles -> fp32, SGEMM)"
        case .gemv(let isa): return ["portable C", "AVX2 + FMA", "AVX-512"][max(0, min(isa, 2))] + " widening GEMV"
        }
    }
}

/// How `linearBF16` multiplies 8 input rows and more when no gradient is being recorded (prefill, evaluation):
/// `dotBF16` rounds the input rows to bf16 once and multiplies them with the AVX-512 BF16 dot product
/// (CPixelShims/bf16gemm.c: two bf16 products per fp32 lane and instruction, sums in fp32; the numbers of a bf16
/// autocast); `convert` converts weight tiles to fp32 and calls SGEMM on the fp32 input, and is what every CPU
/// without AVX-512 BF16 and every product whose gradient is recorded (training) uses. The flags do not say which
/// is faster: the dot product is taken only where a measurement (`dotSpeedup`, ~2 ms at the first use) finds it
/// delivering at least 1.25x the multiply-adds per second of fp32 FMAs (2-core Xeon with AVX-512 BF16, 2026-12-07:
/// 0.4-0.5x, so not there). PIXELLM_BF16_PREFILL = convert | avx512bf16 overrides the choice (benchmarks, tests).
public enum BF16PrefillKernel: Equatable, Sendable {
    case convert
    case dotBF16

    /// Whether this CPU has the AVX-512 BF16 dot product at all.
    public static let available = pixel_bf16_gemm_isa() != 0

    /// The dot product's multiply-adds per second over fp32 FMAs', measured on this core (0 without it).
    public static let dotSpeedup: Double = pixel_bf16_dot_speedup()

    /// The faster of the two here.
    public static let best: BF16PrefillKernel = available && dotSpeedup >= 1.25 ? .dotBF16 : .convert

    nonisolated(unsafe) public static var current: BF16PrefillKernel = {
        switch ProcessInfo.processInfo.environment["PIXELLM_BF16_PREFILL"] {
        case "convert": return .convert
        case "avx512bf16": return available ? .dotBF16 : .convert
        default: return best
        }
    }()

    public var name: String {
        switch self {
        case .convert: return "convert (bf16 tiles -> fp32, SGEMM)"
        case .dotBF16: return "AVX-512 BF16 dot products (inputs rounded to bf16)"
        }
    }
}

/// `x wᵀ` into `out` (which holds the bias when `accumulate`) with the AVX-512 BF16 dot product: `x` [rows, inF]
/// rounded to bf16 once, the output columns shared out over the workers in panels. False (nothing written) when
/// the CPU lacks it.
func dotBF16Product(x: UnsafePointer<Float>, rows: Int, inF: Int, w: UnsafePointer<UInt16>, outF: Int,
                    out: UnsafeMutablePointer<Float>, accumulate: Bool) -> Bool {
    guard BF16PrefillKernel.available else { return false }
    let ldx = inF + (inF & 1)
    let xb = UnsafeMutablePointer<UInt16>.allocate(capacity: rows * ldx)
    defer { xb.deallocate() }
    Parallel.forRows(rows, rowCost: inF) { lo, hi in
        pixel_f32_rows_to_bf16(x + lo * inF, hi - lo, inF, inF, xb + lo * ldx, ldx)
    }
    let width = Int(pixel_bf16_gemm_panel_width()), panels = (outF + width - 1) / width
    Parallel.forRows(panels, rowCost: rows * inF * width / 16) { lo, hi in
        let rc = pixel_bf16_gemm(xb, rows, ldx, inF, w, inF, outF, lo, hi, out, outF, accumulate ? 1 : 0)
        precondition(rc == 0, "pixel_bf16_gemm: \(rc) after the CPU check")
    }
    return true
}

/// `y = x wᵀ + bias` with a bf16 weight `[out, in]`, which is frozen: it never gets a gradient. Converts
/// `tileRows` weight rows at a time into an fp32 scratch (default: ~1 MB for fewer than 8 input rows,
/// ~32 MB otherwise) and multiplies each tile with one SGEMM into the matching output columns, so the
/// fp32 weight never exists whole. With autograd on, the input's gradient dX = dY w (and the bias's, the
/// column sums of dY) are recorded, computed the same way tile by tile: a frozen bf16 layer inside a model
/// being trained (LoRA on a bf16 base) passes gradients through without an fp32 copy of w.
public func linearBF16(x: Tensor, w: BF16Matrix, bias: Tensor? = nil, tileRows: Int? = nil) -> Tensor {
    let inF = x.dim(-1)
    guard w.rank == 2 && w.shape[1] == inF else {
        shapeFailure(ShapeError("linearBF16", "input \(describe(x.shape)) does not match bf16 weight \(describe(w.shape)) ([out, in])"))
    }
    let outF = w.shape[0]
    if let bias, bias.shape != [outF] {
        shapeFailure(ShapeError("linearBF16", "bias \(describe(bias.shape)) for weight \(describe(w.shape))"))
    }
    let xc = x.contiguousData()
    let rows = inF == 0 ? product(Array(x.shape.dropLast())) : x.count / inF
    let out = Tensor(empty: Array(x.shape.dropLast()) + [outF])
    let po = out.ptr
    if let bias {
        let pb = bias.contiguousData().ptr
        for r in 0..<rows { (po + r * outF).update(from: pb, count: outF) }
    } else if inF == 0 {
        po.update(repeating: 0, count: out.count)
    }
    if rows == 0 || outF == 0 || inF == 0 { return out }
    // measured on 4096x4096: ~1 MB tiles are best for decode (M=1: 4 ms vs 20 ms for fp32 `linear`);
    // for M >= 8 SGEMM wants wide tiles, converted on every core: 32 MB (2,048 rows of 4,096; 762 of 11,008) made the
    // 7B chat's prefill (325 rows) 25.0-25.6 s against 27.9-29.0 s with 8 MB tiles, alternating runs on a 2-core
    // AVX-512 Xeon (2026-12-07); the narrow 8 MB tiles of the 11008-wide down projection cost most there)
    let floats = rows < 8 ? 1 << 18 : 1 << 23
    let tile = max(1, min(outF, tileRows ?? max(4, floats / inF)))
    // (explicit tileRows ask for the tile conversion)
    if tileRows == nil, rows < 8, case .gemv(let isa) = BF16Kernel.current, Int(bitPattern: w.base) % 2 == 0 {
        // decode: every output row reads its weight row once, widened in registers; rows split over the workers
        let pw = w.base.assumingMemoryBound(to: UInt16.self), px = xc.ptr
        let scratch = bias == nil ? nil : Storage(count: rows * outF)
        let ps = scratch?.ptr ?? po
        Parallel.forRows(outF, rowCost: inF) { lo, hi in
            for r in 0..<rows {
                pixel_bf16_gemv(Int32(isa), pw + lo * inF, px + r * inF, ps + r * outF + lo, hi - lo, inF, inF)
            }
        }
        if scratch != nil { for i in 0..<(rows * outF) { po[i] += ps[i] } }
        return recordLinearBF16(x: x, w: w, bias: bias, out: out, rows: rows, inF: inF, outF: outF, tile: tile)
    }
    if tileRows == nil, !Autograd.isEnabled, BF16PrefillKernel.current == .dotBF16, Int(bitPattern: w.base) % 2 == 0,
       dotBF16Product(x: xc.ptr, rows: rows, inF: inF, w: w.base.assumingMemoryBound(to: UInt16.self), outF: outF,
                      out: po, accumulate: bias != nil) {
        return out
    }
    let scratch = Storage(count: tile * inF)
    var j = 0
    while j < outF {
        let n = min(tile, outF - j)
        w.convertRows(j..<(j + n), into: scratch.ptr)
        // out[:, j..<j+n] (+)= x · tileᵀ, tile stored [n, in] row-major
        BLAS.sgemm(transA: false, transB: true, M: rows, N: n, K: inF, A: xc.ptr, lda: inF, B: scratch.ptr, ldb: inF,
                   beta: bias == nil ? 0 : 1, C: po + j, ldc: outF)
        j += n
    }
    return recordLinearBF16(x: x, w: w, bias: bias, out: out, rows: rows, inF: inF, outF: outF, tile: tile)
}

/// linearBF16's backward (see there).
func recordLinearBF16(x: Tensor, w: BF16Matrix, bias: Tensor?, out: Tensor, rows: Int, inF: Int, outF: Int, tile: Int) -> Tensor {
    Autograd.record("linearBF16", out, inputs: [x] + (bias.map { [$0] } ?? [])) { _, gout in
        let g = gout.contiguousData()
        if x.requiresGrad {
            // dX [rows, in] = dY [rows, out] · w [out, in], one weight tile of rows at a time
            let dx = Tensor.zeros(x.shape)
            let scratch = Storage(count: tile * inF)
            var j = 0
            while j < outF {
                let n = min(tile, outF - j)
                w.convertRows(j..<(j + n), into: scratch.ptr)
                BLAS.sgemm(transA: false, transB: false, M: rows, N: inF, K: n, A: g.ptr + j, lda: outF, B: scratch.ptr, ldb: inF,
                           beta: 1, C: dx.ptr, ldc: inF)
                j += n
            }
            x.accumulateGrad(dx)
        }
        if let bias, bias.requiresGrad {
            let db = Tensor.zeros([outF])
            let pg = g.ptr, pd = db.ptr
            for r in 0..<rows { for c in 0..<outF { pd[c] += pg[r * outF + c] } }
            bias.accumulateGrad(db)
        }
    }
}
