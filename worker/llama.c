/* LLaMA decoder forward/backward on the CPU ops; see llama.h. Tested by tests/unit/test_model_parity.c. */
#include "worker/llama.h"

#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "kernels/cpu/ops.h"
#include "worker/modelutil.h"

static int head_dim(const llama_config_t *c) {
    return c->head_dim > 0 ? c->head_dim : c->hidden_size / c->num_attention_heads;
}

int llama_params_plan(arena_t *a, const llama_config_t *c) {
    int rc = 0;
    int64_t C = c->hidden_size, I = c->intermediate_size, V = c->vocab_size, HS = head_dim(c);
    int64_t QD = c->num_attention_heads * HS, KD = c->num_key_value_heads * HS;
    char n[TENSOR_NAME_MAX];
#define ADD(pre, name, d0, d1)                                                                       \
    do {                                                                                             \
        int r_ = mu_add(a, (pre), (name), (d0), (d1), 0, 0);                                         \
        CHECK_GOTO(r_ >= 0, r_, "cannot plan tensor %s%s", (pre), (name));                           \
    } while (0)
    ADD(LLAMA_PREFIX, "embed_tokens.weight", V, C);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        struct { const char *name; int64_t d0, d1; } t[] = {
            {"input_layernorm.weight", C, 0},   {"self_attn.q_proj.weight", QD, C},
            {"self_attn.k_proj.weight", KD, C}, {"self_attn.v_proj.weight", KD, C},
            {"self_attn.o_proj.weight", C, QD}, {"post_attention_layernorm.weight", C, 0},
            {"mlp.gate_proj.weight", I, C},     {"mlp.up_proj.weight", I, C},
            {"mlp.down_proj.weight", C, I}};
        for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
            snprintf(n, sizeof n, "layers.%d.%s", l, t[i].name);
            ADD(LLAMA_PREFIX, n, t[i].d0, t[i].d1);
        }
    }
    ADD(LLAMA_PREFIX, "norm.weight", C, 0);
    if (!c->tie_word_embeddings) ADD("", LLAMA_HEAD_NAME, V, C);
#undef ADD
cleanup:
    return rc;
}

int llama_bind(llama_t *m, arena_t *a, const llama_config_t *c) {
    int rc = 0;
    memset(m, 0, sizeof *m);
    m->cfg = *c;
    m->embed = mu_get(a, LLAMA_PREFIX, "embed_tokens.weight");
    m->norm_w = mu_get(a, LLAMA_PREFIX, "norm.weight");
    m->lm_head = c->tie_word_embeddings ? m->embed : mu_get(a, "", LLAMA_HEAD_NAME);
    m->layers = calloc((size_t)c->num_hidden_layers, sizeof *m->layers);
    ALLOC_CHECK_GOTO(m->layers);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        llama_layer_t *L = &m->layers[l];
        char p[64];
        snprintf(p, sizeof p, LLAMA_PREFIX "layers.%d.", l);
        L->ln1_w = mu_get(a, p, "input_layernorm.weight");
        L->q_w = mu_get(a, p, "self_attn.q_proj.weight");
        L->k_w = mu_get(a, p, "self_attn.k_proj.weight");
        L->v_w = mu_get(a, p, "self_attn.v_proj.weight");
        L->o_w = mu_get(a, p, "self_attn.o_proj.weight");
        L->ln2_w = mu_get(a, p, "post_attention_layernorm.weight");
        L->gate_w = mu_get(a, p, "mlp.gate_proj.weight");
        L->up_w = mu_get(a, p, "mlp.up_proj.weight");
        L->down_w = mu_get(a, p, "mlp.down_proj.weight");
    }
cleanup:
    return rc;
}

void llama_release(llama_t *m) {
    free(m->layers);
    m->layers = NULL;
}

