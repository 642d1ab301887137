/* The coordinator daemon (see coord.h): socket loop, worker registry, liveness, worker spawning (local fork/exec,
 * or MPI_Comm_spawn under mpirun), client requests. The per-job state machine (plan, dispatch, reduce, commit) lives in jobrun.c.
 * Tested by tests/integration/coordinator_*.sh and bench/bench_coordinator. */
#include "coordinator/coord.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "common/err.h"
#include "common/wire.h"
#include "coordinator/coord_internal.h"

double coord_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double coord_wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- sending ---- */

int coord_send(coord_t *c, worker_t *w, const wire_msg_t *m) {
    if (w->state == W_DEAD) return LLAVA_ENOTFOUND;
    int rc = wire_send(c->sock, w->ident, w->idlen, m, ZMQ_DONTWAIT);
    /* Not declared dead here: callers loop over the members (REDUCE, APPLY, GENERATION), and a death in the middle
     * would start a new generation under them (a REDUCE of the new generation went out before its micro-batches). */
    if (rc == LLAVA_ENOTFOUND) w->unroutable = 1;
    else if (rc) LOG_W("worker %d: sending %s failed: %s", w->id, wire_type_name(m->type), err_str(rc));
    return rc;
}

/* Declares dead the workers a send found unroutable, once the handler that sent is done. */
static void coord_settle(coord_t *c) {
    for (int again = 1; again;) {
        again = 0;
        for (int i = 0; i < c->nw; i++)
            if (c->w[i].unroutable && c->w[i].state != W_DEAD) {
                c->w[i].unroutable = 0;
                coord_worker_dead(c, &c->w[i], "connection lost (message unroutable)");
                again = 1; /* the recovery's own sends may have found another */
            }
    }
}

static int reply(coord_t *c, const uint8_t *id, size_t idlen, int64_t req, cJSON *body, const char *error) {
    wire_msg_t m = {.type = MSG_REPLY, .step = -1, .body = body ? body : cJSON_CreateObject()};
    if (!m.body) return LLAVA_ENOMEM;
    cJSON_AddNumberToObject(m.body, "req", (double)req); /* the client matches replies to its requests */
    cJSON_AddBoolToObject(m.body, "ok", error == NULL);
    if (error) cJSON_AddStringToObject(m.body, "error", error);
    int rc = wire_send(c->sock, id, idlen, &m, ZMQ_DONTWAIT);
    cJSON_Delete(m.body);
    return rc;
}

/* ---- workers ---- */

static worker_t *worker_by_ident(coord_t *c, const uint8_t *id, size_t idlen) {
    for (int i = 0; i < c->nw; i++)
        if (c->w[i].idlen == idlen && memcmp(c->w[i].ident, id, idlen) == 0 && c->w[i].state != W_DEAD) return &c->w[i];
    return NULL;
}

static worker_t *worker_add(coord_t *c, const uint8_t *id, size_t idlen) {
    if (c->nw == c->capw) {
        int cap = c->capw ? c->capw * 2 : 16;
        worker_t *w = realloc(c->w, (size_t)cap * sizeof *w);
        if (!w) return NULL;
        c->w = w;
        c->capw = cap;
    }
    worker_t *w = &c->w[c->nw];
    memset(w, 0, sizeof *w);
    w->id = c->nw++;
    memcpy(w->ident, id, idlen);
    w->idlen = idlen;
    w->rank = -1;
    w->state = W_IDLE;
    w->last_seen = w->last_progress_at = coord_now();
    return w;
}

static const char *k_wstate[] = {"idle", "loading", "ready", "busy", "dead"};
const char *coord_worker_state_name(int s) { return (s >= 0 && s <= W_DEAD) ? k_wstate[s] : "?"; }

