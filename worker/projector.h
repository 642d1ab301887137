/* The LLaVA multimodal projector: `linear` (Linear(Cv, H), original LLaVA) or `mlp2x_gelu` (Linear(Cv, H), exact GELU,
 * Linear(H, H), LLaVA-1.5), biases per config; forward and backward.
 * Tested against transformers by tests/unit/test_model_parity.c (stages "projector_out" and its gradients). */
#ifndef LLAVA_WORKER_PROJECTOR_H
#define LLAVA_WORKER_PROJECTOR_H

#include <stdint.h>

#include "common/tensor.h"

#define PROJ_PREFIX "multi_modal_projector."

typedef enum { PROJ_LINEAR = 0, PROJ_MLP2X_GELU = 1 } proj_type_t;

typedef struct {
    proj_type_t type;
    int Cv, H, bias;
    float *w1, *b1; /* [H, Cv], [H] (b1 NULL without bias) */
    float *w2, *b2; /* [H, H], [H] (mlp2x_gelu only) */
} projector_t;

/** Plans linear_1 (and linear_2) weights and biases. Returns 0 or an arena_add error. */
int projector_plan(arena_t *a, proj_type_t type, int Cv, int H, int bias);
/** Points p into a (fields are NULL for tensors a lacks). */
void projector_bind(projector_t *p, arena_t *a, proj_type_t type, int Cv, int H, int bias);
/** A fresh projector as LLaVA's trainer makes it: build_vision_projector runs after the base models are loaded, so
 *  every nn.Linear keeps torch's default init, weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (not HF's
 *  normal(0, initializer_range): at that scale the image part of the projected tokens is ~1% of their norm and the
 *  demo's language model never learns to read colour or shape from them; see docs/architecture.md). */
void projector_init_random(projector_t *p, uint64_t *rng);
/** Floats of saved activations for M rows. */
size_t projector_acts_floats(const projector_t *p, int M);
/** out[M,H] = projector(feats[M,Cv]); acts (projector_acts_floats) keeps what the backward needs. */
void projector_forward(const projector_t *p, float *out, float *acts, const float *feats, int M);
/** Accumulates the weight gradients into g (same layout as p) from dout[M,H]; scratch has 2*M*H floats. */
void projector_backward(const projector_t *p, const projector_t *g, const float *dout, const float *acts,
                        const float *feats, int M, float *scratch);

#endif
