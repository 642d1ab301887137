/* GPU fused cross-entropy (per-row losses, summed loss and count with ignore -100, backward writing dlogits, in
 * place) vs the CPU op, odd vocabularies, fp32 and bf16 logits, guard bytes. Skips (77) without a GPU.
 * Run: ctest -R test_cuda_loss */
#include "tests/cuda/cuda_test.h"

static void run(cuda_dtype_t dt, int N, int V) {
    uint64_t st = 1u + (uint64_t)N * V;
    long n = (long)N * V;
    float *logits = hmalloc(n), *losses = hmalloc(N), *glosses = hmalloc(N), *dl = hmalloc(n), *gdl = hmalloc(n);
    int32_t *tg = (int32_t *)malloc(sizeof(int32_t) * (size_t)N);
    double sum = 0, gsum = 0;
    int64_t cnt = 0, gcnt = 0;
    char what[96];
    gbuf_t bl, bt, blo, bs, bc, bd;
    for (int i = 0; i < N; i++) tg[i] = i % 3 == 2 ? -100 : (i * 7919) % V;
    fill_rand(logits, n, &st, 6.0f);
    round_to(logits, n, dt);
    void *pl = gbuf_up(&bl, logits, n, dt), *pt = gbuf_up_i32(&bt, tg, N);
    float *plo = (float *)gbuf_alloc(&blo, (size_t)N * 4);
    double *ps = (double *)gbuf_alloc(&bs, sizeof(double));
    int64_t *pc = (int64_t *)gbuf_alloc(&bc, sizeof(int64_t));
    void *pd = gbuf_alloc(&bd, (size_t)n * cuda_dtype_size(dt));
    crossentropy_forward(losses, logits, tg, N, V, &sum, &cnt);
    CHECK_RC(cuda_crossentropy_forward(plo, pl, (const int32_t *)pt, N, V, ps, pc, dt, 0), 0);
    dev_down(glosses, plo, N, CUDA_DT_F32);
    cudaMemcpy(&gsum, ps, sizeof gsum, cudaMemcpyDeviceToHost);
    cudaMemcpy(&gcnt, pc, sizeof gcnt, cudaMemcpyDeviceToHost);
    snprintf(what, sizeof what, "crossentropy_forward losses N=%d V=%d", N, V);
    CHECK_PARITY(what, glosses, losses, N, CUDA_DT_F32, 10.0); /* inputs identical; fp32 vs double row sums */
    CHECK_EQ_INT(gcnt, cnt);
    CHECKF(fabs(gsum - sum) <= 1e-5 * (1 + fabs(sum)), "loss sum %.10g vs %.10g", gsum, sum);
    CHECK_GUARDS(blo);
    CHECK_GUARDS(bs);
    CHECK_GUARDS(bc);
    /* backward into a separate buffer, then in place */
    float scale = cnt ? 1.0f / (float)cnt : 1.0f;
    crossentropy_backward(dl, logits, tg, N, V, scale);
    CHECK_RC(cuda_crossentropy_backward(pd, pl, (const int32_t *)pt, N, V, scale, dt, 0), 0);
    dev_down(gdl, pd, n, dt);
    snprintf(what, sizeof what, "crossentropy_backward N=%d V=%d", N, V);
    CHECK_PARITY(what, gdl, dl, n, dt, 1.0);
    CHECK_GUARDS(bd);
    CHECK_RC(cuda_crossentropy_backward(pl, pl, (const int32_t *)pt, N, V, scale, dt, 0), 0);
    dev_down(gdl, pl, n, dt);
    CHECK_PARITY("  crossentropy_backward in place", gdl, dl, n, dt, 1.0);
    CHECK_GUARDS(bl);
    gbuf_free(&bl), gbuf_free(&bt), gbuf_free(&blo), gbuf_free(&bs), gbuf_free(&bc), gbuf_free(&bd);
    free(logits), free(losses), free(glosses), free(dl), free(gdl), free(tg);
}

int main(void) {
    CUDA_TEST_SKIP_IF_NO_DEVICE();
    kernels_set_threads(2);
    for (int dt = 0; dt < 2; dt++) {
        run((cuda_dtype_t)dt, 1, 3);
        run((cuda_dtype_t)dt, 3, 1); /* row 2 ignored */
        run((cuda_dtype_t)dt, 7, 130);
        run((cuda_dtype_t)dt, 33, 32001);
        run((cuda_dtype_t)dt, 129, 32064);
    }
    CHECK_RC(cuda_crossentropy_forward(NULL, NULL, NULL, 4, 10, NULL, NULL, CUDA_DT_F32, 0), LLAVA_EINVAL);
    return test_finish();
}
