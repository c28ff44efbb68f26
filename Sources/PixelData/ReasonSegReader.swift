// ReasonSeg (utils/reason_seg_dataset.py, utils/data_processing.py get_mask_from_json).
//
// `<datasetDir>/reason_seg/ReasonSeg/<split>/*.jpg`, each with a same-name labelme-style .json: "text" (the
// sentences), "is_sentence", "shapes" ({label, points}). The reference rasterises every shape with
// cv2.polylines + cv2.fillPoly on int32-truncated points, largest area first, label "ignore" -> 255, others
// -> 1, "flag" shapes skipped; the target is `mask == 1`. pixellm rasterises the same way: CVPolygon below
// follows OpenCV's 8-connected lines (with its clipping) and fixed-point scanline fill, identical to the
// installed cv2 for vertices inside the image (out-of-image vertices: ~1 % of pixels differ at the border).
// Ignore pixels (255) are NOT part of the target: a SampleTarget mask is binary, and an ignore shape drawn
// over a target removes those pixels, as in the reference; the ignore region itself is not recorded.
//
// Per image: up to num_classes_per_sample sentences (random.choice without replacement), one question each
// (long template with {sent} when is_sentence, else short template with {class_name} = text.lower()), the same
// target mask for every question. With the explanatory file (`ReasonSeg/explanatory/train.json`) and
// options.explanatory != -1, images listed there draw once: p = explanatory -> text-only answer (no masks),
// else 50/50 plain `[SEG]` answer or `[SEG]` answer + explanation with an explanatory question.
import Foundation
import PixelTensor

public final class ReasonSegReader: DatasetReader {
    public let dataset = "reason_seg"
    public let subset: String
    public let split: String
    public let datasetDir: String
    public let options: ReaderOptions
    public let indexSkips = SkipLog()
    /// The images, sorted by path.
    public let images: [String]
    /// image basename -> explanation ("outputs") from explanatory/train.json, when it was read.
    public let explanations: [String: String]
    public var count: Int { images.count }

