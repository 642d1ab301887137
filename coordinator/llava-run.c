/* llava-run: the embedded default. Starts a coordinator with N local CPU workers on this machine, submits the job
 * spec (every stage), shows live progress, runs the spec's evaluation, stops everything, and exits non-zero if a
 * job failed. With --coordinator it drives a coordinator started elsewhere (deploy/mpi-run.sh under mpirun).
 * Run: llava-run --help. */
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/wire.h"
#include "coordinator/client.h"
#include "coordinator/state.h"
#include "common/dataset.h"
#include "common/tokenizer.h"
#include "coordinator/submit.h"
#include "kernels/cpu/ops.h"
#include "worker/eval.h"
#include "worker/model_llava.h"

static volatile sig_atomic_t g_stop = 0; /* set by the signal handler; owned by main */

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: llava-run JOB.yaml [options]\n"
            "Runs a job spec on this machine: a coordinator, N local CPU workers, live progress, evaluation.\n\n"
            "  --workers N       local workers (default: the spec's cluster.workers)\n"
            "  --coordinator EP  use this running coordinator and its workers instead of starting them (it is not\n"
            "                    stopped here; deploy/mpi-run.sh starts one with --exit-when-idle)\n"
            "  --threads T       compute threads per worker (default: cores / workers, at least 1)\n"
            "  --state DIR       coordinator state directory (default: <checkpoint.dir>/../llava-state)\n"
            "  --backend NAME    model (default) or sim (no model; for tests)\n"
            "  --sim-mb-ms MS    sim backend: milliseconds per micro-batch\n"
            "  --no-eval         skip the spec's evaluation (with eval.every_epoch: of each epoch's checkpoint, then\n"
            "                    the final one; scores also go to <checkpoint.dir>/eval.jsonl)\n"
            "  -q, --quiet       no progress bars\n"
            "  -v, --verbose     debug logging from the daemons\n"
            "  -h, --help        this help\n");
}

static void self_dir(char *buf, size_t len) {
    ssize_t n = readlink("/proc/self/exe", buf, len - 1);
    if (n <= 0) {
        snprintf(buf, len, ".");
        return;
    }
    buf[n] = 0;
    char *d = dirname(buf);
    memmove(buf, d, strlen(d) + 1);
}

static int mkdir_p(const char *path) {
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
            *p = '/';
        }
    return (mkdir(tmp, 0755) != 0 && errno != EEXIST) ? -1 : 0;
}

static const char *jstr(const cJSON *o, const char *a, const char *b) {
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(o, a), b));
}

/* The dataset's tokenizer, as ingest recorded it: absolute, relative to here, or relative to the dataset. */
static int find_tokenizer(const char *dataset, char *out, size_t len) {
    ds_manifest_t m;
    if (ds_manifest_load(dataset, &m) != 0) return -1;
    int rc = -1;
    char alt[PATH_MAX + 1100];
    snprintf(alt, sizeof alt, "%s/../%s", dataset, m.tokenizer);
    if (m.tokenizer[0] && access(m.tokenizer, R_OK) == 0) rc = 0, snprintf(out, len, "%s", m.tokenizer);
    else if (m.tokenizer[0] && access(alt, R_OK) == 0) rc = 0, snprintf(out, len, "%s", alt);
    ds_manifest_free(&m);
    return rc;
}

/* step and epoch (a float: step / steps_per_epoch) from a checkpoint's trainer_state.json; -1 if unreadable. */
static int read_trainer_state(const char *ckpt_dir, int64_t *step, double *epoch) {
    char path[PATH_MAX + 400], buf[65536];
    snprintf(path, sizeof path, "%s/trainer_state.json", ckpt_dir);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *ts = cJSON_Parse(buf);
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(ts, "step"), *e = cJSON_GetObjectItemCaseSensitive(ts, "epoch");
    int rc = cJSON_IsNumber(s) && cJSON_IsNumber(e) ? 0 : -1;
    if (!rc) *step = (int64_t)s->valuedouble, *epoch = e->valuedouble;
    cJSON_Delete(ts);
    return rc;
}

