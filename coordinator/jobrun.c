/* The running job's state machine: wait for workers -> load -> (compute micro-batches -> reduce -> commit ->
 * apply -> checkpoint) per step -> final checkpoint. Failures of members start a new generation and hand the
 * dead worker's micro-batches of the step to the survivors, so the step still commits with exactly its samples.
 * Tested by tests/integration/coordinator_*.sh (equivalence, exactly-once, resume, fault injection). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "coordinator/coord_internal.h"
#include "kernels/cpu/ops.h"

static worker_t *member(coord_t *c, int rank) { return &c->w[c->job->members[rank]]; }

static void send_simple(coord_t *c, worker_t *w, int type, cJSON *body) {
    jobrun_t *j = c->job;
    wire_msg_t m = {.type = (uint16_t)type, .job = j->id, .generation = j->gen, .step = j->step,
                    .body = body ? body : cJSON_CreateObject()};
    if (m.body) coord_send(c, w, &m);
    cJSON_Delete(m.body);
}

/* ---- run directory: metrics and checkpoints ---- */

static int mkdir_p(const char *path) {
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
            *p = '/';
        }
    return (mkdir(tmp, 0755) != 0 && errno != EEXIST) ? -1 : 0;
}

/* The last complete checkpoint: run_dir/latest names it; its trainer_state.json holds the step count. */
static int64_t read_latest_checkpoint(const char *run_dir, char *dir, size_t len) {
    char path[1100], name[256] = "";
    snprintf(path, sizeof path, "%s/latest", run_dir);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    if (!fgets(name, sizeof name, f)) name[0] = 0;
    fclose(f);
    name[strcspn(name, "\r\n")] = 0;
    if (!name[0] || strchr(name, '/')) return 0;
    snprintf(dir, len, "%s/%s/trainer_state.json", run_dir, name);
    f = fopen(dir, "r");
    if (!f) {
        LOG_W("%s: 'latest' names %s, which has no trainer_state.json; starting from scratch", run_dir, name);
        return 0;
    }
    char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *ts = cJSON_Parse(buf);
    int64_t step = (int64_t)wire_get_i64(ts, "step", 0);
    cJSON_Delete(ts);
    snprintf(dir, len, "%s/%s", run_dir, name);
    return step;
}

/* Keeps metrics.jsonl lines of steps <= keep_steps (a resumed run rewrites the rest identically). */
static int open_metrics(jobrun_t *j, int64_t keep_steps) {
    char path[1100], tmp[1100];
    snprintf(path, sizeof path, "%s/metrics.jsonl", j->run_dir);
    snprintf(tmp, sizeof tmp, "%s/metrics.jsonl.tmp", j->run_dir);
    FILE *in = fopen(path, "r");
    if (in) {
        FILE *out = fopen(tmp, "w");
        if (!out) {
            fclose(in);
            return LLAVA_EIO;
        }
        char line[8192];
        while (fgets(line, sizeof line, in)) {
            cJSON *o = cJSON_Parse(line);
            if (o && wire_get_i64(o, "step", INT64_MAX) <= keep_steps) fputs(line, out);
            cJSON_Delete(o);
        }
        fclose(in);
        if (fclose(out) != 0 || rename(tmp, path) != 0) return LLAVA_EIO;
    }
    j->metrics = fopen(path, "a");
    if (!j->metrics) {
        LOG_E("%s: %s", path, strerror(errno));
        return LLAVA_EIO;
    }
    return 0;
}

/* ---- generations, steps, dispatch ---- */

/* A new membership: each member binds a ring endpoint for it and answers READY; PEERS follows once all have
 * (ring_connected). Micro-batches need no ring, so they flow meanwhile; only REDUCE waits for it. */
static void new_generation(coord_t *c) {
    jobrun_t *j = c->job;
    j->gen++;
    j->ring_connected = 0;
    for (int r = 0; r < j->nmembers; r++) {
        worker_t *w = member(c, r);
        w->rank = r;
        w->endpoint[0] = 0;
        w->ring_gen = 0;
        cJSON *b = cJSON_CreateObject();
        cJSON_AddNumberToObject(b, "rank", r);
        cJSON_AddNumberToObject(b, "world", j->nmembers);
        send_simple(c, w, MSG_GENERATION, b);
    }
    LOG_I("job %llu: generation %u with %d worker(s)", (unsigned long long)j->id, j->gen, j->nmembers);
}

static int ensure_plan(coord_t *c, int64_t epoch) {
    jobrun_t *j = c->job;
    if (j->plan_epoch == epoch && j->plan.n_steps > 0) return 0;
    plan_free(&j->plan);
    plan_params_t p = {.n_samples = j->data.n_samples, .lengths = j->data.lengths, .has_image = j->data.has_image,
                       .seed = j->seed, .epoch = epoch, .global_batch = j->global_batch,
                       .micro_batch_tokens = j->mb_tokens, .group_by_length = j->group_by_length};
    int rc = plan_build(&p, &j->plan);
    if (rc) return rc;
    j->plan_epoch = epoch;
    /* shard progress of this epoch: samples of the steps already committed in it */
    memset(j->shard_done, 0, (size_t)j->data.n_shards * sizeof *j->shard_done);
    int64_t first_in_epoch = epoch * j->steps_per_epoch;
    for (int64_t s = first_in_epoch; s < j->step; s++) {
        const plan_step_t *ps = &j->plan.steps[s - first_in_epoch];
        for (int64_t i = ps->first; i < ps->first + ps->count; i++) {
            int64_t sh = datainfo_shard_of(&j->data, j->plan.order[i]);
            if (sh >= 0) j->shard_done[sh]++;
        }
    }
    return 0;
}

/* 1 when no micro-batch of the step waits for an owner. */
static int queue_empty(const jobrun_t *j) {
    for (int64_t k = j->mb_cursor; k < j->nmb; k++)
        if (j->mbs[k].owner < 0) return 0;
    return 1;
}

