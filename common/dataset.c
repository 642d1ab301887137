/* Dataset records (encode/decode), manifest.json (parse/write), the read-only LMDB shard reader and collate.
 * Formats: docs/dataset-format.md. Tested by tests/unit/test_dataset.c and tests/integration/ingest.sh. */
#include "common/dataset.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <lmdb.h>

#include "common/err.h"
#include "common/fileio.h"
#include "common/image.h"

#define PLACEHOLDER (-200)

/* ---------------------------------------------------------------- hashing, keys, lengths */

uint64_t ds_fnv1a(uint64_t h, const void *data, size_t n) {
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

uint64_t ds_shard_fold(uint64_t h, const uint8_t key[8], const void *value, size_t len) {
    h = ds_fnv1a(h, key, 8);
    return ds_fnv1a(h, value, len < DS_HEADER_BYTES ? len : DS_HEADER_BYTES);
}

void ds_key_encode(int64_t index, uint8_t key[8]) {
    uint64_t v = (uint64_t)index;
    for (int i = 7; i >= 0; i--, v >>= 8) key[i] = (uint8_t)(v & 0xff);
}

int64_t ds_key_decode(const uint8_t key[8]) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | key[i];
    return (int64_t)v;
}

int64_t ds_expanded_length(int n_tokens, int n_images, int n_patches) {
    return (int64_t)n_tokens + (int64_t)n_images * (n_patches - 1);
}

int ds_truncate_point(const int32_t *ids, int n, int n_patches, int max_seq_len) {
    if (max_seq_len <= 0) return n;
    int64_t pos = 0;
    for (int i = 0; i < n; i++) {
        int64_t w = ids[i] == PLACEHOLDER ? n_patches : 1;
        if (pos + w > max_seq_len) return i; /* an image run that does not fit whole is dropped with the rest */
        pos += w;
    }
    return n;
}

int ds_count_targets(const int32_t *labels, int n) {
    int c = 0;
    for (int i = 1; i < n; i++) c += labels[i] != LLAVA_IGNORE_INDEX;
    return c;
}

/* ---------------------------------------------------------------- records */

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static size_t pad4(size_t n) { return (n + 3) & ~(size_t)3; }

size_t ds_record_size(int id_len, int n_tokens, int n_images, int image_size) {
    /* The total is a multiple of 4 so that LMDB places every value 4-aligned (see docs/dataset-format.md). */
    return pad4(DS_HEADER_BYTES + pad4((size_t)id_len) + 8 * (size_t)n_tokens +
                (size_t)n_images * 3 * (size_t)image_size * (size_t)image_size);
}

/* Cuts s to at most max bytes without splitting a UTF-8 sequence. */
static int utf8_cut(const char *s, int max) {
    int n = (int)strnlen(s, (size_t)max + 1);
    if (n <= max) return n;
    n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
    return n;
}

