/* SentencePiece BPE tokenizer: a protobuf wire reader for tokenizer.model, sentencepiece's identity normalizer, its
 * BPE merge loop (bpe_model.cc: heap of adjacent pairs by score, ties to the leftmost) and its decoder.
 * Tested by tests/unit/test_tokenizer.c and tests/integration/tokenizer_parity.sh (against spm_encode/spm_decode). */
#include "common/tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/fileio.h"

#define KSPACE "\xe2\x96\x81" /* U+2581, sentencepiece's whitespace symbol */
#define KSPACE_LEN 3
#define REPLACEMENT "\xef\xbf\xbd" /* U+FFFD */

struct tokenizer {
    int n;          /* number of pieces */
    char *blob;     /* all pieces, NUL-terminated, back to back */
    uint32_t *off;  /* (n) offset of piece i in blob */
    uint32_t *plen; /* (n) byte length of piece i */
    float *score;   /* (n) */
    uint8_t *type;  /* (n) TOK_* */
    int32_t *slots; /* hash table of piece ids, -1 = empty; size mask+1 */
    uint32_t mask;
    int unk_id, bos_id, eos_id, pad_id;
    int byte_fallback, add_dummy_prefix, remove_extra_ws, escape_ws, ws_suffix;
    int has_unused;
    int32_t byte_id[256];  /* id of <0xXX>, -1 if absent */
    uint8_t ud_first[256]; /* bytes that start some user-defined piece */
    int ud_maxlen;         /* longest user-defined piece, bytes */
    int merge_maxlen;      /* longest NORMAL/USER_DEFINED/UNUSED piece, bytes */
    char *unk_surface;
    int nspecial; /* control + unknown pieces matched by tokenizer_encode_special */
    int32_t *special;
    uint64_t hash;
};

/* ---- growable id arrays ---- */

