/* What the coordinator needs to know of a dataset to plan epochs and show progress: per-sample token lengths
 * (after image expansion), modality, and the shard ranges. Read from the dataset's manifest.json.
 * Tested by tests/unit/test_datainfo.c. */
#ifndef LLAVA_DATAINFO_H
#define LLAVA_DATAINFO_H

#include <stdint.h>

typedef struct {
    int64_t n_samples;
    int32_t *lengths;      /* [n] tokens after image expansion (capped at max_seq_len) */
    uint8_t *has_image;    /* [n] */
    int64_t n_shards;
    int64_t *shard_first;  /* [n_shards + 1]: shard s holds samples [shard_first[s], shard_first[s+1]) */
    char **shard_names;    /* [n_shards] */
    int image_size;
} datainfo_t;

/** Loads dataset_dir/manifest.json. image_tokens: tokens one image expands to (0: derive (image_size/14)^2).
 *  max_seq_len > 0 caps lengths. Errors name the file and field. */
int datainfo_load(const char *dataset_dir, int image_tokens, int max_seq_len, datainfo_t *out);
void datainfo_free(datainfo_t *d);
/** Shard holding sample i (binary search), or -1. */
int64_t datainfo_shard_of(const datainfo_t *d, int64_t i);

#endif
