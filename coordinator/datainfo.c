/* What the planner needs of a dataset, from its manifest (common/dataset.h, docs/dataset-format.md): per-sample
 * lengths after image expansion, modality, and the shard ranges. Tested by tests/unit/test_datainfo.c. */
#include "coordinator/datainfo.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dataset.h"
#include "common/err.h"

int datainfo_load(const char *dir, int image_tokens, int max_seq_len, datainfo_t *d) {
    int rc = 0;
    ds_manifest_t m;
    memset(d, 0, sizeof *d);
    rc = ds_manifest_load(dir, &m);
    if (rc) return rc; /* logged, with the file and field */
    int patch = m.patch_size > 0 ? m.patch_size : 14;
    if (image_tokens <= 0) image_tokens = m.image_size > 0 ? (m.image_size / patch) * (m.image_size / patch) : 0;
    d->image_size = m.image_size;
    d->n_samples = m.n_samples;
    d->n_shards = m.n_shards;
    d->lengths = malloc((size_t)m.n_samples * sizeof *d->lengths);
    d->has_image = malloc((size_t)m.n_samples);
    d->shard_first = malloc(((size_t)m.n_shards + 1) * sizeof *d->shard_first);
    d->shard_names = calloc((size_t)m.n_shards, sizeof *d->shard_names);
    ALLOC_CHECK_GOTO(d->lengths);
    ALLOC_CHECK_GOTO(d->has_image);
    ALLOC_CHECK_GOTO(d->shard_first);
    ALLOC_CHECK_GOTO(d->shard_names);
    for (int64_t i = 0; i < m.n_samples; i++) {
        int64_t l = ds_expanded_length(m.lengths[i], m.n_images[i], image_tokens);
        if (max_seq_len > 0 && l > max_seq_len) l = max_seq_len;
        d->lengths[i] = (int32_t)l;
        d->has_image[i] = m.n_images[i] > 0;
    }
    for (int s = 0; s < m.n_shards; s++) {
        d->shard_first[s] = m.shards[s].first;
        d->shard_names[s] = strdup(m.shards[s].name);
        ALLOC_CHECK_GOTO(d->shard_names[s]);
    }
    d->shard_first[m.n_shards] = m.n_samples;
cleanup:
    ds_manifest_free(&m);
    if (rc) datainfo_free(d);
    return rc;
}

void datainfo_free(datainfo_t *d) {
    if (d->shard_names)
        for (int64_t i = 0; i < d->n_shards; i++) free(d->shard_names[i]);
    free(d->shard_names);
    free(d->shard_first);
    free(d->lengths);
    free(d->has_image);
    memset(d, 0, sizeof *d);
}

int64_t datainfo_shard_of(const datainfo_t *d, int64_t i) {
    if (i < 0 || i >= d->n_samples || d->n_shards == 0) return -1;
    int64_t lo = 0, hi = d->n_shards - 1;
    while (lo < hi) {
        int64_t mid = (lo + hi + 1) / 2;
        if (d->shard_first[mid] <= i) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}
