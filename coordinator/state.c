/* Coordinator state in LMDB (see state.h): DBs "jobs" (id -> JSON), "ledger" (id, step -> JSON), "meta".
 * Keys are big-endian so cursor order is numeric order. Values are JSON text: readable with mdb_dump, small.
 * Tested by tests/unit/test_state.c. */
#include "coordinator/state.h"

#include <errno.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"

struct state {
    char dir[1024];
    MDB_env *env;
    MDB_dbi jobs, ledger, meta;
};

static void be64(uint8_t *p, uint64_t v) {
    for (int i = 7; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}
static uint64_t rd_be64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}

/* mdb_txn_commit frees the transaction even when it fails: clear the pointer so cleanup does not abort it again. */
static int txn_commit(MDB_txn **txn) {
    int mrc = mdb_txn_commit(*txn);
    *txn = NULL;
    return mrc;
}

/* Space held back for recording a job's end when the disk fills: STATE_RESERVE_BYTES of zeros in the state dir,
 * released (state_release_reserve) when a write fails for lack of space, made again on the next open. */
#define STATE_RESERVE_BYTES (1 << 20)

static void make_reserve(state_t *s) {
    char path[1100];
    snprintf(path, sizeof path, "%s/space.reserve", s->dir);
    struct stat sb;
    if (stat(path, &sb) == 0 && sb.st_size == STATE_RESERVE_BYTES) return;
    FILE *f = fopen(path, "wb");
    static const char zeros[65536];
    int ok = f != NULL;
    for (int i = 0; ok && i < STATE_RESERVE_BYTES / (int)sizeof zeros; i++) ok = fwrite(zeros, 1, sizeof zeros, f) == sizeof zeros;
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    if (f && fclose(f) != 0) ok = 0;
    if (!ok) {
        LOG_W("%s: cannot hold back %d bytes for a full disk: %s", path, STATE_RESERVE_BYTES, strerror(errno));
        remove(path);
    }
}

void state_release_reserve(state_t *s) {
    char path[1100];
    snprintf(path, sizeof path, "%s/space.reserve", s->dir);
    if (remove(path) == 0) LOG_W("released %s (%d bytes) to record the end of a job", path, STATE_RESERVE_BYTES);
}

int64_t state_free_bytes(const state_t *s) {
    struct statvfs v;
    if (statvfs(s->dir, &v) != 0) return -1;
    return (int64_t)v.f_bavail * (int64_t)v.f_frsize;
}

int state_open(const char *dir, state_t **out) {
    int rc = 0;
    MDB_txn *txn = NULL;
    state_t *s = calloc(1, sizeof *s);
    ALLOC_CHECK_GOTO(s);
    snprintf(s->dir, sizeof s->dir, "%s", dir);
    CHECK_GOTO(mkdir(dir, 0755) == 0 || errno == EEXIST, LLAVA_EIO, "state dir %s: %s", dir, strerror(errno));
    MDB_CHECK_GOTO(mdb_env_create(&s->env));
    MDB_CHECK_GOTO(mdb_env_set_maxdbs(s->env, 8));
    MDB_CHECK_GOTO(mdb_env_set_mapsize(s->env, (size_t)16 << 30)); /* sparse; the ledger of a long run is ~GBs */
    char path[1100];
    snprintf(path, sizeof path, "%s/state.lmdb", dir);
    MDB_CHECK_GOTO(mdb_env_open(s->env, path, MDB_NOSUBDIR, 0644));
    MDB_CHECK_GOTO(mdb_txn_begin(s->env, NULL, 0, &txn));
    MDB_CHECK_GOTO(mdb_dbi_open(txn, "jobs", MDB_CREATE, &s->jobs));
    MDB_CHECK_GOTO(mdb_dbi_open(txn, "ledger", MDB_CREATE, &s->ledger));
    MDB_CHECK_GOTO(mdb_dbi_open(txn, "meta", MDB_CREATE, &s->meta));
    MDB_CHECK_GOTO(txn_commit(&txn));
    make_reserve(s);
    *out = s;
    return 0;
cleanup:
    if (txn) mdb_txn_abort(txn);
    if (s && s->env) mdb_env_close(s->env);
    free(s);
    *out = NULL;
    return rc;
}

