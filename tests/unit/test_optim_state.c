/* Tests the AdamW state on disk (worker/model_llava.h llava_optim_save/load): a model resumed from a checkpoint
 * with its optimizer state takes the same next step as the one that never stopped; wrong files are refused.
 * Run: ctest -R test_optim_state */
#include "common/err.h"
#include "common/safetensors.h"
#include "tests/test.h"
#include "worker/model_llava.h"

static const char *k_model = "fixtures/model/mha_linear/model";

static void fill_grads(llava_model_t *m, float salt) {
    size_t n = 0;
    float *g = llava_grads_data(m, &n);
    for (size_t i = 0; i < n; i++) g[i] = salt * (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f * salt;
}

int main(void) {
    log_set_level(LOG_NONE);
    llava_model_t *a = NULL, *b = NULL;
    CHECK_RC(llava_model_load(k_model, &a), 0);
    CHECK_RC(llava_model_load(k_model, &b), 0);
    if (!a || !b) return test_finish();
    adamw_opts_t o = {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.1, .max_grad_norm = 1.0};
    char path[600];
    snprintf(path, sizeof path, "%s/optimizer.safetensors", test_tmpdir());
    CHECK_RC(llava_optim_save(a, path), LLAVA_EINVAL); /* no state yet */
    CHECK_RC(llava_grads_prepare(a, TRAIN_ALL), 0);
    for (int s = 0; s < 2; s++) { /* two steps on a */
        fill_grads(a, 1.0f + (float)s);
        CHECK_RC(llava_adamw_step(a, &o, 0.5, NULL), 0);
    }
    CHECK_RC(llava_optim_save(a, path), 0);
    /* b gets a's weights (the checkpoint) and its optimizer state */
    memcpy(arena_data(b->params), arena_data(a->params), arena_bytes(a->params));
    CHECK_RC(llava_optim_load(b, path), LLAVA_EINVAL); /* gradients not prepared */
    CHECK_RC(llava_grads_prepare(b, TRAIN_ALL), 0);
    CHECK_RC(llava_optim_load(b, path), 0);
    CHECK_EQ_INT(b->adam_t, 2);
    CHECK(memcmp(arena_data(a->adam_v), arena_data(b->adam_v), arena_bytes(a->adam_v)) == 0);
    /* the third step is the same on both */
    fill_grads(a, 3.0f);
    fill_grads(b, 3.0f);
    CHECK_RC(llava_adamw_step(a, &o, 0.5, NULL), 0);
    CHECK_RC(llava_adamw_step(b, &o, 0.5, NULL), 0);
    CHECK(memcmp(arena_data(a->params), arena_data(b->params), arena_bytes(a->params)) == 0);
    /* state of another training mode is refused by name */
    llava_model_t *c = NULL;
    CHECK_RC(llava_model_load(k_model, &c), 0);
    if (c) {
        CHECK_RC(llava_grads_prepare(c, TRAIN_PROJECTOR), 0);
        CHECK_RC(llava_optim_load(c, path), LLAVA_EFORMAT); /* more tensors in the file than the mode trains */
        llava_model_free(&c);
    }
    CHECK_RC(llava_optim_load(b, "/nonexistent/optimizer.safetensors"), LLAVA_ENOTFOUND);
    llava_model_free(&a);
    llava_model_free(&b);
    return test_finish();
}
