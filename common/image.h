/* Image decoding (JPEG via libjpeg-turbo, PNG via libpng) to 8-bit RGB exactly as Pillow's open().convert("RGB"),
 * and LLaVA's CLIP preprocessing (expand2square, Pillow BICUBIC resize, centre crop, normalise) bit-identical to
 * transformers' CLIPImageProcessor (use_fast=False). Tested by tests/unit/test_image.c against Pillow fixtures. */
#ifndef LLAVA_IMAGE_H
#define LLAVA_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** An 8-bit RGB image, rows top to bottom, HWC. Owned by whoever filled it; release with image_free. */
typedef struct {
    int w, h;
    uint8_t *rgb; /* (h, w, 3) */
} image_t;

/** Pillow's default decompression-bomb error threshold (Image.MAX_IMAGE_PIXELS * 2). */
#define IMAGE_MAX_PIXELS_DEFAULT ((size_t)89478485 * 2)

/** Decodes a JPEG or PNG file (sniffed by signature) into out (RGB). Greyscale is replicated, alpha dropped,
 *  palettes looked up (tRNS ignored), CMYK/YCCK converted as Pillow does, 16-bit reduced as Pillow does.
 *  max_pixels: refuse images with w*h above it before allocating pixels (0: IMAGE_MAX_PIXELS_DEFAULT).
 *  err (may be NULL) receives a message naming the file. Returns 0, LLAVA_EIO (cannot read), LLAVA_EFORMAT
 *  (truncated, corrupt or unknown format), LLAVA_EUNSUPPORTED (too many pixels) or LLAVA_ENOMEM.
 *  On failure out is zeroed and nothing is leaked. */
int image_load_file(const char *path, size_t max_pixels, image_t *out, char *err, size_t errlen);

/** As image_load_file, from a buffer; messages name it "<memory>". */
int image_load_mem(const uint8_t *buf, size_t len, size_t max_pixels, image_t *out, char *err, size_t errlen);

/** Frees out->rgb and zeroes out (safe on a zeroed image). */
void image_free(image_t *img);

/** LLaVA's expand2square: pastes in centred (offset (long-short)//2) onto a square of colour bg. A square input is
 *  copied. Returns 0, LLAVA_EINVAL or LLAVA_ENOMEM; out is owned by the caller. */
int image_pad_square(const image_t *in, const uint8_t bg[3], image_t *out);

/** Pillow Image.resize((out_w, out_h), BICUBIC) bit for bit: separable antialiased convolution (support 2 scaled
 *  by the downscale factor), 22-bit fixed-point coefficients, uint8 intermediate, and Pillow 13's pass order
 *  (vertical first when the height shrinks and 2 * (w - out_w) < h - out_h, else horizontal first). */
int image_resize_bicubic(const image_t *in, int out_w, int out_h, image_t *out);

/** transformers' center_crop: top = (h - ch) // 2, left = (w - cw) // 2; the crop must fit (LLAVA_EINVAL). */
int image_center_crop(const image_t *in, int crop_w, int crop_h, image_t *out);

/** Size after resizing the shortest edge to `size` as transformers' get_resize_output_image_size
 *  (default_to_square=False): long = int(size * long / short). */
void image_clip_resize_dims(int w, int h, int size, int *out_w, int *out_h);

/** CLIPImageProcessor's uint8 stage: [expand2square with (122,116,104) when pad] -> shortest edge to size
 *  (BICUBIC) -> centre crop size x size; out_chw holds 3*size*size bytes, channel-major. */
int image_clip_preprocess_u8(const image_t *in, int size, int pad, uint8_t *out_chw);

/** Decode + image_clip_preprocess_u8 in one pass, without storing the picture or the padded square: each decoded
 *  row is resampled horizontally while in cache (bit-identical to image_load_file + image_clip_preprocess_u8).
 *  AVX2 kernels are used when the CPU has them unless the environment sets LLAVA_NO_SIMD=1 (same results).
 *  Errors and messages as image_load_file/image_load_mem. */
int image_clip_load_file(const char *path, size_t max_pixels, int size, int pad, uint8_t *out_chw, char *err,
                         size_t errlen);
int image_clip_load_mem(const uint8_t *buf, size_t len, size_t max_pixels, int size, int pad, uint8_t *out_chw,
                        char *err, size_t errlen);

/** (x/255 - mean)/std with OpenAI CLIP mean/std, in float32 as transformers computes it; n = 3*size*size. */
void image_normalize_clip(const uint8_t *chw, int size, float *out);

#ifdef __cplusplus
}
#endif
#endif
