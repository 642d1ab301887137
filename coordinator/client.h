/* A small client for the coordinator's endpoint, used by llavactl and llava-run: one request, one reply.
 * Tested by the integration tests that run llavactl and llava-run; client_shard_summary by test_client. */
#ifndef LLAVA_CLIENT_H
#define LLAVA_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

typedef struct client client_t;

/** Connects to endpoint (the connection is made lazily by ZeroMQ; errors show at the first request). */
int client_open(const char *endpoint, client_t **out);
void client_close(client_t **pc);
/** Sends a request of `type` with `body` (consumed; NULL = {}), waits up to timeout_ms for the reply.
 *  On success *reply is the reply body (caller deletes); a reply with ok=false returns LLAVA_EINVAL with its
 *  error text in err. No reply in time: LLAVA_ETIMEOUT ("is the coordinator running at ...?"). */
int client_request(client_t *c, int type, uint64_t job, cJSON *body, int timeout_ms, cJSON **reply, char *err,
                   size_t errlen);

/** Prints a human-readable status (job, progress bar, per-shard progress, workers) from a STATUS reply. */
void client_print_status(const cJSON *status, int color);
/** One-line progress for watch/llava-run: "\r[#####.....] step 12/40 ... shards 45% 40%" without newline. */
void client_print_progress_line(const cJSON *status);
/** The current epoch's per-shard progress of a STATUS reply's "run" object, compact for one line: "" without
 *  shards; "shards 45% 40%" for up to 4; beyond, one character per shard ("shards 9#30", a digit = tens of
 *  percent done, '#' = done), at most 64, then "+N". Always NUL-terminated within len. */
void client_shard_summary(const cJSON *run, char *out, size_t len);

#endif
