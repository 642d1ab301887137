/* The step's end as the coordinator announces it (docs/protocol.md "A step"): the last queued micro-batch of a step
 * goes out as MB {last: true} and every other member gets DRAIN, once per step and generation, after its last MB of
 * that step. Three scripted workers (DEALER sockets in this process) with one micro-batch in flight each; in step 1
 * worker 2 sits on its micro-batch and disconnects when DRAIN (or its last MB) arrives, so its micro-batch goes to
 * the survivors in a new generation, which must announce the step's end again, to its own members only.
 * Run: ctest -R test_coord_drain (needs LLAVA_BUILD_DIR, set by ctest). */
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
#include "coordinator/client.h"
#include "tests/sim_dataset.h"
#include "tests/coord_spawn.h"
#include "tests/test.h"

#define NW 3
#define N_SAMPLES 96
#define DIE_STEP 1
#define MAX_EV 512

typedef struct {
    int type; /* MSG_MB or MSG_DRAIN */
    int64_t step, mb;
    uint32_t gen;
    int last;
} event_t;

typedef struct {
    void *sock;
    uint64_t job;
    uint32_t gen;
    int welcomed, released, dead, dies; /* dies: worker that stalls and leaves in DIE_STEP */
    int member_of[16];                  /* generations it was sent GENERATION for */
    event_t ev[MAX_EV];
    int nev;
} fake_t;

static char g_bin[1024], g_tmp[512];

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

static void record(fake_t *f, const wire_msg_t *m) {
    if (f->nev >= MAX_EV) return;
    f->ev[f->nev++] = (event_t){.type = m->type, .step = m->step, .gen = m->generation,
                                .mb = wire_get_i64(m->body, "mb", -1),
                                .last = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m->body, "last"))};
}

static void fake_on(fake_t *f, int i, const wire_msg_t *m) {
    cJSON *b = NULL;
    switch (m->type) {
    case MSG_WELCOME: f->welcomed = 1; break;
    case MSG_RELEASE: f->released++; break;
    case MSG_JOB:
        f->job = m->job;
        send_msg(f, MSG_READY, -1, NULL);
        break;
    case MSG_GENERATION:
        f->gen = m->generation;
        if (m->generation < 16) f->member_of[m->generation] = 1;
        b = cJSON_CreateObject();
        cJSON_AddStringToObject(b, "endpoint", "tcp://127.0.0.1:1");
        send_msg(f, MSG_READY, -1, b);
        break;
    case MSG_DRAIN:
        record(f, m);
        if (f->dies && m->step == DIE_STEP) f->dead = 1; /* between DRAIN and REDUCE */
        break;
    case MSG_MB:
        record(f, m);
        if (f->dies && m->step == DIE_STEP) { /* sits on it; leaves if it is the step's last */
            if (f->ev[f->nev - 1].last) f->dead = 1;
            break;
        }
        b = cJSON_CreateObject();
        cJSON_AddNumberToObject(b, "mb", wire_get_num(m->body, "mb", -1));
        cJSON_AddNumberToObject(b, "loss_sum", 2.0);
        cJSON_AddNumberToObject(b, "n_targets", 1);
        cJSON_AddNumberToObject(b, "tokens", 10);
        send_msg(f, MSG_MB_DONE, m->step, b);
        break;
    case MSG_REDUCE:
        b = cJSON_CreateObject();
        cJSON_AddNumberToObject(b, "grad_norm", 1.0);
        send_msg(f, MSG_REDUCED, m->step, b);
        break;
    case MSG_CKPT:
        b = cJSON_CreateObject();
        cJSON_AddStringToObject(b, "dir", g_tmp);
        send_msg(f, MSG_CKPT_DONE, m->step, b);
        break;
    default: break;
    }
    (void)i;
}

static int all_released(fake_t *f) {
    for (int i = 0; i < NW; i++)
        if (!f[i].dead && !f[i].released) return 0;
    return 1;
}

