/* A text-only dataset manifest for the simulated backend, which never reads records: shared by the cluster tests
 * and the coordinator benchmarks. Header only (each test is one program). */
#ifndef LLAVA_TESTS_SIM_DATASET_H
#define LLAVA_TESTS_SIM_DATASET_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/dataset.h"

/* Writes dir/manifest.json (creating dir): n samples, sample i of base + (i * mul) % mod tokens, in nshards shards
 * of ceil(n / nshards) samples (the last may hold fewer). Returns 0, -1 when out of memory, or ds_manifest_write's
 * code. */
static inline int sim_dataset_write(const char *dir, int64_t n, int nshards, int base, int mul, int mod) {
    mkdir(dir, 0755);
    ds_manifest_t m;
    memset(&m, 0, sizeof m);
    m.version = 1;
    m.n_samples = m.n_text_only = m.n_source = n;
    m.patch_size = 14;
    snprintf(m.template_name, sizeof m.template_name, "plain");
    m.lengths = calloc((size_t)n, sizeof *m.lengths);
    m.n_images = calloc((size_t)n, sizeof *m.n_images);
    m.shards = calloc((size_t)nshards, sizeof *m.shards);
    int rc = -1;
    if (m.lengths && m.n_images && m.shards) {
        for (int64_t i = 0; i < n; i++) m.lengths[i] = base + (int32_t)((i * mul) % mod);
        int64_t per = (n + nshards - 1) / nshards;
        for (int s = 0; s < nshards; s++) {
            snprintf(m.shards[s].name, sizeof m.shards[s].name, "shard-%05d.lmdb", s);
            m.shards[s].first = s * per;
            m.shards[s].count = m.shards[s].first + per <= n ? per : n - m.shards[s].first;
        }
        m.n_shards = nshards;
        rc = ds_manifest_write(dir, &m, NULL);
    }
    free(m.lengths);
    free(m.n_images);
    free(m.shards);
    return rc;
}

#endif