void state_close(state_t **ps) {
    if (!ps || !*ps) return;
    mdb_env_close((*ps)->env);
    free(*ps);
    *ps = NULL;
}

const char *state_dir(const state_t *s) { return s->dir; }

static int put_json(MDB_txn *txn, MDB_dbi dbi, const uint8_t *key, size_t klen, const cJSON *v) {
    int rc = 0;
    char *text = cJSON_PrintUnformatted(v);
    ALLOC_CHECK_GOTO(text);
    MDB_val k = {klen, (void *)key}, d = {strlen(text), text};
    MDB_CHECK_GOTO(mdb_put(txn, dbi, &k, &d, 0));
cleanup:
    free(text);
    return rc;
}

static int get_json(MDB_txn *txn, MDB_dbi dbi, const uint8_t *key, size_t klen, cJSON **out) {
    MDB_val k = {klen, (void *)key}, d;
    *out = NULL;
    int mrc = mdb_get(txn, dbi, &k, &d);
    if (mrc == MDB_NOTFOUND) return LLAVA_ENOTFOUND;
    if (mrc) {
        LOG_E("mdb_get: %s", mdb_strerror(mrc));
        return LLAVA_EDB;
    }
    *out = cJSON_ParseWithLength(d.mv_data, d.mv_size);
    if (!*out) {
        LOG_E("state: a stored record is not valid JSON (%zu bytes)", d.mv_size);
        return LLAVA_EFORMAT;
    }
    return 0;
}

int state_job_add(state_t *s, const cJSON *job, uint64_t *id) {
    int rc = 0;
    MDB_txn *txn = NULL;
    cJSON *copy = cJSON_Duplicate(job, 1);
    ALLOC_CHECK_GOTO(copy);
    MDB_CHECK_GOTO(mdb_txn_begin(s->env, NULL, 0, &txn));
    uint64_t next = 1;
    MDB_val k = {9, "next_job"}, d;
    int mrc = mdb_get(txn, s->meta, &k, &d);
    if (mrc == 0 && d.mv_size == 8) next = rd_be64(d.mv_data);
    uint8_t buf[8];
    be64(buf, next + 1);
    d.mv_size = 8;
    d.mv_data = buf;
    MDB_CHECK_GOTO(mdb_put(txn, s->meta, &k, &d, 0));
    cJSON_DeleteItemFromObject(copy, "id");
    cJSON_DeleteItemFromObject(copy, "state");
    cJSON_AddNumberToObject(copy, "id", (double)next);
    cJSON_AddStringToObject(copy, "state", JOB_QUEUED);
    cJSON_AddNumberToObject(copy, "submitted_at", (double)time(NULL));
    uint8_t key[8];
    be64(key, next);
    RC_CHECK_GOTO(put_json(txn, s->jobs, key, 8, copy));
    MDB_CHECK_GOTO(txn_commit(&txn));
    *id = next;
cleanup:
    if (txn) mdb_txn_abort(txn);
    cJSON_Delete(copy);
    return rc;
}

int state_job_update(state_t *s, uint64_t id, const cJSON *patch) {
    int rc = 0;
    MDB_txn *txn = NULL;
    cJSON *job = NULL;
    uint8_t key[8];
    be64(key, id);
    MDB_CHECK_GOTO(mdb_txn_begin(s->env, NULL, 0, &txn));
    RC_CHECK_GOTO(get_json(txn, s->jobs, key, 8, &job));
    const cJSON *f;
    cJSON_ArrayForEach(f, patch) {
        cJSON *dup = cJSON_Duplicate(f, 1);
        ALLOC_CHECK_GOTO(dup);
        if (cJSON_GetObjectItemCaseSensitive(job, f->string)) cJSON_ReplaceItemInObjectCaseSensitive(job, f->string, dup);
        else cJSON_AddItemToObject(job, f->string, dup);
    }
    RC_CHECK_GOTO(put_json(txn, s->jobs, key, 8, job));
    MDB_CHECK_GOTO(txn_commit(&txn));
cleanup:
    if (txn) mdb_txn_abort(txn);
    cJSON_Delete(job);
    return rc;
}

