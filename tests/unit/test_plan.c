/* Tests coordinator/plan: every sample exactly once per epoch, determinism, seed/epoch sensitivity, token budget,
 * modality grouping, independence of the steps from the budget. Run: ctest -R test_plan */
#include "common/err.h"
#include "coordinator/plan.h"
#include "tests/test.h"

#include <stdint.h>

#define N 1003

static int32_t lengths[N];
static uint8_t has_image[N];

static void check_plan(const plan_params_t *p, const plan_t *pl) {
    static uint8_t seen[N];
    memset(seen, 0, sizeof seen);
    CHECK_EQ_INT(pl->n_steps, plan_steps_per_epoch(p->n_samples, p->global_batch));
    int64_t covered = 0;
    for (int64_t s = 0; s < pl->n_steps; s++) {
        const plan_step_t *st = &pl->steps[s];
        CHECK_EQ_INT(st->first, covered);
        CHECK(st->count == p->global_batch || s == pl->n_steps - 1);
        int64_t in_step = 0;
        for (int64_t m = st->first_mb; m < st->first_mb + st->n_mb; m++) {
            const plan_mb_t *mb = &pl->mbs[m];
            CHECK_EQ_INT(mb->first, st->first + in_step);
            int32_t longest = 0;
            for (int64_t i = mb->first; i < mb->first + mb->count; i++)
                if (lengths[pl->order[i]] > longest) longest = lengths[pl->order[i]];
            CHECKF(mb->count == 1 || mb->count * longest <= p->micro_batch_tokens, "mb %lld: %lld x %d > %lld",
                   (long long)m, (long long)mb->count, longest, (long long)p->micro_batch_tokens);
            in_step += mb->count;
        }
        CHECK_EQ_INT(in_step, st->count);
        covered += st->count;
    }
    CHECK_EQ_INT(covered, N);
    int dup = 0;
    for (int64_t i = 0; i < N; i++) {
        if (seen[pl->order[i]]) dup++;
        seen[pl->order[i]] = 1;
    }
    CHECK_EQ_INT(dup, 0);
}

/* The multiset of samples in each step, as a sorted signature, so two plans can be compared step by step. */
static int same_steps(const plan_t *a, const plan_t *b) {
    if (a->n_steps != b->n_steps) return 0;
    for (int64_t s = 0; s < a->n_steps; s++) {
        uint64_t ha = 0, hb = 0;
        for (int64_t i = 0; i < a->steps[s].count; i++) ha += plan_mix64((uint64_t)a->order[a->steps[s].first + i]);
        for (int64_t i = 0; i < b->steps[s].count; i++) hb += plan_mix64((uint64_t)b->order[b->steps[s].first + i]);
        if (ha != hb) return 0;
    }
    return 1;
}

int main(void) {
    log_set_level(LOG_NONE);
    for (int i = 0; i < N; i++) {
        lengths[i] = 20 + (int32_t)(plan_mix64((uint64_t)i) % 600);
        has_image[i] = (i % 5) != 0;
    }
    plan_params_t p = {.n_samples = N, .lengths = lengths, .has_image = has_image, .seed = 42, .epoch = 0,
                       .global_batch = 64, .micro_batch_tokens = 2048, .group_by_length = 0};
    plan_t a, b, c;
    CHECK_RC(plan_build(&p, &a), 0);
    check_plan(&p, &a);
    CHECK_RC(plan_build(&p, &b), 0);
    CHECK(memcmp(a.order, b.order, sizeof(int64_t) * N) == 0); /* deterministic */
    plan_free(&b);
    /* the token budget changes micro-batches, never which samples a step holds */
    p.micro_batch_tokens = 700;
    CHECK_RC(plan_build(&p, &b), 0);
    check_plan(&p, &b);
    CHECK(same_steps(&a, &b));
    CHECK(b.n_mbs > a.n_mbs);
    plan_free(&b);
    /* a budget smaller than a sample: one sample per micro-batch */
    p.micro_batch_tokens = 10;
    CHECK_RC(plan_build(&p, &b), 0);
    check_plan(&p, &b);
    CHECK_EQ_INT(b.n_mbs, N);
    plan_free(&b);
    p.micro_batch_tokens = 2048;
    p.epoch = 1;
    CHECK_RC(plan_build(&p, &b), 0);
    CHECK(!same_steps(&a, &b)); /* another epoch, another order */
    plan_free(&b);
    p.epoch = 0;
    p.seed = 43;
    CHECK_RC(plan_build(&p, &b), 0);
    CHECK(!same_steps(&a, &b));
    plan_free(&b);
    p.seed = 42;
    /* modality grouping: every full step is of one modality */
    p.group_by_length = 1;
    CHECK_RC(plan_build(&p, &c), 0);
    check_plan(&p, &c);
    int64_t pure = 0, full = 0;
    for (int64_t s = 0; s < c.n_steps; s++) {
        if (c.steps[s].count != p.global_batch) continue;
        int64_t img = 0;
        for (int64_t i = 0; i < c.steps[s].count; i++) img += has_image[c.order[c.steps[s].first + i]];
        full++;
        pure += (img == 0 || img == c.steps[s].count);
    }
    /* 803 image samples -> 12 full steps, 200 text -> 3 full steps; the 43 leftovers form one mixed step */
    CHECK_EQ_INT(full, 15);
    CHECK_EQ_INT(pure, 15);
    plan_free(&c);
    plan_free(&a);
    /* bad parameters */
    p.global_batch = 0;
    CHECK_RC(plan_build(&p, &a), LLAVA_EINVAL);
    p.global_batch = 64;
    p.n_samples = 0;
    CHECK_RC(plan_build(&p, &a), LLAVA_EINVAL);
    return test_finish();
}
