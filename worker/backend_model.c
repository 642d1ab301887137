/* The model backend: the LLaVA model on the CPU kernels (worker/model_llava.h), fed by collate from the job's
 * LMDB dataset. Loads the starting weights the job names (a checkpoint to resume, a run or checkpoint dir to init
 * from, a whole HF LLaVA dir, or a CLIP dir + a LLaMA dir + a fresh projector); checkpoints hold the model in the
 * Hugging Face layout plus optimizer.safetensors. With a CUDA device (backend_model_new_device "cuda:N", builds with
 * the CUDA backend) the same model runs on the GPU (worker/model_cuda.h): the host model keeps the names, files and
 * the gradient buffer the all-reduce sees (downloaded after the micro-batches, uploaded for the optimizer step).
 * Tested by tests/integration/demo_small.sh (llava-run end to end), test_cluster_model (CPU) and
 * tests/unit/test_backend_device.c (device selection). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/dataset.h"
#include "common/err.h"
#include "kernels/cpu/ops.h"
#include "worker/backend.h"
#include "worker/model_llava.h"
#ifdef LLAVA_HAVE_CUDA
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/memplan.h"
#include "kernels/cuda/nccl_comm.h"
#include "worker/model_cuda.h"
#endif

typedef struct {
    llava_model_t *model;
    ds_reader_t *data;
    train_mode_t mode;
    collate_opts_t copts;
    adamw_opts_t adam;
    int bad_fail;
    int gpu;                 /* CUDA device index, -1: the CPU */
#ifdef LLAVA_HAVE_CUDA
    llava_cuda_t *cuda;
    nccl_comm_t *nccl;       /* this generation's communicator (the coordinator relayed rank 0's id), or NULL */
    int dev_reduced;         /* the device holds this step's all-reduced sum (ZeRO-1: in place, else the sum
                                buffer, llava_cuda_gsum_device): apply ignores `g` */
    int zero1;               /* train.zero_stage 1: the optimizer state is sharded over the generation's ranks */
    int hang_ms;             /* the job's hang timeout (the collectives of apply wait twice that) */
#endif
} model_backend_t;

static const cJSON *jget(const cJSON *o, const char *a, const char *b) {
    return cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(o, a), b);
}
static const char *jstr(const cJSON *o, const char *a, const char *b) {
    const cJSON *v = jget(o, a, b);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}
static double jnum(const cJSON *o, const char *a, const char *b, double d) {
    const cJSON *v = jget(o, a, b);
    return cJSON_IsNumber(v) ? v->valuedouble : d;
}

/* A run dir (holding `latest`) names its newest checkpoint; anything else is used as it is. */
static void resolve_run_dir(const char *dir, char *out, size_t len) {
    char p[2048], name[256] = "";
    snprintf(p, sizeof p, "%s/latest", dir);
    FILE *f = fopen(p, "r");
    if (f && fgets(name, sizeof name, f)) {
        name[strcspn(name, "\r\n")] = 0;
        snprintf(out, len, "%s/%s", dir, name);
    } else {
        snprintf(out, len, "%s", dir);
    }
    if (f) fclose(f);
}

