/* GPU memory planner: counts parameters from the HF config and adds up bytes per GPU for each kind of state, then
 * checks the sum against the device and searches for the smallest change that fits.
 * Tested by tests/unit/test_memplan.c; `llava-model memplan ...` style programs call memplan_cli_main. */
#include "kernels/cuda/memplan.h"

#include <stdlib.h>
#include <string.h>

#include "common/err.h"

#define GIB (1024.0 * 1024.0 * 1024.0)
#define MIB (1024.0 * 1024.0)
/* CUDA runtime + cuBLAS/cuBLASLt handles + NCCL communicator buffers: measured totals on H100 are ~1 GiB;
 * a round 1.5 GiB leaves room for NCCL's channels on 8 ranks. */
#define CONTEXT_BYTES (1.5 * GIB)
#define LT_WORKSPACE_BYTES (32.0 * MIB)
#define FRAGMENTATION_MARGIN 0.05

void memplan_opts_default(memplan_opts_t *o) {
    memset(o, 0, sizeof *o);
    o->trainable = MEMPLAN_TRAIN_ALL;
    o->precision = MEMPLAN_BF16;
    o->micro_batch_tokens = 2048;
    o->images_per_micro_batch = 1;
    o->recompute = 0;
    o->zero_world = 1;
    o->device_bytes = 79.1 * GIB; /* an "80 GB" H100/A100 as cudaMemGetInfo reports it */
    o->bucket_bytes = 64.0 * MIB;
}

static int64_t count_vision(const clip_vision_config_t *v) {
    int64_t H = v->hidden_size, I = v->intermediate_size, P = v->patch_size;
    int64_t np = (int64_t)(v->image_size / v->patch_size) * (v->image_size / v->patch_size);
    int64_t emb = (int64_t)v->num_channels * P * P * H + H + (np + 1) * H; /* patch conv, class, positions */
    int64_t layer = 4 * (H * H + H) + 4 * H + (H * I + I) + (I * H + H);  /* q,k,v,o + 2 LN + fc1, fc2 */
    return emb + 2 * H /* pre LN */ + layer * v->num_hidden_layers + 2 * H /* post LN */;
}

static int64_t count_llm(const llama_config_t *t, int tied) {
    int64_t H = t->hidden_size, I = t->intermediate_size, V = t->vocab_size;
    int64_t qd = (int64_t)t->num_attention_heads * t->head_dim, kvd = (int64_t)t->num_key_value_heads * t->head_dim;
    int64_t bias = t->attention_bias ? qd + 2 * kvd + H : 0;
    int64_t layer = H * qd + 2 * H * kvd + qd * H + bias + 3 * H * I + (t->mlp_bias ? 2 * I + H : 0) + 2 * H;
    return V * H + layer * t->num_hidden_layers + H + (tied ? 0 : V * H);
}

/* Bytes one LLM layer keeps per token for its backward (compute dtype es, statistics fp32). */
static double llm_layer_saved_per_token(const llama_config_t *t, double es) {
    double H = t->hidden_size, I = t->intermediate_size;
    double qd = (double)t->num_attention_heads * t->head_dim, kvd = (double)t->num_key_value_heads * t->head_dim;
    double elems = H       /* residual in (rmsnorm 1 input) */
                   + H     /* rmsnorm 1 out (q/k/v projection input) */
                   + qd + 2 * kvd /* q, k, v after RoPE */
                   + qd    /* attention out (o projection input; also for rowsum(dout*out)) */
                   + H     /* residual after attention (rmsnorm 2 input) */
                   + H     /* rmsnorm 2 out (gate/up input) */
                   + 3 * I; /* gate, up, silu(gate)*up (down input) */
    double stats = 2 * 4.0 + t->num_attention_heads * 4.0; /* two rstd, logsumexp per head */
    return elems * es + stats;
}

static double total_of(const memplan_t *p) {
    return p->weights + p->master + p->grads + p->adam + p->act_saved + p->act_peak + p->act_vision + p->logits +
           p->workspace;
}

