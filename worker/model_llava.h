/* The LLaVA model on the CPU: CLIP vision tower (frozen) -> projector -> LLaMA, with the summed shifted
 * cross-entropy loss, backward in two training modes, AdamW, and Hugging Face weight loading and saving.
 * Parameters live in one arena (projector, then LLaMA, then CLIP); gradients in one arena holding only the trainable
 * tensors with the same layout as the front of the parameter arena; AdamW moments likewise; activations in one arena
 * sized for the largest (B*T, images) seen. Tested by tests/unit/test_model_parity.c against transformers fixtures.
 *
 * Random init (llava_model_init_random, `llava-model init`): LLaMA as HF (normal(0, initializer_range) for linears
 * and embeddings, unit norms); the projector as LLaVA's trainer (torch's nn.Linear default, see projector.h); CLIP
 * as CLIPPreTrainedModel (class embedding normal(0, C^-0.5), q/k/v and fc2 normal(0, C^-0.5 (2L)^-0.5), out_proj
 * C^-0.5, fc1 (2C)^-0.5, patch/position embeddings initializer_range, all times initializer_factor). The generator is splitmix64 +
 * Box-Muller, so values differ from torch's for the same seed. */
#ifndef LLAVA_WORKER_LLAVA_H
#define LLAVA_WORKER_LLAVA_H

#include <stddef.h>
#include <stdint.h>

#include "common/batch.h"
#include "common/hfconfig.h"
#include "common/tensor.h"
#include "worker/clip.h"
#include "worker/llama.h"
#include "worker/projector.h"

typedef enum { TRAIN_PROJECTOR = 0, TRAIN_ALL = 1 } train_mode_t;

/* Default bytes of attention probabilities the forward may keep for the backward (all layers); above it the
 * backward recomputes them (memory-lean). Set llava_model_t.attn_probs_budget before the first step to change. */
#define LLAVA_ATTN_PROBS_BUDGET ((int64_t)256 << 20)

typedef struct llava_model {
    llava_config_t cfg;
    proj_type_t proj_type;
    int feat_rows;           /* image tokens per image: NP ("default") or NP+1 ("full") */
    arena_t *params;         /* every tensor, legacy HF names (vision_tower.vision_model.*, ...) */
    char **src_names;        /* [arena_count(params)]: the name each tensor had in the loaded files, or NULL */
    clip_t clip;
    projector_t proj;
    llama_t llm;
    arena_t *grads;          /* trainable tensors only (NULL until the first backward) */
    train_mode_t grads_mode;
    projector_t gproj;
    llama_t gllm;            /* pointers NULL in TRAIN_PROJECTOR mode */
    arena_t *adam_m, *adam_v;
    int adam_t;              /* AdamW steps taken */
    int64_t attn_probs_budget; /* see LLAVA_ATTN_PROBS_BUDGET */
    /* activations */
    arena_t *acts;
    int64_t acts_cap_n;      /* B*T the arena fits */
    int acts_cap_images;
    llama_acts_t la;
    float *feats;            /* [images*feat_rows, Cv] selected vision features */
    float *pout;             /* [images*feat_rows, H] projector output */
    float *pacts, *dpout, *pscratch, *clip_scratch, *dx;
    int32_t *ids_emb, *ids_bwd, *targets; /* [B*T] */
    int32_t *loss_rows;      /* [B*T]: rows with a target (the training forward computes only their logits) */
    int n_loss_rows;
} llava_model_t;

typedef struct {
    proj_type_t projector;          /* load_parts / init: projector type */
    int vision_feature_layer;       /* load_parts: default -2 */
    int keep_cls;                   /* load_parts: 1 = "full", 0 = "default" */
    int64_t image_token_index;      /* load_parts: default 32000 */
    uint64_t seed;                  /* load_parts: seed of the fresh projector */
} llava_load_opts_t;

/** Defaults for load_parts: mlp2x_gelu, layer -2, "default", image token 32000, seed 0. */
void llava_load_opts_default(llava_load_opts_t *o);

/** Reads a LLaVA config.json (model_type "llava") and its projector type ("mm_projector_type", default
 *  mlp2x_gelu), and checks that this implementation supports it. Returns 0, LLAVA_EIO, LLAVA_ECONFIG or
 *  LLAVA_EUNSUPPORTED. */
int llava_config_read(const char *path, llava_config_t *cfg, proj_type_t *pt);
/** Loads a Hugging Face LLaVA directory (config.json + model.safetensors or a sharded index; legacy or new-style
 *  names; F32/F16/BF16 converted to f32). The projector type comes from config.json "mm_projector_type"
 *  ("linear" or "mlp2x_gelu"; absent = mlp2x_gelu, HF's only one). Every missing, unexpected or mis-shaped tensor
 *  is logged by name. Returns 0 and *out, LLAVA_EIO, LLAVA_ECONFIG, LLAVA_ENOTFOUND (a tensor missing or
 *  unexpected), LLAVA_ESHAPE (only shape/dtype problems), LLAVA_EFORMAT,
 *  LLAVA_EUNSUPPORTED (an activation other than quick_gelu/gelu/silu) or LLAVA_ENOMEM. Free with llava_model_free. */
int llava_model_load(const char *dir, llava_model_t **out);
/** Builds a model from a CLIP directory (CLIPModel or CLIPVisionModel; text model and post_layernorm ignored), a
 *  LLaMA directory and a fresh projector (torch nn.Linear default init, as LLaVA's trainer; see projector.h). Returns as llava_model_load. */