static int load_weights(model_backend_t *mb, const cJSON *job, const cJSON *spec, char *from, size_t fromlen,
                        char *err, size_t errlen) {
    const cJSON *resume = cJSON_GetObjectItemCaseSensitive(job, "resume");
    const char *init = jstr(spec, "model", "init_from"), *llava = jstr(spec, "model", "llava");
    const char *vt = jstr(spec, "model", "vision_tower"), *lm = jstr(spec, "model", "language_model");
    int rc;
    if (cJSON_IsString(resume)) snprintf(from, fromlen, "%s", resume->valuestring);
    else if (init) resolve_run_dir(init, from, fromlen);
    else if (llava) snprintf(from, fromlen, "%s", llava);
    else from[0] = 0;
    if (from[0]) {
        rc = llava_model_load(from, &mb->model);
        if (rc) snprintf(err, errlen, "cannot load the model from %s: %s (see the worker log)", from, err_str(rc));
        return rc;
    }
    if (!vt || !lm) {
        snprintf(err, errlen, "the job names no model (model.llava, model.init_from, or vision_tower + language_model)");
        return LLAVA_ECONFIG;
    }
    llava_load_opts_t o;
    llava_load_opts_default(&o);
    const char *proj = jstr(spec, "model", "projector");
    o.projector = proj && strcmp(proj, "linear") == 0 ? PROJ_LINEAR : PROJ_MLP2X_GELU;
    o.vision_feature_layer = (int)jnum(spec, "model", "vision_select_layer", -2);
    o.seed = (uint64_t)jnum(spec, "train", "seed", 42);
    snprintf(from, fromlen, "%s + %s", vt, lm);
    rc = llava_model_load_parts(vt, lm, &o, &mb->model);
    if (rc) snprintf(err, errlen, "cannot build the model from %s: %s (see the worker log)", from, err_str(rc));
    return rc;
}

#ifdef LLAVA_HAVE_CUDA
/* The memory planner's verdict for this job on this GPU; on "does not fit" err names what to change in the spec.
 * Images per micro-batch are bounded by the tokens (each image is feat_rows tokens). LLAVA_MEMPLAN_IGNORE=1 in the
 * worker's environment skips the refusal (the plan is an estimate). */
static int plan_fits(model_backend_t *mb, const cJSON *spec, int recompute, int zero1, int fp32, char *err,
                     size_t errlen) {
    memplan_opts_t o;
    memplan_t p;
    double dev = 0;
    memplan_opts_default(&o);
    o.trainable = mb->mode == TRAIN_ALL ? MEMPLAN_TRAIN_ALL : MEMPLAN_TRAIN_PROJECTOR;
    o.precision = fp32 ? MEMPLAN_FP32 : MEMPLAN_BF16;
    o.micro_batch_tokens = (long)jnum(spec, "train", "micro_batch_tokens", 16384);
    o.images_per_micro_batch = (int)(o.micro_batch_tokens / (mb->model->feat_rows + 1));
    if (o.images_per_micro_batch < 1) o.images_per_micro_batch = 1;
    o.recompute = recompute;
    o.zero_world = zero1 ? (int)jnum(spec, "cluster", "workers", 1) : 1;
    if (o.zero_world < 1) o.zero_world = 1;
    if (cuda_device_memory(mb->gpu, &dev) == 0) o.device_bytes = dev;
    if (memplan_compute(&mb->model->cfg, &o, &p) != 0 || p.fits) return 0;
    memplan_print(&p, stderr);
    const char *ign = getenv("LLAVA_MEMPLAN_IGNORE");
    if (ign && strcmp(ign, "1") == 0) {
        LOG_W("the memory planner says the job does not fit cuda:%d (%.1f GiB of %.1f); going on "
              "(LLAVA_MEMPLAN_IGNORE)",
              mb->gpu, p.total / (1 << 30), p.usable / (1 << 30));
        return 0;
    }
    char advice[512];
    memplan_advice_spec(&p, advice, sizeof advice);
    snprintf(err, errlen, "the job does not fit cuda:%d: the memory planner counts %.1f GiB per GPU, %.1f usable; %s "
             "(`llava-model memplan --help`; LLAVA_MEMPLAN_IGNORE=1 in the worker's environment to try anyway)",
             mb->gpu, p.total / (1 << 30), p.usable / (1 << 30), advice);
    return LLAVA_ENOMEM;
}
#endif

static void model_release(backend_t *b) {
    model_backend_t *mb = b->impl;
#ifdef LLAVA_HAVE_CUDA
    llava_cuda_reduce_cancel(mb->cuda); /* before its communicator closes */
    nccl_comm_close(&mb->nccl, 1000);
    llava_cuda_free(&mb->cuda);
    mb->dev_reduced = 0;
#endif
    llava_model_free(&mb->model);
    ds_reader_close(&mb->data);
}

