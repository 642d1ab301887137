/* The CUDA op library: every op of kernels/cpu/ops.h on the GPU, same argument order and semantics (outputs first,
 * backward ops ACCUMULATE unless stated), plus a context, device pointers, a dtype and a stream.
 * Tested op by op against the CPU ops by tests/cuda/test_cuda_*.c (they exit 77 without a GPU). */
#ifndef LLAVA_KERNELS_CUDA_OPS_CUDA_H
#define LLAVA_KERNELS_CUDA_OPS_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Conventions (beyond those of kernels/cpu/ops.h)
 * - Every pointer is a device pointer unless its note says host. Every function returns 0, LLAVA_EINVAL (bad
 *   sizes or dtype) or LLAVA_ECUDA (a CUDA/cuBLAS error, logged with file and line where it happened).
 * - `dt` is the dtype of the op's activations, weights and their gradients (all the same dtype in one call);
 *   statistics (mean, rstd, logsumexp), losses, optimiser state and master weights are always fp32.
 *   Arithmetic is fp32 in registers for both dtypes; bf16 values are rounded to nearest even on store.
 * - Work is queued on `stream` and returns without waiting, except where an op says it synchronises.
 * - Every reduction is deterministic: the same inputs give the same bits on the same device and grid. */

typedef enum { CUDA_DT_F32 = 0, CUDA_DT_BF16 = 1 } cuda_dtype_t;

/** Bytes of one element of dt (4 or 2). */
size_t cuda_dtype_size(cuda_dtype_t dt);

/** Per-device state: cuBLASLt handle, its workspace, and a scratch buffer ops use for small temporaries. */
typedef struct cuda_ctx cuda_ctx_t;

/** Creates a context on the current device with a cuBLASLt workspace of workspace_bytes (0: 32 MiB).
 *  The caller owns *out and frees it with cuda_ctx_free. Returns 0, LLAVA_ENOMEM or LLAVA_ECUDA. */
int cuda_ctx_new(cuda_ctx_t **out, size_t workspace_bytes);
/** Frees the context (waits for the device) and sets *p = NULL. NULL-safe. */
void cuda_ctx_free(cuda_ctx_t **p);

/* ---------------------------------------------------------------------------------------------------------- */
/* Mixed precision                                                                                            */

/** dst[n] = src[n] converted between dtypes (fp32 -> bf16 rounds to nearest even; same dtype copies). */
int cuda_convert(void *dst, cuda_dtype_t dst_dt, const void *src, cuda_dtype_t src_dt, long n, cudaStream_t s);

/* ---------------------------------------------------------------------------------------------------------- */
/* Linear layers (cuBLASLt, fp32 accumulation)                                                                */

typedef enum {
    CUDA_EPI_NONE = 0,      /* out = inp @ W^T (+ bias) */
    CUDA_EPI_GELU_TANH = 1, /* out = gelu_tanh(inp @ W^T + bias): cuBLASLt's GELU is the tanh approximation, so
                               it differs from gelu_forward (erf) by up to ~1e-3; use it only where that is fine */
} cuda_epilogue_t;

/** out[N,OC] = inp[N,C] @ weight[OC,C]^T + bias[OC] (bias may be NULL; fused as a cuBLASLt epilogue). */
int cuda_matmul_forward(cuda_ctx_t *ctx, void *out, const void *inp, const void *weight, const void *bias, int N,
                        int C, int OC, cuda_dtype_t dt, cudaStream_t s);
/** As cuda_matmul_forward with an epilogue. */
int cuda_matmul_forward_epi(cuda_ctx_t *ctx, void *out, const void *inp, const void *weight, const void *bias,
                            int N, int C, int OC, cuda_epilogue_t epi, cuda_dtype_t dt, cudaStream_t s);
/** dinp[N,C] += dout @ weight; dweight[OC,C] += dout^T @ inp; dbias[OC] += column sums of dout (any may be NULL). */
int cuda_matmul_backward(cuda_ctx_t *ctx, void *dinp, void *dweight, void *dbias, const void *dout, const void *inp,
                         const void *weight, int N, int C, int OC, cuda_dtype_t dt, cudaStream_t s);

/* ---------------------------------------------------------------------------------------------------------- */
/* Normalisation (one warp per row; statistics fp32)                                                         */

/** nn.LayerNorm: out[N,C]; mean[N], rstd[N] (fp32, either may be NULL). */
int cuda_layernorm_forward(void *out, float *mean, float *rstd, const void *inp, const void *weight,
                           const void *bias, int N, int C, float eps, cuda_dtype_t dt, cudaStream_t s);
