/* Tests common/image: decode + CLIP preprocessing against Pillow/transformers fixtures (tests/fixtures/image, made by
 * tests/reference/make_image_fixtures.py), and bad inputs (truncated, empty, garbage, bomb, missing) failing cleanly.
 * Both kernel sets are run: AVX2 (when the CPU has it) and portable (LLAVA_NO_SIMD=1).
 * Run: ctest -R test_image (working directory tests/). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/image.h"
#include "tests/test.h"

#define FIX "fixtures/image/"

static uint8_t *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)len + 1);
    if (b && fread(b, 1, (size_t)len, f) != (size_t)len) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *n = (size_t)len;
    return b;
}

static void test_fixtures(void) {
    FILE *m = fopen(FIX "manifest.txt", "r");
    CHECK(m != NULL);
    if (!m) return;
    char name[256], prev[256] = "", out[300], path[400], err[512];
    int size, pad, ncases = 0, nimages = 0, nexact = 0, maxdiff_all = 0;
    long ndiff_all = 0;
    double maxferr = 0;
    static const float STD[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    static const float MEAN[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    while (fscanf(m, "%255s %d %d %299s", name, &size, &pad, out) == 4) {
        image_t img;
        if (strcmp(name, prev) != 0) nimages++;
        snprintf(prev, sizeof prev, "%s", name);
        snprintf(path, sizeof path, FIX "%s", name);
        int rc = image_load_file(path, 0, &img, err, sizeof err);
        CHECKF(rc == 0, "%s: %s", name, err);
        if (rc) continue;
        size_t n = 3 * (size_t)size * size, en = 0;
        uint8_t *got = malloc(n);
        float *f = malloc(n * sizeof(float));
        snprintf(path, sizeof path, FIX "%s", out);
        uint8_t *want = read_all(path, &en);
        CHECK(got && f && want && en == n);
        if (got && f && want && en == n) {
            /* the streaming decode + preprocess must give the same bytes as decode, then preprocess */
            snprintf(path, sizeof path, FIX "%s", name);
            CHECK_RC(image_clip_load_file(path, 0, size, pad, got, err, sizeof err), 0);
            CHECKF(memcmp(got, want, n) == 0, "%s S=%d pad=%d: image_clip_load_file differs", name, size, pad);
            CHECK_RC(image_clip_preprocess_u8(&img, size, pad, got), 0);
            int maxd = 0;
            long nd = 0;
            for (size_t i = 0; i < n; i++) {
                int d = abs((int)got[i] - (int)want[i]);
                if (d) nd++;
                if (d > maxd) maxd = d;
            }
            /* The bar: at most one level off anywhere (we aim at, and below require, bit-exact). */
            CHECKF(maxd <= 1, "%s S=%d pad=%d: max diff %d, %ld values differ", name, size, pad, maxd, nd);
            if (maxd) fprintf(stderr, "note %s S=%d pad=%d: max diff %d, %ld of %zu differ\n", name, size, pad, maxd,
                              nd, n);
            nexact += maxd == 0;
            ndiff_all += nd;
            if (maxd > maxdiff_all) maxdiff_all = maxd;
            image_normalize_clip(got, size, f);
            size_t np = (size_t)size * size;
            for (size_t i = 0; i < n; i++) {
                int c = (int)(i / np);
                double ref = ((double)want[i] / 255.0 - MEAN[c]) / STD[c];
                double e = (f[i] - ref) * STD[c] * 255.0; /* in 1/255 units: <= 1 level + rounding */
                if (e < 0) e = -e;
                if (e > maxferr) maxferr = e;
            }
        }
        ncases++;
        free(got);
        free(f);
        free(want);
        image_free(&img);
    }
    fclose(m);
    CHECK(ncases >= 200 && nimages >= 100);
    /* normalised values within 1/255/std of the processor's (the fixtures' u8 normalised in double) */
    CHECKF(maxferr <= 1.0 + 1e-3, "normalised values off by %.4g/255/std", maxferr);
    /* Pillow's resampler is reproduced bit for bit (pass order included): any difference is a regression. */
    CHECKF(nexact == ncases, "only %d of %d cases bit-exact", nexact, ncases);
    printf("image fixtures: %d images, %d cases, %d bit-exact, max uint8 diff %d, %ld differing values, max float err %.3g/255*std\n",
           nimages, ncases, nexact, maxdiff_all, ndiff_all, maxferr);
}

