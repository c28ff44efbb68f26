// 8-bit images: decoding JPEG and PNG files as the reference reads them (cv2.imread(path) followed by
// BGR -> RGB, spec 1.3 step 1), encoding PNG and JPEG, and atomic writes. The codecs are the C target
// CPixelImage over the system libjpeg-turbo and libpng.
import CPixelImage
import Foundation
import PixelTensor

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An image that could not be read, decoded, encoded or written. `file` is the path (or the name the
/// caller gave an in-memory buffer).
public struct ImageError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let message: String
    public init(file: String, _ message: String) { self.file = file; self.message = message }
    public var description: String { "\(file): \(message)" }
}

/// Container formats recognised by their first bytes.
public enum ImageFormat: String, Sendable {
    case jpeg, png

    /// JPEG starts with FF D8 FF (SOI and the next marker's FF), PNG with its 8-byte signature.
    public static func detect(_ bytes: UnsafeRawBufferPointer) -> ImageFormat? {
        let b = bytes.bindMemory(to: UInt8.self)
        if b.count >= 3, b[0] == 0xFF, b[1] == 0xD8, b[2] == 0xFF { return .jpeg }
        let png: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        if b.count >= 8, (0..<8).allSatisfy({ b[$0] == png[$0] }) { return .png }
        return nil
    }

    public static func detect(_ bytes: [UInt8]) -> ImageFormat? { bytes.withUnsafeBytes { detect($0) } }

    /// A readable guess at what a file that is neither JPEG nor PNG is, for error messages.
    static func describeUnknown(_ bytes: [UInt8]) -> String {
        let head = bytes.prefix(8).map { String(format: "%02x", $0) }.joined(separator: " ")
        let ascii = String(decoding: bytes.prefix(12).map { (32..<127).contains($0) ? $0 : 46 }, as: UTF8.self)
        var guess = ""
        if ascii.hasPrefix("GIF8") { guess = " (GIF)" }
        else if ascii.hasPrefix("BM") { guess = " (BMP)" }
        else if ascii.hasPrefix("RIFF") && ascii.dropFirst(8).hasPrefix("WEBP") { guess = " (WebP)" }
        else if ascii.hasPrefix("II*") || ascii.hasPrefix("MM.*") { guess = " (TIFF)" }
        return "unknown image format: first bytes \(head)\(guess); only JPEG and PNG are supported"
    }
}

/// 8-bit RGB, row-major, channels interleaved (R G B R G B ...), rows packed.
public struct RGBImage: Equatable, Sendable {
    public let width: Int
    public let height: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(width >= 0 && height >= 0 && pixels.count == width * height * 3,
                     "RGBImage: \(pixels.count) bytes for \(width)x\(height)x3")
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    /// A black image.
    public init(width: Int, height: Int) { self.init(width: width, height: height, pixels: [UInt8](repeating: 0, count: width * height * 3)) }

    /// Copies width * height * 3 bytes from a raw buffer.
    public init(width: Int, height: Int, copying buffer: UnsafePointer<UInt8>) {
        self.init(width: width, height: height, pixels: Array(UnsafeBufferPointer(start: buffer, count: width * height * 3)))
    }

    /// The three channel values at column x, row y.
    public subscript(x: Int, y: Int) -> (r: UInt8, g: UInt8, b: UInt8) {
        let i = (y * width + x) * 3
        return (pixels[i], pixels[i + 1], pixels[i + 2])
    }

    /// Reads a JPEG or PNG file (see `Image.load`).
    public static func load(_ path: String, applyEXIFOrientation: Bool = true) throws -> RGBImage {
        try Image.load(path, applyEXIFOrientation: applyEXIFOrientation)
    }

}

/// 8-bit single-channel image (masks, label maps), row-major.
public struct GrayImage: Equatable, Sendable {
    public let width: Int
    public let height: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(width >= 0 && height >= 0 && pixels.count == width * height,
                     "GrayImage: \(pixels.count) bytes for \(width)x\(height)")
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    public init(width: Int, height: Int) { self.init(width: width, height: height, pixels: [UInt8](repeating: 0, count: width * height)) }

    public subscript(x: Int, y: Int) -> UInt8 { pixels[y * width + x] }

    /// Reads a single-channel PNG as stored: palette indices, gray levels (see `Image.loadLabels`).
    public static func load(_ path: String) throws -> GrayImage { try Image.loadLabels(path) }
}

/// 8-bit RGBA, row-major, interleaved.
public struct RGBAImage: Equatable, Sendable {
    public let width: Int
    public let height: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(width >= 0 && height >= 0 && pixels.count == width * height * 4,
                     "RGBAImage: \(pixels.count) bytes for \(width)x\(height)x4")
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    /// The colour channels; alpha dropped.
    public var rgb: RGBImage {
        var out = [UInt8](repeating: 0, count: width * height * 3)
        for i in 0..<(width * height) {
            out[3 * i] = pixels[4 * i]; out[3 * i + 1] = pixels[4 * i + 1]; out[3 * i + 2] = pixels[4 * i + 2]
        }
        return RGBImage(width: width, height: height, pixels: out)
    }
}

