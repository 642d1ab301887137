/* `llava-data ingest`: K worker threads build records (template + tokenizer, image decode + CLIP crop/resize to
 * uint8); the calling thread writes them in source order into LMDB shards, so output does not depend on K. A shard
 * counts only once it is committed, synced, closed and appended to ingest-progress.jsonl; the manifest is last.
 * Tested by tests/integration/ingest.sh; throughput by bench/bench_ingest.sh. */
#include "common/ingest.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <lmdb.h>

#include "common/dataset.h"
#include "common/err.h"
#include "common/image.h"
#include "common/tokenizer.h"


#define PROGRESS_FILE "ingest-progress.jsonl"
#define REPORT_FILE "ingest-report.jsonl"
#define COMMIT_BYTES (64u << 20)

typedef struct {
    char *id;
    int64_t index; /* in the JSON array */
    char *reason;
} bad_t;

typedef struct {
    bad_t *v;
    int64_t n, cap;
} bad_list_t;

/* mdb_txn_commit frees the transaction even when it fails: clear the pointer so cleanup does not abort it again. */
static int txn_commit(MDB_txn **txn) {
    int mrc = mdb_txn_commit(*txn);
    *txn = NULL;
    return mrc;
}

static int bad_add(bad_list_t *l, const char *id, int64_t index, const char *reason) {
    if (l->n == l->cap) {
        int64_t cap = l->cap ? 2 * l->cap : 64;
        bad_t *v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v) return LLAVA_ENOMEM;
        l->v = v;
        l->cap = cap;
    }
    bad_t *b = &l->v[l->n];
    b->id = strdup(id ? id : "");
    b->reason = strdup(reason);
    b->index = index;
    if (!b->id || !b->reason) {
        free(b->id);
        free(b->reason);
        return LLAVA_ENOMEM;
    }
    l->n++;
    return 0;
}

static void bad_free(bad_list_t *l) {
    for (int64_t i = 0; i < l->n; i++) {
        free(l->v[i].id);
        free(l->v[i].reason);
    }
    free(l->v);
    memset(l, 0, sizeof *l);
}

/* ---------------------------------------------------------------- one sample (worker side) */

typedef struct {
    int ready, bad;
    char reason[320];
    uint8_t *rec; /* encoded record (owned) */
    size_t len;
    int n_tokens, n_images;
} slot_t;

typedef struct {
    const ingest_opts_t *o;
    const tokenizer_t *tok;
    const conv_file_t *cf;
    int n_patches;
    /* shared queue state, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    int64_t next, end, write_pos; /* records [next, end) still to hand out; the writer waits for write_pos */
    int ring;
    slot_t *slots;                /* [ring], slot of record i is i % ring */
    int stop;
} pool_t;

static int load_image(const char *dir, const char *rel, int size, int pad, long max_pixels, uint8_t *chw, char *err,
                      size_t errlen) {
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, rel) >= (int)sizeof path) {
        snprintf(err, errlen, "image path too long");
        return LLAVA_EINVAL;
    }
    char why[512] = "";
    /* decode and preprocess in one streaming pass (same bytes as image_load_file + image_clip_preprocess_u8) */
    int rc = image_clip_load_file(path, (size_t)max_pixels, size, pad, chw, why, sizeof why);
    if (rc) snprintf(err, errlen, "%s", why[0] ? why : err_str(rc)); /* why names the file */
    return rc;
}

static int has_image_tag(const conv_record_t *r) {
    for (int i = 0; i < r->nturns; i++)
        if (strstr(r->turns[i].text, "<image>")) return 1;
    return 0;
}

/* Builds record i into s (s->bad with a reason for a bad record). Returns 0 or a fatal LLAVA_E* (out of memory). */
static int sample_build(pool_t *p, int64_t i, ids_t *ids, ids_t *labels, uint8_t **pix, size_t *pixcap, slot_t *s) {
    const ingest_opts_t *o = p->o;
    const conv_record_t *r = &p->cf->records[i];
    int nimg = 0, rc = 0;
    char err[256] = "";
    memset(s, 0, sizeof *s);
    rc = template_build(p->tok, o->tpl, r, ids, labels, &nimg, err, sizeof err);
    if (rc == LLAVA_ENOMEM) return rc;
    if (rc) {
        s->bad = 1;
        snprintf(s->reason, sizeof s->reason, "template %s: %s", template_name(o->tpl), err);
        return 0;
    }
    if (r->image && nimg == 0) {
        s->bad = 1;
        snprintf(s->reason, sizeof s->reason, "no <image> in an image record");
        return 0;
    }
    if (r->image && nimg > 1) {
        s->bad = 1;
        snprintf(s->reason, sizeof s->reason, "%d <image> tags for one image", nimg);
        return 0;
    }
    if (!r->image && has_image_tag(r)) {
        s->bad = 1;
        snprintf(s->reason, sizeof s->reason, "<image> in a text-only record");
        return 0;
    }
    int n = ids->n;
    if (o->max_seq_len > 0) {
        n = ds_truncate_point(ids->v, ids->n, p->n_patches, o->max_seq_len);
        nimg = 0;
        for (int k = 0; k < n; k++) nimg += ids->v[k] == LLAVA_IMAGE_PLACEHOLDER;
    }
    if (ds_count_targets(labels->v, n) == 0) {
        s->bad = 1;
        if (n < ids->n)
            snprintf(s->reason, sizeof s->reason, "all targets truncated away by --max-seq-len %d (%lld tokens after "
                     "image expansion)", o->max_seq_len,
                     (long long)ds_expanded_length(ids->n, r->image ? 1 : 0, p->n_patches));
        else snprintf(s->reason, sizeof s->reason, "no target tokens");
        return 0;
    }
    size_t img_bytes = (size_t)3 * o->image_size * o->image_size;
    if (nimg > 0) {
        if (*pixcap < img_bytes) {
            uint8_t *q = realloc(*pix, img_bytes);
            if (!q) return LLAVA_ENOMEM;
            *pix = q;
            *pixcap = img_bytes;
        }
        rc = load_image(o->images_dir, r->image, o->image_size, o->pad, o->max_pixels, *pix, err, sizeof err);
        if (rc == LLAVA_ENOMEM) return rc;
        if (rc) {
            s->bad = 1;
            snprintf(s->reason, sizeof s->reason, "image: %s", err);
            return 0;
        }
    }
    size_t len = ds_record_size((int)strnlen(r->id, DS_ID_MAX), n, nimg, o->image_size);
    s->rec = malloc(len);
    if (!s->rec) return LLAVA_ENOMEM;
    rc = ds_record_encode(s->rec, len, &s->len, r->id, ids->v, labels->v, n, nimg, o->image_size,
                          o->pad ? DS_FLAG_PAD : 0, *pix);
    if (rc) {
        free(s->rec);
        s->rec = NULL;
        return rc;
    }
    s->n_tokens = n;
    s->n_images = nimg;
    return 0;
}

