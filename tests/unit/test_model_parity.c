/* Parity of the CPU LLaVA model with transformers, stage by stage, on the fixtures written by
 * tests/reference/make_model_fixtures.py (tests/fixtures/model/<case>/): vision features, projector output, logits,
 * loss, every gradient of the mean loss in both training modes, parameters after three AdamW steps. fp32: relative
 * error <= 1e-4 on tensors (max |diff| / max |ref|), 1e-5 on the loss. Fails naming the case, stage and tensor. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/safetensors.h"
#include "kernels/cpu/ops.h"
#include "tests/test.h"
#include "worker/batchfile.h"
#include "worker/model_llava.h"

#define TOL 1e-4
#define LOSS_TOL 1e-5

static double worst_seen;

/* Compares got[n] with the expected tensor `name` (converted to f32). */
static void cmp(const char *cs, const char *stage, const st_file_t *exp, const char *name, const float *got, long n) {
    const st_tensor_t *t = st_file_find(exp, name);
    CHECKF(t != NULL, "%s: %s: expected tensor '%s' missing", cs, stage, name);
    if (!t) return;
    CHECKF(st_tensor_numel(t) == n, "%s: %s: '%s' has %lld values, model has %ld", cs, stage, name,
           (long long)st_tensor_numel(t), n);
    if (st_tensor_numel(t) != n) return;
    float *want = malloc((size_t)n * sizeof(float));
    CHECK(want && st_tensor_to_f32(t, want, n) == 0);
    long where;
    double e = t_max_rel_err(got, want, n, 1e-6, &where);
    if (e > worst_seen) worst_seen = e;
    CHECKF(e <= TOL, "%s: %s: '%s' relative error %.3g at %ld (got %.8g want %.8g)", cs, stage, name, e, where,
           where >= 0 ? got[where] : 0.0f, where >= 0 ? want[where] : 0.0f);
    printf("  %-10s %-12s %-70s rel err %.2e\n", cs, stage, name, e);
    free(want);
}

static double scalar(const st_file_t *exp, const char *name, int i) {
    const st_tensor_t *t = st_file_find(exp, name);
    if (!t) return NAN;
    int64_t n = st_tensor_numel(t);
    float *v = malloc((size_t)n * sizeof(float));
    double r = NAN;
    if (v && st_tensor_to_f32(t, v, n) == 0 && i < n) r = v[i];
    free(v);
    return r;
}

/* Every gradient of the model against "<prefix><HF name>" entries, both directions. */
static void cmp_grads(const char *cs, const char *stage, llava_model_t *m, const st_file_t *exp, const char *prefix,
                      double scale) {
    int matched = 0;
    char canon[512];
    for (int i = 0; i < st_file_count(exp); i++) {
        const st_tensor_t *t = st_file_at(exp, i);
        if (strncmp(t->name, prefix, strlen(prefix)) != 0) continue;
        const char *hf = t->name + strlen(prefix);
        CHECKF(llava_name_canonical(hf, canon, sizeof canon), "%s: unknown HF name %s", cs, hf);
        tensor_t *g = arena_get(m->grads, canon);
        CHECKF(g != NULL, "%s: %s: HF has a gradient for '%s', the model does not", cs, stage, hf);
        if (!g) continue;
        long n = (long)tensor_numel(g);
        float *s = malloc((size_t)n * sizeof(float));
        for (long j = 0; j < n; j++) s[j] = (float)(((float *)g->data)[j] * scale);
        cmp(cs, stage, exp, t->name, s, n);
        free(s);
        matched++;
    }
    CHECKF(matched == arena_count(m->grads), "%s: %s: %d expected gradients, model has %d", cs, stage, matched,
           arena_count(m->grads));
}

/* Parameters after the AdamW steps. Adam's first steps move a weight by about lr * g / (|g| + eps): where the
 * reference gradient is below what the gradient check resolves (|g| <= TOL * max|g|, e.g. 3e-8 against 0.03), an
 * error the gradient check allows can change that element's update by up to 2 lr per step, so those elements are
 * held to |diff| <= 2 * sum(lr) (they still must move the right amount, not anywhere) and all others to TOL. */
