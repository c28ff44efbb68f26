// Procedural scenes for `pixellm synth`: 1-8 coloured shapes on a plain or textured background, with
// z-order occlusion. Every shape is a polygon rasterised exactly as pycocotools does (RLE.polygon), so
// an unoccluded object's polygon decodes to its visible pixels; each object's mask is its visible part
// of the label map. All randomness comes from PixelTensor.RNG.
import Foundation
import PixelTensor

public enum SynthShape: Int, CaseIterable, Sendable {
    case circle = 1, square, triangle, star, hexagon, diamond, pentagon

    public var name: String {
        switch self {
        case .circle: return "circle"
        case .square: return "square"
        case .triangle: return "triangle"
        case .star: return "star"
        case .hexagon: return "hexagon"
        case .diamond: return "diamond"
        case .pentagon: return "pentagon"
        }
    }
    public var plural: String { name + "s" }
    /// Category id in the COCO-style files (1-based).
    public var categoryID: Int { rawValue }
    public var hasCorners: Bool { self != .circle }
}

public enum SynthColor: Int, CaseIterable, Sendable {
    case red, green, blue, yellow, purple, orange, white, black

    public var name: String {
        switch self {
        case .red: return "red"
        case .green: return "green"
        case .blue: return "blue"
        case .yellow: return "yellow"
        case .purple: return "purple"
        case .orange: return "orange"
        case .white: return "white"
        case .black: return "black"
        }
    }
    public var rgb: (UInt8, UInt8, UInt8) {
        switch self {
        case .red: return (215, 35, 35)
        case .green: return (35, 165, 60)
        case .blue: return (35, 75, 215)
        case .yellow: return (240, 210, 30)
        case .purple: return (135, 55, 175)
        case .orange: return (245, 135, 25)
        case .white: return (250, 250, 250)
        case .black: return (20, 20, 20)
        }
    }
}

/// Size classes by the shape's full area as a fraction of the image: small 0.6-1.4 %, medium 2.5-4.5 %,
/// large 7-11 %; the bands are far apart so the words are unambiguous.
public enum SynthSize: Int, CaseIterable, Sendable {
    case small, medium, large
    public var name: String { ["small", "medium", "large"][rawValue] }
    var areaBand: (Double, Double) { [(0.006, 0.014), (0.025, 0.045), (0.07, 0.11)][rawValue] }
}

public struct SynthObject: Sendable {
    public var shape: SynthShape
    public var color: SynthColor
    public var size: SynthSize
    /// The polygon [x0, y0, x1, y1, ...] in pixel coordinates (pycocotools convention).
    public var polygon: [Double]
    /// The full (unoccluded) shape mask.
    public var fullMask: BinaryMask
    /// The visible pixels: the label map equals this object.
    public var visibleMask: BinaryMask
    public var fullArea: Int
    public var visibleArea: Int
    /// Bounding box of the visible pixels [x, y, w, h] (COCO convention: pixel-edge coordinates).
    public var bbox: [Int]
    public var occluded: Bool { visibleArea != fullArea }
    public var centreX: Double { Double(bbox[0]) + Double(bbox[2]) / 2 }
    public var centreY: Double { Double(bbox[1]) + Double(bbox[3]) / 2 }

    public var phrase: String { "\(size.name) \(color.name) \(shape.name)" }
}

public struct SynthScene: Sendable {
    public let width: Int
    public let height: Int
    /// Objects bottom to top (z-order).
    public var objects: [SynthObject]
    /// Per pixel: 0 background, i + 1 for objects[i].
    public var labels: [UInt8]
    public var image: RGBImage
    public var background: String

    /// Minimum fraction of its own area an object keeps visible, and minimum visible pixels.
    public static let minVisibleFraction = 0.6
    public static let minVisiblePixels = 40

