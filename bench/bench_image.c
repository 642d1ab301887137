/* Image benchmark: decode (JPEG/PNG) + CLIP preprocessing (uint8 stage + normalisation) per sample on one core.
 * Run by bench/bench_image.py, which makes the images and times Pillow + CLIPImageProcessor on the same files.
 * Usage: bench_image SIZE PAD FILE... ; prints "c: N samples, T s, R samples/s". */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "common/image.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: bench_image SIZE PAD FILE...\n");
        return 2;
    }
    int size = atoi(argv[1]), pad = atoi(argv[2]), nfiles = argc - 3;
    size_t n = 3 * (size_t)size * size;
    uint8_t *chw = malloc(n);
    float *pix = malloc(n * sizeof(float));
    if (!chw || !pix || size <= 0) return 1;
    double checksum = 0, t0 = now_s();
    for (int i = 0; i < nfiles; i++) {
        char err[512];
        if (image_clip_load_file(argv[3 + i], 0, size, pad, chw, err, sizeof err)) {
            fprintf(stderr, "bench_image: %s\n", err);
            return 1;
        }
        image_normalize_clip(chw, size, pix);
        checksum += pix[n / 2];
    }
    double dt = now_s() - t0;
    printf("c: %d samples, %.3f s, %.1f samples/s (checksum %.4f)\n", nfiles, dt, nfiles / dt, checksum);
    free(chw);
    free(pix);
    return 0;
}
