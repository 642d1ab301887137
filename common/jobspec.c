/* YAML job specs: libyaml document -> a small node tree (also built from cJSON) -> typed job_spec_t through one
 * table of keys; every problem is collected as a `FILE:LINE:COL: ...` line. Schema and rules: docs/jobspec.md.
 * Tested by tests/unit/test_jobspec.c (every error class, stages, JSON round trip, fuzz) and test_jobs_dir.c. */
#include "common/jobspec.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "common/dataset.h"
#include "common/err.h"
#include "common/hfconfig.h"

#define SN_MAX_DEPTH 32
#define SN_MAX_NODES 100000
#define SEED_MAX 9007199254740992.0 /* 2^53: seeds survive a round trip through JSON numbers */

/* ---- error lines ---- */

void spec_errors_add(spec_errors_t *errs, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (!errs) {
        LOG_E("%s", buf);
        return;
    }
    for (int i = 0; i < errs->n; i++)
        if (strcmp(errs->lines[i], buf) == 0) return;
    if (errs->n >= SPEC_ERRORS_MAX) {
        errs->dropped++;
        return;
    }
    if (errs->n == errs->cap) {
        int cap = errs->cap ? errs->cap * 2 : 16;
        char **l = realloc(errs->lines, (size_t)cap * sizeof *l);
        if (!l) {
            errs->dropped++;
            return;
        }
        errs->lines = l;
        errs->cap = cap;
    }
    char *line = strdup(buf);
    if (!line) {
        errs->dropped++;
        return;
    }
    errs->lines[errs->n++] = line;
}

void spec_errors_print(const spec_errors_t *errs, FILE *f) {
    if (!errs) return;
    for (int i = 0; i < errs->n; i++) fprintf(f, "%s\n", errs->lines[i]);
    if (errs->dropped) fprintf(f, "(%d more errors not shown)\n", errs->dropped);
}

void spec_errors_free(spec_errors_t *errs) {
    if (!errs) return;
    for (int i = 0; i < errs->n; i++) free(errs->lines[i]);
    free(errs->lines);
    memset(errs, 0, sizeof *errs);
}

/* ---- parse context ---- */

typedef struct {
    const char *src;
    spec_errors_t *errs;
    int nerr;
    size_t nodes;
    int oom;
} pctx_t;