    public init(datasetDir: String, split: String, options: ReaderOptions = ReaderOptions()) throws {
        let dir = ReaderJSON.absolute(datasetDir)
        self.datasetDir = dir
        self.split = split
        self.subset = "ReasonSeg/\(split)"
        self.options = options
        let root = "\(dir)/reason_seg/ReasonSeg"
        var imgs: [String] = []
        // "train_val" reads both folders, as the reference splits on "_"
        for s in split.split(separator: "_").map(String.init) {
            let d = "\(root)/\(s)"
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: d, isDirectory: &isDir), isDir.boolValue else {
                throw DatasetError(file: d, "ReasonSeg split directory not found")
            }
            let names = (try? FileManager.default.contentsOfDirectory(atPath: d)) ?? []
            imgs += names.filter { $0.hasSuffix(".jpg") }.sorted().map { "\(d)/\($0)" }
        }
        self.images = imgs
        var expl: [String: String] = [:]
        let ef = "\(root)/explanatory/train.json"
        if options.explanatory != -1 && FileManager.default.fileExists(atPath: ef) {
            guard let list = try ReaderJSON.load(ef) as? [Any] else { throw DatasetError(file: ef, "the top level is not a list") }
            for (k, item) in list.enumerated() {
                guard let d = item as? [String: Any], let img = d["image"] as? String else {
                    throw DatasetError(file: ef, "entry \(k): not a dict with a string 'image'")
                }
                guard let out = d["outputs"] as? String else {
                    throw DatasetError(file: ef, "entry \(k): 'outputs' is \(ReaderJSON.typeName(d["outputs"])), not a string")
                }
                expl[img] = out
            }
        }
        self.explanations = expl
    }

    /// One image's annotation: the image, its sentences, whether they are sentences (long questions) or names, and
    /// the target mask (get_mask_from_json: label 1 = target).
    public func annotation(_ index: Int) throws -> (imagePath: String, height: Int, width: Int, sentences: [String],
                                                    isSentence: Bool, target: RLE, source: String) {
        guard images.indices.contains(index) else {
            throw SampleSkip(file: datasetDir, "index out of range: \(index) not in 0..<\(count)")
        }
        let imagePath = images[index]
        let jsonPath = String(imagePath.dropLast(4)) + ".json"
        let src = "\(subset)/\(ReaderJSON.basename(jsonPath))"
        let (height, width) = try ImageHeader.size(imagePath)
        let anno: [String: Any]
        do {
            guard let a = try ReaderJSON.load(jsonPath) as? [String: Any] else {
                throw SampleSkip(file: jsonPath, "bad annotation: the top level is not a dict")
            }
            anno = a
        } catch let e as DatasetError {
            throw SampleSkip(file: jsonPath, "bad annotation: \(e.message)")
        }
        var sents: [String]
        if let s = anno["text"] as? String { sents = [s] } else if let l = anno["text"] as? [Any] {
            sents = []
            for (k, v) in l.enumerated() {
                guard let s = v as? String else { throw SampleSkip(file: jsonPath, "bad annotation: text \(k) is \(ReaderJSON.typeName(v))") }
                sents.append(s)
            }
        } else {
            throw SampleSkip(file: jsonPath, "bad annotation: 'text' is \(ReaderJSON.typeName(anno["text"])), not a list of sentences")
        }
        guard !sents.isEmpty else { throw SampleSkip(file: jsonPath, "no sentences: 'text' is empty") }
        let isSentence: Bool
        if let n = anno["is_sentence"] as? NSNumber { isSentence = n.boolValue } else {
            throw SampleSkip(file: jsonPath, "bad annotation: 'is_sentence' is \(ReaderJSON.typeName(anno["is_sentence"]))")
        }
        guard let shapes = anno["shapes"] as? [Any] else {
            throw SampleSkip(file: jsonPath, "bad annotation: 'shapes' is \(ReaderJSON.typeName(anno["shapes"])), not a list")
        }
        let mask = try Self.labelMask(shapes, height: height, width: width, file: jsonPath)
        let target = RLE(encoding: BinaryMask(height: height, width: width, data: mask.map { $0 == 1 ? 1 : 0 }))
        return (imagePath, height, width, sents, isSentence, target, src)
    }

    public func sample(_ index: Int, seed: UInt64) throws -> DataSample {
        let (imagePath, height, width, sents, isSentence, target, src) = try annotation(index)
        let name = ReaderJSON.basename(imagePath)

        var rng = DataRNG.make(seed: seed, subset: subset, index: index)
        let inds = sents.count >= options.numClassesPerSample
            ? DataRNG.sample(Array(0..<sents.count), options.numClassesPerSample, &rng) : Array(0..<sents.count)
        let explanation = options.explanatory != -1 ? explanations[name] : nil
        var choice = 0
        if explanation != nil {
            choice = Double(rng.uniform()) < options.explanatory ? 2 : rng.int(2)
        }
        let group = options.segGroup
        let longQ = Templates.questionList(short: false, expand: options.useExpandQuestionList)
        let shortQ = Templates.questionList(short: true, expand: options.useExpandQuestionList)
        var conversations: [[DialogueRound]] = []
        var targets: [SampleTarget] = []
        for i in inds {
            let text = sents[i]
            var question = isSentence ? Templates.fill(DataRNG.choice(longQ, &rng), sent: text)
                : Templates.fill(DataRNG.choice(shortQ, &rng), className: text.lowercased())
            let answer: String
            if let ex = explanation, choice == 1 {
                answer = DataRNG.choice(Templates.answers, &rng).replacingOccurrences(of: "[SEG]", with: group) + " " + ex
                question = "<image>\n" + text + " " + DataRNG.choice(Templates.explanatoryQuestions, &rng)
            } else if let ex = explanation, choice == 2 {
                question = "<image>\n" + text
                answer = ex
            } else {
                answer = DataRNG.choice(Templates.answers, &rng).replacingOccurrences(of: "[SEG]", with: group)
            }
            conversations.append([DialogueRound(question: question, answer: answer)])
            if choice != 2 { targets.append(SampleTarget(mask: target, name: text, provenance: "\(src) text \(i)")) }
        }
        return DataSample(dataset: dataset, subset: subset, index: index, imagePath: imagePath, height: height, width: width,
                          conversations: conversations, targets: targets, source: src)
    }

    /// get_mask_from_json: 0 background, 1 target, 255 ignore.
    public static func labelMask(_ shapes: [Any], height: Int, width: Int, file: String) throws -> [UInt8] {
        var polys: [(label: String, points: [(Int, Int)], area: Int)] = []
        for (k, s) in shapes.enumerated() {
            guard let d = s as? [String: Any], let label = d["label"] as? String else {
                throw SampleSkip(file: file, "bad annotation: shape \(k) is not a dict with a string 'label'")
            }
            if label.lowercased() == "flag" { continue }
            guard let pl = d["points"] as? [Any] else {
                throw SampleSkip(file: file, "bad annotation: shape \(k) 'points' is \(ReaderJSON.typeName(d["points"]))")
            }
            var pts: [(Int, Int)] = []
            for (j, p) in pl.enumerated() {
                guard let xy = p as? [Any], xy.count == 2, let x = (xy[0] as? NSNumber)?.doubleValue,
                      let y = (xy[1] as? NSNumber)?.doubleValue, x.isFinite, y.isFinite, abs(x) < 1e9, abs(y) < 1e9 else {
                    throw SampleSkip(file: file, "bad annotation: shape \(k) point \(j) is not an [x, y] pair of numbers")
                }
                pts.append((Int(x), Int(y)))  // np.int32 conversion truncates towards zero
            }
            guard !pts.isEmpty else { throw SampleSkip(file: file, "bad annotation: shape \(k) has no points") }
            var tmp = [UInt8](repeating: 0, count: height * width)
            CVPolygon.draw(&tmp, height: height, width: width, points: pts, value: 1)
            polys.append((label, pts, tmp.reduce(0) { $0 + Int($1) }))
        }
        // np.argsort(area)[::-1]: ascending (stable for these small lists), then reversed
        let order = polys.indices.sorted { polys[$0].area != polys[$1].area ? polys[$0].area < polys[$1].area : $0 < $1 }.reversed()
        var mask = [UInt8](repeating: 0, count: height * width)
        for i in order {
            CVPolygon.draw(&mask, height: height, width: width, points: polys[i].points,
                           value: polys[i].label.lowercased().contains("ignore") ? 255 : 1)
        }
        return mask
    }
}

