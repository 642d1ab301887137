/* Coordinator overhead with workers that do no compute: N simulated workers (DEALER sockets in this one process)
 * answer every micro-batch, reduce and checkpoint at once, so what is measured is the coordinator alone:
 * micro-batches dispatched and committed per second, and the time from the last micro-batch report of a step to
 * the step's commit (APPLY). Run: bench/bench_coordinator.sh, or build/bench/bench_coordinator --help. */
#include <errno.h>
#include <getopt.h>
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

typedef struct {
    void *sock;
    uint64_t job;
    uint32_t gen;
    int done;
} simw_t;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void send_msg(simw_t *w, int type, int64_t step, cJSON *body) {
    wire_msg_t m = {.type = (uint16_t)type, .job = w->job, .generation = w->gen, .step = step,
                    .body = body ? body : cJSON_CreateObject()};
    wire_send(w->sock, NULL, 0, &m, 0);
    cJSON_Delete(m.body);
}

int main(int argc, char **argv) {
    int nworkers = 4, steps = 20, gb = 256;
    const char *bindir = "build";
    static const struct option opts[] = {{"workers", 1, 0, 'w'}, {"steps", 1, 0, 's'}, {"global-batch", 1, 0, 'g'},
                                         {"bindir", 1, 0, 'b'},  {"help", 0, 0, 'h'},  {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case 'w': nworkers = atoi(optarg); break;
        case 's': steps = atoi(optarg); break;
        case 'g': gb = atoi(optarg); break;
        case 'b': bindir = optarg; break;
        case 'h':
            printf("usage: bench_coordinator [--workers N] [--steps S] [--global-batch G] [--bindir DIR]\n"
                   "Measures coordinator overhead with N no-compute workers (one micro-batch per sample).\n");
            return 0;
        default: return 2;
        }
    }
    log_set_level(LOG_WARN);
    char tmp[] = "/tmp/llava-bench-coord-XXXXXX";
    if (!mkdtemp(tmp)) return 1;
    char data[600], state[600], epfile[600], exe[600], runs[600];
    snprintf(data, sizeof data, "%s/data", tmp);
    snprintf(state, sizeof state, "%s/state", tmp);
    snprintf(epfile, sizeof epfile, "%s/endpoint", tmp);
    snprintf(runs, sizeof runs, "%s/run", tmp);
    snprintf(exe, sizeof exe, "%s/llava-coordinator", bindir);
    if (sim_dataset_write(data, (int64_t)gb * steps, 8, 50, 1, 100)) return 1;
    pid_t coord = fork();
    if (coord == 0) {
        setenv("LLAVA_LOG", "error", 1);
        execl(exe, exe, "--bind", "tcp://127.0.0.1:*", "--state", state, "--endpoint-file", epfile, "--mb-inflight",
              "2", (char *)NULL);
        _exit(127);
    }
    char ep[256] = "";
    for (int i = 0; i < 100 && !ep[0]; i++) {
        usleep(50000);
        FILE *f = fopen(epfile, "r");
        if (f) {
            if (!fgets(ep, sizeof ep, f)) ep[0] = 0;
            fclose(f);
            ep[strcspn(ep, "\n")] = 0;
        }
    }
    if (!ep[0]) {
        fprintf(stderr, "coordinator did not start (%s)\n", exe);
        kill(coord, SIGKILL);
        return 1;
    }
    void *ctx = zmq_ctx_new();
    zmq_ctx_set(ctx, ZMQ_MAX_SOCKETS, 4096);
    simw_t *w = calloc((size_t)nworkers, sizeof *w);
    zmq_pollitem_t *items = calloc((size_t)nworkers, sizeof *items);
    for (int i = 0; i < nworkers; i++) {
        w[i].sock = zmq_socket(ctx, ZMQ_DEALER);
        int zero = 0;
        zmq_setsockopt(w[i].sock, ZMQ_LINGER, &zero, sizeof zero);
        zmq_connect(w[i].sock, ep);
        wire_msg_t m;
        wire_msg_init(&m, MSG_REGISTER, 0, 0, -1);
        cJSON_AddStringToObject(m.body, "host", "sim");
        cJSON_AddNumberToObject(m.body, "pid", 100000 + i);
        cJSON_AddStringToObject(m.body, "device", "sim");
        wire_send(w[i].sock, NULL, 0, &m, 0);
        wire_msg_clear(&m);
        items[i].socket = w[i].sock;
        items[i].events = ZMQ_POLLIN;
    }
    usleep(200000);
    client_t *cl = NULL;
    client_open(ep, &cl);
    cJSON *req = cJSON_CreateObject(), *spec = cJSON_AddObjectToObject(req, "spec"), *reply = NULL;
    cJSON_AddStringToObject(spec, "name", "bench");
    cJSON *d = cJSON_AddObjectToObject(spec, "data");
    cJSON_AddStringToObject(d, "train", data);
    cJSON *t = cJSON_AddObjectToObject(spec, "train");
    cJSON_AddNumberToObject(t, "global_batch", gb);
    cJSON_AddNumberToObject(t, "micro_batch_tokens", 100); /* one sample per micro-batch */
    cJSON_AddNumberToObject(t, "epochs", 1);
    cJSON *ck = cJSON_AddObjectToObject(spec, "checkpoint");
    cJSON_AddStringToObject(ck, "dir", runs);
    cJSON_AddNumberToObject(ck, "every_steps", 0);
    cJSON *cu = cJSON_AddObjectToObject(spec, "cluster");
    cJSON_AddNumberToObject(cu, "workers", nworkers);
    cJSON_AddNumberToObject(cu, "heartbeat_ms", 1000);
    cJSON_AddNumberToObject(cu, "hang_timeout_ms", 60000);
    char err[512];
    if (client_request(cl, MSG_SUBMIT, 0, req, 10000, &reply, err, sizeof err)) {
        fprintf(stderr, "submit: %s\n", err);
        return 1;
    }
    cJSON_Delete(reply);
    double t0 = 0, last_mb_done = 0, lat_sum = 0, lat_max = 0, last_hb = now_s();
    int64_t mbs = 0, commits = 0, released = 0;
    double deadline = now_s() + 600;
    while (released < nworkers && now_s() < deadline) {
        int n = zmq_poll(items, nworkers, 100);
        if (now_s() - last_hb > 0.5) {
            for (int i = 0; i < nworkers; i++) send_msg(&w[i], MSG_HEARTBEAT, -1, NULL);
            last_hb = now_s();
        }
        if (n <= 0) continue;
        for (int i = 0; i < nworkers; i++) {
            if (!(items[i].revents & ZMQ_POLLIN)) continue;
            wire_msg_t m;
            while (wire_recv(w[i].sock, NULL, NULL, &m, ZMQ_DONTWAIT) == 0) {
                switch (m.type) {
                case MSG_JOB: {
                    w[i].job = m.job;
                    cJSON *b = cJSON_CreateObject();
                    cJSON_AddStringToObject(b, "endpoint", "sim");
                    send_msg(&w[i], MSG_READY, -1, b);
                    break;
                }
                case MSG_GENERATION: {
                    w[i].gen = m.generation;
                    if (t0 == 0) t0 = now_s();
                    cJSON *b = cJSON_CreateObject();
                    cJSON_AddStringToObject(b, "endpoint", "sim");
                    send_msg(&w[i], MSG_READY, -1, b);
                    break;
                }
                case MSG_MB: {
                    cJSON *b = cJSON_CreateObject();
                    cJSON_AddNumberToObject(b, "mb", wire_get_num(m.body, "mb", -1));
                    cJSON_AddNumberToObject(b, "loss_sum", 1.0);
                    cJSON_AddNumberToObject(b, "n_targets", 1);
                    cJSON_AddNumberToObject(b, "tokens", 10);
                    send_msg(&w[i], MSG_MB_DONE, m.step, b);
                    mbs++;
                    last_mb_done = now_s();
                    break;
                }
                case MSG_REDUCE: {
                    cJSON *b = cJSON_CreateObject();
                    cJSON_AddNumberToObject(b, "grad_norm", 1.0);
                    send_msg(&w[i], MSG_REDUCED, m.step, b);
                    break;
                }
                case MSG_APPLY:
                    if (i == 0) {
                        double lat = now_s() - last_mb_done;
                        lat_sum += lat;
                        if (lat > lat_max) lat_max = lat;
                        commits++;
                    }
                    break;
                case MSG_CKPT: {
                    cJSON *b = cJSON_CreateObject();
                    cJSON_AddStringToObject(b, "dir", "sim");
                    send_msg(&w[i], MSG_CKPT_DONE, m.step, b);
                    break;
                }
                case MSG_RELEASE: released++; break;
                default: break;
                }
                wire_msg_clear(&m);
            }
        }
    }
    double el = now_s() - t0;
    printf("workers %4d  steps %lld  micro-batches %lld  %.0f mb/s  step commit latency mean %.2f ms max %.2f ms\n",
           nworkers, (long long)commits, (long long)mbs, el > 0 ? (double)mbs / el : 0,
           commits ? 1000 * lat_sum / (double)commits : 0, 1000 * lat_max);
    int ok = released == nworkers && commits == steps;
    client_close(&cl);
    for (int i = 0; i < nworkers; i++) zmq_close(w[i].sock);
    zmq_ctx_term(ctx);
    kill(coord, SIGTERM);
    waitpid(coord, NULL, 0);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp);
    free(w);
    free(items);
    return ok ? 0 : 1;
}
