import Foundation
import PixelTensor

// Output images of `pixellm chat`: one binary mask PNG per target (0 / 255, the original size; mask =
// logit > 0) and an overlay: the image with each mask blended in its own colour, its outline drawn solid,
// and a legend panel below the image (the canvas widened when the legend needs it; a colour swatch and "N label" per target) written with a small
// built-in 5x7 bitmap font (digits, A-Z (lower case is drawn as upper case), space and - . : , ' ( ) / # ?;
// other characters are drawn as '?').

public enum MaskOverlay {
    /// Distinct, saturated colours; target k uses palette[k % count].
    public static let palette: [(UInt8, UInt8, UInt8)] = [
        (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
        (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128), (170, 110, 40),
    ]

    /// Binary masks (logit > 0) of logits [K, H, W] as gray images (255 inside).
    public static func binaryMasks(_ logits: Tensor) -> [GrayImage] {
        precondition(logits.rank == 3, "binaryMasks: logits \(describe(logits.shape)) are not [K, H, W]")
        let c = logits.contiguousData()
        let K = c.dim(0), H = c.dim(1), W = c.dim(2)
        return (0..<K).map { k in
            let p = c.ptr + k * H * W
            return GrayImage(width: W, height: H, pixels: (0..<(H * W)).map { p[$0] > 0 ? 255 : 0 })
        }
    }

    /// The overlay: `image` with every mask (same size as the image) blended at `alpha`, outlined, and a
    /// legend below: "N" (the number of the target in the printed answer) and labels[N-1] when given.
    public static func render(image: RGBImage, masks: [GrayImage], labels: [String]? = nil, alpha: Float = 0.5) -> RGBImage {
        let W = image.width, H = image.height
        for m in masks { precondition(m.width == W && m.height == H, "overlay: mask \(m.width)x\(m.height) for a \(W)x\(H) image") }
        let scale = max(1, min(W, 2 * H) / 320)
        let lineH = 9 * scale + 4
        let panel = masks.isEmpty ? 0 : masks.count * lineH + 4
        let texts = masks.indices.map { k in "\(k + 1)" + (labels.flatMap { k < $0.count ? " " + $0[k] : nil } ?? "") }
        // the canvas is widened (white) when the legend is wider than a small image
        let CW = max(W, texts.map { 2 + 7 * scale + 6 + textWidth($0, scale: scale) + 2 }.max() ?? 0)
        var out = [UInt8](repeating: 255, count: CW * (H + panel) * 3)
        for y in 0..<H { for i in 0..<(W * 3) { out[y * CW * 3 + i] = image.pixels[y * W * 3 + i] } }
        for (k, m) in masks.enumerated() {
            let col = palette[k % palette.count]
            let c = [Float(col.0), Float(col.1), Float(col.2)]
            for y in 0..<H {
                for x in 0..<W where m.pixels[y * W + x] != 0 {
                    let edge = x == 0 || y == 0 || x == W - 1 || y == H - 1 || m.pixels[y * W + x - 1] == 0
                        || m.pixels[y * W + x + 1] == 0 || m.pixels[(y - 1) * W + x] == 0 || m.pixels[(y + 1) * W + x] == 0
                    for ch in 0..<3 {
                        let i = (y * CW + x) * 3 + ch
                        let v = edge ? c[ch] : (1 - alpha) * Float(out[i]) + alpha * c[ch]
                        out[i] = UInt8(max(0, min(255, v.rounded())))
                    }
                }
            }
        }
        var canvas = RGBImage(width: CW, height: H + panel, pixels: out)
        for k in masks.indices {
            let y0 = H + 4 + k * lineH
            let col = palette[k % palette.count]
            fillRect(&canvas, x: 2, y: y0, w: 7 * scale + 2, h: 7 * scale + 2, col)
            drawText(&canvas, texts[k], x: 2 + 7 * scale + 6, y: y0 + 1, scale: scale, color: (0, 0, 0))
        }
        return canvas
    }

    /// Writes `<dir>/mask_<k>.png` (k from 1) and `<dir>/overlay.png`; returns the paths written.
    @discardableResult
    public static func write(image: RGBImage, logits: Tensor?, labels: [String]? = nil, to directory: String) throws -> [String] {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let masks = logits.map(binaryMasks) ?? []
        var paths: [String] = []
        for (k, m) in masks.enumerated() {
            let p = (directory as NSString).appendingPathComponent("mask_\(k + 1).png")
            try m.writePNG(p)
            paths.append(p)
        }
        let p = (directory as NSString).appendingPathComponent("overlay.png")
        try render(image: image, masks: masks, labels: labels).writePNG(p)
        paths.append(p)
        return paths
    }

    // MARK: drawing

    static func fillRect(_ img: inout RGBImage, x: Int, y: Int, w: Int, h: Int, _ c: (UInt8, UInt8, UInt8)) {
        let y0 = max(0, y), y1 = min(img.height, y + h), x0 = max(0, x), x1 = min(img.width, x + w)
        guard y0 < y1 && x0 < x1 else { return }
        for yy in y0..<y1 {
            for xx in x0..<x1 {
                let i = (yy * img.width + xx) * 3
                img.pixels[i] = c.0; img.pixels[i + 1] = c.1; img.pixels[i + 2] = c.2
            }
        }
    }

    /// Draws `text` with the 5x7 font, each font pixel a `scale` x `scale` square, 1 font pixel between
    /// glyphs; clipped to the image.
    public static func drawText(_ img: inout RGBImage, _ text: String, x: Int, y: Int, scale: Int = 1, color: (UInt8, UInt8, UInt8)) {
        var cx = x
        for ch in text.uppercased() {
            let rows = BitmapFont.glyph(ch)
            for (r, bits) in rows.enumerated() {
                for col in 0..<5 where bits & (1 << (4 - col)) != 0 {
                    fillRect(&img, x: cx + col * scale, y: y + r * scale, w: scale, h: scale, color)
                }
            }
            cx += 6 * scale
            if cx >= img.width { break }
        }
    }

    /// Width in pixels of `text` drawn at `scale`.
    public static func textWidth(_ text: String, scale: Int = 1) -> Int { text.count * 6 * scale - (text.isEmpty ? 0 : scale) }
}

/// A 5x7 bitmap font drawn by hand for this project: 7 rows per glyph, bit 4 is the leftmost column.
public enum BitmapFont {
    static let glyphs: [Character: [UInt8]] = [
        "0": [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E], "1": [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        "2": [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F], "3": [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        "4": [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02], "5": [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        "6": [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E], "7": [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        "8": [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E], "9": [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        "A": [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11], "B": [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        "C": [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E], "D": [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        "E": [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F], "F": [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        "G": [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F], "H": [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        "I": [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E], "J": [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        "K": [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11], "L": [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        "M": [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11], "N": [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        "O": [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E], "P": [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        "Q": [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D], "R": [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        "S": [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E], "T": [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        "U": [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E], "V": [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        "W": [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A], "X": [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        "Y": [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04], "Z": [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        " ": [0, 0, 0, 0, 0, 0, 0], "-": [0, 0, 0, 0x1F, 0, 0, 0], ".": [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ":": [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0], ",": [0, 0, 0, 0, 0x0C, 0x04, 0x08], "'": [0x0C, 0x04, 0x08, 0, 0, 0, 0],
        "(": [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02], ")": [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        "/": [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0], "#": [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A],
        "?": [0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04],
    ]

    /// The 7 rows of `c` ('?' for a character the font lacks).
    public static func glyph(_ c: Character) -> [UInt8] { glyphs[c] ?? glyphs["?"]! }
    public static func has(_ c: Character) -> Bool { glyphs[c] != nil }
}