int state_job_get(state_t *s, uint64_t id, cJSON **out) {
    int rc = 0;
    MDB_txn *txn = NULL;
    uint8_t key[8];
    be64(key, id);
    MDB_CHECK_GOTO(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn));
    rc = get_json(txn, s->jobs, key, 8, out);
cleanup:
    if (txn) mdb_txn_abort(txn);
    return rc;
}

/* Walks the jobs DB calling fn(job, ud) for each in id order; fn returns non-zero to stop. */
static int jobs_foreach(state_t *s, int (*fn)(cJSON *job, void *ud), void *ud) {
    int rc = 0;
    MDB_txn *txn = NULL;
    MDB_cursor *cur = NULL;
    MDB_CHECK_GOTO(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn));
    MDB_CHECK_GOTO(mdb_cursor_open(txn, s->jobs, &cur));
    MDB_val k, d;
    int mrc = mdb_cursor_get(cur, &k, &d, MDB_FIRST);
    while (mrc == 0) {
        cJSON *job = cJSON_ParseWithLength(d.mv_data, d.mv_size);
        CHECK_GOTO(job, LLAVA_EFORMAT, "state: job record is not valid JSON");
        int stop = fn(job, ud);
        if (stop < 0) {
            rc = stop;
            goto cleanup;
        }
        if (stop) break;
        mrc = mdb_cursor_get(cur, &k, &d, MDB_NEXT);
    }
cleanup:
    if (cur) mdb_cursor_close(cur);
    if (txn) mdb_txn_abort(txn);
    return rc;
}

static int collect_job(cJSON *job, void *ud) {
    cJSON_AddItemToArray((cJSON *)ud, job);
    return 0;
}

int state_job_list(state_t *s, cJSON **out) {
    *out = cJSON_CreateArray();
    if (!*out) return LLAVA_ENOMEM;
    int rc = jobs_foreach(s, collect_job, *out);
    if (rc) {
        cJSON_Delete(*out);
        *out = NULL;
    }
    return rc;
}

typedef struct {
    uint64_t running, queued;
} next_ctx_t;

static int find_next(cJSON *job, void *ud) {
    next_ctx_t *c = ud;
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(job, "state");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(job, "id");
    if (cJSON_IsString(st) && cJSON_IsNumber(id)) {
        if (!c->running && strcmp(st->valuestring, JOB_RUNNING) == 0) c->running = (uint64_t)id->valuedouble;
        if (!c->queued && strcmp(st->valuestring, JOB_QUEUED) == 0) c->queued = (uint64_t)id->valuedouble;
    }
    cJSON_Delete(job);
    return 0;
}

int state_job_next(state_t *s, uint64_t *id) {
    next_ctx_t c = {0, 0};
    int rc = jobs_foreach(s, find_next, &c);
    *id = c.running ? c.running : c.queued;
    return rc;
}

static int mbs_equal(const cJSON *a, const cJSON *b) {
    const cJSON *ma = cJSON_GetObjectItemCaseSensitive(a, "mbs"), *mb = cJSON_GetObjectItemCaseSensitive(b, "mbs");
    return ma && mb && cJSON_Compare(ma, mb, 1);
}

