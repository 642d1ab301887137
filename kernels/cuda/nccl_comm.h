/* NCCL for the CUDA backend: one non-blocking communicator per generation (unique id relayed by the coordinator
 * as bytes), collectives that poll for completion with a deadline and an abort callback (so a dead peer cannot
 * hang a worker), ncclCommShrink to drop failed ranks, and gradient buckets all-reduced while backward runs.
 * Tested by tests/cuda/test_cuda_nccl.c (needs a GPU; single-process multi-rank over all visible devices). */
#ifndef LLAVA_KERNELS_CUDA_NCCL_COMM_H
#define LLAVA_KERNELS_CUDA_NCCL_COMM_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime.h>

#include "kernels/cuda/ops_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

#define NCCL_UID_BYTES 128 /* sizeof(ncclUniqueId) */

/** Called while a collective is waited for; returns nonzero to give up (the generation changed, shutdown).
 *  Same shape as the CPU ring's abort callback. */
typedef int (*nccl_abort_fn)(void *ud);

typedef struct nccl_comm nccl_comm_t;

/** Makes a new unique id (rank 0 of a generation; the coordinator relays the bytes to the other ranks). */
int nccl_uid_new(unsigned char uid[NCCL_UID_BYTES]);

/** Joins the communicator of `generation` as rank of world on CUDA device `device` (made current), non-blocking
 *  (ncclCommInitRankConfig with blocking = 0), polling until every rank has joined, timeout_ms passes (the
 *  communicator is aborted: LLAVA_ETIMEOUT) or abort_fn returns nonzero (LLAVA_EABORTED). abort_fn may be NULL.
 *  The caller owns *out (nccl_comm_close). Returns 0, LLAVA_EINVAL, LLAVA_ENOMEM, LLAVA_ECUDA, LLAVA_ETIMEOUT or
 *  LLAVA_EABORTED. */
int nccl_comm_open(nccl_comm_t **out, const unsigned char uid[NCCL_UID_BYTES], int world, int rank, int device,
                   uint64_t generation, int timeout_ms, nccl_abort_fn abort_fn, void *ud);
/** Finalizes (flushing pending work, bounded by timeout_ms) and destroys; aborts instead when the communicator
 *  failed or the flush times out. Sets *p = NULL. NULL-safe. */
void nccl_comm_close(nccl_comm_t **p, int timeout_ms);
/** ncclCommAbort: breaks any collective hung on this communicator (a peer died). The communicator is unusable
 *  afterwards (close it). Returns 0 or LLAVA_ECUDA. */
int nccl_comm_abort(nccl_comm_t *c);
/** A new communicator without the ranks in exclude[n_exclude] (ncclCommShrink with NCCL_SHRINK_ABORT, which
 *  first aborts the parent's pending operations); the survivors are renumbered in order. Every surviving rank
 *  calls it. *out is owned by the caller; the parent still needs nccl_comm_close. */
int nccl_comm_shrink(nccl_comm_t *c, const int *exclude, int n_exclude, uint64_t new_generation, int timeout_ms,
                     nccl_abort_fn abort_fn, void *ud, nccl_comm_t **out);

int nccl_comm_rank(const nccl_comm_t *c);
int nccl_comm_world(const nccl_comm_t *c);
uint64_t nccl_comm_generation(const nccl_comm_t *c);

/* Collectives (sum). Each enqueues on stream s and then waits for completion, polling cudaStreamQuery and
 * ncclCommGetAsyncError every 100 us until done, timeout_ms (abort: LLAVA_ETIMEOUT), abort_fn (abort:
 * LLAVA_EABORTED) or an asynchronous NCCL error (abort: LLAVA_ECUDA). In-place use is allowed as NCCL allows it
 * (allreduce: send == recv; reduce_scatter: recv == send + rank*count; allgather: send == recv + rank*count). */

/** recv[count] = sum over ranks of send[count]. */
int nccl_allreduce(nccl_comm_t *c, const void *send, void *recv, size_t count, cuda_dtype_t dt, cudaStream_t s,
                   int timeout_ms, nccl_abort_fn abort_fn, void *ud);
