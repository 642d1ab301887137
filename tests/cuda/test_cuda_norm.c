/* GPU LayerNorm / RMSNorm forward and backward vs the CPU ops (saved statistics, accumulation, NULL gradients),
 * odd shapes, fp32 and bf16, guard bytes. Skips (77) without a GPU. Run: ctest -R test_cuda_norm */
#include "tests/cuda/cuda_test.h"

static void run(cuda_dtype_t dt, int N, int C, int layer) {
    uint64_t st = 77u + (uint64_t)N * 13 + C + layer;
    long n = (long)N * C;
    float *inp = hmalloc(n), *w = hmalloc(C), *b = hmalloc(C), *dout = hmalloc(n), *ref = hmalloc(n), *got = hmalloc(n);
    float *mean = hmalloc(N), *rstd = hmalloc(N), *gmean = hmalloc(N), *grstd = hmalloc(N);
    float *dinp = hmalloc(n), *dw = hmalloc(C), *db = hmalloc(C), *gdinp = hmalloc(n), *gdw = hmalloc(C),
          *gdb = hmalloc(C);
    char what[128];
    const char *name = layer ? "layernorm" : "rmsnorm";
    gbuf_t bi, bw, bb, bo, bm, br, bdo, bdi, bdw, bdb;
    fill_rand(inp, n, &st, 2.0f);
    for (long i = 0; i < n; i++) inp[i] += 0.5f; /* a non-zero mean */
    fill_rand(w, C, &st, 1.0f);
    fill_rand(b, C, &st, 1.0f);
    fill_rand(dout, n, &st, 1.0f);
    fill_rand(dinp, n, &st, 0.1f);
    fill_rand(dw, C, &st, 0.1f);
    fill_rand(db, C, &st, 0.1f);
    round_to(inp, n, dt), round_to(w, C, dt), round_to(b, C, dt), round_to(dout, n, dt);
    round_to(dinp, n, dt), round_to(dw, C, dt), round_to(db, C, dt);
    void *di = gbuf_up(&bi, inp, n, dt), *dwt = gbuf_up(&bw, w, C, dt), *dbias = gbuf_up(&bb, b, C, dt);
    void *dov = gbuf_up(&bdo, dout, n, dt), *dout_dev = gbuf_alloc(&bo, (size_t)n * cuda_dtype_size(dt));
    float *dmean = (float *)gbuf_alloc(&bm, (size_t)N * 4), *drstd = (float *)gbuf_alloc(&br, (size_t)N * 4);
    void *ddi = gbuf_up(&bdi, dinp, n, dt), *ddw = gbuf_up(&bdw, dw, C, dt), *ddb = gbuf_up(&bdb, db, C, dt);

    if (layer) {
        layernorm_forward(ref, mean, rstd, inp, w, b, N, C, 1e-5f);
        CHECK_RC(cuda_layernorm_forward(dout_dev, dmean, drstd, di, dwt, dbias, N, C, 1e-5f, dt, 0), 0);
        dev_down(gmean, dmean, N, CUDA_DT_F32);
        snprintf(what, sizeof what, "layernorm_forward mean N=%d C=%d", N, C);
        CHECK_PARITY(what, gmean, mean, N, CUDA_DT_F32, 1.0);
    } else {
        rmsnorm_forward(ref, rstd, inp, w, N, C, 1e-6f);
        CHECK_RC(cuda_rmsnorm_forward(dout_dev, drstd, di, dwt, N, C, 1e-6f, dt, 0), 0);
    }
    dev_down(got, dout_dev, n, dt);
    dev_down(grstd, drstd, N, CUDA_DT_F32);
    snprintf(what, sizeof what, "%s_forward N=%d C=%d", name, N, C);
    CHECK_PARITY(what, got, ref, n, dt, 1.0);
    snprintf(what, sizeof what, "%s_forward rstd N=%d C=%d", name, N, C);
    CHECK_PARITY(what, grstd, rstd, N, CUDA_DT_F32, 10.0);
    CHECK_GUARDS(bo);
    CHECK_GUARDS(bm);
    CHECK_GUARDS(br);

    /* backward from the CPU's statistics on both sides (the GPU's agree to fp32 rounding, checked above) */
    cudaMemcpy(dmean, mean, (size_t)N * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(drstd, rstd, (size_t)N * 4, cudaMemcpyHostToDevice);
    if (layer) {
        layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, C);
        CHECK_RC(cuda_layernorm_backward(ddi, ddw, ddb, dov, di, dwt, dmean, drstd, N, C, dt, 0), 0);
    } else {
        rmsnorm_backward(dinp, dw, dout, inp, w, rstd, N, C);
        CHECK_RC(cuda_rmsnorm_backward(ddi, ddw, dov, di, dwt, drstd, N, C, dt, 0), 0);
    }
    dev_down(gdinp, ddi, n, dt);
    dev_down(gdw, ddw, C, dt);
    dev_down(gdb, ddb, C, dt);
    snprintf(what, sizeof what, "%s_backward dinp N=%d C=%d", name, N, C);
    CHECK_PARITY(what, gdinp, dinp, n, dt, 2.0);
    snprintf(what, sizeof what, "%s_backward dweight N=%d C=%d", name, N, C);
    CHECK_PARITY(what, gdw, dw, C, dt, 2.0);
    if (layer) {
        snprintf(what, sizeof what, "%s_backward dbias N=%d C=%d", name, N, C);
        CHECK_PARITY(what, gdb, db, C, dt, 2.0);
    }
    CHECK_GUARDS(bdi);
    CHECK_GUARDS(bdw);
    CHECK_GUARDS(bdb);
    /* inference: no statistics saved */
    if (layer) CHECK_RC(cuda_layernorm_forward(dout_dev, NULL, NULL, di, dwt, NULL, N, C, 1e-5f, dt, 0), 0);
    else CHECK_RC(cuda_rmsnorm_forward(dout_dev, NULL, di, dwt, N, C, 1e-6f, dt, 0), 0);
    CHECK_GUARDS(bo);

    gbuf_free(&bi), gbuf_free(&bw), gbuf_free(&bb), gbuf_free(&bo), gbuf_free(&bm), gbuf_free(&br);
    gbuf_free(&bdo), gbuf_free(&bdi), gbuf_free(&bdw), gbuf_free(&bdb);
    free(inp), free(w), free(b), free(dout), free(ref), free(got), free(mean), free(rstd), free(gmean);
    free(grstd), free(dinp), free(dw), free(db), free(gdinp), free(gdw), free(gdb);
}

int main(void) {
    static const int Ns[] = {1, 7, 33, 300}, Cs[] = {3, 64, 130, 1024};
    CUDA_TEST_SKIP_IF_NO_DEVICE();
    kernels_set_threads(2);
    for (int dt = 0; dt < 2; dt++)
        for (int a = 0; a < 4; a++)
            for (int c = 0; c < 4; c++)
                for (int layer = 0; layer < 2; layer++) run((cuda_dtype_t)dt, Ns[a], Cs[c], layer);
    CHECK_RC(cuda_rmsnorm_forward(NULL, NULL, NULL, NULL, 4, 0, 1e-6f, CUDA_DT_F32, 0), LLAVA_EINVAL);
    return test_finish();
}