static void perr(pctx_t *c, job_mark_t m, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void perr(pctx_t *c, job_mark_t m, const char *fmt, ...) {
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (m.line > 0)
        spec_errors_add(c->errs, "%s:%d:%d: %s", c->src, m.line, m.col, msg);
    else
        spec_errors_add(c->errs, "%s: %s", c->src, msg);
    c->nerr++;
}

/* ---- node tree: what YAML and JSON both become ---- */

typedef enum { SN_SCALAR, SN_MAP, SN_SEQ } sn_kind_t;

typedef struct snode {
    sn_kind_t kind;
    char *str;   /* scalar text */
    int plain;   /* scalar was unquoted (so `null`, `~` and `` mean null) */
    job_mark_t mark;
    int n;       /* map: pairs (kids[2i] key, kids[2i+1] value); seq: items */
    struct snode **kids;
} snode_t;

static void sn_free(snode_t *n) {
    if (!n) return;
    int nk = n->kind == SN_MAP ? 2 * n->n : n->n;
    for (int i = 0; i < nk; i++) sn_free(n->kids[i]);
    free(n->kids);
    free(n->str);
    free(n);
}

static snode_t *sn_new(pctx_t *c, sn_kind_t kind, job_mark_t m, int nkids) {
    if (++c->nodes > SN_MAX_NODES) {
        if (c->nodes == SN_MAX_NODES + 1) perr(c, m, "more than %d nodes (alias expansion?)", SN_MAX_NODES);
        return NULL;
    }
    snode_t *n = calloc(1, sizeof *n);
    if (!n) goto oom;
    n->kind = kind;
    n->mark = m;
    if (nkids > 0) {
        n->kids = calloc((size_t)nkids, sizeof *n->kids);
        if (!n->kids) goto oom;
    }
    return n;
oom:
    c->oom = 1;
    free(n);
    return NULL;
}

static int sn_is_null(const snode_t *n) {
    if (n->kind != SN_SCALAR || !n->plain) return 0;
    const char *s = n->str;
    return s[0] == 0 || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
           strcmp(s, "NULL") == 0;
}

static const char *sn_kind_name(const snode_t *n) {
    return n->kind == SN_MAP ? "a mapping" : n->kind == SN_SEQ ? "a list" : "a scalar";
}

static snode_t *sn_from_yaml(pctx_t *c, yaml_document_t *doc, int id, int depth) {
    yaml_node_t *y = yaml_document_get_node(doc, id);
    if (!y) return NULL;
    job_mark_t m = {(int)y->start_mark.line + 1, (int)y->start_mark.column + 1};
    if (depth > SN_MAX_DEPTH) {
        perr(c, m, "nesting deeper than %d levels", SN_MAX_DEPTH);
        return NULL;
    }
    snode_t *n = NULL;
    if (y->type == YAML_SCALAR_NODE) {
        n = sn_new(c, SN_SCALAR, m, 0);
        if (!n) return NULL;
        n->str = malloc(y->data.scalar.length + 1);
        if (!n->str) {
            c->oom = 1;
            sn_free(n);
            return NULL;
        }
        memcpy(n->str, y->data.scalar.value, y->data.scalar.length);
        n->str[y->data.scalar.length] = 0;
        n->plain = y->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        return n;
    }
    if (y->type == YAML_SEQUENCE_NODE) {
        int cnt = (int)(y->data.sequence.items.top - y->data.sequence.items.start);
        n = sn_new(c, SN_SEQ, m, cnt);
        if (!n) return NULL;
        for (int i = 0; i < cnt; i++) {
            n->kids[i] = sn_from_yaml(c, doc, y->data.sequence.items.start[i], depth + 1);
            if (!n->kids[i]) goto fail;
            n->n = i + 1;
        }
        return n;
    }
    if (y->type == YAML_MAPPING_NODE) {
        int cnt = (int)(y->data.mapping.pairs.top - y->data.mapping.pairs.start);
        n = sn_new(c, SN_MAP, m, 2 * cnt);
        if (!n) return NULL;
        for (int i = 0; i < cnt; i++) {
            yaml_node_pair_t *pr = &y->data.mapping.pairs.start[i];
            n->kids[2 * i] = sn_from_yaml(c, doc, pr->key, depth + 1);
            if (!n->kids[2 * i]) goto fail;
            n->kids[2 * i + 1] = sn_from_yaml(c, doc, pr->value, depth + 1);
            if (!n->kids[2 * i + 1]) {
                sn_free(n->kids[2 * i]);
                n->kids[2 * i] = NULL;
                goto fail;
            }
            n->n = i + 1;
        }
        return n;
    }
fail:
    sn_free(n);
    return NULL;
}

static snode_t *sn_from_json(pctx_t *c, const cJSON *j, int depth) {
    job_mark_t none = {0, 0};
    if (depth > SN_MAX_DEPTH) {
        perr(c, none, "nesting deeper than %d levels", SN_MAX_DEPTH);
        return NULL;
    }
    snode_t *n = NULL;
    if (cJSON_IsObject(j) || cJSON_IsArray(j)) {
        int cnt = cJSON_GetArraySize(j), obj = cJSON_IsObject(j);
        n = sn_new(c, obj ? SN_MAP : SN_SEQ, none, obj ? 2 * cnt : cnt);
        if (!n) return NULL;
        int i = 0;
        for (const cJSON *it = j->child; it && i < cnt; it = it->next, i++) {
            if (obj) {
                snode_t *k = sn_new(c, SN_SCALAR, none, 0);
                if (!k) goto fail;
                n->kids[2 * i] = k;
                k->str = strdup(it->string ? it->string : "");
                if (!k->str) goto oom;
                n->kids[2 * i + 1] = sn_from_json(c, it, depth + 1);
                if (!n->kids[2 * i + 1]) goto fail;
            } else {
                n->kids[i] = sn_from_json(c, it, depth + 1);
                if (!n->kids[i]) goto fail;
            }
            n->n = i + 1;
        }
        return n;
    }
    n = sn_new(c, SN_SCALAR, none, 0);
    if (!n) return NULL;
    char num[64];
    const char *s = "";
    n->plain = 1;
    if (cJSON_IsString(j)) {
        s = j->valuestring;
        n->plain = 0;
    } else if (cJSON_IsNumber(j)) {
        double v = j->valuedouble;
        if (v == floor(v) && fabs(v) <= SEED_MAX)
            snprintf(num, sizeof num, "%.0f", v);
        else
            snprintf(num, sizeof num, "%.17g", v);
        s = num;
    } else if (cJSON_IsBool(j)) {
        s = cJSON_IsTrue(j) ? "true" : "false";
    } else {
        s = "null";
    }
    n->str = strdup(s);
    if (!n->str) goto oom;
    return n;
oom:
    c->oom = 1;
fail:
    sn_free(n);
    return NULL;
}

/* ---- the schema: one table ---- */

typedef enum { FT_STR, FT_PATH, FT_PATH_NULL, FT_INT, FT_I64, FT_U64, FT_DOUBLE, FT_BOOL, FT_ENUM, FT_TRAINABLE } ftype_t;

typedef struct {
    const char *section; /* NULL: top level */
    const char *key;
    ftype_t type;
    int cluster; /* 1: lives in job_cluster_t */
    size_t off;
    const char *const *choices;
} field_t;

static const char *const projector_names[] = {"linear", "mlp2x_gelu", NULL};
static const char *const aspect_names[] = {"square", "pad", NULL};
static const char *const template_names[] = {"plain", "vicuna_v1", "llava_v0", NULL};
static const char *const bad_names[] = {"skip", "fail", NULL};
static const char *const schedule_names[] = {"cosine", "linear", "constant", NULL};
static const char *const precision_names[] = {"bf16", "fp32", NULL};
static const char *const device_names[] = {"cpu", "cuda", NULL};
static const char *const trainable_names[] = {"projector", "language_model", NULL};

#define SF(sec, k, t, field, ch) [JOB_KEY_##field] = {sec, k, t, 0, offsetof(job_stage_t, ch), NULL}
#define SE(sec, k, field, ch, names) [JOB_KEY_##field] = {sec, k, FT_ENUM, 0, offsetof(job_stage_t, ch), names}
#define CF(k, t, field, ch) [JOB_KEY_##field] = {"cluster", k, t, 1, offsetof(job_cluster_t, ch), NULL}

static const field_t fields[JOB_KEY_COUNT] = {
    SF(NULL, "name", FT_STR, NAME, name),
    SF("model", "vision_tower", FT_PATH, MODEL_VISION_TOWER, model.vision_tower),
    SF("model", "language_model", FT_PATH, MODEL_LANGUAGE_MODEL, model.language_model),
    SF("model", "llava", FT_PATH, MODEL_LLAVA, model.llava),
    SE("model", "projector", MODEL_PROJECTOR, model.projector, projector_names),
    SF("model", "vision_select_layer", FT_INT, MODEL_VISION_SELECT_LAYER, model.vision_select_layer),
    SF("model", "init_from", FT_PATH_NULL, MODEL_INIT_FROM, model.init_from),
    SE("model", "image_aspect_ratio", MODEL_IMAGE_ASPECT_RATIO, model.image_aspect_ratio, aspect_names),
    SF("data", "train", FT_PATH, DATA_TRAIN, data.train),
    SE("data", "template", DATA_TEMPLATE, data.tmpl, template_names),
    SF("data", "max_seq_len", FT_INT, DATA_MAX_SEQ_LEN, data.max_seq_len),
    SF("data", "group_by_length", FT_BOOL, DATA_GROUP_BY_LENGTH, data.group_by_length),
    SE("data", "bad_records", DATA_BAD_RECORDS, data.bad_records, bad_names),
    SF("train", "trainable", FT_TRAINABLE, TRAIN_TRAINABLE, train.trainable),
    SF("train", "epochs", FT_INT, TRAIN_EPOCHS, train.epochs),
    SF("train", "global_batch", FT_INT, TRAIN_GLOBAL_BATCH, train.global_batch),
    SF("train", "micro_batch_tokens", FT_INT, TRAIN_MICRO_BATCH_TOKENS, train.micro_batch_tokens),
    SF("train", "lr", FT_DOUBLE, TRAIN_LR, train.lr),
    SF("train", "warmup_ratio", FT_DOUBLE, TRAIN_WARMUP_RATIO, train.warmup_ratio),
    SE("train", "schedule", TRAIN_SCHEDULE, train.schedule, schedule_names),
    SF("train", "weight_decay", FT_DOUBLE, TRAIN_WEIGHT_DECAY, train.weight_decay),
    SF("train", "max_grad_norm", FT_DOUBLE, TRAIN_MAX_GRAD_NORM, train.max_grad_norm),
    SE("train", "precision", TRAIN_PRECISION, train.precision, precision_names),
    SF("train", "seed", FT_U64, TRAIN_SEED, train.seed),
    SF("train", "max_steps", FT_I64, TRAIN_MAX_STEPS, train.max_steps),
    SF("train", "recompute", FT_BOOL, TRAIN_RECOMPUTE, train.recompute),
    SF("train", "zero_stage", FT_INT, TRAIN_ZERO_STAGE, train.zero_stage),
    SF("eval", "data", FT_PATH, EVAL_DATA, eval.data),
    SF("eval", "answers", FT_PATH, EVAL_ANSWERS, eval.answers),
    SF("eval", "every_epoch", FT_BOOL, EVAL_EVERY_EPOCH, eval.every_epoch),
    SF("checkpoint", "dir", FT_PATH, CHECKPOINT_DIR, checkpoint.dir),
    SF("checkpoint", "every_steps", FT_INT, CHECKPOINT_EVERY_STEPS, checkpoint.every_steps),
    SF("checkpoint", "keep", FT_INT, CHECKPOINT_KEEP, checkpoint.keep),
    CF("workers", FT_INT, CLUSTER_WORKERS, workers),
    [JOB_KEY_CLUSTER_DEVICE] = {"cluster", "device", FT_ENUM, 1, offsetof(job_cluster_t, device), device_names},
    CF("heartbeat_ms", FT_INT, CLUSTER_HEARTBEAT_MS, heartbeat_ms),
    CF("hang_timeout_ms", FT_INT, CLUSTER_HANG_TIMEOUT_MS, hang_timeout_ms),
    CF("max_replacements", FT_INT, CLUSTER_MAX_REPLACEMENTS, max_replacements),
};

static const char *const sections[] = {"model", "data", "train", "eval", "checkpoint", "cluster", NULL};

/* Names users bring from the reference's command line (HF TrainingArguments, LLaVA's ModelArguments). */
static const char *const aliases[][2] = {
    {"learning_rate", "lr"}, {"num_train_epochs", "epochs"}, {"batch_size", "global_batch"},
    {"per_device_train_batch_size", "global_batch"}, {"lr_scheduler_type", "schedule"}, {"scheduler", "schedule"},
    {"warmup", "warmup_ratio"}, {"mm_projector_type", "projector"}, {"mm_vision_select_layer", "vision_select_layer"},
    {"model_max_length", "max_seq_len"}, {"group_by_modality_length", "group_by_length"}, {"version", "template"},
    {"conv_template", "template"}, {"data_path", "train"}, {"output_dir", "dir"}, {"save_steps", "every_steps"},
    {"save_total_limit", "keep"}, {"bf16", "precision"}, {"dtype", "precision"}, {"model_name_or_path", "language_model"},
    {"pretrain_mm_mlp_adapter", "init_from"}, {"freeze_backbone", "trainable"}, {"tune_mm_mlp_adapter", "trainable"},
    {"image_folder", "train"}, {"num_workers", "workers"}, {"gpus", "workers"}, {"steps", "max_steps"},
    {"gradient_checkpointing", "recompute"}, {"zero", "zero_stage"},
};

const char *job_key_name(job_key_t key) {
    static const char *const names[JOB_KEY_COUNT] = {
        "name", "model.vision_tower", "model.language_model", "model.llava", "model.projector",
        "model.vision_select_layer", "model.init_from", "model.image_aspect_ratio", "data.train", "data.template",
        "data.max_seq_len", "data.group_by_length", "data.bad_records", "train.trainable", "train.epochs",
        "train.global_batch", "train.micro_batch_tokens", "train.lr", "train.warmup_ratio", "train.schedule",
        "train.weight_decay", "train.max_grad_norm", "train.precision", "train.seed", "train.max_steps",
        "train.recompute", "train.zero_stage", "eval.data", "eval.answers", "eval.every_epoch", "checkpoint.dir",
        "checkpoint.every_steps", "checkpoint.keep", "cluster.workers", "cluster.device", "cluster.heartbeat_ms",
        "cluster.hang_timeout_ms", "cluster.max_replacements"};
    return (unsigned)key < JOB_KEY_COUNT ? names[key] : "?";
}

const char *job_projector_name(job_projector_t v) { return (unsigned)v < 2 ? projector_names[v] : "?"; }
const char *job_template_name(job_template_t v) { return (unsigned)v < 3 ? template_names[v] : "?"; }
const char *job_schedule_name(job_schedule_t v) { return (unsigned)v < 3 ? schedule_names[v] : "?"; }
const char *job_precision_name(job_precision_t v) { return (unsigned)v < 2 ? precision_names[v] : "?"; }
const char *job_device_name(job_device_t v) { return (unsigned)v < 2 ? device_names[v] : "?"; }

/* ---- suggestions ---- */

static int edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63) return 99;
    int row[64];
    for (size_t j = 0; j <= lb; j++) row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int up = row[j];
            int best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* The valid name closest to `bad`: a known alias first, then the smallest edit distance within len/3 (at least 2). */
