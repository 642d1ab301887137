/* LLaVA forward/backward/AdamW on one GPU from the CUDA ops; see model_cuda.h. Mirrors clip.c, projector.c,
 * llama.c and model_llava.c step by step (same op order, same saved tensors, same row selection for the loss).
 * Tested by tests/cuda/test_model_cuda.c against the transformers fixtures of tests/unit/test_model_parity.c. */
#include "worker/model_cuda.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/cuda_check.h"

#define MAX_ACTS 96
#define STAGE_FLOATS ((size_t)1 << 22) /* 16 MiB of fp32 staging for bf16 uploads and downloads */
/* Elements after the weight and gradient arenas, so that a ZeRO-1 layout padded to shard * world (at most world - 1
 * past the trainable front) stays inside both: the padding all-gathered into the weights is the last rank's copy of
 * the frozen weights that follow the trainable front (the same on every rank), or this slack. */
#define ZERO1_SLACK 4096

typedef struct { /* what one LLaMA layer saves for its backward (one set per layer, or one shared under recompute) */
    void *ln1, *q, *k, *v, *att, *mid, *ln2, *gate, *up, *sw;
    float *rstd1, *rstd2, *lse;
} layer_acts_t;

enum { RB_IDLE, RB_ARMED, RB_LAUNCHED };
#define RB_DEFAULT_BYTES ((size_t)25 << 20) /* PyTorch DDP's default bucket_cap_mb */

struct llava_cuda {
    llava_model_t *m;
    llava_cuda_opts_t o;
    cuda_dtype_t dt;
    size_t dts;
    cudaStream_t s;
    cuda_ctx_t *ctx;
    size_t n_params, n_train;        /* floats of the parameter arena and of the trainable front (gradient arena) */
    void *params;                    /* [n_params] dt */
    float *master;                   /* [n_train] fp32 (bf16 mode), == params in fp32 mode; ZeRO-1: [z.shard] */
    int own_master;                  /* master is its own allocation (not the fp32 weights) */
    void *grads;                     /* [n_train + ZERO1_SLACK] dt (the slack stays zero) */
    void *gsum;                      /* [n_train] dt: the all-reduced sum, out of place (llava_cuda_gsum_device) */
    float *adam_m, *adam_v;          /* [n_train] fp32; ZeRO-1: [z.shard] */
    zero1_layout_t z;                /* ZeRO-1 layout (z.world == 0: not sharded yet) */
    double z_sumsq;                  /* the last llava_cuda_zero1_reduce's squared norm */
    int host_full;                   /* m's trainable weights and moments are the current whole state */
    nccl_bucketer_t *bk;             /* llava_cuda_set_bucketer: the backward marks each gradient tensor ready */
    nccl_bucketer_t *rb;             /* llava_cuda_reduce_early's buckets (grads -> gsum) on rb_comm */
    nccl_comm_t *rb_comm;
    int rb_state;                    /* RB_IDLE, RB_ARMED (the next backward launches), RB_LAUNCHED */
    train_mode_t mode;
    int have_grads;
    float *stage;                    /* [STAGE_FLOATS] fp32 staging (bf16 mode) */
    double *d_f64;                   /* [2]: loss sum, norm^2 */
    int64_t *d_i64;                  /* [1]: target count */
    size_t bytes_fixed;
    /* activations, sized for cap_n rows and cap_images images */
    void *acts[MAX_ACTS];
    int n_acts;
    size_t bytes_acts;
    int64_t cap_n;
    int cap_images;
    int B, T, N, M, R;
    layer_acts_t *la;                /* [L] or [1] */
    void *resid, *lnf, *lnsel, *logits, *tmp, *d1, *d2, *dx, *dq, *dq2, *dk, *dk2, *dv, *dgate, *dup, *dsw;
    float *rstdf, *losses;
    void *feats, *pout, *ppre, *pact, *dpout, *dact, *dpre, *pix;
    void *ch, *cln, *cq, *ck, *cv, *catt, *cbig; /* CLIP scratch */
    int32_t *input_ids, *ids_emb, *ids_bwd, *targets, *rows, *lengths; /* device */
    int32_t *h_ints;                 /* host [4*cap_n]: ids_emb, ids_bwd, targets, rows */
    float *h_logits, *h_feats, *h_pout;
    size_t h_logits_n, h_feats_n, h_pout_n;
};

/* ---------------------------------------------------------------------------------------------------------- */
/* Pointers and transfers                                                                                     */

static void *at(const llava_cuda_t *g, const void *base, size_t elems) {
    return base ? (char *)(uintptr_t)base + elems * g->dts : NULL;
}

/* Device address of a host parameter pointer (same element offset in the device arena). */
static void *dp(const llava_cuda_t *g, const float *host) {
    if (!host) return NULL;
    return at(g, g->params, (size_t)(host - (const float *)arena_data(g->m->params)));
}

/* Device address of a host gradient pointer (NULL when the tensor is frozen). */
static void *dg(const llava_cuda_t *g, const float *host) {
    if (!host) return NULL;
    return at(g, g->grads, (size_t)(host - (const float *)arena_data(g->m->grads)));
}

/* Tells the bucketer (if any) that the gradient of the host tensor `host` (elems floats) is final in this backward:
 * every kernel writing it is enqueued on g->s. Each trainable tensor is marked exactly once per backward; the
 * bucketer refuses a second mark (LLAVA_EINVAL). */
static int ready(llava_cuda_t *g, const float *host, size_t elems) {
    if (!g->bk || !host) return 0;
    return nccl_bucketer_mark_ready(g->bk, (size_t)(host - (const float *)arena_data(g->m->grads)), elems);
}

/* dev[n] (dt) = host[n] (fp32). */
static int to_dev(llava_cuda_t *g, void *dev, const float *host, size_t n) {
    int rc = 0;
    if (g->dt == CUDA_DT_F32) {
        CUDA_CHECK_GOTO(cudaMemcpyAsync(dev, host, n * sizeof(float), cudaMemcpyHostToDevice, g->s));
        CUDA_CHECK_GOTO(cudaStreamSynchronize(g->s));
        return 0;
    }
    for (size_t i = 0; i < n; i += STAGE_FLOATS) {
        size_t k = n - i < STAGE_FLOATS ? n - i : STAGE_FLOATS;
        CUDA_CHECK_GOTO(cudaMemcpyAsync(g->stage, host + i, k * sizeof(float), cudaMemcpyHostToDevice, g->s));
        RC_CHECK_GOTO(cuda_convert(at(g, dev, i), g->dt, g->stage, CUDA_DT_F32, (long)k, g->s));
        CUDA_CHECK_GOTO(cudaStreamSynchronize(g->s));
    }
cleanup:
    return rc;
}

/* host[n] (fp32) = dev[n] (dtype dt). */
static int to_host(llava_cuda_t *g, float *host, const void *dev, cuda_dtype_t dt, size_t n) {
    int rc = 0;
    if (dt == CUDA_DT_F32) {
        CUDA_CHECK_GOTO(cudaMemcpyAsync(host, dev, n * sizeof(float), cudaMemcpyDeviceToHost, g->s));
        CUDA_CHECK_GOTO(cudaStreamSynchronize(g->s));
        return 0;
    }
    for (size_t i = 0; i < n; i += STAGE_FLOATS) {
        size_t k = n - i < STAGE_FLOATS ? n - i : STAGE_FLOATS;
        RC_CHECK_GOTO(cuda_convert(g->stage, CUDA_DT_F32, (const char *)dev + i * 2, dt, (long)k, g->s));
        CUDA_CHECK_GOTO(cudaMemcpyAsync(host + i, g->stage, k * sizeof(float), cudaMemcpyDeviceToHost, g->s));
        CUDA_CHECK_GOTO(cudaStreamSynchronize(g->s));
    }
cleanup:
    return rc;
}

static int zero(llava_cuda_t *g, void *p, size_t elems) {
    int rc = 0;
    CUDA_CHECK_GOTO(cudaMemsetAsync(p, 0, elems * g->dts, g->s));
cleanup:
    return rc;
}

