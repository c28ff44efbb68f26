// Image codecs over libjpeg(-turbo) and libpng, from and to memory. Both libraries report errors by
// calling a handler that must not return; here it longjmps back into the function that started the
// work, which frees what it allocated and returns -1 with the library's message.
#include "CPixelImage.h"

#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

/// Largest image accepted (pixels): a corrupt header cannot make us allocate gigabytes.
#define PIXEL_MAX_PIXELS ((size_t)1 << 28)

static void set_error(char *err, size_t err_size, const char *fmt, ...) {
    if (!err || err_size == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_size, fmt, ap);
    va_end(ap);
}

void pixel_free(void *p) { free(p); }

// ---------------------------------------------------------------------------------------------------
// EXIF orientation

static unsigned read16(const uint8_t *p, int little) {
    return little ? (unsigned)p[0] | ((unsigned)p[1] << 8) : ((unsigned)p[0] << 8) | (unsigned)p[1];
}

static uint32_t read32(const uint8_t *p, int little) {
    return little ? (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24)
                  : ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

int pixel_exif_orientation(const uint8_t *tiff, size_t size) {
    if (!tiff || size < 8) return 0;
    int little;
    if (tiff[0] == 'I' && tiff[1] == 'I' && tiff[2] == 42 && tiff[3] == 0) little = 1;
    else if (tiff[0] == 'M' && tiff[1] == 'M' && tiff[2] == 0 && tiff[3] == 42) little = 0;
    else return 0;
    uint32_t ifd = read32(tiff + 4, little);
    if (ifd > size || size - ifd < 2) return 0;
    unsigned entries = read16(tiff + ifd, little);
    size_t p = (size_t)ifd + 2;
    for (unsigned i = 0; i < entries; i++, p += 12) {
        if (size - p < 12) return 0;
        if (read16(tiff + p, little) != 0x0112) continue;
        unsigned type = read16(tiff + p + 2, little);
        uint32_t count = read32(tiff + p + 4, little);
        if (count < 1) return 0;
        uint32_t v;
        if (type == 3) v = read16(tiff + p + 8, little);        // SHORT, stored in the value field
        else if (type == 4) v = read32(tiff + p + 8, little);   // LONG (non-standard, seen in the wild)
        else return 0;
        return (v >= 1 && v <= 8) ? (int)v : 0;
    }
    return 0;
}

int pixel_jpeg_exif_orientation(const uint8_t *data, size_t size) {
    if (!data || size < 4 || data[0] != 0xFF || data[1] != 0xD8) return 0;
    size_t p = 2;
    while (p + 4 <= size) {
        if (data[p] != 0xFF) return 0;
        while (p < size && data[p] == 0xFF) p++;     // fill bytes
        if (p >= size) return 0;
        uint8_t marker = data[p++];
        if (marker == 0xD9 || marker == 0xDA) return 0;   // EOI, SOS: no metadata after this
        if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) continue;   // TEM, RSTn: no length
        if (size - p < 2) return 0;
        size_t len = ((size_t)data[p] << 8) | data[p + 1];
        if (len < 2 || len > size - p) return 0;
        if (marker == 0xE1 && len >= 8 && memcmp(data + p + 2, "Exif\0\0", 6) == 0)
            return pixel_exif_orientation(data + p + 8, len - 8);
        p += len;
    }
    return 0;
}

