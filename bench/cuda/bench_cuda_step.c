/* Whole-step GPU benchmark: forward + backward + AdamW of a randomly initialised LLaVA (LLaMA-7B + CLIP ViT-L/14-336
 * shapes by default, fewer layers on request) on worker/model_cuda.h, timed with CUDA events after warm-up steps;
 * prints ms per step, tokens/s, achieved model TFLOP/s and MFU against the device's bf16 dense peak. Exits 77
 * without a GPU. Run: build/kernels/cuda/bench_cuda_step [--layers 32] [--seq 2048] [--batch 1] [--projector]
 * [--recompute] [--f32] [--steps 5] [--peak-tflops X]   (the full 7B needs ~2 x 27 GB of host memory: fp32
 * weights and the gradient buffer the all-reduce would use; --layers 8 needs a quarter of it) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "common/batch.h"
#include "common/err.h"
#include "kernels/cuda/cuda_check.h"
#include "worker/model_cuda.h"

typedef struct {
    int layers, vision_layers, seq, batch, steps, recompute, projector;
    cuda_dtype_t dt;
    double peak_tflops;
} opts_t;

/* bf16 dense tensor-core peaks (no sparsity), as bench_cuda_ops. */
static double peak_by_name(const char *name) {
    if (strstr(name, "H200")) return 989.0;
    if (strstr(name, "H100") && strstr(name, "PCIe")) return 756.0;
    if (strstr(name, "H100") || strstr(name, "H800")) return 989.0;
    if (strstr(name, "A100") || strstr(name, "A800")) return 312.0;
    return 0.0;
}

/* One row per sample: BOS, the image's tokens, then text with labels. */
static int make_batch(const llava_model_t *m, int B, int T, batch_t *b) {
    int rc = 0;
    int fr = m->feat_rows, V = m->cfg.text.vocab_size, S = m->cfg.vision.image_size;
    CHECK_GOTO(T > fr + 2, LLAVA_EINVAL, "--seq %d is too short for %d image tokens", T, fr);
    RC_CHECK_GOTO(batch_alloc(b, B, T, B, S));
    uint64_t x = 12345;
    for (int r = 0; r < B; r++) {
        b->lengths[r] = T;
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)r * T + t;
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            int32_t tok = (int32_t)(2 + (x >> 33) % (uint64_t)(V - 2));
            if (t == 0) {
                b->input_ids[i] = 1;
            } else if (t <= fr) {
                b->input_ids[i] = (int32_t)m->cfg.image_token_index;
            } else {
                b->input_ids[i] = tok;
                b->labels[i] = tok;
            }
        }
    }
    for (size_t i = 0; i < (size_t)B * 3 * S * S; i++) b->pixel_values[i] = (float)((int)(i % 17) - 8) / 8.0f;
    batch_count_targets(b);
cleanup:
    return rc;
}

