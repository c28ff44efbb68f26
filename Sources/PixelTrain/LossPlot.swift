import Foundation
import PixelData

/// The loss curve of a run as a PNG (RUN/loss.png; `pixellm plot RUN`): training loss per step (and its CE, BCE,
/// DICE terms, thinner), validation loss as dots, with step and loss axes.
public enum LossPlot {
    public struct Series { public var name: String; public var color: (UInt8, UInt8, UInt8); public var points: [(Double, Double)]; public var dots: Bool }

    /// Reads RUN/metrics.jsonl and writes RUN/loss.png (or `out`). Returns the path.
    @discardableResult
    public static func write(run: String, out: String? = nil) throws -> String {
        let path = (run as NSString).appendingPathComponent("metrics.jsonl")
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw TrainError.file(path, "cannot read the metrics log")
        }
        var loss: [(Double, Double)] = [], ce: [(Double, Double)] = [], bce: [(Double, Double)] = [], dice: [(Double, Double)] = []
        var val: [(Double, Double)] = []
        for (n, line) in text.split(separator: "\n").enumerated() {
            guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                throw TrainError.file(path, "line \(n + 1) is not a JSON object")
            }
            guard let s = (o["step"] as? NSNumber)?.doubleValue else { continue }
            if let l = (o["loss"] as? NSNumber)?.doubleValue { loss.append((s, l)) }
            if let l = (o["ce"] as? NSNumber)?.doubleValue { ce.append((s, l)) }
            if let l = (o["bce"] as? NSNumber)?.doubleValue { bce.append((s, l)) }
            if let l = (o["dice"] as? NSNumber)?.doubleValue { dice.append((s, l)) }
            if let l = (o["val_loss"] as? NSNumber)?.doubleValue { val.append((s, l)) }
        }
        guard !loss.isEmpty else { throw TrainError.file(path, "no training steps logged yet") }
        let img = render([
            Series(name: "loss", color: (30, 30, 30), points: loss, dots: false),
            Series(name: "ce", color: (60, 110, 220), points: ce, dots: false),
            Series(name: "bce", color: (230, 120, 30), points: bce, dots: false),
            Series(name: "dice", color: (40, 160, 80), points: dice, dots: false),
            Series(name: "val loss", color: (210, 40, 40), points: val, dots: true),
        ], title: (run as NSString).lastPathComponent)
        let dst = out ?? (run as NSString).appendingPathComponent("loss.png")
        try img.writePNG(dst)
        return dst
    }

    public static func render(_ series: [Series], title: String, width W: Int = 800, height H: Int = 480) -> RGBImage {
        var img = RGBImage(width: W, height: H, pixels: [UInt8](repeating: 255, count: W * H * 3))
        let left = 60, right = W - 20, top = 40, bottom = H - 40
        let all = series.flatMap(\.points).filter { $0.1.isFinite }
        let x0 = all.map(\.0).min() ?? 0, x1 = max(all.map(\.0).max() ?? 1, x0 + 1)
        let y0 = min(0, all.map(\.1).min() ?? 0), y1 = max(all.map(\.1).max() ?? 1, y0 + 1e-6)
        func px(_ x: Double) -> Int { left + Int((x - x0) / (x1 - x0) * Double(right - left)) }
        func py(_ y: Double) -> Int { bottom - Int((y - y0) / (y1 - y0) * Double(bottom - top)) }
        func put(_ x: Int, _ y: Int, _ c: (UInt8, UInt8, UInt8)) {
            guard x >= 0, x < W, y >= 0, y < H else { return }
            let i = (y * W + x) * 3
            img.pixels[i] = c.0; img.pixels[i + 1] = c.1; img.pixels[i + 2] = c.2
        }
        func line(_ a: (Int, Int), _ b: (Int, Int), _ c: (UInt8, UInt8, UInt8), thick: Bool) {
            let n = max(abs(b.0 - a.0), abs(b.1 - a.1), 1)
            for k in 0...n {
                let x = a.0 + (b.0 - a.0) * k / n, y = a.1 + (b.1 - a.1) * k / n
                put(x, y, c)
                if thick { put(x, y + 1, c); put(x + 1, y, c) }
            }
        }
        // axes and grid
        for k in 0...4 {
            let y = top + (bottom - top) * k / 4
            for x in stride(from: left, to: right, by: 3) { put(x, y, (220, 220, 220)) }
            let v = y1 - (y1 - y0) * Double(k) / 4
            MaskOverlay.drawText(&img, String(format: "%.2f", v), x: 4, y: y - 3, color: (80, 80, 80))
        }
        line((left, top), (left, bottom), (0, 0, 0), thick: false)
        line((left, bottom), (right, bottom), (0, 0, 0), thick: false)
        for k in 0...4 {
            let v = x0 + (x1 - x0) * Double(k) / 4
            let s = String(Int(v.rounded()))
            MaskOverlay.drawText(&img, s, x: px(v) - MaskOverlay.textWidth(s) / 2, y: bottom + 8, color: (80, 80, 80))
        }
        MaskOverlay.drawText(&img, "step", x: right - 30, y: bottom + 22, color: (80, 80, 80))
        MaskOverlay.drawText(&img, title, x: left, y: 12, scale: 2, color: (0, 0, 0))
        // series and legend
        var lx = left + 10
        for s in series where !s.points.isEmpty {
            let pts = s.points.filter { $0.1.isFinite }.map { (px($0.0), py($0.1)) }
            if s.dots {
                for p in pts { for dx in -2...2 { for dy in -2...2 { put(p.0 + dx, p.1 + dy, s.color) } } }
            } else {
                for (a, b) in zip(pts, pts.dropFirst()) { line(a, b, s.color, thick: s.name == "loss") }
                if pts.count == 1 { put(pts[0].0, pts[0].1, s.color) }
            }
            for dx in 0..<12 { for dy in 0..<3 { put(lx + dx, top + 8 + dy, s.color) } }
            MaskOverlay.drawText(&img, s.name, x: lx + 16, y: top + 6, color: (40, 40, 40))
            lx += 24 + MaskOverlay.textWidth(s.name) + 12
        }
        return img
    }
}
