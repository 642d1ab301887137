/* The worker's compute thread: loads jobs into the backend, runs micro-batches, all-reduces the step's gradients
 * (ring over ZeroMQ, or NCCL on GPU workers, started early in buckets after MB {last} / DRAIN), applies the
 * optimizer when the coordinator has committed the step, and writes checkpoints atomically (temp dir, fsync,
 * rename, then the "latest" pointer). The all-reduce is out of place (the ring sums a copy, NCCL into a second
 * device buffer), so an all-reduce broken by a failure leaves the accumulated gradients intact for the redo.
 * Tested by tests/integration/test_cluster_*.c and tests/unit/test_worker_early.c (MB {last} / DRAIN). */
#define _XOPEN_SOURCE 700
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "common/err.h"
#include "common/wire.h"
#include "worker/collective.h"
#include "worker/worker_internal.h"

typedef struct {
    worker_ctx_t *x;
    void *pipe;
    uint64_t job;
    comm_t *comm;
    char endpoint[256];
    uint32_t gen;
    int rank, world;
    float *rbuf;
    size_t rn;
    int reduced;
    int64_t reduced_step;
    double scale, lr;
    int hang_timeout_ms;
    int64_t fence_at_gen;
    void *state_sock; /* a joining worker's PULL endpoint for the training state */
    int dev_comm;     /* this generation all-reduces on the device (NCCL id relayed with the peers) */
    int early_rc;     /* the early (bucketed) all-reduce of this generation failed: REDUCE reports it */
} compute_t;

static void reply(compute_t *k, int type, int64_t step, cJSON *body) {
    wire_msg_t m = {.type = (uint16_t)type, .job = k->job, .generation = k->gen, .step = step,
                    .body = body ? body : cJSON_CreateObject()};
    if (m.body) wire_send(k->pipe, NULL, 0, &m, 0);
    cJSON_Delete(m.body);
}

static void fail(compute_t *k, int64_t step, const char *what, const char *err) {
    cJSON *b = cJSON_CreateObject();
    char msg[700];
    snprintf(msg, sizeof msg, "%s: %s", what, err);
    cJSON_AddStringToObject(b, "error", msg);
    LOG_E("job %llu: %s", (unsigned long long)k->job, msg);
    reply(k, MSG_FAILED, step, b);
}

static int aborted(void *ud) {
    compute_t *k = ud;
    return atomic_load(&k->x->fence) != k->fence_at_gen || atomic_load(&k->x->quit);
}

static void close_state_sock(compute_t *k) {
    if (k->state_sock) zmq_close(k->state_sock);
    k->state_sock = NULL;
}

static void release(compute_t *k) {
    atomic_store(&k->x->held_job, 0);
    atomic_store(&k->x->held_step, -1);
    close_state_sock(k);
    comm_destroy(&k->comm);
    if (k->job) k->x->backend->ops->job_release(k->x->backend);
    free(k->rbuf);
    k->rbuf = NULL;
    k->rn = 0;
    k->job = 0;
    k->reduced = 0;
}

static int bind_state_sock(compute_t *k, char *ep, size_t eplen);

/* The coordinator restarted (RELEASE {reregister}): drop the step in flight (ring, accumulated gradients) but keep
 * the model, and report the held state so the new coordinator can go on from it. */
static void on_reregister(compute_t *k) {
    comm_destroy(&k->comm);
    if (k->job) k->x->backend->ops->zero_grads(k->x->backend);
    k->reduced = 0;
    k->gen = 0;
    wire_msg_t m = {.type = MSG_REGISTER, .step = -1, .body = cJSON_CreateObject()};
    if (m.body) wire_send(k->pipe, NULL, 0, &m, 0);
    cJSON_Delete(m.body);
}

/* JOB {keep}: a restarted coordinator goes on from the state this worker still holds. */
static int keep_job(compute_t *k, const wire_msg_t *m) {
    int64_t start = wire_get_i64(m->body, "start_step", -1);
    if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m->body, "keep")) || k->job != m->job ||
        atomic_load(&k->x->held_job) != (int64_t)m->job || atomic_load(&k->x->held_step) != start)
        return 0;
    comm_destroy(&k->comm);
    close_state_sock(k);
    k->x->backend->ops->zero_grads(k->x->backend);
    k->reduced = 0;
    k->gen = 0;
    k->hang_timeout_ms = (int)wire_get_i64(m->body, "hang_timeout_ms", 10000);
    LOG_I("job %llu: going on from the state held in memory (step %lld); no reload", (unsigned long long)m->job,
          (long long)start);
    reply(k, MSG_READY, -1, NULL);
    atomic_fetch_add(&k->x->progress, 1);
    return 1;
}

