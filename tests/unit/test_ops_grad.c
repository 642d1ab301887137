/* Every backward in kernels/cpu/ops.h against central finite differences of a scalar loss
 * L = sum(out * W) (W random, accumulated in double), on small random shapes: odd sizes, grouped-query heads,
 * causal + padding lengths, rows with no visible key, several query blocks. Gradient buffers start non-zero to
 * check that backwards accumulate (+=). Run: ctest -R test_ops_grad. */
#include <stdint.h>

#include "common/err.h"
#include "kernels/cpu/ops.h"
#include "tests/test.h"

#define FD_EPS 1e-2f
#define FD_TOL 5e-4 /* max |analytic - numeric| / max |numeric|; fp32 forwards, double loss */

typedef enum {
    OP_MATMUL, OP_LAYERNORM, OP_RMSNORM, OP_ROPE, OP_ATTENTION, OP_QUICK_GELU, OP_GELU, OP_SWIGLU, OP_EMBEDDING,
    OP_SCATTER, OP_CROSSENTROPY
} op_t;

/* One case: inputs x[0..nx), their sizes, the op's sizes, and the output with its loss weights. */
typedef struct {
    op_t op;
    int B, T, NH, NKV, HS, causal, N, C, OC, V, M;
    float *x[4];
    long nx[4];
    int n_inputs;
    const int32_t *ids; /* ids, positions, lengths or targets, by op */
    const int32_t *lengths;
    float *out, *w, *tmp; /* out[nout], weights[nout], scratch for saved statistics */
    long nout;
} gcase_t;

static unsigned long long g_rng = 88172645463325252ULL;

