/* The worker's compute thread (worker/worker_compute.c) with MB {last} and DRAIN: a scripted backend records the
 * device operations it is asked for, the test plays the coordinator over the thread's pipe. Checked: last/DRAIN
 * handled before the generation's PEERS, of an older generation, or by a backend without device collectives
 * start nothing; with the communicator open, MB {last} arms before its backward and launches after it, DRAIN
 * launches, REDUCE then sums (waits); a failed early launch is reported by REDUCE as a broken all-reduce (no sum
 * is attempted) and a new generation closes the communicator and clears it. Run: ctest -R test_worker_early. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/err.h"
#include "common/wire.h"
#include "tests/test.h"
#include "worker/worker_internal.h"

typedef struct {
    char log[4096]; /* the backend calls, space-separated */
    int early_rc;   /* what dev_reduce_early returns */
    float g[4];
} fake_t;

static void note(backend_t *b, const char *what) {
    fake_t *f = b->impl;
    size_t n = strlen(f->log);
    snprintf(f->log + n, sizeof f->log - n, "%s%s", n ? " " : "", what);
}

static int f_load(backend_t *b, const cJSON *job, char *err, size_t len) {
    (void)job, (void)err, (void)len;
    note(b, "load");
    return 0;
}
static int f_run_mb(backend_t *b, const int64_t *s, int n, mb_result_t *out, char *err, size_t len) {
    (void)s, (void)n, (void)err, (void)len;
    note(b, "mb");
    *out = (mb_result_t){.loss_sum = 1, .n_targets = 1, .tokens = 1};
    return 0;
}
static float *f_grads(backend_t *b, size_t *n) {
    *n = 4;
    return ((fake_t *)b->impl)->g;
}
static int f_apply(backend_t *b, float *g, double sc, double lr, int64_t st, double *gn, char *err, size_t len) {
    (void)g, (void)sc, (void)lr, (void)st, (void)err, (void)len;
    note(b, "apply");
    *gn = 1;
    return 0;
}
static void f_zero(backend_t *b) { note(b, "zero"); }
static void f_release(backend_t *b) { (void)b; }
static int f_comm_id(backend_t *b, char *id, size_t len) {
    (void)b;
    if (len < 257) return LLAVA_EINVAL;
    memset(id, 'a', 256);
    id[256] = 0;
    return 1;
}
static int f_comm_open(backend_t *b, const char *id, int rank, int world, uint64_t gen, int ms, int (*ab)(void *),
                       void *ud) {
    (void)id, (void)rank, (void)world, (void)gen, (void)ms, (void)ab, (void)ud;
    note(b, "open");
    return 0;
}
static int f_allreduce(backend_t *b, int ms, int (*ab)(void *), void *ud, double *ss) {
    (void)ms, (void)ab, (void)ud;
    note(b, "sum");
    *ss = 4;
    return 0;
}
static int f_early(backend_t *b, int arm) {
    fake_t *f = b->impl;
    note(b, arm ? "arm" : "launch");
    return f->early_rc;
}
static void f_close(backend_t *b) { note(b, "close"); }

static const backend_ops_t k_dev = {.name = "fake", .job_load = f_load, .run_mb = f_run_mb, .grads = f_grads,
                                    .apply = f_apply, .zero_grads = f_zero, .job_release = f_release,
                                    .dev_comm_id = f_comm_id, .dev_comm_open = f_comm_open,
                                    .dev_allreduce = f_allreduce, .dev_reduce_early = f_early,
                                    .dev_comm_close = f_close};
/* the same without early sums (an older backend): last/DRAIN must start nothing */
static const backend_ops_t k_late = {.name = "late", .job_load = f_load, .run_mb = f_run_mb, .grads = f_grads,
                                     .apply = f_apply, .zero_grads = f_zero, .job_release = f_release,
                                     .dev_comm_id = f_comm_id, .dev_comm_open = f_comm_open,
                                     .dev_allreduce = f_allreduce, .dev_comm_close = f_close};

static void *g_pipe;
static char g_ep[300];

