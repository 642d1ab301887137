/* Tokenize + template benchmark: builds input_ids/labels for every record of a LLaVA conversation file with
 * common/conversation's template_build, as the preprocessing of llava-data does, and prints samples/s.
 * Run: bench/bench_tokenize.py (which also times LLaVA's Python preprocessing on the same records), or
 * build/bench_tokenize --tokenizer M --data conv.json [--template vicuna_v1] [--repeat 5]. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/conversation.h"
#include "common/err.h"
#include "common/tokenizer.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    const char *model = "tests/fixtures/tokenizer/tokenizer.model", *data = NULL, *tname = "vicuna_v1";
    int repeat = 5, rc = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--tokenizer")) model = argv[i + 1];
        else if (!strcmp(argv[i], "--data")) data = argv[i + 1];
        else if (!strcmp(argv[i], "--template")) tname = argv[i + 1];
        else if (!strcmp(argv[i], "--repeat")) repeat = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    template_t tpl;
    if (!data || template_parse(tname, &tpl) != 0 || repeat < 1) {
        fprintf(stderr, "usage: bench_tokenize --data conv.json [--tokenizer M] [--template T] [--repeat R]\n");
        return 2;
    }
    tokenizer_t *tok = NULL;
    conv_file_t *f = NULL;
    ids_t ids = {0}, labels = {0};
    char err[256];
    RC_CHECK_GOTO(tokenizer_load(model, &tok));
    double t0 = now_s();
    RC_CHECK_GOTO(conv_file_load(data, &f, NULL, NULL));
    double t_load = now_s() - t0;
    long tokens = 0, failed = 0;
    double best = 1e30;
    for (int r = 0; r < repeat; r++) {
        tokens = failed = 0;
        t0 = now_s();
        for (int i = 0; i < f->n; i++) {
            int n_img;
            if (template_build(tok, tpl, &f->records[i], &ids, &labels, &n_img, err, sizeof(err)) != 0) failed++;
            tokens += ids.n;
        }
        double dt = now_s() - t0;
        if (dt < best) best = dt;
    }
    printf("C tokenizer+template (%s): %d records (%ld rejected), %ld tokens, best of %d: %.4f s = %.0f samples/s, "
           "%.2f Mtokens/s (JSON load %.4f s)\n",
           tname, f->n, failed, tokens, repeat, best, f->n / best, tokens / best / 1e6, t_load);
    printf("samples_per_s=%.1f\n", f->n / best);
cleanup:
    ids_free(&ids);
    ids_free(&labels);
    conv_file_free(&f);
    tokenizer_free(&tok);
    return rc ? 1 : 0;
}
