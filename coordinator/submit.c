/* Job spec files to submittable stages (see submit.h). */
#include "coordinator/submit.h"

#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/fileio.h"
#include "common/jobspec.h"

int submit_load_stages(const char *path, cJSON **stages, FILE *errs) {
    int rc = 0;
    spec_errors_t e = {0};
    job_spec_t *spec = NULL;
    char *text = NULL;
    *stages = NULL;
    size_t len = strlen(path);
    if (len > 5 && strcmp(path + len - 5, ".json") == 0) {
        if (file_read_all(path, &text, NULL) != 0) {
            fprintf(errs, "%s: cannot read\n", path);
            return LLAVA_EIO;
        }
        rc = job_spec_from_json(text, path, &spec, &e);
    } else {
        rc = job_spec_load(path, &spec, &e);
    }
    if (rc == 0) rc = job_spec_check_paths(spec, &e);
    if (rc == 0) rc = job_spec_resolve_paths(spec, NULL);
    if (rc) {
        if (e.n) spec_errors_print(&e, errs);
        else fprintf(errs, "%s: %s\n", path, err_str(rc));
        goto cleanup;
    }
    *stages = cJSON_CreateArray();
    ALLOC_CHECK_GOTO(*stages);
    for (int i = 0; i < spec->n_stages; i++) {
        char *json = NULL;
        RC_CHECK_GOTO(job_spec_stage_to_json(spec, i, &json));
        cJSON *st = cJSON_Parse(json);
        free(json);
        ALLOC_CHECK_GOTO(st);
        cJSON_AddItemToArray(*stages, st);
    }
cleanup:
    if (rc && *stages) {
        cJSON_Delete(*stages);
        *stages = NULL;
    }
    spec_errors_free(&e);
    job_spec_free(&spec);
    free(text);
    return rc;
}
