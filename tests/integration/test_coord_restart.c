/* A coordinator restart whose workers disagree on the step they hold falls back to the checkpoint: two scripted
 * workers (DEALER sockets in this process) run a job to step 3 and stall; the coordinator is killed and started
 * again on the same state and endpoint; the workers re-register claiming steps 3 and 2. The new coordinator must
 * not send JOB {keep}: it loads them from the start (no checkpoint yet), replays steps 0-2 against the ledger
 * (replayed_steps 3, resumed_in_memory false) and finishes. (Agreeing workers: test_cluster_sim's restart.)
 * Also: the APPLY before each checkpoint, and no other, carries gather_state (ZeRO-1 workers gather their shards).
 * Run: ctest -R test_coord_restart (needs LLAVA_BUILD_DIR, set by ctest). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "common/dataset.h"
#include "common/err.h"
#include "common/wire.h"
#include "coordinator/client.h"
#include "tests/sim_dataset.h"
#include "tests/coord_spawn.h"
#include "tests/test.h"

#define N_SAMPLES 96
#define STALL_STEP 3

typedef struct {
    void *sock;
    uint64_t job;
    uint32_t gen;
    int64_t held;       /* steps applied */
    int64_t claim;      /* held_step to report when asked to register again (-1: the truth) */
    int welcomed;
    int keep_jobs, jobs; /* JOB messages received, and how many asked to keep the state */
    int released;       /* RELEASE at the end of a job */
    int64_t job_start;  /* start_step of the last JOB */
    int applies, gathers;   /* APPLYs, and those with gather_state (a checkpoint or handover follows) */
    int64_t gather_step;    /* step of the last APPLY with gather_state (-1: none) */
    int ckpts, ckpts_gathered; /* CKPTs, and those right after an APPLY with gather_state */
} fake_t;

static char g_bin[1024], g_tmp[512];
static void *g_ctx;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void send_msg(fake_t *f, int type, int64_t step, cJSON *body) {
    wire_msg_t m = {.type = (uint16_t)type, .job = f->job, .generation = f->gen, .step = step,
                    .body = body ? body : cJSON_CreateObject()};
    wire_send(f->sock, NULL, 0, &m, 0);
    cJSON_Delete(m.body);
}

static void fake_register(fake_t *f, int i) {
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "host", "fake");
    cJSON_AddNumberToObject(b, "pid", 900000 + i);
    cJSON_AddStringToObject(b, "device", "cpu");
    if (f->job) {
        cJSON_AddNumberToObject(b, "held_job", (double)f->job);
        cJSON_AddNumberToObject(b, "held_step", (double)(f->claim >= 0 ? f->claim : f->held));
    }
    send_msg(f, MSG_REGISTER, -1, b);
}

/* Answers one coordinator message the way a worker would; micro-batches of step >= stall are left unanswered. */
static void fake_on(fake_t *f, int i, const wire_msg_t *m, int64_t stall) {
    cJSON *b = NULL;
    switch (m->type) {
    case MSG_WELCOME: f->welcomed = 1; break;
    case MSG_RELEASE:
        if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m->body, "reregister"))) f->released++;
        else if (f->welcomed) {
            f->welcomed = 0;
            fake_register(f, i);
        }
        break;
    case MSG_JOB:
        f->job = m->job;
        f->gen = 0;
        f->jobs++;
        f->keep_jobs += cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m->body, "keep"));
        f->job_start = wire_get_i64(m->body, "start_step", -1);
        f->held = f->job_start;
        send_msg(f, MSG_READY, -1, NULL);
        break;
    case MSG_GENERATION:
        f->gen = m->generation;
        b = cJSON_CreateObject();
        cJSON_AddStringToObject(b, "endpoint", "tcp://127.0.0.1:1");
        send_msg(f, MSG_READY, -1, b);
        break;
    case MSG_MB:
        if (m->step >= stall) break;
        b = cJSON_CreateObject();
        cJSON_AddNumberToObject(b, "mb", wire_get_num(m->body, "mb", -1));
        cJSON_AddNumberToObject(b, "loss_sum", 2.0 + (double)m->step);
        cJSON_AddNumberToObject(b, "n_targets", 1);
        cJSON_AddNumberToObject(b, "tokens", 10);
        send_msg(f, MSG_MB_DONE, m->step, b);
        break;
    case MSG_REDUCE:
        b = cJSON_CreateObject();
        cJSON_AddNumberToObject(b, "grad_norm", 1.0);
        send_msg(f, MSG_REDUCED, m->step, b);
        break;
    case MSG_APPLY:
        f->held = m->step + 1;
        f->applies++;
        if (wire_get_i64(m->body, "gather_state", 0) == 1) {
            f->gathers++;
            f->gather_step = m->step;
        }
        break;
    case MSG_CKPT: {
        f->ckpts++; /* the CKPT of step k follows the APPLY of step k - 1, which must ask for a gather */
        f->ckpts_gathered += f->gather_step == m->step - 1;
        /* a real checkpoint directory, so the run dir's `latest` is what a worker would leave */
        char dir[1200], p[1300];
        snprintf(dir, sizeof dir, "%s/%s", wire_get_str(m->body, "run_dir", "."), wire_get_str(m->body, "name", "x"));
        mkdir(dir, 0755);
        snprintf(p, sizeof p, "%s/trainer_state.json", dir);
        FILE *fp = fopen(p, "w");
        if (fp) {
            fprintf(fp, "{\"step\": %lld}\n", (long long)m->step);
            fclose(fp);
        }
        b = cJSON_CreateObject();
        cJSON_AddStringToObject(b, "dir", dir);
        send_msg(f, MSG_CKPT_DONE, m->step, b);
        break;
    }
    default: break;
    }
}

