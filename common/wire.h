/* The wire protocol between llavactl, the coordinator and workers (ZeroMQ). One message = one ZeroMQ frame
 * (after any ROUTER identity frame): a fixed 32-byte little-endian header followed by a JSON body.
 * Versioned, bounds-checked; every message carries (job, generation, step). Spec: docs/protocol.md.
 * Tested by tests/unit/test_wire.c. */
#ifndef LLAVA_WIRE_H
#define LLAVA_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#ifdef __cplusplus
extern "C" {
#endif

#define WIRE_MAGIC 0x4156414cu /* "LAVA" little-endian */
#define WIRE_VERSION 1
#define WIRE_HEADER_BYTES 32
#define WIRE_MAX_BODY (16u << 20) /* larger messages are dropped */
#define WIRE_MAX_IDENTITY 255

typedef enum {
    MSG_NONE = 0,
    /* worker -> coordinator */
    MSG_REGISTER = 1,  /* {host, pid, device, threads, mem_bytes, held_job?, held_step?} */
    MSG_HEARTBEAT,     /* {state, step} */
    MSG_READY,         /* {endpoint}: model loaded, ring endpoint bound */
    MSG_MB_DONE,       /* {mb, loss_sum, n_targets, samples, ms} */
    MSG_REDUCED,       /* {grad_norm, ms}: all-reduce finished for step */
    MSG_APPLIED,       /* {ms}: optimizer step applied */
    MSG_CKPT_DONE,     /* {dir} */
    MSG_FAILED,        /* {error}: the worker cannot continue this job */
    MSG_STATE_LOADED,  /* {error?}: a joining worker holds the training state of `step` (or could not get it) */
    /* coordinator -> worker */
    MSG_WELCOME = 32,  /* {worker_id, heartbeat_ms} */
    MSG_JOB,           /* {spec, ...}: load the model for this job */
    MSG_GENERATION,    /* {rank, world}: a new membership; bind a ring endpoint, answer READY {endpoint} */
    MSG_MB,            /* {mb, samples[], last?}: compute this micro-batch, accumulate (last: the step's final one) */
    MSG_REDUCE,        /* {n_targets, lr}: all-reduce the step's gradients */
    MSG_APPLY,         /* {}: the step is committed; apply the update */
    MSG_CKPT,          /* {dir}: write a checkpoint */
    MSG_ABORT,         /* {reason}: drop the step's in-flight work (new generation follows) */
    MSG_RELEASE,       /* {}: job over; unload and wait for the next */
    MSG_SHUTDOWN,      /* {}: exit */
    MSG_PEERS,         /* {peers[], nccl_id?}: every member bound its endpoint for this generation; connect the ring (GPU: and NCCL) */
    MSG_STATE_SEND,    /* {endpoint}: push the training state (after APPLY of step-1) to a joining worker */
    MSG_STATE_RECV,    /* {}: receive the training state of `step` on the endpoint reported in READY */
    MSG_DRAIN,         /* {}: no more micro-batches for you in this step and generation (GPU: launch the buckets) */
    /* llavactl <-> coordinator */
    MSG_SUBMIT = 64,   /* {spec} -> MSG_REPLY {job} */
    MSG_STATUS,        /* {job?} -> MSG_REPLY {...} */
    MSG_CANCEL,        /* {job} -> MSG_REPLY */
    MSG_WORKERS,       /* {} -> MSG_REPLY {workers[]} */
    MSG_LEDGER,        /* {job, from, to} -> MSG_REPLY {steps[]} */
    MSG_REPLY = 96,    /* {ok, error?, ...} */
    MSG_TYPE_MAX
} msg_type_t;

typedef struct {
    uint16_t type;
    uint64_t job;        /* 0: none */
    uint32_t generation; /* 0: none */
    int64_t step;        /* -1: none */
    cJSON *body;         /* owned by the message; never NULL after wire_decode (an empty object at least) */
} wire_msg_t;

/** Name of a message type ("MB_DONE"), or "?" for an unknown one. */
const char *wire_type_name(int type);

/** Encodes msg into a malloc'd buffer (*out, *len). The caller frees *out. Returns 0 or LLAVA_ENOMEM/EINVAL. */
int wire_encode(const wire_msg_t *msg, uint8_t **out, size_t *len);
/** Decodes and checks one frame: size, magic, version, type, header/body bounds, JSON object body.
 *  On success the caller owns msg->body (free with wire_msg_clear). On failure returns LLAVA_EFORMAT (or
 *  LLAVA_EUNSUPPORTED for another protocol version) and writes a reason into why. */
int wire_decode(const uint8_t *buf, size_t len, wire_msg_t *msg, char *why, size_t whylen);
/** Frees the body and zeroes msg. */
void wire_msg_clear(wire_msg_t *msg);
/** Starts a message: sets header fields and a fresh empty JSON object body. Returns 0 or LLAVA_ENOMEM. */
int wire_msg_init(wire_msg_t *msg, int type, uint64_t job, uint32_t generation, int64_t step);

/** Sends msg on a ZeroMQ socket; with identity (ROUTER sockets) an identity frame goes first. Does not consume
 *  msg. flags: 0 or ZMQ_DONTWAIT. Returns 0, LLAVA_ENET, or LLAVA_ETIMEOUT when DONTWAIT would block. */
int wire_send(void *sock, const uint8_t *identity, size_t idlen, const wire_msg_t *msg, int flags);
/** Receives one message. For ROUTER sockets pass identity/idlen to get the sender's identity. A malformed message
 *  is consumed, logged and reported as LLAVA_EFORMAT (the caller drops it and goes on). flags: 0 or ZMQ_DONTWAIT. */
int wire_recv(void *sock, uint8_t *identity, size_t *idlen, wire_msg_t *msg, int flags);

/* JSON body helpers with defaults; they never fail (a missing or wrong-typed field yields the default). */
double wire_get_num(const cJSON *body, const char *key, double dflt);
int64_t wire_get_i64(const cJSON *body, const char *key, int64_t dflt);
const char *wire_get_str(const cJSON *body, const char *key, const char *dflt);
/** Reads an array of non-negative integers; returns its length, or -1 if absent, not an array, longer than
 *  max_n or holding anything but integers >= 0. *out is malloc'd (caller frees). */
int64_t wire_get_i64_array(const cJSON *body, const char *key, int64_t max_n, int64_t **out);

#ifdef __cplusplus
}
#endif

#endif