static void *worker_main(void *arg) {
    pool_t *p = arg;
    ids_t ids = {0}, labels = {0};
    uint8_t *pix = NULL;
    size_t pixcap = 0;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (!p->stop && p->next < p->end && p->next >= p->write_pos + p->ring) pthread_cond_wait(&p->cv_work, &p->mu);
        if (p->stop || p->next >= p->end) {
            pthread_mutex_unlock(&p->mu);
            break;
        }
        int64_t i = p->next++;
        pthread_mutex_unlock(&p->mu);
        slot_t s;
        int rc = sample_build(p, i, &ids, &labels, &pix, &pixcap, &s);
        if (rc) { /* out of memory: report as a bad record the writer treats as fatal */
            memset(&s, 0, sizeof s);
            s.bad = 2;
            snprintf(s.reason, sizeof s.reason, "%s", err_str(rc));
        }
        pthread_mutex_lock(&p->mu);
        s.ready = 1;
        p->slots[i % p->ring] = s;
        pthread_cond_broadcast(&p->cv_done);
        pthread_mutex_unlock(&p->mu);
    }
    ids_free(&ids);
    ids_free(&labels);
    free(pix);
    return NULL;
}

/* ---------------------------------------------------------------- shards (writer side) */

typedef struct {
    ds_shard_t info;
    int64_t vi_first, vi_end;   /* valid-record range consumed by this shard (bad ones included) */
    int32_t *lengths, *n_images;/* [count] */
    int64_t cap;
    bad_list_t bad;             /* bad records attributed to this shard */
} shard_rec_t;

typedef struct {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    size_t mapsize, txn_bytes;
    /* records put in the open txn, re-put after a map resize */
    uint8_t **pend;
    size_t *pend_len;
    int64_t *pend_idx;
    int n_pend, cap_pend;
} shard_writer_t;

static void shard_rec_free(shard_rec_t *s) {
    free(s->lengths);
    free(s->n_images);
    bad_free(&s->bad);
    memset(s, 0, sizeof *s);
}

static int shard_path(const char *dir, const char *name, char *out, size_t cap) {
    return snprintf(out, cap, "%s/%s", dir, name) < (int)cap ? 0 : LLAVA_EINVAL;
}

static void writer_drop_pending(shard_writer_t *w) {
    for (int i = 0; i < w->n_pend; i++) free(w->pend[i]);
    w->n_pend = 0;
    w->txn_bytes = 0;
}

static void writer_close(shard_writer_t *w) {
    if (w->txn) mdb_txn_abort(w->txn);
    if (w->env) mdb_env_close(w->env);
    writer_drop_pending(w);
    free(w->pend);
    free(w->pend_len);
    free(w->pend_idx);
    memset(w, 0, sizeof *w);
}

static int writer_open(shard_writer_t *w, const char *path, size_t mapsize) {
    int rc = 0;
    unlink(path);
    char lock[4400];
    snprintf(lock, sizeof lock, "%s-lock", path);
    unlink(lock);
    w->mapsize = mapsize;
    MDB_CHECK_GOTO(mdb_env_create(&w->env));
    MDB_CHECK_GOTO(mdb_env_set_mapsize(w->env, w->mapsize));
    MDB_CHECK_GOTO(mdb_env_open(w->env, path, MDB_NOSUBDIR | MDB_NOSYNC, 0644));
    MDB_CHECK_GOTO(mdb_txn_begin(w->env, NULL, 0, &w->txn));
    MDB_CHECK_GOTO(mdb_dbi_open(w->txn, NULL, 0, &w->dbi));
cleanup:
    return rc;
}

/* Puts every pending record into the open txn; on MDB_MAP_FULL doubles the map and starts the txn over. */
static int writer_put_pending(shard_writer_t *w, int from) {
    int rc = 0;
    for (int i = from; i < w->n_pend; i++) {
        uint8_t kb[8];
        ds_key_encode(w->pend_idx[i], kb);
        MDB_val k = {8, kb}, v = {w->pend_len[i], w->pend[i]};
        int mrc = mdb_put(w->txn, w->dbi, &k, &v, MDB_APPEND);
        if (mrc == MDB_MAP_FULL) {
            mdb_txn_abort(w->txn);
            w->txn = NULL;
            w->mapsize *= 2;
            MDB_CHECK_GOTO(mdb_env_set_mapsize(w->env, w->mapsize));
            MDB_CHECK_GOTO(mdb_txn_begin(w->env, NULL, 0, &w->txn));
            i = -1; /* redo the whole txn */
            continue;
        }
        MDB_CHECK_GOTO(mrc);
    }
cleanup:
    return rc;
}

static int writer_commit(shard_writer_t *w) {
    int rc = 0;
    MDB_CHECK_GOTO(txn_commit(&w->txn));
    writer_drop_pending(w);
    MDB_CHECK_GOTO(mdb_txn_begin(w->env, NULL, 0, &w->txn));
cleanup:
    return rc;
}

static int writer_add(shard_writer_t *w, int64_t idx, uint8_t *rec, size_t len) {
    int rc = 0;
    if (w->n_pend == w->cap_pend) {
        int cap = w->cap_pend ? 2 * w->cap_pend : 256;
        uint8_t **a = realloc(w->pend, (size_t)cap * sizeof *a);
        if (a) w->pend = a;
        size_t *b = realloc(w->pend_len, (size_t)cap * sizeof *b);
        if (b) w->pend_len = b;
        int64_t *c = realloc(w->pend_idx, (size_t)cap * sizeof *c);
        if (c) w->pend_idx = c;
        CHECK_GOTO(a && b && c, LLAVA_ENOMEM, "out of memory");
        w->cap_pend = cap;
    }
    w->pend[w->n_pend] = rec;
    w->pend_len[w->n_pend] = len;
    w->pend_idx[w->n_pend] = idx;
    w->n_pend++;
    w->txn_bytes += len;
    RC_CHECK_GOTO(writer_put_pending(w, w->n_pend - 1));
    if (w->txn_bytes >= COMMIT_BYTES) RC_CHECK_GOTO(writer_commit(w));
cleanup:
    return rc;
}

