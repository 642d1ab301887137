/* GPU activations (quick_gelu, GELU erf, SwiGLU; forward and accumulating backward), residual/add/scale/add_rows
 * and the fp32 <-> bf16 conversions vs the CPU ops, odd sizes, guard bytes. Skips (77) without a GPU.
 * Run: ctest -R test_cuda_elementwise */
#include "tests/cuda/cuda_test.h"

enum { QGELU, GELU, SWIGLU, NACT };

static void run_act(cuda_dtype_t dt, long n, int act) {
    static const char *names[] = {"quick_gelu", "gelu", "swiglu"};
    uint64_t st = 11u + (uint64_t)n + act;
    float *a = hmalloc(n), *b = hmalloc(n), *dout = hmalloc(n), *ref = hmalloc(n), *got = hmalloc(n);
    float *da = hmalloc(n), *db = hmalloc(n), *gda = hmalloc(n), *gdb = hmalloc(n);
    char what[96];
    gbuf_t ba, bb, bdo, bo, bda, bdb;
    fill_rand(a, n, &st, 4.0f), fill_rand(b, n, &st, 2.0f), fill_rand(dout, n, &st, 1.0f);
    fill_rand(da, n, &st, 0.1f), fill_rand(db, n, &st, 0.1f);
    round_to(a, n, dt), round_to(b, n, dt), round_to(dout, n, dt), round_to(da, n, dt), round_to(db, n, dt);
    void *pa = gbuf_up(&ba, a, n, dt), *pb = gbuf_up(&bb, b, n, dt), *pdo = gbuf_up(&bdo, dout, n, dt);
    void *po = gbuf_alloc(&bo, (size_t)n * cuda_dtype_size(dt));
    void *pda = gbuf_up(&bda, da, n, dt), *pdb = gbuf_up(&bdb, db, n, dt);
    if (act == QGELU) {
        quick_gelu_forward(ref, a, n);
        quick_gelu_backward(da, a, dout, n);
        CHECK_RC(cuda_quick_gelu_forward(po, pa, n, dt, 0), 0);
        CHECK_RC(cuda_quick_gelu_backward(pda, pa, pdo, n, dt, 0), 0);
    } else if (act == GELU) {
        gelu_forward(ref, a, n);
        gelu_backward(da, a, dout, n);
        CHECK_RC(cuda_gelu_forward(po, pa, n, dt, 0), 0);
        CHECK_RC(cuda_gelu_backward(pda, pa, pdo, n, dt, 0), 0);
    } else {
        swiglu_forward(ref, a, b, n);
        swiglu_backward(da, db, dout, a, b, n);
        CHECK_RC(cuda_swiglu_forward(po, pa, pb, n, dt, 0), 0);
        CHECK_RC(cuda_swiglu_backward(pda, pdb, pdo, pa, pb, n, dt, 0), 0);
    }
    dev_down(got, po, n, dt);
    dev_down(gda, pda, n, dt);
    dev_down(gdb, pdb, n, dt);
    snprintf(what, sizeof what, "%s_forward n=%ld", names[act], n);
    CHECK_PARITY(what, got, ref, n, dt, 1.0);
    snprintf(what, sizeof what, "%s_backward n=%ld", names[act], n);
    CHECK_PARITY(what, gda, da, n, dt, 1.0);
    if (act == SWIGLU) CHECK_PARITY("  swiglu_backward dup", gdb, db, n, dt, 1.0);
    CHECK_GUARDS(bo); CHECK_GUARDS(bda); CHECK_GUARDS(bdb);
    if (act == SWIGLU) { /* out aliasing gate */
        CHECK_RC(cuda_swiglu_forward(pa, pa, pb, n, dt, 0), 0);
        dev_down(got, pa, n, dt);
        CHECK_PARITY("  swiglu_forward in place", got, ref, n, dt, 1.0);
    }
    gbuf_free(&ba), gbuf_free(&bb), gbuf_free(&bdo), gbuf_free(&bo), gbuf_free(&bda), gbuf_free(&bdb);
    free(a), free(b), free(dout), free(ref), free(got), free(da), free(db), free(gda), free(gdb);
}

