/* Per-sample preprocessing benchmark, as llava-data ingest does it for one record: decode the image (JPEG/PNG),
 * [pad,] resize, crop, normalise to float pixel_values, tokenize + template. Run by bench/bench_preprocess.py, which
 * times LLaVA's Python path (Pillow + CLIPImageProcessor + LlamaTokenizer preprocessing) on the same records.
 * Then times the stages apart, from files already in memory: decode alone (image_load_mem), decode + pad/resize/crop
 * (image_clip_load_mem; the resampling is the difference), normalisation, tokenize + template.
 * Usage: bench_preprocess --data conv.json --images DIR --tokenizer M [--template T] [--size S] [--pad] [--repeat R] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/conversation.h"
#include "common/err.h"
#include "common/fileio.h"
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

/* Best-of-repeat CPU seconds of one stage over all records; stage returns nonzero on error. */
typedef struct {
    const conv_file_t *f;
    char **buf;   /* (f->n) file contents, NULL for a text-only record */
    size_t *len;  /* (f->n) */
    int size, pad;
    uint8_t *chw; /* (3, size, size) */
    float *pix;   /* (3, size, size) */
    tokenizer_t *tok;
    template_t tpl;
    ids_t *ids, *labels;
    double checksum;
} stage_ctx_t;

enum { STAGE_DECODE, STAGE_CLIP, STAGE_NORMALIZE, STAGE_TEXT, STAGE_COUNT };
static const char *STAGE_NAMES[STAGE_COUNT] = {"decode", "decode+pad/resize/crop", "normalise", "text"};

static int stage_run(stage_ctx_t *c, int stage, int i, char *err, size_t errlen) {
    const conv_record_t *rec = &c->f->records[i];
    if (stage == STAGE_TEXT) {
        int n_img;
        return template_build(c->tok, c->tpl, rec, c->ids, c->labels, &n_img, err, errlen);
    }
    if (!c->buf[i]) return 0;
    if (stage == STAGE_DECODE) {
        image_t img;
        int rc = image_load_mem((const uint8_t *)c->buf[i], c->len[i], 0, &img, err, errlen);
        if (rc == 0) c->checksum += img.rgb[0];
        image_free(&img);
        return rc;
    }
    if (stage == STAGE_CLIP)
        return image_clip_load_mem((const uint8_t *)c->buf[i], c->len[i], 0, c->size, c->pad, c->chw, err, errlen);
    image_normalize_clip(c->chw, c->size, c->pix);
    c->checksum += c->pix[i % (3 * c->size * c->size)];
    return 0;
}

static int stage_time(stage_ctx_t *c, int stage, int repeat, double *best) {
    char err[512];
    *best = 1e30;
    for (int r = 0; r < repeat; r++) {
        double c0 = cpu_s();
        for (int i = 0; i < c->f->n; i++) {
            if (stage_run(c, stage, i, err, sizeof err) != 0) {
                fprintf(stderr, "bench_preprocess: %s of record %s: %s\n", STAGE_NAMES[stage], c->f->records[i].id,
                        err);
                return LLAVA_EINVAL;
            }
        }
        double dc = cpu_s() - c0;
        if (dc < *best) *best = dc;
    }
    return 0;
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
    char **bufs = NULL;
    size_t *lens = NULL;
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
    bufs = calloc((size_t)f->n, sizeof *bufs);
    lens = calloc((size_t)f->n, sizeof *lens);
    ALLOC_CHECK_GOTO(bufs);
    ALLOC_CHECK_GOTO(lens);
    for (int i = 0; i < f->n; i++) {
        if (!f->records[i].image) continue;
        snprintf(path, sizeof path, "%s/%s", dir, f->records[i].image);
        RC_CHECK_GOTO(file_read_all(path, &bufs[i], &lens[i]));
    }
    {
        stage_ctx_t sc = {f, bufs, lens, size, pad, chw, pix, tok, tpl, &ids, &labels, 0};
        double st[STAGE_COUNT];
        for (int s = 0; s < STAGE_COUNT; s++) RC_CHECK_GOTO(stage_time(&sc, s, repeat, &st[s]));
        printf("stages (CPU ms/sample, files in memory): decode %.3f, pad/resize/crop %.3f, normalise %.3f, "
               "text %.3f (checksum %.1f)\n",
               1e3 * st[STAGE_DECODE] / f->n, 1e3 * (st[STAGE_CLIP] - st[STAGE_DECODE]) / f->n,
               1e3 * st[STAGE_NORMALIZE] / f->n, 1e3 * st[STAGE_TEXT] / f->n, sc.checksum);
        printf("stage_decode_ms=%.4f stage_clip_ms=%.4f stage_normalize_ms=%.4f stage_text_ms=%.4f\n",
               1e3 * st[STAGE_DECODE] / f->n, 1e3 * st[STAGE_CLIP] / f->n, 1e3 * st[STAGE_NORMALIZE] / f->n,
               1e3 * st[STAGE_TEXT] / f->n);
    }
cleanup:
    for (int i = 0; bufs && i < f->n; i++) free(bufs[i]);
    ids_free(&ids);
    ids_free(&labels);
    conv_file_free(&f);
    tokenizer_free(&tok);
    free(bufs);
    free(lens);
    free(chw);
    free(pix);
    return rc ? 1 : 0;
}
