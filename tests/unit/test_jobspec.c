/* Job spec parser and validator (common/jobspec.c): defaults, a full spec, every error class with its exact
 * line:column, stage inheritance, path checks, JSON round trip, steps, and a fixed-seed fuzz loop (ASan in CI).
 * Run: ctest -R test_jobspec (or build/test_jobspec from tests/). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/dataset.h"
#include "common/err.h"
#include "common/jobspec.h"
#include "tests/test.h"

static const char *MINIMAL = "name: t\n"
                             "model:\n"
                             "  vision_tower: m/clip\n"
                             "  language_model: m/llama\n"
                             "data:\n"
                             "  train: d/pretrain\n"
                             "  template: plain\n"
                             "train:\n"
                             "  lr: 1e-3\n"
                             "checkpoint: {dir: runs/t}\n";

static const char *FULL = "name: full\n"                                /* 1 */
                          "model:\n"                                    /* 2 */
                          "  vision_tower: m/clip\n"                    /* 3 */
                          "  language_model: m/llama\n"                 /* 4 */
                          "  projector: mlp2x_gelu\n"                   /* 5 */
                          "  vision_select_layer: -1\n"                 /* 6 */
                          "  init_from: null\n"                         /* 7 */
                          "  image_aspect_ratio: pad\n"                 /* 8 */
                          "data:\n"                                     /* 9 */
                          "  train: d/instruct\n"                       /* 10 */
                          "  template: vicuna_v1\n"                     /* 11 */
                          "  max_seq_len: 512\n"                        /* 12 */
                          "  group_by_length: true\n"                   /* 13 */
                          "  bad_records: fail\n"                       /* 14 */
                          "train:\n"                                    /* 15 */
                          "  trainable: [projector, language_model]\n"  /* 16 */
                          "  epochs: 3\n"                               /* 17 */
                          "  global_batch: 32\n"                        /* 18 */
                          "  micro_batch_tokens: 4096\n"                /* 19 */
                          "  lr: 2.0e-5\n"                              /* 20 */
                          "  warmup_ratio: 0.05\n"                      /* 21 */
                          "  schedule: linear\n"                        /* 22 */
                          "  weight_decay: 0.1\n"                       /* 23 */
                          "  max_grad_norm: 0.5\n"                      /* 24 */
                          "  precision: bf16\n"                         /* 25 */
                          "  seed: 1234\n"                              /* 26 */
                          "  max_steps: 100\n"                          /* 27 */
                          "eval:\n"                                     /* 28 */
                          "  data: d/sqa-test.json\n"                   /* 29 */
                          "  answers: d/sqa-answers.json\n"             /* 30 */
                          "  every_epoch: false\n"                      /* 31 */
                          "checkpoint: {dir: runs/full, every_steps: 50, keep: 2}\n" /* 32 */
                          "cluster:\n"                                  /* 33 */
                          "  workers: 8\n"                              /* 34 */
                          "  device: cuda\n"                            /* 35 */
                          "  heartbeat_ms: 200\n"                       /* 36 */
                          "  hang_timeout_ms: 5000\n"                   /* 37 */
                          "  max_replacements: 2\n";                    /* 38 */

static int parse(const char *yaml, job_spec_t **out, spec_errors_t *errs) {
    return job_spec_parse_string(yaml, strlen(yaml), "t.yaml", out, errs);
}

static int has_line(const spec_errors_t *e, const char *want) {
    for (int i = 0; i < e->n; i++)
        if (strcmp(e->lines[i], want) == 0) return 1;
    fprintf(stderr, "missing error line: %s\n  got:\n", want);
    for (int i = 0; i < e->n; i++) fprintf(stderr, "    %s\n", e->lines[i]);
    return 0;
}

/* Parses yaml, expects failure with exactly the given lines (in any order). */
static void expect_errors(const char *yaml, int n, const char *const *lines) {
    job_spec_t *s = NULL;
    spec_errors_t e = {0};
    CHECK_RC(parse(yaml, &s, &e), LLAVA_ECONFIG);
    CHECK(s == NULL);
    CHECKF(e.n == n, "%d error lines, expected %d (first: %s)", e.n, n, e.n ? e.lines[0] : "-");
    for (int i = 0; i < n; i++) CHECK(has_line(&e, lines[i]));
    spec_errors_free(&e);
}

static void expect_one(const char *yaml, const char *line) { expect_errors(yaml, 1, &line); }

/* MINIMAL with `line` inserted after the first line starting with `after` (or replacing it when replace). */
static char *edit(const char *base, const char *after, const char *line, int replace) {
    static char buf[8192];
    const char *p = strstr(base, after);
    if (!p) {
        fprintf(stderr, "edit: '%s' not found\n", after);
        exit(2);
    }
    const char *eol = strchr(p, '\n') + 1;
    size_t head = (size_t)((replace ? p : eol) - base);
    snprintf(buf, sizeof buf, "%.*s%s%s", (int)head, base, line, eol);
    return buf;
}