static const char *suggest(const char *bad, const char *const *valid, int nvalid) {
    for (size_t a = 0; a < sizeof aliases / sizeof aliases[0]; a++)
        if (strcasecmp(bad, aliases[a][0]) == 0)
            for (int i = 0; i < nvalid; i++)
                if (strcmp(valid[i], aliases[a][1]) == 0) return valid[i];
    size_t lb = strlen(bad);
    for (int i = 0; i < nvalid && lb >= 3; i++) /* "vicuna" -> "vicuna_v1", "heartbeat" -> "heartbeat_ms" */
        if (strncmp(valid[i], bad, lb) == 0) return valid[i];
    const char *best = NULL;
    int bestd = (int)strlen(bad) / 3;
    if (bestd < 2) bestd = 2;
    for (int i = 0; i < nvalid; i++) {
        int d = edit_distance(bad, valid[i]);
        if (d <= bestd) {
            bestd = d;
            best = valid[i];
        }
    }
    return best;
}

static void unknown_key(pctx_t *c, const snode_t *k, const char *prefix, const char *const *valid, int nvalid) {
    const char *s = suggest(k->str, valid, nvalid);
    if (s)
        perr(c, k->mark, "unknown key '%s%s' (did you mean '%s'?)", prefix, k->str, s);
    else
        perr(c, k->mark, "unknown key '%s%s'", prefix, k->str);
}

/* Keys must be scalars and appear once; reports the rest. Returns 1 when key i is usable. */
static int map_key_ok(pctx_t *c, const snode_t *map, int i, const char *prefix) {
    const snode_t *k = map->kids[2 * i];
    if (k->kind != SN_SCALAR) {
        perr(c, k->mark, "a key under '%s' must be a word, got %s", prefix[0] ? prefix : "(top level)", sn_kind_name(k));
        return 0;
    }
    for (int j = 0; j < i; j++) {
        const snode_t *e = map->kids[2 * j];
        if (e->kind == SN_SCALAR && strcmp(e->str, k->str) == 0) {
            if (e->mark.line > 0)
                perr(c, k->mark, "duplicate key '%s%s' (first at line %d, column %d)", prefix, k->str, e->mark.line,
                     e->mark.col);
            else
                perr(c, k->mark, "duplicate key '%s%s'", prefix, k->str);
            return 0;
        }
    }
    return 1;
}

/* ---- values ---- */

static void bad_type(pctx_t *c, const snode_t *v, const char *path, const char *want) {
    if (v->kind != SN_SCALAR)
        perr(c, v->mark, "key '%s': expected %s, got %s", path, want, sn_kind_name(v));
    else if (sn_is_null(v))
        perr(c, v->mark, "key '%s': expected %s, got null", path, want);
    else
        perr(c, v->mark, "key '%s': expected %s, got '%.80s'", path, want, v->str);
}

static int parse_i64(const char *s, long long *out) {
    if (!s[0] || s[0] == ' ') return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end) return -1;
    *out = v;
    return 0;
}

static int parse_enum(const char *s, const char *const *names) {
    for (int i = 0; names[i]; i++)
        if (strcmp(s, names[i]) == 0) return i;
    return -1;
}

static void choices_str(const char *const *names, char *buf, size_t len) {
    buf[0] = 0;
    for (int i = 0; names[i]; i++) {
        size_t used = strlen(buf);
        snprintf(buf + used, len - used, "%s%s", i ? "|" : "", names[i]);
    }
}

static int bad_enum(pctx_t *c, const snode_t *v, const char *path, const char *const *names) {
    char want[128];
    choices_str(names, want, sizeof want);
    int nvalid = 0;
    while (names[nvalid]) nvalid++;
    const char *s = v->kind == SN_SCALAR && !sn_is_null(v) ? suggest(v->str, names, nvalid) : NULL;
    if (v->kind != SN_SCALAR || sn_is_null(v))
        bad_type(c, v, path, want);
    else if (s)
        perr(c, v->mark, "key '%s': expected one of %s, got '%.80s' (did you mean '%s'?)", path, want, v->str, s);
    else
        perr(c, v->mark, "key '%s': expected one of %s, got '%.80s'", path, want, v->str);
    return -1;
}

static int parse_trainable(pctx_t *c, const snode_t *v, const char *path, unsigned *out) {
    unsigned bits = 0;
    int n = v->kind == SN_SEQ ? v->n : 1;
    for (int i = 0; i < n; i++) {
        const snode_t *it = v->kind == SN_SEQ ? v->kids[i] : v;
        int e = it->kind == SN_SCALAR && !sn_is_null(it) ? parse_enum(it->str, trainable_names) : -1;
        if (e < 0) return bad_enum(c, it, path, trainable_names);
        bits |= e == 0 ? JOB_TRAIN_PROJECTOR : JOB_TRAIN_LANGUAGE_MODEL;
    }
    *out = bits;
    return 0;
}

/* Sets field f from node v. Returns 0, -1 on a reported error, LLAVA_ENOMEM. */
static int field_set(pctx_t *c, int f, const snode_t *v, void *base, const char *path) {
    const field_t *fd = &fields[f];
    char *p = (char *)base + fd->off;
    long long iv = 0;
    switch (fd->type) {
    case FT_STR:
    case FT_PATH:
    case FT_PATH_NULL: {
        char **sp = (char **)p;
        if (v->kind == SN_SCALAR && sn_is_null(v) && fd->type == FT_PATH_NULL) {
            free(*sp);
            *sp = NULL;
            return 0;
        }
        if (v->kind != SN_SCALAR || sn_is_null(v)) {
            bad_type(c, v, path, fd->type == FT_STR ? "a string" : "a path");
            return -1;
        }
        if (!v->str[0]) {
            perr(c, v->mark, "key '%s': must not be empty", path);
            return -1;
        }
        char *s = strdup(v->str);
        if (!s) return LLAVA_ENOMEM;
        free(*sp);
        *sp = s;
        return 0;
    }
    case FT_INT:
        if (v->kind != SN_SCALAR || parse_i64(v->str, &iv) != 0 || iv < -2147483647LL || iv > 2147483647LL) {
            bad_type(c, v, path, "an integer");
            return -1;
        }
        *(int *)p = (int)iv;
        return 0;
    case FT_I64:
        if (v->kind != SN_SCALAR || parse_i64(v->str, &iv) != 0) {
            bad_type(c, v, path, "an integer");
            return -1;
        }
        *(int64_t *)p = iv;
        return 0;
    case FT_U64:
        if (v->kind != SN_SCALAR || parse_i64(v->str, &iv) != 0 || iv < 0 || (double)iv > SEED_MAX) {
            bad_type(c, v, path, "an integer in [0, 2^53]");
            return -1;
        }
        *(uint64_t *)p = (uint64_t)iv;
        return 0;
    case FT_DOUBLE: {
        char *end = NULL;
        double d = 0;
        if (v->kind == SN_SCALAR && v->str[0] && v->str[0] != ' ') {
            errno = 0;
            d = strtod(v->str, &end);
        }
        if (v->kind != SN_SCALAR || !end || *end || errno == ERANGE || !isfinite(d)) {
            bad_type(c, v, path, "a number");
            return -1;
        }
        *(double *)p = d;
        return 0;
    }
    case FT_BOOL: {
        static const char *const t[] = {"true", "yes", "on"}, *const fl[] = {"false", "no", "off"};
        if (v->kind == SN_SCALAR)
            for (int i = 0; i < 3; i++) {
                if (strcasecmp(v->str, t[i]) == 0) return *(int *)p = 1, 0;
                if (strcasecmp(v->str, fl[i]) == 0) return *(int *)p = 0, 0;
            }
        bad_type(c, v, path, "true or false");
        return -1;
    }
    case FT_ENUM: {
        int e = v->kind == SN_SCALAR && !sn_is_null(v) ? parse_enum(v->str, fd->choices) : -1;
        if (e < 0) return bad_enum(c, v, path, fd->choices);
        *(int *)p = e;
        return 0;
    }
    case FT_TRAINABLE:
        return parse_trainable(c, v, path, (unsigned *)p);
    }
    return -1;
}