static int fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY);
    if (fd < 0) return -1;
    int r = fsync(fd);
    close(fd);
    return r;
}

/* Commits, syncs and closes the shard file and removes its lock file. */
static int writer_finish(shard_writer_t *w, const char *path) {
    int rc = 0;
    MDB_CHECK_GOTO(txn_commit(&w->txn));
    writer_drop_pending(w);
    MDB_CHECK_GOTO(mdb_env_sync(w->env, 1));
    mdb_env_close(w->env);
    w->env = NULL;
    char lock[4400];
    snprintf(lock, sizeof lock, "%s-lock", path);
    unlink(lock);
cleanup:
    return rc;
}

/* Recomputes a finished shard's checksum, byte total and key range (read-only, no lock file). */
static int shard_scan(const char *path, uint64_t *sum, int64_t *bytes, int64_t *first, int64_t *count) {
    int rc = 0;
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_cursor *c = NULL;
    MDB_dbi dbi;
    *sum = DS_FNV_INIT;
    *bytes = 0;
    *count = 0;
    *first = -1;
    MDB_CHECK_GOTO(mdb_env_create(&env));
    int mrc = mdb_env_open(env, path, MDB_RDONLY | MDB_NOSUBDIR | MDB_NOLOCK, 0444);
    if (mrc) {
        rc = LLAVA_ENOTFOUND;
        goto cleanup;
    }
    MDB_CHECK_GOTO(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn));
    MDB_CHECK_GOTO(mdb_dbi_open(txn, NULL, 0, &dbi));
    MDB_CHECK_GOTO(mdb_cursor_open(txn, dbi, &c));
    MDB_val k, v;
    for (mrc = mdb_cursor_get(c, &k, &v, MDB_FIRST); mrc == 0; mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (*first < 0 && k.mv_size == 8) *first = ds_key_decode(k.mv_data);
        ds_record_t rec;
        CHECK_GOTO(k.mv_size == 8 && ds_record_decode(v.mv_data, v.mv_size, 1, &rec, NULL, 0) == 0, LLAVA_EFORMAT,
                   "%s: a damaged record", path);
        *sum = ds_shard_fold(*sum, k.mv_data, v.mv_data, v.mv_size);
        *bytes += (int64_t)v.mv_size;
        (*count)++;
    }
    CHECK_GOTO(mrc == MDB_NOTFOUND, LLAVA_EDB, "%s: %s", path, mdb_strerror(mrc));
cleanup:
    if (c) mdb_cursor_close(c);
    if (txn) mdb_txn_abort(txn);
    if (env) mdb_env_close(env);
    return rc;
}

/* ---------------------------------------------------------------- progress file */

static char *params_line(const ingest_opts_t *o, uint64_t tok_hash) {
    struct stat st;
    long long size = -1, mtime = -1;
    if (stat(o->json_path, &st) == 0) {
        size = (long long)st.st_size;
        mtime = (long long)st.st_mtime;
    }
    cJSON *p = cJSON_CreateObject();
    if (!p) return NULL;
    cJSON_AddStringToObject(p, "json", o->json_path);
    cJSON_AddNumberToObject(p, "json_size", (double)size);
    cJSON_AddNumberToObject(p, "json_mtime", (double)mtime);
    cJSON_AddStringToObject(p, "images", o->images_dir);
    char h[20];
    snprintf(h, sizeof h, "%016" PRIx64, tok_hash);
    cJSON_AddStringToObject(p, "tokenizer_hash", h);
    cJSON_AddStringToObject(p, "template", template_name(o->tpl));
    cJSON_AddNumberToObject(p, "image_size", o->image_size);
    cJSON_AddNumberToObject(p, "patch_size", o->patch_size > 0 ? o->patch_size : DS_PATCH_SIZE);
    cJSON_AddBoolToObject(p, "pad", o->pad);
    cJSON_AddNumberToObject(p, "shard_samples", o->shard_samples);
    cJSON_AddNumberToObject(p, "max_seq_len", o->max_seq_len);
    cJSON_AddNumberToObject(p, "record_version", DS_RECORD_VERSION);
    cJSON *w = cJSON_CreateObject();
    if (w) cJSON_AddItemToObject(w, "params", p);
    else cJSON_Delete(p);
    char *s = w ? cJSON_PrintUnformatted(w) : NULL;
    cJSON_Delete(w);
    return s;
}

static char *shard_line(const shard_rec_t *s) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    char h[20];
    snprintf(h, sizeof h, "%016" PRIx64, s->info.checksum);
    cJSON_AddStringToObject(o, "name", s->info.name);
    cJSON_AddNumberToObject(o, "first", (double)s->info.first);
    cJSON_AddNumberToObject(o, "count", (double)s->info.count);
    cJSON_AddNumberToObject(o, "bytes", (double)s->info.bytes);
    cJSON_AddStringToObject(o, "checksum", h);
    cJSON_AddNumberToObject(o, "vi_first", (double)s->vi_first);
    cJSON_AddNumberToObject(o, "vi_end", (double)s->vi_end);
    cJSON_AddItemToObject(o, "lengths", cJSON_CreateIntArray(s->lengths, (int)s->info.count));
    cJSON_AddItemToObject(o, "n_images", cJSON_CreateIntArray(s->n_images, (int)s->info.count));
    cJSON *b = cJSON_AddArrayToObject(o, "bad");
    for (int64_t i = 0; i < s->bad.n; i++) {
        cJSON *e = cJSON_CreateObject();
        if (!e) break;
        cJSON_AddStringToObject(e, "id", s->bad.v[i].id);
        cJSON_AddNumberToObject(e, "index", (double)s->bad.v[i].index);
        cJSON_AddStringToObject(e, "reason", s->bad.v[i].reason);
        cJSON_AddItemToArray(b, e);
    }
    char *str = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return str;
}

