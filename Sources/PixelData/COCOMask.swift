// COCO segmentations (spec 5.2-5.3): run-length encodings in both COCO forms, polygon rasterisation,
// and the reference's frPyObjects -> decode -> sum over parts -> (> 0) path, with pycocotools' exact
// pixel sets and strings.
//
// Run-length encoding (RLE): the H x W mask is read in column-major order (x outer, y inner: index
// x * H + y, pycocotools' Fortran order) and stored as alternating run lengths starting with a run of
// zeros (possibly of length 0). The counts sum to H * W.
import Foundation

/// A segmentation that cannot be turned into a mask. `item` names the annotation (file, index, key).
public struct MaskError: Error, CustomStringConvertible, Equatable {
    public let item: String
    public let message: String
    public init(item: String, _ message: String) { self.item = item; self.message = message }
    public var description: String { "\(item): \(message)" }
}

/// A binary mask [H, W], row-major (`data[y * width + x]`), values 0 or 1.
public struct BinaryMask: Equatable, Sendable {
    public let height: Int
    public let width: Int
    public var data: [UInt8]

    public init(height: Int, width: Int, data: [UInt8]) {
        precondition(height >= 0 && width >= 0 && data.count == height * width, "BinaryMask: \(data.count) values for \(height)x\(width)")
        self.height = height
        self.width = width
        self.data = data
    }

    public init(height: Int, width: Int) { self.init(height: height, width: width, data: [UInt8](repeating: 0, count: height * width)) }

    public subscript(y: Int, x: Int) -> UInt8 { data[y * width + x] }

    /// Number of set pixels.
    public var area: Int { data.reduce(0) { $0 + ($1 != 0 ? 1 : 0) } }

    /// 0 / 255 gray image, for writing masks as PNG.
    public var grayImage: GrayImage { GrayImage(width: width, height: height, pixels: data.map { $0 != 0 ? 255 : 0 }) }
}

/// A COCO run-length encoding (pycocotools' `RLE`).
public struct RLE: Equatable, Hashable, Sendable {
    public let height: Int
    public let width: Int
    /// Alternating run lengths in column-major order, zeros first; sum == height * width.
    public let counts: [Int]

    /// Checks that the counts are non-negative and sum to height * width.
    public init(height: Int, width: Int, counts: [Int], item: String = "RLE") throws {
        guard height >= 0, width >= 0 else { throw MaskError(item: item, "invalid RLE size [\(height), \(width)]") }
        let (area, tooBig) = height.multipliedReportingOverflow(by: width)
        guard !tooBig else { throw MaskError(item: item, "invalid RLE size [\(height), \(width)]") }
        var sum = 0
        for (i, c) in counts.enumerated() {
            guard c >= 0 else { throw MaskError(item: item, "RLE count \(i) is negative (\(c))") }
            // counts from a file can add up past Int.max
            let (next, overflow) = sum.addingReportingOverflow(c)
            guard !overflow else { throw MaskError(item: item, "RLE counts overflow at count \(i): far more than height * width = \(area)") }
            sum = next
        }
        guard sum == area else {
            throw MaskError(item: item, "RLE counts sum to \(sum), not height * width = \(height) * \(width) = \(area)")
        }
        self.height = height
        self.width = width
        self.counts = counts
    }

    /// Counts known to be valid.
    init(unchecked height: Int, _ width: Int, _ counts: [Int]) {
        self.height = height
        self.width = width
        self.counts = counts
    }

    /// pycocotools `encode`: any non-zero value counts as set.
    public init(encoding mask: BinaryMask) {
        let h = mask.height, w = mask.width
        var counts: [Int] = []
        var current: UInt8 = 0, run = 0
        mask.data.withUnsafeBufferPointer { m in
            for x in 0..<w {
                for y in 0..<h {
                    let v: UInt8 = m[y * w + x] != 0 ? 1 : 0
                    if v != current { counts.append(run); run = 0; current = v }
                    run += 1
                }
            }
        }
        counts.append(run)
        self.init(unchecked: h, w, counts)
    }

