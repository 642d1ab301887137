/* Tests common/conversation: the JSON record loader (per-record errors, invalid JSON) and template_build against
 * LLaVA's own preprocessing (tests/fixtures/tokenizer/templates.json from tests/reference/make_template_fixtures.py).
 * Run: build/tests/test_templates from tests/. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/conversation.h"
#include "common/err.h"
#include "common/tokenizer.h"
#include "tests/test.h"

#define FIX "fixtures/tokenizer/"

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *s = malloc((size_t)n + 1);
    if (fread(s, 1, (size_t)n, f) != (size_t)n) n = 0;
    s[n] = 0;
    fclose(f);
    *len = (size_t)n;
    return s;
}

/* Compares a JSON int array with ids; image placeholders in want labels count as ignored when ignore_img. */
static int same_ids(const cJSON *want, const ids_t *got, int ignore_img) {
    if (!cJSON_IsArray(want) || cJSON_GetArraySize(want) != got->n) return 0;
    int i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, want) {
        int w = v->valueint;
        if (ignore_img && w == LLAVA_IMAGE_PLACEHOLDER) w = LLAVA_IGNORE_INDEX;
        if (got->v[i++] != w) return 0;
    }
    return 1;
}

typedef struct {
    int n;
    char last[256];
} errs_t;

static void on_error(const char *id, int index, const char *msg, void *ud) {
    errs_t *e = ud;
    e->n++;
    snprintf(e->last, sizeof(e->last), "%s/%d: %s", id, index, msg);
}

static void test_fixture_cases(const tokenizer_t *tok) {
    size_t len;
    char *json = read_all(FIX "templates.json", &len);
    CHECK(json != NULL);
    if (!json) return;
    cJSON *root = cJSON_Parse(json);
    free(json);
    CHECK(root != NULL);
    const cJSON *cases = cJSON_GetObjectItem(root, "cases"), *c;
    int ncases = 0, exact_ref = 0, v0_ids = 0, listed = 0, bad = 0;
    ids_t ids = {0}, labels = {0};
    char err[256];
    cJSON_ArrayForEach(c, cases) {
        ncases++;
        template_t tpl;
        const char *tname = cJSON_GetObjectItem(c, "template")->valuestring;
        CHECK_RC(template_parse(tname, &tpl), 0);
        /* the record goes through the loader as a one-element file */
        cJSON *arr = cJSON_CreateArray();
        cJSON_AddItemToArray(arr, cJSON_Duplicate(cJSON_GetObjectItem(c, "record"), 1));
        char *rec_json = cJSON_PrintUnformatted(arr);
        cJSON_Delete(arr);
        conv_file_t *f = NULL;
        errs_t e = {0};
        CHECK_RC(conv_file_parse(rec_json, strlen(rec_json), "case", &f, on_error, &e), 0);
        free(rec_json);
        if (!f || f->n != 1) {
            CHECKF(0, "record not loaded: %s", e.last);
            conv_file_free(&f);
            continue;
        }
        const conv_record_t *rec = &f->records[0];
        int n_images = -1;
        int rc = template_build(tok, tpl, rec, &ids, &labels, &n_images, err, sizeof(err));
        const cJSON *seg_err = cJSON_GetObjectItem(c, "seg_error");
        int ref_ok = cJSON_IsTrue(cJSON_GetObjectItem(c, "ref_ok"));
        const cJSON *ref_ids = cJSON_GetObjectItem(c, "ref_ids"), *ref_labels = cJSON_GetObjectItem(c, "ref_labels");
        const cJSON *ref_error = cJSON_GetObjectItem(c, "ref_error");
        int before = t_failures;
        if (cJSON_IsString(seg_err)) {
            CHECKF(rc == LLAVA_EINVAL && err[0], "%s %s: expected an error (%s), rc %d", tname, rec->id,
                   seg_err->valuestring, rc);
        } else {
            CHECKF(rc == 0, "%s %s: rc %d: %s", tname, rec->id, rc, err);
            CHECK_EQ_INT(ids.n, labels.n);
            CHECKF(same_ids(cJSON_GetObjectItem(c, "seg_ids"), &ids, 0), "%s %s: input_ids differ from segments",
                   tname, rec->id);
            CHECKF(same_ids(cJSON_GetObjectItem(c, "seg_labels"), &labels, 0), "%s %s: labels differ from segments",
                   tname, rec->id);
            CHECK_EQ_INT(n_images, cJSON_GetObjectItem(c, "seg_images")->valueint);
            if (tpl != TPL_LLAVA_V0 && ref_ok) {
                /* exact against LLaVA (its label at an image placeholder is replaced by IGNORE_INDEX later) */
                CHECKF(same_ids(ref_ids, &ids, 0) && same_ids(ref_labels, &labels, 1), "%s %s: differs from LLaVA",
                       tname, rec->id);
                exact_ref++;
            }
            if (tpl == TPL_LLAVA_V0 && cJSON_IsArray(ref_ids)) {
                /* llava_v0: same tokens; LLaVA's _mask_targets offsets drift by one per turn (each turn's length
                 * counts its own BOS), so our labels are the segment ones: " {answer}\n###" of each reply. */
                CHECKF(same_ids(ref_ids, &ids, 0), "%s %s: input_ids differ from LLaVA", tname, rec->id);
                v0_ids++;
            }
        }
        if (!ref_ok || rc != 0) {
            /* LLaVA rejects these: a "tokenization mismatch" (literal "</s>" splits its rounds, "<unk>" counts as
             * padding, a trailing question or an empty answer) masks the whole sample; non-alternating roles and
             * a plain record with 3 turns fails an assert. A plain record without image gets a placeholder there; we
             * refuse it (pretraining data always has images). We keep the segment-by-segment result
             * checked above, or report the record as unusable. */
            fprintf(stderr, "  listed: %s %-10s LLaVA: %s; ours: %s\n", tname, rec->id,
                    cJSON_IsString(ref_error) ? ref_error->valuestring
                    : ref_ok                ? "accepted"
                                            : "tokenization mismatch, all labels ignored",
                    rc == 0 ? "segment-by-segment sample" : err);
            listed++;
        }
        if (t_failures != before) bad++;
        conv_file_free(&f);
    }
    fprintf(stderr, "templates: %d cases, %d exact vs LLaVA (plain/vicuna_v1), %d llava_v0 input_ids vs LLaVA, %d "
                    "listed, %d failing\n",
            ncases, exact_ref, v0_ids, listed, bad);
    CHECK(ncases >= 200);
    CHECK(exact_ref >= 150);
    ids_free(&ids);
    ids_free(&labels);
    cJSON_Delete(root);
}

