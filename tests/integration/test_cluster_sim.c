/* The cluster end to end with real daemons on loopback (llava-coordinator spawning llava-worker processes with the
 * simulated backend, whose loss depends on every earlier update): equal per-step losses for 1, 2 and 3 workers and
 * for another micro-batch budget; every sample exactly once per epoch in the ledger; and the failure promise:
 * kill -9 of a worker mid-step, two workers killed in one step, a worker stopped past the hang timeout and
 * continued, a local replacement joining the running job with a live member's state (and computing after it),
 * the coordinator killed and restarted (going on from the workers' memory: no committed step computed again); the
 * last two with eval.every_epoch's extra epoch-1 checkpoint, which changes no loss and leaves `latest` at the end.
 * Run: ctest -R test_cluster_sim (needs LLAVA_BUILD_DIR, set by ctest). */
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
#include "tests/test.h"

#define N_SAMPLES 192
#define GLOBAL_BATCH 16
#define EPOCHS 2
#define STEPS (EPOCHS * N_SAMPLES / GLOBAL_BATCH)

#define CLUSTER_WORKER_ARGS "--backend sim --sim-mb-ms 15"
#include "tests/cluster_harness.h"

static char g_data[600];

static cJSON *make_spec(const char *name, int workers, int mb_tokens, int hang_ms) {
    cJSON *s = cJSON_CreateObject();
    cJSON_AddStringToObject(s, "name", name);
    cJSON *d = cJSON_AddObjectToObject(s, "data");
    cJSON_AddStringToObject(d, "train", g_data);
    cJSON_AddBoolToObject(d, "group_by_length", 1);
    cJSON *t = cJSON_AddObjectToObject(s, "train");
    cJSON_AddNumberToObject(t, "global_batch", GLOBAL_BATCH);
    cJSON_AddNumberToObject(t, "micro_batch_tokens", mb_tokens);
    cJSON_AddNumberToObject(t, "epochs", EPOCHS);
    cJSON_AddNumberToObject(t, "lr", 0.05);
    cJSON_AddNumberToObject(t, "seed", 7);
    cJSON *k = cJSON_AddObjectToObject(s, "checkpoint");
    char dir[700];
    snprintf(dir, sizeof dir, "%s/run-%s", g_tmp, name);
    cJSON_AddStringToObject(k, "dir", dir);
    cJSON_AddNumberToObject(k, "every_steps", 4);
    cJSON_AddNumberToObject(k, "keep", 2);
    cJSON *cl = cJSON_AddObjectToObject(s, "cluster");
    cJSON_AddNumberToObject(cl, "workers", workers);
    cJSON_AddNumberToObject(cl, "heartbeat_ms", 100);
    cJSON_AddNumberToObject(cl, "hang_timeout_ms", hang_ms);
    cJSON_AddNumberToObject(cl, "max_replacements", 4);
    return s;
}


static double g_base[STEPS];

/* Runs a job to the end (with an optional disruption) and checks ledger and losses against the baseline. */
static void check_run(const char *what, cluster_t *c, uint64_t job, double timeout_s) {
    char buf[32];
    const char *st = wait_job(c, job, timeout_s, buf, sizeof buf);
    CHECKF(strcmp(st, "done") == 0, "%s: job ended '%s'", what, st);
    if (strcmp(st, "done") != 0) print_log(c);
    double loss[STEPS];
    int steps = 0;
    int bad = ledger_losses(c, job, loss, &steps);
    CHECKF(bad == 0, "%s: ledger has %d problems (samples not exactly once per epoch, or gaps)", what, bad);
    CHECKF(steps == STEPS, "%s: %d steps in the ledger, expected %d", what, steps, STEPS);
    int diff = 0;
    for (int i = 0; i < STEPS && i < steps; i++)
        if (!(fabs(loss[i] - g_base[i]) <= 1e-5 * fabs(g_base[i]))) {
            if (!diff) fprintf(stderr, "%s: step %d loss %.9g, baseline %.9g\n", what, i, loss[i], g_base[i]);
            diff++;
        }
    CHECKF(diff == 0, "%s: %d step losses differ from the failure-free run", what, diff);
    printf("%s: ok (%d steps)\n", what, steps);
}

/* eval.every_epoch on: the end of epoch 1 (step 12, where checkpoint-12 falls too) leaves epoch-1 besides the
 * checkpoints; the coordinator only needs the section's presence (no evaluation runs here). */
