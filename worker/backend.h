/* The compute backend a worker drives: load a job, run micro-batches (accumulating gradients of the summed loss),
 * expose the gradient buffer for the all-reduce, apply the optimizer step, write checkpoints.
 * Implementations: backend_sim.c (no model: deterministic arithmetic, for coordinator tests and benchmarks) and
 * backend_model.c (the LLaVA model on the CPU kernels). Tested through tests/integration/. */
#ifndef LLAVA_BACKEND_H
#define LLAVA_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

typedef struct backend backend_t;

/* Results of one micro-batch. */
typedef struct {
    double loss_sum;   /* summed cross-entropy over targets */
    int64_t n_targets; /* targets counted */
    int64_t tokens;    /* real (unpadded) tokens */
} mb_result_t;

typedef struct {
    const char *name;
    /** Loads the model and data of a job. `job` is {"id", "spec" (normalised job spec JSON), "resume" (checkpoint
     *  dir or null), "step" (global step the weights must be at)}. Writes a one-line reason into err on failure. */
    int (*job_load)(backend_t *b, const cJSON *job, char *err, size_t errlen);
    /** Runs forward+backward of the samples, ACCUMULATING gradients of the summed loss into the gradient buffer. */
    int (*run_mb)(backend_t *b, const int64_t *samples, int n, mb_result_t *out, char *err, size_t errlen);
    /** The accumulated gradient buffer: one contiguous float array. Valid until job_release. */
    float *(*grads)(backend_t *b, size_t *n);
    /** Applies the optimizer with the all-reduced gradients `g` (summed over workers, NOT yet normalised):
     *  g *= scale (1 / global target count), clip to max_grad_norm, AdamW at lr. Zeroes the accumulator.
     *  Writes the pre-clip norm into *grad_norm. Must be deterministic: every worker applies the same update. */
    int (*apply)(backend_t *b, float *g, double scale, double lr, int64_t step, double *grad_norm, char *err,
                 size_t errlen);
    /** Zeroes the accumulated gradients (a step is redone after a failure elsewhere). */
    void (*zero_grads)(backend_t *b);
    /** The training state a live worker hands a replacement joining the job: what apply changes (trainable
     *  weights, optimizer moments and step count) as one malloc'd buffer (*buf, *len; the caller frees). Frozen
     *  weights are not in it: the newcomer loads them with the job. Valid between steps (gradients zero). */
    int (*state_export)(backend_t *b, void **buf, size_t *len, char *err, size_t errlen);
    /** Replaces the training state with one state_export wrote on a worker of the same job. */
    int (*state_import)(backend_t *b, const void *buf, size_t len, char *err, size_t errlen);
    /** Writes a checkpoint into dir (which exists and is empty); trainer_state is added as trainer_state.json. */
    int (*checkpoint)(backend_t *b, const char *dir, const cJSON *trainer_state, char *err, size_t errlen);
    /** Drops the job's model and data. */
    void (*job_release)(backend_t *b);
    /* Device collectives (NCCL), optional: NULL in backends without them. When the coordinator relays a
     * communicator id with the peers, the compute thread all-reduces with dev_allreduce instead of the ZeroMQ ring,
     * and apply then ignores its `g` (the sum is already in the device gradients). */
    /** Rank 0 of a generation: writes a new communicator id (hex, NUL-terminated) into id. Returns 1 (written),
     *  0 (this job runs without device collectives: use the ring) or a negative error. */
    int (*dev_comm_id)(backend_t *b, char *id, size_t len);
    /** Joins the generation's communicator with rank 0's id; a previous one is closed first. Returns 0 or an
     *  error (LLAVA_ETIMEOUT, LLAVA_EABORTED when abort_fn said so, LLAVA_ECUDA). */
    int (*dev_comm_open)(backend_t *b, const char *id, int rank, int world, uint64_t generation, int timeout_ms,
                         int (*abort_fn)(void *), void *ud);
    /** Sums the accumulated gradients over the communicator's ranks on the device, out of place (under ZeRO-1: a
     *  reduce-scatter in place, each rank keeping the sum of its shard), or waits for the buckets dev_reduce_early
     *  launched; *sumsq gets the squared norm of the sum (unscaled).
     *  Returns as dev_comm_open; after a failure the communicator is closed. */
    int (*dev_allreduce)(backend_t *b, int timeout_ms, int (*abort_fn)(void *), void *ud, double *sumsq);
    /** After apply, when the coordinator's APPLY says a checkpoint or a handover follows: a backend whose
     *  optimizer state is sharded over the ranks (ZeRO-1) gathers the whole state into every rank's host model, so
     *  checkpoint and state_export see all of it. Every rank of the communicator calls it. Returns 0 at once when
     *  nothing is sharded; errors as dev_comm_open. */
    int (*dev_gather_state)(backend_t *b, int timeout_ms, int (*abort_fn)(void *), void *ud);
    /** This worker computes no more micro-batches of the step in this generation (MB {last} or DRAIN): the sum
     *  may start early. arm 1, right before the last run_mb: its backward launches the gradient buckets as they
     *  fill; arm 0, after it (or on DRAIN, once the queued micro-batches are done): every bucket not launched yet
     *  goes now. Nothing is waited for (dev_allreduce does). The sum is out of place: the accumulated gradients
     *  survive a new generation (dev_comm_close drops the pending buckets) for the redo. Returns 0 (also when the
     *  backend sums at REDUCE only, e.g. ZeRO-1) or an error, after which the communicator is closed. */
    int (*dev_reduce_early)(backend_t *b, int arm);
    /** Closes the communicator (a new generation, an abort). NULL-safe inside. */
    void (*dev_comm_close)(backend_t *b);
    void (*destroy)(backend_t *b);
} backend_ops_t;

struct backend {
    const backend_ops_t *ops;
    void *impl;
    int threads;
};

/** The simulated backend. `mb_ms`: milliseconds each micro-batch takes (sleep), 0 for none. */
int backend_sim_new(int mb_ms, backend_t **out);
/** The model backend (LLaVA on the CPU kernels) with `threads` compute threads. */
int backend_model_new(int threads, backend_t **out);
/** The model backend on `device`: "cpu", "cuda" (= cuda:0) or "cuda:N" (the model on that GPU, worker/model_cuda.h).
 *  Fails at once, with the reason logged, when the device does not exist: LLAVA_EINVAL (not a device name) or
 *  LLAVA_EUNSUPPORTED ("no CUDA device", or a build without the CUDA backend). */
int backend_model_new_device(int threads, const char *device, backend_t **out);
/** Parses a device name into *gpu (-1 for the CPU) and checks that the device exists; errors as above. */
int backend_model_device_parse(const char *device, int *gpu);
/** Calls ops->destroy and NULLs *pb. Safe on NULL. */
void backend_free(backend_t **pb);

#endif