int ids_push(ids_t *a, int32_t x) {
    if (a->n == a->cap) {
        int cap = a->cap ? a->cap * 2 : 64;
        int32_t *v = realloc(a->v, (size_t)cap * sizeof(*v));
        if (!v) return LLAVA_ENOMEM;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return 0;
}

int ids_append(ids_t *a, const int32_t *x, int n) {
    if (a->n + n > a->cap) {
        int cap = a->cap ? a->cap : 64;
        while (cap < a->n + n) cap *= 2;
        int32_t *v = realloc(a->v, (size_t)cap * sizeof(*v));
        if (!v) return LLAVA_ENOMEM;
        a->v = v;
        a->cap = cap;
    }
    if (n > 0) memcpy(a->v + a->n, x, (size_t)n * sizeof(*x));
    a->n += n;
    return 0;
}

void ids_free(ids_t *a) {
    free(a->v);
    a->v = NULL;
    a->n = a->cap = 0;
}

/* ---- hashing and piece lookup ---- */

static uint64_t fnv1a64(const void *p, size_t n) {
    const uint8_t *s = p;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static uint32_t hash32(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 16777619u;
    }
    return h ^ (h >> 15);
}

/* Id of the piece s[0..n), -1 if absent. */
static int tok_lookup(const tokenizer_t *t, const char *s, size_t n) {
    uint32_t i = hash32(s, n) & t->mask;
    for (;;) {
        int32_t id = t->slots[i];
        if (id < 0) return -1;
        if (t->plen[id] == n && memcmp(t->blob + t->off[id], s, n) == 0) return id;
        i = (i + 1) & t->mask;
    }
}

/* Pieces that BPE may produce by merging (sentencepiece's pieces_ map, as opposed to reserved_id_map_). */
static int is_merge_type(int type) {
    return type == TOK_NORMAL || type == TOK_USER_DEFINED || type == TOK_UNUSED;
}

/* ---- protobuf wire format ---- */

typedef struct {
    const uint8_t *p, *end;
} pb_t;

static int pb_varint(pb_t *b, uint64_t *v) {
    uint64_t x = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (b->p >= b->end) return LLAVA_EFORMAT;
        uint8_t c = *b->p++;
        x |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return LLAVA_EFORMAT;
}

/* Reads a field key; returns 1 at the end of the message, 0 with field and wire type set, or LLAVA_EFORMAT. */
static int pb_key(pb_t *b, uint32_t *field, uint32_t *wt) {
    if (b->p == b->end) return 1;
    uint64_t k;
    if (pb_varint(b, &k) != 0 || (k >> 3) == 0 || (k >> 3) > 0x1fffffff) return LLAVA_EFORMAT;
    *field = (uint32_t)(k >> 3);
    *wt = (uint32_t)(k & 7);
    return 0;
}

/* Reads a length-delimited payload (wire type 2) as a sub-reader. */
static int pb_sub(pb_t *b, pb_t *sub) {
    uint64_t n;
    if (pb_varint(b, &n) != 0 || n > (uint64_t)(b->end - b->p)) return LLAVA_EFORMAT;
    sub->p = b->p;
    sub->end = b->p + n;
    b->p += n;
    return 0;
}

static int pb_fixed32(pb_t *b, uint32_t *v) {
    if (b->end - b->p < 4) return LLAVA_EFORMAT;
    *v = (uint32_t)b->p[0] | (uint32_t)b->p[1] << 8 | (uint32_t)b->p[2] << 16 | (uint32_t)b->p[3] << 24;
    b->p += 4;
    return 0;
}

static int pb_skip(pb_t *b, uint32_t wt) {
    uint64_t v;
    uint32_t v32;
    pb_t sub;
    switch (wt) {
    case 0: return pb_varint(b, &v);
    case 1:
        if (b->end - b->p < 8) return LLAVA_EFORMAT;
        b->p += 8;
        return 0;
    case 2: return pb_sub(b, &sub);
    case 5: return pb_fixed32(b, &v32);
    default: return LLAVA_EFORMAT; /* groups (wire types 3, 4) never appear in ModelProto */
    }
}

/* Reads a varint field as int32 (negative int32 values are 10-byte varints of the sign-extended value). */
static int pb_int(pb_t *b, uint32_t wt, int *v) {
    uint64_t x;
    if (wt != 0 || pb_varint(b, &x) != 0) return LLAVA_EFORMAT;
    *v = (int)(int32_t)(uint32_t)x;
    return 0;
}

/* ---- loading ---- */

typedef struct {
    char *blob;
    size_t blob_len, blob_cap;
    uint32_t *off, *plen;
    float *score;
    uint8_t *type;
    int n, cap;
} piece_list_t;

static int plist_add(piece_list_t *l, const uint8_t *s, size_t len, float score, int type) {
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 1024;
        uint32_t *off = realloc(l->off, (size_t)cap * sizeof(*off));
        if (!off) return LLAVA_ENOMEM;
        l->off = off;
        uint32_t *plen = realloc(l->plen, (size_t)cap * sizeof(*plen));
        if (!plen) return LLAVA_ENOMEM;
        l->plen = plen;
        float *sc = realloc(l->score, (size_t)cap * sizeof(*sc));
        if (!sc) return LLAVA_ENOMEM;
        l->score = sc;
        uint8_t *ty = realloc(l->type, (size_t)cap);
        if (!ty) return LLAVA_ENOMEM;
        l->type = ty;
        l->cap = cap;
    }
    if (l->blob_len + len + 1 > l->blob_cap) {
        size_t cap = l->blob_cap ? l->blob_cap * 2 : 16384;
        while (cap < l->blob_len + len + 1) cap *= 2;
        char *b = realloc(l->blob, cap);
        if (!b) return LLAVA_ENOMEM;
        l->blob = b;
        l->blob_cap = cap;
    }
    if (l->blob_len + len + 1 > UINT32_MAX) return LLAVA_EFORMAT;
    memcpy(l->blob + l->blob_len, s, len);
    l->blob[l->blob_len + len] = 0;
    l->off[l->n] = (uint32_t)l->blob_len;
    l->plen[l->n] = (uint32_t)len;
    l->score[l->n] = score;
    l->type[l->n] = (uint8_t)type;
    l->blob_len += len + 1;
    l->n++;
    return 0;
}

static int parse_piece(pb_t *b, piece_list_t *l) {
    const uint8_t *s = NULL;
    size_t len = 0;
    float score = 0;
    int type = TOK_NORMAL, rc;
    uint32_t field, wt;
    while ((rc = pb_key(b, &field, &wt)) == 0) {
        if (field == 1 && wt == 2) {
            pb_t sub;
            if (pb_sub(b, &sub) != 0) return LLAVA_EFORMAT;
            s = sub.p;
            len = (size_t)(sub.end - sub.p);
        } else if (field == 2 && wt == 5) {
            uint32_t u;
            if (pb_fixed32(b, &u) != 0) return LLAVA_EFORMAT;
            memcpy(&score, &u, 4);
        } else if (field == 3) {
            if (pb_int(b, wt, &type) != 0) return LLAVA_EFORMAT;
            if (type < TOK_NORMAL || type > TOK_BYTE) return LLAVA_EFORMAT;
        } else if (pb_skip(b, wt) != 0) {
            return LLAVA_EFORMAT;
        }
    }
    if (rc < 0 || s == NULL) return LLAVA_EFORMAT;
    return plist_add(l, s, len, score, type);
}

