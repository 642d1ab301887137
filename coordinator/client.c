/* Coordinator client and the human-readable status rendering shared by llavactl and llava-run (see client.h). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "common/err.h"
#include "common/wire.h"
#include "coordinator/client.h"

struct client {
    void *ctx, *sock;
    char endpoint[256];
    int64_t req; /* request counter: a late reply to an earlier request is recognised and dropped */
};

int client_open(const char *endpoint, client_t **out) {
    int rc = 0;
    client_t *c = calloc(1, sizeof *c);
    ALLOC_CHECK_GOTO(c);
    snprintf(c->endpoint, sizeof c->endpoint, "%s", endpoint);
    c->ctx = zmq_ctx_new();
    CHECK_GOTO(c->ctx, LLAVA_ENET, "zmq_ctx_new failed");
    c->sock = zmq_socket(c->ctx, ZMQ_DEALER);
    CHECK_GOTO(c->sock, LLAVA_ENET, "zmq_socket failed");
    int zero = 0;
    ZMQ_CHECK_GOTO(zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof zero));
    if (zmq_connect(c->sock, endpoint) != 0) {
        LOG_E("cannot connect to %s: %s", endpoint, zmq_strerror(zmq_errno()));
        rc = LLAVA_ENET;
        goto cleanup;
    }
    *out = c;
    return 0;
cleanup:
    client_close(&c);
    *out = NULL;
    return rc;
}

void client_close(client_t **pc) {
    if (!pc || !*pc) return;
    if ((*pc)->sock) zmq_close((*pc)->sock);
    if ((*pc)->ctx) zmq_ctx_term((*pc)->ctx);
    free(*pc);
    *pc = NULL;
}

int client_request(client_t *c, int type, uint64_t job, cJSON *body, int timeout_ms, cJSON **reply, char *err,
                   size_t errlen) {
    wire_msg_t m = {.type = (uint16_t)type, .job = job, .step = -1, .body = body ? body : cJSON_CreateObject()};
    *reply = NULL;
    err[0] = 0;
    int64_t req = ++c->req;
    if (m.body) cJSON_AddNumberToObject(m.body, "req", (double)req);
    int rc = wire_send(c->sock, NULL, 0, &m, 0);
    cJSON_Delete(m.body);
    if (rc) {
        snprintf(err, errlen, "cannot send to %s: %s", c->endpoint, err_str(rc));
        return rc;
    }
    wire_msg_t r;
    for (;;) {
        zmq_pollitem_t it = {c->sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, timeout_ms) <= 0) {
            snprintf(err, errlen, "no reply from the coordinator at %s within %d ms (is it running?)", c->endpoint,
                     timeout_ms);
            return LLAVA_ETIMEOUT;
        }
        rc = wire_recv(c->sock, NULL, NULL, &r, 0);
        if (rc) {
            snprintf(err, errlen, "malformed reply from %s", c->endpoint);
            return rc;
        }
        if (wire_get_i64(r.body, "req", -1) == req) break;
        wire_msg_clear(&r); /* the reply to a request that timed out earlier */
    }
    if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r.body, "ok"))) {
        snprintf(err, errlen, "%s", wire_get_str(r.body, "error", "request refused"));
        wire_msg_clear(&r);
        return LLAVA_EINVAL;
    }
    *reply = r.body;
    r.body = NULL;
    return 0;
}

