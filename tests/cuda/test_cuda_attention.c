/* GPU RoPE, fused attention (forward, logsumexp, backward) and row softmax vs the CPU ops: causal and
 * bidirectional, GQA 8/2, right padding (incl. an empty row), T = 1, 17, 129, HS up to 128, fp32 and bf16, guard
 * bytes. Skips (77) without a GPU. Run: ctest -R test_cuda_attention */
#include "tests/cuda/cuda_test.h"

typedef struct {
    int B, T, NH, NKV, HS, causal, padded;
} acase_t;

/* Reference logsumexp of the scaled visible scores (double), +inf when a row sees no key. */
static void ref_lse(float *lse, const float *q, const float *k, const int32_t *len, const acase_t *c) {
    double scale = 1.0 / sqrt((double)c->HS);
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->NH; h++)
            for (int i = 0; i < c->T; i++) {
                int kh = h / (c->NH / c->NKV);
                double mx = -INFINITY, s[512];
                int L = len ? len[b] : c->T;
                for (int j = 0; j < c->T; j++) {
                    s[j] = -INFINITY;
                    if (j >= L || (c->causal && j > i)) continue;
                    double acc = 0;
                    for (int d = 0; d < c->HS; d++)
                        acc += (double)q[(((long)b * c->T + i) * c->NH + h) * c->HS + d] *
                               k[(((long)b * c->T + j) * c->NKV + kh) * c->HS + d];
                    s[j] = acc * scale;
                    if (s[j] > mx) mx = s[j];
                }
                double sum = 0;
                for (int j = 0; j < c->T; j++)
                    if (s[j] > -INFINITY) sum += exp(s[j] - mx);
                lse[((long)b * c->NH + h) * c->T + i] = sum > 0 ? (float)(mx + log(sum)) : INFINITY;
            }
}