static void test_defaults(void) {
    job_spec_t *s = NULL;
    spec_errors_t e = {0};
    CHECK_RC(parse(MINIMAL, &s, &e), 0);
    spec_errors_print(&e, stderr);
    if (!s) return;
    CHECK(strcmp(s->name, "t") == 0);
    CHECK_EQ_INT(s->n_stages, 1);
    CHECK_EQ_INT(s->staged, 0);
    const job_stage_t *st = &s->stages[0];
    CHECK(strcmp(st->name, "t") == 0);
    CHECK(strcmp(st->model.vision_tower, "m/clip") == 0);
    CHECK(st->model.llava == NULL && st->model.init_from == NULL);
    CHECK_EQ_INT(st->model.projector, JOB_PROJECTOR_LINEAR);
    CHECK_EQ_INT(st->model.vision_select_layer, -2);
    CHECK_EQ_INT(st->model.image_aspect_ratio, JOB_ASPECT_SQUARE);
    CHECK_EQ_INT(st->data.tmpl, JOB_TEMPLATE_PLAIN);
    CHECK_EQ_INT(st->data.max_seq_len, 2048);
    CHECK_EQ_INT(st->data.group_by_length, 0);
    CHECK_EQ_INT(st->data.bad_records, JOB_BAD_SKIP);
    CHECK_EQ_INT(st->train.trainable, JOB_TRAIN_PROJECTOR);
    CHECK_EQ_INT(st->train.epochs, 1);
    CHECK_EQ_INT(st->train.global_batch, 128);
    CHECK_EQ_INT(st->train.micro_batch_tokens, 16384);
    CHECK(st->train.lr == 1e-3);
    CHECK(st->train.warmup_ratio == 0.03);
    CHECK_EQ_INT(st->train.schedule, JOB_SCHEDULE_COSINE);
    CHECK(st->train.weight_decay == 0.0 && st->train.max_grad_norm == 1.0);
    CHECK_EQ_INT(st->train.precision, JOB_PRECISION_FP32); /* derived from device cpu */
    CHECK_EQ_INT(st->train.seed, 42);
    CHECK_EQ_INT(st->train.max_steps, 0);
    CHECK_EQ_INT(st->train.recompute, 0);
    CHECK_EQ_INT(st->train.zero_stage, 0);
    CHECK_EQ_INT(st->eval.enabled, 0);
    CHECK(strcmp(st->checkpoint.dir, "runs/t") == 0);
    CHECK_EQ_INT(st->checkpoint.every_steps, 500);
    CHECK_EQ_INT(st->checkpoint.keep, 3);
    CHECK_EQ_INT(s->cluster.workers, 1);
    CHECK_EQ_INT(s->cluster.device, JOB_DEVICE_CPU);
    CHECK_EQ_INT(s->cluster.heartbeat_ms, 500);
    CHECK_EQ_INT(s->cluster.hang_timeout_ms, 10000);
    CHECK_EQ_INT(s->cluster.max_replacements, 4);
    job_mark_t m = job_spec_key_mark(s, 0, JOB_KEY_TRAIN_LR);
    CHECK(m.line == 9 && m.col == 7);
    m = job_spec_key_mark(s, 0, JOB_KEY_CHECKPOINT_DIR);
    CHECK(m.line == 10 && m.col == 19);
    m = job_spec_key_mark(s, 0, JOB_KEY_TRAIN_EPOCHS);
    CHECK(m.line == 0);
    CHECK(strcmp(job_key_name(JOB_KEY_CLUSTER_HANG_TIMEOUT_MS), "cluster.hang_timeout_ms") == 0);
    job_spec_free(&s);
    CHECK(s == NULL);
    job_spec_free(&s);
    spec_errors_free(&e);

    /* device cuda without precision: bf16 */
    CHECK_RC(parse(edit(MINIMAL, "checkpoint", "cluster: {device: cuda}\n", 0), &s, NULL), 0);
    if (s) CHECK_EQ_INT(s->stages[0].train.precision, JOB_PRECISION_BF16);
    job_spec_free(&s);
    /* recomputation and ZeRO-1 on cuda (and through the reference's names), and back through JSON */
    CHECK_RC(parse(edit(MINIMAL, "  lr:", "  lr: 1e-3\n  recompute: true\n  zero_stage: 1\ncluster: {device: cuda}\n",
                        1), &s, NULL), 0);
    if (s) {
        CHECK_EQ_INT(s->stages[0].train.recompute, 1);
        CHECK_EQ_INT(s->stages[0].train.zero_stage, 1);
        char *js = NULL;
        CHECK_RC(job_spec_to_json(s, &js), 0);
        CHECK(js && strstr(js, "\"recompute\":true") && strstr(js, "\"zero_stage\":1"));
        free(js);
    }
    job_spec_free(&s);
    /* a whole LLaVA model instead of the two towers */
    const char *llava = "name: t\nmodel: {llava: m/llava-1.5-7b}\ndata: {train: d, template: vicuna_v1}\n"
                        "train: {lr: 2e-5, trainable: language_model}\ncheckpoint: {dir: r}\n";
    CHECK_RC(parse(llava, &s, NULL), 0);
    if (s) {
        CHECK(strcmp(s->stages[0].model.llava, "m/llava-1.5-7b") == 0);
        CHECK_EQ_INT(s->stages[0].train.trainable, JOB_TRAIN_LANGUAGE_MODEL);
    }
    job_spec_free(&s);
    /* only init_from */
    CHECK_RC(parse("name: t\nmodel: {init_from: runs/s1}\ndata: {train: d, template: plain}\ntrain: {lr: 1}\n"
                   "checkpoint: {dir: r}\n", &s, NULL), 0);
    job_spec_free(&s);
}