/* One eval.jsonl line: which checkpoint, when in training, and the scores overall and per question type. */
static cJSON *eval_line(const char *stage, const char *ckpt, double epoch, int64_t step, int final,
                        const eval_result_t *r) {
    cJSON *o = cJSON_CreateObject(), *types = NULL;
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "stage", stage);
    cJSON_AddStringToObject(o, "checkpoint", ckpt);
    cJSON_AddNumberToObject(o, "epoch", epoch);
    cJSON_AddNumberToObject(o, "step", (double)step);
    cJSON_AddBoolToObject(o, "final", final);
    cJSON_AddNumberToObject(o, "accuracy", r->n ? (double)r->correct / r->n : 0.0);
    cJSON_AddNumberToObject(o, "correct", r->correct);
    cJSON_AddNumberToObject(o, "n", r->n);
    cJSON_AddNumberToObject(o, "skipped", r->skipped);
    types = cJSON_AddObjectToObject(o, "types");
    for (int i = 0; types && i < r->n_types; i++) {
        cJSON *t = cJSON_AddObjectToObject(types, r->types[i].name);
        if (!t) continue;
        cJSON_AddNumberToObject(t, "accuracy", r->types[i].n ? (double)r->types[i].correct / r->types[i].n : 0.0);
        cJSON_AddNumberToObject(t, "correct", r->types[i].correct);
        cJSON_AddNumberToObject(t, "n", r->types[i].n);
    }
    return o;
}

/* Replaces run_dir/eval.jsonl with one line per element of lines (a rerun rewrites it, never appends twice). */
static int write_eval_jsonl(const char *run_dir, const cJSON *lines) {
    char path[PATH_MAX + 16], tmp[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/eval.jsonl", run_dir);
    snprintf(tmp, sizeof tmp, "%s/.eval.jsonl.tmp", run_dir);
    FILE *f = fopen(tmp, "w");
    int ok = f != NULL;
    const cJSON *l;
    cJSON_ArrayForEach(l, lines) {
        char *text = ok ? cJSON_PrintUnformatted(l) : NULL;
        ok = text && fprintf(f, "%s\n", text) > 0;
        free(text);
    }
    if (f) ok &= fclose(f) == 0;
    if (ok && rename(tmp, path) == 0) return 0;
    fprintf(stderr, "llava-run: eval: cannot write %s: %s\n", path, strerror(errno));
    remove(tmp);
    return -1;
}

/* Scores one checkpoint directory; prints "<label>: accuracy ..." and the per-type lines. Appends to lines. */
static int score_checkpoint(const char *run_dir, const char *ckpt, const char *stage, const char *label, int final,
                            const tokenizer_t *tok, const eval_opts_t *o, int quiet, cJSON *lines) {
    char dir[PATH_MAX + 300];
    snprintf(dir, sizeof dir, "%s/%s", run_dir, ckpt);
    int64_t step = 0;
    double epoch = 0;
    if (read_trainer_state(dir, &step, &epoch) != 0) {
        fprintf(stderr, "llava-run: eval: %s has no readable trainer_state.json\n", dir);
        return -1;
    }
    if (!quiet) printf("== eval of %s on %s\n", dir, o->questions);
    llava_model_t *m = NULL;
    eval_result_t r;
    int rc = llava_model_load(dir, &m);
    if (!rc) rc = llava_eval_mc(m, tok, o, &r);
    llava_model_free(&m);
    if (rc) {
        fprintf(stderr, "llava-run: eval of %s failed: %s\n", dir, err_str(rc));
        return -1;
    }
    printf("%s: ", label);
    eval_result_print(&r, stdout);
    fflush(stdout);
    cJSON *l = eval_line(stage, ckpt, epoch, step, final, &r);
    if (!l) return -1;
    cJSON_AddItemToArray(lines, l);
    return 0;
}

/* Scores every stage that has an eval section: with eval.every_epoch, each epoch-<N> checkpoint the coordinator
 * wrote at the end of an epoch, in order, then the stage's final checkpoint; the scores also go to
 * <checkpoint.dir>/eval.jsonl. */
static int run_evals(const cJSON *stages, int threads, int quiet) {
    const cJSON *st;
    int code = 0;
    cJSON_ArrayForEach(st, stages) {
        const char *questions = jstr(st, "eval", "data");
        if (!questions) continue;
        const char *run_dir = jstr(st, "checkpoint", "dir"), *train = jstr(st, "data", "train");
        const char *nm = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(st, "name"));
        int every_epoch = !cJSON_IsFalse(
            cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(st, "eval"), "every_epoch"));
        char latest[PATH_MAX + 16], name[256] = "", tokp[PATH_MAX + 1200], label[400];
        if (!nm) nm = "eval";
        snprintf(latest, sizeof latest, "%s/latest", run_dir ? run_dir : ".");
        FILE *f = fopen(latest, "r");
        if (!f || !fgets(name, sizeof name, f)) {
            fprintf(stderr, "llava-run: eval: no checkpoint in %s\n", run_dir ? run_dir : "?");
            if (f) fclose(f);
            code = 1;
            continue;
        }
        fclose(f);
        name[strcspn(name, "\r\n")] = 0;
        if (!train || find_tokenizer(train, tokp, sizeof tokp) != 0) {
            fprintf(stderr, "llava-run: eval: dataset %s names no readable tokenizer\n", train ? train : "?");
            code = 1;
            continue;
        }
        template_t tpl;
        if (template_parse(jstr(st, "data", "template") ? jstr(st, "data", "template") : "", &tpl) != 0) tpl = TPL_VICUNA_V1;
        const char *aspect = jstr(st, "model", "image_aspect_ratio");
        eval_opts_t o = {.questions = questions, .answers = jstr(st, "eval", "answers"), .tpl = tpl,
                         .pad = aspect && strcmp(aspect, "pad") == 0};
        tokenizer_t *tok = NULL;
        cJSON *lines = cJSON_CreateArray();
        kernels_set_threads(threads);
        int rc = lines ? tokenizer_load(tokp, &tok) : LLAVA_ENOMEM;
        if (rc) fprintf(stderr, "llava-run: eval: cannot load the tokenizer %s: %s\n", tokp, err_str(rc));
        /* the final checkpoint's epoch (e.g. 3, or 2.5 with train.max_steps) says which epoch-<N> to expect */
        char final_dir[PATH_MAX + 300];
        int64_t final_step = 0;
        double final_epoch = 0;
        snprintf(final_dir, sizeof final_dir, "%s/%s", run_dir, name);
        if (!rc && every_epoch && read_trainer_state(final_dir, &final_step, &final_epoch) == 0) {
            for (int e = 1; e < (int)ceil(final_epoch) && !g_stop; e++) {
                char ck[64], dir[PATH_MAX + 100];
                snprintf(ck, sizeof ck, "epoch-%d", e);
                snprintf(dir, sizeof dir, "%s/%s", run_dir, ck);
                if (access(dir, F_OK) != 0) { /* its write was lost to a failure; the training is unaffected */
                    fprintf(stderr, "llava-run: eval: no %s (the checkpoint of epoch %d was not written)\n", dir, e);
                    continue;
                }
                snprintf(label, sizeof label, "%s epoch %d", nm, e);
                if (score_checkpoint(run_dir, ck, nm, label, 0, tok, &o, quiet, lines)) code = 1;
            }
        }
        snprintf(label, sizeof label, "%s", nm);
        if (rc || g_stop || score_checkpoint(run_dir, name, nm, label, 1, tok, &o, quiet, lines)) code = 1;
        if (lines && cJSON_GetArraySize(lines) > 0 && write_eval_jsonl(run_dir, lines)) code = 1;
        cJSON_Delete(lines);
        tokenizer_free(&tok);
    }
    return code;
}

