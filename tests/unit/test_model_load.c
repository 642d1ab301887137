/* Loading and saving of the LLaVA model: save/reload round trips (single and sharded, legacy names), BF16 weights,
 * every missing / unexpected / mis-shaped tensor refused, a CLIP dir + LLaMA dir + fresh projector, random init,
 * and batches the model must refuse (image-token count, ids outside the vocabulary, image size). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/err.h"
#include "common/safetensors.h"
#include "kernels/cpu/ops.h"
#include "tests/test.h"
#include "worker/batchfile.h"
#include "worker/model_llava.h"

static char fixture[1024];

static int same_params(llava_model_t *a, llava_model_t *b) {
    if (arena_count(a->params) != arena_count(b->params)) return 0;
    for (int i = 0; i < arena_count(a->params); i++) {
        tensor_t *x = arena_at(a->params, i), *y = arena_get(b->params, x->name);
        if (!y || x->nbytes != y->nbytes || memcmp(x->data, y->data, x->nbytes) != 0) {
            fprintf(stderr, "differs: %s\n", x->name);
            return 0;
        }
    }
    return 1;
}

static void copy_config(const char *dir) {
    char src[1400], dst[1400], cmd[3000];
    snprintf(src, sizeof src, "%s/model/config.json", fixture);
    snprintf(dst, sizeof dst, "%s/config.json", dir);
    mkdir(dir, 0755);
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", src, dst);
    CHECK(system(cmd) == 0);
}

/* Writes m's params into dir/model.safetensors (config copied from the fixture), renaming through `edit`:
 * returns 0 to drop a tensor, 1 to keep, 2 to keep with a wrong shape; `extra` adds an unknown tensor; bf16 stores
 * every tensor as BF16. */
static void write_variant(llava_model_t *m, const char *dir, int (*edit)(const char *), int extra, int bf16) {
    copy_config(dir);
    int n = arena_count(m->params), k = 0;
    st_write_item_t *items = calloc((size_t)n + 1, sizeof *items);
    int64_t (*shapes)[TENSOR_MAX_DIMS] = calloc((size_t)n + 1, sizeof *shapes);
    void **bufs = calloc((size_t)n + 1, sizeof *bufs);
    static const float one = 1.0f;
    static const int64_t one_shape[1] = {1};
    for (int i = 0; i < n; i++) {
        tensor_t *t = arena_at(m->params, i);
        int e = edit ? edit(t->name) : 1;
        if (e == 0) continue;
        memcpy(shapes[k], t->shape, sizeof shapes[k]);
        const void *data = t->data;
        dtype_t dt = DT_F32;
        int nd = t->ndim;
        if (e == 2) { /* same bytes, transposed-looking shape for 2-D, one more row count for 1-D */
            if (nd == 2) {
                int64_t s0 = shapes[k][0];
                shapes[k][0] = shapes[k][1];
                shapes[k][1] = s0;
            } else {
                shapes[k][0] = 1;
                shapes[k][1] = tensor_numel(t);
                nd = 2;
            }
        }
        if (bf16) {
            int64_t ne = tensor_numel(t);
            uint16_t *h = malloc((size_t)ne * 2);
            for (int64_t j = 0; j < ne; j++) h[j] = f32_to_bf16(((float *)t->data)[j]);
            bufs[k] = h;
            data = h;
            dt = DT_BF16;
        }
        items[k] = (st_write_item_t){t->name, dt, nd, shapes[k], data};
        k++;
    }
    if (extra) items[k++] = (st_write_item_t){"language_model.model.layers.99.extra.weight", DT_F32, 1, one_shape, &one};
    char path[1400];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK_RC(st_write(path, items, k, "{\"format\":\"pt\"}"), 0);
    for (int i = 0; i < k; i++) free(bufs[i]);
    free(bufs);
    free(shapes);
    free(items);
}

static int drop_q(const char *n) { return strstr(n, "layers.1.self_attn.q_proj.weight") ? 0 : 1; }
static int bad_shape(const char *n) { return strstr(n, "layers.0.mlp.up_proj.weight") ? 2 : 1; }

