// Fused softmax + cross-entropy (forward and backward), AdamW on fp32 master weights with a bf16 copy-out, and the
// deterministic two-pass squared gradient norm. Tested by tests/cuda/test_cuda_loss.c and test_cuda_adamw.c.
#include <math.h>

#include "kernels/cuda/cuda_common.cuh"

#define CE_THREADS 512

// One block per row: losses[r] = logsumexp(x) - x[target] (0 when ignored).
template <typename D>
__global__ void ce_fwd_kernel(float *losses, const D *logits, const int32_t *targets, int V) {
    __shared__ double shd[32];
    __shared__ float shf[32];
    int r = blockIdx.x, tgt = targets[r];
    const D *x = logits + (long)r * V;
    if (tgt < 0 || tgt >= V) { // ignored (-100); out-of-range targets are the caller's bug, treated the same
        if (threadIdx.x == 0) losses[r] = 0.0f;
        return;
    }
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, ldf(x + j));
    mx = block_max(mx, shf);
    double sum = 0.0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) sum += (double)expf(ldf(x + j) - mx);
    sum = block_sum_d(sum, shd);
    if (threadIdx.x == 0) losses[r] = (float)((double)mx + log(sum) - (double)ldf(x + tgt));
}

// One block: the sum of the counted rows' losses and their count, in row order per thread (deterministic).
__global__ void ce_reduce_kernel(double *loss_sum, int64_t *n_targets, const float *losses, const int32_t *targets,
                                 int N, int V) {
    __shared__ double sh[32];
    double s = 0.0, c = 0.0;
    for (int r = threadIdx.x; r < N; r += blockDim.x) {
        if (targets[r] < 0 || targets[r] >= V) continue;
        s += losses[r];
        c += 1.0;
    }
    s = block_sum_d(s, sh);
    c = block_sum_d(c, sh);
    if (threadIdx.x == 0) {
        if (loss_sum) *loss_sum = s;
        if (n_targets) *n_targets = (int64_t)c;
    }
}

template <typename D>
__global__ void ce_bwd_kernel(D *dlogits, const D *logits, const int32_t *targets, int V, float scale) {
    __shared__ double shd[32];
    __shared__ float shf[32];
    int r = blockIdx.x, tgt = targets[r];
    const D *x = logits + (long)r * V;
    D *d = dlogits + (long)r * V;
    if (tgt < 0 || tgt >= V) {
        for (int j = threadIdx.x; j < V; j += blockDim.x) stf(d + j, 0.0f);
        return;
    }
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, ldf(x + j));
    mx = block_max(mx, shf);
    double sum = 0.0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) sum += (double)expf(ldf(x + j) - mx);
    sum = block_sum_d(sum, shd); // synchronises: every read of x is done before the writes below (in place)
    float k = (float)((double)scale / sum);
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float g = expf(ldf(x + j) - mx) * k;
        if (j == tgt) g -= scale; // the same thread reads and writes element j
        stf(d + j, g);
    }
}

extern "C" int cuda_crossentropy_forward(float *losses, const void *logits, const int32_t *targets, int N, int V,
                                         double *loss_sum, int64_t *n_targets, cuda_dtype_t dt, cudaStream_t s) {
    int rc = 0;
    CHECK_GOTO(N >= 0 && V > 0 && losses, LLAVA_EINVAL, "crossentropy_forward: N=%d V=%d losses=%p", N, V,
               (void *)losses);
    if (N > 0) {
        CUDA_DISPATCH(dt, ce_fwd_kernel<T><<<(unsigned)N, CE_THREADS, 0, s>>>(losses, (const T *)logits, targets, V);
                      CUDA_LAUNCH_CHECK_GOTO());
    }
    if (loss_sum || n_targets) {
        ce_reduce_kernel<<<1, 1024, 0, s>>>(loss_sum, n_targets, losses, targets, N, V);
        CUDA_LAUNCH_CHECK_GOTO();
    }
cleanup:
    return rc;
}