static void fmt_duration(double s, char *buf, size_t len) {
    if (s < 0) snprintf(buf, len, "?");
    else if (s < 60) snprintf(buf, len, "%.0fs", s);
    else if (s < 3600) snprintf(buf, len, "%dm%02ds", (int)s / 60, (int)s % 60);
    else snprintf(buf, len, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
}

static void bar(char *buf, int width, double frac) {
    if (frac < 0) frac = 0;
    if (frac > 1) frac = 1;
    int n = (int)(frac * width + 0.5);
    for (int i = 0; i < width; i++) buf[i] = i < n ? '#' : '.';
    buf[width] = 0;
}

void client_shard_summary(const cJSON *run, char *out, size_t len) {
    if (!len) return;
    out[0] = 0;
    const cJSON *shards = run ? cJSON_GetObjectItemCaseSensitive(run, "shards") : NULL, *s;
    int n = cJSON_GetArraySize(shards), k = 0;
    if (n <= 0) return;
    size_t at = (size_t)snprintf(out, len, "shards");
    cJSON_ArrayForEach(s, shards) {
        if (at >= len) break;
        double d = wire_get_num(s, "done", 0), t = wire_get_num(s, "total", 0);
        double f = t > 0 ? d / t : 0;
        f = f < 0 ? 0 : f > 1 ? 1 : f;
        if (n <= 4) {
            at += (size_t)snprintf(out + at, len - at, " %.0f%%", floor(100 * f));
        } else if (k == 64) {
            at += (size_t)snprintf(out + at, len - at, "+%d", n - 64);
            break;
        } else {
            at += (size_t)snprintf(out + at, len - at, "%s%c", k ? "" : " ", f >= 1 ? '#' : (char)('0' + (int)(f * 10)));
        }
        k++;
    }
}

void client_print_progress_line(const cJSON *st) {
    const cJSON *run = cJSON_GetObjectItemCaseSensitive(st, "run");
    const cJSON *job = cJSON_GetObjectItemCaseSensitive(st, "job");
    if (!run) {
        printf("\rjob %lld: %s                                        ", (long long)wire_get_i64(job, "id", 0),
               wire_get_str(job, "state", "?"));
        fflush(stdout);
        return;
    }
    double step = wire_get_num(run, "step", 0), total = wire_get_num(run, "total_steps", 1);
    char b[32], eta[16];
    bar(b, 24, total > 0 ? step / total : 0);
    fmt_duration(wire_get_num(run, "eta_s", -1), eta, sizeof eta);
    char sh[128];
    client_shard_summary(run, sh, sizeof sh);
    printf("\r%s [%s] step %.0f/%.0f epoch %.0f loss %.4f %.1f samples/s eta %s %s   ", wire_get_str(job, "name", "job"), b,
           step, total, wire_get_num(run, "epoch", 0) + 1, wire_get_num(run, "loss", 0),
           wire_get_num(run, "samples_per_s", 0), eta, sh);
    fflush(stdout);
}

void client_print_status(const cJSON *st, int color) {
    const cJSON *job = cJSON_GetObjectItemCaseSensitive(st, "job");
    const cJSON *run = cJSON_GetObjectItemCaseSensitive(st, "run");
    const char *bold = color ? "\033[1m" : "", *off = color ? "\033[0m" : "";
    if (job) {
        printf("%sjob %lld%s  %s  state: %s\n", bold, (long long)wire_get_i64(job, "id", 0), off,
               wire_get_str(job, "name", "?"), wire_get_str(job, "state", "?"));
        const char *e = wire_get_str(job, "error", NULL);
        if (e) printf("  error: %s\n", e);
        if (!run && cJSON_GetObjectItemCaseSensitive(job, "steps_done")) {
            printf("  steps done: %lld  final loss: %.6f  recoveries: %lld  joins: %lld\n",
                   (long long)wire_get_i64(job, "steps_done", 0), wire_get_num(job, "final_loss", 0),
                   (long long)wire_get_i64(job, "recoveries", 0), (long long)wire_get_i64(job, "joins", 0));
            if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(job, "resumed_in_memory")))
                printf("  went on from the workers' memory at step %lld after a coordinator restart\n",
                       (long long)wire_get_i64(job, "start_step", 0));
        }
    } else {
        printf("no jobs\n");
    }
    if (run) {
        double step = wire_get_num(run, "step", 0), total = wire_get_num(run, "total_steps", 1);
        char b[48], eta[16], el[16];
        bar(b, 40, total > 0 ? step / total : 0);
        fmt_duration(wire_get_num(run, "eta_s", -1), eta, sizeof eta);
        fmt_duration(wire_get_num(run, "elapsed_s", 0), el, sizeof el);
        printf("  %s  [%s] step %.0f/%.0f  epoch %.0f/%.0f\n", wire_get_str(run, "phase", "?"), b, step, total,
               wire_get_num(run, "epoch", 0) + 1, wire_get_num(run, "epochs", 1));
        printf("  loss %.6f  %.2f samples/s  %.0f tokens/s  elapsed %s  eta %s  generation %lld  recoveries %lld"
               "  joins %lld\n",
               wire_get_num(run, "loss", 0), wire_get_num(run, "samples_per_s", 0), wire_get_num(run, "tokens_per_s", 0),
               el, eta, (long long)wire_get_i64(run, "generation", 0), (long long)wire_get_i64(run, "recoveries", 0),
               (long long)wire_get_i64(run, "joins", 0));
        if (wire_get_i64(run, "joining", -1) >= 0)
            printf("  worker %lld is joining at the next step boundary\n", (long long)wire_get_i64(run, "joining", -1));
        const cJSON *shards = cJSON_GetObjectItemCaseSensitive(run, "shards"), *s;
        if (cJSON_GetArraySize(shards) > 0) printf("  shards (this epoch):\n");
        cJSON_ArrayForEach(s, shards) {
            double d = wire_get_num(s, "done", 0), t = wire_get_num(s, "total", 1);
            bar(b, 30, t > 0 ? d / t : 0);
            printf("    %-20s [%s] %6.0f/%-6.0f %5.1f%%\n", wire_get_str(s, "name", "?"), b, d, t, t > 0 ? 100 * d / t : 0);
        }
    }
    const cJSON *ws = cJSON_GetObjectItemCaseSensitive(st, "workers"), *w;
    if (cJSON_GetArraySize(ws) > 0)
        printf("  workers:\n    %-3s %-16s %-7s %-8s %-8s %4s %8s %9s %9s\n", "id", "host", "pid", "device", "state",
               "rank", "mbs", "mb ms", "hb age");
    cJSON_ArrayForEach(w, ws) {
        printf("    %-3lld %-16.16s %-7lld %-8.8s %-8s %4lld %8lld %9.1f %7.0fms", (long long)wire_get_i64(w, "id", 0),
               wire_get_str(w, "host", "?"), (long long)wire_get_i64(w, "pid", 0), wire_get_str(w, "device", "?"),
               wire_get_str(w, "state", "?"), (long long)wire_get_i64(w, "rank", -1),
               (long long)wire_get_i64(w, "mbs_done", 0), wire_get_num(w, "mb_ms", 0),
               wire_get_num(w, "heartbeat_age_ms", 0));
        const char *dr = wire_get_str(w, "dead_reason", NULL);
        if (dr) printf("  dead: %s", dr);
        printf("\n");
    }
}