/* The last queued micro-batch of the step went to `last` (as MB {last: true}): every other member gets no more of
 * this step in this generation either; DRAIN tells them, so GPU workers can start the bucketed all-reduce. */
static void drain_others(coord_t *c, const worker_t *last) {
    jobrun_t *j = c->job;
    for (int r = 0; r < j->nmembers; r++)
        if (member(c, r) != last) send_simple(c, member(c, r), MSG_DRAIN, NULL);
}

static void dispatch(coord_t *c) {
    jobrun_t *j = c->job;
    for (int r = 0; r < j->nmembers; r++) {
        worker_t *w = member(c, r);
        while (w->inflight < c->cfg.mb_inflight) {
            while (j->mb_cursor < j->nmb && j->mbs[j->mb_cursor].owner >= 0) j->mb_cursor++;
            if (j->mb_cursor >= j->nmb) return;
            int64_t k = j->mb_cursor;
            const plan_mb_t *pm = &j->plan.mbs[j->mb_first + k];
            cJSON *b = cJSON_CreateObject();
            cJSON_AddNumberToObject(b, "mb", (double)k);
            cJSON *s = cJSON_AddArrayToObject(b, "samples");
            for (int64_t i = pm->first; i < pm->first + pm->count; i++)
                cJSON_AddItemToArray(s, cJSON_CreateNumber((double)j->plan.order[i]));
            j->mbs[k].owner = w->id;
            j->mbs[k].sent_at = coord_now();
            w->inflight++;
            w->state = W_BUSY;
            int last = queue_empty(j);
            if (last) cJSON_AddBoolToObject(b, "last", 1);
            send_simple(c, w, MSG_MB, b);
            if (last) {
                drain_others(c, w);
                return;
            }
            if (w->unroutable) break; /* gone: coord_settle hands its micro-batches back */
        }
    }
}

static void start_step(coord_t *c) {
    jobrun_t *j = c->job;
    int64_t epoch = j->step / j->steps_per_epoch;
    int rc = ensure_plan(c, epoch);
    if (rc) {
        jobrun_finish(c, JOB_FAILED, "cannot plan the epoch");
        return;
    }
    const plan_step_t *ps = &j->plan.steps[j->step - epoch * j->steps_per_epoch];
    free(j->mbs);
    j->nmb = ps->n_mb;
    j->mb_first = ps->first_mb;
    j->mb_cursor = 0;
    j->mbs = calloc((size_t)j->nmb, sizeof *j->mbs);
    if (!j->mbs) {
        jobrun_finish(c, JOB_FAILED, "out of memory");
        return;
    }
    for (int64_t k = 0; k < j->nmb; k++) j->mbs[k].owner = -1;
    j->phase = P_COMPUTE;
    j->reduce_pending = 0;
    j->t_step_start = coord_now();
    dispatch(c);
}

static double step_lr(const jobrun_t *j, int64_t step) {
    int warmup = lr_warmup_steps((int)j->total_steps, j->warmup_ratio);
    lr_schedule_t kind = strcmp(j->schedule, "linear") == 0     ? LR_LINEAR
                         : strcmp(j->schedule, "constant") == 0 ? LR_CONSTANT_WITH_WARMUP
                                                                 : LR_COSINE;
    return lr_at_step((int)step, (int)j->total_steps, warmup, j->lr, kind);
}

static void begin_reduce(coord_t *c) {
    jobrun_t *j = c->job;
    j->reduce_pending = !j->ring_connected;
    if (j->reduce_pending) return; /* connect_ring calls again */
    int64_t n_targets = 0;
    for (int64_t k = 0; k < j->nmb; k++) n_targets += j->mbs[k].n_targets;
    j->phase = P_REDUCE;
    j->n_reduced = 0;
    j->step_lr = step_lr(j, j->step);
    for (int r = 0; r < j->nmembers; r++) {
        cJSON *b = cJSON_CreateObject();
        cJSON_AddNumberToObject(b, "n_targets", (double)n_targets);
        cJSON_AddNumberToObject(b, "lr", j->step_lr);
        send_simple(c, member(c, r), MSG_REDUCE, b);
    }
}

/* ---- replacements joining the running job ---- */

/* An idle worker (a local replacement, or one that registered late) loads the job while steps go on; it is
 * admitted at the next step boundary (admit_joiner). The resume checkpoint only gives it the frozen weights: the
 * training state comes from a live member. */
static void try_join(coord_t *c) {
    jobrun_t *j = c->job;
    if (j->joiner >= 0 || j->join_pending >= 0 || j->nmembers == 0 || j->nmembers >= j->want_workers ||
        (j->phase != P_COMPUTE && j->phase != P_REDUCE))
        return;
    worker_t *w = NULL;
    for (int i = 0; i < c->nw && !w; i++)
        if (c->w[i].state == W_IDLE) w = &c->w[i];
    if (!w) return;
    char resume[1100] = "";
    int64_t ck = read_latest_checkpoint(j->run_dir, resume, sizeof resume);
    cJSON *b = cJSON_CreateObject();
    cJSON_AddItemToObject(b, "spec", cJSON_Duplicate(j->spec, 1));
    if (ck > 0) cJSON_AddStringToObject(b, "resume", resume);
    else cJSON_AddNullToObject(b, "resume");
    cJSON_AddNumberToObject(b, "start_step", (double)ck);
    cJSON_AddNumberToObject(b, "hang_timeout_ms", c->hang_timeout_ms);
    cJSON_AddBoolToObject(b, "join", 1);
    j->joiner = w->id;
    j->joiner_loaded = 0;
    w->state = W_LOADING;
    w->inflight = 0;
    w->rank = -1;
    LOG_I("job %llu step %lld: worker %d (%s pid %d) loads the job to join at a step boundary",
          (unsigned long long)j->id, (long long)j->step, w->id, w->host, w->pid);
    send_simple(c, w, MSG_JOB, b);
}