static void test_full(void) {
    job_spec_t *s = NULL;
    spec_errors_t e = {0};
    CHECK_RC(parse(FULL, &s, &e), 0);
    spec_errors_print(&e, stderr);
    spec_errors_free(&e);
    if (!s) return;
    const job_stage_t *st = &s->stages[0];
    CHECK_EQ_INT(st->model.projector, JOB_PROJECTOR_MLP2X_GELU);
    CHECK_EQ_INT(st->model.vision_select_layer, -1);
    CHECK(st->model.init_from == NULL);
    CHECK_EQ_INT(st->model.image_aspect_ratio, JOB_ASPECT_PAD);
    CHECK_EQ_INT(st->data.tmpl, JOB_TEMPLATE_VICUNA_V1);
    CHECK_EQ_INT(st->data.max_seq_len, 512);
    CHECK_EQ_INT(st->data.group_by_length, 1);
    CHECK_EQ_INT(st->data.bad_records, JOB_BAD_FAIL);
    CHECK_EQ_INT(st->train.trainable, JOB_TRAIN_PROJECTOR | JOB_TRAIN_LANGUAGE_MODEL);
    CHECK_EQ_INT(st->train.epochs, 3);
    CHECK_EQ_INT(st->train.global_batch, 32);
    CHECK_EQ_INT(st->train.micro_batch_tokens, 4096);
    CHECK(st->train.lr == 2e-5 && st->train.warmup_ratio == 0.05);
    CHECK_EQ_INT(st->train.schedule, JOB_SCHEDULE_LINEAR);
    CHECK(st->train.weight_decay == 0.1 && st->train.max_grad_norm == 0.5);
    CHECK_EQ_INT(st->train.precision, JOB_PRECISION_BF16);
    CHECK_EQ_INT(st->train.seed, 1234);
    CHECK_EQ_INT(st->train.max_steps, 100);
    CHECK_EQ_INT(st->eval.enabled, 1);
    CHECK(strcmp(st->eval.data, "d/sqa-test.json") == 0 && strcmp(st->eval.answers, "d/sqa-answers.json") == 0);
    CHECK_EQ_INT(st->eval.every_epoch, 0);
    CHECK_EQ_INT(st->checkpoint.every_steps, 50);
    CHECK_EQ_INT(st->checkpoint.keep, 2);
    CHECK_EQ_INT(s->cluster.workers, 8);
    CHECK_EQ_INT(s->cluster.device, JOB_DEVICE_CUDA);
    CHECK_EQ_INT(s->cluster.heartbeat_ms, 200);
    CHECK_EQ_INT(s->cluster.hang_timeout_ms, 5000);
    CHECK_EQ_INT(s->cluster.max_replacements, 2);
    job_mark_t m = job_spec_key_mark(s, 0, JOB_KEY_CLUSTER_HANG_TIMEOUT_MS);
    CHECK(m.line == 37 && m.col == 20);
    CHECK(strcmp(job_projector_name(st->model.projector), "mlp2x_gelu") == 0);
    CHECK(strcmp(job_template_name(st->data.tmpl), "vicuna_v1") == 0);
    CHECK(strcmp(job_schedule_name(st->train.schedule), "linear") == 0);
    CHECK(strcmp(job_precision_name(st->train.precision), "bf16") == 0);
    CHECK(strcmp(job_device_name(s->cluster.device), "cuda") == 0);
    job_spec_free(&s);
}

static void test_types(void) {
    expect_one(edit(MINIMAL, "  lr:", "  lr: fast\n", 1), "t.yaml:9:7: key 'train.lr': expected a number, got 'fast'");
    expect_one(edit(MINIMAL, "  lr:", "  lr: 1e-3\n  epochs: 1.5\n", 1),
               "t.yaml:10:11: key 'train.epochs': expected an integer, got '1.5'");
    expect_one(edit(MINIMAL, "  lr:", "  lr: 1e-3\n  epochs: [1]\n", 1),
               "t.yaml:10:11: key 'train.epochs': expected an integer, got a list");
    expect_one(edit(MINIMAL, "  lr:", "  lr: .nan\n", 1), "t.yaml:9:7: key 'train.lr': expected a number, got '.nan'");
    expect_one(edit(MINIMAL, "  template:", "  template: plain\n  group_by_length: maybe\n", 1),
               "t.yaml:8:20: key 'data.group_by_length': expected true or false, got 'maybe'");
    expect_one(edit(MINIMAL, "  template:", "  template: vicuna\n", 1),
               "t.yaml:7:13: key 'data.template': expected one of plain|vicuna_v1|llava_v0, got 'vicuna' (did you mean "
               "'vicuna_v1'?)");
    expect_one(edit(MINIMAL, "  template:", "  template: chatml\n", 1),
               "t.yaml:7:13: key 'data.template': expected one of plain|vicuna_v1|llava_v0, got 'chatml'");
    expect_one(edit(MINIMAL, "  vision_tower:", "  vision_tower: null\n", 1),
               "t.yaml:3:17: key 'model.vision_tower': expected a path, got null");
    expect_one(edit(MINIMAL, "  vision_tower:", "  vision_tower: {a: 1}\n", 1),
               "t.yaml:3:17: key 'model.vision_tower': expected a path, got a mapping");
    expect_one("name: t\nmodel: {llava: m}\ndata: {train: d, template: plain}\ncheckpoint: {dir: r}\ntrain: 5\n",
               "t.yaml:5:8: key 'train': expected a mapping (indented `key: value` lines), got '5'");
    expect_one(edit(MINIMAL, "  lr:", "  lr: 1e-3\n  seed: -1\n", 1),
               "t.yaml:10:9: key 'train.seed': expected an integer in [0, 2^53], got '-1'");
    expect_one(edit(MINIMAL, "  lr:", "  lr: 1e-3\n  trainable: [projector, vision_tower]\n", 1),
               "t.yaml:10:26: key 'train.trainable': expected one of projector|language_model, got 'vision_tower'");
    expect_one(edit(MINIMAL, "  lr:", "  lr: 1e-3\n  trainable: []\n", 1),
               "t.yaml:10:14: key 'train.trainable': must name at least one of projector|language_model");
    expect_one("- a\n- b\n", "t.yaml:1:1: a job spec is a mapping of keys (name, model, data, train, ...), got a list");
    expect_one("just words\n",
               "t.yaml:1:1: a job spec is a mapping of keys (name, model, data, train, ...), got a scalar 'just words'");
    expect_one(edit(MINIMAL, "name:", "name: [a]\n", 1), "t.yaml:1:7: key 'name': expected a string, got a list");
}

