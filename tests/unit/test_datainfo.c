/* Tests coordinator/datainfo: manifest reading, image expansion of lengths, the cap, shard lookup, and that each
 * malformed manifest is refused with a message. Run: ctest -R test_datainfo */
#include "common/dataset.h"
#include "common/err.h"
#include "coordinator/datainfo.h"
#include "tests/test.h"

static void write_text(const char *dir, const char *text) {
    char path[600];
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

/* A manifest written by the dataset module itself: 5 samples in 2 shards, 28 px images (patch 14). */
static void write_manifest(const char *dir) {
    ds_manifest_t m;
    memset(&m, 0, sizeof m);
    int32_t lengths[5] = {10, 20, 30, 40, 3000}, n_images[5] = {1, 0, 2, 0, 1};
    ds_shard_t shards[2] = {{.name = "a", .first = 0, .count = 2}, {.name = "b", .first = 2, .count = 3}};
    m.version = 1;
    m.n_samples = 5;
    m.n_images_total = 4;
    m.n_text_only = 2;
    m.n_source = 5;
    m.image_size = 28;
    m.patch_size = 14;
    snprintf(m.template_name, sizeof m.template_name, "plain");
    m.n_shards = 2;
    m.shards = shards;
    m.lengths = lengths;
    m.n_images = n_images;
    CHECK_RC(ds_manifest_write(dir, &m, NULL), 0);
}

int main(void) {
    log_set_level(LOG_NONE);
    const char *dir = test_tmpdir();
    datainfo_t d;
    write_manifest(dir);
    CHECK_RC(datainfo_load(dir, 0, 2048, &d), 0);
    CHECK_EQ_INT(d.n_samples, 5);
    CHECK_EQ_INT(d.lengths[0], 10 + 3);     /* 28 px / 14 = 2x2 = 4 patches: placeholder becomes 4 tokens */
    CHECK_EQ_INT(d.lengths[2], 30 + 2 * 3);
    CHECK_EQ_INT(d.lengths[4], 2048);       /* capped at max_seq_len */
    CHECK_EQ_INT(d.has_image[1], 0);
    CHECK_EQ_INT(d.has_image[2], 1);
    CHECK_EQ_INT(d.n_shards, 2);
    CHECK_EQ_INT(datainfo_shard_of(&d, 0), 0);
    CHECK_EQ_INT(datainfo_shard_of(&d, 1), 0);
    CHECK_EQ_INT(datainfo_shard_of(&d, 2), 1);
    CHECK_EQ_INT(datainfo_shard_of(&d, 4), 1);
    CHECK_EQ_INT(datainfo_shard_of(&d, 5), -1);
    CHECK(strcmp(d.shard_names[1], "b") == 0);
    datainfo_free(&d);
    CHECK_RC(datainfo_load(dir, 577, 0, &d), 0); /* an explicit patch count, no cap */
    CHECK_EQ_INT(d.lengths[0], 10 + 576);
    CHECK_EQ_INT(d.lengths[4], 3000 + 576);
    datainfo_free(&d);
    const char *bad[] = {
        "not json",
        "{\"n_samples\": 0}",
        "{\"n_samples\": 2, \"lengths\": [1], \"n_images\": [0, 0], \"shards\": [{\"name\": \"a\", \"first\": 0, \"count\": 2}]}",
        "{\"n_samples\": 2, \"lengths\": [1, -4], \"n_images\": [0, 0], \"shards\": [{\"name\": \"a\", \"first\": 0, \"count\": 2}]}",
        "{\"n_samples\": 2, \"lengths\": [1, 2], \"n_images\": [0, 0], \"shards\": []}",
        "{\"n_samples\": 2, \"lengths\": [1, 2], \"n_images\": [0, 0], \"shards\": [{\"name\": \"a\", \"first\": 1, \"count\": 1}]}",
        "{\"n_samples\": 3, \"lengths\": [1, 2, 3], \"n_images\": [0, 0, 0], \"shards\": [{\"name\": \"a\", \"first\": 0, \"count\": 2}]}",
        "{\"n_samples\": 2, \"lengths\": [1, 2], \"n_images\": [0, 0], \"shards\": [{\"first\": 0, \"count\": 2}]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_text(dir, bad[i]);
        CHECKF(datainfo_load(dir, 0, 0, &d) == LLAVA_EFORMAT, "bad manifest %zu accepted", i);
    }
    CHECK_RC(datainfo_load("/nonexistent/dataset", 0, 0, &d), LLAVA_ENOTFOUND);
    return test_finish();
}