static float frand(void) { /* uniform in [-1, 1) */
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((double)(g_rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float *rnd(long n, float scale) {
    float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (!p) exit(2);
    for (long i = 0; i < n; i++) p[i] = frand() * scale;
    return p;
}

static void forward(gcase_t *c) {
    switch (c->op) {
    case OP_MATMUL:
        matmul_forward(c->out, c->x[0], c->x[1], c->x[2], c->N, c->C, c->OC);
        break;
    case OP_LAYERNORM:
        layernorm_forward(c->out, c->tmp, c->tmp + c->N, c->x[0], c->x[1], c->x[2], c->N, c->C, 1e-5f);
        break;
    case OP_RMSNORM:
        rmsnorm_forward(c->out, c->tmp, c->x[0], c->x[1], c->N, c->C, 1e-6f);
        break;
    case OP_ROPE:
        rope_forward(c->out, c->x[0], c->ids, c->B, c->T, c->NH, c->HS, 10000.0f);
        break;
    case OP_ATTENTION:
        CHECK_RC(attention_forward(c->out, c->tmp, c->x[0], c->x[1], c->x[2], c->lengths, c->B, c->T, c->NH, c->NKV,
                                   c->HS, c->causal), 0);
        break;
    case OP_QUICK_GELU:
        quick_gelu_forward(c->out, c->x[0], c->nout);
        break;
    case OP_GELU:
        gelu_forward(c->out, c->x[0], c->nout);
        break;
    case OP_SWIGLU:
        swiglu_forward(c->out, c->x[0], c->x[1], c->nout);
        break;
    case OP_EMBEDDING:
        embedding_forward(c->out, c->ids, c->x[0], c->N, c->C);
        break;
    case OP_SCATTER:
        // embeds = table rows (image tokens mapped to row 0), then the features scattered over them
        for (int i = 0; i < c->N; i++) memset(c->out + (long)i * c->C, 0, sizeof(float) * (size_t)c->C);
        CHECK_RC(image_scatter_forward(c->out, c->ids, 7, c->x[0], c->N, c->C, c->M), 0);
        break;
    case OP_CROSSENTROPY: {
        double s = 0;
        crossentropy_forward(NULL, c->x[0], c->ids, c->N, c->V, &s, NULL);
        c->out[0] = (float)s; // loss weighted by w[0] (the scale given to the backward)
        c->tmp[0] = (float)s;
        break;
    }
    }
}

/* The analytic gradients, accumulated into g[i] (which the caller pre-fills). dout = w. */
static void backward(gcase_t *c, float **g) {
    switch (c->op) {
    case OP_MATMUL:
        matmul_backward(g[0], g[1], g[2], c->w, c->x[0], c->x[1], c->N, c->C, c->OC);
        break;
    case OP_LAYERNORM:
        layernorm_backward(g[0], g[1], g[2], c->w, c->x[0], c->x[1], c->tmp, c->tmp + c->N, c->N, c->C);
        break;
    case OP_RMSNORM:
        rmsnorm_backward(g[0], g[1], c->w, c->x[0], c->x[1], c->tmp, c->N, c->C);
        break;
    case OP_ROPE:
        rope_backward(g[0], c->w, c->ids, c->B, c->T, c->NH, c->HS, 10000.0f);
        break;
    case OP_ATTENTION:
        CHECK_RC(attention_backward(g[0], g[1], g[2], c->w, c->tmp, c->x[0], c->x[1], c->x[2], c->lengths, c->B, c->T,
                                    c->NH, c->NKV, c->HS, c->causal), 0);
        break;
    case OP_QUICK_GELU:
        quick_gelu_backward(g[0], c->x[0], c->w, c->nout);
        break;
    case OP_GELU:
        gelu_backward(g[0], c->x[0], c->w, c->nout);
        break;
    case OP_SWIGLU:
        swiglu_backward(g[0], g[1], c->w, c->x[0], c->x[1], c->nout);
        break;
    case OP_EMBEDDING:
        embedding_backward(g[0], c->w, c->ids, c->N, c->C);
        break;
    case OP_SCATTER: {
        // image_scatter_backward writes: gather into a temporary, then accumulate
        float *tmp = calloc((size_t)c->M * c->C + 1, sizeof(float));
        CHECK_RC(image_scatter_backward(tmp, c->w, c->ids, 7, c->N, c->C, c->M), 0);
        add_inplace(g[0], tmp, (long)c->M * c->C);
        free(tmp);
        break;
    }
    case OP_CROSSENTROPY: {
        long n = (long)c->N * c->V;
        float *tmp = malloc(sizeof(float) * (size_t)n);
        crossentropy_backward(tmp, c->x[0], c->ids, c->N, c->V, c->w[0]);
        add_inplace(g[0], tmp, n);
        free(tmp);
        break;
    }
    }
}

static double loss(gcase_t *c) {
    forward(c);
    double s = 0;
    for (long i = 0; i < c->nout; i++) s += (double)c->out[i] * c->w[i];
    return s;
}

/* Runs the backward with pre-filled gradient buffers, then compares each input's gradient (minus the pre-fill)
 * with central differences. skip_mask bit i: input i has no gradient (passed as NULL to the backward). */
static void grad_check(const char *name, gcase_t *c, unsigned skip_mask) {
    float *g[4] = {NULL, NULL, NULL, NULL};
    for (int i = 0; i < c->n_inputs; i++) {
        if (skip_mask & (1u << i)) continue;
        g[i] = malloc(sizeof(float) * (size_t)c->nx[i]);
        for (long j = 0; j < c->nx[i]; j++) g[i][j] = 0.25f * (float)(j % 3);
    }
    forward(c);
    backward(c, g);
    for (int i = 0; i < c->n_inputs; i++) {
        if (!g[i]) continue;
        double maxdiff = 0, maxref = 1e-6;
        long where = -1;
        for (long j = 0; j < c->nx[i]; j++) {
            float save = c->x[i][j];
            float xp = save + FD_EPS, xm = save - FD_EPS;
            c->x[i][j] = xp;
            double lp = loss(c);
            c->x[i][j] = xm;
            double lm = loss(c);
            c->x[i][j] = save;
            double num = (lp - lm) / ((double)xp - (double)xm);
            double an = (double)g[i][j] - 0.25 * (double)(j % 3);
            double d = fabs(an - num);
            if (d > maxdiff || d != d) {
                maxdiff = d;
                where = j;
            }
            if (fabs(num) > maxref) maxref = fabs(num);
        }
        double e = maxdiff / maxref;
        printf("  %-44s input %d n=%-5ld max rel err %.3g\n", name, i, c->nx[i], e);
        CHECKF(e <= FD_TOL, "%s input %d: rel err %.3g at element %ld", name, i, e, where);
        free(g[i]);
    }
    forward(c); // leave the forward state consistent for the caller
}

static void case_free(gcase_t *c) {
    for (int i = 0; i < c->n_inputs; i++) free(c->x[i]);
    free(c->out);
    free(c->w);
    free(c->tmp);
}

static void test_matmul(void) {
    gcase_t c = {.op = OP_MATMUL, .N = 5, .C = 7, .OC = 3, .n_inputs = 3};
    c.nx[0] = 35, c.nx[1] = 21, c.nx[2] = 3;
    for (int i = 0; i < 3; i++) c.x[i] = rnd(c.nx[i], 1.0f);
    c.nout = 15, c.out = rnd(c.nout, 0), c.w = rnd(c.nout, 1.0f), c.tmp = NULL;
    grad_check("matmul", &c, 0);
    grad_check("matmul, frozen weights (dinp only)", &c, 6u);
    grad_check("matmul, weights only", &c, 1u);
    case_free(&c);
}

static void test_norms(void) {
    gcase_t c = {.op = OP_LAYERNORM, .N = 4, .C = 11, .n_inputs = 3};
    c.nx[0] = 44, c.nx[1] = 11, c.nx[2] = 11;
    for (int i = 0; i < 3; i++) c.x[i] = rnd(c.nx[i], 1.0f);
    c.nout = 44, c.out = rnd(44, 0), c.w = rnd(44, 1.0f), c.tmp = rnd(8, 0);
    grad_check("layernorm", &c, 0);
    grad_check("layernorm, dinp only", &c, 6u);
    case_free(&c);

    gcase_t r = {.op = OP_RMSNORM, .N = 3, .C = 9, .n_inputs = 2};
    r.nx[0] = 27, r.nx[1] = 9;
    r.x[0] = rnd(27, 1.0f), r.x[1] = rnd(9, 1.0f);
    r.nout = 27, r.out = rnd(27, 0), r.w = rnd(27, 1.0f), r.tmp = rnd(3, 0);
    grad_check("rmsnorm", &r, 0);
    case_free(&r);
}

static void test_rope(void) {
    int32_t pos[6] = {0, 1, 2, 5, 900, 2047};
    gcase_t c = {.op = OP_ROPE, .B = 2, .T = 3, .NH = 3, .HS = 6, .n_inputs = 1, .ids = pos};
    c.nx[0] = 2 * 3 * 3 * 6;
    c.x[0] = rnd(c.nx[0], 1.0f);
    c.nout = c.nx[0], c.out = rnd(c.nout, 0), c.w = rnd(c.nout, 1.0f), c.tmp = NULL;
    grad_check("rope, explicit positions", &c, 0);
    c.ids = NULL;
    grad_check("rope, default positions", &c, 0);
    case_free(&c);
}

static void attention_case(const char *name, int B, int T, int NH, int NKV, int HS, int causal,
                           const int32_t *lengths, int save_probs) {
    gcase_t c = {.op = OP_ATTENTION, .B = B, .T = T, .NH = NH, .NKV = NKV, .HS = HS, .causal = causal,
                 .n_inputs = 3, .lengths = lengths};
    c.nx[0] = (long)B * T * NH * HS, c.nx[1] = c.nx[2] = (long)B * T * NKV * HS;
    for (int i = 0; i < 3; i++) c.x[i] = rnd(c.nx[i], 1.0f);
    c.nout = c.nx[0], c.out = rnd(c.nout, 0), c.w = rnd(c.nout, 1.0f);
    c.tmp = save_probs ? rnd((long)B * NH * T * T, 0) : NULL;
    grad_check(name, &c, 0);
    // rows without any visible key give zeros, never NaN
    int nan = 0;
    for (long i = 0; i < c.nout; i++) nan |= c.out[i] != c.out[i];
    CHECK(!nan);
    if (lengths)
        for (int b = 0; b < B; b++)
            if (lengths[b] == 0)
                for (long i = 0; i < (long)T * NH * HS; i++) CHECK(c.out[(long)b * T * NH * HS + i] == 0.0f);
    case_free(&c);
}

static void test_attention(void) {
    int32_t len3[3] = {5, 3, 0}; // full, padded, empty row
    attention_case("attention GQA causal+padding (saved probs)", 3, 5, 4, 2, 3, 1, len3, 1);
    attention_case("attention GQA causal+padding (recomputed)", 3, 5, 4, 2, 3, 1, len3, 0);
    attention_case("attention MQA causal, no padding", 1, 6, 3, 1, 4, 1, NULL, 1);
    attention_case("attention CLIP (no mask, not causal)", 2, 5, 2, 2, 5, 0, NULL, 1);
    int32_t len2[2] = {3, 0};
    attention_case("attention non-causal + padding", 2, 4, 2, 2, 3, 0, len2, 0);
    int32_t lenb[2] = {70, 41}; // two query blocks of 64
    attention_case("attention causal, T=70 (2 blocks), saved", 2, 70, 2, 1, 2, 1, lenb, 1);
    attention_case("attention causal, T=70 (2 blocks), recomputed", 2, 70, 2, 1, 2, 1, lenb, 0);
}

static void test_activations(void) {
    op_t ops[3] = {OP_QUICK_GELU, OP_GELU, OP_SWIGLU};
    const char *names[3] = {"quick_gelu", "gelu", "swiglu"};
    for (int k = 0; k < 3; k++) {
        gcase_t c = {.op = ops[k], .n_inputs = ops[k] == OP_SWIGLU ? 2 : 1};
        c.nout = 37;
        c.nx[0] = c.nx[1] = 37;
        for (int i = 0; i < c.n_inputs; i++) c.x[i] = rnd(37, 3.0f);
        c.out = rnd(37, 0), c.w = rnd(37, 1.0f), c.tmp = NULL;
        grad_check(names[k], &c, 0);
        if (ops[k] == OP_SWIGLU) grad_check("swiglu, dgate only", &c, 2u);
        case_free(&c);
    }
}

static void test_embeddings(void) {
    int32_t ids[6] = {2, 0, 2, 4, 1, 2}; // repeated ids accumulate
    gcase_t c = {.op = OP_EMBEDDING, .N = 6, .C = 5, .n_inputs = 1, .ids = ids};
    c.nx[0] = 5 * 5;
    c.x[0] = rnd(25, 1.0f);
    c.nout = 30, c.out = rnd(30, 0), c.w = rnd(30, 1.0f), c.tmp = NULL;
    grad_check("embedding", &c, 0);
    case_free(&c);

    int32_t sids[7] = {1, 7, 7, 3, 7, 0, 7};
    gcase_t s = {.op = OP_SCATTER, .N = 7, .C = 3, .M = 4, .n_inputs = 1, .ids = sids};
    s.nx[0] = 12;
    s.x[0] = rnd(12, 1.0f);
    s.nout = 21, s.out = rnd(21, 0), s.w = rnd(21, 1.0f), s.tmp = NULL;
    grad_check("image_scatter", &s, 0);
    // feature row k lands on the k-th image position
    CHECK(s.out[1 * 3 + 0] == s.x[0][0] && s.out[4 * 3 + 2] == s.x[0][2 * 3 + 2] && s.out[6 * 3 + 1] == s.x[0][10]);
    CHECK(s.out[0] == 0.0f && s.out[3 * 3] == 0.0f);
    CHECK_RC(image_scatter_forward(s.out, sids, 7, s.x[0], 7, 3, 3), LLAVA_ESHAPE);
    CHECK_RC(image_scatter_backward(s.x[0], s.w, sids, 7, 7, 3, 5), LLAVA_ESHAPE);
    case_free(&s);
}

static void test_crossentropy(void) {
    int32_t targets[5] = {3, -100, 0, 10, -100};
    gcase_t c = {.op = OP_CROSSENTROPY, .N = 5, .V = 11, .n_inputs = 1, .ids = targets};
    c.nx[0] = 55;
    c.x[0] = rnd(55, 3.0f);
    c.nout = 1, c.out = rnd(1, 0), c.w = rnd(1, 0), c.tmp = rnd(1, 0);
    c.w[0] = 1.0f / 3.0f;
    grad_check("cross_entropy (mean over 3 targets)", &c, 0);
    double s = 0;
    int64_t n = 0;
    float losses[5];
    crossentropy_forward(losses, c.x[0], targets, 5, 11, &s, &n);
    CHECK_EQ_INT(n, 3);
    CHECK(losses[1] == 0.0f && losses[4] == 0.0f && losses[0] > 0.0f);
    case_free(&c);
}

static void test_misc(void) {
    // softmax rows sum to 1 and keep order; residual/add/scale/add_rows; im2col order; norm and clip helpers
    float x[6] = {1, 2, 3, -1, 0, 1000}, p[6];
    softmax_forward(p, x, 2, 3);
    CHECK(fabs(p[0] + p[1] + p[2] - 1.0) < 1e-6 && p[2] > p[1] && p[1] > p[0]);
    CHECK(fabsf(p[5] - 1.0f) < 1e-6f && p[3] == 0.0f);
    float a[4] = {1, 2, 3, 4}, b[4] = {10, 20, 30, 40}, o[4];
    residual_forward(o, a, b, 4);
    CHECK(o[0] == 11 && o[3] == 44);
    add_inplace(o, a, 4);
    CHECK(o[1] == 24);
    scale_inplace(o, 0.5f, 4);
    CHECK(o[1] == 12);
    float row[2] = {1, -1};
    add_rows(o, row, 2, 2);
    CHECK(o[0] == 7.0f && o[1] == 11.0f && o[2] == 19.0f && o[3] == 23.0f);
    float img[1 * 3 * 4 * 4], cols[4 * 12];
    for (int i = 0; i < 48; i++) img[i] = (float)i;
    patch_im2col(cols, img, 1, 4, 2);
    // patch 1 (py=0, px=1), channel 1, ky=1, kx=0 -> img[1, 1, 1, 2] = 16 + 4 + 2
    CHECK(cols[1 * 12 + (1 * 2 + 1) * 2 + 0] == 22.0f);
    CHECK(cols[3 * 12 + 11] == 47.0f);
    float g[3] = {3, 4, 0};
    CHECK(global_norm_sq(g, 3) == 25.0);
    CHECK(clip_grad_coef(5.0, 10.0f) == 1.0f);
    CHECK(fabsf(clip_grad_coef(5.0, 1.0f) - (float)(1.0 / (5.0 + 1e-6))) < 1e-7f);
    kernels_set_threads(1);
    CHECK_EQ_INT(kernels_get_threads(), 1);
    kernels_set_threads(2);
    CHECK_EQ_INT(kernels_get_threads(), 2);
    CHECK_RC(attention_forward(o, NULL, a, a, a, NULL, 1, 1, 3, 2, 1, 0), LLAVA_EINVAL);
}

int main(void) {
    kernels_set_threads(2);
    test_matmul();
    test_norms();
    test_rope();
    test_attention();
    test_activations();
    test_embeddings();
    test_crossentropy();
    test_misc();
    return test_finish();
}