/* ---- stages ---- */

static void stage_defaults(job_stage_t *st) {
    memset(st, 0, sizeof *st);
    st->model.projector = JOB_PROJECTOR_LINEAR;
    st->model.vision_select_layer = -2;
    st->model.image_aspect_ratio = JOB_ASPECT_SQUARE;
    st->data.tmpl = JOB_TEMPLATE_PLAIN;
    st->data.max_seq_len = 2048;
    st->data.bad_records = JOB_BAD_SKIP;
    st->train.trainable = JOB_TRAIN_PROJECTOR;
    st->train.epochs = 1;
    st->train.global_batch = 128;
    st->train.micro_batch_tokens = 16384;
    st->train.warmup_ratio = 0.03;
    st->train.schedule = JOB_SCHEDULE_COSINE;
    st->train.max_grad_norm = 1.0;
    st->train.precision = JOB_PRECISION_FP32;
    st->train.seed = 42;
    st->eval.every_epoch = 1;
    st->checkpoint.every_steps = 500;
    st->checkpoint.keep = 3;
}

static void cluster_defaults(job_cluster_t *cl) {
    cl->workers = 1;
    cl->device = JOB_DEVICE_CPU;
    cl->heartbeat_ms = 500;
    cl->hang_timeout_ms = 10000;
    cl->max_replacements = 4;
}

static void stage_clear(job_stage_t *st) {
    for (int f = 0; f < JOB_KEY_COUNT; f++)
        if (!fields[f].cluster && (fields[f].type == FT_STR || fields[f].type == FT_PATH || fields[f].type == FT_PATH_NULL)) {
            char **sp = (char **)((char *)st + fields[f].off);
            free(*sp);
            *sp = NULL;
        }
}

static int stage_copy(job_stage_t *dst, const job_stage_t *src) {
    *dst = *src;
    int rc = 0;
    for (int f = 0; f < JOB_KEY_COUNT; f++)
        if (!fields[f].cluster && (fields[f].type == FT_STR || fields[f].type == FT_PATH || fields[f].type == FT_PATH_NULL)) {
            char **sp = (char **)((char *)dst + fields[f].off);
            if (*sp && !(*sp = strdup(*sp))) rc = LLAVA_ENOMEM;
        }
    return rc;
}

static int section_index(const char *name) {
    for (int i = 0; sections[i]; i++)
        if (strcmp(sections[i], name) == 0) return i;
    return -1;
}

/* Applies the keys of one section mapping to st (or cl). set[] records what was given. */
static int apply_section(pctx_t *c, const char *sec, const snode_t *v, const char *prefix, job_stage_t *st,
                         job_cluster_t *cl, job_mark_t *marks, unsigned char *set, unsigned char *given) {
    char path[256];
    snprintf(path, sizeof path, "%s%s", prefix, sec);
    if (strcmp(sec, "eval") == 0 && sn_is_null(v)) {
        st->eval.enabled = 0;
        free(st->eval.data);
        free(st->eval.answers);
        st->eval.data = st->eval.answers = NULL;
        set[JOB_KEY_EVAL_DATA] = set[JOB_KEY_EVAL_ANSWERS] = set[JOB_KEY_EVAL_EVERY_EPOCH] = 0;
        st->eval.every_epoch = 1;
        return 0;
    }
    if (v->kind != SN_MAP) {
        bad_type(c, v, path, "a mapping (indented `key: value` lines)");
        return 0;
    }
    if (strcmp(sec, "eval") == 0) st->eval.enabled = 1;
    const char *valid[16];
    int nvalid = 0;
    for (int f = 0; f < JOB_KEY_COUNT; f++)
        if (fields[f].section && strcmp(fields[f].section, sec) == 0) valid[nvalid++] = fields[f].key;
    char kprefix[280];
    snprintf(kprefix, sizeof kprefix, "%s.", path);
    for (int i = 0; i < v->n; i++) {
        if (!map_key_ok(c, v, i, kprefix)) continue;
        const snode_t *k = v->kids[2 * i], *val = v->kids[2 * i + 1];
        int f = -1;
        for (int g = 0; g < JOB_KEY_COUNT; g++)
            if (fields[g].section && strcmp(fields[g].section, sec) == 0 && strcmp(fields[g].key, k->str) == 0) f = g;
        if (f < 0) {
            unknown_key(c, k, kprefix, valid, nvalid);
            continue;
        }
        char fpath[400];
        snprintf(fpath, sizeof fpath, "%s%s", kprefix, k->str);
        int rc = field_set(c, f, val, fields[f].cluster ? (void *)cl : (void *)st, fpath);
        if (rc == LLAVA_ENOMEM) return rc;
        marks[f] = val->mark;
        set[f] = 1; /* also after a type error: the key is there, so no "missing" line follows */
        if (given) given[f] = 1;
    }
    return 0;
}

/* The keys of one level (top level or one stage). */
static int apply_level(pctx_t *c, const snode_t *map, const char *prefix, int is_stage, job_spec_t *spec,
                       job_stage_t *st, unsigned char *given, const snode_t **stages) {
    static const char *const top_valid[] = {"name", "model", "data", "train", "eval", "checkpoint", "cluster", "stages"};
    for (int i = 0; i < map->n; i++) {
        if (!map_key_ok(c, map, i, prefix)) continue;
        const snode_t *k = map->kids[2 * i], *v = map->kids[2 * i + 1];
        int s = section_index(k->str);
        int rc = 0;
        if (strcmp(k->str, "name") == 0) {
            char path[64];
            snprintf(path, sizeof path, "%sname", prefix);
            rc = field_set(c, JOB_KEY_NAME, v, st, path);
            st->marks[JOB_KEY_NAME] = v->mark;
            st->set[JOB_KEY_NAME] = 1;
            if (!is_stage) {
                spec->marks[JOB_KEY_NAME] = v->mark;
                spec->set[JOB_KEY_NAME] = 1;
            }
        } else if (s >= 0 && strcmp(k->str, "cluster") == 0 && is_stage) {
            perr(c, k->mark, "key '%scluster': the cluster is set once, at the top level", prefix);
        } else if (s >= 0 && strcmp(k->str, "cluster") == 0) {
            rc = apply_section(c, "cluster", v, prefix, st, &spec->cluster, spec->marks, spec->set, NULL);
        } else if (s >= 0) {
            rc = apply_section(c, k->str, v, prefix, st, &spec->cluster, st->marks, st->set, given);
        } else if (strcmp(k->str, "stages") == 0 && !is_stage) {
            *stages = v;
            spec->staged = 1;
        } else {
            unknown_key(c, k, prefix, top_valid, is_stage ? 6 : 8);
        }
        if (rc == LLAVA_ENOMEM) return rc;
    }
    return 0;
}

