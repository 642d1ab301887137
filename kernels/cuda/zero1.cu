// ZeRO-1 step on the GPU: reduce-scatter, sharded global norm, AdamW on the shard, all-gather of bf16 weights.
// Tested by tests/cuda/test_cuda_nccl.c.
#include <math.h>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/zero1.h"

extern "C" int zero1_layout(zero1_layout_t *l, long n, int world, int rank) {
    int rc = 0;
    CHECK_GOTO(n > 0 && world >= 1 && rank >= 0 && rank < world, LLAVA_EINVAL, "zero1_layout: n=%ld world=%d rank=%d",
               n, world, rank);
    l->n = n;
    l->world = world;
    l->rank = rank;
    l->shard = (n + world - 1) / world;
    l->offset = (long)rank * l->shard;
    l->local = n - l->offset;
    if (l->local < 0) l->local = 0;
    if (l->local > l->shard) l->local = l->shard;
cleanup:
    return rc;
}

extern "C" long zero1_padded(const zero1_layout_t *l) { return l->shard * l->world; }

extern "C" int zero1_step(cuda_ctx_t *ctx, nccl_comm_t *comm, const zero1_layout_t *l, void *grads, void *weights,
                          float *master, float *m, float *v, cuda_dtype_t dt, const zero1_hparams_t *hp,
                          double *norm_out, cudaStream_t s, int timeout_ms, nccl_abort_fn abort_fn, void *ud) {
    int rc = 0;
    size_t es = cuda_dtype_size(dt);
    char *gshard = (char *)grads + (size_t)l->offset * es, *wshard = (char *)weights + (size_t)l->offset * es;
    double *dnorm = NULL, norm_sq = 0.0;
    float coef = 1.0f;
    CHECK_GOTO(l->world == nccl_comm_world(comm) && l->rank == nccl_comm_rank(comm), LLAVA_EINVAL,
               "zero1_step: layout (rank %d of %d) does not match the communicator (rank %d of %d)", l->rank, l->world,
               nccl_comm_rank(comm), nccl_comm_world(comm));
    RC_CHECK_GOTO(nccl_reduce_scatter(comm, grads, gshard, (size_t)l->shard, dt, s, timeout_ms, abort_fn, ud));
    // the norm of the local shard (padding is zero), then summed over ranks; one double on the device
    CUDA_CHECK_GOTO(cudaMallocAsync((void **)&dnorm, sizeof(double), s));
    RC_CHECK_GOTO(cuda_global_norm_sq(ctx, dnorm, gshard, l->local, 0, dt, s));
    RC_CHECK_GOTO(nccl_allreduce_f64(comm, dnorm, 1, s, timeout_ms, abort_fn, ud));
    CUDA_CHECK_GOTO(cudaMemcpyAsync(&norm_sq, dnorm, sizeof norm_sq, cudaMemcpyDeviceToHost, s));
    CUDA_CHECK_GOTO(cudaStreamSynchronize(s));
    {
        double norm = sqrt(norm_sq) * fabs((double)hp->grad_scale);
        if (norm_out) *norm_out = norm;
        // torch.nn.utils.clip_grad_norm_: min(1, max_norm / (norm + 1e-6))
        if (hp->max_norm > 0.0f) {
            double c = (double)hp->max_norm / (norm + 1e-6);
            coef = (float)(c < 1.0 ? c : 1.0);
        }
    }
    if (l->local > 0) {
        RC_CHECK_GOTO(cuda_adamw_update(master, wshard, dt, gshard, dt, m, v, l->local, hp->lr, hp->beta1, hp->beta2,
                                        hp->eps, hp->weight_decay, hp->t, hp->grad_scale * coef, s));
    }
    RC_CHECK_GOTO(nccl_allgather(comm, wshard, weights, (size_t)l->shard, dt, s, timeout_ms, abort_fn, ud));
cleanup:
    if (dnorm) (void)cudaFreeAsync(dnorm, s);
    return rc;
}