typedef struct {
    int model_type, byte_fallback, ws_suffix;
    int unk_id, bos_id, eos_id, pad_id;
    const uint8_t *unk_surface;
    size_t unk_surface_len;
    int has_unk_surface;
    /* normalizer */
    const uint8_t *norm_name;
    size_t norm_name_len;
    size_t charsmap_len;
    int add_dummy_prefix, remove_extra_ws, escape_ws;
} spec_t;

static int parse_trainer(pb_t *b, spec_t *sp) {
    uint32_t field, wt;
    int rc;
    while ((rc = pb_key(b, &field, &wt)) == 0) {
        int *dst = NULL;
        switch (field) {
        case 3: dst = &sp->model_type; break;
        case 24: dst = &sp->ws_suffix; break;
        case 35: dst = &sp->byte_fallback; break;
        case 40: dst = &sp->unk_id; break;
        case 41: dst = &sp->bos_id; break;
        case 42: dst = &sp->eos_id; break;
        case 43: dst = &sp->pad_id; break;
        default: break;
        }
        if (dst) {
            if (pb_int(b, wt, dst) != 0) return LLAVA_EFORMAT;
        } else if (field == 44 && wt == 2) {
            pb_t sub;
            if (pb_sub(b, &sub) != 0) return LLAVA_EFORMAT;
            sp->unk_surface = sub.p;
            sp->unk_surface_len = (size_t)(sub.end - sub.p);
            sp->has_unk_surface = 1;
        } else if (pb_skip(b, wt) != 0) {
            return LLAVA_EFORMAT;
        }
    }
    return rc < 0 ? rc : 0;
}

static int parse_normalizer(pb_t *b, spec_t *sp) {
    uint32_t field, wt;
    int rc;
    while ((rc = pb_key(b, &field, &wt)) == 0) {
        pb_t sub;
        if (field == 1 && wt == 2) {
            if (pb_sub(b, &sub) != 0) return LLAVA_EFORMAT;
            sp->norm_name = sub.p;
            sp->norm_name_len = (size_t)(sub.end - sub.p);
        } else if (field == 2 && wt == 2) {
            if (pb_sub(b, &sub) != 0) return LLAVA_EFORMAT;
            sp->charsmap_len = (size_t)(sub.end - sub.p);
        } else if (field == 3) {
            if (pb_int(b, wt, &sp->add_dummy_prefix) != 0) return LLAVA_EFORMAT;
        } else if (field == 4) {
            if (pb_int(b, wt, &sp->remove_extra_ws) != 0) return LLAVA_EFORMAT;
        } else if (field == 5) {
            if (pb_int(b, wt, &sp->escape_ws) != 0) return LLAVA_EFORMAT;
        } else if (pb_skip(b, wt) != 0) {
            return LLAVA_EFORMAT;
        }
    }
    return rc < 0 ? rc : 0;
}

static int parse_model(const uint8_t *buf, size_t len, piece_list_t *l, spec_t *sp) {
    pb_t b = {buf, buf + len};
    uint32_t field, wt;
    int rc;
    while ((rc = pb_key(&b, &field, &wt)) == 0) {
        pb_t sub;
        if ((field == 1 || field == 2 || field == 3) && wt == 2) {
            if (pb_sub(&b, &sub) != 0) return LLAVA_EFORMAT;
            int r = field == 1 ? parse_piece(&sub, l) : field == 2 ? parse_trainer(&sub, sp) : parse_normalizer(&sub, sp);
            if (r != 0) return r;
        } else if (pb_skip(&b, wt) != 0) {
            return LLAVA_EFORMAT;
        }
    }
    return rc < 0 ? rc : 0;
}

static int byte_of_piece(const char *s, size_t n) {
    static const char hex[] = "0123456789ABCDEF";
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    const char *h = strchr(hex, s[3]), *l = strchr(hex, s[4]);
    if (!h || !l || !s[3] || !s[4]) return -1;
    return (int)((h - hex) * 16 + (l - hex));
}