void llama_init_random(llama_t *m, uint64_t *rng) {
    const llama_config_t *c = &m->cfg;
    int64_t C = c->hidden_size, I = c->intermediate_size, V = c->vocab_size, HS = head_dim(c);
    int64_t QD = c->num_attention_heads * HS, KD = c->num_key_value_heads * HS;
    double sd = c->initializer_range;
    mu_normal(m->embed, V * C, sd, rng);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        llama_layer_t *L = &m->layers[l];
        mu_fill(L->ln1_w, C, 1.0f);
        mu_fill(L->ln2_w, C, 1.0f);
        mu_normal(L->q_w, QD * C, sd, rng);
        mu_normal(L->k_w, KD * C, sd, rng);
        mu_normal(L->v_w, KD * C, sd, rng);
        mu_normal(L->o_w, C * QD, sd, rng);
        mu_normal(L->gate_w, I * C, sd, rng);
        mu_normal(L->up_w, I * C, sd, rng);
        mu_normal(L->down_w, C * I, sd, rng);
    }
    mu_fill(m->norm_w, C, 1.0f);
    if (!c->tie_word_embeddings) mu_normal(m->lm_head, V * C, sd, rng);
}

int llama_acts_plan(arena_t *a, const llama_config_t *c, int B, int T, int64_t probs_per_layer) {
    int rc = 0;
    int64_t N = (int64_t)B * T, L = c->num_hidden_layers, C = c->hidden_size, I = c->intermediate_size;
    int64_t HS = head_dim(c), QD = c->num_attention_heads * HS, KD = c->num_key_value_heads * HS;
    int64_t W = C > I ? C : I;
    if (QD > W) W = QD;
    struct { const char *name; int64_t n; } t[] = {
        {"resid", (L + 1) * N * C}, {"resid_mid", L * N * C}, {"ln1", L * N * C}, {"ln2", L * N * C},
        {"rstd1", L * N}, {"rstd2", L * N}, {"q", L * N * QD}, {"att", L * N * QD}, {"k", L * N * KD},
        {"v", L * N * KD}, {"gate", L * N * I}, {"up", L * N * I}, {"sw", L * N * I}, {"lnf", N * C},
        {"rstdf", N}, {"logits", N * c->vocab_size}, {"lnsel", N * C}, {"tmp", N * W}, {"d1", N * C}, {"d2", N * C},
        {"dq", N * QD}, {"dq2", N * QD}, {"dk", N * KD}, {"dk2", N * KD}, {"dv", N * KD}, {"dgate", N * I},
        {"dup", N * I}, {"dsw", N * I}, {"probs", L * probs_per_layer + 1}};
    for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
        int r = mu_add(a, "llama.", t[i].name, t[i].n, 0, 0, 0);
        CHECK_GOTO(r >= 0, r, "cannot plan activation llama.%s", t[i].name);
    }
cleanup:
    return rc;
}

void llama_acts_bind(llama_acts_t *s, arena_t *a, const llama_config_t *c, int B, int T) {
    s->B = B;
    s->T = T;
    tensor_t *pt = arena_get(a, "llama.probs");
    s->probs_cap = pt ? (tensor_numel(pt) - 1) / c->num_hidden_layers : 0;
#define G(f) s->f = mu_get(a, "llama.", #f)
    G(resid); G(resid_mid); G(ln1); G(ln2); G(rstd1); G(rstd2); G(q); G(att); G(k); G(v); G(gate); G(up); G(sw);
    G(lnf); G(rstdf); G(logits); G(lnsel); G(tmp); G(d1); G(d2); G(dq); G(dq2); G(dk); G(dk2); G(dv); G(dgate); G(dup);
    G(dsw); G(probs);
#undef G
    if ((int64_t)B * c->num_attention_heads * T * T > s->probs_cap || s->probs_cap == 0) s->probs = NULL;
}

