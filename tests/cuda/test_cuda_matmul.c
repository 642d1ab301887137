/* GPU matmul (cuBLASLt) vs the CPU op: forward with/without bias, the GELU-tanh epilogue, backward accumulating
 * into dinp/dweight/dbias; odd shapes, fp32 and bf16, guard bytes around every output. Skips (77) without a GPU.
 * Run: ctest -R test_cuda_matmul */
#include "tests/cuda/cuda_test.h"

static float gelu_tanh(float x) {
    return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

static void run(cuda_ctx_t *ctx, cuda_dtype_t dt, int N, int C, int OC, int use_bias) {
    uint64_t st = 1000u + (uint64_t)N * 31 + C * 7 + OC;
    float *inp = hmalloc((long)N * C), *w = hmalloc((long)OC * C), *bias = hmalloc(OC), *dout = hmalloc((long)N * OC);
    float *out = hmalloc((long)N * OC), *ref = hmalloc((long)N * OC), *got = hmalloc((long)N * OC);
    float *dinp = hmalloc((long)N * C), *dw = hmalloc((long)OC * C), *db = hmalloc(OC);
    float *gdinp = hmalloc((long)N * C), *gdw = hmalloc((long)OC * C), *gdb = hmalloc(OC);
    char what[128];
    gbuf_t bi, bw, bb, bo, bdo, bdi, bdw, bdb;
    fill_rand(inp, (long)N * C, &st, 1.0f);
    fill_rand(w, (long)OC * C, &st, 0.5f);
    fill_rand(bias, OC, &st, 0.5f);
    fill_rand(dout, (long)N * OC, &st, 1.0f);
    fill_rand(dinp, (long)N * C, &st, 0.1f); /* non-zero: the backward must accumulate */
    fill_rand(dw, (long)OC * C, &st, 0.1f);
    fill_rand(db, OC, &st, 0.1f);
    round_to(inp, (long)N * C, dt);
    round_to(w, (long)OC * C, dt);
    round_to(bias, OC, dt);
    round_to(dout, (long)N * OC, dt);
    round_to(dinp, (long)N * C, dt);
    round_to(dw, (long)OC * C, dt);
    round_to(db, OC, dt);
    void *di = gbuf_up(&bi, inp, (long)N * C, dt), *dwt = gbuf_up(&bw, w, (long)OC * C, dt);
    void *dbias = gbuf_up(&bb, bias, OC, dt), *dov = gbuf_up(&bdo, dout, (long)N * OC, dt);
    void *dout_dev = gbuf_alloc(&bo, (size_t)N * OC * cuda_dtype_size(dt));
    void *ddi = gbuf_up(&bdi, dinp, (long)N * C, dt), *ddw = gbuf_up(&bdw, dw, (long)OC * C, dt);
    void *ddb = gbuf_up(&bdb, db, OC, dt);

    /* forward */
    matmul_forward(ref, inp, w, use_bias ? bias : NULL, N, C, OC);
    CHECK_RC(cuda_matmul_forward(ctx, dout_dev, di, dwt, use_bias ? dbias : NULL, N, C, OC, dt, 0), 0);
    dev_down(got, dout_dev, (long)N * OC, dt);
    snprintf(what, sizeof what, "matmul_forward N=%d C=%d OC=%d bias=%d", N, C, OC, use_bias);
    CHECK_PARITY(what, got, ref, (long)N * OC, dt, 1.0);
    CHECK_GUARDS(bo);

    /* GELU (tanh) epilogue */
    for (long i = 0; i < (long)N * OC; i++) out[i] = gelu_tanh(ref[i]);
    CHECK_RC(cuda_matmul_forward_epi(ctx, dout_dev, di, dwt, use_bias ? dbias : NULL, N, C, OC, CUDA_EPI_GELU_TANH, dt,
                                     0),
             0);
    dev_down(got, dout_dev, (long)N * OC, dt);
    snprintf(what, sizeof what, "matmul_forward+gelu_tanh N=%d C=%d OC=%d", N, C, OC);
    CHECK_PARITY(what, got, out, (long)N * OC, dt, 10.0);
    CHECK_GUARDS(bo);

    /* backward, accumulating */
    matmul_backward(dinp, dw, db, dout, inp, w, N, C, OC);
    CHECK_RC(cuda_matmul_backward(ctx, ddi, ddw, ddb, dov, di, dwt, N, C, OC, dt, 0), 0);
    dev_down(gdinp, ddi, (long)N * C, dt);
    dev_down(gdw, ddw, (long)OC * C, dt);
    dev_down(gdb, ddb, OC, dt);
    snprintf(what, sizeof what, "matmul_backward dinp N=%d C=%d OC=%d", N, C, OC);
    CHECK_PARITY(what, gdinp, dinp, (long)N * C, dt, 1.0);
    snprintf(what, sizeof what, "matmul_backward dweight N=%d C=%d OC=%d", N, C, OC);
    CHECK_PARITY(what, gdw, dw, (long)OC * C, dt, 2.0);
    snprintf(what, sizeof what, "matmul_backward dbias N=%d C=%d OC=%d", N, C, OC);
    CHECK_PARITY(what, gdb, db, OC, dt, 2.0);
    CHECK_GUARDS(bdi);
    CHECK_GUARDS(bdw);
    CHECK_GUARDS(bdb);

    /* NULL gradients are skipped: dinp only (a frozen layer) leaves nothing else touched */
    CHECK_RC(cuda_matmul_backward(ctx, ddi, NULL, NULL, dov, di, dwt, N, C, OC, dt, 0), 0);
    CHECK_GUARDS(bdi);

    gbuf_free(&bi), gbuf_free(&bw), gbuf_free(&bb), gbuf_free(&bo), gbuf_free(&bdo), gbuf_free(&bdi);
    gbuf_free(&bdw), gbuf_free(&bdb);
    free(inp), free(w), free(bias), free(dout), free(out), free(ref), free(got), free(dinp), free(dw), free(db);
    free(gdinp), free(gdw), free(gdb);
}

/* Operands one element past an aligned address (sub-tensors of an arena): the cuBLASLt alignment preferences and
 * the unaligned-bias path. */
static void run_misaligned(cuda_ctx_t *ctx, cuda_dtype_t dt, int N, int C, int OC) {
    uint64_t st = 555u + (uint64_t)N;
    size_t es = cuda_dtype_size(dt);
    float *inp = hmalloc(1 + (long)N * C), *w = hmalloc(1 + (long)OC * C), *bias = hmalloc(1 + OC);
    float *ref = hmalloc((long)N * OC), *got = hmalloc((long)N * OC);
    gbuf_t bi, bw, bb, bo;
    fill_rand(inp, 1 + (long)N * C, &st, 1.0f), fill_rand(w, 1 + (long)OC * C, &st, 0.5f);
    fill_rand(bias, 1 + OC, &st, 0.5f);
    round_to(inp, 1 + (long)N * C, dt), round_to(w, 1 + (long)OC * C, dt), round_to(bias, 1 + OC, dt);
    char *di = (char *)gbuf_up(&bi, inp, 1 + (long)N * C, dt) + es, *dw = (char *)gbuf_up(&bw, w, 1 + (long)OC * C, dt) + es;
    char *db = (char *)gbuf_up(&bb, bias, 1 + OC, dt) + es;
    char *dov = (char *)gbuf_alloc(&bo, (size_t)(1 + (long)N * OC) * es) + es;
    matmul_forward(ref, inp + 1, w + 1, bias + 1, N, C, OC);
    CHECK_RC(cuda_matmul_forward(ctx, dov, di, dw, db, N, C, OC, dt, 0), 0);
    dev_down(got, dov, (long)N * OC, dt);
    CHECK_PARITY("matmul_forward misaligned operands", got, ref, (long)N * OC, dt, 1.0);
    CHECK_GUARDS(bo);
    gbuf_free(&bi), gbuf_free(&bw), gbuf_free(&bb), gbuf_free(&bo);
    free(inp), free(w), free(bias), free(ref), free(got);
}

int main(void) {
    static const int Ns[] = {1, 7, 33, 256}, Cs[] = {3, 64, 130}, OCs[] = {5, 64, 97};
    cuda_ctx_t *ctx = NULL;
    CUDA_TEST_SKIP_IF_NO_DEVICE();
    kernels_set_threads(2);
    CHECK_RC(cuda_ctx_new(&ctx, 0), 0);
    if (!ctx) return test_finish();
    for (int dt = 0; dt < 2; dt++)
        for (int a = 0; a < 4; a++)
            for (int b = 0; b < 3; b++)
                for (int c = 0; c < 3; c++) run(ctx, (cuda_dtype_t)dt, Ns[a], Cs[b], OCs[c], (a + b + c) % 2);
    run_misaligned(ctx, CUDA_DT_F32, 7, 64, 97);
    run_misaligned(ctx, CUDA_DT_BF16, 33, 128, 64);
    /* bad sizes are refused */
    CHECK_RC(cuda_matmul_forward(ctx, NULL, NULL, NULL, NULL, 4, 0, 4, CUDA_DT_F32, 0), LLAVA_EINVAL);
    CHECK_RC(cuda_matmul_forward(ctx, NULL, NULL, NULL, NULL, 4, 4, 4, (cuda_dtype_t)7, 0), LLAVA_EINVAL);
    cuda_ctx_free(&ctx);
    return test_finish();
}