static pid_t start_coordinator(const char *bindir, const char *state, int workers, const char *wargs,
                               const char *epfile, int verbose) {
    char exe[PATH_MAX + 32], wexe[PATH_MAX + 32], nw[16];
    snprintf(exe, sizeof exe, "%s/llava-coordinator", bindir);
    snprintf(wexe, sizeof wexe, "%s/llava-worker", bindir);
    snprintf(nw, sizeof nw, "%d", workers);
    unlink(epfile);
    pid_t pid = fork();
    if (pid == 0) {
        char *args[] = {exe, "--bind", "tcp://127.0.0.1:*", "--state", (char *)state, "--spawn-workers", nw,
                        "--worker-exe", wexe, "--worker-args", (char *)wargs, "--exit-when-idle",
                        "--endpoint-file", (char *)epfile, verbose ? "-v" : NULL, NULL};
        execv(exe, args);
        fprintf(stderr, "llava-run: cannot exec %s: %s\n", exe, strerror(errno));
        _exit(127);
    }
    return pid;
}

static int read_endpoint(const char *epfile, pid_t coord, char *ep, size_t len) {
    for (int i = 0; i < 200 && !g_stop; i++) { /* 20 s */
        FILE *f = fopen(epfile, "r");
        if (f) {
            int ok = fgets(ep, (int)len, f) != NULL;
            fclose(f);
            ep[strcspn(ep, "\r\n")] = 0;
            if (ok && ep[0]) return 0;
        }
        if (waitpid(coord, NULL, WNOHANG) == coord) return -1;
        usleep(100000);
    }
    return -1;
}

