/* GPU embedding (forward, deterministic backward with repeated and negative ids), image-feature scatter (forward,
 * backward, count mismatch) and patch im2col vs the CPU ops, fp32 and bf16, guard bytes. Skips (77) without a GPU.
 * Run: ctest -R test_cuda_embed */
#include "tests/cuda/cuda_test.h"

static void run_embedding(cuda_ctx_t *ctx, cuda_dtype_t dt, int N, int C, int V) {
    uint64_t st = 5u + (uint64_t)N * C;
    float *table = hmalloc((long)V * C), *ref = hmalloc((long)N * C), *got = hmalloc((long)N * C);
    float *dout = hmalloc((long)N * C), *dtab = hmalloc((long)V * C), *gdtab = hmalloc((long)V * C);
    int32_t *ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)N), *bids = (int32_t *)malloc(sizeof(int32_t) * (size_t)N);
    char what[96];
    gbuf_t bt, bi, bo, bdo, bdt, bbi;
    for (int i = 0; i < N; i++) {
        ids[i] = (i * 5 + 3) % V;           /* repeats when N > V */
        bids[i] = i % 4 == 3 ? -1 : ids[i]; /* negative ids are skipped by the backward */
    }
    fill_rand(table, (long)V * C, &st, 1.0f), fill_rand(dout, (long)N * C, &st, 1.0f);
    fill_rand(dtab, (long)V * C, &st, 0.1f);
    round_to(table, (long)V * C, dt), round_to(dout, (long)N * C, dt), round_to(dtab, (long)V * C, dt);
    void *pt = gbuf_up(&bt, table, (long)V * C, dt), *pi = gbuf_up_i32(&bi, ids, N);
    void *po = gbuf_alloc(&bo, (size_t)N * C * cuda_dtype_size(dt)), *pdo = gbuf_up(&bdo, dout, (long)N * C, dt);
    void *pdt = gbuf_up(&bdt, dtab, (long)V * C, dt), *pbi = gbuf_up_i32(&bbi, bids, N);
    embedding_forward(ref, ids, table, N, C);
    CHECK_RC(cuda_embedding_forward(po, (const int32_t *)pi, pt, N, C, dt, 0), 0);
    dev_down(got, po, (long)N * C, dt);
    snprintf(what, sizeof what, "embedding_forward N=%d C=%d V=%d", N, C, V);
    CHECK_PARITY(what, got, ref, (long)N * C, dt, 1.0);
    embedding_backward(dtab, dout, bids, N, C);
    CHECK_RC(cuda_embedding_backward(ctx, pdt, pdo, (const int32_t *)pbi, N, C, dt, 0), 0);
    dev_down(gdtab, pdt, (long)V * C, dt);
    snprintf(what, sizeof what, "embedding_backward N=%d C=%d V=%d", N, C, V);
    /* each id's rows are summed in fp32 and added once, so bf16 sees one rounding per table element */
    CHECK_PARITY(what, gdtab, dtab, (long)V * C, dt, 1.0);
    CHECK_GUARDS(bo); CHECK_GUARDS(bdt);
    gbuf_free(&bt), gbuf_free(&bi), gbuf_free(&bo), gbuf_free(&bdo), gbuf_free(&bdt), gbuf_free(&bbi);
    free(table), free(ref), free(got), free(dout), free(dtab), free(gdtab), free(ids), free(bids);
}