/// OpenCV's `polylines(closed, thickness 1, LINE_8)` followed by `fillPoly(LINE_8, shift 0)` for one polygon
/// with integer vertices, on a single-channel row-major image.
enum CVPolygon {
    static let shift = 16
    static let one: Int64 = 1 << 16

    static func draw(_ img: inout [UInt8], height: Int, width: Int, points: [(Int, Int)], value: UInt8) {
        let n = points.count
        guard n > 0, height > 0, width > 0 else { return }
        // polylines: segments v[n-1] -> v[0], v[0] -> v[1], ...
        var p0 = points[n - 1]
        for p in points { line(&img, height: height, width: width, p0, p, value); p0 = p }
        fill(&img, height: height, width: width, points: points, value: value)
    }

    /// cv::Line, 8-connected, left to right, clipped to the image first.
    static func line(_ img: inout [UInt8], height: Int, width: Int, _ a: (Int, Int), _ b: (Int, Int), _ value: UInt8) {
        var x1 = Int64(a.0), y1 = Int64(a.1), x2 = Int64(b.0), y2 = Int64(b.1)
        let w = Int64(width), h = Int64(height)
        if x1 < 0 || x1 >= w || x2 < 0 || x2 >= w || y1 < 0 || y1 >= h || y2 < 0 || y2 >= h {
            if !clip(width: w, height: h, &x1, &y1, &x2, &y2) { return }
        }
        var dx = x2 - x1, dy = y2 - y1
        if dx < 0 { dx = -dx; dy = -dy; swap(&x1, &x2); swap(&y1, &y2) }
        var sy: Int64 = 1
        if dy < 0 { dy = -dy; sy = -1 }
        let vert = dy > dx
        if vert { swap(&dx, &dy) }
        var err = dx - 2 * dy
        var x = x1, y = y1
        for _ in 0...Int(dx) {
            if x >= 0 && x < w && y >= 0 && y < h { img[Int(y) * width + Int(x)] = value }
            let minor = err < 0
            err += -2 * dy + (minor ? 2 * dx : 0)
            if vert { y += sy; if minor { x += 1 } } else { x += 1; if minor { y += sy } }
        }
    }

