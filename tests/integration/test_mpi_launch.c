/* The MPI launcher end to end on one node: deploy/mpi-run.sh starts llava-coordinator (rank 0) and 3 sim workers
 * under mpirun --enable-recovery; a failure-free run, then a run with one worker killed -9 mid-job, which the
 * coordinator replaces with MPI_Comm_spawn; the replacement joins the running job with a member's state. Both
 * finish, every sample is in the ledger exactly once per epoch, and the per-step losses agree within 1e-5 relative. Skipped (77) without MPI in the build or mpirun.
 * Run: ctest -R test_mpi_launch (needs LLAVA_BUILD_DIR and LLAVA_SOURCE_DIR, set by ctest). */
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
#include "common/mpilaunch.h"
#include "common/wire.h"
#include "coordinator/client.h"
#include "coordinator/state.h"
#include "tests/sim_dataset.h"
#include "tests/test.h"

#define N_SAMPLES 192
#define GLOBAL_BATCH 16
#define EPOCHS 2
#define STEPS (EPOCHS * N_SAMPLES / GLOBAL_BATCH)

#include "tests/ledger_check.h" /* uses N_SAMPLES, EPOCHS, STEPS */

static char g_bin[1024], g_src[1024], g_tmp[512];

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The job spec as a user writes it (the sim backend ignores the model, but the spec must name one). */
static int write_spec(const char *path, const char *name) {
    char model[700];
    snprintf(model, sizeof model, "%s/model", g_tmp);
    mkdir(model, 0755);
    char cfg[760];
    snprintf(cfg, sizeof cfg, "%s/config.json", model);
    FILE *f = fopen(cfg, "w");
    if (!f) return -1;
    fputs("{}\n", f);
    fclose(f);
    f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f,
            "name: %s\n"
            "model:\n  llava: %s\n"
            "data:\n  train: %s/data\n  template: plain\n  group_by_length: true\n"
            "train:\n  epochs: %d\n  global_batch: %d\n  micro_batch_tokens: 60\n  lr: 0.05\n  seed: 7\n"
            "checkpoint:\n  dir: %s/run-%s\n  every_steps: 4\n  keep: 2\n"
            "cluster:\n  workers: 3\n  heartbeat_ms: 100\n  hang_timeout_ms: 3000\n  max_replacements: 2\n",
            name, model, g_tmp, EPOCHS, GLOBAL_BATCH, g_tmp, name);
    return fclose(f) == 0 ? 0 : -1;
}

typedef struct {
    pid_t pid;
    char state[700], log[760], out[760];
} launch_t;

static int launch(launch_t *l, const char *name) {
    char spec[700], script[1100];
    snprintf(spec, sizeof spec, "%s/%s.yaml", g_tmp, name);
    if (write_spec(spec, name) != 0) return -1;
    snprintf(l->state, sizeof l->state, "%s/state-%s", g_tmp, name);
    snprintf(l->log, sizeof l->log, "%s/mpirun.log", l->state);
    snprintf(l->out, sizeof l->out, "%s/launcher.out", g_tmp);
    snprintf(script, sizeof script, "%s/deploy/mpi-run.sh", g_src);
    l->pid = fork();
    if (l->pid == 0) {
        FILE *o = freopen(l->out, "a", stdout);
        FILE *e = freopen(l->out, "a", stderr);
        (void)o, (void)e;
        /* Under the sanitizers: Open MPI leaves ~120 KB in ~3,400 allocations per rank at MPI_Finalize, in MCA
         * components it has already unloaded (no usable stack). Leak checks of our code run without MPI in
         * test_cluster_sim; here ASan and UBSan still stop a rank on any memory or UB error (checked below). */
        setenv("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=1", 1);
        execl("/bin/bash", "bash", script, spec, "--workers", "3", "--state", l->state, "--backend", "sim",
              "--sim-mb-ms", "30", "--threads", "1", "--build", g_bin, "--no-eval", "-q", (char *)NULL);
        _exit(127);
    }
    return l->pid > 0 ? 0 : -1;
}

