// Linear layers on the GPU: cuBLASLt matmuls (fp32 accumulation, bias and GELU epilogues), cublasGemmEx as the
// fallback, and a deterministic column-sum kernel for the bias gradient. Tested by tests/cuda/test_cuda_matmul.c.
#include <string.h>

#include "kernels/cuda/cuda_common.cuh"

// One column-major GEMM D[m,n] = alpha op(A) op(B) + beta D (+ bias[m] broadcast over columns, + GELU).
typedef struct {
    cublasOperation_t ta, tb;
    int m, n, k;
    const void *A;
    int lda;
    const void *B;
    int ldb;
    void *D;
    int ldd;
    float beta;
    const void *bias;
    int gelu;
} gemm_t;

template <typename T>
__global__ void bias_gelu_kernel(T *out, const T *bias, int N, int OC, int gelu) {
    long n = (long)N * OC;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float x = ldf(out + i);
        if (bias) x += ldf(bias + i % OC);
        if (gelu) x = 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
        stf(out + i, x);
    }
}

static int gemm_blas(cuda_ctx_t *ctx, const gemm_t *g, cuda_dtype_t dt, cudaStream_t s) {
    int rc = 0;
    cudaDataType_t ty = dt == CUDA_DT_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    float alpha = 1.0f;
    CUBLAS_CHECK_GOTO(cublasSetStream(ctx->blas, s));
    CUBLAS_CHECK_GOTO(cublasGemmEx(ctx->blas, g->ta, g->tb, g->m, g->n, g->k, &alpha, g->A, ty, g->lda, g->B, ty,
                                   g->ldb, &g->beta, g->D, ty, g->ldd, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (g->bias || g->gelu) {
        // only used for the forward (D is out[N,OC] as [OC rows, N columns], ldd == m)
        CUDA_DISPATCH(dt, bias_gelu_kernel<T><<<cuda_grid_1d((long)g->m * g->n, 256), 256, 0, s>>>(
                              (T *)g->D, (const T *)g->bias, g->n, g->m, g->gelu);
                      CUDA_LAUNCH_CHECK_GOTO());
    }
cleanup:
    return rc;
}

// Largest power of two (<= 256) dividing the address: cuBLASLt's heuristics assume 256-byte aligned operands
// unless told otherwise, and an algorithm picked for aligned pointers may fail or misread on a sub-tensor.
static uint32_t ptr_align(const void *p) {
    uint32_t a = 256;
    while (a > 1 && ((uintptr_t)p % a) != 0) a >>= 1;
    return a;
}

static int gemm_run(cuda_ctx_t *ctx, const gemm_t *g, cuda_dtype_t dt, cudaStream_t s) {
    int rc = 0;
    cublasLtMatmulDesc_t desc = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, ld = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t heur;
    cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT;
    cudaDataType_t ty = dt == CUDA_DT_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    float alpha = 1.0f;
    int nres = 0;
    uint32_t align_a, align_b, align_d;
    gemm_t plain;
    CHECK_GOTO(dt == CUDA_DT_F32 || dt == CUDA_DT_BF16, LLAVA_EINVAL, "matmul: bad dtype %d", (int)dt);
    if (g->bias && ptr_align(g->bias) < 16) {
        // the bias epilogue wants an aligned vector: plain GEMM, then our own bias (+ GELU) pass
        plain = *g;
        plain.bias = NULL;
        plain.gelu = 0;
        RC_CHECK_GOTO(gemm_run(ctx, &plain, dt, s));
        CUDA_DISPATCH(dt, bias_gelu_kernel<T><<<cuda_grid_1d((long)g->m * g->n, 256), 256, 0, s>>>(
                              (T *)g->D, (const T *)g->bias, g->n, g->m, g->gelu);
                      CUDA_LAUNCH_CHECK_GOTO());
        goto cleanup;
    }
    CUBLAS_CHECK_GOTO(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CUBLAS_CHECK_GOTO(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &g->ta, sizeof g->ta));
    CUBLAS_CHECK_GOTO(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &g->tb, sizeof g->tb));
    if (g->bias) epi = g->gelu ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS;
    else if (g->gelu) epi = CUBLASLT_EPILOGUE_GELU;
    if (epi != CUBLASLT_EPILOGUE_DEFAULT) {
        CUBLAS_CHECK_GOTO(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    }
    if (g->bias) {
        CUBLAS_CHECK_GOTO(
            cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g->bias, sizeof g->bias));
    }
    CUBLAS_CHECK_GOTO(cublasLtMatrixLayoutCreate(&la, ty, g->ta == CUBLAS_OP_N ? g->m : g->k,
                                                 g->ta == CUBLAS_OP_N ? g->k : g->m, g->lda));
    CUBLAS_CHECK_GOTO(cublasLtMatrixLayoutCreate(&lb, ty, g->tb == CUBLAS_OP_N ? g->k : g->n,
                                                 g->tb == CUBLAS_OP_N ? g->n : g->k, g->ldb));
    CUBLAS_CHECK_GOTO(cublasLtMatrixLayoutCreate(&ld, ty, g->m, g->n, g->ldd));
    CUBLAS_CHECK_GOTO(cublasLtMatmulPreferenceCreate(&pref));
    CUBLAS_CHECK_GOTO(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                           &ctx->workspace_bytes, sizeof ctx->workspace_bytes));
    align_a = ptr_align(g->A);
    align_b = ptr_align(g->B);
    align_d = ptr_align(g->D);
    CUBLAS_CHECK_GOTO(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                           sizeof align_a));
    CUBLAS_CHECK_GOTO(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                           sizeof align_b));
    CUBLAS_CHECK_GOTO(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d,
                                                           sizeof align_d));
    CUBLAS_CHECK_GOTO(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d,
                                                           sizeof align_d));
    if (cublasLtMatmulAlgoGetHeuristic(ctx->lt, desc, la, lb, ld, ld, pref, 1, &heur, &nres) !=
            CUBLAS_STATUS_SUCCESS ||
        nres == 0) {
        // odd shapes or alignments cuBLASLt has no kernel for: plain cuBLAS plus our own epilogue
        RC_CHECK_GOTO(gemm_blas(ctx, g, dt, s));
        goto cleanup;
    }
    CUBLAS_CHECK_GOTO(cublasLtMatmul(ctx->lt, desc, &alpha, g->A, la, g->B, lb, &g->beta, g->D, ld, g->D, ld,
                                     &heur.algo, ctx->workspace, ctx->workspace_bytes, s));