int llava_model_load_parts(const char *clip_dir, const char *llama_dir, const llava_load_opts_t *opts,
                           llava_model_t **out);
/** A randomly initialised model (see the file comment). cfg must be a full llava config. */
int llava_model_init_random(const llava_config_t *cfg, proj_type_t projector, uint64_t seed, llava_model_t **out);
/** Writes dir/config.json and the weights in legacy LLaVA names (sharded above max_shard_bytes; 0 = never), which
 *  LlavaForConditionalGeneration.from_pretrained loads. Creates dir if needed. Returns 0, LLAVA_EIO, LLAVA_ENOSPACE. */
int llava_model_save(const llava_model_t *m, const char *dir, size_t max_shard_bytes);
void llava_model_free(llava_model_t **pm);

/** Checks a batch against the model: sizes, right padding lengths, ids in vocab (or the image token), labels,
 *  image-token count == n_images * feature rows, image size. Logs the first problem. Returns 0 or LLAVA_EINVAL. */
int llava_batch_check(const llava_model_t *m, const batch_t *b);

/** Forward and backward of one micro-batch. *loss_sum gets the SUMMED cross-entropy over the shifted targets and
 *  *n_targets their count (either may be NULL). Gradients of the summed loss ACCUMULATE into m->grads across calls
 *  when accumulate != 0 (else they are zeroed first); the caller scales by 1/total_targets. TRAIN_PROJECTOR
 *  computes no LLM weight gradient but back-propagates through the LLM; TRAIN_ALL also trains every LLM tensor.
 *  Changing the mode reallocates (and zeroes) the gradient arena. Only rows with a target get logits (the lm_head
 *  and softmax skip image and prompt rows; the loss and gradients are the same as with full logits).
 *  Returns 0, LLAVA_EINVAL (bad batch) or LLAVA_ENOMEM. */
int llava_forward_backward(llava_model_t *m, const batch_t *b, train_mode_t mode, double *loss_sum,
                           int64_t *n_targets, int accumulate);
/** Forward only; *logits_out points at [B*T, V] logits owned by m, valid until the next call. Also fills m->feats
 *  and m->pout. Returns as llava_forward_backward. */
int llava_forward_logits(llava_model_t *m, const batch_t *b, float **logits_out);

/** Zeroes the gradient arena (if any). */
void llava_grads_zero(llava_model_t *m);
/** Allocates (zeroed) the gradient arena for `mode` before any backward, so a worker with no micro-batch in a
 *  step still joins the all-reduce with a buffer of the right size. Returns 0 or LLAVA_ENOMEM. */
int llava_grads_prepare(llava_model_t *m, train_mode_t mode);
/** Allocates the AdamW moments (zeroed, step 0) for the prepared gradients if they do not exist yet, as the first
 *  llava_adamw_step would (the GPU model keeps its moments on the device and downloads into these). Returns 0,
 *  LLAVA_EINVAL (no gradients) or LLAVA_ENOMEM. */
int llava_optim_prepare(llava_model_t *m);
/** Writes the AdamW state (moments as tensors under the parameter names, step count in the metadata) to path.
 *  Returns 0, LLAVA_EINVAL (no optimizer state yet), LLAVA_EIO or LLAVA_ENOSPACE. */
int llava_optim_save(const llava_model_t *m, const char *path);
/** Reads AdamW state written by llava_optim_save for the model's current training mode (prepare the gradients
 *  first). Every tensor must be present with the gradient's shape. Returns 0, LLAVA_EIO, LLAVA_EFORMAT,
 *  LLAVA_ENOTFOUND or LLAVA_ESHAPE (logged with the tensor name). */
int llava_optim_load(llava_model_t *m, const char *path);
/** The training state one worker hands another joining the same job: the trainable parameters (the front of the
 *  parameter arena, the gradient arena's layout), the AdamW moments and step count, in one malloc'd buffer
 *  (*buf, *len; the caller frees): a 16-byte header ("LVTS", step count, float count) then the floats. Prepare
 *  the gradients first. Returns 0, LLAVA_EINVAL (no gradients) or LLAVA_ENOMEM. */
int llava_train_state_export(llava_model_t *m, void **buf, size_t *len);
/** Replaces the trainable parameters and AdamW state with a buffer llava_train_state_export wrote for the same
 *  model and training mode. Returns 0, LLAVA_EINVAL (no gradients) or LLAVA_EFORMAT (another layout; logged). */
int llava_train_state_import(llava_model_t *m, const void *buf, size_t len);
/** Contiguous gradient floats (including alignment padding, always zero) and their count. NULL before a backward. */
float *llava_grads_data(llava_model_t *m, size_t *n);

typedef struct {
    double lr, beta1, beta2, eps, weight_decay, max_grad_norm; /* max_grad_norm <= 0: no clipping */
} adamw_opts_t;
/** grads *= scale, clip to max_grad_norm (torch's clip_grad_norm_), one AdamW step over every trainable tensor
 *  (weight decay on all of them), zero the grads. *grad_norm (may be NULL) gets the pre-clip norm. */
int llava_adamw_step(llava_model_t *m, const adamw_opts_t *o, double scale, double *grad_norm);

/** Maps a tensor name of a HF LLaVA checkpoint (legacy or new-style) to this model's name. Returns 1 when it
 *  names a model tensor, 0 when it is not one of ours. */
int llava_name_canonical(const char *in, char *out, size_t len);

#endif