static void test_unknown(void) {
    expect_one(edit(MINIMAL, "  lr:", "  learning_rate: 1e-3\n", 1),
               "t.yaml:9:3: unknown key 'train.learning_rate' (did you mean 'lr'?)");
    /* ... which also leaves lr missing: here lr stays */
    expect_one(edit(MINIMAL, "  lr:", "  lr: 1e-3\n  epoch: 2\n", 1),
               "t.yaml:10:3: unknown key 'train.epoch' (did you mean 'epochs'?)");
    expect_one(edit(MINIMAL, "  lr:", "  lr: 1e-3\n  colour: blue\n", 1), "t.yaml:10:3: unknown key 'train.colour'");
    expect_one(edit(MINIMAL, "checkpoint", "modle: {}\n", 0),
               "t.yaml:11:1: unknown key 'modle' (did you mean 'model'?)");
    expect_one(edit(MINIMAL, "checkpoint", "cluster: {workers: 2, heartbeat: 100}\n", 0),
               "t.yaml:11:23: unknown key 'cluster.heartbeat' (did you mean 'heartbeat_ms'?)");
    expect_one(edit(MINIMAL, "checkpoint", "? [a]\n: 1\n", 0),
               "t.yaml:11:3: a key under '(top level)' must be a word, got a list");
}

static void test_ranges(void) {
    expect_one(edit(MINIMAL, "  lr:", "  lr: 0\n", 1), "t.yaml:9:7: key 'train.lr': must be > 0, got 0");
    expect_one(edit(MINIMAL, "  lr:", "  lr: -1e-3\n", 1), "t.yaml:9:7: key 'train.lr': must be > 0, got -0.001");
    expect_one(edit(MINIMAL, "  lr:", "  lr: 1e-3\n  global_batch: 0\n", 1),
               "t.yaml:10:17: key 'train.global_batch': must be >= 1, got 0");
    expect_one(edit(MINIMAL, "  lr:", "  lr: 1e-3\n  warmup_ratio: 1\n", 1),
               "t.yaml:10:17: key 'train.warmup_ratio': must be in [0, 1), got 1");
    expect_one(edit(MINIMAL, "  lr:", "  lr: 1e-3\n  warmup_ratio: -0.1\n", 1),
               "t.yaml:10:17: key 'train.warmup_ratio': must be in [0, 1), got -0.1");
    expect_one(edit(MINIMAL, "  lr:", "  lr: 1e-3\n  epochs: 0\n", 1),
               "t.yaml:10:11: key 'train.epochs': must be >= 1, got 0");
    expect_one(edit(MINIMAL, "checkpoint", "checkpoint: {dir: r, keep: 0}\n", 1),
               "t.yaml:10:28: key 'checkpoint.keep': must be >= 1, got 0");
    expect_one(edit(MINIMAL, "checkpoint", "cluster: {workers: 0}\n", 0),
               "t.yaml:11:20: key 'cluster.workers': must be >= 1, got 0");
    expect_one(edit(MINIMAL, "checkpoint", "cluster: {heartbeat_ms: 5}\n", 0),
               "t.yaml:11:25: key 'cluster.heartbeat_ms': must be >= 10, got 5");
    expect_one(edit(MINIMAL, "checkpoint", "cluster: {heartbeat_ms: 500, hang_timeout_ms: 500}\n", 0),
               "t.yaml:11:47: key 'cluster.hang_timeout_ms': must be > cluster.heartbeat_ms (500), got 500");
    expect_one(edit(MINIMAL, "  lr:", "  lr: 1e-3\n  precision: bf16\n", 1),
               "t.yaml:10:14: key 'train.precision': bf16 needs cluster.device: cuda (the CPU backend trains in fp32); "
               "use fp32");
    expect_one(edit(MINIMAL, "  lr:", "  lr: 1e-3\n  recompute: yes\n", 1),
               "t.yaml:10:14: key 'train.recompute': recomputation needs cluster.device: cuda (the CPU backend keeps "
               "every activation); remove it or set it to false");
    expect_one(edit(MINIMAL, "  lr:", "  lr: 1e-3\n  zero_stage: 1\n", 1),
               "t.yaml:10:15: key 'train.zero_stage': ZeRO-1 needs cluster.device: cuda (NCCL between GPU workers); "
               "use 0");
    expect_one(edit(MINIMAL, "  lr:", "  lr: 1e-3\n  zero_stage: 2\ncluster: {device: cuda}\n", 1),
               "t.yaml:10:15: key 'train.zero_stage': must be 0 (no sharding) or 1 (ZeRO-1: optimizer state sharded "
               "over the workers), got 2");
    expect_one(edit(MINIMAL, "  template:", "  template: plain\n  max_seq_len: 8\n", 1),
               "t.yaml:8:16: key 'data.max_seq_len': must be in [16, 1048576], got 8");
    expect_one(edit(MINIMAL, "model:", "model:\n  llava: m/llava\n", 1),
               "t.yaml:3:10: key 'model.llava': names a whole LLaVA model; do not also set "
               "model.vision_tower/model.language_model");
}

