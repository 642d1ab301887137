/* Tests the GPU memory planner (kernels/cuda/memplan.c) on Vicuna-7B/13B + CLIP-L/336: parameter counts, what
 * fits on 80 GB GPUs with and without ZeRO-1 / recomputation, the advice, the CLI hook. No GPU needed.
 * Run: ctest -R test_memplan */
/* memplan.c is compiled into llava_kernels only when the CUDA backend is configured (kernels/cuda/CMakeLists.txt);
 * including it here keeps this test building and running in CPU-only builds too. */
#include "kernels/cuda/memplan.c"

#include "common/err.h"
#include "tests/test.h"

#define GIB (1024.0 * 1024.0 * 1024.0)

static void vicuna13b(llava_config_t *c) {
    llava_config_default(c);
    c->text.hidden_size = 5120;
    c->text.intermediate_size = 13824;
    c->text.num_hidden_layers = 40;
    c->text.num_attention_heads = 40;
    c->text.num_key_value_heads = 40;
    c->text.head_dim = 128;
}

static void test_counts(void) {
    llava_config_t c;
    memplan_opts_t o;
    memplan_t p;
    llava_config_default(&c); /* LLaMA-7B-sized text model (Vicuna-7B) + CLIP ViT-L/14-336 */
    memplan_opts_default(&o);
    CHECK_RC(memplan_compute(&c, &o, &p), 0);
    CHECK_EQ_INT(p.n_llm, 6738415616LL);      /* LLaMA-7B, vocab 32000 */
    CHECK_EQ_INT(p.n_vision, 303507456LL);    /* CLIPVisionModel ViT-L/14-336 */
    CHECK_EQ_INT(p.n_projector, 20979712LL);  /* 1024->4096->4096 with biases */
    CHECK_EQ_INT(p.n_trainable, p.n_llm + p.n_projector);
    o.trainable = MEMPLAN_TRAIN_PROJECTOR;
    CHECK_RC(memplan_compute(&c, &o, &p), 0);
    CHECK_EQ_INT(p.n_trainable, p.n_projector);
    CHECK(p.fits); /* stage 1 (projector only) on one GPU */
    vicuna13b(&c);
    o.trainable = MEMPLAN_TRAIN_ALL;
    CHECK_RC(memplan_compute(&c, &o, &p), 0);
    CHECK_EQ_INT(p.n_llm, 13015864320LL); /* LLaMA-13B */
}

static void test_7b(void) {
    llava_config_t c;
    memplan_opts_t o;
    memplan_t p;
    llava_config_default(&c);
    memplan_opts_default(&o);
    /* full fine-tune on one 80 GB GPU without sharding: 2 (bf16) + 2 (grads) + 4 (master) + 8 (moments) bytes
     * per parameter is already ~106 GiB */
    o.zero_world = 1;
    CHECK_RC(memplan_compute(&c, &o, &p), 0);
    CHECK(!p.fits);
    CHECK((p.master + p.adam) / (double)p.n_trainable >= 12.0);
    CHECK(p.advice_zero_world >= 2 && p.advice_zero_world <= 8);
    CHECK(!p.advice_recompute);          /* recompute alone cannot help: the states do not fit */
    CHECK_EQ_INT(p.advice_micro_batch_tokens, 0);
    memplan_print(&p, stdout);
    char adv[512], want[128];
    memplan_advice_spec(&p, adv, sizeof adv); /* what a worker refusing the job says */
    snprintf(want, sizeof want, "change one of: train.zero_stage: 1 with cluster.workers >= %d", p.advice_zero_world);
    CHECKF(strcmp(adv, want) == 0, "advice '%s'", adv);
    /* ZeRO-1 over 8 x 80 GB fits, even without recompute */
    o.zero_world = 8;
    CHECK_RC(memplan_compute(&c, &o, &p), 0);
    CHECK(p.fits);
    CHECK(p.total < p.usable);
    memplan_print(&p, stdout);
    /* recompute saves memory */
    double before = p.total;
    o.recompute = 1;
    CHECK_RC(memplan_compute(&c, &o, &p), 0);
    CHECK(p.fits && p.total < before);
    /* a huge micro-batch does not fit; the advice names a smaller one, recompute, and checks out */
    o.recompute = 0;
    o.micro_batch_tokens = 65536;
    CHECK_RC(memplan_compute(&c, &o, &p), 0);
    CHECK(!p.fits);
    CHECK(p.advice_micro_batch_tokens >= 128 && p.advice_micro_batch_tokens < 65536);
    memplan_t q;
    memplan_opts_t o2 = o;
    o2.micro_batch_tokens = p.advice_micro_batch_tokens;
    CHECK_RC(memplan_compute(&c, &o2, &q), 0);
    CHECK(q.fits);
    o2.micro_batch_tokens = p.advice_micro_batch_tokens * 2;
    CHECK_RC(memplan_compute(&c, &o2, &q), 0);
    CHECK(!q.fits);
    /* fp32 costs more than bf16 */
    o.micro_batch_tokens = 2048;
    CHECK_RC(memplan_compute(&c, &o, &q), 0);
    o.precision = MEMPLAN_FP32;
    CHECK_RC(memplan_compute(&c, &o, &p), 0);
    CHECK(p.total > q.total && p.master == 0.0);
}