static void pump(fake_t *f, double seconds) {
    double end = now_s() + seconds, next_hb = 0;
    while (now_s() < end && !all_released(f)) {
        zmq_pollitem_t it[NW];
        int n = 0, idx[NW];
        for (int i = 0; i < NW; i++)
            if (!f[i].dead) {
                idx[n] = i;
                it[n++] = (zmq_pollitem_t){f[i].sock, 0, ZMQ_POLLIN, 0};
            }
        zmq_poll(it, n, 20);
        for (int q = 0; q < n; q++) {
            fake_t *w = &f[idx[q]];
            wire_msg_t m;
            while (!w->dead && wire_recv(w->sock, NULL, NULL, &m, ZMQ_DONTWAIT) == 0) {
                fake_on(w, idx[q], &m);
                wire_msg_clear(&m);
            }
            if (w->dead && w->sock) { /* gone: the coordinator sees the disconnect */
                zmq_close(w->sock);
                w->sock = NULL;
            }
        }
        if (now_s() >= next_hb) {
            for (int i = 0; i < NW; i++)
                if (f[i].welcomed && !f[i].dead) send_msg(&f[i], MSG_HEARTBEAT, -1, NULL);
            next_hb = now_s() + 0.1;
        }
    }
}

static pid_t start_coordinator(char *ep, size_t eplen) {
    char state[700], epfile[700], logp[700];
    snprintf(state, sizeof state, "%s/state", g_tmp);
    snprintf(epfile, sizeof epfile, "%s/endpoint", g_tmp);
    snprintf(logp, sizeof logp, "%s/coordinator.log", g_tmp);
    const char *args[] = {"--bind", "tcp://127.0.0.1:*", "--state", state, "--endpoint-file", epfile,
                          "--mb-inflight", "1", NULL};
    return coord_spawn(g_bin, args, epfile, logp, ep, eplen);
}

/* Checks one (step, generation) in which the step's end was announced; returns 1 when it was. */
static int check_end(fake_t *f, int64_t step, uint32_t gen) {
    int lasts = 0, holder = -1, any = 0;
    for (int i = 0; i < NW; i++)
        for (int e = 0; e < f[i].nev; e++) {
            const event_t *v = &f[i].ev[e];
            if (v->step != step || v->gen != gen) continue;
            any |= v->last || v->type == MSG_DRAIN;
            if (v->type == MSG_MB && v->last) {
                lasts++;
                holder = i;
            }
        }
    if (!any) return 0;
    CHECKF(lasts == 1, "step %lld generation %u: %d micro-batches marked last", (long long)step, gen, lasts);
    for (int i = 0; i < NW; i++) {
        int drains = 0, after = 0, seen_end = 0;
        for (int e = 0; e < f[i].nev; e++) {
            const event_t *v = &f[i].ev[e];
            if (v->step != step || v->gen != gen) continue;
            if (v->type == MSG_MB && seen_end) after++;
            if (v->type == MSG_DRAIN) drains++;
            seen_end |= v->type == MSG_DRAIN || v->last;
        }
        int want = f[i].member_of[gen] && i != holder ? 1 : 0;
        if (f[i].dead && !f[i].member_of[gen]) want = 0;
        CHECKF(drains == want, "step %lld generation %u: worker %d got %d DRAIN, expected %d", (long long)step, gen,
               i, drains, want);
        CHECKF(after == 0, "step %lld generation %u: worker %d got %d MB after the step's end", (long long)step,
               gen, i, after);
    }
    return 1;
}

