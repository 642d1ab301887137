/* A replacement joining a running job on the real model (worker/backend_model.c: a tiny random LLaVA, CLIP 3x64 at
 * 56 px + LLaMA 2x128, projector and language model trained with AdamW) with 3 CPU workers on loopback: a worker
 * killed at step 3 is replaced, the replacement gets trainable weights + AdamW moments + step from a live member
 * (llava_train_state_export/import) and computes micro-batches, and every step's loss equals the failure-free run
 * within 1e-5 relative, with every sample exactly once in the ledger. Skipped (77) without spm_train (synth data).
 * Run: ctest -R test_cluster_model (needs LLAVA_BUILD_DIR and LLAVA_SOURCE_DIR, set by ctest). */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/wire.h"
#include "coordinator/client.h"
#include "tests/test.h"

#define N_SAMPLES 288 /* synth --n 96: instruct holds 3 conversations per image */
#define GLOBAL_BATCH 16
#define EPOCHS 1
#define STEPS (EPOCHS * N_SAMPLES / GLOBAL_BATCH)

#define CLUSTER_WORKER_ARGS "--backend model --threads 1"
#include "tests/cluster_harness.h"

static char g_data[600], g_model[600];

static cJSON *make_spec(const char *name, int workers) {
    cJSON *s = cJSON_CreateObject();
    cJSON_AddStringToObject(s, "name", name);
    cJSON *mo = cJSON_AddObjectToObject(s, "model");
    cJSON_AddStringToObject(mo, "llava", g_model);
    cJSON *d = cJSON_AddObjectToObject(s, "data");
    cJSON_AddStringToObject(d, "train", g_data);
    cJSON_AddNumberToObject(d, "max_seq_len", 256);
    cJSON_AddBoolToObject(d, "group_by_length", 1);
    cJSON *t = cJSON_AddObjectToObject(s, "train");
    cJSON_AddNumberToObject(t, "global_batch", GLOBAL_BATCH);
    cJSON_AddNumberToObject(t, "micro_batch_tokens", 256);
    cJSON_AddNumberToObject(t, "epochs", EPOCHS);
    cJSON_AddNumberToObject(t, "lr", 1e-3);
    cJSON_AddNumberToObject(t, "warmup_ratio", 0.1);
    cJSON_AddNumberToObject(t, "seed", 5);
    cJSON *tr = cJSON_AddArrayToObject(t, "trainable");
    cJSON_AddItemToArray(tr, cJSON_CreateString("projector"));
    cJSON_AddItemToArray(tr, cJSON_CreateString("language_model"));
    cJSON *k = cJSON_AddObjectToObject(s, "checkpoint");
    char dir[700];
    snprintf(dir, sizeof dir, "%s/run-%s", g_tmp, name);
    cJSON_AddStringToObject(k, "dir", dir);
    cJSON_AddNumberToObject(k, "every_steps", 1000);
    cJSON_AddNumberToObject(k, "keep", 1);
    cJSON *cl = cJSON_AddObjectToObject(s, "cluster");
    cJSON_AddNumberToObject(cl, "workers", workers);
    cJSON_AddNumberToObject(cl, "heartbeat_ms", 100);
    cJSON_AddNumberToObject(cl, "hang_timeout_ms", 5000);
    cJSON_AddNumberToObject(cl, "max_replacements", 2);
    return s;
}


static double g_base[STEPS];

static void run_or_skip(const char *cmd) {
    int rc = system(cmd);
    if (rc != 0) TEST_SKIP("'%s' failed (exit %d): no spm_train for the synthetic data?", cmd, rc);
}

int main(void) {
    const char *b = getenv("LLAVA_BUILD_DIR"), *src = getenv("LLAVA_SOURCE_DIR");
    if (!b || !src) TEST_SKIP("LLAVA_BUILD_DIR / LLAVA_SOURCE_DIR not set (run through ctest)");
    snprintf(g_bin, sizeof g_bin, "%s", b);
    snprintf(g_tmp, sizeof g_tmp, "%s", test_tmpdir());
    snprintf(g_data, sizeof g_data, "%s/synth/instruct", g_tmp);
    snprintf(g_model, sizeof g_model, "%s/model", g_tmp);
    log_set_level(LOG_ERROR);
    signal(SIGPIPE, SIG_IGN);
    char cmd[4000];
    snprintf(cmd, sizeof cmd, "%s/llava-data synth --out %s/synth --n 96 --n-test 4 --image-size 56 --ingest 56 "
             "--jobs 1 > %s/synth.log 2>&1", g_bin, g_tmp, g_tmp);
    run_or_skip(cmd);
    snprintf(cmd, sizeof cmd, "%s/llava-model init --config %s/jobs/assets/demo-model.json --out %s --seed 1 "
             "> %s/init.log 2>&1", g_bin, src, g_model, g_tmp);
    CHECK(system(cmd) == 0);

    cluster_t c = {0};
    CHECK(cluster_start(&c, "model", 3, NULL) == 0);
    uint64_t job = submit(&c, make_spec("base", 3));
    CHECK(job > 0);
    char buf[32];
    if (strcmp(wait_job(&c, job, 300, buf, sizeof buf), "done") != 0) {
        CHECKF(0, "baseline job did not finish: %s", buf);
        print_log(&c);
    }
    int steps = 0;
    CHECK_EQ_INT(ledger_losses(&c, job, g_base, &steps), 0);
    CHECK_EQ_INT(steps, STEPS);

    job = submit(&c, make_spec("join", 3));
    CHECK(wait_step(&c, job, 3, 300) == 0);
    pid_t known[64], victims[8];
    int nknown = all_pids(&c, known, 64);
    int nv = member_pids(&c, job, victims, 8);
    CHECK(nv == 3);
    if (nv >= 1) kill(victims[nv - 1], SIGKILL);
    if (strcmp(wait_job(&c, job, 300, buf, sizeof buf), "done") != 0) {
        CHECKF(0, "the job with a kill did not finish: %s", buf);
        print_log(&c);
    }
    double loss[STEPS];
    steps = 0;
    CHECK_EQ_INT(ledger_losses(&c, job, loss, &steps), 0);
    CHECK_EQ_INT(steps, STEPS);
    double worst = 0;
    for (int i = 0; i < steps && i < STEPS; i++) {
        double r = fabs(loss[i] - g_base[i]) / fabs(g_base[i]);
        worst = r > worst ? r : worst;
        CHECKF(r <= 1e-5, "step %d: loss %.9g, failure-free %.9g", i, loss[i], g_base[i]);
    }
    cJSON *st = status(&c, job);
    int64_t joins = wire_get_i64(cJSON_GetObjectItemCaseSensitive(st, "job"), "joins", -1);
    CHECKF(joins >= 1, "the job record counts %lld joins, expected at least 1", (long long)joins);
    int newcomer_mbs = 0;
    const cJSON *w;
    cJSON_ArrayForEach(w, cJSON_GetObjectItemCaseSensitive(st, "workers")) {
        pid_t pid = (pid_t)wire_get_i64(w, "pid", 0);
        int old = 0;
        for (int i = 0; i < nknown; i++) old |= known[i] == pid;
        if (!old && strcmp(wire_get_str(w, "state", ""), "dead") != 0) newcomer_mbs += (int)wire_get_i64(w, "mbs_done", 0);
    }
    cJSON_Delete(st);
    CHECKF(newcomer_mbs > 0, "the replacement computed %d micro-batches after joining", newcomer_mbs);
    if (joins < 1 || newcomer_mbs <= 0) print_log(&c);
    printf("real model: %d steps, a replacement joined and computed %d micro-batches; worst loss difference %.2e "
           "relative\n", steps, newcomer_mbs, worst);
    cluster_stop(&c, SIGTERM);
    sleep_ms(300);
    return test_finish();
}
