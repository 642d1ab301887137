/* Forward values of the CPU ops (kernels/cpu/ops.h) against PyTorch / transformers outputs stored in
 * tests/fixtures/ops/ (safetensors) by tests/reference/make_ops_fixtures.py. Every op must agree to a relative
 * error (max |diff| / max |ref|) of 1e-5. Run: ctest -R test_ops_ref (working directory tests/). */
#include <stdint.h>

#include "common/err.h"
#include "common/safetensors.h"
#include "kernels/cpu/ops.h"
#include "tests/test.h"

#define REL_TOL 1e-5

/* Every array a fixture hands out, freed at the end. */
#define MAX_ALLOCS 256
static void *g_allocs[MAX_ALLOCS];
static int g_nallocs;

static void *keep(void *p) {
    if (!p || g_nallocs == MAX_ALLOCS) {
        fprintf(stderr, "test_ops_ref: out of memory or allocation slots\n");
        exit(2);
    }
    g_allocs[g_nallocs++] = p;
    return p;
}

static float *zeros(long n) { return keep(calloc((size_t)(n > 0 ? n : 1), sizeof(float))); }

static st_file_t *fx_open(const char *name) {
    char path[512];
    const char *src = getenv("LLAVA_SOURCE_DIR");
    if (src)
        snprintf(path, sizeof path, "%s/tests/fixtures/ops/%s.safetensors", src, name);
    else
        snprintf(path, sizeof path, "fixtures/ops/%s.safetensors", name);
    st_file_t *f = NULL;
    if (st_file_open(path, &f) != 0) {
        fprintf(stderr, "cannot open fixture %s\n", path);
        exit(2);
    }
    return f;
}

/* Tensor `name` as floats; *n gets its element count (may be NULL). */
static float *fx_f32(st_file_t *f, const char *name, long *n) {
    const st_tensor_t *t = st_file_find(f, name);
    if (!t) {
        fprintf(stderr, "fixture %s has no tensor %s\n", st_file_path(f), name);
        exit(2);
    }
    int64_t numel = st_tensor_numel(t);
    float *x = zeros(numel);
    if (st_tensor_to_f32(t, x, numel) != 0) exit(2);
    if (n) *n = (long)numel;
    return x;
}

/* Integer tensor (I32 in the fixture, exact in float for these small values). */
static int32_t *fx_i32(st_file_t *f, const char *name, long *n) {
    long cnt;
    float *x = fx_f32(f, name, &cnt);
    int32_t *y = keep(malloc(sizeof(int32_t) * (size_t)cnt));
    for (long i = 0; i < cnt; i++) y[i] = (int32_t)x[i];
    if (n) *n = cnt;
    return y;
}

/* Doubles stored as float pairs (hi, lo), to within ~1e-14 relative. */
static double *fx_f64(st_file_t *f, const char *name) {
    long n;
    float *x = fx_f32(f, name, &n);
    double *y = keep(malloc(sizeof(double) * (size_t)(n / 2 + 1)));
    for (long i = 0; i < n / 2; i++) y[i] = (double)x[2 * i] + (double)x[2 * i + 1];
    return y;
}

/* Checks and prints the relative error of got against ref. */
static void check_rel(const char *what, const float *got, const float *ref, long n, double tol) {
    long where;
    double e = t_max_rel_err(got, ref, n, 1e-30, &where);
    printf("  %-34s n=%-6ld max rel err %.3g\n", what, n, e);
    CHECKF(e <= tol, "%s: relative error %.3g > %.3g at element %ld (got %.9g, want %.9g)", what, e, tol, where,
           where >= 0 ? got[where] : 0.0f, where >= 0 ? ref[where] : 0.0f);
}

static void test_norms(void) {
    st_file_t *f = fx_open("norms");
    int32_t *sz = fx_i32(f, "sizes", NULL);
    int N = sz[0], C = sz[1];
    float *x = fx_f32(f, "x", NULL), *w = fx_f32(f, "w", NULL), *b = fx_f32(f, "b", NULL);
    float *out = zeros((long)N * C), *mean = zeros(N), *rstd = zeros(N);
    layernorm_forward(out, mean, rstd, x, w, b, N, C, 1e-5f);
    check_rel("layernorm (F.layer_norm)", out, fx_f32(f, "layernorm", NULL), (long)N * C, REL_TOL);
    layernorm_forward(out, NULL, NULL, x, w, b, N, C, 1e-5f);
    check_rel("layernorm without stats", out, fx_f32(f, "layernorm", NULL), (long)N * C, REL_TOL);
    rmsnorm_forward(out, rstd, x, w, N, C, 1e-6f);
    check_rel("rmsnorm (LlamaRMSNorm)", out, fx_f32(f, "rmsnorm", NULL), (long)N * C, REL_TOL);
    st_file_close(&f);
}

