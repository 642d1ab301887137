/* Tests coordinator/state: job queue, ledger commits (duplicates refused, replays kept), persistence across a
 * process that dies right after committing. Run: ctest -R test_state */
#include "common/err.h"
#include "coordinator/state.h"
#include "tests/test.h"

#include <sys/wait.h>
#include <unistd.h>

static cJSON *entry(int64_t step, int salt) {
    cJSON *e = cJSON_CreateObject();
    cJSON_AddNumberToObject(e, "step", (double)step);
    cJSON *mbs = cJSON_AddArrayToObject(e, "mbs");
    cJSON *mb = cJSON_CreateArray();
    cJSON_AddItemToArray(mb, cJSON_CreateNumber((double)(step * 10 + salt)));
    cJSON_AddItemToArray(mbs, mb);
    cJSON_AddNumberToObject(e, "loss", 1.5);
    return e;
}

int main(void) {
    log_set_level(LOG_NONE);
    char dir[512];
    snprintf(dir, sizeof dir, "%s/state", test_tmpdir());
    state_t *s = NULL;
    CHECK_RC(state_open(dir, &s), 0);
    if (!s) return test_finish();
    uint64_t a = 0, b = 0, next = 9;
    CHECK_RC(state_job_next(s, &next), 0);
    CHECK_EQ_INT(next, 0);
    cJSON *job = cJSON_CreateObject();
    cJSON_AddStringToObject(job, "name", "first");
    CHECK_RC(state_job_add(s, job, &a), 0);
    cJSON_ReplaceItemInObject(job, "name", cJSON_CreateString("second"));
    CHECK_RC(state_job_add(s, job, &b), 0);
    cJSON_Delete(job);
    CHECK_EQ_INT(a, 1);
    CHECK_EQ_INT(b, 2);
    CHECK_RC(state_job_next(s, &next), 0);
    CHECK_EQ_INT(next, 1);
    cJSON *patch = cJSON_CreateObject();
    cJSON_AddStringToObject(patch, "state", JOB_RUNNING);
    CHECK_RC(state_job_update(s, b, patch), 0); /* a running job goes first: it was interrupted */
    CHECK_RC(state_job_update(s, 77, patch), LLAVA_ENOTFOUND);
    cJSON_Delete(patch);
    CHECK_RC(state_job_next(s, &next), 0);
    CHECK_EQ_INT(next, 2);
    cJSON *got = NULL;
    CHECK_RC(state_job_get(s, b, &got), 0);
    CHECK(got && strcmp(cJSON_GetObjectItem(got, "name")->valuestring, "second") == 0);
    CHECK(got && strcmp(cJSON_GetObjectItem(got, "state")->valuestring, JOB_RUNNING) == 0);
    cJSON_Delete(got);
    cJSON *list = NULL;
    CHECK_RC(state_job_list(s, &list), 0);
    CHECK_EQ_INT(cJSON_GetArraySize(list), 2);
    cJSON_Delete(list);

    int64_t last = 5;
    CHECK_RC(state_ledger_last(s, a, &last), 0);
    CHECK_EQ_INT(last, -1);
    for (int64_t st = 0; st < 5; st++) {
        cJSON *e = entry(st, 0);
        CHECK_RC(state_ledger_commit(s, a, st, e), 0);
        cJSON_Delete(e);
    }
    cJSON *e = entry(0, 0);
    CHECK_RC(state_ledger_commit(s, b, 0, e), 0); /* another job's step 0 */
    CHECK_RC(state_ledger_commit(s, a, 3, e), LLAVA_EINVAL); /* step 3 with other micro-batches */
    cJSON_Delete(e);
    e = entry(3, 0);
    CHECK_RC(state_ledger_commit(s, a, 3, e), 0); /* a replay of the same step is accepted and changes nothing */
    cJSON_Delete(e);
    CHECK_RC(state_ledger_last(s, a, &last), 0);
    CHECK_EQ_INT(last, 4);
    CHECK_RC(state_ledger_last(s, b, &last), 0);
    CHECK_EQ_INT(last, 0);
    CHECK_RC(state_ledger_range(s, a, 1, 3, &list), 0);
    CHECK_EQ_INT(cJSON_GetArraySize(list), 3);
    cJSON_Delete(list);
    CHECK_RC(state_ledger_range(s, a, 0, -1, &list), 0);
    CHECK_EQ_INT(cJSON_GetArraySize(list), 5);
    cJSON_Delete(list);
    CHECK_RC(state_ledger_get(s, a, 9, &got), LLAVA_ENOTFOUND);
    state_close(&s);
    CHECK(s == NULL);

    /* a child commits step 5 and dies at once (no close): the commit must survive */
    pid_t pid = fork();
    if (pid == 0) {
        state_t *c = NULL;
        if (state_open(dir, &c)) _exit(3);
        cJSON *ce = entry(5, 0);
        int rc = state_ledger_commit(c, 1, 5, ce);
        _exit(rc ? 4 : 0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK_RC(state_open(dir, &s), 0);
    if (s) {
        CHECK_RC(state_ledger_last(s, a, &last), 0);
        CHECK_EQ_INT(last, 5);
        uint64_t c = 0;
        job = cJSON_CreateObject();
        CHECK_RC(state_job_add(s, job, &c), 0);
        CHECK_EQ_INT(c, 3); /* ids are never reused */
        cJSON_Delete(job);
        state_close(&s);
    }
    /* a state dir that cannot be created */
    CHECK(state_open("/proc/nope/state", &s) != 0);
    return test_finish();
}
