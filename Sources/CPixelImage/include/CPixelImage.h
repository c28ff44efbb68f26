#ifndef CPIXELIMAGE_H
#define CPIXELIMAGE_H
// C wrappers over libjpeg(-turbo) and libpng (their error handling uses setjmp/longjmp, which Swift
// cannot do): decode and encode 8-bit images in memory, reporting errors as text.
//
// Every function returns 0 on success and -1 on failure, writing a one-line reason into err (always
// NUL-terminated, truncated to err_size). Nothing here aborts or reads outside the given buffer on a
// truncated or corrupt file. Pixel buffers are row-major, channels interleaved, rows packed (stride =
// width * channels); buffers handed out are malloc'd and released with pixel_free().
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint8_t *pixels;   ///< width * height * channels bytes, owned by the caller (pixel_free)
    int width;
    int height;
    int channels;      ///< 1 (index/gray), 3 (RGB) or 4 (RGBA)
    int orientation;   ///< EXIF orientation tag found in the file (1...8), 0 when absent or invalid
} PixelImage;

/// What pixel_png_decode returns.
enum {
    /// 8-bit RGB as cv2.imread(IMREAD_COLOR) sees it: palette expanded (tRNS ignored), gray replicated,
    /// alpha dropped, 16-bit samples reduced to their high byte (libpng's strip_16, as OpenCV does).
    PIXEL_PNG_RGB = 0,
    /// 8-bit RGBA: as PIXEL_PNG_RGB but alpha kept (tRNS turned into alpha; 255 when the file has none).
    PIXEL_PNG_RGBA = 1,
    /// One channel, for label maps, as np.array(PIL.Image.open(path)) gives it: palette indices (not
    /// colours, any bit depth), 8-bit gray as stored, 1-bit gray as 0/1, 2- and 4-bit gray rescaled to
    /// 0...255; gray+alpha drops alpha. Colour PNGs and 16-bit files are errors.
    PIXEL_PNG_INDEX = 2,
};

/// Decodes a JPEG (baseline, progressive, arithmetic) to 8-bit RGB. Grayscale is replicated; CMYK and
/// YCCK (Adobe, inverted) are converted as OpenCV does: R = K - ((255 - C) * K >> 8), likewise G, B.
/// With apply_orientation != 0 the EXIF orientation of the APP1 segment is applied (as cv2.imread does
/// by default). Truncated or corrupt entropy-coded data is an error (libjpeg would only warn); a file
/// whose data is complete but lacks the final EOI marker decodes (as in OpenCV).
int pixel_jpeg_decode(const uint8_t *data, size_t size, int apply_orientation, PixelImage *out,
                      char *err, size_t err_size);

/// Decodes a PNG (any colour type and bit depth, interlaced or not) per mode (PIXEL_PNG_*). With
/// apply_orientation != 0 and an eXIf chunk carrying an orientation, the orientation is applied.
int pixel_png_decode(const uint8_t *data, size_t size, int mode, int apply_orientation, PixelImage *out,
                     char *err, size_t err_size);

/// Encodes 8-bit gray (1), gray+alpha (2), RGB (3) or RGBA (4) pixels as a non-interlaced PNG.
/// compression_level: 0...9, or -1 for zlib's default. *out is malloc'd (pixel_free).
int pixel_png_encode(const uint8_t *pixels, int width, int height, int channels, int compression_level,
                     uint8_t **out, size_t *out_size, char *err, size_t err_size);

/// Encodes 8-bit gray (1) or RGB (3) pixels as a baseline JPEG with libjpeg's standard tables scaled to
/// quality (1...100; 4:2:0 chroma subsampling for RGB). *out is malloc'd (pixel_free).
int pixel_jpeg_encode(const uint8_t *pixels, int width, int height, int channels, int quality,
                      uint8_t **out, size_t *out_size, char *err, size_t err_size);

/// The orientation tag (0x0112) of IFD0 of a TIFF-structured EXIF block ("II*\0" or "MM\0*" first):
/// 1...8, or 0 when the block is malformed or has no valid orientation.
int pixel_exif_orientation(const uint8_t *tiff, size_t size);

/// The EXIF orientation of a JPEG file, from its first APP1 "Exif\0\0" segment, found by walking the
/// marker segments up to the first SOS. 0 when absent.
int pixel_jpeg_exif_orientation(const uint8_t *data, size_t size);

/// Applies EXIF orientation 2...8 to img in place (a new buffer replaces img->pixels; 5...8 swap width
/// and height). 0 and 1 leave it unchanged. Fails only when memory runs out.
int pixel_apply_orientation(PixelImage *img, int orientation, char *err, size_t err_size);

void pixel_free(void *p);

#endif
