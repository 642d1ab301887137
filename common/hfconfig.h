/* Hugging Face config.json for LLaVA, CLIP vision towers and LLaMA: read into structs with transformers' defaults
 * (5.x CLIPVisionConfig / LlamaConfig / LlavaConfig) and validated; write a llava config that from_pretrained loads.
 * Tested by tests/unit/test_hfconfig.c (defaults, bad fields, published configs under tests/fixtures/hfconfig/). */
#ifndef LLAVA_HFCONFIG_H
#define LLAVA_HFCONFIG_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HF_STR_MAX 64

typedef struct {
    char model_type[HF_STR_MAX]; /* "clip_vision_model" */
    int hidden_size;             /* 768 */
    int intermediate_size;       /* 3072 */
    int projection_dim;          /* 512 */
    int num_hidden_layers;       /* 12 */
    int num_attention_heads;     /* 12 */
    int num_channels;            /* 3 */
    int image_size;              /* 224 */
    int patch_size;              /* 32 */
    char hidden_act[HF_STR_MAX]; /* "quick_gelu" */
    double layer_norm_eps;       /* 1e-5 */
    double attention_dropout;    /* 0.0 */
    double initializer_range;    /* 0.02 */
    double initializer_factor;   /* 1.0 */
} clip_vision_config_t;

typedef struct {
    char model_type[HF_STR_MAX]; /* "llama" */
    int vocab_size;              /* 32000 */
    int hidden_size;             /* 4096 */
    int intermediate_size;       /* 11008 */
    int num_hidden_layers;       /* 32 */
    int num_attention_heads;     /* 32 */
    int num_key_value_heads;     /* default num_attention_heads */
    int head_dim;                /* default hidden_size / num_attention_heads */
    char hidden_act[HF_STR_MAX]; /* "silu" */
    int max_position_embeddings; /* 2048 */
    double initializer_range;    /* 0.02 */
    double rms_norm_eps;         /* 1e-6 */
    double rope_theta;           /* 10000; from rope_theta, rope_parameters or rope_scaling (type "default" only) */
    double attention_dropout;    /* 0.0 */
    int64_t pad_token_id;        /* -1 = none (the default) */
    int64_t bos_token_id;        /* 1 (-1 = none) */
    int64_t eos_token_id;        /* 2 (-1 = none; the first entry when config.json gives a list) */
    int pretraining_tp;          /* 1 */
    int tie_word_embeddings;     /* 0 */
    int attention_bias;          /* 0 */
    int mlp_bias;                /* 0 */
} llama_config_t;

typedef struct {
    /* "llava"; or "clip" / "clip_vision_model" (vision only) or "llama" (text only) for a bare model's config */
    char model_type[HF_STR_MAX];
    int has_vision, has_text;
    clip_vision_config_t vision;           /* LlavaConfig default when absent: CLIP ViT-L/14-336 */
    llama_config_t text;                   /* LlamaConfig defaults */
    int64_t image_token_index;             /* 32000 (also read from image_token_id) */
    int image_seq_length;                  /* 576 */
    char projector_hidden_act[HF_STR_MAX]; /* "gelu" */
    int vision_feature_layer;              /* -2 (lists are rejected) */
    char vision_feature_select_strategy[HF_STR_MAX]; /* "default" or "full" */
    int multimodal_projector_bias;         /* 1 */
    int tie_word_embeddings;               /* 0, or the text config's when that is true */
    int64_t pad_token_id;                  /* -1 = none */
} llava_config_t;

/** transformers' defaults for a bare CLIPVisionConfig() / LlamaConfig() / LlavaConfig(). */
void clip_vision_config_default(clip_vision_config_t *c);
void llama_config_default(llama_config_t *c);
void llava_config_default(llava_config_t *c);

/** Reads config.json at path (model_type "llava", "clip", "clip_vision_model" or "llama"; anything else is
 *  rejected) into *out with defaults for absent keys. Returns 0, LLAVA_EIO (cannot read) or LLAVA_ECONFIG: one log
 *  line naming the file, the key (e.g. "text_config.hidden_size") and the problem. Unknown keys are ignored. */
int hfconfig_read(const char *path, llava_config_t *out);
/** As hfconfig_read from JSON text; `name` is used in messages. */
int hfconfig_parse(const char *json, const char *name, llava_config_t *out);

/** Writes c (a full llava config) as config.json for LlavaForConditionalGeneration.from_pretrained: model_type
 *  "llava", architectures, vision_config ("clip_vision_model"), text_config ("llama"), torch_dtype "float32".
 *  Written to a temp file and renamed. Returns 0, LLAVA_ECONFIG (c fails validation), LLAVA_EIO or LLAVA_ENOMEM. */
int hfconfig_write_llava(const char *path, const llava_config_t *c);

#ifdef __cplusplus
}
#endif

#endif
