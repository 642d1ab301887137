/* Multiple-choice evaluation (see eval.h). For each question the answer is written once per option letter
 * ("The answer is A.", "... B." ...) through the training template; the first token where those candidates differ
 * is the letter's position, and the prediction is the letter whose token the model ranks highest there.
 * Tested by tests/integration/demo_small.sh (every question scored, per type, deterministic). */
#include "worker/eval.h"

#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/dataset.h"
#include "common/err.h"
#include "common/fileio.h"
#include "common/image.h"

#define EVAL_MAX_OPTIONS 8

/* Options "(A) x (B) y ..." in the question: the number of consecutive letters from A. */
static int count_options(const char *q) {
    int n = 0;
    for (; n < EVAL_MAX_OPTIONS; n++) {
        char pat[5] = {'(', (char)('A' + n), ')', ' ', 0};
        if (!strstr(q, pat)) break;
    }
    return n;
}

/* The answer letter in a gpt turn: "The answer is X." or a bare "X". */
static char parse_answer(const char *a) {
    const char *p = strstr(a, "The answer is ");
    if (p) return p[14];
    return (a[0] >= 'A' && a[0] <= 'Z' && (a[1] == 0 || a[1] == '.')) ? a[0] : 0;
}

/* Replaces the letter in the answer text (the first "The answer is X" or the leading letter). */
static void answer_with(const char *a, char letter, char *out, size_t len) {
    snprintf(out, len, "%s", a);
    char *p = strstr(out, "The answer is ");
    if (p) p[14] = letter;
    else out[0] = letter;
}

static eval_bucket_t *bucket(eval_result_t *r, const char *type) {
    for (int i = 0; i < r->n_types; i++)
        if (strcmp(r->types[i].name, type) == 0) return &r->types[i];
    if (r->n_types == EVAL_MAX_TYPES) return NULL;
    eval_bucket_t *b = &r->types[r->n_types++];
    snprintf(b->name, sizeof b->name, "%s", type);
    return b;
}

static const cJSON *find_answer(const cJSON *answers, const char *id) {
    const cJSON *a;
    cJSON_ArrayForEach(a, answers) {
        const cJSON *aid = cJSON_GetObjectItemCaseSensitive(a, "id");
        if (cJSON_IsString(aid) && strcmp(aid->valuestring, id) == 0) return a;
    }
    return NULL;
}

/* Scores one question. Returns the predicted letter, or 0 when it cannot be scored (reason in err). */
static char score_one(llava_model_t *m, const tokenizer_t *tok, const eval_opts_t *o, const char *images_dir,
                      conv_record_t *rec, char *err, size_t errlen) {
    char pred = 0;
    ids_t ids[EVAL_MAX_OPTIONS] = {{0}}, labels[EVAL_MAX_OPTIONS] = {{0}};
    image_t img = {0};
    uint8_t *pixels = NULL;
    batch_t b = {0};
    int nopt = rec->nturns >= 2 ? count_options(rec->turns[0].text) : 0;
    if (nopt < 2) {
        snprintf(err, errlen, "no options (A) (B) ... in the question");
        return 0;
    }
    char *orig = rec->turns[1].text, text[1024];
    for (int k = 0; k < nopt; k++) {
        answer_with(orig, (char)('A' + k), text, sizeof text);
        rec->turns[1].text = text;
        int n_images = 0;
        int rc = template_build(tok, o->tpl, rec, &ids[k], &labels[k], &n_images, err, errlen);
        rec->turns[1].text = orig;
        if (rc) goto cleanup;
    }
    int pos = -1;
    for (int t = 0; t < ids[0].n && pos < 0; t++)
        for (int k = 1; k < nopt; k++)
            if (t >= ids[k].n || ids[k].v[t] != ids[0].v[t]) {
                pos = t;
                break;
            }
    if (pos <= 0) {
        snprintf(err, errlen, "the options do not differ in a token");
        goto cleanup;
    }
    int S = m->cfg.vision.image_size, n_images = 0;
    for (int t = 0; t < pos; t++) n_images += ids[0].v[t] == LLAVA_IMAGE_PLACEHOLDER;
    if (n_images > 1) {
        snprintf(err, errlen, "%d images in one question", n_images);
        goto cleanup;
    }
    if (n_images == 1) {
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", images_dir, rec->image ? rec->image : "");
        pixels = malloc((size_t)3 * S * S);
        if (!pixels || image_load_file(path, 0, &img, err, errlen) != 0 ||
            image_clip_preprocess_u8(&img, S, o->pad, pixels) != 0) {
            if (pixels && !err[0]) snprintf(err, errlen, "%.400s: cannot preprocess", path);
            if (!pixels) snprintf(err, errlen, "out of memory");
            goto cleanup;
        }
    }
    ds_record_t r = {.id = rec->id, .id_len = (int)strlen(rec->id), .n_tokens = pos, .n_images = n_images,
                     .image_size = n_images ? S : 0, .input_ids = ids[0].v, .labels = labels[0].v, .pixels = pixels};
    collate_opts_t co = {.image_token_index = (int32_t)m->cfg.image_token_index, .n_patches = m->feat_rows,
                         .pad_token_id = 0, .max_seq_len = 0};
    float *logits = NULL;
    if (ds_collate_records(&r, 1, &co, &b) != 0 || llava_forward_logits(m, &b, &logits) != 0) {
        snprintf(err, errlen, "forward failed");
        goto cleanup;
    }
    const float *row = logits + (size_t)(b.lengths[0] - 1) * (size_t)m->cfg.text.vocab_size;
    float best = 0;
    for (int k = 0; k < nopt; k++) {
        float v = row[ids[k].v[pos]];
        if (k == 0 || v > best) {
            best = v;
            pred = (char)('A' + k);
        }
    }
cleanup:
    for (int k = 0; k < EVAL_MAX_OPTIONS; k++) {
        ids_free(&ids[k]);
        ids_free(&labels[k]);
    }
    image_free(&img);
    free(pixels);
    batch_free(&b);
    return pred;
}

