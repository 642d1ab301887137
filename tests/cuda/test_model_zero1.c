/* ZeRO-1 of the GPU model (worker/model_cuda.c, llava_cuda_zero1_*): W ranks (threads, one communicator) each
 * feed their own gradients; reduce-scatter + sharded AdamW + weight all-gather must equal one unsharded AdamW step
 * on the rank-ordered sum: bit for bit without clipping, within fp32 rounding with it (the global norm is summed
 * per shard), fp32 and bf16; the gathered state equals the unsharded state; a state exported by the unsharded model
 * and imported by a different number of ranks (sliced) continues identically. On GPUs: W = 1 .. min(8, devices),
 * both fixtures, projector mode, and the whole LLM over 3 ranks (uneven shards); skips with 77 without a device.
 * kernels/cuda/emu/run.sh zero1 runs a smaller matrix on the CPU (5 and 7 ranks: uneven shards) with the ranks on
 * the one emulated device and a fake NCCL (ranks as threads, sums in rank order). */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/cuda/cuda_test.h"
#include "worker/model_cuda.h"

#define MAX_W 8
#define SCALE 0.125

typedef struct {
    const char *dir;      /* model directory */
    cuda_dtype_t dt;
    train_mode_t mode;
    double max_norm;
    int W, rank, device;
    int step0, steps;     /* steps step0+1 .. step0+steps */
    const void *state;    /* an exported training state to start from (NULL: fresh) */
    size_t state_len;
    const unsigned char *uid;
    /* out */
    int rc;
    size_t n;
    float *params, *adam_m, *adam_v, *weights; /* [n] each, malloc'd */
    double norms[4];
} rank_t;