static void plan_fill(const llava_config_t *c, const memplan_opts_t *o, memplan_t *p) {
    const llama_config_t *t = &c->text;
    const clip_vision_config_t *v = &c->vision;
    double es = o->precision == MEMPLAN_BF16 ? 2.0 : 4.0;
    double W = o->zero_world, tok = (double)o->micro_batch_tokens;
    double bucket = o->bucket_bytes > 0 ? o->bucket_bytes : 64.0 * MIB;
    memset(p, 0, sizeof *p);
    p->opts = *o;
    p->n_vision = count_vision(v);
    p->n_projector = (int64_t)v->hidden_size * t->hidden_size + (int64_t)t->hidden_size * t->hidden_size +
                     (c->multimodal_projector_bias ? 2 * (int64_t)t->hidden_size : 0);
    p->n_llm = count_llm(t, c->tie_word_embeddings || t->tie_word_embeddings);
    p->n_total = p->n_vision + p->n_projector + p->n_llm;
    p->n_trainable = p->n_projector + (o->trainable == MEMPLAN_TRAIN_ALL ? p->n_llm : 0);
    double ntr = (double)p->n_trainable;

    p->weights = (double)p->n_total * es;
    /* ZeRO-1 (as DeepSpeed stage 1): fp32 master and both moments exist only for this rank's 1/W shard; the full
     * gradient is all-reduced (or reduce-scattered in place), the updated shard all-gathered into the weights */
    p->master = o->precision == MEMPLAN_BF16 ? ntr * 4.0 / W : 0.0;
    /* without sharding the worker sums out of place into a second buffer (the accumulated gradients survive a
     * broken all-reduce); the ZeRO-1 reduce-scatter runs in place */
    p->grads = ntr * es * (W > 1 ? 1.0 : 2.0);
    p->adam = ntr * 8.0 / W;

    double per_tok = llm_layer_saved_per_token(t, es);
    double H = t->hidden_size, I = t->intermediate_size;
    if (o->recompute) {
        p->act_saved = tok * H * es * t->num_hidden_layers; /* each layer's input only */
    } else {
        p->act_saved = tok * per_tok * t->num_hidden_layers;
    }
    /* backward of one layer: its activations (recomputed, or the ones above being consumed) plus gradient
     * buffers: the residual gradient and the largest intermediate gradients (gate, up, and their product) */
    p->act_peak = (o->recompute ? tok * per_tok : 0.0) + tok * (2 * H + 3 * I) * es;
    /* vision: frozen, forward only, one layer at a time: hidden, LN out, qkv, MLP hidden; plus the selected
     * feature layer and the projector's saved input/hidden (image rows) */
    double vrows = (double)o->images_per_micro_batch * ((double)(v->image_size / v->patch_size) *
                                                         (v->image_size / v->patch_size) + 1);
    double Hv = v->hidden_size, Iv = v->intermediate_size;
    p->act_vision = vrows * (6 * Hv + Iv) * es + vrows * (Hv + 2 * H) * es;
    /* logits for the loss rows (all tokens, conservatively) in the compute dtype, overwritten in place by
     * dlogits (fused cross entropy), plus fp32 per-row losses */
    p->logits = tok * (double)t->vocab_size * es + tok * 4.0;
    p->workspace = LT_WORKSPACE_BYTES + 2 * bucket + CONTEXT_BYTES;
    p->total = total_of(p);
    p->usable = o->device_bytes * (1.0 - FRAGMENTATION_MARGIN);
    p->fits = p->total <= p->usable;
}

static int opts_ok(const llava_config_t *c, const memplan_opts_t *o) {
    int rc = 0;
    CHECK_GOTO(c->has_vision && c->has_text, LLAVA_EINVAL, "memplan: the config needs a vision tower and an LLM");
    CHECK_GOTO(o->micro_batch_tokens > 0 && o->images_per_micro_batch >= 0 && o->zero_world >= 1 &&
                   o->device_bytes > 0 && (o->trainable == MEMPLAN_TRAIN_ALL || o->trainable == MEMPLAN_TRAIN_PROJECTOR) &&
                   (o->precision == MEMPLAN_BF16 || o->precision == MEMPLAN_FP32),
               LLAVA_EINVAL, "memplan: bad options (tokens %ld, images %d, world %d, device %.0f bytes)",
               o->micro_batch_tokens, o->images_per_micro_batch, o->zero_world, o->device_bytes);
cleanup:
    return rc;
}