/* Waits for the launcher to exit; returns its exit status, or -1 after timeout_s (then it is stopped). */
static int launch_wait(launch_t *l, double timeout_s) {
    double end = now_s() + timeout_s;
    int status = 0;
    while (now_s() < end) {
        if (waitpid(l->pid, &status, WNOHANG) == l->pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
        sleep_ms(100);
    }
    kill(l->pid, SIGTERM);
    waitpid(l->pid, NULL, 0);
    return -1;
}

/* How many lines of the mpirun log contain `needle`; copies the text after `after` on the first into buf. */
static int log_grep(const launch_t *l, const char *needle, const char *after, char *buf, size_t len) {
    FILE *f = fopen(l->log, "r");
    if (!f) return 0;
    char line[1024];
    int n = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, needle)) {
            if (n++ == 0 && buf && after && strstr(line, after)) {
                snprintf(buf, len, "%s", strstr(line, after) + strlen(after));
                buf[strcspn(buf, " \n")] = 0;
            }
        }
    fclose(f);
    return n;
}

/* Ranks that stopped by themselves: MPI_Finalize returned, or its watchdog gave up on it (mpilaunch.h). */
static int ranks_stopped(const launch_t *l) {
    return log_grep(l, "MPI_Finalize returned 0", NULL, NULL, 0) + log_grep(l, "MPI_Finalize did not return", NULL, NULL, 0);
}

/* Sanitizer reports from any rank (a rank stopped by one would also fail the job checks, but say why). */
static int sanitizer_reports(const launch_t *l) {
    return log_grep(l, "ERROR: AddressSanitizer", NULL, NULL, 0) + log_grep(l, "ERROR: LeakSanitizer", NULL, NULL, 0) +
           log_grep(l, "runtime error:", NULL, NULL, 0);
}

static void print_logs(const launch_t *l) {
    char cmd[1700];
    snprintf(cmd, sizeof cmd, "tail -n 30 %s >&2; tail -n 60 %s >&2", l->out, l->log);
    if (system(cmd) != 0) fprintf(stderr, "(no logs at %s)\n", l->log);
}

/* Per-step losses from the ledger in the state directory, and a count of problems: gaps, or a sample not
 * exactly once per epoch. */
static int ledger_losses(const char *state_dir, double *loss, int *steps) {
    state_t *st = NULL;
    cJSON *r = NULL;
    if (state_open(state_dir, &st) != 0) return -1;
    int rc = state_ledger_range(st, 1, 0, -1, &r);
    state_close(&st);
    if (rc) return -1;
    int bad = ledger_check(r, loss, steps);
    cJSON_Delete(r);
    return bad;
}

/* A number from job 1's record in the state directory (-1 if absent). */
static int64_t job_record_i64(const char *state_dir, const char *key) {
    state_t *st = NULL;
    cJSON *j = NULL;
    int64_t v = -1;
    if (state_open(state_dir, &st) == 0 && state_job_get(st, 1, &j) == 0) v = wire_get_i64(j, key, -1);
    cJSON_Delete(j);
    state_close(&st);
    return v;
}

/* The running job's step and the pid of one live member (rank >= 0), or -1. */
static int64_t job_step_and_member(client_t *cl, pid_t *member) {
    cJSON *b = cJSON_CreateObject(), *r = NULL;
    cJSON_AddNumberToObject(b, "job", 1);
    char err[512];
    if (client_request(cl, MSG_STATUS, 0, b, 10000, &r, err, sizeof err)) return -1;
    int64_t step = wire_get_i64(cJSON_GetObjectItemCaseSensitive(r, "run"), "step", -1);
    const cJSON *w;
    *member = 0;
    cJSON_ArrayForEach(w, cJSON_GetObjectItemCaseSensitive(r, "workers")) {
        if (wire_get_i64(w, "rank", -1) >= 0 && strcmp(wire_get_str(w, "state", ""), "dead") != 0)
            *member = (pid_t)wire_get_i64(w, "pid", 0);
    }
    cJSON_Delete(r);
    return step;
}

static void check_ledger(const char *what, const char *state_dir, double *loss, const double *base) {
    int steps = 0;
    int bad = ledger_losses(state_dir, loss, &steps);
    CHECKF(bad == 0, "%s: ledger has %d problems (samples not exactly once per epoch, or gaps)", what, bad);
    CHECKF(steps == STEPS, "%s: %d steps in the ledger, expected %d", what, steps, STEPS);
    if (!base) return;
    int diff = 0;
    for (int i = 0; i < STEPS && i < steps; i++)
        if (!(fabs(loss[i] - base[i]) <= 1e-5 * fabs(base[i]))) {
            if (!diff) fprintf(stderr, "%s: step %d loss %.9g, failure-free %.9g\n", what, i, loss[i], base[i]);
            diff++;
        }
    CHECKF(diff == 0, "%s: %d step losses differ from the failure-free run", what, diff);
}