int llava_eval_mc(llava_model_t *m, const tokenizer_t *tok, const eval_opts_t *o, eval_result_t *out) {
    int rc = 0;
    conv_file_t *qs = NULL;
    cJSON *answers = NULL;
    char *atext = NULL;
    memset(out, 0, sizeof *out);
    RC_CHECK_GOTO(conv_file_load(o->questions, &qs, NULL, NULL));
    if (o->answers) {
        size_t got = 0;
        rc = file_read_all(o->answers, &atext, &got);
        CHECK_GOTO(rc == 0, rc, "%s: cannot read the answers file: %s", o->answers, err_str(rc));
        answers = cJSON_ParseWithLength(atext, got);
        CHECK_GOTO(cJSON_IsArray(answers), LLAVA_EFORMAT, "%s: not a JSON array of {id, answer, type}", o->answers);
    }
    char dirbuf[2048];
    snprintf(dirbuf, sizeof dirbuf, "%s", o->questions);
    const char *images_dir = o->images_dir ? o->images_dir : dirname(dirbuf);
    for (int i = 0; i < qs->n; i++) {
        if (o->max_questions > 0 && out->n + out->skipped >= o->max_questions) break;
        conv_record_t *rec = &qs->records[i];
        const cJSON *ans = answers ? find_answer(answers, rec->id) : NULL;
        char truth = 0;
        const char *type = "all";
        if (ans) {
            truth = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ans, "answer"))
                        ? cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ans, "answer"))[0]
                        : 0;
            const char *t = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ans, "type"));
            if (t) type = t;
        } else if (rec->nturns >= 2) {
            truth = parse_answer(rec->turns[1].text);
        }
        char err[512] = "";
        char pred = truth ? score_one(m, tok, o, images_dir, rec, err, sizeof err) : 0;
        if (!pred) {
            out->skipped++;
            LOG_W("eval: question %s skipped: %s", rec->id, truth ? err : "no answer");
            continue;
        }
        LOG_D("eval: %s (%s): predicted %c, answer %c", rec->id, type, pred, truth);
        eval_bucket_t *b = bucket(out, type);
        out->n++;
        out->correct += pred == truth;
        if (b) {
            b->n++;
            b->correct += pred == truth;
        }
    }
cleanup:
    conv_file_free(&qs);
    cJSON_Delete(answers);
    free(atext);
    return rc;
}

void eval_result_print(const eval_result_t *r, FILE *f) {
    fprintf(f, "accuracy %.1f%% (%d/%d)%s\n", r->n ? 100.0 * r->correct / r->n : 0.0, r->correct, r->n,
            r->skipped ? " (some questions skipped, see the log)" : "");
    for (int i = 0; i < r->n_types; i++)
        fprintf(f, "  %-12s %5.1f%% (%d/%d)\n", r->types[i].name,
                r->types[i].n ? 100.0 * r->types[i].correct / r->types[i].n : 0.0, r->types[i].correct,
                r->types[i].n);
}