static float bf16_round(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    u += 0x7fff + ((u >> 16) & 1);
    u &= 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

/* Rank r's gradient of step s, element i: different per rank and step, exactly representable in dt. */
static float grad_of(int s, int r, size_t i, cuda_dtype_t dt) {
    uint64_t h = (uint64_t)i * 0x9E3779B97F4A7C15ull ^ ((uint64_t)s << 40) ^ ((uint64_t)r << 52);
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    float g = ((float)(h % 20001) - 10000.0f) * 1e-4f * (float)(1 + r);
    return dt == CUDA_DT_BF16 ? bf16_round(g) : g;
}

static adamw_opts_t opts(double max_norm) {
    return (adamw_opts_t){.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.01,
                          .max_grad_norm = max_norm};
}

static int load(const char *dir, cuda_dtype_t dt, train_mode_t mode, int zero1, int device, llava_model_t **m,
                llava_cuda_t **g) {
    int rc = 0;
    llava_cuda_opts_t o = {.device = device, .dt = dt, .recompute = 0, .zero1 = zero1};
    RC_CHECK_GOTO(llava_model_load(dir, m));
    RC_CHECK_GOTO(llava_cuda_new(*m, &o, g));
    RC_CHECK_GOTO(llava_cuda_grads_prepare(*g, mode));
cleanup:
    return rc;
}

static int copy_out(rank_t *a, llava_model_t *m, llava_cuda_t *g) {
    int rc = 0;
    size_t n = 0;
    llava_grads_data(m, &n);
    a->n = n;
    a->params = malloc(n * sizeof(float));
    a->adam_m = malloc(n * sizeof(float));
    a->adam_v = malloc(n * sizeof(float));
    a->weights = malloc(n * sizeof(float));
    ALLOC_CHECK_GOTO(a->params && a->adam_m && a->adam_v && a->weights ? a : NULL);
    memcpy(a->params, arena_data(m->params), n * sizeof(float));
    memcpy(a->adam_m, arena_data(m->adam_m), n * sizeof(float));
    memcpy(a->adam_v, arena_data(m->adam_v), n * sizeof(float));
    RC_CHECK_GOTO(llava_cuda_weights_download(g, a->weights, n));
cleanup:
    return rc;
}

static void *rank_main(void *p) {
    rank_t *a = p;
    int rc = 0;
    llava_model_t *m = NULL;
    llava_cuda_t *g = NULL;
    nccl_comm_t *c = NULL;
    float *host = NULL;
    adamw_opts_t o = opts(a->max_norm);
    RC_CHECK_GOTO(load(a->dir, a->dt, a->mode, 1, a->device, &m, &g));
    if (a->state) {
        RC_CHECK_GOTO(llava_train_state_import(m, a->state, a->state_len));
        RC_CHECK_GOTO(llava_cuda_state_upload(g));
    }
    RC_CHECK_GOTO(nccl_comm_open(&c, a->uid, a->W, a->rank, a->device, 1, 120000, NULL, NULL));
    RC_CHECK_GOTO(llava_cuda_zero1_shard(g, a->W, a->rank));
    size_t n = 0;
    llava_grads_data(m, &n);
    host = malloc(n * sizeof(float));
    ALLOC_CHECK_GOTO(host);
    for (int s = 0; s < a->steps; s++) {
        for (size_t i = 0; i < n; i++) host[i] = grad_of(a->step0 + s + 1, a->rank, i, a->dt);
        double ss = 0;
        RC_CHECK_GOTO(llava_cuda_grads_upload(g, host, n));
        RC_CHECK_GOTO(llava_cuda_zero1_reduce(g, c, 120000, NULL, NULL, &ss));
        RC_CHECK_GOTO(llava_cuda_zero1_apply(g, c, &o, SCALE, &a->norms[s], 120000, NULL, NULL));
    }
    CHECK_GOTO(!llava_cuda_host_full(g), LLAVA_EINVAL, "rank %d: host_full after a sharded step", a->rank);
    CHECK_GOTO(llava_cuda_state_download(g) == LLAVA_ENOTFOUND, LLAVA_EINVAL,
               "rank %d: state_download did not refuse a sharded state", a->rank);
    RC_CHECK_GOTO(llava_cuda_zero1_gather(g, c, 120000, NULL, NULL));
    RC_CHECK_GOTO(llava_cuda_state_download(g));
    RC_CHECK_GOTO(copy_out(a, m, g));
cleanup:
    a->rc = rc;
    free(host);
    nccl_comm_close(&c, 10000);
    llava_cuda_free(&g);
    llava_model_free(&m);
    return NULL;
}

/* The unsharded model: steps step0+1 .. step0+steps on the rank-ordered sum of W ranks' gradients. With state_out,
 * the training state after the steps is exported there. */
static void reference(rank_t *a, int W, void **state_out, size_t *state_len) {
    int rc = 0;
    llava_model_t *m = NULL;
    llava_cuda_t *g = NULL;
    float *sum = NULL;
    adamw_opts_t o = opts(a->max_norm);
    RC_CHECK_GOTO(load(a->dir, a->dt, a->mode, 0, 0, &m, &g));
    if (a->state) {
        RC_CHECK_GOTO(llava_train_state_import(m, a->state, a->state_len));
        RC_CHECK_GOTO(llava_cuda_state_upload(g));
    }
    size_t n = 0;
    llava_grads_data(m, &n);
    sum = malloc(n * sizeof(float));
    ALLOC_CHECK_GOTO(sum);
    for (int s = 0; s < a->steps; s++) {
        for (size_t i = 0; i < n; i++) {
            float acc = 0;
            for (int r = 0; r < W; r++) acc += grad_of(a->step0 + s + 1, r, i, a->dt);
            sum[i] = acc;
        }
        RC_CHECK_GOTO(llava_cuda_grads_upload(g, sum, n));
        RC_CHECK_GOTO(llava_cuda_adamw_step(g, &o, SCALE, &a->norms[s]));
    }
    RC_CHECK_GOTO(llava_cuda_state_download(g));
    RC_CHECK_GOTO(copy_out(a, m, g));
    if (state_out) RC_CHECK_GOTO(llava_train_state_export(m, state_out, state_len));
cleanup:
    a->rc = rc;
    free(sum);
    llava_cuda_free(&g);
    llava_model_free(&m);
}

static void free_out(rank_t *a) {
    free(a->params);
    free(a->adam_m);
    free(a->adam_v);
    free(a->weights);
    a->params = a->adam_m = a->adam_v = a->weights = NULL;
}

/* max |x - y| / max(1, |y|) over n; *bits = 1 when every element is identical. */
static double maxdiff(const float *x, const float *y, size_t n, int *bits) {
    double d = 0;
    *bits = memcmp(x, y, n * sizeof(float)) == 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)x[i] - (double)y[i]) / fmax(1.0, fabs((double)y[i]));
        if (e > d) d = e;
    }
    return d;
}