/// 8-bit images with interleaved channels, rows packed: PNG encoding and atomic writes for all of them,
/// JPEG for the 1- and 3-channel ones.
public protocol PackedImage8 {
    static var channels: Int { get }
    var width: Int { get }
    var height: Int { get }
    var pixels: [UInt8] { get }
}

/// A `PackedImage8` that JPEG can hold (gray or RGB).
public protocol JPEGEncodableImage8: PackedImage8 {}

extension RGBImage: JPEGEncodableImage8 { public static var channels: Int { 3 } }
extension GrayImage: JPEGEncodableImage8 { public static var channels: Int { 1 } }
extension RGBAImage: PackedImage8 { public static var channels: Int { 4 } }

extension PackedImage8 {
    public func encodePNG(compressionLevel: Int = -1, name: String = "<memory>") throws -> [UInt8] {
        try Codec.encodePNG(pixels, width: width, height: height, channels: Self.channels, level: compressionLevel, name: name)
    }

    /// Writes a PNG atomically (temporary file, fsync, rename).
    public func writePNG(_ path: String, compressionLevel: Int = -1) throws {
        try AtomicWrite.write(try encodePNG(compressionLevel: compressionLevel, name: path), to: path)
    }
}

extension JPEGEncodableImage8 {
    public func encodeJPEG(quality: Int = 95, name: String = "<memory>") throws -> [UInt8] {
        try Codec.encodeJPEG(pixels, width: width, height: height, channels: Self.channels, quality: quality, name: name)
    }

    /// Writes a JPEG atomically (temporary file, fsync, rename).
    public func writeJPEG(_ path: String, quality: Int = 95) throws {
        try AtomicWrite.write(try encodeJPEG(quality: quality, name: path), to: path)
    }
}

/// Reading images from files or memory.
public enum Image {
    /// Reads a JPEG or PNG file (format from its first bytes) as 8-bit RGB, the way the reference's
    /// `cv2.imread(path)` + BGR->RGB sees it: gray replicated, alpha dropped, palettes expanded, 16-bit
    /// PNG samples reduced to their high byte, CMYK JPEG converted, and (by default, as OpenCV's
    /// IMREAD_COLOR) the EXIF orientation of a JPEG APP1 or PNG eXIf applied.
    /// Errors name the file and say what is wrong (missing, empty, unknown format, decode error).
    public static func load(_ path: String, applyEXIFOrientation: Bool = true) throws -> RGBImage {
        try decode(try readFile(path), name: path, applyEXIFOrientation: applyEXIFOrientation)
    }

    /// Decodes JPEG or PNG bytes; `name` is used in errors.
    public static func decode(_ bytes: [UInt8], name: String, applyEXIFOrientation: Bool = true) throws -> RGBImage {
        let d = try Codec.decode(bytes, name: name, pngMode: Int32(PIXEL_PNG_RGB), orient: applyEXIFOrientation)
        return RGBImage(width: d.width, height: d.height, pixels: d.pixels)
    }

    /// Reads a JPEG or PNG as RGBA: PNG alpha (or tRNS) kept, 255 where the file has none.
    public static func loadRGBA(_ path: String, applyEXIFOrientation: Bool = true) throws -> RGBAImage {
        try decodeRGBA(try readFile(path), name: path, applyEXIFOrientation: applyEXIFOrientation)
    }

    public static func decodeRGBA(_ bytes: [UInt8], name: String, applyEXIFOrientation: Bool = true) throws -> RGBAImage {
        let d = try Codec.decode(bytes, name: name, pngMode: Int32(PIXEL_PNG_RGBA), orient: applyEXIFOrientation)
        if d.channels == 4 { return RGBAImage(width: d.width, height: d.height, pixels: d.pixels) }
        var out = [UInt8](repeating: 255, count: d.width * d.height * 4)
        for i in 0..<(d.width * d.height) {
            out[4 * i] = d.pixels[3 * i]; out[4 * i + 1] = d.pixels[3 * i + 1]; out[4 * i + 2] = d.pixels[3 * i + 2]
        }
        return RGBAImage(width: d.width, height: d.height, pixels: out)
    }

    /// Reads a label map: a single-channel PNG the way `np.array(PIL.Image.open(path))` gives it
    /// (palette indices rather than colours; 8-bit gray as stored; 1-bit gray as 0/1; 2/4-bit gray
    /// rescaled to 0...255). Colour, 16-bit and JPEG files are errors. No EXIF orientation is applied.
    public static func loadLabels(_ path: String) throws -> GrayImage {
        try decodeLabels(try readFile(path), name: path)
    }

    public static func decodeLabels(_ bytes: [UInt8], name: String) throws -> GrayImage {
        guard ImageFormat.detect(bytes) == .png else {
            if ImageFormat.detect(bytes) == .jpeg { throw ImageError(file: name, "label maps must be PNG (lossless), this is a JPEG") }
            throw ImageError(file: name, bytes.isEmpty ? "empty file" : ImageFormat.describeUnknown(bytes))
        }
        let d = try Codec.decode(bytes, name: name, pngMode: Int32(PIXEL_PNG_INDEX), orient: false)
        return GrayImage(width: d.width, height: d.height, pixels: d.pixels)
    }