static void on_job(compute_t *k, const wire_msg_t *m) {
    if (keep_job(k, m)) return;
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m->body, "keep"))) {
        release(k);
        k->job = m->job;
        fail(k, -1, "resuming from memory", "this worker no longer holds the state the coordinator expects");
        return;
    }
    release(k);
    k->job = m->job;
    k->gen = 0;
    k->hang_timeout_ms = (int)wire_get_i64(m->body, "hang_timeout_ms", 10000);
    char err[512] = "";
    int rc = k->x->backend->ops->job_load(k->x->backend, m->body, err, sizeof err);
    if (rc) {
        fail(k, -1, "loading the job", err[0] ? err : err_str(rc));
        return;
    }
    size_t n = 0;
    k->x->backend->ops->grads(k->x->backend, &n);
    k->rbuf = malloc((n ? n : 1) * sizeof(float));
    k->rn = n;
    if (!k->rbuf) {
        fail(k, -1, "loading the job", "out of memory for the all-reduce buffer");
        return;
    }
    cJSON *b = cJSON_CreateObject();
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m->body, "join"))) {
        /* A replacement joining a running job: the training state comes from a live member (STATE_RECV). */
        char ep[300];
        rc = bind_state_sock(k, ep, sizeof ep);
        if (rc) {
            cJSON_Delete(b);
            fail(k, -1, "binding the state endpoint", err_str(rc));
            return;
        }
        cJSON_AddStringToObject(b, "state_endpoint", ep);
    }
    atomic_store(&k->x->held_job, (int64_t)k->job);
    atomic_store(&k->x->held_step, wire_get_i64(m->body, "start_step", 0));
    reply(k, MSG_READY, -1, b); /* generation 0: loaded */
    atomic_fetch_add(&k->x->progress, 1);
}

/* ---- a replacement joining a running job: state from a live member ---- */

static int bind_state_sock(compute_t *k, char *ep, size_t eplen) {
    close_state_sock(k);
    char addr[300];
    snprintf(addr, sizeof addr, "tcp://%s:*", k->x->cfg.bind_host);
    k->state_sock = zmq_socket(k->x->zctx, ZMQ_PULL);
    if (!k->state_sock) return LLAVA_ENET;
    int zero = 0;
    size_t len = eplen;
    if (zmq_setsockopt(k->state_sock, ZMQ_LINGER, &zero, sizeof zero) != 0 || zmq_bind(k->state_sock, addr) != 0 ||
        zmq_getsockopt(k->state_sock, ZMQ_LAST_ENDPOINT, ep, &len) != 0) {
        LOG_E("cannot bind the state endpoint %s: %s", addr, zmq_strerror(zmq_errno()));
        close_state_sock(k);
        return LLAVA_ENET;
    }
    return 0;
}

/* Donor: after APPLY of step-1 (the pipe keeps the order), push {job, step, bytes} and the state to a joiner. A
 * failure is only logged: the joiner times out and the coordinator fences it. */
static void on_state_send(compute_t *k, const wire_msg_t *m) {
    const char *ep = wire_get_str(m->body, "endpoint", "");
    void *buf = NULL, *s = NULL;
    size_t len = 0;
    char err[512] = "", hdr[160];
    int rc = k->x->backend->ops->state_export(k->x->backend, &buf, &len, err, sizeof err);
    if (rc) goto cleanup;
    snprintf(hdr, sizeof hdr, "{\"job\":%llu,\"step\":%lld,\"bytes\":%zu}", (unsigned long long)k->job,
             (long long)m->step, len);
    s = zmq_socket(k->x->zctx, ZMQ_PUSH);
    int linger = 2 * k->hang_timeout_ms; /* close returns at once; ZeroMQ keeps delivering this long */
    rc = LLAVA_ENET;
    if (!s || zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_setsockopt(s, ZMQ_SNDTIMEO, &linger, sizeof linger) != 0 || zmq_connect(s, ep) != 0 ||
        zmq_send(s, hdr, strlen(hdr), ZMQ_SNDMORE) < 0 || zmq_send(s, buf, len, 0) < 0) {
        snprintf(err, sizeof err, "%s: %s", ep, zmq_strerror(zmq_errno()));
        goto cleanup;
    }
    rc = 0;
    LOG_I("step %lld: sent the training state (%zu bytes) to a joining worker at %s", (long long)m->step, len, ep);
cleanup:
    if (rc) LOG_W("step %lld: cannot send the training state to a joining worker: %s", (long long)m->step,
                  err[0] ? err : err_str(rc));
    if (s) zmq_close(s);
    free(buf);
    atomic_fetch_add(&k->x->progress, 1);
}

