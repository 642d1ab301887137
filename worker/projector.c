/* LLaVA projector forward/backward on the CPU ops; see projector.h. Tested by tests/unit/test_model_parity.c. */
#include "worker/projector.h"

#include <math.h>
#include <string.h>

#include "common/err.h"
#include "kernels/cpu/ops.h"
#include "worker/modelutil.h"

int projector_plan(arena_t *a, proj_type_t type, int Cv, int H, int bias) {
    int rc = 0, r;
    CHECK_GOTO((r = mu_add(a, PROJ_PREFIX, "linear_1.weight", H, Cv, 0, 0)) >= 0, r, "cannot plan projector");
    if (bias) CHECK_GOTO((r = mu_add(a, PROJ_PREFIX, "linear_1.bias", H, 0, 0, 0)) >= 0, r, "cannot plan projector");
    if (type == PROJ_MLP2X_GELU) {
        CHECK_GOTO((r = mu_add(a, PROJ_PREFIX, "linear_2.weight", H, H, 0, 0)) >= 0, r, "cannot plan projector");
        if (bias)
            CHECK_GOTO((r = mu_add(a, PROJ_PREFIX, "linear_2.bias", H, 0, 0, 0)) >= 0, r, "cannot plan projector");
    }
cleanup:
    return rc;
}

void projector_bind(projector_t *p, arena_t *a, proj_type_t type, int Cv, int H, int bias) {
    memset(p, 0, sizeof *p);
    p->type = type;
    p->Cv = Cv;
    p->H = H;
    p->bias = bias;
    p->w1 = mu_get(a, PROJ_PREFIX, "linear_1.weight");
    p->b1 = mu_get(a, PROJ_PREFIX, "linear_1.bias");
    p->w2 = mu_get(a, PROJ_PREFIX, "linear_2.weight");
    p->b2 = mu_get(a, PROJ_PREFIX, "linear_2.bias");
}

/* U(-b, b) with b = 1/sqrt(fan_in): torch.nn.Linear's reset_parameters (kaiming_uniform_ with a = sqrt(5) gives
 * exactly this bound for the weight, and the bias uses the same one). */
static void linear_init_torch(float *w, float *b, int out, int in, uint64_t *rng) {
    double bound = 1.0 / sqrt((double)in);
    mu_uniform(w, (int64_t)out * in, bound, rng);
    if (b) mu_uniform(b, out, bound, rng);
}

void projector_init_random(projector_t *p, uint64_t *rng) {
    linear_init_torch(p->w1, p->b1, p->H, p->Cv, rng);
    if (p->w2) linear_init_torch(p->w2, p->b2, p->H, p->H, rng);
}

size_t projector_acts_floats(const projector_t *p, int M) {
    return p->type == PROJ_MLP2X_GELU ? 2 * (size_t)M * p->H : 0;
}

void projector_forward(const projector_t *p, float *out, float *acts, const float *feats, int M) {
    if (p->type == PROJ_LINEAR) {
        matmul_forward(out, feats, p->w1, p->b1, M, p->Cv, p->H);
        return;
    }
    float *pre = acts, *act = acts + (size_t)M * p->H;
    matmul_forward(pre, feats, p->w1, p->b1, M, p->Cv, p->H);
    gelu_forward(act, pre, (long)M * p->H);
    matmul_forward(out, act, p->w2, p->b2, M, p->H, p->H);
}

void projector_backward(const projector_t *p, const projector_t *g, const float *dout, const float *acts,
                        const float *feats, int M, float *scratch) {
    if (p->type == PROJ_LINEAR) {
        matmul_backward(NULL, g->w1, g->b1, dout, feats, p->w1, M, p->Cv, p->H);
        return;
    }
    size_t MH = (size_t)M * p->H;
    const float *pre = acts, *act = acts + MH;
    float *dact = scratch, *dpre = scratch + MH;
    memset(scratch, 0, 2 * MH * sizeof(float));
    matmul_backward(dact, g->w2, g->b2, dout, act, p->w2, M, p->H, p->H);
    gelu_backward(dpre, pre, dact, (long)MH);
    matmul_backward(NULL, g->w1, g->b1, dpre, feats, p->w1, M, p->Cv, p->H);
}