/* Whether pid is still a llava-worker on this host (an MPI rank's pid may be reused once its launcher reaped it). */
static int is_worker_process(int pid) {
    char path[64], cmd[512] = "";
    snprintf(path, sizeof path, "/proc/%d/cmdline", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(cmd, 1, sizeof cmd - 1, f);
    fclose(f);
    cmd[n] = 0; /* argv[0] ends at the first NUL */
    const char *base = strrchr(cmd, '/');
    return strcmp(base ? base + 1 : cmd, "llava-worker") == 0;
}

void coord_worker_dead(coord_t *c, worker_t *w, const char *why) {
    if (w->state == W_DEAD) return;
    w->state = W_DEAD;
    snprintf(w->dead_reason, sizeof w->dead_reason, "%s", why);
    w->died_at = coord_now();
    w->died_wall = coord_wall();
    LOG_W("worker %d (%s pid %d, %s) declared dead: %s", w->id, w->host, w->pid, w->device, why);
    if (w->spawned_pid > 0 && w->pid == w->spawned_pid) kill(w->spawned_pid, SIGKILL); /* fence: no comeback */
    if (c->cfg.mpi && w->replaceable) {
        /* an MPI rank on this host that hangs is fenced like a local child; one elsewhere may come back and is
         * then told to register again (an extra worker) */
        if (w->pid > 0 && strcmp(w->host, c->hostname) == 0 && is_worker_process(w->pid)) kill(w->pid, SIGKILL);
        if (!c->stopping && c->nreplace < (int)(sizeof c->replace_q / sizeof c->replace_q[0]))
            c->replace_q[c->nreplace++] = w->id;
    }
    if (c->job) jobrun_worker_lost(c, w);
}

/* Whether a dead worker may be replaced now: always between jobs, within max_replacements during one (which the
 * replacement then uses up). */
static int take_replacement(coord_t *c) {
    if (c->stopping) return 0;
    if (!c->job) return 1;
    if (c->job->replacements >= c->job->max_replacements) return 0;
    c->job->replacements++;
    return 1;
}

/* A worker's arguments after the program name: the endpoint, --worker-args, then `device` if given (last, so it
 * wins). *extra owns the split --worker-args; free it after use. Returns the count, or -1 out of memory. */
static int worker_args(const coord_t *c, char **args, int max, const char *device, char **extra) {
    int na = 0;
    *extra = NULL;
    args[na++] = "--coordinator";
    args[na++] = (char *)c->worker_ep;
    if (c->cfg.mpi) args[na++] = "--mpi";
    if (c->cfg.worker_args && *c->cfg.worker_args) {
        *extra = strdup(c->cfg.worker_args);
        if (!*extra) return -1;
        for (char *save = NULL, *t = strtok_r(*extra, " ", &save); t && na < max - 3; t = strtok_r(NULL, " ", &save))
            args[na++] = t;
    }
    if (device && *device) {
        args[na++] = "--device";
        args[na++] = (char *)device;
    }
    args[na] = NULL;
    return na;
}

/* ---- local workers (fork/exec) ---- */

static int spawn_worker(coord_t *c) {
    char *args[64], *extra = NULL;
    args[0] = (char *)c->cfg.worker_exe;
    if (worker_args(c, args + 1, 63, NULL, &extra) < 0) return LLAVA_ENOMEM;
    pid_t pid = fork();
    if (pid < 0) {
        LOG_E("fork: %s", strerror(errno));
        free(extra);
        return LLAVA_EIO;
    }
    if (pid == 0) {
        execv(args[0], args);
        fprintf(stderr, "llava-coordinator: cannot exec %s: %s\n", args[0], strerror(errno));
        _exit(127);
    }
    free(extra);
    if (c->nspawned < (int)(sizeof c->spawned / sizeof c->spawned[0])) c->spawned[c->nspawned++] = pid;
    LOG_I("spawned local worker pid %d", (int)pid);
    return 0;
}

/* Reaps exited local workers; a worker that dies is declared dead at once (the launcher's exit notice) and
 * replaced while the job's replacement budget lasts. */
static void reap_children(coord_t *c) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        char why[128];
        if (WIFSIGNALED(status)) snprintf(why, sizeof why, "process exited on signal %d", WTERMSIG(status));
        else snprintf(why, sizeof why, "process exited with status %d", WEXITSTATUS(status));
        int known = 0;
        for (int i = 0; i < c->nspawned; i++)
            if (c->spawned[i] == pid) {
                c->spawned[i] = c->spawned[--c->nspawned];
                known = 1;
                break;
            }
        if (!known) continue;
        for (int i = 0; i < c->nw; i++)
            if (c->w[i].pid == pid && c->w[i].state != W_DEAD) coord_worker_dead(c, &c->w[i], why);
        if (!c->stopping && c->cfg.spawn_workers > 0) {
            if (take_replacement(c)) spawn_worker(c);
            else LOG_W("no replacement for pid %d: max_replacements reached; going on with fewer workers", (int)pid);
        }
    }
}

