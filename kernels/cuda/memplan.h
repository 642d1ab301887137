/* GPU memory planner for LLaVA training: bytes per GPU for weights, master weights, gradients, Adam moments,
 * activations (with or without recomputation), logits and workspace; whether the job fits and what to change.
 * Plain C (no GPU needed). Tested by tests/unit/test_memplan.c (Vicuna-7B/13B + CLIP-L/336 cases). */
#ifndef LLAVA_KERNELS_CUDA_MEMPLAN_H
#define LLAVA_KERNELS_CUDA_MEMPLAN_H

#include <stdint.h>
#include <stdio.h>

#include "common/hfconfig.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { MEMPLAN_TRAIN_PROJECTOR = 0, MEMPLAN_TRAIN_ALL = 1 } memplan_trainable_t;
/* BF16: bf16 weights, activations and gradients, fp32 master weights and Adam moments (mixed precision).
 * FP32: everything fp32 (the master weights are the weights). */
typedef enum { MEMPLAN_BF16 = 0, MEMPLAN_FP32 = 1 } memplan_precision_t;

typedef struct {
    memplan_trainable_t trainable; /* PROJECTOR: projector only; ALL: projector + LLM (the vision tower stays
                                      frozen in both, as in LLaVA) */
    memplan_precision_t precision;
    long micro_batch_tokens;       /* LLM tokens per micro-batch per GPU (image tokens included) */
    int images_per_micro_batch;    /* images per micro-batch (vision tower rows = images * (patches + 1)) */
    int recompute;                 /* 1: save only each LLM layer's input and recompute the layer in backward */
    int zero_world;                /* ZeRO-1 ranks sharing optimizer state (master + moments); 1 = no sharding */
    double device_bytes;           /* memory of one GPU (cudaMemGetInfo's total) */
    double bucket_bytes;           /* gradient all-reduce bucket size (0: 64 MiB); two are in flight */
} memplan_opts_t;

typedef struct {
    /* inputs echoed */
    memplan_opts_t opts;
    /* parameter counts */
    int64_t n_vision, n_projector, n_llm, n_total, n_trainable;
    /* bytes per GPU */
    double weights;      /* every parameter in the compute dtype (bf16 or fp32) */
    double master;       /* fp32 master copy of the trainable shard (0 in FP32 mode: the weights are the master) */
    double grads;        /* full gradient of the trainable parameters (compute dtype), before reduce-scatter;
                            twice that without ZeRO-1 (zero_world 1: the all-reduce's sum buffer, out of place) */
    double adam;         /* fp32 m and v of the local shard (trainable / zero_world) */
    double act_saved;    /* LLM activations kept for backward (all layers) */
    double act_peak;     /* transient: one layer's full activations (recomputed or current) + their gradients */
    double act_vision;   /* vision tower forward (frozen: one layer at a time) + projector saved tensors */
    double logits;       /* loss-row logits and their gradient, in place */
    double workspace;    /* cuBLASLt workspace, buckets, CUDA/cuBLAS/NCCL context */
    double total;        /* sum of the above */
    double usable;       /* device_bytes minus a 5% fragmentation margin */
    int fits;
    /* advice when !fits: the smallest change of each kind that fits (0 / -1 when none does) */
    int advice_recompute;          /* 1 when turning recompute on alone makes it fit */
    long advice_micro_batch_tokens; /* largest power-of-two-halved micro_batch_tokens (>= 128) that fits, or 0 */
    int advice_zero_world;         /* smallest ZeRO-1 world (<= 4096) that fits with the other options, or 0 */
} memplan_t;

/** Options with defaults: ALL, BF16, 2048 tokens, 1 image, no recompute, world 1, 80 GB (79.1 GiB), 64 MiB. */
void memplan_opts_default(memplan_opts_t *o);

/** Fills *out for config c (vision + text required) and options o. Returns 0 or LLAVA_EINVAL (bad options or a
 *  config without a vision tower or LLM). */
int memplan_compute(const llava_config_t *c, const memplan_opts_t *o, memplan_t *out);

/** Prints a breakdown table (GiB per item, percentage of the device, verdict and advice) to f. */
void memplan_print(const memplan_t *p, FILE *f);

/** CLI hook for a program's "memplan" subcommand: argv[0] is the subcommand name, then
 *    --config PATH (LLaVA config.json; default: LlavaConfig's defaults = Vicuna-7B-sized LLaMA + CLIP-L/336)
 *    --trainable projector|all  --precision bf16|fp32  --tokens N  --images N  --recompute  --zero W
 *    --device-gb G (GiB)
 *  Prints the table to out. Returns 0 when the job fits, 1 when it does not, 2 on bad arguments (exit codes). */
int memplan_cli_main(int argc, char **argv, FILE *out);
/** The advice of a plan that does not fit as job-spec changes, e.g. "change one of: train.recompute: true; ...;
 *  train.zero_stage: 1 with cluster.workers >= 2" (or what to combine when no single change fits). */
void memplan_advice_spec(const memplan_t *p, char *buf, size_t len);
/** The subcommand's usage text (what --help prints). */
void memplan_usage(FILE *f);

#ifdef __cplusplus
}
#endif

#endif
