/* Tests coordinator/client's one-line per-shard summary (client_shard_summary): percentages for up to 4 shards,
 * one character per shard beyond, the 64-shard cap, clamping, and a short buffer. Run: ctest -R test_client */
#include <string.h>

#include <cjson/cJSON.h>

#include "coordinator/client.h"
#include "tests/test.h"

/* A STATUS "run" object with shards done[i] of total[i]. */
static cJSON *run_with(int n, const double *done, const double *total) {
    cJSON *run = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(run, "shards");
    for (int i = 0; i < n; i++) {
        cJSON *s = cJSON_CreateObject();
        char name[32];
        snprintf(name, sizeof name, "shard-%05d", i);
        cJSON_AddStringToObject(s, "name", name);
        cJSON_AddNumberToObject(s, "done", done[i]);
        cJSON_AddNumberToObject(s, "total", total[i]);
        cJSON_AddItemToArray(arr, s);
    }
    return run;
}

static void check_summary(int n, const double *done, const double *total, size_t len, const char *want) {
    cJSON *run = run_with(n, done, total);
    char out[256];
    memset(out, 'x', sizeof out);
    client_shard_summary(run, out, len);
    CHECKF(strcmp(out, want) == 0, "%d shards, len %zu: got \"%s\", want \"%s\"", n, len, out, want);
    cJSON_Delete(run);
}

int main(void) {
    double d2[2] = {4500, 2000}, t2[2] = {10000, 5000};
    check_summary(2, d2, t2, 256, "shards 45% 40%");
    double d1[1] = {10000}, t1[1] = {10000};
    check_summary(1, d1, t1, 256, "shards 100%");
    double d4[4] = {0, 999, 1000, 1001}, t4[4] = {1000, 1000, 1000, 0}; /* a zero total counts as nothing done */
    check_summary(4, d4, t4, 256, "shards 0% 99% 100% 0%");
    double d6[6] = {100, 95, 30, 0, 250, -5}, t6[6] = {100, 100, 100, 100, 100, 100}; /* clamped to 0..1 */
    check_summary(6, d6, t6, 256, "shards #930#0");
    double d70[70], t70[70];
    for (int i = 0; i < 70; i++) d70[i] = i < 10 ? 50 : 0, t70[i] = 50;
    char want[128] = "shards ##########";
    for (int i = 10; i < 64; i++) strcat(want, "0");
    strcat(want, "+6");
    check_summary(70, d70, t70, 256, want);
    check_summary(2, d2, t2, 10, "shards 45");  /* truncated, NUL-terminated */
    check_summary(6, d6, t6, 9, "shards #");
    check_summary(0, NULL, NULL, 256, "");
    cJSON *run = cJSON_CreateObject(); /* no "shards" at all, and no run */
    char out[16] = "junk";
    client_shard_summary(run, out, sizeof out);
    CHECK(out[0] == 0);
    strcpy(out, "junk");
    client_shard_summary(NULL, out, sizeof out);
    CHECK(out[0] == 0);
    cJSON_Delete(run);
    return test_finish();
}
