// Element-wise ops (activations, residual adds, scaling), embeddings, the image-feature scatter and patch im2col
// on the GPU. Tested by tests/cuda/test_cuda_elementwise.c and tests/cuda/test_cuda_embed.c.
#include <math.h>

#include "kernels/cuda/cuda_common.cuh"

enum {
    EW_QGELU_F, EW_QGELU_B, EW_GELU_F, EW_GELU_B, EW_SWIGLU_F, EW_SWIGLU_B, EW_RESIDUAL, EW_ADD, EW_SCALE
};

// One element-wise kernel for every op: a is the main input, b the second (dout, up, ...), o the output.
// For the backward ops o is accumulated; EW_SWIGLU_B writes o (dgate) and o2 (dup), either may be NULL.
template <typename D, int OP>
__global__ void ew_kernel(D *o, D *o2, const D *a, const D *b, const D *c, float scale, long n) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        if (OP == EW_QGELU_F) {
            float x = ldf(a + i);
            stf(o + i, x * (1.0f / (1.0f + expf(-1.702f * x))));
        } else if (OP == EW_QGELU_B) { // a = inp, b = dout
            float x = ldf(a + i);
            float s = 1.0f / (1.0f + expf(-1.702f * x));
            stf(o + i, ldf(o + i) + ldf(b + i) * (s + x * 1.702f * s * (1.0f - s)));
        } else if (OP == EW_GELU_F) {
            float x = ldf(a + i);
            stf(o + i, 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)));
        } else if (OP == EW_GELU_B) {
            float x = ldf(a + i);
            float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
            float pdf = 0.3989422804014327f * expf(-0.5f * x * x);
            stf(o + i, ldf(o + i) + ldf(b + i) * (cdf + x * pdf));
        } else if (OP == EW_SWIGLU_F) { // a = gate, b = up
            float g = ldf(a + i);
            stf(o + i, g / (1.0f + expf(-g)) * ldf(b + i));
        } else if (OP == EW_SWIGLU_B) { // a = gate, b = up, c = dout
            float g = ldf(a + i), u = ldf(b + i), dy = ldf(c + i);
            float s = 1.0f / (1.0f + expf(-g));
            if (o) stf(o + i, ldf(o + i) + dy * u * (s * (1.0f + g * (1.0f - s))));
            if (o2) stf(o2 + i, ldf(o2 + i) + dy * g * s);
        } else if (OP == EW_RESIDUAL) {
            stf(o + i, ldf(a + i) + ldf(b + i));
        } else if (OP == EW_ADD) {
            stf(o + i, ldf(o + i) + ldf(a + i));
        } else if (OP == EW_SCALE) {
            stf(o + i, ldf(o + i) * scale);
        }
    }
}

template <int OP>
static int ew_launch(void *o, void *o2, const void *a, const void *b, const void *c, float scale, long n,
                     cuda_dtype_t dt, cudaStream_t s, const char *what) {
    int rc = 0;
    CHECK_GOTO(n >= 0, LLAVA_EINVAL, "%s: n = %ld", what, n);
    if (n == 0) goto cleanup;
    CUDA_DISPATCH(dt, ew_kernel<T, OP><<<cuda_grid_1d(n, 256), 256, 0, s>>>((T *)o, (T *)o2, (const T *)a,
                                                                             (const T *)b, (const T *)c, scale, n);
                  CUDA_LAUNCH_CHECK_GOTO());
cleanup:
    return rc;
}