static void expect_fail(const uint8_t *buf, size_t len, size_t maxpix, int want, const char *what) {
    image_t img = {1, 1, (uint8_t *)1};
    char err[512] = "";
    int rc = image_load_mem(buf, len, maxpix, &img, err, sizeof err);
    CHECKF(rc == want, "%s: rc %d (%s), want %d; err '%s'", what, rc, err_str(rc), want, err);
    CHECKF(err[0] != 0, "%s: no message", what);
    CHECK(img.rgb == NULL && img.w == 0);
    uint8_t chw[3 * 32 * 32];
    err[0] = 0;
    rc = image_clip_load_mem(buf, len, maxpix, 32, 1, chw, err, sizeof err);
    CHECKF(rc == want, "%s (streaming): rc %d (%s), want %d; err '%s'", what, rc, err_str(rc), want, err);
    CHECKF(err[0] != 0, "%s (streaming): no message", what);
}

static void test_truncated(const char *file) {
    size_t n = 0;
    char path[300];
    snprintf(path, sizeof path, FIX "%s", file);
    uint8_t *b = read_all(path, &n);
    CHECK(b != NULL);
    if (!b) return;
    size_t cuts[] = {1, 2, 3, 8, 20, 33, 100, n / 4, n / 2, n - 40, n - 13};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        if (cuts[i] >= n) continue;
        /* Copy so ASan sees reads past the cut. */
        uint8_t *c = malloc(cuts[i]);
        memcpy(c, b, cuts[i]);
        image_t img;
        char err[512] = "";
        int rc = image_load_mem(c, cuts[i], 0, &img, err, sizeof err);
        CHECKF(rc == LLAVA_EFORMAT, "%s cut at %zu: rc %d", file, cuts[i], rc);
        CHECK(err[0] != 0);
        image_free(&img);
        uint8_t chw[3 * 48 * 48];
        rc = image_clip_load_mem(c, cuts[i], 0, 48, (int)(i & 1), chw, err, sizeof err);
        CHECKF(rc == LLAVA_EFORMAT, "%s cut at %zu (streaming): rc %d", file, cuts[i], rc);
        free(c);
    }
    /* Flipped bytes in the data: an error or a decoded image, never a crash. */
    for (size_t i = n / 3; i < n; i += n / 7 + 1) {
        uint8_t *c = malloc(n);
        memcpy(c, b, n);
        c[i] ^= 0x5a;
        image_t img;
        char err[512];
        (void)image_load_mem(c, n, 0, &img, err, sizeof err);
        image_free(&img);
        uint8_t chw[3 * 32 * 32];
        (void)image_clip_load_mem(c, n, 0, 32, 1, chw, err, sizeof err);
        free(c);
    }
    free(b);
}

static void test_bad_inputs(void) {
    static const uint8_t garbage[] = "this is not an image at all, just some bytes";
    expect_fail(garbage, sizeof garbage, 0, LLAVA_EFORMAT, "garbage");
    expect_fail(garbage, 0, 0, LLAVA_EFORMAT, "empty");
    static const uint8_t jpeg_garbage[] = {0xff, 0xd8, 0xff, 0x00, 0x12, 0x34, 0x56, 0x78};
    expect_fail(jpeg_garbage, sizeof jpeg_garbage, 0, LLAVA_EFORMAT, "jpeg magic then garbage");
    /* PNG header claiming 100000 x 100000: refused before any pixel allocation. */
    static const uint8_t bomb[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R',
                                   0x00, 0x01, 0x86, 0xa0, 0x00, 0x01, 0x86, 0xa0, 8, 2, 0, 0, 0,
                                   0x00, 0x00, 0x00, 0x00};
    uint8_t b2[sizeof bomb];
    memcpy(b2, bomb, sizeof bomb);
    {
        /* fill in the IHDR CRC so libpng gets as far as the size */
        uint32_t crc = 0xffffffffu;
        for (int i = 12; i < 29; i++) {
            crc ^= b2[i];
            for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1)));
        }
        crc ^= 0xffffffffu;
        b2[29] = (uint8_t)(crc >> 24);
        b2[30] = (uint8_t)(crc >> 16);
        b2[31] = (uint8_t)(crc >> 8);
        b2[32] = (uint8_t)crc;
    }
    expect_fail(b2, sizeof b2, 0, LLAVA_EUNSUPPORTED, "png bomb");
    /* A small limit refuses an ordinary fixture too. */
    size_t n;
    uint8_t *jp = read_all(FIX "img015_jpg_RGB_700x420.jpg", &n);
    CHECK(jp != NULL);
    if (jp) expect_fail(jp, n, 1000, LLAVA_EUNSUPPORTED, "jpeg over max_pixels");
    free(jp);
    image_t img;
    char err[512] = "";
    CHECK_RC(image_load_file("fixtures/image/does-not-exist.png", 0, &img, err, sizeof err), LLAVA_EIO);
    CHECK(strstr(err, "does-not-exist.png") != NULL);
    uint8_t chw[3 * 32 * 32];
    CHECK_RC(image_clip_load_file("fixtures/image/does-not-exist.png", 0, 32, 0, chw, err, sizeof err), LLAVA_EIO);
    char empty[400];
    snprintf(empty, sizeof empty, "%s/empty.jpg", test_tmpdir());
    FILE *f = fopen(empty, "wb");
    if (f) fclose(f);
    CHECK_RC(image_load_file(empty, 0, &img, err, sizeof err), LLAVA_EFORMAT);
    CHECK(strstr(err, "empty.jpg") != NULL);
    test_truncated("img015_jpg_RGB_700x420.jpg");
    test_truncated("img016_jpg_prog_RGB_300x640.jpg");
    test_truncated("img007_png_RGBA_50x40.png");
    test_truncated("img013_png_i_RGB_83x59.png");
}

