/* CLIP vision tower (forward only, never gradients): patch embedding (conv as im2col + matmul, no bias), class and
 * position embeddings, pre_layrnorm, pre-LN blocks, up to the hidden state LLaVA selects.
 * Tested against transformers by tests/unit/test_model_parity.c (stage "vision_features"). */
#ifndef LLAVA_WORKER_CLIP_H
#define LLAVA_WORKER_CLIP_H

#include "common/hfconfig.h"
#include "common/tensor.h"

#define CLIP_PREFIX "vision_tower.vision_model."

typedef struct {
    float *ln1_w, *ln1_b;   /* [C] */
    float *q_w, *k_w, *v_w; /* [C, C] */
    float *q_b, *k_b, *v_b; /* [C] */
    float *o_w, *o_b;       /* [C, C], [C] */
    float *ln2_w, *ln2_b;   /* [C] */
    float *fc1_w, *fc1_b;   /* [I, C], [I] */
    float *fc2_w, *fc2_b;   /* [C, I], [C] */
} clip_layer_t;

typedef struct {
    clip_vision_config_t cfg;
    int n_patches;          /* (S/P)^2 */
    float *class_emb;       /* [C] */
    float *patch_w;         /* [C, 3, P, P] */
    float *pos_emb;         /* [NP+1, C] */
    float *pre_w, *pre_b;   /* [C] */
    float *post_w, *post_b; /* [C], unused by LLaVA, kept so a saved model round-trips */
    clip_layer_t *layers;   /* [L] */
} clip_t;

/** Plans every CLIP tensor (names CLIP_PREFIX + HF's, e.g. "embeddings.class_embedding") into a. Returns 0 or an
 *  arena_add error. */
int clip_params_plan(arena_t *a, const clip_vision_config_t *c);
/** Points m's fields into the allocated arena a. Returns 0 or LLAVA_ENOMEM. Free with clip_release. */
int clip_bind(clip_t *m, arena_t *a, const clip_vision_config_t *c);
void clip_release(clip_t *m);
/** HF-style random init (CLIPPreTrainedModel._init_weights with initializer_factor; see model_llava.h). */
void clip_init_random(clip_t *m, uint64_t *rng);

/** Number of hidden-state layers to run for vision_feature_layer (negative counts from the end, hidden_states[0] =
 *  embeddings after pre_layrnorm). */
int clip_layers_needed(const clip_vision_config_t *c, int feature_layer);
/** Scratch floats clip_forward needs for n images. */
size_t clip_scratch_floats(const clip_vision_config_t *c, int n_images);
/** out[n_images * rows, C] = the selected hidden state of each image, rows = NP (keep_cls 0, "default": CLS row
 *  dropped) or NP+1 ("full"). pixels [n_images, 3, S, S]. scratch has clip_scratch_floats floats.
 *  Returns 0, LLAVA_EINVAL or an attention error. */
int clip_forward(const clip_t *m, float *out, const float *pixels, int n_images, int feature_layer, int keep_cls,
                 float *scratch);

#endif