int state_ledger_commit(state_t *s, uint64_t id, int64_t step, const cJSON *entry) {
    int rc = 0;
    MDB_txn *txn = NULL;
    cJSON *old = NULL;
    uint8_t key[16];
    be64(key, id);
    be64(key + 8, (uint64_t)step);
    CHECK_GOTO(step >= 0, LLAVA_EINVAL, "ledger: negative step %lld", (long long)step);
    MDB_CHECK_GOTO(mdb_txn_begin(s->env, NULL, 0, &txn));
    int grc = get_json(txn, s->ledger, key, 16, &old);
    if (grc == 0) {
        CHECK_GOTO(mbs_equal(old, entry), LLAVA_EINVAL,
                   "ledger: job %llu step %lld is already committed with other micro-batches", (unsigned long long)id,
                   (long long)step);
        goto cleanup; /* a replay of the same step: keep the first commit */
    }
    CHECK_GOTO(grc == LLAVA_ENOTFOUND, grc, "ledger: cannot read job %llu step %lld", (unsigned long long)id,
               (long long)step);
    RC_CHECK_GOTO(put_json(txn, s->ledger, key, 16, entry));
    MDB_CHECK_GOTO(txn_commit(&txn));
cleanup:
    if (txn) mdb_txn_abort(txn);
    cJSON_Delete(old);
    return rc;
}

int state_ledger_get(state_t *s, uint64_t id, int64_t step, cJSON **out) {
    int rc = 0;
    MDB_txn *txn = NULL;
    uint8_t key[16];
    be64(key, id);
    be64(key + 8, (uint64_t)step);
    MDB_CHECK_GOTO(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn));
    rc = get_json(txn, s->ledger, key, 16, out);
cleanup:
    if (txn) mdb_txn_abort(txn);
    return rc;
}

int state_ledger_last(state_t *s, uint64_t id, int64_t *step) {
    int rc = 0;
    MDB_txn *txn = NULL;
    MDB_cursor *cur = NULL;
    *step = -1;
    uint8_t key[16];
    be64(key, id + 1);
    memset(key + 8, 0, 8);
    MDB_CHECK_GOTO(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn));
    MDB_CHECK_GOTO(mdb_cursor_open(txn, s->ledger, &cur));
    MDB_val k = {16, key}, d;
    /* position at the first key of job id+1 (or the end), then step back once */
    int mrc = mdb_cursor_get(cur, &k, &d, MDB_SET_RANGE);
    mrc = (mrc == MDB_NOTFOUND) ? mdb_cursor_get(cur, &k, &d, MDB_LAST) : mdb_cursor_get(cur, &k, &d, MDB_PREV);
    if (mrc == 0 && k.mv_size == 16 && rd_be64(k.mv_data) == id) *step = (int64_t)rd_be64((uint8_t *)k.mv_data + 8);
cleanup:
    if (cur) mdb_cursor_close(cur);
    if (txn) mdb_txn_abort(txn);
    return rc;
}

int state_ledger_range(state_t *s, uint64_t id, int64_t from, int64_t to, cJSON **out) {
    int rc = 0;
    MDB_txn *txn = NULL;
    MDB_cursor *cur = NULL;
    *out = cJSON_CreateArray();
    ALLOC_CHECK_GOTO(*out);
    uint8_t key[16];
    be64(key, id);
    be64(key + 8, (uint64_t)(from < 0 ? 0 : from));
    MDB_CHECK_GOTO(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn));
    MDB_CHECK_GOTO(mdb_cursor_open(txn, s->ledger, &cur));
    MDB_val k = {16, key}, d;
    int mrc = mdb_cursor_get(cur, &k, &d, MDB_SET_RANGE);
    while (mrc == 0 && k.mv_size == 16 && rd_be64(k.mv_data) == id) {
        int64_t step = (int64_t)rd_be64((uint8_t *)k.mv_data + 8);
        if (to >= 0 && step > to) break;
        cJSON *e = cJSON_ParseWithLength(d.mv_data, d.mv_size);
        CHECK_GOTO(e, LLAVA_EFORMAT, "ledger: job %llu step %lld is not valid JSON", (unsigned long long)id,
                   (long long)step);
        cJSON_AddItemToArray(*out, e);
        mrc = mdb_cursor_get(cur, &k, &d, MDB_NEXT);
    }
cleanup:
    if (cur) mdb_cursor_close(cur);
    if (txn) mdb_txn_abort(txn);
    if (rc) {
        cJSON_Delete(*out);
        *out = NULL;
    }
    return rc;
}
