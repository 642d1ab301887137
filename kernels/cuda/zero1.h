/* ZeRO-1 on the GPU: each rank keeps fp32 master weights and Adam moments for 1/world of the flat trainable
 * parameters. A step: reduce-scatter the gradients (in place), global norm over the shards, AdamW on the local
 * shard writing its bf16 weights, all-gather the updated bf16 weights (in place).
 * Tested by tests/cuda/test_cuda_nccl.c (multi-rank, needs GPUs; skips otherwise). */
#ifndef LLAVA_KERNELS_CUDA_ZERO1_H
#define LLAVA_KERNELS_CUDA_ZERO1_H

#include "kernels/cuda/nccl_comm.h"
#include "kernels/cuda/ops_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    long n;      /* trainable elements */
    long shard;  /* ceil(n / world): every rank's shard size; flat buffers are padded to shard * world */
    long offset; /* rank * shard: this rank's first element */
    long local;  /* elements of the shard that are real (n - offset clamped to [0, shard]) */
    int world, rank;
} zero1_layout_t;

/** Fills l for n elements over world ranks. Returns 0 or LLAVA_EINVAL. */
int zero1_layout(zero1_layout_t *l, long n, int world, int rank);
/** Elements every flat buffer (grads, weights) must hold: shard * world (>= n; the tail is padding). */
long zero1_padded(const zero1_layout_t *l);

typedef struct {
    double lr, beta1, beta2, eps, weight_decay;
    int t;           /* 1-based step */
    float max_norm;  /* clip_grad_norm_'s max norm (<= 0: no clipping) */
    float grad_scale; /* applied before clipping, e.g. 1 / total targets (1 = none) */
} zero1_hparams_t;

/** One ZeRO-1 optimizer step. grads[padded] (dtype dt, summed over this rank's micro-batches, padding zero) are
 *  reduce-scattered in place (this rank's summed shard lands at grads + offset); the global norm of the scaled
 *  gradient is all-reduced over the shards (double); master[shard], m[shard], v[shard] (fp32) get AdamW with the
 *  clip coefficient folded into the gradient scale; weights[padded] (dtype dt) receive the updated shard and are
 *  all-gathered in place. *norm_out (host, may be NULL) receives the pre-clip global norm. Collectives wait with
 *  timeout_ms / abort_fn as nccl_allreduce. Synchronises s. Returns 0, LLAVA_EINVAL, LLAVA_ECUDA, LLAVA_ETIMEOUT
 *  or LLAVA_EABORTED. */
int zero1_step(cuda_ctx_t *ctx, nccl_comm_t *comm, const zero1_layout_t *l, void *grads, void *weights,
               float *master, float *m, float *v, cuda_dtype_t dt, const zero1_hparams_t *hp, double *norm_out,
               cudaStream_t s, int timeout_ms, nccl_abort_fn abort_fn, void *ud);

#ifdef __cplusplus
}
#endif

#endif
