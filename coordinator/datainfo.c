/* Reads what the planner needs from a dataset's manifest.json (see docs/dataset-format.md): per-sample lengths
 * and image counts, and the shard ranges. Tested by tests/unit/test_datainfo.c. */
#include "coordinator/datainfo.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/err.h"

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) buf[n] = 0;
    *len = buf ? (size_t)n : 0;
    return buf;
}

static int get_int(const cJSON *o, const char *key, int64_t *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 9e15) return -1;
    *out = (int64_t)v->valuedouble;
    return 0;
}

int datainfo_load(const char *dir, int image_tokens, int max_seq_len, datainfo_t *d) {
    int rc = 0;
    char path[1100];
    size_t len = 0;
    memset(d, 0, sizeof *d);
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    char *text = read_file(path, &len);
    cJSON *m = NULL;
    CHECK_GOTO(text, LLAVA_ENOTFOUND, "%s: cannot read (is '%s' a dataset made by llava-data ingest?)", path, dir);
    m = cJSON_ParseWithLength(text, len);
    CHECK_GOTO(cJSON_IsObject(m), LLAVA_EFORMAT, "%s: not a JSON object", path);
    int64_t n = 0, size = 0;
    CHECK_GOTO(get_int(m, "n_samples", &n) == 0 && n > 0, LLAVA_EFORMAT, "%s: 'n_samples' missing or not a positive integer", path);
    if (get_int(m, "image_size", &size) != 0) size = 0;
    d->image_size = (int)size;
    if (image_tokens <= 0) image_tokens = size > 0 ? (int)((size / 14) * (size / 14)) : 0;
    const cJSON *lens = cJSON_GetObjectItemCaseSensitive(m, "lengths");
    const cJSON *nimg = cJSON_GetObjectItemCaseSensitive(m, "n_images");
    CHECK_GOTO(cJSON_GetArraySize(lens) == n, LLAVA_EFORMAT, "%s: 'lengths' must list %lld samples", path, (long long)n);
    CHECK_GOTO(cJSON_GetArraySize(nimg) == n, LLAVA_EFORMAT, "%s: 'n_images' must list %lld samples", path, (long long)n);
    d->n_samples = n;
    d->lengths = malloc((size_t)n * sizeof *d->lengths);
    d->has_image = malloc((size_t)n);
    ALLOC_CHECK_GOTO(d->lengths);
    ALLOC_CHECK_GOTO(d->has_image);
    int64_t i = 0;
    const cJSON *a = lens->child, *b = nimg->child;
    for (; a && b; a = a->next, b = b->next, i++) {
        CHECK_GOTO(cJSON_IsNumber(a) && a->valuedouble >= 0 && cJSON_IsNumber(b) && b->valuedouble >= 0, LLAVA_EFORMAT,
                   "%s: sample %lld: length and n_images must be non-negative integers", path, (long long)i);
        int64_t l = (int64_t)a->valuedouble + (int64_t)b->valuedouble * (image_tokens > 0 ? image_tokens - 1 : 0);
        if (max_seq_len > 0 && l > max_seq_len) l = max_seq_len;
        d->lengths[i] = (int32_t)l;
        d->has_image[i] = b->valuedouble > 0;
    }
    const cJSON *shards = cJSON_GetObjectItemCaseSensitive(m, "shards"), *s;
    int ns = cJSON_GetArraySize(shards);
    CHECK_GOTO(cJSON_IsArray(shards) && ns > 0, LLAVA_EFORMAT, "%s: 'shards' missing or empty", path);
    d->shard_first = malloc(((size_t)ns + 1) * sizeof *d->shard_first);
    d->shard_names = calloc((size_t)ns, sizeof *d->shard_names);
    ALLOC_CHECK_GOTO(d->shard_first);
    ALLOC_CHECK_GOTO(d->shard_names);
    int64_t expect = 0;
    cJSON_ArrayForEach(s, shards) {
        int64_t first = 0, count = 0;
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(s, "name"));
        CHECK_GOTO(name && get_int(s, "first", &first) == 0 && get_int(s, "count", &count) == 0, LLAVA_EFORMAT,
                   "%s: shard %lld needs 'name', 'first' and 'count'", path, (long long)d->n_shards);
        CHECK_GOTO(first == expect && count > 0, LLAVA_EFORMAT,
                   "%s: shard '%s' covers [%lld, %lld), expected to start at %lld", path, name, (long long)first,
                   (long long)(first + count), (long long)expect);
        d->shard_names[d->n_shards] = strdup(name);
        ALLOC_CHECK_GOTO(d->shard_names[d->n_shards]);
        d->shard_first[d->n_shards++] = first;
        expect = first + count;
    }
    CHECK_GOTO(expect == n, LLAVA_EFORMAT, "%s: shards cover %lld samples, n_samples is %lld", path, (long long)expect,
               (long long)n);
    d->shard_first[d->n_shards] = n;
cleanup:
    cJSON_Delete(m);
    free(text);
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