static void test_duplicates_and_syntax(void) {
    expect_one(edit(MINIMAL, "  lr:", "  lr: 1e-3\n  lr: 2e-3\n", 1),
               "t.yaml:10:3: duplicate key 'train.lr' (first at line 9, column 3)");
    expect_one(edit(MINIMAL, "checkpoint", "train: {epochs: 2}\n", 0),
               "t.yaml:11:1: duplicate key 'train' (first at line 8, column 1)");
    expect_one(edit(MINIMAL, "  lr:", "  lr: [1e-3\n", 1),
               "t.yaml:10:11: YAML syntax error: did not find expected ',' or ']' (while parsing a flow sequence, line 9 "
               "column 7)");
    expect_one(edit(MINIMAL, "  lr:", "  lr: 1e-3\n bad: 1\n", 1),
               "t.yaml:10:2: YAML syntax error: did not find expected key (while parsing a block mapping, line 1 column 1)");
    expect_one("name: a\n\tmodel: 1\n",
               "t.yaml:2:1: YAML syntax error: found a tab character that violates indentation (while scanning a plain "
               "scalar, line 1 column 7)");
    expect_one("", "t.yaml:1:1: empty job spec");
    expect_one("# only a comment\n", "t.yaml:1:1: empty job spec");
    expect_one("name: a\n---\nname: b\n", "t.yaml:3:1: more than one YAML document: a job spec is one document");
    expect_one("a: &x [*x]\n", "t.yaml:1:4: nesting deeper than 32 levels");
}

static void test_missing(void) {
    expect_one("model: {vision_tower: a, language_model: b}\n", "t.yaml:1:1: missing required key 'name'");
    const char *lines[] = {
        "t.yaml:1:1: missing required keys 'model.vision_tower' and 'model.language_model' (or 'model.llava', or "
        "'model.init_from')",
        "t.yaml:1:1: missing required key 'data.train'", "t.yaml:1:1: missing required key 'data.template'",
        "t.yaml:1:1: missing required key 'train.lr'", "t.yaml:1:1: missing required key 'checkpoint.dir'"};
    expect_errors("name: x\n", 5, lines);
    expect_one(edit(MINIMAL, "  language_model:", "", 1), "t.yaml:1:1: missing required key 'model.language_model'");
    expect_one(edit(MINIMAL, "checkpoint", "eval: {every_epoch: true}\n", 0),
               "t.yaml:1:1: missing required key 'eval.data'");
    /* all errors are collected, not just the first */
    const char *many[] = {"t.yaml:9:7: key 'train.lr': expected a number, got 'fast'",
                          "t.yaml:10:3: unknown key 'train.learning_rate' (did you mean 'lr'?)",
                          "t.yaml:11:11: key 'train.epochs': expected an integer, got 'two'",
                          "t.yaml:12:19: key 'cluster.device': expected one of cpu|cuda, got 'gpu' (did you mean 'cpu'?)"};
    expect_errors(edit(MINIMAL, "  lr:", "  lr: fast\n  learning_rate: 1\n  epochs: two\ncluster: {device: gpu}\n", 1), 4,
                  many);
}

static const char *STAGED = "name: demo\n"                                            /* 1 */
                            "model: {vision_tower: m/clip, language_model: m/llama}\n" /* 2 */
                            "data: {template: plain}\n"                                /* 3 */
                            "train: {lr: 1e-3, global_batch: 8, epochs: 1}\n"          /* 4 */
                            "checkpoint: {dir: runs/demo, every_steps: 10}\n"          /* 5 */
                            "cluster: {workers: 2}\n"                                  /* 6 */
                            "stages:\n"                                                /* 7 */
                            "  - name: pretrain\n"                                     /* 8 */
                            "    data: {train: d/pretrain}\n"                          /* 9 */
                            "  - name: finetune\n"                                     /* 10 */
                            "    data: {train: d/instruct, template: vicuna_v1}\n"     /* 11 */
                            "    train: {lr: 2e-5, trainable: [projector, language_model]}\n" /* 12 */
                            "    eval: {data: d/mc.json}\n"                            /* 13 */
                            "  - name: more\n"                                         /* 14 */
                            "    model: {init_from: null}\n"                           /* 15 */
                            "    eval: null\n"                                         /* 16 */
                            "    checkpoint: {dir: elsewhere}\n";                      /* 17 */

