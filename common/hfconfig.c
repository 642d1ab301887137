/* config.json reader/writer for llava, CLIP vision and LLaMA (see hfconfig.h); defaults follow transformers 5.x.
 * Tested by tests/unit/test_hfconfig.c. */
#include "common/hfconfig.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"

/* Where a key lives, for messages: file name and the sub-config prefix ("", "text_config." ...). */
typedef struct {
    const char *file;
    const char *prefix;
} ctx_t;

static const char *json_type(const cJSON *j) {
    if (cJSON_IsString(j)) return "a string";
    if (cJSON_IsNumber(j)) return "a number";
    if (cJSON_IsBool(j)) return "a boolean";
    if (cJSON_IsNull(j)) return "null";
    if (cJSON_IsArray(j)) return "an array";
    return "an object";
}

/* Each getter leaves *v unchanged when the key is absent (or null where transformers allows None). */
static int get_i64(const ctx_t *x, const cJSON *o, const char *key, int64_t *v, int nullable, int64_t lo, int64_t hi) {
    int rc = 0;
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j || (nullable && cJSON_IsNull(j))) return 0;
    CHECK_GOTO(cJSON_IsNumber(j) && floor(j->valuedouble) == j->valuedouble, LLAVA_ECONFIG,
               "%s: key '%s%s': expected an integer, got %s", x->file, x->prefix, key, json_type(j));
    CHECK_GOTO(j->valuedouble >= (double)lo && j->valuedouble <= (double)hi, LLAVA_ECONFIG,
               "%s: key '%s%s': %.17g is out of range [%lld, %lld]", x->file, x->prefix, key, j->valuedouble,
               (long long)lo, (long long)hi);
    *v = (int64_t)j->valuedouble;
cleanup:
    return rc;
}

static int get_int(const ctx_t *x, const cJSON *o, const char *key, int *v, int nullable, int lo) {
    int64_t t = *v;
    int rc = get_i64(x, o, key, &t, nullable, lo, INT_MAX);
    if (rc == 0) *v = (int)t;
    return rc;
}

/* A positive size. */
static int get_size(const ctx_t *x, const cJSON *o, const char *key, int *v) { return get_int(x, o, key, v, 0, 1); }

/* A token id: null means none (-1); a list (eos_token_id in newer models) gives its first entry. */
static int get_token(const ctx_t *x, const cJSON *o, const char *key, int64_t *v) {
    int rc = 0;
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j) return 0;
    if (cJSON_IsNull(j)) {
        *v = -1;
        return 0;
    }
    if (cJSON_IsArray(j)) {
        CHECK_GOTO(cJSON_GetArraySize(j) > 0, LLAVA_ECONFIG, "%s: key '%s%s': empty list", x->file, x->prefix, key);
        cJSON *wrap = cJSON_CreateObject();
        ALLOC_CHECK_GOTO(wrap);
        cJSON_AddItemReferenceToObject(wrap, key, cJSON_GetArrayItem(j, 0));
        rc = get_i64(x, wrap, key, v, 0, 0, INT64_MAX / 2);
        cJSON_Delete(wrap);
        goto cleanup;
    }
    rc = get_i64(x, o, key, v, 0, 0, INT64_MAX / 2);
cleanup:
    return rc;
}

static int get_double(const ctx_t *x, const cJSON *o, const char *key, double *v, double lo) {
    int rc = 0;
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j) return 0;
    CHECK_GOTO(cJSON_IsNumber(j), LLAVA_ECONFIG, "%s: key '%s%s': expected a number, got %s", x->file, x->prefix,
               key, json_type(j));
    CHECK_GOTO(j->valuedouble >= lo && isfinite(j->valuedouble), LLAVA_ECONFIG, "%s: key '%s%s': %g is below %g",
               x->file, x->prefix, key, j->valuedouble, lo);
    *v = j->valuedouble;
cleanup:
    return rc;
}

static int get_bool(const ctx_t *x, const cJSON *o, const char *key, int *v) {
    int rc = 0;
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j) return 0;
    CHECK_GOTO(cJSON_IsBool(j), LLAVA_ECONFIG, "%s: key '%s%s': expected true or false, got %s", x->file, x->prefix,
               key, json_type(j));
    *v = cJSON_IsTrue(j) ? 1 : 0;
