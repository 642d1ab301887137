/* llava-model: make a random LLaVA model directory (init), run one training step on a batch file (step: prints the
 * loss, writes the gradients of the mean loss), plan a job's GPU memory (memplan, CUDA builds). `llava-model --help`
 * lists the subcommands. Tested by tests/integration/model_step.sh (fixture loss, gradients, bad inputs; memplan). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/safetensors.h"
#include "kernels/cpu/ops.h"
#include "worker/batchfile.h"
#include "worker/model_llava.h"
#include "worker/runtime_env.h"
#ifdef LLAVA_HAVE_CUDA
#include "kernels/cuda/memplan.h"
#endif

static void usage_main(FILE *f) {
    fprintf(f,
            "usage: llava-model <command> [options]\n"
            "commands:\n"
            "  init     write a randomly initialised model directory from a LLaVA config.json\n"
            "  step     one forward+backward on a batch file: print the loss, optionally write gradients\n"
            "  memplan  GPU memory per device of a training job: fits or not, and what to change (CUDA builds)\n"
            "Run `llava-model <command> --help` for its options.\n");
}

static void usage_init(FILE *f) {
    fprintf(f,
            "usage: llava-model init --config CONFIG.json --out DIR [--seed N] [--max-shard-bytes N] [--threads N]\n"
            "  CONFIG.json is a LLaVA config (model_type \"llava\"; \"mm_projector_type\": \"linear\" selects the\n"
            "  original one-layer projector, default mlp2x_gelu). Weights use HF's init (normal(0,\n"
            "  initializer_range), unit norms; CLIP's own scaled rules) except the projector, which gets torch's\n"
            "  nn.Linear default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as in LLaVA's trainer; splitmix64 generator.\n"
            "  DIR receives config.json and model.safetensors (sharded above --max-shard-bytes, default 5 GB).\n");
}

static void usage_step(FILE *f) {
    fprintf(f,
            "usage: llava-model step --model DIR --batch BATCH.safetensors [--train projector|all]\n"
            "                        [--grads OUT.safetensors] [--threads N]\n"
            "  BATCH holds pixel_values F32 [N,3,S,S], input_ids I64 [B,T], labels I64 [B,T] (-100 = ignored,\n"
            "  unshifted) and attention_mask I64 [B,T] (1 = token, 0 = right padding).\n"
            "  Prints `loss <mean cross-entropy over the shifted targets>`; --grads writes the gradient of that mean\n"
            "  loss for every trainable tensor (projector only, or projector + language model) under the model\n"
            "  directory's tensor names. --train defaults to projector.\n");
}

static int cmd_init(int argc, char **argv) {
    int rc = 0;
    const char *config = NULL, *out = NULL;
    unsigned long long seed = 0, shard = 5000000000ull;
    int threads = 0;
    llava_model_t *m = NULL;
    static const struct option opts[] = {{"config", required_argument, 0, 'c'}, {"out", required_argument, 0, 'o'},
                                         {"seed", required_argument, 0, 's'},
                                         {"max-shard-bytes", required_argument, 0, 'm'},
                                         {"threads", required_argument, 0, 't'}, {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config = optarg; break;
        case 'o': out = optarg; break;
        case 's': seed = strtoull(optarg, NULL, 10); break;
        case 'm': shard = strtoull(optarg, NULL, 10); break;
        case 't': threads = atoi(optarg); break;
        case 'h': usage_init(stdout); return 0;
        default: usage_init(stderr); return 2;
        }
    }
    if (!config || !out || optind != argc) {
        usage_init(stderr);
        return 2;
    }
    kernels_set_threads(threads);
    llava_config_t cfg;
    proj_type_t pt;
    RC_CHECK_GOTO(llava_config_read(config, &cfg, &pt));
    RC_CHECK_GOTO(llava_model_init_random(&cfg, pt, seed, &m));
    RC_CHECK_GOTO(llava_model_save(m, out, (size_t)shard));
    printf("wrote %s (%lld parameters)\n", out, (long long)arena_numel(m->params));
cleanup:
    llava_model_free(&m);
    return rc ? 1 : 0;
}

static int write_grads(llava_model_t *m, const char *path, double scale) {
    int rc = 0;
    int n = arena_count(m->grads);
    st_write_item_t *items = calloc((size_t)n, sizeof *items);
    ALLOC_CHECK_GOTO(items);
    size_t nf;
    float *g = llava_grads_data(m, &nf);
    scale_inplace(g, (float)scale, (long)nf);
    for (int i = 0; i < n; i++) {
        tensor_t *t = arena_at(m->grads, i);
        const char *name = m->src_names[i] ? m->src_names[i] : t->name; /* grads share the params' order */
        items[i] = (st_write_item_t){name, DT_F32, t->ndim, t->shape, t->data};
    }
    RC_CHECK_GOTO(st_write(path, items, n, "{\"format\":\"pt\"}"));
