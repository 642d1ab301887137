/* llava-data: the data tool. Subcommands ingest, inspect, verify, tokenize, image, synth (each has --help).
 * Formats: docs/dataset-format.md. Tested by tests/integration/ingest.sh and tests/integration/tokenizer_parity.sh. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/cli_image.h"
#include "common/cli_tokenize.h"
#include "common/conversation.h"
#include "common/dataset.h"
#include "common/err.h"
#include "common/ingest.h"
#include "common/synth.h"
#include "common/tokenizer.h"


static void usage(FILE *f) {
    fprintf(f, "usage: llava-data COMMAND [options]   (llava-data COMMAND --help for each)\n"
               "  ingest    LLaVA JSON + images -> dataset directory (manifest.json + LMDB shards)\n"
               "  inspect   counts, shards, length histogram, one record decoded with its target spans\n"
               "  verify    re-check every shard checksum and record header; non-zero exit on damage\n"
               "  tokenize  encode/decode lines with a sentencepiece tokenizer\n"
               "  image     decode + CLIP-preprocess images\n"
               "  synth     synthetic shapes data (captions, instructions, multiple choice) and its tokenizer\n");
}

/* ---------------------------------------------------------------- inspect */

static void inspect_usage(FILE *f) {
    fprintf(f, "usage: llava-data inspect DATASET [INDEX|ID] [--tokenizer M] [--color|--no-color]\n"
               "  Prints counts, shards and a histogram of lengths after image expansion ((S/14)^2 tokens per image),\n"
               "  then one record (default: index 0) decoded to text: target spans (labels != -100) in [[...]]\n"
               "  (green on a terminal), images as <image SxS>. The tokenizer defaults to the manifest's.\n");
}

/* Prints the tokens [a, b) of rec decoded as one span. */
static int print_span(const tokenizer_t *tok, const ds_record_t *rec, int a, int b, int target, int color) {
    char *text = NULL;
    int rc = tokenizer_decode(tok, rec->input_ids + a, b - a, &text);
    if (rc) return rc;
    if (target) printf(color ? "\x1b[32m" : "[[");
    fputs(text, stdout);
    if (target) printf(color ? "\x1b[0m" : "]]");
    free(text);
    return 0;
}

static int inspect_record(const tokenizer_t *tok, const ds_record_t *rec, int64_t index, int color) {
    printf("record %lld: id \"%.*s\", %d tokens, %d image(s)%s, %d targets\n", (long long)index, rec->id_len, rec->id,
           rec->n_tokens, rec->n_images, rec->flags & DS_FLAG_PAD ? " (padded square)" : "",
           ds_count_targets(rec->labels, rec->n_tokens));
    printf("  ids:");
    for (int i = 0; i < rec->n_tokens && i < 64; i++) printf(" %d", rec->input_ids[i]);
    printf(rec->n_tokens > 64 ? " ...\n" : "\n");
    printf("  text: ");
    int start = 0;
    for (int i = 0; i <= rec->n_tokens; i++) {
        int end = i == rec->n_tokens, img = !end && rec->input_ids[i] == LLAVA_IMAGE_PLACEHOLDER;
        int tgt = !end && !img && rec->labels[i] != LLAVA_IGNORE_INDEX;
        int prev_tgt = i > start && rec->labels[i - 1] != LLAVA_IGNORE_INDEX;
        if (i > start && (end || img || tgt != prev_tgt)) {
            int rc = print_span(tok, rec, start, i, prev_tgt, color);
            if (rc) return rc;
            start = i;
        }
        if (img) {
            printf("<image %dx%d>", rec->image_size, rec->image_size);
            start = i + 1;
        } else if (!end && tokenizer_piece_type(tok, rec->input_ids[i]) == TOK_CONTROL) {
            /* decode drops control pieces ("<s>", "</s>"): show them, they carry loss too */
            if (i > start) {
                int rc = print_span(tok, rec, start, i, prev_tgt, color);
                if (rc) return rc;
            }
            const char *piece = tokenizer_piece(tok, rec->input_ids[i]);
            if (tgt) printf(color ? "\x1b[32m%s\x1b[0m" : "[[%s]]", piece);
            else printf("%s", piece);
            start = i + 1;
        }
    }
    printf("\n");
    return 0;
}