static void run_attention(cuda_ctx_t *ctx, cuda_dtype_t dt, const acase_t *c) {
    uint64_t st = 5u + (uint64_t)c->T * 3 + c->HS + c->NKV;
    long nq = (long)c->B * c->T * c->NH * c->HS, nk = (long)c->B * c->T * c->NKV * c->HS;
    long nl = (long)c->B * c->NH * c->T;
    float *q = hmalloc(nq), *k = hmalloc(nk), *v = hmalloc(nk), *dout = hmalloc(nq), *ref = hmalloc(nq),
          *got = hmalloc(nq);
    float *dq = hmalloc(nq), *dk = hmalloc(nk), *dv = hmalloc(nk), *gdq = hmalloc(nq), *gdk = hmalloc(nk),
          *gdv = hmalloc(nk);
    float *lse = hmalloc(nl), *glse = hmalloc(nl);
    int32_t len[8];
    char what[160];
    gbuf_t bq, bk, bv, bo, bl, blen, bdo, bdq, bdk, bdv;
    for (int b = 0; b < c->B; b++) len[b] = c->padded ? (b == 0 ? c->T : (b == 1 ? (c->T * 2) / 3 + 1 : 0)) : c->T;
    fill_rand(q, nq, &st, 1.5f), fill_rand(k, nk, &st, 1.5f), fill_rand(v, nk, &st, 1.0f);
    fill_rand(dout, nq, &st, 1.0f);
    fill_rand(dq, nq, &st, 0.1f), fill_rand(dk, nk, &st, 0.1f), fill_rand(dv, nk, &st, 0.1f);
    round_to(q, nq, dt), round_to(k, nk, dt), round_to(v, nk, dt), round_to(dout, nq, dt);
    round_to(dq, nq, dt), round_to(dk, nk, dt), round_to(dv, nk, dt);
    void *dqv = gbuf_up(&bq, q, nq, dt), *dkv = gbuf_up(&bk, k, nk, dt), *dvv = gbuf_up(&bv, v, nk, dt);
    void *dov = gbuf_up(&bdo, dout, nq, dt), *outd = gbuf_alloc(&bo, (size_t)nq * cuda_dtype_size(dt));
    float *dlse = (float *)gbuf_alloc(&bl, (size_t)nl * 4);
    int32_t *dlen = c->padded ? (int32_t *)gbuf_up_i32(&blen, len, c->B) : NULL;
    void *ddq = gbuf_up(&bdq, dq, nq, dt), *ddk = gbuf_up(&bdk, dk, nk, dt), *ddv = gbuf_up(&bdv, dv, nk, dt);
    if (!c->padded) blen.base = NULL;

    CHECK_RC(attention_forward(ref, NULL, q, k, v, c->padded ? len : NULL, c->B, c->T, c->NH, c->NKV, c->HS,
                               c->causal),
             0);
    CHECK_RC(cuda_attention_forward(outd, dlse, dqv, dkv, dvv, dlen, c->B, c->T, c->NH, c->NKV, c->HS, c->causal, dt,
                                    0),
             0);
    dev_down(got, outd, nq, dt);
    snprintf(what, sizeof what, "attention_forward B%d T%d NH%d NKV%d HS%d causal%d pad%d", c->B, c->T, c->NH, c->NKV,
             c->HS, c->causal, c->padded);
    CHECK_PARITY(what, got, ref, nq, dt, 1.0);
    ref_lse(lse, q, k, c->padded ? len : NULL, c);
    dev_down(glse, dlse, nl, CUDA_DT_F32);
    int inf_ok = 1;
    for (long i = 0; i < nl; i++) {
        if (isinf(lse[i]) || isinf(glse[i])) {
            inf_ok &= isinf(lse[i]) && isinf(glse[i]) && glse[i] > 0;
            lse[i] = glse[i] = 0.0f; /* compared; keep them out of the NMSE */
        }
    }
    CHECKF(inf_ok, "%s: rows without visible keys must have lse = +inf", what);
    CHECK_PARITY("  logsumexp", glse, lse, nl, CUDA_DT_F32, 10.0);
    CHECK_GUARDS(bo);
    CHECK_GUARDS(bl);

    /* backward: the GPU needs the forward's out (its own) and lse */
    CHECK_RC(attention_backward(dq, dk, dv, dout, NULL, q, k, v, c->padded ? len : NULL, c->B, c->T, c->NH, c->NKV,
                                c->HS, c->causal),
             0);
    CHECK_RC(cuda_attention_backward(ctx, ddq, ddk, ddv, dov, outd, dlse, dqv, dkv, dvv, dlen, c->B, c->T, c->NH,
                                     c->NKV, c->HS, c->causal, dt, 0),
             0);
    dev_down(gdq, ddq, nq, dt);
    dev_down(gdk, ddk, nk, dt);
    dev_down(gdv, ddv, nk, dt);
    CHECK_PARITY("  attention_backward dq", gdq, dq, nq, dt, dt == CUDA_DT_F32 ? 3.0 : 2.0);
    CHECK_PARITY("  attention_backward dk", gdk, dk, nk, dt, dt == CUDA_DT_F32 ? 3.0 : 2.0);
    CHECK_PARITY("  attention_backward dv", gdv, dv, nk, dt, dt == CUDA_DT_F32 ? 3.0 : 2.0);
    CHECK_GUARDS(bdq);
    CHECK_GUARDS(bdk);
    CHECK_GUARDS(bdv);

    gbuf_free(&bq), gbuf_free(&bk), gbuf_free(&bv), gbuf_free(&bo), gbuf_free(&bl), gbuf_free(&bdo);
    gbuf_free(&bdq), gbuf_free(&bdk), gbuf_free(&bdv);
    if (c->padded) gbuf_free(&blen);
    free(q), free(k), free(v), free(dout), free(ref), free(got), free(dq), free(dk), free(dv), free(gdq), free(gdk);
    free(gdv), free(lse), free(glse);
}

static void run_rope(cuda_dtype_t dt, int B, int T, int NH, int HS, int with_pos) {
    uint64_t st = 9u + (uint64_t)T + HS;
    long n = (long)B * T * NH * HS;
    float *x = hmalloc(n), *ref = hmalloc(n), *got = hmalloc(n), *dx = hmalloc(n), *gdx = hmalloc(n);
    int32_t *pos = (int32_t *)malloc(sizeof(int32_t) * (size_t)(B * T));
    char what[128];
    gbuf_t bx, bo, bp, bdx;
    for (int i = 0; i < B * T; i++) pos[i] = (i * 7) % 2000; /* arbitrary positions */
    fill_rand(x, n, &st, 1.0f);
    fill_rand(dx, n, &st, 0.1f);
    round_to(x, n, dt), round_to(dx, n, dt);
    void *dxin = gbuf_up(&bx, x, n, dt), *dov = gbuf_alloc(&bo, (size_t)n * cuda_dtype_size(dt));
    int32_t *dpos = with_pos ? (int32_t *)gbuf_up_i32(&bp, pos, B * T) : NULL;
    void *ddx = gbuf_up(&bdx, dx, n, dt);
    rope_forward(ref, x, with_pos ? pos : NULL, B, T, NH, HS, 10000.0f);
    CHECK_RC(cuda_rope_forward(dov, dxin, dpos, B, T, NH, HS, 10000.0f, dt, 0), 0);
    dev_down(got, dov, n, dt);
    snprintf(what, sizeof what, "rope_forward B%d T%d NH%d HS%d pos%d", B, T, NH, HS, with_pos);
    CHECK_PARITY(what, got, ref, n, dt, 1.0);
    CHECK_GUARDS(bo);
    /* backward (dout = x), accumulating */
    rope_backward(dx, x, with_pos ? pos : NULL, B, T, NH, HS, 10000.0f);
    CHECK_RC(cuda_rope_backward(ddx, dxin, dpos, B, T, NH, HS, 10000.0f, dt, 0), 0);
    dev_down(gdx, ddx, n, dt);
    snprintf(what, sizeof what, "rope_backward B%d T%d NH%d HS%d pos%d", B, T, NH, HS, with_pos);
    CHECK_PARITY(what, gdx, dx, n, dt, 1.0);
    CHECK_GUARDS(bdx);
    /* in place */
    CHECK_RC(cuda_rope_forward(dxin, dxin, dpos, B, T, NH, HS, 10000.0f, dt, 0), 0);
    dev_down(got, dxin, n, dt);
    CHECK_PARITY("  rope_forward in place", got, ref, n, dt, 1.0);
    gbuf_free(&bx), gbuf_free(&bo), gbuf_free(&bdx);
    if (with_pos) gbuf_free(&bp);
    free(x), free(ref), free(got), free(dx), free(gdx), free(pos);
}

