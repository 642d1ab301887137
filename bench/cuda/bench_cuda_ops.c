/* GPU op benchmark: achieved TFLOP/s and GB/s of each CUDA op at LLaMA-7B layer shapes (bf16 by default), then a
 * whole-layer training step estimate (forward + backward of one decoder layer x layers + head) with model FLOPs
 * utilisation against the device's bf16 dense peak. Exits 77 without a GPU.
 * Run: build/kernels/cuda/bench_cuda_ops [--tokens 4096] [--seq 2048] [--f32] [--iters 20] [--peak-tflops X] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "common/err.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops_cuda.h"

typedef struct {
    int tokens, seq, iters;
    cuda_dtype_t dt;
    double peak_tflops; /* 0: look up by device name */
} bench_opts_t;

/* bf16 dense tensor-core peaks (no sparsity) from the vendors' data sheets. */
static double peak_by_name(const char *name) {
    if (strstr(name, "H200")) return 989.0;
    if (strstr(name, "H100") && strstr(name, "PCIe")) return 756.0;
    if (strstr(name, "H100") || strstr(name, "H800")) return 989.0; /* SXM5 */
    if (strstr(name, "A100") || strstr(name, "A800")) return 312.0;
    return 0.0;
}

typedef struct {
    cudaEvent_t a, b;
    cudaStream_t s;
} timer_t_;

#define BENCH(name, flops, bytes, call)                                                                          \
    do {                                                                                                       \
        int brc_ = (call);                                                                                     \
        if (brc_ != 0) {                                                                                       \
            fprintf(stderr, "%s failed: %s\n", name, err_str(brc_));                                           \
            rc = brc_;                                                                                         \
            goto cleanup;                                                                                      \
        }                                                                                                      \
        cudaEventRecord(tm.a, tm.s);                                                                           \
        for (int it_ = 0; it_ < o->iters; it_++) (void)(call);                                                 \
        cudaEventRecord(tm.b, tm.s);                                                                           \
        cudaEventSynchronize(tm.b);                                                                            \
        float ms_ = 0;                                                                                         \
        cudaEventElapsedTime(&ms_, tm.a, tm.b);                                                                \
        double t_ = ms_ / 1e3 / o->iters;                                                                      \
        printf("  %-34s %9.3f ms %9.1f TFLOP/s %8.1f GB/s\n", name, t_ * 1e3, (flops) / t_ / 1e12,           \
               (bytes) / t_ / 1e9);                                                                            \
        last = t_;                                                                                             \
    } while (0)

static void *dalloc(size_t bytes) {
    void *p = NULL;
    if (cudaMalloc(&p, bytes) != cudaSuccess) return NULL;
    cudaMemset(p, 0, bytes);
    return p;
}

/* Fills a device buffer with small values (bf16 or fp32) so no op sees NaN or inf. */
static int dfill(void *p, long n, cuda_dtype_t dt) {
    float *h = (float *)malloc(sizeof(float) * (size_t)n);
    float *tmp = NULL;
    int rc = 0;
    if (!h) return LLAVA_ENOMEM;
    for (long i = 0; i < n; i++) h[i] = 0.02f * (float)((i * 2654435761u) % 101) / 101.0f - 0.01f;
    if (dt == CUDA_DT_F32) {
        cudaMemcpy(p, h, sizeof(float) * (size_t)n, cudaMemcpyHostToDevice);
    } else if (cudaMalloc((void **)&tmp, sizeof(float) * (size_t)n) == cudaSuccess) {
        cudaMemcpy(tmp, h, sizeof(float) * (size_t)n, cudaMemcpyHostToDevice);
        rc = cuda_convert(p, dt, tmp, CUDA_DT_F32, n, 0);
        cudaDeviceSynchronize();
        cudaFree(tmp);
    } else {
        rc = LLAVA_ECUDA;
    }
    free(h);
    return rc;
}