static int cmd_inspect(int argc, char **argv) {
    const char *dir = NULL, *which = NULL, *tokpath = NULL;
    int color = isatty(1), code = 1, rc;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            inspect_usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) tokpath = argv[++i];
        else if (!strcmp(argv[i], "--color")) color = 1;
        else if (!strcmp(argv[i], "--no-color")) color = 0;
        else if (argv[i][0] == '-' && argv[i][1] == '-') {
            fprintf(stderr, "inspect: unknown option %s\n", argv[i]);
            inspect_usage(stderr);
            return 2;
        } else if (!dir) dir = argv[i];
        else if (!which) which = argv[i];
        else {
            inspect_usage(stderr);
            return 2;
        }
    }
    if (!dir) {
        inspect_usage(stderr);
        return 2;
    }
    ds_reader_t *r = NULL;
    tokenizer_t *tok = NULL;
    if ((rc = ds_reader_open(dir, &r)) != 0) {
        fprintf(stderr, "inspect: %s: %s\n", dir, err_str(rc));
        return 1;
    }
    const ds_manifest_t *m = ds_reader_manifest(r);
    int np = m->image_size > 0 ? (m->image_size / m->patch_size) * (m->image_size / m->patch_size) : 0;
    printf("dataset %s\n  source %s, images %s\n  template %s, image size %d%s, patch %d (%d tokens per image), "
           "max_seq_len %d\n  tokenizer %s (hash %016" PRIx64 ")\n",
           dir, m->source_json, m->images_dir, m->template_name, m->image_size, m->pad ? " (pad)" : "", m->patch_size,
           np, m->max_seq_len, m->tokenizer, m->tokenizer_hash);
    printf("  samples %lld: %lld with images (%lld images), %lld text-only; %lld bad of %lld source records\n",
           (long long)m->n_samples, (long long)(m->n_samples - m->n_text_only), (long long)m->n_images_total,
           (long long)m->n_text_only, (long long)m->n_bad, (long long)m->n_source);
    printf("  shards %d:\n", m->n_shards);
    for (int s = 0; s < m->n_shards; s++)
        printf("    %s  samples [%lld, %lld)  %.1f MB  checksum %016" PRIx64 "\n", m->shards[s].name,
               (long long)m->shards[s].first, (long long)(m->shards[s].first + m->shards[s].count),
               (double)m->shards[s].bytes / 1e6, m->shards[s].checksum);
    /* histogram of expanded lengths in power-of-two buckets */
    int64_t buckets[40] = {0}, maxlen = 0, sum = 0;
    for (int64_t i = 0; i < m->n_samples; i++) {
        int64_t l = ds_expanded_length(m->lengths[i], m->n_images[i], np);
        int b = 0;
        while (b < 39 && ((int64_t)1 << (b + 1)) <= l) b++;
        buckets[b]++;
        if (l > maxlen) maxlen = l;
        sum += l;
    }
    printf("  lengths after image expansion: mean %.1f, max %lld\n", (double)sum / (double)m->n_samples,
           (long long)maxlen);
    int64_t top = 1;
    for (int b = 0; b < 40; b++)
        if (buckets[b] > top) top = buckets[b];
    for (int b = 0; b < 40; b++) {
        if (!buckets[b]) continue;
        int bar = (int)(50 * buckets[b] / top);
        printf("    [%6lld, %6lld) %8lld ", (long long)1 << b, (long long)1 << (b + 1), (long long)buckets[b]);
        for (int k = 0; k < (bar ? bar : 1); k++) putchar('#');
        putchar('\n');
    }
    /* one record */
    int64_t index = 0;
    ds_record_t rec;
    if (which) {
        char *end;
        long long x = strtoll(which, &end, 10);
        if (*end == 0 && end != which) index = x;
        else {
            index = -1;
            for (int64_t i = 0; i < m->n_samples && index < 0; i++)
                if (ds_reader_get(r, i, &rec) == 0 && (size_t)rec.id_len == strlen(which) &&
                    !memcmp(rec.id, which, (size_t)rec.id_len))
                    index = i;
            if (index < 0) {
                fprintf(stderr, "inspect: no record with id '%s'\n", which);
                goto cleanup;
            }
        }
    }
    if ((rc = ds_reader_get(r, index, &rec)) != 0) {
        fprintf(stderr, "inspect: sample %lld: %s\n", (long long)index, err_str(rc));
        goto cleanup;
    }
    if (!tokpath) tokpath = m->tokenizer;
    if ((rc = tokenizer_load(tokpath, &tok)) != 0) {
        fprintf(stderr, "inspect: tokenizer %s: %s (give --tokenizer)\n", tokpath, err_str(rc));
        goto cleanup;
    }
    if (tokenizer_hash(tok) != m->tokenizer_hash)
        fprintf(stderr, "inspect: warning: %s is not the tokenizer the dataset was made with\n", tokpath);
    if ((rc = inspect_record(tok, &rec, index, color)) != 0) {
        fprintf(stderr, "inspect: decode: %s\n", err_str(rc));
        goto cleanup;
    }
    code = 0;