cleanup:
    return rc;
}

static int get_str(const ctx_t *x, const cJSON *o, const char *key, char *v) {
    int rc = 0;
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j) return 0;
    CHECK_GOTO(cJSON_IsString(j), LLAVA_ECONFIG, "%s: key '%s%s': expected a string, got %s", x->file, x->prefix,
               key, json_type(j));
    CHECK_GOTO(strlen(j->valuestring) < HF_STR_MAX, LLAVA_ECONFIG, "%s: key '%s%s': string longer than %d bytes",
               x->file, x->prefix, key, HF_STR_MAX - 1);
    snprintf(v, HF_STR_MAX, "%s", j->valuestring);
cleanup:
    return rc;
}

void clip_vision_config_default(clip_vision_config_t *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->model_type, HF_STR_MAX, "clip_vision_model");
    c->hidden_size = 768;
    c->intermediate_size = 3072;
    c->projection_dim = 512;
    c->num_hidden_layers = 12;
    c->num_attention_heads = 12;
    c->num_channels = 3;
    c->image_size = 224;
    c->patch_size = 32;
    snprintf(c->hidden_act, HF_STR_MAX, "quick_gelu");
    c->layer_norm_eps = 1e-5;
    c->attention_dropout = 0.0;
    c->initializer_range = 0.02;
    c->initializer_factor = 1.0;
}

void llama_config_default(llama_config_t *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->model_type, HF_STR_MAX, "llama");
    c->vocab_size = 32000;
    c->hidden_size = 4096;
    c->intermediate_size = 11008;
    c->num_hidden_layers = 32;
    c->num_attention_heads = 32;
    c->num_key_value_heads = 32;
    c->head_dim = 128;
    snprintf(c->hidden_act, HF_STR_MAX, "silu");
    c->max_position_embeddings = 2048;
    c->initializer_range = 0.02;
    c->rms_norm_eps = 1e-6;
    c->rope_theta = 10000.0;
    c->pad_token_id = -1;
    c->bos_token_id = 1;
    c->eos_token_id = 2;
    c->pretraining_tp = 1;
}

void llava_config_default(llava_config_t *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->model_type, HF_STR_MAX, "llava");
    c->has_vision = c->has_text = 1;
    clip_vision_config_default(&c->vision);
    /* LlavaConfig's sub_configs_defaults for an absent vision_config: CLIP ViT-L/14 at 336 px */
    c->vision.intermediate_size = 4096;
    c->vision.hidden_size = 1024;
    c->vision.patch_size = 14;
    c->vision.image_size = 336;
    c->vision.num_hidden_layers = 24;
    c->vision.num_attention_heads = 16;
    c->vision.projection_dim = 768;
    llama_config_default(&c->text);
    c->image_token_index = 32000;
    c->image_seq_length = 576;
    snprintf(c->projector_hidden_act, HF_STR_MAX, "gelu");
    c->vision_feature_layer = -2;
    snprintf(c->vision_feature_select_strategy, HF_STR_MAX, "default");
    c->multimodal_projector_bias = 1;
    c->pad_token_id = -1;
}

