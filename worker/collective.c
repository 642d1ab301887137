/* Ring all-reduce over ZeroMQ PUSH/PULL for the CPU backend (algorithm, sockets and summation order: collective.h).
 * Tested by tests/unit/test_collective.c (1-4 ranks, stale/malformed messages, dead peer, abort);
 * benchmarked by bench/bench_allreduce.sh. */
#include "worker/collective.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "common/err.h"

#define COMM_MAGIC 0x52415231u /* "1RAR" little-endian: ring all-reduce */
#define COMM_VERSION 1
#define COMM_KIND_F32 1
#define COMM_KIND_F64 2
#define COMM_ABORT_POLL_MS 20
#define COMM_DRAIN_MAX 64

/* Wire header in front of every piece (host byte order: all ranks of a job run the same build on one kind of CPU). */
typedef struct {
    uint32_t magic;
    uint16_t version;
    uint16_t kind;       /* COMM_KIND_F32 / F64 */
    uint64_t job;        /* FNV-1a hash of the job id */
    uint64_t generation;
    uint64_t step;
    uint32_t sender;     /* rank that sent it */
    uint32_t piece;      /* sequence number within this collective: ring step * pieces + piece */
    uint64_t total;      /* elements in the whole buffer */
    uint64_t offset;     /* first element carried */
    uint64_t count;      /* elements carried */
} comm_hdr_t;

struct comm {
    int rank, world;
    uint64_t generation, job_hash;
    char job_id[128];
    char bind_addr[128];
    char endpoint[256];
    size_t chunk_bytes;
    int hwm;
    void *ctx;
    int efd;               /* eventfd: written by ZeroMQ's I/O thread when the last in-flight piece is released */
    atomic_long inflight;  /* payload frames pointing into the caller's buffer that ZeroMQ still holds */
    void *pull; /* bound; from the left neighbour */
    void *push; /* connected; to the right neighbour */
    uint64_t dropped;
};

/* One collective in flight. */
typedef struct {
    comm_t *c;
    char *buf;
    size_t n, esz, pe; /* elements, element size, elements per piece */
    size_t pieces;     /* per ring step */
    size_t total;      /* messages each way: 2*(world-1)*pieces */
    size_t sent, recvd;
    int kind;
    uint64_t step;
} ring_t;