static int stage_name_ok(const char *s) {
    if (!s[0] || s[0] == '.') return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_' ||
              *s == '-' || *s == '.'))
            return 0;
    return 1;
}

/* ---- validation of one resolved stage ---- */

static void missing(pctx_t *c, const job_spec_t *spec, const job_stage_t *st, const char *what) {
    if (spec->staged)
        perr(c, st->mark, "stage '%s': missing required key '%s'", st->name ? st->name : "?", what);
    else
        perr(c, st->mark, "missing required key '%s'", what);
}

#define RANGE(key, bad, fmt, val)                                                                            \
    do {                                                                                                     \
        if (bad) perr(c, st->marks[key], "key '%s': " fmt, job_key_name(key), val);                          \
    } while (0)

static void validate_stage(pctx_t *c, const job_spec_t *spec, job_stage_t *st) {
    const job_model_t *m = &st->model;
    if (m->llava && (m->vision_tower || m->language_model))
        perr(c, st->marks[JOB_KEY_MODEL_LLAVA],
             "key 'model.llava': names a whole LLaVA model; do not also set model.vision_tower/model.language_model");
    else if (m->vision_tower && !m->language_model)
        missing(c, spec, st, "model.language_model");
    else if (!m->vision_tower && m->language_model)
        missing(c, spec, st, "model.vision_tower");
    else if (!m->llava && !m->vision_tower && !m->init_from)
        perr(c, st->mark, "%s%s%smissing required keys 'model.vision_tower' and 'model.language_model' (or "
             "'model.llava', or 'model.init_from')", spec->staged ? "stage '" : "", spec->staged ? st->name : "",
             spec->staged ? "': " : "");
    RANGE(JOB_KEY_MODEL_VISION_SELECT_LAYER, m->vision_select_layer < -64 || m->vision_select_layer > 64,
          "must be in [-64, 64], got %d", m->vision_select_layer);
    if (!st->set[JOB_KEY_DATA_TRAIN]) missing(c, spec, st, "data.train");
    if (!st->set[JOB_KEY_DATA_TEMPLATE]) missing(c, spec, st, "data.template");
    RANGE(JOB_KEY_DATA_MAX_SEQ_LEN, st->data.max_seq_len < 16 || st->data.max_seq_len > 1048576,
          "must be in [16, 1048576], got %d", st->data.max_seq_len);
    const job_train_t *t = &st->train;
    RANGE(JOB_KEY_TRAIN_TRAINABLE, t->trainable == 0, "must name at least one of projector|language_model%s", "");
    RANGE(JOB_KEY_TRAIN_EPOCHS, t->epochs < 1, "must be >= 1, got %d", t->epochs);
    RANGE(JOB_KEY_TRAIN_GLOBAL_BATCH, t->global_batch < 1, "must be >= 1, got %d", t->global_batch);
    RANGE(JOB_KEY_TRAIN_MICRO_BATCH_TOKENS, t->micro_batch_tokens < 1, "must be >= 1, got %d", t->micro_batch_tokens);
    if (!st->set[JOB_KEY_TRAIN_LR]) missing(c, spec, st, "train.lr");
    else RANGE(JOB_KEY_TRAIN_LR, !(t->lr > 0), "must be > 0, got %g", t->lr);
    RANGE(JOB_KEY_TRAIN_WARMUP_RATIO, !(t->warmup_ratio >= 0 && t->warmup_ratio < 1), "must be in [0, 1), got %g",
          t->warmup_ratio);
    RANGE(JOB_KEY_TRAIN_WEIGHT_DECAY, !(t->weight_decay >= 0), "must be >= 0, got %g", t->weight_decay);
    RANGE(JOB_KEY_TRAIN_MAX_GRAD_NORM, !(t->max_grad_norm >= 0), "must be >= 0 (0: no clipping), got %g",
          t->max_grad_norm);
    RANGE(JOB_KEY_TRAIN_MAX_STEPS, t->max_steps < 0, "must be >= 0 (0: no cap), got %lld", (long long)t->max_steps);
    if (!st->set[JOB_KEY_TRAIN_PRECISION])
        st->train.precision = spec->cluster.device == JOB_DEVICE_CUDA ? JOB_PRECISION_BF16 : JOB_PRECISION_FP32;
    else if (t->precision == JOB_PRECISION_BF16 && spec->cluster.device == JOB_DEVICE_CPU)
        perr(c, st->marks[JOB_KEY_TRAIN_PRECISION],
             "key 'train.precision': bf16 needs cluster.device: cuda (the CPU backend trains in fp32); use fp32");
    if (t->recompute && spec->cluster.device == JOB_DEVICE_CPU)
        perr(c, st->marks[JOB_KEY_TRAIN_RECOMPUTE],
             "key 'train.recompute': recomputation needs cluster.device: cuda (the CPU backend keeps every "
             "activation); remove it or set it to false");
    RANGE(JOB_KEY_TRAIN_ZERO_STAGE, t->zero_stage != 0 && t->zero_stage != 1,
          "must be 0 (no sharding) or 1 (ZeRO-1: optimizer state sharded over the workers), got %d", t->zero_stage);
    if (t->zero_stage == 1 && spec->cluster.device == JOB_DEVICE_CPU)
        perr(c, st->marks[JOB_KEY_TRAIN_ZERO_STAGE],
             "key 'train.zero_stage': ZeRO-1 needs cluster.device: cuda (NCCL between GPU workers); use 0");
    if (st->eval.enabled && !st->eval.data) missing(c, spec, st, "eval.data");
    if (!st->checkpoint.dir) missing(c, spec, st, "checkpoint.dir");
    RANGE(JOB_KEY_CHECKPOINT_EVERY_STEPS, st->checkpoint.every_steps < 0, "must be >= 0 (0: only at the end), got %d",
          st->checkpoint.every_steps);
    RANGE(JOB_KEY_CHECKPOINT_KEEP, st->checkpoint.keep < 1, "must be >= 1, got %d", st->checkpoint.keep);
}

static void validate_cluster(pctx_t *c, const job_spec_t *spec) {
    const job_cluster_t *cl = &spec->cluster;
    const job_mark_t *mk = spec->marks;
    if (cl->workers < 1)
        perr(c, mk[JOB_KEY_CLUSTER_WORKERS], "key 'cluster.workers': must be >= 1, got %d", cl->workers);
    if (cl->heartbeat_ms < 10)
        perr(c, mk[JOB_KEY_CLUSTER_HEARTBEAT_MS], "key 'cluster.heartbeat_ms': must be >= 10, got %d", cl->heartbeat_ms);
    if (cl->hang_timeout_ms <= cl->heartbeat_ms)
        perr(c, mk[JOB_KEY_CLUSTER_HANG_TIMEOUT_MS],
             "key 'cluster.hang_timeout_ms': must be > cluster.heartbeat_ms (%d), got %d", cl->heartbeat_ms,
             cl->hang_timeout_ms);
    if (cl->max_replacements < 0)
        perr(c, mk[JOB_KEY_CLUSTER_MAX_REPLACEMENTS], "key 'cluster.max_replacements': must be >= 0, got %d",
             cl->max_replacements);
}

void job_spec_free(job_spec_t **p) {
    if (!p || !*p) return;
    job_spec_t *s = *p;
    for (int i = 0; i < s->n_stages; i++) stage_clear(&s->stages[i]);
    free(s->stages);
    free(s->name);
    free(s->source);
    free(s);
    *p = NULL;
}

static char *path_join(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    char *r = malloc(la + lb + 2);
    if (!r) return NULL;
    memcpy(r, a, la);
    size_t o = la;
    if (la && a[la - 1] != '/') r[o++] = '/';
    memcpy(r + o, b, lb + 1);
    return r;
}