/* ---- MPI workers (MPI_Comm_spawn) ---- */

/* Replaces the dead MPI workers queued by coord_worker_dead, one MPI_Comm_spawn each, on the dead worker's host
 * and device. The spawn blocks this loop until the child has called MPI_Init (a few hundred ms). */
static void replace_mpi_workers(coord_t *c) {
    while (c->nreplace > 0 && !c->stopping) {
        const worker_t *dead = &c->w[c->replace_q[--c->nreplace]];
        if (!take_replacement(c)) {
            LOG_W("no replacement for worker %d (%s pid %d): max_replacements reached; going on with fewer workers",
                  dead->id, dead->host, dead->pid);
            continue;
        }
        char *args[64], *extra = NULL, device[32];
        snprintf(device, sizeof device, "%s", dead->device);
        if (worker_args(c, args, 64, device, &extra) < 0) {
            LOG_E("out of memory building a replacement's arguments");
            return;
        }
        double ms = 0;
        int rc = mpilaunch_spawn(c->cfg.worker_exe, args, dead->host, &ms);
        if (rc) LOG_E("MPI_Comm_spawn of a replacement for worker %d on %s failed (%s); going on with fewer workers",
                      dead->id, dead->host, err_str(rc));
        else LOG_I("replaced worker %d (%s pid %d) via MPI_Comm_spawn on %s, device %s, in %.0f ms", dead->id,
                   dead->host, dead->pid, dead->host, device, ms);
        free(extra);
    }
}

/* ---- messages from workers ---- */

static void on_register(coord_t *c, const uint8_t *id, size_t idlen, wire_msg_t *m) {
    worker_t *w = worker_by_ident(c, id, idlen);
    if (w) {
        /* The same identity registering again: its process restarted or it was fenced; treat the old as dead. */
        w->replaceable = 0; /* the process is back; no replacement for it */
        coord_worker_dead(c, w, "re-registered (restarted)");
    }
    w = worker_add(c, id, idlen);
    if (!w) return;
    w->replaceable = c->cfg.mpi != NULL;
    snprintf(w->host, sizeof w->host, "%s", wire_get_str(m->body, "host", "?"));
    snprintf(w->device, sizeof w->device, "%s", wire_get_str(m->body, "device", "cpu"));
    w->pid = (int)wire_get_i64(m->body, "pid", 0);
    w->threads = (int)wire_get_i64(m->body, "threads", 1);
    w->mem_bytes = wire_get_i64(m->body, "mem_bytes", 0);
    w->held_job = (uint64_t)wire_get_i64(m->body, "held_job", 0);
    w->held_step = wire_get_i64(m->body, "held_step", -1);
    for (int i = 0; i < c->nspawned; i++)
        if (c->spawned[i] == w->pid) w->spawned_pid = w->pid;
    LOG_I("worker %d registered: %s pid %d %s, %d threads", w->id, w->host, w->pid, w->device, w->threads);
    wire_msg_t r;
    if (wire_msg_init(&r, MSG_WELCOME, 0, 0, -1)) return;
    cJSON_AddNumberToObject(r.body, "worker_id", w->id);
    cJSON_AddNumberToObject(r.body, "heartbeat_ms", c->heartbeat_ms);
    coord_send(c, w, &r);
    wire_msg_clear(&r);
}

static void on_worker_msg(coord_t *c, const uint8_t *id, size_t idlen, wire_msg_t *m) {
    if (m->type == MSG_REGISTER) {
        on_register(c, id, idlen, m);
        return;
    }
    worker_t *w = worker_by_ident(c, id, idlen);
    if (!w) {
        /* Unknown sender: a worker from before a coordinator restart, or one fenced as dead. Tell it to drop its
         * job state and register again. */
        wire_msg_t r;
        if (wire_msg_init(&r, MSG_RELEASE, m->job, 0, -1)) return;
        cJSON_AddBoolToObject(r.body, "reregister", 1);
        wire_send(c->sock, id, idlen, &r, ZMQ_DONTWAIT);
        wire_msg_clear(&r);
        LOG_D("dropped %s from an unregistered sender; asked it to re-register", wire_type_name(m->type));
        return;
    }
    w->last_seen = coord_now();
    if (m->type == MSG_HEARTBEAT) {
        int64_t progress = wire_get_i64(m->body, "progress", 0);
        if (progress != w->progress) {
            w->progress = progress;
            w->last_progress_at = w->last_seen;
        }
        return;
    }
    if (c->job && m->job == c->job->id) jobrun_on_msg(c, w, m);
    else LOG_D("dropped %s for job %llu from worker %d (not the running job)", wire_type_name(m->type),
               (unsigned long long)m->job, w->id);
}

