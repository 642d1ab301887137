/* The worker's early all-reduce (llava_cuda_reduce_early / _finish / _cancel, what backend_model.c runs for
 * MB {last}, DRAIN, REDUCE and GENERATION): W ranks (threads) run different numbers of micro-batches of the fixture
 * batch; rank 0 gets the step's last micro-batch (its backward launches the buckets), the others DRAIN (they
 * launch all buckets at once). Checked, bit for bit against one out-of-place all-reduce of the accumulated
 * gradients on the same communicator: (1) the overlapped step; (2) a new generation between DRAIN and REDUCE:
 * the early buckets are dropped, the accumulated gradients are intact and REDUCE re-issues the whole sum on the
 * new communicator; (3) as (2), but a re-queued micro-batch goes to a drained rank in the new generation, which
 * gets it as its last (the others DRAIN again). Needs one GPU per rank (skips with 77 without one);
 * kernels/cuda/emu/run.sh overlap runs it on the CPU with 2 ranks on the emulated device and a fake NCCL. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/cuda/cuda_test.h"
#include "worker/batchfile.h"
#include "worker/model_cuda.h"

#define MAX_W 4
#define TIMEOUT_MS 120000

typedef struct {
    const char *dir; /* fixture case dir */
    cuda_dtype_t dt;
    train_mode_t mode;
    int W, rank, device;
    const unsigned char *uid[4]; /* one communicator per generation */
    int rc, nbad[3], nchanged[3];
    int during[2], nbuckets; /* buckets launched by the armed backward (cases 1 and 3; -1: not armed) */
    size_t n;
} rank_t;

typedef struct {
    llava_model_t *m;
    llava_cuda_t *g;
    batch_t b;
    size_t n, be, dts;
    float *acc;           /* [n] this rank's own accumulated gradients, computed without any communicator */
    unsigned char *sum, *ref; /* [n * dts] raw device bytes: the sum buffer, the reference */
    void *tmp;            /* device [n]: the reference all-reduce */
} ctx_t;

static int fb(ctx_t *x, train_mode_t mode, int accumulate) {
    double loss = 0;
    int64_t nt = 0;
    return llava_cuda_forward_backward(x->g, &x->b, mode, &loss, &nt, accumulate);
}

/* The rank's micro-batches of a step: k of them, the last armed when `last`, then the rest of the buckets;
 * *during (may be NULL) gets the buckets the armed backward launched. */
static int compute(ctx_t *x, rank_t *a, nccl_comm_t *c, int k, int last, int *during) {
    int rc = 0;
    if (during) *during = -1;
    for (int i = 0; i < k; i++) {
        if (last && i == k - 1) RC_CHECK_GOTO(llava_cuda_reduce_early(x->g, c, 1, x->be));
        RC_CHECK_GOTO(fb(x, a->mode, 1));
    }
    if (last && during) *during = llava_cuda_reduce_launched(x->g);
    RC_CHECK_GOTO(llava_cuda_reduce_early(x->g, c, 0, x->be)); /* after the last backward, or DRAIN */
cleanup:
    return rc;
}

/* REDUCE on c: the sum buffer vs one all-reduce of the accumulated gradients (raw bytes in the training dtype);
 * counts differing elements. */
static int reduce_check(ctx_t *x, nccl_comm_t *c, int *nbad) {
    int rc = 0;
    double ss = 0;
    void *dev = NULL, *sum = NULL;
    size_t n = 0;
    cuda_dtype_t dt;
    RC_CHECK_GOTO(llava_cuda_reduce_finish(x->g, c, TIMEOUT_MS, NULL, NULL, &ss));
    RC_CHECK_GOTO(llava_cuda_gsum_device(x->g, &sum));
    RC_CHECK_GOTO(llava_cuda_grads_device(x->g, &dev, &n, &dt));
    RC_CHECK_GOTO(nccl_allreduce(c, dev, x->tmp, n, dt, llava_cuda_stream(x->g), TIMEOUT_MS, NULL, NULL));
    CUDA_CHECK_GOTO(cudaMemcpy(x->ref, x->tmp, n * x->dts, cudaMemcpyDeviceToHost));
    CUDA_CHECK_GOTO(cudaMemcpy(x->sum, sum, n * x->dts, cudaMemcpyDeviceToHost));
    *nbad = 0;
    for (size_t i = 0; i < n; i++) *nbad += memcmp(x->sum + i * x->dts, x->ref + i * x->dts, x->dts) != 0;
cleanup:
    return rc;
}