static cJSON *with_epoch_eval(cJSON *spec) {
    cJSON *e = cJSON_AddObjectToObject(spec, "eval");
    cJSON_AddStringToObject(e, "data", "mc-test.json");
    cJSON_AddBoolToObject(e, "every_epoch", 1);
    return spec;
}

/* The run dir of spec `name` after the job: epoch-1 present (the state of step 12) or absent, `latest` naming the
 * final checkpoint-<STEPS> either way. */
static void check_epoch_ckpt(const char *what, const char *name, int want) {
    char p[1024], text[256] = "";
    snprintf(p, sizeof p, "%s/run-%s/epoch-1/trainer_state.json", g_tmp, name);
    FILE *f = fopen(p, "r");
    size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
    text[n] = 0;
    if (f) fclose(f);
    if (want) CHECKF(f && strstr(text, "\"step\":\t12,"), "%s: no epoch-1 checkpoint of step 12 (%s)", what, p);
    else CHECKF(!f, "%s: %s written without eval.every_epoch", what, p);
    snprintf(p, sizeof p, "%s/run-%s/latest", g_tmp, name);
    f = fopen(p, "r");
    text[0] = 0;
    if (f && !fgets(text, sizeof text, f)) text[0] = 0;
    if (f) fclose(f);
    char final[64];
    snprintf(final, sizeof final, "checkpoint-%d\n", STEPS);
    CHECKF(strcmp(text, final) == 0, "%s: latest names '%s', want checkpoint-%d", what, text, STEPS);
}