static int run(const opts_t *o) {
    int rc = 0;
    llava_model_t *m = NULL;
    llava_cuda_t *g = NULL;
    batch_t b;
    cudaEvent_t e0 = NULL, e1 = NULL;
    memset(&b, 0, sizeof b);
    llava_config_t cfg;
    llava_config_default(&cfg);
    cfg.text.num_hidden_layers = o->layers;
    cfg.vision.num_hidden_layers = o->vision_layers;
    cfg.text.vocab_size = 32064; /* LLaVA-1.5's vocabulary with the image token inside it */
    struct cudaDeviceProp prop;
    CUDA_CHECK_GOTO(cudaGetDeviceProperties(&prop, 0));
    double peak = o->peak_tflops > 0 ? o->peak_tflops : peak_by_name(prop.name);
    printf("device: %s, %.1f GiB; LLaMA %d layers (C %d, I %d, V %d) + CLIP %d layers at %d px; %s, %s mode%s\n",
           prop.name, (double)prop.totalGlobalMem / (1 << 30), o->layers, cfg.text.hidden_size,
           cfg.text.intermediate_size, cfg.text.vocab_size, o->vision_layers, cfg.vision.image_size,
           o->dt == CUDA_DT_F32 ? "fp32" : "bf16", o->projector ? "projector" : "all",
           o->recompute ? ", recomputation" : "");
    RC_CHECK_GOTO(llava_model_init_random(&cfg, PROJ_MLP2X_GELU, 1, &m));
    llava_cuda_opts_t co = {.device = 0, .dt = o->dt, .recompute = o->recompute};
    RC_CHECK_GOTO(llava_cuda_new(m, &co, &g));
    RC_CHECK_GOTO(make_batch(m, o->batch, o->seq, &b));
    train_mode_t mode = o->projector ? TRAIN_PROJECTOR : TRAIN_ALL;
    adamw_opts_t ao = {.lr = 1e-5, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0, .max_grad_norm = 1};
    double ls = 0;
    int64_t nt = 0;
    for (int w = 0; w < 2; w++) { /* warm-up: allocations, cuBLASLt heuristics */
        RC_CHECK_GOTO(llava_cuda_forward_backward(g, &b, mode, &ls, &nt, 0));
        RC_CHECK_GOTO(llava_cuda_adamw_step(g, &ao, 1.0 / (double)(nt ? nt : 1), NULL));
    }
    printf("device memory held by the model: %.2f GiB\n", (double)llava_cuda_bytes(g) / (1 << 30));
    CUDA_CHECK_GOTO(cudaEventCreate(&e0));
    CUDA_CHECK_GOTO(cudaEventCreate(&e1));
    CUDA_CHECK_GOTO(cudaEventRecord(e0, llava_cuda_stream(g)));
    for (int st = 0; st < o->steps; st++) {
        RC_CHECK_GOTO(llava_cuda_forward_backward(g, &b, mode, &ls, &nt, 0));
        RC_CHECK_GOTO(llava_cuda_adamw_step(g, &ao, 1.0 / (double)(nt ? nt : 1), NULL));
    }
    CUDA_CHECK_GOTO(cudaEventRecord(e1, llava_cuda_stream(g)));
    CUDA_CHECK_GOTO(cudaEventSynchronize(e1));
    float ms = 0;
    CUDA_CHECK_GOTO(cudaEventElapsedTime(&ms, e0, e1));
    double step_s = ms / 1e3 / o->steps;
    /* Model FLOPs: 2 per weight and token forward, 2 more for the input gradient, 2 more for weight gradients where
     * trained; attention 4*T^2*d per layer forward (halved when causal), x3 with its backward; frozen CLIP forward. */
    const llama_config_t *t = &m->cfg.text;
    const clip_vision_config_t *v = &m->cfg.vision;
    double N = (double)o->batch * o->seq, C = t->hidden_size, I = t->intermediate_size, L = t->num_hidden_layers;
    double QD = (double)t->num_attention_heads * t->head_dim, KD = (double)t->num_key_value_heads * t->head_dim;
    double layer_w = C * QD * 2 + C * KD * 2 + 3 * C * I, R = (double)nt;
    double wmul = o->projector ? 4.0 : 6.0;
    double llm = wmul * (layer_w * L * N + C * t->vocab_size * R) + 3.0 * L * 2.0 * o->batch * (double)o->seq * o->seq * QD;
    double Cv = v->hidden_size, Iv = v->intermediate_size, Lc = (double)m->clip.n_patches + 1;
    double nl = clip_layers_needed(v, m->cfg.vision_feature_layer), img = o->batch;
    double vis = 2.0 * nl * img * Lc * (4 * Cv * Cv + 2 * Cv * Iv) + 4.0 * nl * img * Lc * Lc * Cv;
    double M = img * m->feat_rows, proj = 6.0 * M * (Cv * C + C * C);
    double flops = llm + vis + proj;
    printf("loss %.4f over %lld targets; %d steps: %.1f ms/step, %.0f tokens/s, %.1f model TFLOP/s", ls / (double)nt,
           (long long)nt, o->steps, step_s * 1e3, N / step_s, flops / step_s / 1e12);
    if (peak > 0)
        printf(", MFU %.1f%% of %.0f TFLOP/s bf16 dense peak\n", 100.0 * flops / step_s / (peak * 1e12), peak);
    else
        printf("; MFU: unknown peak for '%s', pass --peak-tflops X\n", prop.name);
cleanup:
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    llava_cuda_free(&g);
    llava_model_free(&m);
    batch_free(&b);
    return rc;
}

int main(int argc, char **argv) {
    opts_t o = {.layers = 32, .vision_layers = 24, .seq = 2048, .batch = 1, .steps = 5, .dt = CUDA_DT_BF16};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (strcmp(a, "--layers") == 0 && more) o.layers = atoi(argv[++i]);
        else if (strcmp(a, "--vision-layers") == 0 && more) o.vision_layers = atoi(argv[++i]);
        else if (strcmp(a, "--seq") == 0 && more) o.seq = atoi(argv[++i]);
        else if (strcmp(a, "--batch") == 0 && more) o.batch = atoi(argv[++i]);
        else if (strcmp(a, "--steps") == 0 && more) o.steps = atoi(argv[++i]);
        else if (strcmp(a, "--peak-tflops") == 0 && more) o.peak_tflops = atof(argv[++i]);
        else if (strcmp(a, "--f32") == 0) o.dt = CUDA_DT_F32;
        else if (strcmp(a, "--recompute") == 0) o.recompute = 1;
        else if (strcmp(a, "--projector") == 0) o.projector = 1;
        else {
            int help = strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0;
            fprintf(help ? stdout : stderr,
                    "usage: %s [--layers N] [--vision-layers N] [--seq T] [--batch B] [--steps K] [--f32]\n"
                    "       [--recompute] [--projector] [--peak-tflops X]\n"
                    "Forward+backward+AdamW of a random LLaVA (LLaMA-7B + CLIP ViT-L/14-336 shapes, one image per\n"
                    "row) on the GPU: ms/step, tokens/s, model TFLOP/s and MFU. Exits 77 without a GPU.\n",
                    argv[0]);
            return help ? 0 : 2;
        }
    }
    if (o.layers < 1 || o.vision_layers < 2 || o.seq < 1 || o.batch < 1 || o.steps < 1) {
        fprintf(stderr, "bench_cuda_step: sizes must be positive (vision layers >= 2)\n");
        return 2;
    }
    if (cuda_device_count() == 0) {
        printf("SKIP: no CUDA device\n");
        return 77;
    }
    return run(&o) == 0 ? 0 : 1;
}
