/* GPU AdamW on fp32 master weights (several steps, weight decay, bf16 gradients, bf16 copy-out, grad scale) and the
 * deterministic squared gradient norm vs the CPU ops, guard bytes, bitwise repeatability. Skips (77) without a GPU.
 * Run: ctest -R test_cuda_adamw */
#include "tests/cuda/cuda_test.h"

static void run_adamw(cuda_dtype_t gdt, long n, double wd) {
    uint64_t st = 42u + (uint64_t)n;
    float *p = hmalloc(n), *g = hmalloc(n), *m = hmalloc(n), *v = hmalloc(n), *got = hmalloc(n), *gs = hmalloc(n);
    char what[96];
    gbuf_t bp, bg, bm, bv, bo;
    fill_rand(p, n, &st, 1.0f);
    float *dp = (float *)gbuf_up(&bp, p, n, CUDA_DT_F32), *dm = (float *)gbuf_alloc(&bm, (size_t)n * 4);
    float *dv = (float *)gbuf_alloc(&bv, (size_t)n * 4);
    void *dg = gbuf_alloc(&bg, (size_t)n * cuda_dtype_size(gdt)), *dout = gbuf_alloc(&bo, (size_t)n * 2);
    cudaMemset(dm, 0, (size_t)n * 4);
    cudaMemset(dv, 0, (size_t)n * 4);
    for (int t = 1; t <= 5; t++) {
        fill_rand(g, n, &st, 0.01f * t);
        round_to(g, n, gdt);
        if (gdt == CUDA_DT_F32) {
            cudaMemcpy(dg, g, (size_t)n * 4, cudaMemcpyHostToDevice);
        } else {
            gbuf_t tmp;
            void *src = gbuf_up(&tmp, g, n, gdt);
            cudaMemcpy(dg, src, (size_t)n * 2, cudaMemcpyDeviceToDevice);
            gbuf_free(&tmp);
        }
        /* the GPU folds grad_scale = 0.5 into the gradient; the CPU gets pre-scaled gradients (exact: power of 2) */
        for (long i = 0; i < n; i++) gs[i] = g[i] * 0.5f;
        adamw_update(p, gs, m, v, n, 1e-3, 0.9, 0.999, 1e-8, wd, t);
        CHECK_RC(cuda_adamw_update(dp, dout, CUDA_DT_BF16, dg, gdt, dm, dv, n, 1e-3, 0.9, 0.999, 1e-8, wd, t, 0.5f, 0),
                 0);
    }
    dev_down(got, dp, n, CUDA_DT_F32);
    snprintf(what, sizeof what, "adamw_update params n=%ld wd=%g grads=%s", n, wd, gdt == CUDA_DT_F32 ? "f32" : "bf16");
    CHECK_PARITY(what, got, p, n, CUDA_DT_F32, 1.0);
    dev_down(got, dm, n, CUDA_DT_F32);
    CHECK_PARITY("  adamw m", got, m, n, CUDA_DT_F32, 1.0);
    dev_down(got, dv, n, CUDA_DT_F32);
    CHECK_PARITY("  adamw v", got, v, n, CUDA_DT_F32, 1.0);
    dev_down(got, dout, n, CUDA_DT_BF16);
    round_to(p, n, CUDA_DT_BF16);
    CHECK_PARITY("  adamw bf16 copy-out", got, p, n, CUDA_DT_BF16, 1.0);
    CHECK_GUARDS(bp);
    CHECK_GUARDS(bm);
    CHECK_GUARDS(bv);
    CHECK_GUARDS(bo);
    gbuf_free(&bp), gbuf_free(&bg), gbuf_free(&bm), gbuf_free(&bv), gbuf_free(&bo);
    free(p), free(g), free(m), free(v), free(got), free(gs);
}

static void run_norm(cuda_ctx_t *ctx, cuda_dtype_t dt, long n) {
    uint64_t st = 8u + (uint64_t)n;
    float *g = hmalloc(n);
    double want, got1 = 0, got2 = 0, got3 = 0;
    gbuf_t bg, bo;
    fill_rand(g, n, &st, 1.0f);
    round_to(g, n, dt);
    void *dg = gbuf_up(&bg, g, n, dt);
    double *dout = (double *)gbuf_alloc(&bo, sizeof(double));
    want = global_norm_sq(g, n);
    CHECK_RC(cuda_global_norm_sq(ctx, dout, dg, n, 0, dt, 0), 0);
    cudaMemcpy(&got1, dout, sizeof got1, cudaMemcpyDeviceToHost);
    CHECKF(fabs(got1 - want) <= 1e-9 * (1 + want), "global_norm_sq n=%ld: %.12g vs %.12g", n, got1, want);
    CHECK_RC(cuda_global_norm_sq(ctx, dout, dg, n, 0, dt, 0), 0);
    cudaMemcpy(&got2, dout, sizeof got2, cudaMemcpyDeviceToHost);
    CHECKF(memcmp(&got1, &got2, sizeof got1) == 0, "global_norm_sq is not bitwise repeatable");
    CHECK_RC(cuda_global_norm_sq(ctx, dout, dg, n, 1, dt, 0), 0); /* accumulate: twice the value */
    cudaMemcpy(&got3, dout, sizeof got3, cudaMemcpyDeviceToHost);
    CHECKF(fabs(got3 - 2 * want) <= 2e-9 * (1 + want), "global_norm_sq accumulate: %.12g vs %.12g", got3, 2 * want);
    CHECK_GUARDS(bo);
    printf("  global_norm_sq n=%ld %s: %.12g (cpu %.12g)\n", n, dt == CUDA_DT_F32 ? "f32" : "bf16", got1, want);
    gbuf_free(&bg), gbuf_free(&bo);
    free(g);
}

int main(void) {
    cuda_ctx_t *ctx = NULL;
    CUDA_TEST_SKIP_IF_NO_DEVICE();
    kernels_set_threads(2);
    CHECK_RC(cuda_ctx_new(&ctx, 0), 0);
    if (!ctx) return test_finish();
    for (int dt = 0; dt < 2; dt++) {
        run_adamw((cuda_dtype_t)dt, 1, 0.0);
        run_adamw((cuda_dtype_t)dt, 33, 0.1);
        run_adamw((cuda_dtype_t)dt, 1000003, 0.01);
        run_norm(ctx, (cuda_dtype_t)dt, 0);
        run_norm(ctx, (cuda_dtype_t)dt, 7);
        run_norm(ctx, (cuda_dtype_t)dt, 3000001);
    }
    CHECK_RC(cuda_adamw_update(NULL, NULL, CUDA_DT_BF16, NULL, CUDA_DT_F32, NULL, NULL, 4, 1e-3, 0.9, 0.999, 1e-8, 0,
                               0, 1.0f, 0),
             LLAVA_EINVAL);
    cuda_ctx_free(&ctx);
    return test_finish();
}