static int shard_from_line(const char *line, shard_rec_t *s) {
    int rc = 0;
    memset(s, 0, sizeof *s);
    cJSON *o = cJSON_Parse(line);
    const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "name"));
    const char *sum = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "checksum"));
    const cJSON *l = cJSON_GetObjectItemCaseSensitive(o, "lengths"), *n = cJSON_GetObjectItemCaseSensitive(o, "n_images"),
                *b = cJSON_GetObjectItemCaseSensitive(o, "bad"), *e;
    int64_t v[5];
    const char *keys[5] = {"first", "count", "bytes", "vi_first", "vi_end"};
    for (int i = 0; i < 5; i++) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, keys[i]);
        CHECK_GOTO(cJSON_IsNumber(x) && x->valuedouble >= 0, LLAVA_EFORMAT, "progress line without %s", keys[i]);
        v[i] = (int64_t)x->valuedouble;
    }
    CHECK_GOTO(name && strlen(name) < sizeof s->info.name && sum && strlen(sum) == 16 && v[1] > 0 &&
                   cJSON_GetArraySize(l) == v[1] && cJSON_GetArraySize(n) == v[1] && cJSON_IsArray(b),
               LLAVA_EFORMAT, "malformed progress line");
    strcpy(s->info.name, name);
    s->info.checksum = strtoull(sum, NULL, 16);
    s->info.first = v[0];
    s->info.count = v[1];
    s->info.bytes = v[2];
    s->vi_first = v[3];
    s->vi_end = v[4];
    s->lengths = malloc((size_t)v[1] * sizeof *s->lengths);
    s->n_images = malloc((size_t)v[1] * sizeof *s->n_images);
    ALLOC_CHECK_GOTO(s->lengths);
    ALLOC_CHECK_GOTO(s->n_images);
    for (int64_t i = 0; i < v[1]; i++) {
        s->lengths[i] = (int32_t)cJSON_GetArrayItem(l, (int)i)->valuedouble;
        s->n_images[i] = (int32_t)cJSON_GetArrayItem(n, (int)i)->valuedouble;
    }
    cJSON_ArrayForEach(e, b) {
        const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "id"));
        const char *why = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "reason"));
        const cJSON *ix = cJSON_GetObjectItemCaseSensitive(e, "index");
        CHECK_GOTO(id && why && cJSON_IsNumber(ix), LLAVA_EFORMAT, "malformed bad record in progress line");
        RC_CHECK_GOTO(bad_add(&s->bad, id, (int64_t)ix->valuedouble, why));
    }
cleanup:
    cJSON_Delete(o);
    if (rc) shard_rec_free(s);
    return rc;
}

static int append_line(FILE *f, const char *line) {
    if (fputs(line, f) < 0 || fputc('\n', f) == EOF || fflush(f) != 0 || fsync(fileno(f)) != 0) return LLAVA_EIO;
    return 0;
}

/* ---------------------------------------------------------------- the run */

typedef struct {
    const ingest_opts_t *o;
    conv_file_t *cf;
    int64_t *src_index;   /* [cf->n]: index in the JSON array of each valid record */
    bad_list_t load_bad;  /* rejected while parsing */
    shard_rec_t *shards;
    int n_shards, cap_shards;
} run_t;

static void on_load_error(const char *id, int index, const char *msg, void *ud) {
    run_t *r = ud;
    if (bad_add(&r->load_bad, id, index, msg) != 0) LOG_E("out of memory recording bad record %s", id);
}

static int cmp_bad(const void *a, const void *b) {
    const bad_t *x = a, *y = b;
    return (x->index > y->index) - (x->index < y->index);
}

static int shards_push(run_t *r, shard_rec_t *s) {
    if (r->n_shards == r->cap_shards) {
        int cap = r->cap_shards ? 2 * r->cap_shards : 16;
        shard_rec_t *v = realloc(r->shards, (size_t)cap * sizeof *v);
        if (!v) return LLAVA_ENOMEM;
        r->shards = v;
        r->cap_shards = cap;
    }
    r->shards[r->n_shards++] = *s;
    memset(s, 0, sizeof *s);
    return 0;
}

/* Reads the progress file: keeps the leading shards whose files still hash to what was recorded. Rewrites the file
 * with only those lines (or with a new params line when the parameters changed). */