    /// The EXIF orientation stored in a JPEG (APP1) or PNG (eXIf) file: 1...8, or nil when absent.
    public static func exifOrientation(_ bytes: [UInt8], name: String = "<memory>") throws -> Int? {
        switch ImageFormat.detect(bytes) {
        case .jpeg:
            let o = bytes.withUnsafeBufferPointer { pixel_jpeg_exif_orientation($0.baseAddress, $0.count) }
            return o == 0 ? nil : Int(o)
        case .png:
            let d = try Codec.decode(bytes, name: name, pngMode: Int32(PIXEL_PNG_RGB), orient: false)
            return d.orientation == 0 ? nil : d.orientation
        case nil:
            throw ImageError(file: name, bytes.isEmpty ? "empty file" : ImageFormat.describeUnknown(bytes))
        }
    }

    /// The whole file. Errors: missing file, a directory, unreadable, empty.
    public static func readFile(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let e = errno
            throw ImageError(file: path, e == ENOENT ? "no such file" : "cannot open: \(String(cString: strerror(e)))")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw ImageError(file: path, "cannot stat: \(String(cString: strerror(errno)))") }
        if (st.st_mode & S_IFMT) == S_IFDIR { throw ImageError(file: path, "is a directory, not an image file") }
        var out = [UInt8]()
        out.reserveCapacity(Int(st.st_size))
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw ImageError(file: path, "read failed: \(String(cString: strerror(errno)))")
            }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
        }
        if out.isEmpty { throw ImageError(file: path, "empty file") }
        return out
    }
}

/// Calls into CPixelImage.
enum Codec {
    struct Decoded {
        let width: Int, height: Int, channels: Int, orientation: Int
        let pixels: [UInt8]
    }

    static func decode(_ bytes: [UInt8], name: String, pngMode: Int32, orient: Bool) throws -> Decoded {
        if bytes.isEmpty { throw ImageError(file: name, "empty file") }
        guard let format = ImageFormat.detect(bytes) else { throw ImageError(file: name, ImageFormat.describeUnknown(bytes)) }
        var img = PixelImage()
        var err = [CChar](repeating: 0, count: 512)
        let rc: Int32 = bytes.withUnsafeBufferPointer { b in
            err.withUnsafeMutableBufferPointer { e in
                switch format {
                case .jpeg: return pixel_jpeg_decode(b.baseAddress, b.count, orient ? 1 : 0, &img, e.baseAddress, e.count)
                case .png: return pixel_png_decode(b.baseAddress, b.count, pngMode, orient ? 1 : 0, &img, e.baseAddress, e.count)
                }
            }
        }
        guard rc == 0, let p = img.pixels else {
            let text = String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw ImageError(file: name, "\(format == .jpeg ? "JPEG" : "PNG") decode error: \(text)")
        }
        defer { pixel_free(p) }
        let n = Int(img.width) * Int(img.height) * Int(img.channels)
        return Decoded(width: Int(img.width), height: Int(img.height), channels: Int(img.channels),
                       orientation: Int(img.orientation), pixels: Array(UnsafeBufferPointer(start: p, count: n)))
    }

    static func encodePNG(_ pixels: [UInt8], width: Int, height: Int, channels: Int, level: Int, name: String) throws -> [UInt8] {
        try encode(name: name, what: "PNG") { out, size, e, en in
            pixels.withUnsafeBufferPointer {
                pixel_png_encode($0.baseAddress, Int32(clamping: width), Int32(clamping: height), Int32(channels),
                                 Int32(clamping: level), out, size, e, en)
            }
        }
    }

    static func encodeJPEG(_ pixels: [UInt8], width: Int, height: Int, channels: Int, quality: Int, name: String) throws -> [UInt8] {
        try encode(name: name, what: "JPEG") { out, size, e, en in
            pixels.withUnsafeBufferPointer {
                pixel_jpeg_encode($0.baseAddress, Int32(clamping: width), Int32(clamping: height), Int32(channels),
                                  Int32(clamping: quality), out, size, e, en)
            }
        }
    }

    private static func encode(name: String, what: String,
                               _ body: (UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>, UnsafeMutablePointer<Int>,
                                        UnsafeMutablePointer<CChar>, Int) -> Int32) throws -> [UInt8] {
        var out: UnsafeMutablePointer<UInt8>? = nil
        var size = 0
        var err = [CChar](repeating: 0, count: 512)
        let rc = err.withUnsafeMutableBufferPointer { body(&out, &size, $0.baseAddress!, $0.count) }
        guard rc == 0, let o = out else {
            let text = String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw ImageError(file: name, "\(what) encode error: \(text)")
        }
        defer { pixel_free(o) }
        return Array(UnsafeBufferPointer(start: o, count: size))
    }
}

/// Atomic file replacement (`AtomicFile` of PixelTensor), failures reported as `ImageError`s naming `path`.
enum AtomicWrite {
    static func write(_ bytes: [UInt8], to path: String) throws {
        try AtomicFile.write(bytes, to: path, error: { ImageError(file: $0, $1) })
    }
}