static void run_helpers(cuda_dtype_t dt, int N, int C) {
    uint64_t st = 21u + (uint64_t)N * C;
    long n = (long)N * C;
    float *a = hmalloc(n), *b = hmalloc(n), *row = hmalloc(C), *ref = hmalloc(n), *got = hmalloc(n);
    char what[96];
    gbuf_t ba, bb, br, bo;
    fill_rand(a, n, &st, 3.0f), fill_rand(b, n, &st, 3.0f), fill_rand(row, C, &st, 1.0f);
    round_to(a, n, dt), round_to(b, n, dt), round_to(row, C, dt);
    void *pa = gbuf_up(&ba, a, n, dt), *pb = gbuf_up(&bb, b, n, dt), *pr = gbuf_up(&br, row, C, dt);
    void *po = gbuf_alloc(&bo, (size_t)n * cuda_dtype_size(dt));
    residual_forward(ref, a, b, n);
    CHECK_RC(cuda_residual_forward(po, pa, pb, n, dt, 0), 0);
    dev_down(got, po, n, dt);
    snprintf(what, sizeof what, "residual_forward n=%ld", n);
    CHECK_PARITY(what, got, ref, n, dt, 1.0);
    add_inplace(ref, a, n); /* ref = a + b + a */
    CHECK_RC(cuda_add_inplace(po, pa, n, dt, 0), 0);
    dev_down(got, po, n, dt);
    round_to(ref, n, dt); /* the GPU rounded a + b before adding a again */
    CHECK_PARITY("  add_inplace", got, ref, n, dt, 2.0);
    scale_inplace(a, -0.37f, n);
    CHECK_RC(cuda_scale_inplace(pa, -0.37f, n, dt, 0), 0);
    dev_down(got, pa, n, dt);
    CHECK_PARITY("  scale_inplace", got, a, n, dt, 1.0);
    add_rows(b, row, N, C);
    CHECK_RC(cuda_add_rows(pb, pr, N, C, dt, 0), 0);
    dev_down(got, pb, n, dt);
    snprintf(what, sizeof what, "add_rows N=%d C=%d", N, C);
    CHECK_PARITY(what, got, b, n, dt, 1.0);
    CHECK_GUARDS(ba); CHECK_GUARDS(bb); CHECK_GUARDS(bo);
    gbuf_free(&ba), gbuf_free(&bb), gbuf_free(&br), gbuf_free(&bo);
    free(a), free(b), free(row), free(ref), free(got);
}

static void run_convert(long n) {
    uint64_t st = 99u + (uint64_t)n;
    float *x = hmalloc(n), *got = hmalloc(n), *want = hmalloc(n);
    gbuf_t bx, bh, bf;
    fill_rand(x, n, &st, 100.0f);
    void *px = gbuf_up(&bx, x, n, CUDA_DT_F32);
    void *ph = gbuf_alloc(&bh, (size_t)n * 2), *pf = gbuf_alloc(&bf, (size_t)n * 4);
    CHECK_RC(cuda_convert(ph, CUDA_DT_BF16, px, CUDA_DT_F32, n, 0), 0);
    CHECK_RC(cuda_convert(pf, CUDA_DT_F32, ph, CUDA_DT_BF16, n, 0), 0);
    dev_down(got, pf, n, CUDA_DT_F32);
    memcpy(want, x, sizeof(float) * (size_t)n);
    round_to(want, n, CUDA_DT_BF16); /* round to nearest even, as common/tensor.c */
    CHECKF(memcmp(got, want, sizeof(float) * (size_t)n) == 0, "fp32 -> bf16 -> fp32 differs from f32_to_bf16 (n=%ld)",
           n);
    CHECK_GUARDS(bh); CHECK_GUARDS(bf);
    CHECK_RC(cuda_convert(pf, CUDA_DT_F32, px, CUDA_DT_F32, n, 0), 0); /* same dtype: a copy */
    dev_down(got, pf, n, CUDA_DT_F32);
    CHECK(memcmp(got, x, sizeof(float) * (size_t)n) == 0);
    gbuf_free(&bx), gbuf_free(&bh), gbuf_free(&bf);
    free(x), free(got), free(want);
}

int main(void) {
    static const long ns[] = {1, 7, 33, 130, 100003};
    CUDA_TEST_SKIP_IF_NO_DEVICE();
    kernels_set_threads(2);
    for (int dt = 0; dt < 2; dt++) {
        for (int i = 0; i < 5; i++)
            for (int act = 0; act < NACT; act++) run_act((cuda_dtype_t)dt, ns[i], act);
        run_helpers((cuda_dtype_t)dt, 1, 3);
        run_helpers((cuda_dtype_t)dt, 7, 64);
        run_helpers((cuda_dtype_t)dt, 33, 130);
    }
    run_convert(1);
    run_convert(1000003);
    CHECK_RC(cuda_convert(NULL, (cuda_dtype_t)5, NULL, CUDA_DT_F32, 4, 0), LLAVA_EINVAL);
    return test_finish();
}