static void test_round_trips(void) {
    char dir[1200], d2[1300];
    llava_model_t *m = NULL, *r = NULL;
    snprintf(dir, sizeof dir, "%s/model", fixture);
    CHECK_RC(llava_model_load(dir, &m), 0);
    if (!m) return;
    /* single file and sharded */
    size_t limits[2] = {0, 20000};
    for (int i = 0; i < 2; i++) {
        snprintf(d2, sizeof d2, "%s/save%d", test_tmpdir(), i);
        CHECK_RC(llava_model_save(m, d2, limits[i]), 0);
        CHECK_RC(llava_model_load(d2, &r), 0);
        CHECK(r && same_params(m, r));
        if (r) CHECK(strcmp(r->src_names[0], "multi_modal_projector.linear_1.weight") == 0);
        llava_model_free(&r);
    }
    snprintf(d2, sizeof d2, "%s/save1/model.safetensors.index.json", test_tmpdir());
    struct stat st;
    CHECK(stat(d2, &st) == 0);
    /* BF16 on disk */
    snprintf(d2, sizeof d2, "%s/bf16", test_tmpdir());
    write_variant(m, d2, NULL, 0, 1);
    CHECK_RC(llava_model_load(d2, &r), 0);
    if (r) {
        tensor_t *a = arena_get(m->params, "language_model.model.embed_tokens.weight");
        tensor_t *b = arena_get(r->params, a->name);
        float *x = a->data, *y = b->data;
        int ok = 1;
        for (int64_t j = 0; j < tensor_numel(a); j++) ok &= y[j] == bf16_to_f32(f32_to_bf16(x[j]));
        CHECK(ok);
    }
    llava_model_free(&r);
    /* missing, mis-shaped, unexpected */
    snprintf(d2, sizeof d2, "%s/missing", test_tmpdir());
    write_variant(m, d2, drop_q, 0, 0);
    CHECK_RC(llava_model_load(d2, &r), LLAVA_ENOTFOUND);
    snprintf(d2, sizeof d2, "%s/shape", test_tmpdir());
    write_variant(m, d2, bad_shape, 0, 0);
    CHECK_RC(llava_model_load(d2, &r), LLAVA_ESHAPE);
    snprintf(d2, sizeof d2, "%s/extra", test_tmpdir());
    write_variant(m, d2, NULL, 1, 0);
    CHECK_RC(llava_model_load(d2, &r), LLAVA_ENOTFOUND);
    CHECK(r == NULL);
    snprintf(d2, sizeof d2, "%s/nothing", test_tmpdir());
    CHECK(llava_model_load(d2, &r) != 0);
    llava_model_free(&m);
}