/* Receives the state frames on the joiner's endpoint, waiting up to 2 x hang_timeout_ms. */
static int recv_state(compute_t *k, int64_t step, zmq_msg_t *blob, char *err, size_t errlen) {
    zmq_msg_t h;
    zmq_msg_init(&h);
    int rc = LLAVA_ETIMEOUT;
    snprintf(err, errlen, "no training state from the donor within %d ms", 2 * k->hang_timeout_ms);
    for (int waited = 0; waited < 2 * k->hang_timeout_ms && !atomic_load(&k->x->quit); waited += 100) {
        zmq_pollitem_t it = {k->state_sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 100) <= 0) continue;
        int more = 0;
        size_t ml = sizeof more;
        if (zmq_msg_recv(&h, k->state_sock, 0) < 0 || zmq_getsockopt(k->state_sock, ZMQ_RCVMORE, &more, &ml) != 0 ||
            !more || zmq_msg_recv(blob, k->state_sock, 0) < 0) {
            snprintf(err, errlen, "receiving the training state: %s", zmq_strerror(zmq_errno()));
            rc = LLAVA_ENET;
            break;
        }
        char text[160];
        size_t n = zmq_msg_size(&h) < sizeof text - 1 ? zmq_msg_size(&h) : sizeof text - 1;
        memcpy(text, zmq_msg_data(&h), n);
        text[n] = 0;
        cJSON *o = cJSON_Parse(text);
        uint64_t job = (uint64_t)wire_get_i64(o, "job", 0);
        int64_t st = wire_get_i64(o, "step", -1), bytes = wire_get_i64(o, "bytes", -1);
        cJSON_Delete(o);
        rc = 0;
        if (job != k->job || st != step || bytes != (int64_t)zmq_msg_size(blob)) {
            snprintf(err, errlen, "the state received is of job %llu step %lld (%lld bytes), expected job %llu step %lld",
                     (unsigned long long)job, (long long)st, (long long)bytes, (unsigned long long)k->job,
                     (long long)step);
            rc = LLAVA_EFORMAT;
        }
        break;
    }
    zmq_msg_close(&h);
    return rc;
}

static void on_state_recv(compute_t *k, const wire_msg_t *m) {
    char err[512] = "";
    zmq_msg_t blob;
    zmq_msg_init(&blob);
    int rc = k->state_sock ? recv_state(k, m->step, &blob, err, sizeof err) : LLAVA_EINVAL;
    if (!k->state_sock) snprintf(err, sizeof err, "this worker was not loaded to join (no state endpoint)");
    if (!rc) rc = k->x->backend->ops->state_import(k->x->backend, zmq_msg_data(&blob), zmq_msg_size(&blob), err,
                                                   sizeof err);
    close_state_sock(k);
    cJSON *b = cJSON_CreateObject();
    if (rc) {
        LOG_E("step %lld: joining the job failed: %s", (long long)m->step, err);
        cJSON_AddStringToObject(b, "error", err);
    } else {
        LOG_I("step %lld: training state received (%zu bytes); joined", (long long)m->step, zmq_msg_size(&blob));
        atomic_store(&k->x->held_step, m->step);
    }
    zmq_msg_close(&blob);
    atomic_fetch_add(&k->x->progress, 1);
    reply(k, MSG_STATE_LOADED, m->step, b);
}