int memplan_compute(const llava_config_t *c, const memplan_opts_t *o, memplan_t *out) {
    int rc = 0;
    memplan_t tmp;
    memplan_opts_t x;
    RC_CHECK_GOTO(opts_ok(c, o));
    plan_fill(c, o, out);
    if (out->fits) goto cleanup;
    if (!o->recompute) {
        x = *o;
        x.recompute = 1;
        plan_fill(c, &x, &tmp);
        out->advice_recompute = tmp.fits;
    }
    for (long t = o->micro_batch_tokens / 2; t >= 128; t /= 2) {
        x = *o;
        x.micro_batch_tokens = t;
        plan_fill(c, &x, &tmp);
        if (tmp.fits) {
            out->advice_micro_batch_tokens = t;
            break;
        }
    }
    for (int w = o->zero_world + 1; w <= 4096; w++) {
        x = *o;
        x.zero_world = w;
        plan_fill(c, &x, &tmp);
        if (tmp.fits) {
            out->advice_zero_world = w;
            break;
        }
    }
cleanup:
    return rc;
}

static void row(FILE *f, const char *name, double bytes, double device, const char *note) {
    fprintf(f, "  %-22s %9.2f GiB %6.1f%%  %s\n", name, bytes / GIB, 100.0 * bytes / device, note);
}

void memplan_print(const memplan_t *p, FILE *f) {
    const memplan_opts_t *o = &p->opts;
    double dev = o->device_bytes;
    fprintf(f, "memory plan: trainable=%s precision=%s tokens/micro-batch=%ld images=%d recompute=%s zero1=%d "
               "device=%.1f GiB\n",
            o->trainable == MEMPLAN_TRAIN_ALL ? "all" : "projector", o->precision == MEMPLAN_BF16 ? "bf16" : "fp32",
            o->micro_batch_tokens, o->images_per_micro_batch, o->recompute ? "on" : "off", o->zero_world, dev / GIB);
    fprintf(f, "  parameters: vision %.3f B, projector %.3f B, LLM %.3f B, total %.3f B, trainable %.3f B\n",
            p->n_vision / 1e9, p->n_projector / 1e9, p->n_llm / 1e9, p->n_total / 1e9, p->n_trainable / 1e9);
    fprintf(f, "  %-22s %13s %7s\n", "item", "per GPU", "device");
    row(f, "weights", p->weights, dev, o->precision == MEMPLAN_BF16 ? "bf16, all parameters" : "fp32, all parameters");
    row(f, "master weights", p->master, dev, "fp32, trainable / zero1");
    row(f, "gradients", p->grads, dev, o->zero_world > 1 ? "trainable, full (reduce-scattered in place)"
                                                          : "trainable, full, x2 (summed out of place)");
    row(f, "adam moments", p->adam, dev, "fp32 m + v, trainable / zero1");
    row(f, "activations saved", p->act_saved, dev, o->recompute ? "layer inputs only (recompute)" : "all layers");
    row(f, "activations peak", p->act_peak, dev, "one layer + its gradients");
    row(f, "vision + projector", p->act_vision, dev, "frozen tower, one layer at a time");
    row(f, "logits", p->logits, dev, "dlogits in place");
    row(f, "workspace + context", p->workspace, dev, "cuBLASLt, buckets, CUDA/NCCL");
    row(f, "total", p->total, dev, "");
    row(f, "usable", p->usable, dev, "device minus 5% fragmentation margin");
    if (p->fits) {
        fprintf(f, "  verdict: FITS (%.2f GiB free)\n", (p->usable - p->total) / GIB);
        return;
    }
    fprintf(f, "  verdict: DOES NOT FIT (%.2f GiB over)\n", (p->total - p->usable) / GIB);
    if (p->advice_recompute) fprintf(f, "  advice: enable activation recomputation (--recompute)\n");
    if (p->advice_micro_batch_tokens)
        fprintf(f, "  advice: micro_batch_tokens <= %ld\n", p->advice_micro_batch_tokens);
    if (p->advice_zero_world) fprintf(f, "  advice: ZeRO-1 over >= %d ranks\n", p->advice_zero_world);
    if (!p->advice_recompute && !p->advice_micro_batch_tokens && !p->advice_zero_world)
        fprintf(f, "  advice: no single change fits; combine recompute, fewer tokens and more ZeRO-1 ranks, or use "
                   "larger GPUs\n");
}

