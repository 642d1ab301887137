/* Makes libgomp's idle threads sleep instead of spin. libgomp reads OMP_WAIT_POLICY once, when it is loaded; by
 * default its threads spin after each parallel loop and take the cores from OpenBLAS's own pthreads in the sgemm
 * that follows (a whole training step ran 30% slower on 2 cores). Used by llava-model and bench/bench_step. */
#ifndef LLAVA_WORKER_OMP_POLICY_H
#define LLAVA_WORKER_OMP_POLICY_H

/** When OMP_WAIT_POLICY is unset, sets it to PASSIVE and re-executes /proc/self/exe with argv (so the program
 *  starts again with the setting); returns when the variable was already set or the exec failed (then the program
 *  simply runs with libgomp's default). Call first thing in main, before any thread starts. */
void omp_policy_ensure_passive(char **argv);

#endif