/* W ranks from `state` (or fresh) for `steps` steps against the unsharded reference. */
static void run(const char *dir, cuda_dtype_t dt, train_mode_t mode, double max_norm, int W, int ndev, int step0,
                int steps, const void *state, size_t state_len, void **state_out, size_t *state_out_len) {
    rank_t ref = {.dir = dir, .dt = dt, .mode = mode, .max_norm = max_norm, .step0 = step0, .steps = steps,
                  .state = state, .state_len = state_len};
    rank_t rk[MAX_W];
    pthread_t th[MAX_W];
    unsigned char uid[NCCL_UID_BYTES];
    reference(&ref, W, state_out, state_out_len);
    CHECK_RC(ref.rc, 0);
    CHECK_RC(nccl_uid_new(uid), 0);
    for (int r = 0; r < W; r++) {
        rk[r] = ref;
        rk[r].params = rk[r].adam_m = rk[r].adam_v = rk[r].weights = NULL;
        rk[r].W = W;
        rk[r].rank = r;
        rk[r].device = r % ndev;
        rk[r].uid = uid;
        CHECK(pthread_create(&th[r], NULL, rank_main, &rk[r]) == 0);
    }
    for (int r = 0; r < W; r++) pthread_join(th[r], NULL);
    int exact = max_norm <= 0; /* no clipping: the same AdamW inputs, so the same bits */
    for (int r = 0; r < W; r++) {
        CHECK_RC(rk[r].rc, 0);
        if (rk[r].rc || ref.rc) continue;
        CHECK(rk[r].n == ref.n);
        int bp, bm, bv, bw;
        double dp = maxdiff(rk[r].params, ref.params, ref.n, &bp), dm = maxdiff(rk[r].adam_m, ref.adam_m, ref.n, &bm);
        double dv = maxdiff(rk[r].adam_v, ref.adam_v, ref.n, &bv), dw = maxdiff(rk[r].weights, ref.weights, ref.n, &bw);
        double dn = 0;
        for (int s = 0; s < steps; s++) dn = fmax(dn, fabs(rk[r].norms[s] - ref.norms[s]) / fmax(1e-30, ref.norms[s]));
        if (r == 0)
            printf("  %s %s %s W=%d steps %d-%d clip %g n=%zu (shard %zu): master %.1e%s m %.1e%s v %.1e%s weights "
                   "%.1e%s norm %.1e\n", dir, dt == CUDA_DT_F32 ? "fp32" : "bf16",
                   mode == TRAIN_ALL ? "all" : "projector", W, step0 + 1, step0 + steps, max_norm, ref.n,
                   (ref.n + (size_t)W - 1) / (size_t)W, dp, bp ? " (bits)" : "", dm, bm ? " (bits)" : "", dv, bv ? " (bits)" : "", dw,
                   bw ? " (bits)" : "", dn);
        CHECKF(dn <= 1e-12, "rank %d: grad norm differs by %.2e", r, dn);
        if (exact) {
            CHECKF(bp && bm && bv && bw, "rank %d of %d: not bit-identical (%g %g %g %g)", r, W, dp, dm, dv, dw);
        } else { /* the clip coefficient may differ in its last bit (norm summed per shard) */
            CHECKF(dp <= 1e-6 && dm <= 1e-6 && dv <= 1e-6, "rank %d of %d: state differs (%g %g %g)", r, W, dp, dm,
                   dv);
            CHECKF(dw <= (dt == CUDA_DT_BF16 ? 8e-3 : 1e-6), "rank %d of %d: weights differ by %g", r, W, dw);
        }
    }
    for (int r = 0; r < W; r++) free_out(&rk[r]);
    free_out(&ref);
}