static void test_stages(void) {
    job_spec_t *s = NULL;
    spec_errors_t e = {0};
    CHECK_RC(parse(STAGED, &s, &e), 0);
    spec_errors_print(&e, stderr);
    spec_errors_free(&e);
    if (!s) return;
    CHECK_EQ_INT(s->staged, 1);
    CHECK_EQ_INT(s->n_stages, 3);
    CHECK(strcmp(s->name, "demo") == 0);
    CHECK_EQ_INT(s->cluster.workers, 2);
    const job_stage_t *a = &s->stages[0], *b = &s->stages[1], *c = &s->stages[2];
    CHECK(strcmp(a->name, "pretrain") == 0 && strcmp(b->name, "finetune") == 0);
    CHECK(strcmp(a->data.train, "d/pretrain") == 0 && a->data.tmpl == JOB_TEMPLATE_PLAIN);
    CHECK(a->model.init_from == NULL && a->model.init_from_previous == 0);
    CHECK(strcmp(a->checkpoint.dir, "runs/demo/pretrain") == 0);
    CHECK(a->train.lr == 1e-3 && a->train.trainable == JOB_TRAIN_PROJECTOR && a->eval.enabled == 0);
    CHECK(strcmp(b->model.vision_tower, "m/clip") == 0);
    CHECK(strcmp(b->data.train, "d/instruct") == 0 && b->data.tmpl == JOB_TEMPLATE_VICUNA_V1);
    CHECK(b->train.lr == 2e-5 && b->train.global_batch == 8 && b->checkpoint.every_steps == 10);
    CHECK_EQ_INT(b->train.trainable, JOB_TRAIN_PROJECTOR | JOB_TRAIN_LANGUAGE_MODEL);
    CHECK(b->model.init_from && strcmp(b->model.init_from, "runs/demo/pretrain") == 0);
    CHECK_EQ_INT(b->model.init_from_previous, 1);
    CHECK(strcmp(b->checkpoint.dir, "runs/demo/finetune") == 0);
    CHECK(b->eval.enabled && strcmp(b->eval.data, "d/mc.json") == 0);
    /* stage 3 inherits stage 2's data and train, opts out of init_from and eval */
    CHECK(strcmp(c->data.train, "d/instruct") == 0 && c->train.lr == 2e-5);
    CHECK(c->model.init_from == NULL && c->model.init_from_previous == 0);
    CHECK_EQ_INT(c->eval.enabled, 0);
    CHECK(strcmp(c->checkpoint.dir, "elsewhere") == 0);
    job_mark_t m = job_spec_key_mark(s, 1, JOB_KEY_TRAIN_LR);
    CHECK(m.line == 12 && m.col == 17);
    m = job_spec_key_mark(s, 1, JOB_KEY_TRAIN_GLOBAL_BATCH);
    CHECK(m.line == 4 && m.col == 33);

    char *flat = NULL;
    CHECK_RC(job_spec_stage_to_json(s, 1, &flat), 0);
    job_spec_t *f = NULL;
    CHECK_RC(job_spec_from_json(flat, "flat", &f, NULL), 0);
    if (f) {
        CHECK(strcmp(f->name, "demo:finetune") == 0);
        CHECK(strcmp(f->stages[0].model.init_from, "runs/demo/pretrain") == 0);
        CHECK_EQ_INT(f->stages[0].model.init_from_previous, 0);
        CHECK_EQ_INT(f->cluster.workers, 2);
        CHECK(strcmp(f->stages[0].checkpoint.dir, "runs/demo/finetune") == 0);
    }
    job_spec_free(&f);
    free(flat);
    CHECK_RC(job_spec_stage_to_json(s, 3, &flat), LLAVA_EINVAL);
    job_spec_free(&s);

    /* errors inside stages */
    expect_one(edit(STAGED, "    train: {lr: 2e-5", "    train: {lr: 2e-5, learning_rate: 1}\n", 1),
               "t.yaml:12:23: unknown key 'stages[1].train.learning_rate' (did you mean 'lr'?)");
    expect_one(edit(STAGED, "  - name: finetune", "  - name: pretrain\n", 1),
               "t.yaml:10:11: key 'stages[1].name': 'pretrain' is already stage 0's name");
    expect_one(edit(STAGED, "  - name: finetune", "  - name: a/b\n", 1),
               "t.yaml:10:11: key 'stages[1].name': 'a/b' is not a name ([A-Za-z0-9._-], it names a directory)");
    const char *noname[] = {"t.yaml:10:5: unknown key 'stages[1].lr'",
                            "t.yaml:10:5: key 'stages[1]': missing required key 'name'"};
    expect_errors(edit(STAGED, "  - name: finetune", "  - lr: 1\n", 1), 2, noname);
    expect_one(edit(STAGED, "    eval: null", "    cluster: {workers: 3}\n", 1),
               "t.yaml:16:5: key 'stages[2].cluster': the cluster is set once, at the top level");
    expect_one("name: x\nstages: []\n",
               "t.yaml:2:9: key 'stages': expected a non-empty list of stages (`- name: ...`)");
    /* a value inherited by every stage is reported once, where it was written */
    expect_one(edit(STAGED, "train: {lr", "train: {lr: 1e-3, global_batch: 0}\n", 1),
               "t.yaml:4:33: key 'train.global_batch': must be >= 1, got 0");
    /* no top-level checkpoint.dir: each stage must say */
    const char *miss[] = {"t.yaml:7:5: stage 'pretrain': missing required key 'checkpoint.dir'",
                          "t.yaml:9:5: stage 'finetune': missing required key 'checkpoint.dir'"};
    expect_errors(edit(STAGED, "checkpoint: {dir", "", 1), 2, miss);
}

