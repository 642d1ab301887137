/* The coordinator's client-facing requests (submit, status, workers, cancel) and the job scheduler: one job runs at
 * a time, the others wait in submission order; a job submitted "after" another (a later stage) runs only if that
 * one finished. Tested by tests/integration/coordinator_*.sh. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/err.h"
#include "coordinator/coord_internal.h"

const cJSON *spec_get(const cJSON *spec, const char *path) {
    char key[128];
    const cJSON *cur = spec;
    while (cur && *path) {
        size_t n = strcspn(path, ".");
        if (n >= sizeof key) return NULL;
        memcpy(key, path, n);
        key[n] = 0;
        cur = cJSON_GetObjectItemCaseSensitive(cur, key);
        path += n + (path[n] == '.');
    }
    return cur;
}

double spec_num(const cJSON *spec, const char *path, double dflt) {
    const cJSON *v = spec_get(spec, path);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

const char *spec_str(const cJSON *spec, const char *path, const char *dflt) {
    const cJSON *v = spec_get(spec, path);
    return cJSON_IsString(v) ? v->valuestring : dflt;
}

int coord_submit(coord_t *c, const cJSON *req, uint64_t *job, char *err, size_t errlen) {
    const cJSON *spec = cJSON_GetObjectItemCaseSensitive(req, "spec");
    if (!cJSON_IsObject(spec)) {
        snprintf(err, errlen, "submit: the request has no job spec");
        return LLAVA_EINVAL;
    }
    /* The client validated the spec against its file; here only what this machine must have. */
    const char *train = spec_str(spec, "data.train", NULL);
    char manifest[1100];
    struct stat sb;
    snprintf(manifest, sizeof manifest, "%s/manifest.json", train ? train : "");
    if (!train || stat(manifest, &sb) != 0) {
        snprintf(err, errlen, "submit: dataset '%s' has no manifest.json on the coordinator's machine",
                 train ? train : "(none)");
        return LLAVA_ENOTFOUND;
    }
    cJSON *rec = cJSON_CreateObject();
    if (!rec) return LLAVA_ENOMEM;
    cJSON_AddStringToObject(rec, "name", spec_str(spec, "name", "job"));
    cJSON_AddItemToObject(rec, "spec", cJSON_Duplicate(spec, 1));
    int64_t after = wire_get_i64(req, "after", 0);
    if (after > 0) cJSON_AddNumberToObject(rec, "after", (double)after);
    const char *source = wire_get_str(req, "source", NULL);
    if (source) cJSON_AddStringToObject(rec, "source", source);
    int rc = state_job_add(c->st, rec, job);
    cJSON_Delete(rec);
    if (rc) snprintf(err, errlen, "submit: cannot store the job: %s", err_str(rc));
    else LOG_I("job %llu '%s' queued", (unsigned long long)*job, spec_str(spec, "name", "job"));
    return rc;
}

static cJSON *worker_json(const worker_t *w) {
    cJSON *o = cJSON_CreateObject();
    double now = coord_now();
    cJSON_AddNumberToObject(o, "id", w->id);
    cJSON_AddStringToObject(o, "host", w->host);
    cJSON_AddNumberToObject(o, "pid", w->pid);
    cJSON_AddStringToObject(o, "device", w->device);
    cJSON_AddNumberToObject(o, "threads", w->threads);
    cJSON_AddStringToObject(o, "state", coord_worker_state_name(w->state));
    cJSON_AddNumberToObject(o, "rank", w->rank);
    cJSON_AddNumberToObject(o, "mbs_done", (double)w->mbs_done);
    cJSON_AddNumberToObject(o, "mb_ms", w->mb_ms);
    cJSON_AddNumberToObject(o, "step_ms", w->step_ms);
    cJSON_AddNumberToObject(o, "heartbeat_age_ms", (now - w->last_seen) * 1000.0);
    if (w->state == W_DEAD) {
        cJSON_AddStringToObject(o, "dead_reason", w->dead_reason);
        cJSON_AddNumberToObject(o, "dead_for_s", now - w->died_at);
        cJSON_AddNumberToObject(o, "died_at", w->died_wall);
    }
    return o;
}

cJSON *coord_workers_json(coord_t *c) {
    cJSON *o = cJSON_CreateObject();
    cJSON *a = cJSON_AddArrayToObject(o, "workers");
    for (int i = 0; i < c->nw; i++) cJSON_AddItemToArray(a, worker_json(&c->w[i]));
    return o;
}