/* A new membership: a fresh comm for this generation, bound, its endpoint reported; PEERS connects it. */
static void on_generation(compute_t *k, const wire_msg_t *m) {
    comm_destroy(&k->comm); /* also releases any piece of a broken all-reduce still pointing into rbuf */
    const backend_ops_t *ops = k->x->backend->ops;
    if (ops->dev_comm_close) ops->dev_comm_close(k->x->backend);
    k->dev_comm = 0; /* closing it dropped any early buckets: the accumulated gradients are intact */
    k->early_rc = 0;
    k->gen = m->generation;
    k->fence_at_gen = atomic_load(&k->x->fence);
    k->reduced = 0;
    if (m->type == MSG_ABORT) return;
    k->rank = (int)wire_get_i64(m->body, "rank", -1);
    k->world = (int)wire_get_i64(m->body, "world", 0);
    if (k->rank < 0 || k->world < 1 || k->rank >= k->world) {
        fail(k, -1, "joining a generation", "malformed GENERATION message");
        return;
    }
    char job[32];
    snprintf(job, sizeof job, "%llu", (unsigned long long)k->job);
    comm_config_t cc = {.rank = k->rank, .world = k->world, .generation = k->gen, .job_id = job,
                        .bind_addr = k->x->cfg.bind_host};
    const char *ep = NULL;
    int rc = comm_create(&cc, &k->comm);
    if (!rc) rc = comm_bind(k->comm, &ep);
    if (rc) {
        fail(k, -1, "binding the all-reduce endpoint", err_str(rc));
        return;
    }
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "endpoint", ep ? ep : "");
    char nid[300];
    rc = k->rank == 0 && ops->dev_comm_id ? ops->dev_comm_id(k->x->backend, nid, sizeof nid) : 0;
    if (rc < 0) {
        cJSON_Delete(b);
        fail(k, -1, "making the NCCL id", err_str(rc));
        return;
    }
    if (rc == 1) cJSON_AddStringToObject(b, "nccl_id", nid); /* the coordinator relays it with the peers */
    reply(k, MSG_READY, -1, b);
}

static void on_peers(compute_t *k, const wire_msg_t *m) {
    const cJSON *peers = cJSON_GetObjectItemCaseSensitive(m->body, "peers");
    int n = cJSON_GetArraySize(peers);
    if (!k->comm || n != k->world || n > 4096) {
        fail(k, -1, "connecting the all-reduce ring", "malformed PEERS message");
        return;
    }
    const char **eps = calloc((size_t)n, sizeof *eps);
    if (!eps) {
        fail(k, -1, "connecting the all-reduce ring", "out of memory");
        return;
    }
    for (int i = 0; i < n; i++) {
        const cJSON *e = cJSON_GetArrayItem(peers, i);
        eps[i] = cJSON_IsString(e) ? e->valuestring : "";
    }
    int rc = comm_connect(k->comm, eps, n);
    free(eps);
    if (rc) {
        fail(k, -1, "connecting the all-reduce ring", err_str(rc));
        return;
    }
    const char *nid = wire_get_str(m->body, "nccl_id", "");
    const backend_ops_t *ops = k->x->backend->ops;
    if (*nid && ops->dev_comm_open) {
        rc = ops->dev_comm_open(k->x->backend, nid, k->rank, k->world, k->gen, 2 * k->hang_timeout_ms, aborted, k);
        if (rc == LLAVA_EABORTED) return; /* a new generation follows */
        if (rc) fail(k, -1, "joining the NCCL communicator", err_str(rc));
        k->dev_comm = rc == 0;
    }
}

/* MB {last} and DRAIN of the current generation (the coordinator sends them to every member at once, so either
 * every rank has its communicator open when it handles them or none has): the sum may start early. CPU workers,
 * the ring and the sim backend do nothing here; REDUCE sums as always. */
static int early_ok(const compute_t *k, const wire_msg_t *m) {
    return m->generation == k->gen && k->dev_comm && k->x->backend->ops->dev_reduce_early && !k->early_rc;
}

static void reduce_early(compute_t *k, int arm) {
    int rc = k->x->backend->ops->dev_reduce_early(k->x->backend, arm);
    if (!rc) return;
    LOG_W("generation %u: the early all-reduce failed: %s (reported at REDUCE)", k->gen, err_str(rc));
    k->early_rc = rc;
    k->dev_comm = 0; /* the backend closed it */
}