cleanup:
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (ld) cublasLtMatrixLayoutDestroy(ld);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (desc) cublasLtMatmulDescDestroy(desc);
    return rc;
}

extern "C" int cuda_matmul_forward_epi(cuda_ctx_t *ctx, void *out, const void *inp, const void *weight,
                                       const void *bias, int N, int C, int OC, cuda_epilogue_t epi, cuda_dtype_t dt,
                                       cudaStream_t s) {
    int rc = 0;
    gemm_t g;
    CHECK_GOTO(N >= 0 && C > 0 && OC > 0, LLAVA_EINVAL, "matmul_forward: N=%d C=%d OC=%d", N, C, OC);
    CHECK_GOTO(epi == CUDA_EPI_NONE || epi == CUDA_EPI_GELU_TANH, LLAVA_EINVAL, "matmul_forward: epilogue %d",
               (int)epi);
    if (N == 0) goto cleanup;
    // row-major out[N,OC] is column-major [OC,N] = W^T (weight row-major [OC,C] read as column-major [C,OC]) * inp
    g.ta = CUBLAS_OP_T;
    g.tb = CUBLAS_OP_N;
    g.m = OC;
    g.n = N;
    g.k = C;
    g.A = weight;
    g.lda = C;
    g.B = inp;
    g.ldb = C;
    g.D = out;
    g.ldd = OC;
    g.beta = 0.0f;
    g.bias = bias;
    g.gelu = epi == CUDA_EPI_GELU_TANH;
    RC_CHECK_GOTO(gemm_run(ctx, &g, dt, s));
cleanup:
    return rc;
}

extern "C" int cuda_matmul_forward(cuda_ctx_t *ctx, void *out, const void *inp, const void *weight, const void *bias,
                                   int N, int C, int OC, cuda_dtype_t dt, cudaStream_t s) {
    return cuda_matmul_forward_epi(ctx, out, inp, weight, bias, N, C, OC, CUDA_EPI_NONE, dt, s);
}

// dbias[c] += sum over rows of dout[:, c]: a 32x8 block owns 32 columns; row group ty sums rows ty, ty+8, ...;
// the 8 partials are added in a fixed order (deterministic).
template <typename T>
__global__ void colsum_kernel(T *dbias, const T *dout, int N, int OC) {
    __shared__ float part[8][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    float acc = 0.0f;
    if (c < OC)
        for (int r = threadIdx.y; r < N; r += 8) acc += ldf(dout + (long)r * OC + c);
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < OC) {
        float sum = 0.0f;
        for (int y = 0; y < 8; y++) sum += part[y][threadIdx.x];
        stf(dbias + c, ldf(dbias + c) + sum);
    }
}

extern "C" int cuda_matmul_backward(cuda_ctx_t *ctx, void *dinp, void *dweight, void *dbias, const void *dout,
                                    const void *inp, const void *weight, int N, int C, int OC, cuda_dtype_t dt,
                                    cudaStream_t s) {
    int rc = 0;
    gemm_t g;
    CHECK_GOTO(N >= 0 && C > 0 && OC > 0, LLAVA_EINVAL, "matmul_backward: N=%d C=%d OC=%d", N, C, OC);
    if (N == 0) goto cleanup;
    memset(&g, 0, sizeof g);
    g.beta = 1.0f; // accumulate
    if (dinp) {
        // dinp^T [C,N] (col-major) += W_cm [C,OC] * dout_cm [OC,N]
        g.ta = CUBLAS_OP_N;
        g.tb = CUBLAS_OP_N;
        g.m = C;
        g.n = N;
        g.k = OC;
        g.A = weight;
        g.lda = C;
        g.B = dout;
        g.ldb = OC;
        g.D = dinp;
        g.ldd = C;
        RC_CHECK_GOTO(gemm_run(ctx, &g, dt, s));
    }
    if (dweight) {
        // dweight row-major [OC,C] = col-major [C,OC] += inp_cm [C,N] * dout_cm^T [N,OC]
        g.ta = CUBLAS_OP_N;
        g.tb = CUBLAS_OP_T;
        g.m = C;
        g.n = OC;
        g.k = N;
        g.A = inp;
        g.lda = C;
        g.B = dout;
        g.ldb = OC;
        g.D = dweight;
        g.ldd = C;
        RC_CHECK_GOTO(gemm_run(ctx, &g, dt, s));
    }
    if (dbias) {
        dim3 block(32, 8);
        CUDA_DISPATCH(dt, colsum_kernel<T><<<(OC + 31) / 32, block, 0, s>>>((T *)dbias, (const T *)dout, N, OC);
                      CUDA_LAUNCH_CHECK_GOTO());
    }
cleanup:
    return rc;
}
