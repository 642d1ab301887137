/* LLaVA model: assembly of clip/projector/llama, loss, backward, AdamW, HF weight loading and saving; see model_llava.h.
 * Tested by tests/unit/test_model_parity.c and tests/integration/model_step.sh. */
#include "worker/model_llava.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "common/err.h"
#include "common/fileio.h"
#include "common/safetensors.h"
#include "kernels/cpu/ops.h"
#include "worker/modelutil.h"

void llava_load_opts_default(llava_load_opts_t *o) {
    memset(o, 0, sizeof *o);
    o->projector = PROJ_MLP2X_GELU;
    o->vision_feature_layer = -2;
    o->image_token_index = 32000;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Construction                                                                                               */

static int check_config(const llava_config_t *c) {
    int rc = 0;
    const llama_config_t *t = &c->text;
    const clip_vision_config_t *v = &c->vision;
    int hs = t->head_dim > 0 ? t->head_dim : (t->num_attention_heads ? t->hidden_size / t->num_attention_heads : 0);
    CHECK_GOTO(t->hidden_size > 0 && t->num_attention_heads > 0 && t->num_key_value_heads > 0 &&
                   t->num_attention_heads % t->num_key_value_heads == 0 && hs > 0 && hs % 2 == 0 &&
                   t->vocab_size > 0 && t->num_hidden_layers > 0 && t->intermediate_size > 0,
               LLAVA_ECONFIG, "text config: bad sizes (hidden %d, heads %d/%d, head_dim %d, vocab %d)", t->hidden_size,
               t->num_attention_heads, t->num_key_value_heads, hs, t->vocab_size);
    CHECK_GOTO(strcmp(t->hidden_act, "silu") == 0, LLAVA_EUNSUPPORTED, "text config: hidden_act '%s' unsupported",
               t->hidden_act);
    CHECK_GOTO(!t->attention_bias && !t->mlp_bias, LLAVA_EUNSUPPORTED, "text config: attention/mlp bias unsupported");
    CHECK_GOTO(v->hidden_size > 0 && v->num_attention_heads > 0 && v->hidden_size % v->num_attention_heads == 0 &&
                   v->patch_size > 0 && v->image_size >= v->patch_size && v->num_channels == 3,
               LLAVA_ECONFIG, "vision config: bad sizes (hidden %d, heads %d, image %d, patch %d, channels %d)",
               v->hidden_size, v->num_attention_heads, v->image_size, v->patch_size, v->num_channels);
    CHECK_GOTO(strcmp(v->hidden_act, "quick_gelu") == 0 || strcmp(v->hidden_act, "gelu") == 0, LLAVA_EUNSUPPORTED,
               "vision config: hidden_act '%s' unsupported", v->hidden_act);
    CHECK_GOTO(strcmp(c->projector_hidden_act, "gelu") == 0, LLAVA_EUNSUPPORTED,
               "projector_hidden_act '%s' unsupported", c->projector_hidden_act);
    int nl = clip_layers_needed(v, c->vision_feature_layer);
    CHECK_GOTO(nl >= 0 && nl <= v->num_hidden_layers, LLAVA_ECONFIG, "vision_feature_layer %d outside 0..%d",
               c->vision_feature_layer, v->num_hidden_layers);
cleanup:
    return rc;
}

static int model_create(const llava_config_t *cfg, proj_type_t pt, llava_model_t **out) {
    int rc = 0;
    llava_model_t *m = NULL;
    RC_CHECK_GOTO(check_config(cfg));
    m = calloc(1, sizeof *m);
    ALLOC_CHECK_GOTO(m);
    m->cfg = *cfg;
    m->cfg.text.tie_word_embeddings = cfg->tie_word_embeddings || cfg->text.tie_word_embeddings;
    m->cfg.tie_word_embeddings = m->cfg.text.tie_word_embeddings;
    if (m->cfg.text.head_dim <= 0) m->cfg.text.head_dim = m->cfg.text.hidden_size / m->cfg.text.num_attention_heads;
    m->proj_type = pt;
    m->attn_probs_budget = LLAVA_ATTN_PROBS_BUDGET;
    int np = (cfg->vision.image_size / cfg->vision.patch_size) * (cfg->vision.image_size / cfg->vision.patch_size);
    m->feat_rows = np + (strcmp(cfg->vision_feature_select_strategy, "full") == 0);
    m->params = arena_new("params");
    ALLOC_CHECK_GOTO(m->params);
    int Cv = cfg->vision.hidden_size, H = cfg->text.hidden_size, bias = cfg->multimodal_projector_bias;
    RC_CHECK_GOTO(projector_plan(m->params, pt, Cv, H, bias));
    RC_CHECK_GOTO(llama_params_plan(m->params, &m->cfg.text));
    RC_CHECK_GOTO(clip_params_plan(m->params, &m->cfg.vision));
    RC_CHECK_GOTO(arena_alloc(m->params));
    m->src_names = calloc((size_t)arena_count(m->params), sizeof *m->src_names);
    ALLOC_CHECK_GOTO(m->src_names);
    projector_bind(&m->proj, m->params, pt, Cv, H, bias);
    RC_CHECK_GOTO(llama_bind(&m->llm, m->params, &m->cfg.text));
    RC_CHECK_GOTO(clip_bind(&m->clip, m->params, &m->cfg.vision));
    *out = m;
    m = NULL;
cleanup:
    llava_model_free(&m);
    return rc;
}

void llava_model_free(llava_model_t **pm) {
    if (!pm || !*pm) return;
    llava_model_t *m = *pm;
    if (m->src_names) {
        for (int i = 0; i < arena_count(m->params); i++) free(m->src_names[i]);
        free(m->src_names);
    }
    clip_release(&m->clip);
    llama_release(&m->llm);
    llama_release(&m->gllm);
    arena_free(&m->params);
    arena_free(&m->grads);
    arena_free(&m->adam_m);
    arena_free(&m->adam_v);
    arena_free(&m->acts);
    free(m);
    *pm = NULL;
}

int llava_model_init_random(const llava_config_t *cfg, proj_type_t projector, uint64_t seed, llava_model_t **out) {
    int rc = 0;
    llava_model_t *m = NULL;
    RC_CHECK_GOTO(model_create(cfg, projector, &m));
    uint64_t rng = seed * 0x2545F4914F6CDD1Dull + 1;
    projector_init_random(&m->proj, &rng);
    llama_init_random(&m->llm, &rng);
    clip_init_random(&m->clip, &rng);
    *out = m;
    m = NULL;
cleanup:
    llava_model_free(&m);
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Names and loading                                                                                          */

static int starts(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

int llava_name_canonical(const char *in, char *out, size_t len) {
    char tmp[TENSOR_NAME_MAX * 2];
    if (starts(in, "model.language_model."))
        snprintf(tmp, sizeof tmp, "language_model.model.%s", in + strlen("model.language_model."));
    else if (strcmp(in, "lm_head.weight") == 0)
        snprintf(tmp, sizeof tmp, "%s", LLAMA_HEAD_NAME);
    else if (starts(in, "model.vision_tower.") || starts(in, "model.multi_modal_projector."))
        snprintf(tmp, sizeof tmp, "%s", in + strlen("model."));
    else
        snprintf(tmp, sizeof tmp, "%s", in);
    if (starts(tmp, "vision_tower.") && !starts(tmp, CLIP_PREFIX))
        snprintf(out, len, CLIP_PREFIX "%s", tmp + strlen("vision_tower."));
    else
        snprintf(out, len, "%s", tmp);
    return starts(out, CLIP_PREFIX) || starts(out, PROJ_PREFIX) || starts(out, LLAMA_PREFIX) ||
           strcmp(out, LLAMA_HEAD_NAME) == 0;
}

typedef enum { SRC_LLAVA, SRC_CLIP, SRC_LLAMA } src_kind_t;

/* Maps a file's tensor name to ours; returns 1 (ours), 0 (to be ignored silently) or -1 (unexpected). */
static int map_name(src_kind_t kind, const char *in, char *out, size_t len) {
    if (kind == SRC_LLAVA) return llava_name_canonical(in, out, len) ? 1 : -1;
    if (kind == SRC_CLIP) {
        if (starts(in, "text_model.") || strcmp(in, "logit_scale") == 0 || starts(in, "visual_projection.") ||
            starts(in, "text_projection."))
            return 0;
        const char *rest = starts(in, "vision_model.") ? in + strlen("vision_model.") : in;
        if (starts(rest, "post_layernorm.")) return 0;
        snprintf(out, len, CLIP_PREFIX "%s", rest);
        return 1;
    }
    if (strcmp(in, "lm_head.weight") == 0) {
        snprintf(out, len, "%s", LLAMA_HEAD_NAME);
        return 1;
    }
    if (starts(in, "model.")) {
        snprintf(out, len, LLAMA_PREFIX "%s", in + strlen("model."));
        return 1;
    }
    return -1;
}

static int optional_tensor(const char *name) {
    return strstr(name, "post_layernorm.") != NULL;
}

/* Copies every tensor of the set whose mapped name is in m->params; marks loaded[]. Counts problems. */
static int load_set(llava_model_t *m, const char *dir, src_kind_t kind, char *loaded, int *problems,
                    int *shape_problems) {
    int rc = 0;
    st_set_t *s = NULL;
    char name[TENSOR_NAME_MAX * 2], sh[96];
    RC_CHECK_GOTO(st_set_open_dir(dir, &s));
    for (int i = 0; i < st_set_count(s); i++) {
        const st_tensor_t *t = st_set_at(s, i);
        int r = map_name(kind, t->name, name, sizeof name);
        if (r == 0) continue;
        if (m->cfg.tie_word_embeddings && strcmp(name, LLAMA_HEAD_NAME) == 0) continue; /* HF ignores it too */
        tensor_t *dst = r > 0 ? arena_get(m->params, name) : NULL;
        int idx = -1;
        for (int j = 0; dst && j < arena_count(m->params); j++)
            if (arena_at(m->params, j) == dst) idx = j;
        if (!dst || idx < 0) {
            LOG_E("%s: unexpected tensor '%s' (not part of this model's config)", dir, t->name);
            (*problems)++;
            continue;
        }
        int same = t->ndim == dst->ndim;
        for (int d = 0; same && d < t->ndim; d++) same = t->shape[d] == dst->shape[d];
        if (!same) {
            char got[96] = "[";
            for (int d = 0; d < t->ndim; d++)
                snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "", (long long)t->shape[d]);
            strncat(got, "]", sizeof got - strlen(got) - 1);
            LOG_E("%s: tensor '%s' has shape %s, the config wants %s", dir, t->name, got,
                  tensor_shape_str(dst, sh, sizeof sh));
            loaded[idx] = 2; /* present but unusable: reported here, not again as missing */
            (*problems)++;
            (*shape_problems)++;
            continue;
        }
        if (t->dtype != DT_F32 && t->dtype != DT_F16 && t->dtype != DT_BF16) {
            LOG_E("%s: tensor '%s' has dtype %s (want F32, F16 or BF16)", dir, t->name, dtype_name(t->dtype));
            loaded[idx] = 2;
            (*problems)++;
            (*shape_problems)++;
            continue;
        }
        RC_CHECK_GOTO(st_tensor_to_f32(t, (float *)dst->data, tensor_numel(dst)));
        loaded[idx] = 1;
        free(m->src_names[idx]);
        m->src_names[idx] = strdup(t->name);
        ALLOC_CHECK_GOTO(m->src_names[idx]);
    }
cleanup:
    st_set_close(&s);
    return rc;
}

/* Logs every tensor not loaded whose name starts with `prefix` (NULL = all); returns how many. */
static int report_missing(llava_model_t *m, const char *what, const char *prefix, const char *loaded) {
    int n = 0;
    for (int i = 0; i < arena_count(m->params); i++) {
        tensor_t *t = arena_at(m->params, i);
        if (loaded[i] || optional_tensor(t->name) || (prefix && !starts(t->name, prefix))) continue;
        LOG_E("%s: missing tensor '%s'", what, t->name);
        n++;
    }
    return n;
}

static void fill_optional_norms(llava_model_t *m, const char *loaded) {
    for (int i = 0; i < arena_count(m->params); i++) {
        tensor_t *t = arena_at(m->params, i);
        if (!loaded[i] && optional_tensor(t->name) && strstr(t->name, ".weight"))
            mu_fill((float *)t->data, tensor_numel(t), 1.0f);
    }
}

static int read_projector_type(const char *cfg_path, proj_type_t *pt) {
    int rc = 0;
    char *text = NULL;
    cJSON *root = NULL;
    rc = file_read_all(cfg_path, &text, NULL);
    CHECK_GOTO(rc == 0, rc == LLAVA_ENOTFOUND ? LLAVA_EIO : rc, "cannot read %s: %s", cfg_path, err_str(rc));
    root = cJSON_Parse(text);
    CHECK_GOTO(root, LLAVA_ECONFIG, "%s: not JSON", cfg_path);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "mm_projector_type");
    *pt = PROJ_MLP2X_GELU;
    if (t) {
        CHECK_GOTO(cJSON_IsString(t) && (strcmp(t->valuestring, "linear") == 0 ||
                                         strcmp(t->valuestring, "mlp2x_gelu") == 0),
                   LLAVA_ECONFIG, "%s: key 'mm_projector_type': want \"linear\" or \"mlp2x_gelu\"", cfg_path);
        *pt = strcmp(t->valuestring, "linear") == 0 ? PROJ_LINEAR : PROJ_MLP2X_GELU;
    }
cleanup:
    cJSON_Delete(root);
    free(text);
    return rc;
}

int llava_config_read(const char *path, llava_config_t *cfg, proj_type_t *pt) {
    int rc = 0;
    RC_CHECK_GOTO(hfconfig_read(path, cfg));
    CHECK_GOTO(strcmp(cfg->model_type, "llava") == 0, LLAVA_ECONFIG, "%s: model_type '%s' is not 'llava'", path,
               cfg->model_type);
    RC_CHECK_GOTO(read_projector_type(path, pt));
    RC_CHECK_GOTO(check_config(cfg));
cleanup:
    return rc;
}

int llava_model_load(const char *dir, llava_model_t **out) {
    int rc = 0, problems = 0, shape_problems = 0;
    llava_model_t *m = NULL;
    char *loaded = NULL;
    char path[4096];
    llava_config_t cfg;
    proj_type_t pt;
    snprintf(path, sizeof path, "%s/config.json", dir);
    RC_CHECK_GOTO(llava_config_read(path, &cfg, &pt));
    RC_CHECK_GOTO(model_create(&cfg, pt, &m));
    loaded = calloc((size_t)arena_count(m->params), 1);
    ALLOC_CHECK_GOTO(loaded);
    RC_CHECK_GOTO(load_set(m, dir, SRC_LLAVA, loaded, &problems, &shape_problems));
    problems += report_missing(m, dir, NULL, loaded);
    CHECK_GOTO(problems == 0, problems == shape_problems ? LLAVA_ESHAPE : LLAVA_ENOTFOUND,
               "%s: %d tensor problem(s), listed above", dir, problems);
    fill_optional_norms(m, loaded);
    *out = m;
    m = NULL;
cleanup:
    free(loaded);
    llava_model_free(&m);
    return rc;
}

int llava_model_load_parts(const char *clip_dir, const char *llama_dir, const llava_load_opts_t *opts,
                           llava_model_t **out) {
    int rc = 0, problems = 0, shape_problems = 0;
    llava_model_t *m = NULL;
    char *loaded = NULL;
    char path[4096];
    llava_config_t cv, ct, cfg;
    snprintf(path, sizeof path, "%s/config.json", clip_dir);
    RC_CHECK_GOTO(hfconfig_read(path, &cv));
    CHECK_GOTO(cv.has_vision, LLAVA_ECONFIG, "%s: not a CLIP config", path);
    snprintf(path, sizeof path, "%s/config.json", llama_dir);
    RC_CHECK_GOTO(hfconfig_read(path, &ct));
    CHECK_GOTO(ct.has_text, LLAVA_ECONFIG, "%s: not a LLaMA config", path);
    llava_config_default(&cfg);
    cfg.vision = cv.vision;
    cfg.text = ct.text;
    cfg.has_vision = cfg.has_text = 1;
    cfg.image_token_index = opts->image_token_index;
    cfg.vision_feature_layer = opts->vision_feature_layer;
    snprintf(cfg.vision_feature_select_strategy, HF_STR_MAX, "%s", opts->keep_cls ? "full" : "default");
    cfg.tie_word_embeddings = ct.text.tie_word_embeddings;
    cfg.pad_token_id = ct.text.pad_token_id;
    RC_CHECK_GOTO(model_create(&cfg, opts->projector, &m));
    loaded = calloc((size_t)arena_count(m->params), 1);
    ALLOC_CHECK_GOTO(loaded);
    RC_CHECK_GOTO(load_set(m, clip_dir, SRC_CLIP, loaded, &problems, &shape_problems));
    problems += report_missing(m, clip_dir, CLIP_PREFIX, loaded);
    RC_CHECK_GOTO(load_set(m, llama_dir, SRC_LLAMA, loaded, &problems, &shape_problems));
    problems += report_missing(m, llama_dir, LLAMA_PREFIX, loaded);
    if (!m->cfg.tie_word_embeddings) problems += report_missing(m, llama_dir, LLAMA_HEAD_NAME, loaded);
    CHECK_GOTO(problems == 0, problems == shape_problems ? LLAVA_ESHAPE : LLAVA_ENOTFOUND,
               "%d tensor problem(s), listed above", problems);
    fill_optional_norms(m, loaded);
    uint64_t rng = opts->seed * 0x2545F4914F6CDD1Dull + 7;
    projector_init_random(&m->proj, &rng);
    *out = m;
    m = NULL;
cleanup:
    free(loaded);
    llava_model_free(&m);
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Saving                                                                                                     */

/* Adds "mm_projector_type": "linear" to the config hfconfig_write_llava wrote, as text after the opening brace (a
 * cJSON round trip would print 1.0 as 1, which transformers' strict float fields refuse). */
static int add_projector_type(const char *path) {
    int rc = 0;
    char *text = NULL, tmp[4200];
    FILE *o = NULL;
    rc = file_read_all(path, &text, NULL);
    CHECK_GOTO(rc == 0, rc == LLAVA_ENOTFOUND ? LLAVA_EIO : rc, "cannot read %s: %s", path, err_str(rc));
    char *brace = strchr(text, '{');
    CHECK_GOTO(brace, LLAVA_EFORMAT, "%s: not a JSON object", path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    o = fopen(tmp, "wb");
    CHECK_GOTO(o, LLAVA_EIO, "cannot write %s: %s", tmp, strerror(errno));
    int ok = fwrite(text, 1, (size_t)(brace - text + 1), o) == (size_t)(brace - text + 1) &&
             fputs("\n\t\"mm_projector_type\":\t\"linear\",", o) >= 0 && fputs(brace + 1, o) >= 0;
    ok = (fclose(o) == 0) && ok;
    o = NULL;
    CHECK_GOTO(ok, LLAVA_EIO, "cannot write %s", tmp);
    CHECK_GOTO(rename(tmp, path) == 0, LLAVA_EIO, "cannot rename %s: %s", tmp, strerror(errno));
cleanup:
    if (o) fclose(o);
    free(text);
    return rc;
}

int llava_model_save(const llava_model_t *m, const char *dir, size_t max_shard_bytes) {
    int rc = 0;
    st_write_item_t *items = NULL;
    char path[4096];
    CHECK_GOTO(mkdir(dir, 0755) == 0 || errno == EEXIST, LLAVA_EIO, "cannot create %s: %s", dir, strerror(errno));
    snprintf(path, sizeof path, "%s/config.json", dir);
    RC_CHECK_GOTO(hfconfig_write_llava(path, &m->cfg));
    if (m->proj_type == PROJ_LINEAR) RC_CHECK_GOTO(add_projector_type(path));
    int n = arena_count(m->params);
    items = calloc((size_t)n, sizeof *items);
    ALLOC_CHECK_GOTO(items);
    for (int i = 0; i < n; i++) {
        tensor_t *t = arena_at(m->params, i);
        items[i] = (st_write_item_t){t->name, t->dtype, t->ndim, t->shape, t->data};
    }
    RC_CHECK_GOTO(st_write_sharded(dir, items, n, max_shard_bytes ? max_shard_bytes : (size_t)-1,
                                   "{\"format\":\"pt\"}"));
cleanup:
    free(items);
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Gradients and activations                                                                                  */

static int grads_ensure(llava_model_t *m, train_mode_t mode) {
    int rc = 0;
    if (m->grads && m->grads_mode == mode) return 0;
    arena_free(&m->grads);
    arena_free(&m->adam_m);
    arena_free(&m->adam_v);
    m->adam_t = 0;
    llama_release(&m->gllm);
    memset(&m->gllm, 0, sizeof m->gllm);
    m->grads = arena_new("grads");
    ALLOC_CHECK_GOTO(m->grads);
    int Cv = m->cfg.vision.hidden_size, H = m->cfg.text.hidden_size, bias = m->cfg.multimodal_projector_bias;
    RC_CHECK_GOTO(projector_plan(m->grads, m->proj_type, Cv, H, bias));
    if (mode == TRAIN_ALL) RC_CHECK_GOTO(llama_params_plan(m->grads, &m->cfg.text));
    RC_CHECK_GOTO(arena_alloc(m->grads));
    /* Same layout as the front of the parameter arena: AdamW runs over both as flat arrays. */
    for (int i = 0; i < arena_count(m->grads); i++) {
        tensor_t *g = arena_at(m->grads, i), *p = arena_at(m->params, i);
        CHECK_GOTO(strcmp(g->name, p->name) == 0 && g->offset == p->offset, LLAVA_EINVAL,
                   "gradient layout differs from the parameters at %s", g->name);
    }
    projector_bind(&m->gproj, m->grads, m->proj_type, Cv, H, bias);
    if (mode == TRAIN_ALL) RC_CHECK_GOTO(llama_bind(&m->gllm, m->grads, &m->cfg.text));
    m->grads_mode = mode;
cleanup:
    if (rc) arena_free(&m->grads);
    return rc;
}

int llava_grads_prepare(llava_model_t *m, train_mode_t mode) { return grads_ensure(m, mode); }

void llava_grads_zero(llava_model_t *m) {
    if (m->grads) memset(arena_data(m->grads), 0, arena_bytes(m->grads));
}

float *llava_grads_data(llava_model_t *m, size_t *n) {
    if (n) *n = m->grads ? arena_bytes(m->grads) / sizeof(float) : 0;
    return m->grads ? (float *)arena_data(m->grads) : NULL;
}

static int acts_ensure(llava_model_t *m, int B, int T, int n_images) {
    int rc = 0;
    int64_t N = (int64_t)B * T;
    if (m->acts && N <= m->acts_cap_n && n_images <= m->acts_cap_images) goto bind;
    arena_free(&m->acts);
    int64_t capn = N > m->acts_cap_n ? N : m->acts_cap_n;
    int capi = n_images > m->acts_cap_images ? n_images : m->acts_cap_images;
    int64_t M = (int64_t)(capi > 0 ? capi : 1) * m->feat_rows, H = m->cfg.text.hidden_size;
    m->acts = arena_new("activations");
    ALLOC_CHECK_GOTO(m->acts);
    /* Saved attention probabilities skip the recomputation in the backward when they fit the budget. */
    int64_t probs = (int64_t)B * m->cfg.text.num_attention_heads * T * T;
    if (probs * m->cfg.text.num_hidden_layers * (int64_t)sizeof(float) > m->attn_probs_budget) probs = 0;
    RC_CHECK_GOTO(llama_acts_plan(m->acts, &m->cfg.text, 1, (int)capn, probs));
    struct { const char *name; int64_t n; } t[] = {
        {"feats", M * m->cfg.vision.hidden_size}, {"pout", M * H},
        {"pacts", (int64_t)projector_acts_floats(&m->proj, (int)M) + 1}, {"dpout", M * H}, {"pscratch", 2 * M * H},
        {"clip_scratch", (int64_t)clip_scratch_floats(&m->cfg.vision, capi > 0 ? capi : 1)}, {"dx", capn * H}};
    for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
        int r = mu_add(m->acts, "", t[i].name, t[i].n, 0, 0, 0);
        CHECK_GOTO(r >= 0, r, "cannot plan activation %s", t[i].name);
    }
    const char *ints[] = {"ids_emb", "ids_bwd", "targets", "loss_rows"};
    for (int i = 0; i < 4; i++) {
        int r = arena_add(m->acts, ints[i], DT_I32, 1, &capn);
        CHECK_GOTO(r >= 0, r, "cannot plan activation %s", ints[i]);
    }
    RC_CHECK_GOTO(arena_alloc(m->acts));
    m->acts_cap_n = capn;
    m->acts_cap_images = capi;
bind:
    llama_acts_bind(&m->la, m->acts, &m->cfg.text, B, T);
    m->feats = mu_get(m->acts, "", "feats");
    m->pout = mu_get(m->acts, "", "pout");
    m->pacts = mu_get(m->acts, "", "pacts");
    m->dpout = mu_get(m->acts, "", "dpout");
    m->pscratch = mu_get(m->acts, "", "pscratch");
    m->clip_scratch = mu_get(m->acts, "", "clip_scratch");
    m->dx = mu_get(m->acts, "", "dx");
    m->ids_emb = (int32_t *)arena_get(m->acts, "ids_emb")->data;
    m->ids_bwd = (int32_t *)arena_get(m->acts, "ids_bwd")->data;
    m->targets = (int32_t *)arena_get(m->acts, "targets")->data;
    m->loss_rows = (int32_t *)arena_get(m->acts, "loss_rows")->data;
cleanup:
    if (rc) arena_free(&m->acts);
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Forward and backward                                                                                       */

int llava_batch_check(const llava_model_t *m, const batch_t *b) {
    int rc = 0;
    int V = m->cfg.text.vocab_size;
    int32_t img = (int32_t)m->cfg.image_token_index;
    int64_t n_img_tok = 0;
    CHECK_GOTO(b && b->B > 0 && b->T > 0 && b->input_ids && b->labels && b->lengths, LLAVA_EINVAL,
               "batch: empty or missing arrays");
    CHECK_GOTO((int64_t)b->B * b->T <= INT32_MAX / 4, LLAVA_EINVAL, "batch: %d x %d tokens is too large", b->B, b->T);
    for (int r = 0; r < b->B; r++) {
        int len = b->lengths[r];
        CHECK_GOTO(len >= 1 && len <= b->T, LLAVA_EINVAL, "batch row %d: length %d outside 1..%d", r, len, b->T);
        for (int t = 0; t < b->T; t++) {
            int32_t id = b->input_ids[(size_t)r * b->T + t], lab = b->labels[(size_t)r * b->T + t];
            if (id == img) {
                CHECK_GOTO(t < len, LLAVA_EINVAL, "batch row %d: image token at padded position %d", r, t);
                n_img_tok++;
                continue;
            }
            CHECK_GOTO(t >= len || (id >= 0 && id < V), LLAVA_EINVAL,
                       "batch row %d position %d: token id %d outside the vocabulary [0, %d)", r, t, id, V);
            CHECK_GOTO(t >= len || lab == LLAVA_IGNORE_INDEX || (lab >= 0 && lab < V), LLAVA_EINVAL,
                       "batch row %d position %d: label %d outside the vocabulary [0, %d)", r, t, lab, V);
        }
    }
    CHECK_GOTO(n_img_tok == (int64_t)b->n_images * m->feat_rows, LLAVA_EINVAL,
               "batch: %lld image tokens but %d image(s) x %d patch features = %lld", (long long)n_img_tok,
               b->n_images, m->feat_rows, (long long)b->n_images * m->feat_rows);
    if (b->n_images > 0) {
        CHECK_GOTO(b->pixel_values && b->image_size == m->cfg.vision.image_size, LLAVA_EINVAL,
                   "batch: images of %d px, the vision tower wants %d", b->image_size, m->cfg.vision.image_size);
    }
cleanup:
    return rc;
}

/* Runs everything up to the logits: of all rows (loss_rows 0), or only of rows with a target (loss_rows 1; their
 * targets compacted into m->targets[0..m->n_loss_rows)). */
static int forward(llava_model_t *m, const batch_t *b, int loss_rows) {
    int rc = 0;
    int B = b->B, T = b->T, N = B * T, H = m->cfg.text.hidden_size, V = m->cfg.text.vocab_size;
    int M = b->n_images * m->feat_rows;
    int32_t img = (int32_t)m->cfg.image_token_index;
    RC_CHECK_GOTO(llava_batch_check(m, b));
    RC_CHECK_GOTO(acts_ensure(m, B, T, b->n_images));
    for (int r = 0; r < B; r++) {
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)r * T + t;
            int32_t id = b->input_ids[i];
            int valid = id >= 0 && id < V;
            m->ids_emb[i] = (id == img || !valid) ? 0 : id;
            m->ids_bwd[i] = (id == img || !valid) ? -1 : id;
            m->targets[i] = t + 1 < b->lengths[r] ? b->labels[i + 1] : LLAVA_IGNORE_INDEX;
        }
    }
    m->n_loss_rows = 0;
    if (loss_rows) {
        for (int i = 0; i < N; i++) {
            if (m->targets[i] == LLAVA_IGNORE_INDEX) continue;
            m->loss_rows[m->n_loss_rows] = i;
            m->targets[m->n_loss_rows++] = m->targets[i]; /* compacting in place: index only grows */
        }
    }
    embedding_forward(m->la.resid, m->ids_emb, m->llm.embed, N, H);
    if (M > 0) {
        RC_CHECK_GOTO(clip_forward(&m->clip, m->feats, b->pixel_values, b->n_images, m->cfg.vision_feature_layer,
                                   m->feat_rows > m->clip.n_patches, m->clip_scratch));
        projector_forward(&m->proj, m->pout, m->pacts, m->feats, M);
        RC_CHECK_GOTO(image_scatter_forward(m->la.resid, b->input_ids, img, m->pout, N, H, M));
    }
    RC_CHECK_GOTO(llama_forward(&m->llm, &m->la, b->lengths, loss_rows ? m->loss_rows : NULL, m->n_loss_rows));
cleanup:
    return rc;
}

int llava_forward_logits(llava_model_t *m, const batch_t *b, float **logits_out) {
    int rc = forward(m, b, 0);
    if (rc == 0 && logits_out) *logits_out = m->la.logits;
    return rc;
}

int llava_forward_backward(llava_model_t *m, const batch_t *b, train_mode_t mode, double *loss_sum,
                           int64_t *n_targets, int accumulate) {
    int rc = 0;
    double ls = 0;
    int64_t nt = 0;
    RC_CHECK_GOTO(grads_ensure(m, mode));
    if (!accumulate) llava_grads_zero(m);
    RC_CHECK_GOTO(forward(m, b, 1));
    int N = b->B * b->T, H = m->cfg.text.hidden_size, V = m->cfg.text.vocab_size;
    int M = b->n_images * m->feat_rows, R = m->n_loss_rows;
    crossentropy_forward(NULL, m->la.logits, m->targets, R, V, &ls, &nt);
    crossentropy_backward(m->la.logits, m->la.logits, m->targets, R, V, 1.0f);
    if ((mode == TRAIN_PROJECTOR && M == 0) || R == 0) goto done; /* no gradient reaches a trainable tensor */
    RC_CHECK_GOTO(llama_backward(&m->llm, mode == TRAIN_ALL ? &m->gllm : NULL, &m->la, b->lengths, m->dx));
    if (mode == TRAIN_ALL) embedding_backward(m->gllm.embed, m->dx, m->ids_bwd, N, H);
    if (M > 0) {
        RC_CHECK_GOTO(image_scatter_backward(m->dpout, m->dx, b->input_ids, (int32_t)m->cfg.image_token_index, N, H,
                                             M));
        projector_backward(&m->proj, &m->gproj, m->dpout, m->pacts, m->feats, M, m->pscratch);
    }
done:
    if (loss_sum) *loss_sum = ls;
    if (n_targets) *n_targets = nt;
cleanup:
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Optimiser                                                                                                  */

/* Allocates the AdamW moments (zeroed) with the gradient arena's layout, once per training mode. */
static int adam_ensure(llava_model_t *m) {
    int rc = 0;
    if (m->adam_m) return 0;
    m->adam_m = arena_new("adam_m");
    m->adam_v = arena_new("adam_v");
    ALLOC_CHECK_GOTO(m->adam_m);
    ALLOC_CHECK_GOTO(m->adam_v);
    for (int i = 0; i < arena_count(m->grads); i++) {
        tensor_t *t = arena_at(m->grads, i);
        int r1 = arena_add(m->adam_m, t->name, DT_F32, t->ndim, t->shape);
        int r2 = arena_add(m->adam_v, t->name, DT_F32, t->ndim, t->shape);
        CHECK_GOTO(r1 >= 0 && r2 >= 0, r1 < 0 ? r1 : r2, "cannot plan AdamW state %s", t->name);
    }
    RC_CHECK_GOTO(arena_alloc(m->adam_m));
    RC_CHECK_GOTO(arena_alloc(m->adam_v));
    m->adam_t = 0;
    return 0;
cleanup:
    arena_free(&m->adam_m);
    arena_free(&m->adam_v);
    return rc;
}

int llava_optim_prepare(llava_model_t *m) {
    int rc = 0;
    CHECK_GOTO(m->grads, LLAVA_EINVAL, "llava_optim_prepare: no gradients prepared");
    RC_CHECK_GOTO(adam_ensure(m));
cleanup:
    return rc;
}

int llava_adamw_step(llava_model_t *m, const adamw_opts_t *o, double scale, double *grad_norm) {
    int rc = 0;
    CHECK_GOTO(m->grads, LLAVA_EINVAL, "llava_adamw_step: no gradients (run a backward first)");
    size_t n = arena_bytes(m->grads) / sizeof(float);
    float *g = arena_data(m->grads), *p = arena_data(m->params);
    RC_CHECK_GOTO(adam_ensure(m));
    if (scale != 1.0) scale_inplace(g, (float)scale, (long)n);
    double norm = sqrt(global_norm_sq(g, (long)n));
    if (grad_norm) *grad_norm = norm;
    if (o->max_grad_norm > 0) {
        float coef = clip_grad_coef(norm, (float)o->max_grad_norm);
        if (coef < 1.0f) scale_inplace(g, coef, (long)n);
    }
    m->adam_t++;
    adamw_update(p, g, arena_data(m->adam_m), arena_data(m->adam_v), (long)n, o->lr, o->beta1, o->beta2, o->eps,
                 o->weight_decay, m->adam_t);
    llava_grads_zero(m);
cleanup:
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Optimiser state on disk: optimizer.safetensors holds "exp_avg.<name>" and "exp_avg_sq.<name>" per trainable
 * tensor and the step count in the metadata, so a resumed run continues the same AdamW trajectory. */

int llava_optim_save(const llava_model_t *m, const char *path) {
    int rc = 0;
    st_write_item_t *items = NULL;
    char **names = NULL;
    CHECK_GOTO(m->adam_m && m->adam_v, LLAVA_EINVAL, "%s: no optimizer state to save yet", path);
    int n = arena_count(m->adam_m);
    items = calloc((size_t)n * 2, sizeof *items);
    names = calloc((size_t)n * 2, sizeof *names);
    ALLOC_CHECK_GOTO(items);
    ALLOC_CHECK_GOTO(names);
    for (int i = 0; i < 2 * n; i++) {
        tensor_t *t = arena_at(i < n ? m->adam_m : m->adam_v, i % n);
        size_t len = strlen(t->name) + 16;
        names[i] = malloc(len);
        ALLOC_CHECK_GOTO(names[i]);
        snprintf(names[i], len, "%s.%s", i < n ? "exp_avg" : "exp_avg_sq", t->name);
        items[i] = (st_write_item_t){names[i], t->dtype, t->ndim, t->shape, t->data};
    }
    char meta[96];
    snprintf(meta, sizeof meta, "{\"format\":\"pt\",\"step\":\"%d\"}", m->adam_t);
    RC_CHECK_GOTO(st_write(path, items, 2 * n, meta));
cleanup:
    if (names)
        for (int i = 0; m->adam_m && i < 2 * arena_count(m->adam_m); i++) free(names[i]);
    free(names);
    free(items);
    return rc;
}

int llava_optim_load(llava_model_t *m, const char *path) {
    int rc = 0;
    st_file_t *f = NULL;
    CHECK_GOTO(m->grads, LLAVA_EINVAL, "%s: prepare the gradients before loading optimizer state", path);
    RC_CHECK_GOTO(st_file_open(path, &f));
    RC_CHECK_GOTO(adam_ensure(m));
    const char *step = st_file_metadata(f, "step");
    CHECK_GOTO(step && atoi(step) >= 0, LLAVA_EFORMAT, "%s: metadata has no optimizer step count", path);
    int n = arena_count(m->adam_m);
    for (int i = 0; i < 2 * n; i++) {
        tensor_t *t = arena_at(i < n ? m->adam_m : m->adam_v, i % n);
        char name[TENSOR_NAME_MAX + 16];
        snprintf(name, sizeof name, "%s.%s", i < n ? "exp_avg" : "exp_avg_sq", t->name);
        const st_tensor_t *s = st_file_find(f, name);
        CHECK_GOTO(s, LLAVA_ENOTFOUND, "%s: tensor '%s' is missing (trained with another mode?)", path, name);
        rc = st_tensor_to_f32(s, t->data, tensor_numel(t));
        CHECK_GOTO(rc == 0, LLAVA_ESHAPE, "%s: tensor '%s' does not match the model's shape", path, name);
    }
    CHECK_GOTO(st_file_count(f) == 2 * n, LLAVA_EFORMAT, "%s: holds %d tensors, the model trains %d (x2)", path,
               st_file_count(f), n);
    m->adam_t = atoi(step);
cleanup:
    st_file_close(&f);
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Training state in memory, for a replacement joining a running job (worker_compute.c STATE_SEND/STATE_RECV). */

#define TRAIN_STATE_MAGIC 0x5354564cu /* "LVTS" */

int llava_train_state_export(llava_model_t *m, void **buf, size_t *len) {
    int rc = 0;
    CHECK_GOTO(m->grads, LLAVA_EINVAL, "llava_train_state_export: no gradients prepared");
    RC_CHECK_GOTO(adam_ensure(m));
    size_t n = arena_bytes(m->grads) / sizeof(float);
    uint8_t *b = malloc(16 + 3 * n * sizeof(float));
    ALLOC_CHECK_GOTO(b);
    uint32_t hdr[2] = {TRAIN_STATE_MAGIC, (uint32_t)m->adam_t};
    uint64_t n64 = n;
    memcpy(b, hdr, 8);
    memcpy(b + 8, &n64, 8);
    float *f = (float *)(void *)(b + 16);
    memcpy(f, arena_data(m->params), n * sizeof(float));
    memcpy(f + n, arena_data(m->adam_m), n * sizeof(float));
    memcpy(f + 2 * n, arena_data(m->adam_v), n * sizeof(float));
    *buf = b;
    *len = 16 + 3 * n * sizeof(float);
cleanup:
    return rc;
}

int llava_train_state_import(llava_model_t *m, const void *buf, size_t len) {
    int rc = 0;
    CHECK_GOTO(m->grads, LLAVA_EINVAL, "llava_train_state_import: no gradients prepared");
    RC_CHECK_GOTO(adam_ensure(m));
    size_t n = arena_bytes(m->grads) / sizeof(float);
    uint32_t hdr[2] = {0, 0};
    uint64_t n64 = 0;
    if (len >= 16) {
        memcpy(hdr, buf, 8);
        memcpy(&n64, (const uint8_t *)buf + 8, 8);
    }
    CHECK_GOTO(len == 16 + 3 * n * sizeof(float) && hdr[0] == TRAIN_STATE_MAGIC && n64 == n, LLAVA_EFORMAT,
               "training state of %zu bytes (%llu floats) does not fit this model (%zu trainable floats)", len,
               (unsigned long long)n64, n);
    const float *f = (const float *)(const void *)((const uint8_t *)buf + 16);
    memcpy(arena_data(m->params), f, n * sizeof(float));
    memcpy(arena_data(m->adam_m), f + n, n * sizeof(float));
    memcpy(arena_data(m->adam_v), f + 2 * n, n * sizeof(float));
    m->adam_t = (int)hdr[1];
    llava_grads_zero(m);
cleanup:
    return rc;
}
