/* Tests common/dataset: record round trip and damage detection, truncation after image expansion, collate (expansion,
 * labels, right padding, pixel normalisation, targets), the LMDB reader and verify on a hand-made dataset, manifest
 * parse errors. Run: ctest -R test_dataset */
#include <lmdb.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/dataset.h"
#include "common/err.h"
#include "tests/test.h"

#define P LLAVA_PLACEHOLDER_TEST
enum { LLAVA_PLACEHOLDER_TEST = -200, IGN = -100 };

static void test_record_roundtrip(void) {
    int32_t ids[6] = {1, P, 10, 11, 12, 2}, lab[6] = {IGN, IGN, IGN, 11, 12, 2};
    uint8_t pix[3 * 4 * 4];
    for (int i = 0; i < 48; i++) pix[i] = (uint8_t)(i * 5);
    size_t cap = ds_record_size(5, 6, 1, 4), len = 0;
    CHECK_EQ_INT(cap % 4, 0);
    uint8_t *buf = malloc(cap);
    CHECK_RC(ds_record_encode(buf, cap, &len, "abcde", ids, lab, 6, 1, 4, DS_FLAG_PAD, pix), 0);
    CHECK_EQ_INT(len, cap);
    ds_record_t r;
    char err[200];
    CHECK_RC(ds_record_decode(buf, len, 1, &r, err, sizeof err), 0);
    CHECK_EQ_INT(r.id_len, 5);
    CHECK(!memcmp(r.id, "abcde", 5));
    CHECK_EQ_INT(r.n_tokens, 6);
    CHECK_EQ_INT(r.n_images, 1);
    CHECK_EQ_INT(r.image_size, 4);
    CHECK_EQ_INT(r.flags, DS_FLAG_PAD | DS_FLAG_HAS_IMAGE);
    CHECK(!memcmp(r.input_ids, ids, sizeof ids));
    CHECK(!memcmp(r.labels, lab, sizeof lab));
    CHECK(!memcmp(r.pixels, pix, sizeof pix));
    /* the capacity must suffice */
    CHECK_RC(ds_record_encode(buf, cap - 4, &len, "abcde", ids, lab, 6, 1, 4, 0, pix), LLAVA_EINVAL);
    CHECK_RC(ds_record_encode(buf, cap, &len, "abcde", ids, lab, 6, 1, 4, 0, NULL), LLAVA_EINVAL);
    CHECK_RC(ds_record_encode(buf, cap, &len, "abcde", ids, lab, 6, 1, 4, 0, pix), 0);
    /* a flipped pixel is caught by the checksum, not by the header check */
    buf[len - 10] ^= 1;
    CHECK_RC(ds_record_decode(buf, len, 0, &r, NULL, 0), 0);
    CHECK_RC(ds_record_decode(buf, len, 1, &r, err, sizeof err), LLAVA_EFORMAT);
    CHECK(strstr(err, "checksum") != NULL);
    buf[len - 10] ^= 1;
    /* header damage: magic, token count, truncation */
    buf[0] ^= 0xff;
    CHECK_RC(ds_record_decode(buf, len, 0, &r, err, sizeof err), LLAVA_EFORMAT);
    buf[0] ^= 0xff;
    buf[8] += 1;
    CHECK_RC(ds_record_decode(buf, len, 0, &r, err, sizeof err), LLAVA_EFORMAT);
    buf[8] -= 1;
    CHECK_RC(ds_record_decode(buf, len - 4, 0, &r, err, sizeof err), LLAVA_EFORMAT);
    CHECK_RC(ds_record_decode(buf, 10, 0, &r, err, sizeof err), LLAVA_EFORMAT);
    free(buf);
    /* text-only, empty id; a long id is cut at a UTF-8 boundary */
    int32_t t[3] = {1, 7, 2}, tl[3] = {IGN, 7, 2};
    uint8_t small[64];
    CHECK_RC(ds_record_encode(small, sizeof small, &len, "", t, tl, 3, 0, 0, 0, NULL), 0);
    CHECK_RC(ds_record_decode(small, len, 1, &r, NULL, 0), 0);
    CHECK_EQ_INT(r.n_images, 0);
    CHECK_EQ_INT(r.flags & DS_FLAG_HAS_IMAGE, 0);
    char longid[400];
    memset(longid, 'x', sizeof longid);
    memcpy(longid + DS_ID_MAX - 1, "\xc3\xa9", 2); /* a 2-byte character straddling the limit */
    longid[sizeof longid - 1] = 0;
    uint8_t big[1024];
    CHECK_RC(ds_record_encode(big, sizeof big, &len, longid, t, tl, 3, 0, 0, 0, NULL), 0);
    CHECK_RC(ds_record_decode(big, len, 1, &r, NULL, 0), 0);
    CHECK_EQ_INT(r.id_len, DS_ID_MAX - 1);
}