static void test_rope(void) {
    st_file_t *f = fx_open("rope");
    int32_t *sz = fx_i32(f, "sizes", NULL);
    int B = sz[0], T = sz[1], NH = sz[2], HS = sz[3];
    float theta = fx_f32(f, "theta", NULL)[0];
    long n = (long)B * T * NH * HS;
    float *x = fx_f32(f, "x", NULL), *ref = fx_f32(f, "out", NULL);
    int32_t *pos = fx_i32(f, "pos", NULL);
    float *out = zeros(n);
    rope_forward(out, x, pos, B, T, NH, HS, theta);
    check_rel("rope (apply_rotary_pos_emb)", out, ref, n, REL_TOL);
    // row 0 has positions 0..T-1: the NULL default must give the same
    rope_forward(out, x, NULL, 1, T, NH, HS, theta);
    check_rel("rope default positions", out, ref, (long)T * NH * HS, REL_TOL);
    // in place
    float *y = zeros(n);
    memcpy(y, x, sizeof(float) * (size_t)n);
    rope_forward(y, y, pos, B, T, NH, HS, theta);
    check_rel("rope in place", y, ref, n, REL_TOL);
    st_file_close(&f);
}

static void test_attention(const char *name) {
    st_file_t *f = fx_open(name);
    int32_t *sz = fx_i32(f, "sizes", NULL);
    int B = sz[0], T = sz[1], NH = sz[2], NKV = sz[3], HS = sz[4], causal = sz[5];
    int32_t *lengths = causal ? fx_i32(f, "lengths", NULL) : NULL;
    float *q = fx_f32(f, "q", NULL), *k = fx_f32(f, "k", NULL), *v = fx_f32(f, "v", NULL);
    float *ref = fx_f32(f, "out", NULL), *refp = fx_f32(f, "probs", NULL);
    long n = (long)B * T * NH * HS, np = (long)B * NH * T * T;
    float *out = zeros(n), *probs = zeros(np);
    char what[128];
    CHECK_RC(attention_forward(out, probs, q, k, v, lengths, B, T, NH, NKV, HS, causal), 0);
    snprintf(what, sizeof what, "%s out", name);
    check_rel(what, out, ref, n, REL_TOL);
    snprintf(what, sizeof what, "%s probs", name);
    check_rel(what, probs, refp, np, REL_TOL);
    float *out2 = zeros(n);
    CHECK_RC(attention_forward(out2, NULL, q, k, v, lengths, B, T, NH, NKV, HS, causal), 0);
    snprintf(what, sizeof what, "%s out (no probs)", name);
    check_rel(what, out2, ref, n, REL_TOL);
    st_file_close(&f);
}

static void test_activations(void) {
    st_file_t *f = fx_open("activations");
    long n;
    float *x = fx_f32(f, "x", &n), *gate = fx_f32(f, "gate", NULL), *up = fx_f32(f, "up", NULL);
    float *out = zeros(n);
    gelu_forward(out, x, n);
    check_rel("gelu (nn.GELU)", out, fx_f32(f, "gelu", NULL), n, REL_TOL);
    quick_gelu_forward(out, x, n);
    check_rel("quick_gelu (ACT2FN)", out, fx_f32(f, "quick_gelu", NULL), n, REL_TOL);
    swiglu_forward(out, gate, up, n);
    check_rel("swiglu (silu(gate)*up)", out, fx_f32(f, "swiglu", NULL), n, REL_TOL);
    st_file_close(&f);
}

static void test_matmul_conv(void) {
    st_file_t *f = fx_open("matmul_conv");
    int32_t *sz = fx_i32(f, "sizes", NULL);
    int N = sz[0], C = sz[1], OC = sz[2], B = sz[3], S = sz[4], P = sz[5], OCc = sz[6];
    float *out = zeros((long)N * OC);
    matmul_forward(out, fx_f32(f, "x", NULL), fx_f32(f, "w", NULL), fx_f32(f, "b", NULL), N, C, OC);
    check_rel("matmul (F.linear)", out, fx_f32(f, "linear", NULL), (long)N * OC, REL_TOL);
    int NP = (S / P) * (S / P), K = 3 * P * P;
    float *cols = zeros((long)B * NP * K), *patches = zeros((long)B * NP * OCc);
    patch_im2col(cols, fx_f32(f, "img", NULL), B, S, P);
    matmul_forward(patches, cols, fx_f32(f, "conv_w", NULL), NULL, B * NP, K, OCc);
    check_rel("patch_im2col + matmul (conv2d)", patches, fx_f32(f, "patches", NULL), (long)B * NP * OCc, REL_TOL);
    st_file_close(&f);
}

