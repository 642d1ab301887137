/* The simulated backend: no model, deterministic arithmetic whose "loss" depends on the samples AND on every
 * earlier update, so a skipped, repeated or reordered step changes later losses (what the fault-injection and
 * equivalence tests look for). Used by tests/integration/ and bench/bench_coordinator. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "worker/backend.h"

#define SIM_PARAMS 4096

typedef struct {
    int mb_ms;
    int loaded;
    float params[SIM_PARAMS];
    float grads[SIM_PARAMS];
} sim_t;

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {}
}

static int sim_load_state(sim_t *s, const char *dir, char *err, size_t errlen) {
    char path[1100];
    snprintf(path, sizeof path, "%s/sim_state.bin", dir);
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open", path);
        return LLAVA_EIO;
    }
    size_t n = fread(s->params, sizeof(float), SIM_PARAMS, f);
    fclose(f);
    if (n != SIM_PARAMS) {
        snprintf(err, errlen, "%s: truncated (%zu of %d values)", path, n, SIM_PARAMS);
        return LLAVA_EFORMAT;
    }
    return 0;
}

static int sim_job_load(backend_t *b, const cJSON *job, char *err, size_t errlen) {
    sim_t *s = b->impl;
    for (int i = 0; i < SIM_PARAMS; i++) s->params[i] = 1.0f + (float)(i % 7) * 0.125f;
    memset(s->grads, 0, sizeof s->grads);
    const cJSON *resume = cJSON_GetObjectItemCaseSensitive(job, "resume");
    if (cJSON_IsString(resume)) {
        int rc = sim_load_state(s, resume->valuestring, err, errlen);
        if (rc) return rc;
    }
    s->loaded = 1;
    return 0;
}

static int sim_run_mb(backend_t *b, const int64_t *samples, int n, mb_result_t *out, char *err, size_t errlen) {
    sim_t *s = b->impl;
    if (!s->loaded) {
        snprintf(err, errlen, "no job loaded");
        return LLAVA_EINVAL;
    }
    memset(out, 0, sizeof *out);
    for (int i = 0; i < n; i++) {
        uint64_t x = (uint64_t)samples[i];
        int k = (int)(x % SIM_PARAMS);
        double w = (double)(x % 97 + 1) * 0.01;
        int64_t t = (int64_t)(x % 13 + 1);
        out->loss_sum += w * (double)t * (1.0 + fabs((double)s->params[k]));
        out->n_targets += t;
        out->tokens += t + 8;
        s->grads[k] += (float)(w * (double)t);
        s->grads[(k * 31 + 7) % SIM_PARAMS] -= (float)(0.5 * w);
    }
    if (s->mb_ms > 0) sleep_ms(s->mb_ms);
    return 0;
}

static float *sim_grads(backend_t *b, size_t *n) {
    *n = SIM_PARAMS;
    return ((sim_t *)b->impl)->grads;
}

static int sim_apply(backend_t *b, float *g, double scale, double lr, int64_t step, double *grad_norm, char *err,
                     size_t errlen) {
    (void)step;
    (void)err;
    (void)errlen;
    sim_t *s = b->impl;
    double ss = 0;
    for (int i = 0; i < SIM_PARAMS; i++) {
        g[i] = (float)(g[i] * scale);
        ss += (double)g[i] * g[i];
    }
    *grad_norm = sqrt(ss);
    double clip = *grad_norm > 1.0 ? 1.0 / *grad_norm : 1.0;
    for (int i = 0; i < SIM_PARAMS; i++) s->params[i] -= (float)(lr * clip * g[i]);
    memset(s->grads, 0, sizeof s->grads);
    return 0;
}

static void sim_zero(backend_t *b) { memset(((sim_t *)b->impl)->grads, 0, sizeof(float) * SIM_PARAMS); }

static int sim_checkpoint(backend_t *b, const char *dir, const cJSON *trainer_state, char *err, size_t errlen) {
    sim_t *s = b->impl;
    char path[1100];
    snprintf(path, sizeof path, "%s/sim_state.bin", dir);
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(s->params, sizeof(float), SIM_PARAMS, f) == SIM_PARAMS && fflush(f) == 0;
    int e = errno;
    if (f && fclose(f) != 0 && ok) {
        ok = 0;
        e = errno;
    }
    if (!ok) {
        snprintf(err, errlen, "%s: write failed: %s", path, strerror(e));
        return e == ENOSPC ? LLAVA_ENOSPACE : LLAVA_EIO;
    }
    (void)trainer_state; /* the worker writes trainer_state.json itself */
    return 0;
}

static int sim_state_export(backend_t *b, void **buf, size_t *len, char *err, size_t errlen) {
    sim_t *s = b->impl;
    if (!s->loaded) {
        snprintf(err, errlen, "no job loaded");
        return LLAVA_EINVAL;
    }
    *buf = malloc(sizeof s->params);
    if (!*buf) return LLAVA_ENOMEM;
    memcpy(*buf, s->params, sizeof s->params);
    *len = sizeof s->params;
    return 0;
}

static int sim_state_import(backend_t *b, const void *buf, size_t len, char *err, size_t errlen) {
    sim_t *s = b->impl;
    if (!s->loaded || len != sizeof s->params) {
        snprintf(err, errlen, "state of %zu bytes, expected %zu", len, sizeof s->params);
        return LLAVA_EFORMAT;
    }
    memcpy(s->params, buf, len);
    memset(s->grads, 0, sizeof s->grads);
    return 0;
}

static void sim_release(backend_t *b) { ((sim_t *)b->impl)->loaded = 0; }

static void sim_destroy(backend_t *b) {
    free(b->impl);
    free(b);
}

static const backend_ops_t k_sim_ops = {
    .name = "sim", .job_load = sim_job_load, .run_mb = sim_run_mb, .grads = sim_grads, .apply = sim_apply,
    .zero_grads = sim_zero, .state_export = sim_state_export, .state_import = sim_state_import,
    .checkpoint = sim_checkpoint, .job_release = sim_release, .destroy = sim_destroy,
};

int backend_sim_new(int mb_ms, backend_t **out) {
    backend_t *b = calloc(1, sizeof *b);
    sim_t *s = calloc(1, sizeof *s);
    if (!b || !s) {
        free(b);
        free(s);
        return LLAVA_ENOMEM;
    }
    s->mb_ms = mb_ms;
    b->ops = &k_sim_ops;
    b->impl = s;
    b->threads = 1;
    *out = b;
    return 0;
}

void backend_free(backend_t **pb) {
    if (!pb || !*pb) return;
    (*pb)->ops->destroy(*pb);
    *pb = NULL;
}