static uint64_t comm_fnv1a(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static int64_t comm_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int comm_create(const comm_config_t *cfg, comm_t **out) {
    int rc = 0;
    comm_t *c = NULL;
    CHECK_GOTO(cfg && out, LLAVA_EINVAL, "comm_create: NULL argument");
    *out = NULL;
    CHECK_GOTO(cfg->world >= 1 && cfg->rank >= 0 && cfg->rank < cfg->world, LLAVA_EINVAL,
               "comm_create: rank %d outside world %d", cfg->rank, cfg->world);
    CHECK_GOTO(cfg->chunk_bytes == 0 || (cfg->chunk_bytes >= 64 && cfg->chunk_bytes <= ((size_t)1 << 30)),
               LLAVA_EINVAL, "comm_create: chunk_bytes %zu outside [64, 1 GiB]", cfg->chunk_bytes);
    CHECK_GOTO(cfg->hwm >= 0, LLAVA_EINVAL, "comm_create: hwm %d < 0", cfg->hwm);
    c = calloc(1, sizeof *c);
    ALLOC_CHECK_GOTO(c);
    c->efd = -1;
    atomic_init(&c->inflight, 0);
    c->rank = cfg->rank;
    c->world = cfg->world;
    c->generation = cfg->generation;
    snprintf(c->job_id, sizeof c->job_id, "%s", cfg->job_id ? cfg->job_id : "");
    c->job_hash = comm_fnv1a(c->job_id);
    snprintf(c->bind_addr, sizeof c->bind_addr, "%s", cfg->bind_addr ? cfg->bind_addr : "127.0.0.1");
    c->chunk_bytes = cfg->chunk_bytes ? cfg->chunk_bytes : ((size_t)1 << 20);
    c->hwm = cfg->hwm ? cfg->hwm : 8;
    if (c->world > 1) {
        int linger = 0;
        int64_t maxmsg = (int64_t)(sizeof(comm_hdr_t) + c->chunk_bytes);
        c->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        CHECK_GOTO(c->efd >= 0, LLAVA_EIO, "eventfd: %s", strerror(errno));
        c->ctx = zmq_ctx_new();
        CHECK_GOTO(c->ctx, LLAVA_ENET, "zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
        c->pull = zmq_socket(c->ctx, ZMQ_PULL);
        CHECK_GOTO(c->pull, LLAVA_ENET, "zmq_socket(PULL): %s", zmq_strerror(zmq_errno()));
        c->push = zmq_socket(c->ctx, ZMQ_PUSH);
        CHECK_GOTO(c->push, LLAVA_ENET, "zmq_socket(PUSH): %s", zmq_strerror(zmq_errno()));
        ZMQ_CHECK_GOTO(zmq_setsockopt(c->pull, ZMQ_LINGER, &linger, sizeof linger));
        ZMQ_CHECK_GOTO(zmq_setsockopt(c->push, ZMQ_LINGER, &linger, sizeof linger));
        ZMQ_CHECK_GOTO(zmq_setsockopt(c->pull, ZMQ_RCVHWM, &c->hwm, sizeof c->hwm));
        ZMQ_CHECK_GOTO(zmq_setsockopt(c->push, ZMQ_SNDHWM, &c->hwm, sizeof c->hwm));
        /* Larger messages are dropped by ZeroMQ itself (it closes that connection; the sender reconnects). */
        ZMQ_CHECK_GOTO(zmq_setsockopt(c->pull, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg));
    }
    *out = c;
    c = NULL;
cleanup:
    comm_destroy(&c);
    return rc;
}

int comm_bind(comm_t *c, const char **endpoint) {
    int rc = 0;
    char addr[160];
    size_t len = sizeof c->endpoint;
    CHECK_GOTO(c && endpoint, LLAVA_EINVAL, "comm_bind: NULL argument");
    *endpoint = c->endpoint;
    if (c->world == 1) return 0;
    snprintf(addr, sizeof addr, "tcp://%s:*", c->bind_addr);
    ZMQ_CHECK_GOTO(zmq_bind(c->pull, addr));
    ZMQ_CHECK_GOTO(zmq_getsockopt(c->pull, ZMQ_LAST_ENDPOINT, c->endpoint, &len));
    LOG_D("comm: rank %d of %d generation %llu bound %s", c->rank, c->world, (unsigned long long)c->generation,
          c->endpoint);
cleanup:
    return rc;
}

int comm_connect(comm_t *c, const char *const *peers, int npeers) {
    int rc = 0;
    const char *right;
    CHECK_GOTO(c, LLAVA_EINVAL, "comm_connect: NULL comm");
    if (c->world == 1) return 0;
    CHECK_GOTO(peers && npeers == c->world, LLAVA_EINVAL, "comm_connect: %d peers for world %d", npeers, c->world);
    CHECK_GOTO(c->endpoint[0], LLAVA_EINVAL, "comm_connect: comm_bind first");
    right = peers[(c->rank + 1) % c->world];
    CHECK_GOTO(right && right[0], LLAVA_EINVAL, "comm_connect: no endpoint for rank %d", (c->rank + 1) % c->world);
    ZMQ_CHECK_GOTO(zmq_connect(c->push, right));
cleanup:
    return rc;
}

uint64_t comm_dropped(const comm_t *c) { return c ? c->dropped : 0; }

void comm_destroy(comm_t **pc) {
    comm_t *c = pc ? *pc : NULL;
    if (!c) return;
    if (c->pull) zmq_close(c->pull);
    if (c->push) zmq_close(c->push);
    /* Terminating our own context joins ZeroMQ's I/O threads: every in-flight piece has been released after it. */
    if (c->ctx) {
        while (zmq_ctx_term(c->ctx) == -1 && zmq_errno() == EINTR) {
        }
    }
    if (c->efd >= 0) close(c->efd);
    free(c);
    *pc = NULL;
}

/* Segment j of the buffer and piece k of it, as [*off, *off + *cnt). */
static void ring_piece(const ring_t *r, int seg, size_t k, size_t *off, size_t *cnt) {
    size_t w = (size_t)r->c->world;
    size_t s0 = r->n * (size_t)seg / w, s1 = r->n * ((size_t)seg + 1) / w;
    size_t a = k * r->pe, len = s1 - s0;
    if (a > len) a = len;
    *off = s0 + a;
    *cnt = (len - a < r->pe) ? len - a : r->pe;
}

/* Segment handled in ring step s: sent = (rank - s) mod world, received = (rank - s - 1) mod world. */
static int ring_seg(const ring_t *r, size_t s, int extra) {
    int w = r->c->world;
    return (int)(((size_t)r->c->rank + 2 * (size_t)w - s % (size_t)w - (size_t)extra) % (size_t)w);
}

/* Called by ZeroMQ (its I/O thread, or zmq_msg_close) when it no longer needs a payload frame. */
static void comm_piece_free(void *data, void *hint) {
    comm_t *c = hint;
    (void)data;
    if (atomic_fetch_sub(&c->inflight, 1) == 1) {
        uint64_t one = 1;
        ssize_t w = write(c->efd, &one, sizeof one); /* cannot fail short of a full counter, which is harmless */
        (void)w;
    }
}

/* Sends the next piece as two frames: a copied header and the payload straight from the caller's buffer (zero
 * copy; safe because a piece's region is next written only after the right neighbour has received it, and the
 * collective returns only when ZeroMQ has released every payload). Returns 0 sent, 1 queue full, or an error. */
static int ring_send_one(ring_t *r) {
    int rc = 0;
    comm_t *c = r->c;
    size_t s = r->sent / r->pieces, k = r->sent % r->pieces, off, cnt;
    comm_hdr_t h;
    zmq_msg_t m;
    ring_piece(r, ring_seg(r, s, 0), k, &off, &cnt);
    memset(&h, 0, sizeof h);
    h.magic = COMM_MAGIC;
    h.version = COMM_VERSION;
    h.kind = (uint16_t)r->kind;
    h.job = c->job_hash;
    h.generation = c->generation;
    h.step = r->step;
    h.sender = (uint32_t)c->rank;
    h.piece = (uint32_t)r->sent;
    h.total = r->n;
    h.offset = off;
    h.count = cnt;
    if (zmq_send(c->push, &h, sizeof h, ZMQ_SNDMORE | ZMQ_DONTWAIT) == -1) {
        CHECK_GOTO(zmq_errno() == EAGAIN, LLAVA_ENET, "comm: zmq_send: %s", zmq_strerror(zmq_errno()));
        return 1; /* queue full: wait for POLLOUT */
    }
    /* Once the first frame is queued, ZeroMQ accepts the rest of the message regardless of the high-water mark. */
    if (cnt) {
        atomic_fetch_add(&c->inflight, 1);
        if (zmq_msg_init_data(&m, r->buf + off * r->esz, cnt * r->esz, comm_piece_free, c) == -1) {
            atomic_fetch_sub(&c->inflight, 1);
            CHECK_GOTO(0, LLAVA_ENET, "comm: zmq_msg_init_data: %s", zmq_strerror(zmq_errno()));
        }
        if (zmq_msg_send(&m, c->push, ZMQ_DONTWAIT) == -1) {
            int e = zmq_errno();
            zmq_msg_close(&m); /* releases it: comm_piece_free */
            CHECK_GOTO(0, LLAVA_ENET, "comm: zmq_msg_send: %s", zmq_strerror(e));
        }
    } else {
        ZMQ_CHECK_GOTO(zmq_send(c->push, NULL, 0, ZMQ_DONTWAIT));
    }
    r->sent++;
cleanup:
    return rc;
}

/* The unaligned loads go through memcpy (the payload sits at any offset in ZeroMQ's receive buffer); compilers
 * turn these loops into plain vector loads and adds. */
static void ring_add_f32(float *dst, const char *src, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v;
        memcpy(&v, src + i * sizeof v, sizeof v);
        dst[i] += v;
    }
}

static void ring_add_f64(double *dst, const char *src, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double v;
        memcpy(&v, src + i * sizeof v, sizeof v);
        dst[i] += v;
    }
}

