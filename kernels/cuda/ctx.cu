// The CUDA op context (cuBLASLt handle, workspace, scratch) and the fp32 <-> bf16 conversions of mixed precision.
// Tested by tests/cuda/test_cuda_elementwise.c (conversions) and by every op test (context life cycle).
#include <stdlib.h>

#include "kernels/cuda/cuda_common.cuh"

extern "C" size_t cuda_dtype_size(cuda_dtype_t dt) { return dt == CUDA_DT_BF16 ? 2 : 4; }

extern "C" int cuda_ctx_new(cuda_ctx_t **out, size_t workspace_bytes) {
    int rc = 0;
    cuda_ctx_t *c = (cuda_ctx_t *)calloc(1, sizeof *c);
    *out = NULL;
    CHECK_GOTO(c != NULL, LLAVA_ENOMEM, "out of memory");
    c->workspace_bytes = workspace_bytes ? workspace_bytes : ((size_t)32 << 20);
    CUBLAS_CHECK_GOTO(cublasLtCreate(&c->lt));
    CUBLAS_CHECK_GOTO(cublasCreate(&c->blas));
    CUDA_CHECK_GOTO(cudaMalloc(&c->workspace, c->workspace_bytes));
    *out = c;
    c = NULL;
cleanup:
    cuda_ctx_free(&c);
    return rc;
}

extern "C" void cuda_ctx_free(cuda_ctx_t **p) {
    if (!p || !*p) return;
    cuda_ctx_t *c = *p;
    (void)cudaDeviceSynchronize();
    if (c->workspace) (void)cudaFree(c->workspace);
    if (c->scratch) (void)cudaFree(c->scratch);
    if (c->lt) (void)cublasLtDestroy(c->lt);
    if (c->blas) (void)cublasDestroy(c->blas);
    free(c);
    *p = NULL;
}

int cuda_ctx_scratch(cuda_ctx_t *ctx, size_t bytes, void **out) {
    int rc = 0;
    *out = NULL;
    if (bytes > ctx->scratch_bytes) {
        size_t want = bytes < ((size_t)1 << 20) ? ((size_t)1 << 20) : bytes;
        CUDA_CHECK_GOTO(cudaDeviceSynchronize()); // earlier ops on any stream may still read the old buffer
        if (ctx->scratch) CUDA_CHECK_GOTO(cudaFree(ctx->scratch));
        ctx->scratch = NULL;
        ctx->scratch_bytes = 0;
        CUDA_CHECK_GOTO(cudaMalloc(&ctx->scratch, want));
        ctx->scratch_bytes = want;
    }
    *out = ctx->scratch;
cleanup:
    return rc;
}

template <typename TD, typename TS>
__global__ void convert_kernel(TD *dst, const TS *src, long n) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        stf(dst + i, ldf(src + i));
}

extern "C" int cuda_convert(void *dst, cuda_dtype_t dst_dt, const void *src, cuda_dtype_t src_dt, long n,
                            cudaStream_t s) {
    int rc = 0;
    CHECK_GOTO(n >= 0, LLAVA_EINVAL, "cuda_convert: n = %ld", n);
    if (n == 0) goto cleanup;
    if (dst_dt == src_dt) {
        CUDA_CHECK_GOTO(cudaMemcpyAsync(dst, src, (size_t)n * cuda_dtype_size(dst_dt), cudaMemcpyDeviceToDevice, s));
    } else if (dst_dt == CUDA_DT_BF16 && src_dt == CUDA_DT_F32) {
        convert_kernel<<<cuda_grid_1d(n, 256), 256, 0, s>>>((bf16 *)dst, (const float *)src, n);
        CUDA_LAUNCH_CHECK_GOTO();
    } else if (dst_dt == CUDA_DT_F32 && src_dt == CUDA_DT_BF16) {
        convert_kernel<<<cuda_grid_1d(n, 256), 256, 0, s>>>((float *)dst, (const bf16 *)src, n);
        CUDA_LAUNCH_CHECK_GOTO();
    } else {
        CHECK_GOTO(0, LLAVA_EINVAL, "cuda_convert: bad dtypes %d <- %d", (int)dst_dt, (int)src_dt);
    }
cleanup:
    return rc;
}
