/* Per-sample preprocessing benchmark, as llava-data ingest does it for one record: decode the image (JPEG/PNG),
 * [pad,] resize, crop, normalise to float pixel_values, tokenize + template. Run by bench/bench_preprocess.py, which
 * times LLaVA's Python path (Pillow + CLIPImageProcessor + LlamaTokenizer preprocessing) on the same records.
 * Usage: bench_preprocess --data conv.json --images DIR --tokenizer M [--template T] [--size S] [--pad] [--repeat R] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/conversation.h"
#include "common/err.h"
#include "common/image.h"
#include "common/tokenizer.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* CPU time of this process: on a shared machine it is steadier than wall time. */
static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void usage(FILE *f) {
    fprintf(f, "usage: bench_preprocess --data conv.json --images DIR --tokenizer M [--template plain|vicuna_v1|llava_v0]\n"
               "                        [--size S] [--pad] [--repeat R]\n"
               "Times decode + CLIP preprocessing + normalisation + tokenize/template per record (best of R passes)\n"
               "and prints samples/s, with the image and text parts timed separately.\n");
}

int main(int argc, char **argv) {
    const char *data = NULL, *dir = NULL, *model = NULL, *tname = "vicuna_v1";
    int size = 336, pad = 0, repeat = 3, rc = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--pad")) {
            pad = 1;
        } else if (v && !strcmp(a, "--data")) {
            data = argv[++i];
        } else if (v && !strcmp(a, "--images")) {
            dir = argv[++i];
        } else if (v && !strcmp(a, "--tokenizer")) {
            model = argv[++i];
        } else if (v && !strcmp(a, "--template")) {
            tname = argv[++i];
        } else if (v && !strcmp(a, "--size")) {
            size = atoi(argv[++i]);
        } else if (v && !strcmp(a, "--repeat")) {
            repeat = atoi(argv[++i]);
        } else {
            usage(stderr);
            return 2;
        }
    }
    template_t tpl;
    if (!data || !dir || !model || template_parse(tname, &tpl) != 0 || size <= 0 || repeat < 1) {
        usage(stderr);
        return 2;
    }
    tokenizer_t *tok = NULL;
    conv_file_t *f = NULL;
    ids_t ids = {0}, labels = {0};
    size_t n = 3 * (size_t)size * size;
    uint8_t *chw = malloc(n);
    float *pix = malloc(n * sizeof(float));
    char err[512], path[4096];
    ALLOC_CHECK_GOTO(chw);
    ALLOC_CHECK_GOTO(pix);
    RC_CHECK_GOTO(tokenizer_load(model, &tok));
    RC_CHECK_GOTO(conv_file_load(data, &f, NULL, NULL));
    double best = 1e30, best_img = 0, best_txt = 0, best_cpu = 1e30, checksum = 0;
    long tokens = 0;
    for (int r = 0; r < repeat; r++) {
        double t_img = 0, t_txt = 0, t0 = now_s(), c0 = cpu_s();
        tokens = 0;
        for (int i = 0; i < f->n; i++) {
            const conv_record_t *rec = &f->records[i];
            double ta = now_s();
            if (rec->image) {
                snprintf(path, sizeof path, "%s/%s", dir, rec->image);
                CHECK_GOTO(image_clip_load_file(path, 0, size, pad, chw, err, sizeof err) == 0, LLAVA_EIO, "%s", err);
                image_normalize_clip(chw, size, pix);
                checksum += pix[n / 2];
            }
            double tb = now_s();
            int n_img;
            CHECK_GOTO(template_build(tok, tpl, rec, &ids, &labels, &n_img, err, sizeof err) == 0, LLAVA_EINVAL,
                       "record %s: %s", rec->id, err);
            tokens += ids.n;
            t_img += tb - ta;
            t_txt += now_s() - tb;
        }
        double dt = now_s() - t0, dc = cpu_s() - c0;
        if (dc < best_cpu) best_cpu = dc;
        if (dt < best) {
            best = dt;
            best_img = t_img;
            best_txt = t_txt;
        }
    }
    printf("C: %d samples (%s, S=%d%s), %ld tokens, best of %d: %.3f s = %.1f samples/s; image %.2f ms/sample, "
           "text %.3f ms/sample (checksum %.4f)\n",
           f->n, tname, size, pad ? " pad" : "", tokens, repeat, best, f->n / best, 1e3 * best_img / f->n,
           1e3 * best_txt / f->n, checksum);
    printf("samples_per_s=%.2f image_ms=%.4f text_ms=%.4f cpu_samples_per_s=%.2f\n", f->n / best,
           1e3 * best_img / f->n, 1e3 * best_txt / f->n, f->n / best_cpu);
cleanup:
    ids_free(&ids);
    ids_free(&labels);
    conv_file_free(&f);
    tokenizer_free(&tok);
    free(chw);
    free(pix);
    return rc ? 1 : 0;
}
