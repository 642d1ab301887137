/* The LLaVA model on one GPU, built from the CUDA ops (kernels/cuda/ops_cuda.h): the same forward (CLIP tower,
 * projector, LLaMA with the loss on target rows only), backward in both training modes, global-norm clipping and
 * AdamW as the CPU model (worker/model_llava.c), in fp32 (for parity tests) or bf16 (fp32 master weights and
 * moments), with optional per-layer activation recomputation. The host llava_model_t keeps the names, the layout and
 * the files: device buffers mirror its parameter arena (same element offsets), gradients mirror its gradient arena.
 * Compiled only when the CUDA backend is configured. Tested by tests/cuda/test_model_cuda.c (exits 77 without a GPU). */
#ifndef LLAVA_WORKER_MODEL_CUDA_H
#define LLAVA_WORKER_MODEL_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "common/batch.h"
#include "kernels/cuda/nccl_comm.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/zero1.h"
#include "worker/model_llava.h"

typedef struct llava_cuda llava_cuda_t;

typedef struct {
    int device;       /* CUDA device index */
    cuda_dtype_t dt;  /* CUDA_DT_F32 (weights, activations, gradients fp32) or CUDA_DT_BF16 (fp32 master + moments) */
    int recompute;    /* 1: keep only each layer's input; the backward re-runs each layer's forward first */
    int zero1;        /* 1: ZeRO-1 (see llava_cuda_zero1_shard): no full-size master weights or moments on the device */
} llava_cuda_opts_t;

/** Uploads m's parameters to device o->device and creates the context. m stays owned by the caller and must
 *  outlive the GPU model (names, layout, the host copies the download functions fill). Fails with LLAVA_ECUDA and
 *  "no CUDA device" logged when the device does not exist. Returns 0, LLAVA_EINVAL, LLAVA_ENOMEM or LLAVA_ECUDA. */
int llava_cuda_new(llava_model_t *m, const llava_cuda_opts_t *o, llava_cuda_t **out);
void llava_cuda_free(llava_cuda_t **pg);

/** As llava_forward_backward, on the GPU: gradients of the summed loss ACCUMULATE in the device gradient buffer
 *  (zeroed first when accumulate == 0; a mode change reallocates and zeroes it and the moments). Synchronises to
 *  return the loss sum and count. Returns 0, LLAVA_EINVAL (bad batch), LLAVA_ENOMEM or LLAVA_ECUDA. */
int llava_cuda_forward_backward(llava_cuda_t *g, const batch_t *b, train_mode_t mode, double *loss_sum,
                                int64_t *n_targets, int accumulate);

/** Host copies (fp32) of what llava_cuda_forward_logits computed; valid until the next call. */
typedef struct {
    const float *logits; /* [B*T, V] */
    const float *feats;  /* [images*feat_rows, Cv] (NULL without images) */
    const float *pout;   /* [images*feat_rows, H] */
} llava_cuda_fwd_t;
/** Forward of every row, downloaded into host buffers owned by g. Returns as llava_cuda_forward_backward. */
int llava_cuda_forward_logits(llava_cuda_t *g, const batch_t *b, llava_cuda_fwd_t *out);

/** Allocates (zeroed) device and host gradient buffers for mode (see llava_grads_prepare). */
int llava_cuda_grads_prepare(llava_cuda_t *g, train_mode_t mode);
/** Zeroes the device gradient buffer. */
int llava_cuda_grads_zero(llava_cuda_t *g);
/** Downloads the device gradients (fp32) into the host gradient arena (m->grads, the layout llava_grads_data gives)
 *  and returns it with its float count, for a host all-reduce or a comparison. NULL before grads_prepare or on a
 *  CUDA error (logged). */
float *llava_cuda_grads_download(llava_cuda_t *g, size_t *n);
/** Replaces the device gradients with host[n] (n must be the gradient float count). */
int llava_cuda_grads_upload(llava_cuda_t *g, const float *host, size_t n);
/** As llava_adamw_step, on the device gradients and fp32 master weights: clip, AdamW (step count m->adam_t),
 *  bf16 copy-out in bf16 mode, gradients zeroed. *grad_norm (may be NULL) gets the pre-clip norm. LLAVA_EINVAL under
 *  ZeRO-1 (use llava_cuda_zero1_reduce / _apply). */
int llava_cuda_adamw_step(llava_cuda_t *g, const adamw_opts_t *o, double scale, double *grad_norm);
/** Device trainable weights (fp32 master) and moments into m->params / m->adam_m / m->adam_v (allocated here the
 *  first time; for checkpoints and the training-state handover). Under ZeRO-1 the host must already hold the whole
 *  state (llava_cuda_zero1_gather): returns 0 when it does, LLAVA_ENOTFOUND when not. */
