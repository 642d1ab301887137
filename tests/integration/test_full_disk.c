/* A full disk under the run directory (a 2 MiB tmpfs, filled mid-job): the job stops as failed with an error that
 * names the file and the cause, the ledger stays consistent (contiguous steps, no sample twice in an epoch), the
 * `latest` checkpoint is complete and loadable, and the same job submitted again once space is back resumes from
 * it with the failure-free run's losses. Then a full disk under the state directory (the LMDB ledger): the job
 * fails naming state.lmdb, is recorded as failed, and the ledger holds exactly the steps before. Needs root
 * (mount); otherwise exits 77 (skipped).
 * Run: ctest -R test_full_disk (needs LLAVA_BUILD_DIR, set by ctest). */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/dataset.h"
#include "common/err.h"
#include "common/wire.h"
#include "coordinator/client.h"
#include "tests/sim_dataset.h"
#include "tests/test.h"

#define N_SAMPLES 192
#define GLOBAL_BATCH 16
#define STEPS (2 * N_SAMPLES / GLOBAL_BATCH)
#define SIM_STATE_BYTES (4096 * 4)

static char g_bin[1024], g_tmp[512], g_data[600], g_mnt[600];
static pid_t g_coord;
static client_t *g_cl;

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int start_coordinator(const char *state) {
    char epfile[700], exe[1100], wexe[1100], logp[700], ep[256] = "";
    snprintf(epfile, sizeof epfile, "%s/endpoint", g_tmp);
    snprintf(logp, sizeof logp, "%s/coordinator.log", g_tmp);
    snprintf(exe, sizeof exe, "%s/llava-coordinator", g_bin);
    snprintf(wexe, sizeof wexe, "%s/llava-worker", g_bin);
    unlink(epfile); /* the previous coordinator's endpoint */
    g_coord = fork();
    if (g_coord == 0) {
        FILE *lf = freopen(logp, "a", stderr);
        (void)lf;
        execl(exe, exe, "--bind", "tcp://127.0.0.1:*", "--state", state, "--spawn-workers", "2", "--worker-exe", wexe,
              "--worker-args", "--backend sim --sim-mb-ms 10", "--endpoint-file", epfile, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200 && !ep[0]; i++) {
        sleep_ms(50);
        FILE *f = fopen(epfile, "r");
        if (f) {
            if (!fgets(ep, sizeof ep, f)) ep[0] = 0;
            fclose(f);
            ep[strcspn(ep, "\n")] = 0;
        }
    }
    return ep[0] ? client_open(ep, &g_cl) : -1;
}

static cJSON *request(int type, cJSON *body) {
    cJSON *r = NULL;
    char err[512];
    if (client_request(g_cl, type, 0, body ? body : cJSON_CreateObject(), 20000, &r, err, sizeof err)) {
        fprintf(stderr, "%s: %s\n", wire_type_name(type), err);
        return NULL;
    }
    return r;
}

static uint64_t submit(const char *name, const char *run_dir) {
    cJSON *req = cJSON_CreateObject(), *s = cJSON_AddObjectToObject(req, "spec");
    cJSON_AddStringToObject(s, "name", name);
    cJSON *d = cJSON_AddObjectToObject(s, "data");
    cJSON_AddStringToObject(d, "train", g_data);
    cJSON *t = cJSON_AddObjectToObject(s, "train");
    cJSON_AddNumberToObject(t, "global_batch", GLOBAL_BATCH);
    cJSON_AddNumberToObject(t, "micro_batch_tokens", 120);
    cJSON_AddNumberToObject(t, "epochs", 2);
    cJSON_AddNumberToObject(t, "lr", 0.05);
    cJSON_AddNumberToObject(t, "seed", 11);
    cJSON *k = cJSON_AddObjectToObject(s, "checkpoint");
    cJSON_AddStringToObject(k, "dir", run_dir);
    cJSON_AddNumberToObject(k, "every_steps", 2);
    cJSON_AddNumberToObject(k, "keep", 2);
    cJSON *c = cJSON_AddObjectToObject(s, "cluster");
    cJSON_AddNumberToObject(c, "workers", 2);
    cJSON_AddNumberToObject(c, "heartbeat_ms", 100);
    cJSON_AddNumberToObject(c, "hang_timeout_ms", 3000);
    cJSON *r = request(MSG_SUBMIT, req);
    uint64_t id = (uint64_t)wire_get_i64(r, "job", 0);
    cJSON_Delete(r);
    return id;
}

/* The job's stored record (state, error) once it is over; NULL on timeout. */
static cJSON *wait_over(uint64_t job, int timeout_s) {
    for (int i = 0; i < timeout_s * 20; i++) {
        int wst = 0;
        if (waitpid(g_coord, &wst, WNOHANG) == g_coord) {
            fprintf(stderr, "the coordinator died: %s %d\n", WIFSIGNALED(wst) ? "signal" : "exit status",
                    WIFSIGNALED(wst) ? WTERMSIG(wst) : WEXITSTATUS(wst));
            g_coord = 0;
            return NULL;
        }
        cJSON *q = cJSON_CreateObject();
        cJSON_AddNumberToObject(q, "job", (double)job);
        cJSON *st = request(MSG_STATUS, q);
        cJSON *rec = cJSON_DetachItemFromObject(st, "job");
        cJSON_Delete(st);
        const char *s = wire_get_str(rec, "state", "?");
        if (rec && strcmp(s, "queued") && strcmp(s, "running")) return rec;
        cJSON_Delete(rec);
        sleep_ms(50);
    }
    return NULL;
}

static int64_t running_step(uint64_t job) {
    cJSON *q = cJSON_CreateObject();
    cJSON_AddNumberToObject(q, "job", (double)job);
    cJSON *st = request(MSG_STATUS, q);
    int64_t s = wire_get_i64(cJSON_GetObjectItemCaseSensitive(st, "run"), "step", -1);
    cJSON_Delete(st);
    return s;
}

/* Ledger losses by global step (NAN where absent); returns the number of problems: a gap before the last step, a
 * step in the wrong epoch, or a sample twice in an epoch. *first / *n: first step and count. */
static int ledger(uint64_t job, double *loss, int64_t *first, int *n) {
    cJSON *q = cJSON_CreateObject();
    cJSON_AddNumberToObject(q, "job", (double)job);
    cJSON_AddNumberToObject(q, "from", 0);
    cJSON_AddNumberToObject(q, "to", -1);
    cJSON *r = request(MSG_LEDGER, q);
    if (!r) return 1;
    static int seen[2][N_SAMPLES];
    memset(seen, 0, sizeof seen);
    int bad = 0;
    int64_t expect = -1;
    *n = 0;
    const cJSON *e, *mb, *s;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(r, "steps")) {
        int64_t step = wire_get_i64(e, "step", -1), epoch = wire_get_i64(e, "epoch", -1);
        if (expect < 0) *first = expect = step;
        bad += step != expect || step < 0 || step >= STEPS || epoch != step / (STEPS / 2);
        if (step >= 0 && step < STEPS) loss[step] = wire_get_num(e, "loss", NAN);
        cJSON_ArrayForEach(mb, cJSON_GetObjectItemCaseSensitive(e, "mbs")) cJSON_ArrayForEach(s, mb) {
            int64_t i = (int64_t)s->valuedouble;
            if (i < 0 || i >= N_SAMPLES || epoch < 0 || epoch > 1 || seen[epoch][i]++) bad++;
        }
        expect++;
        (*n)++;
    }
    cJSON_Delete(r);
    return bad;
}