static void ring_drop(ring_t *r, const char *why, const comm_hdr_t *h) {
    r->c->dropped++;
    if (h)
        LOG_W("comm: rank %d dropped a message (%s): job %016llx generation %llu step %llu sender %u piece %u; "
              "expecting job %016llx generation %llu step %llu sender %d piece %zu",
              r->c->rank, why, (unsigned long long)h->job, (unsigned long long)h->generation,
              (unsigned long long)h->step, h->sender, h->piece, (unsigned long long)r->c->job_hash,
              (unsigned long long)r->c->generation, (unsigned long long)r->step,
              (r->c->rank + r->c->world - 1) % r->c->world, r->recvd);
    else
        LOG_W("comm: rank %d dropped a message (%s)", r->c->rank, why);
}

/* Checks one received message (header frame hm, payload frame pm, nframes frames in all) and applies it; returns 1
 * when it was the expected piece, 0 when dropped. */
static int ring_apply(ring_t *r, zmq_msg_t *hm, zmq_msg_t *pm, int nframes) {
    comm_t *c = r->c;
    size_t s, k, off, cnt;
    const char *p = zmq_msg_data(hm);
    comm_hdr_t h;
    if (zmq_msg_size(hm) != sizeof h) {
        ring_drop(r, "first frame is not a header", NULL);
        return 0;
    }
    memcpy(&h, p, sizeof h);
    if (h.magic != COMM_MAGIC || h.version != COMM_VERSION) {
        ring_drop(r, "bad magic/version", NULL);
        return 0;
    }
    if (h.job != c->job_hash || h.generation != c->generation) {
        ring_drop(r, "other job or generation", &h);
        return 0;
    }
    if (h.step != r->step || h.kind != r->kind) {
        ring_drop(r, "other step or collective", &h);
        return 0;
    }
    s = r->recvd / r->pieces;
    k = r->recvd % r->pieces;
    ring_piece(r, ring_seg(r, s, 1), k, &off, &cnt);
    if (h.sender != (uint32_t)((c->rank + c->world - 1) % c->world) || h.piece != (uint32_t)r->recvd ||
        h.total != r->n || h.offset != off || h.count != cnt || nframes != 2 || zmq_msg_size(pm) != cnt * r->esz) {
        ring_drop(r, "malformed or out of order", &h);
        return 0;
    }
    p = zmq_msg_data(pm);
    if (s < (size_t)c->world - 1) { /* reduce-scatter: add in */
        if (r->kind == COMM_KIND_F32)
            ring_add_f32((float *)(void *)r->buf + off, p, cnt);
        else
            ring_add_f64((double *)(void *)r->buf + off, p, cnt);
    } else if (cnt) { /* all-gather: the reduced piece, byte for byte */
        memcpy(r->buf + off * r->esz, p, cnt * r->esz);
    }
    r->recvd++;
    return 1;
}