extern "C" int cuda_quick_gelu_forward(void *out, const void *inp, long n, cuda_dtype_t dt, cudaStream_t s) {
    return ew_launch<EW_QGELU_F>(out, NULL, inp, NULL, NULL, 0.0f, n, dt, s, "quick_gelu_forward");
}
extern "C" int cuda_quick_gelu_backward(void *dinp, const void *inp, const void *dout, long n, cuda_dtype_t dt,
                                        cudaStream_t s) {
    return ew_launch<EW_QGELU_B>(dinp, NULL, inp, dout, NULL, 0.0f, n, dt, s, "quick_gelu_backward");
}
extern "C" int cuda_gelu_forward(void *out, const void *inp, long n, cuda_dtype_t dt, cudaStream_t s) {
    return ew_launch<EW_GELU_F>(out, NULL, inp, NULL, NULL, 0.0f, n, dt, s, "gelu_forward");
}
extern "C" int cuda_gelu_backward(void *dinp, const void *inp, const void *dout, long n, cuda_dtype_t dt,
                                  cudaStream_t s) {
    return ew_launch<EW_GELU_B>(dinp, NULL, inp, dout, NULL, 0.0f, n, dt, s, "gelu_backward");
}
extern "C" int cuda_swiglu_forward(void *out, const void *gate, const void *up, long n, cuda_dtype_t dt,
                                   cudaStream_t s) {
    return ew_launch<EW_SWIGLU_F>(out, NULL, gate, up, NULL, 0.0f, n, dt, s, "swiglu_forward");
}
extern "C" int cuda_swiglu_backward(void *dgate, void *dup, const void *dout, const void *gate, const void *up,
                                    long n, cuda_dtype_t dt, cudaStream_t s) {
    if (!dgate && !dup) return 0;
    return ew_launch<EW_SWIGLU_B>(dgate, dup, gate, up, dout, 0.0f, n, dt, s, "swiglu_backward");
}
extern "C" int cuda_residual_forward(void *out, const void *a, const void *b, long n, cuda_dtype_t dt,
                                     cudaStream_t s) {
    return ew_launch<EW_RESIDUAL>(out, NULL, a, b, NULL, 0.0f, n, dt, s, "residual_forward");
}
extern "C" int cuda_add_inplace(void *y, const void *x, long n, cuda_dtype_t dt, cudaStream_t s) {
    return ew_launch<EW_ADD>(y, NULL, x, NULL, NULL, 0.0f, n, dt, s, "add_inplace");
}
extern "C" int cuda_scale_inplace(void *x, float scale, long n, cuda_dtype_t dt, cudaStream_t s) {
    return ew_launch<EW_SCALE>(x, NULL, NULL, NULL, NULL, scale, n, dt, s, "scale_inplace");
}

template <typename D>
__global__ void add_rows_kernel(D *out, const D *row, int N, int C) {
    long n = (long)N * C;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        stf(out + i, ldf(out + i) + ldf(row + i % C));
}

extern "C" int cuda_add_rows(void *out, const void *row, int N, int C, cuda_dtype_t dt, cudaStream_t s) {
    int rc = 0;
    long n = (long)N * C;
    CHECK_GOTO(N >= 0 && C > 0, LLAVA_EINVAL, "add_rows: N=%d C=%d", N, C);
    if (n == 0) goto cleanup;
    CUDA_DISPATCH(dt, add_rows_kernel<T><<<cuda_grid_1d(n, 256), 256, 0, s>>>((T *)out, (const T *)row, N, C);
                  CUDA_LAUNCH_CHECK_GOTO());
cleanup:
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Embeddings                                                                                                 */

template <typename D>
__global__ void embedding_fwd_kernel(D *out, const int32_t *ids, const D *table, int N, int C) {
    long n = (long)N * C;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        long r = i / C;
        int c = (int)(i % C);
        stf(out + i, ldf(table + (long)ids[r] * C + c));
    }
}

// Links the rows that share an id: next[r] = the next row with ids[r] (-1 at the end of a chain) and first[r] = 1
// when r is the first row of its id (0 for negative ids). One thread per row scans the others: O(N^2) compares,
// no sort, no atomics (N = 4096 tokens: 16M integer compares).
__global__ void embedding_link_kernel(int32_t *next, int32_t *first, const int32_t *ids, int N) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= N) return;
    int id = ids[r], nx = -1, fi = id >= 0;
    if (id >= 0) {
        for (int q = r + 1; q < N; q++)
            if (ids[q] == id) {
                nx = q;
                break;
            }
        for (int q = 0; q < r; q++)
            if (ids[q] == id) {
                fi = 0;
                break;
            }
    }
    next[r] = nx;
    first[r] = fi;
}