static int parse_clip_vision(const ctx_t *x, const cJSON *o, clip_vision_config_t *c) {
    int rc = 0;
    RC_CHECK_GOTO(get_str(x, o, "model_type", c->model_type));
    CHECK_GOTO(strcmp(c->model_type, "clip_vision_model") == 0, LLAVA_ECONFIG,
               "%s: key '%smodel_type': '%s' is not supported (only clip_vision_model)", x->file, x->prefix,
               c->model_type);
    RC_CHECK_GOTO(get_size(x, o, "hidden_size", &c->hidden_size));
    RC_CHECK_GOTO(get_size(x, o, "intermediate_size", &c->intermediate_size));
    RC_CHECK_GOTO(get_size(x, o, "projection_dim", &c->projection_dim));
    RC_CHECK_GOTO(get_size(x, o, "num_hidden_layers", &c->num_hidden_layers));
    RC_CHECK_GOTO(get_size(x, o, "num_attention_heads", &c->num_attention_heads));
    RC_CHECK_GOTO(get_size(x, o, "num_channels", &c->num_channels));
    RC_CHECK_GOTO(get_size(x, o, "image_size", &c->image_size));
    RC_CHECK_GOTO(get_size(x, o, "patch_size", &c->patch_size));
    RC_CHECK_GOTO(get_str(x, o, "hidden_act", c->hidden_act));
    RC_CHECK_GOTO(get_double(x, o, "layer_norm_eps", &c->layer_norm_eps, 0));
    RC_CHECK_GOTO(get_double(x, o, "attention_dropout", &c->attention_dropout, 0));
    RC_CHECK_GOTO(get_double(x, o, "initializer_range", &c->initializer_range, 0));
    RC_CHECK_GOTO(get_double(x, o, "initializer_factor", &c->initializer_factor, 0));
    CHECK_GOTO(c->hidden_size % c->num_attention_heads == 0, LLAVA_ECONFIG,
               "%s: key '%shidden_size': %d is not divisible by num_attention_heads %d", x->file, x->prefix,
               c->hidden_size, c->num_attention_heads);
    CHECK_GOTO(c->patch_size <= c->image_size, LLAVA_ECONFIG, "%s: key '%spatch_size': %d is larger than image_size %d",
               x->file, x->prefix, c->patch_size, c->image_size);
cleanup:
    return rc;
}

/* rope_parameters (transformers 5) or rope_scaling (4.x): only the plain "default" RoPE is implemented. */
static int parse_rope(const ctx_t *x, const cJSON *o, const char *key, llama_config_t *c) {
    int rc = 0;
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!r || cJSON_IsNull(r)) return 0;
    CHECK_GOTO(cJSON_IsObject(r), LLAVA_ECONFIG, "%s: key '%s%s': expected an object or null, got %s", x->file,
               x->prefix, key, json_type(r));
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(r, "rope_type");
    if (!t) t = cJSON_GetObjectItemCaseSensitive(r, "type");
    CHECK_GOTO(!t || cJSON_IsString(t), LLAVA_ECONFIG, "%s: key '%s%s.rope_type': expected a string, got %s", x->file,
               x->prefix, key, json_type(t));
    CHECK_GOTO(!t || strcmp(t->valuestring, "default") == 0, LLAVA_ECONFIG,
               "%s: key '%s%s': RoPE scaling type '%.40s' is not implemented (only 'default')", x->file, x->prefix,
               key, t->valuestring);
    ctx_t sub = *x;
    char prefix[128];
    snprintf(prefix, sizeof prefix, "%s%s.", x->prefix, key);
    sub.prefix = prefix;
    RC_CHECK_GOTO(get_double(&sub, r, "rope_theta", &c->rope_theta, 1e-9));
cleanup:
    return rc;
}