int main(void) {
    CUDA_TEST_SKIP_IF_NO_DEVICE();
    setvbuf(stdout, NULL, _IOLBF, 0);
    int ndev = cuda_device_count();
    const char *src = getenv("LLAVA_SOURCE_DIR");
    char dir[1024];
    void *state = NULL;
    size_t len = 0;
    const train_mode_t P = TRAIN_PROJECTOR;
#ifdef LLAVA_EMU_RANKS
    /* The emulator (about a minute per rank and step here): mha_linear's 2112 projector parameters over 5 and 7
     * ranks (uneven shards: 423 x 5 = 2115, 302 x 7 = 2114), fp32 and bf16, and a state imported into 4 and 5. The
     * GPU matrix below (W = 1..4, both fixtures) ran in the emulator too; docs/cuda.md has its results. */
    const cuda_dtype_t F = CUDA_DT_F32, H = CUDA_DT_BF16;
    snprintf(dir, sizeof dir, "%s/tests/fixtures/model/mha_linear/model", src ? src : "..");
    run(dir, F, P, 0.0, 5, ndev, 0, 2, NULL, 0, NULL, NULL);
    run(dir, F, P, 0.0, 7, ndev, 0, 2, NULL, 0, NULL, NULL);
    run(dir, H, P, 0.0, 1, ndev, 0, 2, NULL, 0, &state, &len);
    CHECK(state != NULL);
    if (state) {
        run(dir, H, P, 0.0, 4, ndev, 2, 1, state, len, NULL, NULL);
        run(dir, H, P, 0.0, 5, ndev, 2, 1, state, len, NULL, NULL);
    }
    free(state);
#else
    int maxw = ndev < MAX_W ? ndev : MAX_W; /* NCCL wants a device per rank */
    static const char *const cases[] = {"mha_linear", "gqa_mlp2x"};
    for (int c = 0; c < 2; c++) {
        snprintf(dir, sizeof dir, "%s/tests/fixtures/model/%s/model", src ? src : "..", cases[c]);
        for (int d = 0; d < 2; d++) {
            cuda_dtype_t dt = d ? CUDA_DT_BF16 : CUDA_DT_F32;
            for (int W = 1; W <= maxw; W++) /* two steps from a fresh optimizer, no clipping: bit for bit */
                run(dir, dt, P, 0.0, W, ndev, 0, 2, NULL, 0, W == 1 ? &state : NULL, &len);
            /* clipping active (the norms are ~10x the max norm) */
            run(dir, dt, P, 0.05, maxw, ndev, 0, 2, NULL, 0, NULL, NULL);
            /* the unsharded state after 2 steps, imported (sliced) by maxw and maxw - 1 ranks: step 3 */
            CHECK(state != NULL);
            if (state) {
                run(dir, dt, P, 0.0, maxw, ndev, 2, 1, state, len, NULL, NULL);
                if (maxw > 2) run(dir, dt, P, 0.0, maxw - 1, ndev, 2, 1, state, len, NULL, NULL);
            }
            free(state);
            state = NULL;
        }
        /* the whole LLM trainable: mha_linear's 110464 parameters are uneven over 3 ranks */
        if (maxw >= 3) run(dir, CUDA_DT_BF16, TRAIN_ALL, 0.0, 3, ndev, 0, 2, NULL, 0, NULL, NULL);
    }
#endif
    return test_finish();
}