static void tell(int type, uint32_t gen, int64_t step, cJSON *body) {
    wire_msg_t m = {.type = (uint16_t)type, .job = 7, .generation = gen, .step = step,
                    .body = body ? body : cJSON_CreateObject()};
    CHECK_RC(wire_send(g_pipe, NULL, 0, &m, 0), 0);
    cJSON_Delete(m.body);
}

static cJSON *mb_body(int last) {
    cJSON *b = cJSON_CreateObject();
    cJSON_AddNumberToObject(b, "mb", 0);
    cJSON_AddItemToArray(cJSON_AddArrayToObject(b, "samples"), cJSON_CreateNumber(3));
    if (last) cJSON_AddBoolToObject(b, "last", 1);
    return b;
}

/* The thread's next answer (type), its body kept in *body when asked; -1 after 5 s. */
static int answer(cJSON **body) {
    zmq_pollitem_t it = {g_pipe, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, 5000) != 1) return -1;
    wire_msg_t m;
    if (wire_recv(g_pipe, NULL, NULL, &m, 0)) return -1;
    int t = m.type;
    if (t == MSG_READY) {
        const char *ep = wire_get_str(m.body, "endpoint", NULL);
        if (ep) snprintf(g_ep, sizeof g_ep, "%s", ep);
    }
    if (body) *body = cJSON_Duplicate(m.body, 1);
    wire_msg_clear(&m);
    return t;
}

/* The calls since the last check equal want. */
static void calls(fake_t *f, const char *want, const char *when) {
    CHECKF(strcmp(f->log, want) == 0, "%s: backend calls '%s', expected '%s'", when, f->log, want);
    f->log[0] = 0;
}

static void generation(worker_ctx_t *x, uint32_t gen) {
    atomic_store(&x->generation, gen);
    atomic_fetch_add(&x->fence, 1); /* as the I/O thread does */
    cJSON *b = cJSON_CreateObject();
    cJSON_AddNumberToObject(b, "rank", 0);
    cJSON_AddNumberToObject(b, "world", 1);
    tell(MSG_GENERATION, gen, -1, b);
    cJSON *r = NULL;
    CHECK_EQ_INT(answer(&r), MSG_READY);
    CHECK(strlen(wire_get_str(r, "nccl_id", "")) == 256);
    cJSON_Delete(r);
}

static void peers(uint32_t gen) {
    cJSON *b = cJSON_CreateObject();
    cJSON_AddItemToArray(cJSON_AddArrayToObject(b, "peers"), cJSON_CreateString(g_ep));
    char id[257];
    memset(id, 'a', 256);
    id[256] = 0;
    cJSON_AddStringToObject(b, "nccl_id", id);
    tell(MSG_PEERS, gen, -1, b);
}

static void reduce(uint32_t gen, int64_t step, int want_error) {
    cJSON *b = cJSON_CreateObject(), *r = NULL;
    cJSON_AddNumberToObject(b, "n_targets", 4);
    cJSON_AddNumberToObject(b, "lr", 0.1);
    tell(MSG_REDUCE, gen, step, b);
    CHECK_EQ_INT(answer(&r), MSG_REDUCED);
    int err = wire_get_str(r, "error", NULL) != NULL;
    CHECKF(err == want_error, "step %lld: REDUCED %s an error", (long long)step, err ? "carries" : "lacks");
    cJSON_Delete(r);
}

static void apply(uint32_t gen, int64_t step, fake_t *f) {
    tell(MSG_APPLY, gen, step, NULL);
    CHECK_EQ_INT(answer(NULL), MSG_APPLIED);
    calls(f, "apply", "APPLY");
}

