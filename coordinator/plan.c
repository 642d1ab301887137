/* Epoch planner (see plan.h). Shuffle: Fisher-Yates driven by splitmix64 seeded with (seed, epoch), so the order is
 * the same on every machine and for every worker count. Micro-batches are cut greedily from the step's samples
 * sorted by length, under the token budget. Tested by tests/unit/test_plan.c. */
#include "coordinator/plan.h"

#include <stdlib.h>
#include <string.h>

#include "common/err.h"

uint64_t plan_mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

typedef struct {
    uint64_t s;
} rng_t;

static uint64_t rng_next(rng_t *r) {
    r->s += 0x9e3779b97f4a7c15ull;
    uint64_t x = r->s;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Uniform in [0, n) without modulo bias (Lemire's rejection on the high bits would be faster; n is small). */
static uint64_t rng_below(rng_t *r, uint64_t n) {
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = rng_next(r);
    while (x >= limit);
    return x % n;
}

static void shuffle(int64_t *v, int64_t n, rng_t *r) {
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)rng_below(r, (uint64_t)i + 1);
        int64_t t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}

int64_t plan_steps_per_epoch(int64_t n_samples, int64_t global_batch) {
    return global_batch > 0 ? (n_samples + global_batch - 1) / global_batch : 0;
}

/* Sorting by (length descending, index ascending): a total order, so qsort's instability cannot leak in. */
static int cmp_len_desc(const void *a, const void *b, void *ctx) {
    const int32_t *len = ctx;
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    if (len[x] != len[y]) return len[x] > len[y] ? -1 : 1;
    return x < y ? -1 : (x > y);
}

/* Group by modality: mega-batches of global_batch samples of one modality, taken from each modality's shuffled
 * list, then the mega-batches shuffled; leftovers of both modalities form the final (mixed) steps. */
static int group_by_modality(const plan_params_t *p, int64_t *order, rng_t *r) {
    int rc = 0;
    int64_t n = p->n_samples, gb = p->global_batch;
    int64_t *mm = malloc((size_t)n * sizeof *mm), *lang = malloc((size_t)n * sizeof *lang);
    int64_t *megas = NULL;
    ALLOC_CHECK_GOTO(mm);
    ALLOC_CHECK_GOTO(lang);
    int64_t nmm = 0, nlang = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!p->has_image || p->has_image[order[i]]) mm[nmm++] = order[i];
        else lang[nlang++] = order[i];
    }
    int64_t full_mm = nmm / gb, full_lang = nlang / gb, nmega = full_mm + full_lang;
    megas = malloc((size_t)(nmega ? nmega : 1) * sizeof *megas);
    ALLOC_CHECK_GOTO(megas);
    for (int64_t i = 0; i < nmega; i++) megas[i] = i; /* i < full_mm: mm[i*gb..]; else lang[(i-full_mm)*gb..] */
    shuffle(megas, nmega, r);
    int64_t o = 0;
    for (int64_t k = 0; k < nmega; k++) {
        int64_t m = megas[k];
        const int64_t *src = m < full_mm ? mm + m * gb : lang + (m - full_mm) * gb;
        memcpy(order + o, src, (size_t)gb * sizeof *order);
        o += gb;
    }
    int64_t rest_mm = nmm - full_mm * gb, rest_lang = nlang - full_lang * gb;
    memcpy(order + o, mm + full_mm * gb, (size_t)rest_mm * sizeof *order);
    o += rest_mm;
    memcpy(order + o, lang + full_lang * gb, (size_t)rest_lang * sizeof *order);
    o += rest_lang;
    (void)o;
cleanup:
    free(mm);
    free(lang);
    free(megas);
    return rc;
}

int plan_build(const plan_params_t *p, plan_t *out) {
    int rc = 0;
    memset(out, 0, sizeof *out);
    CHECK_GOTO(p->n_samples > 0 && p->global_batch > 0 && p->micro_batch_tokens > 0 && p->lengths && p->epoch >= 0,
               LLAVA_EINVAL, "plan_build: bad parameters (samples %lld, global_batch %lld, budget %lld, epoch %lld)",
               (long long)p->n_samples, (long long)p->global_batch, (long long)p->micro_batch_tokens,
               (long long)p->epoch);
    int64_t n = p->n_samples;
    out->n_samples = n;
    out->order = malloc((size_t)n * sizeof *out->order);
    ALLOC_CHECK_GOTO(out->order);
    for (int64_t i = 0; i < n; i++) out->order[i] = i;
    rng_t r = {plan_mix64(p->seed ^ plan_mix64((uint64_t)p->epoch + 0x5eed))};
    shuffle(out->order, n, &r);
    if (p->group_by_length) RC_CHECK_GOTO(group_by_modality(p, out->order, &r));

    out->n_steps = plan_steps_per_epoch(n, p->global_batch);
    out->steps = calloc((size_t)out->n_steps, sizeof *out->steps);
    ALLOC_CHECK_GOTO(out->steps);
    int64_t cap = n; /* at most one micro-batch per sample */
    out->mbs = malloc((size_t)cap * sizeof *out->mbs);
    ALLOC_CHECK_GOTO(out->mbs);
    for (int64_t s = 0; s < out->n_steps; s++) {
        plan_step_t *st = &out->steps[s];
        st->first = s * p->global_batch;
        st->count = (st->first + p->global_batch <= n) ? p->global_batch : n - st->first;
        int64_t *v = out->order + st->first;
        /* Sorting inside a step changes only the summation order of the step's gradient, never its value. */
        qsort_r(v, (size_t)st->count, sizeof *v, cmp_len_desc, (void *)p->lengths);
        st->first_mb = out->n_mbs;
        int64_t i = 0;
        while (i < st->count) {
            int64_t longest = p->lengths[v[i]] > 0 ? p->lengths[v[i]] : 1; /* sorted: the first is the longest */
            int64_t rows = p->micro_batch_tokens / longest;
            if (rows < 1) rows = 1;
            if (rows > st->count - i) rows = st->count - i;
            out->mbs[out->n_mbs].first = st->first + i;
            out->mbs[out->n_mbs].count = rows;
            out->n_mbs++;
            i += rows;
        }
        st->n_mb = out->n_mbs - st->first_mb;
    }
    return 0;
cleanup:
    plan_free(out);
    return rc;
}

void plan_free(plan_t *plan) {
    free(plan->order);
    free(plan->steps);
    free(plan->mbs);
    memset(plan, 0, sizeof *plan);
}
