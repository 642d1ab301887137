/* JPEG/PNG decoding to RGB as Pillow does it, and the CLIP preprocessing chain (expand2square, Pillow's BICUBIC
 * resampler in fixed point, centre crop, normalisation). Tested by tests/unit/test_image.c (Pillow/transformers
 * fixtures from tests/reference/make_image_fixtures.py, truncated/corrupt/bomb inputs under ASan). */
#include "common/image.h"

#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

#include "common/err.h"

/* Pillow's Resample.c: 32 bits minus 8 for the pixel and 2 for the filter's negative lobes' headroom. */
#define PRECISION_BITS (32 - 8 - 2)

static const float CLIP_MEAN[3] = {0.48145466f, 0.4578275f, 0.40821073f};
static const float CLIP_STD[3] = {0.26862954f, 0.26130258f, 0.27577711f};

static void seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void image_free(image_t *img) {
    if (!img) return;
    free(img->rgb);
    memset(img, 0, sizeof *img);
}

static int image_alloc(image_t *img, int w, int h) {
    img->w = w;
    img->h = h;
    img->rgb = malloc((size_t)w * (size_t)h * 3 + 1);
    return img->rgb ? 0 : LLAVA_ENOMEM;
}

static int check_dims(const char *name, size_t w, size_t h, size_t max_pixels, char *err, size_t errlen) {
    if (w == 0 || h == 0 || w > 0x7fffffff || h > 0x7fffffff) {
        seterr(err, errlen, "%s: bad image size %zux%zu", name, w, h);
        return LLAVA_EFORMAT;
    }
    if (max_pixels == 0) max_pixels = IMAGE_MAX_PIXELS_DEFAULT;
    if (w > max_pixels / h) {
        seterr(err, errlen, "%s: image size %zux%zu (%.0f pixels) exceeds the limit of %zu pixels "
                            "(possible decompression bomb)", name, w, h, (double)w * (double)h, max_pixels);
        return LLAVA_EUNSUPPORTED;
    }
    return 0;
}

/* ---------------- JPEG ---------------- */

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
} jpeg_err_t;

static void jpeg_on_error(j_common_ptr cinfo) {
    jpeg_err_t *e = (jpeg_err_t *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, e->msg);
    longjmp(e->jb, 1);
}

static void jpeg_on_message(j_common_ptr cinfo) { (void)cinfo; }

/* Corrupt-data warnings (premature end of data and the like): Pillow treats a truncated JPEG as an error
 * ("image file is truncated") unless LOAD_TRUNCATED_IMAGES, so we do too. */
static void jpeg_on_emit(j_common_ptr cinfo, int level) {
    if (level < 0) {
        jpeg_err_t *e = (jpeg_err_t *)cinfo->err;
        if (cinfo->err->msg_code == JWRN_JPEG_EOF) {
            (*cinfo->err->format_message)(cinfo, e->msg);
            longjmp(e->jb, 1);
        }
    }
}

/* Pillow's MULDIV255 and cmyk2rgb (Convert.c), applied to the inverted ("CMYK;I") samples libjpeg returns. */
static inline uint8_t muldiv255(int a, int b) {
    int t = a * b + 128;
    return (uint8_t)(((t >> 8) + t) >> 8);
}