/* The joiner stops loading without joining (it failed, or the job ends): back to idle, unless it is dead. */
static void drop_joiner(coord_t *c, const char *why) {
    jobrun_t *j = c->job;
    if (j->joiner < 0) return;
    worker_t *w = &c->w[j->joiner];
    j->joiner = -1;
    j->joiner_loaded = 0;
    if (w->state == W_DEAD) return;
    LOG_W("job %llu: worker %d does not join: %s", (unsigned long long)j->id, w->id, why);
    send_simple(c, w, MSG_RELEASE, NULL);
    w->state = W_IDLE;
}

/* At a step boundary (APPLY of step-1 sent, step not started): a member sends its training state to the loaded
 * joiner, which becomes a member of the next generation. Its micro-batches of the step queue behind the state in
 * its pipe, and the ring (hence REDUCE) waits for its endpoint, so it computes nothing with old weights. */
static void admit_joiner(coord_t *c) {
    jobrun_t *j = c->job;
    worker_t *w = &c->w[j->joiner], *donor = member(c, 0);
    if (w->unroutable || w->state == W_DEAD) {
        j->joiner = -1; /* gone before joining (coord_settle declares it dead) */
        j->joiner_loaded = 0;
        return;
    }
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "endpoint", j->joiner_ep);
    send_simple(c, donor, MSG_STATE_SEND, b);
    if (donor->unroutable) return; /* the donor is gone: the joiner stays loaded for the next boundary */
    j->joiner = -1;
    j->joiner_loaded = 0;
    j->join_pending = w->id;
    j->donor = donor->id;
    j->join_at = coord_now();
    j->members[j->nmembers++] = w->id;
    w->state = W_READY;
    send_simple(c, w, MSG_STATE_RECV, NULL);
    LOG_I("job %llu step %lld: worker %d joins with the training state of worker %d", (unsigned long long)j->id,
          (long long)j->step, w->id, donor->id);
    new_generation(c);
}

static void on_state_loaded(coord_t *c, worker_t *w, const wire_msg_t *m) {
    jobrun_t *j = c->job;
    if (j->join_pending != w->id) return;
    j->join_pending = -1;
    const char *error = wire_get_str(m->body, "error", NULL);
    if (error) {
        char why[600];
        snprintf(why, sizeof why, "could not join: %s", error);
        coord_worker_dead(c, w, why);
        return;
    }
    j->joins++;
    LOG_I("job %llu step %lld: worker %d joined (state received in %.0f ms)", (unsigned long long)j->id,
          (long long)m->step, w->id, (coord_now() - j->join_at) * 1000.0);
}

/* Writes the weights as of j->step into run_dir/<name> (default checkpoint-<step>, which checkpoint.keep prunes;
 * any other name is kept). Either way `latest` then names it: every checkpoint is a complete resume point. */
static void send_checkpoint(coord_t *c, int final, const char *as) {
    jobrun_t *j = c->job;
    if (j->nmembers == 0) return;
    cJSON *b = cJSON_CreateObject();
    char name[64];
    if (as) snprintf(name, sizeof name, "%s", as);
    else snprintf(name, sizeof name, "checkpoint-%lld", (long long)j->step);
    cJSON_AddStringToObject(b, "run_dir", j->run_dir);
    cJSON_AddStringToObject(b, "name", name);
    cJSON_AddNumberToObject(b, "keep", (double)j->ckpt_keep);
    cJSON *ts = cJSON_AddObjectToObject(b, "trainer_state");
    cJSON_AddNumberToObject(ts, "step", (double)j->step);
    cJSON_AddNumberToObject(ts, "epoch", (double)j->step / (double)j->steps_per_epoch);
    cJSON_AddNumberToObject(ts, "total_steps", (double)j->total_steps);
    cJSON_AddNumberToObject(ts, "seed", (double)j->seed);
    cJSON_AddNumberToObject(ts, "job", (double)j->id);
    cJSON_AddNumberToObject(ts, "generation", j->gen);
    cJSON_AddNumberToObject(ts, "last_loss", j->last_loss);
    cJSON_AddItemToObject(ts, "spec", cJSON_Duplicate(j->spec, 1));
    cJSON_AddBoolToObject(b, "final", final);
    j->ckpt_pending = 1;
    send_simple(c, member(c, 0), MSG_CKPT, b);
}

static int append_metrics(jobrun_t *j, const cJSON *e, char *why, size_t whylen) {
    char *line = cJSON_PrintUnformatted(e);
    if (!line) return LLAVA_ENOMEM;
    int ok = fprintf(j->metrics, "%s\n", line) > 0 && fflush(j->metrics) == 0;
    int err = errno;
    free(line);
    if (!ok) snprintf(why, whylen, "cannot append to %s/metrics.jsonl: %s", j->run_dir, strerror(err));
    return ok ? 0 : err == ENOSPC ? LLAVA_ENOSPACE : LLAVA_EIO;
}

#define LEDGER_MIN_FREE ((int64_t)256 << 10) /* below this, a ledger commit is not attempted */