static void test_json(void) {
    const char *srcs[] = {MINIMAL, FULL, STAGED};
    for (int i = 0; i < 3; i++) {
        job_spec_t *s = NULL, *r = NULL;
        char *j1 = NULL, *j2 = NULL;
        spec_errors_t e = {0};
        CHECK_RC(parse(srcs[i], &s, NULL), 0);
        if (!s) continue;
        CHECK_RC(job_spec_to_json(s, &j1), 0);
        CHECK_RC(job_spec_from_json(j1, "json", &r, &e), 0);
        spec_errors_print(&e, stderr);
        spec_errors_free(&e);
        if (r) {
            CHECK_RC(job_spec_to_json(r, &j2), 0);
            CHECKF(j2 && strcmp(j1, j2) == 0, "round trip differs:\n%s\n%s", j1, j2 ? j2 : "");
            CHECK_EQ_INT(r->n_stages, s->n_stages);
            for (int k = 0; k < s->n_stages; k++) {
                CHECK(r->stages[k].train.lr == s->stages[k].train.lr);
                CHECK(r->stages[k].train.seed == s->stages[k].train.seed);
                CHECK_EQ_INT(r->stages[k].model.init_from_previous, s->stages[k].model.init_from_previous);
            }
        }
        free(j1);
        free(j2);
        job_spec_free(&s);
        job_spec_free(&r);
    }
    job_spec_t *s = NULL;
    spec_errors_t e = {0};
    CHECK_RC(job_spec_from_json("{\"name\": 1", "j", &s, &e), LLAVA_ECONFIG);
    CHECK(e.n == 1 && strncmp(e.lines[0], "j: JSON syntax error", 20) == 0);
    spec_errors_free(&e);
    CHECK_RC(job_spec_from_json("{\"name\":\"x\",\"train\":{\"lr\":\"fast\"}}", "j", &s, &e), LLAVA_ECONFIG);
    CHECK(has_line(&e, "j: key 'train.lr': expected a number, got 'fast'"));
    spec_errors_free(&e);
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

/* A fresh temporary directory made the current one (paths in specs are relative to it); scratch_leave goes back
 * and removes it. */
typedef struct {
    char dir[64], old[4096];
} scratch_t;

static int scratch_enter(scratch_t *t) {
    snprintf(t->dir, sizeof t->dir, "/tmp/test_jobspec_XXXXXX");
    CHECK(mkdtemp(t->dir) != NULL);
    CHECK(getcwd(t->old, sizeof t->old) != NULL);
    int ok = chdir(t->dir) == 0;
    CHECK(ok);
    return ok;
}

static void scratch_leave(scratch_t *t) {
    CHECK(chdir(t->old) == 0);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", t->dir);
    CHECK(system(cmd) == 0);
}

static void test_paths(void) {
    scratch_t sc;
    if (!scratch_enter(&sc)) return;
    const char *dir = sc.dir;
    mkdir("m", 0755);
    mkdir("m/clip", 0755);
    mkdir("m/llama", 0755);
    write_file("m/clip/config.json", "{}");
    mkdir("d", 0755);
    mkdir("d/pretrain", 0755);
    job_spec_t *s = NULL;
    spec_errors_t e = {0};
    CHECK_RC(parse(edit(MINIMAL, "checkpoint", "eval: {data: d/mc.json}\n", 0), &s, NULL), 0);
    if (s) {
        CHECK_RC(job_spec_check_paths(s, &e), LLAVA_ECONFIG);
        char want[3][8192];
        snprintf(want[0], sizeof want[0], "t.yaml:4:19: key 'model.language_model': model directory '%s/m/llama' has "
                 "no config.json", dir);
        snprintf(want[1], sizeof want[1], "t.yaml:6:10: key 'data.train': dataset directory (from llava-data ingest) "
                 "'%s/d/pretrain' has no manifest.json", dir);
        snprintf(want[2], sizeof want[2], "t.yaml:11:14: key 'eval.data': eval data file '%s/d/mc.json' does not "
                 "exist (No such file or directory)", dir);
        CHECK_EQ_INT(e.n, 3);
        for (int i = 0; i < 3; i++) CHECK(has_line(&e, want[i]));
        spec_errors_free(&e);
        write_file("m/llama/config.json", "{}");
        write_file("d/pretrain/manifest.json", "{}");
        write_file("d/mc.json", "[]");
        CHECK_RC(job_spec_check_paths(s, &e), 0);
        CHECK_EQ_INT(e.n, 0);
        CHECK_RC(job_spec_resolve_paths(s, "/base"), 0);
        CHECK(strcmp(s->stages[0].data.train, "/base/d/pretrain") == 0);
        CHECK(strcmp(s->stages[0].checkpoint.dir, "/base/runs/t") == 0);
    }
    job_spec_free(&s);
    /* init_from: a run dir (with `latest`) or a model dir; a derived one is not checked */
    const char *two = "name: x\nmodel: {vision_tower: m/clip, language_model: m/llama, init_from: runs/s1}\n"
                      "data: {train: d/pretrain, template: plain}\ntrain: {lr: 1}\ncheckpoint: {dir: r}\n"
                      "stages:\n  - name: a\n  - name: b\n";
    CHECK_RC(parse(two, &s, NULL), 0);
    if (s) {
        CHECK_RC(job_spec_check_paths(s, &e), LLAVA_ECONFIG);
        char want[8192];
        snprintf(want, sizeof want, "t.yaml:2:67: key 'model.init_from': checkpoint or model directory '%s/runs/s1' "
                 "does not exist (No such file or directory)", dir);
        CHECK_EQ_INT(e.n, 1);
        CHECK(has_line(&e, want));
        spec_errors_free(&e);
        mkdir("runs", 0755);
        mkdir("runs/s1", 0755);
        write_file("runs/s1/latest", "checkpoint-10\n");
        CHECK_RC(job_spec_check_paths(s, &e), 0);
        spec_errors_free(&e);
    }
    job_spec_free(&s);
    scratch_leave(&sc);
}

static void test_steps(void) {
    job_spec_t *s = NULL;
    CHECK_RC(parse(MINIMAL, &s, NULL), 0);
    if (!s) return;
    job_stage_t *st = &s->stages[0];
    int64_t total = 0, warm = 0;
    st->train.global_batch = 128;
    CHECK_RC(job_spec_total_steps(st, 558128, &total, &warm), 0); /* LCS-558K, bs 256 in v1.5; here 128 */
    CHECK_EQ_INT(total, 4361);                                    /* ceil(558128/128) = 4360.375 -> 4361 */
    CHECK_EQ_INT(warm, 131);                                      /* ceil(0.03 * 4361) = ceil(130.83) */
    st->train.global_batch = 256;
    CHECK_RC(job_spec_total_steps(st, 558128, &total, &warm), 0);
    CHECK_EQ_INT(total, 2181);
    CHECK_EQ_INT(warm, 66);
    st->train.epochs = 3;
    st->train.global_batch = 10;
    CHECK_RC(job_spec_total_steps(st, 100, &total, &warm), 0);
    CHECK_EQ_INT(total, 30);
    CHECK_EQ_INT(warm, 1); /* ceil(0.9) */
    st->train.max_steps = 7;
    CHECK_RC(job_spec_total_steps(st, 100, &total, &warm), 0);
    CHECK_EQ_INT(total, 7);
    st->train.max_steps = 0;
    st->train.warmup_ratio = 0;
    CHECK_RC(job_spec_total_steps(st, 0, &total, &warm), 0);
    CHECK_EQ_INT(total, 0);
    CHECK_EQ_INT(warm, 0);
    CHECK_RC(job_spec_total_steps(st, -1, &total, &warm), LLAVA_EINVAL);
    job_spec_free(&s);
}

/* Truncations and byte flips of valid specs: never crash, and either parse or say why. */
static void test_fuzz(void) {
    uint64_t x = 0x9E3779B97F4A7C15ull;
    const char *srcs[] = {FULL, STAGED};
    int parsed = 0, failed = 0, silent = 0;
    char buf[4096];
    for (int it = 0; it < 5000; it++) {
        const char *src = srcs[it & 1];
        size_t n = strlen(src);
        memcpy(buf, src, n);
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        if (x % 3 == 0) n = (size_t)(x >> 8) % n;
        int flips = 1 + (int)((x >> 20) % 4);
        for (int k = 0; k < flips && n > 0; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            size_t at = (size_t)(x >> 4) % n;
            static const char pool[] = ":-[]{}#&*!|>'\"\n \t,?%@`0a.\xff\x01";
            buf[at] = (x >> 40) & 1 ? pool[(x >> 32) % (sizeof pool - 1)] : (char)(x >> 48);
        }
        job_spec_t *s = NULL;
        spec_errors_t e = {0};
        int rc = job_spec_parse_string(buf, n, "fuzz", &s, &e);
        if (rc == 0) {
            parsed++;
            char *j = NULL;
            if (job_spec_to_json(s, &j) == 0) {
                job_spec_t *r = NULL;
                if (job_spec_from_json(j, "fuzz-json", &r, NULL) != 0) silent++;
                job_spec_free(&r);
            }
            free(j);
        } else {
            failed++;
            if (e.n == 0 || s != NULL) silent++;
        }
        job_spec_free(&s);
        spec_errors_free(&e);
    }
    printf("fuzz: %d parsed, %d refused\n", parsed, failed);
    CHECK_EQ_INT(silent, 0);
    CHECK(parsed > 0 && failed > 0);
}

/* A dataset ingested for another image size, patch size or padding than the stage's model is refused at submit. */
static void write_fit_manifest(int image_size, int patch_size, int pad) {
    ds_manifest_t m;
    memset(&m, 0, sizeof m);
    int32_t lengths[2] = {30, 12}, n_images[2] = {1, 0};
    ds_shard_t shards[1] = {{.name = "a", .first = 0, .count = 2}};
    m.version = 1;
    m.n_samples = 2;
    m.n_images_total = 1;
    m.n_text_only = 1;
    m.n_source = 2;
    m.image_size = image_size;
    m.patch_size = patch_size;
    m.pad = pad;
    snprintf(m.template_name, sizeof m.template_name, "plain");
    m.n_shards = 1;
    m.shards = shards;
    m.lengths = lengths;
    m.n_images = n_images;
    CHECK_RC(ds_manifest_write("d/data", &m, NULL), 0);
}

static void test_fit(void) {
    scratch_t sc;
    if (!scratch_enter(&sc)) return;
    const char *dir = sc.dir;
    mkdir("m", 0755);
    mkdir("d", 0755);
    mkdir("d/data", 0755);
    write_file("m/config.json", "{\"model_type\": \"llava\", \"vision_config\": {\"model_type\": \"clip_vision_model\", "
               "\"image_size\": 56, \"patch_size\": 14}, \"text_config\": {\"model_type\": \"llama\"}}");
    const char *spec = "name: x\nmodel: {llava: m}\ndata: {train: d/data, template: plain}\ntrain: {lr: 1}\n"
                       "checkpoint: {dir: r}\n";
    job_spec_t *s = NULL;
    spec_errors_t e = {0};
    CHECK_RC(parse(spec, &s, NULL), 0);
    if (s) {
        char want[8192];
        write_fit_manifest(28, 14, 0);
        CHECK_RC(job_spec_check_paths(s, &e), LLAVA_ECONFIG);
        snprintf(want, sizeof want, "t.yaml:3:15: key 'data.train': dataset '%s/d/data' holds 28 px images but the "
                 "model's vision tower ('%s/m') takes 56 px; ingest it again with --image-size 56", dir, dir);
        CHECK_EQ_INT(e.n, 1);
        CHECK(has_line(&e, want));
        spec_errors_free(&e);
        write_fit_manifest(56, 28, 0);
        CHECK_RC(job_spec_check_paths(s, &e), LLAVA_ECONFIG);
        CHECK_EQ_INT(e.n, 1);
        CHECK(e.n == 1 && strstr(e.lines[0], "counts 28 px patches per image but the model's vision tower") != NULL);
        spec_errors_free(&e);
        write_fit_manifest(56, 14, 1);
        CHECK_RC(job_spec_check_paths(s, &e), LLAVA_ECONFIG);
        CHECK_EQ_INT(e.n, 1);
        CHECK(e.n == 1 && strstr(e.lines[0], "key 'model.image_aspect_ratio': 'square' but dataset") != NULL &&
              strstr(e.lines[0], "was ingested with --pad; use 'pad'") != NULL);
        spec_errors_free(&e);
        write_fit_manifest(56, 14, 0);
        CHECK_RC(job_spec_check_paths(s, &e), 0);
        CHECK_EQ_INT(e.n, 0);
        spec_errors_free(&e);
    }
    job_spec_free(&s);
    scratch_leave(&sc);
}

int main(void) {
    log_set_level(LOG_NONE);
    test_defaults();
    test_full();
    test_types();
    test_unknown();
    test_ranges();
    test_duplicates_and_syntax();
    test_missing();
    test_stages();
    test_json();
    test_paths();
    test_fit();
    test_steps();
    test_fuzz();
    return test_finish();
}