static void run_softmax(cuda_dtype_t dt, int N, int V) {
    uint64_t st = 3u + (uint64_t)V;
    long n = (long)N * V;
    float *x = hmalloc(n), *ref = hmalloc(n), *got = hmalloc(n);
    char what[96];
    gbuf_t bx, bo;
    fill_rand(x, n, &st, 8.0f);
    round_to(x, n, dt);
    void *dx = gbuf_up(&bx, x, n, dt), *dov = gbuf_alloc(&bo, (size_t)n * cuda_dtype_size(dt));
    softmax_forward(ref, x, N, V);
    CHECK_RC(cuda_softmax_forward(dov, dx, N, V, dt, 0), 0);
    dev_down(got, dov, n, dt);
    snprintf(what, sizeof what, "softmax_forward N=%d V=%d", N, V);
    CHECK_PARITY(what, got, ref, n, dt, 1.0);
    CHECK_GUARDS(bo);
    CHECK_RC(cuda_softmax_forward(dx, dx, N, V, dt, 0), 0); /* in place */
    dev_down(got, dx, n, dt);
    CHECK_PARITY("  softmax_forward in place", got, ref, n, dt, 1.0);
    CHECK_GUARDS(bx);
    gbuf_free(&bx), gbuf_free(&bo);
    free(x), free(ref), free(got);
}

int main(void) {
    static const acase_t cases[] = {
        {1, 1, 1, 1, 8, 1, 0},    {1, 1, 2, 1, 64, 0, 0},   {2, 17, 4, 4, 16, 0, 1},  {2, 17, 4, 2, 30, 1, 1},
        {3, 33, 8, 2, 64, 1, 1},  {1, 129, 8, 2, 64, 1, 0}, {2, 129, 8, 2, 128, 0, 1}, {1, 129, 2, 2, 128, 1, 0},
        {2, 65, 6, 3, 96, 1, 1},  {3, 40, 4, 1, 2, 0, 1},
    };
    cuda_ctx_t *ctx = NULL;
    CUDA_TEST_SKIP_IF_NO_DEVICE();
    kernels_set_threads(2);
    CHECK_RC(cuda_ctx_new(&ctx, 0), 0);
    if (!ctx) return test_finish();
    for (int dt = 0; dt < 2; dt++) {
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_attention(ctx, (cuda_dtype_t)dt, &cases[i]);
        run_rope((cuda_dtype_t)dt, 1, 1, 1, 2, 0);
        run_rope((cuda_dtype_t)dt, 2, 17, 4, 64, 1);
        run_rope((cuda_dtype_t)dt, 2, 129, 3, 128, 0);
        run_softmax((cuda_dtype_t)dt, 1, 1);
        run_softmax((cuda_dtype_t)dt, 7, 33);
        run_softmax((cuda_dtype_t)dt, 33, 32001);
    }
    /* HS > 128, NH % NKV != 0 and odd HS for RoPE are refused */
    CHECK_RC(cuda_attention_forward(NULL, NULL, NULL, NULL, NULL, NULL, 1, 4, 2, 2, 130, 0, CUDA_DT_F32, 0),
             LLAVA_EINVAL);
    CHECK_RC(cuda_attention_forward(NULL, NULL, NULL, NULL, NULL, NULL, 1, 4, 3, 2, 64, 0, CUDA_DT_F32, 0),
             LLAVA_EINVAL);
    CHECK_RC(cuda_rope_forward(NULL, NULL, NULL, 1, 4, 2, 7, 10000.0f, CUDA_DT_F32, 0), LLAVA_EINVAL);
    cuda_ctx_free(&ctx);
    return test_finish();
}
