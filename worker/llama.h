/* LLaMA decoder (MHA or GQA, any head_dim, tied or untied lm_head) forward and backward on the CPU ops, with the
 * activations the backward needs saved per layer; right padding through per-row lengths.
 * Tested against transformers by tests/unit/test_model_parity.c (logits, loss, every gradient). */
#ifndef LLAVA_WORKER_LLAMA_H
#define LLAVA_WORKER_LLAMA_H

#include <stddef.h>
#include <stdint.h>

#include "common/hfconfig.h"
#include "common/tensor.h"

#define LLAMA_PREFIX "language_model.model."
#define LLAMA_HEAD_NAME "language_model.lm_head.weight"

typedef struct {
    float *ln1_w;             /* [C] input_layernorm */
    float *q_w;               /* [NH*HS, C] */
    float *k_w, *v_w;         /* [NKV*HS, C] */
    float *o_w;               /* [C, NH*HS] */
    float *ln2_w;             /* [C] post_attention_layernorm */
    float *gate_w, *up_w;     /* [I, C] */
    float *down_w;            /* [C, I] */
} llama_layer_t;

/** Weights (or their gradients: the same struct, NULL where an arena lacks a tensor). */
typedef struct {
    llama_config_t cfg;
    float *embed;           /* [V, C] */
    llama_layer_t *layers;  /* [L] */
    float *norm_w;          /* [C] */
    float *lm_head;         /* [V, C]; == embed when tied */
} llama_t;

/** Saved activations for B rows of T tokens (N = B*T). Bound into an activation arena by llama_acts_plan/bind. */
typedef struct {
    int B, T;
    float *resid;     /* [L+1, N, C] residual stream entering each layer, then leaving the last */
    float *resid_mid; /* [L, N, C] after attention */
    float *ln1, *ln2; /* [L, N, C] */
    float *rstd1, *rstd2; /* [L, N] */
    float *q, *att;   /* [L, N, NH*HS] (q after rope) */
    float *k, *v;     /* [L, N, NKV*HS] (k after rope) */
    float *gate, *up, *sw; /* [L, N, I] */
    float *lnf;       /* [N, C] */
    float *rstdf;     /* [N] */
    float *logits;    /* [rows, V] (rows = N, or the selected rows); overwritten by dlogits in the backward */
    float *probs;     /* [L, B*NH*T*T] saved softmax for the backward, or NULL (recomputed) */
    int64_t probs_cap; /* per-layer elements the arena holds for probs (0: none) */
    float *lnsel;     /* [N, C] final-norm output of the selected rows */
    const int32_t *rows; /* rows given to llama_forward (NULL = all) and their count */
    int n_rows;
    float *tmp;       /* [N, max(C, I, NH*HS)] scratch */
    float *d1, *d2;   /* [N, C] backward scratch */
    float *dq, *dq2;  /* [N, NH*HS] */
    float *dk, *dk2, *dv; /* [N, NKV*HS] */
    float *dgate, *dup, *dsw; /* [N, I] */
} llama_acts_t;

/** Plans embed_tokens, layers, norm and (untied) lm_head. Returns 0 or an arena_add error. */
int llama_params_plan(arena_t *a, const llama_config_t *c);
/** Points m into a; tensors a lacks stay NULL. Returns 0 or LLAVA_ENOMEM. Free with llama_release. */
int llama_bind(llama_t *m, arena_t *a, const llama_config_t *c);
void llama_release(llama_t *m);
/** HF init: normal(0, initializer_range) for linears and embeddings, ones for norms. */
void llama_init_random(llama_t *m, uint64_t *rng);

/** Plans the activation tensors for B x T, plus probs_per_layer floats per layer for saved attention
 *  probabilities (0: none; the backward then recomputes them). Returns 0 or an arena_add error. */
int llama_acts_plan(arena_t *a, const llama_config_t *c, int B, int T, int64_t probs_per_layer);
/** Points s into a for a B x T batch (which must fit the planned size); probs are used when B*NH*T*T fits. */
void llama_acts_bind(llama_acts_t *s, arena_t *a, const llama_config_t *c, int B, int T);

/** Runs the decoder on acts->resid[0] (the input embeddings [N,C], filled by the caller) up to acts->logits.
 *  lengths[B]: real tokens per row (right padding). rows: when not NULL, logits only for these n_rows token rows
 *  (ascending indices into N; the loss needs only rows with a target, which skips the lm_head for image and
 *  prompt tokens), else for all N. Returns 0 or an attention error. */
int llama_forward(const llama_t *m, llama_acts_t *s, const int32_t *lengths, const int32_t *rows, int n_rows);
/** Backward from dlogits (in s->logits, the rows llama_forward computed) to dx[N,C] (WRITTEN: the gradient of the input embeddings); weight
 *  gradients ACCUMULATE into g where g's pointers are not NULL (g may be NULL: frozen LLM). */
int llama_backward(const llama_t *m, const llama_t *g, llama_acts_t *s, const int32_t *lengths, float *dx);

#endif