    /// (int64)(double) as C truncates; non-finite values (never reached for valid clips) give 0 instead of trapping.
    static func t64(_ d: Double) -> Int64 { d.isFinite && abs(d) < 9e18 ? Int64(d) : 0 }

    /// cv::clipLine on (width, height): Cohen-Sutherland with OpenCV's integer arithmetic.
    @discardableResult
    static func clip(width: Int64, height: Int64, _ x1: inout Int64, _ y1: inout Int64, _ x2: inout Int64, _ y2: inout Int64) -> Bool {
        guard width > 0, height > 0 else { return false }
        let right = width - 1, bottom = height - 1
        func code(_ x: Int64, _ y: Int64) -> Int {
            (x < 0 ? 1 : 0) + (x > right ? 2 : 0) + (y < 0 ? 4 : 0) + (y > bottom ? 8 : 0)
        }
        var c1 = code(x1, y1), c2 = code(x2, y2)
        if (c1 & c2) == 0 && (c1 | c2) != 0 {
            if c1 & 12 != 0 {
                let a: Int64 = c1 < 8 ? 0 : bottom
                x1 += t64(Double(a - y1) * Double(x2 - x1) / Double(y2 - y1))
                y1 = a
                c1 = (x1 < 0 ? 1 : 0) + (x1 > right ? 2 : 0)
            }
            if c2 & 12 != 0 {
                let a: Int64 = c2 < 8 ? 0 : bottom
                x2 += t64(Double(a - y2) * Double(x2 - x1) / Double(y2 - y1))
                y2 = a
                c2 = (x2 < 0 ? 1 : 0) + (x2 > right ? 2 : 0)
            }
            if (c1 & c2) == 0 && (c1 | c2) != 0 {
                if c1 != 0 {
                    let a: Int64 = c1 == 1 ? 0 : right
                    y1 += t64(Double(a - x1) * Double(y2 - y1) / Double(x2 - x1))
                    x1 = a
                    c1 = 0
                }
                if c2 != 0 {
                    let a: Int64 = c2 == 1 ? 0 : right
                    y2 += t64(Double(a - x2) * Double(y2 - y1) / Double(x2 - x1))
                    x2 = a
                    c2 = 0
                }
            }
        }
        return (c1 | c2) == 0
    }