/** Accumulates dinp[N,C], dweight[C], dbias[C] (each may be NULL). dweight/dbias: one thread per column sums the
 *  rows in order (deterministic, no atomics). */
int cuda_layernorm_backward(void *dinp, void *dweight, void *dbias, const void *dout, const void *inp,
                            const void *weight, const float *mean, const float *rstd, int N, int C, cuda_dtype_t dt,
                            cudaStream_t s);
/** LlamaRMSNorm: out[N,C]; rstd[N] fp32 (may be NULL). */
int cuda_rmsnorm_forward(void *out, float *rstd, const void *inp, const void *weight, int N, int C, float eps,
                         cuda_dtype_t dt, cudaStream_t s);
/** Accumulates dinp[N,C], dweight[C] (either may be NULL). */
int cuda_rmsnorm_backward(void *dinp, void *dweight, const void *dout, const void *inp, const void *weight,
                          const float *rstd, int N, int C, cuda_dtype_t dt, cudaStream_t s);

/* ---------------------------------------------------------------------------------------------------------- */
/* RoPE (rotate-half), attention, softmax                                                                     */

/** As rope_forward (pos[B*T] int32 device pointer or NULL). out may alias inp. HS even. */
int cuda_rope_forward(void *out, const void *inp, const int32_t *pos, int B, int T, int NH, int HS, float theta,
                      cuda_dtype_t dt, cudaStream_t s);
/** dinp += R^T dout; dinp must not alias dout. */
int cuda_rope_backward(void *dinp, const void *dout, const int32_t *pos, int B, int T, int NH, int HS, float theta,
                       cuda_dtype_t dt, cudaStream_t s);

/** Fused attention (flash style: online softmax over key tiles held in shared memory; no [T,T] matrix anywhere).
 *  Same semantics as attention_forward: q[B,T,NH,HS], k/v[B,T,NKV,HS], out[B,T,NH,HS], GQA (NH % NKV == 0),
 *  right-padding lengths[B] (device, may be NULL), causal or bidirectional; a query with no visible key gets 0.
 *  lse[B,NH,T] (fp32, may be NULL for inference) receives each row's log-sum-exp of the scaled scores
 *  (+inf for a row with no visible key) for the backward. HS <= 128. */
int cuda_attention_forward(void *out, float *lse, const void *q, const void *k, const void *v,
                           const int32_t *lengths, int B, int T, int NH, int NKV, int HS, int causal,
                           cuda_dtype_t dt, cudaStream_t s);
/** Accumulates dq, dk, dv (none may be NULL) from dout, recomputing the softmax from q, k and the saved lse.
 *  Needs the forward's out (for rowsum(dout*out)). dk/dv: one block per (batch, kv head, key tile) loops over the
 *  query heads of its group and all queries (no atomics); dq: a second kernel per query tile. Deterministic.
 *  Uses B*NH*T floats of the context's scratch. */
int cuda_attention_backward(cuda_ctx_t *ctx, void *dq, void *dk, void *dv, const void *dout, const void *out,
                            const float *lse, const void *q, const void *k, const void *v, const int32_t *lengths,
                            int B, int T, int NH, int NKV, int HS, int causal, cuda_dtype_t dt, cudaStream_t s);

/** Row softmax out[N,V] = softmax(inp[N,V]) (out may alias inp). One block per row. */
int cuda_softmax_forward(void *out, const void *inp, int N, int V, cuda_dtype_t dt, cudaStream_t s);

/* ---------------------------------------------------------------------------------------------------------- */
/* Activations and element-wise helpers (n elements)                                                          */

int cuda_quick_gelu_forward(void *out, const void *inp, long n, cuda_dtype_t dt, cudaStream_t s);
int cuda_quick_gelu_backward(void *dinp, const void *inp, const void *dout, long n, cuda_dtype_t dt, cudaStream_t s);
/** Exact (erf) GELU. */
int cuda_gelu_forward(void *out, const void *inp, long n, cuda_dtype_t dt, cudaStream_t s);
int cuda_gelu_backward(void *dinp, const void *inp, const void *dout, long n, cuda_dtype_t dt, cudaStream_t s);
/** out = silu(gate) * up (out may alias gate or up); backward: dgate, dup (either may be NULL) accumulate. */
int cuda_swiglu_forward(void *out, const void *gate, const void *up, long n, cuda_dtype_t dt, cudaStream_t s);
int cuda_swiglu_backward(void *dgate, void *dup, const void *dout, const void *gate, const void *up, long n,
                         cuda_dtype_t dt, cudaStream_t s);