int main(void) {
    const char *b = getenv("LLAVA_BUILD_DIR");
    if (!b) TEST_SKIP("LLAVA_BUILD_DIR not set (run through ctest)");
    snprintf(g_bin, sizeof g_bin, "%s", b);
    snprintf(g_tmp, sizeof g_tmp, "%s", test_tmpdir());
    snprintf(g_data, sizeof g_data, "%s/data", g_tmp);
    log_set_level(LOG_ERROR);
    signal(SIGPIPE, SIG_IGN);
    CHECK_RC(sim_dataset_write(g_data, N_SAMPLES, 3, 20, 37, 90), 0);

    /* baseline: one worker */
    cluster_t c = {0};
    CHECK(cluster_start(&c, "base", 1, NULL) == 0);
    uint64_t job = submit(&c, make_spec("base", 1, 256, 3000));
    CHECK(job > 0);
    char buf[32];
    if (strcmp(wait_job(&c, job, 120, buf, sizeof buf), "done") != 0) {
        CHECKF(0, "baseline job did not finish: %s", buf);
        print_log(&c);
    }
    int steps = 0;
    CHECK_EQ_INT(ledger_losses(&c, job, g_base, &steps), 0);
    CHECK_EQ_INT(steps, STEPS);
    check_epoch_ckpt("baseline", "base", 0);
    cluster_stop(&c, SIGTERM);

    /* 2 and 3 workers, and another micro-batch budget: the same losses */
    CHECK(cluster_start(&c, "equiv", 3, NULL) == 0);
    job = submit(&c, make_spec("w2", 2, 256, 3000));
    check_run("2 workers", &c, job, 120);
    job = submit(&c, make_spec("w3", 3, 256, 3000));
    check_run("3 workers", &c, job, 120);
    job = submit(&c, make_spec("budget", 3, 60, 3000));
    check_run("3 workers, micro_batch_tokens 60", &c, job, 120);

    /* kill -9 a worker mid-step, seeded trials */
    srand(12345);
    for (int trial = 0; trial < 3; trial++) {
        char name[32];
        snprintf(name, sizeof name, "kill-trial%d", trial);
        job = submit(&c, make_spec(name, 3, 60, 3000));
        CHECK(wait_step(&c, job, 2 + rand() % (STEPS - 6), 60) == 0);
        sleep_ms(rand() % 40);
        pid_t pids[8];
        int n = member_pids(&c, job, pids, 8);
        CHECK(n >= 1);
        if (n >= 1) kill(pids[rand() % n], SIGKILL);
        check_run(name, &c, job, 120);
    }

    /* a replacement joins the running job with a live member's state and computes micro-batches after joining */
    {
        job = submit(&c, make_spec("join", 3, 60, 3000));
        CHECK(wait_step(&c, job, 3, 60) == 0);
        pid_t known[64];
        int nknown = all_pids(&c, known, 64);
        pid_t victims[8];
        int nv = member_pids(&c, job, victims, 8);
        CHECK(nv == 3);
        if (nv >= 1) kill(victims[0], SIGKILL);
        check_run("replacement joins the running job", &c, job, 120);
        cJSON *st = status(&c, job);
        int64_t joins = wire_get_i64(cJSON_GetObjectItemCaseSensitive(st, "job"), "joins", -1);
        CHECKF(joins >= 1, "join: the job record counts %lld joins, expected at least 1", (long long)joins);
        int newcomer_mbs = 0;
        const cJSON *w;
        cJSON_ArrayForEach(w, cJSON_GetObjectItemCaseSensitive(st, "workers")) {
            pid_t pid = (pid_t)wire_get_i64(w, "pid", 0);
            int old = 0;
            for (int i = 0; i < nknown; i++) old |= known[i] == pid;
            if (!old && strcmp(wire_get_str(w, "state", ""), "dead") != 0)
                newcomer_mbs += (int)wire_get_i64(w, "mbs_done", 0);
        }
        cJSON_Delete(st);
        CHECKF(newcomer_mbs > 0, "join: the replacement computed %d micro-batches after joining", newcomer_mbs);
        if (joins < 1 || newcomer_mbs <= 0) print_log(&c);
    }

    /* two workers killed in the same step, with epoch checkpoints on: the same losses, epoch-1 written */
    job = submit(&c, with_epoch_eval(make_spec("killtwo", 3, 60, 3000)));
    CHECK(wait_step(&c, job, 5, 60) == 0);
    pid_t pids[8];
    int n = member_pids(&c, job, pids, 8);
    CHECK(n >= 2);
    if (n >= 2) {
        kill(pids[0], SIGKILL);
        kill(pids[1], SIGKILL);
    }
    check_run("two killed in one step", &c, job, 120);
    check_epoch_ckpt("two killed in one step", "killtwo", 1);

    /* SIGSTOP one past the hang timeout, then SIGCONT: fenced, the job goes on and finishes */
    job = submit(&c, make_spec("stop", 3, 60, 800));
    CHECK(wait_step(&c, job, 4, 60) == 0);
    n = member_pids(&c, job, pids, 8);
    CHECK(n >= 1);
    if (n >= 1) {
        kill(pids[n - 1], SIGSTOP);
        sleep_ms(1500);
        kill(pids[n - 1], SIGCONT);
    }
    check_run("stopped past the timeout", &c, job, 120);
    cluster_stop(&c, SIGTERM);

    /* the coordinator killed mid-job and restarted on the same state: the job continues and finishes */
    CHECK(cluster_start(&c, "crash", 2, NULL) == 0);
    char ep[256];
    snprintf(ep, sizeof ep, "%s", c.ep);
    cJSON *spec = with_epoch_eval(make_spec("crash", 2, 60, 3000)); /* epoch-1 at step 12, after the restart */
    /* no checkpoint before the end: resuming from one would recompute every step (replayed_steps > 0) */
    cJSON_ReplaceItemInObject(cJSON_GetObjectItemCaseSensitive(spec, "checkpoint"), "every_steps",
                              cJSON_CreateNumber(1000));
    job = submit(&c, spec);
    CHECK(wait_step(&c, job, 7, 60) == 0);
    double before[STEPS];
    int committed = 0;
    ledger_losses(&c, job, before, &committed); /* counts the committed steps (the job is mid-epoch: no check) */
    cluster_stop(&c, SIGKILL); /* its spawned workers are orphaned: they reconnect to the new coordinator */
    CHECK(cluster_start(&c, "crash", 0, ep) == 0); /* same endpoint: the orphans come back */
    check_run("coordinator killed and restarted", &c, job, 120);
    check_epoch_ckpt("coordinator killed and restarted", "crash", 1);
    /* the restarted coordinator went on from the workers' memory: nothing committed was computed again */
    cJSON *st = status(&c, job);
    const cJSON *rec = cJSON_GetObjectItemCaseSensitive(st, "job");
    CHECKF(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rec, "resumed_in_memory")),
           "restart: the job did not go on from the workers' memory");
    CHECKF(wire_get_i64(rec, "replayed_steps", -1) == 0, "restart: %lld committed steps were computed again",
           (long long)wire_get_i64(rec, "replayed_steps", -1));
    CHECKF(wire_get_i64(rec, "start_step", -1) >= committed,
           "restart: went on from step %lld, but %d steps were committed before the crash",
           (long long)wire_get_i64(rec, "start_step", -1), committed);
    cJSON_Delete(st);
    cluster_stop(&c, SIGTERM);
    sleep_ms(300); /* the workers got SHUTDOWN from the coordinator; give them a moment to exit */
    return test_finish();
}