/* Builds the lookup tables of t from its pieces. */
static int tok_index(tokenizer_t *t) {
    int rc = 0;
    uint32_t cap = 64;
    while (cap < (uint32_t)t->n * 2) cap *= 2;
    t->mask = cap - 1;
    t->slots = malloc((size_t)cap * sizeof(*t->slots));
    ALLOC_CHECK_GOTO(t->slots);
    memset(t->slots, 0xff, (size_t)cap * sizeof(*t->slots));
    for (int i = 0; i < 256; i++) t->byte_id[i] = -1;
    for (int id = 0; id < t->n; id++) {
        const char *s = t->blob + t->off[id];
        size_t n = t->plen[id];
        CHECK_GOTO(n > 0, LLAVA_EFORMAT, "tokenizer: piece %d is empty", id);
        uint32_t i = hash32(s, n) & t->mask;
        while (t->slots[i] >= 0) {
            int32_t o = t->slots[i];
            CHECK_GOTO(!(t->plen[o] == n && memcmp(t->blob + t->off[o], s, n) == 0), LLAVA_EFORMAT,
                       "tokenizer: piece '%s' (id %d) is already defined (id %d)", s, id, o);
            i = (i + 1) & t->mask;
        }
        t->slots[i] = id;
        int type = t->type[id];
        if (is_merge_type(type) && (int)n > t->merge_maxlen) t->merge_maxlen = (int)n;
        if (type == TOK_USER_DEFINED) {
            t->ud_first[(uint8_t)s[0]] = 1;
            if ((int)n > t->ud_maxlen) t->ud_maxlen = (int)n;
        }
        if (type == TOK_UNUSED) t->has_unused = 1;
        if (type == TOK_BYTE) {
            int by = byte_of_piece(s, n);
            CHECK_GOTO(by >= 0, LLAVA_EFORMAT, "tokenizer: byte piece '%s' is not <0xXX>", s);
            t->byte_id[by] = id;
        }
        if (type == TOK_CONTROL || type == TOK_UNKNOWN) t->nspecial++;
    }
    t->special = malloc((size_t)(t->nspecial + 1) * sizeof(*t->special));
    ALLOC_CHECK_GOTO(t->special);
    t->nspecial = 0;
    for (int id = 0; id < t->n; id++)
        if (t->type[id] == TOK_CONTROL || t->type[id] == TOK_UNKNOWN) t->special[t->nspecial++] = id;
cleanup:
    return rc;
}

int tokenizer_load_mem(const void *buf, size_t len, tokenizer_t **out) {
    int rc = 0;
    piece_list_t l = {0};
    spec_t sp = {.model_type = 1, .unk_id = 0, .bos_id = 1, .eos_id = 2, .pad_id = -1,
                 .add_dummy_prefix = 1, .remove_extra_ws = 1, .escape_ws = 1};
    tokenizer_t *t = NULL;
    *out = NULL;
    rc = parse_model(buf, len, &l, &sp);
    CHECK_GOTO(rc != LLAVA_EFORMAT, LLAVA_EFORMAT, "tokenizer: malformed ModelProto (%zu bytes)", len);
    RC_CHECK_GOTO(rc);
    CHECK_GOTO(l.n > 0, LLAVA_EFORMAT, "tokenizer: model has no pieces");
    CHECK_GOTO(sp.model_type == 2, LLAVA_EUNSUPPORTED, "tokenizer: model_type %d is not BPE (2)", sp.model_type);
    CHECK_GOTO(sp.charsmap_len == 0, LLAVA_EUNSUPPORTED,
               "tokenizer: normalizer '%.*s' has a precompiled_charsmap (%zu bytes); only identity is supported",
               (int)sp.norm_name_len, sp.norm_name ? (const char *)sp.norm_name : "", sp.charsmap_len);
    t = calloc(1, sizeof(*t));
    ALLOC_CHECK_GOTO(t);
    t->n = l.n;
    t->blob = l.blob;
    t->off = l.off;
    t->plen = l.plen;
    t->score = l.score;
    t->type = l.type;
    memset(&l, 0, sizeof(l));
    t->byte_fallback = sp.byte_fallback;
    t->ws_suffix = sp.ws_suffix;
    t->add_dummy_prefix = sp.add_dummy_prefix;
    t->remove_extra_ws = sp.remove_extra_ws;
    t->escape_ws = sp.escape_ws;
    t->hash = fnv1a64(buf, len);
    RC_CHECK_GOTO(tok_index(t));
    /* Like sentencepiece: the unknown id is the UNKNOWN piece; bos/eos/pad must be CONTROL pieces. */
    t->unk_id = -1;
    for (int i = 0; i < t->n; i++)
        if (t->type[i] == TOK_UNKNOWN) {
            t->unk_id = i;
            break;
        }
    CHECK_GOTO(t->unk_id >= 0, LLAVA_EFORMAT, "tokenizer: model has no UNKNOWN piece");
    t->bos_id = sp.bos_id >= 0 && sp.bos_id < t->n && t->type[sp.bos_id] == TOK_CONTROL ? sp.bos_id : -1;
    t->eos_id = sp.eos_id >= 0 && sp.eos_id < t->n && t->type[sp.eos_id] == TOK_CONTROL ? sp.eos_id : -1;
    t->pad_id = sp.pad_id >= 0 && sp.pad_id < t->n && t->type[sp.pad_id] == TOK_CONTROL ? sp.pad_id : -1;
    {
        const char *us = sp.has_unk_surface ? (const char *)sp.unk_surface : " \xe2\x81\x87 ";
        size_t un = sp.has_unk_surface ? sp.unk_surface_len : strlen(us);
        t->unk_surface = malloc(un + 1);
        ALLOC_CHECK_GOTO(t->unk_surface);
        memcpy(t->unk_surface, us, un);
        t->unk_surface[un] = 0;
    }
    *out = t;
    t = NULL;
cleanup:
    free(l.blob);
    free(l.off);
    free(l.plen);
    free(l.score);
    free(l.type);
    tokenizer_free(&t);
    return rc;
}