/* A CLIP dir (CLIPModel-style names with a text tower) and a LLaMA dir cut out of the fixture. */
static void test_parts(void) {
    char dir[1200], cdir[1300], ldir[1300], path[1400];
    llava_model_t *m = NULL, *p = NULL;
    snprintf(dir, sizeof dir, "%s/model", fixture);
    CHECK_RC(llava_model_load(dir, &m), 0);
    if (!m) return;
    const clip_vision_config_t *v = &m->cfg.vision;
    const llama_config_t *t = &m->cfg.text;
    snprintf(cdir, sizeof cdir, "%s/clip", test_tmpdir());
    snprintf(ldir, sizeof ldir, "%s/llama", test_tmpdir());
    mkdir(cdir, 0755);
    mkdir(ldir, 0755);
    snprintf(path, sizeof path, "%s/config.json", cdir);
    FILE *f = fopen(path, "w");
    fprintf(f,
            "{\"model_type\": \"clip_vision_model\", \"hidden_size\": %d, \"intermediate_size\": %d, "
            "\"num_hidden_layers\": %d, \"num_attention_heads\": %d, \"image_size\": %d, \"patch_size\": %d, "
            "\"layer_norm_eps\": %g}\n",
            v->hidden_size, v->intermediate_size, v->num_hidden_layers, v->num_attention_heads, v->image_size,
            v->patch_size, v->layer_norm_eps);
    fclose(f);
    snprintf(path, sizeof path, "%s/config.json", ldir);
    f = fopen(path, "w");
    fprintf(f,
            "{\"model_type\": \"llama\", \"vocab_size\": %d, \"hidden_size\": %d, \"intermediate_size\": %d, "
            "\"num_hidden_layers\": %d, \"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"head_dim\": %d, "
            "\"rms_norm_eps\": %g, \"rope_theta\": %g, \"tie_word_embeddings\": %s}\n",
            t->vocab_size, t->hidden_size, t->intermediate_size, t->num_hidden_layers, t->num_attention_heads,
            t->num_key_value_heads, t->head_dim, t->rms_norm_eps, t->rope_theta,
            t->tie_word_embeddings ? "true" : "false");
    fclose(f);
    int n = arena_count(m->params), kc = 0, kl = 0;
    st_write_item_t *ci = calloc((size_t)n + 2, sizeof *ci), *li = calloc((size_t)n + 1, sizeof *li);
    char (*names)[TENSOR_NAME_MAX] = calloc((size_t)n + 2, sizeof *names);
    static const float z = 0;
    static const int64_t s1[1] = {1};
    for (int i = 0; i < n; i++) {
        tensor_t *x = arena_at(m->params, i);
        if (strncmp(x->name, "vision_tower.", 13) == 0) {
            snprintf(names[i], TENSOR_NAME_MAX, "%s", x->name + 13); /* vision_model.* */
            ci[kc++] = (st_write_item_t){names[i], DT_F32, x->ndim, x->shape, x->data};
        } else if (strncmp(x->name, "language_model.", 15) == 0) {
            snprintf(names[i], TENSOR_NAME_MAX, "%s", x->name + 15); /* model.* and lm_head.weight */
            li[kl++] = (st_write_item_t){names[i], DT_F32, x->ndim, x->shape, x->data};
        }
    }
    ci[kc++] = (st_write_item_t){"text_model.embeddings.token_embedding.weight", DT_F32, 1, s1, &z};
    ci[kc++] = (st_write_item_t){"logit_scale", DT_F32, 1, s1, &z};
    snprintf(path, sizeof path, "%s/model.safetensors", cdir);
    CHECK_RC(st_write(path, ci, kc, NULL), 0);
    snprintf(path, sizeof path, "%s/model.safetensors", ldir);
    CHECK_RC(st_write(path, li, kl, NULL), 0);
    llava_load_opts_t o;
    llava_load_opts_default(&o);
    o.projector = m->proj_type;
    o.vision_feature_layer = m->cfg.vision_feature_layer;
    o.keep_cls = m->feat_rows > m->clip.n_patches;
    o.image_token_index = m->cfg.image_token_index;
    CHECK_RC(llava_model_load_parts(cdir, ldir, &o, &p), 0);
    if (p) {
        int same = 1;
        for (int i = 0; i < n; i++) {
            tensor_t *x = arena_at(m->params, i), *y = arena_get(p->params, x->name);
            if (strncmp(x->name, PROJ_PREFIX, strlen(PROJ_PREFIX)) == 0 || strstr(x->name, "post_layernorm"))
                continue; /* fresh projector; a CLIP dir's post_layernorm is ignored */
            same &= y && memcmp(x->data, y->data, x->nbytes) == 0;
        }
        CHECK(same);
        /* the fixture batch runs on it */
        batch_t b;
        snprintf(path, sizeof path, "%s/batch.safetensors", fixture);
        CHECK_RC(batch_file_read(path, &b), 0);
        double ls = 0;
        int64_t nt = 0;
        CHECK_RC(llava_forward_backward(p, &b, TRAIN_PROJECTOR, &ls, &nt, 0), 0);
        CHECK(nt > 0 && ls > 0);
        batch_free(&b);
    }
    llava_model_free(&p);
    /* a LLaMA dir missing a tensor (embed_tokens, the first) is refused by name */
    snprintf(path, sizeof path, "%s/model.safetensors", ldir);
    CHECK_RC(st_write(path, li + 1, kl - 1, NULL), 0);
    CHECK_RC(llava_model_load_parts(cdir, ldir, &o, &p), LLAVA_ENOTFOUND);
    free(names);
    free(ci);
    free(li);
    llava_model_free(&m);
}

