/* LLaVA conversation records (cJSON) and the plain / vicuna_v1 / llava_v0 prompt templates of LLaVA's train.py,
 * built segment by segment into input_ids + labels.
 * Tested by tests/unit/test_templates.c (fixtures from tests/reference/make_template_fixtures.py). */
#include "common/conversation.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/fileio.h"

#define IMAGE_TOKEN "<image>"
#define IMAGE_TOKEN_LEN 7

static const char VICUNA_SYSTEM[] = "A chat between a curious user and an artificial intelligence assistant. "
                                    "The assistant gives helpful, detailed, and polite answers to the user's questions.";
static const char LLAVA_V0_SYSTEM[] = "A chat between a curious human and an artificial intelligence assistant. "
                                      "The assistant gives helpful, detailed, and polite answers to the human's questions.";

/* ---- records ---- */

/* Strict UTF-8 (no overlongs, surrogates or code points above U+10FFFF). */
static int utf8_valid(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p, n, cp;
        if (c < 0x80) {
            p++;
            continue;
        }
        if ((c & 0xe0) == 0xc0) n = 1, cp = c & 0x1f;
        else if ((c & 0xf0) == 0xe0) n = 2, cp = c & 0x0f;
        else if ((c & 0xf8) == 0xf0) n = 3, cp = c & 0x07;
        else return 0;
        for (unsigned k = 1; k <= n; k++) {
            if ((p[k] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (p[k] & 0x3f);
        }
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp < 0xe000))
            return 0;
        p += n + 1;
    }
    return 1;
}

static void record_clear(conv_record_t *r) {
    free(r->id);
    free(r->image);
    for (int i = 0; i < r->nturns; i++) free(r->turns[i].text);
    free(r->turns);
    memset(r, 0, sizeof(*r));
}

void conv_file_free(conv_file_t **p) {
    if (!p || !*p) return;
    for (int i = 0; i < (*p)->n; i++) record_clear(&(*p)->records[i]);
    free((*p)->records);
    free(*p);
    *p = NULL;
}

/* Fills r from one JSON record. Returns 0, LLAVA_EFORMAT with a message in msg, or LLAVA_ENOMEM. */
static int record_parse(const cJSON *o, int index, conv_record_t *r, char *msg, size_t msglen) {
    int rc = 0;
    char buf[32];
    memset(r, 0, sizeof(*r));
    msg[0] = 0;
    const cJSON *id = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, "id") : NULL;
    if (cJSON_IsString(id)) {
        r->id = strdup(id->valuestring);
    } else if (cJSON_IsNumber(id)) {
        snprintf(buf, sizeof(buf), "%.17g", id->valuedouble);
        r->id = strdup(buf);
    } else {
        snprintf(buf, sizeof(buf), "#%d", index);
        r->id = strdup(buf);
    }
    ALLOC_CHECK_GOTO(r->id);
    if (!cJSON_IsObject(o)) {
        snprintf(msg, msglen, "record is not an object");
        return LLAVA_EFORMAT;
    }
    const cJSON *img = cJSON_GetObjectItemCaseSensitive(o, "image");
    if (img && !cJSON_IsNull(img)) {
        if (!cJSON_IsString(img) || !img->valuestring[0]) {
            snprintf(msg, msglen, "\"image\" is not a non-empty string");
            return LLAVA_EFORMAT;
        }
        r->image = strdup(img->valuestring);
        ALLOC_CHECK_GOTO(r->image);
    }
    const cJSON *conv = cJSON_GetObjectItemCaseSensitive(o, "conversations");
    if (!cJSON_IsArray(conv) || cJSON_GetArraySize(conv) == 0) {
        snprintf(msg, msglen, "\"conversations\" is missing, not an array, or empty");
        return LLAVA_EFORMAT;
    }
    int n = cJSON_GetArraySize(conv);
    r->turns = calloc((size_t)n, sizeof(*r->turns));
    ALLOC_CHECK_GOTO(r->turns);
    const cJSON *t;
    cJSON_ArrayForEach(t, conv) {
        const cJSON *from = cJSON_GetObjectItemCaseSensitive(t, "from");
        const cJSON *value = cJSON_GetObjectItemCaseSensitive(t, "value");
        int k = r->nturns;
        if (!cJSON_IsString(from) || !cJSON_IsString(value)) {
            snprintf(msg, msglen, "turn %d: \"from\" and \"value\" must be strings", k);
            return LLAVA_EFORMAT;
        }
        /* LLaVA maps roles with {"human": USER, "gpt": ASSISTANT}; anything else is a KeyError there */
        if (strcmp(from->valuestring, "human") == 0) {
            r->turns[k].role = CONV_HUMAN;
        } else if (strcmp(from->valuestring, "gpt") == 0) {
            r->turns[k].role = CONV_GPT;
        } else {
            snprintf(msg, msglen, "turn %d: unknown role \"%.40s\" (expected human or gpt)", k, from->valuestring);
            return LLAVA_EFORMAT;
        }
        if (!utf8_valid(value->valuestring)) {
            snprintf(msg, msglen, "turn %d: text is not valid UTF-8", k);
            return LLAVA_EFORMAT;
        }
        r->turns[k].text = strdup(value->valuestring);
        ALLOC_CHECK_GOTO(r->turns[k].text);
        r->nturns++;
    }
