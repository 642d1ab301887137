/* One LLaVA training step (forward, backward, AdamW with clipping) on the CPU model, `all` mode: CLIP 6 layers /
 * hidden 384 / 224 px / patch 14, mlp2x_gelu projector, LLaMA 8 layers / hidden 512 / 8 heads / vocab 32000,
 * batch 2 x 512 tokens (one image of 256 patch tokens per row). Prints one `result` line (median step ms, GFLOP/s,
 * peak RSS). bench/bench_step.py runs the same step in PyTorch + transformers; bench/bench_step.sh runs both.
 * Run: build/bench/bench_step [--threads N] [--steps N] [--intermediate N] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "common/err.h"
#include "kernels/cpu/ops.h"
#include "worker/model_llava.h"
#include "worker/runtime_env.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Matmul + attention FLOPs of the step (vision forward only; projector and LLM forward + 2x backward). */
static double step_flops(const llava_config_t *c, int B, int T, int n_img, int rows) {
    const clip_vision_config_t *v = &c->vision;
    const llama_config_t *t = &c->text;
    double Cv = v->hidden_size, Iv = v->intermediate_size, P = v->patch_size;
    double np = (double)(v->image_size / v->patch_size) * (v->image_size / v->patch_size), L = np + 1;
    int nl = v->num_hidden_layers + 1 + c->vision_feature_layer;
    double vis = n_img * (2 * np * 3 * P * P * Cv + nl * L * (2 * (4 * Cv * Cv + 2 * Cv * Iv) + 4 * L * Cv));
    double H = t->hidden_size, I = t->intermediate_size, V = t->vocab_size, N = (double)B * T;
    double HS = t->head_dim > 0 ? t->head_dim : H / t->num_attention_heads;
    double QD = t->num_attention_heads * HS, KD = t->num_key_value_heads * HS;
    double llm = N * (t->num_hidden_layers * (2 * (2 * H * QD + 2 * H * KD + 3 * H * I) + 4 * T * QD) + 2 * H * V);
    double M = (double)n_img * rows, proj = 2 * M * (Cv * H + H * H);
    return vis + 3 * (llm + proj);
}

int main(int argc, char **argv) {
    runtime_env_ensure(argv);
    int threads = 2, steps = 3, inter = 1376;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--threads") == 0) threads = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--steps") == 0) steps = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--intermediate") == 0) inter = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: bench_step [--threads N] [--steps N] [--intermediate N]\n");
            return 2;
        }
    }
    if (steps < 1 || steps > 100) steps = 3;
    kernels_set_threads(threads);
    llava_config_t c;
    llava_config_default(&c);
    snprintf(c.model_type, HF_STR_MAX, "llava");
    c.has_vision = c.has_text = 1;
    c.vision.hidden_size = 384;
    c.vision.intermediate_size = 1536;
    c.vision.num_hidden_layers = 6;
    c.vision.num_attention_heads = 6;
    c.vision.image_size = 224;
    c.vision.patch_size = 14;
    c.text.vocab_size = 32000;
    c.text.hidden_size = 512;
    c.text.intermediate_size = inter;
    c.text.num_hidden_layers = 8;
    c.text.num_attention_heads = 8;
    c.text.num_key_value_heads = 8;
    c.text.head_dim = 64;
    c.text.max_position_embeddings = 2048;
    c.vision_feature_layer = -2;
    c.image_token_index = 31999;
    llava_model_t *m = NULL;
    batch_t b;
    memset(&b, 0, sizeof b);
    int rc = llava_model_init_random(&c, PROJ_MLP2X_GELU, 1, &m);
    if (rc) return 1;
    int B = 2, T = 512, rows = m->feat_rows, S = c.vision.image_size;
    if (batch_alloc(&b, B, T, B, S)) return 1;
    uint64_t s = 12345;
    for (int r = 0; r < B; r++) {
        b.lengths[r] = T;
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)r * T + t;
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            int img = t >= 1 && t < 1 + rows;
            b.input_ids[i] = t == 0 ? 1 : img ? (int32_t)c.image_token_index : (int32_t)(3 + (s >> 33) % 31000);
            b.labels[i] = (t == 0 || img) ? LLAVA_IGNORE_INDEX : b.input_ids[i];
        }
    }
    for (long i = 0; i < (long)B * 3 * S * S; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        b.pixel_values[i] = (float)((s >> 40) % 2000) / 1000.0f - 1.0f;
    }
    batch_count_targets(&b);
    adamw_opts_t o = {.lr = 1e-4, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.0,
                      .max_grad_norm = 1.0};
    double times[101], loss = 0;
    for (int it = 0; it <= steps; it++) { /* step 0 is the warm-up */
        double t0 = now_s(), ls = 0;
        int64_t nt = 0;
        if (llava_forward_backward(m, &b, TRAIN_ALL, &ls, &nt, 0) || llava_adamw_step(m, &o, 1.0 / nt, NULL)) return 1;
        times[it] = now_s() - t0;
        loss = ls / nt;
        fprintf(stderr, "step %d: %.1f ms, loss %.4f\n", it, times[it] * 1e3, loss);
    }
    qsort(times + 1, (size_t)steps, sizeof(double), cmp_d);
    double med = times[1 + steps / 2];
    double fl = step_flops(&c, B, T, B, rows);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("result impl=c threads=%d step_ms=%.1f gflops=%.2f peak_rss_mb=%.1f loss=%.4f flops=%.4g\n", threads,
           med * 1e3, fl / med / 1e9, ru.ru_maxrss / 1024.0, loss, fl);
    batch_free(&b);
    llava_model_free(&m);
    return 0;
}
