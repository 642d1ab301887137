/* Wire protocol encode/decode and ZeroMQ send/receive (see wire.h, docs/protocol.md).
 * Tested by tests/unit/test_wire.c, including a mutation loop over encoded messages. */
#include "common/wire.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/err.h"

static const char *k_names[MSG_TYPE_MAX] = {
    [MSG_REGISTER] = "REGISTER", [MSG_HEARTBEAT] = "HEARTBEAT", [MSG_READY] = "READY",
    [MSG_MB_DONE] = "MB_DONE",   [MSG_REDUCED] = "REDUCED",     [MSG_APPLIED] = "APPLIED",
    [MSG_CKPT_DONE] = "CKPT_DONE", [MSG_FAILED] = "FAILED",     [MSG_WELCOME] = "WELCOME",
    [MSG_STATE_LOADED] = "STATE_LOADED", [MSG_STATE_SEND] = "STATE_SEND", [MSG_STATE_RECV] = "STATE_RECV",
    [MSG_DRAIN] = "DRAIN",
    [MSG_JOB] = "JOB",           [MSG_GENERATION] = "GENERATION", [MSG_MB] = "MB",
    [MSG_REDUCE] = "REDUCE",     [MSG_APPLY] = "APPLY",         [MSG_CKPT] = "CKPT",
    [MSG_ABORT] = "ABORT",       [MSG_RELEASE] = "RELEASE",     [MSG_SHUTDOWN] = "SHUTDOWN",  [MSG_PEERS] = "PEERS",
    [MSG_SUBMIT] = "SUBMIT",     [MSG_STATUS] = "STATUS",       [MSG_CANCEL] = "CANCEL",
    [MSG_WORKERS] = "WORKERS",   [MSG_LEDGER] = "LEDGER",       [MSG_REPLY] = "REPLY",
};

const char *wire_type_name(int type) {
    if (type <= 0 || type >= MSG_TYPE_MAX || !k_names[type]) return "?";
    return k_names[type];
}

static void put_u16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put_u32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put_u64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t get_u32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* Header: magic u32 | version u16 | type u16 | job u64 | generation u32 | step i64 | body_len u32 */
int wire_encode(const wire_msg_t *msg, uint8_t **out, size_t *len) {
    int rc = 0;
    char *json = NULL;
    uint8_t *buf = NULL;
    *out = NULL;
    *len = 0;
    CHECK_GOTO(msg->type > 0 && msg->type < MSG_TYPE_MAX, LLAVA_EINVAL, "wire_encode: bad type %d", msg->type);
    json = msg->body ? cJSON_PrintUnformatted(msg->body) : NULL;
    const char *text = json ? json : "{}";
    size_t blen = strlen(text);
    CHECK_GOTO(blen <= WIRE_MAX_BODY, LLAVA_EINVAL, "wire_encode: %s body of %zu bytes exceeds the limit",
               wire_type_name(msg->type), blen);
    buf = malloc(WIRE_HEADER_BYTES + blen);
    ALLOC_CHECK_GOTO(buf);
    put_u32(buf, WIRE_MAGIC);
    put_u16(buf + 4, WIRE_VERSION);
    put_u16(buf + 6, msg->type);
    put_u64(buf + 8, msg->job);
    put_u32(buf + 16, msg->generation);
    put_u64(buf + 20, (uint64_t)msg->step);
    put_u32(buf + 28, (uint32_t)blen);
    memcpy(buf + WIRE_HEADER_BYTES, text, blen);
    *out = buf;
    *len = WIRE_HEADER_BYTES + blen;
    buf = NULL;
cleanup:
    free(json);
    free(buf);
    return rc;
}

int wire_decode(const uint8_t *buf, size_t len, wire_msg_t *msg, char *why, size_t whylen) {
    memset(msg, 0, sizeof *msg);
    if (len < WIRE_HEADER_BYTES) {
        snprintf(why, whylen, "frame of %zu bytes is shorter than the %d-byte header", len, WIRE_HEADER_BYTES);
        return LLAVA_EFORMAT;
    }
    if (get_u32(buf) != WIRE_MAGIC) {
        snprintf(why, whylen, "bad magic 0x%08x", get_u32(buf));
        return LLAVA_EFORMAT;
    }
    if (get_u16(buf + 4) != WIRE_VERSION) {
        snprintf(why, whylen, "protocol version %u, this build speaks %d", get_u16(buf + 4), WIRE_VERSION);
        return LLAVA_EUNSUPPORTED;
    }
    uint16_t type = get_u16(buf + 6);
    uint32_t blen = get_u32(buf + 28);
    if (type == 0 || type >= MSG_TYPE_MAX || !k_names[type]) {
        snprintf(why, whylen, "unknown message type %u", type);
        return LLAVA_EFORMAT;
    }
    if (blen > WIRE_MAX_BODY || (size_t)blen != len - WIRE_HEADER_BYTES) {
        snprintf(why, whylen, "%s: body length %u does not match frame length %zu", k_names[type], blen, len);
        return LLAVA_EFORMAT;
    }
    const char *end = NULL;
    cJSON *body = cJSON_ParseWithLengthOpts((const char *)buf + WIRE_HEADER_BYTES, blen, &end, 0);
    if (!body || !cJSON_IsObject(body)) {
        snprintf(why, whylen, "%s: body is not a JSON object", k_names[type]);
        cJSON_Delete(body);
        return LLAVA_EFORMAT;
    }
    msg->type = type;
    msg->job = get_u64(buf + 8);
    msg->generation = get_u32(buf + 16);
    msg->step = (int64_t)get_u64(buf + 20);
    msg->body = body;
    return 0;
}

