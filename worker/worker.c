/* The worker's main thread (see worker.h): coordinator socket, registration, heartbeats, the generation fence,
 * and the pipe to the compute thread (worker_compute.c). Messages for the job pass through unchanged in both
 * directions; a new generation or an abort is published to the compute thread through an atomic before the
 * message itself, so an all-reduce in flight stops at once. Tested by tests/integration/coordinator_*.sh. */
#include "worker/worker.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "common/err.h"
#include "common/wire.h"
#include "worker/backend.h"
#include "worker/worker_internal.h"

#define ORPHAN_TIMEOUT_S 60.0

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int send_register(worker_ctx_t *x) {
    wire_msg_t m;
    int rc = wire_msg_init(&m, MSG_REGISTER, 0, 0, -1);
    if (rc) return rc;
    char host[64] = "?";
    gethostname(host, sizeof host - 1);
    cJSON_AddStringToObject(m.body, "host", host);
    cJSON_AddNumberToObject(m.body, "pid", (double)getpid());
    cJSON_AddStringToObject(m.body, "device", x->cfg.device);
    cJSON_AddNumberToObject(m.body, "threads", x->cfg.threads);
    long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGE_SIZE);
    cJSON_AddNumberToObject(m.body, "mem_bytes", (double)pages * (double)psize);
    cJSON_AddStringToObject(m.body, "backend", x->cfg.backend);
    if (atomic_load(&x->held_job) > 0) { /* a restarted coordinator may go on from this state, without a reload */
        cJSON_AddNumberToObject(m.body, "held_job", (double)atomic_load(&x->held_job));
        cJSON_AddNumberToObject(m.body, "held_step", (double)atomic_load(&x->held_step));
    }
    rc = wire_send(x->sock, NULL, 0, &m, ZMQ_DONTWAIT);
    wire_msg_clear(&m);
    x->registered_at = now_s();
    return rc;
}

static void send_heartbeat(worker_ctx_t *x) {
    wire_msg_t m;
    if (wire_msg_init(&m, MSG_HEARTBEAT, (uint64_t)atomic_load(&x->job), (uint32_t)atomic_load(&x->generation),
                      -1))
        return;
    cJSON_AddNumberToObject(m.body, "progress", (double)atomic_load(&x->progress));
    wire_send(x->sock, NULL, 0, &m, ZMQ_DONTWAIT);
    wire_msg_clear(&m);
}

/* A message from the coordinator. */
static int on_coordinator(worker_ctx_t *x, int *quit) {
    wire_msg_t m;
    int rc = wire_recv(x->sock, NULL, NULL, &m, ZMQ_DONTWAIT);
    if (rc) return 0;
    x->last_heard = now_s();
    switch (m.type) {
    case MSG_WELCOME:
        x->welcomed = 1;
        x->worker_id = (int)wire_get_i64(m.body, "worker_id", -1);
        x->heartbeat_ms = (int)wire_get_i64(m.body, "heartbeat_ms", 500);
        if (x->heartbeat_ms < 10) x->heartbeat_ms = 10;
        log_set_role("worker", x->worker_id);
        LOG_I("registered as worker %d (heartbeat %d ms)", x->worker_id, x->heartbeat_ms);
        break;
    case MSG_HEARTBEAT: break; /* a liveness probe */
    case MSG_SHUTDOWN:
        LOG_I("shutdown requested by the coordinator");
        *quit = 1;
        break;
    case MSG_RELEASE:
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m.body, "reregister"))) {
            /* The coordinator does not know us (it restarted, or fenced us). One answer per registration: the
             * others answer messages sent before our REGISTER. The compute thread stops the step in flight but
             * keeps the model, then reports what it holds (on_compute sends the REGISTER). */
            if (!x->welcomed) break;
            LOG_W("the coordinator asked this worker to register again; the step in flight is dropped");
            x->welcomed = 0;
            x->reg_pending = 1;
            x->registered_at = now_s();
        }
        atomic_store(&x->job, 0);
        atomic_fetch_add(&x->fence, 1);
        wire_send(x->pipe, NULL, 0, &m, 0);
        break;
    case MSG_JOB:
        atomic_store(&x->job, (int64_t)m.job);
        atomic_store(&x->generation, 0);
        wire_send(x->pipe, NULL, 0, &m, 0);
        break;
    case MSG_GENERATION:
    case MSG_ABORT:
        if ((int64_t)m.job != atomic_load(&x->job)) break;
        atomic_store(&x->generation, (int64_t)m.generation);
        atomic_fetch_add(&x->fence, 1); /* breaks an all-reduce of the previous generation */
        wire_send(x->pipe, NULL, 0, &m, 0);
        break;
    default:
        if ((int64_t)m.job != atomic_load(&x->job)) {
            LOG_D("dropped %s for job %llu (not ours)", wire_type_name(m.type), (unsigned long long)m.job);
            break;
        }
        wire_send(x->pipe, NULL, 0, &m, 0);
    }
    wire_msg_clear(&m);
    return 0;
}

/* A result from the compute thread: forwarded to the coordinator. */
static void on_compute(worker_ctx_t *x) {
    wire_msg_t m;
    if (wire_recv(x->pipe, NULL, NULL, &m, ZMQ_DONTWAIT)) return;
    if (m.type == MSG_REGISTER) { /* the compute thread is quiet and its held state current */
        x->reg_pending = 0;
        send_register(x);
        wire_msg_clear(&m);
        return;
    }
    wire_send(x->sock, NULL, 0, &m, 0);
    wire_msg_clear(&m);
}