/* Elements of the accumulated gradients that differ from x->acc. */
static int changed(ctx_t *x) {
    size_t nh = 0;
    float *h = llava_cuda_grads_download(x->g, &nh);
    if (!h || nh != x->n) return -1;
    int d = 0;
    for (size_t i = 0; i < nh; i++) d += memcmp(&h[i], &x->acc[i], sizeof(float)) != 0;
    return d;
}

static int snapshot(ctx_t *x) {
    size_t nh = 0;
    float *h = llava_cuda_grads_download(x->g, &nh);
    if (!h || nh != x->n) return LLAVA_ECUDA;
    memcpy(x->acc, h, nh * sizeof(float));
    return 0;
}

static void *rank_main(void *p) {
    rank_t *a = p;
    int rc = 0;
    char path[1200];
    ctx_t x;
    memset(&x, 0, sizeof x);
    nccl_comm_t *c = NULL;
    llava_cuda_opts_t o = {.device = a->device, .dt = a->dt};
    void *dev = NULL;
    cuda_dtype_t dt;
    int mine = a->rank + 1; /* micro-batches per step: rank 0 computes 1 (the last), rank r computes r + 1 */
    snprintf(path, sizeof path, "%s/model", a->dir);
    RC_CHECK_GOTO(llava_model_load(path, &x.m));
    snprintf(path, sizeof path, "%s/batch.safetensors", a->dir);
    RC_CHECK_GOTO(batch_file_read(path, &x.b));
    RC_CHECK_GOTO(llava_cuda_new(x.m, &o, &x.g));
    RC_CHECK_GOTO(llava_cuda_grads_prepare(x.g, a->mode));
    RC_CHECK_GOTO(llava_cuda_grads_device(x.g, &dev, &x.n, &dt));
    a->n = x.n;
    x.dts = cuda_dtype_size(dt);
    x.be = x.n / 7 + 3; /* several buckets per tensor and tensors across buckets */
    a->nbuckets = (int)((x.n + x.be - 1) / x.be);
    x.acc = malloc(x.n * sizeof(float));
    x.sum = malloc(x.n * x.dts);
    x.ref = malloc(x.n * x.dts);
    ALLOC_CHECK_GOTO(x.acc && x.sum && x.ref ? x.acc : NULL);
    CUDA_CHECK_GOTO(cudaMalloc(&x.tmp, x.n * x.dts));
    /* this rank's own gradients of a step, before any communicator exists */
    for (int i = 0; i < mine; i++) RC_CHECK_GOTO(fb(&x, a->mode, i > 0));
    RC_CHECK_GOTO(snapshot(&x));

    /* (1) generation 1: rank 0 gets MB {last}, the others DRAIN after their micro-batches; then REDUCE */
    RC_CHECK_GOTO(nccl_comm_open(&c, a->uid[0], a->W, a->rank, a->device, 1, TIMEOUT_MS, NULL, NULL));
    RC_CHECK_GOTO(llava_cuda_grads_zero(x.g));
    RC_CHECK_GOTO(compute(&x, a, c, mine, a->rank == 0, &a->during[0]));
    RC_CHECK_GOTO(reduce_check(&x, c, &a->nbad[0]));
    a->nchanged[0] = changed(&x); /* out of place: the sum did not touch them */

    /* (2) a member dies between DRAIN and REDUCE: the buckets went (the same gradients again, all at once as after
     * DRAIN); GENERATION drops them before REDUCE */
    RC_CHECK_GOTO(compute(&x, a, c, 0, 0, NULL));
    llava_cuda_reduce_cancel(x.g); /* what dev_comm_close does on GENERATION */
    nccl_comm_close(&c, 10000);
    a->nchanged[1] = changed(&x);
    RC_CHECK_GOTO(nccl_comm_open(&c, a->uid[1], a->W, a->rank, a->device, 2, TIMEOUT_MS, NULL, NULL));
    RC_CHECK_GOTO(reduce_check(&x, c, &a->nbad[1])); /* nothing went early on it: the whole sum again */

    /* (3) as (2), and the dead member's micro-batch is re-queued to the last rank (drained before): it is its
     * last in generation 3, everyone else DRAINs again */
    RC_CHECK_GOTO(compute(&x, a, c, 0, 0, NULL));
    llava_cuda_reduce_cancel(x.g);
    nccl_comm_close(&c, 10000);
    a->nchanged[2] = changed(&x);
    RC_CHECK_GOTO(nccl_comm_open(&c, a->uid[2], a->W, a->rank, a->device, 3, TIMEOUT_MS, NULL, NULL));
    RC_CHECK_GOTO(compute(&x, a, c, a->rank == a->W - 1 ? 1 : 0, a->rank == a->W - 1, &a->during[1]));
    RC_CHECK_GOTO(reduce_check(&x, c, &a->nbad[2]));
cleanup:
    a->rc = rc;
    llava_cuda_reduce_cancel(x.g);
    nccl_comm_close(&c, 10000);
    cudaFree(x.tmp);
    free(x.acc);
    free(x.sum);
    free(x.ref);
    llava_cuda_free(&x.g);
    llava_model_free(&x.m);
    batch_free(&x.b);
    return NULL;
}