/** recv_count = count per rank: recv[count] = sum over ranks of send[rank*count .. +count]. */
int nccl_reduce_scatter(nccl_comm_t *c, const void *send, void *recv, size_t count, cuda_dtype_t dt, cudaStream_t s,
                        int timeout_ms, nccl_abort_fn abort_fn, void *ud);
/** recv[world*count] = every rank's send[count], in rank order. */
int nccl_allgather(nccl_comm_t *c, const void *send, void *recv, size_t count, cuda_dtype_t dt, cudaStream_t s,
                   int timeout_ms, nccl_abort_fn abort_fn, void *ud);
/** Sum of one double per rank (device pointer, in place): the global gradient norm^2 under ZeRO-1. */
int nccl_allreduce_f64(nccl_comm_t *c, double *buf, size_t count, cudaStream_t s, int timeout_ms,
                       nccl_abort_fn abort_fn, void *ud);
/** Waits for everything queued on s, with the same polling, deadline and abort as the collectives. */
int nccl_comm_wait(nccl_comm_t *c, cudaStream_t s, int timeout_ms, nccl_abort_fn abort_fn, void *ud);

/* ---------------------------------------------------------------------------------------------------------- */
/* Gradient buckets: overlap the all-reduce with backward                                                     */

/** Splits a flat gradient buffer send[count] (device, dtype dt) into buckets of bucket_elems elements, summed over
 *  the ranks into recv[count] (recv == send: in place; a separate recv leaves the accumulated gradients intact, so
 *  an all-reduce broken by a failure can be redone). The backward marks ranges whose gradient kernels it has
 *  ENQUEUED on compute_stream. Buckets are launched in DESCENDING index order, the order a backward fills them (it
 *  runs from the last parameters to the first): bucket k goes as soon as it is full and every bucket above it has
 *  gone. An event is recorded on compute_stream and the bucket's all-reduce runs on the bucketer's own stream
 *  behind it, so it overlaps the rest of the backward. The order is fixed, whatever a batch marks, so every rank
 *  issues the same collectives in the same order (NCCL matches them by order) even when one rank launches its
 *  buckets during a backward and another all at once (nccl_bucketer_launch_rest). */
typedef struct nccl_bucketer nccl_bucketer_t;

int nccl_bucketer_new(nccl_bucketer_t **out, nccl_comm_t *c, const void *send, void *recv, size_t count,
                      size_t bucket_elems, cuda_dtype_t dt, cudaStream_t compute_stream);
/** Marks send[offset, offset+count) ready (launching the buckets that may go). LLAVA_EINVAL when the range is
 *  outside the buffer or a bucket gets more marked elements than it holds (a range marked twice in one step). */
int nccl_bucketer_mark_ready(nccl_bucketer_t *b, size_t offset, size_t count);
/** Launches, in order, every bucket not launched yet (unmarked ranges are reduced as they are), without waiting.
 *  Returns 0 or LLAVA_ECUDA / LLAVA_ETIMEOUT (enqueue). */
int nccl_bucketer_launch_rest(nccl_bucketer_t *b);
/** nccl_bucketer_launch_rest, then waits for all buckets with deadline and abort as the collectives, makes
 *  compute_stream wait for the results, and resets for the next step. Returns 0, LLAVA_ETIMEOUT, LLAVA_EABORTED or
 *  LLAVA_ECUDA (the communicator is then aborted). */
int nccl_bucketer_finish(nccl_bucketer_t *b, int timeout_ms, nccl_abort_fn abort_fn, void *ud);
/** Number of buckets launched so far in this step (for tests and logs). */
int nccl_bucketer_launched(const nccl_bucketer_t *b);
/** Number of buckets. */
int nccl_bucketer_count(const nccl_bucketer_t *b);
/** Forgets the step's marks and launches without waiting (a new generation: abort the communicator first, so the
 *  launched collectives end). */
void nccl_bucketer_reset(nccl_bucketer_t *b);
/** Waits for the bucketer's stream (abort the communicator first if collectives may hang) and frees. NULL-safe. */
void nccl_bucketer_free(nccl_bucketer_t **p);

#ifdef __cplusplus
}
#endif

#endif