int ds_record_encode(void *buf, size_t cap, size_t *len, const char *id, const int32_t *input_ids,
                     const int32_t *labels, int n_tokens, int n_images, int image_size, int flags,
                     const uint8_t *pixels) {
    if (n_tokens < 0 || n_images < 0 || image_size < 0 || (n_images > 0 && (image_size <= 0 || !pixels)) ||
        (n_tokens > 0 && (!input_ids || !labels)))
        return LLAVA_EINVAL;
    int id_len = id ? utf8_cut(id, DS_ID_MAX) : 0;
    size_t need = ds_record_size(id_len, n_tokens, n_images, image_size);
    if (cap < need) return LLAVA_EINVAL;
    uint8_t *p = buf;
    memset(p, 0, need);
    put_u32(p, DS_RECORD_MAGIC);
    put_u16(p + 4, DS_RECORD_VERSION);
    put_u16(p + 6, (uint16_t)(flags | (n_images > 0 ? DS_FLAG_HAS_IMAGE : 0)));
    put_u32(p + 8, (uint32_t)n_tokens);
    put_u32(p + 12, (uint32_t)n_images);
    put_u32(p + 16, (uint32_t)(n_images > 0 ? image_size : 0));
    put_u32(p + 20, (uint32_t)id_len);
    uint8_t *q = p + DS_HEADER_BYTES;
    memcpy(q, id, (size_t)id_len);
    q += pad4((size_t)id_len);
    for (int i = 0; i < n_tokens; i++) put_u32(q + 4 * (size_t)i, (uint32_t)input_ids[i]);
    q += 4 * (size_t)n_tokens;
    for (int i = 0; i < n_tokens; i++) put_u32(q + 4 * (size_t)i, (uint32_t)labels[i]);
    q += 4 * (size_t)n_tokens;
    size_t npix = (size_t)n_images * 3 * (size_t)image_size * (size_t)image_size;
    if (npix) memcpy(q, pixels, npix);
    put_u64(p + 24, ds_fnv1a(DS_FNV_INIT, p + DS_HEADER_BYTES, need - DS_HEADER_BYTES));
    *len = need;
    return 0;
}

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int ds_record_decode(const void *buf, size_t len, int check_sum, ds_record_t *out, char *err, size_t errlen) {
    const uint8_t *p = buf;
    memset(out, 0, sizeof *out);
    if (len < DS_HEADER_BYTES) {
        set_err(err, errlen, "record of %zu bytes is shorter than its %d-byte header", len, DS_HEADER_BYTES);
        return LLAVA_EFORMAT;
    }
    if (get_u32(p) != DS_RECORD_MAGIC || get_u16(p + 4) != DS_RECORD_VERSION) {
        set_err(err, errlen, "bad record magic/version (0x%08x v%u)", get_u32(p), get_u16(p + 4));
        return LLAVA_EFORMAT;
    }
    uint32_t flags = get_u16(p + 6), nt = get_u32(p + 8), ni = get_u32(p + 12), s = get_u32(p + 16),
             idl = get_u32(p + 20);
    if (nt > (1u << 24) || ni > 4096 || s > 8192 || idl > DS_ID_MAX || (ni > 0) != (s > 0) ||
        ((flags & DS_FLAG_HAS_IMAGE) != 0) != (ni > 0)) {
        set_err(err, errlen, "implausible record header (n_tokens %u, n_images %u, image_size %u, id_len %u, flags %u)",
                nt, ni, s, idl, flags);
        return LLAVA_EFORMAT;
    }
    size_t need = ds_record_size((int)idl, (int)nt, (int)ni, (int)s);
    if (need != len) {
        set_err(err, errlen, "record is %zu bytes, its header says %zu", len, need);
        return LLAVA_EFORMAT;
    }
    out->checksum = get_u64(p + 24);
    if (check_sum) {
        uint64_t h = ds_fnv1a(DS_FNV_INIT, p + DS_HEADER_BYTES, len - DS_HEADER_BYTES);
        if (h != out->checksum) {
            set_err(err, errlen, "record checksum %016" PRIx64 ", stored %016" PRIx64, h, out->checksum);
            return LLAVA_EFORMAT;
        }
    }
    const uint8_t *q = p + DS_HEADER_BYTES;
    out->id = (const char *)q;
    out->id_len = (int)idl;
    q += pad4(idl);
    out->n_tokens = (int)nt;
    out->n_images = (int)ni;
    out->image_size = (int)s;
    out->flags = (int)flags;
    out->input_ids = (const int32_t *)(const void *)q; /* 4-aligned when buf is (ds_reader_get checks) */
    out->labels = out->input_ids + nt;
    out->pixels = q + 8 * (size_t)nt;
    return 0;
}

/* ---------------------------------------------------------------- manifest */

void ds_manifest_free(ds_manifest_t *m) {
    free(m->shards);
    free(m->lengths);
    free(m->n_images);
    memset(m, 0, sizeof *m);
}

static int json_int(const cJSON *o, const char *key, int64_t lo, int64_t hi, int64_t *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v) || v->valuedouble < (double)lo || v->valuedouble > (double)hi ||
        v->valuedouble != (double)(int64_t)v->valuedouble)
        return -1;
    *out = (int64_t)v->valuedouble;
    return 0;
}