/* Runs the fake workers for `seconds`, or until stop() is true. */
static void pump(fake_t *f, int n, int64_t stall, double seconds, int (*stop)(void *), void *ud) {
    double end = now_s() + seconds, next_hb = 0;
    while (now_s() < end && !(stop && stop(ud))) {
        zmq_pollitem_t it[4];
        for (int i = 0; i < n; i++) it[i] = (zmq_pollitem_t){f[i].sock, 0, ZMQ_POLLIN, 0};
        zmq_poll(it, n, 20);
        for (int i = 0; i < n; i++) {
            wire_msg_t m;
            while (wire_recv(f[i].sock, NULL, NULL, &m, ZMQ_DONTWAIT) == 0) {
                fake_on(&f[i], i, &m, stall);
                wire_msg_clear(&m);
            }
        }
        if (now_s() >= next_hb) {
            for (int i = 0; i < n; i++)
                if (f[i].welcomed) send_msg(&f[i], MSG_HEARTBEAT, -1, NULL);
            next_hb = now_s() + 0.1;
        }
    }
}

static pid_t start_coordinator(const char *bind, char *ep, size_t eplen) {
    char state[700], epfile[700], logp[700];
    snprintf(state, sizeof state, "%s/state", g_tmp);
    snprintf(epfile, sizeof epfile, "%s/endpoint", g_tmp);
    snprintf(logp, sizeof logp, "%s/coordinator.log", g_tmp);
    const char *args[] = {"--bind", bind, "--state", state, "--endpoint-file", epfile, NULL};
    return coord_spawn(g_bin, args, epfile, logp, ep, eplen);
}

static cJSON *job_record(const char *ep, uint64_t job) {
    client_t *cl = NULL;
    cJSON *q = cJSON_CreateObject(), *r = NULL;
    cJSON_AddNumberToObject(q, "job", (double)job);
    char err[512];
    if (client_open(ep, &cl) == 0) client_request(cl, MSG_STATUS, 0, q, 5000, &r, err, sizeof err);
    else cJSON_Delete(q);
    client_close(&cl);
    cJSON *rec = cJSON_DetachItemFromObject(r, "job");
    cJSON_Delete(r);
    return rec;
}

typedef struct {
    fake_t *f;
    int n;
    int64_t step;
} until_t;

static int all_released(void *ud) {
    until_t *u = ud;
    for (int i = 0; i < u->n; i++)
        if (!u->f[i].released) return 0;
    return 1;
}

static int all_held(void *ud) {
    until_t *u = ud;
    for (int i = 0; i < u->n; i++)
        if (u->f[i].held < u->step) return 0;
    return 1;
}

