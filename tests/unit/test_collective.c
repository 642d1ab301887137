/* Tests worker/collective: ring all-reduce across 1-4 ranks (threads, each with its own ZeroMQ context) on loopback:
 * bit-identical results on every rank, sums vs a double reference, stale/malformed messages dropped, a dead rank
 * (forked child that _exits) gives LLAVA_ETIMEOUT in bounded time, abort_fn gives LLAVA_EABORTED promptly. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "common/err.h"
#include "tests/test.h"
#include "worker/collective.h"

#define MAXR 4
#define JOB "test-job"

typedef struct {
    int world;
    size_t n;
    size_t chunk_bytes;
    uint64_t gen;
    int inject;                 /* rank 0 injects stale/malformed messages into rank 1 before the collective */
    pthread_barrier_t bound, go;
    char eps[MAXR][256];
    float *in[MAXR], *out[MAXR];
    double f64[MAXR][3];
    int rc[MAXR], rc64[MAXR];
    uint64_t dropped[MAXR];
    int injected_ok, destroyed[MAXR];
} ring_case_t;

typedef struct {
    ring_case_t *rc;
    int rank;
} ring_arg_t;

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Runs on a rank's thread, so it reports through its return value (the CHECK counters are not thread-safe).
 * A comm of the wrong generation/job posing as rank 0: its first pieces reach rank 1 and must be dropped.
 * Returns 1 when everything went as expected. */
static int inject_stale(const char *target, int world, uint64_t gen, const char *job, uint64_t step) {
    comm_config_t cfg = {.rank = 0, .world = world, .generation = gen, .job_id = job, .chunk_bytes = 4096};
    comm_t *c = NULL;
    const char *ep = NULL, *peers[MAXR];
    float junk[64];
    for (int i = 0; i < 64; i++) junk[i] = 1e6f;
    int ok = 1;
    for (int i = 0; i < world; i++) peers[i] = target;
    ok &= comm_create(&cfg, &c) == 0;
    ok &= ok && comm_bind(c, &ep) == 0;
    ok &= ok && comm_connect(c, peers, world) == 0;
    ok &= ok && comm_allreduce(c, junk, 64, step, 100, NULL, NULL) == LLAVA_ETIMEOUT; /* nobody answers it */
    comm_destroy(&c);
    return ok;
}

/* Raw ZeroMQ: a message shorter than a header, one with a bad magic, and one larger than the receiver's limit.
 * Returns 1 when all were sent. */
static int inject_malformed(const char *target, size_t chunk_bytes) {
    void *ctx = zmq_ctx_new(), *s = zmq_socket(ctx, ZMQ_PUSH);
    int linger = 500;
    char small[10] = "garbage";
    size_t big_n = chunk_bytes + 4096;
    char *big = calloc(1, big_n);
    char *bad = calloc(1, 64 + 16);
    int ok = 1;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    ok &= zmq_connect(s, target) == 0;
    ok &= zmq_send(s, small, sizeof small, 0) == (int)sizeof small;
    ok &= zmq_send(s, bad, 64 + 16, 0) == 64 + 16;
    ok &= zmq_send(s, big, big_n, 0) == (int)big_n;
    sleep_ms(50);
    zmq_close(s);
    zmq_ctx_term(ctx);
    free(big);
    free(bad);
    return ok;
}

