/* NCCL layer: one thread per visible GPU joins a non-blocking communicator from relayed unique-id bytes, then
 * all-reduce / reduce-scatter / all-gather (in place), gradient buckets, a ZeRO-1 step checked against the CPU
 * AdamW, and (with >= 2 GPUs) a hung collective broken by the deadline and by the abort callback, then a shrink
 * that drops the silent rank. Skips (77) without a GPU. Run: ctest -R test_cuda_nccl */
#include <pthread.h>

#include "kernels/cuda/nccl_comm.h"
#include "kernels/cuda/zero1.h"
#include "tests/cuda/cuda_test.h"

#define MAXR 16
#define TIMEOUT_MS 60000

typedef struct {
    int world;
    unsigned char uid[NCCL_UID_BYTES];
    pthread_barrier_t bar;
    pthread_mutex_t mu; /* the CHECK counters are shared */
} shared_t;

typedef struct {
    shared_t *sh;
    int rank;
} targ_t;

#define TCHECK(sh, cond)                                                                                       \
    do {                                                                                                       \
        pthread_mutex_lock(&(sh)->mu);                                                                         \
        CHECK(cond);                                                                                           \
        pthread_mutex_unlock(&(sh)->mu);                                                                       \
    } while (0)

static int abort_after(void *ud) {
    int *calls = (int *)ud;
    return ++*calls > 200;
}

static void check_floats(shared_t *sh, const float *dev, const float *want, long n, const char *what, int rank) {
    float *h = hmalloc(n);
    int ok = 1;
    cudaMemcpy(h, dev, (size_t)n * 4, cudaMemcpyDeviceToHost);
    for (long i = 0; i < n && ok; i++)
        if (fabsf(h[i] - want[i]) > 1e-5f * (1.0f + fabsf(want[i]))) {
            fprintf(stderr, "rank %d %s[%ld] = %g, want %g\n", rank, what, i, h[i], want[i]);
            ok = 0;
        }
    TCHECK(sh, ok);
    free(h);
}

static void test_collectives(shared_t *sh, nccl_comm_t *c, int rank, cudaStream_t s) {
    int W = sh->world;
    long n = 1000 * W;
    float *h = hmalloc(n), *want = hmalloc(n), *d = NULL;
    cudaMalloc((void **)&d, (size_t)n * 4);
    for (long i = 0; i < n; i++) h[i] = (float)(rank + 1) + 0.001f * i;
    cudaMemcpy(d, h, (size_t)n * 4, cudaMemcpyHostToDevice);
    TCHECK(sh, nccl_allreduce(c, d, d, (size_t)n, CUDA_DT_F32, s, TIMEOUT_MS, NULL, NULL) == 0);
    for (long i = 0; i < n; i++) want[i] = (float)(W * (W + 1) / 2) + W * 0.001f * i;
    check_floats(sh, d, want, n, "allreduce", rank);
    /* reduce-scatter in place: this rank's block of the sum of the (already summed) buffers = W * want */
    TCHECK(sh, nccl_reduce_scatter(c, d, d + rank * 1000, 1000, CUDA_DT_F32, s, TIMEOUT_MS, NULL, NULL) == 0);
    for (long i = 0; i < 1000; i++) want[i] = W * ((float)(W * (W + 1) / 2) + W * 0.001f * (rank * 1000 + i));
    check_floats(sh, d + rank * 1000, want, 1000, "reduce_scatter", rank);
    /* all-gather in place: every block from its owner */
    TCHECK(sh, nccl_allgather(c, d + rank * 1000, d, 1000, CUDA_DT_F32, s, TIMEOUT_MS, NULL, NULL) == 0);
    for (long i = 0; i < n; i++) want[i] = W * ((float)(W * (W + 1) / 2) + W * 0.001f * i);
    check_floats(sh, d, want, n, "allgather", rank);
    cudaFree(d);
    free(h), free(want);
}

