/* Internals shared by the coordinator's modules: coord.c (sockets, registry, liveness), jobrun.c (the running
 * job's state machine) and service.c (submit, status, cancel). Not a public API. */
#ifndef LLAVA_COORD_INTERNAL_H
#define LLAVA_COORD_INTERNAL_H

#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <cjson/cJSON.h>

#include "common/wire.h"
#include "coordinator/coord.h"
#include "coordinator/datainfo.h"
#include "coordinator/plan.h"
#include "coordinator/state.h"

enum { W_IDLE = 0, W_LOADING, W_READY, W_BUSY, W_DEAD };

typedef struct {
    uint8_t ident[WIRE_MAX_IDENTITY];
    size_t idlen;
    int id;            /* registration number, index into coord.w */
    char host[64];
    char device[32];
    int pid, threads;
    int64_t mem_bytes;
    pid_t spawned_pid; /* > 0 when this coordinator forked it */
    int replaceable;   /* under MPI: its death asks for a replacement (0 once it re-registered itself) */
    uint64_t held_job; /* from REGISTER: the worker still holds this job's training state ... */
    int64_t held_step; /* ... with steps [0, held_step) applied (a coordinator restart goes on from it) */
    int state;
    double last_seen, last_progress_at, died_at;
    double died_wall;  /* wall clock (Unix seconds) when declared dead, for tools that time failures */
    int64_t progress;
    int rank;          /* in the running job's generation; -1 if none */
    char endpoint[128];
    char nccl_id[272]; /* GPU workers: rank 0's NCCL unique id (hex) for this generation, relayed with the peers */
    int inflight;      /* micro-batches sent and not reported */
    int64_t mbs_done;
    double mb_ms;      /* moving average time per micro-batch */
    double step_ms;
    int64_t reduced_step;
    uint32_t reduced_gen;
    uint32_t ring_gen; /* generation whose ring endpoint this worker reported */
    char dead_reason[160];
    int unroutable;    /* a send found it gone; coord_settle declares it dead (never inside a loop over members) */
} worker_t;

typedef struct {
    int owner; /* worker id, -1 = pending */
    uint8_t done;
    double sent_at;
    double loss_sum;
    int64_t n_targets, tokens;
} mbstate_t;

enum { P_WAIT_WORKERS = 0, P_LOADING, P_COMPUTE, P_REDUCE, P_FINAL_CKPT };

typedef struct {
    uint64_t id;
    cJSON *rec;         /* the stored job record (owns spec) */
    const cJSON *spec;
    char name[128];
    char run_dir[1024];
    FILE *metrics;
    datainfo_t data;
    int64_t global_batch, mb_tokens, epochs, steps_per_epoch, total_steps, ckpt_every, ckpt_keep;
    uint64_t seed;
    int group_by_length, max_seq_len;
    int ckpt_every_epoch; /* eval.every_epoch: an epoch-<N> checkpoint at the end of each epoch but the last */
    double lr, warmup_ratio;
    char schedule[16];
    int want_workers, max_replacements, replacements;
    int phase;
    uint32_t gen;
    int64_t step;       /* global step in progress (0-based, over all epochs) */
    int64_t start_step; /* where this run started (resume point) */
    plan_t plan;
    int64_t plan_epoch;
    mbstate_t *mbs;
    int64_t nmb, mb_first, mb_cursor;
    int *members;       /* worker ids in rank order */
    int nmembers;
    int n_reduced;
    int ring_connected, reduce_pending;
    double grad_norm, step_lr;
    double t_start, t_wait_start, t_step_start;
    int64_t samples_run, tokens_run; /* committed by this run, for rates */
    double last_loss;
    int64_t *shard_done;
    int ckpt_pending;
    int64_t last_ckpt_step;
    int64_t recoveries;
    /* a replacement joining at the next step boundary (-1: none): loading, then admitted with a member's state */
    int joiner, joiner_loaded, join_pending, donor;
    char joiner_ep[256];
    double join_at;
    int64_t joins;
    int64_t committed_at_start; /* ledger steps committed when this run (re)started; a commit below is a replay */
    int64_t replayed;           /* steps recomputed because they were committed before this run started */
    int resumed_in_memory;      /* this run went on from the workers' memory, not from a checkpoint */
} jobrun_t;

struct coord {
    coord_config_t cfg;
    char endpoint[256];
    void *zctx, *sock, *mon;
    state_t *st;
    worker_t *w;
    int nw, capw;
    jobrun_t *job;
    int heartbeat_ms, hang_timeout_ms;
    pid_t spawned[256];
    int nspawned;
    char worker_ep[256];  /* the endpoint workers connect to (under MPI: the published one) */
    char hostname[64];
    int replace_q[256];   /* under MPI: dead workers (ids) waiting for an MPI_Comm_spawn replacement */
    int nreplace;
    int stopping;
    int last_job_failed;
    double idle_since;
    double probe_until, next_probe; /* probing again after a disconnect (see on_monitor) */
    uint64_t messages;
    int64_t jobs_seen; /* jobs submitted to or resumed by this process (exit_when_idle waits for one) */
};

double coord_now(void);
/** Wall-clock Unix time in seconds (fractional): for timestamps other processes compare (ledger, status). */
double coord_wall(void);
int coord_send(coord_t *c, worker_t *w, const wire_msg_t *m);
void coord_worker_dead(coord_t *c, worker_t *w, const char *why);
const char *coord_worker_state_name(int s);

/* service.c */
int coord_submit(coord_t *c, const cJSON *req, uint64_t *job, char *err, size_t errlen);
cJSON *coord_status_json(coord_t *c, uint64_t job, char *err, size_t errlen);
cJSON *coord_workers_json(coord_t *c);
void coord_cancel(coord_t *c, uint64_t job, char *err, size_t errlen);
void coord_schedule(coord_t *c);

/* jobrun.c */
int jobrun_start(coord_t *c, uint64_t id);
void jobrun_on_msg(coord_t *c, worker_t *w, const wire_msg_t *m);
void jobrun_worker_lost(coord_t *c, worker_t *w);
int jobrun_worker_busy(const coord_t *c, const worker_t *w);
void jobrun_tick(coord_t *c);
void jobrun_finish(coord_t *c, const char *state, const char *error);
void jobrun_free(coord_t *c);
cJSON *jobrun_status_json(const coord_t *c);

/* Spec access by dotted path ("train.lr"), with defaults. */
const cJSON *spec_get(const cJSON *spec, const char *path);
double spec_num(const cJSON *spec, const char *path, double dflt);
const char *spec_str(const cJSON *spec, const char *path, const char *dflt);

#endif