/* ---- client requests ---- */

static void on_client_msg(coord_t *c, const uint8_t *id, size_t idlen, wire_msg_t *m) {
    cJSON *body = NULL;
    char err[512] = "";
    switch (m->type) {
    case MSG_SUBMIT: {
        uint64_t job = 0;
        int rc = coord_submit(c, m->body, &job, err, sizeof err);
        if (rc == 0) {
            c->idle_since = 0;
            c->jobs_seen++;
            body = cJSON_CreateObject();
            cJSON_AddNumberToObject(body, "job", (double)job);
        }
        break;
    }
    case MSG_STATUS: body = coord_status_json(c, (uint64_t)wire_get_i64(m->body, "job", 0), err, sizeof err); break;
    case MSG_WORKERS: body = coord_workers_json(c); break;
    case MSG_CANCEL: coord_cancel(c, (uint64_t)wire_get_i64(m->body, "job", 0), err, sizeof err); break;
    case MSG_LEDGER: {
        cJSON *steps = NULL;
        uint64_t job = (uint64_t)wire_get_i64(m->body, "job", 0);
        int rc = state_ledger_range(c->st, job, wire_get_i64(m->body, "from", 0), wire_get_i64(m->body, "to", -1),
                                    &steps);
        if (rc) snprintf(err, sizeof err, "cannot read the ledger of job %llu: %s", (unsigned long long)job,
                         err_str(rc));
        else {
            body = cJSON_CreateObject();
            cJSON_AddItemToObject(body, "steps", steps);
        }
        break;
    }
    default: snprintf(err, sizeof err, "unexpected request %s", wire_type_name(m->type));
    }
    reply(c, id, idlen, wire_get_i64(m->body, "req", 0), body, err[0] ? err : NULL);
}

static void on_message(coord_t *c) {
    uint8_t id[WIRE_MAX_IDENTITY];
    size_t idlen = 0;
    wire_msg_t m;
    int rc = wire_recv(c->sock, id, &idlen, &m, ZMQ_DONTWAIT);
    if (rc) return; /* malformed (already logged) or nothing */
    c->messages++;
    if (m.type >= MSG_SUBMIT && m.type < MSG_REPLY) on_client_msg(c, id, idlen, &m);
    else if (m.type < MSG_WELCOME) on_worker_msg(c, id, idlen, &m);
    else LOG_W("dropped %s: not a message a coordinator accepts", wire_type_name(m.type));
    wire_msg_clear(&m);
}

/* ---- liveness ---- */

static void probe_workers(coord_t *c) {
    for (int i = 0; i < c->nw; i++) {
        worker_t *w = &c->w[i];
        if (w->state == W_DEAD) continue;
        wire_msg_t p;
        if (wire_msg_init(&p, MSG_HEARTBEAT, 0, 0, -1)) return;
        coord_send(c, w, &p); /* declares it dead if unroutable */
        wire_msg_clear(&p);
    }
}

/* A peer disconnected (a worker crashed, or a client left). ROUTER removes a disconnected peer's identity, so a
 * probe to each live worker finds the dead one. The event comes from ZeroMQ's I/O thread, sometimes before the
 * socket has dropped the peer's pipe (the probe is then queued, not refused), so probes repeat every 50 ms for a
 * second; without that a kill was sometimes found only by the heartbeat timeout (bench/bench_recovery --external). */