static void test_crossentropy(void) {
    st_file_t *f = fx_open("crossentropy");
    int32_t *sz = fx_i32(f, "sizes", NULL);
    int N = sz[0], V = sz[1];
    float *logits = fx_f32(f, "logits", NULL);
    int32_t *targets = fx_i32(f, "targets", NULL);
    float *losses = zeros(N);
    double sum = 0;
    int64_t cnt = 0;
    crossentropy_forward(losses, logits, targets, N, V, &sum, &cnt);
    double ref = fx_f64(f, "loss_sum")[0];
    double e = fabs(sum - ref) / fabs(ref);
    printf("  %-34s n=%-6d max rel err %.3g\n", "cross_entropy sum", N, e);
    CHECKF(e <= REL_TOL, "loss sum %.12g, want %.12g", sum, ref);
    CHECK_EQ_INT(cnt, N - 3);
    check_rel("cross_entropy per row", losses, fx_f32(f, "losses", NULL), N, REL_TOL);
    float *d = zeros((long)N * V);
    crossentropy_backward(d, logits, targets, N, V, 1.0f / (float)cnt);
    check_rel("cross_entropy grad (mean)", d, fx_f32(f, "dlogits_mean", NULL), (long)N * V, REL_TOL);
    // in place over a copy of the logits
    float *inplace = zeros((long)N * V);
    memcpy(inplace, logits, sizeof(float) * (size_t)N * V);
    crossentropy_backward(inplace, inplace, targets, N, V, 1.0f / (float)cnt);
    check_rel("cross_entropy grad in place", inplace, fx_f32(f, "dlogits_mean", NULL), (long)N * V, REL_TOL);
    st_file_close(&f);
}

static void test_adamw(void) {
    st_file_t *f = fx_open("adamw");
    long n;
    float *p = fx_f32(f, "p0", &n);
    // the exact Python literals (the fixture's copies are within 1e-14, not bit-exact)
    double lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
    double *hp = fx_f64(f, "hparams");
    CHECK(fabs(hp[0] - lr) < 1e-15 && fabs(hp[1] - b1) < 1e-14 && fabs(hp[2] - b2) < 1e-14 && fabs(hp[4] - wd) < 1e-14);
    float *m = zeros(n), *v = zeros(n);
    for (int s = 0; s < 3; s++) {
        char gname[8], pname[8], what[64];
        snprintf(gname, sizeof gname, "g%d", s);
        snprintf(pname, sizeof pname, "p%d", s + 1);
        adamw_update(p, fx_f32(f, gname, NULL), m, v, n, lr, b1, b2, eps, wd, s + 1);
        // compare the update itself (p_t - p_{t-1}) too: the parameters alone hide small step errors
        snprintf(what, sizeof what, "adamw params after step %d", s + 1);
        check_rel(what, p, fx_f32(f, pname, NULL), n, REL_TOL);
    }
    float *d = zeros(n), *dref = zeros(n), *p0 = fx_f32(f, "p0", NULL), *p3 = fx_f32(f, "p3", NULL);
    for (long i = 0; i < n; i++) {
        d[i] = p[i] - p0[i];
        dref[i] = p3[i] - p0[i];
    }
    check_rel("adamw total update (3 steps)", d, dref, n, 1e-4);
    st_file_close(&f);
}

static void test_lr_schedule(void) {
    st_file_t *f = fx_open("lr_schedule");
    int32_t *sz = fx_i32(f, "sizes", NULL);
    int total = sz[0], warmup = sz[1];
    double ratio = 0.03, base = 2e-3; // the script's literals
    double *hp = fx_f64(f, "hparams");
    CHECK(fabs(hp[0] - ratio) < 1e-15 && fabs(hp[1] - base) < 1e-17);
    double *ref_lr[2] = {fx_f64(f, "cosine"), fx_f64(f, "linear")};
    CHECK_EQ_INT(lr_warmup_steps(total, ratio), warmup);
    CHECK_EQ_INT(lr_warmup_steps(1000, 0.03), 30);
    CHECK_EQ_INT(lr_warmup_steps(10, 0.07), 1); // Python: math.ceil(10 * 0.07) == 1 (0.7000000000000001)
    CHECK_EQ_INT(lr_warmup_steps(100, 0.07), 8); // 7.000000000000001 -> 8, as transformers gets it
    const char *names[2] = {"cosine", "linear"};
    lr_schedule_t kinds[2] = {LR_COSINE, LR_LINEAR};
    for (int s = 0; s < 2; s++) {
        double maxe = 0;
        for (int step = 0; step < total + 2; step++) {
            double ref = ref_lr[s][step];
            double got = lr_at_step(step, total, warmup, base, kinds[s]);
            double e = fabs(got - ref) / base;
            maxe = e > maxe ? e : maxe;
            CHECKF(e <= 1e-12, "%s lr at step %d: %.17g, want %.17g", names[s], step, got, ref);
        }
        printf("  %-34s n=%-6d max rel err %.3g\n", names[s], total + 2, maxe);
    }
    CHECK(lr_at_step(5, 10, 3, 1.0, LR_CONSTANT) == 1.0);
    CHECK(lr_at_step(1, 10, 4, 1.0, LR_CONSTANT_WITH_WARMUP) == 0.25);
    CHECK(lr_at_step(7, 10, 4, 1.0, LR_CONSTANT_WITH_WARMUP) == 1.0);
    st_file_close(&f);
}

int main(void) {
    kernels_set_threads(2);
    test_norms();
    test_rope();
    test_attention("attention_llama_gqa");
    test_attention("attention_llama_mha");
    test_attention("attention_clip");
    test_activations();
    test_matmul_conv();
    test_crossentropy();
    test_adamw();
    test_lr_schedule();
    for (int i = 0; i < g_nallocs; i++) free(g_allocs[i]);
    return test_finish();
}