/* The coordinator (our child) exits by itself once the last job ends (--exit-when-idle), possibly before our next
 * status request: then the job's final state is read from the state directory it left. Returns a status reply
 * {"job": {...}} (caller deletes) or NULL if the coordinator is still running or the job is not recorded. */
static cJSON *final_status_if_exited(pid_t coord, int *coord_status, int *coord_reaped, const char *state_path,
                                     uint64_t job) {
    if (!*coord_reaped) {
        if (coord <= 0 || waitpid(coord, coord_status, WNOHANG) != coord) return NULL; /* not ours (--coordinator) */
        *coord_reaped = 1;
    }
    state_t *s = NULL;
    cJSON *j = NULL, *st = NULL;
    if (state_open(state_path, &s) == 0 && state_job_get(s, job, &j) == 0) {
        st = cJSON_CreateObject();
        if (st) cJSON_AddItemToObject(st, "job", j);
        else cJSON_Delete(j);
    }
    state_close(&s);
    return st;
}

/* Watches one job to its end. Returns 0 if it finished "done". */
static int watch_job(client_t *cl, uint64_t job, int quiet, pid_t coord, int *coord_status, int *coord_reaped,
                     const char *state_path) {
    int tty = isatty(1) && !quiet;
    int64_t last_step = -1;
    int misses = 0;
    while (!g_stop) {
        cJSON *body = cJSON_CreateObject(), *st = NULL;
        cJSON_AddNumberToObject(body, "job", (double)job);
        char err[512];
        int exited = *coord_reaped || (coord > 0 && waitpid(coord, coord_status, WNOHANG) == coord);
        if (exited) *coord_reaped = 1;
        if (exited || client_request(cl, MSG_STATUS, 0, body, exited ? 0 : 1000, &st, err, sizeof err)) {
            if (exited) cJSON_Delete(body);
            st = final_status_if_exited(coord, coord_status, coord_reaped, state_path, job);
            if (!st && *coord_reaped) {
                fprintf(stderr, "\nllava-run: the coordinator exited (status %d) and job %llu is not in %s\n",
                        *coord_status, (unsigned long long)job, state_path);
                return 1;
            }
            if (!st) {
                if (++misses < 60) continue; /* a busy coordinator answers late; the late reply is dropped by its id */
                fprintf(stderr, "\nllava-run: %s (for a minute)\n", err);
                return 1;
            }
        }
        misses = 0;
        const cJSON *j = cJSON_GetObjectItemCaseSensitive(st, "job");
        const char *state = wire_get_str(j, "state", "?");
        if (strcmp(state, "queued") && strcmp(state, "running")) {
            if (tty) printf("\n");
            client_print_status(st, tty);
            int ok = strcmp(state, "done") == 0;
            cJSON_Delete(st);
            return ok ? 0 : 1;
        }
        const cJSON *run = cJSON_GetObjectItemCaseSensitive(st, "run");
        if (tty) client_print_progress_line(st);
        else if (!quiet && run && wire_get_i64(run, "step", 0) != last_step) {
            last_step = wire_get_i64(run, "step", 0);
            client_print_progress_line(st);
            printf("\n");
        }
        cJSON_Delete(st);
        usleep(tty ? 200000 : 500000);
    }
    return 130;
}

