/* CLIP vision tower forward on the CPU ops (kernels/cpu/ops.h); see clip.h.
 * Tested against transformers by tests/unit/test_model_parity.c. */
#include "worker/clip.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "kernels/cpu/ops.h"
#include "worker/modelutil.h"

int clip_params_plan(arena_t *a, const clip_vision_config_t *c) {
    int rc = 0;
    int64_t C = c->hidden_size, I = c->intermediate_size, P = c->patch_size, np = c->image_size / c->patch_size;
    char n[TENSOR_NAME_MAX];
#define ADD(name, d0, d1, d2, d3)                                                                    \
    do {                                                                                             \
        int r_ = mu_add(a, CLIP_PREFIX, (name), (d0), (d1), (d2), (d3));                             \
        CHECK_GOTO(r_ >= 0, r_, "cannot plan tensor %s%s", CLIP_PREFIX, (name));                     \
    } while (0)
    ADD("embeddings.class_embedding", C, 0, 0, 0);
    ADD("embeddings.patch_embedding.weight", C, c->num_channels, P, P);
    ADD("embeddings.position_embedding.weight", np * np + 1, C, 0, 0);
    ADD("pre_layrnorm.weight", C, 0, 0, 0);
    ADD("pre_layrnorm.bias", C, 0, 0, 0);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        static const char *vec[] = {"layer_norm1.weight", "layer_norm1.bias", "self_attn.q_proj.bias",
                                    "self_attn.k_proj.bias", "self_attn.v_proj.bias", "self_attn.out_proj.bias",
                                    "layer_norm2.weight", "layer_norm2.bias", "mlp.fc2.bias"};
        static const char *sq[] = {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                                   "self_attn.out_proj.weight"};
        for (size_t i = 0; i < sizeof vec / sizeof *vec; i++) {
            snprintf(n, sizeof n, "encoder.layers.%d.%s", l, vec[i]);
            ADD(n, C, 0, 0, 0);
        }
        for (size_t i = 0; i < sizeof sq / sizeof *sq; i++) {
            snprintf(n, sizeof n, "encoder.layers.%d.%s", l, sq[i]);
            ADD(n, C, C, 0, 0);
        }
        snprintf(n, sizeof n, "encoder.layers.%d.mlp.fc1.weight", l);
        ADD(n, I, C, 0, 0);
        snprintf(n, sizeof n, "encoder.layers.%d.mlp.fc1.bias", l);
        ADD(n, I, 0, 0, 0);
        snprintf(n, sizeof n, "encoder.layers.%d.mlp.fc2.weight", l);
        ADD(n, C, I, 0, 0);
    }
    ADD("post_layernorm.weight", C, 0, 0, 0);
    ADD("post_layernorm.bias", C, 0, 0, 0);
#undef ADD
cleanup:
    return rc;
}

int clip_bind(clip_t *m, arena_t *a, const clip_vision_config_t *c) {
    int rc = 0;
    memset(m, 0, sizeof *m);
    m->cfg = *c;
    m->n_patches = (c->image_size / c->patch_size) * (c->image_size / c->patch_size);
    m->class_emb = mu_get(a, CLIP_PREFIX, "embeddings.class_embedding");
    m->patch_w = mu_get(a, CLIP_PREFIX, "embeddings.patch_embedding.weight");
    m->pos_emb = mu_get(a, CLIP_PREFIX, "embeddings.position_embedding.weight");
    m->pre_w = mu_get(a, CLIP_PREFIX, "pre_layrnorm.weight");
    m->pre_b = mu_get(a, CLIP_PREFIX, "pre_layrnorm.bias");
    m->post_w = mu_get(a, CLIP_PREFIX, "post_layernorm.weight");
    m->post_b = mu_get(a, CLIP_PREFIX, "post_layernorm.bias");
    m->layers = calloc((size_t)c->num_hidden_layers, sizeof *m->layers);
    ALLOC_CHECK_GOTO(m->layers);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        clip_layer_t *L = &m->layers[l];
        char p[64];
        snprintf(p, sizeof p, CLIP_PREFIX "encoder.layers.%d.", l);
        L->ln1_w = mu_get(a, p, "layer_norm1.weight");
        L->ln1_b = mu_get(a, p, "layer_norm1.bias");
        L->q_w = mu_get(a, p, "self_attn.q_proj.weight");
        L->q_b = mu_get(a, p, "self_attn.q_proj.bias");
        L->k_w = mu_get(a, p, "self_attn.k_proj.weight");
        L->k_b = mu_get(a, p, "self_attn.k_proj.bias");
        L->v_w = mu_get(a, p, "self_attn.v_proj.weight");
        L->v_b = mu_get(a, p, "self_attn.v_proj.bias");
        L->o_w = mu_get(a, p, "self_attn.out_proj.weight");
        L->o_b = mu_get(a, p, "self_attn.out_proj.bias");
        L->ln2_w = mu_get(a, p, "layer_norm2.weight");
        L->ln2_b = mu_get(a, p, "layer_norm2.bias");
        L->fc1_w = mu_get(a, p, "mlp.fc1.weight");
        L->fc1_b = mu_get(a, p, "mlp.fc1.bias");
        L->fc2_w = mu_get(a, p, "mlp.fc2.weight");
        L->fc2_b = mu_get(a, p, "mlp.fc2.bias");
    }
cleanup:
    return rc;
}

void clip_release(clip_t *m) {
    free(m->layers);
    m->layers = NULL;
}