/* Receives one whole message if one is queued: 1 applied, 0 dropped, 2 nothing queued, or a negative code.
 * Frames of a multipart message arrive together, so only the first receive can find the queue empty. */
static int ring_recv_one(ring_t *r) {
    int rc = 0, nframes = 0, more = 1;
    zmq_msg_t hm, pm, extra;
    zmq_msg_init(&hm);
    zmq_msg_init(&pm);
    zmq_msg_init(&extra);
    if (zmq_msg_recv(&hm, r->c->pull, ZMQ_DONTWAIT) == -1) {
        int e = zmq_errno();
        CHECK_GOTO(e == EAGAIN || e == EINTR, LLAVA_ENET, "comm: zmq_msg_recv: %s", zmq_strerror(e));
        rc = 2;
        goto cleanup;
    }
    nframes = 1;
    more = zmq_msg_more(&hm);
    if (more) {
        ZMQ_CHECK_GOTO(zmq_msg_recv(&pm, r->c->pull, 0));
        nframes++;
        more = zmq_msg_more(&pm);
    }
    while (more) { /* a foreign message with more frames than ours: consume and drop it whole */
        ZMQ_CHECK_GOTO(zmq_msg_recv(&extra, r->c->pull, 0));
        nframes++;
        more = zmq_msg_more(&extra);
    }
    rc = ring_apply(r, &hm, &pm, nframes);
cleanup:
    zmq_msg_close(&hm);
    zmq_msg_close(&pm);
    zmq_msg_close(&extra);
    return rc;
}

/* Receives what is queued (bounded); returns the number of expected pieces applied, or a negative code. */
static int ring_drain(ring_t *r) {
    int got = 0;
    for (int i = 0; i < COMM_DRAIN_MAX && r->recvd < r->total; i++) {
        int rc = ring_recv_one(r);
        if (rc < 0) return rc;
        if (rc == 2) break;
        got += rc;
    }
    return got;
}

/* Piece number g may leave once piece g - pieces (same piece, previous ring step) has arrived. */
static int ring_can_send(const ring_t *r) {
    return r->sent < r->total && (r->sent < r->pieces || r->recvd > r->sent - r->pieces);
}