static void run_scatter(cuda_ctx_t *ctx, cuda_dtype_t dt, int N, int C, int every) {
    uint64_t st = 17u + (uint64_t)N;
    const int32_t IMG = 32000;
    int M = 0;
    int32_t *ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)N);
    for (int i = 0; i < N; i++) {
        ids[i] = (i % every == 1) ? IMG : i % 100;
        M += ids[i] == IMG;
    }
    float *emb = hmalloc((long)N * C), *feats = hmalloc((long)(M ? M : 1) * C), *got = hmalloc((long)N * C);
    float *dfe = hmalloc((long)(M ? M : 1) * C), *gdfe = hmalloc((long)(M ? M : 1) * C);
    char what[96];
    gbuf_t be, bf, bi, bdf;
    fill_rand(emb, (long)N * C, &st, 1.0f), fill_rand(feats, (long)M * C, &st, 1.0f);
    round_to(emb, (long)N * C, dt), round_to(feats, (long)M * C, dt);
    void *pe = gbuf_up(&be, emb, (long)N * C, dt), *pf = gbuf_up(&bf, feats, (long)M * C, dt);
    void *pi = gbuf_up_i32(&bi, ids, N), *pdf = gbuf_alloc(&bdf, (size_t)M * C * cuda_dtype_size(dt));
    CHECK_RC(cuda_image_scatter_forward(ctx, pe, (const int32_t *)pi, IMG, pf, N, C, M, dt, 0), 0);
    CHECK_RC(image_scatter_forward(emb, ids, IMG, feats, N, C, M), 0);
    dev_down(got, pe, (long)N * C, dt);
    snprintf(what, sizeof what, "image_scatter_forward N=%d C=%d M=%d", N, C, M);
    CHECK_PARITY(what, got, emb, (long)N * C, dt, 1.0);
    /* backward gathers the (scattered) rows back: dfeats == feats */
    CHECK_RC(cuda_image_scatter_backward(ctx, pdf, pe, (const int32_t *)pi, IMG, N, C, M, dt, 0), 0);
    CHECK_RC(image_scatter_backward(dfe, emb, ids, IMG, N, C, M), 0);
    dev_down(gdfe, pdf, (long)M * C, dt);
    CHECK_PARITY("  image_scatter_backward", gdfe, dfe, (long)M * C, dt, 1.0);
    CHECK_GUARDS(be); CHECK_GUARDS(bdf);
    /* a count mismatch writes nothing */
    CHECK_RC(cuda_image_scatter_forward(ctx, pe, (const int32_t *)pi, IMG, pf, N, C, M + 1, dt, 0), LLAVA_ESHAPE);
    dev_down(got, pe, (long)N * C, dt);
    CHECK_PARITY("  image_scatter mismatch leaves embeds", got, emb, (long)N * C, dt, 1.0);
    gbuf_free(&be), gbuf_free(&bf), gbuf_free(&bi), gbuf_free(&bdf);
    free(ids), free(emb), free(feats), free(got), free(dfe), free(gdfe);
}

static void run_im2col(cuda_dtype_t dt, int B, int S, int P) {
    uint64_t st = 3u + (uint64_t)S;
    long nimg = (long)B * 3 * S * S, nout = (long)B * (S / P) * (S / P) * 3 * P * P;
    float *img = hmalloc(nimg), *ref = hmalloc(nout), *got = hmalloc(nout);
    char what[96];
    gbuf_t bi, bo;
    fill_rand(img, nimg, &st, 1.0f);
    round_to(img, nimg, dt);
    void *pi = gbuf_up(&bi, img, nimg, dt), *po = gbuf_alloc(&bo, (size_t)nout * cuda_dtype_size(dt));
    patch_im2col(ref, img, B, S, P);
    CHECK_RC(cuda_patch_im2col(po, pi, B, S, P, dt, 0), 0);
    dev_down(got, po, nout, dt);
    snprintf(what, sizeof what, "patch_im2col B=%d S=%d P=%d", B, S, P);
    CHECK_PARITY(what, got, ref, nout, dt, 1.0);
    CHECK_GUARDS(bo);
    gbuf_free(&bi), gbuf_free(&bo);
    free(img), free(ref), free(got);
}

int main(void) {
    cuda_ctx_t *ctx = NULL;
    CUDA_TEST_SKIP_IF_NO_DEVICE();
    kernels_set_threads(2);
    CHECK_RC(cuda_ctx_new(&ctx, 0), 0);
    if (!ctx) return test_finish();
    for (int dt = 0; dt < 2; dt++) {
        cuda_dtype_t d = (cuda_dtype_t)dt;
        run_embedding(ctx, d, 1, 3, 5);
        run_embedding(ctx, d, 33, 130, 7);
        run_embedding(ctx, d, 1000, 64, 50);
        run_scatter(ctx, d, 1, 8, 2);    /* no image tokens: M = 0 */
        run_scatter(ctx, d, 33, 64, 3);
        run_scatter(ctx, d, 3000, 130, 2); /* more than one scan chunk */
        run_im2col(d, 1, 14, 14);
        run_im2col(d, 2, 28, 14);
        run_im2col(d, 3, 30, 7);
        run_im2col(d, 1, 31, 5); /* leftover pixels dropped */
    }
    cuda_ctx_free(&ctx);
    return test_finish();
}
