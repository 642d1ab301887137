/* `llava-data image`: one image through the CLIP preprocessing LLaVA uses, written as safetensors pixel_values
 * (F32 [3,S,S], as CLIPImageProcessor's output for that image). Tested by tests/integration/cli_image.sh. */
#include "common/cli_image.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/image.h"
#include "common/safetensors.h"
#include "common/tensor.h"

static void cli_image_usage(FILE *f) {
    fprintf(f, "usage: llava-data image --size S [--pad] [--max-pixels P] IN OUT.safetensors\n"
               "  Decodes IN (JPEG or PNG) as Pillow's open().convert(\"RGB\"), optionally pads it to a square with\n"
               "  the CLIP mean colour (LLaVA's expand2square, --pad), resizes the shortest edge to S (BICUBIC),\n"
               "  centre-crops S x S and normalises with the CLIP mean/std, as CLIPImageProcessor does.\n"
               "  Writes OUT with one tensor, pixel_values F32 [3,S,S].\n"
               "  --max-pixels P   refuse images with more than P pixels (default %zu)\n",
            (size_t)IMAGE_MAX_PIXELS_DEFAULT);
}

int llava_data_image_main(int argc, char **argv) {
    int size = 0, pad = 0, npos = 0;
    size_t max_pixels = 0;
    const char *pos[2] = {NULL, NULL};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            cli_image_usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--size") && i + 1 < argc) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v <= 0 || v > 8192) {
                fprintf(stderr, "llava-data image: bad --size '%s'\n", argv[i]);
                return 2;
            }
            size = (int)v;
        } else if (!strcmp(argv[i], "--max-pixels") && i + 1 < argc) {
            char *end;
            unsigned long long v = strtoull(argv[++i], &end, 10);
            if (*end || v == 0) {
                fprintf(stderr, "llava-data image: bad --max-pixels '%s'\n", argv[i]);
                return 2;
            }
            max_pixels = (size_t)v;
        } else if (!strcmp(argv[i], "--pad")) {
            pad = 1;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "llava-data image: unknown option '%s'\n", argv[i]);
            cli_image_usage(stderr);
            return 2;
        } else if (npos < 2) {
            pos[npos++] = argv[i];
        } else {
            fprintf(stderr, "llava-data image: too many arguments\n");
            return 2;
        }
    }
    if (!size || npos != 2) {
        cli_image_usage(stderr);
        return 2;
    }
    int code = 1;
    char err[1024];
    image_t img = {0};
    size_t n = 3 * (size_t)size * size;
    uint8_t *chw = malloc(n);
    float *pix = malloc(n * sizeof(float));
    if (!chw || !pix) {
        fprintf(stderr, "llava-data image: out of memory\n");
        goto cleanup;
    }
    int rc = image_load_file(pos[0], max_pixels, &img, err, sizeof err);
    if (rc) {
        fprintf(stderr, "llava-data image: %s\n", err);
        goto cleanup;
    }
    rc = image_clip_preprocess_u8(&img, size, pad, chw);
    if (rc) {
        fprintf(stderr, "llava-data image: %s: preprocessing failed: %s\n", pos[0], err_str(rc));
        goto cleanup;
    }
    image_normalize_clip(chw, size, pix);
    int64_t shape[3] = {3, size, size};
    st_write_item_t item = {.name = "pixel_values", .dtype = DT_F32, .ndim = 3, .shape = shape, .data = pix};
    rc = st_write(pos[1], &item, 1, "{\"format\":\"pt\"}");
    if (rc) {
        fprintf(stderr, "llava-data image: cannot write %s: %s\n", pos[1], err_str(rc));
        goto cleanup;
    }
    printf("%s: %dx%d -> pixel_values [3,%d,%d]%s -> %s\n", pos[0], img.w, img.h, size, size, pad ? " (padded)" : "",
           pos[1]);
    code = 0;
cleanup:
    image_free(&img);
    free(chw);
    free(pix);
    return code;
}
