/* Failure recovery on loopback: a coordinator with 3 local sim workers runs a small job per trial; each trial kills
 * one member with SIGKILL at a seeded random moment and measures detection (kill -> the coordinator declares it
 * dead, its `died_at`) and recovery (kill -> the next step committed in the ledger, `committed_at`), against the
 * failure-free step time of a baseline job. Every trial's losses must equal the baseline's (1e-5 relative).
 * Run: bench/bench_recovery.sh, or build/bench/bench_recovery --help. */
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/dataset.h"
#include "common/err.h"
#include "common/wire.h"
#include "coordinator/client.h"
#include "tests/sim_dataset.h"

#define N_SAMPLES 96
#define MAX_STEPS 64

typedef struct {
    int trials, mb_ms, heartbeat_ms, hang_ms, verbose, external;
    pid_t ext[1024]; /* --external: workers this program started */
    int next;
    unsigned seed;
    const char *bindir;
    char tmp[256], data[300], ep[256];
    client_t *cl;
    pid_t coord;
} bench_t;

static double wall_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_s(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    if (n == 0) return NAN;
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* --external: a worker the coordinator did not spawn (as on another host: no exit notice, no local respawn). */
static void start_worker(bench_t *b) {
    char wexe[600], ms[16];
    snprintf(wexe, sizeof wexe, "%s/llava-worker", b->bindir);
    snprintf(ms, sizeof ms, "%d", b->mb_ms);
    pid_t pid = fork();
    if (pid == 0) {
        char logp[400];
        snprintf(logp, sizeof logp, "%s/coordinator.log", b->tmp);
        FILE *lf = freopen(logp, "a", stderr);
        (void)lf;
        execl(wexe, wexe, "--coordinator", b->ep, "--backend", "sim", "--sim-mb-ms", ms, (char *)NULL);
        _exit(127);
    }
    if (pid > 0 && b->next < (int)(sizeof b->ext / sizeof b->ext[0])) b->ext[b->next++] = pid;
}

static void reap_workers(bench_t *b) {
    for (int i = 0; i < b->next; i++) {
        kill(b->ext[i], SIGTERM);
        waitpid(b->ext[i], NULL, 0);
    }
}

static int start_coordinator(bench_t *b) {
    char state[400], epfile[400], exe[600], wexe[600], wargs[128], logp[400];
    snprintf(state, sizeof state, "%s/state", b->tmp);
    snprintf(epfile, sizeof epfile, "%s/endpoint", b->tmp);
    snprintf(logp, sizeof logp, "%s/coordinator.log", b->tmp);
    snprintf(exe, sizeof exe, "%s/llava-coordinator", b->bindir);
    snprintf(wexe, sizeof wexe, "%s/llava-worker", b->bindir);
    snprintf(wargs, sizeof wargs, "--backend sim --sim-mb-ms %d", b->mb_ms);
    b->coord = fork();
    if (b->coord == 0) {
        FILE *lf = freopen(logp, "a", stderr);
        (void)lf;
        execl(exe, exe, "--bind", "tcp://127.0.0.1:*", "--state", state, "--spawn-workers", b->external ? "0" : "3",
              "--worker-exe", wexe, "--worker-args", wargs, "--endpoint-file", epfile, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200 && !b->ep[0]; i++) {
        sleep_s(0.05);
        FILE *f = fopen(epfile, "r");
        if (f) {
            if (!fgets(b->ep, sizeof b->ep, f)) b->ep[0] = 0;
            fclose(f);
            b->ep[strcspn(b->ep, "\n")] = 0;
        }
    }
    if (!b->ep[0]) {
        fprintf(stderr, "bench_recovery: the coordinator did not start (%s; log %s)\n", exe, logp);
        return -1;
    }
    for (int i = 0; b->external && i < 3; i++) start_worker(b);
    return client_open(b->ep, &b->cl);
}

static cJSON *request(bench_t *b, int type, cJSON *body) {
    cJSON *r = NULL;
    char err[512];
    if (client_request(b->cl, type, 0, body ? body : cJSON_CreateObject(), 20000, &r, err, sizeof err)) {
        fprintf(stderr, "bench_recovery: %s: %s\n", wire_type_name(type), err);
        return NULL;
    }
    return r;
}

static uint64_t submit(bench_t *b, const char *name) {
    cJSON *req = cJSON_CreateObject();
    cJSON *s = cJSON_AddObjectToObject(req, "spec");
    cJSON_AddStringToObject(s, "name", name);
    cJSON *d = cJSON_AddObjectToObject(s, "data");
    cJSON_AddStringToObject(d, "train", b->data);
    cJSON *t = cJSON_AddObjectToObject(s, "train");
    cJSON_AddNumberToObject(t, "global_batch", 16);
    cJSON_AddNumberToObject(t, "micro_batch_tokens", 120);
    cJSON_AddNumberToObject(t, "epochs", 2);
    cJSON_AddNumberToObject(t, "lr", 0.05);
    cJSON_AddNumberToObject(t, "seed", 3);
    cJSON *k = cJSON_AddObjectToObject(s, "checkpoint");
    char dir[400];
    snprintf(dir, sizeof dir, "%s/run-%s", b->tmp, name);
    cJSON_AddStringToObject(k, "dir", dir);
    cJSON_AddNumberToObject(k, "every_steps", 0);
    cJSON *c = cJSON_AddObjectToObject(s, "cluster");
    cJSON_AddNumberToObject(c, "workers", 3);
    if (b->heartbeat_ms > 0) cJSON_AddNumberToObject(c, "heartbeat_ms", b->heartbeat_ms);
    if (b->hang_ms > 0) cJSON_AddNumberToObject(c, "hang_timeout_ms", b->hang_ms);
    cJSON_AddNumberToObject(c, "max_replacements", 4);
    cJSON *r = request(b, MSG_SUBMIT, req);
    uint64_t id = (uint64_t)wire_get_i64(r, "job", 0);
    cJSON_Delete(r);
    return id;
}

static cJSON *status(bench_t *b, uint64_t job) {
    cJSON *q = cJSON_CreateObject();
    cJSON_AddNumberToObject(q, "job", (double)job);
    return request(b, MSG_STATUS, q);
}

/* Waits for the job's end; returns 0 when it is done. */
static int wait_done(bench_t *b, uint64_t job, double timeout_s) {
    double end = wall_s() + timeout_s;
    while (wall_s() < end) {
        cJSON *st = status(b, job);
        const char *s = wire_get_str(cJSON_GetObjectItemCaseSensitive(st, "job"), "state", "?");
        int over = strcmp(s, "queued") && strcmp(s, "running") && strcmp(s, "?");
        int done = strcmp(s, "done") == 0;
        cJSON_Delete(st);
        if (over) return done ? 0 : -1;
        sleep_s(0.05);
    }
    return -1;
}

/* Polls until the running job's step reaches `step`; then returns the pids of its live members. */
static int wait_step_members(bench_t *b, uint64_t job, int64_t step, pid_t *pids, int max) {
    double end = wall_s() + 60;
    while (wall_s() < end) {
        cJSON *st = status(b, job);
        int64_t cur = wire_get_i64(cJSON_GetObjectItemCaseSensitive(st, "run"), "step", -1);
        int n = 0;
        if (cur >= step) {
            const cJSON *w;
            cJSON_ArrayForEach(w, cJSON_GetObjectItemCaseSensitive(st, "workers")) {
                if (wire_get_i64(w, "rank", -1) >= 0 && strcmp(wire_get_str(w, "state", ""), "dead") && n < max)
                    pids[n++] = (pid_t)wire_get_i64(w, "pid", 0);
            }
        }
        cJSON_Delete(st);
        if (n > 0) return n;
        sleep_s(0.005);
    }
    return 0;
}

/* The ledger: per-step loss and commit time; returns the step count, or -1 if a sample is not exactly once per
 * epoch or a step is missing. */
static int ledger(bench_t *b, uint64_t job, double *loss, double *at) {
    cJSON *q = cJSON_CreateObject();
    cJSON_AddNumberToObject(q, "job", (double)job);
    cJSON_AddNumberToObject(q, "from", 0);
    cJSON_AddNumberToObject(q, "to", -1);
    cJSON *r = request(b, MSG_LEDGER, q);
    if (!r) return -1;
    static int seen[2][N_SAMPLES];
    memset(seen, 0, sizeof seen);
    int n = 0, bad = 0;
    const cJSON *e, *mb, *s;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(r, "steps")) {
        int64_t epoch = wire_get_i64(e, "epoch", -1);
        bad += wire_get_i64(e, "step", -1) != n || epoch < 0 || epoch > 1 || n >= MAX_STEPS;
        if (n < MAX_STEPS) {
            loss[n] = wire_get_num(e, "loss", NAN);
            at[n] = wire_get_num(e, "committed_at", 0);
        }
        cJSON_ArrayForEach(mb, cJSON_GetObjectItemCaseSensitive(e, "mbs")) cJSON_ArrayForEach(s, mb) {
            int64_t i = (int64_t)s->valuedouble;
            if (i >= 0 && i < N_SAMPLES && epoch >= 0 && epoch <= 1) seen[epoch][i]++;
            else bad++;
        }
        n++;
    }
    cJSON_Delete(r);
    for (int ep = 0; ep < 2; ep++)
        for (int i = 0; i < N_SAMPLES; i++) bad += seen[ep][i] != 1;
    return bad ? -1 : n;
}

/* When and why the coordinator declared pid dead (from WORKERS); 0 if it did not. */
static double died_at(bench_t *b, pid_t pid, char *why, size_t len) {
    cJSON *r = request(b, MSG_WORKERS, NULL);
    double t = 0;
    const cJSON *w;
    cJSON_ArrayForEach(w, cJSON_GetObjectItemCaseSensitive(r, "workers")) {
        if (wire_get_i64(w, "pid", 0) == pid && strcmp(wire_get_str(w, "state", ""), "dead") == 0) {
            t = wire_get_num(w, "died_at", 0);
            snprintf(why, len, "%s", wire_get_str(w, "dead_reason", "?"));
        }
    }
    cJSON_Delete(r);
    return t;
}

static void usage(FILE *f) {
    fprintf(f, "usage: bench_recovery [--trials N] [--seed S] [--mb-ms MS] [--heartbeat-ms MS] [--hang-ms MS]\n"
               "                      [--external] [--bindir DIR] [-v]\n"
               "Kills a random one of 3 local sim workers at a random moment of a small job, N times (default 50),\n"
               "and reports detection and recovery times (median, worst) against the failure-free step time.\n"
               "--heartbeat-ms / --hang-ms set cluster.heartbeat_ms / hang_timeout_ms (default: the job defaults).\n"
               "--external: this program starts the workers and a replacement after each kill (as on other hosts:\n"
               "the coordinator gets no exit notice and spawns nothing).\n");
}

int main(int argc, char **argv) {
    bench_t b = {.trials = 50, .mb_ms = 10, .seed = 1, .bindir = "build"};
    static const struct option opts[] = {{"trials", 1, 0, 't'},  {"seed", 1, 0, 's'},    {"mb-ms", 1, 0, 'm'},
                                         {"heartbeat-ms", 1, 0, 'H'}, {"hang-ms", 1, 0, 'T'}, {"bindir", 1, 0, 'b'},
                                         {"external", 0, 0, 'e'}, {"verbose", 0, 0, 'v'}, {"help", 0, 0, 'h'},
                                         {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "vh", opts, NULL)) != -1) {
        switch (o) {
        case 't': b.trials = atoi(optarg); break;
        case 's': b.seed = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'm': b.mb_ms = atoi(optarg); break;
        case 'H': b.heartbeat_ms = atoi(optarg); break;
        case 'T': b.hang_ms = atoi(optarg); break;
        case 'b': b.bindir = optarg; break;
        case 'e': b.external = 1; break;
        case 'v': b.verbose = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (b.trials < 1 || b.trials > 1000) {
        fprintf(stderr, "bench_recovery: --trials must be 1..1000\n");
        return 2;
    }
    log_set_level(LOG_ERROR);
    signal(SIGPIPE, SIG_IGN);
    snprintf(b.tmp, sizeof b.tmp, "/tmp/llava-bench-recovery-XXXXXX");
    if (!mkdtemp(b.tmp)) return 1;
    snprintf(b.data, sizeof b.data, "%s/data", b.tmp);
    int code = 1;
    double base_loss[MAX_STEPS], base_at[MAX_STEPS], loss[MAX_STEPS], at[MAX_STEPS], gaps[MAX_STEPS];
    double *det = calloc((size_t)b.trials, sizeof *det), *rec = calloc((size_t)b.trials, sizeof *rec);
    int ndet = 0, nrec = 0, nok = 0, n_exit = 0, n_disc = 0, n_other = 0;
    if (!det || !rec || sim_dataset_write(b.data, N_SAMPLES, 1, 20, 37, 90) || start_coordinator(&b)) goto cleanup;

    uint64_t job = submit(&b, "baseline");
    if (!job || wait_done(&b, job, 120)) {
        fprintf(stderr, "bench_recovery: the failure-free job did not finish (log %s/coordinator.log)\n", b.tmp);
        goto cleanup;
    }
    int steps = ledger(&b, job, base_loss, base_at);
    if (steps < 4) {
        fprintf(stderr, "bench_recovery: the failure-free ledger is inconsistent\n");
        goto cleanup;
    }
    int ng = 0;
    for (int s = 1; s < steps; s++) gaps[ng++] = base_at[s] - base_at[s - 1];
    double step_s = median(gaps, ng), step_worst = gaps[ng - 1];
    printf("failure-free: %d steps, step time median %.1f ms, worst %.1f ms (3 sim workers, %d ms/micro-batch)\n",
           steps, 1000 * step_s, 1000 * step_worst, b.mb_ms);

    srand(b.seed);
    for (int t = 0; t < b.trials; t++) {
        char name[32], why[200] = "";
        snprintf(name, sizeof name, "trial%d", t);
        job = submit(&b, name);
        int64_t at_step = 1 + rand() % (steps - 3);
        double delay = step_s * (double)rand() / RAND_MAX;
        pid_t pids[8];
        int n = job ? wait_step_members(&b, job, at_step, pids, 8) : 0;
        if (n == 0) {
            fprintf(stderr, "trial %d: the job did not reach step %lld\n", t, (long long)at_step);
            continue;
        }
        sleep_s(delay);
        pid_t victim = pids[rand() % n];
        double t_kill = wall_s();
        kill(victim, SIGKILL);
        if (b.external) {
            waitpid(victim, NULL, 0);
            for (int i = 0; i < b.next; i++)
                if (b.ext[i] == victim) b.ext[i] = b.ext[--b.next];
            start_worker(&b); /* the replacement an outside launcher would start; it joins the running job */
        }
        int done = wait_done(&b, job, 120) == 0;
        int ns = done ? ledger(&b, job, loss, at) : -1;
        int same = ns == steps;
        for (int s = 0; same && s < steps; s++) same = fabs(loss[s] - base_loss[s]) <= 1e-5 * fabs(base_loss[s]);
        nok += same;
        double d = died_at(&b, victim, why, sizeof why), r = NAN;
        for (int s = 0; ns > 0 && s < ns; s++)
            if (at[s] > t_kill) {
                r = at[s] - t_kill;
                break;
            }
        if (d > 0) det[ndet++] = d - t_kill;
        if (!isnan(r)) rec[nrec++] = r;
        if (strstr(why, "exited")) n_exit++;
        else if (strstr(why, "unroutable")) n_disc++;
        else n_other++;
        if (b.verbose || !same)
            printf("trial %2d: kill pid %d at step %lld +%.0f ms: detected %.1f ms (%s), next commit %.1f ms, %s\n", t,
                   (int)victim, (long long)at_step, 1000 * delay, d > 0 ? 1000 * (d - t_kill) : -1.0, why,
                   1000 * r, same ? "losses equal" : "LOSSES OR LEDGER DIFFER");
    }
    double det_worst = ndet ? 0 : NAN, rec_worst = nrec ? 0 : NAN;
    for (int i = 0; i < ndet; i++) det_worst = det[i] > det_worst ? det[i] : det_worst;
    for (int i = 0; i < nrec; i++) rec_worst = rec[i] > rec_worst ? rec[i] : rec_worst;
    double det_med = median(det, ndet), rec_med = median(rec, nrec);
    printf("trials %d: losses and ledger equal to the failure-free run in %d\n", b.trials, nok);
    printf("detection (kill -> declared dead): median %.1f ms, worst %.1f ms; by exit notice %d, by disconnect %d,"
           " other %d\n", 1000 * det_med, 1000 * det_worst, n_exit, n_disc, n_other);
    printf("recovery (kill -> next committed step): median %.1f ms, worst %.1f ms = %.2f failure-free steps\n",
           1000 * rec_med, 1000 * rec_worst, rec_worst / step_s);
    printf("target: detection < 1000 ms: %s; recovery < 2000 ms + one step (%.0f ms): %s\n",
           det_worst < 1.0 ? "met" : "MISSED", 2000 + 1000 * step_s, rec_worst < 2.0 + step_s ? "met" : "MISSED");
    code = nok == b.trials && ndet == b.trials ? 0 : 1;
cleanup:
    client_close(&b.cl);
    if (b.coord > 0) {
        kill(b.coord, SIGTERM);
        waitpid(b.coord, NULL, 0);
    }
    reap_workers(&b);
    if (code == 0) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf %s", b.tmp);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", b.tmp);
    } else fprintf(stderr, "bench_recovery: kept %s (coordinator.log)\n", b.tmp);
    free(det);
    free(rec);
    return code;
}