/* Derives what a stage does not say (docs/jobspec.md "Stages"): init_from and checkpoint.dir. */
static int stage_derive(job_spec_t *spec, const job_stage_t *top, int i, const unsigned char *given) {
    job_stage_t *st = &spec->stages[i];
    st->model.init_from_previous = 0;
    if (i > 0 && !given[JOB_KEY_MODEL_INIT_FROM]) {
        free(st->model.init_from);
        st->model.init_from = NULL;
        const char *prev = spec->stages[i - 1].checkpoint.dir;
        if (prev) {
            if (!(st->model.init_from = strdup(prev))) return LLAVA_ENOMEM;
            st->model.init_from_previous = 1;
        }
        st->marks[JOB_KEY_MODEL_INIT_FROM] = (job_mark_t){0, 0};
        st->set[JOB_KEY_MODEL_INIT_FROM] = 1;
    }
    if (!given[JOB_KEY_CHECKPOINT_DIR]) {
        free(st->checkpoint.dir);
        st->checkpoint.dir = NULL;
        st->set[JOB_KEY_CHECKPOINT_DIR] = 0;
        if (top->checkpoint.dir && st->name) {
            if (!(st->checkpoint.dir = path_join(top->checkpoint.dir, st->name))) return LLAVA_ENOMEM;
            st->marks[JOB_KEY_CHECKPOINT_DIR] = top->marks[JOB_KEY_CHECKPOINT_DIR];
            st->set[JOB_KEY_CHECKPOINT_DIR] = 1;
        }
    }
    return 0;
}

static int build_stages(pctx_t *c, job_spec_t *spec, job_stage_t *top, const snode_t *stages) {
    int rc = 0;
    if (stages->kind != SN_SEQ || stages->n == 0) {
        perr(c, stages->mark, "key 'stages': expected a non-empty list of stages (`- name: ...`)");
        return 0;
    }
    spec->stages = calloc((size_t)stages->n, sizeof *spec->stages);
    if (!spec->stages) return LLAVA_ENOMEM;
    for (int i = 0; i < stages->n; i++) {
        const snode_t *sn = stages->kids[i];
        job_stage_t *st = &spec->stages[i];
        RC_CHECK_GOTO(stage_copy(st, i == 0 ? top : &spec->stages[i - 1]));
        spec->n_stages = i + 1;
        free(st->name);
        st->name = NULL;
        st->set[JOB_KEY_NAME] = 0;
        st->mark = sn->mark;
        char prefix[48];
        snprintf(prefix, sizeof prefix, "stages[%d].", i);
        unsigned char given[JOB_KEY_COUNT] = {0};
        if (sn->kind != SN_MAP) {
            perr(c, sn->mark, "key 'stages[%d]': expected a mapping (name, model, data, train, ...), got %s", i,
                 sn_kind_name(sn));
            continue;
        }
        RC_CHECK_GOTO(apply_level(c, sn, prefix, 1, spec, st, given, NULL));
        if (!st->name) {
            perr(c, sn->mark, "key 'stages[%d]': missing required key 'name'", i);
        } else if (!stage_name_ok(st->name)) {
            perr(c, st->marks[JOB_KEY_NAME], "key 'stages[%d].name': '%s' is not a name ([A-Za-z0-9._-], it names a "
                 "directory)", i, st->name);
        } else {
            for (int j = 0; j < i; j++)
                if (spec->stages[j].name && strcmp(spec->stages[j].name, st->name) == 0)
                    perr(c, st->marks[JOB_KEY_NAME], "key 'stages[%d].name': '%s' is already stage %d's name", i,
                         st->name, j);
        }
        RC_CHECK_GOTO(stage_derive(spec, top, i, given));
    }
cleanup:
    return rc;
}

static int spec_build(pctx_t *c, const snode_t *root, job_spec_t **out) {
    int rc = 0;
    job_stage_t top;
    stage_defaults(&top);
    job_spec_t *spec = calloc(1, sizeof *spec);
    ALLOC_CHECK_GOTO(spec);
    cluster_defaults(&spec->cluster);
    spec->source = strdup(c->src);
    ALLOC_CHECK_GOTO(spec->source);
    top.mark = root->mark;
    if (root->kind != SN_MAP) {
        perr(c, root->mark, "a job spec is a mapping of keys (name, model, data, train, ...), got %s%s%.60s%s",
             sn_kind_name(root), root->kind == SN_SCALAR ? " '" : "", root->kind == SN_SCALAR ? root->str : "",
             root->kind == SN_SCALAR ? "'" : "");
        goto cleanup;
    }
    const snode_t *stages = NULL;
    RC_CHECK_GOTO(apply_level(c, root, "", 0, spec, &top, NULL, &stages));
    spec->name = top.name; /* the job's name; stages name themselves */
    top.name = NULL;
    top.set[JOB_KEY_NAME] = 0;
    if (!spec->name) {
        if (spec->set[JOB_KEY_NAME]) goto cleanup; /* given but not a string: reported */
        perr(c, (job_mark_t){root->mark.line, root->mark.col}, "missing required key 'name'");
        goto cleanup;
    }
    if (stages) {
        RC_CHECK_GOTO(build_stages(c, spec, &top, stages));
    } else {
        spec->stages = calloc(1, sizeof *spec->stages);
        ALLOC_CHECK_GOTO(spec->stages);
        spec->stages[0] = top;
        stage_defaults(&top); /* moved: nothing left to free */
        spec->n_stages = 1;
        spec->stages[0].name = strdup(spec->name);
        ALLOC_CHECK_GOTO(spec->stages[0].name);
    }
    if (c->nerr == 0) {
        validate_cluster(c, spec);
        for (int i = 0; i < spec->n_stages; i++) validate_stage(c, spec, &spec->stages[i]);
    }
cleanup:
    stage_clear(&top);
    if (rc == 0 && c->nerr) rc = LLAVA_ECONFIG;
    if (rc == 0)
        *out = spec;
    else
        job_spec_free(&spec);
    return rc;
}

/* ---- entry points ---- */

static void yaml_syntax_error(pctx_t *c, const yaml_parser_t *p) {
    const char *prob = p->problem ? p->problem : "libyaml error";
    if (p->error == YAML_READER_ERROR) {
        perr(c, (job_mark_t){0, 0}, "YAML syntax error: %s at byte %zu", prob, p->problem_offset);
        return;
    }
    job_mark_t m = {(int)p->problem_mark.line + 1, (int)p->problem_mark.column + 1};
    if (p->context)
        perr(c, m, "YAML syntax error: %s (%s, line %d column %d)", prob, p->context, (int)p->context_mark.line + 1,
             (int)p->context_mark.column + 1);
    else
        perr(c, m, "YAML syntax error: %s", prob);
}

int job_spec_parse_string(const char *yaml, size_t len, const char *name_for_errors, job_spec_t **out,
                          spec_errors_t *errs) {
    int rc = 0, parser_ok = 0, doc_ok = 0;
    pctx_t c = {name_for_errors ? name_for_errors : "<spec>", errs, 0, 0, 0};
    yaml_parser_t p;
    yaml_document_t doc, doc2;
    snode_t *root = NULL;
    *out = NULL;
    CHECK_GOTO(yaml_parser_initialize(&p), LLAVA_ENOMEM, "yaml_parser_initialize failed");
    parser_ok = 1;
    yaml_parser_set_input_string(&p, (const unsigned char *)yaml, len);
    if (!yaml_parser_load(&p, &doc)) {
        yaml_syntax_error(&c, &p);
        rc = LLAVA_ECONFIG;
        goto cleanup;
    }
    doc_ok = 1;
    yaml_node_t *y = yaml_document_get_root_node(&doc);
    if (!y) {
        perr(&c, (job_mark_t){1, 1}, "empty job spec");
        rc = LLAVA_ECONFIG;
        goto cleanup;
    }
    root = sn_from_yaml(&c, &doc, 1, 0);
    CHECK_GOTO(!c.oom, LLAVA_ENOMEM, "out of memory reading %s", c.src);
    if (!root) {
        rc = LLAVA_ECONFIG;
        goto cleanup;
    }
    if (!yaml_parser_load(&p, &doc2)) {
        yaml_syntax_error(&c, &p);
        rc = LLAVA_ECONFIG;
        goto cleanup;
    }
    if (yaml_document_get_root_node(&doc2)) {
        yaml_node_t *y2 = yaml_document_get_root_node(&doc2);
        perr(&c, (job_mark_t){(int)y2->start_mark.line + 1, (int)y2->start_mark.column + 1},
             "more than one YAML document: a job spec is one document");
        rc = LLAVA_ECONFIG;
    }
    yaml_document_delete(&doc2);
    if (rc) goto cleanup;
    rc = spec_build(&c, root, out);
cleanup:
    sn_free(root);
    if (doc_ok) yaml_document_delete(&doc);
    if (parser_ok) yaml_parser_delete(&p);
    return rc;
}

