/* Every shipped job spec (every .yaml file under jobs/) parses and validates structurally (no path checks: the data and models are
 * not in the repository) and survives the JSON round trip, so the specs never rot as the schema moves.
 * Run: ctest -R test_jobs_dir (uses LLAVA_SOURCE_DIR, or ../jobs from tests/). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/jobspec.h"
#include "tests/test.h"

static int ends_with(const char *s, const char *suffix) {
    size_t ls = strlen(s), lx = strlen(suffix);
    return ls >= lx && strcmp(s + ls - lx, suffix) == 0;
}

static void check_one(const char *path, const char *base) {
    job_spec_t *s = NULL, *r = NULL;
    spec_errors_t e = {0};
    char *j1 = NULL, *j2 = NULL;
    int rc = job_spec_load(path, &s, &e);
    CHECKF(rc == 0, "%s does not validate: %s", path, err_str(rc));
    spec_errors_print(&e, stderr);
    spec_errors_free(&e);
    if (!s) return;
    CHECK(s->n_stages >= 1);
    CHECK_RC(job_spec_to_json(s, &j1), 0);
    if (j1) CHECK_RC(job_spec_from_json(j1, path, &r, &e), 0);
    spec_errors_print(&e, stderr);
    spec_errors_free(&e);
    if (r) {
        CHECK_RC(job_spec_to_json(r, &j2), 0);
        CHECKF(j2 && strcmp(j1, j2) == 0, "%s: JSON round trip differs", path);
    }
    for (int i = 0; i < s->n_stages; i++) {
        char *flat = NULL;
        job_spec_t *f = NULL;
        CHECK_RC(job_spec_stage_to_json(s, i, &flat), 0);
        if (flat) CHECK_RC(job_spec_from_json(flat, path, &f, NULL), 0);
        job_spec_free(&f);
        free(flat);
    }
    /* What the specs promise about themselves. */
    if (strcmp(base, "demo.yaml") == 0) {
        CHECK_EQ_INT(s->n_stages, 2);
        CHECK_EQ_INT(s->cluster.device, JOB_DEVICE_CPU);
        CHECK_EQ_INT(s->cluster.workers, 2);
        CHECK(s->n_stages == 2 && s->stages[1].model.init_from_previous && s->stages[1].eval.enabled);
    } else {
        CHECK_EQ_INT(s->cluster.device, JOB_DEVICE_CUDA);
        CHECK_EQ_INT(s->stages[0].train.precision, JOB_PRECISION_BF16);
    }
    if (strcmp(base, "llava-v1.5-stage1.yaml") == 0) {
        CHECK_EQ_INT(s->stages[0].train.global_batch, 256);
        CHECK(s->stages[0].train.lr == 1e-3 && s->stages[0].model.projector == JOB_PROJECTOR_MLP2X_GELU);
    }
    if (strcmp(base, "llava-v1.5-stage2.yaml") == 0)
        CHECK(s->stages[0].model.image_aspect_ratio == JOB_ASPECT_PAD && s->stages[0].data.tmpl == JOB_TEMPLATE_VICUNA_V1);
    if (strcmp(base, "scienceqa.yaml") == 0) CHECK(s->stages[0].train.epochs == 12 && s->stages[0].eval.enabled);
    free(j1);
    free(j2);
    job_spec_free(&s);
    job_spec_free(&r);
}

int main(void) {
    log_set_level(LOG_NONE);
    const char *src = getenv("LLAVA_SOURCE_DIR");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/jobs", src && src[0] ? src : "..");
    DIR *d = opendir(dir);
    CHECKF(d != NULL, "cannot open %s", dir);
    if (!d) return test_finish();
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!ends_with(de->d_name, ".yaml") && !ends_with(de->d_name, ".yml")) continue;
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        check_one(path, de->d_name);
        n++;
    }
    closedir(d);
    printf("%d job specs checked in %s\n", n, dir);
    CHECKF(n >= 6, "only %d job specs in %s (demo, LLaVA 1 and 1.5 stages, ScienceQA expected)", n, dir);
    return test_finish();
}
