/* CPU collective: ring all-reduce (sum) of one float (or double) buffer across the workers of one generation, over
 * ZeroMQ on TCP. Abortable (deadline + abort callback) so a dead peer or a generation change never hangs a step.
 * Tested by tests/unit/test_collective.c; benchmarked against torch.distributed/gloo by bench/bench_allreduce.sh.
 *
 * Life cycle, per generation (membership comes from the coordinator):
 *   comm_create(&cfg, &c);  comm_bind(c, &ep);  -> send ep to the coordinator, receive every rank's endpoint
 *   comm_connect(c, peers, world);  comm_allreduce(...) once per step;  comm_destroy(&c) on abort or new generation.
 *
 * Sockets: each rank binds one PULL (messages from its left neighbour, rank-1) and connects one PUSH to its right
 * neighbour (rank+1). Every send is ZMQ_DONTWAIT and only attempted when zmq_poll reports POLLOUT, and the receive
 * side is polled on every loop turn, so a full queue (backpressure: SNDHWM/RCVHWM of a few chunks) stalls only the
 * sender and every rank keeps draining its input: no cycle of blocked sends can form around the ring.
 *
 * Algorithm: the buffer is cut into `world` segments (segment j = [n*j/world, n*(j+1)/world)), each cut into pieces of
 * cfg.chunk_bytes. Step s = 0 .. 2*(world-1)-1 sends segment (rank-s) mod world to the right and receives segment
 * (rank-s-1) mod world from the left; steps < world-1 add the received piece in (reduce-scatter), later steps copy
 * it (all-gather). Piece k of step s is sent as soon as piece k of step s-1 has arrived, so the steps pipeline and no
 * second copy of the buffer exists. Sends are zero-copy (ZeroMQ reads the pieces from the caller's buffer); a
 * received piece is added or copied from ZeroMQ's message into the buffer.
 * Summation order (deterministic for a given world size and buffer): element i of segment j is
 *   ((x[j] + x[j+1]) + x[j+2]) + ... + x[j+world-1]      (rank indices mod world, fp32 for comm_allreduce)
 * computed once, on one rank, and then copied to every other rank, so all ranks get bit-identical results. A
 * different world size changes the segment boundaries and so the order: results agree "up to summation order".
 *
 * Every message starts with a header (job-id hash, generation, step, kind, sender rank, piece index, offsets). A
 * message from another job or generation, or a malformed one, is dropped and logged, never an error by itself. */
#ifndef LLAVA_WORKER_COLLECTIVE_H
#define LLAVA_WORKER_COLLECTIVE_H

#include <stddef.h>
#include <stdint.h>

typedef struct comm comm_t;

typedef struct {
    int rank;               /* 0 .. world-1 */
    int world;              /* number of ranks in this generation, >= 1 */
    uint64_t generation;    /* membership epoch; messages of any other generation are dropped */
    const char *job_id;     /* job these ranks train (copied; NULL = ""); messages of any other job are dropped */
    const char *bind_addr;  /* interface address to bind (copied); NULL = "127.0.0.1". Use a concrete address the
                               peers can reach (the reported endpoint contains it), not "*" or 0.0.0.0 */
    size_t chunk_bytes;     /* payload per message; 0 = 1 MiB */
    int hwm;                /* messages queued per direction before backpressure; 0 = 8 */
} comm_config_t;

/** Polled during a collective (at most every ~20 ms); a non-zero return aborts it with LLAVA_EABORTED. */
typedef int (*comm_abort_fn)(void *ud);

/** Creates a communicator for one generation. *out is owned by the caller: free with comm_destroy.
 *  Returns 0, LLAVA_EINVAL (bad rank/world/chunk), LLAVA_ENOMEM or LLAVA_ENET. */
int comm_create(const comm_config_t *cfg, comm_t **out);

/** Binds this rank's PULL socket on an ephemeral port of cfg.bind_addr. *endpoint ("tcp://ADDR:PORT") is owned by
 *  the comm, valid until comm_destroy. world == 1: binds nothing, *endpoint = "". Returns 0, LLAVA_ENET, EINVAL. */
int comm_bind(comm_t *c, const char **endpoint);

/** Connects to the right neighbour; peers[i] is rank i's endpoint from its comm_bind, npeers must equal world
 *  (world == 1: nothing to do, peers may be NULL). Call after comm_bind. Returns 0, LLAVA_EINVAL or LLAVA_ENET. */
int comm_connect(comm_t *c, const char *const *peers, int npeers);

/** Sums buf[0..n) over all ranks in place; every rank must call it with the same n and step. On success every
 *  rank holds bit-identical bytes. timeout_ms (> 0) is the longest time without progress (no piece sent or
 *  received) before giving up; abort_fn (may be NULL) is polled with abort_ud.
 *  Returns 0, LLAVA_ETIMEOUT, LLAVA_EABORTED, LLAVA_EINVAL, LLAVA_ENOMEM or LLAVA_ENET; on any failure buf holds
 *  partial sums and the comm must be destroyed (its queues may hold pieces of the failed step) BEFORE buf is
 *  freed or reused: ZeroMQ sends pieces straight from buf (zero copy) and releases them only in comm_destroy.
 *  On success ZeroMQ holds no reference to buf. */
int comm_allreduce(comm_t *c, float *buf, size_t n, uint64_t step, int timeout_ms, comm_abort_fn abort_fn,
                   void *abort_ud);

/** As comm_allreduce for doubles (loss sum, token count ...), summed in double on the same ring. */
int comm_allreduce_f64(comm_t *c, double *buf, size_t n, uint64_t step, int timeout_ms, comm_abort_fn abort_fn,
                       void *abort_ud);

/** Number of messages dropped so far (other job/generation, stale step, malformed). For tests and status. */
uint64_t comm_dropped(const comm_t *c);

/** Closes the sockets with ZMQ_LINGER 0 (never blocks on unsent data), terminates the comm's own ZeroMQ context
 *  (after which ZeroMQ holds no pointer into any buffer passed to comm_allreduce), frees *c and
 *  sets it to NULL. NULL or *c == NULL is a no-op. */
void comm_destroy(comm_t **c);

#endif