int job_spec_load(const char *path, job_spec_t **out, spec_errors_t *errs) {
    int rc = 0;
    char *buf = NULL;
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        spec_errors_add(errs, "%s: cannot open: %s", path, strerror(errno));
        return LLAVA_EIO;
    }
    size_t cap = 4096, n = 0;
    buf = malloc(cap);
    ALLOC_CHECK_GOTO(buf);
    for (;;) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap) break;
        CHECK_GOTO(cap < (64u << 20), LLAVA_ECONFIG, "%s: larger than 64 MiB", path);
        char *nb = realloc(buf, cap * 2);
        ALLOC_CHECK_GOTO(nb);
        buf = nb;
        cap *= 2;
    }
    if (ferror(f)) {
        spec_errors_add(errs, "%s: read error: %s", path, strerror(errno));
        rc = LLAVA_EIO;
        goto cleanup;
    }
    rc = job_spec_parse_string(buf, n, path, out, errs);
cleanup:
    free(buf);
    fclose(f);
    return rc;
}

int job_spec_from_json(const char *json, const char *name_for_errors, job_spec_t **out, spec_errors_t *errs) {
    int rc = 0;
    pctx_t c = {name_for_errors ? name_for_errors : "<json>", errs, 0, 0, 0};
    snode_t *root = NULL;
    const char *end = NULL;
    *out = NULL;
    cJSON *j = cJSON_ParseWithOpts(json, &end, 1);
    if (!j) {
        perr(&c, (job_mark_t){0, 0}, "JSON syntax error at byte %ld", end ? (long)(end - json) : 0L);
        return LLAVA_ECONFIG;
    }
    root = sn_from_json(&c, j, 0);
    CHECK_GOTO(!c.oom, LLAVA_ENOMEM, "out of memory reading %s", c.src);
    if (!root) {
        rc = LLAVA_ECONFIG;
        goto cleanup;
    }
    rc = spec_build(&c, root, out);
cleanup:
    sn_free(root);
    cJSON_Delete(j);
    return rc;
}

job_mark_t job_spec_key_mark(const job_spec_t *spec, int stage, job_key_t key) {
    job_mark_t none = {0, 0};
    if (!spec || (unsigned)key >= JOB_KEY_COUNT) return none;
    if (fields[key].cluster || (key == JOB_KEY_NAME && !spec->staged)) return spec->marks[key];
    if (stage < 0 || stage >= spec->n_stages) return none;
    return spec->stages[stage].marks[key];
}

/* ---- paths ---- */

static char *path_resolve(const char *p) {
    if (p[0] == '/') return strdup(p);
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd)) return NULL;
    return path_join(cwd, p);
}

typedef enum { NEED_FILE, NEED_DIR_WITH, NEED_MODEL_OR_RUN } need_t;

static int check_one(pctx_t *c, const job_stage_t *st, job_key_t key, const char *p, need_t need, const char *inside,
                     const char *what) {
    char *abs = path_resolve(p);
    if (!abs) return LLAVA_ENOMEM;
    job_mark_t m = st->marks[key];
    struct stat sb;
    if (stat(abs, &sb) != 0) {
        perr(c, m, "key '%s': %s '%s' does not exist (%s)", job_key_name(key), what, abs, strerror(errno));
    } else if (need == NEED_FILE && !S_ISREG(sb.st_mode)) {
        perr(c, m, "key '%s': %s '%s' is not a file", job_key_name(key), what, abs);
    } else if (need != NEED_FILE && !S_ISDIR(sb.st_mode)) {
        perr(c, m, "key '%s': %s '%s' is not a directory", job_key_name(key), what, abs);
    } else if (need != NEED_FILE) {
        char *f = path_join(abs, inside), *g = NULL;
        if (!f) {
            free(abs);
            return LLAVA_ENOMEM;
        }
        int ok = stat(f, &sb) == 0 && S_ISREG(sb.st_mode);
        if (!ok && need == NEED_MODEL_OR_RUN) {
            g = path_join(abs, "latest");
            ok = g && stat(g, &sb) == 0 && S_ISREG(sb.st_mode);
        }
        if (!ok)
            perr(c, m, "key '%s': %s '%s' has no %s%s", job_key_name(key), what, abs, inside,
                 need == NEED_MODEL_OR_RUN ? " (nor a `latest` file of a run directory)" : "");
        free(f);
        free(g);
    }
    free(abs);
    return 0;
}

/* The stage's dataset must have been ingested for its model: image size and patch size (the per-sample lengths the
 * planner budgets with count the patches) and padding. Only run once the paths exist; a config or manifest that
 * does not parse is reported by whoever loads it (the worker, llava-data verify) with its own message. */
static void check_fit(pctx_t *c, const job_stage_t *st) {
    const job_model_t *m = &st->model;
    const char *dir = m->llava ? m->llava : m->vision_tower;
    if (!dir || !st->data.train) return;
    char *abs = path_resolve(dir), *cfgp = abs ? path_join(abs, "config.json") : NULL, *data = path_resolve(st->data.train);
    llava_config_t cfg;
    ds_manifest_t man = {0};
    int have_cfg = cfgp && hfconfig_read(cfgp, &cfg) == 0;
    int have_man = data && ds_manifest_load(data, &man) == 0;
    if (have_cfg && have_man && man.n_images_total > 0) {
        const clip_vision_config_t *v = &cfg.vision;
        job_mark_t mk = st->marks[JOB_KEY_DATA_TRAIN];
        if (man.image_size != v->image_size)
            perr(c, mk, "key 'data.train': dataset '%s' holds %d px images but the model's vision tower ('%s') takes %d px; "
                 "ingest it again with --image-size %d", data, man.image_size, abs, v->image_size, v->image_size);
        else if (man.patch_size > 0 && man.patch_size != v->patch_size)
            perr(c, mk, "key 'data.train': dataset '%s' counts %d px patches per image but the model's vision tower ('%s') "
                 "uses %d px patches; ingest it again for this model", data, man.patch_size, abs, v->patch_size);
        if (man.pad != (m->image_aspect_ratio == JOB_ASPECT_PAD))
            perr(c, st->marks[JOB_KEY_MODEL_IMAGE_ASPECT_RATIO],
                 "key 'model.image_aspect_ratio': '%s' but dataset '%s' was ingested %s; use '%s' or ingest it again%s",
                 m->image_aspect_ratio == JOB_ASPECT_PAD ? "pad" : "square", data, man.pad ? "with --pad" : "without --pad",
                 man.pad ? "pad" : "square", man.pad ? " without --pad" : " with --pad");
    }
    if (have_man) ds_manifest_free(&man);
    free(abs);
    free(cfgp);
    free(data);
}

int job_spec_check_paths(const job_spec_t *spec, spec_errors_t *errs) {
    int rc = 0;
    pctx_t c = {spec->source ? spec->source : "<spec>", errs, 0, 0, 0};
    for (int i = 0; i < spec->n_stages; i++) {
        const job_stage_t *st = &spec->stages[i];
        const job_model_t *m = &st->model;
        if (m->vision_tower)
            RC_CHECK_GOTO(check_one(&c, st, JOB_KEY_MODEL_VISION_TOWER, m->vision_tower, NEED_DIR_WITH, "config.json",
                                    "model directory"));
        if (m->language_model)
            RC_CHECK_GOTO(check_one(&c, st, JOB_KEY_MODEL_LANGUAGE_MODEL, m->language_model, NEED_DIR_WITH,
                                    "config.json", "model directory"));
        if (m->llava)
            RC_CHECK_GOTO(check_one(&c, st, JOB_KEY_MODEL_LLAVA, m->llava, NEED_DIR_WITH, "config.json",
                                    "model directory"));
        /* A derived init_from is the previous stage's output, which exists only once that stage ran. */
        if (m->init_from && !m->init_from_previous)
            RC_CHECK_GOTO(check_one(&c, st, JOB_KEY_MODEL_INIT_FROM, m->init_from, NEED_MODEL_OR_RUN, "config.json",
                                    "checkpoint or model directory"));
        if (st->data.train)
            RC_CHECK_GOTO(check_one(&c, st, JOB_KEY_DATA_TRAIN, st->data.train, NEED_DIR_WITH, "manifest.json",
                                    "dataset directory (from llava-data ingest)"));
        if (st->eval.enabled && st->eval.data)
            RC_CHECK_GOTO(check_one(&c, st, JOB_KEY_EVAL_DATA, st->eval.data, NEED_FILE, NULL, "eval data file"));
        if (st->eval.enabled && st->eval.answers)
            RC_CHECK_GOTO(check_one(&c, st, JOB_KEY_EVAL_ANSWERS, st->eval.answers, NEED_FILE, NULL, "answers file"));
        if (c.nerr == 0) check_fit(&c, st);
    }
cleanup:
    if (rc == LLAVA_ENOMEM) LOG_E("out of memory checking the paths of %s", c.src);
    return rc ? rc : c.nerr ? LLAVA_ECONFIG : 0;
}

