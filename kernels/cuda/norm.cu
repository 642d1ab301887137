// LayerNorm and RMSNorm on the GPU: one warp per row for the forward and the input gradient, one thread per column
// (rows summed in order, no atomics) for the weight and bias gradients. Tested by tests/cuda/test_cuda_norm.c.
#include "kernels/cuda/cuda_common.cuh"

#define NORM_ROWS_PER_BLOCK 4 // warps per block, one row each

template <typename T>
__global__ void layernorm_fwd_kernel(T *out, float *mean, float *rstd, const T *inp, const T *w, const T *b, int N,
                                     int C, float eps) {
    int row = blockIdx.x * NORM_ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return; // whole warps leave together
    const T *x = inp + (long)row * C;
    float s = 0.0f;
    for (int c = lane; c < C; c += 32) s += ldf(x + c);
    float m = warp_sum(s) / C;
    float v = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float d = ldf(x + c) - m;
        v += d * d;
    }
    float r = 1.0f / sqrtf(warp_sum(v) / C + eps);
    T *o = out + (long)row * C;
    for (int c = lane; c < C; c += 32) {
        float y = (ldf(x + c) - m) * r * ldf(w + c);
        if (b) y += ldf(b + c);
        stf(o + c, y);
    }
    if (lane == 0) {
        if (mean) mean[row] = m;
        if (rstd) rstd[row] = r;
    }
}

template <typename T>
__global__ void layernorm_bwd_inp_kernel(T *dinp, const T *dout, const T *inp, const T *w, const float *mean,
                                         const float *rstd, int N, int C) {
    int row = blockIdx.x * NORM_ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const T *x = inp + (long)row * C, *dy = dout + (long)row * C;
    float m = mean[row], r = rstd[row];
    float s1 = 0.0f, s2 = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float dn = ldf(dy + c) * ldf(w + c);
        s1 += dn;
        s2 += dn * (ldf(x + c) - m) * r;
    }
    s1 = warp_sum(s1) / C;
    s2 = warp_sum(s2) / C;
    T *dx = dinp + (long)row * C;
    for (int c = lane; c < C; c += 32) {
        float n = (ldf(x + c) - m) * r;
        float dn = ldf(dy + c) * ldf(w + c);
        stf(dx + c, ldf(dx + c) + r * (dn - s1 - n * s2));
    }
}

// dweight[c] += sum_r dout[r,c] * norm[r,c]; dbias[c] += sum_r dout[r,c]. norm = (x - mean) * rstd, or x * rstd
// when mean is NULL (RMSNorm). Block 32x8 as the matmul bias gradient.
template <typename T>
__global__ void norm_bwd_weight_kernel(T *dw, T *db, const T *dout, const T *inp, const float *mean,
                                       const float *rstd, int N, int C) {
    __shared__ float pw[8][33], pb[8][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    float aw = 0.0f, ab = 0.0f;
    if (c < C) {
        for (int r = threadIdx.y; r < N; r += 8) {
            float dy = ldf(dout + (long)r * C + c);
            float n = (ldf(inp + (long)r * C + c) - (mean ? mean[r] : 0.0f)) * rstd[r];
            aw += dy * n;
            ab += dy;
        }
    }
    pw[threadIdx.y][threadIdx.x] = aw;
    pb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float sw = 0.0f, sb = 0.0f;
        for (int y = 0; y < 8; y++) {
            sw += pw[y][threadIdx.x];
            sb += pb[y][threadIdx.x];
        }
        if (dw) stf(dw + c, ldf(dw + c) + sw);
        if (db) stf(db + c, ldf(db + c) + sb);
    }
}

template <typename T>
__global__ void rmsnorm_fwd_kernel(T *out, float *rstd, const T *inp, const T *w, int N, int C, float eps) {
    int row = blockIdx.x * NORM_ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const T *x = inp + (long)row * C;
    float s = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float v = ldf(x + c);
        s += v * v;
    }
    float r = 1.0f / sqrtf(warp_sum(s) / C + eps);
    T *o = out + (long)row * C;
    for (int c = lane; c < C; c += 32) stf(o + c, ldf(x + c) * r * ldf(w + c));
    if (lane == 0 && rstd) rstd[row] = r;
}

template <typename T>
__global__ void rmsnorm_bwd_inp_kernel(T *dinp, const T *dout, const T *inp, const T *w, const float *rstd, int N,
                                       int C) {
    int row = blockIdx.x * NORM_ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const T *x = inp + (long)row * C, *dy = dout + (long)row * C;
    float r = rstd[row];
    float s = 0.0f;
    for (int c = lane; c < C; c += 32) s += ldf(dy + c) * ldf(w + c) * ldf(x + c) * r;
    s = warp_sum(s) / C;
    T *dx = dinp + (long)row * C;
    for (int c = lane; c < C; c += 32) {
        float n = ldf(x + c) * r;
        float dn = ldf(dy + c) * ldf(w + c);
        stf(dx + c, ldf(dx + c) + r * (dn - n * s));
    }
}