int pixel_apply_orientation(PixelImage *img, int orientation, char *err, size_t err_size) {
    if (orientation < 2 || orientation > 8) return 0;
    const int w = img->width, h = img->height, c = img->channels;
    const int swap = orientation >= 5;          // 5...8 transpose first: the output is h wide, w tall
    const int ow = swap ? h : w, oh = swap ? w : h;
    uint8_t *dst = malloc((size_t)w * (size_t)h * (size_t)c + 1);
    if (!dst) {
        set_error(err, err_size, "out of memory applying the EXIF orientation");
        return -1;
    }
    for (int y = 0; y < oh; y++) {
        for (int x = 0; x < ow; x++) {
            int sx, sy;   // source pixel shown at (x, y)
            switch (orientation) {
            case 2: sx = w - 1 - x; sy = y; break;               // mirror left-right
            case 3: sx = w - 1 - x; sy = h - 1 - y; break;       // rotate 180
            case 4: sx = x; sy = h - 1 - y; break;               // mirror top-bottom
            case 5: sx = y; sy = x; break;                       // transpose
            case 6: sx = y; sy = h - 1 - x; break;               // rotate 90 clockwise
            case 7: sx = w - 1 - y; sy = h - 1 - x; break;       // transverse
            default: sx = w - 1 - y; sy = x; break;              // 8: rotate 90 counter-clockwise
            }
            memcpy(dst + ((size_t)y * ow + x) * c, img->pixels + ((size_t)sy * w + sx) * c, (size_t)c);
        }
    }
    free(img->pixels);
    img->pixels = dst;
    img->width = ow;
    img->height = oh;
    return 0;
}