static void test_truncate(void) {
    int32_t ids[6] = {1, 5, P, 6, 7, 8};
    CHECK_EQ_INT(ds_expanded_length(6, 1, 4), 9);
    CHECK_EQ_INT(ds_truncate_point(ids, 6, 4, 0), 6);
    CHECK_EQ_INT(ds_truncate_point(ids, 6, 4, 9), 6);
    CHECK_EQ_INT(ds_truncate_point(ids, 6, 4, 8), 5);
    CHECK_EQ_INT(ds_truncate_point(ids, 6, 4, 6), 3); /* 1 5 [4 patches] fits exactly */
    CHECK_EQ_INT(ds_truncate_point(ids, 6, 4, 5), 2); /* the cut falls inside the image run: cut before it */
    CHECK_EQ_INT(ds_truncate_point(ids, 6, 4, 3), 2);
    CHECK_EQ_INT(ds_truncate_point(ids, 6, 4, 1), 1);
    int32_t lab[6] = {IGN, IGN, IGN, 6, IGN, 8};
    CHECK_EQ_INT(ds_count_targets(lab, 6), 2);
    CHECK_EQ_INT(ds_count_targets(lab, 4), 1);
    int32_t lab0[2] = {9, IGN};
    CHECK_EQ_INT(ds_count_targets(lab0, 2), 0); /* position 0 never counts (shifted loss) */
}

/* Two records: an image one (S=2) and a text-only one. */
static void make_records(uint8_t *b1, uint8_t *b2, ds_record_t *r) {
    static const int32_t ids1[5] = {1, P, 20, 21, 2}, lab1[5] = {IGN, IGN, 20, 21, 2};
    static const int32_t ids2[3] = {1, 30, 2}, lab2[3] = {IGN, 30, 2};
    uint8_t pix[12];
    for (int i = 0; i < 12; i++) pix[i] = (uint8_t)(i * 20);
    size_t len;
    CHECK_RC(ds_record_encode(b1, 256, &len, "img", ids1, lab1, 5, 1, 2, 0, pix), 0);
    CHECK_RC(ds_record_decode(b1, len, 1, &r[0], NULL, 0), 0);
    CHECK_RC(ds_record_encode(b2, 256, &len, "txt", ids2, lab2, 3, 0, 0, 0, NULL), 0);
    CHECK_RC(ds_record_decode(b2, len, 1, &r[1], NULL, 0), 0);
}