int tokenizer_load(const char *path, tokenizer_t **out) {
    int rc = 0;
    char *buf = NULL;
    size_t sz = 0;
    *out = NULL;
    rc = file_read_all(path, &buf, &sz);
    CHECK_GOTO(rc == 0, rc == LLAVA_ENOTFOUND ? LLAVA_EIO : rc, "tokenizer: cannot read %s: %s", path, err_str(rc));
    rc = tokenizer_load_mem((const uint8_t *)buf, sz, out);
    if (rc != 0) LOG_E("tokenizer: loading %s failed: %s", path, err_str(rc));
cleanup:
    free(buf);
    return rc;
}

void tokenizer_free(tokenizer_t **p) {
    if (!p || !*p) return;
    tokenizer_t *t = *p;
    free(t->blob);
    free(t->off);
    free(t->plen);
    free(t->score);
    free(t->type);
    free(t->slots);
    free(t->unk_surface);
    free(t->special);
    free(t);
    *p = NULL;
}

/* ---- normalization (sentencepiece normalizer.cc with an empty charsmap) ---- */

/* sentencepiece's string_util::DecodeUTF8 validity: returns the length of a valid character at s, 0 if invalid. */
static size_t utf8_valid_len(const uint8_t *s, size_t n) {
    uint32_t c = s[0];
    if (c < 0x80) return 1;
    if (n >= 2 && (c & 0xe0) == 0xc0 && (s[1] & 0xc0) == 0x80) {
        uint32_t cp = ((c & 0x1f) << 6) | (s[1] & 0x3f);
        return cp >= 0x80 ? 2 : 0;
    }
    if (n >= 3 && (c & 0xf0) == 0xe0 && (s[1] & 0xc0) == 0x80 && (s[2] & 0xc0) == 0x80) {
        uint32_t cp = ((c & 0x0f) << 12) | ((uint32_t)(s[1] & 0x3f) << 6) | (s[2] & 0x3f);
        return cp >= 0x800 && (cp < 0xd800 || cp >= 0xe000) ? 3 : 0;
    }
    if (n >= 4 && (c & 0xf8) == 0xf0 && (s[1] & 0xc0) == 0x80 && (s[2] & 0xc0) == 0x80 && (s[3] & 0xc0) == 0x80) {
        uint32_t cp = ((c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3f) << 12) | ((uint32_t)(s[2] & 0x3f) << 6) |
                      (s[3] & 0x3f);
        return cp >= 0x10000 && cp <= 0x10ffff ? 4 : 0;
    }
    return 0;
}

/* Longest user-defined piece at s[0..n), 0 if none (sentencepiece's PrefixMatcher). */
static size_t ud_match(const tokenizer_t *t, const char *s, size_t n) {
    if (!t->ud_first[(uint8_t)s[0]]) return 0;
    size_t m = n < (size_t)t->ud_maxlen ? n : (size_t)t->ud_maxlen;
    for (; m > 0; m--) {
        int id = tok_lookup(t, s, m);
        if (id >= 0 && t->type[id] == TOK_USER_DEFINED) return m;
    }
    return 0;
}

static size_t ws_append(const tokenizer_t *t, char *o) {
    if (t->escape_ws) {
        memcpy(o, KSPACE, KSPACE_LEN);
        return KSPACE_LEN;
    }
    o[0] = ' ';
    return 1;
}