cJSON *coord_status_json(coord_t *c, uint64_t job, char *err, size_t errlen) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    if (job == 0) {
        if (c->job) job = c->job->id;
        else {
            cJSON *list = NULL;
            if (state_job_list(c->st, &list) == 0) {
                int n = cJSON_GetArraySize(list);
                if (n > 0) job = (uint64_t)wire_get_i64(cJSON_GetArrayItem(list, n - 1), "id", 0);
            }
            cJSON_Delete(list);
        }
    }
    if (job) {
        cJSON *rec = NULL;
        if (state_job_get(c->st, job, &rec) != 0) {
            snprintf(err, errlen, "no job %llu", (unsigned long long)job);
            cJSON_Delete(o);
            return NULL;
        }
        cJSON_DeleteItemFromObject(rec, "spec"); /* large; llavactl shows it from its own file */
        cJSON_AddItemToObject(o, "job", rec);
        if (c->job && c->job->id == job) cJSON_AddItemToObject(o, "run", jobrun_status_json(c));
    }
    cJSON *ws = coord_workers_json(c);
    cJSON_AddItemToObject(o, "workers", cJSON_DetachItemFromObject(ws, "workers"));
    cJSON_Delete(ws);
    return o;
}

void coord_cancel(coord_t *c, uint64_t job, char *err, size_t errlen) {
    if (c->job && c->job->id == job) {
        jobrun_finish(c, JOB_CANCELLED, "cancelled by request");
        return;
    }
    cJSON *rec = NULL;
    if (state_job_get(c->st, job, &rec) != 0) {
        snprintf(err, errlen, "no job %llu", (unsigned long long)job);
        return;
    }
    const char *st = wire_get_str(rec, "state", "");
    if (strcmp(st, JOB_QUEUED) != 0) snprintf(err, errlen, "job %llu is %s, not queued or running",
                                              (unsigned long long)job, st);
    else {
        cJSON *patch = cJSON_CreateObject();
        cJSON_AddStringToObject(patch, "state", JOB_CANCELLED);
        cJSON_AddNumberToObject(patch, "finished_at", (double)time(NULL));
        state_job_update(c->st, job, patch);
        cJSON_Delete(patch);
    }
    cJSON_Delete(rec);
}

/* Picks the next job when none runs. A job whose predecessor ("after") did not finish is cancelled. */
void coord_schedule(coord_t *c) {
    if (c->job) {
        c->idle_since = 0;
        return;
    }
    uint64_t id = 0;
    if (state_job_next(c->st, &id) != 0 || id == 0) {
        if (c->idle_since == 0) c->idle_since = coord_now();
        return;
    }
    c->idle_since = 0;
    cJSON *rec = NULL;
    if (state_job_get(c->st, id, &rec) != 0) return;
    uint64_t after = (uint64_t)wire_get_i64(rec, "after", 0);
    cJSON_Delete(rec);
    if (after) {
        cJSON *prev = NULL;
        const char *pst = "missing";
        if (state_job_get(c->st, after, &prev) == 0) pst = wire_get_str(prev, "state", "?");
        if (strcmp(pst, JOB_DONE) != 0) {
            if (strcmp(pst, JOB_QUEUED) == 0 || strcmp(pst, JOB_RUNNING) == 0) {
                cJSON_Delete(prev);
                return; /* not yet: it is ahead in the queue */
            }
            char why[256];
            snprintf(why, sizeof why, "the job it runs after (%llu) is %s", (unsigned long long)after, pst);
            cJSON *patch = cJSON_CreateObject();
            cJSON_AddStringToObject(patch, "state", JOB_CANCELLED);
            cJSON_AddStringToObject(patch, "error", why);
            state_job_update(c->st, id, patch);
            cJSON_Delete(patch);
            cJSON_Delete(prev);
            c->last_job_failed = 1;
            return;
        }
        cJSON_Delete(prev);
    }
    c->jobs_seen++;
    int rc = jobrun_start(c, id);
    if (rc) {
        char why[256];
        snprintf(why, sizeof why, "cannot start: %s (see the coordinator log)", err_str(rc));
        if (c->job) jobrun_finish(c, JOB_FAILED, why);
        else {
            cJSON *patch = cJSON_CreateObject();
            cJSON_AddStringToObject(patch, "state", JOB_FAILED);
            cJSON_AddStringToObject(patch, "error", why);
            state_job_update(c->st, id, patch);
            cJSON_Delete(patch);
            c->last_job_failed = 1;
        }
    }
}