static int decode_jpeg(const uint8_t *buf, size_t len, const char *name, size_t max_pixels, image_t *out, char *err,
                       size_t errlen) {
    struct jpeg_decompress_struct cinfo;
    jpeg_err_t jerr;
    /* Volatile: modified between setjmp and a possible longjmp. */
    uint8_t *volatile row = NULL;
    uint8_t *volatile pix = NULL;
    volatile int rc = 0;
    memset(&cinfo, 0, sizeof cinfo);
    cinfo.err = jpeg_std_error(&jerr.pub);
    jerr.pub.error_exit = jpeg_on_error;
    jerr.pub.output_message = jpeg_on_message;
    jerr.pub.emit_message = jpeg_on_emit;
    jerr.msg[0] = 0;
    if (setjmp(jerr.jb)) {
        seterr(err, errlen, "%s: corrupt or truncated JPEG: %s", name, jerr.msg);
        if (rc == 0) rc = LLAVA_EFORMAT;
        goto cleanup;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, buf, (unsigned long)len);
    jpeg_read_header(&cinfo, TRUE);
    {
        int drc = check_dims(name, cinfo.image_width, cinfo.image_height, max_pixels, err, errlen);
        if (drc) {
            rc = drc;
            goto cleanup;
        }
    }
    int ncomp;
    switch (cinfo.jpeg_color_space) {
    case JCS_GRAYSCALE: cinfo.out_color_space = JCS_GRAYSCALE; ncomp = 1; break;
    case JCS_CMYK:
    case JCS_YCCK: cinfo.out_color_space = JCS_CMYK; ncomp = 4; break;
    default: cinfo.out_color_space = JCS_RGB; ncomp = 3; break;
    }
    /* Pillow's decoder keeps libjpeg's defaults: JDCT_ISLOW, fancy upsampling, no scaling. */
    jpeg_start_decompress(&cinfo);
    int w = (int)cinfo.output_width, h = (int)cinfo.output_height;
    pix = malloc((size_t)w * (size_t)h * 3 + 1);
    row = malloc((size_t)w * (size_t)ncomp + 1);
    if (!pix || !row) {
        seterr(err, errlen, "%s: out of memory for %dx%d image", name, w, h);
        rc = LLAVA_ENOMEM;
        goto cleanup;
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        uint8_t *dst = pix + (size_t)cinfo.output_scanline * (size_t)w * 3;
        JSAMPROW rp = ncomp == 3 ? dst : row;
        jpeg_read_scanlines(&cinfo, &rp, 1);
        if (ncomp == 1) {
            for (int x = 0; x < w; x++) dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = row[x];
        } else if (ncomp == 4) {
            for (int x = 0; x < w; x++) {
                const uint8_t *s = row + 4 * x;
                int nk = s[3]; /* 255 - (255 - K') */
                for (int c = 0; c < 3; c++) {
                    int v = nk - muldiv255(255 - s[c], nk);
                    dst[3 * x + c] = (uint8_t)(v < 0 ? 0 : v);
                }
            }
        }
    }
    jpeg_finish_decompress(&cinfo);
    out->w = w;
    out->h = h;
    out->rgb = pix;
    pix = NULL;
cleanup:
    jpeg_destroy_decompress(&cinfo);
    free(row);
    free(pix);
    return rc;
}

/* ---------------- PNG ---------------- */

typedef struct {
    const uint8_t *buf;
    size_t len, pos;
    char msg[256];
    jmp_buf jb;
} png_src_t;

static void png_on_read(png_structp p, png_bytep data, size_t n) {
    png_src_t *s = png_get_io_ptr(p);
    if (n > s->len - s->pos) png_error(p, "unexpected end of file (truncated PNG)");
    memcpy(data, s->buf + s->pos, n);
    s->pos += n;
}

static void png_on_error(png_structp p, png_const_charp msg) {
    png_src_t *s = png_get_error_ptr(p);
    snprintf(s->msg, sizeof s->msg, "%s", msg);
    longjmp(s->jb, 1);
}

static void png_on_warning(png_structp p, png_const_charp msg) {
    (void)p;
    (void)msg;
}