/* Fills the file system holding dir until a write fails with ENOSPC; returns 0 when it did. */
static int fill_disk(const char *dir) {
    char p[700];
    snprintf(p, sizeof p, "%s/filler", dir);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return -1;
    static char block[4096];
    int full = 0;
    for (int i = 0; i < 4096 && !full; i++)
        if (write(fd, block, sizeof block) < 0) full = errno == ENOSPC;
    close(fd);
    return full ? 0 : -1;
}

/* The `latest` checkpoint: named, complete (trainer_state.json of that step, the full sim state). Returns its
 * step, or -1 if it is missing or damaged. */
static int64_t check_latest(const char *run_dir) {
    char p[1100], name[256] = "";
    snprintf(p, sizeof p, "%s/latest", run_dir);
    FILE *f = fopen(p, "r");
    if (!f) return -1;
    if (!fgets(name, sizeof name, f)) name[0] = 0;
    fclose(f);
    name[strcspn(name, "\n")] = 0;
    long long step = -1;
    if (sscanf(name, "checkpoint-%lld", &step) != 1) return -1;
    snprintf(p, sizeof p, "%s/%s/trainer_state.json", run_dir, name);
    char buf[65536] = "";
    f = fopen(p, "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f) fclose(f);
    buf[n] = 0;
    cJSON *ts = cJSON_Parse(buf);
    int64_t ts_step = wire_get_i64(ts, "step", -2);
    cJSON_Delete(ts);
    struct stat sb;
    snprintf(p, sizeof p, "%s/%s/sim_state.bin", run_dir, name);
    if (ts_step != step || stat(p, &sb) != 0 || sb.st_size != SIM_STATE_BYTES) return -1;
    return step;
}

int main(void) {
    const char *b = getenv("LLAVA_BUILD_DIR");
    if (!b) TEST_SKIP("LLAVA_BUILD_DIR not set (run through ctest)");
    if (geteuid() != 0) TEST_SKIP("needs root to mount a small tmpfs for the run directory");
    snprintf(g_bin, sizeof g_bin, "%s", b);
    snprintf(g_tmp, sizeof g_tmp, "%s", test_tmpdir());
    snprintf(g_data, sizeof g_data, "%s/data", g_tmp);
    snprintf(g_mnt, sizeof g_mnt, "%s/small", g_tmp);
    mkdir(g_mnt, 0755);
    if (mount("tmpfs", g_mnt, "tmpfs", 0, "size=2m") != 0)
        TEST_SKIP("cannot mount a tmpfs on %s: %s (no CAP_SYS_ADMIN in this container?)", g_mnt, strerror(errno));
    log_set_level(LOG_ERROR);
    signal(SIGPIPE, SIG_IGN);
    CHECK_RC(sim_dataset_write(g_data, N_SAMPLES, 1, 20, 37, 90), 0);
    char state[800];
    snprintf(state, sizeof state, "%s/state", g_tmp);
    CHECK(start_coordinator(state) == 0);

    /* failure-free baseline, on the ordinary disk */
    char base_dir[700], run_dir[700];
    snprintf(base_dir, sizeof base_dir, "%s/run-base", g_tmp);
    snprintf(run_dir, sizeof run_dir, "%s/run", g_mnt);
    double base[STEPS], loss[STEPS];
    int64_t first = 0;
    int n = 0;
    uint64_t job = submit("base", base_dir);
    cJSON *rec = wait_over(job, 120);
    CHECK(rec && strcmp(wire_get_str(rec, "state", ""), "done") == 0);
    cJSON_Delete(rec);
    CHECK_EQ_INT(ledger(job, base, &first, &n), 0);
    CHECK_EQ_INT(n, STEPS);

    /* the run directory's disk fills up mid-job */
    job = submit("full", run_dir);
    CHECK(job > 0);
    for (int i = 0; job && i < 1200 && running_step(job) < 5; i++) sleep_ms(25);
    CHECK(running_step(job) >= 5);
    CHECK_RC(fill_disk(g_mnt), 0);
    rec = wait_over(job, 120);
    CHECK(rec != NULL);
    const char *error = wire_get_str(rec, "error", "");
    printf("job on a full disk: %s: %s\n", wire_get_str(rec, "state", "?"), error);
    CHECKF(strcmp(wire_get_str(rec, "state", ""), "failed") == 0, "full disk: the job ended '%s', not failed",
           wire_get_str(rec, "state", "?"));
    CHECKF(strstr(error, run_dir) != NULL, "full disk: the error does not name a file in %s: %s", run_dir, error);
    CHECKF(strstr(error, "space") != NULL, "full disk: the error does not say the disk is full: %s", error);
    cJSON_Delete(rec);
    CHECK_EQ_INT(ledger(job, loss, &first, &n), 0);
    CHECK(first == 0 && n >= 5 && n < STEPS);
    for (int s = 0; s < n; s++)
        CHECKF(fabs(loss[s] - base[s]) <= 1e-5 * fabs(base[s]), "full disk: step %d loss %.9g, baseline %.9g", s,
               loss[s], base[s]);
    int64_t latest = check_latest(run_dir);
    CHECKF(latest >= 2 && latest <= n, "full disk: 'latest' is missing or damaged (step %lld, %d committed)",
           (long long)latest, n);

    /* space is back: the same job resumes from `latest` and ends with the baseline's losses */
    char filler[700];
    snprintf(filler, sizeof filler, "%s/filler", g_mnt);
    CHECK(unlink(filler) == 0);
    job = submit("full", run_dir);
    rec = wait_over(job, 120);
    CHECK(rec && strcmp(wire_get_str(rec, "state", ""), "done") == 0);
    cJSON_Delete(rec);
    for (int s = 0; s < STEPS; s++) loss[s] = NAN;
    CHECK_EQ_INT(ledger(job, loss, &first, &n), 0);
    CHECKF(first == latest && first + n == STEPS, "resumed: steps %lld..%lld, expected %lld..%d", (long long)first,
           (long long)(first + n - 1), (long long)latest, STEPS - 1);
    for (int64_t s = first; s < STEPS; s++)
        CHECKF(fabs(loss[s] - base[s]) <= 1e-5 * fabs(base[s]), "resumed: step %lld loss %.9g, baseline %.9g",
               (long long)s, loss[s], base[s]);
    CHECK(check_latest(run_dir) == STEPS);

    client_close(&g_cl);
    if (g_coord > 0) {
        kill(g_coord, SIGTERM);
        waitpid(g_coord, NULL, 0);
    }

    /* the state directory's disk fills up mid-job: the ledger cannot grow */
    char mnt2[700], run2[700];
    snprintf(mnt2, sizeof mnt2, "%s/small-state", g_tmp);
    snprintf(run2, sizeof run2, "%s/run-state-full", g_tmp);
    mkdir(mnt2, 0755);
    CHECK(mount("tmpfs", mnt2, "tmpfs", 0, "size=2m") == 0);
    snprintf(state, sizeof state, "%s/state", mnt2);
    CHECK(start_coordinator(state) == 0);
    job = submit("statefull", run2);
    CHECK(job > 0);
    for (int i = 0; job && i < 1200 && running_step(job) < 5; i++) sleep_ms(25);
    CHECK(running_step(job) >= 5);
    CHECK_RC(fill_disk(mnt2), 0);
    rec = wait_over(job, 60);
    error = wire_get_str(rec, "error", "");
    printf("job on a full state disk: %s: %s\n", wire_get_str(rec, "state", "?"), error);
    CHECKF(strcmp(wire_get_str(rec, "state", ""), "failed") == 0, "full state disk: the job ended '%s', not failed",
           wire_get_str(rec, "state", "?"));
    CHECKF(strstr(error, state) != NULL && strstr(error, "space") != NULL,
           "full state disk: the error does not name %s and the cause: %s", state, error);
    cJSON_Delete(rec);
    CHECK_EQ_INT(ledger(job, loss, &first, &n), 0);
    CHECK(first == 0 && n >= 5 && n < STEPS);
    for (int s = 0; s < n; s++)
        CHECKF(fabs(loss[s] - base[s]) <= 1e-5 * fabs(base[s]), "full state disk: step %d loss %.9g, baseline %.9g",
               s, loss[s], base[s]);
    client_close(&g_cl);
    if (g_coord > 0) {
        kill(g_coord, SIGTERM);
        waitpid(g_coord, NULL, 0);
    }
    if (umount(mnt2) != 0) fprintf(stderr, "umount %s: %s\n", mnt2, strerror(errno));
    if (umount(g_mnt) != 0) fprintf(stderr, "umount %s: %s\n", g_mnt, strerror(errno));
    if (t_failures) {
        char cmd[800];
        snprintf(cmd, sizeof cmd, "tail -n 30 %s/coordinator.log >&2", g_tmp);
        if (system(cmd) != 0) fprintf(stderr, "(no log)\n");
    }
    return test_finish();
}