static void *ring_thread(void *p) {
    ring_arg_t *a = p;
    ring_case_t *rc = a->rc;
    int r = a->rank;
    comm_config_t cfg = {.rank = r, .world = rc->world, .generation = rc->gen, .job_id = JOB,
                         .chunk_bytes = rc->chunk_bytes};
    comm_t *c = NULL;
    const char *ep = NULL, *peers[MAXR];
    rc->rc[r] = comm_create(&cfg, &c);
    if (rc->rc[r] == 0) rc->rc[r] = comm_bind(c, &ep);
    if (rc->rc[r] == 0) snprintf(rc->eps[r], sizeof rc->eps[r], "%s", ep);
    pthread_barrier_wait(&rc->bound);
    for (int i = 0; i < rc->world; i++) peers[i] = rc->eps[i];
    if (rc->rc[r] == 0) rc->rc[r] = comm_connect(c, peers, rc->world);
    if (rc->inject && r == 0 && rc->world > 1) {
        rc->injected_ok = inject_stale(rc->eps[1], rc->world, rc->gen - 1, JOB, 7) &&
                          inject_stale(rc->eps[1], rc->world, rc->gen, "other-job", 7) &&
                          inject_stale(rc->eps[1], rc->world, rc->gen, JOB, 6) && /* an older step */
                          inject_malformed(rc->eps[1], rc->chunk_bytes ? rc->chunk_bytes : (1u << 20));
    }
    pthread_barrier_wait(&rc->go);
    /* The injected messages are flushed (zmq_ctx_term with linger) but arrive on their own connections; rank 1
     * drops a message only when it reads it, and once rank 0's ring data is in it stops reading. Rank 0 starting
     * late lets rank 1 read (and drop) everything already sent while it waits. */
    if (rc->inject && r == 0) sleep_ms(500);
    memcpy(rc->out[r], rc->in[r], rc->n * sizeof(float));
    if (rc->rc[r] == 0) rc->rc[r] = comm_allreduce(c, rc->out[r], rc->n, 7, 5000, NULL, NULL);
    rc->rc64[r] = rc->rc[r] == 0 ? comm_allreduce_f64(c, rc->f64[r], 3, 7, 5000, NULL, NULL) : rc->rc[r];
    rc->dropped[r] = comm_dropped(c);
    comm_destroy(&c);
    rc->destroyed[r] = c == NULL;
    return NULL;
}

static uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Runs one all-reduce of n floats across world threads; returns rank 0's result (caller frees). */
static float *run_case(int world, size_t n, size_t chunk_bytes, int inject) {
    ring_case_t rc;
    ring_arg_t args[MAXR];
    pthread_t th[MAXR];
    uint64_t seed = 0x9e3779b97f4a7c15ull ^ (n * 31 + (size_t)world);
    double *ref = calloc(n ? n : 1, sizeof *ref);
    float *res = NULL;
    memset(&rc, 0, sizeof rc);
    rc.world = world;
    rc.n = n;
    rc.chunk_bytes = chunk_bytes;
    rc.gen = 5;
    rc.inject = inject;
    pthread_barrier_init(&rc.bound, NULL, (unsigned)world);
    pthread_barrier_init(&rc.go, NULL, (unsigned)world);
    for (int r = 0; r < world; r++) {
        rc.in[r] = malloc((n ? n : 1) * sizeof(float));
        rc.out[r] = malloc((n ? n : 1) * sizeof(float));
        for (size_t i = 0; i < n; i++) {
            /* varied magnitudes so the summation order matters */
            float v = (float)((double)(rng_next(&seed) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
            if (i % 5 == 0) v *= 1000.0f;
            rc.in[r][i] = v;
            ref[i] += v;
        }
        rc.f64[r][0] = r + 1;
        rc.f64[r][1] = 1000.0 * r;
        rc.f64[r][2] = 0.5;
    }
    for (int r = 0; r < world; r++) {
        args[r].rc = &rc;
        args[r].rank = r;
        pthread_create(&th[r], NULL, ring_thread, &args[r]);
    }
    for (int r = 0; r < world; r++) pthread_join(th[r], NULL);
    for (int r = 0; r < world; r++) {
        char what[96];
        CHECK_RC(rc.rc[r], 0);
        CHECK_RC(rc.rc64[r], 0);
        CHECK(rc.destroyed[r]);
        CHECKF(memcmp(rc.out[r], rc.out[0], n * sizeof(float)) == 0, "world %d n %zu: rank %d differs from rank 0",
               world, n, r);
        snprintf(what, sizeof what, "world %d n %zu rank %d vs double", world, n, r);
        {
            float *reff = malloc((n ? n : 1) * sizeof(float));
            for (size_t i = 0; i < n; i++) reff[i] = (float)ref[i];
            CHECK_CLOSE(what, rc.out[r], reff, (long)n, 1e-4 * world, 1e-6 * world);
            free(reff);
        }
        CHECK(rc.f64[r][0] == world * (world + 1) / 2.0);
        CHECK(rc.f64[r][1] == 1000.0 * world * (world - 1) / 2.0);
        CHECK(rc.f64[r][2] == 0.5 * world);
    }
    if (inject && world > 1) {
        CHECK(rc.injected_ok);
        CHECKF(rc.dropped[1] >= 5, "rank 1 dropped %llu messages, expected >= 5 (3 stale, 2 malformed)",
               (unsigned long long)rc.dropped[1]);
        CHECK(rc.dropped[0] == 0);
    }
    res = rc.out[0];
    for (int r = 0; r < world; r++) {
        free(rc.in[r]);
        if (r) free(rc.out[r]);
    }
    free(ref);
    pthread_barrier_destroy(&rc.bound);
    pthread_barrier_destroy(&rc.go);
    return res;
}

static void test_sizes(void) {
    static const size_t sizes[] = {1, 7, 1000003};
    for (int world = 1; world <= MAXR; world++)
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) free(run_case(world, sizes[i], 0, 0));
    /* Small pieces: many messages in flight, backpressure, pipelining across ring steps. */
    free(run_case(3, 100003, 1024, 0));
}

static void test_deterministic(void) {
    /* The summation order depends on the world size only, not on the chunking. */
    float *a = run_case(3, 300007, 0, 0), *b = run_case(3, 300007, 4096, 0);
    CHECK(memcmp(a, b, 300007 * sizeof(float)) == 0);
    free(a);
    free(b);
}

static void test_drop(void) {
    free(run_case(3, 20011, 4096, 1));
    free(run_case(2, 5, 0, 1));
}

static void test_bad_args(void) {
    comm_config_t cfg = {.rank = 2, .world = 2};
    comm_t *c = NULL;
    const char *ep;
    float x = 3;
    CHECK_RC(comm_create(&cfg, &c), LLAVA_EINVAL);
    CHECK(c == NULL);
    cfg.rank = 0;
    cfg.chunk_bytes = 3;
    CHECK_RC(comm_create(&cfg, &c), LLAVA_EINVAL);
    cfg.chunk_bytes = 0;
    CHECK_RC(comm_create(&cfg, &c), 0);
    CHECK_RC(comm_allreduce(c, &x, 1, 0, 100, NULL, NULL), LLAVA_EINVAL); /* not bound */
    CHECK_RC(comm_bind(c, &ep), 0);
    CHECK(strncmp(ep, "tcp://127.0.0.1:", 16) == 0);
    CHECK_RC(comm_connect(c, &ep, 1), LLAVA_EINVAL); /* wrong peer count */
    CHECK_RC(comm_allreduce(c, &x, 1, 0, 0, NULL, NULL), LLAVA_EINVAL);
    comm_destroy(&c);
    comm_destroy(&c);
    comm_destroy(NULL);
    /* world 1: no sockets, identity */
    cfg.world = 1;
    CHECK_RC(comm_create(&cfg, &c), 0);
    CHECK_RC(comm_bind(c, &ep), 0);
    CHECK(ep[0] == 0);
    CHECK_RC(comm_connect(c, NULL, 0), 0);
    CHECK_RC(comm_allreduce(c, &x, 1, 0, 100, NULL, NULL), 0);
    CHECK(x == 3);
    comm_destroy(&c);
}

/* ---- a rank that dies: child process plays rank 2 of 3, completes step 0, then _exits inside step 1 ---- */

static int die_now(void *ud) {
    (void)ud;
    _exit(0);
}

static void child_rank(int rfd, int wfd, size_t n) {
    comm_config_t cfg = {.rank = 2, .world = 3, .generation = 9, .job_id = JOB, .chunk_bytes = 65536};
    comm_t *c = NULL;
    const char *ep = NULL, *peers[3];
    char eps[3][256];
    float *buf = calloc(n, sizeof *buf);
    if (!buf || comm_create(&cfg, &c) || comm_bind(c, &ep)) _exit(2);
    memset(eps, 0, sizeof eps);
    snprintf(eps[2], sizeof eps[2], "%s", ep);
    if (write(wfd, eps[2], sizeof eps[2]) != (ssize_t)sizeof eps[2]) _exit(2);
    if (read(rfd, eps, sizeof eps) != (ssize_t)sizeof eps) _exit(2);
    for (int i = 0; i < 3; i++) peers[i] = eps[i];
    if (comm_connect(c, peers, 3) || comm_allreduce(c, buf, n, 0, 5000, NULL, NULL)) _exit(3);
    comm_allreduce(c, buf, n, 1, 5000, die_now, NULL);
    _exit(4); /* not reached */
}

typedef struct {
    int rank;
    char (*eps)[256];
    pthread_barrier_t *bound, *go;
    size_t n;
    int timeout_ms;
    int rc0, rc1;
    int64_t elapsed_ms;
} dead_arg_t;

static void *dead_thread(void *p) {
    dead_arg_t *a = p;
    comm_config_t cfg = {.rank = a->rank, .world = 3, .generation = 9, .job_id = JOB, .chunk_bytes = 65536};
    comm_t *c = NULL;
    const char *ep = NULL, *peers[3];
    float *buf = calloc(a->n, sizeof *buf);
    int64_t t0, t1;
    a->rc0 = comm_create(&cfg, &c);
    if (a->rc0 == 0) a->rc0 = comm_bind(c, &ep);
    if (a->rc0 == 0) snprintf(a->eps[a->rank], 256, "%s", ep);
    pthread_barrier_wait(a->bound);
    pthread_barrier_wait(a->go); /* main has exchanged endpoints with the child */
    for (int i = 0; i < 3; i++) peers[i] = a->eps[i];
    if (a->rc0 == 0) a->rc0 = comm_connect(c, peers, 3);
    if (a->rc0 == 0) a->rc0 = comm_allreduce(c, buf, a->n, 0, 5000, NULL, NULL);
    t0 = now_ms();
    a->rc1 = comm_allreduce(c, buf, a->n, 1, a->timeout_ms, NULL, NULL);
    comm_destroy(&c); /* must not hang on pieces queued for the dead peer */
    t1 = now_ms();
    a->elapsed_ms = t1 - t0;
    free(buf);
    return NULL;
}

static void test_dead_rank(void) {
    int to_child[2], from_child[2], status = 0;
    char eps[3][256];
    size_t n = 1000003;
    pthread_barrier_t bound, go;
    dead_arg_t args[2];
    pthread_t th[2];
    pid_t pid;
    memset(eps, 0, sizeof eps);
    CHECK(pipe(to_child) == 0 && pipe(from_child) == 0);
    pid = fork(); /* before any thread of this test starts */
    CHECK(pid >= 0);
    if (pid == 0) {
        close(to_child[1]);
        close(from_child[0]);
        child_rank(to_child[0], from_child[1], n);
    }
    close(to_child[0]);
    close(from_child[1]);
    pthread_barrier_init(&bound, NULL, 3);
    pthread_barrier_init(&go, NULL, 3);
    for (int r = 0; r < 2; r++) {
        args[r] = (dead_arg_t){.rank = r, .eps = eps, .bound = &bound, .go = &go, .n = n, .timeout_ms = 400};
        pthread_create(&th[r], NULL, dead_thread, &args[r]);
    }
    pthread_barrier_wait(&bound);
    CHECK(read(from_child[0], eps[2], sizeof eps[2]) == (ssize_t)sizeof eps[2]);
    CHECK(write(to_child[1], eps, sizeof eps) == (ssize_t)sizeof eps);
    pthread_barrier_wait(&go);
    for (int r = 0; r < 2; r++) pthread_join(th[r], NULL);
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    for (int r = 0; r < 2; r++) {
        CHECK_RC(args[r].rc0, 0);
        CHECK_RC(args[r].rc1, LLAVA_ETIMEOUT);
        CHECKF(args[r].elapsed_ms < 2 * args[r].timeout_ms, "rank %d took %lld ms to time out (timeout %d)", r,
               (long long)args[r].elapsed_ms, args[r].timeout_ms);
    }
    close(to_child[1]);
    close(from_child[0]);
    pthread_barrier_destroy(&bound);
    pthread_barrier_destroy(&go);
}

/* ---- abort: rank 0 waits on a rank 1 that never joins; abort_fn turns on after 60 ms ---- */

typedef struct {
    atomic_int flag;
    char ep1[256];
    pthread_barrier_t bound;
} abort_case_t;

static int abort_check(void *ud) { return atomic_load(&((abort_case_t *)ud)->flag); }

static void *abort_peer(void *p) {
    abort_case_t *ac = p;
    comm_config_t cfg = {.rank = 1, .world = 2, .generation = 1, .job_id = JOB};
    comm_t *c = NULL;
    const char *ep = "";
    comm_create(&cfg, &c);
    comm_bind(c, &ep);
    snprintf(ac->ep1, sizeof ac->ep1, "%s", ep);
    pthread_barrier_wait(&ac->bound);
    while (!atomic_load(&ac->flag)) sleep_ms(5);
    comm_destroy(&c);
    return NULL;
}

static void *flip_later(void *p) {
    sleep_ms(60);
    atomic_store(&((abort_case_t *)p)->flag, 1);
    return NULL;
}

static void test_abort(void) {
    abort_case_t ac;
    comm_config_t cfg = {.rank = 0, .world = 2, .generation = 1, .job_id = JOB};
    comm_t *c = NULL;
    const char *ep = NULL, *peers[2];
    float buf[1000];
    pthread_t th;
    int64_t t0, t;
    memset(buf, 0, sizeof buf);
    atomic_init(&ac.flag, 0);
    pthread_barrier_init(&ac.bound, NULL, 2);
    pthread_create(&th, NULL, abort_peer, &ac);
    CHECK_RC(comm_create(&cfg, &c), 0);
    CHECK_RC(comm_bind(c, &ep), 0);
    pthread_barrier_wait(&ac.bound);
    peers[0] = ep;
    peers[1] = ac.ep1;
    CHECK_RC(comm_connect(c, peers, 2), 0);
    /* abort already requested: returns at once */
    atomic_store(&ac.flag, 0);
    t0 = now_ms();
    {
        abort_case_t on;
        atomic_init(&on.flag, 1);
        CHECK_RC(comm_allreduce(c, buf, 1000, 0, 5000, abort_check, &on), LLAVA_EABORTED);
    }
    CHECK(now_ms() - t0 < 100);
    comm_destroy(&c);
    /* abort arriving while waiting: a fresh comm (an aborted one is not reused) */
    CHECK_RC(comm_create(&cfg, &c), 0);
    CHECK_RC(comm_bind(c, &ep), 0);
    peers[0] = ep;
    CHECK_RC(comm_connect(c, peers, 2), 0);
    {
        abort_case_t later;
        pthread_t timer;
        atomic_init(&later.flag, 0);
        t0 = now_ms();
        pthread_create(&timer, NULL, flip_later, &later);
        CHECK_RC(comm_allreduce(c, buf, 1000, 1, 5000, abort_check, &later), LLAVA_EABORTED);
        t = now_ms() - t0;
        CHECKF(t >= 55 && t < 300, "aborted after %lld ms, flag set at 60 ms", (long long)t);
        pthread_join(timer, NULL);
    }
    comm_destroy(&c);
    atomic_store(&ac.flag, 1);
    pthread_join(th, NULL);
    pthread_barrier_destroy(&ac.bound);
}

int main(void) {
    log_set_level(LOG_ERROR);
    test_bad_args();
    test_sizes();
    test_deterministic();
    test_drop();
    test_dead_rank();
    test_abort();
    return test_finish();
}