static int decode_png(const uint8_t *buf, size_t len, const char *name, size_t max_pixels, image_t *out, char *err,
                      size_t errlen) {
    png_src_t src = {.buf = buf, .len = len, .pos = 0};
    png_structp png = NULL;
    png_infop info = NULL;
    uint8_t *volatile raw = NULL;
    png_bytep *volatile rows = NULL;
    uint8_t *volatile pix = NULL;
    volatile int rc = 0;
    /* The size is in IHDR at a fixed offset: refuse a bomb before libpng reads further chunks. */
    if (len >= 24 && memcmp(buf + 12, "IHDR", 4) == 0) {
        size_t w0 = ((size_t)buf[16] << 24) | ((size_t)buf[17] << 16) | ((size_t)buf[18] << 8) | buf[19];
        size_t h0 = ((size_t)buf[20] << 24) | ((size_t)buf[21] << 16) | ((size_t)buf[22] << 8) | buf[23];
        int drc = check_dims(name, w0, h0, max_pixels, err, errlen);
        if (drc) return drc;
    }
    png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, png_on_error, png_on_warning);
    if (png) info = png_create_info_struct(png);
    if (!png || !info) {
        seterr(err, errlen, "%s: out of memory creating PNG reader", name);
        rc = LLAVA_ENOMEM;
        goto cleanup;
    }
    if (setjmp(src.jb)) {
        seterr(err, errlen, "%s: corrupt or truncated PNG: %s", name, src.msg);
        if (rc == 0) rc = LLAVA_EFORMAT;
        goto cleanup;
    }
    /* Our own pixel limit applies, not libpng's 1M-per-side default. */
    png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
    png_set_read_fn(png, &src, png_on_read);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    {
        int drc = check_dims(name, w, h, max_pixels, err, errlen);
        if (drc) {
            rc = drc;
            goto cleanup;
        }
    }
    int ct = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
    /* Pillow: palettes are looked up ignoring tRNS, 1/2/4-bit grey scaled to 0..255, alpha dropped by
     * convert("RGB"), 16-bit RGB(A)/LA keep the high byte ("LA;16B"), 16-bit grey alone ("I;16") is clipped
     * to 255. */
    int grey16 = ct == PNG_COLOR_TYPE_GRAY && depth == 16;
    if (ct == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (ct == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (depth == 16 && !grey16) png_set_strip_16(png);
    if (depth == 16 && grey16) png_set_swap(png); /* little-endian 16-bit samples in memory */
    if ((ct & PNG_COLOR_MASK_ALPHA) || png_get_valid(png, info, PNG_INFO_tRNS)) png_set_strip_alpha(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    int ch = png_get_channels(png, info);
    raw = malloc(rowbytes * h + 1);
    rows = malloc(sizeof(png_bytep) * h);
    pix = malloc((size_t)w * h * 3 + 1);
    if (!raw || !rows || !pix) {
        seterr(err, errlen, "%s: out of memory for %ux%u image", name, (unsigned)w, (unsigned)h);
        rc = LLAVA_ENOMEM;
        goto cleanup;
    }
    for (png_uint_32 y = 0; y < h; y++) rows[y] = raw + rowbytes * y;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    for (png_uint_32 y = 0; y < h; y++) {
        const uint8_t *s = rows[y];
        uint8_t *d = pix + (size_t)y * w * 3;
        if (grey16 || ch == 1) {
            for (png_uint_32 x = 0; x < w; x++) {
                uint8_t v;
                if (grey16) {
                    const uint8_t *q = s + 2 * (size_t)x; /* ch == 1 after strip_alpha */
                    v = q[1] ? 255 : q[0];
                } else {
                    v = s[x];
                }
                d[3 * x] = d[3 * x + 1] = d[3 * x + 2] = v;
            }
        } else {
            memcpy(d, s, (size_t)w * 3);
        }
    }
    out->w = (int)w;
    out->h = (int)h;
    out->rgb = pix;
    pix = NULL;
cleanup:
    png_destroy_read_struct(png ? &png : NULL, info ? &info : NULL, NULL);
    free(raw);
    free(rows);
    free(pix);
    return rc;
}

static int image_load_named(const uint8_t *buf, size_t len, const char *name, size_t max_pixels, image_t *out,
                            char *err, size_t errlen) {
    if (!out) return LLAVA_EINVAL;
    memset(out, 0, sizeof *out);
    if (err && errlen) err[0] = 0;
    if (!buf || len == 0) {
        seterr(err, errlen, "%s: empty image data", name);
        return LLAVA_EFORMAT;
    }
    static const uint8_t PNG_SIG[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (len >= 3 && buf[0] == 0xff && buf[1] == 0xd8 && buf[2] == 0xff)
        return decode_jpeg(buf, len, name, max_pixels, out, err, errlen);
    if (len >= 8 && memcmp(buf, PNG_SIG, 8) == 0) return decode_png(buf, len, name, max_pixels, out, err, errlen);
    seterr(err, errlen, "%s: not a JPEG or PNG image (%zu bytes)", name, len);
    return LLAVA_EFORMAT;
}

int image_load_mem(const uint8_t *buf, size_t len, size_t max_pixels, image_t *out, char *err, size_t errlen) {
    return image_load_named(buf, len, "<memory>", max_pixels, out, err, errlen);
}

int image_load_file(const char *path, size_t max_pixels, image_t *out, char *err, size_t errlen) {
    int rc = 0;
    uint8_t *buf = NULL;
    FILE *f = NULL;
    if (!out || !path) return LLAVA_EINVAL;
    memset(out, 0, sizeof *out);
    f = fopen(path, "rb");
    if (!f) {
        seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return LLAVA_EIO;
    }
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n < 0 || fseek(f, 0, SEEK_SET) != 0) {
        seterr(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        rc = LLAVA_EIO;
        goto cleanup;
    }
    buf = malloc((size_t)n + 1);
    if (!buf) {
        seterr(err, errlen, "%s: out of memory reading %ld bytes", path, n);
        rc = LLAVA_ENOMEM;
        goto cleanup;
    }
    if (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        seterr(err, errlen, "%s: short read", path);
        rc = LLAVA_EIO;
        goto cleanup;
    }
    rc = image_load_named(buf, (size_t)n, path, max_pixels, out, err, errlen);
cleanup:
    if (f) fclose(f);
    free(buf);
    return rc;
}

/* ---------------- geometry ---------------- */

int image_pad_square(const image_t *in, const uint8_t bg[3], image_t *out) {
    if (!in || !in->rgb || !out || in->w <= 0 || in->h <= 0) return LLAVA_EINVAL;
    int s = in->w > in->h ? in->w : in->h;
    if (image_alloc(out, s, s)) return LLAVA_ENOMEM;
    size_t npix = (size_t)s * s;
    for (size_t i = 0; i < npix; i++) memcpy(out->rgb + 3 * i, bg, 3);
    int ox = (s - in->w) / 2, oy = (s - in->h) / 2;
    for (int y = 0; y < in->h; y++)
        memcpy(out->rgb + ((size_t)(y + oy) * s + ox) * 3, in->rgb + (size_t)y * in->w * 3, (size_t)in->w * 3);
    return 0;
}

int image_center_crop(const image_t *in, int crop_w, int crop_h, image_t *out) {
    if (!in || !in->rgb || !out || crop_w <= 0 || crop_h <= 0 || crop_w > in->w || crop_h > in->h)
        return LLAVA_EINVAL;
    int top = (in->h - crop_h) / 2, left = (in->w - crop_w) / 2;
    if (image_alloc(out, crop_w, crop_h)) return LLAVA_ENOMEM;
    for (int y = 0; y < crop_h; y++)
        memcpy(out->rgb + (size_t)y * crop_w * 3, in->rgb + ((size_t)(y + top) * in->w + left) * 3,
               (size_t)crop_w * 3);
    return 0;
}

/* ---------------- Pillow's BICUBIC resampler (Resample.c) ---------------- */

static double bicubic_filter(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* precompute_coeffs + normalize_coeffs_8bpc: per output index, the first input index, the tap count and
 * ksize fixed-point weights. Returns ksize, or -1 when out of memory. */
static int resample_coeffs(int in_size, int out_size, int **boundsp, int32_t **kkp) {
    double scale = (double)in_size / out_size, filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    double *k = malloc(sizeof(double) * (size_t)ksize);
    int32_t *kk = malloc(sizeof(int32_t) * (size_t)out_size * ksize);
    int *bounds = malloc(sizeof(int) * 2 * (size_t)out_size);
    if (!k || !kk || !bounds) {
        free(k);
        free(kk);
        free(bounds);
        return -1;
    }
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5), x;
        if (xmin < 0) xmin = 0;
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        for (x = 0; x < xmax; x++) {
            double w = bicubic_filter((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (x = 0; x < xmax; x++)
            if (ww != 0.0) k[x] /= ww;
        for (; x < ksize; x++) k[x] = 0;
        for (x = 0; x < ksize; x++)
            kk[(size_t)xx * ksize + x] = k[x] < 0 ? (int32_t)(-0.5 + k[x] * (1 << PRECISION_BITS))
                                                  : (int32_t)(0.5 + k[x] * (1 << PRECISION_BITS));
        bounds[2 * xx] = xmin;
        bounds[2 * xx + 1] = xmax;
    }
    free(k);
    *boundsp = bounds;
    *kkp = kk;
    return ksize;
}

static inline uint8_t clip8(int32_t v) {
    v >>= PRECISION_BITS;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* Horizontal pass: output columns [x0, x0+cw) for nrows rows of src (row y at src + y*stride*3; its column 0 is
 * source column xoff) into dst (nrows x cw). */
static void resample_h(const uint8_t *src, size_t stride, int nrows, int xoff, uint8_t *dst, int x0, int cw,
                       int ksize, const int *bounds, const int32_t *kk) {
    for (int y = 0; y < nrows; y++) {
        const uint8_t *row = src + (size_t)y * stride * 3;
        uint8_t *d = dst + (size_t)y * cw * 3;
        for (int ox = 0; ox < cw; ox++) {
            int xx = ox + x0, n = bounds[2 * xx + 1];
            const int32_t *k = kk + (size_t)xx * ksize;
            const uint8_t *p = row + (size_t)(bounds[2 * xx] - xoff) * 3;
            int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
            for (int x = 0; x < n; x++) {
                s0 += p[3 * x] * k[x];
                s1 += p[3 * x + 1] * k[x];
                s2 += p[3 * x + 2] * k[x];
            }
            d[3 * ox] = clip8(s0);
            d[3 * ox + 1] = clip8(s1);
            d[3 * ox + 2] = clip8(s2);
        }
    }
}

/* Vertical pass: output rows [y0, y0+ch) of w pixels from src (row y at src + y*stride*3; its row 0 is source row
 * yoff) into dst (ch x w). acc holds 3*w int32. */
static void resample_v(const uint8_t *src, size_t stride, int w, int yoff, uint8_t *dst, int y0, int ch, int ksize,
                       const int *bounds, const int32_t *kk, int32_t *acc) {
    size_t n3 = (size_t)w * 3;
    for (int oy = 0; oy < ch; oy++) {
        int yy = oy + y0, n = bounds[2 * yy + 1];
        const uint8_t *s = src + (size_t)(bounds[2 * yy] - yoff) * stride * 3;
        const int32_t *k = kk + (size_t)yy * ksize;
        uint8_t *d = dst + (size_t)oy * n3;
        for (size_t i = 0; i < n3; i++) acc[i] = 1 << (PRECISION_BITS - 1);
        for (int y = 0; y < n; y++, s += stride * 3) {
            int32_t ky = k[y];
            for (size_t i = 0; i < n3; i++) acc[i] += s[i] * ky;
        }
        for (size_t i = 0; i < n3; i++) d[i] = clip8(acc[i]);
    }
}

/* Pillow (13.0, Resample.c ImagingResampleInner) runs the vertical pass first when the height shrinks and the
 * width shrinks by less than half as many pixels (2 * (w - out_w) < h - out_h), else horizontal first. The
 * intermediate image is rounded to uint8, so the order changes results by a few levels; we follow it. */
static int resize_vertical_first(int in_w, int in_h, int out_w, int out_h) {
    return out_h < in_h && 2 * ((long long)in_w - out_w) < (long long)in_h - out_h;
}

/* The window [x0, x0+cw) x [y0, y0+ch) of Pillow's resize of in to out_w x out_h: each output pixel depends only
 * on its own row's and column's coefficients, so computing a window equals resizing then cropping. */
static int resize_window(const image_t *in, int out_w, int out_h, int x0, int y0, int cw, int ch, image_t *out) {
    int rc = 0;
    int *bh = NULL, *bv = NULL;
    int32_t *kh = NULL, *kv = NULL, *acc = NULL;
    uint8_t *tmp = NULL;
    memset(out, 0, sizeof *out);
    CHECK_GOTO(in && in->rgb && out_w > 0 && out_h > 0 && x0 >= 0 && y0 >= 0 && cw > 0 && ch > 0 &&
                   x0 + cw <= out_w && y0 + ch <= out_h,
               LLAVA_EINVAL, "bad resize %dx%d window %d,%d %dx%d", out_w, out_h, x0, y0, cw, ch);
    CHECK_GOTO(image_alloc(out, cw, ch) == 0, LLAVA_ENOMEM, "out of memory: %dx%d image", cw, ch);
    int need_h = out_w != in->w, need_v = out_h != in->h;
    int ksh = 0, ksv = 0;
    if (need_h) ksh = resample_coeffs(in->w, out_w, &bh, &kh);
    if (need_v) ksv = resample_coeffs(in->h, out_h, &bv, &kv);
    CHECK_GOTO((!need_h || ksh > 0) && (!need_v || ksv > 0), LLAVA_ENOMEM, "out of memory: resample coefficients");
    /* the source columns and rows the window reads */
    int xfirst = need_h ? bh[2 * x0] : x0;
    int xlast = need_h ? bh[2 * (x0 + cw - 1)] + bh[2 * (x0 + cw - 1) + 1] : x0 + cw;
    int yfirst = need_v ? bv[2 * y0] : y0;
    int ylast = need_v ? bv[2 * (y0 + ch - 1)] + bv[2 * (y0 + ch - 1) + 1] : y0 + ch;
    size_t stride = (size_t)in->w;
    if (need_h && need_v) {
        int vfirst = resize_vertical_first(in->w, in->h, out_w, out_h);
        int tw = vfirst ? xlast - xfirst : cw, th = vfirst ? ch : ylast - yfirst;
        tmp = malloc((size_t)tw * (size_t)th * 3 + 1);
        acc = malloc(sizeof(int32_t) * 3 * (size_t)(vfirst ? tw : cw));
        ALLOC_CHECK_GOTO(tmp);
        ALLOC_CHECK_GOTO(acc);
        if (vfirst) {
            resample_v(in->rgb + (size_t)xfirst * 3, stride, tw, 0, tmp, y0, ch, ksv, bv, kv, acc);
            resample_h(tmp, (size_t)tw, ch, xfirst, out->rgb, x0, cw, ksh, bh, kh);
        } else {
            resample_h(in->rgb + (size_t)yfirst * stride * 3, stride, th, 0, tmp, x0, cw, ksh, bh, kh);
            resample_v(tmp, (size_t)cw, cw, yfirst, out->rgb, y0, ch, ksv, bv, kv, acc);
        }
    } else if (need_h) {
        resample_h(in->rgb + (size_t)y0 * stride * 3, stride, ch, 0, out->rgb, x0, cw, ksh, bh, kh);
    } else if (need_v) {
        acc = malloc(sizeof(int32_t) * 3 * (size_t)cw);
        ALLOC_CHECK_GOTO(acc);
        resample_v(in->rgb + (size_t)x0 * 3, stride, cw, 0, out->rgb, y0, ch, ksv, bv, kv, acc);
    } else {
        for (int y = 0; y < ch; y++)
            memcpy(out->rgb + (size_t)y * cw * 3, in->rgb + ((size_t)(y + y0) * stride + x0) * 3, (size_t)cw * 3);
    }
cleanup:
    if (rc) image_free(out);
    free(bh);
    free(bv);
    free(kh);
    free(kv);
    free(acc);
    free(tmp);
    return rc;
}

int image_resize_bicubic(const image_t *in, int out_w, int out_h, image_t *out) {
    if (!out) return LLAVA_EINVAL;
    return resize_window(in, out_w, out_h, 0, 0, out_w, out_h, out);
}

/* ---------------- CLIP ---------------- */

void image_clip_resize_dims(int w, int h, int size, int *out_w, int *out_h) {
    int s = w <= h ? w : h, l = w <= h ? h : w;
    int nl = (int)((double)((long long)size * l) / (double)s);
    if (w <= h) {
        *out_w = size;
        *out_h = nl;
    } else {
        *out_w = nl;
        *out_h = size;
    }
}

int image_clip_preprocess_u8(const image_t *in, int size, int pad, uint8_t *out_chw) {
    static const uint8_t BG[3] = {122, 116, 104}; /* int(255 * CLIP mean) */
    int rc = 0;
    image_t sq = {0}, cr = {0};
    const image_t *cur = in;
    if (!in || !in->rgb || size <= 0 || !out_chw) return LLAVA_EINVAL;
    if (pad && in->w != in->h) {
        RC_CHECK_GOTO(image_pad_square(in, BG, &sq));
        cur = &sq;
    }
    int rw, rh;
    image_clip_resize_dims(cur->w, cur->h, size, &rw, &rh);
    /* transformers' center_crop offsets, computed inside the resize so cropped-away pixels are never made */
    RC_CHECK_GOTO(resize_window(cur, rw, rh, (rw - size) / 2, (rh - size) / 2, size, size, &cr));
    size_t np = (size_t)size * size;
    for (size_t i = 0; i < np; i++) {
        out_chw[i] = cr.rgb[3 * i];
        out_chw[np + i] = cr.rgb[3 * i + 1];
        out_chw[2 * np + i] = cr.rgb[3 * i + 2];
    }
cleanup:
    image_free(&sq);
    image_free(&cr);
    return rc;
}

void image_normalize_clip(const uint8_t *chw, int size, float *out) {
    size_t np = (size_t)size * size;
    for (int c = 0; c < 3; c++)
        for (size_t i = 0; i < np; i++) {
            float x = (float)((double)chw[c * np + i] * (1.0 / 255.0));
            out[c * np + i] = (x - CLIP_MEAN[c]) / CLIP_STD[c];
        }
}