    /// cv::fillPoly's edge table and scanline fill for one contour (non-antialiased, shift 0): edges in 16.16
    /// fixed point from the upper vertex, dx = (x1 - x0) / (y1 - y0) truncated, active on rows y0 <= y < y1;
    /// on each row the sorted crossings are paired and [ceil(xl), floor(xr)] is filled. Checked against the
    /// installed cv2 (5.0.0) on random polygons: identical for vertices inside the image. With vertices outside,
    /// OpenCV clips differently and ~1 % of the pixels near the border differ (documented; labelme points lie
    /// inside the image).
    static func fill(_ img: inout [UInt8], height: Int, width: Int, points: [(Int, Int)], value: UInt8) {
        struct Edge { var y0: Int64; var y1: Int64; var x: Int64; var dx: Int64 }
        var edges: [Edge] = []
        let w = Int64(width), h = Int64(height)
        var pt0 = (x: Int64(points[points.count - 1].0) << shift, y: Int64(points[points.count - 1].1))
        for p in points {
            let pt1 = (x: Int64(p.0) << shift, y: Int64(p.1))
            defer { pt0 = pt1 }
            if pt0.y == pt1.y { continue }
            let dx = (pt1.x - pt0.x) / (pt1.y - pt0.y)  // C division truncates towards zero, as Swift's
            if pt0.y < pt1.y { edges.append(Edge(y0: pt0.y, y1: pt1.y, x: pt0.x, dx: dx)) }
            else { edges.append(Edge(y0: pt1.y, y1: pt0.y, x: pt1.x, dx: dx)) }
        }
        guard edges.count >= 2 else { return }
        let yMin = edges.map(\.y0).min() ?? 0
        let yMax = min(edges.map(\.y1).max() ?? 0, h)
        var xs: [Int64] = []
        var y = max(yMin, 0)  // rows above the image draw nothing; x is computed per row, not accumulated
        while y < yMax {
            xs.removeAll(keepingCapacity: true)
            // wrapping arithmetic: absurd coordinates (|v| up to 1e9) must not trap; OpenCV's int64 wraps too
            for e in edges where e.y0 <= y && y < e.y1 { xs.append(e.x &+ (y &- e.y0) &* e.dx) }
            xs.sort()
            var k = 0
            while k + 1 < xs.count {
                var xa = (xs[k] &+ one &- 1) >> shift, xb = xs[k + 1] >> shift
                if xa < w && xb >= 0 {
                    if xa < 0 { xa = 0 }
                    if xb >= w { xb = w - 1 }
                    if xa <= xb {
                        let row = Int(y) * width
                        for x in Int(xa)...Int(xb) { img[row + x] = value }
                    }
                }
                k += 2
            }
            y += 1
        }
    }
}

/// Image size from the file header (JPEG SOF / PNG IHDR), with the EXIF orientation cv2.imread applies.
/// Nothing is decoded.
enum ImageHeader {
    static func size(_ path: String) throws -> (height: Int, width: Int) {
        guard FileManager.default.fileExists(atPath: path) else {
            throw SampleSkip(file: path, "missing image: the file does not exist")
        }
        let bytes: [UInt8]
        do { bytes = try Image.readFile(path) } catch { throw SampleSkip(file: path, "unreadable image: \(error)") }
        func be16(_ i: Int) -> Int { Int(bytes[i]) << 8 | Int(bytes[i + 1]) }
        func be32(_ i: Int) -> Int { be16(i) << 16 | be16(i + 2) }
        switch ImageFormat.detect(bytes) {
        case .png:
            guard bytes.count >= 24 else { throw SampleSkip(file: path, "bad image: truncated PNG header") }
            return (be32(20), be32(16))
        case .jpeg:
            var i = 2
            while i + 9 < bytes.count {
                guard bytes[i] == 0xFF else { i += 1; continue }
                let m = bytes[i + 1]
                if m == 0xFF { i += 1; continue }
                if m == 0xD8 || m == 0x01 || (0xD0...0xD7).contains(m) { i += 2; continue }
                if (0xC0...0xCF).contains(m) && m != 0xC4 && m != 0xC8 && m != 0xCC {
                    var h = be16(i + 5), w = be16(i + 7)
                    if let o = try? Image.exifOrientation(bytes, name: path), (5...8).contains(o) { swap(&h, &w) }
                    guard h > 0, w > 0 else { throw SampleSkip(file: path, "bad image: JPEG frame size \(w)x\(h)") }
                    return (h, w)
                }
                if m == 0xD9 || m == 0xDA { break }
                i += 2 + be16(i + 2)
            }
            throw SampleSkip(file: path, "bad image: no JPEG frame header")
        case nil:
            throw SampleSkip(file: path, "bad image: neither JPEG nor PNG")
        }
    }
}