static void on_drain(compute_t *k, const wire_msg_t *m) {
    if (early_ok(k, m)) reduce_early(k, 0);
}

static void on_mb(compute_t *k, const wire_msg_t *m) {
    int64_t *samples = NULL;
    int64_t n = wire_get_i64_array(m->body, "samples", 1 << 20, &samples);
    if (n <= 0) {
        free(samples);
        fail(k, m->step, "micro-batch", "malformed sample list");
        return;
    }
    mb_result_t r;
    char err[512] = "";
    int last = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m->body, "last")) && early_ok(k, m);
    if (last) reduce_early(k, 1); /* this backward launches the buckets as they fill */
    int rc = k->x->backend->ops->run_mb(k->x->backend, samples, (int)n, &r, err, sizeof err);
    free(samples);
    atomic_fetch_add(&k->x->progress, 1);
    if (rc) {
        fail(k, m->step, "micro-batch", err[0] ? err : err_str(rc));
        return;
    }
    cJSON *b = cJSON_CreateObject();
    cJSON_AddNumberToObject(b, "mb", (double)wire_get_i64(m->body, "mb", -1));
    cJSON_AddNumberToObject(b, "loss_sum", r.loss_sum);
    cJSON_AddNumberToObject(b, "n_targets", (double)r.n_targets);
    cJSON_AddNumberToObject(b, "tokens", (double)r.tokens);
    reply(k, MSG_MB_DONE, m->step, b);
    if (last && k->dev_comm) reduce_early(k, 0); /* the buckets the backward left (ranges it did not touch) */
}

static void on_reduce(compute_t *k, const wire_msg_t *m) {
    size_t n = 0;
    float *g = k->dev_comm ? NULL : k->x->backend->ops->grads(k->x->backend, &n); /* NCCL: stays on the device */
    if (!g && !k->dev_comm) {
        fail(k, m->step, "all-reduce", "the backend has no gradient buffer (see the worker log)");
        return;
    }
    int64_t n_targets = wire_get_i64(m->body, "n_targets", 0);
    k->lr = wire_get_num(m->body, "lr", 0);
    k->scale = n_targets > 0 ? 1.0 / (double)n_targets : 0.0;
    if (n > k->rn) { /* the gradient arena grew (it is allocated at load; this is a guard) */
        float *nb = realloc(k->rbuf, n * sizeof *nb);
        if (!nb) {
            fail(k, m->step, "all-reduce", "out of memory");
            return;
        }
        k->rbuf = nb;
        k->rn = n;
    }
    if (!k->comm) {
        fail(k, m->step, "all-reduce", "no ring for this generation");
        return;
    }
    double dev_ss = 0;
    int rc;
    if (k->early_rc) { /* its buckets broke: report as a broken all-reduce (the next generation redoes it) */
        rc = k->early_rc;
    } else if (k->dev_comm) { /* NCCL on the device gradients: no host copy, no ring */
        rc = k->x->backend->ops->dev_allreduce(k->x->backend, 2 * k->hang_timeout_ms, aborted, k, &dev_ss);
        if (rc) k->dev_comm = 0; /* the backend closed it */
    } else {
        memcpy(k->rbuf, g, n * sizeof(float)); /* the accumulator survives a broken all-reduce */
        rc = comm_allreduce(k->comm, k->rbuf, n, (uint64_t)m->step, 2 * k->hang_timeout_ms, aborted, k);
    }
    int suspect = (k->rank + k->world - 1) % k->world; /* a ring waits on its left neighbour */
    atomic_fetch_add(&k->x->progress, 1);
    if (rc) comm_destroy(&k->comm); /* drops ZeroMQ's references into rbuf */
    if (rc == LLAVA_EABORTED) {
        LOG_I("step %lld: all-reduce of generation %u aborted (a new generation follows)", (long long)m->step, k->gen);
        return;
    }
    cJSON *b = cJSON_CreateObject();
    if (rc) {
        char why[256];
        snprintf(why, sizeof why, "all-reduce failed: %s", err_str(rc));
        cJSON_AddStringToObject(b, "error", why);
        cJSON_AddNumberToObject(b, "suspect", suspect);
        LOG_W("step %lld: %s (suspect rank %d)", (long long)m->step, why, suspect);
    } else {
        double ss = dev_ss;
        for (size_t i = 0; !k->dev_comm && i < n; i++) ss += (double)k->rbuf[i] * (double)k->rbuf[i];
        cJSON_AddNumberToObject(b, "grad_norm", sqrt(ss) * k->scale);
        k->reduced = 1;
        k->reduced_step = m->step;
    }
    reply(k, MSG_REDUCED, m->step, b);
}