static void test_loader(void) {
    conv_file_t *f = NULL;
    errs_t e = {0};
    /* invalid JSON: fatal, line and column logged */
    const char *bad = "[\n  {\"id\": 1,\n   \"conversations\": [}\n]";
    CHECK_RC(conv_file_parse(bad, strlen(bad), "bad.json", &f, on_error, &e), LLAVA_EFORMAT);
    CHECK(f == NULL);
    CHECK_RC(conv_file_parse("{}", 2, "obj.json", &f, on_error, &e), LLAVA_EFORMAT);
    const char *recs =
        "[{\"id\":\"ok\",\"image\":\"a.jpg\",\"conversations\":[{\"from\":\"human\",\"value\":\"<image>\\nq\"},"
        "{\"from\":\"gpt\",\"value\":\"a\"}]},"
        "{\"id\":\"role\",\"conversations\":[{\"from\":\"user\",\"value\":\"q\"}]},"
        "{\"id\":\"noconv\"},"
        "{\"id\":\"empty\",\"conversations\":[]},"
        "{\"id\":\"valnum\",\"conversations\":[{\"from\":\"human\",\"value\":3}]},"
        "{\"id\":\"img\",\"image\":5,\"conversations\":[{\"from\":\"human\",\"value\":\"q\"}]},"
        "7,"
        "{\"id\":12345,\"conversations\":[{\"from\":\"gpt\",\"value\":\"x\"}]},"
        "{\"conversations\":[{\"from\":\"human\",\"value\":\"\\u00e9\"}]},"
        "{\"id\":\"utf8\",\"conversations\":[{\"from\":\"human\",\"value\":\"\xc3\x28\"}]}]";
    e.n = 0;
    CHECK_RC(conv_file_parse(recs, strlen(recs), "recs.json", &f, on_error, &e), 0);
    CHECK(f != NULL);
    if (!f) return;
    CHECK_EQ_INT(f->n, 3);
    CHECK_EQ_INT(f->nskipped, 7);
    CHECK_EQ_INT(e.n, 7);
    CHECK(strstr(e.last, "utf8/9") && strstr(e.last, "UTF-8"));
    CHECK(strcmp(f->records[0].id, "ok") == 0 && strcmp(f->records[0].image, "a.jpg") == 0);
    CHECK(f->records[0].nturns == 2 && f->records[0].turns[1].role == CONV_GPT);
    CHECK(strcmp(f->records[1].id, "12345") == 0 && f->records[1].image == NULL);
    CHECK(strcmp(f->records[2].id, "#8") == 0);
    CHECK(strcmp(f->records[2].turns[0].text, "\xc3\xa9") == 0);
    conv_file_free(&f);
    conv_file_free(&f);
    /* from a file */
    char path[] = "/tmp/llava_conv_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    FILE *fp = fdopen(fd, "w");
    fputs(recs, fp);
    fclose(fp);
    CHECK_RC(conv_file_load(path, &f, NULL, NULL), 0);
    CHECK(f && f->n == 3);
    conv_file_free(&f);
    remove(path);
    CHECK_RC(conv_file_load("/nonexistent/x.json", &f, NULL, NULL), LLAVA_EIO);
}