void clip_init_random(clip_t *m, uint64_t *rng) {
    const clip_vision_config_t *c = &m->cfg;
    int64_t C = c->hidden_size, I = c->intermediate_size, P = c->patch_size;
    double f = c->initializer_factor;
    double in_std = pow((double)C, -0.5) * pow(2.0 * c->num_hidden_layers, -0.5) * f;
    double out_std = pow((double)C, -0.5) * f, fc_std = pow(2.0 * C, -0.5) * f;
    mu_normal(m->class_emb, C, pow((double)C, -0.5) * f, rng);
    mu_normal(m->patch_w, C * c->num_channels * P * P, c->initializer_range * f, rng);
    mu_normal(m->pos_emb, (m->n_patches + 1) * C, c->initializer_range * f, rng);
    mu_fill(m->pre_w, C, 1.0f);
    mu_fill(m->post_w, C, 1.0f);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        clip_layer_t *L = &m->layers[l];
        mu_fill(L->ln1_w, C, 1.0f);
        mu_fill(L->ln2_w, C, 1.0f);
        mu_normal(L->q_w, C * C, in_std, rng);
        mu_normal(L->k_w, C * C, in_std, rng);
        mu_normal(L->v_w, C * C, in_std, rng);
        mu_normal(L->o_w, C * C, out_std, rng);
        mu_normal(L->fc1_w, I * C, fc_std, rng);
        mu_normal(L->fc2_w, C * I, in_std, rng);
    }
}

int clip_layers_needed(const clip_vision_config_t *c, int feature_layer) {
    return feature_layer < 0 ? c->num_hidden_layers + 1 + feature_layer : feature_layer;
}

size_t clip_scratch_floats(const clip_vision_config_t *c, int n_images) {
    size_t L = (size_t)((c->image_size / c->patch_size) * (c->image_size / c->patch_size) + 1);
    size_t R = (size_t)n_images * L, C = (size_t)c->hidden_size, I = (size_t)c->intermediate_size;
    size_t col = (size_t)n_images * (L - 1) * (size_t)(c->num_channels * c->patch_size * c->patch_size);
    size_t big = col > R * I ? col : R * I;
    return R * C * 6 + big; /* h, ln, q, k, v, att + (im2col | fc1) */
}

static void act_forward(const char *act, float *x, long n) {
    if (strcmp(act, "gelu") == 0)
        gelu_forward(x, x, n);
    else
        quick_gelu_forward(x, x, n);
}

int clip_forward(const clip_t *m, float *out, const float *pixels, int n_images, int feature_layer, int keep_cls,
                 float *scratch) {
    int rc = 0;
    const clip_vision_config_t *c = &m->cfg;
    int C = c->hidden_size, I = c->intermediate_size, P = c->patch_size, S = c->image_size;
    int NP = m->n_patches, L = NP + 1, R = n_images * L, NH = c->num_attention_heads;
    int nl = clip_layers_needed(c, feature_layer);
    float eps = (float)c->layer_norm_eps;
    CHECK_GOTO(nl >= 0 && nl <= c->num_hidden_layers && n_images > 0 && c->num_channels == 3, LLAVA_EINVAL,
               "clip_forward: bad feature layer %d or %d images", feature_layer, n_images);
    size_t RC = (size_t)R * C;
    float *h = scratch, *ln = h + RC, *q = ln + RC, *k = q + RC, *v = k + RC, *att = v + RC, *big = att + RC;
    /* Embeddings: patches through the conv weight into ln (as [n, NP, C]), then [CLS; patches] + positions. */
    patch_im2col(big, pixels, n_images, S, P);
    matmul_forward(ln, big, m->patch_w, NULL, n_images * NP, 3 * P * P, C);
    for (int i = 0; i < n_images; i++) {
        float *x = h + (size_t)i * L * C;
        memcpy(x, m->class_emb, (size_t)C * sizeof(float));
        memcpy(x + C, ln + (size_t)i * NP * C, (size_t)NP * C * sizeof(float));
        add_inplace(x, m->pos_emb, (long)L * C);
    }
    layernorm_forward(ln, NULL, NULL, h, m->pre_w, m->pre_b, R, C, eps);
    memcpy(h, ln, RC * sizeof(float));
    for (int l = 0; l < nl; l++) {
        const clip_layer_t *B = &m->layers[l];
        layernorm_forward(ln, NULL, NULL, h, B->ln1_w, B->ln1_b, R, C, eps);
        matmul_forward(q, ln, B->q_w, B->q_b, R, C, C);
        matmul_forward(k, ln, B->k_w, B->k_b, R, C, C);
        matmul_forward(v, ln, B->v_w, B->v_b, R, C, C);
        RC_CHECK_GOTO(attention_forward(att, NULL, q, k, v, NULL, n_images, L, NH, NH, C / NH, 0));
        matmul_forward(q, att, B->o_w, B->o_b, R, C, C);
        add_inplace(h, q, (long)RC);
        layernorm_forward(ln, NULL, NULL, h, B->ln2_w, B->ln2_b, R, C, eps);
        matmul_forward(big, ln, B->fc1_w, B->fc1_b, R, C, I);
        act_forward(c->hidden_act, big, (long)R * I);
        matmul_forward(q, big, B->fc2_w, B->fc2_b, R, I, C);
        add_inplace(h, q, (long)RC);
    }
    if (keep_cls) {
        memcpy(out, h, RC * sizeof(float));
    } else {
        for (int i = 0; i < n_images; i++)
            memcpy(out + (size_t)i * NP * C, h + ((size_t)i * L + 1) * C, (size_t)NP * C * sizeof(float));
    }
cleanup:
    return rc;
}