int llava_cuda_state_download(llava_cuda_t *g);
/** The reverse: m's trainable weights and moments (after llava_train_state_import / llava_optim_load) to the device;
 *  LLAVA_EINVAL when m has no moments. Zeroes the device gradients. Under ZeRO-1: the weights, and the shard of the
 *  current layout (if any) re-sliced from m. */
int llava_cuda_state_upload(llava_cuda_t *g);

/** The device gradient buffer (dtype *dt, *n elements, the host gradient arena's layout), for a device all-reduce
 *  on llava_cuda_stream. Returns 0 or LLAVA_EINVAL before grads_prepare. */
int llava_cuda_grads_device(llava_cuda_t *g, void **dev, size_t *n, cuda_dtype_t *dt);
/** *out = sum of squares of the device gradients (synchronises). */
int llava_cuda_grads_norm_sq(llava_cuda_t *g, double *out);

/* The all-reduced sum, out of place: the worker's device all-reduce (whole, or in buckets during the last backward)
 * writes the sum over the ranks into a second buffer, so the accumulated gradients stay intact when a failure
 * breaks the all-reduce and the step is redone in a new generation. It doubles the gradient memory. */

/** The sum buffer (dtype, count and layout as llava_cuda_grads_device), allocated on the first call, freed with
 *  the gradients. Returns 0, LLAVA_EINVAL before grads_prepare or LLAVA_ECUDA. */
int llava_cuda_gsum_device(llava_cuda_t *g, void **dev);
/** *out = sum of squares of the sum buffer (synchronises); LLAVA_EINVAL when there is none. */
int llava_cuda_gsum_norm_sq(llava_cuda_t *g, double *out);
/** host[n] (fp32) = the sum buffer (n must be the gradient count), for tests. */
int llava_cuda_gsum_download(llava_cuda_t *g, float *host, size_t n);
/** As llava_cuda_adamw_step, with the gradients from the sum buffer; the accumulated gradients are zeroed. */
int llava_cuda_adamw_step_sum(llava_cuda_t *g, const adamw_opts_t *o, double scale, double *grad_norm);

/* ZeRO-1 (opts.zero1). The data-parallel ranks of a generation split the trainable parameters into equal shards
 * (zero1_layout: shard = ceil(n / world), rank r owns [r * shard, r * shard + shard) clipped to n). Each rank keeps
 * fp32 master weights (bf16 mode; in fp32 mode the weights themselves) and AdamW moments of its shard only; the
 * gradients are reduce-scattered, each rank updates its shard, and the updated weights are all-gathered into every
 * rank's full weight arena. The host model holds the whole state only when it was loaded, imported or gathered
 * since the last step (llava_cuda_host_full): checkpoints and the handover gather first. */

/** (Re)shards for rank of world: when the layout changes, slices the master weights and moments from the host
 *  model's whole state (m->params and m->adam_m / adam_v; zero moments when m has none), which must be current
 *  (llava_cuda_host_full; otherwise LLAVA_ENOTFOUND: the other shards are on other machines). The same layout again
 *  keeps the device shard. Returns 0, LLAVA_EINVAL (not a ZeRO-1 model, world > 4097), LLAVA_ENOTFOUND, LLAVA_ENOMEM
 *  or LLAVA_ECUDA. */
int llava_cuda_zero1_shard(llava_cuda_t *g, int world, int rank);
/** The current layout (world 0: not sharded yet). */
const zero1_layout_t *llava_cuda_zero1_layout(const llava_cuda_t *g);
/** 1 when the host model's trainable weights and moments are the current whole state. */
int llava_cuda_host_full(const llava_cuda_t *g);
/** Reduce-scatter of the device gradients over c (in place; this rank's summed shard is the one it updates) and
 *  *sumsq = the squared global norm of the summed gradients (each rank's shard, all-reduced in fp64; unscaled).
 *  Waits as nccl_allreduce. Returns 0, LLAVA_EINVAL (layout and communicator differ), LLAVA_ECUDA, LLAVA_ETIMEOUT or
 *  LLAVA_EABORTED. */
int llava_cuda_zero1_reduce(llava_cuda_t *g, nccl_comm_t *c, int timeout_ms, nccl_abort_fn abort_fn, void *ud,
                            double *sumsq);