// Thread c owns column c of dtable. For each id's first row it sums the whole chain of rows with that id in fp32
// (in row order) and adds the sum to the table once: deterministic, one rounding per table element, no atomics.
// Coalesced: a warp reads 32 neighbouring columns of a row.
template <typename D>
__global__ void embedding_bwd_kernel(D *dtable, const D *dout, const int32_t *ids, const int32_t *next,
                                     const int32_t *first, int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    for (int r = 0; r < N; r++) {
        if (!first[r]) continue;
        float acc = 0.0f;
        for (int q = r; q >= 0; q = next[q]) acc += ldf(dout + (long)q * C + c);
        D *p = dtable + (long)ids[r] * C + c;
        stf(p, ldf(p) + acc);
    }
}

extern "C" int cuda_embedding_forward(void *out, const int32_t *ids, const void *table, int N, int C,
                                      cuda_dtype_t dt, cudaStream_t s) {
    int rc = 0;
    long n = (long)N * C;
    CHECK_GOTO(N >= 0 && C > 0, LLAVA_EINVAL, "embedding_forward: N=%d C=%d", N, C);
    if (n == 0) goto cleanup;
    CUDA_DISPATCH(dt, embedding_fwd_kernel<T><<<cuda_grid_1d(n, 256), 256, 0, s>>>((T *)out, ids,
                                                                                     (const T *)table, N, C);
                  CUDA_LAUNCH_CHECK_GOTO());
cleanup:
    return rc;
}