static int dcopy(llava_cuda_t *g, void *dst, const void *src, size_t elems) {
    int rc = 0;
    CUDA_CHECK_GOTO(cudaMemcpyAsync(dst, src, elems * g->dts, cudaMemcpyDeviceToDevice, g->s));
cleanup:
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Construction                                                                                               */

static int head_dim(const llama_config_t *c) {
    return c->head_dim > 0 ? c->head_dim : c->hidden_size / c->num_attention_heads;
}

static void acts_free(llava_cuda_t *g) {
    for (int i = 0; i < g->n_acts; i++) cudaFree(g->acts[i]);
    g->n_acts = 0;
    g->bytes_acts = 0;
    g->cap_n = 0;
    g->cap_images = 0;
    free(g->la);
    g->la = NULL;
    free(g->h_ints);
    g->h_ints = NULL;
}

static void state_free(llava_cuda_t *g) {
    cudaFree(g->adam_m);
    cudaFree(g->adam_v);
    if (g->own_master) cudaFree(g->master);
    g->adam_m = g->adam_v = g->master = NULL;
    g->own_master = 0;
    memset(&g->z, 0, sizeof g->z);
}

static void grads_free(llava_cuda_t *g) {
    llava_cuda_reduce_cancel(g); /* its buckets point into the gradients */
    cudaFree(g->grads);
    cudaFree(g->gsum);
    state_free(g);
    g->grads = g->gsum = NULL;
    g->have_grads = 0;
    g->n_train = 0;
}

void llava_cuda_free(llava_cuda_t **pg) {
    if (!pg || !*pg) return;
    llava_cuda_t *g = *pg;
    if (g->s) cudaStreamSynchronize(g->s);
    acts_free(g);
    grads_free(g);
    cudaFree(g->params);
    cudaFree(g->stage);
    cudaFree(g->d_f64);
    cudaFree(g->d_i64);
    cuda_ctx_free(&g->ctx);
    if (g->s) cudaStreamDestroy(g->s);
    free(g->h_logits);
    free(g->h_feats);
    free(g->h_pout);
    free(g);
    *pg = NULL;
}

int llava_cuda_new(llava_model_t *m, const llava_cuda_opts_t *o, llava_cuda_t **out) {
    int rc = 0;
    llava_cuda_t *g = NULL;
    int ndev = cuda_device_count();
    CHECK_GOTO(ndev > 0, LLAVA_ECUDA, "no CUDA device (cudaGetDeviceCount found none): cannot run cuda:%d",
               o->device);
    CHECK_GOTO(o->device >= 0 && o->device < ndev, LLAVA_ECUDA, "no CUDA device cuda:%d (this machine has %d)",
               o->device, ndev);
    CHECK_GOTO(o->dt == CUDA_DT_F32 || o->dt == CUDA_DT_BF16, LLAVA_EINVAL, "llava_cuda_new: bad dtype %d",
               (int)o->dt);
    CHECK_GOTO(head_dim(&m->cfg.text) <= 128 && m->cfg.vision.hidden_size / m->cfg.vision.num_attention_heads <= 128,
               LLAVA_EUNSUPPORTED, "the CUDA attention supports head_dim <= 128 (text %d, vision %d)",
               head_dim(&m->cfg.text), m->cfg.vision.hidden_size / m->cfg.vision.num_attention_heads);
    g = calloc(1, sizeof *g);
    ALLOC_CHECK_GOTO(g);
    g->m = m;
    g->o = *o;
    g->dt = o->dt;
    g->dts = cuda_dtype_size(o->dt);
    CUDA_CHECK_GOTO(cudaSetDevice(o->device));
    CUDA_CHECK_GOTO(cudaStreamCreateWithFlags(&g->s, cudaStreamNonBlocking));
    RC_CHECK_GOTO(cuda_ctx_new(&g->ctx, 0));
    g->n_params = arena_bytes(m->params) / sizeof(float);
    CUDA_CHECK_GOTO(cudaMalloc(&g->params, (g->n_params + ZERO1_SLACK) * g->dts));
    CUDA_CHECK_GOTO(cudaMemsetAsync(at(g, g->params, g->n_params), 0, ZERO1_SLACK * g->dts, g->s));
    if (g->dt != CUDA_DT_F32) CUDA_CHECK_GOTO(cudaMalloc((void **)&g->stage, STAGE_FLOATS * sizeof(float)));
    CUDA_CHECK_GOTO(cudaMalloc((void **)&g->d_f64, 2 * sizeof(double)));
    CUDA_CHECK_GOTO(cudaMalloc((void **)&g->d_i64, sizeof(int64_t)));
    g->bytes_fixed = g->n_params * g->dts + (g->stage ? STAGE_FLOATS * sizeof(float) : 0);
    RC_CHECK_GOTO(to_dev(g, g->params, arena_data(m->params), g->n_params));
    *out = g;
    g = NULL;
cleanup:
    llava_cuda_free(&g);
    return rc;
}

int llava_cuda_grads_prepare(llava_cuda_t *g, train_mode_t mode) {
    int rc = 0;
    if (g->have_grads && g->mode == mode) return 0;
    grads_free(g);
    RC_CHECK_GOTO(llava_grads_prepare(g->m, mode));
    size_t n = 0;
    llava_grads_data(g->m, &n);
    g->n_train = n;
    CUDA_CHECK_GOTO(cudaMalloc(&g->grads, (n + ZERO1_SLACK) * g->dts));
    CUDA_CHECK_GOTO(cudaMemsetAsync(g->grads, 0, (n + ZERO1_SLACK) * g->dts, g->s));
    if (!g->o.zero1) { /* ZeRO-1: the shard is allocated when the layout is known (llava_cuda_zero1_shard) */
        CUDA_CHECK_GOTO(cudaMalloc((void **)&g->adam_m, n * sizeof(float)));
        CUDA_CHECK_GOTO(cudaMalloc((void **)&g->adam_v, n * sizeof(float)));
        CUDA_CHECK_GOTO(cudaMemsetAsync(g->adam_m, 0, n * sizeof(float), g->s));
        CUDA_CHECK_GOTO(cudaMemsetAsync(g->adam_v, 0, n * sizeof(float), g->s));
        if (g->dt == CUDA_DT_F32) {
            g->master = g->params;
        } else { /* fp32 master weights from the host's fp32 values, not from the rounded bf16 copy */
            CUDA_CHECK_GOTO(cudaMalloc((void **)&g->master, n * sizeof(float)));
            g->own_master = 1;
            CUDA_CHECK_GOTO(cudaMemcpyAsync(g->master, arena_data(g->m->params), n * sizeof(float),
                                            cudaMemcpyHostToDevice, g->s));
        }
    }
    CUDA_CHECK_GOTO(cudaStreamSynchronize(g->s));
    g->m->adam_t = 0;
    g->host_full = 1; /* a fresh optimizer: the host's weights and (absent) zero moments are the state */
    g->mode = mode;
    g->have_grads = 1;
cleanup:
    if (rc) grads_free(g);
    return rc;
}

int llava_cuda_grads_zero(llava_cuda_t *g) {
    return g->have_grads ? zero(g, g->grads, g->n_train + ZERO1_SLACK) : 0;
}

static int dalloc(llava_cuda_t *g, void **p, size_t bytes) {
    int rc = 0;
    CHECK_GOTO(g->n_acts < MAX_ACTS, LLAVA_ENOMEM, "model_cuda: too many activation buffers");
    CUDA_CHECK_GOTO(cudaMalloc(p, bytes ? bytes : 16));
    g->acts[g->n_acts++] = *p;
    g->bytes_acts += bytes;
cleanup:
    return rc;
}

/* Device activations for B x T tokens and n_images images (grown, never shrunk). */
static int acts_ensure(llava_cuda_t *g, int B, int T, int n_images) {
    int rc = 0;
    const llava_model_t *m = g->m;
    const llama_config_t *c = &m->cfg.text;
    const clip_vision_config_t *vc = &m->cfg.vision;
    int64_t N = (int64_t)B * T;
    g->B = B;
    g->T = T;
    g->N = (int)N;
    if (g->la && N <= g->cap_n && n_images <= g->cap_images) return 0;
    int64_t capn = N > g->cap_n ? N : g->cap_n;
    int capi = n_images > g->cap_images ? n_images : g->cap_images;
    acts_free(g);
    size_t ds = g->dts, n = (size_t)capn, C = (size_t)c->hidden_size, I = (size_t)c->intermediate_size;
    size_t HS = (size_t)head_dim(c), QD = (size_t)c->num_attention_heads * HS;
    size_t KD = (size_t)c->num_key_value_heads * HS, V = (size_t)c->vocab_size, L = (size_t)c->num_hidden_layers;
    size_t W = C > I ? C : I;
    if (QD > W) W = QD;
    int sets = g->o.recompute ? 1 : (int)L;
    g->la = calloc((size_t)sets, sizeof *g->la);
    ALLOC_CHECK_GOTO(g->la);
    for (int l = 0; l < sets; l++) {
        layer_acts_t *a = &g->la[l];
        RC_CHECK_GOTO(dalloc(g, &a->ln1, n * C * ds));
        RC_CHECK_GOTO(dalloc(g, &a->q, n * QD * ds));
        RC_CHECK_GOTO(dalloc(g, &a->k, n * KD * ds));
        RC_CHECK_GOTO(dalloc(g, &a->v, n * KD * ds));
        RC_CHECK_GOTO(dalloc(g, &a->att, n * QD * ds));
        RC_CHECK_GOTO(dalloc(g, &a->mid, n * C * ds));
        RC_CHECK_GOTO(dalloc(g, &a->ln2, n * C * ds));
        RC_CHECK_GOTO(dalloc(g, &a->gate, n * I * ds));
        RC_CHECK_GOTO(dalloc(g, &a->up, n * I * ds));
        RC_CHECK_GOTO(dalloc(g, &a->sw, n * I * ds));
        RC_CHECK_GOTO(dalloc(g, (void **)&a->rstd1, n * sizeof(float)));
        RC_CHECK_GOTO(dalloc(g, (void **)&a->rstd2, n * sizeof(float)));
        RC_CHECK_GOTO(dalloc(g, (void **)&a->lse, n * (size_t)c->num_attention_heads * sizeof(float)));
    }
    struct { void **p; size_t bytes; } t[] = {
        {&g->resid, (L + 1) * n * C * ds}, {&g->lnf, n * C * ds}, {&g->lnsel, n * C * ds}, {&g->logits, n * V * ds},
        {&g->tmp, n * W * ds}, {&g->d1, n * C * ds}, {&g->d2, n * C * ds}, {&g->dx, n * C * ds},
        {&g->dq, n * QD * ds}, {&g->dq2, n * QD * ds}, {&g->dk, n * KD * ds}, {&g->dk2, n * KD * ds},
        {&g->dv, n * KD * ds}, {&g->dgate, n * I * ds}, {&g->dup, n * I * ds}, {&g->dsw, n * I * ds},
        {(void **)&g->rstdf, n * sizeof(float)}, {(void **)&g->losses, n * sizeof(float)},
        {(void **)&g->input_ids, n * 4}, {(void **)&g->ids_emb, n * 4}, {(void **)&g->ids_bwd, n * 4},
        {(void **)&g->targets, n * 4}, {(void **)&g->rows, n * 4}, {(void **)&g->lengths, n * 4}};
    for (size_t i = 0; i < sizeof t / sizeof *t; i++) RC_CHECK_GOTO(dalloc(g, t[i].p, t[i].bytes));
    if (capi > 0) {
        size_t Mx = (size_t)capi * (size_t)m->feat_rows, Cv = (size_t)vc->hidden_size, H = C;
        size_t Lc = (size_t)m->clip.n_patches + 1, R = (size_t)capi * Lc, Iv = (size_t)vc->intermediate_size;
        size_t PP = (size_t)(vc->num_channels * vc->patch_size * vc->patch_size);
        size_t col = (size_t)capi * (Lc - 1) * PP, big = col > R * Iv ? col : R * Iv;
        size_t S = (size_t)vc->image_size;
        struct { void **p; size_t bytes; } u[] = {
            {&g->feats, Mx * Cv * ds}, {&g->pout, Mx * H * ds}, {&g->ppre, Mx * H * ds}, {&g->pact, Mx * H * ds},
            {&g->dpout, Mx * H * ds}, {&g->dact, Mx * H * ds}, {&g->dpre, Mx * H * ds},
            {&g->pix, (size_t)capi * 3 * S * S * ds}, {&g->ch, R * Cv * ds}, {&g->cln, R * Cv * ds},
            {&g->cq, R * Cv * ds}, {&g->ck, R * Cv * ds}, {&g->cv, R * Cv * ds}, {&g->catt, R * Cv * ds},
            {&g->cbig, big * ds}};
        for (size_t i = 0; i < sizeof u / sizeof *u; i++) RC_CHECK_GOTO(dalloc(g, u[i].p, u[i].bytes));
    }
    g->h_ints = malloc(4 * n * sizeof(int32_t));
    ALLOC_CHECK_GOTO(g->h_ints);
    g->cap_n = capn;
    g->cap_images = capi;
cleanup:
    if (rc) acts_free(g);
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Vision tower and projector                                                                                 */

static int clip_fwd(llava_cuda_t *g, int n_images) {
    int rc = 0;
    const clip_t *mc = &g->m->clip;
    const clip_vision_config_t *c = &mc->cfg;
    cuda_dtype_t dt = g->dt;
    cudaStream_t s = g->s;
    int C = c->hidden_size, I = c->intermediate_size, P = c->patch_size, S = c->image_size;
    int NP = mc->n_patches, L = NP + 1, R = n_images * L, NH = c->num_attention_heads;
    int nl = clip_layers_needed(c, g->m->cfg.vision_feature_layer);
    int gelu = strcmp(c->hidden_act, "gelu") == 0;
    float eps = (float)c->layer_norm_eps;
    size_t RC = (size_t)R * C;
    RC_CHECK_GOTO(cuda_patch_im2col(g->cbig, g->pix, n_images, S, P, dt, s));
    RC_CHECK_GOTO(cuda_matmul_forward(g->ctx, g->cln, g->cbig, dp(g, mc->patch_w), NULL, n_images * NP, 3 * P * P, C,
                                      dt, s));
    for (int i = 0; i < n_images; i++) {
        void *x = at(g, g->ch, (size_t)i * L * C);
        RC_CHECK_GOTO(dcopy(g, x, dp(g, mc->class_emb), (size_t)C));
        RC_CHECK_GOTO(dcopy(g, at(g, x, (size_t)C), at(g, g->cln, (size_t)i * NP * C), (size_t)NP * C));
        RC_CHECK_GOTO(cuda_add_inplace(x, dp(g, mc->pos_emb), (long)L * C, dt, s));
    }
    RC_CHECK_GOTO(cuda_layernorm_forward(g->cln, NULL, NULL, g->ch, dp(g, mc->pre_w), dp(g, mc->pre_b), R, C, eps,
                                         dt, s));
    RC_CHECK_GOTO(dcopy(g, g->ch, g->cln, RC));
    for (int l = 0; l < nl; l++) {
        const clip_layer_t *W = &mc->layers[l];
        RC_CHECK_GOTO(cuda_layernorm_forward(g->cln, NULL, NULL, g->ch, dp(g, W->ln1_w), dp(g, W->ln1_b), R, C, eps,
                                             dt, s));
        RC_CHECK_GOTO(cuda_matmul_forward(g->ctx, g->cq, g->cln, dp(g, W->q_w), dp(g, W->q_b), R, C, C, dt, s));
        RC_CHECK_GOTO(cuda_matmul_forward(g->ctx, g->ck, g->cln, dp(g, W->k_w), dp(g, W->k_b), R, C, C, dt, s));
        RC_CHECK_GOTO(cuda_matmul_forward(g->ctx, g->cv, g->cln, dp(g, W->v_w), dp(g, W->v_b), R, C, C, dt, s));
        RC_CHECK_GOTO(cuda_attention_forward(g->catt, NULL, g->cq, g->ck, g->cv, NULL, n_images, L, NH, NH, C / NH, 0,
                                             dt, s));
        RC_CHECK_GOTO(cuda_matmul_forward(g->ctx, g->cq, g->catt, dp(g, W->o_w), dp(g, W->o_b), R, C, C, dt, s));
        RC_CHECK_GOTO(cuda_add_inplace(g->ch, g->cq, (long)RC, dt, s));
        RC_CHECK_GOTO(cuda_layernorm_forward(g->cln, NULL, NULL, g->ch, dp(g, W->ln2_w), dp(g, W->ln2_b), R, C, eps,
                                             dt, s));
        RC_CHECK_GOTO(cuda_matmul_forward(g->ctx, g->cbig, g->cln, dp(g, W->fc1_w), dp(g, W->fc1_b), R, C, I, dt, s));
        if (gelu)
            RC_CHECK_GOTO(cuda_gelu_forward(g->cbig, g->cbig, (long)R * I, dt, s));
        else
            RC_CHECK_GOTO(cuda_quick_gelu_forward(g->cbig, g->cbig, (long)R * I, dt, s));
        RC_CHECK_GOTO(cuda_matmul_forward(g->ctx, g->cq, g->cbig, dp(g, W->fc2_w), dp(g, W->fc2_b), R, I, C, dt, s));
        RC_CHECK_GOTO(cuda_add_inplace(g->ch, g->cq, (long)RC, dt, s));
    }
    if (g->m->feat_rows > NP) {
        RC_CHECK_GOTO(dcopy(g, g->feats, g->ch, RC));
    } else {
        for (int i = 0; i < n_images; i++)
            RC_CHECK_GOTO(dcopy(g, at(g, g->feats, (size_t)i * NP * C), at(g, g->ch, ((size_t)i * L + 1) * C),
                                (size_t)NP * C));
    }
cleanup:
    return rc;
}

static int proj_fwd(llava_cuda_t *g, int M) {
    int rc = 0;
    const projector_t *p = &g->m->proj;
    if (p->type == PROJ_LINEAR)
        return cuda_matmul_forward(g->ctx, g->pout, g->feats, dp(g, p->w1), dp(g, p->b1), M, p->Cv, p->H, g->dt, g->s);
    RC_CHECK_GOTO(cuda_matmul_forward(g->ctx, g->ppre, g->feats, dp(g, p->w1), dp(g, p->b1), M, p->Cv, p->H, g->dt,
                                      g->s));
    RC_CHECK_GOTO(cuda_gelu_forward(g->pact, g->ppre, (long)M * p->H, g->dt, g->s));
    RC_CHECK_GOTO(cuda_matmul_forward(g->ctx, g->pout, g->pact, dp(g, p->w2), dp(g, p->b2), M, p->H, p->H, g->dt,
                                      g->s));
cleanup:
    return rc;
}

static int proj_bwd(llava_cuda_t *g, int M) {
    int rc = 0;
    const projector_t *p = &g->m->proj, *gp = &g->m->gproj;
    size_t MH = (size_t)M * p->H;
    if (p->type == PROJ_LINEAR) {
        RC_CHECK_GOTO(cuda_matmul_backward(g->ctx, NULL, dg(g, gp->w1), dg(g, gp->b1), g->dpout, g->feats,
                                           dp(g, p->w1), M, p->Cv, p->H, g->dt, g->s));
        goto mark1;
    }
    RC_CHECK_GOTO(zero(g, g->dact, MH));
    RC_CHECK_GOTO(zero(g, g->dpre, MH));
    RC_CHECK_GOTO(cuda_matmul_backward(g->ctx, g->dact, dg(g, gp->w2), dg(g, gp->b2), g->dpout, g->pact, dp(g, p->w2),
                                       M, p->H, p->H, g->dt, g->s));
    RC_CHECK_GOTO(ready(g, gp->w2, (size_t)p->H * p->H));
    RC_CHECK_GOTO(ready(g, gp->b2, (size_t)p->H));
    RC_CHECK_GOTO(cuda_gelu_backward(g->dpre, g->ppre, g->dact, (long)MH, g->dt, g->s));
    RC_CHECK_GOTO(cuda_matmul_backward(g->ctx, NULL, dg(g, gp->w1), dg(g, gp->b1), g->dpre, g->feats, dp(g, p->w1), M,
                                       p->Cv, p->H, g->dt, g->s));
mark1:
    RC_CHECK_GOTO(ready(g, gp->w1, (size_t)p->H * p->Cv));
    RC_CHECK_GOTO(ready(g, gp->b1, (size_t)p->H));
cleanup:
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* LLaMA                                                                                                      */

static layer_acts_t *lacts(llava_cuda_t *g, int l) { return &g->la[g->o.recompute ? 0 : l]; }

static int layer_fwd(llava_cuda_t *g, int l) {
    int rc = 0;
    const llama_config_t *c = &g->m->cfg.text;
    const llama_layer_t *W = &g->m->llm.layers[l];
    layer_acts_t *a = lacts(g, l);
    cuda_dtype_t dt = g->dt;
    cudaStream_t s = g->s;
    int B = g->B, T = g->T, N = g->N, C = c->hidden_size, I = c->intermediate_size;
    int NH = c->num_attention_heads, NKV = c->num_key_value_heads, HS = head_dim(c), QD = NH * HS, KD = NKV * HS;
    float eps = (float)c->rms_norm_eps, theta = (float)c->rope_theta;
    size_t NC = (size_t)N * C;
    void *x = at(g, g->resid, (size_t)l * NC), *xn = at(g, g->resid, (size_t)(l + 1) * NC);
    RC_CHECK_GOTO(cuda_rmsnorm_forward(a->ln1, a->rstd1, x, dp(g, W->ln1_w), N, C, eps, dt, s));
    RC_CHECK_GOTO(cuda_matmul_forward(g->ctx, a->q, a->ln1, dp(g, W->q_w), NULL, N, C, QD, dt, s));
    RC_CHECK_GOTO(cuda_matmul_forward(g->ctx, a->k, a->ln1, dp(g, W->k_w), NULL, N, C, KD, dt, s));
    RC_CHECK_GOTO(cuda_matmul_forward(g->ctx, a->v, a->ln1, dp(g, W->v_w), NULL, N, C, KD, dt, s));
    RC_CHECK_GOTO(cuda_rope_forward(a->q, a->q, NULL, B, T, NH, HS, theta, dt, s));
    RC_CHECK_GOTO(cuda_rope_forward(a->k, a->k, NULL, B, T, NKV, HS, theta, dt, s));
    RC_CHECK_GOTO(cuda_attention_forward(a->att, a->lse, a->q, a->k, a->v, g->lengths, B, T, NH, NKV, HS, 1, dt, s));
    RC_CHECK_GOTO(cuda_matmul_forward(g->ctx, g->tmp, a->att, dp(g, W->o_w), NULL, N, QD, C, dt, s));
    RC_CHECK_GOTO(cuda_residual_forward(a->mid, x, g->tmp, (long)NC, dt, s));
    RC_CHECK_GOTO(cuda_rmsnorm_forward(a->ln2, a->rstd2, a->mid, dp(g, W->ln2_w), N, C, eps, dt, s));
    RC_CHECK_GOTO(cuda_matmul_forward(g->ctx, a->gate, a->ln2, dp(g, W->gate_w), NULL, N, C, I, dt, s));
    RC_CHECK_GOTO(cuda_matmul_forward(g->ctx, a->up, a->ln2, dp(g, W->up_w), NULL, N, C, I, dt, s));
    RC_CHECK_GOTO(cuda_swiglu_forward(a->sw, a->gate, a->up, (long)N * I, dt, s));
    RC_CHECK_GOTO(cuda_matmul_forward(g->ctx, g->tmp, a->sw, dp(g, W->down_w), NULL, N, I, C, dt, s));
    RC_CHECK_GOTO(cuda_residual_forward(xn, a->mid, g->tmp, (long)NC, dt, s));
cleanup:
    return rc;
}

/* Decoder on resid[0] up to the logits of all rows (R = N) or of the R rows in g->rows. */
static int llama_fwd(llava_cuda_t *g, int use_rows) {
    int rc = 0;
    const llama_config_t *c = &g->m->cfg.text;
    int N = g->N, C = c->hidden_size, V = c->vocab_size, L = c->num_hidden_layers;
    for (int l = 0; l < L; l++) RC_CHECK_GOTO(layer_fwd(g, l));
    RC_CHECK_GOTO(cuda_rmsnorm_forward(g->lnf, g->rstdf, at(g, g->resid, (size_t)L * N * C), dp(g, g->m->llm.norm_w),
                                       N, C, (float)c->rms_norm_eps, g->dt, g->s));
    if (!use_rows) {
        g->R = N;
        RC_CHECK_GOTO(cuda_matmul_forward(g->ctx, g->logits, g->lnf, dp(g, g->m->llm.lm_head), NULL, N, C, V, g->dt,
                                          g->s));
    } else if (g->R > 0) { /* gather the target rows (an embedding lookup with lnf as the table) */
        RC_CHECK_GOTO(cuda_embedding_forward(g->lnsel, g->rows, g->lnf, g->R, C, g->dt, g->s));
        RC_CHECK_GOTO(cuda_matmul_forward(g->ctx, g->logits, g->lnsel, dp(g, g->m->llm.lm_head), NULL, g->R, C, V,
                                          g->dt, g->s));
    }
cleanup:
    return rc;
}

/* Backward from dlogits (in g->logits, the R selected rows) to g->dx; LLM weight gradients when train_llm. */
static int llama_bwd(llava_cuda_t *g, int train_llm) {
    int rc = 0;
    const llama_config_t *c = &g->m->cfg.text;
    const llama_t *m = &g->m->llm, *gl = train_llm ? &g->m->gllm : NULL;
    cuda_dtype_t dt = g->dt;
    cudaStream_t s = g->s;
    int B = g->B, T = g->T, N = g->N, C = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    int NH = c->num_attention_heads, NKV = c->num_key_value_heads, HS = head_dim(c), QD = NH * HS, KD = NKV * HS;
    int L = c->num_hidden_layers;
    float theta = (float)c->rope_theta;
    size_t NC = (size_t)N * C, NQ = (size_t)N * QD, NK = (size_t)N * KD, NI = (size_t)N * I;
#define GW(f) (gl ? dg(g, gl->f) : NULL)
#define GLW(f) (gl ? dg(g, gl->layers[l].f) : NULL)
    void *dres = g->dx, *dln = g->d1;
    RC_CHECK_GOTO(zero(g, dln, NC));
    RC_CHECK_GOTO(zero(g, g->d2, (size_t)g->R * C));
    RC_CHECK_GOTO(cuda_matmul_backward(g->ctx, g->d2, GW(lm_head), NULL, g->logits, g->lnsel, dp(g, m->lm_head), g->R,
                                       C, V, dt, s));
    if (gl && gl->lm_head != gl->embed) RC_CHECK_GOTO(ready(g, gl->lm_head, (size_t)V * C)); /* tied: at the end */
    RC_CHECK_GOTO(cuda_embedding_backward(g->ctx, dln, g->d2, g->rows, g->R, C, dt, s)); /* scatter to the rows */
    RC_CHECK_GOTO(zero(g, dres, NC));
    RC_CHECK_GOTO(cuda_rmsnorm_backward(dres, GW(norm_w), dln, at(g, g->resid, (size_t)L * NC), dp(g, m->norm_w),
                                        g->rstdf, N, C, dt, s));
    if (gl) RC_CHECK_GOTO(ready(g, gl->norm_w, (size_t)C));
    for (int l = L - 1; l >= 0; l--) {
        const llama_layer_t *W = &m->layers[l];
        layer_acts_t *a = lacts(g, l);
        void *x = at(g, g->resid, (size_t)l * NC);
        if (g->o.recompute) RC_CHECK_GOTO(layer_fwd(g, l));
        RC_CHECK_GOTO(zero(g, g->dsw, NI));
        RC_CHECK_GOTO(cuda_matmul_backward(g->ctx, g->dsw, GLW(down_w), NULL, dres, a->sw, dp(g, W->down_w), N, I, C,
                                           dt, s));
        RC_CHECK_GOTO(zero(g, g->dgate, NI));
        RC_CHECK_GOTO(zero(g, g->dup, NI));
        RC_CHECK_GOTO(cuda_swiglu_backward(g->dgate, g->dup, g->dsw, a->gate, a->up, (long)NI, dt, s));
        RC_CHECK_GOTO(zero(g, dln, NC));
        RC_CHECK_GOTO(cuda_matmul_backward(g->ctx, dln, GLW(gate_w), NULL, g->dgate, a->ln2, dp(g, W->gate_w), N, C, I,
                                           dt, s));
        RC_CHECK_GOTO(cuda_matmul_backward(g->ctx, dln, GLW(up_w), NULL, g->dup, a->ln2, dp(g, W->up_w), N, C, I, dt,
                                           s));
        RC_CHECK_GOTO(cuda_rmsnorm_backward(dres, GLW(ln2_w), dln, a->mid, dp(g, W->ln2_w), a->rstd2, N, C, dt, s));
        RC_CHECK_GOTO(zero(g, g->tmp, NQ));
        RC_CHECK_GOTO(cuda_matmul_backward(g->ctx, g->tmp, GLW(o_w), NULL, dres, a->att, dp(g, W->o_w), N, QD, C, dt,
                                           s));
        RC_CHECK_GOTO(zero(g, g->dq, NQ));
        RC_CHECK_GOTO(zero(g, g->dk, NK));
        RC_CHECK_GOTO(zero(g, g->dv, NK));
        RC_CHECK_GOTO(cuda_attention_backward(g->ctx, g->dq, g->dk, g->dv, g->tmp, a->att, a->lse, a->q, a->k, a->v,
                                              g->lengths, B, T, NH, NKV, HS, 1, dt, s));
        RC_CHECK_GOTO(zero(g, g->dq2, NQ));
        RC_CHECK_GOTO(zero(g, g->dk2, NK));
        RC_CHECK_GOTO(cuda_rope_backward(g->dq2, g->dq, NULL, B, T, NH, HS, theta, dt, s));
        RC_CHECK_GOTO(cuda_rope_backward(g->dk2, g->dk, NULL, B, T, NKV, HS, theta, dt, s));
        RC_CHECK_GOTO(zero(g, dln, NC));
        RC_CHECK_GOTO(cuda_matmul_backward(g->ctx, dln, GLW(q_w), NULL, g->dq2, a->ln1, dp(g, W->q_w), N, C, QD, dt,
                                           s));
        RC_CHECK_GOTO(cuda_matmul_backward(g->ctx, dln, GLW(k_w), NULL, g->dk2, a->ln1, dp(g, W->k_w), N, C, KD, dt,
                                           s));
        RC_CHECK_GOTO(cuda_matmul_backward(g->ctx, dln, GLW(v_w), NULL, g->dv, a->ln1, dp(g, W->v_w), N, C, KD, dt,
                                           s));
        RC_CHECK_GOTO(cuda_rmsnorm_backward(dres, GLW(ln1_w), dln, x, dp(g, W->ln1_w), a->rstd1, N, C, dt, s));
        if (gl) { /* layer l's weight gradients are final: buckets holding only them and later layers go now */
            const llama_layer_t *G = &gl->layers[l];
            size_t CI = (size_t)C * I;
            RC_CHECK_GOTO(ready(g, G->down_w, CI));
            RC_CHECK_GOTO(ready(g, G->gate_w, CI));
            RC_CHECK_GOTO(ready(g, G->up_w, CI));
            RC_CHECK_GOTO(ready(g, G->ln2_w, (size_t)C));
            RC_CHECK_GOTO(ready(g, G->o_w, (size_t)C * QD));
            RC_CHECK_GOTO(ready(g, G->q_w, (size_t)C * QD));
            RC_CHECK_GOTO(ready(g, G->k_w, (size_t)C * KD));
            RC_CHECK_GOTO(ready(g, G->v_w, (size_t)C * KD));
            RC_CHECK_GOTO(ready(g, G->ln1_w, (size_t)C));
        }
    }
#undef GW
#undef GLW
cleanup:
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* The model                                                                                                  */

/* Uploads the batch and runs up to the logits (all rows, or only rows with a target when use_rows). */
static int forward(llava_cuda_t *g, const batch_t *b, int use_rows) {
    int rc = 0;
    llava_model_t *m = g->m;
    int B = b->B, T = b->T, N = B * T, H = m->cfg.text.hidden_size, V = m->cfg.text.vocab_size;
    int M = b->n_images * m->feat_rows;
    int32_t img = (int32_t)m->cfg.image_token_index;
    RC_CHECK_GOTO(llava_batch_check(m, b));
    RC_CHECK_GOTO(acts_ensure(g, B, T, b->n_images));
    g->M = M;
    size_t cap = (size_t)g->cap_n;
    int32_t *ids_emb = g->h_ints, *ids_bwd = ids_emb + cap, *targets = ids_bwd + cap, *rows = targets + cap;
    for (int r = 0; r < B; r++) {
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)r * T + t;
            int32_t id = b->input_ids[i];
            int valid = id >= 0 && id < V;
            ids_emb[i] = (id == img || !valid) ? 0 : id;
            ids_bwd[i] = (id == img || !valid) ? -1 : id;
            targets[i] = t + 1 < b->lengths[r] ? b->labels[i + 1] : LLAVA_IGNORE_INDEX;
        }
    }
    g->R = N;
    if (use_rows) {
        g->R = 0;
        for (int i = 0; i < N; i++) {
            if (targets[i] == LLAVA_IGNORE_INDEX) continue;
            rows[g->R] = i;
            targets[g->R++] = targets[i];
        }
    }
    cudaStream_t s = g->s;
    CUDA_CHECK_GOTO(cudaMemcpyAsync(g->input_ids, b->input_ids, (size_t)N * 4, cudaMemcpyHostToDevice, s));
    CUDA_CHECK_GOTO(cudaMemcpyAsync(g->ids_emb, ids_emb, (size_t)N * 4, cudaMemcpyHostToDevice, s));
    CUDA_CHECK_GOTO(cudaMemcpyAsync(g->ids_bwd, ids_bwd, (size_t)N * 4, cudaMemcpyHostToDevice, s));
    CUDA_CHECK_GOTO(cudaMemcpyAsync(g->targets, targets, (size_t)N * 4, cudaMemcpyHostToDevice, s));
    CUDA_CHECK_GOTO(cudaMemcpyAsync(g->rows, rows, (size_t)N * 4, cudaMemcpyHostToDevice, s));
    CUDA_CHECK_GOTO(cudaMemcpyAsync(g->lengths, b->lengths, (size_t)B * 4, cudaMemcpyHostToDevice, s));
    CUDA_CHECK_GOTO(cudaStreamSynchronize(s)); /* the host arrays are reused by the next call */
    RC_CHECK_GOTO(cuda_embedding_forward(g->resid, g->ids_emb, dp(g, m->llm.embed), N, H, g->dt, s));
    if (M > 0) {
        size_t np = (size_t)b->n_images * 3 * (size_t)b->image_size * (size_t)b->image_size;
        RC_CHECK_GOTO(to_dev(g, g->pix, b->pixel_values, np));
        RC_CHECK_GOTO(clip_fwd(g, b->n_images));
        RC_CHECK_GOTO(proj_fwd(g, M));
        RC_CHECK_GOTO(cuda_image_scatter_forward(g->ctx, g->resid, g->input_ids, img, g->pout, N, H, M, g->dt, s));
    }
    RC_CHECK_GOTO(llama_fwd(g, use_rows));
cleanup:
    return rc;
}

static int grow_host(float **p, size_t *cap, size_t n) {
    if (n <= *cap) return 0;
    float *q = realloc(*p, n * sizeof(float));
    if (!q) return LLAVA_ENOMEM;
    *p = q;
    *cap = n;
    return 0;
}

int llava_cuda_forward_logits(llava_cuda_t *g, const batch_t *b, llava_cuda_fwd_t *out) {
    int rc = 0;
    RC_CHECK_GOTO(forward(g, b, 0));
    size_t nl = (size_t)g->N * (size_t)g->m->cfg.text.vocab_size;
    size_t nf = (size_t)g->M * (size_t)g->m->cfg.vision.hidden_size, np = (size_t)g->M * g->m->cfg.text.hidden_size;
    RC_CHECK_GOTO(grow_host(&g->h_logits, &g->h_logits_n, nl));
    RC_CHECK_GOTO(to_host(g, g->h_logits, g->logits, g->dt, nl));
    memset(out, 0, sizeof *out);
    out->logits = g->h_logits;
    if (g->M > 0) {
        RC_CHECK_GOTO(grow_host(&g->h_feats, &g->h_feats_n, nf));
        RC_CHECK_GOTO(grow_host(&g->h_pout, &g->h_pout_n, np));
        RC_CHECK_GOTO(to_host(g, g->h_feats, g->feats, g->dt, nf));
        RC_CHECK_GOTO(to_host(g, g->h_pout, g->pout, g->dt, np));
        out->feats = g->h_feats;
        out->pout = g->h_pout;
    }
cleanup:
    return rc;
}

int llava_cuda_forward_backward(llava_cuda_t *g, const batch_t *b, train_mode_t mode, double *loss_sum,
                                int64_t *n_targets, int accumulate) {
    int rc = 0;
    double ls = 0;
    int64_t nt = 0;
    cudaStream_t s = g->s;
    RC_CHECK_GOTO(llava_cuda_grads_prepare(g, mode));
    if (!accumulate) RC_CHECK_GOTO(llava_cuda_grads_zero(g));
    RC_CHECK_GOTO(forward(g, b, 1));
    int N = g->N, H = g->m->cfg.text.hidden_size, V = g->m->cfg.text.vocab_size, M = g->M, R = g->R;
    if (R > 0) {
        RC_CHECK_GOTO(cuda_crossentropy_forward(g->losses, g->logits, g->targets, R, V, g->d_f64, g->d_i64, g->dt, s));
        RC_CHECK_GOTO(cuda_crossentropy_backward(g->logits, g->logits, g->targets, R, V, 1.0f, g->dt, s));
        CUDA_CHECK_GOTO(cudaMemcpyAsync(&ls, g->d_f64, sizeof ls, cudaMemcpyDeviceToHost, s));
        CUDA_CHECK_GOTO(cudaMemcpyAsync(&nt, g->d_i64, sizeof nt, cudaMemcpyDeviceToHost, s));
    }
    if ((mode == TRAIN_PROJECTOR && M == 0) || R == 0) goto done;
    RC_CHECK_GOTO(llama_bwd(g, mode == TRAIN_ALL));
    if (mode == TRAIN_ALL) {
        RC_CHECK_GOTO(cuda_embedding_backward(g->ctx, dg(g, g->m->gllm.embed), g->dx, g->ids_bwd, N, H, g->dt, s));
        RC_CHECK_GOTO(ready(g, g->m->gllm.embed, (size_t)V * H));
    }
    if (M > 0) {
        RC_CHECK_GOTO(cuda_image_scatter_backward(g->ctx, g->dpout, g->dx, g->input_ids,
                                                  (int32_t)g->m->cfg.image_token_index, N, H, M, g->dt, s));
        RC_CHECK_GOTO(proj_bwd(g, M));
    }
done:
    CUDA_CHECK_GOTO(cudaStreamSynchronize(s));
    if (loss_sum) *loss_sum = ls;
    if (n_targets) *n_targets = nt;
cleanup:
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Gradients, optimiser, state                                                                                */

float *llava_cuda_grads_download(llava_cuda_t *g, size_t *n) {
    size_t k = 0;
    float *h = llava_grads_data(g->m, &k);
    if (!g->have_grads || !h || k != g->n_train) return NULL;
    if (to_host(g, h, g->grads, g->dt, k) != 0) return NULL;
    if (n) *n = k;
    return h;
}

int llava_cuda_grads_upload(llava_cuda_t *g, const float *host, size_t n) {
    int rc = 0;
    CHECK_GOTO(g->have_grads && n == g->n_train, LLAVA_EINVAL, "grads_upload: %zu floats, the model has %zu", n,
               g->n_train);
    RC_CHECK_GOTO(to_dev(g, g->grads, host, n));
cleanup:
    return rc;
}

/* Clip and AdamW with the gradients in src (the accumulated ones, or the all-reduced sum); zeroes the accumulator. */
static int adamw_from(llava_cuda_t *g, const void *src, const adamw_opts_t *o, double scale, double *grad_norm) {
    int rc = 0;
    double nsq = 0;
    CHECK_GOTO(g->have_grads && src, LLAVA_EINVAL, "llava_cuda_adamw_step: no gradients (run a backward first)");
    CHECK_GOTO(!g->o.zero1, LLAVA_EINVAL, "llava_cuda_adamw_step: a ZeRO-1 model steps with llava_cuda_zero1_apply");
    RC_CHECK_GOTO(cuda_global_norm_sq(g->ctx, g->d_f64 + 1, src, (long)g->n_train, 0, g->dt, g->s));
    CUDA_CHECK_GOTO(cudaMemcpyAsync(&nsq, g->d_f64 + 1, sizeof nsq, cudaMemcpyDeviceToHost, g->s));
    CUDA_CHECK_GOTO(cudaStreamSynchronize(g->s));
    double norm = sqrt(nsq) * fabs(scale); /* the norm of the scaled gradients, as the CPU step computes it */
    if (grad_norm) *grad_norm = norm;
    float coef = o->max_grad_norm > 0 ? clip_grad_coef(norm, (float)o->max_grad_norm) : 1.0f;
    g->m->adam_t++;
    RC_CHECK_GOTO(cuda_adamw_update(g->master, g->dt == CUDA_DT_F32 ? NULL : g->params, g->dt, src, g->dt,
                                    g->adam_m, g->adam_v, (long)g->n_train, o->lr, o->beta1, o->beta2, o->eps,
                                    o->weight_decay, g->m->adam_t, (float)(scale * coef), g->s));
    RC_CHECK_GOTO(llava_cuda_grads_zero(g));
    CUDA_CHECK_GOTO(cudaStreamSynchronize(g->s));
    g->host_full = 0;
cleanup:
    return rc;
}

int llava_cuda_adamw_step(llava_cuda_t *g, const adamw_opts_t *o, double scale, double *grad_norm) {
    return adamw_from(g, g->grads, o, scale, grad_norm);
}

int llava_cuda_adamw_step_sum(llava_cuda_t *g, const adamw_opts_t *o, double scale, double *grad_norm) {
    return adamw_from(g, g->gsum, o, scale, grad_norm);
}

int llava_cuda_state_download(llava_cuda_t *g) {
    int rc = 0;
    llava_model_t *m = g->m;
    CHECK_GOTO(g->have_grads, LLAVA_EINVAL, "state_download: no training state yet");
    if (g->o.zero1) {
        CHECK_GOTO(g->host_full, LLAVA_ENOTFOUND, "state_download: under ZeRO-1 this rank holds only shard %d of %d "
                   "of the optimizer state; gather it first (llava_cuda_zero1_gather)", g->z.rank, g->z.world);
        return llava_optim_prepare(m); /* the host already holds it (zero moments when it never had any) */
    }
    RC_CHECK_GOTO(llava_optim_prepare(m)); /* host moments only when they are asked for (checkpoint, handover) */
    RC_CHECK_GOTO(to_host(g, arena_data(m->params), g->master, CUDA_DT_F32, g->n_train));
    RC_CHECK_GOTO(to_host(g, arena_data(m->adam_m), g->adam_m, CUDA_DT_F32, g->n_train));
    RC_CHECK_GOTO(to_host(g, arena_data(m->adam_v), g->adam_v, CUDA_DT_F32, g->n_train));
cleanup:
    return rc;
}

int llava_cuda_state_upload(llava_cuda_t *g) {
    int rc = 0;
    llava_model_t *m = g->m;
    CHECK_GOTO(g->have_grads && m->adam_m && m->adam_v, LLAVA_EINVAL, "state_upload: prepare the gradients first");
    size_t n = g->n_train;
    if (g->o.zero1) {
        RC_CHECK_GOTO(to_dev(g, g->params, arena_data(m->params), n));
        g->host_full = 1;
        if (g->z.world > 0) { /* re-slice the current layout from the imported state */
            zero1_layout_t z = g->z;
            state_free(g);
            RC_CHECK_GOTO(llava_cuda_zero1_shard(g, z.world, z.rank));
        }
        RC_CHECK_GOTO(llava_cuda_grads_zero(g));
        CUDA_CHECK_GOTO(cudaStreamSynchronize(g->s));
        return 0;
    }
    CUDA_CHECK_GOTO(cudaMemcpyAsync(g->adam_m, arena_data(m->adam_m), n * 4, cudaMemcpyHostToDevice, g->s));
    CUDA_CHECK_GOTO(cudaMemcpyAsync(g->adam_v, arena_data(m->adam_v), n * 4, cudaMemcpyHostToDevice, g->s));
    if (g->master != g->params)
        CUDA_CHECK_GOTO(cudaMemcpyAsync(g->master, arena_data(m->params), n * 4, cudaMemcpyHostToDevice, g->s));
    RC_CHECK_GOTO(to_dev(g, g->params, arena_data(m->params), n));
    RC_CHECK_GOTO(llava_cuda_grads_zero(g));
    CUDA_CHECK_GOTO(cudaStreamSynchronize(g->s));
cleanup:
    return rc;
}

int llava_cuda_grads_device(llava_cuda_t *g, void **dev, size_t *n, cuda_dtype_t *dt) {
    int rc = 0;
    CHECK_GOTO(g->have_grads, LLAVA_EINVAL, "llava_cuda_grads_device: no gradients prepared");
    *dev = g->grads;
    *n = g->n_train;
    *dt = g->dt;
cleanup:
    return rc;
}

static int norm_sq(llava_cuda_t *g, const void *buf, double *out) {
    int rc = 0;
    CHECK_GOTO(g->have_grads && buf, LLAVA_EINVAL, "llava_cuda: norm of gradients that are not there");
    RC_CHECK_GOTO(cuda_global_norm_sq(g->ctx, g->d_f64 + 1, buf, (long)g->n_train, 0, g->dt, g->s));
    CUDA_CHECK_GOTO(cudaMemcpyAsync(out, g->d_f64 + 1, sizeof *out, cudaMemcpyDeviceToHost, g->s));
    CUDA_CHECK_GOTO(cudaStreamSynchronize(g->s));
cleanup:
    return rc;
}

int llava_cuda_grads_norm_sq(llava_cuda_t *g, double *out) { return norm_sq(g, g->grads, out); }
int llava_cuda_gsum_norm_sq(llava_cuda_t *g, double *out) { return norm_sq(g, g->gsum, out); }

int llava_cuda_gsum_device(llava_cuda_t *g, void **dev) {
    int rc = 0;
    CHECK_GOTO(g->have_grads, LLAVA_EINVAL, "llava_cuda_gsum_device: no gradients prepared");
    if (!g->gsum) CUDA_CHECK_GOTO(cudaMalloc(&g->gsum, g->n_train * g->dts));
    *dev = g->gsum;
cleanup:
    return rc;
}

int llava_cuda_gsum_download(llava_cuda_t *g, float *host, size_t n) {
    int rc = 0;
    CHECK_GOTO(g->gsum && n == g->n_train, LLAVA_EINVAL, "llava_cuda_gsum_download: %zu floats, the sum has %zu",
               n, g->gsum ? g->n_train : 0);
    RC_CHECK_GOTO(to_host(g, host, g->gsum, g->dt, n));
cleanup:
    return rc;
}

int llava_cuda_weights_download(llava_cuda_t *g, float *host, size_t n) {
    int rc = 0;
    CHECK_GOTO(n <= g->n_params, LLAVA_EINVAL, "weights_download: %zu floats, the model has %zu", n, g->n_params);
    RC_CHECK_GOTO(to_host(g, host, g->params, g->dt, n));
cleanup:
    return rc;
}

int llava_cuda_set_bucketer(llava_cuda_t *g, nccl_bucketer_t *b) {
    int rc = 0;
    CHECK_GOTO(!b || g->have_grads, LLAVA_EINVAL, "llava_cuda_set_bucketer: prepare the gradients first");
    g->bk = b;
cleanup:
    return rc;
}

size_t llava_cuda_bytes(const llava_cuda_t *g) {
    size_t state = g->o.zero1 ? (size_t)g->z.shard : g->n_train;
    size_t train = g->have_grads ? g->n_train * g->dts * (g->gsum ? 2 : 1) + state * (8 + (g->own_master ? 4 : 0))
                                 : 0;
    return g->bytes_fixed + g->bytes_acts + train;
}

cudaStream_t llava_cuda_stream(const llava_cuda_t *g) { return g->s; }

/* ---------------------------------------------------------------------------------------------------------- */
/* ZeRO-1                                                                                                     */

const zero1_layout_t *llava_cuda_zero1_layout(const llava_cuda_t *g) { return &g->z; }

int llava_cuda_host_full(const llava_cuda_t *g) { return g->host_full; }

/* dev[0, shard) (fp32) = host[offset, offset + local), zero past local; host NULL: all zero. */
static int shard_upload(llava_cuda_t *g, float *dev, const float *host, const zero1_layout_t *z) {
    int rc = 0;
    CUDA_CHECK_GOTO(cudaMemsetAsync(dev, 0, (size_t)z->shard * sizeof(float), g->s));
    if (host && z->local > 0)
        CUDA_CHECK_GOTO(cudaMemcpyAsync(dev, host + z->offset, (size_t)z->local * sizeof(float),
                                        cudaMemcpyHostToDevice, g->s));
cleanup:
    return rc;
}

int llava_cuda_zero1_shard(llava_cuda_t *g, int world, int rank) {
    int rc = 0;
    llava_model_t *m = g->m;
    zero1_layout_t z;
    CHECK_GOTO(g->o.zero1 && g->have_grads, LLAVA_EINVAL, "zero1_shard: not a ZeRO-1 model with gradients");
    CHECK_GOTO(world >= 1 && world - 1 <= ZERO1_SLACK, LLAVA_EINVAL, "zero1_shard: world %d (at most %d)", world,
               ZERO1_SLACK + 1);
    if (g->z.world == world && g->z.rank == rank && g->adam_m) return 0; /* the same shard: keep it */
    CHECK_GOTO(g->host_full, LLAVA_ENOTFOUND, "ZeRO-1: this worker holds shard %d of %d of the optimizer state and "
               "the new generation makes it rank %d of %d; the other shards are gone with their workers (resume the "
               "job from its last checkpoint)", g->z.rank, g->z.world, rank, world);
    RC_CHECK_GOTO(zero1_layout(&z, (long)g->n_train, world, rank));
    state_free(g);
    CUDA_CHECK_GOTO(cudaMalloc((void **)&g->adam_m, (size_t)z.shard * sizeof(float)));
    CUDA_CHECK_GOTO(cudaMalloc((void **)&g->adam_v, (size_t)z.shard * sizeof(float)));
    RC_CHECK_GOTO(shard_upload(g, g->adam_m, m->adam_m ? arena_data(m->adam_m) : NULL, &z));
    RC_CHECK_GOTO(shard_upload(g, g->adam_v, m->adam_v ? arena_data(m->adam_v) : NULL, &z));
    if (g->dt == CUDA_DT_F32) {
        g->master = (float *)g->params + z.offset; /* the weights are fp32: updated in place, then all-gathered */
    } else {
        CUDA_CHECK_GOTO(cudaMalloc((void **)&g->master, (size_t)z.shard * sizeof(float)));
        g->own_master = 1;
        RC_CHECK_GOTO(shard_upload(g, g->master, arena_data(m->params), &z));
    }
    CUDA_CHECK_GOTO(cudaStreamSynchronize(g->s));
    g->z = z;
cleanup:
    if (rc) state_free(g);
    return rc;
}

static int zero1_check(const llava_cuda_t *g, nccl_comm_t *c, const char *what) {
    int rc = 0;
    CHECK_GOTO(g->o.zero1 && g->have_grads && g->adam_m, LLAVA_EINVAL, "%s: no ZeRO-1 shard (llava_cuda_zero1_shard)",
               what);
    CHECK_GOTO(nccl_comm_world(c) == g->z.world && nccl_comm_rank(c) == g->z.rank, LLAVA_EINVAL,
               "%s: the shard is rank %d of %d, the communicator rank %d of %d", what, g->z.rank, g->z.world,
               nccl_comm_rank(c), nccl_comm_world(c));
cleanup:
    return rc;
}

int llava_cuda_zero1_reduce(llava_cuda_t *g, nccl_comm_t *c, int timeout_ms, nccl_abort_fn abort_fn, void *ud,
                            double *sumsq) {
    int rc = 0;
    RC_CHECK_GOTO(zero1_check(g, c, "zero1_reduce"));
    void *gs = at(g, g->grads, (size_t)g->z.offset);
    RC_CHECK_GOTO(nccl_reduce_scatter(c, g->grads, gs, (size_t)g->z.shard, g->dt, g->s, timeout_ms, abort_fn, ud));
    /* the squared norm of this rank's summed shard (the padding is zero), summed over the ranks in fp64 */
    CUDA_CHECK_GOTO(cudaMemsetAsync(g->d_f64 + 1, 0, sizeof(double), g->s));
    if (g->z.local > 0) RC_CHECK_GOTO(cuda_global_norm_sq(g->ctx, g->d_f64 + 1, gs, g->z.local, 0, g->dt, g->s));
    RC_CHECK_GOTO(nccl_allreduce_f64(c, g->d_f64 + 1, 1, g->s, timeout_ms, abort_fn, ud));
    CUDA_CHECK_GOTO(cudaMemcpyAsync(&g->z_sumsq, g->d_f64 + 1, sizeof g->z_sumsq, cudaMemcpyDeviceToHost, g->s));
    CUDA_CHECK_GOTO(cudaStreamSynchronize(g->s));
    if (sumsq) *sumsq = g->z_sumsq;
cleanup:
    return rc;
}

int llava_cuda_zero1_apply(llava_cuda_t *g, nccl_comm_t *c, const adamw_opts_t *o, double scale, double *grad_norm,
                           int timeout_ms, nccl_abort_fn abort_fn, void *ud) {
    int rc = 0;
    RC_CHECK_GOTO(zero1_check(g, c, "zero1_apply"));
    double norm = sqrt(g->z_sumsq) * fabs(scale); /* as llava_cuda_adamw_step */
    if (grad_norm) *grad_norm = norm;
    float coef = o->max_grad_norm > 0 ? clip_grad_coef(norm, (float)o->max_grad_norm) : 1.0f;
    void *ws = at(g, g->params, (size_t)g->z.offset);
    g->m->adam_t++;
    g->host_full = 0;
    if (g->z.local > 0)
        RC_CHECK_GOTO(cuda_adamw_update(g->master, g->dt == CUDA_DT_F32 ? NULL : ws, g->dt,
                                        at(g, g->grads, (size_t)g->z.offset), g->dt, g->adam_m, g->adam_v,
                                        g->z.local, o->lr, o->beta1, o->beta2, o->eps, o->weight_decay,
                                        g->m->adam_t, (float)(scale * coef), g->s));
    RC_CHECK_GOTO(nccl_allgather(c, ws, g->params, (size_t)g->z.shard, g->dt, g->s, timeout_ms, abort_fn, ud));
    RC_CHECK_GOTO(llava_cuda_grads_zero(g));
    CUDA_CHECK_GOTO(cudaStreamSynchronize(g->s));
cleanup:
    return rc;
}

/* host[z.n] = every rank's src[z.shard] in rank order (padding dropped), k elements per rank at a time. */
static int gather_to_host(llava_cuda_t *g, nccl_comm_t *c, float *host, const float *src, float *stage,
                          float *hstage, size_t k, int timeout_ms, nccl_abort_fn abort_fn, void *ud) {
    int rc = 0;
    const zero1_layout_t *z = &g->z;
    for (long i = 0; i < z->shard; i += (long)k) {
        size_t kk = (size_t)(z->shard - i) < k ? (size_t)(z->shard - i) : k;
        RC_CHECK_GOTO(nccl_allgather(c, src + i, stage, kk, CUDA_DT_F32, g->s, timeout_ms, abort_fn, ud));
        CUDA_CHECK_GOTO(cudaMemcpyAsync(hstage, stage, kk * z->world * sizeof(float), cudaMemcpyDeviceToHost, g->s));
        CUDA_CHECK_GOTO(cudaStreamSynchronize(g->s));
        for (int r = 0; r < z->world; r++) {
            long first = (long)r * z->shard + i, cnt = z->n - first;
            if (cnt > (long)kk) cnt = (long)kk;
            if (cnt > 0) memcpy(host + first, hstage + (size_t)r * kk, (size_t)cnt * sizeof(float));
        }
    }
cleanup:
    return rc;
}

int llava_cuda_zero1_gather(llava_cuda_t *g, nccl_comm_t *c, int timeout_ms, nccl_abort_fn abort_fn, void *ud) {
    int rc = 0;
    llava_model_t *m = g->m;
    float *stage = NULL, *hstage = NULL;
    RC_CHECK_GOTO(zero1_check(g, c, "zero1_gather"));
    RC_CHECK_GOTO(llava_optim_prepare(m));
    size_t k = STAGE_FLOATS / (size_t)g->z.world;
    if (k < 1) k = 1;
    if (k > (size_t)g->z.shard) k = (size_t)g->z.shard;
    CUDA_CHECK_GOTO(cudaMalloc((void **)&stage, k * (size_t)g->z.world * sizeof(float)));
    hstage = malloc(k * (size_t)g->z.world * sizeof(float));
    ALLOC_CHECK_GOTO(hstage);
    RC_CHECK_GOTO(gather_to_host(g, c, arena_data(m->params), g->master, stage, hstage, k, timeout_ms, abort_fn, ud));
    RC_CHECK_GOTO(gather_to_host(g, c, arena_data(m->adam_m), g->adam_m, stage, hstage, k, timeout_ms, abort_fn, ud));
    RC_CHECK_GOTO(gather_to_host(g, c, arena_data(m->adam_v), g->adam_v, stage, hstage, k, timeout_ms, abort_fn, ud));
    g->host_full = 1;
cleanup:
    cudaFree(stage);
    free(hstage);
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* The data-parallel step's all-reduce: out of place, early (buckets) or whole                                */

static int reduce_bucketer(llava_cuda_t *g, nccl_comm_t *c, size_t bucket_elems) {
    int rc = 0;
    void *sum = NULL;
    if (g->rb && g->rb_comm == c) return 0;
    llava_cuda_reduce_cancel(g); /* a bucketer of an older communicator */
    RC_CHECK_GOTO(llava_cuda_gsum_device(g, &sum));
    if (!bucket_elems) bucket_elems = RB_DEFAULT_BYTES / g->dts;
    RC_CHECK_GOTO(nccl_bucketer_new(&g->rb, c, g->grads, sum, g->n_train, bucket_elems, g->dt, g->s));
    g->rb_comm = c;
cleanup:
    return rc;
}

int llava_cuda_reduce_early(llava_cuda_t *g, nccl_comm_t *c, int arm, size_t bucket_elems) {
    int rc = 0;
    CHECK_GOTO(g->have_grads && c && !g->o.zero1, LLAVA_EINVAL,
               "llava_cuda_reduce_early: needs gradients, a communicator and no ZeRO-1");
    RC_CHECK_GOTO(reduce_bucketer(g, c, bucket_elems));
    if (arm) {
        CHECK_GOTO(g->rb_state == RB_IDLE, LLAVA_EINVAL, "llava_cuda_reduce_early: the step's buckets already %s",
                   g->rb_state == RB_ARMED ? "wait for a backward" : "went");
        g->bk = g->rb;
        g->rb_state = RB_ARMED;
        return 0;
    }
    if (g->bk == g->rb) g->bk = NULL;
    g->rb_state = RB_LAUNCHED;
    RC_CHECK_GOTO(nccl_bucketer_launch_rest(g->rb));
cleanup:
    return rc;
}

int llava_cuda_reduce_finish(llava_cuda_t *g, nccl_comm_t *c, int timeout_ms, nccl_abort_fn abort_fn, void *ud,
                             double *sumsq) {
    int rc = 0;
    void *sum = NULL;
    CHECK_GOTO(g->have_grads && c && !g->o.zero1, LLAVA_EINVAL,
               "llava_cuda_reduce_finish: needs gradients, a communicator and no ZeRO-1");
    RC_CHECK_GOTO(llava_cuda_gsum_device(g, &sum));
    if (g->rb && g->rb_comm == c && g->rb_state == RB_LAUNCHED) {
        g->rb_state = RB_IDLE;
        RC_CHECK_GOTO(nccl_bucketer_finish(g->rb, timeout_ms, abort_fn, ud));
    } else { /* nothing went early on this communicator: the whole buffer at once */
        if (g->rb) nccl_bucketer_reset(g->rb);
        if (g->bk == g->rb) g->bk = NULL;
        g->rb_state = RB_IDLE;
        RC_CHECK_GOTO(nccl_allreduce(c, g->grads, sum, g->n_train, g->dt, g->s, timeout_ms, abort_fn, ud));
    }
    RC_CHECK_GOTO(llava_cuda_gsum_norm_sq(g, sumsq));
cleanup:
    return rc;
}

int llava_cuda_reduce_launched(const llava_cuda_t *g) { return g->rb ? nccl_bucketer_launched(g->rb) : 0; }

void llava_cuda_reduce_cancel(llava_cuda_t *g) {
    if (!g) return;
    /* launched buckets may wait for ranks that are gone: abort them (the communicator is unusable afterwards) */
    if (g->rb_state == RB_LAUNCHED && g->rb_comm) (void)nccl_comm_abort(g->rb_comm);
    if (g->bk == g->rb) g->bk = NULL;
    nccl_bucketer_free(&g->rb);
    g->rb_comm = NULL;
    g->rb_state = RB_IDLE;
}
