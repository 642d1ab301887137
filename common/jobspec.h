/* YAML job specs (libyaml document API): parse into typed structs with defaults, validate with every error
 * collected as one `FILE:LINE:COL: ...` line, resolve multi-stage specs, check paths, round-trip through JSON.
 * Schema and rules: docs/jobspec.md. Tested by tests/unit/test_jobspec.c and tests/unit/test_jobs_dir.c. */
#ifndef LLAVA_JOBSPEC_H
#define LLAVA_JOBSPEC_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { JOB_PROJECTOR_LINEAR = 0, JOB_PROJECTOR_MLP2X_GELU = 1 } job_projector_t;
typedef enum { JOB_ASPECT_SQUARE = 0, JOB_ASPECT_PAD = 1 } job_aspect_t;
typedef enum { JOB_TEMPLATE_PLAIN = 0, JOB_TEMPLATE_VICUNA_V1 = 1, JOB_TEMPLATE_LLAVA_V0 = 2 } job_template_t;
typedef enum { JOB_BAD_SKIP = 0, JOB_BAD_FAIL = 1 } job_bad_records_t;
typedef enum { JOB_SCHEDULE_COSINE = 0, JOB_SCHEDULE_LINEAR = 1, JOB_SCHEDULE_CONSTANT = 2 } job_schedule_t;
typedef enum { JOB_PRECISION_BF16 = 0, JOB_PRECISION_FP32 = 1 } job_precision_t;
typedef enum { JOB_DEVICE_CPU = 0, JOB_DEVICE_CUDA = 1 } job_device_t;

/* train.trainable is a set of these bits. */
enum { JOB_TRAIN_PROJECTOR = 1, JOB_TRAIN_LANGUAGE_MODEL = 2 };

/* Every key of the schema, in the order of docs/jobspec.md; indexes job_stage_t.marks / job_spec_t.marks. */
typedef enum {
    JOB_KEY_NAME,
    JOB_KEY_MODEL_VISION_TOWER, JOB_KEY_MODEL_LANGUAGE_MODEL, JOB_KEY_MODEL_LLAVA, JOB_KEY_MODEL_PROJECTOR,
    JOB_KEY_MODEL_VISION_SELECT_LAYER, JOB_KEY_MODEL_INIT_FROM, JOB_KEY_MODEL_IMAGE_ASPECT_RATIO,
    JOB_KEY_DATA_TRAIN, JOB_KEY_DATA_TEMPLATE, JOB_KEY_DATA_MAX_SEQ_LEN, JOB_KEY_DATA_GROUP_BY_LENGTH,
    JOB_KEY_DATA_BAD_RECORDS,
    JOB_KEY_TRAIN_TRAINABLE, JOB_KEY_TRAIN_EPOCHS, JOB_KEY_TRAIN_GLOBAL_BATCH, JOB_KEY_TRAIN_MICRO_BATCH_TOKENS,
    JOB_KEY_TRAIN_LR, JOB_KEY_TRAIN_WARMUP_RATIO, JOB_KEY_TRAIN_SCHEDULE, JOB_KEY_TRAIN_WEIGHT_DECAY,
    JOB_KEY_TRAIN_MAX_GRAD_NORM, JOB_KEY_TRAIN_PRECISION, JOB_KEY_TRAIN_SEED, JOB_KEY_TRAIN_MAX_STEPS,
    JOB_KEY_TRAIN_RECOMPUTE, JOB_KEY_TRAIN_ZERO_STAGE,
    JOB_KEY_EVAL_DATA, JOB_KEY_EVAL_ANSWERS, JOB_KEY_EVAL_EVERY_EPOCH,
    JOB_KEY_CHECKPOINT_DIR, JOB_KEY_CHECKPOINT_EVERY_STEPS, JOB_KEY_CHECKPOINT_KEEP,
    JOB_KEY_CLUSTER_WORKERS, JOB_KEY_CLUSTER_DEVICE, JOB_KEY_CLUSTER_HEARTBEAT_MS, JOB_KEY_CLUSTER_HANG_TIMEOUT_MS,
    JOB_KEY_CLUSTER_MAX_REPLACEMENTS,
    JOB_KEY_COUNT
} job_key_t;

/* Where a key's value was written: 1-based line and column; line 0 = not in the file (default, derived, JSON). */
typedef struct {
    int line, col;
} job_mark_t;

typedef struct {
    char *vision_tower;   /* HF CLIP dir, or NULL when `llava` is used */
    char *language_model; /* HF LLaMA dir, or NULL when `llava` is used */
    char *llava;          /* HF LlavaForConditionalGeneration dir (alternative to the two above), or NULL */
    char *init_from;      /* checkpoint, run dir or HF LLaVA dir to load weights from; NULL = none */
    int init_from_previous; /* 1: init_from was derived: the previous stage's checkpoint.dir (a run dir) */
    job_projector_t projector;
    int vision_select_layer;
    job_aspect_t image_aspect_ratio;
} job_model_t;

typedef struct {
    char *train; /* dataset dir made by llava-data ingest (holds manifest.json) */
    job_template_t tmpl;
    int max_seq_len;
    int group_by_length; /* 0 / 1 */
    job_bad_records_t bad_records;
} job_data_t;

typedef struct {
    unsigned trainable; /* JOB_TRAIN_* bits */
    int epochs;
    int global_batch;
    int micro_batch_tokens;
    double lr, warmup_ratio;
    job_schedule_t schedule;
    double weight_decay, max_grad_norm;
    job_precision_t precision;
    uint64_t seed;
    int64_t max_steps; /* 0 = no cap */
    int recompute;     /* 0 / 1: per-layer activation recomputation (cuda) */
    int zero_stage;    /* 0: every worker holds the whole optimizer state; 1: ZeRO-1 sharding (cuda) */
} job_train_t;