extern "C" int cuda_embedding_backward(cuda_ctx_t *ctx, void *dtable, const void *dout, const int32_t *ids, int N,
                                       int C, cuda_dtype_t dt, cudaStream_t s) {
    int rc = 0;
    int32_t *next = NULL;
    CHECK_GOTO(N >= 0 && C > 0, LLAVA_EINVAL, "embedding_backward: N=%d C=%d", N, C);
    if (N == 0) goto cleanup;
    RC_CHECK_GOTO(cuda_ctx_scratch(ctx, (size_t)2 * N * sizeof(int32_t), (void **)&next));
    embedding_link_kernel<<<(unsigned)((N + 255) / 256), 256, 0, s>>>(next, next + N, ids, N);
    CUDA_LAUNCH_CHECK_GOTO();
    CUDA_DISPATCH(dt, embedding_bwd_kernel<T><<<(unsigned)((C + 127) / 128), 128, 0, s>>>(
                          (T *)dtable, (const T *)dout, ids, next, next + N, N, C);
                  CUDA_LAUNCH_CHECK_GOTO());
cleanup:
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Image features                                                                                             */

#define SCAN_THREADS 1024

// One block: map[i] = rank of position i among the image positions (-1 elsewhere), *count = their number.
__global__ void image_map_kernel(int32_t *map, int32_t *count, const int32_t *ids, int32_t image_token_id, int N) {
    __shared__ int warp_tot[SCAN_THREADS / 32];
    __shared__ int base;
    int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    if (threadIdx.x == 0) base = 0;
    __syncthreads();
    for (int c0 = 0; c0 < N; c0 += SCAN_THREADS) {
        int i = c0 + threadIdx.x;
        int f = i < N && ids[i] == image_token_id;
        int x = f; // inclusive scan within the warp
        for (int o = 1; o < 32; o <<= 1) {
            int y = __shfl_up_sync(0xffffffffu, x, o);
            if (lane >= o) x += y;
        }
        if (lane == 31) warp_tot[w] = x;
        __syncthreads();
        int before = 0;
        for (int k = 0; k < w; k++) before += warp_tot[k];
        if (i < N) map[i] = f ? base + before + x - 1 : -1;
        __syncthreads(); // everyone has read base and warp_tot
        if (threadIdx.x == blockDim.x - 1) base += before + x;
        __syncthreads();
    }
    if (threadIdx.x == 0) *count = base;
}

// backward == 0: embeds[i,:] = feats[map[i],:]; backward == 1: dfeats[map[i],:] = dembeds[i,:].
template <typename D>
__global__ void image_copy_kernel(D *dst, const D *src, const int32_t *map, int N, int C, int backward) {
    long n = (long)N * C;
    for (long e = (long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (long)gridDim.x * blockDim.x) {
        long i = e / C;
        int c = (int)(e % C);
        int k = map[i];
        if (k < 0) continue;
        if (!backward) dst[i * C + c] = src[(long)k * C + c];
        else dst[(long)k * C + c] = src[i * C + c];
    }
}

static int image_scatter(cuda_ctx_t *ctx, void *dst, const void *src, const int32_t *ids, int32_t image_token_id,
                         int N, int C, int M, int backward, cuda_dtype_t dt, cudaStream_t s) {
    int rc = 0;
    int32_t *map = NULL, count = 0;
    long n = (long)N * C;
    CHECK_GOTO(N >= 0 && C > 0 && M >= 0, LLAVA_EINVAL, "image_scatter: N=%d C=%d M=%d", N, C, M);
    if (N == 0) {
        CHECK_GOTO(M == 0, LLAVA_ESHAPE, "image_scatter: 0 image tokens but %d feature rows", M);
        goto cleanup;
    }
    RC_CHECK_GOTO(cuda_ctx_scratch(ctx, ((size_t)N + 1) * sizeof(int32_t), (void **)&map));
    image_map_kernel<<<1, SCAN_THREADS, 0, s>>>(map, map + N, ids, image_token_id, N);
    CUDA_LAUNCH_CHECK_GOTO();
    CUDA_CHECK_GOTO(cudaMemcpyAsync(&count, map + N, sizeof count, cudaMemcpyDeviceToHost, s));
    CUDA_CHECK_GOTO(cudaStreamSynchronize(s));
    CHECK_GOTO(count == M, LLAVA_ESHAPE, "image_scatter_%s: %d image tokens but %d feature rows",
               backward ? "backward" : "forward", count, M);
    CUDA_DISPATCH(dt, image_copy_kernel<T><<<cuda_grid_1d(n, 256), 256, 0, s>>>((T *)dst, (const T *)src, map, N,
                                                                                  C, backward);
                  CUDA_LAUNCH_CHECK_GOTO());
cleanup:
    return rc;
}

extern "C" int cuda_image_scatter_forward(cuda_ctx_t *ctx, void *embeds, const int32_t *ids, int32_t image_token_id,
                                          const void *feats, int N, int C, int M, cuda_dtype_t dt, cudaStream_t s) {
    return image_scatter(ctx, embeds, feats, ids, image_token_id, N, C, M, 0, dt, s);
}

extern "C" int cuda_image_scatter_backward(cuda_ctx_t *ctx, void *dfeats, const void *dembeds, const int32_t *ids,
                                           int32_t image_token_id, int N, int C, int M, cuda_dtype_t dt,
                                           cudaStream_t s) {
    return image_scatter(ctx, dfeats, dembeds, ids, image_token_id, N, C, M, 1, dt, s);
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Patches                                                                                                    */

template <typename D>
__global__ void im2col_kernel(D *out, const D *img, int B, int S, int P) {
    int G = S / P, NP = G * G, K = 3 * P * P;
    long n = (long)B * NP * K;
    for (long e = (long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (long)gridDim.x * blockDim.x) {
        int col = (int)(e % K);
        long rowp = e / K;
        int b = (int)(rowp / NP), p = (int)(rowp % NP);
        int py = p / G, px = p % G;
        int c = col / (P * P), ky = (col / P) % P, kx = col % P;
        out[e] = img[(((long)b * 3 + c) * S + (long)py * P + ky) * S + (long)px * P + kx];
    }
}

extern "C" int cuda_patch_im2col(void *out, const void *img, int B, int S, int P, cuda_dtype_t dt, cudaStream_t s) {
    int rc = 0;
    long n = 0;
    CHECK_GOTO(B >= 0 && P > 0 && S >= P, LLAVA_EINVAL, "patch_im2col: B=%d S=%d P=%d", B, S, P);
    n = (long)B * (S / P) * (S / P) * 3 * P * P;
    if (n == 0) goto cleanup;
    CUDA_DISPATCH(dt, im2col_kernel<T><<<cuda_grid_1d(n, 256), 256, 0, s>>>((T *)out, (const T *)img, B, S, P);
                  CUDA_LAUNCH_CHECK_GOTO());
cleanup:
    return rc;
}