void memplan_advice_spec(const memplan_t *p, char *buf, size_t len) {
    char a[3][96] = {"", "", ""};
    if (p->advice_recompute) snprintf(a[0], sizeof a[0], " train.recompute: true;");
    if (p->advice_micro_batch_tokens)
        snprintf(a[1], sizeof a[1], " train.micro_batch_tokens: %ld;", p->advice_micro_batch_tokens);
    if (p->advice_zero_world)
        snprintf(a[2], sizeof a[2], " train.zero_stage: 1 with cluster.workers >= %d;", p->advice_zero_world);
    if (!a[0][0] && !a[1][0] && !a[2][0])
        snprintf(buf, len, "no single change fits: combine train.recompute: true, a smaller train.micro_batch_tokens "
                           "and train.zero_stage: 1 over more workers, or use larger GPUs");
    else
        snprintf(buf, len, "change one of:%s%s%s", a[0], a[1], a[2]);
    size_t n = strlen(buf);
    if (n > 0 && buf[n - 1] == ';') buf[n - 1] = 0;
}

void memplan_usage(FILE *f) {
    fprintf(f, "usage: memplan [--config PATH] [--trainable projector|all] [--precision bf16|fp32] [--tokens N]\n"
               "               [--images N] [--recompute] [--zero W] [--device-gb G]\n"
               "Device memory per GPU of a LLaVA training job, whether it fits, and what to change if not.\n"
               "  --config PATH      LLaVA config.json (default: LlavaConfig's defaults, a 7B LLaMA + CLIP-L/336)\n"
               "  --trainable WHAT   projector, or all (projector + LLM; the vision tower stays frozen)  [all]\n"
               "  --precision P      bf16 (fp32 master weights and moments) or fp32                       [bf16]\n"
               "  --tokens N         LLM tokens per micro-batch per GPU (train.micro_batch_tokens)        [2048]\n"
               "  --images N         images per micro-batch                                               [1]\n"
               "  --recompute        per-layer activation recomputation (train.recompute: true)\n"
               "  --zero W           ZeRO-1 over W ranks (train.zero_stage: 1 with W workers)             [1]\n"
               "  --device-gb G      GiB of one GPU                                                      [79.1]\n"
               "Exit status: 0 fits, 1 does not fit, 2 bad arguments.\n");
}

static int parse_long(const char *s, long lo, long *out) {
    char *end = NULL;
    long x = strtol(s, &end, 10);
    if (!s[0] || *end || x < lo) return -1;
    *out = x;
    return 0;
}

int memplan_cli_main(int argc, char **argv, FILE *out) {
    llava_config_t c;
    memplan_opts_t o;
    memplan_t p;
    long x = 0;
    llava_config_default(&c);
    memplan_opts_default(&o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            memplan_usage(out);
            return 0;
        }
        if (strcmp(a, "--recompute") == 0) {
            o.recompute = 1;
            continue;
        }
        if (!val) {
            fprintf(stderr, "memplan: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (strcmp(a, "--config") == 0) {
            if (hfconfig_read(val, &c) != 0) return 2;
        } else if (strcmp(a, "--trainable") == 0 && (!strcmp(val, "all") || !strcmp(val, "projector"))) {
            o.trainable = strcmp(val, "all") == 0 ? MEMPLAN_TRAIN_ALL : MEMPLAN_TRAIN_PROJECTOR;
        } else if (strcmp(a, "--precision") == 0 && (!strcmp(val, "bf16") || !strcmp(val, "fp32"))) {
            o.precision = strcmp(val, "bf16") == 0 ? MEMPLAN_BF16 : MEMPLAN_FP32;
        } else if (strcmp(a, "--tokens") == 0 && parse_long(val, 1, &x) == 0) {
            o.micro_batch_tokens = x;
        } else if (strcmp(a, "--images") == 0 && parse_long(val, 0, &x) == 0 && x < 100000) {
            o.images_per_micro_batch = (int)x;
        } else if (strcmp(a, "--zero") == 0 && parse_long(val, 1, &x) == 0 && x < 1000000) {
            o.zero_world = (int)x;
        } else if (strcmp(a, "--device-gb") == 0 && atof(val) > 0) {
            o.device_bytes = atof(val) * GIB;
        } else {
            fprintf(stderr, "memplan: bad argument %s %s\n", a, val);
            memplan_usage(stderr);
            return 2;
        }
    }
    if (memplan_compute(&c, &o, &p) != 0) return 2;
    memplan_print(&p, out);
    return p.fits ? 0 : 1;
}