static void on_apply(compute_t *k, const wire_msg_t *m) {
    if (!k->reduced || k->reduced_step != m->step) {
        fail(k, m->step, "apply", "no reduced gradients for this step");
        return;
    }
    double gn = 0;
    char err[512] = "";
    const backend_ops_t *ops = k->x->backend->ops;
    int rc = ops->apply(k->x->backend, k->rbuf, k->scale, k->lr, m->step, &gn, err, sizeof err);
    /* a checkpoint or a handover follows: a sharded optimizer state (ZeRO-1) is gathered on every rank first */
    if (!rc && k->dev_comm && ops->dev_gather_state && wire_get_i64(m->body, "gather_state", 0) == 1) {
        rc = ops->dev_gather_state(k->x->backend, 2 * k->hang_timeout_ms, aborted, k);
        if (rc) snprintf(err, sizeof err, "gathering the sharded optimizer state: %s", err_str(rc));
    }
    k->reduced = 0;
    atomic_fetch_add(&k->x->progress, 1);
    if (rc) {
        atomic_store(&k->x->held_job, 0); /* half-applied: nothing to go on from */
        fail(k, m->step, "optimizer step", err[0] ? err : err_str(rc));
        return;
    }
    atomic_store(&k->x->held_step, m->step + 1);
    reply(k, MSG_APPLIED, m->step, NULL);
}

/* ---- checkpoints ---- */

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int rm_rf(const char *path) { return nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static int fsync_path(const char *path, int dir) {
    int fd = open(path, dir ? O_RDONLY | O_DIRECTORY : O_RDONLY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

static int fsync_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    struct dirent *e;
    char p[2400];
    int rc = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (fsync_path(p, 0) != 0) rc = -1;
    }
    closedir(d);
    return rc | fsync_path(dir, 1);
}

static int write_file_atomic(const char *dir, const char *name, const char *text) {
    char tmp[2400], path[2400];
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(tmp, "w");
    if (!f) return -1;
    int ok = fputs(text, f) >= 0 && fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok &= fclose(f) == 0;
    if (!ok || rename(tmp, path) != 0) {
        remove(tmp);
        return -1;
    }
    return fsync_path(dir, 1);
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Deletes checkpoint-N directories beyond the newest `keep`. */
static void prune_checkpoints(const char *run_dir, int64_t keep) {
    DIR *d = opendir(run_dir);
    if (!d || keep < 1) {
        if (d) closedir(d);
        return;
    }
    int64_t steps[4096];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 4096) {
        long long s;
        char tail;
        if (sscanf(e->d_name, "checkpoint-%lld%c", &s, &tail) == 1) steps[n++] = s;
    }
    closedir(d);
    qsort(steps, (size_t)n, sizeof *steps, cmp_i64);
    for (int i = 0; i + keep < n; i++) {
        char p[2048];
        snprintf(p, sizeof p, "%s/checkpoint-%lld", run_dir, (long long)steps[i]);
        if (rm_rf(p) != 0) LOG_W("cannot remove old checkpoint %s: %s", p, strerror(errno));
    }
}

static void on_ckpt(compute_t *k, const wire_msg_t *m) {
    const char *run_dir = wire_get_str(m->body, "run_dir", NULL), *name = wire_get_str(m->body, "name", NULL);
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(m->body, "trainer_state");
    char tmp[2048], final[2048], err[5000] = "";
    if (!run_dir || !name || strchr(name, '/') || !cJSON_IsObject(ts)) {
        fail(k, m->step, "checkpoint", "malformed CKPT message");
        return;
    }
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp-%d", run_dir, name, (int)getpid());
    snprintf(final, sizeof final, "%s/%s", run_dir, name);
    rm_rf(tmp);
    char *text = NULL;
    int rc = 0;
    if (mkdir(tmp, 0755) != 0) {
        snprintf(err, sizeof err, "cannot create %s: %s", tmp, strerror(errno));
        rc = LLAVA_EIO;
    }
    if (!rc) rc = k->x->backend->ops->checkpoint(k->x->backend, tmp, ts, err, sizeof err);
    if (!rc) {
        text = cJSON_Print(ts);
        if (!text || write_file_atomic(tmp, "trainer_state.json", text) != 0) {
            snprintf(err, sizeof err, "cannot write trainer_state.json in %s: %s", tmp, strerror(errno));
            rc = LLAVA_EIO;
        }
    }
    if (!rc && fsync_tree(tmp) != 0) {
        snprintf(err, sizeof err, "fsync of %s failed: %s", tmp, strerror(errno));
        rc = errno == ENOSPC ? LLAVA_ENOSPACE : LLAVA_EIO;
    }
    if (!rc) {
        rm_rf(final); /* a replayed step rewrites its checkpoint with the same content */
        if (rename(tmp, final) != 0 || fsync_path(run_dir, 1) != 0) {
            snprintf(err, sizeof err, "cannot rename %s to %s: %s", tmp, final, strerror(errno));
            rc = LLAVA_EIO;
        }
    }
    char latest[300];
    snprintf(latest, sizeof latest, "%s\n", name);
    if (!rc && write_file_atomic(run_dir, "latest", latest) != 0) {
        snprintf(err, sizeof err, "cannot update %s/latest: %s", run_dir, strerror(errno));
        rc = LLAVA_EIO;
    }
    free(text);
    if (rc) {
        rm_rf(tmp);
        fail(k, m->step, "checkpoint", err[0] ? err : err_str(rc));
        return;
    }
    prune_checkpoints(run_dir, wire_get_i64(m->body, "keep", 3));
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "dir", final);
    reply(k, MSG_CKPT_DONE, m->step, b);
}