static void test_13b(void) {
    llava_config_t c;
    memplan_opts_t o;
    memplan_t p;
    vicuna13b(&c);
    memplan_opts_default(&o);
    o.zero_world = 8;
    o.recompute = 1;
    CHECK_RC(memplan_compute(&c, &o, &p), 0);
    CHECK(p.fits);
    memplan_print(&p, stdout);
    o.recompute = 0;
    CHECK_RC(memplan_compute(&c, &o, &p), 0);
    CHECK(!p.fits);
    CHECK(p.advice_recompute);
    memplan_print(&p, stdout);
    char adv[512];
    memplan_advice_spec(&p, adv, sizeof adv);
    CHECKF(strncmp(adv, "change one of: train.recompute: true", 36) == 0, "advice '%s'", adv);
    /* nothing single fits: 13B all on a 16 GiB device */
    o.zero_world = 1;
    o.device_bytes = 16.0 * (1 << 30);
    CHECK_RC(memplan_compute(&c, &o, &p), 0);
    CHECK(!p.fits && !p.advice_recompute && !p.advice_micro_batch_tokens);
    memplan_advice_spec(&p, adv, sizeof adv);
    CHECKF(p.advice_zero_world || strncmp(adv, "no single change fits", 21) == 0, "advice '%s'", adv);
}

static void test_bad(void) {
    llava_config_t c;
    memplan_opts_t o;
    memplan_t p;
    llava_config_default(&c);
    memplan_opts_default(&o);
    o.zero_world = 0;
    CHECK_RC(memplan_compute(&c, &o, &p), LLAVA_EINVAL);
    memplan_opts_default(&o);
    o.micro_batch_tokens = 0;
    CHECK_RC(memplan_compute(&c, &o, &p), LLAVA_EINVAL);
    memplan_opts_default(&o);
    c.has_vision = 0;
    CHECK_RC(memplan_compute(&c, &o, &p), LLAVA_EINVAL);
}

static void test_cli(void) {
    FILE *f = tmpfile();
    char buf[8192];
    size_t n;
    char *fit[] = {"memplan", "--trainable", "all", "--zero", "8", "--tokens", "2048", "--device-gb", "79.1"};
    char *nofit[] = {"memplan", "--trainable", "all", "--zero", "1"};
    char *bad1[] = {"memplan", "--zero"};
    char *bad2[] = {"memplan", "--trainable", "some"};
    char *bad3[] = {"memplan", "--tokens", "-5"};
    char *proj[] = {"memplan", "--trainable", "projector", "--precision", "fp32", "--images", "4", "--recompute"};
    CHECK(f != NULL);
    if (!f) return;
    char *help[] = {"memplan", "--help"};
    CHECK_EQ_INT(memplan_cli_main(2, help, f), 0);
    CHECK_EQ_INT(memplan_cli_main(9, fit, f), 0);
    CHECK_EQ_INT(memplan_cli_main(5, nofit, f), 1);
    CHECK_EQ_INT(memplan_cli_main(2, bad1, f), 2);
    CHECK_EQ_INT(memplan_cli_main(3, bad2, f), 2);
    CHECK_EQ_INT(memplan_cli_main(3, bad3, f), 2);
    CHECK_EQ_INT(memplan_cli_main(8, proj, f), 0);
    rewind(f);
    n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    CHECK(strstr(buf, "verdict: FITS") != NULL);
    CHECK(strstr(buf, "verdict: DOES NOT FIT") != NULL);
    CHECK(strstr(buf, "advice: ZeRO-1 over >= ") != NULL);
    CHECK(strstr(buf, "adam moments") != NULL);
    fclose(f);
}

/* The published llava-1.5-7b-hf config (vocab 32064) through the CLI's --config. */
static void test_cli_config(void) {
    const char *src = getenv("LLAVA_SOURCE_DIR");
    char path[4096];
    FILE *f = tmpfile();
    snprintf(path, sizeof path, "%s/tests/fixtures/hfconfig/llava-1.5-7b-hf.json", src ? src : "..");
    char *fit[] = {"memplan", "--config", path, "--zero", "8", "--recompute"};
    char *nofit[] = {"memplan", "--config", path};
    char *missing[] = {"memplan", "--config", "/nonexistent/config.json"};
    CHECK(f != NULL);
    if (!f) return;
    CHECK_EQ_INT(memplan_cli_main(6, fit, f), 0);
    CHECK_EQ_INT(memplan_cli_main(3, nofit, f), 1);
    CHECK_EQ_INT(memplan_cli_main(3, missing, f), 2);
    fclose(f);
}

int main(void) {
    test_counts();
    test_7b();
    test_13b();
    test_bad();
    test_cli();
    test_cli_config();
    return test_finish();
}