static void test_buckets(shared_t *sh, nccl_comm_t *c, int rank, cudaStream_t s) {
    int W = sh->world;
    long n = 1000;
    float *h = hmalloc(n), *want = hmalloc(n), *d = NULL, *r = NULL;
    nccl_bucketer_t *b = NULL;
    cudaMalloc((void **)&d, (size_t)n * 4);
    cudaMalloc((void **)&r, (size_t)n * 4);
    for (int step = 0; step < 2; step++) {
        for (long i = 0; i < n; i++) h[i] = (float)(rank + 1) * (i + step);
        cudaMemcpy(d, h, (size_t)n * 4, cudaMemcpyHostToDevice);
        /* out of place: the sum lands in r, d keeps this rank's gradients */
        if (!b) TCHECK(sh, nccl_bucketer_new(&b, c, d, r, (size_t)n, 300, CUDA_DT_F32, s) == 0);
        if (!b) break;
        /* 4 buckets (300, 300, 300, 100), launched from the last: bucket 0 waits for buckets 3, 2 and 1 */
        TCHECK(sh, nccl_bucketer_mark_ready(b, 0, 300) == 0);
        TCHECK(sh, nccl_bucketer_launched(b) == 0);
        TCHECK(sh, nccl_bucketer_mark_ready(b, 900, 100) == 0);
        TCHECK(sh, nccl_bucketer_launched(b) == 1);
        TCHECK(sh, nccl_bucketer_mark_ready(b, 650, 250) == 0);
        TCHECK(sh, nccl_bucketer_launched(b) == 1);
        TCHECK(sh, nccl_bucketer_mark_ready(b, 600, 50) == 0);
        TCHECK(sh, nccl_bucketer_launched(b) == 2);
        TCHECK(sh, nccl_bucketer_mark_ready(b, 600, 1) == LLAVA_EINVAL); /* bucket 2 is done */
        TCHECK(sh, nccl_bucketer_mark_ready(b, 990, 20) == LLAVA_EINVAL); /* outside */
        TCHECK(sh, nccl_bucketer_mark_ready(b, 300, 300) == 0);
        TCHECK(sh, nccl_bucketer_launched(b) == 4);
        TCHECK(sh, nccl_bucketer_finish(b, TIMEOUT_MS, NULL, NULL) == 0);
        cudaStreamSynchronize(s);
        for (long i = 0; i < n; i++) want[i] = (float)(W * (W + 1) / 2) * (i + step);
        check_floats(sh, r, want, n, "buckets", rank);
        check_floats(sh, d, h, n, "buckets (send untouched)", rank);
    }
    nccl_bucketer_free(&b);
    cudaFree(d);
    cudaFree(r);
    free(h), free(want);
}

