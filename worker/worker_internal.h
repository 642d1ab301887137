/* Internals shared by the worker's two threads (worker.c: I/O; worker_compute.c: compute). Not a public API. */
#ifndef LLAVA_WORKER_INTERNAL_H
#define LLAVA_WORKER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "worker/backend.h"
#include "worker/worker.h"

typedef struct {
    worker_config_t cfg;
    void *zctx, *sock, *pipe;
    char pipe_ep[64];
    pthread_t thread;
    backend_t *backend;
    int welcomed, worker_id, heartbeat_ms;
    int reg_pending;                 /* asked to register again: waiting for the compute thread's held state */
    double registered_at, last_heard;
    /* shared between the threads */
    atomic_int_least64_t job;        /* running job id, 0 = none */
    atomic_int_least64_t generation; /* latest generation the coordinator announced */
    atomic_int_least64_t fence;      /* bumped on every generation change / abort / release */
    atomic_int_least64_t progress;   /* bumped by the compute thread as work advances */
    atomic_int_least64_t held_job;   /* job whose training state the backend holds (0: none) ... */
    atomic_int_least64_t held_step;  /* ... with every step before this one applied */
    atomic_int quit, compute_exited, compute_failed;
} worker_ctx_t;

/** The compute thread's entry point (arg: worker_ctx_t*). */
void *worker_compute_main(void *arg);

#endif