static void test_collate(void) {
    _Alignas(8) uint8_t b1[256], b2[256];
    ds_record_t r[2];
    make_records(b1, b2, r);
    collate_opts_t o = {.image_token_index = 99, .n_patches = 3, .pad_token_id = 0, .max_seq_len = 0};
    batch_t b;
    CHECK_RC(ds_collate_records(r, 2, &o, &b), 0);
    CHECK_EQ_INT(b.B, 2);
    CHECK_EQ_INT(b.T, 7);
    int32_t want_ids[14] = {1, 99, 99, 99, 20, 21, 2, 1, 30, 2, 0, 0, 0, 0};
    int32_t want_lab[14] = {IGN, IGN, IGN, IGN, 20, 21, 2, IGN, 30, 2, IGN, IGN, IGN, IGN};
    CHECK(!memcmp(b.input_ids, want_ids, sizeof want_ids));
    CHECK(!memcmp(b.labels, want_lab, sizeof want_lab));
    CHECK_EQ_INT(b.lengths[0], 7);
    CHECK_EQ_INT(b.lengths[1], 3);
    CHECK_EQ_INT(b.n_images, 1);
    CHECK_EQ_INT(b.image_size, 2);
    CHECK_EQ_INT(b.n_targets, 5);
    float want0 = (0.0f / 255.0f - 0.48145466f) / 0.26862954f, want11 = (220.0f / 255.0f - 0.40821073f) / 0.27577711f;
    CHECK(fabsf(b.pixel_values[0] - want0) < 1e-6f);
    CHECK(fabsf(b.pixel_values[11] - want11) < 1e-6f);
    batch_free(&b);
    /* truncation inside the image run cuts the row at the run's start; the image is dropped */
    o.max_seq_len = 3;
    CHECK_RC(ds_collate_records(r, 2, &o, &b), 0);
    CHECK_EQ_INT(b.T, 3);
    CHECK_EQ_INT(b.lengths[0], 1);
    CHECK_EQ_INT(b.lengths[1], 3);
    CHECK_EQ_INT(b.n_images, 0);
    CHECK_EQ_INT(b.n_targets, 2);
    batch_free(&b);
    /* a cut after the run keeps the image */
    o.max_seq_len = 5;
    CHECK_RC(ds_collate_records(r, 2, &o, &b), 0);
    CHECK_EQ_INT(b.T, 5);
    CHECK_EQ_INT(b.lengths[0], 5);
    CHECK_EQ_INT(b.n_images, 1);
    CHECK_EQ_INT(b.input_ids[4], 20);
    CHECK_EQ_INT(b.n_targets, 1 + 2);
    batch_free(&b);
    /* text-only batch: no pixels */
    o.max_seq_len = 0;
    CHECK_RC(ds_collate_records(&r[1], 1, &o, &b), 0);
    CHECK_EQ_INT(b.n_images, 0);
    CHECK_EQ_INT(b.T, 3);
    batch_free(&b);
    o.n_patches = 0;
    CHECK_RC(ds_collate_records(r, 2, &o, &b), LLAVA_EINVAL);
}

static const char *MANIFEST_OK =
    "{\"format\": \"llava-dataset\", \"version\": 1, \"source_json\": \"a.json\", \"images_dir\": \"img\","
    " \"tokenizer\": \"t.model\", \"tokenizer_hash\": \"0123456789abcdef\", \"template\": \"plain\","
    " \"image_size\": 2, \"patch_size\": 14, \"pad\": false, \"max_seq_len\": 0, \"n_samples\": 3,"
    " \"counts\": {\"samples\": 3, \"images\": 1, \"text_only\": 2, \"bad\": 0, \"source_records\": 3},"
    " \"shards\": [{\"name\": \"shard-00000.lmdb\", \"first\": 0, \"count\": 2, \"bytes\": 1, \"checksum\": \"0000000000000001\"},"
    " {\"name\": \"shard-00001.lmdb\", \"first\": 2, \"count\": 1, \"bytes\": 1, \"checksum\": \"0000000000000002\"}],"
    " \"lengths\": [5, 3, 3], \"n_images\": [1, 0, 0]}";

static char *replace(const char *s, const char *from, const char *to) {
    const char *p = strstr(s, from);
    if (!p) return NULL;
    char *o = malloc(strlen(s) + strlen(to) + 1);
    memcpy(o, s, (size_t)(p - s));
    strcpy(o + (p - s), to);
    strcat(o, p + strlen(from));
    return o;
}