static int json_str(const cJSON *o, const char *key, char *out, size_t cap) {
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, key));
    if (!s || strlen(s) >= cap) return -1;
    strcpy(out, s);
    return 0;
}

static int json_hex64(const cJSON *o, const char *key, uint64_t *out) {
    char buf[32];
    if (json_str(o, key, buf, sizeof buf) || strlen(buf) != 16 || strspn(buf, "0123456789abcdef") != 16) return -1;
    *out = strtoull(buf, NULL, 16);
    return 0;
}

static int json_i32_array(const cJSON *o, const char *key, int64_t n, int32_t **out) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key), *v;
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != n) return -1;
    int32_t *x = malloc((size_t)(n > 0 ? n : 1) * sizeof *x);
    if (!x) return -2;
    int64_t i = 0;
    cJSON_ArrayForEach(v, a) {
        if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 2e9) {
            free(x);
            return -1;
        }
        x[i++] = (int32_t)v->valuedouble;
    }
    *out = x;
    return 0;
}

int ds_manifest_parse(const char *json, size_t len, const char *name, ds_manifest_t *m) {
    int rc = 0;
    int64_t v = 0;
    memset(m, 0, sizeof *m);
    cJSON *o = cJSON_ParseWithLength(json, len);
    CHECK_GOTO(cJSON_IsObject(o), LLAVA_EFORMAT, "%s: not a JSON object", name);
    char fmt[64];
    CHECK_GOTO(json_str(o, "format", fmt, sizeof fmt) == 0 && !strcmp(fmt, "llava-dataset"), LLAVA_EFORMAT,
               "%s: 'format' must be \"llava-dataset\"", name);
#define REQ_INT(key, lo, hi, dst)                                                                                   \
    CHECK_GOTO(json_int(o, key, lo, hi, &v) == 0, LLAVA_EFORMAT, "%s: '%s' missing or not an integer in [%lld, %lld]", \
               name, key, (long long)(lo), (long long)(hi));                                                      \
    dst = v
    REQ_INT("version", 1, DS_FORMAT_VERSION, m->version);
    REQ_INT("n_samples", 1, (int64_t)1 << 40, m->n_samples);
    REQ_INT("image_size", 0, 8192, m->image_size);
    REQ_INT("patch_size", 1, 1024, m->patch_size);
    REQ_INT("max_seq_len", 0, 1 << 30, m->max_seq_len);
    const cJSON *counts = cJSON_GetObjectItemCaseSensitive(o, "counts");
    CHECK_GOTO(cJSON_IsObject(counts), LLAVA_EFORMAT, "%s: 'counts' missing", name);
    CHECK_GOTO(json_int(counts, "images", 0, (int64_t)1 << 50, &m->n_images_total) == 0 &&
                   json_int(counts, "text_only", 0, (int64_t)1 << 50, &m->n_text_only) == 0 &&
                   json_int(counts, "bad", 0, (int64_t)1 << 50, &m->n_bad) == 0 &&
                   json_int(counts, "source_records", 0, (int64_t)1 << 50, &m->n_source) == 0,
               LLAVA_EFORMAT, "%s: 'counts' needs integers images, text_only, bad, source_records", name);
    const cJSON *pad = cJSON_GetObjectItemCaseSensitive(o, "pad");
    CHECK_GOTO(cJSON_IsBool(pad), LLAVA_EFORMAT, "%s: 'pad' missing or not a boolean", name);
    m->pad = cJSON_IsTrue(pad);
    CHECK_GOTO(json_str(o, "template", m->template_name, sizeof m->template_name) == 0, LLAVA_EFORMAT,
               "%s: 'template' missing", name);
    CHECK_GOTO(json_str(o, "tokenizer", m->tokenizer, sizeof m->tokenizer) == 0, LLAVA_EFORMAT,
               "%s: 'tokenizer' missing", name);
    CHECK_GOTO(json_hex64(o, "tokenizer_hash", &m->tokenizer_hash) == 0, LLAVA_EFORMAT,
               "%s: 'tokenizer_hash' must be 16 lower-case hex digits", name);
    CHECK_GOTO(json_str(o, "source_json", m->source_json, sizeof m->source_json) == 0, LLAVA_EFORMAT,
               "%s: 'source_json' missing", name);
    CHECK_GOTO(json_str(o, "images_dir", m->images_dir, sizeof m->images_dir) == 0, LLAVA_EFORMAT,
               "%s: 'images_dir' missing", name);
    int ar = json_i32_array(o, "lengths", m->n_samples, &m->lengths);
    CHECK_GOTO(ar != -2, LLAVA_ENOMEM, "out of memory");
    CHECK_GOTO(ar == 0, LLAVA_EFORMAT, "%s: 'lengths' must list %lld non-negative integers", name,
               (long long)m->n_samples);
    ar = json_i32_array(o, "n_images", m->n_samples, &m->n_images);
    CHECK_GOTO(ar != -2, LLAVA_ENOMEM, "out of memory");
    CHECK_GOTO(ar == 0, LLAVA_EFORMAT, "%s: 'n_images' must list %lld non-negative integers", name,
               (long long)m->n_samples);
    int64_t nimg = 0;
    for (int64_t i = 0; i < m->n_samples; i++) nimg += m->n_images[i];
    CHECK_GOTO(nimg == m->n_images_total, LLAVA_EFORMAT, "%s: counts.images is %lld, 'n_images' sums to %lld", name,
               (long long)m->n_images_total, (long long)nimg);
    const cJSON *shards = cJSON_GetObjectItemCaseSensitive(o, "shards"), *s;
    int ns = cJSON_GetArraySize(shards);
    CHECK_GOTO(cJSON_IsArray(shards) && ns > 0, LLAVA_EFORMAT, "%s: 'shards' missing or empty", name);
    m->shards = calloc((size_t)ns, sizeof *m->shards);
    ALLOC_CHECK_GOTO(m->shards);
    int64_t expect = 0;
    cJSON_ArrayForEach(s, shards) {
        ds_shard_t *sh = &m->shards[m->n_shards];
        CHECK_GOTO(json_str(s, "name", sh->name, sizeof sh->name) == 0 && !strchr(sh->name, '/') &&
                       json_int(s, "first", 0, (int64_t)1 << 40, &sh->first) == 0 &&
                       json_int(s, "count", 1, (int64_t)1 << 40, &sh->count) == 0 &&
                       json_int(s, "bytes", 0, (int64_t)1 << 60, &sh->bytes) == 0 &&
                       json_hex64(s, "checksum", &sh->checksum) == 0,
                   LLAVA_EFORMAT, "%s: shard %d needs 'name' (no '/'), 'first', 'count' > 0, 'bytes', 'checksum' (hex)",
                   name, m->n_shards);
        CHECK_GOTO(sh->first == expect, LLAVA_EFORMAT, "%s: shard '%s' starts at %lld, expected %lld", name, sh->name,
                   (long long)sh->first, (long long)expect);
        expect += sh->count;
        m->n_shards++;
    }
    CHECK_GOTO(expect == m->n_samples, LLAVA_EFORMAT, "%s: shards cover %lld samples, n_samples is %lld", name,
               (long long)expect, (long long)m->n_samples);
#undef REQ_INT
cleanup:
    cJSON_Delete(o);
    if (rc) ds_manifest_free(m);
    return rc;
}