static void commit_step(coord_t *c) {
    jobrun_t *j = c->job;
    double loss_sum = 0;
    int64_t n_targets = 0, tokens = 0, samples = 0;
    cJSON *e = cJSON_CreateObject();
    cJSON_AddNumberToObject(e, "step", (double)j->step);
    cJSON_AddNumberToObject(e, "epoch", (double)(j->step / j->steps_per_epoch));
    cJSON_AddNumberToObject(e, "generation", j->gen);
    cJSON *mbs = cJSON_AddArrayToObject(e, "mbs");
    for (int64_t k = 0; k < j->nmb; k++) {
        loss_sum += j->mbs[k].loss_sum;
        n_targets += j->mbs[k].n_targets;
        tokens += j->mbs[k].tokens;
        const plan_mb_t *pm = &j->plan.mbs[j->mb_first + k];
        cJSON *a = cJSON_CreateArray();
        for (int64_t i = pm->first; i < pm->first + pm->count; i++) {
            cJSON_AddItemToArray(a, cJSON_CreateNumber((double)j->plan.order[i]));
            int64_t sh = datainfo_shard_of(&j->data, j->plan.order[i]);
            if (sh >= 0) j->shard_done[sh]++;
        }
        samples += pm->count;
        cJSON_AddItemToArray(mbs, a);
    }
    double loss = n_targets > 0 ? loss_sum / (double)n_targets : 0.0;
    cJSON_AddNumberToObject(e, "loss", loss);
    cJSON_AddNumberToObject(e, "n_targets", (double)n_targets);
    cJSON_AddNumberToObject(e, "grad_norm", j->grad_norm);
    cJSON_AddNumberToObject(e, "lr", j->step_lr);
    cJSON_AddNumberToObject(e, "workers", j->nmembers);
    cJSON_AddNumberToObject(e, "committed_at", coord_wall());
    if (j->step < j->committed_at_start) j->replayed++;
    /* A commit into a nearly full file system fails midway (LMDB reports EIO for a short write): stop before. */
    int64_t free_bytes = state_free_bytes(c->st);
    int rc = free_bytes >= 0 && free_bytes < LEDGER_MIN_FREE ? LLAVA_ENOSPACE
                                                              : state_ledger_commit(c->st, j->id, j->step, e);
    cJSON_Delete(e);
    if (rc) {
        free_bytes = state_free_bytes(c->st);
        char why[1300];
        snprintf(why, sizeof why, "ledger write of step %lld to %s/state.lmdb failed: %s (%lld KiB free there)",
                 (long long)j->step, state_dir(c->st),
                 rc == LLAVA_ENOSPACE || (free_bytes >= 0 && free_bytes < LEDGER_MIN_FREE) ? "no space left on device"
                                                                                          : err_str(rc),
                 (long long)(free_bytes / 1024));
        state_release_reserve(c->st); /* room to record the job's end */
        jobrun_finish(c, JOB_FAILED, why);
        return;
    }
    j->last_loss = loss;
    j->samples_run += samples;
    j->tokens_run += tokens;
    double now = coord_now();
    cJSON *m = cJSON_CreateObject();
    cJSON_AddNumberToObject(m, "step", (double)(j->step + 1));
    cJSON_AddNumberToObject(m, "epoch", (double)(j->step + 1) / (double)j->steps_per_epoch);
    cJSON_AddNumberToObject(m, "loss", loss);
    cJSON_AddNumberToObject(m, "lr", j->step_lr);
    cJSON_AddNumberToObject(m, "grad_norm", j->grad_norm);
    cJSON_AddNumberToObject(m, "samples", (double)samples);
    cJSON_AddNumberToObject(m, "tokens", (double)tokens);
    cJSON_AddNumberToObject(m, "n_targets", (double)n_targets);
    cJSON_AddNumberToObject(m, "generation", j->gen);
    cJSON_AddNumberToObject(m, "workers", j->nmembers);
    cJSON_AddNumberToObject(m, "step_s", now - j->t_step_start);
    cJSON_AddNumberToObject(m, "elapsed_s", now - j->t_start);
    char why[1300] = "out of memory";
    rc = append_metrics(j, m, why, sizeof why);
    cJSON_Delete(m);
    if (rc) {
        jobrun_finish(c, JOB_FAILED, why);
        return;
    }
    int64_t next = j->step + 1;
    int final = next >= j->total_steps, ckpt = final || (j->ckpt_every > 0 && next % j->ckpt_every == 0);
    int epoch_ckpt = !final && j->ckpt_every_epoch && next % j->steps_per_epoch == 0;
    /* a checkpoint or a handover follows this APPLY: workers with a sharded optimizer state gather it first */
    int gather = ckpt || epoch_ckpt || j->joiner_loaded;
    for (int r = 0; r < j->nmembers; r++) {
        worker_t *w = member(c, r);
        w->step_ms = (now - j->t_step_start) * 1000.0;
        cJSON *ab = NULL;
        if (gather) {
            ab = cJSON_CreateObject();
            cJSON_AddNumberToObject(ab, "gather_state", 1);
        }
        send_simple(c, w, MSG_APPLY, ab);
    }
    j->step++;
    if (epoch_ckpt) {
        /* for the evaluation's learning curve; sent first so that `latest` names checkpoint-<step> if both fall
         * here (two writes of the same weights: the simple way to keep both names complete) */
        char name[64];
        snprintf(name, sizeof name, "epoch-%lld", (long long)(j->step / j->steps_per_epoch));
        send_checkpoint(c, 0, name);
    }
    if (ckpt) send_checkpoint(c, final, NULL);
    if (final) j->phase = P_FINAL_CKPT;
    else {
        if (j->joiner_loaded) admit_joiner(c);
        start_step(c);
    }
}

/* ---- starting ---- */

/* After a coordinator restart: do the idle workers that still hold this job's state all hold it as of the next
 * uncommitted step (every committed step applied)? Then the job goes on from their memory; if they disagree, or
 * lag (the crash came between a commit and its APPLY), it resumes from the checkpoint as before. */
static int held_in_memory(coord_t *c, int64_t next_step) {
    jobrun_t *j = c->job;
    int holders = 0, agree = 1;
    for (int i = 0; i < c->nw; i++) {
        const worker_t *w = &c->w[i];
        if (w->state != W_IDLE || w->held_job != j->id) continue;
        holders++;
        if (w->held_step != next_step) {
            LOG_W("job %llu: worker %d holds the state of step %lld, the ledger's next step is %lld",
                  (unsigned long long)j->id, w->id, (long long)w->held_step, (long long)next_step);
            agree = 0;
        }
    }
    if (holders > 0 && !agree)
        LOG_W("job %llu: the workers do not agree with the ledger; resuming from the last checkpoint",
              (unsigned long long)j->id);
    return holders > 0 && agree && next_step > 0;
}