/* ZeRO-1 step in fp32 vs the CPU: sum the ranks' gradients, scale, clip, AdamW. */
static void test_zero1(shared_t *sh, nccl_comm_t *c, int rank, cudaStream_t s) {
    int W = sh->world;
    long n = 1001;
    zero1_layout_t l;
    zero1_hparams_t hp = {1e-3, 0.9, 0.999, 1e-8, 0.01, 1, 0.05f, 0.5f};
    cuda_ctx_t *ctx = NULL;
    float *g = NULL, *w = NULL, *master = NULL, *m = NULL, *v = NULL;
    double norm = 0;
    TCHECK(sh, zero1_layout(&l, n, W, rank) == 0);
    long np = zero1_padded(&l);
    float *hg = hmalloc(np), *hw = hmalloc(np), *gsum = hmalloc(np), *mm = hmalloc(np), *vv = hmalloc(np);
    for (long i = 0; i < np; i++) {
        hw[i] = i < n ? 0.01f * (float)(i % 97) - 0.4f : 0.0f;
        hg[i] = i < n ? (float)(rank + 1) * 0.001f * (float)((i * 13) % 29 - 14) : 0.0f;
        gsum[i] = 0;
        for (int r = 0; r < W; r++) gsum[i] += i < n ? (float)(r + 1) * 0.001f * (float)((i * 13) % 29 - 14) : 0.0f;
    }
    TCHECK(sh, cuda_ctx_new(&ctx, 0) == 0);
    cudaMalloc((void **)&g, (size_t)np * 4), cudaMalloc((void **)&w, (size_t)np * 4);
    cudaMalloc((void **)&master, (size_t)l.shard * 4), cudaMalloc((void **)&m, (size_t)l.shard * 4);
    cudaMalloc((void **)&v, (size_t)l.shard * 4);
    cudaMemcpy(g, hg, (size_t)np * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(w, hw, (size_t)np * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(master, hw + l.offset, (size_t)l.shard * 4, cudaMemcpyHostToDevice);
    cudaMemset(m, 0, (size_t)l.shard * 4), cudaMemset(v, 0, (size_t)l.shard * 4);
    TCHECK(sh, zero1_step(ctx, c, &l, g, w, master, m, v, CUDA_DT_F32, &hp, &norm, s, TIMEOUT_MS, NULL, NULL) == 0);
    /* CPU reference */
    for (long i = 0; i < n; i++) gsum[i] *= hp.grad_scale;
    double ref_norm = sqrt(global_norm_sq(gsum, n));
    float coef = clip_grad_coef(ref_norm, hp.max_norm);
    for (long i = 0; i < n; i++) gsum[i] *= coef;
    memset(mm, 0, sizeof(float) * (size_t)np), memset(vv, 0, sizeof(float) * (size_t)np);
    adamw_update(hw, gsum, mm, vv, n, hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay, hp.t);
    TCHECK(sh, fabs(norm - ref_norm) <= 1e-5 * (1 + ref_norm));
    check_floats(sh, w, hw, n, "zero1 weights", rank);
    cudaFree(g), cudaFree(w), cudaFree(master), cudaFree(m), cudaFree(v);
    cuda_ctx_free(&ctx);
    free(hg), free(hw), free(gsum), free(mm), free(vv);
}

/* Rank W-1 goes silent: the others' all-reduce fails by deadline, then by the abort callback (on a new
 * communicator), and the survivors shrink to W-1 ranks and reduce again. */
static void test_failures(shared_t *sh, nccl_comm_t **pc, int rank, cudaStream_t s) {
    int W = sh->world, silent = W - 1, calls = 0;
    float *d = NULL, one = 1.0f, got = 0;
    nccl_comm_t *small = NULL;
    cudaMalloc((void **)&d, 4);
    cudaMemcpy(d, &one, 4, cudaMemcpyHostToDevice);
    if (rank != silent) {
        TCHECK(sh, nccl_allreduce(*pc, d, d, 1, CUDA_DT_F32, s, 500, NULL, NULL) == LLAVA_ETIMEOUT);
    } else {
        TCHECK(sh, nccl_comm_abort(*pc) == 0); /* a dead rank's communicator goes away */
    }
    nccl_comm_close(pc, 1000);
    pthread_barrier_wait(&sh->bar);
    /* a fresh generation without the silent rank's participation: abort callback */
    if (rank == 0) TCHECK(sh, nccl_uid_new(sh->uid) == 0);
    pthread_barrier_wait(&sh->bar);
    TCHECK(sh, nccl_comm_open(pc, sh->uid, W, rank, rank, 2, TIMEOUT_MS, NULL, NULL) == 0);
    pthread_barrier_wait(&sh->bar);
    if (rank != silent)
        TCHECK(sh, nccl_allreduce(*pc, d, d, 1, CUDA_DT_F32, s, TIMEOUT_MS, abort_after, &calls) == LLAVA_EABORTED);
    nccl_comm_close(pc, 1000);
    pthread_barrier_wait(&sh->bar);
    /* generation 3: everyone joins, then the survivors shrink away the silent rank */
    if (rank == 0) TCHECK(sh, nccl_uid_new(sh->uid) == 0);
    pthread_barrier_wait(&sh->bar);
    TCHECK(sh, nccl_comm_open(pc, sh->uid, W, rank, rank, 3, TIMEOUT_MS, NULL, NULL) == 0);
    pthread_barrier_wait(&sh->bar);
    if (rank != silent && *pc) {
        int ex = silent;
        TCHECK(sh, nccl_comm_shrink(*pc, &ex, 1, 4, TIMEOUT_MS, NULL, NULL, &small) == 0);
        if (small) {
            TCHECK(sh, nccl_comm_world(small) == W - 1 && nccl_comm_rank(small) == rank);
            cudaMemcpy(d, &one, 4, cudaMemcpyHostToDevice);
            TCHECK(sh, nccl_allreduce(small, d, d, 1, CUDA_DT_F32, s, TIMEOUT_MS, NULL, NULL) == 0);
            cudaMemcpy(&got, d, 4, cudaMemcpyDeviceToHost);
            TCHECK(sh, got == (float)(W - 1));
            nccl_comm_close(&small, TIMEOUT_MS);
        }
    }
    if (rank == silent && *pc) (void)nccl_comm_abort(*pc);
    nccl_comm_close(pc, 1000);
    cudaFree(d);
}

static void *rank_main(void *p) {
    targ_t *a = (targ_t *)p;
    shared_t *sh = a->sh;
    nccl_comm_t *c = NULL;
    cudaStream_t s = NULL;
    cudaSetDevice(a->rank);
    cudaStreamCreate(&s);
    TCHECK(sh, nccl_comm_open(&c, sh->uid, sh->world, a->rank, a->rank, 1, TIMEOUT_MS, NULL, NULL) == 0);
    if (c) {
        TCHECK(sh, nccl_comm_world(c) == sh->world && nccl_comm_rank(c) == a->rank && nccl_comm_generation(c) == 1);
        test_collectives(sh, c, a->rank, s);
        test_buckets(sh, c, a->rank, s);
        test_zero1(sh, c, a->rank, s);
    }
    pthread_barrier_wait(&sh->bar);
    if (sh->world >= 2 && c) test_failures(sh, &c, a->rank, s);
    nccl_comm_close(&c, TIMEOUT_MS);
    cudaStreamDestroy(s);
    return NULL;
}

int main(void) {
    shared_t sh;
    pthread_t th[MAXR];
    targ_t args[MAXR];
    CUDA_TEST_SKIP_IF_NO_DEVICE();
    sh.world = cuda_device_count();
    if (sh.world > MAXR) sh.world = MAXR;
    printf("NCCL test over %d GPU(s)%s\n", sh.world, sh.world < 2 ? " (failure and shrink cases need >= 2)" : "");
    pthread_barrier_init(&sh.bar, NULL, (unsigned)sh.world);
    pthread_mutex_init(&sh.mu, NULL);
    CHECK_RC(nccl_uid_new(sh.uid), 0);
    for (int r = 0; r < sh.world; r++) {
        args[r].sh = &sh;
        args[r].rank = r;
        pthread_create(&th[r], NULL, rank_main, &args[r]);
    }
    for (int r = 0; r < sh.world; r++) pthread_join(th[r], NULL);
    pthread_barrier_destroy(&sh.bar);
    pthread_mutex_destroy(&sh.mu);
    /* bad arguments */
    nccl_comm_t *c = NULL;
    CHECK_RC(nccl_comm_open(&c, sh.uid, 2, 5, 0, 1, 1000, NULL, NULL), LLAVA_EINVAL);
    zero1_layout_t l;
    CHECK_RC(zero1_layout(&l, 0, 2, 0), LLAVA_EINVAL);
    CHECK_RC(zero1_layout(&l, 10, 4, 3), 0);
    CHECK(l.shard == 3 && l.offset == 9 && l.local == 1 && zero1_padded(&l) == 12);
    return test_finish();
}