static int model_job_load(backend_t *b, const cJSON *job, char *err, size_t errlen) {
    model_backend_t *mb = b->impl;
    model_release(b);
    const cJSON *spec = cJSON_GetObjectItemCaseSensitive(job, "spec");
    const char *jdev = jstr(spec, "cluster", "device");
    if (jdev && strcmp(jdev, "cuda") == 0 && mb->gpu < 0) {
        snprintf(err, errlen, "the job wants cluster.device: cuda but this worker runs on the CPU (start it with "
                              "--device cuda or cuda:N)");
        return LLAVA_EUNSUPPORTED;
    }
    char from[2048];
    int rc = load_weights(mb, job, spec, from, sizeof from, err, errlen);
    if (rc) return rc;
    mb->mode = TRAIN_PROJECTOR;
    const cJSON *tr = jget(spec, "train", "trainable"), *t;
    cJSON_ArrayForEach(t, tr) if (cJSON_IsString(t) && strcmp(t->valuestring, "language_model") == 0) mb->mode =
        TRAIN_ALL;
    rc = llava_grads_prepare(mb->model, mb->mode);
    if (rc) {
        snprintf(err, errlen, "cannot allocate gradients: %s", err_str(rc));
        return rc;
    }
    const cJSON *resume = cJSON_GetObjectItemCaseSensitive(job, "resume");
    if (cJSON_IsString(resume)) {
        char p[2100];
        snprintf(p, sizeof p, "%s/optimizer.safetensors", resume->valuestring);
        rc = llava_optim_load(mb->model, p);
        if (rc) {
            snprintf(err, errlen, "cannot resume the optimizer from %s: %s", p, err_str(rc));
            return rc;
        }
    }
#ifdef LLAVA_HAVE_CUDA
    if (mb->gpu >= 0) {
        const char *prec = jstr(spec, "train", "precision");
        const char *rc_env = getenv("LLAVA_CUDA_RECOMPUTE");
        int recompute = cJSON_IsTrue(jget(spec, "train", "recompute")) || (rc_env && strcmp(rc_env, "1") == 0);
        llava_cuda_opts_t o = {.device = mb->gpu, .dt = prec && strcmp(prec, "fp32") == 0 ? CUDA_DT_F32 : CUDA_DT_BF16,
                               .recompute = recompute,
                               .zero1 = (int)jnum(spec, "train", "zero_stage", 0) == 1};
        int adam_t = mb->model->adam_t;
        mb->zero1 = o.zero1;
        rc = plan_fits(mb, spec, o.recompute, o.zero1, o.dt == CUDA_DT_F32, err, errlen);
        if (rc) return rc;
        rc = llava_cuda_new(mb->model, &o, &mb->cuda);
        if (!rc) rc = llava_cuda_grads_prepare(mb->cuda, mb->mode);
        if (!rc && cJSON_IsString(resume)) {
            mb->model->adam_t = adam_t; /* grads_prepare starts a fresh optimizer; the resumed one continues */
            rc = llava_cuda_state_upload(mb->cuda);
        }
        if (rc) {
            snprintf(err, errlen, "cannot put the model on cuda:%d: %s (see the worker log)", mb->gpu, err_str(rc));
            return rc;
        }
        LOG_I("model on cuda:%d (%s%s%s), %.2f GiB of device memory before the optimizer shard", mb->gpu,
              o.dt == CUDA_DT_F32 ? "fp32" : "bf16", o.recompute ? ", recomputation" : "",
              o.zero1 ? ", ZeRO-1" : "", (double)llava_cuda_bytes(mb->cuda) / (1 << 30));
    }
#endif
    const char *train = jstr(spec, "data", "train");
    rc = train ? ds_reader_open(train, &mb->data) : LLAVA_ECONFIG;
    if (rc) {
        snprintf(err, errlen, "cannot open dataset %s: %s", train ? train : "(none)", err_str(rc));
        return rc;
    }
    const llava_config_t *cfg = &mb->model->cfg;
    int ds_size = ds_reader_manifest(mb->data)->image_size;
    if (ds_size > 0 && ds_size != cfg->vision.image_size) {
        snprintf(err, errlen, "dataset %s holds %d px images but the model's vision tower takes %d px", train, ds_size,
                 cfg->vision.image_size);
        return LLAVA_ECONFIG;
    }
    memset(&mb->copts, 0, sizeof mb->copts);
    mb->copts.image_token_index = (int32_t)cfg->image_token_index;
    mb->copts.n_patches = mb->model->feat_rows;
    mb->copts.pad_token_id = cfg->text.pad_token_id >= 0 ? (int32_t)cfg->text.pad_token_id : 0;
    mb->copts.max_seq_len = (int)jnum(spec, "data", "max_seq_len", 2048);
    const char *bad = jstr(spec, "data", "bad_records");
    mb->bad_fail = bad && strcmp(bad, "fail") == 0;
    mb->adam = (adamw_opts_t){.beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,
                              .weight_decay = jnum(spec, "train", "weight_decay", 0.0),
                              .max_grad_norm = jnum(spec, "train", "max_grad_norm", 1.0)};
    LOG_I("job loaded: model from %s (%s mode), dataset %s", from, mb->mode == TRAIN_ALL ? "all" : "projector",
          train);
    return 0;
}