static int start_loading(coord_t *c) {
    jobrun_t *j = c->job;
    if (j->step == INT64_MAX) { /* first start: is the run directory's last checkpoint already the end? */
        char dir[1100];
        int64_t done = read_latest_checkpoint(j->run_dir, dir, sizeof dir);
        if (done >= j->total_steps) {
            LOG_I("job %llu '%s': %s already holds the final checkpoint (step %lld); nothing to train",
                  (unsigned long long)j->id, j->name, dir, (long long)done);
            j->step = done;
            jobrun_finish(c, JOB_DONE, NULL);
            return 0;
        }
    }
    int idle = 0;
    for (int i = 0; i < c->nw; i++) idle += c->w[i].state == W_IDLE;
    double waited = coord_now() - j->t_wait_start;
    if (idle < j->want_workers && !(idle > 0 && waited > 30.0)) return 0;
    free(j->members);
    j->members = calloc((size_t)c->nw, sizeof *j->members);
    if (!j->members) return LLAVA_ENOMEM;
    j->nmembers = 0;
    char resume[1100] = "";
    int64_t ck = read_latest_checkpoint(j->run_dir, resume, sizeof resume);
    if (ck > j->step) ck = j->step; /* never ahead of the ledger's replay point */
    int64_t last = -1;
    if (state_ledger_last(c->st, j->id, &last) != 0) last = -1;
    j->committed_at_start = last + 1;
    int keep = held_in_memory(c, j->committed_at_start);
    j->resumed_in_memory = keep;
    if (keep) ck = j->committed_at_start;
    j->step = j->start_step = ck;
    j->last_ckpt_step = ck;
    j->plan_epoch = -1; /* recount shard progress from the plan */
    if (j->metrics) fclose(j->metrics);
    j->metrics = NULL;
    int rc = open_metrics(j, ck);
    if (rc) return rc;
    for (int i = 0; i < c->nw && j->nmembers < j->want_workers; i++) {
        worker_t *w = &c->w[i];
        if (w->state != W_IDLE || (keep && w->held_job != j->id)) continue; /* the others join later */
        j->members[j->nmembers++] = w->id;
        w->state = W_LOADING;
        w->inflight = 0;
        w->endpoint[0] = 0;
        cJSON *b = cJSON_CreateObject();
        cJSON_AddItemToObject(b, "spec", cJSON_Duplicate(j->spec, 1));
        if (keep) cJSON_AddBoolToObject(b, "keep", 1);
        if (ck > 0 && !keep) cJSON_AddStringToObject(b, "resume", resume);
        else cJSON_AddNullToObject(b, "resume");
        cJSON_AddNumberToObject(b, "start_step", (double)ck);
        cJSON_AddNumberToObject(b, "hang_timeout_ms", c->hang_timeout_ms);
        send_simple(c, w, MSG_JOB, b);
    }
    j->phase = P_LOADING;
    LOG_I("job %llu '%s': %s on %d worker(s), starting at step %lld of %lld", (unsigned long long)j->id, j->name,
          keep ? "going on from the workers' memory" : "loading", j->nmembers, (long long)ck,
          (long long)j->total_steps);
    return 0;
}

int jobrun_start(coord_t *c, uint64_t id) {
    int rc = 0;
    jobrun_t *j = calloc(1, sizeof *j);
    ALLOC_CHECK_GOTO(j);
    c->job = j;
    j->id = id;
    j->plan_epoch = -1;
    j->joiner = j->join_pending = j->donor = -1;
    RC_CHECK_GOTO(state_job_get(c->st, id, &j->rec));
    j->spec = cJSON_GetObjectItemCaseSensitive(j->rec, "spec");
    CHECK_GOTO(cJSON_IsObject(j->spec), LLAVA_EFORMAT, "job %llu has no spec", (unsigned long long)id);
    snprintf(j->name, sizeof j->name, "%s", spec_str(j->spec, "name", "job"));
    snprintf(j->run_dir, sizeof j->run_dir, "%s", spec_str(j->spec, "checkpoint.dir", "runs/job"));
    j->global_batch = (int64_t)spec_num(j->spec, "train.global_batch", 128);
    j->mb_tokens = (int64_t)spec_num(j->spec, "train.micro_batch_tokens", 16384);
    j->epochs = (int64_t)spec_num(j->spec, "train.epochs", 1);
    j->seed = (uint64_t)spec_num(j->spec, "train.seed", 42);
    j->lr = spec_num(j->spec, "train.lr", 1e-3);
    j->warmup_ratio = spec_num(j->spec, "train.warmup_ratio", 0.03);
    snprintf(j->schedule, sizeof j->schedule, "%s", spec_str(j->spec, "train.schedule", "cosine"));
    const cJSON *g = spec_get(j->spec, "data.group_by_length");
    j->group_by_length = cJSON_IsTrue(g);
    j->max_seq_len = (int)spec_num(j->spec, "data.max_seq_len", 2048);
    j->ckpt_every = (int64_t)spec_num(j->spec, "checkpoint.every_steps", 500);
    j->ckpt_keep = (int64_t)spec_num(j->spec, "checkpoint.keep", 3);
    const cJSON *ev = spec_get(j->spec, "eval");
    j->ckpt_every_epoch = cJSON_IsObject(ev) && !cJSON_IsFalse(spec_get(ev, "every_epoch"));
    j->want_workers = (int)spec_num(j->spec, "cluster.workers", 1);
    j->max_replacements = (int)spec_num(j->spec, "cluster.max_replacements", 4);
    c->heartbeat_ms = (int)spec_num(j->spec, "cluster.heartbeat_ms", 500);
    c->hang_timeout_ms = (int)spec_num(j->spec, "cluster.hang_timeout_ms", 10000);
    RC_CHECK_GOTO(datainfo_load(spec_str(j->spec, "data.train", ""), 0, j->max_seq_len, &j->data));
    j->shard_done = calloc((size_t)(j->data.n_shards ? j->data.n_shards : 1), sizeof *j->shard_done);
    ALLOC_CHECK_GOTO(j->shard_done);
    j->steps_per_epoch = plan_steps_per_epoch(j->data.n_samples, j->global_batch);
    j->total_steps = j->epochs * j->steps_per_epoch;
    int64_t max_steps = (int64_t)spec_num(j->spec, "train.max_steps", 0);
    if (max_steps > 0 && max_steps < j->total_steps) j->total_steps = max_steps;
    CHECK_GOTO(j->total_steps > 0, LLAVA_ECONFIG, "job %llu: nothing to train (0 steps)", (unsigned long long)id);
    CHECK_GOTO(mkdir_p(j->run_dir) == 0, LLAVA_EIO, "cannot create run directory %s: %s", j->run_dir,
               strerror(errno));
    j->step = INT64_MAX; /* start_loading resumes from the last checkpoint */
    cJSON *patch = cJSON_CreateObject();
    cJSON_AddStringToObject(patch, "state", JOB_RUNNING);
    cJSON_AddNumberToObject(patch, "started_at", (double)time(NULL));
    cJSON_AddNumberToObject(patch, "total_steps", (double)j->total_steps);
    rc = state_job_update(c->st, id, patch);
    cJSON_Delete(patch);
    RC_CHECK_GOTO(rc);
    j->t_start = j->t_wait_start = coord_now();
    j->phase = P_WAIT_WORKERS;
    LOG_I("job %llu '%s': %lld samples in %lld shards, %lld steps/epoch, %lld steps", (unsigned long long)id, j->name,
          (long long)j->data.n_samples, (long long)j->data.n_shards, (long long)j->steps_per_epoch,
          (long long)j->total_steps);
    return start_loading(c);
cleanup:
    return rc;
}