int cuda_residual_forward(void *out, const void *a, const void *b, long n, cuda_dtype_t dt, cudaStream_t s);
int cuda_add_inplace(void *y, const void *x, long n, cuda_dtype_t dt, cudaStream_t s);
int cuda_scale_inplace(void *x, float scale, long n, cuda_dtype_t dt, cudaStream_t s);
/** out[N,C] += row[C]. */
int cuda_add_rows(void *out, const void *row, int N, int C, cuda_dtype_t dt, cudaStream_t s);

/* ---------------------------------------------------------------------------------------------------------- */
/* Embeddings, image features, patches                                                                        */

/** out[N,C] = table[ids[i], :] (ids device int32 in [0,V)). */
int cuda_embedding_forward(void *out, const int32_t *ids, const void *table, int N, int C, cuda_dtype_t dt,
                           cudaStream_t s);
/** dtable[V,C] += dout rows scattered by ids (negative ids skipped). Deterministic and sort-free, no atomics: a
 *  link kernel chains the rows sharing an id (O(N^2) integer compares, one thread per row), then each thread owns
 *  one column and, for each id, sums that id's rows in fp32 in row order and adds the sum once (one rounding per
 *  table element, also in bf16). Uses 2*N int32 of the context's scratch. */
int cuda_embedding_backward(cuda_ctx_t *ctx, void *dtable, const void *dout, const int32_t *ids, int N, int C,
                            cuda_dtype_t dt, cudaStream_t s);
/** As image_scatter_forward. Counts the image positions on the device and SYNCHRONISES the stream to compare the
 *  count with M: returns LLAVA_ESHAPE (nothing written) on a mismatch. Uses N int32 of the context's scratch. */
int cuda_image_scatter_forward(cuda_ctx_t *ctx, void *embeds, const int32_t *ids, int32_t image_token_id,
                               const void *feats, int N, int C, int M, cuda_dtype_t dt, cudaStream_t s);
/** dfeats[M,C] = dembeds rows at the image positions (WRITES). Synchronises as the forward; LLAVA_ESHAPE. */
int cuda_image_scatter_backward(cuda_ctx_t *ctx, void *dfeats, const void *dembeds, const int32_t *ids,
                                int32_t image_token_id, int N, int C, int M, cuda_dtype_t dt, cudaStream_t s);
/** As patch_im2col: img[B,3,S,S] -> out[B*(S/P)^2, 3*P*P] (both dtype dt). */
int cuda_patch_im2col(void *out, const void *img, int B, int S, int P, cuda_dtype_t dt, cudaStream_t s);

/* ---------------------------------------------------------------------------------------------------------- */
/* Loss (fused softmax + cross entropy)                                                                       */

/** losses[N] (fp32, required) = each row's loss (0 for target -100). loss_sum (device double, may be NULL) gets
 *  the sum over the counted rows and n_targets (device int64, may be NULL) their count, reduced in row order by one
 *  block (deterministic). One block per row for the row's max and sum of exponentials. */
int cuda_crossentropy_forward(float *losses, const void *logits, const int32_t *targets, int N, int V,
                              double *loss_sum, int64_t *n_targets, cuda_dtype_t dt, cudaStream_t s);
/** WRITES dlogits[N,V] = scale * (softmax(logits) - onehot(target)), zero rows for ignored targets; dlogits may
 *  alias logits. */
int cuda_crossentropy_backward(void *dlogits, const void *logits, const int32_t *targets, int N, int V, float scale,
                               cuda_dtype_t dt, cudaStream_t s);

/* ---------------------------------------------------------------------------------------------------------- */
/* Optimiser                                                                                                  */

/** One torch AdamW step on fp32 master params[n] with fp32 m, v, as adamw_update computes it, on grads[n] (dtype
 *  grad_dt) multiplied by grad_scale first (the clip coefficient; 1 = none). When params_out is not NULL the
 *  updated weights are also written there in out_dt (the bf16 copy the forward reads). */
int cuda_adamw_update(float *params, void *params_out, cuda_dtype_t out_dt, const void *grads, cuda_dtype_t grad_dt,
                      float *m, float *v, long n, double lr, double beta1, double beta2, double eps,
                      double weight_decay, int t, float grad_scale, cudaStream_t s);
/** *out (device double) = (accumulate ? *out : 0) + sum of grads[n]^2. Two passes: a fixed grid of 512 blocks
 *  writes partial sums (double per thread and per block) to the context's scratch, one block adds them in order.
 *  Deterministic for a given n. Call once per tensor with accumulate=1 after the first to get the global norm^2. */
int cuda_global_norm_sq(cuda_ctx_t *ctx, double *out, const void *grads, long n, int accumulate, cuda_dtype_t dt,
                        cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif
