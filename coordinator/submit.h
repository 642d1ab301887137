/* From a job spec file to what the coordinator runs: parse and validate (YAML, or the normalised JSON form),
 * check paths, make them absolute, split stages into one flat spec each. Used by llavactl and llava-run.
 * Tested by tests/integration/coordinator_sim.sh. */
#ifndef LLAVA_SUBMIT_H
#define LLAVA_SUBMIT_H

#include <stdio.h>

#include <cjson/cJSON.h>

/** Loads `path` (.yaml/.yml, or .json in the normalised form), validates it (every problem printed to errs as
 *  FILE:LINE:COL: ...), checks that the files it names exist, resolves relative paths against the current
 *  directory, and returns the stages as a JSON array of flat one-stage specs (*stages, caller deletes).
 *  Returns 0, LLAVA_EIO or LLAVA_ECONFIG. */
int submit_load_stages(const char *path, cJSON **stages, FILE *errs);

#endif