int main(void) {
    const char *b = getenv("LLAVA_BUILD_DIR");
    if (!b) TEST_SKIP("LLAVA_BUILD_DIR not set (run through ctest)");
    snprintf(g_bin, sizeof g_bin, "%s", b);
    snprintf(g_tmp, sizeof g_tmp, "%s", test_tmpdir());
    log_set_level(LOG_ERROR);
    signal(SIGPIPE, SIG_IGN);
    char data[700], run[700], ep[256];
    snprintf(data, sizeof data, "%s/data", g_tmp);
    snprintf(run, sizeof run, "%s/run", g_tmp);
    CHECK_RC(sim_dataset_write(data, N_SAMPLES, 1, 30, 1, 50), 0);

    pid_t coord = start_coordinator("tcp://127.0.0.1:*", ep, sizeof ep);
    CHECK(ep[0] != 0);
    g_ctx = zmq_ctx_new();
    fake_t f[2];
    memset(f, 0, sizeof f);
    for (int i = 0; i < 2; i++) {
        f[i].sock = zmq_socket(g_ctx, ZMQ_DEALER);
        int zero = 0, ivl = 50;
        char id[32];
        snprintf(id, sizeof id, "fake-%d", i);
        zmq_setsockopt(f[i].sock, ZMQ_ROUTING_ID, id, strlen(id));
        zmq_setsockopt(f[i].sock, ZMQ_LINGER, &zero, sizeof zero);
        zmq_setsockopt(f[i].sock, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
        zmq_connect(f[i].sock, ep);
        f[i].claim = -1;
        f[i].gather_step = -1;
        fake_register(&f[i], i);
    }
    /* a job of 6 steps (96 samples, batch 16); checkpoints only at the end */
    client_t *cl = NULL;
    CHECK(client_open(ep, &cl) == 0);
    cJSON *req = cJSON_CreateObject(), *spec = cJSON_AddObjectToObject(req, "spec"), *reply = NULL;
    cJSON_AddStringToObject(spec, "name", "restart");
    cJSON *d = cJSON_AddObjectToObject(spec, "data");
    cJSON_AddStringToObject(d, "train", data);
    cJSON *t = cJSON_AddObjectToObject(spec, "train");
    cJSON_AddNumberToObject(t, "global_batch", 16);
    cJSON_AddNumberToObject(t, "micro_batch_tokens", 200);
    cJSON *k = cJSON_AddObjectToObject(spec, "checkpoint");
    cJSON_AddStringToObject(k, "dir", run);
    cJSON_AddNumberToObject(k, "every_steps", 1000);
    cJSON *cu = cJSON_AddObjectToObject(spec, "cluster");
    cJSON_AddNumberToObject(cu, "workers", 2);
    cJSON_AddNumberToObject(cu, "heartbeat_ms", 100);
    cJSON_AddNumberToObject(cu, "hang_timeout_ms", 5000);
    char err[512];
    CHECK(client_request(cl, MSG_SUBMIT, 0, req, 5000, &reply, err, sizeof err) == 0);
    uint64_t job = (uint64_t)wire_get_i64(reply, "job", 0);
    cJSON_Delete(reply);
    client_close(&cl);
    CHECK(job > 0);

    until_t u = {f, 2, STALL_STEP};
    pump(f, 2, STALL_STEP, 20, all_held, &u);
    CHECKF(f[0].held == STALL_STEP && f[1].held == STALL_STEP, "the workers hold steps %lld and %lld, expected %d",
           (long long)f[0].held, (long long)f[1].held, STALL_STEP);
    pump(f, 2, STALL_STEP, 0.3, NULL, NULL); /* the coordinator waits on step 3's micro-batches */

    kill(coord, SIGKILL);
    waitpid(coord, NULL, 0);
    char ep2[256];
    coord = start_coordinator(ep, ep2, sizeof ep2);
    CHECK(strcmp(ep, ep2) == 0);
    f[1].claim = STALL_STEP - 1; /* this worker claims to lag one step behind the other */
    pump(f, 2, 1 << 30, 30, all_released, &u);
    pump(f, 2, 1 << 30, 0.2, NULL, NULL); /* the job's end is recorded */
    cJSON *rec = job_record(ep, job);
    printf("restart with disagreeing workers: job %s, replayed_steps %lld, resumed_in_memory %s; JOB messages "
           "after the restart asked to keep the state %d times, started at step %lld\n",
           wire_get_str(rec, "state", "?"), (long long)wire_get_i64(rec, "replayed_steps", -1),
           cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rec, "resumed_in_memory")) ? "true" : "false",
           f[0].keep_jobs + f[1].keep_jobs, (long long)f[0].job_start);
    CHECKF(strcmp(wire_get_str(rec, "state", ""), "done") == 0, "the job ended '%s'", wire_get_str(rec, "state", "?"));
    CHECKF(f[0].keep_jobs + f[1].keep_jobs == 0, "JOB {keep} was sent although the workers disagree");
    /* ZeRO-1 workers gather their sharded state before a checkpoint: APPLY says so then, and only then */
    int ck = f[0].ckpts + f[1].ckpts, ckg = f[0].ckpts_gathered + f[1].ckpts_gathered;
    int ga = f[0].gathers + f[1].gathers, ap = f[0].applies + f[1].applies;
    CHECKF(ck >= 1 && ckg == ck, "%d of %d checkpoints followed an APPLY with gather_state", ckg, ck);
    CHECKF(ga >= 1 && ga <= 2 * ck && ga < ap, "%d of %d APPLYs asked for a gather (%d checkpoints)", ga, ap, ck);
    CHECKF(f[0].job_start == 0 && f[1].job_start == 0, "the workers were loaded at steps %lld / %lld, not 0",
           (long long)f[0].job_start, (long long)f[1].job_start);
    CHECKF(!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rec, "resumed_in_memory")), "resumed_in_memory is true");
    CHECKF(wire_get_i64(rec, "replayed_steps", -1) == STALL_STEP, "replayed_steps %lld, expected %d",
           (long long)wire_get_i64(rec, "replayed_steps", -1), STALL_STEP);
    cJSON_Delete(rec);

    kill(coord, SIGTERM);
    waitpid(coord, NULL, 0);
    for (int i = 0; i < 2; i++) zmq_close(f[i].sock);
    zmq_ctx_term(g_ctx);
    if (t_failures) {
        char cmd[800];
        snprintf(cmd, sizeof cmd, "tail -n 30 %s/coordinator.log >&2", g_tmp);
        if (system(cmd) != 0) fprintf(stderr, "(no log)\n");
    }
    return test_finish();
}