cleanup:
    return rc;
}

static void line_col(const char *json, size_t off, int *line, int *col) {
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < off; i++) {
        if (json[i] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

int conv_file_parse(const char *json, size_t len, const char *name, conv_file_t **out, conv_error_cb cb, void *ud) {
    int rc = 0;
    conv_file_t *f = NULL;
    conv_record_t r = {0};
    const char *end = NULL;
    char msg[256];
    *out = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        int line, col;
        size_t off = end && end >= json && end <= json + len ? (size_t)(end - json) : 0;
        line_col(json, off, &line, &col);
        LOG_E("%s: invalid JSON at line %d, column %d", name, line, col);
        return LLAVA_EFORMAT;
    }
    CHECK_GOTO(cJSON_IsArray(root), LLAVA_EFORMAT, "%s: top level is not an array of records", name);
    f = calloc(1, sizeof(*f));
    ALLOC_CHECK_GOTO(f);
    int n = cJSON_GetArraySize(root), index = 0;
    f->records = calloc((size_t)(n ? n : 1), sizeof(*f->records));
    ALLOC_CHECK_GOTO(f->records);
    const cJSON *o;
    cJSON_ArrayForEach(o, root) {
        int prc = record_parse(o, index, &r, msg, sizeof(msg));
        if (prc == LLAVA_ENOMEM) RC_CHECK_GOTO(prc);
        if (prc != 0) {
            if (cb) cb(r.id, index, msg, ud);
            f->nskipped++;
            record_clear(&r);
        } else {
            f->records[f->n++] = r;
            memset(&r, 0, sizeof(r));
        }
        index++;
    }
    *out = f;
    f = NULL;
cleanup:
    record_clear(&r);
    conv_file_free(&f);
    cJSON_Delete(root);
    return rc;
}

int conv_file_load(const char *path, conv_file_t **out, conv_error_cb cb, void *ud) {
    int rc = 0;
    char *buf = NULL;
    size_t sz = 0;
    *out = NULL;
    rc = file_read_all(path, &buf, &sz);
    CHECK_GOTO(rc == 0, rc == LLAVA_ENOTFOUND ? LLAVA_EIO : rc, "cannot read %s: %s", path, err_str(rc));
    rc = conv_file_parse(buf, sz, path, out, cb, ud);
cleanup:
    free(buf);
    return rc;
}

/* ---- templates ---- */

int template_parse(const char *name, template_t *out) {
    if (!strcmp(name, "plain") || !strcmp(name, "v0_plain")) *out = TPL_PLAIN;
    else if (!strcmp(name, "vicuna_v1") || !strcmp(name, "v1") || !strcmp(name, "llava_v1")) *out = TPL_VICUNA_V1;
    else if (!strcmp(name, "llava_v0")) *out = TPL_LLAVA_V0;
    else return LLAVA_EINVAL;
    return 0;
}

const char *template_name(template_t tpl) {
    switch (tpl) {
    case TPL_PLAIN: return "plain";
    case TPL_VICUNA_V1: return "vicuna_v1";
    case TPL_LLAVA_V0: return "llava_v0";
    }
    return "unknown";
}

typedef struct {
    char *v;
    size_t n, cap;
} sbuf_t;

static int sb_add(sbuf_t *s, const char *p, size_t n) {
    if (s->n + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 256;
        while (cap < s->n + n + 1) cap *= 2;
        char *v = realloc(s->v, cap);
        if (!v) return LLAVA_ENOMEM;
        s->v = v;
        s->cap = cap;
    }
    memcpy(s->v + s->n, p, n);
    s->n += n;
    s->v[s->n] = 0;
    return 0;
}

static int sb_str(sbuf_t *s, const char *p) { return sb_add(s, p, strlen(p)); }

/* Length of the Python str.isspace() character at s (0 if none): the set str.strip() removes. */
static size_t py_space_len(const unsigned char *s, size_t n) {
    if (n == 0) return 0;
    if (s[0] == ' ' || (s[0] >= 0x09 && s[0] <= 0x0d) || (s[0] >= 0x1c && s[0] <= 0x1f)) return 1;
    if (n >= 2 && s[0] == 0xc2 && (s[1] == 0x85 || s[1] == 0xa0)) return 2;
    if (n >= 3 && s[0] == 0xe1 && s[1] == 0x9a && s[2] == 0x80) return 3;                  /* U+1680 */
    if (n >= 3 && s[0] == 0xe2 && s[1] == 0x80 && (s[2] <= 0x8a || s[2] == 0xa8 || s[2] == 0xa9 || s[2] == 0xaf))
        return 3;                                                                         /* U+2000-200A 2028 2029 202F */
    if (n >= 3 && s[0] == 0xe2 && s[1] == 0x81 && s[2] == 0x9f) return 3;                 /* U+205F */
    if (n >= 3 && s[0] == 0xe3 && s[1] == 0x80 && s[2] == 0x80) return 3;                 /* U+3000 */
    return 0;
}

/* Trailing Python whitespace length of s[0..n): scans characters from the start (UTF-8 is not reversible cheaply). */
static void py_strip(const char *s, size_t n, size_t *b, size_t *e) {
    size_t i = 0, m;
    while ((m = py_space_len((const unsigned char *)s + i, n - i)) > 0) i += m;
    *b = i;
    size_t last = i; /* end of the last non-space character */
    while (i < n) {
        m = py_space_len((const unsigned char *)s + i, n - i);
        if (m) {
            i += m;
        } else {
            i++;
            while (i < n && ((unsigned char)s[i] & 0xc0) == 0x80) i++;
            last = i;
        }
    }
    *e = last;
}

/* LLaVA's preprocess_multimodal for one turn of an image record: remove every "<image>", strip, prefix
 * "<image>\n", strip again. Writes the new text to out (cleared first). */
static int turn_image_normalize(const char *text, sbuf_t *out) {
    int rc = 0;
    sbuf_t tmp = {0};
    out->n = 0;
    RC_CHECK_GOTO(sb_add(out, "", 0));
    if (!strstr(text, IMAGE_TOKEN)) return sb_str(out, text);
    for (const char *p = text;;) {
        const char *q = strstr(p, IMAGE_TOKEN);
        if (!q) {
            RC_CHECK_GOTO(sb_str(&tmp, p));
            break;
        }
        RC_CHECK_GOTO(sb_add(&tmp, p, (size_t)(q - p)));
        p = q + IMAGE_TOKEN_LEN;
    }
    RC_CHECK_GOTO(sb_add(&tmp, "", 0));
    size_t b, e;
    py_strip(tmp.v, tmp.n, &b, &e);
    RC_CHECK_GOTO(sb_str(out, IMAGE_TOKEN "\n"));
    RC_CHECK_GOTO(sb_add(out, tmp.v + b, e - b));
    py_strip(out->v, out->n, &b, &e); /* starts with '<': only the end can move */
    out->n = e;
    out->v[e] = 0;
cleanup:
    free(tmp.v);
    return rc;
}

/* The tokenizer state across segments: text starting a chunk (after BOS, an image or a control token) gets the
 * dummy-prefix space, as each chunk that LLaVA's tokenizer_image_token and the legacy LlamaTokenizer encode
 * separately does; text continuing a chunk does not. */
typedef struct {
    const tokenizer_t *tok;
    ids_t *ids, *labels;
    int has_image, chunk_start, n_images, ntarget;
    ids_t tmp;
} builder_t;

static int emit(builder_t *b, int32_t id, int target) {
    int rc = ids_push(b->ids, id);
    if (rc == 0) rc = ids_push(b->labels, target ? id : LLAVA_IGNORE_INDEX);
    if (target) b->ntarget++;
    return rc;
}

static int emit_text(builder_t *b, const char *s, size_t n, int target) {
    int rc = 0;
    if (n == 0) return 0;
    b->tmp.n = 0;
    if (b->chunk_start)
        RC_CHECK_GOTO(tokenizer_encode(b->tok, s, n, 0, &b->tmp));
    else
        RC_CHECK_GOTO(tokenizer_encode_continue(b->tok, s, n, &b->tmp));
    b->chunk_start = 0;
    for (int i = 0; i < b->tmp.n; i++) RC_CHECK_GOTO(emit(b, b->tmp.v[i], target));
cleanup:
    return rc;
}

/* Appends one segment of equal loss mask, splitting it at "<image>" (image records) and control-token strings. */
static int segment(builder_t *b, const char *s, size_t n, int target) {
    int rc = 0;
    size_t chunk = 0, i = 0;
    while (i < n) {
        size_t ml = 0;
        int special = -1;
        if (b->has_image && n - i >= IMAGE_TOKEN_LEN && memcmp(s + i, IMAGE_TOKEN, IMAGE_TOKEN_LEN) == 0) {
            ml = IMAGE_TOKEN_LEN;
        } else {
            special = tokenizer_match_special(b->tok, s + i, n - i, &ml);
            if (special < 0) {
                i++;
                continue;
            }
        }
        RC_CHECK_GOTO(emit_text(b, s + chunk, i - chunk, target));
        if (special >= 0) {
            RC_CHECK_GOTO(emit(b, special, target));
        } else {
            RC_CHECK_GOTO(emit(b, LLAVA_IMAGE_PLACEHOLDER, 0));
            b->n_images++;
        }
        b->chunk_start = 1;
        i += ml;
        chunk = i;
    }
    RC_CHECK_GOTO(emit_text(b, s + chunk, n - chunk, target));
cleanup:
    return rc;
}

static int segment_str(builder_t *b, const char *s, int target) { return segment(b, s, strlen(s), target); }

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* plain: BOS <image> caption "\n" (LLaVA's preprocess_plain replaces the first turn by "<image>"). */
static int build_plain(builder_t *b, const conv_record_t *rec, char **texts, char *err, size_t errlen) {
    int rc = 0;
    sbuf_t cap = {0};
    if (rec->nturns != 2 || !b->has_image || !strstr(texts[0], IMAGE_TOKEN)) {
        set_err(err, errlen, "plain template needs an image record with 2 turns and <image> in the first");
        return LLAVA_EINVAL;
    }
    RC_CHECK_GOTO(segment_str(b, IMAGE_TOKEN, 0));
    RC_CHECK_GOTO(sb_str(&cap, texts[1]));
    RC_CHECK_GOTO(sb_str(&cap, "\n"));
    RC_CHECK_GOTO(segment(b, cap.v, cap.n, 1));
cleanup:
    free(cap.v);
    return rc;
}

/* vicuna_v1 (SeparatorStyle.TWO, sep " ", sep2 "</s>"): targets are " {answer}</s>" of each assistant turn. */
static int build_vicuna(builder_t *b, const conv_record_t *rec, char **texts, char *err, size_t errlen) {
    int rc = 0, first = 0;
    sbuf_t s = {0};
    if (rec->turns[0].role != CONV_HUMAN) first = 1; /* LLaVA skips a first turn that is not from human */
    for (int j = first; j < rec->nturns; j++) {
        if ((int)rec->turns[j].role != (j - first) % 2) {
            set_err(err, errlen, "turn %d: roles must alternate human, gpt starting with human", j);
            return LLAVA_EINVAL;
        }
    }
    RC_CHECK_GOTO(sb_str(&s, VICUNA_SYSTEM));
    RC_CHECK_GOTO(sb_str(&s, " "));
    for (int j = first; j < rec->nturns; j++) {
        const char *msg = texts[j];
        if (rec->turns[j].role == CONV_HUMAN) {
            RC_CHECK_GOTO(sb_str(&s, msg[0] ? "USER: " : "USER:"));
            if (msg[0]) {
                RC_CHECK_GOTO(sb_str(&s, msg));
                RC_CHECK_GOTO(sb_str(&s, " "));
            }
            continue;
        }
        RC_CHECK_GOTO(sb_str(&s, "ASSISTANT:"));
        if (!msg[0]) continue;
        RC_CHECK_GOTO(segment(b, s.v, s.n, 0));
        s.n = 0;
        RC_CHECK_GOTO(sb_str(&s, " "));
        RC_CHECK_GOTO(sb_str(&s, msg));
        RC_CHECK_GOTO(sb_str(&s, "</s>"));
        RC_CHECK_GOTO(segment(b, s.v, s.n, 1));
        s.n = 0;
        RC_CHECK_GOTO(sb_add(&s, "", 0));
    }
    RC_CHECK_GOTO(segment(b, s.v, s.n, 0));
cleanup:
    free(s.v);
    return rc;
}

/* llava_v0 (LLaVA's generic `preprocess`: "### Role: value\n" per turn after "{system}\n\n", then "### "):
 * targets are " {answer}\n###": the answer, its end signal and the "###" that ends the reply at inference. */
static int build_v0(builder_t *b, const conv_record_t *rec, char **texts) {
    int rc = 0, after_gpt = 0; /* after a target ending in "###", the next signal continues with " " */
    sbuf_t s = {0};
    RC_CHECK_GOTO(sb_str(&s, LLAVA_V0_SYSTEM));
    RC_CHECK_GOTO(sb_str(&s, "\n\n"));
    for (int j = 0; j < rec->nturns; j++) {
        RC_CHECK_GOTO(sb_str(&s, after_gpt ? " " : "### "));
        if (rec->turns[j].role == CONV_HUMAN) {
            RC_CHECK_GOTO(sb_str(&s, "Human: "));
            RC_CHECK_GOTO(sb_str(&s, texts[j]));
            RC_CHECK_GOTO(sb_str(&s, "\n"));
            after_gpt = 0;
            continue;
        }
        RC_CHECK_GOTO(sb_str(&s, "Assistant:"));
        RC_CHECK_GOTO(segment(b, s.v, s.n, 0));
        s.n = 0;
        RC_CHECK_GOTO(sb_str(&s, " "));
        RC_CHECK_GOTO(sb_str(&s, texts[j]));
        RC_CHECK_GOTO(sb_str(&s, "\n###"));
        RC_CHECK_GOTO(segment(b, s.v, s.n, 1));
        s.n = 0;
        after_gpt = 1;
    }
    RC_CHECK_GOTO(sb_str(&s, after_gpt ? " " : "### "));
    RC_CHECK_GOTO(segment(b, s.v, s.n, 0));
cleanup:
    free(s.v);
    return rc;
}

int template_build(const tokenizer_t *tok, template_t tpl, const conv_record_t *rec, ids_t *input_ids, ids_t *labels,
                   int *n_images, char *err, size_t errlen) {
    int rc = 0;
    builder_t b = {.tok = tok, .ids = input_ids, .labels = labels, .has_image = rec->image != NULL, .chunk_start = 1};
    char **texts = NULL;
    sbuf_t *norm = NULL;
    input_ids->n = labels->n = 0;
    *n_images = 0;
    if (err && errlen) err[0] = 0;
    if (rec->nturns <= 0) {
        set_err(err, errlen, "record has no turns");
        return LLAVA_EINVAL;
    }
    texts = calloc((size_t)rec->nturns, sizeof(*texts));
    norm = calloc((size_t)rec->nturns, sizeof(*norm));
    ALLOC_CHECK_GOTO(texts);
    ALLOC_CHECK_GOTO(norm);
    for (int j = 0; j < rec->nturns; j++) {
        if (b.has_image) {
            RC_CHECK_GOTO(turn_image_normalize(rec->turns[j].text, &norm[j]));
            texts[j] = norm[j].v;
        } else {
            texts[j] = rec->turns[j].text;
        }
    }
    if (tokenizer_bos_id(tok) >= 0) RC_CHECK_GOTO(emit(&b, tokenizer_bos_id(tok), 0));
    switch (tpl) {
    case TPL_PLAIN: rc = build_plain(&b, rec, texts, err, errlen); break;
    case TPL_VICUNA_V1: rc = build_vicuna(&b, rec, texts, err, errlen); break;
    case TPL_LLAVA_V0: rc = build_v0(&b, rec, texts); break;
    default: rc = LLAVA_EINVAL; set_err(err, errlen, "unknown template %d", (int)tpl);
    }
    if (rc != 0) goto cleanup;
    if (b.ntarget == 0) {
        set_err(err, errlen, "no target tokens: the sample loses all its labels");
        rc = LLAVA_EINVAL;
        goto cleanup;
    }
    *n_images = b.n_images;
cleanup:
    if (norm)
        for (int j = 0; j < rec->nturns; j++) free(norm[j].v);
    free(norm);
    free(texts);
    ids_free(&b.tmp);
    if (rc == LLAVA_ENOMEM) set_err(err, errlen, "out of memory");
    return rc;
}
