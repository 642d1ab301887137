/* Whole-model parity of the GPU LLaVA (worker/model_cuda.c) with transformers, on the fixtures of
 * tests/unit/test_model_parity.c (tests/fixtures/model/<case>/): vision features, projector output, logits, loss,
 * every gradient of the mean loss in both training modes, parameters after three AdamW steps; in fp32 (the CPU
 * test's tolerances), in fp32 with per-layer recomputation (must give the same bits as without), and in bf16 (bf16
 * tolerances). Relative error = max |diff| / max |ref| per tensor. Exits 77 without a CUDA device. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/safetensors.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/cuda_check.h"
#include "tests/test.h"
#include "worker/batchfile.h"
#include "worker/model_cuda.h"

typedef struct {
    const char *name;
    cuda_dtype_t dt;
    int recompute;
    double tol_fwd, tol_grad, tol_loss, tol_adam;
} prec_t;

/* fp32: as tests/unit/test_model_parity.c. bf16: activations and weights rounded to 8 bits of mantissa at every
 * stored value, so ~2^-8 relative per op, growing through the layers and the backward. */
static const prec_t k_precs[] = {
    {"fp32", CUDA_DT_F32, 0, 1e-4, 1e-4, 1e-5, 1e-4},
    {"fp32+rc", CUDA_DT_F32, 1, 1e-4, 1e-4, 1e-5, 1e-4},
    {"bf16", CUDA_DT_BF16, 0, 3e-2, 1e-1, 1e-2, 5e-2},
};

static double worst[3];