static int model_run_mb(backend_t *b, const int64_t *samples, int n, mb_result_t *out, char *err, size_t errlen) {
    model_backend_t *mb = b->impl;
    batch_t batch = {0};
    memset(out, 0, sizeof *out);
    int rc = ds_collate(mb->data, samples, n, &mb->copts, &batch);
    if (rc) {
        snprintf(err, errlen, "cannot collate %d samples (first %lld): %s", n, (long long)samples[0], err_str(rc));
        return rc;
    }
    double loss = 0;
    int64_t nt = 0;
#ifdef LLAVA_HAVE_CUDA
    if (mb->cuda)
        rc = llava_cuda_forward_backward(mb->cuda, &batch, mb->mode, &loss, &nt, 1);
    else
#endif
        rc = llava_forward_backward(mb->model, &batch, mb->mode, &loss, &nt, 1);
    if (rc) snprintf(err, errlen, "forward/backward failed: %s", err_str(rc));
    out->loss_sum = loss;
    out->n_targets = nt;
    for (int r = 0; r < batch.B; r++) out->tokens += batch.lengths[r];
    batch_free(&batch);
    return rc;
}

static float *model_grads(backend_t *b, size_t *n) {
    model_backend_t *mb = b->impl;
#ifdef LLAVA_HAVE_CUDA
    if (mb->cuda) return llava_cuda_grads_download(mb->cuda, n);
#endif
    return llava_grads_data(mb->model, n);
}