/* ---- messages ---- */

static int is_member(const jobrun_t *j, const worker_t *w) {
    for (int r = 0; r < j->nmembers; r++)
        if (j->members[r] == w->id) return 1;
    return 0;
}

static void connect_ring(coord_t *c) {
    jobrun_t *j = c->job;
    cJSON *peers = cJSON_CreateArray();
    for (int r = 0; r < j->nmembers; r++) cJSON_AddItemToArray(peers, cJSON_CreateString(member(c, r)->endpoint));
    const char *nccl_id = j->nmembers > 0 ? member(c, 0)->nccl_id : "";
    for (int r = 0; r < j->nmembers; r++) {
        cJSON *b = cJSON_CreateObject();
        cJSON_AddItemToObject(b, "peers", cJSON_Duplicate(peers, 1));
        if (*nccl_id) cJSON_AddStringToObject(b, "nccl_id", nccl_id); /* GPU workers: NCCL instead of the ring */
        send_simple(c, member(c, r), MSG_PEERS, b);
    }
    cJSON_Delete(peers);
    j->ring_connected = 1;
    if (j->reduce_pending) begin_reduce(c);
}

static void on_ready(coord_t *c, worker_t *w, const wire_msg_t *m) {
    jobrun_t *j = c->job;
    if (m->generation == 0) { /* the job is loaded */
        if (j->phase != P_LOADING || w->state != W_LOADING) return;
        w->state = W_READY;
        for (int r = 0; r < j->nmembers; r++)
            if (member(c, r)->state != W_READY) return;
        new_generation(c);
        j->t_start = coord_now();
        start_step(c);
        return;
    }
    if (m->generation != j->gen || j->ring_connected) return; /* an older generation's endpoint */
    snprintf(w->endpoint, sizeof w->endpoint, "%s", wire_get_str(m->body, "endpoint", ""));
    snprintf(w->nccl_id, sizeof w->nccl_id, "%s", wire_get_str(m->body, "nccl_id", ""));
    w->ring_gen = j->gen;
    for (int r = 0; r < j->nmembers; r++)
        if (member(c, r)->ring_gen != j->gen) return;
    connect_ring(c);
}

static void on_mb_done(coord_t *c, worker_t *w, const wire_msg_t *m) {
    jobrun_t *j = c->job;
    int64_t k = wire_get_i64(m->body, "mb", -1);
    if (j->phase != P_COMPUTE || m->step != j->step || k < 0 || k >= j->nmb || j->mbs[k].owner != w->id ||
        j->mbs[k].done) {
        LOG_D("dropped MB_DONE step %lld mb %lld from worker %d", (long long)m->step, (long long)k, w->id);
        return;
    }
    mbstate_t *mb = &j->mbs[k];
    mb->done = 1;
    mb->loss_sum = wire_get_num(m->body, "loss_sum", 0);
    mb->n_targets = wire_get_i64(m->body, "n_targets", 0);
    mb->tokens = wire_get_i64(m->body, "tokens", 0);
    w->inflight--;
    w->mbs_done++;
    double ms = (coord_now() - mb->sent_at) * 1000.0;
    w->mb_ms = w->mb_ms > 0 ? 0.8 * w->mb_ms + 0.2 * ms : ms;
    w->last_progress_at = coord_now();
    for (int64_t i = 0; i < j->nmb; i++)
        if (!j->mbs[i].done) {
            dispatch(c);
            return;
        }
    begin_reduce(c);
}

static void on_reduced(coord_t *c, worker_t *w, const wire_msg_t *m) {
    jobrun_t *j = c->job;
    if (j->phase != P_REDUCE || m->step != j->step || m->generation != j->gen ||
        (w->reduced_step == j->step && w->reduced_gen == j->gen))
        return;
    const char *error = wire_get_str(m->body, "error", NULL);
    if (error) {
        /* The ring made no progress: fence the neighbour it names, which starts a new generation. */
        int suspect = (int)wire_get_i64(m->body, "suspect", -1);
        char why[300];
        snprintf(why, sizeof why, "all-reduce stalled on it (reported by worker %d: %s)", w->id, error);
        if (suspect >= 0 && suspect < j->nmembers && member(c, suspect) != w) coord_worker_dead(c, member(c, suspect), why);
        else coord_worker_dead(c, w, error);
        return;
    }
    w->reduced_step = j->step;
    w->reduced_gen = j->gen;
    double gn = wire_get_num(m->body, "grad_norm", 0);
    if (w->rank == 0) j->grad_norm = gn;
    if (++j->n_reduced == j->nmembers) commit_step(c);
}