    /// Number of set pixels (pycocotools `area`): the sum of the odd-indexed runs.
    public var area: Int { stride(from: 1, to: counts.count, by: 2).reduce(0) { $0 + counts[$1] } }

    /// pycocotools `decode`, returned row-major.
    public func decode() -> BinaryMask {
        var data = [UInt8](repeating: 0, count: height * width)
        let h = height, w = width
        var index = 0   // column-major position
        data.withUnsafeMutableBufferPointer { d in
            for (i, c) in counts.enumerated() {
                if i % 2 == 1 {
                    for k in index..<(index + c) { d[(k % h) * w + k / h] = 1 }
                }
                index += c
            }
        }
        return BinaryMask(height: h, width: w, data: data)
    }

    // MARK: compressed strings

    /// COCO's compressed counts string (pycocotools `_toString`). From the fourth count on, a count is
    /// stored as its difference to the count two places earlier. Each value is written as little-endian
    /// groups of 5 bits, one character per group (group + 48); bit 0x20 of a character means another
    /// group follows; the last group's bit 0x10 is the sign (values are two's complement).
    public var compressed: String {
        var bytes: [UInt8] = []
        for (i, c) in counts.enumerated() {
            var x = i > 2 ? c - counts[i - 2] : c
            var more = true
            while more {
                var group = x & 0x1F
                x >>= 5   // arithmetic: negative values tend to -1
                more = (group & 0x10) != 0 ? x != -1 : x != 0
                if more { group |= 0x20 }
                bytes.append(UInt8(group + 48))
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Parses a compressed counts string (pycocotools `_frString`), checking the characters, that no
    /// value is cut short, and that the counts are non-negative and sum to height * width.
    public init(height: Int, width: Int, compressed: String, item: String = "RLE") throws {
        let s = Array(compressed.utf8)
        var counts: [Int] = []
        var p = 0
        while p < s.count {
            var x = 0, shift = 0, more = true
            while more {
                guard p < s.count else {
                    throw MaskError(item: item, "compressed RLE string ends inside a value (count \(counts.count))")
                }
                let ch = Int(s[p])
                guard ch >= 48, ch < 48 + 64 else {
                    throw MaskError(item: item, "compressed RLE string has an invalid character \(String(UnicodeScalar(UInt8(ch)))) at offset \(p)")
                }
                guard shift < 60 else { throw MaskError(item: item, "compressed RLE value \(counts.count) is too long") }
                let group = ch - 48
                x |= (group & 0x1F) << shift
                more = (group & 0x20) != 0
                shift += 5
                p += 1
                if !more && (group & 0x10) != 0 { x |= -1 << shift }   // sign-extend
            }
            if counts.count > 2 {
                let (v, overflow) = x.addingReportingOverflow(counts[counts.count - 2])
                guard !overflow else { throw MaskError(item: item, "compressed RLE value \(counts.count) overflows") }
                x = v
            }
            counts.append(x)
        }
        try self.init(height: height, width: width, counts: counts, item: item)
    }

    // MARK: merge

    /// pycocotools `merge`: union (or intersection) of same-size masks, as an RLE in canonical form
    /// (no empty runs except a leading one). Empty input: an empty 0 x 0 RLE, as pycocotools.
    public static func merge(_ rles: [RLE], intersect: Bool = false, item: String = "RLE merge") throws -> RLE {
        guard let first = rles.first else { return RLE(unchecked: 0, 0, []) }
        if rles.count == 1 { return first }
        for (i, r) in rles.enumerated() where r.height != first.height || r.width != first.width {
            throw MaskError(item: item, "RLE \(i) is \(r.height)x\(r.width), RLE 0 is \(first.height)x\(first.width)")
        }
        var acc = first.counts
        for r in rles.dropFirst() { acc = combine(acc, r.counts, intersect: intersect) }
        return RLE(unchecked: first.height, first.width, acc)
    }

    /// Sweeps the run boundaries of two RLEs of the same total length.
    static func combine(_ a: [Int], _ b: [Int], intersect: Bool) -> [Int] {
        var out: [Int] = []
        var ia = 0, ib = 0             // current run index
        var ra = a.first ?? 0, rb = b.first ?? 0   // remaining length of the current run
        var run = 0, value = false
        while true {
            // skip exhausted runs (including empty ones)
            while ra == 0 && ia + 1 < a.count { ia += 1; ra = a[ia] }
            while rb == 0 && ib + 1 < b.count { ib += 1; rb = b[ib] }
            if ra == 0 || rb == 0 { break }
            let va = ia % 2 == 1, vb = ib % 2 == 1
            let v = intersect ? (va && vb) : (va || vb)
            let step = min(ra, rb)
            if v != value { out.append(run); run = 0; value = v }
            run += step
            ra -= step
            rb -= step
        }
        out.append(run)
        return out
    }

    // MARK: polygons

    /// pycocotools `frPoly` for one polygon `[x0, y0, x1, y1, ...]` (at least one point).
    ///
    /// The algorithm, as pycocotools rasterises (kept exactly so the pixel set matches):
    ///  1. Vertices are scaled by 5 and rounded, `trunc(5 * v + 0.5)`; the polygon is closed.
    ///  2. Every edge is walked one unit at a time along its longer axis, from the end with the smaller
    ///     coordinate on that axis, giving integer points in edge order; the other coordinate is
    ///     `trunc(start + slope * t + 0.5)`.
    ///  3. Wherever consecutive points step in x, the step's lower x, mapped back by (x + 0.5) / 5 - 0.5,
    ///     is kept if it is an integer column inside the image; the lower y of the two points, mapped back
    ///     the same way, clamped to [0, H] and rounded up, is where the mask toggles in that column.
    ///  4. The toggle positions (column-major, x * H + y) are sorted; their gaps are the runs, where
    ///     two toggles at the same position cancel (the run after them joins the run before).
    public static func polygon(_ xy: [Double], height: Int, width: Int, item: String = "polygon") throws -> RLE {
        guard xy.count >= 2, xy.count % 2 == 0 else {
            throw MaskError(item: item, "polygon has \(xy.count) coordinates; expected an even number, at least 2 (x, y pairs)")
        }
        let k = xy.count / 2
        let scale = 5.0
        var x = [Int](repeating: 0, count: k + 1), y = [Int](repeating: 0, count: k + 1)
        func scaled(_ i: Int) throws -> Int {
            let s = scale * xy[i] + 0.5
            // pycocotools keeps these in a C int
            guard s.isFinite, s > -2147483648.0, s < 2147483648.0 else {
                throw MaskError(item: item, "polygon coordinate \(i) = \(xy[i]) is not a finite value in range")
            }
            return Int(s)
        }
        for j in 0..<k {
            x[j] = try scaled(2 * j)
            y[j] = try scaled(2 * j + 1)
        }
        x[k] = x[0]; y[k] = y[0]
        // 2. dense boundary points
        var u: [Int] = [], v: [Int] = []
        for j in 0..<k {
            var xs = x[j], xe = x[j + 1], ys = y[j], ye = y[j + 1]
            let dx = abs(xe - xs), dy = abs(ys - ye)
            let alongX = dx >= dy
            let flip = (alongX && xs > xe) || (!alongX && ys > ye)
            if flip { swap(&xs, &xe); swap(&ys, &ye) }
            if alongX {
                // dx == dy == 0: a repeated vertex. pycocotools divides 0 by 0 here and stores whatever
                // (int)NaN gives; that point never starts a step in x, so its y does not matter.
                let slope = dx == 0 ? 0 : Double(ye - ys) / Double(dx)
                for d in 0...dx {
                    let t = flip ? dx - d : d
                    u.append(t + xs)
                    v.append(Int(Double(ys) + slope * Double(t) + 0.5))
                }
            } else {
                let slope = Double(xe - xs) / Double(dy)
                for d in 0...dy {
                    let t = flip ? dy - d : d
                    v.append(t + ys)
                    u.append(Int(Double(xs) + slope * Double(t) + 0.5))
                }
            }
        }
        // 3. toggle points
        let h = height, w = width
        var toggles: [Int] = []
        for j in 1..<max(u.count, 1) where u[j] != u[j - 1] {
            var xd = Double(u[j] < u[j - 1] ? u[j] : u[j] - 1)
            xd = (xd + 0.5) / scale - 0.5
            if xd.rounded(.down) != xd || xd < 0 || xd > Double(w - 1) { continue }
            var yd = Double(v[j] < v[j - 1] ? v[j] : v[j - 1])
            yd = (yd + 0.5) / scale - 0.5
            if yd < 0 { yd = 0 } else if yd > Double(h) { yd = Double(h) }
            yd = yd.rounded(.up)
            toggles.append(Int(xd) * h + Int(yd))
        }
        // 4. runs between sorted toggles; a zero gap cancels the pair around it
        toggles.append(h * w)
        toggles.sort()
        var gaps = [Int](repeating: 0, count: toggles.count)
        var previous = 0
        for (i, t) in toggles.enumerated() { gaps[i] = t - previous; previous = t }
        var counts = [gaps[0]]
        var i = 1
        while i < gaps.count {
            if gaps[i] > 0 {
                counts.append(gaps[i])
                i += 1
            } else {
                i += 1
                if i < gaps.count { counts[counts.count - 1] += gaps[i]; i += 1 }
            }
        }
        return RLE(unchecked: h, w, counts)
    }
}

/// A COCO / LVIS `segmentation` value, in the forms the reference accepts (spec 5.2-5.3).
public enum COCOSegmentation: Equatable, Sendable {
    /// A list of polygons `[[x0, y0, x1, y1, ...], ...]`, one per part. An empty list is an empty mask
    /// (as the refer_seg loader treats it).
    case polygons([[Double]])
    /// One RLE: `{"size": [h, w], "counts": [runs...]}` (uncompressed) or `"counts": "string"`.
    case rle(RLE)
    /// A list of RLE dicts, one per part.
    case rles([RLE])

    /// Parses a segmentation from `JSONSerialization` objects. Errors name `item` and the problem; a
    /// value that is neither polygons nor RLE is an error.
    public init(json: Any, item: String) throws {
        if let list = json as? [Any] {
            if list.isEmpty { self = .polygons([]); return }
            if list.first is [String: Any] {
                self = .rles(try list.enumerated().map { i, e in
                    guard let d = e as? [String: Any] else {
                        throw MaskError(item: item, "segmentation part \(i) is not an RLE dict like part 0")
                    }
                    return try Self.parseRLE(d, item: "\(item) part \(i)")
                })
                return
            }
            guard list.first is [Any] else {
                if Self.number(list.first!) != nil {
                    throw MaskError(item: item, "segmentation is a flat list of numbers; polygons must be a list of lists [[x0, y0, ...], ...]")
                }
                throw MaskError(item: item, "segmentation is a list of \(Self.typeName(list.first!)), neither polygons nor RLE dicts")
            }
            var polygons: [[Double]] = []
            for (i, e) in list.enumerated() {
                guard let p = e as? [Any] else { throw MaskError(item: item, "polygon \(i) is not a list of numbers") }
                var coords: [Double] = []
                coords.reserveCapacity(p.count)
                for (j, c) in p.enumerated() {
                    guard let v = Self.number(c) else {
                        throw MaskError(item: item, "polygon \(i) coordinate \(j) is \(Self.typeName(c)), not a number")
                    }
                    coords.append(v)
                }
                polygons.append(coords)
            }
            try Self.checkPolygons(polygons, item: item)
            self = .polygons(polygons)
            return
        }
        if let d = json as? [String: Any] {
            self = .rle(try Self.parseRLE(d, item: item))
            return
        }
        throw MaskError(item: item, "segmentation is \(Self.typeName(json)), neither polygons nor RLE")
    }

    /// Polygon lists pycocotools would mis-read or reject: the first polygon decides the kind (exactly 4
    /// numbers means bounding boxes, which it then rejects for a list; fewer is unsupported), odd
    /// coordinate counts (it silently drops the last number) and empty polygons.
    static func checkPolygons(_ polygons: [[Double]], item: String) throws {
        guard let first = polygons.first else { return }
        if first.count == 4 {
            throw MaskError(item: item, "polygon 0 has 4 coordinates: pycocotools takes such a list for bounding boxes and fails")
        }
        if first.count < 4 {
            throw MaskError(item: item, "polygon 0 has \(first.count) coordinates; pycocotools needs more than 4 to read polygons")
        }
        for (i, p) in polygons.enumerated() {
            if p.count % 2 != 0 { throw MaskError(item: item, "polygon \(i) has an odd number of coordinates (\(p.count))") }
            if p.isEmpty { throw MaskError(item: item, "polygon \(i) is empty") }
        }
    }

    static func parseRLE(_ d: [String: Any], item: String) throws -> RLE {
        guard let size = d["size"] as? [Any], size.count == 2,
              let h = number(size[0]).flatMap(exactInt), let w = number(size[1]).flatMap(exactInt), h >= 0, w >= 0 else {
            throw MaskError(item: item, "RLE needs \"size\": [height, width] of non-negative integers")
        }
        if let s = d["counts"] as? String { return try RLE(height: h, width: w, compressed: s, item: item) }
        if let list = d["counts"] as? [Any] {
            var counts: [Int] = []
            counts.reserveCapacity(list.count)
            for (i, c) in list.enumerated() {
                guard let v = number(c).flatMap(exactInt) else {
                    throw MaskError(item: item, "RLE count \(i) is \(typeName(c)), not an integer")
                }
                counts.append(v)
            }
            return try RLE(height: h, width: w, counts: counts, item: item)
        }
        if d["counts"] == nil { throw MaskError(item: item, "RLE dict has no \"counts\"") }
        throw MaskError(item: item, "RLE \"counts\" is \(typeName(d["counts"]!)), neither a list of runs nor a string")
    }

    /// A JSON number (JSONSerialization gives NSNumber; true/false are NSNumbers of type "c" and are
    /// not numbers here).
    static func number(_ v: Any) -> Double? {
        if let n = v as? NSNumber {
            return String(cString: n.objCType) == "c" ? nil : n.doubleValue
        }
        return nil
    }

    static func exactInt(_ d: Double) -> Int? {
        guard d.isFinite, d.rounded() == d, abs(d) < 9.0e15 else { return nil }
        return Int(d)
    }

    static func typeName(_ v: Any) -> String {
        switch v {
        case is String: return "a string"
        case is [Any]: return "a list"
        case is [String: Any]: return "a dict"
        case is NSNull: return "null"
        case let n as NSNumber: return String(cString: n.objCType) == "c" ? "a boolean" : "a number"
        default: return "\(type(of: v))"
        }
    }

    /// pycocotools `frPyObjects(segmentation, height, width)`: one RLE per part. RLEs must have the
    /// image's size.
    public func rles(height: Int, width: Int, item: String) throws -> [RLE] {
        switch self {
        case .polygons(let polygons):
            try Self.checkPolygons(polygons, item: item)
            return try polygons.enumerated().map { i, p in
                try RLE.polygon(p, height: height, width: width, item: "\(item) polygon \(i)")
            }
        case .rle(let r):
            try Self.checkSize(r, height: height, width: width, item: item)
            return [r]
        case .rles(let rs):
            for (i, r) in rs.enumerated() { try Self.checkSize(r, height: height, width: width, item: "\(item) part \(i)") }
            return rs
        }
    }

    static func checkSize(_ r: RLE, height: Int, width: Int, item: String) throws {
        if r.height != height || r.width != width {
            throw MaskError(item: item, "RLE size [\(r.height), \(r.width)] differs from the image size [\(height), \(width)]")
        }
    }

    /// The object's mask: the parts decoded, summed and binarised (> 0), i.e. their union.
    public func mask(height: Int, width: Int, item: String) throws -> BinaryMask {
        let parts = try rles(height: height, width: width, item: item)
        if parts.isEmpty { return BinaryMask(height: height, width: width) }
        return try RLE.merge(parts, item: item).decode()
    }
}