static void on_monitor(coord_t *c) {
    zmq_msg_t ev;
    zmq_msg_init(&ev);
    if (zmq_msg_recv(&ev, c->mon, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&ev);
        return;
    }
    uint16_t event = 0;
    if (zmq_msg_size(&ev) >= 2) memcpy(&event, zmq_msg_data(&ev), 2);
    zmq_msg_close(&ev);
    zmq_msg_init(&ev);
    if (zmq_msg_recv(&ev, c->mon, ZMQ_DONTWAIT) >= 0) zmq_msg_close(&ev); /* the endpoint frame */
    else zmq_msg_close(&ev);
    if (event != ZMQ_EVENT_DISCONNECTED) return;
    probe_workers(c);
    c->probe_until = coord_now() + 1.0;
    c->next_probe = coord_now() + 0.05;
}

static void check_timeouts(coord_t *c) {
    double now = coord_now();
    for (int i = 0; i < c->nw; i++) {
        worker_t *w = &c->w[i];
        if (w->state == W_DEAD) continue;
        double silent_ms = (now - w->last_seen) * 1000.0;
        double still_ms = (now - w->last_progress_at) * 1000.0;
        char why[160];
        if (silent_ms > c->hang_timeout_ms) {
            snprintf(why, sizeof why, "no heartbeat for %.0f ms (stopped or unreachable)", silent_ms);
            coord_worker_dead(c, w, why);
        } else if (c->job && jobrun_worker_busy(c, w) && still_ms > c->hang_timeout_ms) {
            snprintf(why, sizeof why, "no progress for %.0f ms while busy (hung compute or collective)", still_ms);
            coord_worker_dead(c, w, why);
        }
    }
}

/* ---- life cycle ---- */

static int open_socket(coord_t *c) {
    int rc = 0;
    c->zctx = zmq_ctx_new();
    CHECK_GOTO(c->zctx, LLAVA_ENET, "zmq_ctx_new failed");
    c->sock = zmq_socket(c->zctx, ZMQ_ROUTER);
    CHECK_GOTO(c->sock, LLAVA_ENET, "zmq_socket(ROUTER) failed");
    int one = 1, zero = 0, hwm = 100000;
    ZMQ_CHECK_GOTO(zmq_setsockopt(c->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one));
    ZMQ_CHECK_GOTO(zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof zero));
    ZMQ_CHECK_GOTO(zmq_setsockopt(c->sock, ZMQ_SNDHWM, &hwm, sizeof hwm));
    ZMQ_CHECK_GOTO(zmq_setsockopt(c->sock, ZMQ_RCVHWM, &hwm, sizeof hwm));
    ZMQ_CHECK_GOTO(zmq_socket_monitor(c->sock, "inproc://coord-monitor", ZMQ_EVENT_DISCONNECTED));
    c->mon = zmq_socket(c->zctx, ZMQ_PAIR);
    CHECK_GOTO(c->mon, LLAVA_ENET, "zmq_socket(PAIR) failed");
    ZMQ_CHECK_GOTO(zmq_connect(c->mon, "inproc://coord-monitor"));
    if (zmq_bind(c->sock, c->cfg.bind) != 0) {
        LOG_E("cannot bind %s: %s", c->cfg.bind, zmq_strerror(zmq_errno()));
        rc = LLAVA_ENET;
        goto cleanup;
    }
    size_t len = sizeof c->endpoint;
    zmq_getsockopt(c->sock, ZMQ_LAST_ENDPOINT, c->endpoint, &len);
cleanup:
    return rc;
}

int coord_new(const coord_config_t *cfg, coord_t **out) {
    int rc = 0;
    coord_t *c = calloc(1, sizeof *c);
    ALLOC_CHECK_GOTO(c);
    c->cfg = *cfg;
    if (c->cfg.mb_inflight < 1) c->cfg.mb_inflight = 2;
    c->heartbeat_ms = 500;
    c->hang_timeout_ms = 10000;
    RC_CHECK_GOTO(state_open(cfg->state_dir, &c->st));
    RC_CHECK_GOTO(open_socket(c));
    LOG_I("coordinator listening on %s, state in %s", c->endpoint, cfg->state_dir);
    if (gethostname(c->hostname, sizeof c->hostname - 1) != 0) snprintf(c->hostname, sizeof c->hostname, "?");
    snprintf(c->worker_ep, sizeof c->worker_ep, "%s", c->endpoint); /* spawned workers use the resolved one */
    if (cfg->mpi) RC_CHECK_GOTO(mpilaunch_publish(cfg->mpi, c->endpoint, c->worker_ep, sizeof c->worker_ep));
    for (int i = 0; i < cfg->spawn_workers; i++) RC_CHECK_GOTO(spawn_worker(c));
    *out = c;
    return 0;
cleanup:
    coord_free(&c);
    *out = NULL;
    return rc;
}