static int progress_resume(run_t *r, const char *params, FILE **pf) {
    int rc = 0;
    const ingest_opts_t *o = r->o;
    char path[4200], tmp[4300], shp[4300];
    snprintf(path, sizeof path, "%s/%s", o->out_dir, PROGRESS_FILE);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *in = fopen(path, "rb"), *out = NULL;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    if (in && (n = getline(&line, &cap, in)) > 0) {
        if (line[n - 1] == '\n') line[n - 1] = 0;
        if (!strcmp(line, params)) {
            while ((n = getline(&line, &cap, in)) > 0) {
                if (line[n - 1] != '\n') break; /* a torn last line: never acknowledged */
                line[n - 1] = 0;
                shard_rec_t s;
                if (shard_from_line(line, &s) != 0) break;
                int64_t expect_first = r->n_shards ? r->shards[r->n_shards - 1].info.first +
                                                         r->shards[r->n_shards - 1].info.count : 0;
                int64_t expect_vi = r->n_shards ? r->shards[r->n_shards - 1].vi_end : 0;
                char want[64];
                snprintf(want, sizeof want, "shard-%05d.lmdb", r->n_shards);
                uint64_t sum;
                int64_t bytes, first, count;
                int ok = s.info.first == expect_first && s.vi_first == expect_vi && !strcmp(s.info.name, want) &&
                         shard_path(o->out_dir, s.info.name, shp, sizeof shp) == 0 &&
                         shard_scan(shp, &sum, &bytes, &first, &count) == 0 && sum == s.info.checksum &&
                         bytes == s.info.bytes && count == s.info.count && first == s.info.first;
                if (!ok) {
                    LOG_W("%s: %s does not match its progress record; it will be redone", o->out_dir, s.info.name);
                    shard_rec_free(&s);
                    break;
                }
                RC_CHECK_GOTO(shards_push(r, &s));
            }
        } else {
            LOG_I("%s: parameters differ from the interrupted run; starting over", o->out_dir);
        }
    }
    out = fopen(tmp, "wb");
    CHECK_GOTO(out, LLAVA_EIO, "%s: %s", tmp, strerror(errno));
    RC_CHECK_GOTO(append_line(out, params));
    for (int i = 0; i < r->n_shards; i++) {
        char *l = shard_line(&r->shards[i]);
        ALLOC_CHECK_GOTO(l);
        rc = append_line(out, l);
        free(l);
        CHECK_GOTO(rc == 0, LLAVA_EIO, "%s: write failed", tmp);
    }
    SYS_CHECK_GOTO(rename(tmp, path), path);
    fsync_dir(o->out_dir);
    *pf = out;
    out = NULL;
    /* remove shard files past the kept ones (a half-written shard is never reused) */
    DIR *d = opendir(o->out_dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        int k;
        char tail[16] = "";
        if (sscanf(e->d_name, "shard-%d.lmdb%15s", &k, tail) >= 1 && k >= r->n_shards &&
            !strncmp(e->d_name, "shard-", 6)) {
            snprintf(shp, sizeof shp, "%s/%s", o->out_dir, e->d_name);
            unlink(shp);
        }
    }
    if (d) closedir(d);
cleanup:
    if (in) fclose(in);
    if (out) fclose(out);
    free(line);
    return rc;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static int write_report(const run_t *r) {
    int rc = 0;
    bad_list_t all = {0};
    char path[4200], tmp[4300];
    FILE *f = NULL;
    snprintf(path, sizeof path, "%s/%s", r->o->out_dir, REPORT_FILE);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    for (int64_t i = 0; i < r->load_bad.n; i++)
        RC_CHECK_GOTO(bad_add(&all, r->load_bad.v[i].id, r->load_bad.v[i].index, r->load_bad.v[i].reason));
    for (int s = 0; s < r->n_shards; s++)
        for (int64_t i = 0; i < r->shards[s].bad.n; i++)
            RC_CHECK_GOTO(bad_add(&all, r->shards[s].bad.v[i].id, r->shards[s].bad.v[i].index,
                                  r->shards[s].bad.v[i].reason));
    if (all.n) qsort(all.v, (size_t)all.n, sizeof *all.v, cmp_bad);
    f = fopen(tmp, "wb");
    CHECK_GOTO(f, LLAVA_EIO, "%s: %s", tmp, strerror(errno));
    for (int64_t i = 0; i < all.n; i++) {
        cJSON *o = cJSON_CreateObject();
        ALLOC_CHECK_GOTO(o);
        cJSON_AddStringToObject(o, "id", all.v[i].id);
        cJSON_AddNumberToObject(o, "index", (double)all.v[i].index);
        cJSON_AddStringToObject(o, "reason", all.v[i].reason);
        char *s = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        ALLOC_CHECK_GOTO(s);
        fprintf(f, "%s\n", s);
        free(s);
    }
    CHECK_GOTO(fflush(f) == 0 && fsync(fileno(f)) == 0, LLAVA_EIO, "%s: write failed", tmp);
    CHECK_GOTO(fclose(f) == 0, LLAVA_EIO, "%s: write failed", tmp);
    f = NULL;
    SYS_CHECK_GOTO(rename(tmp, path), path);
cleanup:
    if (f) fclose(f);
    bad_free(&all);
    return rc;
}

static int shard_rec_push_sample(shard_rec_t *s, int n_tokens, int n_images) {
    if (s->info.count == s->cap) {
        int64_t cap = s->cap ? 2 * s->cap : 1024;
        int32_t *a = realloc(s->lengths, (size_t)cap * sizeof *a);
        if (a) s->lengths = a;
        int32_t *b = realloc(s->n_images, (size_t)cap * sizeof *b);
        if (b) s->n_images = b;
        if (!a || !b) return LLAVA_ENOMEM;
        s->cap = cap;
    }
    s->lengths[s->info.count] = n_tokens;
    s->n_images[s->info.count] = n_images;
    s->info.count++;
    return 0;
}

/* Finishes the open shard: commit + sync + close, then the progress line (fsync'd), then it counts as done. */
static int shard_close(run_t *r, shard_writer_t *w, shard_rec_t *cur, const char *path, FILE *progress) {
    int rc = 0;
    char *line = NULL;
    RC_CHECK_GOTO(writer_finish(w, path));
    writer_close(w);
    fsync_dir(r->o->out_dir);
    line = shard_line(cur);
    ALLOC_CHECK_GOTO(line);
    CHECK_GOTO(append_line(progress, line) == 0, LLAVA_EIO, "%s: cannot append to %s", r->o->out_dir, PROGRESS_FILE);
    RC_CHECK_GOTO(shards_push(r, cur));
cleanup:
    free(line);
    return rc;
}

/* The writer loop: takes records [vi0, n) in order from the pool and fills shards. */
static int write_all(run_t *r, pool_t *p, FILE *progress, int64_t vi0, ingest_stats_t *st) {
    int rc = 0;
    const ingest_opts_t *o = r->o;
    shard_writer_t w = {0};
    shard_rec_t cur = {0};
    char path[4300];
    int open_ = 0;
    int64_t next_index = r->n_shards ? r->shards[r->n_shards - 1].info.first + r->shards[r->n_shards - 1].info.count
                                     : 0;
    int64_t put = 0, done = 0, total = r->cf->n - vi0;
    double t0 = now_s(), last = t0;
    cur.vi_first = vi0;
    for (int64_t vi = vi0; vi < r->cf->n; vi++) {
        slot_t s;
        pthread_mutex_lock(&p->mu);
        while (!p->slots[vi % p->ring].ready) pthread_cond_wait(&p->cv_done, &p->mu);
        s = p->slots[vi % p->ring];
        p->slots[vi % p->ring].ready = 0;
        p->slots[vi % p->ring].rec = NULL; /* the writer owns it now */
        p->write_pos = vi + 1;
        pthread_cond_broadcast(&p->cv_work);
        pthread_mutex_unlock(&p->mu);
        done++;
        if (s.bad) {
            const conv_record_t *rec = &r->cf->records[vi];
            CHECK_GOTO(s.bad != 2, LLAVA_ENOMEM, "record %s: %s", rec->id, s.reason);
            RC_CHECK_GOTO(bad_add(&cur.bad, rec->id, r->src_index[vi], s.reason));
            if (o->bad_fail) {
                LOG_E("bad record %s (index %lld): %s (--bad-records fail)", rec->id, (long long)r->src_index[vi],
                      s.reason);
                rc = LLAVA_EINVAL;
                goto cleanup;
            }
            continue;
        }
        if (!open_) {
            snprintf(cur.info.name, sizeof cur.info.name, "shard-%05d.lmdb", r->n_shards);
            cur.info.first = next_index;
            cur.info.checksum = DS_FNV_INIT;
            RC_CHECK_GOTO(shard_path(o->out_dir, cur.info.name, path, sizeof path));
            size_t est = (size_t)o->shard_samples * (s.len + 512) + ((size_t)64 << 20);
            rc = writer_open(&w, path, est);
            if (rc) {
                free(s.rec);
                goto cleanup;
            }
            open_ = 1;
        }
        uint8_t kb[8];
        ds_key_encode(next_index, kb);
        cur.info.checksum = ds_shard_fold(cur.info.checksum, kb, s.rec, s.len);
        cur.info.bytes += (int64_t)s.len;
        rc = shard_rec_push_sample(&cur, s.n_tokens, s.n_images);
        if (rc) {
            free(s.rec);
            goto cleanup;
        }
        st->n_images += s.n_images;
        st->n_text_only += s.n_images == 0;
        RC_CHECK_GOTO(writer_add(&w, next_index++, s.rec, s.len)); /* w owns s.rec now */
        put++;
        if (o->die_after > 0 && put >= o->die_after) {
            fprintf(stderr, "ingest: LLAVA_INGEST_DIE_AFTER=%lld reached, exiting without cleanup\n",
                    (long long)o->die_after);
            _exit(137);
        }
        if (cur.info.count == o->shard_samples) {
            cur.vi_end = vi + 1;
            RC_CHECK_GOTO(shard_close(r, &w, &cur, path, progress));
            open_ = 0;
            cur.vi_first = vi + 1;
        }
        double t = now_s();
        if (o->progress && t - last >= 2.0) {
            double rate = (double)done / (t - t0);
            fprintf(stderr, "ingest: %lld/%lld records (%.1f%%), %.1f samples/s, ETA %.0f s\n", (long long)done,
                    (long long)total, 100.0 * (double)done / (double)total, rate,
                    rate > 0 ? (double)(total - done) / rate : 0.0);
            last = t;
        }
    }
    if (open_) {
        cur.vi_end = r->cf->n;
        RC_CHECK_GOTO(shard_close(r, &w, &cur, path, progress));
        open_ = 0;
    }
    /* bad records after the last shard was closed: reported with the load-time ones (a resumed run meets them
     * again, since they lie past the last shard's vi_end) */
    for (int64_t i = 0; i < cur.bad.n; i++)
        RC_CHECK_GOTO(bad_add(&r->load_bad, cur.bad.v[i].id, cur.bad.v[i].index, cur.bad.v[i].reason));
    st->seconds = now_s() - t0;
    st->samples_per_s = st->seconds > 0 ? (double)done / st->seconds : 0;
cleanup:
    writer_close(&w);
    shard_rec_free(&cur);
    return rc;
}

/* Maps each valid record to its index in the JSON array (records rejected at load are reported by index). */
static int map_source_indices(run_t *r) {
    r->src_index = malloc((size_t)(r->cf->n > 0 ? r->cf->n : 1) * sizeof *r->src_index);
    if (!r->src_index) return LLAVA_ENOMEM;
    int64_t *rej = malloc((size_t)(r->load_bad.n > 0 ? r->load_bad.n : 1) * sizeof *rej);
    if (!rej) return LLAVA_ENOMEM;
    for (int64_t i = 0; i < r->load_bad.n; i++) rej[i] = r->load_bad.v[i].index;
    for (int64_t i = 1; i < r->load_bad.n; i++) /* usually already sorted: insertion sort is linear then */
        for (int64_t j = i; j > 0 && rej[j - 1] > rej[j]; j--) {
            int64_t t = rej[j];
            rej[j] = rej[j - 1];
            rej[j - 1] = t;
        }
    int64_t src = 0, k = 0;
    for (int64_t i = 0; i < r->cf->n; i++, src++) {
        while (k < r->load_bad.n && rej[k] == src) {
            k++;
            src++;
        }
        r->src_index[i] = src;
    }
    free(rej);
    return 0;
}

int ingest_run(const ingest_opts_t *o, ingest_stats_t *stats) {
    int rc = 0;
    run_t r = {.o = o};
    tokenizer_t *tok = NULL;
    char *params = NULL;
    FILE *progress = NULL;
    pool_t p;
    int pool_init = 0, nthreads = 0;
    pthread_t *th = NULL;
    ds_manifest_t m = {0};
    ingest_stats_t st = {0};
    memset(&p, 0, sizeof p);
    char path[4300];
    int patch = o->patch_size > 0 ? o->patch_size : DS_PATCH_SIZE;
    CHECK_GOTO(o->json_path && o->images_dir && o->tokenizer_path && o->out_dir && o->image_size > 0 &&
                   o->image_size % patch == 0 && o->shard_samples > 0 && o->jobs > 0 && strlen(o->out_dir) < 4000,
               LLAVA_EINVAL, "ingest: need --json, --images, --tokenizer, --out, --image-size (a multiple of the patch "
               "size %d)", patch);
    CHECK_GOTO(mkdir(o->out_dir, 0755) == 0 || errno == EEXIST, LLAVA_EIO, "%s: %s", o->out_dir, strerror(errno));
    snprintf(path, sizeof path, "%s/manifest.json", o->out_dir);
    CHECK_GOTO(unlink(path) == 0 || errno == ENOENT, LLAVA_EIO, "%s: %s", path, strerror(errno));
    RC_CHECK_GOTO(tokenizer_load(o->tokenizer_path, &tok));
    RC_CHECK_GOTO(conv_file_load(o->json_path, &r.cf, on_load_error, &r));
    RC_CHECK_GOTO(map_source_indices(&r));
    st.n_source = r.cf->n + r.load_bad.n;
    if (o->bad_fail && r.load_bad.n) {
        LOG_E("%s: %lld bad record(s), first %s (index %lld): %s (--bad-records fail)", o->json_path,
              (long long)r.load_bad.n, r.load_bad.v[0].id, (long long)r.load_bad.v[0].index, r.load_bad.v[0].reason);
        write_report(&r);
        rc = LLAVA_EINVAL;
        goto cleanup;
    }
    params = params_line(o, tokenizer_hash(tok));
    ALLOC_CHECK_GOTO(params);
    RC_CHECK_GOTO(progress_resume(&r, params, &progress));
    int64_t vi0 = r.n_shards ? r.shards[r.n_shards - 1].vi_end : 0;
    st.n_kept_shards = r.n_shards;
    for (int s = 0; s < r.n_shards; s++)
        for (int64_t i = 0; i < r.shards[s].info.count; i++) {
            st.n_images += r.shards[s].n_images[i];
            st.n_text_only += r.shards[s].n_images[i] == 0;
        }
    if (r.n_shards) LOG_I("%s: resuming after %d complete shard(s), at record %lld", o->out_dir, r.n_shards,
                          (long long)vi0);
    /* workers */
    p.o = o;
    p.tok = tok;
    p.cf = r.cf;
    p.n_patches = (o->image_size / patch) * (o->image_size / patch);
    p.next = p.write_pos = vi0;
    p.end = r.cf->n;
    p.ring = 4 * o->jobs + 8;
    p.slots = calloc((size_t)p.ring, sizeof *p.slots);
    ALLOC_CHECK_GOTO(p.slots);
    pthread_mutex_init(&p.mu, NULL);
    pthread_cond_init(&p.cv_work, NULL);
    pthread_cond_init(&p.cv_done, NULL);
    pool_init = 1;
    th = calloc((size_t)o->jobs, sizeof *th);
    ALLOC_CHECK_GOTO(th);
    for (; nthreads < o->jobs; nthreads++)
        CHECK_GOTO(pthread_create(&th[nthreads], NULL, worker_main, &p) == 0, LLAVA_ENOMEM, "pthread_create failed");
    rc = write_all(&r, &p, progress, vi0, &st);
    pthread_mutex_lock(&p.mu);
    p.stop = 1;
    pthread_cond_broadcast(&p.cv_work);
    pthread_mutex_unlock(&p.mu);
    for (int i = 0; i < nthreads; i++) pthread_join(th[i], NULL);
    nthreads = 0;
    if (rc) {
        write_report(&r);
        goto cleanup;
    }
    RC_CHECK_GOTO(write_report(&r));
    int64_t n_samples = 0;
    for (int s = 0; s < r.n_shards; s++) n_samples += r.shards[s].info.count;
    CHECK_GOTO(n_samples > 0, LLAVA_EINVAL, "%s: no good sample (see %s/%s)", o->json_path, o->out_dir, REPORT_FILE);
    /* the manifest, last */
    m.version = DS_FORMAT_VERSION;
    m.n_samples = n_samples;
    m.n_images_total = st.n_images;
    m.n_text_only = st.n_text_only;
    m.n_source = st.n_source;
    m.n_bad = r.load_bad.n;
    for (int s = 0; s < r.n_shards; s++) m.n_bad += r.shards[s].bad.n;
    m.image_size = o->image_size;
    m.pad = o->pad;
    m.max_seq_len = o->max_seq_len;
    m.patch_size = patch;
    snprintf(m.template_name, sizeof m.template_name, "%s", template_name(o->tpl));
    CHECK_GOTO(strlen(o->tokenizer_path) < sizeof m.tokenizer && strlen(o->json_path) < sizeof m.source_json &&
                   strlen(o->images_dir) < sizeof m.images_dir,
               LLAVA_EINVAL, "ingest: a path is too long for the manifest");
    strcpy(m.tokenizer, o->tokenizer_path);
    strcpy(m.source_json, o->json_path);
    strcpy(m.images_dir, o->images_dir);
    m.tokenizer_hash = tokenizer_hash(tok);
    m.n_shards = r.n_shards;
    m.shards = calloc((size_t)r.n_shards, sizeof *m.shards);
    m.lengths = malloc((size_t)n_samples * sizeof *m.lengths);
    m.n_images = malloc((size_t)n_samples * sizeof *m.n_images);
    ALLOC_CHECK_GOTO(m.shards);
    ALLOC_CHECK_GOTO(m.lengths);
    ALLOC_CHECK_GOTO(m.n_images);
    for (int s = 0; s < r.n_shards; s++) {
        m.shards[s] = r.shards[s].info;
        memcpy(m.lengths + m.shards[s].first, r.shards[s].lengths, (size_t)m.shards[s].count * sizeof *m.lengths);
        memcpy(m.n_images + m.shards[s].first, r.shards[s].n_images, (size_t)m.shards[s].count * sizeof *m.n_images);
    }
    char created[64];
    time_t now = time(NULL);
    struct tm tmv;
    gmtime_r(&now, &tmv);
    strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", &tmv);
    RC_CHECK_GOTO(ds_manifest_write(o->out_dir, &m, created));
    st.n_samples = n_samples;
    st.n_bad = m.n_bad;
    st.n_shards = r.n_shards;
cleanup:
    if (nthreads) {
        pthread_mutex_lock(&p.mu);
        p.stop = 1;
        pthread_cond_broadcast(&p.cv_work);
        pthread_mutex_unlock(&p.mu);
        for (int i = 0; i < nthreads; i++) pthread_join(th[i], NULL);
    }
    if (pool_init) {
        for (int i = 0; i < p.ring; i++) free(p.slots[i].rec);
        pthread_mutex_destroy(&p.mu);
        pthread_cond_destroy(&p.cv_work);
        pthread_cond_destroy(&p.cv_done);
    }
    free(p.slots);
    free(th);
    if (progress) fclose(progress);
    free(params);
    ds_manifest_free(&m);
    for (int s = 0; s < r.n_shards; s++) shard_rec_free(&r.shards[s]);
    free(r.shards);
    free(r.src_index);
    bad_free(&r.load_bad);
    conv_file_free(&r.cf);
    tokenizer_free(&tok);
    if (stats) *stats = st;
    return rc;
}

/* ---------------------------------------------------------------- command line */

static void ingest_usage(FILE *f) {
    fprintf(f,
            "usage: llava-data ingest --json F --images DIR --tokenizer M --template T --image-size S\n"
            "                         [--aspect square|pad | --pad]\n"
            "                         --out DATASET [--shard-samples N] [--jobs K] [--bad-records skip|fail]\n"
            "                         [--max-seq-len L] [--max-pixels P] [--quiet]\n"
            "  Turns a LLaVA JSON file and its images into a dataset directory (manifest.json + shard-NNNNN.lmdb,\n"
            "  docs/dataset-format.md). Records hold input ids (one -200 per image), labels (-100: no loss) and the\n"
            "  image as uint8 [3,S,S] after CLIPImageProcessor's resize + centre crop (and --pad: square on the mean\n"
            "  colour first, LLaVA-1.5 stage 2).\n"
            "  --tokenizer M         sentencepiece tokenizer.model, or a model directory holding one\n"
            "  --template T          plain | vicuna_v1 | llava_v0\n"
            "  --aspect A            image_aspect_ratio: square (default) = CLIP resize + crop only; pad (= --pad) =\n"
            "                        expand to a square on the mean colour first\n"
            "  --image-size S        vision tower input size (224, 336, a multiple of the patch size)\n"
            "  --patch-size P        vision tower patch side (default 14, CLIP ViT-L/14): (S/P)^2 tokens per image\n"
            "  --shard-samples N     samples per shard (default 10000)\n"
            "  --jobs K              worker threads (default: online CPUs); output does not depend on K\n"
            "  --bad-records skip    count and skip bad records (default); fail: stop, non-zero exit, no manifest\n"
            "  --max-seq-len L       truncate after image expansion ((S/P)^2 tokens per image); a record left\n"
            "                        without targets is bad. Default 0: no truncation at ingest (collate truncates)\n"
            "  --max-pixels P        refuse larger images (default: the image decoder's limit)\n"
            "  Resumable: rerun the same command after an interruption; complete shards are kept (checksummed).\n"
            "  Bad records: DATASET/ingest-report.jsonl, one {id, index, reason} per line.\n");
}

int llava_data_ingest_main(int argc, char **argv) {
    ingest_opts_t o = {.shard_samples = 10000, .jobs = 0, .progress = 1, .tpl = TPL_PLAIN};
    char tokpath[4200];
    int have_tpl = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            ingest_usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--pad")) {
            o.pad = 1;
            continue;
        }
        if (!strcmp(a, "--aspect") && v && (!strcmp(v, "pad") || !strcmp(v, "square"))) {
            o.pad = !strcmp(v, "pad");
            i++;
            continue;
        }
        if (!strcmp(a, "--quiet")) {
            o.progress = 0;
            continue;
        }
        if (!v) {
            fprintf(stderr, "ingest: unknown option or missing value: %s\n", a);
            ingest_usage(stderr);
            return 2;
        }
        char *end = NULL;
        long long x = strtoll(v, &end, 10);
        int num = end != v && *end == 0;
        if (!strcmp(a, "--json")) o.json_path = v;
        else if (!strcmp(a, "--images")) o.images_dir = v;
        else if (!strcmp(a, "--tokenizer")) {
            struct stat st;
            if (stat(v, &st) == 0 && S_ISDIR(st.st_mode)) { /* a model directory: its tokenizer.model */
                snprintf(tokpath, sizeof tokpath, "%s/tokenizer.model", v);
                o.tokenizer_path = tokpath;
            } else {
                o.tokenizer_path = v;
            }
        }
        else if (!strcmp(a, "--out")) o.out_dir = v;
        else if (!strcmp(a, "--template")) {
            if (template_parse(v, &o.tpl) != 0) {
                fprintf(stderr, "ingest: unknown template '%s' (plain, vicuna_v1, llava_v0)\n", v);
                return 2;
            }
            have_tpl = 1;
        } else if (!strcmp(a, "--image-size") && num && x >= 1 && x <= 4096) o.image_size = (int)x;
        else if (!strcmp(a, "--patch-size") && num && x >= 1 && x <= 4096) o.patch_size = (int)x;
        else if (!strcmp(a, "--shard-samples") && num && x > 0 && x <= 100000000) o.shard_samples = (int)x;
        else if (!strcmp(a, "--jobs") && num && x > 0 && x <= 1024) o.jobs = (int)x;
        else if (!strcmp(a, "--max-seq-len") && num && x >= 0 && x < (1 << 30)) o.max_seq_len = (int)x;
        else if (!strcmp(a, "--max-pixels") && num && x > 0) o.max_pixels = (long)x;
        else if (!strcmp(a, "--bad-records") && (!strcmp(v, "skip") || !strcmp(v, "fail"))) o.bad_fail = !strcmp(v, "fail");
        else {
            fprintf(stderr, "ingest: bad option or value: %s %s\n", a, v);
            ingest_usage(stderr);
            return 2;
        }
        i++;
    }
    if (!o.json_path || !o.images_dir || !o.tokenizer_path || !o.out_dir || !have_tpl || !o.image_size) {
        fprintf(stderr, "ingest: --json, --images, --tokenizer, --template, --image-size and --out are required\n");
        ingest_usage(stderr);
        return 2;
    }
    if (o.jobs == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        o.jobs = n > 0 ? (int)n : 1;
    }
    const char *die = getenv("LLAVA_INGEST_DIE_AFTER");
    if (die && *die) o.die_after = strtoll(die, NULL, 10);
    ingest_stats_t st;
    int rc = ingest_run(&o, &st);
    if (rc) {
        fprintf(stderr, "ingest: failed: %s\n", err_str(rc));
        return 1;
    }
    printf("ingest: %lld samples (%lld with images, %lld text-only), %lld bad of %lld records, %lld shards "
           "(%lld kept from an earlier run), %.1f samples/s with %d jobs\n",
           (long long)st.n_samples, (long long)st.n_images, (long long)st.n_text_only, (long long)st.n_bad,
           (long long)st.n_source, (long long)st.n_shards, (long long)st.n_kept_shards, st.samples_per_s, o.jobs);
    return 0;
}