    /// A scene with `count` objects (fewer only if placement keeps failing, never zero). `repeatColours` p: each object
    /// after the first takes the colour of an object already placed with probability p (0: every colour drawn
    /// uniformly, no extra random draws), so that colour alone tells fewer objects apart.
    public static func generate(width: Int, height: Int, count: Int, repeatColours: Double = 0, rng: inout RNG) -> SynthScene {
        precondition(width >= 32 && height >= 32, "SynthScene: image \(width)x\(height) is too small")
        var objects: [SynthObject] = []
        var labels = [UInt8](repeating: 0, count: width * height)
        let total = Double(width * height)
        var attempts = 0
        while objects.count < max(count, 1) && attempts < 400 {
            attempts += 1
            let shape = SynthShape.allCases[rng.int(SynthShape.allCases.count)]
            var color = SynthColor.allCases[rng.int(SynthColor.allCases.count)]
            if repeatColours > 0, !objects.isEmpty, Double(rng.uniform()) < repeatColours {
                color = objects[rng.int(objects.count)].color
            }
            let size = SynthSize.allCases[rng.int(SynthSize.allCases.count)]
            let band = size.areaBand
            let targetArea = (band.0 + Double(rng.uniform()) * (band.1 - band.0)) * total
            let unit = polygonPoints(shape, cx: 0, cy: 0, r: 1, rotation: 0)
            let r = (targetArea / polygonArea(unit)).squareRoot()
            let margin = r + 1
            guard Double(width) > 2 * margin, Double(height) > 2 * margin else { continue }
            let cx = margin + Double(rng.uniform()) * (Double(width) - 2 * margin)
            let cy = margin + Double(rng.uniform()) * (Double(height) - 2 * margin)
            let rotation: Double
            switch shape {
            case .square, .diamond: rotation = (Double(rng.uniform()) - 0.5) * 0.2
            case .triangle, .star, .pentagon: rotation = (Double(rng.uniform()) - 0.5) * 0.4
            default: rotation = Double(rng.uniform()) * Double.pi
            }
            let poly = polygonPoints(shape, cx: cx, cy: cy, r: r, rotation: rotation).map { ($0 * 100).rounded() / 100 }
            guard let rle = try? RLE.polygon(poly, height: height, width: width) else { continue }
            let full = rle.decode()
            let fullArea = full.area
            // the size word must hold for the pixels drawn, not only the formula
            let fraction = Double(fullArea) / total
            guard fraction >= band.0 * 0.8 && fraction <= band.1 * 1.2 else { continue }
            // paint on a copy; every earlier object must keep its minimum visible part
            var trial = labels
            let id = UInt8(objects.count + 1)
            for i in 0..<trial.count where full.data[i] != 0 { trial[i] = id }
            var visible = [Int](repeating: 0, count: objects.count + 1)
            for v in trial where v != 0 { visible[Int(v) - 1] += 1 }
            var ok = true
            for (k, o) in objects.enumerated() {
                let v = visible[k]
                if Double(v) < minVisibleFraction * Double(o.fullArea) || v < minVisiblePixels { ok = false; break }
            }
            if !ok || fullArea < minVisiblePixels { continue }
            labels = trial
            objects.append(SynthObject(shape: shape, color: color, size: size, polygon: poly, fullMask: full,
                                       visibleMask: full, fullArea: fullArea, visibleArea: fullArea, bbox: [0, 0, 0, 0]))
        }
        // visible masks and boxes from the final label map
        for k in 0..<objects.count {
            let id = UInt8(k + 1)
            var m = BinaryMask(height: height, width: width)
            var minX = width, minY = height, maxX = -1, maxY = -1, n = 0
            for y in 0..<height {
                for x in 0..<width where labels[y * width + x] == id {
                    m.data[y * width + x] = 1
                    n += 1
                    minX = min(minX, x); maxX = max(maxX, x); minY = min(minY, y); maxY = max(maxY, y)
                }
            }
            objects[k].visibleMask = m
            objects[k].visibleArea = n
            objects[k].bbox = [minX, minY, maxX - minX + 1, maxY - minY + 1]
        }
        var scene = SynthScene(width: width, height: height, objects: objects, labels: labels,
                               image: RGBImage(width: width, height: height), background: "")
        scene.render(rng: &rng)
        return scene
    }

