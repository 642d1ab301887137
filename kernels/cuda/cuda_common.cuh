// Internal to kernels/cuda/*.cu: the context's layout, fp32/bf16 load-store helpers, dtype dispatch, warp and block
// reductions. Not a public header (ops_cuda.h is); tested through the ops that use it.
#ifndef LLAVA_CUDA_COMMON_CUH
#define LLAVA_CUDA_COMMON_CUH

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops_cuda.h"

struct cuda_ctx {
    cublasLtHandle_t lt;
    cublasHandle_t blas; // fallback when cuBLASLt has no algorithm for a shape
    void *workspace;  // cuBLASLt workspace
    size_t workspace_bytes;
    void *scratch;    // small temporaries (attention row sums, norm partials, scatter maps); grown on demand
    size_t scratch_bytes;
};

/** Returns a scratch pointer of at least `bytes` from ctx (grows it; growing synchronises the device).
 *  The scratch is shared by every op of the context: one op at a time per context. */
int cuda_ctx_scratch(cuda_ctx_t *ctx, size_t bytes, void **out);

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float ldf(const float *p) { return *p; }
__device__ __forceinline__ float ldf(const bf16 *p) { return __bfloat162float(*p); }
__device__ __forceinline__ void stf(float *p, float x) { *p = x; }
__device__ __forceinline__ void stf(bf16 *p, float x) { *p = __float2bfloat16_rn(x); }

__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
__device__ __forceinline__ float warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}
__device__ __forceinline__ double warp_sum_d(double x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// Block-wide reductions for blockDim.x a multiple of 32, <= 1024. Every thread gets the result. `sh` holds 32
// values; the function syncs before returning so `sh` can be reused.
__device__ __forceinline__ float block_sum(float x, float *sh) {
    int lane = threadIdx.x % 32, w = threadIdx.x / 32, nw = blockDim.x / 32;
    x = warp_sum(x);
    if (lane == 0) sh[w] = x;
    __syncthreads();
    float r = lane < nw ? sh[lane] : 0.0f;
    r = warp_sum(r);
    __syncthreads();
    return r;
}
__device__ __forceinline__ float block_max(float x, float *sh) {
    int lane = threadIdx.x % 32, w = threadIdx.x / 32, nw = blockDim.x / 32;
    x = warp_max(x);
    if (lane == 0) sh[w] = x;
    __syncthreads();
    float r = lane < nw ? sh[lane] : -INFINITY;
    r = warp_max(r);
    __syncthreads();
    return r;
}
__device__ __forceinline__ double block_sum_d(double x, double *sh) {
    int lane = threadIdx.x % 32, w = threadIdx.x / 32, nw = blockDim.x / 32;
    x = warp_sum_d(x);
    if (lane == 0) sh[w] = x;
    __syncthreads();
    double r = lane < nw ? sh[lane] : 0.0;
    r = warp_sum_d(r);
    __syncthreads();
    return r;
}

// Blocks for n elements at `threads` per block, capped so the grid fits (kernels use grid-stride loops).
static inline unsigned cuda_grid_1d(long n, int threads) {
    long b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    if (b > 65535L * 16) b = 65535L * 16;
    return (unsigned)b;
}

// Runs `body` with T bound to float or bf16 according to dt; other values set rc = LLAVA_EINVAL.
#define CUDA_DISPATCH(dt, ...)                                                                                   \
    do {                                                                                                         \
        if ((dt) == CUDA_DT_F32) {                                                                               \
            typedef float T;                                                                                     \
            __VA_ARGS__;                                                                                         \
        } else if ((dt) == CUDA_DT_BF16) {                                                                       \
            typedef bf16 T;                                                                                      \
            __VA_ARGS__;                                                                                         \
        } else {                                                                                                 \
            LOG_E("bad dtype %d", (int)(dt));                                                                    \
            rc = LLAVA_EINVAL;                                                                                   \
            goto cleanup;                                                                                        \
        }                                                                                                        \
    } while (0)

#endif