static void on_ckpt_done(coord_t *c, worker_t *w, const wire_msg_t *m) {
    jobrun_t *j = c->job;
    (void)w;
    j->ckpt_pending = 0;
    j->last_ckpt_step = m->step;
    LOG_I("job %llu: checkpoint at step %lld written to %s", (unsigned long long)j->id, (long long)m->step,
          wire_get_str(m->body, "dir", "?"));
    /* only the final checkpoint's reply ends the job (rank 0 answers in order, so an earlier one comes first) */
    if (j->phase == P_FINAL_CKPT && m->step == j->step) jobrun_finish(c, JOB_DONE, NULL);
}

static void on_joiner_msg(coord_t *c, worker_t *w, const wire_msg_t *m) {
    jobrun_t *j = c->job;
    if (m->type == MSG_READY && m->generation == 0 && w->state == W_LOADING) {
        const char *ep = wire_get_str(m->body, "state_endpoint", "");
        if (!ep[0] || strlen(ep) >= sizeof j->joiner_ep) {
            drop_joiner(c, "it reported no state endpoint (an older worker?)");
            return;
        }
        snprintf(j->joiner_ep, sizeof j->joiner_ep, "%s", ep);
        j->joiner_loaded = 1;
        w->state = W_READY;
        LOG_I("job %llu: worker %d loaded; it joins after step %lld commits", (unsigned long long)j->id, w->id,
              (long long)j->step);
    } else if (m->type == MSG_FAILED) {
        char why[600];
        snprintf(why, sizeof why, "loading failed: %s", wire_get_str(m->body, "error", "?"));
        drop_joiner(c, why);
    }
}

void jobrun_on_msg(coord_t *c, worker_t *w, const wire_msg_t *m) {
    jobrun_t *j = c->job;
    if (w->id == j->joiner) {
        on_joiner_msg(c, w, m);
        return;
    }
    if (!is_member(j, w)) {
        LOG_D("dropped %s from worker %d: not a member of job %llu", wire_type_name(m->type), w->id,
              (unsigned long long)j->id);
        return;
    }
    switch (m->type) {
    case MSG_READY: on_ready(c, w, m); break;
    case MSG_MB_DONE: on_mb_done(c, w, m); break;
    case MSG_REDUCED: on_reduced(c, w, m); break;
    case MSG_APPLIED: break;
    case MSG_CKPT_DONE: on_ckpt_done(c, w, m); break;
    case MSG_STATE_LOADED: on_state_loaded(c, w, m); break;
    case MSG_FAILED: {
        char why[600];
        snprintf(why, sizeof why, "worker %d (%s pid %d): %s", w->id, w->host, w->pid,
                 wire_get_str(m->body, "error", "failed"));
        LOG_E("job %llu: %s", (unsigned long long)j->id, why);
        jobrun_finish(c, JOB_FAILED, why);
        break;
    }
    default: LOG_W("dropped unexpected %s from worker %d", wire_type_name(m->type), w->id);
    }
}

/* ---- failures ---- */

void jobrun_worker_lost(coord_t *c, worker_t *w) {
    jobrun_t *j = c->job;
    if (w->id == j->joiner) {
        j->joiner = -1;
        j->joiner_loaded = 0;
        return;
    }
    if (w->id == j->join_pending) j->join_pending = -1;
    if (w->id == j->donor && j->join_pending >= 0) {
        /* The donor died before the joiner confirmed its state: the joiner may hold nothing usable. */
        worker_t *jw = &c->w[j->join_pending];
        j->join_pending = -1;
        coord_worker_dead(c, jw, "its state donor died before the state arrived");
    }
    if (!is_member(j, w)) return;
    int r = 0;
    while (j->members[r] != w->id) r++;
    memmove(j->members + r, j->members + r + 1, (size_t)(j->nmembers - r - 1) * sizeof *j->members);
    j->nmembers--;
    w->rank = -1;
    j->recoveries++;
    if (j->nmembers == 0) {
        /* Nobody holds the weights any more: restart from the last checkpoint when workers come back. */
        LOG_W("job %llu: all workers lost; restarting from the last checkpoint when workers are available",
              (unsigned long long)j->id);
        j->phase = P_WAIT_WORKERS;
        j->t_wait_start = coord_now();
        j->ckpt_pending = 0;
        drop_joiner(c, "every member died; the job restarts from its checkpoint");
        return;
    }
    if (j->phase == P_LOADING) {
        for (int k = 0; k < j->nmembers; k++)
            if (member(c, k)->state != W_READY) return;
        new_generation(c);
        start_step(c);
        return;
    }
    if (j->phase == P_COMPUTE || j->phase == P_REDUCE) {
        int64_t moved = 0;
        for (int64_t k = 0; k < j->nmb; k++)
            if (j->mbs[k].owner == w->id) {
                j->mbs[k].owner = -1;
                j->mbs[k].done = 0;
                moved++;
            }
        j->mb_cursor = 0;
        LOG_W("job %llu step %lld: worker %d lost; %lld micro-batch(es) go to the %d survivor(s)",
              (unsigned long long)j->id, (long long)j->step, w->id, (long long)moved, j->nmembers);
        j->phase = P_COMPUTE; /* an interrupted reduce is redone once the moved micro-batches are computed */
        new_generation(c);
        int all_done = 1;
        for (int64_t k = 0; k < j->nmb; k++) all_done &= j->mbs[k].done;
        if (all_done) begin_reduce(c);
        else dispatch(c);
        return;
    }
    if (j->phase == P_FINAL_CKPT) {
        new_generation(c);
        if (j->ckpt_pending) send_checkpoint(c, 1, NULL); /* the survivors hold the same final weights */
    }
}