int job_spec_resolve_paths(job_spec_t *spec, const char *base_dir) {
    int rc = 0;
    char cwd[4096];
    if (!base_dir) {
        CHECK_GOTO(getcwd(cwd, sizeof cwd) != NULL, LLAVA_EIO, "getcwd: %s", strerror(errno));
        base_dir = cwd;
    }
    for (int i = 0; i < spec->n_stages; i++)
        for (int f = 0; f < JOB_KEY_COUNT; f++) {
            if (fields[f].cluster || (fields[f].type != FT_PATH && fields[f].type != FT_PATH_NULL)) continue;
            char **sp = (char **)((char *)&spec->stages[i] + fields[f].off);
            if (!*sp || (*sp)[0] == '/') continue;
            char *abs = path_join(base_dir, *sp);
            ALLOC_CHECK_GOTO(abs);
            free(*sp);
            *sp = abs;
        }
cleanup:
    return rc;
}

/* ---- JSON ---- */

/* Adds a section of stage st (or the cluster) to obj. flat: derived init_from written as its path. */
static int json_section(cJSON *obj, const char *sec, const job_stage_t *st, const job_cluster_t *cl, int flat) {
    cJSON *o = cJSON_AddObjectToObject(obj, sec);
    if (!o) return LLAVA_ENOMEM;
    for (int f = 0; f < JOB_KEY_COUNT; f++) {
        const field_t *fd = &fields[f];
        if (!fd->section || strcmp(fd->section, sec) != 0) continue;
        const char *p = (const char *)(fd->cluster ? (const void *)cl : (const void *)st) + fd->off;
        cJSON *v = NULL;
        switch (fd->type) {
        case FT_STR:
        case FT_PATH:
            if (!*(char *const *)p) continue;
            v = cJSON_CreateString(*(char *const *)p);
            break;
        case FT_PATH_NULL:
            if (st->model.init_from_previous && !flat) continue; /* re-derived when read back */
            v = *(char *const *)p ? cJSON_CreateString(*(char *const *)p) : cJSON_CreateNull();
            break;
        case FT_INT: v = cJSON_CreateNumber(*(const int *)p); break;
        case FT_I64: v = cJSON_CreateNumber((double)*(const int64_t *)p); break;
        case FT_U64: v = cJSON_CreateNumber((double)*(const uint64_t *)p); break;
        case FT_DOUBLE: v = cJSON_CreateNumber(*(const double *)p); break;
        case FT_BOOL: v = cJSON_CreateBool(*(const int *)p); break;
        case FT_ENUM: v = cJSON_CreateString(fd->choices[*(const int *)p]); break;
        case FT_TRAINABLE: {
            unsigned bits = *(const unsigned *)p;
            v = cJSON_CreateArray();
            if (v && (bits & JOB_TRAIN_PROJECTOR)) cJSON_AddItemToArray(v, cJSON_CreateString("projector"));
            if (v && (bits & JOB_TRAIN_LANGUAGE_MODEL)) cJSON_AddItemToArray(v, cJSON_CreateString("language_model"));
            break;
        }
        }
        if (!v) return LLAVA_ENOMEM;
        cJSON_AddItemToObject(o, fd->key, v);
    }
    return 0;
}

static int json_stage(cJSON *obj, const job_stage_t *st, int flat, int write_null_eval) {
    int rc = 0;
    static const char *const secs[] = {"model", "data", "train", "eval", "checkpoint"};
    for (int s = 0; s < 5; s++) {
        if (s == 3 && !st->eval.enabled) {
            if (write_null_eval && !cJSON_AddNullToObject(obj, "eval")) return LLAVA_ENOMEM;
            continue;
        }
        RC_CHECK_GOTO(json_section(obj, secs[s], st, NULL, flat));
    }
cleanup:
    return rc;
}

static int json_finish(cJSON *root, int rc, char **out) {
    if (rc == 0) {
        *out = cJSON_PrintUnformatted(root);
        if (!*out) rc = LLAVA_ENOMEM;
    }
    cJSON_Delete(root);
    if (rc) LOG_E("job spec to JSON: %s", err_str(rc));
    return rc;
}

int job_spec_to_json(const job_spec_t *spec, char **out) {
    int rc = 0;
    *out = NULL;
    cJSON *root = cJSON_CreateObject();
    ALLOC_CHECK_GOTO(root);
    ALLOC_CHECK_GOTO(cJSON_AddStringToObject(root, "name", spec->name));
    if (!spec->staged) {
        RC_CHECK_GOTO(json_stage(root, &spec->stages[0], 0, 0));
    } else {
        cJSON *arr = cJSON_AddArrayToObject(root, "stages");
        ALLOC_CHECK_GOTO(arr);
        for (int i = 0; i < spec->n_stages; i++) {
            cJSON *o = cJSON_CreateObject();
            ALLOC_CHECK_GOTO(o);
            cJSON_AddItemToArray(arr, o);
            ALLOC_CHECK_GOTO(cJSON_AddStringToObject(o, "name", spec->stages[i].name));
            RC_CHECK_GOTO(json_stage(o, &spec->stages[i], 0, 1));
        }
    }
    RC_CHECK_GOTO(json_section(root, "cluster", &spec->stages[0], &spec->cluster, 0));
cleanup:
    return json_finish(root, rc, out);
}

int job_spec_stage_to_json(const job_spec_t *spec, int stage, char **out) {
    int rc = 0;
    *out = NULL;
    cJSON *root = NULL;
    CHECK_GOTO(stage >= 0 && stage < spec->n_stages, LLAVA_EINVAL, "stage %d of %d", stage, spec->n_stages);
    root = cJSON_CreateObject();
    ALLOC_CHECK_GOTO(root);
    char name[512];
    if (spec->staged)
        snprintf(name, sizeof name, "%s:%s", spec->name, spec->stages[stage].name);
    else
        snprintf(name, sizeof name, "%s", spec->name);
    ALLOC_CHECK_GOTO(cJSON_AddStringToObject(root, "name", name));
    RC_CHECK_GOTO(json_stage(root, &spec->stages[stage], 1, 0));
    RC_CHECK_GOTO(json_section(root, "cluster", &spec->stages[stage], &spec->cluster, 1));
cleanup:
    return json_finish(root, rc, out);
}

/* ---- steps ---- */

int job_spec_total_steps(const job_stage_t *stage, int64_t n_samples, int64_t *total_steps, int64_t *warmup_steps) {
    if (n_samples < 0 || stage->train.global_batch < 1) return LLAVA_EINVAL;
    int64_t gb = stage->train.global_batch;
    int64_t total = (n_samples + gb - 1) / gb * stage->train.epochs;
    if (stage->train.max_steps > 0 && stage->train.max_steps < total) total = stage->train.max_steps;
    /* transformers: get_warmup_steps = math.ceil(num_training_steps * warmup_ratio), in doubles */
    double w = ceil((double)total * stage->train.warmup_ratio);
    if (total_steps) *total_steps = total;
    if (warmup_steps) *warmup_steps = (int64_t)w;
    return 0;
}