/* Writes the normalized text into o (capacity 3*len + 8) and returns its length. */
static size_t tok_normalize(const tokenizer_t *t, const char *in, size_t len, int dummy, char *o) {
    size_t i = 0, w = 0;
    if (t->remove_extra_ws)
        while (i < len && in[i] == ' ') i++;
    if (i == len) return 0;
    int is_prev_space = t->remove_extra_ws;
    if (dummy && !t->ws_suffix && t->add_dummy_prefix) w += ws_append(t, o + w);
    while (i < len) {
        const char *sp = in + i;
        size_t splen = ud_match(t, sp, len - i), consumed = splen;
        if (splen == 0) {
            consumed = splen = utf8_valid_len((const uint8_t *)sp, len - i);
            if (splen == 0) {
                sp = REPLACEMENT;
                splen = 3;
                consumed = 1;
            }
        }
        while (is_prev_space && splen > 0 && sp[0] == ' ') {
            sp++;
            splen--;
        }
        if (splen > 0) {
            for (size_t k = 0; k < splen; k++) {
                if (t->escape_ws && sp[k] == ' ') {
                    memcpy(o + w, KSPACE, KSPACE_LEN);
                    w += KSPACE_LEN;
                } else {
                    o[w++] = sp[k];
                }
            }
            is_prev_space = sp[splen - 1] == ' ';
        }
        i += consumed;
        is_prev_space = is_prev_space && t->remove_extra_ws;
    }
    if (t->remove_extra_ws) {
        for (;;) {
            if (t->escape_ws && w >= KSPACE_LEN && memcmp(o + w - KSPACE_LEN, KSPACE, KSPACE_LEN) == 0)
                w -= KSPACE_LEN;
            else if (!t->escape_ws && w > 0 && o[w - 1] == ' ')
                w--;
            else
                break;
        }
    }
    if (dummy && t->ws_suffix && t->add_dummy_prefix) w += ws_append(t, o + w);
    return w;
}

/* ---- BPE (sentencepiece bpe_model.cc) ---- */

typedef struct {
    int left, right, size;
    float score;
} pair_t;

typedef struct {
    pair_t *v;
    int n, cap;
} heap_t;

/* a is popped before b: higher score first, ties to the leftmost pair (SymbolPairComparator). */
static int pair_before(const pair_t *a, const pair_t *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static int heap_push(heap_t *h, pair_t p) {
    if (h->n == h->cap) {
        int cap = h->cap ? h->cap * 2 : 256;
        pair_t *v = realloc(h->v, (size_t)cap * sizeof(*v));
        if (!v) return LLAVA_ENOMEM;
        h->v = v;
        h->cap = cap;
    }
    int i = h->n++;
    while (i > 0) {
        int parent = (i - 1) / 2;
        if (!pair_before(&p, &h->v[parent])) break;
        h->v[i] = h->v[parent];
        i = parent;
    }
    h->v[i] = p;
    return 0;
}

static pair_t heap_pop(heap_t *h) {
    pair_t top = h->v[0], last = h->v[--h->n];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && pair_before(&h->v[c + 1], &h->v[c])) c++;
        if (!pair_before(&h->v[c], &last)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n > 0) h->v[i] = last;
    return top;
}

typedef struct {
    int start, len, prev, next, freeze;
} sym_t;

/* A merge that produced an UNUSED piece, remembered so the piece can be split back (sentencepiece's rev_merge). */
typedef struct {
    int id, lstart, llen, rstart, rlen;
} rev_t;

typedef struct {
    const tokenizer_t *t;
    const char *s; /* normalized text */
    sym_t *sym;
    heap_t heap;
    rev_t *rev;
    int nrev, caprev;
    int prev_unk;
    ids_t *out;
} bpe_t;

static int rev_put(bpe_t *b, int id, const sym_t *l, const sym_t *r) {
    for (int i = 0; i < b->nrev; i++)
        if (b->rev[i].id == id) {
            b->rev[i] = (rev_t){id, l->start, l->len, r->start, r->len};
            return 0;
        }
    if (b->nrev == b->caprev) {
        int cap = b->caprev ? b->caprev * 2 : 16;
        rev_t *v = realloc(b->rev, (size_t)cap * sizeof(*v));
        if (!v) return LLAVA_ENOMEM;
        b->rev = v;
        b->caprev = cap;
    }
    b->rev[b->nrev++] = (rev_t){id, l->start, l->len, r->start, r->len};
    return 0;
}

static int bpe_maybe_add(bpe_t *b, int left, int right) {
    if (left < 0 || right < 0 || b->sym[left].freeze || b->sym[right].freeze) return 0;
    int size = b->sym[left].len + b->sym[right].len;
    if (size > b->t->merge_maxlen) return 0;
    int id = tok_lookup(b->t, b->s + b->sym[left].start, (size_t)size);
    if (id < 0 || !is_merge_type(b->t->type[id])) return 0;
    int rc = heap_push(&b->heap, (pair_t){left, right, size, b->t->score[id]});
    if (rc == 0 && b->t->type[id] == TOK_UNUSED) rc = rev_put(b, id, &b->sym[left], &b->sym[right]);
    return rc;
}

/* Appends the id(s) of the piece s[start..start+len): byte pieces for unknown text when byte_fallback, one
 * unknown id for a run of unknown pieces otherwise (sentencepiece's PopulateSentencePieceText). */