int main(void) {
    const char *b = getenv("LLAVA_BUILD_DIR"), *s = getenv("LLAVA_SOURCE_DIR");
    if (!b || !s) TEST_SKIP("LLAVA_BUILD_DIR / LLAVA_SOURCE_DIR not set (run through ctest)");
    if (!mpilaunch_built()) TEST_SKIP("this build has no MPI (Open MPI not found at configure time)");
    if (system("command -v mpirun >/dev/null 2>&1") != 0) TEST_SKIP("mpirun not in PATH");
    snprintf(g_bin, sizeof g_bin, "%s", b);
    snprintf(g_src, sizeof g_src, "%s", s);
    snprintf(g_tmp, sizeof g_tmp, "%s", test_tmpdir());
    char data[600];
    snprintf(data, sizeof data, "%s/data", g_tmp);
    log_set_level(LOG_ERROR);
    signal(SIGPIPE, SIG_IGN);
    CHECK_RC(sim_dataset_write(data, N_SAMPLES, 1, 20, 37, 90), 0);

    /* failure-free: 3 workers under mpirun */
    launch_t l;
    CHECK(launch(&l, "base") == 0);
    int code = launch_wait(&l, 120);
    CHECKF(code == 0, "failure-free launcher exited %d", code);
    if (code != 0) print_logs(&l);
    double base[STEPS], loss[STEPS];
    check_ledger("failure-free", l.state, base, NULL);
    CHECKF(log_grep(&l, "MPI: published endpoint", NULL, NULL, 0) == 1, "the endpoint was not published once");
    CHECKF(log_grep(&l, " registered: ", NULL, NULL, 0) == 3, "expected 3 workers to register");
    CHECKF(ranks_stopped(&l) == 4, "%d of 4 ranks stopped by themselves", ranks_stopped(&l));
    CHECKF(sanitizer_reports(&l) == 0, "sanitizer reports in %s", l.log);

    /* one worker killed -9 mid-job: replaced via MPI_Comm_spawn, the job finishes with the same losses */
    CHECK(launch(&l, "kill") == 0);
    char ep[256] = "";
    for (int i = 0; i < 600 && !ep[0]; i++) {
        sleep_ms(100);
        log_grep(&l, "MPI: published endpoint ", "MPI: published endpoint ", ep, sizeof ep);
    }
    CHECKF(ep[0], "no endpoint in %s", l.log);
    client_t *cl = NULL;
    pid_t victim = 0;
    if (ep[0] && client_open(ep, &cl) == 0) {
        double end = now_s() + 60;
        while (now_s() < end && (job_step_and_member(cl, &victim) < 6 || victim <= 0)) sleep_ms(20);
        client_close(&cl);
    }
    CHECKF(victim > 0, "the job did not reach step 6 with a live member");
    if (victim > 0) kill(victim, SIGKILL);
    code = launch_wait(&l, 120);
    CHECKF(code == 0, "launcher with a killed worker exited %d", code);
    check_ledger("worker killed", l.state, loss, base);
    char pidtxt[32];
    snprintf(pidtxt, sizeof pidtxt, "pid %d,", (int)victim);
    int declared = 0;
    FILE *f = fopen(l.log, "r");
    char line[1024];
    while (f && fgets(line, sizeof line, f)) declared += strstr(line, "declared dead") && strstr(line, pidtxt);
    if (f) fclose(f);
    CHECKF(declared == 1, "worker pid %d was not declared dead once (%d)", (int)victim, declared);
    CHECKF(log_grep(&l, "via MPI_Comm_spawn on", NULL, NULL, 0) == 1, "no replacement via MPI_Comm_spawn logged");
    CHECKF(log_grep(&l, "worker 3 registered", NULL, NULL, 0) == 1, "the replacement did not register");
    CHECKF(log_grep(&l, "worker 3 joins with the training state", NULL, NULL, 0) == 1,
           "the replacement did not join the running job with a member's state");
    CHECKF(job_record_i64(l.state, "joins") == 1, "job record joins = %lld, expected 1",
           (long long)job_record_i64(l.state, "joins"));
    CHECKF(job_record_i64(l.state, "recoveries") >= 1, "job record shows no recovery");
    /* the coordinator, the two survivors and the replacement */
    CHECKF(ranks_stopped(&l) == 4, "%d of 4 live ranks stopped by themselves", ranks_stopped(&l));
    CHECKF(sanitizer_reports(&l) == 0, "sanitizer reports in %s", l.log);
    if (t_failures) print_logs(&l);
    return test_finish();
}