static void cmp(const char *cs, const prec_t *p, double tol, const char *stage, const st_file_t *exp,
                const char *name, const float *got, long n) {
    const st_tensor_t *t = st_file_find(exp, name);
    CHECKF(t != NULL, "%s/%s: %s: expected tensor '%s' missing", cs, p->name, stage, name);
    if (!t) return;
    CHECKF(st_tensor_numel(t) == n, "%s/%s: %s: '%s' has %lld values, model has %ld", cs, p->name, stage, name,
           (long long)st_tensor_numel(t), n);
    if (st_tensor_numel(t) != n) return;
    float *want = malloc((size_t)n * sizeof(float));
    CHECK(want && st_tensor_to_f32(t, want, n) == 0);
    long where;
    double e = t_max_rel_err(got, want, n, 1e-6, &where);
    int pi = (int)(p - k_precs);
    if (e > worst[pi]) worst[pi] = e;
    CHECKF(e <= tol, "%s/%s: %s: '%s' relative error %.3g > %.0e at %ld (got %.8g want %.8g)", cs, p->name, stage,
           name, e, tol, where, where >= 0 ? got[where] : 0.0f, where >= 0 ? want[where] : 0.0f);
    printf("  %-10s %-8s %-12s %-66s rel err %.2e\n", cs, p->name, stage, name, e);
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

/* Every gradient (downloaded into m->grads) against "<prefix><HF name>", both directions. */
static void cmp_grads(const char *cs, const prec_t *p, const char *stage, llava_model_t *m, const st_file_t *exp,
                      const char *prefix, double scale) {
    int matched = 0;
    char canon[512];
    for (int i = 0; i < st_file_count(exp); i++) {
        const st_tensor_t *t = st_file_at(exp, i);
        if (strncmp(t->name, prefix, strlen(prefix)) != 0) continue;
        const char *hf = t->name + strlen(prefix);
        CHECKF(llava_name_canonical(hf, canon, sizeof canon), "%s: unknown HF name %s", cs, hf);
        tensor_t *gt = arena_get(m->grads, canon);
        CHECKF(gt != NULL, "%s/%s: %s: HF has a gradient for '%s', the model does not", cs, p->name, stage, hf);
        if (!gt) continue;
        long n = (long)tensor_numel(gt);
        float *s = malloc((size_t)n * sizeof(float));
        for (long j = 0; j < n; j++) s[j] = (float)(((float *)gt->data)[j] * scale);
        cmp(cs, p, p->tol_grad, stage, exp, t->name, s, n);
        free(s);
        matched++;
    }
    CHECKF(matched == arena_count(m->grads), "%s/%s: %s: %d expected gradients, model has %d", cs, p->name, stage,
           matched, arena_count(m->grads));
}

/* Parameters after the AdamW steps, as tests/unit/test_model_parity.c checks them: Adam moves a weight by about
 * lr * g / (|g| + eps), so where the reference gradient is below what the gradient check resolves
 * (|g| <= tol_grad * max|g|) an allowed gradient error can change the update by up to 2 lr per step; those elements
 * are held to |diff| <= 2 * sum(lr), all others to tol_adam relative to the tensor's max. */
static void cmp_params(const char *cs, const prec_t *p, llava_model_t *m, const st_file_t *exp,
                       const char *grad_prefix, double sum_lr) {
    char canon[512], gname[600];
    int matched = 0;
    long loose_total = 0;
    for (int i = 0; i < st_file_count(exp); i++) {
        const st_tensor_t *t = st_file_at(exp, i);
        if (strncmp(t->name, "adamw.", 6) != 0 || !strchr(t->name + 6, '.')) continue;
        if (!llava_name_canonical(t->name + 6, canon, sizeof canon)) continue;
        tensor_t *pt = arena_get(m->params, canon);
        CHECKF(pt != NULL, "%s: adamw: no parameter '%s'", cs, canon);
        if (!pt) continue;
        matched++;
        long n = (long)tensor_numel(pt);
        snprintf(gname, sizeof gname, "%s%s", grad_prefix, t->name + 6);
        const st_tensor_t *gt = st_file_find(exp, gname);
        CHECKF(gt != NULL && st_tensor_numel(gt) == n && st_tensor_numel(t) == n,
               "%s: adamw: '%s' or its gradient '%s' missing or of the wrong size", cs, t->name, gname);
        if (!gt || st_tensor_numel(gt) != n || st_tensor_numel(t) != n) continue;
        float *want = malloc((size_t)n * sizeof(float)), *gr = malloc((size_t)n * sizeof(float)),
              *got = malloc((size_t)n * sizeof(float));
        CHECK(want && gr && got && st_tensor_to_f32(t, want, n) == 0 && st_tensor_to_f32(gt, gr, n) == 0);
        if (!want || !gr || !got) {
            free(want), free(gr), free(got);
            continue;
        }
        double gmax = 0;
        for (long j = 0; j < n; j++) gmax = fabs(gr[j]) > gmax ? fabs(gr[j]) : gmax;
        for (long j = 0; j < n; j++) {
            got[j] = ((const float *)pt->data)[j];
            if (fabs(gr[j]) <= p->tol_grad * gmax) {
                loose_total++;
                CHECKF(fabs(got[j] - want[j]) <= 2 * sum_lr, "%s/%s: adamw: '%s' [%ld] (gradient %.3g of max %.3g) "
                       "moved to %.8g, HF %.8g: more than 2 * sum(lr) apart", cs, p->name, t->name, j, gr[j], gmax,
                       got[j], want[j]);
                got[j] = want[j]; /* checked above; the relative check covers the resolved elements */
            }
        }
        cmp(cs, p, p->tol_adam, "adamw", exp, t->name, got, n);
        free(want), free(gr), free(got);
    }
    printf("  %-10s %-8s adamw: %ld element(s) with unresolved gradients held to 2 * sum(lr) = %.3g\n", cs, p->name,
           loose_total, 2 * sum_lr);
    CHECKF(matched == arena_count(m->grads), "%s/%s: adamw: %d expected parameters, %d trainable", cs, p->name,
           matched, arena_count(m->grads));
}

/* Gradients of the recompute run must be bit-identical to the plain fp32 run (same kernels, same order). */
static float *g_plain_grads[2];
static size_t g_plain_n[2];

static void run_case(const char *cs, const prec_t *p) {
    char dir[1024], path[1100];
    llava_model_t *m = NULL;
    llava_cuda_t *g = NULL;
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
    llava_cuda_opts_t o = {.device = 0, .dt = p->dt, .recompute = p->recompute};
    CHECK_RC(llava_cuda_new(m, &o, &g), 0);
    if (!g) goto done;
    const char *meta_loss = st_file_metadata(exp, "loss");
    double want_loss = meta_loss ? atof(meta_loss) : scalar(exp, "loss", 0);
    long N = (long)b.B * b.T, V = m->cfg.text.vocab_size, M = (long)b.n_images * m->feat_rows;

    llava_cuda_fwd_t f;
    CHECK_RC(llava_cuda_forward_logits(g, &b, &f), 0);
    if (M > 0 && f.feats) {
        cmp(cs, p, p->tol_fwd, "forward", exp, "vision_features", f.feats, M * m->cfg.vision.hidden_size);
        cmp(cs, p, p->tol_fwd, "forward", exp, "projector_out", f.pout, M * m->cfg.text.hidden_size);
    }
    if (f.logits) cmp(cs, p, p->tol_fwd, "forward", exp, "logits", f.logits, N * V);

    const char *modes[2] = {"projector", "all"};
    for (int md = 0; md < 2; md++) {
        double ls = 0;
        int64_t nt = 0;
        CHECK_RC(llava_cuda_forward_backward(g, &b, md ? TRAIN_ALL : TRAIN_PROJECTOR, &ls, &nt, 0), 0);
        CHECK_EQ_INT(nt, b.n_targets);
        double loss = ls / (double)(nt ? nt : 1), rel = fabs(loss - want_loss) / fabs(want_loss);
        printf("  %-10s %-8s loss %-9s %.9f (HF %.9f) rel err %.2e\n", cs, p->name, modes[md], loss, want_loss, rel);
        CHECKF(rel <= p->tol_loss, "%s/%s: loss (%s mode) %.9g, HF %.9g, rel err %.3g", cs, p->name, modes[md], loss,
               want_loss, rel);
        size_t n = 0;
        float *gr = llava_cuda_grads_download(g, &n);
        CHECKF(gr != NULL, "%s/%s: gradient download failed", cs, p->name);
        if (!gr) continue;
        char prefix[64], stage[32];
        snprintf(prefix, sizeof prefix, "grad.%s.", modes[md]);
        snprintf(stage, sizeof stage, "grad.%s", modes[md]);
        cmp_grads(cs, p, stage, m, exp, prefix, 1.0 / (double)nt);
        if (p->dt == CUDA_DT_F32 && !p->recompute) {
            free(g_plain_grads[md]);
            g_plain_grads[md] = malloc(n * sizeof(float));
            if (g_plain_grads[md]) memcpy(g_plain_grads[md], gr, n * sizeof(float));
            g_plain_n[md] = n;
        } else if (p->recompute && g_plain_grads[md]) {
            CHECKF(n == g_plain_n[md] && memcmp(gr, g_plain_grads[md], n * sizeof(float)) == 0,
                   "%s: %s-mode gradients with recomputation differ from those without", cs, modes[md]);
        }
    }
    llava_cuda_free(&g);
    llava_model_free(&m);

    /* Three AdamW steps (clip 1.0, cosine with warmup 1 of 4 steps, lr 1e-3), as the CPU test. */
    snprintf(path, sizeof path, "%s/model", dir);
    CHECK_RC(llava_model_load(path, &m), 0);
    if (!m) goto done;
    CHECK_RC(llava_cuda_new(m, &o, &g), 0);
    if (!g) goto done;
    const char *am = st_file_metadata(exp, "adam_mode"), *wd = st_file_metadata(exp, "weight_decay");
    train_mode_t mode = am && strcmp(am, "all") == 0 ? TRAIN_ALL : TRAIN_PROJECTOR;
    adamw_opts_t ao = {.lr = 0, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = wd ? atof(wd) : 0,
                       .max_grad_norm = 1.0};
    double sum_lr = 0;
    for (int step = 0; step < 3; step++) {
        double ls = 0;
        int64_t nt = 0;
        CHECK_RC(llava_cuda_forward_backward(g, &b, mode, &ls, &nt, 0), 0);
        double want = scalar(exp, "adamw.losses", step);
        CHECKF(fabs(ls / (double)(nt ? nt : 1) - want) <= p->tol_loss * fabs(want),
               "%s/%s: adamw step %d loss %.8g, HF %.8g", cs, p->name, step, ls / (double)(nt ? nt : 1), want);
        ao.lr = lr_at_step(step, 4, 1, 1e-3, LR_COSINE);
        CHECK_RC(llava_cuda_adamw_step(g, &ao, 1.0 / (double)(nt ? nt : 1), NULL), 0);
        sum_lr += ao.lr;
    }
    CHECK_RC(llava_cuda_state_download(g), 0);
    cmp_params(cs, p, m, exp, mode == TRAIN_ALL ? "grad.all." : "grad.projector.", sum_lr);
done:
    llava_cuda_free(&g);
    llava_model_free(&m);
    st_file_close(&exp);
    batch_free(&b);
}

int main(void) {
    if (cuda_device_count() == 0) {
        printf("SKIP: no CUDA device\n");
        return 77;
    }
    const char *cases[] = {"mha_linear", "gqa_mlp2x"};
    for (int c = 0; c < 2; c++) {
        for (int i = 0; i < 3; i++) run_case(cases[c], &k_precs[i]);
        free(g_plain_grads[0]);
        free(g_plain_grads[1]);
        g_plain_grads[0] = g_plain_grads[1] = NULL;
    }
    for (int i = 0; i < 3; i++) printf("worst relative error, %s: %.3g\n", k_precs[i].name, worst[i]);
    return test_finish();
}