extern "C" int cuda_crossentropy_backward(void *dlogits, const void *logits, const int32_t *targets, int N, int V,
                                          float scale, cuda_dtype_t dt, cudaStream_t s) {
    int rc = 0;
    CHECK_GOTO(N >= 0 && V > 0, LLAVA_EINVAL, "crossentropy_backward: N=%d V=%d", N, V);
    if (N == 0) goto cleanup;
    CUDA_DISPATCH(dt, ce_bwd_kernel<T><<<(unsigned)N, CE_THREADS, 0, s>>>((T *)dlogits, (const T *)logits, targets, V,
                                                                          scale);
                  CUDA_LAUNCH_CHECK_GOTO());
cleanup:
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* AdamW                                                                                                      */

typedef struct {
    float decay, w1, b2, w2, step_size, bc2_sqrt, eps, grad_scale;
    int small;
} adamw_consts_t;

// Same float expressions, in the same order, as adamw_update in kernels/cpu/ops.c.
template <typename G, typename O>
__global__ void adamw_kernel(float *params, O *pout, const G *grads, float *m, float *v, long n, adamw_consts_t k) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float g = ldf(grads + i);
        if (k.grad_scale != 1.0f) g *= k.grad_scale;
        float p = params[i] * k.decay;
        float mi = k.small ? m[i] + k.w1 * (g - m[i]) : g - (g - m[i]) * (1.0f - k.w1);
        float vi = v[i] * k.b2;
        vi = vi + k.w2 * g * g;
        float denom = sqrtf(vi) / k.bc2_sqrt + k.eps;
        p = p + k.step_size * mi / denom;
        params[i] = p;
        m[i] = mi;
        v[i] = vi;
        if (pout) stf(pout + i, p);
    }
}

extern "C" int cuda_adamw_update(float *params, void *params_out, cuda_dtype_t out_dt, const void *grads,
                                 cuda_dtype_t grad_dt, float *m, float *v, long n, double lr, double beta1,
                                 double beta2, double eps, double weight_decay, int t, float grad_scale,
                                 cudaStream_t s) {
    int rc = 0;
    adamw_consts_t k;
    unsigned grid = cuda_grid_1d(n, 256);
    double bc1 = 1.0 - pow(beta1, t), bc2 = 1.0 - pow(beta2, t);
    CHECK_GOTO(n >= 0 && t >= 1, LLAVA_EINVAL, "adamw_update: n=%ld t=%d", n, t);
    if (n == 0) goto cleanup;
    k.decay = (float)(1.0 - lr * weight_decay);
    k.w1 = (float)(1.0 - beta1);
    k.b2 = (float)beta2;
    k.w2 = (float)(1.0 - beta2);
    k.step_size = (float)(-(lr / bc1));
    k.bc2_sqrt = (float)sqrt(bc2);
    k.eps = (float)eps;
    k.grad_scale = grad_scale;
    k.small = fabsf(k.w1) < 0.5f;
    CHECK_GOTO(out_dt == CUDA_DT_F32 || out_dt == CUDA_DT_BF16, LLAVA_EINVAL, "adamw_update: out dtype %d",
               (int)out_dt);
    if (out_dt == CUDA_DT_BF16) {
        CUDA_DISPATCH(grad_dt, adamw_kernel<T, bf16><<<grid, 256, 0, s>>>(params, (bf16 *)params_out,
                                                                           (const T *)grads, m, v, n, k);
                      CUDA_LAUNCH_CHECK_GOTO());
    } else {
        CUDA_DISPATCH(grad_dt, adamw_kernel<T, float><<<grid, 256, 0, s>>>(params, (float *)params_out,
                                                                            (const T *)grads, m, v, n, k);
                      CUDA_LAUNCH_CHECK_GOTO());
    }
cleanup:
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Squared gradient norm                                                                                      */

#define NORM_BLOCKS 512
#define NORM_THREADS 256

template <typename D>
__global__ void norm_partial_kernel(double *partial, const D *g, long n) {
    __shared__ double sh[32];
    double acc = 0.0;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        double x = (double)ldf(g + i);
        acc += x * x;
    }
    acc = block_sum_d(acc, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void norm_final_kernel(double *out, const double *partial, int accumulate) {
    __shared__ double sh[32];
    double x = partial[threadIdx.x]; // blockDim.x == NORM_BLOCKS
    x = block_sum_d(x, sh);
    if (threadIdx.x == 0) *out = (accumulate ? *out : 0.0) + x;
}

extern "C" int cuda_global_norm_sq(cuda_ctx_t *ctx, double *out, const void *grads, long n, int accumulate,
                                   cuda_dtype_t dt, cudaStream_t s) {
    int rc = 0;
    double *partial = NULL;
    CHECK_GOTO(n >= 0, LLAVA_EINVAL, "global_norm_sq: n=%ld", n);
    RC_CHECK_GOTO(cuda_ctx_scratch(ctx, NORM_BLOCKS * sizeof(double), (void **)&partial));
    CUDA_DISPATCH(dt, norm_partial_kernel<T><<<NORM_BLOCKS, NORM_THREADS, 0, s>>>(partial, (const T *)grads, n);
                  CUDA_LAUNCH_CHECK_GOTO());
    norm_final_kernel<<<1, NORM_BLOCKS, 0, s>>>(out, partial, accumulate);
    CUDA_LAUNCH_CHECK_GOTO();
cleanup:
    return rc;
}
