/* Gradient buckets of the GPU model (llava_cuda_set_bucketer + nccl_bucketer): W ranks (threads, one
 * communicator) run the fixture batch; the backward marks every gradient tensor ready in backward order, so every
 * bucket must be launched before nccl_bucketer_finish (each element covered exactly once: a second mark fails the
 * backward), and the bucketed sums must equal one all-reduce of the whole buffer after the backward, bit for bit.
 * Both fixtures, both training modes, uneven bucket sizes. Needs one GPU per rank (skips with 77 without one);
 * kernels/cuda/emu/run.sh buckets runs it on the CPU with 2 ranks on the emulated device and a fake NCCL. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/cuda/cuda_test.h"
#include "worker/batchfile.h"
#include "worker/model_cuda.h"

#define MAX_W 4

typedef struct {
    const char *dir; /* fixture case dir */
    cuda_dtype_t dt;
    train_mode_t mode;
    int W, rank, device;
    const unsigned char *uid;
    int rc, launched, nbuckets;
    size_t n;
    float *once, *bucketed; /* [n]: one all-reduce after the backward / buckets during it */
} rank_t;

static void *rank_main(void *p) {
    rank_t *a = p;
    int rc = 0;
    char path[1200];
    llava_model_t *m = NULL;
    llava_cuda_t *g = NULL;
    nccl_comm_t *c = NULL;
    nccl_bucketer_t *bk = NULL;
    batch_t b;
    memset(&b, 0, sizeof b);
    llava_cuda_opts_t o = {.device = a->device, .dt = a->dt};
    void *dev = NULL;
    size_t n = 0, nh = 0;
    cuda_dtype_t dt;
    double loss = 0;
    int64_t nt = 0;
    snprintf(path, sizeof path, "%s/model", a->dir);
    RC_CHECK_GOTO(llava_model_load(path, &m));
    snprintf(path, sizeof path, "%s/batch.safetensors", a->dir);
    RC_CHECK_GOTO(batch_file_read(path, &b));
    RC_CHECK_GOTO(llava_cuda_new(m, &o, &g));
    RC_CHECK_GOTO(llava_cuda_grads_prepare(g, a->mode));
    RC_CHECK_GOTO(nccl_comm_open(&c, a->uid, a->W, a->rank, a->device, 1, 120000, NULL, NULL));
    RC_CHECK_GOTO(llava_cuda_grads_device(g, &dev, &n, &dt));
    a->n = n;
    a->once = malloc(n * sizeof(float));
    a->bucketed = malloc(n * sizeof(float));
    ALLOC_CHECK_GOTO(a->once && a->bucketed ? a : NULL);
    /* one all-reduce after the backward */
    RC_CHECK_GOTO(llava_cuda_forward_backward(g, &b, a->mode, &loss, &nt, 0));
    RC_CHECK_GOTO(nccl_allreduce(c, dev, dev, n, dt, llava_cuda_stream(g), 120000, NULL, NULL));
    float *h = llava_cuda_grads_download(g, &nh);
    CHECK_GOTO(h && nh == n, LLAVA_ECUDA, "rank %d: gradient download failed", a->rank);
    memcpy(a->once, h, n * sizeof(float));
    /* buckets of an odd size (several per tensor and tensors across buckets), launched during the backward */
    size_t be = n / 7 + 3;
    RC_CHECK_GOTO(nccl_bucketer_new(&bk, c, dev, dev, n, be, dt, llava_cuda_stream(g)));
    a->nbuckets = (int)((n + be - 1) / be);
    RC_CHECK_GOTO(llava_cuda_set_bucketer(g, bk));
    RC_CHECK_GOTO(llava_cuda_forward_backward(g, &b, a->mode, &loss, &nt, 0));
    a->launched = nccl_bucketer_launched(bk); /* every element marked: every bucket already on its way */
    RC_CHECK_GOTO(nccl_bucketer_finish(bk, 120000, NULL, NULL));
    RC_CHECK_GOTO(llava_cuda_set_bucketer(g, NULL));
    h = llava_cuda_grads_download(g, &nh);
    CHECK_GOTO(h && nh == n, LLAVA_ECUDA, "rank %d: gradient download failed", a->rank);
    memcpy(a->bucketed, h, n * sizeof(float));
cleanup:
    a->rc = rc;
    nccl_bucketer_free(&bk);
    nccl_comm_close(&c, 10000);
    llava_cuda_free(&g);
    llava_model_free(&m);
    batch_free(&b);
    return NULL;
}

static void run(const char *dir, const char *name, cuda_dtype_t dt, train_mode_t mode, int W, int ndev) {
    rank_t rk[MAX_W];
    pthread_t th[MAX_W];
    unsigned char uid[NCCL_UID_BYTES];
    CHECK_RC(nccl_uid_new(uid), 0);
    for (int r = 0; r < W; r++) {
        rk[r] = (rank_t){.dir = dir, .dt = dt, .mode = mode, .W = W, .rank = r, .device = r % ndev, .uid = uid};
        CHECK(pthread_create(&th[r], NULL, rank_main, &rk[r]) == 0);
    }
    for (int r = 0; r < W; r++) pthread_join(th[r], NULL);
    for (int r = 0; r < W; r++) {
        CHECK_RC(rk[r].rc, 0);
        if (rk[r].rc == 0) {
            int same = memcmp(rk[r].once, rk[r].bucketed, rk[r].n * sizeof(float)) == 0;
            int same0 = rk[0].rc == 0 && memcmp(rk[r].bucketed, rk[0].bucketed, rk[r].n * sizeof(float)) == 0;
            if (r == 0)
                printf("  %s %s %s W=%d: %zu gradients in %d buckets, %d launched during the backward, bucketed == "
                       "one all-reduce: %s\n", name, dt == CUDA_DT_F32 ? "fp32" : "bf16",
                       mode == TRAIN_ALL ? "all" : "projector", W, rk[r].n, rk[r].nbuckets, rk[r].launched,
                       same ? "bit for bit" : "NO");
            CHECKF(rk[r].launched == rk[r].nbuckets, "rank %d: %d of %d buckets launched before finish", r,
                   rk[r].launched, rk[r].nbuckets);
            CHECKF(same, "rank %d: bucketed sums differ from one all-reduce", r);
            CHECKF(same0, "rank %d: sums differ from rank 0's", r);
        }
    }
    for (int r = 0; r < W; r++) {
        free(rk[r].once);
        free(rk[r].bucketed);
    }
}

int main(void) {
    CUDA_TEST_SKIP_IF_NO_DEVICE();
    int ndev = cuda_device_count();
#ifdef LLAVA_EMU_RANKS
    int W = LLAVA_EMU_RANKS, ndt = 1; /* the emulator: fake NCCL ranks on one device, fp32 only (time) */
#else
    int W = ndev < 2 ? 1 : 2, ndt = 2;
#endif
    const char *src = getenv("LLAVA_SOURCE_DIR");
    static const char *const cases[] = {"mha_linear", "gqa_mlp2x"};
    for (int c = 0; c < 2; c++) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/tests/fixtures/model/%s", src ? src : "..", cases[c]);
        for (int d = 0; d < ndt; d++)
            for (int mode = 0; mode < 2; mode++)
                run(dir, cases[c], d ? CUDA_DT_BF16 : CUDA_DT_F32, mode ? TRAIN_ALL : TRAIN_PROJECTOR, W, ndev);
    }
    return test_finish();
}