int coord_run(coord_t *c, volatile sig_atomic_t *stop) {
    double next_tick = coord_now();
    while (!*stop) {
        reap_children(c);
        if (c->nreplace) replace_mpi_workers(c);
        coord_settle(c);
        double now = coord_now();
        int wait_ms = (int)((next_tick - now) * 1000.0);
        if (wait_ms < 0) wait_ms = 0;
        if (c->cfg.spawn_workers > 0 && wait_ms > 50) wait_ms = 50; /* SIGCHLD interrupts poll; bound it anyway */
        if (c->probe_until > now && wait_ms > 50) wait_ms = 50;
        zmq_pollitem_t items[2] = {{c->sock, 0, ZMQ_POLLIN, 0}, {c->mon, 0, ZMQ_POLLIN, 0}};
        int n = zmq_poll(items, 2, wait_ms);
        if (n < 0 && zmq_errno() != EINTR) {
            LOG_E("zmq_poll: %s", zmq_strerror(zmq_errno()));
            return 2;
        }
        if (n > 0 && (items[0].revents & ZMQ_POLLIN))
            for (int k = 0; k < 256; k++) { /* drain a burst, but keep timers fair */
                int ev = 0;
                size_t sz = sizeof ev;
                zmq_getsockopt(c->sock, ZMQ_EVENTS, &ev, &sz);
                if (!(ev & ZMQ_POLLIN)) break;
                on_message(c);
                coord_settle(c);
            }
        if (n > 0 && (items[1].revents & ZMQ_POLLIN)) on_monitor(c);
        now = coord_now();
        if (c->probe_until > now && now >= c->next_probe) {
            probe_workers(c);
            c->next_probe = now + 0.05;
        }
        coord_settle(c);
        if (now >= next_tick) {
            check_timeouts(c);
            coord_schedule(c);
            if (c->job) jobrun_tick(c);
            coord_settle(c);
            next_tick = now + (c->heartbeat_ms / 2) / 1000.0;
        }
        if (c->cfg.exit_when_idle && c->jobs_seen > 0 && !c->job && c->idle_since > 0 && now - c->idle_since > 0.2)
            break;
    }
    return c->cfg.exit_when_idle ? (c->last_job_failed ? 1 : 0) : 0;
}

const char *coord_endpoint(const coord_t *c) { return c->endpoint; }

void coord_free(coord_t **pc) {
    if (!pc || !*pc) return;
    coord_t *c = *pc;
    c->stopping = 1;
    if (c->job) jobrun_free(c);
    /* Stop the monitor while its reader is open: an event for a closed reader blocks ZeroMQ's I/O thread for good,
     * holding the lock zmq_socket_monitor needs (workers that exit on SHUTDOWN below would trigger it). */
    if (c->sock) zmq_socket_monitor(c->sock, NULL, 0);
    if (c->sock) {
        for (int i = 0; i < c->nw; i++) {
            if (c->w[i].state == W_DEAD) continue;
            wire_msg_t m;
            if (wire_msg_init(&m, MSG_SHUTDOWN, 0, 0, -1) == 0) {
                wire_send(c->sock, c->w[i].ident, c->w[i].idlen, &m, ZMQ_DONTWAIT);
                wire_msg_clear(&m);
            }
        }
    }
    /* give spawned workers a moment to exit on SHUTDOWN, then make sure */
    for (int t = 0; t < 40 && c->nspawned > 0; t++) {
        int status;
        pid_t pid;
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
            for (int i = 0; i < c->nspawned; i++)
                if (c->spawned[i] == pid) c->spawned[i] = c->spawned[--c->nspawned];
        if (c->nspawned) usleep(50000);
    }
    for (int i = 0; i < c->nspawned; i++) {
        kill(c->spawned[i], SIGKILL);
        waitpid(c->spawned[i], NULL, 0);
    }
    if (c->mon) zmq_close(c->mon);
    if (c->sock) zmq_close(c->sock);
    if (c->zctx) zmq_ctx_term(c->zctx);
    state_close(&c->st);
    free(c->w);
    free(c);
    *pc = NULL;
}
