/* OMP_WAIT_POLICY=PASSIVE by re-exec; see omp_policy.h. Exercised by every llava-model run
 * (tests/integration/model_step.sh) and bench/bench_step.sh. */
#include "worker/omp_policy.h"

#include <stdlib.h>
#include <unistd.h>

void omp_policy_ensure_passive(char **argv) {
    if (getenv("OMP_WAIT_POLICY") || getenv("LLAVA_NO_REEXEC")) return;
    if (setenv("OMP_WAIT_POLICY", "PASSIVE", 1) != 0) return;
    execv("/proc/self/exe", argv);
    /* exec failed: carry on with the default policy (the variable is now set but libgomp already read it) */
}