static void test_manifest_parse(void) {
    ds_manifest_t m;
    CHECK_RC(ds_manifest_parse(MANIFEST_OK, strlen(MANIFEST_OK), "ok", &m), 0);
    CHECK_EQ_INT(m.n_samples, 3);
    CHECK_EQ_INT(m.n_shards, 2);
    CHECK_EQ_INT(m.shards[1].checksum, 2);
    CHECK_EQ_INT(m.tokenizer_hash, 0x0123456789abcdefLL);
    CHECK_EQ_INT(ds_manifest_shard_of(&m, 2), 1);
    CHECK_EQ_INT(ds_manifest_shard_of(&m, 3), -1);
    /* write + load round trip */
    const char *dir = test_tmpdir();
    CHECK_RC(ds_manifest_write(dir, &m, "now"), 0);
    ds_manifest_t m2;
    CHECK_RC(ds_manifest_load(dir, &m2), 0);
    CHECK_EQ_INT(m2.n_samples, 3);
    CHECK_EQ_INT(m2.lengths[0], 5);
    CHECK(!strcmp(m2.template_name, "plain"));
    ds_manifest_free(&m2);
    ds_manifest_free(&m);
    const char *edits[][2] = {
        {"\"llava-dataset\"", "\"other\""},
        {"\"version\": 1", "\"version\": 9"},
        {"\"n_samples\": 3", "\"n_samples\": 0"},
        {"\"lengths\": [5, 3, 3]", "\"lengths\": [5, 3]"},
        {"\"n_images\": [1, 0, 0]", "\"n_images\": [1, -1, 0]"},
        {"\"n_images\": [1, 0, 0]", "\"n_images\": [1, 1, 0]"},                    /* counts.images disagrees */
        {"\"first\": 2", "\"first\": 1"},                                           /* gap/overlap */
        {"\"count\": 1", "\"count\": 2"},                                           /* covers more than n_samples */
        {"\"0000000000000002\"", "\"xyz\""},
        {"\"shard-00001.lmdb\"", "\"../x.lmdb\""},
        {"\"pad\": false", "\"pad\": 0"},
        {"\"tokenizer\": \"t.model\", ", ""},
        {"\"n_samples\": 3,", "\"n_samples\": 3"},                                  /* invalid JSON */
        {"\"image_size\": 2", "\"image_size\": 2.5"},
    };
    for (size_t i = 0; i < sizeof edits / sizeof edits[0]; i++) {
        char *bad = replace(MANIFEST_OK, edits[i][0], edits[i][1]);
        CHECKF(bad != NULL, "edit %zu does not apply", i);
        if (!bad) continue;
        CHECKF(ds_manifest_parse(bad, strlen(bad), "bad", &m) == LLAVA_EFORMAT, "bad manifest %zu accepted", i);
        free(bad);
    }
    CHECK_RC(ds_manifest_load("/nonexistent/dataset", &m), LLAVA_ENOTFOUND);
}

/* Writes records into an LMDB shard the way ingest does; returns the shard checksum and bytes. */
static void write_shard(const char *path, int64_t first, const ds_record_t *recs, uint8_t *const *bufs,
                        const size_t *lens, int n, ds_shard_t *sh) {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    char lock[800];
    (void)recs;
    snprintf(lock, sizeof lock, "%s-lock", path);
    unlink(path);
    unlink(lock);
    CHECK(mdb_env_create(&env) == 0);
    mdb_env_set_mapsize(env, 1 << 20);
    CHECK(mdb_env_open(env, path, MDB_NOSUBDIR, 0644) == 0);
    CHECK(mdb_txn_begin(env, NULL, 0, &txn) == 0);
    CHECK(mdb_dbi_open(txn, NULL, 0, &dbi) == 0);
    sh->checksum = DS_FNV_INIT;
    sh->bytes = 0;
    for (int i = 0; i < n; i++) {
        uint8_t kb[8];
        ds_key_encode(first + i, kb);
        MDB_val k = {8, kb}, v = {lens[i], bufs[i]};
        CHECK(mdb_put(txn, dbi, &k, &v, MDB_APPEND) == 0);
        sh->checksum = ds_shard_fold(sh->checksum, kb, bufs[i], lens[i]);
        sh->bytes += (int64_t)lens[i];
    }
    CHECK(mdb_txn_commit(txn) == 0);
    mdb_env_close(env);
    sh->first = first;
    sh->count = n;
}

static int damage_count;
static void on_damage(int shard, int64_t index, const char *msg, void *ud) {
    (void)ud;
    damage_count++;
    fprintf(stderr, "  (expected) damage in shard %d sample %lld: %s\n", shard, (long long)index, msg);
}