int llama_forward(const llama_t *m, llama_acts_t *s, const int32_t *lengths, const int32_t *rows, int n_rows) {
    int rc = 0;
    const llama_config_t *c = &m->cfg;
    int B = s->B, T = s->T, N = B * T, C = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    int NH = c->num_attention_heads, NKV = c->num_key_value_heads, HS = head_dim(c);
    int QD = NH * HS, KD = NKV * HS;
    float eps = (float)c->rms_norm_eps, theta = (float)c->rope_theta;
    size_t NC = (size_t)N * C, NQ = (size_t)N * QD, NK = (size_t)N * KD, NI = (size_t)N * I;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const llama_layer_t *W = &m->layers[l];
        float *x = s->resid + l * NC, *mid = s->resid_mid + l * NC, *ln1 = s->ln1 + l * NC, *ln2 = s->ln2 + l * NC;
        float *q = s->q + l * NQ, *k = s->k + l * NK, *v = s->v + l * NK, *att = s->att + l * NQ;
        float *gate = s->gate + l * NI, *up = s->up + l * NI, *sw = s->sw + l * NI;
        rmsnorm_forward(ln1, s->rstd1 + (size_t)l * N, x, W->ln1_w, N, C, eps);
        matmul_forward(q, ln1, W->q_w, NULL, N, C, QD);
        matmul_forward(k, ln1, W->k_w, NULL, N, C, KD);
        matmul_forward(v, ln1, W->v_w, NULL, N, C, KD);
        rope_forward(q, q, NULL, B, T, NH, HS, theta);
        rope_forward(k, k, NULL, B, T, NKV, HS, theta);
        float *probs = s->probs ? s->probs + (size_t)l * B * NH * T * T : NULL;
        RC_CHECK_GOTO(attention_forward(att, probs, q, k, v, lengths, B, T, NH, NKV, HS, 1));
        matmul_forward(s->tmp, att, W->o_w, NULL, N, QD, C);
        residual_forward(mid, x, s->tmp, (long)NC);
        rmsnorm_forward(ln2, s->rstd2 + (size_t)l * N, mid, W->ln2_w, N, C, eps);
        matmul_forward(gate, ln2, W->gate_w, NULL, N, C, I);
        matmul_forward(up, ln2, W->up_w, NULL, N, C, I);
        swiglu_forward(sw, gate, up, (long)NI);
        matmul_forward(s->tmp, sw, W->down_w, NULL, N, I, C);
        residual_forward(x + NC, mid, s->tmp, (long)NC);
    }
    rmsnorm_forward(s->lnf, s->rstdf, s->resid + (size_t)c->num_hidden_layers * NC, m->norm_w, N, C, eps);
    s->rows = rows;
    s->n_rows = rows ? n_rows : N;
    if (rows) {
        if (n_rows == 0) goto cleanup;
        for (int i = 0; i < n_rows; i++)
            memcpy(s->lnsel + (size_t)i * C, s->lnf + (size_t)rows[i] * C, (size_t)C * sizeof(float));
        matmul_forward(s->logits, s->lnsel, m->lm_head, NULL, n_rows, C, V);
    } else {
        matmul_forward(s->logits, s->lnf, m->lm_head, NULL, N, C, V);
    }
cleanup:
    return rc;
}

#define GP(field) (g ? g->field : NULL)
#define GL(field) (g ? g->layers[l].field : NULL)