static int model_apply(backend_t *b, float *g, double scale, double lr, int64_t step, double *grad_norm, char *err,
                       size_t errlen) {
    (void)step;
    model_backend_t *mb = b->impl;
    size_t n = 0;
    float *acc = llava_grads_data(mb->model, &n);
    mb->adam.lr = lr;
#ifdef LLAVA_HAVE_CUDA
    if (mb->cuda && llava_cuda_zero1_layout(mb->cuda)->world > 0 && mb->dev_reduced && mb->nccl) {
        mb->dev_reduced = 0;
        int rc = llava_cuda_zero1_apply(mb->cuda, mb->nccl, &mb->adam, scale, grad_norm, 2 * mb->hang_ms, NULL, NULL);
        if (rc) {
            snprintf(err, errlen, "ZeRO-1 optimizer step on cuda:%d failed: %s", mb->gpu, err_str(rc));
            nccl_comm_close(&mb->nccl, 1000);
        }
        return rc;
    }
    if (mb->cuda) { /* the NCCL sum is in the device's sum buffer; the ring's in g */
        int rc = mb->dev_reduced ? llava_cuda_adamw_step_sum(mb->cuda, &mb->adam, scale, grad_norm)
                                 : llava_cuda_grads_upload(mb->cuda, g, n);
        if (!rc && !mb->dev_reduced) rc = llava_cuda_adamw_step(mb->cuda, &mb->adam, scale, grad_norm);
        mb->dev_reduced = 0;
        if (rc && mb->zero1)
            snprintf(err, errlen, "train.zero_stage 1 needs NCCL between the GPU workers, but this step was "
                     "all-reduced on the ZeroMQ ring (is a member on the CPU?)");
        else if (rc)
            snprintf(err, errlen, "optimizer step on cuda:%d failed: %s", mb->gpu, err_str(rc));
        return rc;
    }
#endif
    memcpy(acc, g, n * sizeof *acc); /* the optimizer reads the model's gradient arena */
    int rc = llava_adamw_step(mb->model, &mb->adam, scale, grad_norm);
    if (rc) snprintf(err, errlen, "optimizer step failed: %s", err_str(rc));
    return rc;
}

static void model_zero(backend_t *b) {
    model_backend_t *mb = b->impl;
#ifdef LLAVA_HAVE_CUDA
    llava_cuda_reduce_cancel(mb->cuda); /* buckets in flight would read the gradients being zeroed */
    if (mb->cuda) llava_cuda_grads_zero(mb->cuda);
    mb->dev_reduced = 0;
#endif
    llava_grads_zero(mb->model);
}

/* The GPU's trainable weights and moments into the host model (before it is saved or exported). */
static int sync_to_host(model_backend_t *mb) {
#ifdef LLAVA_HAVE_CUDA
    if (mb->cuda) return llava_cuda_state_download(mb->cuda);
#else
    (void)mb;
#endif
    return 0;
}

static int model_state_export(backend_t *b, void **buf, size_t *len, char *err, size_t errlen) {
    int rc = sync_to_host(b->impl);
    if (!rc) rc = llava_train_state_export(((model_backend_t *)b->impl)->model, buf, len);
    if (rc) snprintf(err, errlen, "cannot export the training state: %s", err_str(rc));
    return rc;
}

static int model_state_import(backend_t *b, const void *buf, size_t len, char *err, size_t errlen) {
    model_backend_t *mb = b->impl;
    int rc = llava_train_state_import(mb->model, buf, len);
#ifdef LLAVA_HAVE_CUDA
    if (!rc && mb->cuda) rc = llava_cuda_state_upload(mb->cuda);
#endif
    if (rc) snprintf(err, errlen, "cannot import the training state: %s (see the worker log)", err_str(rc));
    return rc;
}

static int model_checkpoint(backend_t *b, const char *dir, const cJSON *trainer_state, char *err, size_t errlen) {
    (void)trainer_state;
    model_backend_t *mb = b->impl;
    int rc = sync_to_host(mb);
    if (rc) {
        snprintf(err, errlen, "cannot copy the training state from cuda:%d: %s", mb->gpu, err_str(rc));
        return rc;
    }
    rc = llava_model_save(mb->model, dir, (size_t)5 << 30);
    if (rc) {
        snprintf(err, errlen, "cannot save the model into %s: %s", dir, err_str(rc));
        return rc;
    }
    char p[2100];
    snprintf(p, sizeof p, "%s/optimizer.safetensors", dir);
    rc = llava_optim_save(mb->model, p);
    if (rc) snprintf(err, errlen, "cannot save the optimizer state into %s: %s", p, err_str(rc));
    return rc;
}