static void run(const char *dir, const char *name, cuda_dtype_t dt, train_mode_t mode, int W, int ndev) {
    rank_t rk[MAX_W];
    pthread_t th[MAX_W];
    unsigned char uid[3][NCCL_UID_BYTES];
    for (int i = 0; i < 3; i++) CHECK_RC(nccl_uid_new(uid[i]), 0);
    for (int r = 0; r < W; r++) {
        rk[r] = (rank_t){.dir = dir, .dt = dt, .mode = mode, .W = W, .rank = r, .device = r % ndev,
                         .uid = {uid[0], uid[1], uid[2]}};
        CHECK(pthread_create(&th[r], NULL, rank_main, &rk[r]) == 0);
    }
    for (int r = 0; r < W; r++) pthread_join(th[r], NULL);
    for (int r = 0; r < W; r++) {
        CHECK_RC(rk[r].rc, 0);
        if (rk[r].rc) continue;
        printf("  %s %s %s W=%d rank %d: %zu gradients; sum == one all-reduce after the backward: overlapped step "
               "%d differ, generation change between DRAIN and REDUCE %d differ, re-queued last micro-batch %d "
               "differ; accumulated gradients changed by the sums: %d, %d, %d; buckets launched by the armed backward "
               "(-1: not armed) %d, %d of %d\n", name,
               dt == CUDA_DT_F32 ? "fp32" : "bf16", mode == TRAIN_ALL ? "all" : "projector", W, r, rk[r].n,
               rk[r].nbad[0], rk[r].nbad[1], rk[r].nbad[2], rk[r].nchanged[0], rk[r].nchanged[1],
               rk[r].nchanged[2], rk[r].during[0], rk[r].during[1], rk[r].nbuckets);
        /* the fixture batch has images and targets: the armed backward marks every gradient, so every bucket
         * goes during it */
        for (int s = 0; s < 2; s++) {
            int armed = r == (s ? W - 1 : 0); /* case 1: rank 0 has the last micro-batch; case 3: rank W - 1 */
            CHECKF(rk[r].during[s] == (armed ? rk[r].nbuckets : -1), "rank %d: the %sarmed backward of case %d "
                   "launched %d of %d buckets", r, armed ? "" : "not ", s ? 3 : 1, rk[r].during[s], rk[r].nbuckets);
        }
        for (int s = 0; s < 3; s++)
            CHECKF(rk[r].nbad[s] == 0, "rank %d case %d: %d sums differ", r, s + 1, rk[r].nbad[s]);
        for (int s = 0; s < 3; s++)
            CHECKF(rk[r].nchanged[s] == 0, "rank %d case %d: the accumulated gradients changed in %d elements", r,
                   s + 1, rk[r].nchanged[s]);
    }
}

int main(void) {
    CUDA_TEST_SKIP_IF_NO_DEVICE();
    int ndev = cuda_device_count();
#ifdef LLAVA_EMU_RANKS
    int W = LLAVA_EMU_RANKS, ndt = 1, nmode = 1; /* the emulator: fake NCCL ranks on one device, fp32, all (time) */
#else
    int W = ndev < 2 ? 1 : ndev > MAX_W ? MAX_W : ndev, ndt = 2, nmode = 2;
#endif
    const char *src = getenv("LLAVA_SOURCE_DIR");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/model/gqa_mlp2x", src ? src : "..");
    for (int d = 0; d < ndt; d++)
        for (int mode = 0; mode < nmode; mode++)
            run(dir, "gqa_mlp2x", d ? CUDA_DT_BF16 : CUDA_DT_F32, mode || nmode == 1 ? TRAIN_ALL : TRAIN_PROJECTOR,
                W, ndev);
    return test_finish();
}
