/* `llava-data tokenize`: encodes stdin lines with common/tokenizer (one line of ids per line, like
 * `spm_encode --output_format=id`) or decodes lines of ids (like spm_decode --input_format=id).
 * Tested by tests/integration/tokenizer_parity.sh and tests/unit/test_tokenizer.c. */
#include "common/cli_tokenize.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/tokenizer.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: llava-data tokenize --tokenizer MODEL [--no-bos] [--special] [--decode]\n"
            "  Reads lines on stdin and writes one line per input line on stdout.\n"
            "  --tokenizer MODEL  sentencepiece BPE tokenizer.model\n"
            "  --no-bos           do not prepend the BOS id (encode)\n"
            "  --special          map \"<s>\", \"</s>\", \"<unk>\" written in the text to their ids, as transformers'\n"
            "                     LlamaTokenizer does (encode)\n"
            "  --decode           input lines are space-separated ids; output the decoded text\n"
            "  --help             this text\n");
}

static int encode_line(const tokenizer_t *t, const char *s, size_t n, int bos, int special, ids_t *ids, FILE *out) {
    ids->n = 0;
    int rc = special ? tokenizer_encode_special(t, s, n, bos, ids) : tokenizer_encode(t, s, n, bos, ids);
    if (rc != 0) return rc;
    for (int i = 0; i < ids->n; i++) fprintf(out, i ? " %d" : "%d", ids->v[i]);
    fputc('\n', out);
    return 0;
}

static int decode_line(const tokenizer_t *t, char *s, ids_t *ids, FILE *out) {
    int rc = 0;
    char *text = NULL, *p = s, *end;
    ids->n = 0;
    for (;;) {
        while (*p == ' ' || *p == '\t') p++;
        if (!*p) break;
        errno = 0;
        long v = strtol(p, &end, 10);
        CHECK_GOTO(end != p && errno == 0 && v >= 0 && v < 0x7fffffff && (*end == 0 || *end == ' ' || *end == '\t'),
                   LLAVA_EINVAL, "tokenize --decode: bad id '%s'", p);
        RC_CHECK_GOTO(ids_push(ids, (int32_t)v));
        p = end;
    }
    RC_CHECK_GOTO(tokenizer_decode(t, ids->v, ids->n, &text));
    fputs(text, out);
    fputc('\n', out);
cleanup:
    free(text);
    return rc;
}

int llava_data_tokenize_run(int argc, char **argv, FILE *in, FILE *out) {
    const char *model = NULL;
    int bos = 1, special = 0, decode = 0, rc = 0, code = 0;
    tokenizer_t *t = NULL;
    ids_t ids = {0};
    char *line = NULL;
    size_t cap = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) {
            model = argv[++i];
        } else if (!strcmp(argv[i], "--no-bos")) {
            bos = 0;
        } else if (!strcmp(argv[i], "--special")) {
            special = 1;
        } else if (!strcmp(argv[i], "--decode")) {
            decode = 1;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(out);
            return 0;
        } else {
            fprintf(stderr, "llava-data tokenize: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (!model) {
        fprintf(stderr, "llava-data tokenize: --tokenizer MODEL is required\n");
        usage(stderr);
        return 2;
    }
    RC_CHECK_GOTO(tokenizer_load(model, &t));
    ssize_t n;
    while ((n = getline(&line, &cap, in)) >= 0) {
        if (n > 0 && line[n - 1] == '\n') line[--n] = 0;
        if (decode)
            RC_CHECK_GOTO(decode_line(t, line, &ids, out));
        else
            RC_CHECK_GOTO(encode_line(t, line, (size_t)n, bos, special, &ids, out));
    }
    CHECK_GOTO(!ferror(in), LLAVA_EIO, "tokenize: reading stdin failed");
    CHECK_GOTO(fflush(out) == 0, LLAVA_EIO, "tokenize: writing stdout failed: %s", strerror(errno));
cleanup:
    if (rc != 0) {
        fprintf(stderr, "llava-data tokenize: %s\n", err_str(rc));
        code = 1;
    }
    free(line);
    ids_free(&ids);
    tokenizer_free(&t);
    return code;
}

int llava_data_tokenize_main(int argc, char **argv) { return llava_data_tokenize_run(argc, argv, stdin, stdout); }
