/* Times the CPU ops of kernels/cpu/ops.h at LLaMA-7B / CLIP-L layer shapes (one row per op, milliseconds, and
 * GFLOP/s for the matmul-bound ones). bench/bench_ops.py times the same ops in PyTorch for the ratio.
 * Run: build/bench/bench_ops [threads] [T]   (defaults: 2 threads, T = 512). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cpu/ops.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *buf(long n) {
    float *p = malloc(sizeof(float) * (size_t)n);
    if (!p) {
        fprintf(stderr, "bench_ops: out of memory\n");
        exit(1);
    }
    for (long i = 0; i < n; i++) p[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    return p;
}

#define TIME(name, flops, reps, stmt)                                                                           \
    do {                                                                                                         \
        stmt;                                                                                                    \
        double t0_ = now_s();                                                                                    \
        for (int r_ = 0; r_ < (reps); r_++) stmt;                                                                \
        double ms_ = (now_s() - t0_) * 1e3 / (reps);                                                             \
        if ((flops) > 0)                                                                                         \
            printf("%-40s %9.3f ms  %7.1f GFLOP/s\n", name, ms_, (double)(flops) / (ms_ * 1e-3) / 1e9);         \
        else                                                                                                     \
            printf("%-40s %9.3f ms\n", name, ms_);                                                               \
    } while (0)

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    int T = argc > 2 ? atoi(argv[2]) : 512;
    kernels_set_threads(threads);
    printf("threads %d, T %d\n", kernels_get_threads(), T);

    // the reference shape: out[512,512] = inp[512,2048] @ W[512,2048]^T
    {
        int N = 512, C = 2048, OC = 512;
        float *x = buf((long)N * C), *w = buf((long)OC * C), *o = buf((long)N * OC);
        TIME("matmul 512x512x2048", 2.0 * N * C * OC, 50, matmul_forward(o, x, w, NULL, N, C, OC));
        free(x), free(w), free(o);
    }
    // LLaMA-7B layer pieces at N = T rows
    int N = T, C = 4096, H = 11008, NH = 32, HS = 128, V = 32000;
    float *x = buf((long)N * H), *y = buf((long)N * H), *z = buf((long)N * H), *w = buf((long)H * C);
    float *st = buf(2L * N);
    TIME("matmul fwd [T,4096]x[11008,4096]^T", 2.0 * N * C * H, 2, matmul_forward(z, x, w, NULL, N, C, H));
    TIME("matmul bwd dinp+dweight", 4.0 * N * C * H, 1, matmul_backward(y, w, NULL, z, x, w, N, C, H));
    TIME("rmsnorm fwd [T,4096]", 0, 20, rmsnorm_forward(y, st, x, w, N, C, 1e-6f));
    TIME("rmsnorm fwd [T,4096] (again)", 0, 20, rmsnorm_forward(y, st, x, w, N, C, 1e-6f));
    TIME("rmsnorm bwd", 0, 20, rmsnorm_backward(z, w, y, x, w, st, N, C));
    TIME("layernorm fwd [T,4096]", 0, 20, layernorm_forward(y, st, st + N, x, w, w, N, C, 1e-5f));
    TIME("layernorm bwd", 0, 20, layernorm_backward(z, w, w + C, y, x, w, st, st + N, N, C));
    TIME("swiglu fwd [T,11008]", 0, 20, swiglu_forward(z, x, y, (long)N * H));
    TIME("swiglu bwd", 0, 20, swiglu_backward(z, w, y, x, y, (long)N * H));
    TIME("quick_gelu fwd [T,11008]", 0, 20, quick_gelu_forward(z, x, (long)N * H));
    TIME("gelu fwd [T,11008]", 0, 20, gelu_forward(z, x, (long)N * H));
    TIME("gelu bwd", 0, 20, gelu_backward(z, x, y, (long)N * H));
    TIME("rope fwd q [T,32,128]", 0, 20, rope_forward(z, x, NULL, 1, N, NH, HS, 10000.0f));
    TIME("rope bwd", 0, 20, rope_backward(z, x, NULL, 1, N, NH, HS, 10000.0f));
    // the mix of a training step: a matmul, then OpenMP loops, repeated (BLAS and OpenMP threads share the cores)
    TIME("mix: matmul [T,4096]x[4096,4096] + rmsnorm + swiglu", 2.0 * N * C * C, 5,
         (matmul_forward(z, x, w, NULL, N, C, C), rmsnorm_forward(y, st, z, w, N, C, 1e-6f),
          swiglu_forward(z, x, y, (long)N * C)));
    free(x), free(y), free(z), free(w), free(st);

    {
        long n = (long)N * NH * HS;
        float *q = buf(n), *k = buf(n), *v = buf(n), *o = buf(n), *dq = buf(n), *dk = buf(n), *dv = buf(n);
        float *probs = buf((long)NH * N * N);
        double f = 2.0 * 2.0 * NH * (double)N * N * HS / 2.0; // causal: half of QK^T and PV
        TIME("attention fwd causal (probs saved)", f, 2, attention_forward(o, probs, q, k, v, NULL, 1, N, NH, NH, HS, 1));
        TIME("attention bwd causal (probs saved)", 2 * f, 2,
             attention_backward(dq, dk, dv, o, probs, q, k, v, NULL, 1, N, NH, NH, HS, 1));
        TIME("attention fwd causal (no probs)", f, 2, attention_forward(o, NULL, q, k, v, NULL, 1, N, NH, NH, HS, 1));
        TIME("attention bwd causal (recompute)", 2.5 * f, 2,
             attention_backward(dq, dk, dv, o, NULL, q, k, v, NULL, 1, N, NH, NH, HS, 1));
        free(q), free(k), free(v), free(o), free(dq), free(dk), free(dv), free(probs);
    }
    {
        float *logits = buf((long)N * V);
        int32_t *t = malloc(sizeof(int32_t) * (size_t)N);
        for (int i = 0; i < N; i++) t[i] = (i * 7919) % V;
        double s;
        int64_t cnt;
        TIME("crossentropy fwd [T,32000]", 0, 5, crossentropy_forward(NULL, logits, t, N, V, &s, &cnt));
        TIME("crossentropy bwd (in place)", 0, 5, crossentropy_backward(logits, logits, t, N, V, 1.0f / N));
        free(logits), free(t);
    }
    {
        long n = 50L * 1000 * 1000;
        float *p = buf(n), *g = buf(n), *m = buf(n), *v2 = buf(n);
        memset(v2, 0, sizeof(float) * (size_t)n);
        TIME("adamw 50M params", 0, 3, adamw_update(p, g, m, v2, n, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1));
        TIME("global_norm_sq 50M", 0, 3, (void)global_norm_sq(g, n));
        free(p), free(g), free(m), free(v2);
    }
    return 0;
}
