/* The daemons of a cluster test on loopback: start a coordinator spawning local workers (CLUSTER_WORKER_ARGS), stop
 * it, submit a spec, poll status, wait for a step or the end of a job, list member pids, and read the ledger's losses
 * with the exactly-once check. Shared by test_cluster_sim.c and test_cluster_model.c. Header only (each test is one
 * program); before including it a test defines N_SAMPLES, EPOCHS, STEPS and CLUSTER_WORKER_ARGS and sets g_bin (the
 * build directory) and g_tmp (its scratch directory). */
#ifndef LLAVA_TESTS_CLUSTER_HARNESS_H
#define LLAVA_TESTS_CLUSTER_HARNESS_H

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/wire.h"
#include "coordinator/client.h"
#include "tests/coord_spawn.h"
#include "tests/ledger_check.h"
#include "tests/test.h"

static char g_bin[1024], g_tmp[512];

static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

typedef struct {
    pid_t pid;
    char ep[256], state[600];
    client_t *cl;
} cluster_t;

/* Starts a coordinator with `workers` local sim workers; bind NULL = an ephemeral port. */
static inline int cluster_start(cluster_t *c, const char *name, int workers, const char *bind) {
    char epfile[700], nw[16];
    snprintf(c->state, sizeof c->state, "%s/state-%s", g_tmp, name);
    snprintf(epfile, sizeof epfile, "%s.endpoint", c->state);
    snprintf(nw, sizeof nw, "%d", workers);
    char wexe[1100], logp[700];
    snprintf(wexe, sizeof wexe, "%s/llava-worker", g_bin);
    snprintf(logp, sizeof logp, "%s.log", c->state);
    const char *args[] = {"--bind", bind ? bind : "tcp://127.0.0.1:*", "--state", c->state, "--spawn-workers", nw,
                          "--worker-exe", wexe, "--worker-args", CLUSTER_WORKER_ARGS, "--endpoint-file", epfile,
                          NULL};
    c->pid = coord_spawn(g_bin, args, epfile, logp, c->ep, sizeof c->ep);
    if (!c->ep[0]) return -1;
    return client_open(c->ep, &c->cl);
}

static inline void cluster_stop(cluster_t *c, int sig) {
    client_close(&c->cl);
    if (c->pid > 0) {
        kill(c->pid, sig);
        waitpid(c->pid, NULL, 0);
    }
    c->pid = 0;
}

/* The tail of a cluster's daemon log, for a failed check. */
static inline void print_log(const cluster_t *c) {
    char cmd[800];
    snprintf(cmd, sizeof cmd, "tail -n 40 %s.log >&2", c->state);
    if (system(cmd) != 0) fprintf(stderr, "(no log at %s.log)\n", c->state);
}

static inline uint64_t submit(cluster_t *c, cJSON *spec) {
    cJSON *req = cJSON_CreateObject(), *reply = NULL;
    cJSON_AddItemToObject(req, "spec", spec);
    char err[512];
    if (client_request(c->cl, MSG_SUBMIT, 0, req, 5000, &reply, err, sizeof err)) {
        fprintf(stderr, "submit: %s\n", err);
        return 0;
    }
    uint64_t id = (uint64_t)wire_get_i64(reply, "job", 0);
    cJSON_Delete(reply);
    return id;
}

static inline cJSON *status(cluster_t *c, uint64_t job) {
    cJSON *b = cJSON_CreateObject(), *r = NULL;
    cJSON_AddNumberToObject(b, "job", (double)job);
    char err[512];
    if (client_request(c->cl, MSG_STATUS, 0, b, 20000, &r, err, sizeof err)) return NULL;
    return r;
}

static inline const char *job_state(const cJSON *st) {
    return wire_get_str(cJSON_GetObjectItemCaseSensitive(st, "job"), "state", "?");
}

static inline int64_t job_step(const cJSON *st) {
    return wire_get_i64(cJSON_GetObjectItemCaseSensitive(st, "run"), "step", -1);
}

/* Waits until the job ends (returns its state) or timeout_s passes ("timeout"). */
static inline const char *wait_job(cluster_t *c, uint64_t job, double timeout_s, char *buf, size_t len) {
    double end = now_s() + timeout_s;
    snprintf(buf, len, "timeout");
    while (now_s() < end) {
        cJSON *st = status(c, job);
        if (st) {
            const char *s = job_state(st);
            if (strcmp(s, "queued") && strcmp(s, "running")) {
                snprintf(buf, len, "%s", s);
                cJSON_Delete(st);
                return buf;
            }
            cJSON_Delete(st);
        }
        sleep_ms(100);
    }
    return buf;
}

/* Waits until the running job reaches step >= s. */
static inline int wait_step(cluster_t *c, uint64_t job, int64_t s, double timeout_s) {
    double end = now_s() + timeout_s;
    while (now_s() < end) {
        cJSON *st = status(c, job);
        int64_t cur = st ? job_step(st) : -1;
        cJSON_Delete(st);
        if (cur >= s) return 0;
        sleep_ms(30);
    }
    return -1;
}

/* Live worker pids of a running job's members (state busy/ready/loading), up to max. */
static inline int member_pids(cluster_t *c, uint64_t job, pid_t *pids, int max) {
    cJSON *st = status(c, job);
    int n = 0;
    const cJSON *w;
    cJSON_ArrayForEach(w, cJSON_GetObjectItemCaseSensitive(st, "workers")) {
        if (wire_get_i64(w, "rank", -1) >= 0 && strcmp(wire_get_str(w, "state", ""), "dead") != 0 && n < max)
            pids[n++] = (pid_t)wire_get_i64(w, "pid", 0);
    }
    cJSON_Delete(st);
    return n;
}

/* Pids of every worker the coordinator knows (any state), up to max. */
static inline int all_pids(cluster_t *c, pid_t *pids, int max) {
    cJSON *r = NULL;
    char err[512];
    int n = 0;
    if (client_request(c->cl, MSG_WORKERS, 0, NULL, 20000, &r, err, sizeof err)) return 0;
    const cJSON *w;
    cJSON_ArrayForEach(w, cJSON_GetObjectItemCaseSensitive(r, "workers")) if (n < max) pids[n++] =
        (pid_t)wire_get_i64(w, "pid", 0);
    cJSON_Delete(r);
    return n;
}

/* The ledger's per-step losses, and a check that every sample appears exactly once per epoch. */
static inline int ledger_losses(cluster_t *c, uint64_t job, double *loss, int *steps) {
    cJSON *b = cJSON_CreateObject(), *r = NULL;
    cJSON_AddNumberToObject(b, "job", (double)job);
    cJSON_AddNumberToObject(b, "from", 0);
    cJSON_AddNumberToObject(b, "to", -1);
    char err[512];
    if (client_request(c->cl, MSG_LEDGER, 0, b, 20000, &r, err, sizeof err)) return -1;
    int bad = ledger_check(cJSON_GetObjectItemCaseSensitive(r, "steps"), loss, steps);
    cJSON_Delete(r);
    return bad;
}

#endif