void *worker_compute_main(void *arg) {
    worker_ctx_t *x = arg;
    compute_t k = {.x = x, .rank = -1};
    k.pipe = zmq_socket(x->zctx, ZMQ_PAIR);
    int zero = 0;
    if (!k.pipe || zmq_setsockopt(k.pipe, ZMQ_LINGER, &zero, sizeof zero) != 0 || zmq_connect(k.pipe, x->pipe_ep) != 0) {
        LOG_E("compute thread: cannot connect the pipe");
        atomic_store(&x->compute_failed, 1);
        atomic_store(&x->compute_exited, 1);
        if (k.pipe) zmq_close(k.pipe);
        return NULL;
    }
    while (!atomic_load(&x->quit)) {
        wire_msg_t m;
        int rc = wire_recv(k.pipe, NULL, NULL, &m, 0);
        if (rc) continue;
        if (m.type == MSG_SHUTDOWN) {
            wire_msg_clear(&m);
            break;
        }
        if (m.type == MSG_JOB) on_job(&k, &m);
        else if (m.type == MSG_RELEASE) {
            if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m.body, "reregister"))) on_reregister(&k);
            else release(&k);
        }
        else if (m.job != k.job) LOG_D("compute: dropped %s of job %llu", wire_type_name(m.type),
                                       (unsigned long long)m.job);
        else if (m.type == MSG_GENERATION || m.type == MSG_ABORT) on_generation(&k, &m);
        else if (m.type == MSG_PEERS) {
            if (m.generation == k.gen) on_peers(&k, &m);
        }
        else if (m.type == MSG_MB) on_mb(&k, &m);
        else if (m.type == MSG_DRAIN) on_drain(&k, &m);
        else if (m.type == MSG_REDUCE) {
            if (m.generation == k.gen) on_reduce(&k, &m); /* a REDUCE of an older generation is void */
        } else if (m.type == MSG_APPLY) on_apply(&k, &m);
        else if (m.type == MSG_CKPT) on_ckpt(&k, &m);
        else if (m.type == MSG_STATE_SEND) on_state_send(&k, &m);
        else if (m.type == MSG_STATE_RECV) on_state_recv(&k, &m);
        else LOG_W("compute: unexpected %s", wire_type_name(m.type));
        wire_msg_clear(&m);
    }
    release(&k);
    zmq_close(k.pipe);
    atomic_store(&x->compute_exited, 1);
    return NULL;
}