static int parse_llama(const ctx_t *x, const cJSON *o, llama_config_t *c) {
    int rc = 0;
    int kv = 0, hd = 0;
    RC_CHECK_GOTO(get_str(x, o, "model_type", c->model_type));
    CHECK_GOTO(strcmp(c->model_type, "llama") == 0, LLAVA_ECONFIG,
               "%s: key '%smodel_type': '%s' is not supported (only llama)", x->file, x->prefix, c->model_type);
    RC_CHECK_GOTO(get_size(x, o, "vocab_size", &c->vocab_size));
    RC_CHECK_GOTO(get_size(x, o, "hidden_size", &c->hidden_size));
    RC_CHECK_GOTO(get_size(x, o, "intermediate_size", &c->intermediate_size));
    RC_CHECK_GOTO(get_size(x, o, "num_hidden_layers", &c->num_hidden_layers));
    RC_CHECK_GOTO(get_size(x, o, "num_attention_heads", &c->num_attention_heads));
    RC_CHECK_GOTO(get_int(x, o, "num_key_value_heads", &kv, 1, 1));
    RC_CHECK_GOTO(get_int(x, o, "head_dim", &hd, 1, 1));
    RC_CHECK_GOTO(get_str(x, o, "hidden_act", c->hidden_act));
    RC_CHECK_GOTO(get_size(x, o, "max_position_embeddings", &c->max_position_embeddings));
    RC_CHECK_GOTO(get_double(x, o, "initializer_range", &c->initializer_range, 0));
    RC_CHECK_GOTO(get_double(x, o, "rms_norm_eps", &c->rms_norm_eps, 0));
    RC_CHECK_GOTO(get_double(x, o, "rope_theta", &c->rope_theta, 1e-9));
    RC_CHECK_GOTO(parse_rope(x, o, "rope_scaling", c));
    RC_CHECK_GOTO(parse_rope(x, o, "rope_parameters", c));
    RC_CHECK_GOTO(get_double(x, o, "attention_dropout", &c->attention_dropout, 0));
    RC_CHECK_GOTO(get_token(x, o, "pad_token_id", &c->pad_token_id));
    RC_CHECK_GOTO(get_token(x, o, "bos_token_id", &c->bos_token_id));
    RC_CHECK_GOTO(get_token(x, o, "eos_token_id", &c->eos_token_id));
    RC_CHECK_GOTO(get_int(x, o, "pretraining_tp", &c->pretraining_tp, 1, 1));
    RC_CHECK_GOTO(get_bool(x, o, "tie_word_embeddings", &c->tie_word_embeddings));
    RC_CHECK_GOTO(get_bool(x, o, "attention_bias", &c->attention_bias));
    RC_CHECK_GOTO(get_bool(x, o, "mlp_bias", &c->mlp_bias));
    c->num_key_value_heads = kv ? kv : c->num_attention_heads;
    c->head_dim = hd ? hd : c->hidden_size / c->num_attention_heads;
    CHECK_GOTO(c->hidden_size % c->num_attention_heads == 0, LLAVA_ECONFIG,
               "%s: key '%shidden_size': %d is not divisible by num_attention_heads %d", x->file, x->prefix,
               c->hidden_size, c->num_attention_heads);
    CHECK_GOTO(c->num_attention_heads % c->num_key_value_heads == 0, LLAVA_ECONFIG,
               "%s: key '%snum_key_value_heads': num_attention_heads %d is not divisible by %d", x->file, x->prefix,
               c->num_attention_heads, c->num_key_value_heads);
cleanup:
    return rc;
}

/* A sub-config object (absent: keep defaults). */
static const cJSON *sub_object(const ctx_t *x, const cJSON *o, const char *key, int *rc) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    *rc = 0;
    if (!j || cJSON_IsNull(j)) return NULL;
    if (!cJSON_IsObject(j)) {
        LOG_E("%s: key '%s%s': expected an object, got %s", x->file, x->prefix, key, json_type(j));
        *rc = LLAVA_ECONFIG;
    }
    return j;
}