void wire_msg_clear(wire_msg_t *msg) {
    cJSON_Delete(msg->body);
    memset(msg, 0, sizeof *msg);
}

int wire_msg_init(wire_msg_t *msg, int type, uint64_t job, uint32_t generation, int64_t step) {
    memset(msg, 0, sizeof *msg);
    msg->type = (uint16_t)type;
    msg->job = job;
    msg->generation = generation;
    msg->step = step;
    msg->body = cJSON_CreateObject();
    return msg->body ? 0 : LLAVA_ENOMEM;
}

static void free_buf(void *data, void *hint) {
    (void)hint;
    free(data);
}

int wire_send(void *sock, const uint8_t *identity, size_t idlen, const wire_msg_t *msg, int flags) {
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = wire_encode(msg, &buf, &len);
    if (rc) return rc;
    if (identity && zmq_send(sock, identity, idlen, ZMQ_SNDMORE | flags) < 0) {
        int e = zmq_errno();
        free(buf);
        if (e == EAGAIN) return LLAVA_ETIMEOUT;
        if (e == EHOSTUNREACH) return LLAVA_ENOTFOUND; /* ROUTER_MANDATORY: the peer is gone */
        LOG_W("zmq_send identity (%s): %s", wire_type_name(msg->type), zmq_strerror(e));
        return LLAVA_ENET;
    }
    zmq_msg_t m;
    if (zmq_msg_init_data(&m, buf, len, free_buf, NULL) != 0) {
        free(buf);
        return LLAVA_ENOMEM;
    }
    if (zmq_msg_send(&m, sock, flags) < 0) {
        int e = zmq_errno();
        zmq_msg_close(&m);
        if (e == EAGAIN) return LLAVA_ETIMEOUT;
        if (e == EHOSTUNREACH) return LLAVA_ENOTFOUND;
        LOG_W("zmq_msg_send (%s): %s", wire_type_name(msg->type), zmq_strerror(e));
        return LLAVA_ENET;
    }
    return 0;
}

/* Reads and discards the remaining frames of a multi-part message. */
static void drain_more(void *sock) {
    int more = 0;
    size_t sz = sizeof more;
    while (zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &sz) == 0 && more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, 0) < 0) {
            zmq_msg_close(&m);
            return;
        }
        zmq_msg_close(&m);
    }
}

int wire_recv(void *sock, uint8_t *identity, size_t *idlen, wire_msg_t *msg, int flags) {
    memset(msg, 0, sizeof *msg);
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (identity) {
        if (zmq_msg_recv(&m, sock, flags) < 0) {
            int e = zmq_errno();
            zmq_msg_close(&m);
            return e == EAGAIN ? LLAVA_ETIMEOUT : (e == EINTR ? LLAVA_EABORTED : LLAVA_ENET);
        }
        size_t n = zmq_msg_size(&m);
        if (n > WIRE_MAX_IDENTITY) n = WIRE_MAX_IDENTITY;
        memcpy(identity, zmq_msg_data(&m), n);
        *idlen = n;
        zmq_msg_close(&m);
        zmq_msg_init(&m);
        int more = 0;
        size_t sz = sizeof more;
        zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &sz);
        if (!more) {
            zmq_msg_close(&m);
            LOG_W("dropped a message with no body frame");
            return LLAVA_EFORMAT;
        }
        if (zmq_msg_recv(&m, sock, 0) < 0) {
            zmq_msg_close(&m);
            return LLAVA_ENET;
        }
    } else if (zmq_msg_recv(&m, sock, flags) < 0) {
        int e = zmq_errno();
        zmq_msg_close(&m);
        return e == EAGAIN ? LLAVA_ETIMEOUT : (e == EINTR ? LLAVA_EABORTED : LLAVA_ENET);
    }
    char why[160];
    int rc = wire_decode(zmq_msg_data(&m), zmq_msg_size(&m), msg, why, sizeof why);
    zmq_msg_close(&m);
    drain_more(sock);
    if (rc) LOG_W("dropped a malformed message: %s", why);
    return rc;
}

double wire_get_num(const cJSON *body, const char *key, double dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, key);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

int64_t wire_get_i64(const cJSON *body, const char *key, int64_t dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, key);
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || fabs(v->valuedouble) > 9007199254740992.0) return dflt;
    return (int64_t)v->valuedouble;
}

const char *wire_get_str(const cJSON *body, const char *key, const char *dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, key);
    return cJSON_IsString(v) && v->valuestring ? v->valuestring : dflt;
}

int64_t wire_get_i64_array(const cJSON *body, const char *key, int64_t max_n, int64_t **out) {
    *out = NULL;
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(body, key);
    if (!cJSON_IsArray(a)) return -1;
    int64_t n = cJSON_GetArraySize(a);
    if (n > max_n) return -1;
    int64_t *v = malloc((size_t)(n ? n : 1) * sizeof *v);
    if (!v) return -1;
    int64_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, a) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > 9007199254740992.0 ||
            e->valuedouble != floor(e->valuedouble)) {
            free(v);
            return -1;
        }
        v[i++] = (int64_t)e->valuedouble;
    }
    *out = v;
    return n;
}
