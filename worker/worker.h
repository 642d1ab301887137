/* The worker daemon: registers with the coordinator, heartbeats, and drives a compute backend through jobs.
 * Two threads (CZMQ zactor style): the main thread owns the coordinator socket, the heartbeat timer and the
 * generation fence; the compute thread runs micro-batches, the all-reduce and checkpoints, fed over an inproc pipe.
 * Run: llava-worker --help. Tested by tests/integration/coordinator_*.sh. */
#ifndef LLAVA_WORKER_H
#define LLAVA_WORKER_H

#include <signal.h>

typedef struct {
    const char *coordinator; /* endpoint, e.g. tcp://127.0.0.1:5555 */
    const char *backend;     /* "model" or "sim" */
    const char *device;      /* "cpu" (or "cuda:N") */
    const char *bind_host;   /* address the all-reduce endpoint binds (default 127.0.0.1) */
    int threads;             /* compute threads */
    int sim_mb_ms;           /* sim backend: milliseconds per micro-batch */
} worker_config_t;

/** Runs the worker until *stop is set, SHUTDOWN arrives, or a fatal error. Returns a process exit code. */
int worker_run(const worker_config_t *cfg, volatile sig_atomic_t *stop);

#endif