static int parse_llava(const ctx_t *x, const cJSON *root, llava_config_t *c) {
    int rc = 0;
    const cJSON *v = sub_object(x, root, "vision_config", &rc);
    RC_CHECK_GOTO(rc);
    if (v) {
        clip_vision_config_default(&c->vision); /* a given vision_config starts from CLIPVisionConfig() */
        ctx_t sx = {x->file, "vision_config."};
        RC_CHECK_GOTO(parse_clip_vision(&sx, v, &c->vision));
    }
    const cJSON *t = sub_object(x, root, "text_config", &rc);
    RC_CHECK_GOTO(rc);
    if (t) {
        ctx_t tx = {x->file, "text_config."};
        RC_CHECK_GOTO(parse_llama(&tx, t, &c->text));
    }
    const cJSON *tid = cJSON_GetObjectItemCaseSensitive(root, "image_token_index");
    RC_CHECK_GOTO(get_i64(x, root, tid ? "image_token_index" : "image_token_id", &c->image_token_index, 0, 0,
                          INT64_MAX / 2));
    RC_CHECK_GOTO(get_int(x, root, "image_seq_length", &c->image_seq_length, 1, 1));
    RC_CHECK_GOTO(get_str(x, root, "projector_hidden_act", c->projector_hidden_act));
    const cJSON *fl = cJSON_GetObjectItemCaseSensitive(root, "vision_feature_layer");
    CHECK_GOTO(!cJSON_IsArray(fl), LLAVA_ECONFIG,
               "%s: key 'vision_feature_layer': a list of layers is not supported (give one integer)", x->file);
    RC_CHECK_GOTO(get_int(x, root, "vision_feature_layer", &c->vision_feature_layer, 0, INT_MIN));
    int nl = c->vision.num_hidden_layers;
    CHECK_GOTO(c->vision_feature_layer >= -(nl + 1) && c->vision_feature_layer <= nl, LLAVA_ECONFIG,
               "%s: key 'vision_feature_layer': %d is outside the %d hidden states of the vision tower", x->file,
               c->vision_feature_layer, nl + 1);
    RC_CHECK_GOTO(get_str(x, root, "vision_feature_select_strategy", c->vision_feature_select_strategy));
    CHECK_GOTO(strcmp(c->vision_feature_select_strategy, "default") == 0 ||
                   strcmp(c->vision_feature_select_strategy, "full") == 0,
               LLAVA_ECONFIG, "%s: key 'vision_feature_select_strategy': '%s' is not 'default' or 'full'", x->file,
               c->vision_feature_select_strategy);
    RC_CHECK_GOTO(get_bool(x, root, "multimodal_projector_bias", &c->multimodal_projector_bias));
    RC_CHECK_GOTO(get_bool(x, root, "tie_word_embeddings", &c->tie_word_embeddings));
    if (!c->tie_word_embeddings && c->text.tie_word_embeddings) c->tie_word_embeddings = 1;
    RC_CHECK_GOTO(get_token(x, root, "pad_token_id", &c->pad_token_id));
cleanup:
    return rc;
}

int hfconfig_parse(const char *json, const char *name, llava_config_t *out) {
    int rc = 0;
    cJSON *root = cJSON_Parse(json);
    ctx_t x = {name, ""};
    llava_config_default(out);
    CHECK_GOTO(root != NULL, LLAVA_ECONFIG, "%s: not valid JSON", name);
    CHECK_GOTO(cJSON_IsObject(root), LLAVA_ECONFIG, "%s: not a JSON object", name);
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    CHECK_GOTO(mt != NULL, LLAVA_ECONFIG, "%s: key 'model_type': missing", name);
    RC_CHECK_GOTO(get_str(&x, root, "model_type", out->model_type));
    const char *m = out->model_type;
    if (strcmp(m, "llava") == 0) {
        RC_CHECK_GOTO(parse_llava(&x, root, out));
    } else if (strcmp(m, "clip") == 0 || strcmp(m, "clip_vision_model") == 0) {
        out->has_text = 0;
        clip_vision_config_default(&out->vision);
        const cJSON *v = root;
        ctx_t vx = x;
        if (strcmp(m, "clip") == 0) {
            v = sub_object(&x, root, "vision_config", &rc);
            RC_CHECK_GOTO(rc);
            CHECK_GOTO(v != NULL, LLAVA_ECONFIG, "%s: key 'vision_config': missing", name);
            vx.prefix = "vision_config.";
            if (!cJSON_GetObjectItemCaseSensitive(v, "projection_dim"))
                RC_CHECK_GOTO(get_size(&x, root, "projection_dim", &out->vision.projection_dim));
        }
        RC_CHECK_GOTO(parse_clip_vision(&vx, v, &out->vision));
    } else if (strcmp(m, "llama") == 0) {
        out->has_vision = 0;
        RC_CHECK_GOTO(parse_llama(&x, root, &out->text));
    } else {
        CHECK_GOTO(0, LLAVA_ECONFIG, "%s: key 'model_type': '%s' is not supported (llava, clip, clip_vision_model, llama)",
                   name, m);
    }
cleanup:
    cJSON_Delete(root);
    return rc;
}

