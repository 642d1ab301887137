/* The coordinator daemon: one ZeroMQ ROUTER endpoint for workers and clients, a durable state directory (job queue
 * and ledger in LMDB), a worker registry with heartbeats, and the job runner (plan -> dispatch -> reduce -> commit
 * -> apply -> checkpoint). One poll loop, timers, no busy waiting (redis ae.c style).
 * Run: llava-coordinator --help. Tested by tests/integration/coordinator_*.sh. */
#ifndef LLAVA_COORD_H
#define LLAVA_COORD_H

#include <signal.h>
#include <stdint.h>

#include "common/mpilaunch.h"

typedef struct {
    const char *bind;       /* e.g. tcp://127.0.0.1:5555 */
    const char *state_dir;  /* durable state (LMDB) */
    int spawn_workers;      /* local mode: fork/exec this many workers and replace the dead ones */
    const char *worker_exe; /* path of llava-worker for local mode */
    const char *worker_args;/* extra arguments for spawned workers (space separated) */
    int exit_when_idle;     /* exit once the queue is empty and no job runs (llava-run) */
    int mb_inflight;        /* micro-batches in flight per worker (pipelining), default 2 */
    const mpilaunch_t *mpi; /* under mpirun (rank 0): publish the endpoint, replace dead workers by MPI_Comm_spawn;
                               NULL = not under MPI. Owned by main. */
} coord_config_t;

typedef struct coord coord_t;

/** Opens the state, binds the endpoint, spawns local workers, or under MPI publishes the endpoint to the job's
 *  worker ranks (collective: every rank of the first launch must be starting). Returns 0 or a LLAVA_E* code. */
int coord_new(const coord_config_t *cfg, coord_t **out);
/** Runs the poll loop until *stop becomes non-zero (set by a signal handler in main) or, with exit_when_idle,
 *  the queue drains. Returns 0, or 1 if exit_when_idle and the last job failed. */
int coord_run(coord_t *c, volatile sig_atomic_t *stop);
/** The endpoint actually bound (with the port chosen when --bind asked for an ephemeral one). */
const char *coord_endpoint(const coord_t *c);
/** Stops spawned workers, closes sockets and state. Sets *pc to NULL. */
void coord_free(coord_t **pc);

#endif