int llama_backward(const llama_t *m, const llama_t *g, llama_acts_t *s, const int32_t *lengths, float *dx) {
    int rc = 0;
    const llama_config_t *c = &m->cfg;
    int B = s->B, T = s->T, N = B * T, C = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    int NH = c->num_attention_heads, NKV = c->num_key_value_heads, HS = head_dim(c);
    int QD = NH * HS, KD = NKV * HS, L = c->num_hidden_layers;
    float theta = (float)c->rope_theta;
    size_t NC = (size_t)N * C, NQ = (size_t)N * QD, NK = (size_t)N * KD, NI = (size_t)N * I;
    float *dres = dx, *dln = s->d1;
    /* Head and final norm. dlogits is in s->logits. */
    memset(dln, 0, NC * sizeof(float));
    if (s->rows) {
        float *dsel = s->d2;
        memset(dsel, 0, (size_t)s->n_rows * C * sizeof(float));
        matmul_backward(dsel, GP(lm_head), NULL, s->logits, s->lnsel, m->lm_head, s->n_rows, C, V);
        for (int i = 0; i < s->n_rows; i++)
            memcpy(dln + (size_t)s->rows[i] * C, dsel + (size_t)i * C, (size_t)C * sizeof(float));
    } else {
        matmul_backward(dln, GP(lm_head), NULL, s->logits, s->lnf, m->lm_head, N, C, V);
    }
    memset(dres, 0, NC * sizeof(float));
    rmsnorm_backward(dres, GP(norm_w), dln, s->resid + (size_t)L * NC, m->norm_w, s->rstdf, N, C);
    for (int l = L - 1; l >= 0; l--) {
        const llama_layer_t *W = &m->layers[l];
        float *x = s->resid + l * NC, *mid = s->resid_mid + l * NC, *ln1 = s->ln1 + l * NC, *ln2 = s->ln2 + l * NC;
        float *q = s->q + l * NQ, *k = s->k + l * NK, *v = s->v + l * NK, *att = s->att + l * NQ;
        float *gate = s->gate + l * NI, *up = s->up + l * NI, *sw = s->sw + l * NI;
        /* MLP: dres is d(resid[l+1]); afterwards d(resid_mid). */
        memset(s->dsw, 0, NI * sizeof(float));
        matmul_backward(s->dsw, GL(down_w), NULL, dres, sw, W->down_w, N, I, C);
        memset(s->dgate, 0, NI * sizeof(float));
        memset(s->dup, 0, NI * sizeof(float));
        swiglu_backward(s->dgate, s->dup, s->dsw, gate, up, (long)NI);
        memset(dln, 0, NC * sizeof(float));
        matmul_backward(dln, GL(gate_w), NULL, s->dgate, ln2, W->gate_w, N, C, I);
        matmul_backward(dln, GL(up_w), NULL, s->dup, ln2, W->up_w, N, C, I);
        rmsnorm_backward(dres, GL(ln2_w), dln, mid, W->ln2_w, s->rstd2 + (size_t)l * N, N, C);
        /* Attention: afterwards dres is d(resid[l]). */
        memset(s->tmp, 0, NQ * sizeof(float));
        matmul_backward(s->tmp, GL(o_w), NULL, dres, att, W->o_w, N, QD, C);
        memset(s->dq, 0, NQ * sizeof(float));
        memset(s->dk, 0, NK * sizeof(float));
        memset(s->dv, 0, NK * sizeof(float));
        const float *probs = s->probs ? s->probs + (size_t)l * B * NH * T * T : NULL;
        RC_CHECK_GOTO(attention_backward(s->dq, s->dk, s->dv, s->tmp, probs, q, k, v, lengths, B, T, NH, NKV, HS, 1));
        memset(s->dq2, 0, NQ * sizeof(float));
        memset(s->dk2, 0, NK * sizeof(float));
        rope_backward(s->dq2, s->dq, NULL, B, T, NH, HS, theta);
        rope_backward(s->dk2, s->dk, NULL, B, T, NKV, HS, theta);
        memset(dln, 0, NC * sizeof(float));
        matmul_backward(dln, GL(q_w), NULL, s->dq2, ln1, W->q_w, N, C, QD);
        matmul_backward(dln, GL(k_w), NULL, s->dk2, ln1, W->k_w, N, C, KD);
        matmul_backward(dln, GL(v_w), NULL, s->dv, ln1, W->v_w, N, C, KD);
        rmsnorm_backward(dres, GL(ln1_w), dln, x, W->ln1_w, s->rstd1 + (size_t)l * N, N, C);
    }
cleanup:
    return rc;
}