cleanup:
    tokenizer_free(&tok);
    ds_reader_close(&r);
    return code;
}

/* ---------------------------------------------------------------- verify */

typedef struct {
    const ds_manifest_t *m;
    int64_t reported;
} verify_ctx_t;

static void on_damage(int shard, int64_t index, const char *msg, void *ud) {
    verify_ctx_t *c = ud;
    if (c->reported++ < 1000) {
        if (index >= 0) printf("DAMAGED %s sample %lld: %s\n", c->m->shards[shard].name, (long long)index, msg);
        else printf("DAMAGED %s: %s\n", c->m->shards[shard].name, msg);
    }
}

static int cmd_verify(int argc, char **argv) {
    const char *dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: llava-data verify DATASET\n"
                   "  Re-reads every record of every shard: keys, headers, record checksums, shard checksums and sizes\n"
                   "  against manifest.json. Prints one DAMAGED line per problem (shard, sample); exit 1 on damage.\n");
            return 0;
        } else if (!dir && argv[i][0] != '-') dir = argv[i];
        else {
            fprintf(stderr, "usage: llava-data verify DATASET\n");
            return 2;
        }
    }
    if (!dir) {
        fprintf(stderr, "usage: llava-data verify DATASET\n");
        return 2;
    }
    ds_reader_t *r = NULL;
    int rc = ds_reader_open(dir, &r);
    if (rc) {
        printf("DAMAGED %s/manifest.json: %s\n", dir, err_str(rc));
        return 1;
    }
    const ds_manifest_t *m = ds_reader_manifest(r);
    verify_ctx_t c = {m, 0};
    int64_t bad = 0, bad_shards = 0;
    for (int s = 0; s < m->n_shards; s++) {
        int64_t d = ds_reader_verify_shard(r, s, on_damage, &c);
        if (d < 0) {
            printf("DAMAGED %s: cannot read: %s\n", m->shards[s].name, err_str((int)d));
            d = 1;
        }
        bad += d;
        bad_shards += d > 0;
    }
    if (bad) printf("verify: %s: %lld problem(s) in %lld of %d shards\n", dir, (long long)bad, (long long)bad_shards,
                    m->n_shards);
    else printf("verify: %s: OK, %lld samples in %d shards\n", dir, (long long)m->n_samples, m->n_shards);
    ds_reader_close(&r);
    return bad ? 1 : 0;
}

int main(int argc, char **argv) {
    log_set_role("llava-data", -1);
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "ingest")) return llava_data_ingest_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "inspect")) return cmd_inspect(argc - 1, argv + 1);
    if (!strcmp(cmd, "verify")) return cmd_verify(argc - 1, argv + 1);
    if (!strcmp(cmd, "tokenize")) return llava_data_tokenize_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "synth")) return llava_data_synth_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "image")) return llava_data_image_main(argc - 1, argv + 1);
    fprintf(stderr, "llava-data: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