#ifdef LLAVA_HAVE_CUDA
/* NCCL for the GPU model: rank 0 makes the id, the coordinator relays it with the ring peers (hex text). */
static int model_dev_comm_id(backend_t *b, char *id, size_t len) {
    int rc = 0;
    model_backend_t *mb = b->impl;
    unsigned char uid[NCCL_UID_BYTES];
    if (!mb->cuda) return 0;
    CHECK_GOTO(len >= 2 * NCCL_UID_BYTES + 1, LLAVA_EINVAL, "dev_comm_id: buffer of %zu bytes", len);
    RC_CHECK_GOTO(nccl_uid_new(uid));
    for (int i = 0; i < NCCL_UID_BYTES; i++) snprintf(id + 2 * i, 3, "%02x", uid[i]);
    return 1;
cleanup:
    return rc;
}

static void model_dev_comm_close(backend_t *b) {
    model_backend_t *mb = b->impl;
    llava_cuda_reduce_cancel(mb->cuda); /* early buckets in flight: aborted (their peers may be gone) */
    nccl_comm_close(&mb->nccl, 1000);
}

static int model_dev_comm_open(backend_t *b, const char *id, int rank, int world, uint64_t generation,
                               int timeout_ms, int (*abort_fn)(void *), void *ud) {
    int rc = 0;
    model_backend_t *mb = b->impl;
    unsigned char uid[NCCL_UID_BYTES];
    model_dev_comm_close(b);
    CHECK_GOTO(mb->cuda, LLAVA_EINVAL, "a device communicator for a job that is not on a GPU");
    CHECK_GOTO(id && strlen(id) == 2 * NCCL_UID_BYTES, LLAVA_EINVAL, "malformed NCCL id (%zu hex digits)",
               id ? strlen(id) : 0);
    for (int i = 0; i < NCCL_UID_BYTES; i++) {
        unsigned v = 0;
        CHECK_GOTO(sscanf(id + 2 * i, "%2x", &v) == 1, LLAVA_EINVAL, "malformed NCCL id at digit %d", 2 * i);
        uid[i] = (unsigned char)v;
    }
    RC_CHECK_GOTO(nccl_comm_open(&mb->nccl, uid, world, rank, mb->gpu, generation, timeout_ms, abort_fn, ud));
    mb->hang_ms = timeout_ms / 2;
    LOG_I("NCCL communicator of generation %llu: rank %d of %d on cuda:%d", (unsigned long long)generation, rank,
          world, mb->gpu);
    if (mb->zero1) {
        RC_CHECK_GOTO(llava_cuda_zero1_shard(mb->cuda, world, rank));
        const zero1_layout_t *z = llava_cuda_zero1_layout(mb->cuda);
        LOG_I("ZeRO-1: optimizer state for elements [%ld, %ld) of %ld, %.2f GiB of device memory", z->offset,
              z->offset + z->local, z->n, (double)llava_cuda_bytes(mb->cuda) / (1 << 30));
    }
cleanup:
    if (rc) model_dev_comm_close(b);
    return rc;
}

static int model_dev_gather_state(backend_t *b, int timeout_ms, int (*abort_fn)(void *), void *ud) {
    int rc = 0;
    model_backend_t *mb = b->impl;
    if (!mb->cuda || !mb->zero1) return 0;
    CHECK_GOTO(mb->nccl, LLAVA_EINVAL, "gathering the ZeRO-1 state without a communicator");
    RC_CHECK_GOTO(llava_cuda_zero1_gather(mb->cuda, mb->nccl, timeout_ms, abort_fn, ud));
cleanup:
    if (rc) model_dev_comm_close(b);
    return rc;
}

/* MB {last} / DRAIN: the step's buckets go early (not under ZeRO-1: its reduce-scatter waits for REDUCE). */
static int model_dev_reduce_early(backend_t *b, int arm) {
    int rc = 0;
    model_backend_t *mb = b->impl;
    if (!mb->cuda || !mb->nccl || mb->zero1) return 0;
    RC_CHECK_GOTO(llava_cuda_reduce_early(mb->cuda, mb->nccl, arm, 0));
cleanup:
    if (rc) model_dev_comm_close(b);
    return rc;
}

