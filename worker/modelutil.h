/* Small helpers shared by the model modules (clip, projector, llama, llava): planning named f32 tensors into an
 * arena and finding them again, and a seeded normal sampler for random initialisation.
 * Exercised by tests/unit/test_model_parity.c through the modules that use them. */
#ifndef LLAVA_WORKER_MODELUTIL_H
#define LLAVA_WORKER_MODELUTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>

#include "common/err.h"
#include "common/tensor.h"

/** Plans an f32 tensor named prefix+name with the given dims (trailing zeros end the list). Returns as arena_add. */
static inline int mu_add(arena_t *a, const char *prefix, const char *name, int64_t d0, int64_t d1, int64_t d2,
                         int64_t d3) {
    char full[TENSOR_NAME_MAX];
    int64_t shape[4] = {d0, d1, d2, d3};
    int nd = 0;
    while (nd < 4 && shape[nd] > 0) nd++;
    int k = snprintf(full, sizeof full, "%s%s", prefix, name);
    if (k < 0 || (size_t)k >= sizeof full) return LLAVA_EINVAL; /* name too long */
    return arena_add(a, full, DT_F32, nd, shape);
}

/** Data of the f32 tensor prefix+name, or NULL when the arena has no such tensor (e.g. a frozen gradient). */
static inline float *mu_get(arena_t *a, const char *prefix, const char *name) {
    char full[TENSOR_NAME_MAX];
    int k = snprintf(full, sizeof full, "%s%s", prefix, name);
    if (k < 0 || (size_t)k >= sizeof full) return NULL;
    tensor_t *t = arena_get(a, full);
    return t ? (float *)t->data : NULL;
}

/** splitmix64 state advanced and mixed: the generator behind mu_normal (not torch's; documented in model_llava.h). */
static inline uint64_t mu_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/** A uniform sample in [0, 1) from the top 53 bits. */
static inline double mu_unit(uint64_t *s) { return (double)(mu_next(s) >> 11) / 9007199254740992.0; }

/** Fills x[n] with normal(0, std) samples (Box-Muller). */
static inline void mu_normal(float *x, int64_t n, double std, uint64_t *s) {
    for (int64_t i = 0; i < n; i += 2) {
        double u1 = ((double)(mu_next(s) >> 11) + 1.0) / 9007199254740993.0;
        double u2 = mu_unit(s);
        double r = sqrt(-2.0 * log(u1));
        x[i] = (float)(std * r * cos(2 * M_PI * u2));
        if (i + 1 < n) x[i + 1] = (float)(std * r * sin(2 * M_PI * u2));
    }
}

/** Fills x[n] with uniform(-bound, bound) samples. */
static inline void mu_uniform(float *x, int64_t n, double bound, uint64_t *s) {
    for (int64_t i = 0; i < n; i++) x[i] = (float)(bound * (2.0 * mu_unit(s) - 1.0));
}

static inline void mu_fill(float *x, int64_t n, float v) {
    for (int64_t i = 0; i < n; i++) x[i] = v;
}

#endif