static unsigned norm_blocks(int N) { return (unsigned)((N + NORM_ROWS_PER_BLOCK - 1) / NORM_ROWS_PER_BLOCK); }

extern "C" int cuda_layernorm_forward(void *out, float *mean, float *rstd, const void *inp, const void *weight,
                                      const void *bias, int N, int C, float eps, cuda_dtype_t dt, cudaStream_t s) {
    int rc = 0;
    CHECK_GOTO(N >= 0 && C > 0, LLAVA_EINVAL, "layernorm_forward: N=%d C=%d", N, C);
    if (N == 0) goto cleanup;
    CUDA_DISPATCH(dt, layernorm_fwd_kernel<T><<<norm_blocks(N), 32 * NORM_ROWS_PER_BLOCK, 0, s>>>(
                          (T *)out, mean, rstd, (const T *)inp, (const T *)weight, (const T *)bias, N, C, eps);
                  CUDA_LAUNCH_CHECK_GOTO());
cleanup:
    return rc;
}

extern "C" int cuda_layernorm_backward(void *dinp, void *dweight, void *dbias, const void *dout, const void *inp,
                                       const void *weight, const float *mean, const float *rstd, int N, int C,
                                       cuda_dtype_t dt, cudaStream_t s) {
    int rc = 0;
    dim3 wblock(32, 8);
    CHECK_GOTO(N >= 0 && C > 0, LLAVA_EINVAL, "layernorm_backward: N=%d C=%d", N, C);
    if (N == 0) goto cleanup;
    if (dinp) {
        CUDA_DISPATCH(dt, layernorm_bwd_inp_kernel<T><<<norm_blocks(N), 32 * NORM_ROWS_PER_BLOCK, 0, s>>>(
                              (T *)dinp, (const T *)dout, (const T *)inp, (const T *)weight, mean, rstd, N, C);
                      CUDA_LAUNCH_CHECK_GOTO());
    }
    if (dweight || dbias) {
        CUDA_DISPATCH(dt, norm_bwd_weight_kernel<T><<<(C + 31) / 32, wblock, 0, s>>>(
                              (T *)dweight, (T *)dbias, (const T *)dout, (const T *)inp, mean, rstd, N, C);
                      CUDA_LAUNCH_CHECK_GOTO());
    }
cleanup:
    return rc;
}

extern "C" int cuda_rmsnorm_forward(void *out, float *rstd, const void *inp, const void *weight, int N, int C,
                                    float eps, cuda_dtype_t dt, cudaStream_t s) {
    int rc = 0;
    CHECK_GOTO(N >= 0 && C > 0, LLAVA_EINVAL, "rmsnorm_forward: N=%d C=%d", N, C);
    if (N == 0) goto cleanup;
    CUDA_DISPATCH(dt, rmsnorm_fwd_kernel<T><<<norm_blocks(N), 32 * NORM_ROWS_PER_BLOCK, 0, s>>>(
                          (T *)out, rstd, (const T *)inp, (const T *)weight, N, C, eps);
                  CUDA_LAUNCH_CHECK_GOTO());
cleanup:
    return rc;
}

extern "C" int cuda_rmsnorm_backward(void *dinp, void *dweight, const void *dout, const void *inp,
                                     const void *weight, const float *rstd, int N, int C, cuda_dtype_t dt,
                                     cudaStream_t s) {
    int rc = 0;
    dim3 wblock(32, 8);
    CHECK_GOTO(N >= 0 && C > 0, LLAVA_EINVAL, "rmsnorm_backward: N=%d C=%d", N, C);
    if (N == 0) goto cleanup;
    if (dinp) {
        CUDA_DISPATCH(dt, rmsnorm_bwd_inp_kernel<T><<<norm_blocks(N), 32 * NORM_ROWS_PER_BLOCK, 0, s>>>(
                              (T *)dinp, (const T *)dout, (const T *)inp, (const T *)weight, rstd, N, C);
                      CUDA_LAUNCH_CHECK_GOTO());
    }
    if (dweight) {
        CUDA_DISPATCH(dt, norm_bwd_weight_kernel<T><<<(C + 31) / 32, wblock, 0, s>>>(
                              (T *)dweight, (T *)NULL, (const T *)dout, (const T *)inp, (const float *)NULL, rstd,
                              N, C);
                      CUDA_LAUNCH_CHECK_GOTO());
    }
cleanup:
    return rc;
}