int main(int argc, char **argv) {
    log_set_role("llava-run", -1);
    int workers = 0, threads = 0, quiet = 0, verbose = 0, no_eval = 0, sim_ms = 0;
    const char *state = NULL, *backend = "model", *attach = NULL;
    static const struct option opts[] = {{"workers", 1, 0, 'w'}, {"threads", 1, 0, 't'}, {"state", 1, 0, 's'},
                                         {"backend", 1, 0, 'B'}, {"sim-mb-ms", 1, 0, 'm'}, {"no-eval", 0, 0, 'E'},
                                         {"quiet", 0, 0, 'q'},   {"verbose", 0, 0, 'v'}, {"help", 0, 0, 'h'},
                                         {"coordinator", 1, 0, 'c'}, {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "qvh", opts, NULL)) != -1) {
        switch (o) {
        case 'w': workers = atoi(optarg); break;
        case 't': threads = atoi(optarg); break;
        case 's': state = optarg; break;
        case 'B': backend = optarg; break;
        case 'm': sim_ms = atoi(optarg); break;
        case 'E': no_eval = 1; break;
        case 'c': attach = optarg; break;
        case 'q': quiet = 1; break;
        case 'v': verbose = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return 2;
    }
    const char *spec_path = argv[optind];
    cJSON *stages = NULL;
    if (submit_load_stages(spec_path, &stages, stderr)) return 2;
    const cJSON *first = cJSON_GetArrayItem(stages, 0);
    if (workers <= 0) workers = (int)wire_get_i64(cJSON_GetObjectItemCaseSensitive(first, "cluster"), "workers", 1);
    if (workers < 1 || workers > 256) {
        fprintf(stderr, "llava-run: --workers must be 1..256\n");
        return 2;
    }
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (threads <= 0) threads = cores / workers > 0 ? (int)(cores / workers) : 1;
    char statebuf[PATH_MAX], bindir[PATH_MAX], epfile[PATH_MAX + 32], wargs[256];
    if (!state) {
        const char *ck = wire_get_str(cJSON_GetObjectItemCaseSensitive(first, "checkpoint"), "dir", "runs/job");
        char tmp[PATH_MAX];
        snprintf(tmp, sizeof tmp, "%s", ck);
        snprintf(statebuf, sizeof statebuf, "%s/llava-state", dirname(tmp));
        state = statebuf;
    }
    if (!attach && mkdir_p(state) != 0) {
        fprintf(stderr, "llava-run: cannot create state directory %s: %s\n", state, strerror(errno));
        return 1;
    }
    self_dir(bindir, sizeof bindir);
    snprintf(epfile, sizeof epfile, "%s/endpoint", state);
    snprintf(wargs, sizeof wargs, "--threads %d --backend %s --sim-mb-ms %d%s", threads, backend, sim_ms,
             verbose ? " -v" : "");
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (!quiet && attach) printf("llava-run: %s: %d stage(s) on the coordinator at %s\n", spec_path,
                                 cJSON_GetArraySize(stages), attach);
    else if (!quiet) printf("llava-run: %s: %d stage(s), %d local worker(s) x %d thread(s), state in %s\n", spec_path,
                            cJSON_GetArraySize(stages), workers, threads, state);
    fflush(stdout);
    char ep[256];
    snprintf(ep, sizeof ep, "%s", attach ? attach : "");
    pid_t coord = attach ? 0 : start_coordinator(bindir, state, workers, wargs, epfile, verbose);
    if (!attach && (coord < 0 || read_endpoint(epfile, coord, ep, sizeof ep) != 0)) {
        fprintf(stderr, "llava-run: the coordinator did not start (see its log above)\n");
        if (coord > 0) kill(coord, SIGTERM), waitpid(coord, NULL, 0);
        cJSON_Delete(stages);
        return 1;
    }
    client_t *cl = NULL;
    int code = client_open(ep, &cl) ? 1 : 0;
    uint64_t after = 0;
    uint64_t ids[64];
    int status = 0, reaped = 0;
    int n = cJSON_GetArraySize(stages);
    for (int i = 0; i < n && i < 64 && !code; i++) {
        cJSON *req = cJSON_CreateObject(), *reply = NULL;
        cJSON_AddItemToObject(req, "spec", cJSON_Duplicate(cJSON_GetArrayItem(stages, i), 1));
        cJSON_AddStringToObject(req, "source", spec_path);
        if (after) cJSON_AddNumberToObject(req, "after", (double)after);
        char err[512];
        if (client_request(cl, MSG_SUBMIT, 0, req, 10000, &reply, err, sizeof err)) {
            fprintf(stderr, "llava-run: submit: %s\n", err);
            code = 1;
            break;
        }
        ids[i] = after = (uint64_t)wire_get_i64(reply, "job", 0);
        cJSON_Delete(reply);
    }
    for (int i = 0; i < n && i < 64 && !code; i++) {
        if (!quiet) printf("== stage %d/%d: %s (job %llu)\n", i + 1, n,
                           wire_get_str(cJSON_GetArrayItem(stages, i), "name", "?"), (unsigned long long)ids[i]);
        code = watch_job(cl, ids[i], quiet, coord, &status, &reaped, state);
    }
    client_close(&cl);
    if (coord > 0 && !reaped && (g_stop || code)) kill(coord, SIGTERM);
    if (coord > 0 && !reaped) waitpid(coord, &status, 0);
    if (!code && !g_stop && !no_eval && strcmp(backend, "sim") != 0) code = run_evals(stages, (int)cores, quiet);
    cJSON_Delete(stages);
    if (g_stop) {
        fprintf(stderr, "llava-run: interrupted; completed steps are in the ledger and the last checkpoint\n");
        return 130;
    }
    return code;
}