static void test_template_errors(const tokenizer_t *tok) {
    template_t t;
    CHECK_RC(template_parse("plain", &t), 0);
    CHECK_EQ_INT(t, TPL_PLAIN);
    CHECK_RC(template_parse("v1", &t), 0);
    CHECK_EQ_INT(t, TPL_VICUNA_V1);
    CHECK_RC(template_parse("llava_v0", &t), 0);
    CHECK_EQ_INT(t, TPL_LLAVA_V0);
    CHECK_RC(template_parse("chatml", &t), LLAVA_EINVAL);
    CHECK(strcmp(template_name(TPL_VICUNA_V1), "vicuna_v1") == 0);
    CHECK(strcmp(template_name(TPL_PLAIN), "plain") == 0 && strcmp(template_name(TPL_LLAVA_V0), "llava_v0") == 0);
    conv_turn_t turns[2] = {{CONV_HUMAN, "<image>\nq"}, {CONV_GPT, "a"}};
    conv_record_t rec = {"r", NULL, 2, turns};
    ids_t ids = {0}, labels = {0};
    int n_img;
    char err[128];
    CHECK_RC(template_build(tok, TPL_PLAIN, &rec, &ids, &labels, &n_img, err, sizeof(err)), LLAVA_EINVAL);
    CHECK(strstr(err, "plain") != NULL);
    /* a sample whose only answer is empty loses all targets */
    conv_turn_t t2[2] = {{CONV_HUMAN, "q"}, {CONV_GPT, ""}};
    conv_record_t r2 = {"r2", NULL, 2, t2};
    CHECK_RC(template_build(tok, TPL_VICUNA_V1, &r2, &ids, &labels, &n_img, err, sizeof(err)), LLAVA_EINVAL);
    CHECK(strstr(err, "no target") != NULL);
    conv_record_t r0 = {"r0", NULL, 0, NULL};
    CHECK_RC(template_build(tok, TPL_LLAVA_V0, &r0, &ids, &labels, &n_img, NULL, 0), LLAVA_EINVAL);
    /* images: one placeholder per turn that has <image>, moved to the front of the turn */
    conv_turn_t t3[4] = {{CONV_HUMAN, "look <image> here <image>"}, {CONV_GPT, "ok"}, {CONV_HUMAN, "<image>"},
                         {CONV_GPT, "b"}};
    conv_record_t r3 = {"r3", "x.jpg", 4, t3};
    CHECK_RC(template_build(tok, TPL_VICUNA_V1, &r3, &ids, &labels, &n_img, err, sizeof(err)), 0);
    CHECK_EQ_INT(n_img, 2);
    int ph = 0;
    for (int i = 0; i < ids.n; i++)
        if (ids.v[i] == LLAVA_IMAGE_PLACEHOLDER) {
            ph++;
            CHECK_EQ_INT(labels.v[i], LLAVA_IGNORE_INDEX);
        }
    CHECK_EQ_INT(ph, 2);
    CHECK_EQ_INT(ids.v[0], tokenizer_bos_id(tok));
    CHECK_EQ_INT(ids.v[ids.n - 1], tokenizer_eos_id(tok));
    CHECK_EQ_INT(labels.v[ids.n - 1], tokenizer_eos_id(tok));
    ids_free(&ids);
    ids_free(&labels);
}

int main(void) {
    tokenizer_t *tok = NULL;
    CHECK_RC(tokenizer_load(FIX "tokenizer.model", &tok), 0);
    if (!tok) return test_finish();
    test_loader();
    test_template_errors(tok);
    test_fixture_cases(tok);
    tokenizer_free(&tok);
    return test_finish();
}