static void test_geometry(void) {
    int w, h;
    image_clip_resize_dims(500, 3, 336, &w, &h);
    CHECK(w == 56000 && h == 336);
    image_clip_resize_dims(640, 480, 224, &w, &h);
    CHECK(w == 298 && h == 224);
    uint8_t px[6] = {1, 2, 3, 4, 5, 6};
    image_t in = {2, 1, px}, sq, cr;
    static const uint8_t bg[3] = {9, 9, 9};
    CHECK_RC(image_pad_square(&in, bg, &sq), 0);
    CHECK(sq.w == 2 && sq.h == 2 && sq.rgb[0] == 1 && sq.rgb[6] == 9);
    CHECK_RC(image_center_crop(&sq, 3, 1, &cr), LLAVA_EINVAL);
    image_free(&sq);
}

/* Sizes the fixtures do not use (odd, and 4*S not a multiple of 32, so every kernel runs its tail): the streaming
 * path against the plain one built from image_pad_square, image_resize_bicubic and image_center_crop. */
static void test_odd_sizes(void) {
    static const char *files[] = {"img015_jpg_RGB_700x420.jpg", "img016_jpg_prog_RGB_300x640.jpg",
                                  "img001_jpg_RGB_3x500.jpg", "img038_png_RGBA_253x211.png",
                                  "img013_png_i_RGB_83x59.png", "img005_jpg_CMYK_64x64.jpg"};
    static const int sizes[] = {1, 7, 21, 30, 45};
    static const uint8_t BG[3] = {122, 116, 104};
    char path[300], err[512];
    int ncmp = 0;
    for (size_t fi = 0; fi < sizeof files / sizeof files[0]; fi++) {
        image_t img;
        snprintf(path, sizeof path, FIX "%s", files[fi]);
        int rc = image_load_file(path, 0, &img, err, sizeof err);
        CHECKF(rc == 0, "%s: %s", files[fi], err);
        if (rc) continue;
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
            for (int pad = 0; pad < 2; pad++) {
                int S = sizes[si], rw, rh;
                size_t np = (size_t)S * S;
                uint8_t *got = malloc(3 * np), *want = malloc(3 * np);
                image_t sq = {0}, rs = {0}, cr = {0};
                const image_t *src = &img;
                if (pad && img.w != img.h) {
                    CHECK_RC(image_pad_square(&img, BG, &sq), 0);
                    src = &sq;
                }
                image_clip_resize_dims(src->w, src->h, S, &rw, &rh);
                if (got && want && image_resize_bicubic(src, rw, rh, &rs) == 0 &&
                    image_center_crop(&rs, S, S, &cr) == 0) {
                    for (size_t i = 0; i < np; i++)
                        for (int c = 0; c < 3; c++) want[c * np + i] = cr.rgb[3 * i + c];
                    CHECK_RC(image_clip_load_file(path, 0, S, pad, got, err, sizeof err), 0);
                    CHECKF(memcmp(got, want, 3 * np) == 0, "%s S=%d pad=%d: streaming differs from plain", files[fi],
                           S, pad);
                    CHECK_RC(image_clip_preprocess_u8(&img, S, pad, got), 0);
                    CHECKF(memcmp(got, want, 3 * np) == 0, "%s S=%d pad=%d: preprocess_u8 differs from plain",
                           files[fi], S, pad);
                    ncmp++;
                } else {
                    CHECKF(0, "%s S=%d pad=%d: plain path failed", files[fi], S, pad);
                }
                image_free(&sq);
                image_free(&rs);
                image_free(&cr);
                free(got);
                free(want);
            }
        image_free(&img);
    }
    CHECK(ncmp == 60);
}

int main(void) {
    test_geometry();
    test_bad_inputs();
    test_fixtures();
    test_odd_sizes();
    /* again on the portable kernels (the AVX2 ones are chosen whenever the CPU has AVX2) */
    setenv("LLAVA_NO_SIMD", "1", 1);
    test_fixtures();
    test_odd_sizes();
    test_bad_inputs();
    unsetenv("LLAVA_NO_SIMD");
    return test_finish();
}