static int open_sockets(worker_ctx_t *x) {
    int rc = 0;
    x->zctx = zmq_ctx_new();
    CHECK_GOTO(x->zctx, LLAVA_ENET, "zmq_ctx_new failed");
    x->sock = zmq_socket(x->zctx, ZMQ_DEALER);
    CHECK_GOTO(x->sock, LLAVA_ENET, "zmq_socket(DEALER) failed");
    char host[64] = "?", ident[128];
    gethostname(host, sizeof host - 1);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(ident, sizeof ident, "w-%s-%d-%lx", host, (int)getpid(), (unsigned long)ts.tv_nsec);
    int zero = 0, ivl = 100, ivl_max = 1000;
    ZMQ_CHECK_GOTO(zmq_setsockopt(x->sock, ZMQ_ROUTING_ID, ident, strlen(ident)));
    ZMQ_CHECK_GOTO(zmq_setsockopt(x->sock, ZMQ_LINGER, &zero, sizeof zero));
    ZMQ_CHECK_GOTO(zmq_setsockopt(x->sock, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl));
    ZMQ_CHECK_GOTO(zmq_setsockopt(x->sock, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof ivl_max));
    if (zmq_connect(x->sock, x->cfg.coordinator) != 0) {
        LOG_E("cannot connect to coordinator %s: %s", x->cfg.coordinator, zmq_strerror(zmq_errno()));
        rc = LLAVA_ENET;
        goto cleanup;
    }
    x->pipe = zmq_socket(x->zctx, ZMQ_PAIR);
    CHECK_GOTO(x->pipe, LLAVA_ENET, "zmq_socket(PAIR) failed");
    ZMQ_CHECK_GOTO(zmq_setsockopt(x->pipe, ZMQ_LINGER, &zero, sizeof zero));
    snprintf(x->pipe_ep, sizeof x->pipe_ep, "inproc://worker-pipe-%p", (void *)x);
    ZMQ_CHECK_GOTO(zmq_bind(x->pipe, x->pipe_ep));
cleanup:
    return rc;
}

int worker_run(const worker_config_t *cfg, volatile sig_atomic_t *stop) {
    worker_ctx_t *x = calloc(1, sizeof *x);
    int code = 1, thread_started = 0;
    if (!x) return 1;
    x->cfg = *cfg;
    x->heartbeat_ms = 500;
    x->worker_id = -1;
    int rc = strcmp(cfg->backend, "sim") == 0 ? backend_sim_new(cfg->sim_mb_ms, &x->backend)
                                              : backend_model_new_device(cfg->threads, cfg->device, &x->backend);
    if (rc) {
        LOG_E("cannot create the %s backend: %s", cfg->backend, err_str(rc));
        goto cleanup;
    }
    if (open_sockets(x)) goto cleanup;
    if (pthread_create(&x->thread, NULL, worker_compute_main, x) != 0) {
        LOG_E("cannot start the compute thread");
        goto cleanup;
    }
    thread_started = 1;
    if (send_register(x)) goto cleanup;
    LOG_I("worker pid %d (%s backend, %s, %d threads) connecting to %s", (int)getpid(), cfg->backend, cfg->device,
          cfg->threads, cfg->coordinator);
    double next_hb = now_s();
    int quit = 0;
    pid_t parent = getppid();
    x->last_heard = now_s();
    while (!*stop && !quit && !atomic_load(&x->compute_exited)) {
        double now = now_s();
        int wait = (int)((next_hb - now) * 1000.0);
        if (wait < 0) wait = 0;
        zmq_pollitem_t items[2] = {{x->sock, 0, ZMQ_POLLIN, 0}, {x->pipe, 0, ZMQ_POLLIN, 0}};
        int n = zmq_poll(items, 2, wait);
        if (n < 0 && zmq_errno() != EINTR) break;
        if (n > 0 && (items[0].revents & ZMQ_POLLIN)) on_coordinator(x, &quit);
        if (n > 0 && (items[1].revents & ZMQ_POLLIN)) on_compute(x);
        now = now_s();
        if (now >= next_hb) {
            /* A local worker whose coordinator died waits for it to come back on the same endpoint, but not
             * forever: an orphan that hears nothing for ORPHAN_TIMEOUT_S exits. */
            if (getppid() != parent && now - x->last_heard > ORPHAN_TIMEOUT_S) {
                LOG_W("no coordinator for %.0f s since this worker's launcher exited; exiting", now - x->last_heard);
                break;
            }
            if (!x->welcomed && now - x->registered_at > (x->reg_pending ? 30.0 : 2.0))
                send_register(x); /* coordinator not up yet (or the compute thread is stuck) */
            else if (x->welcomed) send_heartbeat(x);
            next_hb = now + x->heartbeat_ms / 1000.0;
        }
    }
    code = atomic_load(&x->compute_failed) ? 1 : 0;
cleanup:
    if (thread_started) {
        atomic_store(&x->quit, 1);
        atomic_fetch_add(&x->fence, 1);
        wire_msg_t m;
        if (wire_msg_init(&m, MSG_SHUTDOWN, 0, 0, -1) == 0) {
            wire_send(x->pipe, NULL, 0, &m, ZMQ_DONTWAIT);
            wire_msg_clear(&m);
        }
        pthread_join(x->thread, NULL);
    }
    if (x->pipe) zmq_close(x->pipe);
    if (x->sock) zmq_close(x->sock);
    if (x->zctx) zmq_ctx_term(x->zctx);
    backend_free(&x->backend);
    free(x);
    return code;
}