static int bpe_emit(bpe_t *b, int start, int len) {
    const tokenizer_t *t = b->t;
    int rc = 0;
    int id = tok_lookup(t, b->s + start, (size_t)len);
    if (id < 0) id = t->unk_id;
    if (t->type[id] == TOK_UNUSED) {
        for (int i = 0; i < b->nrev; i++)
            if (b->rev[i].id == id) {
                rev_t r = b->rev[i];
                RC_CHECK_GOTO(bpe_emit(b, r.lstart, r.llen));
                RC_CHECK_GOTO(bpe_emit(b, r.rstart, r.rlen));
                return 0;
            }
    }
    int is_unk = id == t->unk_id;
    if (is_unk && t->byte_fallback) {
        for (int i = 0; i < len; i++) {
            int bid = t->byte_id[(uint8_t)b->s[start + i]];
            RC_CHECK_GOTO(ids_push(b->out, bid >= 0 ? bid : t->unk_id));
        }
    } else if (!(is_unk && b->prev_unk)) {
        RC_CHECK_GOTO(ids_push(b->out, id));
    }
    b->prev_unk = is_unk;
cleanup:
    return rc;
}

static int bpe_encode(const tokenizer_t *t, const char *s, size_t n, ids_t *out) {
    static const uint8_t onecharlen[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    int rc = 0;
    bpe_t b = {.t = t, .s = s, .out = out};
    if (n == 0) return 0;
    b.sym = malloc(n * sizeof(*b.sym));
    ALLOC_CHECK_GOTO(b.sym);
    int nsym = 0;
    for (size_t i = 0; i < n;) {
        size_t m = ud_match(t, s + i, n - i);
        int freeze = m > 0;
        if (!freeze) {
            m = onecharlen[(uint8_t)s[i] >> 4];
            if (m > n - i) m = n - i;
        }
        b.sym[nsym] = (sym_t){(int)i, (int)m, nsym - 1, i + m < n ? nsym + 1 : -1, freeze};
        nsym++;
        i += m;
    }
    for (int i = 1; i < nsym; i++) RC_CHECK_GOTO(bpe_maybe_add(&b, i - 1, i));
    while (b.heap.n > 0) {
        pair_t top = heap_pop(&b.heap);
        sym_t *l = &b.sym[top.left], *r = &b.sym[top.right];
        if (l->len == 0 || r->len == 0 || l->len + r->len != top.size) continue;
        l->len += r->len;
        l->next = r->next;
        if (r->next >= 0) b.sym[r->next].prev = top.left;
        r->len = 0;
        RC_CHECK_GOTO(bpe_maybe_add(&b, l->prev, top.left));
        RC_CHECK_GOTO(bpe_maybe_add(&b, top.left, l->next));
    }
    for (int i = 0; i != -1; i = b.sym[i].next) RC_CHECK_GOTO(bpe_emit(&b, b.sym[i].start, b.sym[i].len));
cleanup:
    free(b.sym);
    free(b.heap.v);
    free(b.rev);
    return rc;
}

static int tok_encode(const tokenizer_t *t, const char *text, size_t len, int dummy, ids_t *out) {
    int rc = 0;
    char *norm = NULL;
    if (len == 0) return 0;
    norm = malloc(3 * len + 8);
    ALLOC_CHECK_GOTO(norm);
    size_t n = tok_normalize(t, text, len, dummy, norm);
    RC_CHECK_GOTO(bpe_encode(t, norm, n, out));
cleanup:
    free(norm);
    return rc;
}

int tokenizer_encode(const tokenizer_t *t, const char *text, size_t len, int add_bos, ids_t *out) {
    if (add_bos && t->bos_id >= 0 && ids_push(out, t->bos_id) != 0) return LLAVA_ENOMEM;
    return tok_encode(t, text, len, 1, out);
}

int tokenizer_encode_continue(const tokenizer_t *t, const char *text, size_t len, ids_t *out) {
    return tok_encode(t, text, len, 0, out);
}

int tokenizer_match_special(const tokenizer_t *t, const char *s, size_t n, size_t *mlen) {
    int hit = -1;
    size_t hitlen = 0;
    for (int k = 0; k < t->nspecial; k++) { /* longest special string at s (transformers' Trie) */
        int id = t->special[k];
        size_t pl = t->plen[id];
        if (pl > hitlen && pl <= n && memcmp(s, t->blob + t->off[id], pl) == 0) {
            hit = id;
            hitlen = pl;
        }
    }
    *mlen = hitlen;
    return hit;
}

int tokenizer_encode_special(const tokenizer_t *t, const char *text, size_t len, int add_bos, ids_t *out) {
    int rc = 0;
    size_t chunk = 0, i = 0;
    if (add_bos && t->bos_id >= 0) RC_CHECK_GOTO(ids_push(out, t->bos_id));
    while (i < len) {
        size_t hitlen;
        int hit = tokenizer_match_special(t, text + i, len - i, &hitlen);
        if (hit < 0) {
            i++;
            continue;
        }
        RC_CHECK_GOTO(tokenizer_encode(t, text + chunk, i - chunk, 0, out));
        RC_CHECK_GOTO(ids_push(out, hit));
        i += hitlen;
        chunk = i;
    }
    RC_CHECK_GOTO(tokenizer_encode(t, text + chunk, len - chunk, 0, out));
cleanup:
    return rc;
}

/* ---- decoding ---- */

typedef struct {
    char *v;
    size_t n, cap;
} str_t;

static int str_add(str_t *s, const char *p, size_t n) {
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

/* Appends accumulated byte pieces, one UTF-8 character at a time, U+FFFD for each invalid byte. */
static int flush_bytes(str_t *s, const uint8_t *by, int nb) {
    int rc = 0;
    for (int off = 0; off < nb;) {
        size_t m = utf8_valid_len(by + off, (size_t)(nb - off));
        if (m == 0) {
            RC_CHECK_GOTO(str_add(s, REPLACEMENT, 3));
            m = 1;
        } else {
            RC_CHECK_GOTO(str_add(s, (const char *)by + off, m));
        }
        off += (int)m;
    }
cleanup:
    return rc;
}

int tokenizer_decode(const tokenizer_t *t, const int32_t *ids, int n, char **out) {
    int rc = 0;
    str_t s = {0};
    uint8_t *by = NULL;
    int nb = 0, is_bos_ws = 1, bos_ws_seen = 0;
    *out = NULL;
    by = malloc((size_t)n + 1);
    ALLOC_CHECK_GOTO(by);
    RC_CHECK_GOTO(str_add(&s, "", 0));
    for (int i = 0; i < n; i++) {
        int id = ids[i];
        CHECK_GOTO(id >= 0 && id < t->n, LLAVA_EINVAL, "tokenizer_decode: id %d out of range [0, %d)", id, t->n);
        if (t->type[id] == TOK_BYTE) {
            by[nb++] = (uint8_t)byte_of_piece(t->blob + t->off[id], t->plen[id]);
            continue;
        }
        RC_CHECK_GOTO(flush_bytes(&s, by, nb));
        nb = 0;
        if (bos_ws_seen || s.n > 0) is_bos_ws = 0;
        bos_ws_seen = 0;
        if (t->type[id] == TOK_CONTROL) continue;
        if (t->type[id] == TOK_UNKNOWN) {
            RC_CHECK_GOTO(str_add(&s, t->unk_surface, strlen(t->unk_surface)));
            continue;
        }
        const char *p = t->blob + t->off[id];
        size_t pl = t->plen[id];
        if (is_bos_ws && (t->add_dummy_prefix || t->remove_extra_ws) && pl >= KSPACE_LEN &&
            memcmp(p, KSPACE, KSPACE_LEN) == 0) {
            p += KSPACE_LEN;
            pl -= KSPACE_LEN;
            bos_ws_seen = !t->remove_extra_ws;
        }
        while (pl > 0) {
            if (pl >= KSPACE_LEN && memcmp(p, KSPACE, KSPACE_LEN) == 0) {
                RC_CHECK_GOTO(str_add(&s, " ", 1));
                p += KSPACE_LEN;
                pl -= KSPACE_LEN;
            } else {
                RC_CHECK_GOTO(str_add(&s, p, 1));
                p++;
                pl--;
            }
        }
    }
    RC_CHECK_GOTO(flush_bytes(&s, by, nb));
    *out = s.v;
    s.v = NULL;
cleanup:
    free(s.v);
    free(by);
    return rc;
}

/* ---- accessors ---- */

int tokenizer_vocab_size(const tokenizer_t *t) { return t->n; }
int tokenizer_bos_id(const tokenizer_t *t) { return t->bos_id; }
int tokenizer_eos_id(const tokenizer_t *t) { return t->eos_id; }
int tokenizer_unk_id(const tokenizer_t *t) { return t->unk_id; }
int tokenizer_pad_id(const tokenizer_t *t) { return t->pad_id; }
uint64_t tokenizer_hash(const tokenizer_t *t) { return t->hash; }

const char *tokenizer_piece(const tokenizer_t *t, int id) {
    return id >= 0 && id < t->n ? t->blob + t->off[id] : NULL;
}

int tokenizer_piece_type(const tokenizer_t *t, int id) { return id >= 0 && id < t->n ? t->type[id] : 0; }

int tokenizer_piece_to_id(const tokenizer_t *t, const char *piece) {
    size_t n = strlen(piece);
    return n ? tok_lookup(t, piece, n) : -1;
}
