/* Tests common/safetensors: a Python-written fixture read exactly and re-written byte for byte, round trips of every
 * dtype, each malformed-file class (with its one-line message), sharded directories, and a seeded mutation loop.
 * Run: ctest -R test_safetensors (fixture made by tests/reference/make_safetensors_fixture.py). */
#include "common/err.h"
#include "common/safetensors.h"
#include "tests/test.h"

#include <fcntl.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIXTURE "fixtures/safetensors/python.safetensors"

static uint64_t rng = 0x2545f4914f6cdd1dull;
static uint64_t next_rand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static char *tmp_path(const char *name) {
    static char buf[8][512];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 512, "%s/%s", test_tmpdir(), name);
    return p;
}

static int write_bytes(const char *path, const void *buf, size_t n) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return -1;
    size_t w = n ? fwrite(buf, 1, n, fp) : 0;
    fclose(fp);
    return w == n ? 0 : -1;
}

static uint8_t *read_bytes(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long len = ftell(fp);
    rewind(fp);
    uint8_t *buf = malloc((size_t)len + 1);
    *n = fread(buf, 1, (size_t)len, fp);
    fclose(fp);
    return buf;
}

/* A file with this header text (length field = hlen_field, or the text's length when 0) and `dlen` data bytes. */
static const char *make_file(const char *name, const char *hdr, uint64_t hlen_field, size_t dlen) {
    size_t h = strlen(hdr);
    uint64_t hl = hlen_field ? hlen_field : h;
    uint8_t *buf = calloc(1, 8 + h + dlen + 1);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(hl >> (8 * i));
    memcpy(buf + 8, hdr, h);
    const char *p = tmp_path(name);
    write_bytes(p, buf, 8 + h + dlen);
    free(buf);
    return p;
}