int ds_manifest_load(const char *dir, ds_manifest_t *m) {
    int rc = 0;
    char path[4096];
    size_t len = 0;
    memset(m, 0, sizeof *m);
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    char *text = NULL;
    int frc = file_read_all(path, &text, &len);
    CHECK_GOTO(frc == 0, frc == LLAVA_ENOMEM ? LLAVA_ENOMEM : LLAVA_ENOTFOUND, "%s: cannot read (%s); is '%s' a dataset made by llava-data ingest?", path,
               strerror(errno), dir);
    rc = ds_manifest_parse(text, len, path, m);
cleanup:
    free(text);
    return rc;
}

static void json_put_str(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

static void json_put_i32s(FILE *f, const int32_t *x, int64_t n) {
    fputc('[', f);
    for (int64_t i = 0; i < n; i++) fprintf(f, i ? ",%d" : "%d", x[i]);
    fputc(']', f);
}

/* fsyncs a file or directory by path. */
static int fsync_path(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    int r = fsync(fd);
    close(fd);
    return r;
}

int ds_manifest_write(const char *dir, const ds_manifest_t *m, const char *created) {
    int rc = 0;
    char path[4096], tmp[4100];
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    CHECK_GOTO(f, LLAVA_EIO, "%s: %s", tmp, strerror(errno));
    fprintf(f, "{\n  \"format\": \"llava-dataset\",\n  \"version\": %d,\n", DS_FORMAT_VERSION);
    if (created) {
        fputs("  \"created\": ", f);
        json_put_str(f, created);
        fputs(",\n", f);
    }
    fputs("  \"source_json\": ", f);
    json_put_str(f, m->source_json);
    fputs(",\n  \"images_dir\": ", f);
    json_put_str(f, m->images_dir);
    fputs(",\n  \"tokenizer\": ", f);
    json_put_str(f, m->tokenizer);
    fprintf(f, ",\n  \"tokenizer_hash\": \"%016" PRIx64 "\",\n  \"template\": ", m->tokenizer_hash);
    json_put_str(f, m->template_name);
    fprintf(f, ",\n  \"image_size\": %d,\n  \"patch_size\": %d,\n  \"pad\": %s,\n  \"max_seq_len\": %d,\n",
            m->image_size, m->patch_size, m->pad ? "true" : "false", m->max_seq_len);
    fprintf(f, "  \"checksum\": \"fnv1a64 of (8-byte key, 32-byte record header) of every record in key order\",\n");
    fprintf(f, "  \"n_samples\": %lld,\n", (long long)m->n_samples);
    fprintf(f, "  \"counts\": {\"samples\": %lld, \"images\": %lld, \"text_only\": %lld, \"bad\": %lld, "
               "\"source_records\": %lld},\n",
            (long long)m->n_samples, (long long)m->n_images_total, (long long)m->n_text_only, (long long)m->n_bad,
            (long long)m->n_source);
    fputs("  \"shards\": [\n", f);
    for (int i = 0; i < m->n_shards; i++) {
        const ds_shard_t *s = &m->shards[i];
        fprintf(f, "    {\"name\": \"%s\", \"first\": %lld, \"count\": %lld, \"bytes\": %lld, \"checksum\": \"%016" PRIx64
                   "\"}%s\n",
                s->name, (long long)s->first, (long long)s->count, (long long)s->bytes, s->checksum,
                i + 1 < m->n_shards ? "," : "");
    }
    fputs("  ],\n  \"lengths\": ", f);
    json_put_i32s(f, m->lengths, m->n_samples);
    fputs(",\n  \"n_images\": ", f);
    json_put_i32s(f, m->n_images, m->n_samples);
    fputs("\n}\n", f);
    int bad = ferror(f) != 0;
    bad |= fflush(f) != 0;
    bad |= fsync(fileno(f)) != 0;
    bad |= fclose(f) != 0;
    f = NULL;
    CHECK_GOTO(!bad, LLAVA_EIO, "%s: write failed: %s", tmp, strerror(errno));
    SYS_CHECK_GOTO(rename(tmp, path), path);
    fsync_path(dir);
cleanup:
    if (f) fclose(f);
    if (rc) unlink(tmp);
    return rc;
}

int ds_manifest_shard_of(const ds_manifest_t *m, int64_t i) {
    if (i < 0 || i >= m->n_samples || m->n_shards == 0) return -1;
    int lo = 0, hi = m->n_shards - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (m->shards[mid].first <= i) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* ---------------------------------------------------------------- reader */

typedef struct {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
} shard_handle_t;

struct ds_reader {
    char dir[2048];
    ds_manifest_t m;
    shard_handle_t *sh; /* [n_shards], opened on first use */
};

int ds_reader_open(const char *dir, ds_reader_t **out) {
    int rc = 0;
    *out = NULL;
    ds_reader_t *r = calloc(1, sizeof *r);
    ALLOC_CHECK_GOTO(r);
    CHECK_GOTO(strlen(dir) < sizeof r->dir, LLAVA_EINVAL, "dataset path too long: %s", dir);
    strcpy(r->dir, dir);
    RC_CHECK_GOTO(ds_manifest_load(dir, &r->m));
    r->sh = calloc((size_t)r->m.n_shards, sizeof *r->sh);
    ALLOC_CHECK_GOTO(r->sh);
    *out = r;
    r = NULL;
cleanup:
    ds_reader_close(&r);
    return rc;
}

void ds_reader_close(ds_reader_t **p) {
    if (!p || !*p) return;
    ds_reader_t *r = *p;
    if (r->sh)
        for (int i = 0; i < r->m.n_shards; i++) {
            if (r->sh[i].txn) mdb_txn_abort(r->sh[i].txn);
            if (r->sh[i].env) mdb_env_close(r->sh[i].env);
        }
    free(r->sh);
    ds_manifest_free(&r->m);
    free(r);
    *p = NULL;
}

static int shard_ensure(ds_reader_t *r, int s) {
    int rc = 0;
    shard_handle_t *h = &r->sh[s];
    if (h->txn) return 0;
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", r->dir, r->m.shards[s].name);
    MDB_CHECK_GOTO(mdb_env_create(&h->env));
    rc = mdb_env_open(h->env, path, MDB_RDONLY | MDB_NOSUBDIR | MDB_NOLOCK | MDB_NORDAHEAD, 0444);
    CHECK_GOTO(rc == 0, rc == ENOENT ? LLAVA_ENOTFOUND : LLAVA_EDB, "%s: %s", path, mdb_strerror(rc));
    MDB_CHECK_GOTO(mdb_txn_begin(h->env, NULL, MDB_RDONLY, &h->txn));
    MDB_CHECK_GOTO(mdb_dbi_open(h->txn, NULL, 0, &h->dbi));
cleanup:
    if (rc) {
        if (h->txn) mdb_txn_abort(h->txn);
        if (h->env) mdb_env_close(h->env);
        memset(h, 0, sizeof *h);
    }
    return rc;
}

const ds_manifest_t *ds_reader_manifest(const ds_reader_t *r) { return &r->m; }
int64_t ds_reader_n_samples(const ds_reader_t *r) { return r->m.n_samples; }
int ds_reader_length(const ds_reader_t *r, int64_t i) {
    return i >= 0 && i < r->m.n_samples ? r->m.lengths[i] : -1;
}
int ds_reader_n_images(const ds_reader_t *r, int64_t i) {
    return i >= 0 && i < r->m.n_samples ? r->m.n_images[i] : -1;
}
int ds_reader_has_image(const ds_reader_t *r, int64_t i) {
    return i >= 0 && i < r->m.n_samples ? r->m.n_images[i] > 0 : -1;
}
int ds_reader_shard_of(const ds_reader_t *r, int64_t i) { return ds_manifest_shard_of(&r->m, i); }

int ds_reader_get(ds_reader_t *r, int64_t index, ds_record_t *out) {
    int rc = 0;
    int s = ds_manifest_shard_of(&r->m, index);
    CHECK_GOTO(s >= 0, LLAVA_EINVAL, "sample %lld out of range [0, %lld)", (long long)index, (long long)r->m.n_samples);
    RC_CHECK_GOTO(shard_ensure(r, s));
    uint8_t kb[8];
    ds_key_encode(index, kb);
    MDB_val k = {8, kb}, v;
    int mrc = mdb_get(r->sh[s].txn, r->sh[s].dbi, &k, &v);
    CHECK_GOTO(mrc != MDB_NOTFOUND, LLAVA_ENOTFOUND, "%s: sample %lld missing", r->m.shards[s].name, (long long)index);
    MDB_CHECK_GOTO(mrc);
    char err[200];
    CHECK_GOTO(((uintptr_t)v.mv_data & 3) == 0, LLAVA_EFORMAT, "%s: sample %lld: misaligned value", r->m.shards[s].name,
               (long long)index);
    CHECK_GOTO(ds_record_decode(v.mv_data, v.mv_size, 0, out, err, sizeof err) == 0, LLAVA_EFORMAT,
               "%s: sample %lld: %s", r->m.shards[s].name, (long long)index, err);
    CHECK_GOTO(out->n_tokens == r->m.lengths[index] && out->n_images == r->m.n_images[index] &&
                   (out->n_images == 0 || out->image_size == r->m.image_size),
               LLAVA_EFORMAT, "%s: sample %lld: header (%d tokens, %d images) disagrees with the manifest (%d, %d)",
               r->m.shards[s].name, (long long)index, out->n_tokens, out->n_images, r->m.lengths[index],
               r->m.n_images[index]);
cleanup:
    return rc;
}

int64_t ds_reader_verify_shard(ds_reader_t *r, int s, ds_damage_cb cb, void *ud) {
    int rc = 0;
    int64_t damaged = 0;
    MDB_cursor *c = NULL;
    if (s < 0 || s >= r->m.n_shards) return LLAVA_EINVAL;
    const ds_shard_t *sh = &r->m.shards[s];
    rc = shard_ensure(r, s);
    if (rc) {
        if (cb) cb(s, -1, "cannot open shard", ud);
        return rc;
    }
    MDB_CHECK_GOTO(mdb_cursor_open(r->sh[s].txn, r->sh[s].dbi, &c));
    uint64_t h = DS_FNV_INIT;
    int64_t expect = sh->first, bytes = 0;
    int keys_bad = 0;
    MDB_val k, v;
    char msg[300], err[200];
    int mrc;
    for (mrc = mdb_cursor_get(c, &k, &v, MDB_FIRST); mrc == 0; mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size == 8) h = ds_shard_fold(h, k.mv_data, v.mv_data, v.mv_size);
        bytes += (int64_t)v.mv_size;
        if (k.mv_size != 8) {
            keys_bad = 1;
            continue;
        }
        int64_t idx = ds_key_decode(k.mv_data);
        if (idx != expect) {
            snprintf(msg, sizeof msg, "key %lld where %lld was expected (missing or extra records)", (long long)idx,
                     (long long)expect);
            if (cb) cb(s, expect, msg, ud);
            keys_bad = 1;
        }
        expect = idx + 1;
        ds_record_t rec;
        if (ds_record_decode(v.mv_data, v.mv_size, 1, &rec, err, sizeof err) != 0) {
            damaged++;
            if (cb) cb(s, idx, err, ud);
        } else if (idx >= sh->first && idx < sh->first + sh->count &&
                   (rec.n_tokens != r->m.lengths[idx] || rec.n_images != r->m.n_images[idx])) {
            damaged++;
            snprintf(msg, sizeof msg, "header (%d tokens, %d images) disagrees with the manifest (%d, %d)", rec.n_tokens,
                     rec.n_images, r->m.lengths[idx], r->m.n_images[idx]);
            if (cb) cb(s, idx, msg, ud);
        }
    }
    CHECK_GOTO(mrc == MDB_NOTFOUND, LLAVA_EDB, "%s: cursor: %s", sh->name, mdb_strerror(mrc));
    if (expect != sh->first + sh->count) {
        snprintf(msg, sizeof msg, "records end at %lld, manifest says %lld", (long long)expect,
                 (long long)(sh->first + sh->count));
        if (cb) cb(s, -1, msg, ud);
        keys_bad = 1;
    }
    if (h != sh->checksum || bytes != sh->bytes) {
        snprintf(msg, sizeof msg, "shard checksum %016" PRIx64 " (%lld bytes), manifest says %016" PRIx64 " (%lld bytes)",
                 h, (long long)bytes, sh->checksum, (long long)sh->bytes);
        if (cb) cb(s, -1, msg, ud);
        keys_bad = 1;
    }
cleanup:
    if (c) mdb_cursor_close(c);
    return rc ? rc : damaged + keys_bad;
}

/* ---------------------------------------------------------------- collate */

void ds_pixels_normalize(const uint8_t *chw, int size, float *out) { image_normalize_clip(chw, size, out); }

int ds_collate_records(const ds_record_t *recs, int n, const collate_opts_t *o, batch_t *out) {
    int rc = 0;
    int *keep = NULL;
    memset(out, 0, sizeof *out);
    CHECK_GOTO(n > 0 && o && o->n_patches > 0, LLAVA_EINVAL, "collate: need n > 0 samples and n_patches > 0");
    keep = calloc((size_t)n, sizeof *keep);
    ALLOC_CHECK_GOTO(keep);
    int64_t T = 1;
    int n_img = 0, size = 0;
    for (int b = 0; b < n; b++) {
        const ds_record_t *r = &recs[b];
        keep[b] = ds_truncate_point(r->input_ids, r->n_tokens, o->n_patches, o->max_seq_len);
        int imgs = 0;
        for (int i = 0; i < keep[b]; i++) imgs += r->input_ids[i] == PLACEHOLDER;
        int placeholders = imgs;
        for (int i = keep[b]; i < r->n_tokens; i++) placeholders += r->input_ids[i] == PLACEHOLDER;
        CHECK_GOTO(placeholders == r->n_images, LLAVA_EFORMAT, "collate: record %d has %d placeholders for %d images", b,
                   placeholders, r->n_images);
        if (imgs) {
            CHECK_GOTO(size == 0 || size == r->image_size, LLAVA_EFORMAT, "collate: mixed image sizes %d and %d", size,
                       r->image_size);
            size = r->image_size;
        }
        n_img += imgs;
        int64_t len = ds_expanded_length(keep[b], imgs, o->n_patches);
        if (len > T) T = len;
    }
    CHECK_GOTO(T < (int64_t)1 << 30, LLAVA_EINVAL, "collate: row of %lld tokens", (long long)T);
    RC_CHECK_GOTO(batch_alloc(out, n, (int)T, n_img, size));
    int img = 0;
    size_t img_elems = (size_t)3 * (size_t)size * (size_t)size;
    for (int b = 0; b < n; b++) {
        const ds_record_t *r = &recs[b];
        int32_t *ids = out->input_ids + (size_t)b * (size_t)T, *lab = out->labels + (size_t)b * (size_t)T;
        int64_t t = 0;
        int ri = 0;
        for (int i = 0; i < keep[b]; i++) {
            if (r->input_ids[i] == PLACEHOLDER) {
                for (int p = 0; p < o->n_patches; p++, t++) {
                    ids[t] = o->image_token_index;
                    lab[t] = LLAVA_IGNORE_INDEX;
                }
                ds_pixels_normalize(r->pixels + (size_t)ri * img_elems, size, out->pixel_values + (size_t)img * img_elems);
                img++;
                ri++;
            } else {
                ids[t] = r->input_ids[i];
                lab[t] = r->labels[i];
                t++;
            }
        }
        out->lengths[b] = (int32_t)t;
        for (; t < T; t++) {
            ids[t] = o->pad_token_id;
            lab[t] = LLAVA_IGNORE_INDEX;
        }
    }
    batch_count_targets(out);
cleanup:
    free(keep);
    if (rc) batch_free(out);
    return rc;
}

int ds_collate(ds_reader_t *r, const int64_t *indices, int n, const collate_opts_t *opts, batch_t *out) {
    int rc = 0;
    memset(out, 0, sizeof *out);
    ds_record_t *recs = NULL;
    CHECK_GOTO(n > 0 && indices, LLAVA_EINVAL, "collate: empty batch");
    recs = calloc((size_t)n, sizeof *recs);
    ALLOC_CHECK_GOTO(recs);
    for (int i = 0; i < n; i++) RC_CHECK_GOTO(ds_reader_get(r, indices[i], &recs[i]));
    rc = ds_collate_records(recs, n, opts, out);
cleanup:
    free(recs);
    return rc;
}
