/* Helpers for the GPU op tests: skip without a device, device buffers with guard bytes (sentinels checked after
 * every call), fp32 <-> bf16 upload/download, and the parity check (NMSE + atol/rtol per dtype) against the CPU
 * ops of kernels/cpu/ops.h. Included by tests/cuda/test_cuda_*.c. */
#ifndef LLAVA_TESTS_CUDA_TEST_H
#define LLAVA_TESTS_CUDA_TEST_H

#include <stdint.h>
#include <stdlib.h>

#include <cuda_runtime.h>

#include "common/err.h"
#include "common/tensor.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops_cuda.h"
#include "tests/test.h"

#define GUARD_BYTES 512
#define GUARD_BYTE 0xA5

#define CUDA_TEST_SKIP_IF_NO_DEVICE()                                                                           \
    do {                                                                                                       \
        if (cuda_device_count() == 0) {                                                                        \
            printf("SKIP: no CUDA device\n");                                                                  \
            return 77;                                                                                         \
        }                                                                                                      \
    } while (0)

/* A device buffer with GUARD_BYTES of sentinel bytes on each side of its payload. */
typedef struct {
    unsigned char *base;
    void *p; /* payload */
    size_t bytes;
} gbuf_t;

static inline void *gbuf_alloc(gbuf_t *b, size_t bytes) {
    b->bytes = bytes;
    b->base = NULL;
    b->p = NULL;
    if (cudaMalloc((void **)&b->base, bytes + 2 * GUARD_BYTES) != cudaSuccess) {
        fprintf(stderr, "cudaMalloc(%zu) failed\n", bytes);
        exit(1);
    }
    cudaMemset(b->base, GUARD_BYTE, bytes + 2 * GUARD_BYTES);
    b->p = b->base + GUARD_BYTES;
    return b->p;
}

/* 1 when both guards still hold the sentinel. */
static inline int gbuf_guards_ok(const gbuf_t *b) {
    unsigned char g[2 * GUARD_BYTES];
    cudaDeviceSynchronize();
    cudaMemcpy(g, b->base, GUARD_BYTES, cudaMemcpyDeviceToHost);
    cudaMemcpy(g + GUARD_BYTES, b->base + GUARD_BYTES + b->bytes, GUARD_BYTES, cudaMemcpyDeviceToHost);
    for (int i = 0; i < 2 * GUARD_BYTES; i++)
        if (g[i] != GUARD_BYTE) return 0;
    return 1;
}

static inline void gbuf_free(gbuf_t *b) {
    if (b->base) cudaFree(b->base);
    b->base = NULL;
    b->p = NULL;
}

#define CHECK_GUARDS(b) CHECKF(gbuf_guards_ok(&(b)), "guard bytes around %s overwritten", #b)

/* Rounds x to what dtype dt can hold (so CPU references see the GPU's inputs exactly). */
static inline void round_to(float *x, long n, cuda_dtype_t dt) {
    if (dt != CUDA_DT_BF16) return;
    for (long i = 0; i < n; i++) x[i] = bf16_to_f32(f32_to_bf16(x[i]));
}

/* Copies host fp32 h[n] into a new guarded device buffer of dtype dt. */
static inline void *gbuf_up(gbuf_t *b, const float *h, long n, cuda_dtype_t dt) {
    size_t es = cuda_dtype_size(dt);
    void *p = gbuf_alloc(b, (size_t)(n > 0 ? n : 0) * es);
    if (n <= 0) return p;
    if (dt == CUDA_DT_F32) {
        cudaMemcpy(p, h, (size_t)n * 4, cudaMemcpyHostToDevice);
    } else {
        uint16_t *t = (uint16_t *)malloc((size_t)n * 2);
        for (long i = 0; i < n; i++) t[i] = f32_to_bf16(h[i]);
        cudaMemcpy(p, t, (size_t)n * 2, cudaMemcpyHostToDevice);
        free(t);
    }
    return p;
}

static inline void *gbuf_up_i32(gbuf_t *b, const int32_t *h, long n) {
    void *p = gbuf_alloc(b, (size_t)n * 4);
    cudaMemcpy(p, h, (size_t)n * 4, cudaMemcpyHostToDevice);
    return p;
}

/* Copies n values of dtype dt from device p to host fp32 h. */
static inline void dev_down(float *h, const void *p, long n, cuda_dtype_t dt) {
    cudaDeviceSynchronize();
    if (n <= 0) return;
    if (dt == CUDA_DT_F32) {
        cudaMemcpy(h, p, (size_t)n * 4, cudaMemcpyDeviceToHost);
    } else {
        uint16_t *t = (uint16_t *)malloc((size_t)n * 2);
        cudaMemcpy(t, p, (size_t)n * 2, cudaMemcpyDeviceToHost);
        for (long i = 0; i < n; i++) h[i] = bf16_to_f32(t[i]);
        free(t);
    }
}

/* Deterministic pseudo-random values in [-scale, scale). */
static inline void fill_rand(float *x, long n, uint64_t *state, float scale) {
    for (long i = 0; i < n; i++) {
        *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = scale * ((float)((*state >> 40) & 0xFFFFFF) / 8388608.0f - 1.0f);
    }
}

static inline float *hmalloc(long n) {
    float *p = (float *)calloc((size_t)(n > 0 ? n : 1), sizeof(float));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

/* Parity: NMSE = sum (got-want)^2 / sum want^2 and every |got-want| <= atol*max(1,max|want|) + rtol*|want|.
 * fp32: NMSE <= 1e-10, atol 1e-5, rtol 1e-4. bf16: NMSE <= 1e-4, atol 1e-2, rtol 1e-2 (one bf16 rounding of the
 * output is 2^-9 relative; the GPU computes in fp32 from the same rounded inputs the CPU sees). `loose` multiplies
 * the tolerances (for outputs that are long sums, e.g. weight gradients over many rows). */
static inline int parity(const char *what, const float *got, const float *want, long n, cuda_dtype_t dt,
                         double loose) {
    double num = 0, den = 0, maxref = 1.0;
    double atol = (dt == CUDA_DT_F32 ? 1e-5 : 1e-2) * loose, rtol = (dt == CUDA_DT_F32 ? 1e-4 : 1e-2) * loose;
    double nmse_max = (dt == CUDA_DT_F32 ? 1e-10 : 1e-4) * loose * loose;
    for (long i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        num += d * d;
        den += (double)want[i] * want[i];
        if (fabs(want[i]) > maxref) maxref = fabs(want[i]);
    }
    double nmse = den > 0 ? num / den : num;
    int ok = nmse <= nmse_max && nmse == nmse;
    for (long i = 0; i < n && ok; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (!(d <= atol * maxref + rtol * fabs(want[i]))) {
            fprintf(stderr, "  %s [%s]: element %ld: got %.8g want %.8g\n", what, dt == CUDA_DT_F32 ? "f32" : "bf16",
                    i, got[i], want[i]);
            ok = 0;
        }
    }
    printf("  %-44s %-4s n=%-8ld nmse=%.3e %s\n", what, dt == CUDA_DT_F32 ? "f32" : "bf16", n, nmse,
           ok ? "ok" : "FAIL");
    return ok;
}

#define CHECK_PARITY(what, got, want, n, dt, loose) CHECK(parity((what), (got), (want), (n), (dt), (loose)))

#endif