/* Runs st_file_open with stderr captured; checks rc, that exactly one line was logged, and that it has `want`. */
static void open_expect(const char *path, int want_rc, const char *want) {
    const char *cap = tmp_path("stderr.txt");
    fflush(stderr);
    int saved = dup(2);
    int fd = open(cap, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    close(fd);
    st_file_t *f = NULL;
    int rc = st_file_open(path, &f);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    size_t n = 0;
    char *text = (char *)read_bytes(cap, &n);
    text[n] = 0;
    int lines = 0;
    for (size_t i = 0; i < n; i++) lines += text[i] == '\n';
    CHECKF(rc == want_rc, "%s: rc %d (%s), want %d; log: %s", want, rc, err_str(rc), want_rc, text);
    CHECKF(f == NULL, "%s: handle returned on failure", want);
    CHECKF(lines == 1, "%s: %d log lines: %s", want, lines, text);
    CHECKF(strstr(text, want) != NULL, "log lacks '%s': %s", want, text);
    CHECKF(strstr(text, path) != NULL, "log lacks the path: %s", text);
    free(text);
    st_file_close(&f);
}

/* The fixture's tensors, recomputed (see make_safetensors_fixture.py). */
typedef struct {
    float f32[24], f16[6], bf16[10], i32[6], u8[7], i64[4], scalar;
    uint16_t h16[6], hb16[10];
    int32_t vi32[6];
    int64_t vi64[4];
    uint8_t vu8[7];
} expect_t;

static void expect_fill(expect_t *e) {
    for (int i = 0; i < 24; i++) e->f32[i] = (float)i * 0.5f - 3.0f;
    for (int i = 0; i < 6; i++) e->h16[i] = f32_to_f16((float)i * 0.25f - 1.0f), e->f16[i] = f16_to_f32(e->h16[i]);
    for (int i = 0; i < 10; i++) e->hb16[i] = f32_to_bf16((float)i * 1.5f + 0.5f), e->bf16[i] = bf16_to_f32(e->hb16[i]);
    for (int i = 0; i < 4; i++) e->vi64[i] = (int64_t)i * 10000000000ll - 7, e->i64[i] = (float)e->vi64[i];
    for (int i = 0; i < 6; i++) e->vi32[i] = -3 * i, e->i32[i] = (float)e->vi32[i];
    for (int i = 0; i < 7; i++) e->vu8[i] = (uint8_t)(30 * i), e->u8[i] = (float)e->vu8[i];
    e->scalar = 2.5f;
}

static void check_tensor(const st_tensor_t *t, dtype_t dt, int ndim, const int64_t *shape, const float *want, int n) {
    CHECKF(t != NULL, "tensor missing");
    if (!t) return;
    CHECKF(t->dtype == dt && t->ndim == ndim, "%s: dtype %d ndim %d", t->name, t->dtype, t->ndim);
    for (int i = 0; i < ndim; i++) CHECKF(t->shape[i] == shape[i], "%s: shape[%d]", t->name, i);
    CHECK_EQ_INT(t->nbytes, (size_t)n * dtype_size(dt));
    float got[32];
    CHECK_RC(st_tensor_to_f32(t, got, n), 0);
    CHECK_CLOSE(t->name, got, want, n, 0, 0);
}

static void check_fixture_tensors(const st_file_t *f, const expect_t *e) {
    CHECK_EQ_INT(st_file_count(f), 8);
    check_tensor(st_file_find(f, "vision_model.f32"), DT_F32, 3, (int64_t[]){2, 3, 4}, e->f32, 24);
    check_tensor(st_file_find(f, "vision_model.f16"), DT_F16, 1, (int64_t[]){6}, e->f16, 6);
    check_tensor(st_file_find(f, "lm.bf16"), DT_BF16, 2, (int64_t[]){5, 2}, e->bf16, 10);
    check_tensor(st_file_find(f, "lm.i64"), DT_I64, 1, (int64_t[]){4}, e->i64, 4);
    check_tensor(st_file_find(f, "a.i32"), DT_I32, 2, (int64_t[]){3, 2}, e->i32, 6);
    check_tensor(st_file_find(f, "z.u8"), DT_U8, 1, (int64_t[]){7}, e->u8, 7);
    check_tensor(st_file_find(f, "scalar"), DT_F32, 0, NULL, &e->scalar, 1);
    check_tensor(st_file_find(f, "empty"), DT_F32, 2, (int64_t[]){0, 3}, NULL, 0);
    const st_tensor_t *t = st_file_find(f, "lm.i64");
    int64_t v;
    memcpy(&v, (const uint8_t *)t->data + 8 * 3, 8);
    CHECK_EQ_INT(v, 29999999993ll); /* exact, beyond float precision */
    CHECK(st_file_find(f, "nope") == NULL);
    CHECK(strcmp(st_file_at(f, 0)->name, "a.i32") == 0 && strcmp(st_file_at(f, 7)->name, "z.u8") == 0);
    CHECK(st_file_at(f, 8) == NULL && st_file_at(f, -1) == NULL);
    float one;
    CHECK_RC(st_tensor_to_f32(st_file_find(f, "a.i32"), &one, 1), LLAVA_ESHAPE);
}

static int fixture_items(const expect_t *e, st_write_item_t *it) {
    static const int64_t s_f32[] = {2, 3, 4}, s_f16[] = {6}, s_bf16[] = {5, 2}, s_i64[] = {4}, s_i32[] = {3, 2},
                         s_u8[] = {7}, s_empty[] = {0, 3};
    it[0] = (st_write_item_t){"vision_model.f32", DT_F32, 3, s_f32, e->f32};
    it[1] = (st_write_item_t){"vision_model.f16", DT_F16, 1, s_f16, e->h16};
    it[2] = (st_write_item_t){"lm.bf16", DT_BF16, 2, s_bf16, e->hb16};
    it[3] = (st_write_item_t){"lm.i64", DT_I64, 1, s_i64, e->vi64};
    it[4] = (st_write_item_t){"a.i32", DT_I32, 2, s_i32, e->vi32};
    it[5] = (st_write_item_t){"z.u8", DT_U8, 1, s_u8, e->vu8};
    it[6] = (st_write_item_t){"scalar", DT_F32, 0, NULL, &e->scalar};
    it[7] = (st_write_item_t){"empty", DT_F32, 2, s_empty, NULL};
    return 8;
}

static void test_python_fixture(void) {
    expect_t e;
    expect_fill(&e);
    st_file_t *f = NULL;
    CHECK_RC(st_file_open(FIXTURE, &f), 0);
    if (!f) return;
    CHECK(st_file_metadata(f, "format") && strcmp(st_file_metadata(f, "format"), "pt") == 0);
    CHECK(st_file_metadata(f, "other") == NULL);
    check_fixture_tensors(f, &e);
    st_file_close(&f);
    CHECK(f == NULL);

    /* our writer reproduces Python's bytes exactly */
    st_write_item_t it[8];
    int n = fixture_items(&e, it);
    const char *out = tmp_path("ours.safetensors");
    CHECK_RC(st_write(out, it, n, "{\"format\":\"pt\"}"), 0);
    size_t na = 0, nb = 0;
    uint8_t *a = read_bytes(FIXTURE, &na), *b = read_bytes(out, &nb);
    CHECKF(a && b && na == nb && memcmp(a, b, na) == 0, "written %zu bytes differ from Python's %zu", nb, na);
    free(a);
    free(b);
    CHECK_RC(st_file_open(out, &f), 0);
    if (f) check_fixture_tensors(f, &e);
    st_file_close(&f);
}

static void test_roundtrip(void) {
    /* all dtypes, odd sizes so data is unaligned, no metadata, names needing JSON escapes */
    float fv[5] = {1.5f, -2.25f, 1e30f, -0.0f, 3.0f};
    uint16_t h[3] = {f32_to_f16(0.5f), f32_to_f16(-7.0f), f32_to_f16(65504.0f)};
    uint16_t bh[3] = {f32_to_bf16(-1e20f), f32_to_bf16(3.0f), f32_to_bf16(0.0078125f)};
    int64_t l[2] = {INT64_MIN + 1, 42};
    int32_t w[3] = {-5, 0, 2147483647};
    uint8_t u[3] = {0, 128, 255};
    int64_t s5[] = {5}, s3[] = {3}, s2[] = {1, 2}, s31[] = {3, 1};
    st_write_item_t it[] = {
        {"u8 \"quoted\"\\", DT_U8, 1, s3, u}, {"f32", DT_F32, 1, s5, fv},   {"f16", DT_F16, 1, s3, h},
        {"bf16", DT_BF16, 1, s3, bh},        {"i64", DT_I64, 2, s2, l},    {"i32\nnl", DT_I32, 2, s31, w},
    };
    const char *p = tmp_path("rt.safetensors");
    CHECK_RC(st_write(p, it, 6, "{\"k\":\"v\\\"x\",\"format\":\"pt\"}"), 0);
    st_file_t *f = NULL;
    CHECK_RC(st_file_open(p, &f), 0);
    if (!f) return;
    CHECK_EQ_INT(st_file_count(f), 6);
    CHECK(strcmp(st_file_metadata(f, "k"), "v\"x") == 0);
    for (int i = 0; i < 6; i++) {
        const st_tensor_t *t = st_file_find(f, it[i].name);
        CHECKF(t && t->dtype == it[i].dtype && t->ndim == it[i].ndim, "%s", it[i].name);
        if (!t) continue;
        for (int d = 0; d < t->ndim; d++) CHECK_EQ_INT(t->shape[d], it[i].shape[d]);
        CHECK(memcmp(t->data, it[i].data, t->nbytes) == 0);
    }
    float got[5];
    CHECK_RC(st_tensor_to_f32(st_file_find(f, "bf16"), got, 3), 0);
    CHECK(got[1] == 3.0f && got[2] == 0.0078125f);
    CHECK_RC(st_tensor_to_f32(st_file_find(f, "f16"), got, 3), 0);
    CHECK(got[0] == 0.5f && got[1] == -7.0f && got[2] == 65504.0f);
    st_file_close(&f);
    size_t n = 0;
    uint8_t *raw = read_bytes(p, &n);
    CHECK(raw && (raw[0] | (raw[1] << 8)) % 8 == 0); /* header padded to a multiple of 8 */
    free(raw);

    /* header only / empty file list */
    CHECK_RC(st_write(tmp_path("none.safetensors"), NULL, 0, NULL), 0);
    CHECK_RC(st_file_open(tmp_path("none.safetensors"), &f), 0);
    CHECK_EQ_INT(st_file_count(f), 0);
    st_file_close(&f);
    CHECK_RC(st_write(tmp_path("meta.safetensors"), NULL, 0, "{\"a\":\"b\"}"), 0);
    CHECK_RC(st_file_open(tmp_path("meta.safetensors"), &f), 0);
    CHECK(f && strcmp(st_file_metadata(f, "a"), "b") == 0);
    st_file_close(&f);

    /* writer rejects bad items and metadata; no temp files are left behind */
    log_set_level(LOG_NONE);
    int64_t neg[] = {-1};
    st_write_item_t bad = {"x", DT_F32, 1, neg, fv};
    CHECK_RC(st_write(tmp_path("bad.safetensors"), &bad, 1, NULL), LLAVA_EINVAL);
    st_write_item_t dup[] = {{"x", DT_F32, 1, s5, fv}, {"x", DT_F32, 1, s5, fv}};
    CHECK_RC(st_write(tmp_path("bad.safetensors"), dup, 2, NULL), LLAVA_EINVAL);
    CHECK_RC(st_write(tmp_path("bad.safetensors"), it, 1, "[1]"), LLAVA_EINVAL);
    CHECK_RC(st_write(tmp_path("bad.safetensors"), it, 1, "{\"a\":1}"), LLAVA_EINVAL);
    CHECK_RC(st_write(tmp_path("no/such/dir.safetensors"), it, 1, NULL), LLAVA_EIO);
    log_set_level(LOG_INFO);
    CHECK(access(tmp_path("bad.safetensors"), F_OK) != 0);
}

static void test_bad_files(void) {
    const char *ok = "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    st_file_t *f = NULL;
    CHECK_RC(st_file_open(make_file("ok.st", ok, 0, 8), &f), 0);
    st_file_close(&f);

    open_expect(tmp_path("missing.st"), LLAVA_ENOTFOUND, "cannot open");
    write_bytes(tmp_path("empty.st"), "", 0);
    open_expect(tmp_path("empty.st"), LLAVA_EFORMAT, "too short");
    open_expect(make_file("zero.st", "", 0, 0), LLAVA_EFORMAT, "does not start with a JSON object");
    write_bytes(tmp_path("three.st"), "abc", 3);
    open_expect(tmp_path("three.st"), LLAVA_EFORMAT, "too short");
    open_expect(make_file("past.st", ok, 1000, 8), LLAVA_EFORMAT, "runs past the end");
    open_expect(make_file("huge.st", ok, 1ull << 40, 8), LLAVA_EFORMAT, "exceeds the limit");
    open_expect(make_file("huge2.st", ok, UINT64_MAX, 8), LLAVA_EFORMAT, "exceeds the limit");
    open_expect(make_file("nojson.st", "{not json at all}", 0, 0), LLAVA_EFORMAT, "not valid JSON");
    open_expect(make_file("array.st", "[1,2]", 0, 0), LLAVA_EFORMAT, "does not start with a JSON object");
    open_expect(make_file("trail.st", "{} x", 0, 0), LLAVA_EFORMAT, "trailing bytes");
    open_expect(make_file("outside.st", "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 0, 8),
                LLAVA_EFORMAT, "tensor 't': data_offsets [4, 12] outside the data section of 8 bytes");
    open_expect(make_file("rev.st", "{\"t\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 0, 8),
                LLAVA_EFORMAT, "outside the data section");
    open_expect(make_file("size.st",
                          "{\"vision_model.x.weight\":{\"dtype\":\"F32\",\"shape\":[5,6],\"data_offsets\":[0,100]}}",
                          0, 200),
                LLAVA_EFORMAT,
                "tensor 'vision_model.x.weight': data_offsets [0, 100] do not match shape [5, 6] x F32 = 120 bytes");
    open_expect(make_file("overlap.st",
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                          "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                          0, 12),
                LLAVA_EFORMAT, "tensor 'b': data overlaps tensor 'a'");
    open_expect(make_file("f64.st", "{\"t\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 0, 8),
                LLAVA_EFORMAT, "tensor 't': unsupported dtype 'F64'");
    open_expect(make_file("q4.st", "{\"t\":{\"dtype\":\"Q4_K\",\"shape\":[1],\"data_offsets\":[0,8]}}", 0, 8),
                LLAVA_EFORMAT, "unsupported dtype 'Q4_K'");
    open_expect(make_file("nodt.st", "{\"t\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4), LLAVA_EFORMAT,
                "tensor 't': missing or non-string dtype");
    open_expect(make_file("neg.st", "{\"t\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 0, 8),
                LLAVA_EFORMAT, "tensor 't': shape[0] is not a non-negative integer");
    open_expect(make_file("frac.st", "{\"t\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,8]}}", 0, 8),
                LLAVA_EFORMAT, "shape[0] is not a non-negative integer");
    open_expect(make_file("strshape.st", "{\"t\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 0,
                          8),
                LLAVA_EFORMAT, "shape[0]");
    open_expect(make_file("noshape.st", "{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 0, 8), LLAVA_EFORMAT,
                "missing or non-array shape");
    open_expect(make_file("dims.st", "{\"t\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}",
                          0, 1),
                LLAVA_EFORMAT, "shape has 9 dims");
    open_expect(make_file("ovf.st",
                          "{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
                          "\"data_offsets\":[0,8]}}",
                          0, 8),
                LLAVA_EFORMAT, "shape overflows");
    open_expect(make_file("nooff.st", "{\"t\":{\"dtype\":\"F32\",\"shape\":[2]}}", 0, 8), LLAVA_EFORMAT,
                "tensor 't': missing data_offsets");
    open_expect(make_file("off3.st", "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4,8]}}", 0, 8),
                LLAVA_EFORMAT, "missing data_offsets or not two");
    open_expect(make_file("entry.st", "{\"t\":5}", 0, 0), LLAVA_EFORMAT, "tensor 't': entry is not a JSON object");
    open_expect(make_file("dupname.st",
                          "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                          "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                          0, 2),
                LLAVA_EFORMAT, "tensor 'a': appears twice");
    open_expect(make_file("meta.st", "{\"__metadata__\":{\"format\":1}}", 0, 0), LLAVA_EFORMAT,
                "__metadata__ key 'format': value is not a string");
    open_expect(make_file("meta2.st", "{\"__metadata__\":[]}", 0, 0), LLAVA_EFORMAT, "__metadata__ is not");

    /* every truncation of the Python fixture fails cleanly (its last tensor ends at the end of the file) */
    size_t n = 0;
    uint8_t *full = read_bytes(FIXTURE, &n);
    const char *p = tmp_path("trunc.st");
    log_set_level(LOG_NONE);
    int bad = 0;
    for (size_t len = 0; len < n; len++) {
        write_bytes(p, full, len);
        int rc = st_file_open(p, &f);
        bad += rc != LLAVA_EFORMAT || f != NULL;
        st_file_close(&f);
    }
    log_set_level(LOG_INFO);
    CHECKF(bad == 0, "%d of %zu truncations not rejected with LLAVA_EFORMAT", bad, n);
    free(full);
}

/* 20000 seeded mutations of the fixture: byte flips, truncations, header-length edits, JSON-char splices. Each
 * must open or fail with LLAVA_EFORMAT; opened files are read in full (ASan catches any out-of-bounds access). */
static void test_mutations(void) {
    size_t n = 0;
    uint8_t *orig = read_bytes(FIXTURE, &n);
    uint8_t *buf = malloc(n + 64);
    const char *p = tmp_path("mut.st");
    static const char k_json[] = "{}[]\",:-0123456789e.tn ";
    int bad = 0, opened = 0;
    log_set_level(LOG_NONE);
    for (int iter = 0; iter < 20000; iter++) {
        memcpy(buf, orig, n);
        size_t len = n;
        int kind = (int)(next_rand() % 5);
        int edits = 1 + (int)(next_rand() % 4);
        for (int e = 0; e < edits; e++) {
            size_t at = (size_t)(next_rand() % len);
            if (kind == 0) buf[at] ^= (uint8_t)(1u << (next_rand() % 8));
            else if (kind == 1) buf[at] = (uint8_t)next_rand();
            else if (kind == 2) buf[8 + next_rand() % 520] = (uint8_t)k_json[next_rand() % (sizeof k_json - 1)];
            else if (kind == 3) buf[next_rand() % 8] = (uint8_t)next_rand();
        }
        if (kind == 4 || next_rand() % 8 == 0) len = (size_t)(next_rand() % (n + 1));
        write_bytes(p, buf, len);
        st_file_t *f = NULL;
        int rc = st_file_open(p, &f);
        if (rc == 0) {
            opened++;
            for (int i = 0; i < st_file_count(f); i++) {
                const st_tensor_t *t = st_file_at(f, i);
                int64_t ne = st_tensor_numel(t);
                float *tmp = malloc((size_t)(ne > 0 ? ne : 1) * sizeof(float));
                if (st_tensor_to_f32(t, tmp, ne) != 0) bad++;
                free(tmp);
            }
        } else if (rc != LLAVA_EFORMAT) {
            bad++;
        }
        st_file_close(&f);
    }
    log_set_level(LOG_INFO);
    CHECKF(bad == 0, "%d mutations gave an unexpected result", bad);
    CHECKF(opened > 100 && opened < 20000, "%d of 20000 mutated files opened", opened);
    printf("mutations: %d of 20000 opened, the rest rejected\n", opened);
    free(buf);
    free(orig);
}

static void test_sets(void) {
    expect_t e;
    expect_fill(&e);
    st_write_item_t it[8];
    int n = fixture_items(&e, it);
    char single[512], sharded[512];
    snprintf(single, sizeof single, "%s/single", test_tmpdir());
    snprintf(sharded, sizeof sharded, "%s/sharded", test_tmpdir());
    mkdir(single, 0755);
    mkdir(sharded, 0755);

    st_set_t *s = NULL;
    log_set_level(LOG_NONE);
    CHECK_RC(st_set_open_dir(single, &s), LLAVA_ENOTFOUND); /* empty directory */
    log_set_level(LOG_INFO);
    CHECK_RC(st_write_sharded(single, it, n, 1000, "{\"format\":\"pt\"}"), 0);
    CHECK_RC(st_set_open_dir(single, &s), 0);
    CHECK_EQ_INT(st_set_count(s), 8);
    CHECK(st_set_metadata(s, "format") && strcmp(st_set_metadata(s, "format"), "pt") == 0);
    float got[24];
    CHECK_RC(st_tensor_to_f32(st_set_find(s, "vision_model.f32"), got, 24), 0);
    CHECK_CLOSE("single f32", got, e.f32, 24, 0, 0);
    st_set_close(&s);

    /* 40-byte shards: f32 (96 B) and i64 (32 B) ... split as huggingface_hub does */
    CHECK_RC(st_write_sharded(sharded, it, n, 40, "{\"format\":\"pt\"}"), 0);
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", sharded);
    CHECK(access(path, F_OK) != 0);
    /* items: f32 96 (own) | f16 12 + bf16 20 | i64 32 | i32 24 + u8 7 + scalar 4 + empty 0 -> 4 shards */
    const char *want_index =
        "{\n  \"metadata\": {\n    \"total_parameters\": 58,\n    \"total_size\": 195\n  },\n  \"weight_map\": {\n"
        "    \"a.i32\": \"model-00004-of-00004.safetensors\",\n"
        "    \"empty\": \"model-00004-of-00004.safetensors\",\n"
        "    \"lm.bf16\": \"model-00002-of-00004.safetensors\",\n"
        "    \"lm.i64\": \"model-00003-of-00004.safetensors\",\n"
        "    \"scalar\": \"model-00004-of-00004.safetensors\",\n"
        "    \"vision_model.f16\": \"model-00002-of-00004.safetensors\",\n"
        "    \"vision_model.f32\": \"model-00001-of-00004.safetensors\",\n"
        "    \"z.u8\": \"model-00004-of-00004.safetensors\"\n  }\n}\n";
    snprintf(path, sizeof path, "%s/%s", sharded, ST_INDEX_NAME);
    size_t ilen = 0;
    char *index = (char *)read_bytes(path, &ilen);
    CHECK(index != NULL);
    if (index) {
        index[ilen] = 0;
        CHECKF(strcmp(index, want_index) == 0, "index:\n%s", index);
    }
    free(index);
    CHECK_RC(st_set_open_dir(sharded, &s), 0);
    CHECK_EQ_INT(st_set_count(s), 8);
    CHECK(st_set_metadata(s, "total_size") && strcmp(st_set_metadata(s, "total_size"), "195") == 0);
    CHECK(strcmp(st_set_at(s, 0)->name, "a.i32") == 0 && st_set_at(s, 8) == NULL);
    CHECK(st_set_find(s, "missing") == NULL);
    CHECK_RC(st_tensor_to_f32(st_set_find(s, "lm.bf16"), got, 10), 0);
    CHECK_CLOSE("sharded bf16", got, e.bf16, 10, 0, 0);
    CHECK_RC(st_tensor_to_f32(st_set_find(s, "z.u8"), got, 7), 0);
    CHECK_CLOSE("sharded u8", got, e.u8, 7, 0, 0);
    st_set_close(&s);
    CHECK(s == NULL);

    /* index naming a tensor its shard lacks, a path outside the directory, then a missing shard */
    log_set_level(LOG_NONE);
    FILE *fp = fopen(path, "w");
    fprintf(fp, "{\"weight_map\":{\"lm.i64\":\"model-00001-of-00004.safetensors\"}}");
    fclose(fp);
    CHECK_RC(st_set_open_dir(sharded, &s), LLAVA_EFORMAT);
    fp = fopen(path, "w");
    fprintf(fp, "{\"weight_map\":{\"lm.i64\":\"../single/model.safetensors\"}}");
    fclose(fp);
    CHECK_RC(st_set_open_dir(sharded, &s), LLAVA_EFORMAT);
    fp = fopen(path, "w");
    fprintf(fp, "{\"weight_map\":{\"lm.i64\":\"model-00009-of-00009.safetensors\"}}");
    fclose(fp);
    CHECK_RC(st_set_open_dir(sharded, &s), LLAVA_ENOTFOUND);
    fp = fopen(path, "w");
    fprintf(fp, "{\"weight_map\":[]}");
    fclose(fp);
    CHECK_RC(st_set_open_dir(sharded, &s), LLAVA_EFORMAT);
    log_set_level(LOG_INFO);
    CHECK(s == NULL);
}

int main(void) {
    test_python_fixture();
    test_roundtrip();
    test_bad_files();
    test_mutations();
    test_sets();
    return test_finish();
}