static void cmp_params(const char *cs, llava_model_t *m, const st_file_t *exp, const char *prefix,
                       const char *grad_prefix, double sum_lr) {
    char canon[512], gname[600];
    int matched = 0;
    long loose_total = 0;
    for (int i = 0; i < st_file_count(exp); i++) {
        const st_tensor_t *t = st_file_at(exp, i);
        if (strncmp(t->name, prefix, strlen(prefix)) != 0 || !strchr(t->name + strlen(prefix), '.')) continue;
        if (!llava_name_canonical(t->name + strlen(prefix), canon, sizeof canon)) continue;
        tensor_t *p = arena_get(m->params, canon);
        CHECKF(p != NULL, "%s: adamw: no parameter '%s'", cs, canon);
        if (!p) continue;
        matched++;
        long n = (long)tensor_numel(p);
        snprintf(gname, sizeof gname, "%s%s", grad_prefix, t->name + strlen(prefix));
        const st_tensor_t *gt = st_file_find(exp, gname);
        CHECKF(gt != NULL && st_tensor_numel(gt) == n && st_tensor_numel(t) == n,
               "%s: adamw: '%s' or its gradient '%s' missing or of the wrong size", cs, t->name, gname);
        if (!gt || st_tensor_numel(gt) != n || st_tensor_numel(t) != n) continue;
        float *want = malloc((size_t)n * sizeof(float)), *g = malloc((size_t)n * sizeof(float)),
              *got = malloc((size_t)n * sizeof(float));
        CHECK(want && g && got && st_tensor_to_f32(t, want, n) == 0 && st_tensor_to_f32(gt, g, n) == 0);
        if (!want || !g || !got) {
            free(want), free(g), free(got);
            continue;
        }
        double gmax = 0;
        for (long j = 0; j < n; j++) gmax = fabs(g[j]) > gmax ? fabs(g[j]) : gmax;
        long loose = 0;
        for (long j = 0; j < n; j++) {
            got[j] = ((const float *)p->data)[j];
            if (fabs(g[j]) <= TOL * gmax) {
                loose++;
                CHECKF(fabs(got[j] - want[j]) <= 2 * sum_lr, "%s: adamw: '%s' [%ld] (gradient %.3g of max %.3g) moved "
                       "to %.8g, HF %.8g: more than 2 * sum(lr) apart", cs, t->name, j, g[j], gmax, got[j], want[j]);
                got[j] = want[j]; /* checked above; the relative check below covers the resolved elements */
            }
        }
        loose_total += loose;
        cmp(cs, "adamw", exp, t->name, got, n);
        free(want), free(g), free(got);
    }
    printf("  %-10s adamw: %ld element(s) with unresolved gradients held to 2 * sum(lr) = %.3g\n", cs, loose_total,
           2 * sum_lr);
    CHECKF(matched == arena_count(m->grads), "%s: adamw: %d expected parameters, %d trainable", cs, matched,
           arena_count(m->grads));
}

