/* The coordinator's durable state: one LMDB environment in the state directory holding the job queue and the
 * ledger of committed steps. Every write is one fsync'd LMDB transaction, so a crash loses nothing committed.
 * Tested by tests/unit/test_state.c. */
#ifndef LLAVA_STATE_H
#define LLAVA_STATE_H

#include <stdint.h>

#include <cjson/cJSON.h>

typedef struct state state_t;

/* Job states as stored: queued -> running -> done | failed | cancelled. */
#define JOB_QUEUED "queued"
#define JOB_RUNNING "running"
#define JOB_DONE "done"
#define JOB_FAILED "failed"
#define JOB_CANCELLED "cancelled"

/** Opens (creating if needed) the state directory `dir` and its LMDB environment. Returns 0 or LLAVA_EIO/EDB. */
int state_open(const char *dir, state_t **out);
void state_close(state_t **ps);
/** Bytes free for unprivileged writes on the state directory's file system, or -1 if unknown. */
int64_t state_free_bytes(const state_t *s);
/** Frees the space state_open held back (1 MiB in space.reserve) so the end of a job can still be recorded on a
 *  full disk. The next state_open holds it back again. */
void state_release_reserve(state_t *s);
const char *state_dir(const state_t *s);

/** Queues a job. `job` is a JSON object (name, spec, ...); the store adds id, state "queued" and submitted_at.
 *  Does not consume `job`. Sets *id (ids start at 1 and are never reused). */
int state_job_add(state_t *s, const cJSON *job, uint64_t *id);
/** Replaces the stored fields named in `patch` (shallow merge) of job id. LLAVA_ENOTFOUND if no such job. */
int state_job_update(state_t *s, uint64_t id, const cJSON *patch);
/** Reads job id into a new cJSON object (*out, caller deletes). LLAVA_ENOTFOUND if absent. */
int state_job_get(state_t *s, uint64_t id, cJSON **out);
/** All jobs, oldest first, as a new JSON array (*out, caller deletes). */
int state_job_list(state_t *s, cJSON **out);
/** The oldest job in state "queued" or "running" (a running one first: it was interrupted), or 0 if none. */
int state_job_next(state_t *s, uint64_t *id);

/** Commits step `step` (global step index over all epochs) of job `id` with the given entry (not consumed).
 *  Committing the same step twice is refused with LLAVA_EINVAL unless the micro-batch sample lists are equal
 *  (a replay after a restart), in which case the first commit is kept. */
int state_ledger_commit(state_t *s, uint64_t id, int64_t step, const cJSON *entry);
/** Reads the entry of one step (*out, caller deletes). LLAVA_ENOTFOUND if not committed. */
int state_ledger_get(state_t *s, uint64_t id, int64_t step, cJSON **out);
/** Highest committed step of job id, or -1 when none. */
int state_ledger_last(state_t *s, uint64_t id, int64_t *step);
/** Entries of steps [from, to] (inclusive; to < 0: to the end) as a new JSON array. */
int state_ledger_range(state_t *s, uint64_t id, int64_t from, int64_t to, cJSON **out);

#endif