typedef struct {
    int enabled;   /* 1 when the stage has an eval section */
    char *data;    /* multiple-choice JSON in LLaVA's ScienceQA form */
    char *answers; /* answer key JSON, or NULL (answers taken from the data's gpt turns) */
    int every_epoch;
} job_eval_t;

typedef struct {
    char *dir; /* run dir: checkpoint-N subdirs and a `latest` file */
    int every_steps; /* 0 = only the final checkpoint */
    int keep;
} job_checkpoint_t;

typedef struct {
    int workers;
    job_device_t device;
    int heartbeat_ms, hang_timeout_ms, max_replacements;
} job_cluster_t;

typedef struct {
    char *name; /* the stage's name; a spec without `stages:` has one stage named after the job */
    job_model_t model;
    job_data_t data;
    job_train_t train;
    job_eval_t eval;
    job_checkpoint_t checkpoint;
    job_mark_t mark;                  /* where the stage's mapping starts (the document for a one-stage spec) */
    job_mark_t marks[JOB_KEY_COUNT];  /* where each key's value came from (cluster keys: see job_spec_t) */
    unsigned char set[JOB_KEY_COUNT]; /* 1: given in the spec (here or inherited), 0: a default */
} job_stage_t;

typedef struct {
    char *source; /* file name used in messages */
    char *name;
    job_cluster_t cluster;
    int staged;   /* 1: the spec had `stages:` */
    int n_stages; /* >= 1 */
    job_stage_t *stages;
    job_mark_t marks[JOB_KEY_COUNT]; /* marks of name and the cluster keys */
    unsigned char set[JOB_KEY_COUNT];
} job_spec_t;

/* Collected error lines ("FILE:LINE:COL: message"), in the order found; identical lines are kept once. */
typedef struct {
    int n, cap;
    char **lines;
    int dropped; /* lines not kept past SPEC_ERRORS_MAX */
} spec_errors_t;

#define SPEC_ERRORS_MAX 200

/** Appends one formatted line (no newline). errs may be NULL: the line is logged with LOG_E instead. */
void spec_errors_add(spec_errors_t *errs, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** Prints each line followed by a newline. */
void spec_errors_print(const spec_errors_t *errs, FILE *f);
/** Frees the lines; the struct can be reused (it is left zeroed). */
void spec_errors_free(spec_errors_t *errs);

/** Reads and parses a YAML spec file. Structure and values only: no file-system checks (job_spec_check_paths).
 *  @param out receives a new spec (caller frees with job_spec_free) on success, NULL on failure.
 *  @param errs collects every problem (may be NULL: problems are logged).
 *  @return 0, LLAVA_EIO (cannot read), LLAVA_ECONFIG (invalid: see errs), LLAVA_ENOMEM. */
int job_spec_load(const char *path, job_spec_t **out, spec_errors_t *errs);
/** As job_spec_load, from memory; name_for_errors starts every error line. */
int job_spec_parse_string(const char *yaml, size_t len, const char *name_for_errors, job_spec_t **out,
                          spec_errors_t *errs);
/** Checks that the files and dirs a spec names exist (datasets hold manifest.json, model dirs config.json, ...).
 *  Relative paths are resolved against the current working directory; errors print the resolved path.
 *  @return 0 or LLAVA_ECONFIG (see errs). */
int job_spec_check_paths(const job_spec_t *spec, spec_errors_t *errs);
/** Makes every relative path in spec absolute against base_dir (NULL: the current working directory), so the spec
 *  can be submitted to a coordinator running elsewhere. @return 0, LLAVA_EIO (getcwd), LLAVA_ENOMEM. */
int job_spec_resolve_paths(job_spec_t *spec, const char *base_dir);
/** Frees *p and sets it to NULL (NULL-safe). */
void job_spec_free(job_spec_t **p);

/** The normalised spec as JSON (every key, defaults applied, stage inheritance resolved), compact.
 *  *out is malloc'd (caller frees). @return 0 or LLAVA_ENOMEM. */
int job_spec_to_json(const job_spec_t *spec, char **out);
/** One stage as a flat one-stage spec (what the coordinator runs): name "<job>" or "<job>:<stage>", derived
 *  init_from replaced by the previous stage's run dir, cluster included. *out is malloc'd. */
int job_spec_stage_to_json(const job_spec_t *spec, int stage, char **out);
/** Parses JSON made by job_spec_to_json / job_spec_stage_to_json (or any JSON of the YAML schema) with the same
 *  validation. @return as job_spec_parse_string. */
int job_spec_from_json(const char *json, const char *name_for_errors, job_spec_t **out, spec_errors_t *errs);

/** Where key (JOB_KEY_*) of stage came from (cluster keys and name: the spec's marks). */
job_mark_t job_spec_key_mark(const job_spec_t *spec, int stage, job_key_t key);
/** The dotted name of a key ("train.lr"). */
const char *job_key_name(job_key_t key);

/** Steps of a stage over n_samples samples, as HF Trainer counts them: ceil(n_samples / global_batch) per epoch
 *  (the last partial batch is kept), times epochs, capped by max_steps; warmup = ceil(warmup_ratio * total).
 *  @return 0 or LLAVA_EINVAL (n_samples < 0). */
int job_spec_total_steps(const job_stage_t *stage, int64_t n_samples, int64_t *total_steps, int64_t *warmup_steps);

/** Names of enum values as written in YAML ("mlp2x_gelu", "vicuna_v1", ...). */
const char *job_projector_name(job_projector_t v);
const char *job_template_name(job_template_t v);
const char *job_schedule_name(job_schedule_t v);
const char *job_precision_name(job_precision_t v);
const char *job_device_name(job_device_t v);

#ifdef __cplusplus
}
#endif

#endif
