/* The environment the CPU backend's libraries read once, when they are loaded, set before they are: by re-exec.
 * - OMP_WAIT_POLICY=PASSIVE: by default libgomp's idle threads spin after each parallel loop and take the cores from
 *   OpenBLAS's own pthreads in the sgemm that follows (a whole training step ran 30% slower on 2 cores).
 * - OPENBLAS_CORETYPE: Debian's OpenBLAS (DYNAMIC_ARCH) picks its kernels from the CPU's family and model; a CPU it
 *   does not know, such as a VM's "Intel(R) Xeon(R) Processor" with AVX-512, gets the Prescott (SSE3) kernels, whose
 *   sgemm ran 4-10x slower here (11-26 against 83-125 GFLOP/s at the model's shapes, one thread).
 * Used by llava-worker, llava-model and bench/bench_step. Tested by tests/unit/test_runtime_env.c. */
#ifndef LLAVA_WORKER_RUNTIME_ENV_H
#define LLAVA_WORKER_RUNTIME_ENV_H

/** The OpenBLAS core to ask for: NULL to keep OpenBLAS's choice `have` (a core it recognised, or no better one is
 *  supported), else the best core whose kernels the CPU can run ("SkylakeX" for AVX-512 F/CD/BW/DQ/VL, "Haswell"
 *  for AVX2 + FMA, "Sandybridge" for AVX) when `have` is one of OpenBLAS's generic fallbacks (Prescott, Core2,
 *  Penryn, Dunnington, Nehalem, Atom, or an older core than the CPU supports). `features` is a bit set of
 *  RUNTIME_CPU_* (runtime_env_cpu_features() on this machine). */
enum { RUNTIME_CPU_AVX = 1, RUNTIME_CPU_AVX2_FMA = 2, RUNTIME_CPU_AVX512 = 4 };
const char *runtime_env_blas_core(const char *have, int features);
int runtime_env_cpu_features(void);

/** Sets OMP_WAIT_POLICY=PASSIVE and the OpenBLAS core (above) unless the user set them, and re-executes
 *  /proc/self/exe with argv once if anything changed (LLAVA_NO_REEXEC=1 turns this off); returns when nothing had to
 *  change or the exec failed (then the program runs with the libraries' defaults). Call first thing in main, before
 *  any thread starts. */
void runtime_env_ensure(char **argv);

#endif