int hfconfig_read(const char *path, llava_config_t *out) {
    int rc = 0;
    char *buf = NULL;
    FILE *fp = fopen(path, "rb");
    llava_config_default(out);
    CHECK_GOTO(fp != NULL, LLAVA_EIO, "%s: cannot open: %s", path, strerror(errno));
    SYS_CHECK_GOTO(fseek(fp, 0, SEEK_END), path);
    long n = ftell(fp);
    SYS_CHECK_GOTO(n, path);
    CHECK_GOTO(n <= 16L * 1024 * 1024, LLAVA_ECONFIG, "%s: %ld bytes is too large for a config", path, n);
    rewind(fp);
    buf = malloc((size_t)n + 1);
    ALLOC_CHECK_GOTO(buf);
    CHECK_GOTO(fread(buf, 1, (size_t)n, fp) == (size_t)n, LLAVA_EIO, "%s: short read", path);
    buf[n] = 0;
    CHECK_GOTO(strlen(buf) == (size_t)n, LLAVA_ECONFIG, "%s: contains a NUL byte", path);
    RC_CHECK_GOTO(hfconfig_parse(buf, path, out));
cleanup:
    free(buf);
    if (fp) fclose(fp);
    return rc;
}

/* ---------------------------------------------------------------- writer */

/* A float written as Python's json does ("1.0", "1e-05"): transformers' strict config fields reject "1". */
static void add_float(cJSON *o, const char *key, double v) {
    char buf[64];
    snprintf(buf, sizeof buf, "%.15g", v);
    if (strtod(buf, NULL) != v) snprintf(buf, sizeof buf, "%.17g", v);
    if (!strpbrk(buf, ".eEni")) strncat(buf, ".0", sizeof buf - strlen(buf) - 1);
    cJSON_AddRawToObject(o, key, buf);
}

static cJSON *vision_json(const clip_vision_config_t *v) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "model_type", "clip_vision_model");
    cJSON_AddNumberToObject(o, "hidden_size", v->hidden_size);
    cJSON_AddNumberToObject(o, "intermediate_size", v->intermediate_size);
    cJSON_AddNumberToObject(o, "projection_dim", v->projection_dim);
    cJSON_AddNumberToObject(o, "num_hidden_layers", v->num_hidden_layers);
    cJSON_AddNumberToObject(o, "num_attention_heads", v->num_attention_heads);
    cJSON_AddNumberToObject(o, "num_channels", v->num_channels);
    cJSON_AddNumberToObject(o, "image_size", v->image_size);
    cJSON_AddNumberToObject(o, "patch_size", v->patch_size);
    cJSON_AddStringToObject(o, "hidden_act", v->hidden_act);
    add_float(o, "layer_norm_eps", v->layer_norm_eps);
    add_float(o, "attention_dropout", v->attention_dropout);
    add_float(o, "initializer_range", v->initializer_range);
    add_float(o, "initializer_factor", v->initializer_factor);
    return o;
}

static void add_token(cJSON *o, const char *key, int64_t id) {
    if (id < 0) cJSON_AddNullToObject(o, key);
    else cJSON_AddNumberToObject(o, key, (double)id);
}

static cJSON *text_json(const llama_config_t *t) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "model_type", "llama");
    cJSON_AddNumberToObject(o, "vocab_size", t->vocab_size);
    cJSON_AddNumberToObject(o, "hidden_size", t->hidden_size);
    cJSON_AddNumberToObject(o, "intermediate_size", t->intermediate_size);
    cJSON_AddNumberToObject(o, "num_hidden_layers", t->num_hidden_layers);
    cJSON_AddNumberToObject(o, "num_attention_heads", t->num_attention_heads);
    cJSON_AddNumberToObject(o, "num_key_value_heads", t->num_key_value_heads);
    cJSON_AddNumberToObject(o, "head_dim", t->head_dim);
    cJSON_AddStringToObject(o, "hidden_act", t->hidden_act);
    cJSON_AddNumberToObject(o, "max_position_embeddings", t->max_position_embeddings);
    add_float(o, "initializer_range", t->initializer_range);
    add_float(o, "rms_norm_eps", t->rms_norm_eps);
    cJSON *rp = cJSON_AddObjectToObject(o, "rope_parameters");
    if (rp) {
        cJSON_AddStringToObject(rp, "rope_type", "default");
        add_float(rp, "rope_theta", t->rope_theta);
    }
    add_float(o, "attention_dropout", t->attention_dropout);
    add_token(o, "pad_token_id", t->pad_token_id);
    add_token(o, "bos_token_id", t->bos_token_id);
    add_token(o, "eos_token_id", t->eos_token_id);
    cJSON_AddNumberToObject(o, "pretraining_tp", t->pretraining_tp);
    cJSON_AddBoolToObject(o, "tie_word_embeddings", t->tie_word_embeddings);
    cJSON_AddBoolToObject(o, "attention_bias", t->attention_bias);
    cJSON_AddBoolToObject(o, "mlp_bias", t->mlp_bias);
    cJSON_AddStringToObject(o, "torch_dtype", "float32");
    return o;
}

