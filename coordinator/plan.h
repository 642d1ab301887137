/* The epoch planner: a pure function of (sample lengths, modality, seed, epoch, global batch, token budget) giving
 * the epoch's global steps and each step's micro-batches. Any process can recompute it, so the plan is never stored.
 * Tested by tests/unit/test_plan.c. */
#ifndef LLAVA_PLAN_H
#define LLAVA_PLAN_H

#include <stdint.h>

typedef struct {
    int64_t n_samples;
    const int32_t *lengths;   /* [n] tokens after image expansion and truncation */
    const uint8_t *has_image; /* [n] 1 = multimodal, 0 = text-only; NULL = all multimodal */
    uint64_t seed;
    int64_t epoch;
    int64_t global_batch;       /* samples per step (the last step of an epoch may hold fewer) */
    int64_t micro_batch_tokens; /* budget: rows * longest row <= budget (a longer sample goes alone) */
    int group_by_length;        /* LLaVA's group_by_modality_length: steps of one modality, sorted by length */
} plan_params_t;

typedef struct {
    int64_t first, count; /* range into plan_t.order */
} plan_mb_t;

typedef struct {
    int64_t first_mb, n_mb;   /* range into plan_t.mbs */
    int64_t first, count;     /* range into plan_t.order (all samples of the step) */
} plan_step_t;

typedef struct {
    int64_t n_samples;
    int64_t *order;     /* [n_samples]: sample indices in training order, grouped by step then micro-batch */
    int64_t n_steps;
    plan_step_t *steps; /* [n_steps] */
    int64_t n_mbs;
    plan_mb_t *mbs;     /* [n_mbs] */
} plan_t;

/** Builds the plan of one epoch. Returns 0, LLAVA_EINVAL (bad parameters) or LLAVA_ENOMEM. Free with plan_free. */
int plan_build(const plan_params_t *p, plan_t *out);
void plan_free(plan_t *plan);
/** Number of steps of an epoch of n samples (= ceil(n / global_batch)). */
int64_t plan_steps_per_epoch(int64_t n_samples, int64_t global_batch);
/** Deterministic 64-bit mixing (splitmix64), exposed for tests and for seeding per-epoch streams. */
uint64_t plan_mix64(uint64_t x);

#endif