/// Fills *out with a decoded image (pixels malloc'd, now owned by *out) and applies the EXIF orientation when
/// asked; on failure *out is freed and zeroed. Returns 0 or -1, as the decoders do.
static int finish_decode(PixelImage *out, uint8_t *pixels, int w, int h, int channels, int orientation,
                         int apply_orientation, char *err, size_t err_size) {
    out->pixels = pixels;
    out->width = w;
    out->height = h;
    out->channels = channels;
    out->orientation = orientation;
    if (apply_orientation && pixel_apply_orientation(out, orientation, err, err_size) != 0) {
        free(out->pixels);
        memset(out, 0, sizeof *out);
        return -1;
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------------
// JPEG

struct jpeg_failure {
    struct jpeg_error_mgr mgr;   // first: libjpeg hands us a pointer to it
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
};

static void jpeg_failure_exit(j_common_ptr cinfo) {
    struct jpeg_failure *f = (struct jpeg_failure *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, f->message);
    longjmp(f->jump, 1);
}

/// libjpeg only warns about damaged entropy-coded data and fills the rest of the image with gray; those
/// warnings are errors here. Harmless ones (extra bytes between markers, unknown JFIF revisions) pass.
static void jpeg_failure_message(j_common_ptr cinfo, int level) {
    if (level >= 0) return;   // trace messages
    switch (cinfo->err->msg_code) {
    case JWRN_JPEG_EOF:
    case JWRN_HIT_MARKER:
    case JWRN_HUFF_BAD_CODE:
    case JWRN_ARITH_BAD_CODE:
    case JWRN_MUST_RESYNC:
    case JWRN_NOT_SEQUENTIAL:
    case JWRN_BOGUS_PROGRESSION:
        jpeg_failure_exit(cinfo);
        break;
    default:
        cinfo->err->num_warnings++;
    }
}

int pixel_jpeg_decode(const uint8_t *data, size_t size, int apply_orientation, PixelImage *out,
                      char *err, size_t err_size) {
    memset(out, 0, sizeof *out);
    if (!data || size == 0) {
        set_error(err, err_size, "empty JPEG data");
        return -1;
    }
    // A file whose entropy-coded data is complete but whose EOI marker is missing decodes fully in
    // OpenCV (with a warning). libjpeg reads a little ahead of the last bits it needs, so without the
    // marker it reports a premature end even then. Such a file gets its EOI back here; data that is
    // really cut short still ends inside a scan ("premature end of data segment"), which is an error.
    uint8_t *volatile patched = NULL;
    if (size < 2 || data[size - 2] != 0xFF || data[size - 1] != 0xD9) {
        patched = malloc(size + 2);
        if (!patched) {
            set_error(err, err_size, "out of memory");
            return -1;
        }
        memcpy(patched, data, size);
        patched[size] = 0xFF;
        patched[size + 1] = 0xD9;
        data = patched;
        size += 2;
    }
    struct jpeg_decompress_struct cinfo;
    struct jpeg_failure failure;
    uint8_t *volatile pixels = NULL;
    uint8_t *volatile cmyk_row = NULL;
    cinfo.err = jpeg_std_error(&failure.mgr);
    failure.mgr.error_exit = jpeg_failure_exit;
    failure.mgr.emit_message = jpeg_failure_message;
    failure.message[0] = 0;
    if (setjmp(failure.jump)) {
        set_error(err, err_size, "%s", failure.message[0] ? failure.message : "JPEG decode failed");
        jpeg_destroy_decompress(&cinfo);
        free(pixels);
        free(cmyk_row);
        free(patched);
        return -1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)size);
    jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
    jpeg_read_header(&cinfo, TRUE);
    const int cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
    cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;   // gray -> RGB is done by libjpeg-turbo
    jpeg_start_decompress(&cinfo);
    const size_t w = cinfo.output_width, h = cinfo.output_height;
    if (w == 0 || h == 0 || w * h > PIXEL_MAX_PIXELS) {
        snprintf(failure.message, sizeof failure.message, "unsupported JPEG size %zux%zu", w, h);
        longjmp(failure.jump, 1);
    }
    if (cinfo.output_components != (cmyk ? 4 : 3)) {
        snprintf(failure.message, sizeof failure.message, "unexpected %d output components",
                 cinfo.output_components);
        longjmp(failure.jump, 1);
    }
    pixels = malloc(w * h * 3);
    if (cmyk) cmyk_row = malloc(w * 4);
    if (!pixels || (cmyk && !cmyk_row)) {
        snprintf(failure.message, sizeof failure.message, "out of memory for a %zux%zu image", w, h);
        longjmp(failure.jump, 1);
    }
    while (cinfo.output_scanline < h) {
        const size_t y = cinfo.output_scanline;
        JSAMPROW row = cmyk ? cmyk_row : pixels + y * w * 3;
        if (jpeg_read_scanlines(&cinfo, &row, 1) != 1) {
            snprintf(failure.message, sizeof failure.message, "JPEG decoder stopped at row %zu", y);
            longjmp(failure.jump, 1);
        }
        if (cmyk) {
            // Adobe CMYK is stored inverted: a byte is 255 - ink. RGB = K - (255 - byte) * K / 256.
            uint8_t *o = pixels + y * w * 3;
            for (size_t x = 0; x < w; x++) {
                const int k = cmyk_row[4 * x + 3];
                for (int ch = 0; ch < 3; ch++) o[3 * x + ch] = (uint8_t)(k - (((255 - cmyk_row[4 * x + ch]) * k) >> 8));
            }
        }
    }
    int orientation = 0;
    for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next) {
        if (m->marker == JPEG_APP0 + 1 && m->data_length >= 6 && memcmp(m->data, "Exif\0\0", 6) == 0) {
            orientation = pixel_exif_orientation(m->data + 6, m->data_length - 6);
            break;
        }
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    free(cmyk_row);
    free(patched);
    return finish_decode(out, pixels, (int)w, (int)h, 3, orientation, apply_orientation, err, err_size);
}

/// Destination manager writing into a growing malloc'd buffer (jpeg_mem_dest cannot be cleaned up
/// after an error: it frees its first buffer when it grows but still reports it to the caller).
struct jpeg_growing_dest {
    struct jpeg_destination_mgr mgr;
    uint8_t *buffer;
    size_t capacity;
    size_t length;
};

static void jpeg_dest_init(j_compress_ptr cinfo) {
    struct jpeg_growing_dest *d = (struct jpeg_growing_dest *)cinfo->dest;
    d->capacity = 1 << 16;
    d->buffer = malloc(d->capacity);
    if (!d->buffer) ERREXIT1(cinfo, JERR_OUT_OF_MEMORY, 0);
    d->mgr.next_output_byte = d->buffer;
    d->mgr.free_in_buffer = d->capacity;
}

static boolean jpeg_dest_grow(j_compress_ptr cinfo) {
    struct jpeg_growing_dest *d = (struct jpeg_growing_dest *)cinfo->dest;
    uint8_t *bigger = realloc(d->buffer, d->capacity * 2);
    if (!bigger) ERREXIT1(cinfo, JERR_OUT_OF_MEMORY, 1);
    d->buffer = bigger;
    d->mgr.next_output_byte = bigger + d->capacity;   // the whole old buffer is full
    d->mgr.free_in_buffer = d->capacity;
    d->capacity *= 2;
    return TRUE;
}

static void jpeg_dest_term(j_compress_ptr cinfo) {
    struct jpeg_growing_dest *d = (struct jpeg_growing_dest *)cinfo->dest;
    d->length = d->capacity - d->mgr.free_in_buffer;
}

int pixel_jpeg_encode(const uint8_t *pixels, int width, int height, int channels, int quality,
                      uint8_t **out, size_t *out_size, char *err, size_t err_size) {
    *out = NULL;
    *out_size = 0;
    if (channels != 1 && channels != 3) {
        set_error(err, err_size, "JPEG encoding takes 1 or 3 channels, not %d", channels);
        return -1;
    }
    if (width < 1 || height < 1 || width > JPEG_MAX_DIMENSION || height > JPEG_MAX_DIMENSION) {
        set_error(err, err_size, "JPEG cannot hold a %dx%d image", width, height);
        return -1;
    }
    if (quality < 1 || quality > 100) {
        set_error(err, err_size, "JPEG quality %d is outside 1...100", quality);
        return -1;
    }
    struct jpeg_compress_struct cinfo;
    struct jpeg_failure failure;
    // Lives in memory (its address is given to libjpeg), so it is current after a longjmp.
    struct jpeg_growing_dest dest;
    memset(&dest, 0, sizeof dest);
    cinfo.err = jpeg_std_error(&failure.mgr);
    failure.mgr.error_exit = jpeg_failure_exit;
    failure.message[0] = 0;
    if (setjmp(failure.jump)) {
        set_error(err, err_size, "%s", failure.message[0] ? failure.message : "JPEG encode failed");
        jpeg_destroy_compress(&cinfo);
        free(dest.buffer);
        return -1;
    }
    jpeg_create_compress(&cinfo);
    dest.mgr.init_destination = jpeg_dest_init;
    dest.mgr.empty_output_buffer = jpeg_dest_grow;
    dest.mgr.term_destination = jpeg_dest_term;
    cinfo.dest = &dest.mgr;
    cinfo.image_width = (JDIMENSION)width;
    cinfo.image_height = (JDIMENSION)height;
    cinfo.input_components = channels;
    cinfo.in_color_space = channels == 3 ? JCS_RGB : JCS_GRAYSCALE;
    jpeg_set_defaults(&cinfo);
    jpeg_set_quality(&cinfo, quality, TRUE);
    jpeg_start_compress(&cinfo, TRUE);
    while (cinfo.next_scanline < cinfo.image_height) {
        JSAMPROW row = (JSAMPROW)(pixels + (size_t)cinfo.next_scanline * (size_t)width * (size_t)channels);
        jpeg_write_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_compress(&cinfo);
    jpeg_destroy_compress(&cinfo);
    *out = dest.buffer;
    *out_size = dest.length;
    return 0;
}

// ---------------------------------------------------------------------------------------------------
// PNG

struct png_failure {
    jmp_buf jump;
    char message[256];
};

struct png_memory {
    const uint8_t *data;   // reading
    size_t size;
    size_t position;
    uint8_t *buffer;       // writing
    size_t capacity;
    size_t length;
};

static void png_failure_exit(png_structp png, png_const_charp message) {
    struct png_failure *f = png_get_error_ptr(png);
    snprintf(f->message, sizeof f->message, "%s", message ? message : "PNG error");
    longjmp(f->jump, 1);
}

static void png_ignore_warning(png_structp png, png_const_charp message) {
    (void)png;
    (void)message;
}

static void png_read_memory(png_structp png, png_bytep dst, size_t n) {
    struct png_memory *m = png_get_io_ptr(png);
    if (m->size - m->position < n) png_error(png, "truncated PNG (the data ends inside a chunk)");
    memcpy(dst, m->data + m->position, n);
    m->position += n;
}

static void png_write_memory(png_structp png, png_bytep src, size_t n) {
    struct png_memory *m = png_get_io_ptr(png);
    if (m->capacity - m->length < n) {
        size_t cap = m->capacity ? m->capacity : 1 << 16;
        while (cap - m->length < n) cap *= 2;
        uint8_t *bigger = realloc(m->buffer, cap);
        if (!bigger) png_error(png, "out of memory");
        m->buffer = bigger;
        m->capacity = cap;
    }
    memcpy(m->buffer + m->length, src, n);
    m->length += n;
}

static void png_flush_memory(png_structp png) { (void)png; }

static const char *png_color_name(int color_type) {
    switch (color_type) {
    case PNG_COLOR_TYPE_GRAY: return "gray";
    case PNG_COLOR_TYPE_GRAY_ALPHA: return "gray+alpha";
    case PNG_COLOR_TYPE_PALETTE: return "palette";
    case PNG_COLOR_TYPE_RGB: return "RGB";
    case PNG_COLOR_TYPE_RGB_ALPHA: return "RGBA";
    default: return "unknown";
    }
}

int pixel_png_decode(const uint8_t *data, size_t size, int mode, int apply_orientation, PixelImage *out,
                     char *err, size_t err_size) {
    memset(out, 0, sizeof *out);
    if (mode != PIXEL_PNG_RGB && mode != PIXEL_PNG_RGBA && mode != PIXEL_PNG_INDEX) {
        set_error(err, err_size, "unknown PNG decode mode %d", mode);
        return -1;
    }
    if (!data || size < 8 || png_sig_cmp(data, 0, 8) != 0) {
        set_error(err, err_size, size < 8 ? "truncated PNG (%zu bytes, shorter than the signature)"
                                          : "not a PNG file (bad signature)", size);
        return -1;
    }
    struct png_failure failure;
    failure.message[0] = 0;
    struct png_memory source = {data, size, 0, NULL, 0, 0};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &failure, png_failure_exit, png_ignore_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        set_error(err, err_size, "out of memory creating a PNG reader");
        return -1;
    }
    uint8_t *volatile pixels = NULL;
    png_bytep *volatile rows = NULL;
    if (setjmp(failure.jump)) {
        png_destroy_read_struct(&png, &info, NULL);
        free(pixels);
        free(rows);
        set_error(err, err_size, "%s", failure.message[0] ? failure.message : "PNG decode failed");
        return -1;
    }
    png_set_read_fn(png, &source, png_read_memory);
    png_read_info(png, info);
    png_uint_32 w, h;
    int depth, color, interlace;
    png_get_IHDR(png, info, &w, &h, &depth, &color, &interlace, NULL, NULL);
    if ((size_t)w * (size_t)h > PIXEL_MAX_PIXELS) {
        snprintf(failure.message, sizeof failure.message, "unsupported PNG size %ux%u", (unsigned)w, (unsigned)h);
        longjmp(failure.jump, 1);
    }
    const int has_trns = png_get_valid(png, info, PNG_INFO_tRNS) != 0;
    int want;
    if (mode == PIXEL_PNG_INDEX) {
        want = 1;
        if (color == PNG_COLOR_TYPE_RGB || color == PNG_COLOR_TYPE_RGB_ALPHA) {
            snprintf(failure.message, sizeof failure.message,
                     "%s PNG where a single-channel (gray or palette) label map was expected", png_color_name(color));
            longjmp(failure.jump, 1);
        }
        if (depth == 16) {
            snprintf(failure.message, sizeof failure.message, "16-bit %s PNG: label values may exceed 255",
                     png_color_name(color));
            longjmp(failure.jump, 1);
        }
        // As Pillow's np.array(Image.open(path)): palette indices and 1-bit gray as stored (0/1), 2-
        // and 4-bit gray rescaled to 0...255.
        if (color == PNG_COLOR_TYPE_GRAY && (depth == 2 || depth == 4)) png_set_expand_gray_1_2_4_to_8(png);
        else if (depth < 8) png_set_packing(png);
        if (color == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_strip_alpha(png);
    } else {
        want = mode == PIXEL_PNG_RGBA ? 4 : 3;
        if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
        if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
        if (depth == 16) png_set_strip_16(png);           // high byte, as OpenCV
        if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
        if (mode == PIXEL_PNG_RGBA) {
            if (has_trns) png_set_tRNS_to_alpha(png);
            else if (!(color & PNG_COLOR_MASK_ALPHA)) png_set_add_alpha(png, 0xFF, PNG_FILLER_AFTER);
        } else {
            png_set_strip_alpha(png);
        }
    }
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    const int channels = png_get_channels(png, info);
    const size_t rowbytes = png_get_rowbytes(png, info);
    if (channels != want || png_get_bit_depth(png, info) != 8 || rowbytes != (size_t)w * (size_t)want) {
        snprintf(failure.message, sizeof failure.message,
                 "unexpected PNG layout after conversion (%s, %d-bit: %d channels, %zu bytes per row)",
                 png_color_name(color), depth, channels, rowbytes);
        longjmp(failure.jump, 1);
    }
    pixels = malloc(rowbytes * h);
    rows = malloc(sizeof(png_bytep) * h);
    if (!pixels || !rows) {
        snprintf(failure.message, sizeof failure.message, "out of memory for a %ux%u image", (unsigned)w, (unsigned)h);
        longjmp(failure.jump, 1);
    }
    for (png_uint_32 y = 0; y < h; y++) rows[y] = pixels + rowbytes * y;
    png_read_image(png, rows);
    png_read_end(png, info);   // checks the remaining chunks' CRCs and IEND; picks up an eXIf after IDAT
    int orientation = 0;
#ifdef PNG_eXIf_SUPPORTED
    png_uint_32 exif_size = 0;
    png_bytep exif = NULL;
    if (png_get_eXIf_1(png, info, &exif_size, &exif) && exif)
        orientation = pixel_exif_orientation(exif, exif_size);
#endif
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    return finish_decode(out, pixels, (int)w, (int)h, want, orientation, apply_orientation, err, err_size);
}

int pixel_png_encode(const uint8_t *pixels, int width, int height, int channels, int compression_level,
                     uint8_t **out, size_t *out_size, char *err, size_t err_size) {
    *out = NULL;
    *out_size = 0;
    static const int color_types[5] = {0, PNG_COLOR_TYPE_GRAY, PNG_COLOR_TYPE_GRAY_ALPHA, PNG_COLOR_TYPE_RGB,
                                       PNG_COLOR_TYPE_RGB_ALPHA};
    if (channels < 1 || channels > 4) {
        set_error(err, err_size, "PNG encoding takes 1...4 channels, not %d", channels);
        return -1;
    }
    if (width < 1 || height < 1 || (size_t)width * (size_t)height > PIXEL_MAX_PIXELS) {
        set_error(err, err_size, "cannot encode a %dx%d PNG", width, height);
        return -1;
    }
    if (compression_level < -1 || compression_level > 9) {
        set_error(err, err_size, "PNG compression level %d is outside -1...9", compression_level);
        return -1;
    }
    struct png_failure failure;
    failure.message[0] = 0;
    struct png_memory sink = {NULL, 0, 0, NULL, 0, 0};   // in memory (address given to libpng)
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &failure, png_failure_exit, png_ignore_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        set_error(err, err_size, "out of memory creating a PNG writer");
        return -1;
    }
    png_bytep *volatile rows = NULL;
    if (setjmp(failure.jump)) {
        png_destroy_write_struct(&png, &info);
        free(rows);
        free(sink.buffer);
        set_error(err, err_size, "%s", failure.message[0] ? failure.message : "PNG encode failed");
        return -1;
    }
    png_set_write_fn(png, &sink, png_write_memory, png_flush_memory);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8, color_types[channels], PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (compression_level >= 0) png_set_compression_level(png, compression_level);
    rows = malloc(sizeof(png_bytep) * (size_t)height);
    if (!rows) png_error(png, "out of memory");
    for (int y = 0; y < height; y++) rows[y] = (png_bytep)(pixels + (size_t)y * (size_t)width * (size_t)channels);
    png_write_info(png, info);
    png_write_image(png, rows);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(rows);
    *out = sink.buffer;
    *out_size = sink.length;
    return 0;
}