static int run(const bench_opts_t *o) {
    int rc = 0;
    /* LLaMA-7B */
    const int H = 4096, I = 11008, NH = 32, NKV = 32, HS = 128, L = 32, V = 32000;
    const int N = o->tokens, T = o->seq, B = N / o->seq;
    size_t es = cuda_dtype_size(o->dt);
    cuda_ctx_t *ctx = NULL;
    timer_t_ tm = {0};
    void *x = NULL, *w = NULL, *y = NULL, *dx = NULL, *dw = NULL, *dy = NULL, *q = NULL, *k = NULL, *v = NULL,
         *att = NULL, *dq = NULL, *dk = NULL, *dv = NULL, *logits = NULL;
    float *stat = NULL, *lse = NULL, *losses = NULL, *master = NULL, *m1 = NULL, *m2 = NULL;
    int32_t *ids = NULL;
    double last = 0, layer_fwd = 0, layer_bwd = 0, head = 0;
    long adam_n = (long)o->tokens * 3 * 11008; /* as many as the bf16 buffers y/dy hold */
    struct cudaDeviceProp prop;
    double peak = o->peak_tflops;
    CUDA_CHECK_GOTO(cudaGetDeviceProperties(&prop, 0));
    if (peak <= 0) peak = peak_by_name(prop.name);
    printf("device: %s, %d SMs, %.1f GiB; dtype %s; tokens %d (B %d x T %d); bf16 dense peak %s\n", prop.name,
           prop.multiProcessorCount, prop.totalGlobalMem / (1024.0 * 1024 * 1024), o->dt == CUDA_DT_BF16 ? "bf16" : "f32",
           N, B, T, peak > 0 ? "known" : "unknown (pass --peak-tflops for MFU)");
    CHECK_GOTO(B >= 1 && N % T == 0, LLAVA_EINVAL, "--tokens must be a multiple of --seq");
    RC_CHECK_GOTO(cuda_ctx_new(&ctx, 0));
    CUDA_CHECK_GOTO(cudaStreamCreate(&tm.s));
    CUDA_CHECK_GOTO(cudaEventCreate(&tm.a));
    CUDA_CHECK_GOTO(cudaEventCreate(&tm.b));
    x = dalloc((size_t)N * I * es), y = dalloc((size_t)N * 3 * I * es), dx = dalloc((size_t)N * I * es);
    dy = dalloc((size_t)N * 3 * I * es), w = dalloc((size_t)3 * I * H * es), dw = dalloc((size_t)3 * I * H * es);
    q = dalloc((size_t)N * H * es), k = dalloc((size_t)N * H * es), v = dalloc((size_t)N * H * es);
    att = dalloc((size_t)N * H * es), dq = dalloc((size_t)N * H * es), dk = dalloc((size_t)N * H * es);
    dv = dalloc((size_t)N * H * es), stat = (float *)dalloc((size_t)N * 4), lse = (float *)dalloc((size_t)N * NH * 4);
    logits = dalloc((size_t)N * V * es), losses = (float *)dalloc((size_t)N * 4), ids = (int32_t *)dalloc((size_t)N * 4);
    master = (float *)dalloc((size_t)adam_n * 4), m1 = (float *)dalloc((size_t)adam_n * 4);
    m2 = (float *)dalloc((size_t)adam_n * 4);
    CHECK_GOTO(x && y && dx && dy && w && dw && q && k && v && att && dq && dk && dv && stat && lse && logits &&
                   losses && ids && master && m1 && m2,
               LLAVA_ENOMEM, "device out of memory (lower --tokens)");
    RC_CHECK_GOTO(dfill(x, (long)N * I, o->dt));
    RC_CHECK_GOTO(dfill(w, (long)3 * I * H, o->dt));
    RC_CHECK_GOTO(dfill(q, (long)N * H, o->dt));
    RC_CHECK_GOTO(dfill(k, (long)N * H, o->dt));
    RC_CHECK_GOTO(dfill(v, (long)N * H, o->dt));
    RC_CHECK_GOTO(dfill(logits, (long)N * V, o->dt));
    RC_CHECK_GOTO(dfill(dy, (long)N * 3 * I, o->dt));

    printf("per op (one LLaMA-7B layer's shapes):\n");
    double mm = 2.0 * N;
#define MMF(C, OC) (mm * (C) * (OC))
#define MMB(C, OC) ((double)((long)N * (C) + (long)(C) * (OC) + (long)N * (OC)) * es)
    BENCH("matmul fwd qkv 4096->12288", MMF(H, 3 * H), MMB(H, 3 * H),
          cuda_matmul_forward(ctx, y, x, w, NULL, N, H, 3 * H, o->dt, tm.s));
    layer_fwd += last;
    BENCH("matmul bwd qkv", 2 * MMF(H, 3 * H), 2 * MMB(H, 3 * H),
          cuda_matmul_backward(ctx, dx, dw, NULL, dy, x, w, N, H, 3 * H, o->dt, tm.s));
    layer_bwd += last;
    BENCH("matmul fwd o 4096->4096", MMF(H, H), MMB(H, H), cuda_matmul_forward(ctx, y, x, w, NULL, N, H, H, o->dt, tm.s));
    layer_fwd += last;
    BENCH("matmul bwd o", 2 * MMF(H, H), 2 * MMB(H, H),
          cuda_matmul_backward(ctx, dx, dw, NULL, dy, x, w, N, H, H, o->dt, tm.s));
    layer_bwd += last;
    BENCH("matmul fwd gate+up 4096->22016", MMF(H, 2 * I), MMB(H, 2 * I),
          cuda_matmul_forward(ctx, y, x, w, NULL, N, H, 2 * I, o->dt, tm.s));
    layer_fwd += last;
    BENCH("matmul bwd gate+up", 2 * MMF(H, 2 * I), 2 * MMB(H, 2 * I),
          cuda_matmul_backward(ctx, dx, dw, NULL, dy, x, w, N, H, 2 * I, o->dt, tm.s));
    layer_bwd += last;
    BENCH("matmul fwd down 11008->4096", MMF(I, H), MMB(I, H),
          cuda_matmul_forward(ctx, y, x, w, NULL, N, I, H, o->dt, tm.s));
    layer_fwd += last;
    BENCH("matmul bwd down", 2 * MMF(I, H), 2 * MMB(I, H),
          cuda_matmul_backward(ctx, dx, dw, NULL, dy, x, w, N, I, H, o->dt, tm.s));
    layer_bwd += last;
    BENCH("rmsnorm fwd (x2 per layer)", 4.0 * N * H, 2.0 * N * H * es,
          cuda_rmsnorm_forward(y, stat, x, w, N, H, 1e-6f, o->dt, tm.s));
    layer_fwd += 2 * last;
    BENCH("rmsnorm bwd (x2 per layer)", 8.0 * N * H, 4.0 * N * H * es,
          cuda_rmsnorm_backward(dx, dw, dy, x, w, stat, N, H, o->dt, tm.s));
    layer_bwd += 2 * last;
    BENCH("rope fwd q+k (x2)", 6.0 * N * H, 2.0 * N * H * es,
          cuda_rope_forward(q, q, NULL, B, T, NH, HS, 10000.0f, o->dt, tm.s));
    layer_fwd += 2 * last;
    BENCH("rope bwd (x2)", 6.0 * N * H, 3.0 * N * H * es,
          cuda_rope_backward(dq, q, NULL, B, T, NH, HS, 10000.0f, o->dt, tm.s));
    layer_bwd += 2 * last;
    /* causal attention: 4*B*NH*T*T*HS/2 forward FLOPs, 2.5x that backward (recompute + 4 matmuls) */
    double af = 4.0 * B * NH * (double)T * T * HS / 2;
    BENCH("attention fwd causal", af, 4.0 * N * H * es,
          cuda_attention_forward(att, lse, q, k, v, NULL, B, T, NH, NKV, HS, 1, o->dt, tm.s));
    layer_fwd += last;
    BENCH("attention bwd causal", 2.5 * af, 8.0 * N * H * es,
          cuda_attention_backward(ctx, dq, dk, dv, att, att, lse, q, k, v, NULL, B, T, NH, NKV, HS, 1, o->dt, tm.s));
    layer_bwd += last;
    BENCH("swiglu fwd", 4.0 * N * I, 3.0 * N * I * es, cuda_swiglu_forward(y, x, x, (long)N * I, o->dt, tm.s));
    layer_fwd += last;
    BENCH("swiglu bwd", 10.0 * N * I, 6.0 * N * I * es,
          cuda_swiglu_backward(dx, dx, dy, x, x, (long)N * I, o->dt, tm.s));
    layer_bwd += last;
    BENCH("residual (x2)", 1.0 * N * H, 3.0 * N * H * es, cuda_residual_forward(y, x, x, (long)N * H, o->dt, tm.s));
    layer_fwd += 2 * last;
    BENCH("crossentropy fwd 32000", 3.0 * N * V, 1.0 * N * V * es,
          cuda_crossentropy_forward(losses, logits, ids, N, V, NULL, NULL, o->dt, tm.s));
    head += last;
    BENCH("crossentropy bwd (in place)", 4.0 * N * V, 2.0 * N * V * es,
          cuda_crossentropy_backward(logits, logits, ids, N, V, 1.0f, o->dt, tm.s));
    head += last;
    BENCH("adamw (tokens x 33024 params)", 12.0 * adam_n, (4 * 4.0 + 2 * es) * adam_n,
          cuda_adamw_update(master, y, o->dt, dy, o->dt, m1, m2, adam_n, 1e-4, 0.9, 0.999, 1e-8, 0.0, 1, 1.0f, tm.s));

    {
        /* one step ~ L x (layer fwd + bwd) + lm head (fwd 1 + bwd 2 matmuls) + loss */
        double headmm = 3.0 * 2.0 * N * (double)H * V / (peak > 0 ? peak * 1e12 * 0.6 : 400e12);
        double step = L * (layer_fwd + layer_bwd) + head + headmm;
        double params = 6.74e9;
        double model_flops = 6.0 * params * N + 3.0 * L * 4.0 * B * NH * (double)T * T * HS / 2; /* 6ND + attention */
        printf("whole-layer estimate: layer fwd %.3f ms, bwd %.3f ms; step (%d layers + head + loss) %.1f ms for %d "
               "tokens = %.0f tokens/s\n",
               layer_fwd * 1e3, layer_bwd * 1e3, L, step * 1e3, N, N / step);
        printf("model FLOPs per step %.3g (6 x 6.74e9 x tokens + causal attention): %.1f TFLOP/s achieved\n",
               model_flops, model_flops / step / 1e12);
        if (peak > 0)
            printf("MFU %.1f%% of %.0f TFLOP/s bf16 dense peak (the lm-head matmul is estimated at 60%% of peak)\n",
                   100.0 * model_flops / step / (peak * 1e12), peak);
        else
            printf("MFU: unknown peak for '%s'; pass --peak-tflops X\n", prop.name);
    }
cleanup:
    cudaFree(x), cudaFree(y), cudaFree(dx), cudaFree(dy), cudaFree(w), cudaFree(dw), cudaFree(q), cudaFree(k);
    cudaFree(v), cudaFree(att), cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(stat), cudaFree(lse);
    cudaFree(logits), cudaFree(losses), cudaFree(ids), cudaFree(master), cudaFree(m1), cudaFree(m2);
    if (tm.a) cudaEventDestroy(tm.a);
    if (tm.b) cudaEventDestroy(tm.b);
    if (tm.s) cudaStreamDestroy(tm.s);
    cuda_ctx_free(&ctx);
    return rc;
}

int main(int argc, char **argv) {
    bench_opts_t o = {4096, 2048, 20, CUDA_DT_BF16, 0.0};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tokens") == 0 && i + 1 < argc) o.tokens = atoi(argv[++i]);
        else if (strcmp(argv[i], "--seq") == 0 && i + 1 < argc) o.seq = atoi(argv[++i]);
        else if (strcmp(argv[i], "--iters") == 0 && i + 1 < argc) o.iters = atoi(argv[++i]);
        else if (strcmp(argv[i], "--peak-tflops") == 0 && i + 1 < argc) o.peak_tflops = atof(argv[++i]);
        else if (strcmp(argv[i], "--f32") == 0) o.dt = CUDA_DT_F32;
        else {
            fprintf(stderr, "usage: %s [--tokens N] [--seq T] [--iters K] [--f32] [--peak-tflops X]\n", argv[0]);
            return 2;
        }
    }
    if (o.tokens <= 0 || o.seq <= 0 || o.iters <= 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    if (cuda_device_count() == 0) {
        printf("SKIP: no CUDA device\n");
        return 77;
    }
    return run(&o) == 0 ? 0 : 1;
}