/** After llava_cuda_zero1_reduce: clipping with the global norm (scaled by scale), AdamW on this rank's shard (step
 *  count m->adam_t, incremented), all-gather of the updated weights (dtype of the model) into every rank's weight
 *  arena, gradients zeroed. *grad_norm (may be NULL) gets the pre-clip norm. Returns as llava_cuda_zero1_reduce. */
int llava_cuda_zero1_apply(llava_cuda_t *g, nccl_comm_t *c, const adamw_opts_t *o, double scale, double *grad_norm,
                           int timeout_ms, nccl_abort_fn abort_fn, void *ud);
/** All-gathers every rank's master weights and moments (fp32, through a small device staging buffer) into the host
 *  model's m->params (trainable front), m->adam_m, m->adam_v (allocated here the first time): afterwards the host
 *  holds the whole state for a checkpoint or a handover. Every rank of c calls it. Returns as zero1_reduce. */
int llava_cuda_zero1_gather(llava_cuda_t *g, nccl_comm_t *c, int timeout_ms, nccl_abort_fn abort_fn, void *ud);

/** Gradient buckets all-reduced while the backward runs: with b set (NULL: off), each following backward marks
 *  every trainable tensor's gradient ready in b (nccl_bucketer_mark_ready, in backward order: LM head, final norm,
 *  layers L-1 .. 0, embeddings, projector, i.e. from the end of the gradient arena to its front) right after the
 *  last kernel writing it is enqueued, so full buckets are all-reduced on b's stream behind an event while earlier
 *  layers are still differentiated. b must send from the device gradient buffer (llava_cuda_grads_device) on
 *  llava_cuda_stream (into llava_cuda_gsum_device, or in place); the caller runs nccl_bucketer_launch_rest or
 *  nccl_bucketer_finish after the backward. Use it only for the last micro-batch of a step (the buckets reduce
 *  what is accumulated). A tensor marked twice fails the backward with LLAVA_EINVAL. Returns 0 or LLAVA_EINVAL (no
 *  gradients yet). */
int llava_cuda_set_bucketer(llava_cuda_t *g, nccl_bucketer_t *b);

/* The step's all-reduce of a data-parallel worker (not under ZeRO-1), out of place into the sum buffer, overlapped
 * with the backward when the worker knows its last micro-batch of the step. Every rank of c must issue the same
 * collectives: either all call llava_cuda_reduce_early (armed before their last backward, or not) before
 * llava_cuda_reduce_finish on c, or none does (the buckets go in the fixed order of nccl_bucketer). */

/** This rank computes no more micro-batches of the step. arm 1 (before its last backward): that backward launches
 *  the gradient buckets (bucket_elems elements each, 0: 25 MiB) as they fill; arm 0 (after that backward, or with
 *  no backward left): launches every bucket not launched yet. Waits for nothing. Returns 0, LLAVA_EINVAL (armed
 *  twice, ZeRO-1, no gradients), LLAVA_ENOMEM, LLAVA_ECUDA or LLAVA_ETIMEOUT. */
int llava_cuda_reduce_early(llava_cuda_t *g, nccl_comm_t *c, int arm, size_t bucket_elems);
/** Waits for the early buckets on c, or, when none went on c, all-reduces the whole gradient buffer into the sum
 *  buffer; *sumsq = the squared norm of the sum (unscaled). The accumulated gradients are left as they are (the
 *  optimizer step reads the sum: llava_cuda_adamw_step_sum). Returns as nccl_allreduce (after a failure c is
 *  aborted: close it). */
int llava_cuda_reduce_finish(llava_cuda_t *g, nccl_comm_t *c, int timeout_ms, nccl_abort_fn abort_fn, void *ud,
                             double *sumsq);
/** Buckets of the step launched so far by llava_cuda_reduce_early (for tests and logs). */
int llava_cuda_reduce_launched(const llava_cuda_t *g);
/** Drops the step's early buckets (a new generation, a job release): aborts their communicator when buckets were
 *  launched and not waited for (call it before closing that communicator). NULL-safe. */
void llava_cuda_reduce_cancel(llava_cuda_t *g);

/** host[n] (fp32) = the first n device weights (n <= the parameter count), as the forward reads them (bf16 values
 *  in bf16 mode); for tests of the weight all-gather. Returns 0, LLAVA_EINVAL or LLAVA_ECUDA. */
int llava_cuda_weights_download(llava_cuda_t *g, float *host, size_t n);

/** Bytes of device memory this model holds now (parameters, state, activations), for logs and the benchmark. */
size_t llava_cuda_bytes(const llava_cuda_t *g);
/** The stream all work is queued on (for timing with events). */
cudaStream_t llava_cuda_stream(const llava_cuda_t *g);

#endif
