/* OMP_WAIT_POLICY and OPENBLAS_CORETYPE by re-exec; see runtime_env.h. The choice of core is tested by
 * tests/unit/test_runtime_env.c; the re-exec by every llava-model run (tests/integration/model_step.sh). */
#include "worker/runtime_env.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

int runtime_env_cpu_features(void) {
    int f = 0;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx")) f |= RUNTIME_CPU_AVX;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) f |= RUNTIME_CPU_AVX2_FMA;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        f |= RUNTIME_CPU_AVX512;
#endif
    return f;
}

const char *runtime_env_blas_core(const char *have, int features) {
    /* OpenBLAS's x86-64 cores with kernels below each level, from its fallbacks up */
    static const char *const pre_avx[] = {"prescott", "core2", "penryn", "dunnington", "nehalem", "atom", "katmai",
                                          "coppermine", "northwood", "banias", "opteron", "barcelona"};
    static const char *const pre_avx2[] = {"sandybridge", "bulldozer", "piledriver"};
    static const char *const pre_avx512[] = {"haswell", "zen", "steamroller", "excavator"};
    if (!have) return NULL;
    int level = 3; /* 0: pre-AVX, 1: AVX, 2: AVX2, 3: AVX-512 or unknown (leave it) */
    for (size_t i = 0; i < sizeof pre_avx / sizeof *pre_avx; i++)
        if (!strcasecmp(have, pre_avx[i])) level = 0;
    for (size_t i = 0; i < sizeof pre_avx2 / sizeof *pre_avx2; i++)
        if (!strcasecmp(have, pre_avx2[i])) level = 1;
    for (size_t i = 0; i < sizeof pre_avx512 / sizeof *pre_avx512; i++)
        if (!strcasecmp(have, pre_avx512[i])) level = 2;
    /* a recognised AMD core (zen, ...) is left alone unless the CPU has AVX-512, which its kernels do not use */
    if ((features & RUNTIME_CPU_AVX512) && level < 3) return "SkylakeX";
    if ((features & RUNTIME_CPU_AVX2_FMA) && level < 2) return "Haswell";
    if ((features & RUNTIME_CPU_AVX) && level < 1) return "Sandybridge";
    return NULL;
}

void runtime_env_ensure(char **argv) {
    if (getenv("LLAVA_NO_REEXEC")) return;
    int changed = 0;
    if (!getenv("OMP_WAIT_POLICY") && setenv("OMP_WAIT_POLICY", "PASSIVE", 1) == 0) changed = 1;
    if (!getenv("OPENBLAS_CORETYPE")) {
        const char *core = runtime_env_blas_core(openblas_get_corename(), runtime_env_cpu_features());
        if (core && setenv("OPENBLAS_CORETYPE", core, 1) == 0) changed = 1;
    }
    if (!changed) return;
    execv("/proc/self/exe", argv);
    /* exec failed: carry on with the libraries' defaults (the variables are now set but were read already) */
}