static void test_reader(void) {
    char dir[600], path[700];
    snprintf(dir, sizeof dir, "%s/ds", test_tmpdir());
    mkdir(dir, 0755);
    _Alignas(8) uint8_t b1[256], b2[256], b3[256];
    ds_record_t r[3];
    make_records(b1, b2, r);
    size_t len3;
    int32_t ids3[4] = {1, 40, 41, 2}, lab3[4] = {IGN, IGN, 41, 2};
    CHECK_RC(ds_record_encode(b3, sizeof b3, &len3, "third", ids3, lab3, 4, 0, 0, 0, NULL), 0);
    uint8_t *bufs[3] = {b1, b2, b3};
    size_t lens[3] = {ds_record_size(3, 5, 1, 2), ds_record_size(3, 3, 0, 0), len3};
    ds_manifest_t m;
    CHECK_RC(ds_manifest_parse(MANIFEST_OK, strlen(MANIFEST_OK), "ok", &m), 0);
    m.lengths[2] = 4;
    snprintf(path, sizeof path, "%s/shard-00000.lmdb", dir);
    write_shard(path, 0, r, bufs, lens, 2, &m.shards[0]);
    snprintf(path, sizeof path, "%s/shard-00001.lmdb", dir);
    write_shard(path, 2, r, bufs + 2, lens + 2, 1, &m.shards[1]);
    CHECK_RC(ds_manifest_write(dir, &m, NULL), 0);
    ds_reader_t *rd = NULL;
    CHECK_RC(ds_reader_open(dir, &rd), 0);
    if (!rd) return;
    CHECK_EQ_INT(ds_reader_n_samples(rd), 3);
    CHECK_EQ_INT(ds_reader_length(rd, 0), 5);
    CHECK_EQ_INT(ds_reader_has_image(rd, 0), 1);
    CHECK_EQ_INT(ds_reader_has_image(rd, 1), 0);
    CHECK_EQ_INT(ds_reader_shard_of(rd, 2), 1);
    CHECK_EQ_INT(ds_reader_length(rd, 3), -1);
    ds_record_t got;
    CHECK_RC(ds_reader_get(rd, 2, &got), 0);
    CHECK_EQ_INT(got.n_tokens, 4);
    CHECK(!memcmp(got.id, "third", 5));
    CHECK_RC(ds_reader_get(rd, 3, &got), LLAVA_EINVAL);
    int64_t idx[3] = {2, 0, 1};
    collate_opts_t o = {.image_token_index = 99, .n_patches = 3, .pad_token_id = 0, .max_seq_len = 0};
    batch_t b;
    CHECK_RC(ds_collate(rd, idx, 3, &o, &b), 0);
    CHECK_EQ_INT(b.B, 3);
    CHECK_EQ_INT(b.T, 7);
    CHECK_EQ_INT(b.lengths[0], 4);
    CHECK_EQ_INT(b.lengths[1], 7);
    CHECK_EQ_INT(b.input_ids[7 + 1], 99);
    CHECK_EQ_INT(b.n_targets, 2 + 3 + 2);
    batch_free(&b);
    damage_count = 0;
    CHECK_EQ_INT(ds_reader_verify_shard(rd, 0, on_damage, NULL), 0);
    CHECK_EQ_INT(ds_reader_verify_shard(rd, 1, on_damage, NULL), 0);
    CHECK_EQ_INT(damage_count, 0);
    ds_reader_close(&rd);
    CHECK(rd == NULL);
    /* flip one pixel byte of sample 0 on disk: verify names the shard and sample, get still reads the header */
    b1[lens[0] - 5] ^= 0x40;
    snprintf(path, sizeof path, "%s/shard-00000.lmdb", dir);
    ds_shard_t keep = m.shards[0];
    write_shard(path, 0, r, bufs, lens, 2, &m.shards[0]);
    m.shards[0] = keep; /* the manifest keeps the good checksum */
    CHECK_RC(ds_reader_open(dir, &rd), 0);
    damage_count = 0;
    CHECK_EQ_INT(ds_reader_verify_shard(rd, 0, on_damage, NULL), 1); /* the record's checksum */
    CHECK_EQ_INT(damage_count, 1);
    CHECK_RC(ds_reader_get(rd, 0, &got), 0);
    ds_reader_close(&rd);
    /* a shard checksum that disagrees with the manifest */
    b1[lens[0] - 5] ^= 0x40;
    write_shard(path, 0, r, bufs, lens, 2, &m.shards[0]);
    m.shards[0].checksum ^= 1;
    CHECK_RC(ds_manifest_write(dir, &m, NULL), 0);
    CHECK_RC(ds_reader_open(dir, &rd), 0);
    damage_count = 0;
    CHECK_EQ_INT(ds_reader_verify_shard(rd, 0, on_damage, NULL), 1);
    CHECK_EQ_INT(damage_count, 1);
    ds_reader_close(&rd);
    /* a missing shard file */
    unlink(path);
    CHECK_RC(ds_reader_open(dir, &rd), 0);
    CHECK_RC(ds_reader_get(rd, 0, &got), LLAVA_ENOTFOUND);
    CHECK(ds_reader_verify_shard(rd, 0, NULL, NULL) < 0);
    ds_reader_close(&rd);
    ds_manifest_free(&m);
}

int main(void) {
    log_set_level(LOG_NONE);
    test_record_roundtrip();
    test_truncate();
    test_collate();
    test_manifest_parse();
    test_reader();
    return test_finish();
}