static int ring_run(comm_t *c, void *buf, size_t n, size_t esz, int kind, uint64_t step, int timeout_ms,
                    comm_abort_fn abort_fn, void *abort_ud) {
    int rc = 0;
    ring_t r;
    int64_t now, last_progress, next_abort;
    size_t maxseg;
    CHECK_GOTO(c && (buf || n == 0), LLAVA_EINVAL, "comm_allreduce: NULL argument");
    CHECK_GOTO(timeout_ms > 0, LLAVA_EINVAL, "comm_allreduce: timeout_ms %d <= 0", timeout_ms);
    if (c->world == 1 || n == 0) return 0;
    CHECK_GOTO(c->endpoint[0], LLAVA_EINVAL, "comm_allreduce: comm not bound/connected");
    memset(&r, 0, sizeof r);
    r.c = c;
    r.buf = buf;
    r.n = n;
    r.esz = esz;
    r.kind = kind;
    r.step = step;
    r.pe = c->chunk_bytes / esz;
    maxseg = (n + (size_t)c->world - 1) / (size_t)c->world;
    r.pieces = (maxseg + r.pe - 1) / r.pe;
    r.total = 2 * ((size_t)c->world - 1) * r.pieces;
    CHECK_GOTO(r.total < UINT32_MAX, LLAVA_EINVAL, "comm_allreduce: %zu elements need too many pieces", n);
    now = comm_now_ms();
    last_progress = now;
    next_abort = now;
    while (r.sent < r.total || r.recvd < r.total || atomic_load(&c->inflight) > 0) {
        int progressed = 0, np, can_send = ring_can_send(&r);
        /* Ask only for events we can act on (events 0: zmq_poll does not wake for that socket), otherwise a
         * writable PUSH or a neighbour's next-step pieces waiting in the PULL would wake us in a loop. */
        zmq_pollitem_t items[3] = {{c->pull, 0, r.recvd < r.total ? ZMQ_POLLIN : 0, 0},
                                   {NULL, c->efd, ZMQ_POLLIN, 0},
                                   {c->push, 0, can_send ? ZMQ_POLLOUT : 0, 0}};
        long wait;
        if (abort_fn && now >= next_abort) {
            if (abort_fn(abort_ud)) { /* a normal event (generation change), not an error */
                LOG_I("comm: rank %d step %llu aborted (%zu/%zu sent, %zu/%zu received)", c->rank,
                      (unsigned long long)step, r.sent, r.total, r.recvd, r.total);
                rc = LLAVA_EABORTED;
                goto cleanup;
            }
            next_abort = now + COMM_ABORT_POLL_MS;
        }
        wait = (long)(last_progress + timeout_ms - now);
        if (abort_fn && next_abort - now < wait) wait = (long)(next_abort - now);
        if (wait < 0) wait = 0;
        np = zmq_poll(items, 3, wait);
        if (np == -1 && zmq_errno() != EINTR) {
            LOG_E("comm: zmq_poll: %s", zmq_strerror(zmq_errno()));
            rc = LLAVA_ENET;
            goto cleanup;
        }
        if (np > 0 && r.recvd < r.total && (items[0].revents & ZMQ_POLLIN)) {
            int got = ring_drain(&r);
            RC_CHECK_GOTO(got < 0 ? got : 0);
            progressed |= got > 0;
        }
        if (np > 0 && (items[1].revents & ZMQ_POLLIN)) { /* ZeroMQ released our last payload frames */
            uint64_t cnt;
            ssize_t rd = read(c->efd, &cnt, sizeof cnt);
            (void)rd;
            progressed = 1;
        }
        if (np > 0 && can_send && (items[2].revents & ZMQ_POLLOUT)) {
            while (ring_can_send(&r)) {
                int sr = ring_send_one(&r);
                RC_CHECK_GOTO(sr < 0 ? sr : 0);
                if (sr == 1) break;
                progressed = 1;
            }
        }
        now = comm_now_ms();
        if (progressed) last_progress = now;
        CHECK_GOTO(now - last_progress < timeout_ms ||
                       (r.sent == r.total && r.recvd == r.total && atomic_load(&c->inflight) == 0), LLAVA_ETIMEOUT,
                   "comm: rank %d step %llu: no progress for %d ms (%zu/%zu sent, %zu/%zu received)", c->rank,
                   (unsigned long long)step, timeout_ms, r.sent, r.total, r.recvd, r.total);
    }
cleanup:
    return rc;
}

int comm_allreduce(comm_t *c, float *buf, size_t n, uint64_t step, int timeout_ms, comm_abort_fn abort_fn,
                   void *abort_ud) {
    return ring_run(c, buf, n, sizeof(float), COMM_KIND_F32, step, timeout_ms, abort_fn, abort_ud);
}

int comm_allreduce_f64(comm_t *c, double *buf, size_t n, uint64_t step, int timeout_ms, comm_abort_fn abort_fn,
                       void *abort_ud) {
    return ring_run(c, buf, n, sizeof(double), COMM_KIND_F64, step, timeout_ms, abort_fn, abort_ud);
}