int main(void) {
    log_set_level(LOG_ERROR);
    static fake_t f;
    backend_t be = {.ops = &k_dev, .impl = &f};
    static worker_ctx_t x;
    x.cfg.bind_host = "127.0.0.1";
    x.backend = &be;
    x.zctx = zmq_ctx_new();
    g_pipe = zmq_socket(x.zctx, ZMQ_PAIR);
    snprintf(x.pipe_ep, sizeof x.pipe_ep, "inproc://test-worker-early");
    CHECK(zmq_bind(g_pipe, x.pipe_ep) == 0);
    atomic_store(&x.job, 7);
    CHECK(pthread_create(&x.thread, NULL, worker_compute_main, &x) == 0);

    cJSON *job = cJSON_CreateObject();
    cJSON_AddNumberToObject(job, "hang_timeout_ms", 2000);
    tell(MSG_JOB, 0, -1, job);
    CHECK_EQ_INT(answer(NULL), MSG_READY);
    calls(&f, "load", "job");

    /* The backend calls are checked after a reply that follows them in the pipe (REDUCED, APPLIED, READY): the
     * launch after MB {last} comes after its MB_DONE. */
    /* generation 1 formed, PEERS not yet there: no communicator, so nothing starts early */
    generation(&x, 1);
    calls(&f, "close", "generation 1");
    tell(MSG_DRAIN, 1, 0, NULL);
    tell(MSG_MB, 1, 0, mb_body(1));
    CHECK_EQ_INT(answer(NULL), MSG_MB_DONE);
    peers(1);
    tell(MSG_MB, 1, 0, mb_body(0));
    CHECK_EQ_INT(answer(NULL), MSG_MB_DONE);
    reduce(1, 0, 0);
    calls(&f, "mb open mb sum", "DRAIN and last before PEERS, PEERS, MB, REDUCE");
    apply(1, 0, &f);

    /* step 1, this worker gets the last micro-batch: armed before its backward, the rest launched after it */
    tell(MSG_MB, 1, 1, mb_body(0));
    tell(MSG_MB, 1, 1, mb_body(1));
    CHECK_EQ_INT(answer(NULL), MSG_MB_DONE);
    CHECK_EQ_INT(answer(NULL), MSG_MB_DONE);
    reduce(1, 1, 0);
    calls(&f, "mb arm mb launch sum", "MB, MB {last}, REDUCE");
    apply(1, 1, &f);

    /* step 2, another worker gets it: DRAIN launches everything */
    tell(MSG_MB, 1, 2, mb_body(0));
    CHECK_EQ_INT(answer(NULL), MSG_MB_DONE);
    tell(MSG_DRAIN, 1, 2, NULL);
    reduce(1, 2, 0);
    calls(&f, "mb launch sum", "MB, DRAIN, REDUCE");
    apply(1, 2, &f);

    /* last and DRAIN of an older generation start nothing */
    tell(MSG_MB, 0, 3, mb_body(1));
    CHECK_EQ_INT(answer(NULL), MSG_MB_DONE);
    tell(MSG_DRAIN, 0, 3, NULL);
    reduce(1, 3, 0);
    calls(&f, "mb sum", "last and DRAIN of generation 0, REDUCE");
    apply(1, 3, &f);

    /* a failed early launch: REDUCE reports a broken all-reduce without trying to sum */
    f.early_rc = LLAVA_ECUDA;
    tell(MSG_DRAIN, 1, 4, NULL);
    reduce(1, 4, 1);
    calls(&f, "launch", "a failed DRAIN launch, REDUCE");
    /* the next generation clears it: the step is summed again */
    f.early_rc = 0;
    generation(&x, 2);
    peers(2);
    tell(MSG_DRAIN, 2, 4, NULL);
    reduce(2, 4, 0);
    calls(&f, "close open launch sum", "generation 2: PEERS, DRAIN, REDUCE");
    apply(2, 4, &f);

    /* a backend without early sums: last and DRAIN are harmless */
    be.ops = &k_late;
    tell(MSG_MB, 2, 5, mb_body(1));
    CHECK_EQ_INT(answer(NULL), MSG_MB_DONE);
    tell(MSG_DRAIN, 2, 5, NULL);
    reduce(2, 5, 0);
    calls(&f, "mb sum", "no dev_reduce_early: MB {last}, DRAIN, REDUCE");

    tell(MSG_SHUTDOWN, 0, -1, NULL);
    pthread_join(x.thread, NULL);
    zmq_close(g_pipe);
    zmq_ctx_term(x.zctx);
    return test_finish();
}
