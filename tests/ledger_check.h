/* The ledger's exactly-once check for tests: given the ledger's steps (an array of {step, epoch, loss, mbs}, as
 * LEDGER replies and state_ledger_range return them), copy the first STEPS losses and count the problems: a gap in
 * the step numbers, an epoch or sample id out of range, a sample not exactly once in its epoch. Before including it
 * a test defines N_SAMPLES, EPOCHS and STEPS. Used by tests/cluster_harness.h and test_mpi_launch.c. */
#ifndef LLAVA_TESTS_LEDGER_CHECK_H
#define LLAVA_TESTS_LEDGER_CHECK_H

#include <string.h>

#include "common/wire.h"

static inline int ledger_check(const cJSON *steps_array, double *loss, int *steps) {
    static int seen[EPOCHS][N_SAMPLES];
    memset(seen, 0, sizeof seen);
    int n = 0, bad = 0;
    const cJSON *e, *mb, *s;
    cJSON_ArrayForEach(e, steps_array) {
        int64_t step = wire_get_i64(e, "step", -1), epoch = wire_get_i64(e, "epoch", -1);
        if (step != n || epoch < 0 || epoch >= EPOCHS) bad++;
        if (n < STEPS) loss[n] = wire_get_num(e, "loss", -1);
        cJSON_ArrayForEach(mb, cJSON_GetObjectItemCaseSensitive(e, "mbs")) cJSON_ArrayForEach(s, mb) {
            int64_t i = (int64_t)s->valuedouble;
            if (i < 0 || i >= N_SAMPLES || epoch < 0 || epoch >= EPOCHS) bad++;
            else seen[epoch][i]++;
        }
        n++;
    }
    for (int ep = 0; ep < EPOCHS; ep++)
        for (int i = 0; i < N_SAMPLES; i++) bad += seen[ep][i] != 1;
    *steps = n;
    return bad;
}

#endif