static int model_dev_allreduce(backend_t *b, int timeout_ms, int (*abort_fn)(void *), void *ud, double *sumsq) {
    int rc = 0;
    model_backend_t *mb = b->impl;
    CHECK_GOTO(mb->cuda && mb->nccl, LLAVA_EINVAL, "device all-reduce without a communicator");
    if (mb->zero1) RC_CHECK_GOTO(llava_cuda_zero1_reduce(mb->cuda, mb->nccl, timeout_ms, abort_fn, ud, sumsq));
    else RC_CHECK_GOTO(llava_cuda_reduce_finish(mb->cuda, mb->nccl, timeout_ms, abort_fn, ud, sumsq));
    mb->dev_reduced = 1;
cleanup:
    if (rc) model_dev_comm_close(b); /* aborted or failed: unusable; the next generation opens a new one */
    return rc;
}
#endif

static void model_destroy(backend_t *b) {
    model_release(b);
    free(b->impl);
    free(b);
}

static const backend_ops_t k_model_ops = {
    .name = "model", .job_load = model_job_load, .run_mb = model_run_mb, .grads = model_grads,
    .apply = model_apply, .zero_grads = model_zero, .state_export = model_state_export,
    .state_import = model_state_import, .checkpoint = model_checkpoint, .job_release = model_release,
    .destroy = model_destroy,
#ifdef LLAVA_HAVE_CUDA
    .dev_comm_id = model_dev_comm_id, .dev_comm_open = model_dev_comm_open, .dev_allreduce = model_dev_allreduce,
    .dev_comm_close = model_dev_comm_close, .dev_gather_state = model_dev_gather_state,
    .dev_reduce_early = model_dev_reduce_early,
#endif
};

int backend_model_device_parse(const char *device, int *gpu) {
    int rc = 0;
    *gpu = -1;
    if (!device || strcmp(device, "cpu") == 0) return 0;
    char *end = NULL;
    long idx = 0;
    if (strcmp(device, "cuda") != 0) {
        CHECK_GOTO(strncmp(device, "cuda:", 5) == 0, LLAVA_EINVAL, "device '%s': want cpu, cuda or cuda:N", device);
        idx = strtol(device + 5, &end, 10);
        CHECK_GOTO(end != device + 5 && *end == 0 && idx >= 0 && idx < 1024, LLAVA_EINVAL,
                   "device '%s': want cpu, cuda or cuda:N", device);
    }
#ifdef LLAVA_HAVE_CUDA
    int n = cuda_device_count();
    CHECK_GOTO(n > 0, LLAVA_EUNSUPPORTED, "device '%s': no CUDA device (the driver reports none)", device);
    CHECK_GOTO(idx < n, LLAVA_EUNSUPPORTED, "device '%s': no CUDA device %ld (this machine has %d)", device, idx, n);
    *gpu = (int)idx;
#else
    CHECK_GOTO(0, LLAVA_EUNSUPPORTED, "device '%s': this build has no CUDA backend (configure with nvcc present)",
               device);
#endif
cleanup:
    return rc;
}

int backend_model_new(int threads, backend_t **out) { return backend_model_new_device(threads, "cpu", out); }

int backend_model_new_device(int threads, const char *device, backend_t **out) {
    int gpu = -1;
    int rc = backend_model_device_parse(device, &gpu);
    if (rc) return rc;
    backend_t *b = calloc(1, sizeof *b);
    model_backend_t *mb = calloc(1, sizeof *mb);
    if (!b || !mb) {
        free(b);
        free(mb);
        return LLAVA_ENOMEM;
    }
    mb->gpu = gpu;
    kernels_set_threads(threads);
    b->ops = &k_model_ops;
    b->impl = mb;
    b->threads = threads;
    *out = b;
    return 0;
}