int main(void) {
    const char *bd = getenv("LLAVA_BUILD_DIR");
    if (!bd) TEST_SKIP("LLAVA_BUILD_DIR not set (run through ctest)");
    snprintf(g_bin, sizeof g_bin, "%s", bd);
    snprintf(g_tmp, sizeof g_tmp, "%s", test_tmpdir());
    log_set_level(LOG_ERROR);
    signal(SIGPIPE, SIG_IGN);
    char data[700], run[700], ep[256];
    snprintf(data, sizeof data, "%s/data", g_tmp);
    snprintf(run, sizeof run, "%s/run", g_tmp);
    CHECK_RC(sim_dataset_write(data, N_SAMPLES, 1, 30, 1, 50), 0);
    pid_t coord = start_coordinator(ep, sizeof ep);
    CHECK(ep[0] != 0);
    void *ctx = zmq_ctx_new();
    static fake_t f[NW];
    for (int i = 0; i < NW; i++) {
        f[i].sock = zmq_socket(ctx, ZMQ_DEALER);
        int zero = 0;
        char id[32];
        snprintf(id, sizeof id, "drain-%d", i);
        zmq_setsockopt(f[i].sock, ZMQ_ROUTING_ID, id, strlen(id));
        zmq_setsockopt(f[i].sock, ZMQ_LINGER, &zero, sizeof zero);
        zmq_connect(f[i].sock, ep);
        f[i].dies = i == NW - 1;
        cJSON *b = cJSON_CreateObject();
        cJSON_AddStringToObject(b, "host", "fake");
        cJSON_AddNumberToObject(b, "pid", 910000 + i);
        cJSON_AddStringToObject(b, "device", "cpu");
        send_msg(&f[i], MSG_REGISTER, -1, b);
    }
    /* 3 steps of 32 samples, about 8 micro-batches each */
    client_t *cl = NULL;
    CHECK(client_open(ep, &cl) == 0);
    cJSON *req = cJSON_CreateObject(), *spec = cJSON_AddObjectToObject(req, "spec"), *reply = NULL;
    cJSON_AddStringToObject(spec, "name", "drain");
    cJSON_AddStringToObject(cJSON_AddObjectToObject(spec, "data"), "train", data);
    cJSON *t = cJSON_AddObjectToObject(spec, "train");
    cJSON_AddNumberToObject(t, "global_batch", 32);
    cJSON_AddNumberToObject(t, "micro_batch_tokens", 200);
    cJSON *k = cJSON_AddObjectToObject(spec, "checkpoint");
    cJSON_AddStringToObject(k, "dir", run);
    cJSON_AddNumberToObject(k, "every_steps", 1000);
    cJSON *cu = cJSON_AddObjectToObject(spec, "cluster");
    cJSON_AddNumberToObject(cu, "workers", NW);
    cJSON_AddNumberToObject(cu, "heartbeat_ms", 100);
    cJSON_AddNumberToObject(cu, "hang_timeout_ms", 5000);
    char err[512];
    CHECK(client_request(cl, MSG_SUBMIT, 0, req, 5000, &reply, err, sizeof err) == 0);
    uint64_t job = (uint64_t)wire_get_i64(reply, "job", 0);
    cJSON_Delete(reply);
    client_close(&cl);
    CHECK(job > 0);
    pump(f, 40);
    CHECKF(all_released(f), "the job did not end within 40 s");
    CHECKF(f[NW - 1].dead, "worker %d never left (no DRAIN or last MB in step %d)", NW - 1, DIE_STEP);

    int announced[8] = {0}, total = 0;
    for (int64_t s = 0; s < 3; s++)
        for (uint32_t g = 1; g < 16; g++) {
            int a = check_end(f, s, g);
            announced[s] += a;
            total += a;
        }
    int mbs = 0, drains = 0;
    for (int i = 0; i < NW; i++)
        for (int e = 0; e < f[i].nev; e++) {
            mbs += f[i].ev[e].type == MSG_MB;
            drains += f[i].ev[e].type == MSG_DRAIN;
        }
    printf("step ends announced: step 0 in %d generation(s), step 1 in %d, step 2 in %d; %d MB and %d DRAIN "
           "messages\n", announced[0], announced[1], announced[2], mbs, drains);
    CHECKF(announced[0] == 1 && announced[2] == 1, "steps 0 and 2 ended %d and %d times", announced[0],
           announced[2]);
    CHECKF(announced[DIE_STEP] == 2, "step %d (a member left after DRAIN) ended %d times, expected 2 generations",
           DIE_STEP, announced[DIE_STEP]);

    kill(coord, SIGTERM);
    waitpid(coord, NULL, 0);
    for (int i = 0; i < NW; i++)
        if (f[i].sock) zmq_close(f[i].sock);
    zmq_ctx_term(ctx);
    if (t_failures) {
        char cmd[800];
        snprintf(cmd, sizeof cmd, "tail -n 30 %s/coordinator.log >&2", g_tmp);
        if (system(cmd) != 0) fprintf(stderr, "(no log)\n");
    }
    return test_finish();
}