static void run_case(const char *cs) {
    char dir[1024], path[1100];
    llava_model_t *m = NULL;
    st_file_t *exp = NULL;
    batch_t b;
    memset(&b, 0, sizeof b);
    const char *src = getenv("LLAVA_SOURCE_DIR");
    snprintf(dir, sizeof dir, "%s/tests/fixtures/model/%s", src ? src : "..", cs);
    snprintf(path, sizeof path, "%s/model", dir);
    CHECK_RC(llava_model_load(path, &m), 0);
    snprintf(path, sizeof path, "%s/batch.safetensors", dir);
    CHECK_RC(batch_file_read(path, &b), 0);
    snprintf(path, sizeof path, "%s/expected.safetensors", dir);
    CHECK_RC(st_file_open(path, &exp), 0);
    if (!m || !exp || !b.B) goto done;
    const char *meta_loss = st_file_metadata(exp, "loss");
    double want_loss = meta_loss ? atof(meta_loss) : scalar(exp, "loss", 0);
    long N = (long)b.B * b.T, V = m->cfg.text.vocab_size, M = (long)b.n_images * m->feat_rows;

    /* Forward stages. */
    float *logits = NULL;
    CHECK_RC(llava_forward_logits(m, &b, &logits), 0);
    if (M > 0) {
        cmp(cs, "forward", exp, "vision_features", m->feats, M * m->cfg.vision.hidden_size);
        cmp(cs, "forward", exp, "projector_out", m->pout, M * m->cfg.text.hidden_size);
    }
    if (logits) cmp(cs, "forward", exp, "logits", logits, N * V);

    /* Loss and gradients in both modes. */
    const char *modes[2] = {"projector", "all"};
    for (int md = 0; md < 2; md++) {
        double ls = 0;
        int64_t nt = 0;
        CHECK_RC(llava_forward_backward(m, &b, md ? TRAIN_ALL : TRAIN_PROJECTOR, &ls, &nt, 0), 0);
        CHECK_EQ_INT(nt, b.n_targets);
        CHECK_EQ_INT(nt, (int64_t)scalar(exp, "n_targets", 0));
        double loss = ls / (double)nt, rel = fabs(loss - want_loss) / fabs(want_loss);
        printf("  %-10s loss %-8s %.9f (HF %.9f) rel err %.2e\n", cs, modes[md], loss, want_loss, rel);
        CHECKF(rel <= LOSS_TOL, "%s: loss (%s mode) %.9g, HF %.9g, rel err %.3g", cs, modes[md], loss, want_loss, rel);
        char prefix[64], stage[32];
        snprintf(prefix, sizeof prefix, "grad.%s.", modes[md]);
        snprintf(stage, sizeof stage, "grad.%s", modes[md]);
        cmp_grads(cs, stage, m, exp, prefix, 1.0 / (double)nt);
    }
    llava_model_free(&m);

    /* Three AdamW steps (clip 1.0, cosine with warmup 1 of 4 steps, lr 1e-3). */
    snprintf(path, sizeof path, "%s/model", dir);
    CHECK_RC(llava_model_load(path, &m), 0);
    if (!m) goto done;
    const char *am = st_file_metadata(exp, "adam_mode"), *wd = st_file_metadata(exp, "weight_decay");
    train_mode_t mode = am && strcmp(am, "all") == 0 ? TRAIN_ALL : TRAIN_PROJECTOR;
    adamw_opts_t o = {.lr = 0, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = wd ? atof(wd) : 0,
                      .max_grad_norm = 1.0};
    double sum_lr = 0;
    for (int step = 0; step < 3; step++) {
        double ls = 0;
        int64_t nt = 0;
        CHECK_RC(llava_forward_backward(m, &b, mode, &ls, &nt, 0), 0);
        double want = scalar(exp, "adamw.losses", step);
        CHECKF(fabs(ls / nt - want) <= 1e-5 * fabs(want), "%s: adamw step %d loss %.8g, HF %.8g", cs, step, ls / nt,
               want);
        o.lr = lr_at_step(step, 4, 1, 1e-3, LR_COSINE);
        CHECKF(fabs(o.lr - scalar(exp, "adamw.lrs", step)) <= 1e-9, "%s: lr at step %d", cs, step);
        CHECK_RC(llava_adamw_step(m, &o, 1.0 / (double)nt, NULL), 0);
        sum_lr += o.lr;
    }
    cmp_params(cs, m, exp, "adamw.", mode == TRAIN_ALL ? "grad.all." : "grad.projector.", sum_lr);
done:
    llava_model_free(&m);
    st_file_close(&exp);
    batch_free(&b);
}

int main(void) {
    kernels_set_threads(2);
    run_case("mha_linear");
    run_case("gqa_mlp2x");
    printf("worst relative error over all tensors: %.3g\n", worst_seen);
    return test_finish();
}
