/* runtime_env: which OpenBLAS core is asked for on which CPU, and, on this machine, that a program which called
 * runtime_env_ensure runs the best kernels its CPU supports (the test re-executes itself as llava-worker does). */
#include <cblas.h>
#include <stdlib.h>

#include "tests/test.h"
#include "worker/runtime_env.h"

static void check_core(const char *have, int features, const char *want) {
    const char *got = runtime_env_blas_core(have, features);
    CHECKF((got == NULL && want == NULL) || (got && want && !strcmp(got, want)), "%s with features %d: got %s, want %s",
           have ? have : "(null)", features, got ? got : "(keep)", want ? want : "(keep)");
}

int main(int argc, char **argv) {
    (void)argc;
    enum { AVX = RUNTIME_CPU_AVX, AVX2 = RUNTIME_CPU_AVX | RUNTIME_CPU_AVX2_FMA, AVX512 = AVX2 | RUNTIME_CPU_AVX512 };
    /* the fallback OpenBLAS gave this VM's AVX-512 Xeon */
    check_core("Prescott", AVX512, "SkylakeX");
    check_core("Prescott", AVX2, "Haswell");
    check_core("Prescott", AVX, "Sandybridge");
    check_core("Prescott", 0, NULL);
    check_core("nehalem", AVX2, "Haswell");
    check_core("Sandybridge", AVX2, "Haswell");
    check_core("Sandybridge", AVX, NULL);
    check_core("Haswell", AVX2, NULL);
    check_core("Haswell", AVX512, "SkylakeX");
    check_core("Zen", AVX2, NULL);
    /* recognised cores are kept */
    check_core("SkylakeX", AVX512, NULL);
    check_core("Cooperlake", AVX512, NULL);
    check_core("SapphireRapids", AVX512, NULL);
    check_core("armv8", 0, NULL);
    check_core(NULL, AVX512, NULL);

    /* this machine: after the re-exec nothing better is left to ask for, unless the user chose the core */
    if (!getenv("OPENBLAS_CORETYPE_USER")) {
        if (!getenv("OPENBLAS_CORETYPE")) setenv("OPENBLAS_CORETYPE_USER", "0", 1);
        else setenv("OPENBLAS_CORETYPE_USER", "1", 1);
        unsetenv("LLAVA_NO_REEXEC");
        runtime_env_ensure(argv);
    }
    const char *core = openblas_get_corename();
    printf("OpenBLAS core: %s (OPENBLAS_CORETYPE=%s, OMP_WAIT_POLICY=%s)\n", core,
           getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "unset",
           getenv("OMP_WAIT_POLICY") ? getenv("OMP_WAIT_POLICY") : "unset");
    CHECK(getenv("OMP_WAIT_POLICY") != NULL);
    if (!strcmp(getenv("OPENBLAS_CORETYPE_USER"), "0"))
        CHECKF(runtime_env_blas_core(core, runtime_env_cpu_features()) == NULL, "still %s, %s would run here", core,
               runtime_env_blas_core(core, runtime_env_cpu_features()));
    return test_finish();
}