int jobrun_worker_busy(const coord_t *c, const worker_t *w) {
    const jobrun_t *j = c->job;
    if (!is_member(j, w)) return 0;
    /* Only micro-batches count: in an all-reduce everyone waits for the slowest, so a stall there is found by the
     * ring's own timeout (which names the neighbour) or by the stalled process's missing heartbeats. */
    return w->inflight > 0;
}

void jobrun_tick(coord_t *c) {
    jobrun_t *j = c->job;
    if (j->phase == P_WAIT_WORKERS && start_loading(c) != 0)
        jobrun_finish(c, JOB_FAILED, "cannot start: run directory not writable or out of memory");
    else if (c->job) try_join(c);
}

/* ---- end ---- */

void jobrun_free(coord_t *c) {
    jobrun_t *j = c->job;
    if (!j) return;
    if (j->metrics) fclose(j->metrics);
    datainfo_free(&j->data);
    plan_free(&j->plan);
    free(j->mbs);
    free(j->members);
    free(j->shard_done);
    cJSON_Delete(j->rec);
    free(j);
    c->job = NULL;
}

void jobrun_finish(coord_t *c, const char *state, const char *error) {
    jobrun_t *j = c->job;
    cJSON *patch = cJSON_CreateObject();
    cJSON_AddStringToObject(patch, "state", state);
    cJSON_AddNumberToObject(patch, "finished_at", (double)time(NULL));
    cJSON_AddNumberToObject(patch, "steps_done", (double)j->step);
    cJSON_AddNumberToObject(patch, "final_loss", j->last_loss);
    cJSON_AddNumberToObject(patch, "recoveries", (double)j->recoveries);
    cJSON_AddNumberToObject(patch, "joins", (double)j->joins);
    cJSON_AddNumberToObject(patch, "replayed_steps", (double)j->replayed);
    cJSON_AddBoolToObject(patch, "resumed_in_memory", j->resumed_in_memory);
    cJSON_AddNumberToObject(patch, "start_step", (double)j->start_step);
    if (error) cJSON_AddStringToObject(patch, "error", error);
    if (state_job_update(c->st, j->id, patch) != 0) LOG_E("job %llu: cannot record its end", (unsigned long long)j->id);
    cJSON_Delete(patch);
    for (int r = 0; r < j->nmembers; r++) {
        worker_t *w = member(c, r);
        send_simple(c, w, MSG_RELEASE, NULL);
        if (w->state != W_DEAD) w->state = W_IDLE;
        w->rank = -1;
        w->inflight = 0;
    }
    if (error) LOG_E("job %llu '%s' %s: %s", (unsigned long long)j->id, j->name, state, error);
    else LOG_I("job %llu '%s' %s after %lld steps, loss %.6f", (unsigned long long)j->id, j->name, state,
               (long long)j->step, j->last_loss);
    drop_joiner(c, "the job is over");
    c->last_job_failed = strcmp(state, JOB_DONE) != 0;
    jobrun_free(c);
}

cJSON *jobrun_status_json(const coord_t *c) {
    const jobrun_t *j = c->job;
    static const char *phases[] = {"waiting for workers", "loading", "computing", "reducing", "final checkpoint"};
    cJSON *o = cJSON_CreateObject();
    double now = coord_now(), el = now - j->t_start;
    cJSON_AddStringToObject(o, "phase", phases[j->phase]);
    cJSON_AddNumberToObject(o, "step", (double)j->step);
    cJSON_AddNumberToObject(o, "total_steps", (double)j->total_steps);
    cJSON_AddNumberToObject(o, "epoch", j->steps_per_epoch ? (double)(j->step / j->steps_per_epoch) : 0);
    cJSON_AddNumberToObject(o, "epochs", (double)j->epochs);
    cJSON_AddNumberToObject(o, "steps_per_epoch", (double)j->steps_per_epoch);
    cJSON_AddNumberToObject(o, "loss", j->last_loss);
    cJSON_AddNumberToObject(o, "generation", j->gen);
    cJSON_AddNumberToObject(o, "recoveries", (double)j->recoveries);
    cJSON_AddNumberToObject(o, "joins", (double)j->joins);
    cJSON_AddNumberToObject(o, "start_step", (double)j->start_step);
    cJSON_AddNumberToObject(o, "replayed_steps", (double)j->replayed);
    cJSON_AddNumberToObject(o, "joining", j->joiner >= 0 ? j->joiner : j->join_pending);
    double sps = el > 0 ? (double)j->samples_run / el : 0, tps = el > 0 ? (double)j->tokens_run / el : 0;
    cJSON_AddNumberToObject(o, "samples_per_s", sps);
    cJSON_AddNumberToObject(o, "tokens_per_s", tps);
    int64_t done_steps = j->step - j->start_step;
    double eta = done_steps > 0 ? el / (double)done_steps * (double)(j->total_steps - j->step) : -1;
    cJSON_AddNumberToObject(o, "eta_s", eta);
    cJSON_AddNumberToObject(o, "elapsed_s", el);
    cJSON_AddNumberToObject(o, "mbs_done", 0);
    if (j->mbs) {
        int64_t d = 0;
        for (int64_t k = 0; k < j->nmb; k++) d += j->mbs[k].done;
        cJSON_ReplaceItemInObject(o, "mbs_done", cJSON_CreateNumber((double)d));
        cJSON_AddNumberToObject(o, "mbs", (double)j->nmb);
    }
    cJSON *sh = cJSON_AddArrayToObject(o, "shards");
    for (int64_t s = 0; s < j->data.n_shards; s++) {
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "name", j->data.shard_names[s]);
        cJSON_AddNumberToObject(x, "done", (double)j->shard_done[s]);
        cJSON_AddNumberToObject(x, "total", (double)(j->data.shard_first[s + 1] - j->data.shard_first[s]));
        cJSON_AddItemToArray(sh, x);
    }
    return o;
}