static cJSON *llava_json(const llava_config_t *c) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON *arch = cJSON_AddArrayToObject(o, "architectures");
    if (arch) cJSON_AddItemToArray(arch, cJSON_CreateString("LlavaForConditionalGeneration"));
    cJSON_AddStringToObject(o, "model_type", "llava");
    cJSON_AddNumberToObject(o, "image_token_index", (double)c->image_token_index);
    cJSON_AddNumberToObject(o, "image_seq_length", c->image_seq_length);
    cJSON_AddStringToObject(o, "projector_hidden_act", c->projector_hidden_act);
    cJSON_AddNumberToObject(o, "vision_feature_layer", c->vision_feature_layer);
    cJSON_AddStringToObject(o, "vision_feature_select_strategy", c->vision_feature_select_strategy);
    cJSON_AddBoolToObject(o, "multimodal_projector_bias", c->multimodal_projector_bias);
    cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_word_embeddings);
    if (c->pad_token_id >= 0) cJSON_AddNumberToObject(o, "pad_token_id", (double)c->pad_token_id);
    cJSON_AddStringToObject(o, "torch_dtype", "float32");
    cJSON_AddItemToObject(o, "vision_config", vision_json(&c->vision));
    cJSON_AddItemToObject(o, "text_config", text_json(&c->text));
    return o;
}

int hfconfig_write_llava(const char *path, const llava_config_t *c) {
    int rc = 0;
    cJSON *o = NULL;
    char *text = NULL, *tmp = NULL;
    FILE *fp = NULL;
    llava_config_t check;
    CHECK_GOTO(c->has_vision && c->has_text, LLAVA_ECONFIG, "%s: hfconfig_write_llava needs both vision and text parts",
               path);
    o = llava_json(c);
    ALLOC_CHECK_GOTO(o);
    text = cJSON_Print(o);
    ALLOC_CHECK_GOTO(text);
    /* what we write must read back: catches bad sizes in c before a checkpoint carries them */
    RC_CHECK_GOTO(hfconfig_parse(text, path, &check));
    size_t plen = strlen(path) + 16;
    tmp = malloc(plen);
    ALLOC_CHECK_GOTO(tmp);
    snprintf(tmp, plen, "%s.tmp.%d", path, (int)getpid());
    fp = fopen(tmp, "w");
    CHECK_GOTO(fp != NULL, LLAVA_EIO, "%s: cannot create: %s", tmp, strerror(errno));
    CHECK_GOTO(fputs(text, fp) >= 0 && fputc('\n', fp) != EOF && fflush(fp) == 0 && fsync(fileno(fp)) == 0,
               errno == ENOSPC ? LLAVA_ENOSPACE : LLAVA_EIO, "%s: write failed: %s", tmp, strerror(errno));
    int frc = fclose(fp);
    fp = NULL;
    SYS_CHECK_GOTO(frc == 0 ? 0 : -1, tmp);
    SYS_CHECK_GOTO(rename(tmp, path), path);
    tmp[0] = 0;
cleanup:
    if (fp) fclose(fp);
    if (tmp && tmp[0]) unlink(tmp);
    free(tmp);
    free(text);
    cJSON_Delete(o);
    return rc;
}