static void test_random_and_batches(void) {
    char path[1300];
    llava_model_t *m = NULL, *r = NULL;
    llava_config_t cfg;
    proj_type_t pt;
    snprintf(path, sizeof path, "%s/model/config.json", fixture);
    CHECK_RC(llava_config_read(path, &cfg, &pt), 0);
    CHECK_RC(llava_model_init_random(&cfg, pt, 42, &m), 0);
    if (!m) return;
    tensor_t *e = arena_get(m->params, "language_model.model.embed_tokens.weight");
    double s = 0, s2 = 0;
    for (int64_t j = 0; j < tensor_numel(e); j++) {
        s += ((float *)e->data)[j];
        s2 += (double)((float *)e->data)[j] * ((float *)e->data)[j];
    }
    double sd = sqrt(s2 / tensor_numel(e));
    CHECKF(fabs(sd - cfg.text.initializer_range) < 0.002, "embedding std %g", sd);
    CHECK(((float *)arena_get(m->params, "language_model.model.norm.weight")->data)[0] == 1.0f);
    /* the projector as LLaVA's trainer leaves it: torch's nn.Linear default, U(-1/sqrt(fan_in), 1/sqrt(fan_in))
     * for weights and biases (std bound/sqrt(3)); HF's normal(0, 0.02) would fail both checks */
    static const char *const pnames[] = {"multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_1.bias",
                                         "multi_modal_projector.linear_2.weight", "multi_modal_projector.linear_2.bias"};
    for (int k = 0; k < 4; k++) {
        tensor_t *pw = arena_get(m->params, pnames[k]);
        if (!pw) continue; /* a linear projector has no linear_2 */
        int64_t fan_in = k < 2 ? m->proj.Cv : m->proj.H;
        double bound = 1.0 / sqrt((double)fan_in), q2 = 0, mx = 0;
        for (int64_t j = 0; j < tensor_numel(pw); j++) {
            double v = ((float *)pw->data)[j];
            q2 += v * v;
            mx = fabs(v) > mx ? fabs(v) : mx;
        }
        double psd = sqrt(q2 / tensor_numel(pw)), want = bound / sqrt(3.0);
        CHECKF(mx <= bound && mx > 0.8 * bound, "%s: max |w| %g, bound %g", pnames[k], mx, bound);
        if (tensor_numel(pw) >= 1000) CHECKF(fabs(psd - want) < 0.1 * want, "%s: std %g, want %g", pnames[k], psd, want);
    }
    snprintf(path, sizeof path, "%s/init", test_tmpdir());
    CHECK_RC(llava_model_save(m, path, 0), 0);
    CHECK_RC(llava_model_load(path, &r), 0);
    CHECK(r && same_params(m, r));
    llava_model_free(&r);

    batch_t b;
    snprintf(path, sizeof path, "%s/batch.safetensors", fixture);
    CHECK_RC(batch_file_read(path, &b), 0);
    CHECK_RC(llava_batch_check(m, &b), 0);
    int32_t img = (int32_t)cfg.image_token_index, saved;
    int first = -1;
    for (int i = 0; i < b.B * b.T && first < 0; i++)
        if (b.input_ids[i] == img) first = i;
    CHECK(first >= 0);
    saved = b.input_ids[first];
    b.input_ids[first] = 7; /* one image token short */
    CHECK_RC(llava_forward_backward(m, &b, TRAIN_ALL, NULL, NULL, 0), LLAVA_EINVAL);
    b.input_ids[first] = saved;
    saved = b.input_ids[1 + (first == 1)];
    b.input_ids[1 + (first == 1)] = cfg.text.vocab_size + 5; /* outside the vocabulary */
    CHECK_RC(llava_forward_backward(m, &b, TRAIN_ALL, NULL, NULL, 0), LLAVA_EINVAL);
    b.input_ids[1 + (first == 1)] = saved;
    b.image_size += 14;
    CHECK_RC(llava_batch_check(m, &b), LLAVA_EINVAL);
    b.image_size -= 14;
    /* accumulation: two identical micro-batches give twice the gradient */
    double l1, l2;
    int64_t n1, n2;
    CHECK_RC(llava_forward_backward(m, &b, TRAIN_ALL, &l1, &n1, 0), 0);
    size_t ng;
    float *g = llava_grads_data(m, &ng);
    float *g1 = malloc(ng * sizeof(float));
    memcpy(g1, g, ng * sizeof(float));
    CHECK_RC(llava_forward_backward(m, &b, TRAIN_ALL, &l2, &n2, 1), 0);
    g = llava_grads_data(m, &ng);
    for (size_t j = 0; j < ng; j++) g1[j] *= 2;
    CHECK(l1 == l2 && n1 == n2);
    CHECK(t_max_rel_err(g, g1, (long)ng, 1e-12, NULL) < 1e-6);
    free(g1);
    batch_free(&b);
    llava_model_free(&m);
}

int main(void) {
    kernels_set_threads(2);
    const char *src = getenv("LLAVA_SOURCE_DIR");
    const char *cases[] = {"gqa_mlp2x", "mha_linear"};
    for (int c = 0; c < 2; c++) {
        snprintf(fixture, sizeof fixture, "%s/tests/fixtures/model/%s", src ? src : "..", cases[c]);
        test_round_trips();
        test_parts();
        test_random_and_batches();
    }
    return test_finish();
}