    /// Vertices of a shape of circumradius r.
    static func polygonPoints(_ shape: SynthShape, cx: Double, cy: Double, r: Double, rotation: Double) -> [Double] {
        var radii: [Double], start: Double, stretchY = 1.0
        switch shape {
        case .circle: radii = [Double](repeating: 1, count: 40); start = 0
        case .square: radii = [1, 1, 1, 1]; start = Double.pi / 4
        case .triangle: radii = [1, 1, 1]; start = -Double.pi / 2
        case .star: radii = (0..<10).map { $0 % 2 == 0 ? 1 : 0.45 }; start = -Double.pi / 2
        case .hexagon: radii = [Double](repeating: 1, count: 6); start = 0
        case .diamond: radii = [1, 1, 1, 1]; start = -Double.pi / 2; stretchY = 1.35
        case .pentagon: radii = [Double](repeating: 1, count: 5); start = -Double.pi / 2
        }
        let n = radii.count
        var xy: [Double] = []
        xy.reserveCapacity(2 * n)
        for i in 0..<n {
            let a = start + rotation + 2 * Double.pi * Double(i) / Double(n)
            let rr = r * radii[i]
            var px = rr * cos(a), py = rr * sin(a) * stretchY
            if shape == .diamond { px *= 0.8 }
            // rotate the stretched diamond as a whole
            if shape == .diamond {
                let (c, s) = (cos(rotation), sin(rotation))
                let bx = rr * cos(start + 2 * Double.pi * Double(i) / Double(n)) * 0.8
                let by = rr * sin(start + 2 * Double.pi * Double(i) / Double(n)) * stretchY
                px = bx * c - by * s; py = bx * s + by * c
            }
            xy.append(cx + px)
            xy.append(cy + py)
        }
        return xy
    }

    static func polygonArea(_ xy: [Double]) -> Double {
        let n = xy.count / 2
        var a = 0.0
        for i in 0..<n {
            let j = (i + 1) % n
            a += xy[2 * i] * xy[2 * j + 1] - xy[2 * j] * xy[2 * i + 1]
        }
        return abs(a) / 2
    }

    /// Paints the background (plain, stripes, checker, gradient or noise) and the objects with a light
    /// shading, from the label map.
    mutating func render(rng: inout RNG) {
        let bases: [(Double, Double, Double)] = [(200, 198, 188), (128, 128, 136), (172, 186, 200), (96, 108, 96), (210, 190, 170)]
        let base = bases[rng.int(bases.count)]
        let kinds = ["plain", "stripes", "checker", "gradient", "noise"]
        let kind = kinds[rng.int(kinds.count)]
        background = kind
        let period = 6 + rng.int(14)
        let angle = Double(rng.uniform()) * Double.pi
        let (ca, sa) = (cos(angle), sin(angle))
        var px = [UInt8](repeating: 0, count: width * height * 3)
        let shade = (0..<objects.count).map { _ in (Double(rng.uniform()) - 0.5) * 0.5 }
        for y in 0..<height {
            for x in 0..<width {
                let i = y * width + x
                let l = Int(labels[i])
                var c: (Double, Double, Double)
                if l == 0 {
                    var d = 0.0
                    switch kind {
                    case "stripes": d = (Int((Double(x) * ca + Double(y) * sa) / Double(period)) & 1) == 0 ? 14 : -14
                    case "checker": d = ((x / period + y / period) & 1) == 0 ? 12 : -12
                    case "gradient": d = 30 * (Double(x) * ca + Double(y) * sa) / Double(max(width, height)) - 15
                    case "noise": d = Double(rng.int(25)) - 12
                    default: d = 0
                    }
                    c = (base.0 + d, base.1 + d, base.2 + d)
                } else {
                    let o = objects[l - 1]
                    let (r, g, b) = o.color.rgb
                    // a soft highlight towards the top left of the object's box
                    let t = ((Double(x - o.bbox[0]) / Double(max(o.bbox[2], 1))) + (Double(y - o.bbox[1]) / Double(max(o.bbox[3], 1)))) / 2
                    let f = 1 + shade[l - 1] * 0.2 - 0.12 * t
                    c = (Double(r) * f, Double(g) * f, Double(b) * f)
                }
                px[3 * i] = UInt8(max(0, min(255, c.0.rounded())))
                px[3 * i + 1] = UInt8(max(0, min(255, c.1.rounded())))
                px[3 * i + 2] = UInt8(max(0, min(255, c.2.rounded())))
            }
        }
        image = RGBImage(width: width, height: height, pixels: px)
    }
}