cleanup:
    free(items);
    return rc;
}

static int cmd_step(int argc, char **argv) {
    int rc = 0;
    const char *model = NULL, *batch = NULL, *train = "projector", *grads = NULL;
    int threads = 0;
    llava_model_t *m = NULL;
    batch_t b;
    memset(&b, 0, sizeof b);
    static const struct option opts[] = {{"model", required_argument, 0, 'm'}, {"batch", required_argument, 0, 'b'},
                                         {"train", required_argument, 0, 'T'}, {"grads", required_argument, 0, 'g'},
                                         {"threads", required_argument, 0, 't'}, {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'b': batch = optarg; break;
        case 'T': train = optarg; break;
        case 'g': grads = optarg; break;
        case 't': threads = atoi(optarg); break;
        case 'h': usage_step(stdout); return 0;
        default: usage_step(stderr); return 2;
        }
    }
    if (!model || !batch || optind != argc || (strcmp(train, "projector") != 0 && strcmp(train, "all") != 0)) {
        usage_step(stderr);
        return 2;
    }
    kernels_set_threads(threads);
    RC_CHECK_GOTO(llava_model_load(model, &m));
    RC_CHECK_GOTO(batch_file_read(batch, &b));
    double ls = 0;
    int64_t nt = 0;
    RC_CHECK_GOTO(llava_forward_backward(m, &b, strcmp(train, "all") == 0 ? TRAIN_ALL : TRAIN_PROJECTOR, &ls, &nt,
                                         0));
    CHECK_GOTO(nt > 0, LLAVA_EINVAL, "%s: the batch has no targets (every shifted label is -100)", batch);
    printf("loss %.9g\n", ls / (double)nt);
    printf("targets %lld\n", (long long)nt);
    if (grads) RC_CHECK_GOTO(write_grads(m, grads, 1.0 / (double)nt));
cleanup:
    if (rc) fprintf(stderr, "llava-model step: %s\n", err_str(rc));
    batch_free(&b);
    llava_model_free(&m);
    return rc ? 1 : 0;
}

int main(int argc, char **argv) {
    runtime_env_ensure(argv);
    log_set_role("llava-model", -1);
    if (argc < 2) {
        usage_main(stderr);
        return 2;
    }
    if (strcmp(argv[1], "init") == 0) return cmd_init(argc - 1, argv + 1);
    if (strcmp(argv[1], "step") == 0) return cmd_step(argc - 1, argv + 1);
    if (strcmp(argv[1], "memplan") == 0) {
#ifdef LLAVA_HAVE_CUDA
        return memplan_cli_main(argc - 1, argv + 1, stdout);
#else
        fprintf(stderr, "llava-model memplan: this build has no CUDA backend (configure with nvcc present)\n");
        return 2;
#endif
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage_main(stdout);
        return 0;
    }
    fprintf(stderr, "llava-model: unknown command '%s'\n", argv[1]);
    usage_main(stderr);
    return 2;
}
