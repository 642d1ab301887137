/* llavactl: the command-line client of a coordinator: submit (validated first), status, watch, cancel, workers,
 * ledger. Human-readable output, or JSON with --json. Run: llavactl --help. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/wire.h"
#include "coordinator/client.h"
#include "coordinator/submit.h"

static volatile sig_atomic_t g_stop = 0; /* set by the signal handler; owned by main */

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: llavactl [--coordinator EP] [--json] COMMAND [ARGS]\n"
            "Talks to a llava-coordinator (default tcp://127.0.0.1:5555, or env LLAVA_COORDINATOR).\n\n"
            "commands:\n"
            "  validate JOB.yaml     check a job spec (syntax, keys, types, values, files) without submitting\n"
            "  submit JOB.yaml       validate, then queue the job (each stage of a staged spec is one job)\n"
            "  status [JOB]          step, epoch, loss, rates, ETA, per-shard progress, workers\n"
            "  watch JOB             live progress until the job ends (exit 1 if it failed)\n"
            "  cancel JOB            stop a running job or drop a queued one\n"
            "  workers               registered workers with state, device, step time, heartbeat age\n"
            "  ledger JOB [--from S] [--to S]   committed steps with their micro-batches and sample ids\n\n"
            "options:\n"
            "  --coordinator EP      coordinator endpoint\n"
            "  --json                machine-readable output\n"
            "  --timeout MS          reply timeout (default 5000)\n"
            "  -h, --help            this help\n");
}

static int print_json(const cJSON *o) {
    char *s = cJSON_Print(o);
    if (!s) return 1;
    printf("%s\n", s);
    free(s);
    return 0;
}

static int cmd_submit(client_t *cl, const char *path, int json, int timeout) {
    cJSON *stages = NULL;
    int rc = submit_load_stages(path, &stages, stderr);
    if (rc) return 2;
    cJSON *out = cJSON_CreateArray();
    uint64_t after = 0;
    int code = 0, n = cJSON_GetArraySize(stages);
    for (int i = 0; i < n; i++) {
        cJSON *req = cJSON_CreateObject(), *reply = NULL;
        cJSON_AddItemToObject(req, "spec", cJSON_Duplicate(cJSON_GetArrayItem(stages, i), 1));
        cJSON_AddStringToObject(req, "source", path);
        if (after) cJSON_AddNumberToObject(req, "after", (double)after);
        char err[512];
        rc = client_request(cl, MSG_SUBMIT, 0, req, timeout, &reply, err, sizeof err);
        if (rc) {
            fprintf(stderr, "llavactl: submit %s: %s\n", path, err);
            code = 1;
            break;
        }
        after = (uint64_t)wire_get_i64(reply, "job", 0);
        cJSON_AddItemToArray(out, cJSON_CreateNumber((double)after));
        if (!json) printf("job %llu queued: %s\n", (unsigned long long)after,
                          wire_get_str(cJSON_GetArrayItem(stages, i), "name", "?"));
        cJSON_Delete(reply);
    }
    if (json) print_json(out);
    cJSON_Delete(out);
    cJSON_Delete(stages);
    return code;
}

static int simple(client_t *cl, int type, cJSON *body, int json, int timeout, cJSON **keep) {
    cJSON *reply = NULL;
    char err[512];
    int rc = client_request(cl, type, 0, body, timeout, &reply, err, sizeof err);
    if (rc) {
        fprintf(stderr, "llavactl: %s\n", err);
        return 1;
    }
    if (keep) *keep = reply;
    else {
        if (json) print_json(reply);
        cJSON_Delete(reply);
    }
    return 0;
}

static int cmd_watch(client_t *cl, uint64_t job, int json, int timeout) {
    int tty = isatty(1);
    while (!g_stop) {
        cJSON *body = cJSON_CreateObject(), *st = NULL;
        cJSON_AddNumberToObject(body, "job", (double)job);
        if (simple(cl, MSG_STATUS, body, 0, timeout, &st)) return 1;
        const char *state = wire_get_str(cJSON_GetObjectItemCaseSensitive(st, "job"), "state", "?");
        int over = strcmp(state, "queued") && strcmp(state, "running");
        if (json) {
            char *s = cJSON_PrintUnformatted(st);
            printf("%s\n", s ? s : "{}");
            free(s);
            fflush(stdout);
        } else if (tty) client_print_progress_line(st);
        if (over) {
            if (!json) {
                printf("\n");
                client_print_status(st, tty);
            }
            int failed = strcmp(state, "done") != 0;
            cJSON_Delete(st);
            return failed;
        }
        if (!tty && !json) client_print_progress_line(st), printf("\n");
        cJSON_Delete(st);
        usleep(tty ? 250000 : 2000000);
    }
    return 130;
}

int main(int argc, char **argv) {
    log_set_role("llavactl", -1);
    log_set_level(LOG_WARN);
    const char *ep = getenv("LLAVA_COORDINATOR");
    if (!ep) ep = "tcp://127.0.0.1:5555";
    int json = 0, timeout = 5000;
    long long from = 0, to = -1;
    static const struct option opts[] = {{"coordinator", 1, 0, 'c'}, {"json", 0, 0, 'j'}, {"timeout", 1, 0, 't'},
                                         {"from", 1, 0, 'F'},        {"to", 1, 0, 'T'},   {"help", 0, 0, 'h'},
                                         {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) { /* GNU getopt: options before or after */
        switch (o) {
        case 'c': ep = optarg; break;
        case 'j': json = 1; break;
        case 't': timeout = atoi(optarg); break;
        case 'F': from = atoll(optarg); break;
        case 'T': to = atoll(optarg); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[optind++];
    const char *arg = optind < argc ? argv[optind] : NULL;
    if (strcmp(cmd, "validate") == 0) {
        if (!arg) {
            fprintf(stderr, "llavactl validate: missing JOB.yaml\n");
            return 2;
        }
        cJSON *stages = NULL;
        if (submit_load_stages(arg, &stages, stderr)) return 1;
        if (json) print_json(stages);
        else printf("%s: ok (%d stage%s)\n", arg, cJSON_GetArraySize(stages), cJSON_GetArraySize(stages) == 1 ? "" : "s");
        cJSON_Delete(stages);
        return 0;
    }
    int needs_job = !strcmp(cmd, "watch") || !strcmp(cmd, "cancel") || !strcmp(cmd, "ledger");
    if ((needs_job || !strcmp(cmd, "submit")) && !arg) {
        fprintf(stderr, "llavactl %s: missing argument (try --help)\n", cmd);
        return 2;
    }
    uint64_t job = 0;
    if (arg && strcmp(cmd, "submit") != 0) {
        char *end;
        job = strtoull(arg, &end, 10);
        if (*end || job == 0) {
            fprintf(stderr, "llavactl %s: '%s' is not a job id\n", cmd, arg);
            return 2;
        }
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    client_t *cl = NULL;
    if (client_open(ep, &cl)) return 1;
    int code = 2;
    if (!strcmp(cmd, "submit")) code = cmd_submit(cl, arg, json, timeout);
    else if (!strcmp(cmd, "status")) {
        cJSON *body = cJSON_CreateObject(), *st = NULL;
        if (job) cJSON_AddNumberToObject(body, "job", (double)job);
        code = simple(cl, MSG_STATUS, body, json, timeout, json ? NULL : &st);
        if (!code && st) client_print_status(st, isatty(1));
        cJSON_Delete(st);
    } else if (!strcmp(cmd, "watch")) code = cmd_watch(cl, job, json, timeout);
    else if (!strcmp(cmd, "cancel")) {
        cJSON *body = cJSON_CreateObject();
        cJSON_AddNumberToObject(body, "job", (double)job);
        code = simple(cl, MSG_CANCEL, body, json, timeout, NULL);
        if (!code && !json) printf("job %llu cancelled\n", (unsigned long long)job);
    } else if (!strcmp(cmd, "workers")) {
        cJSON *st = NULL;
        code = simple(cl, MSG_WORKERS, NULL, json, timeout, json ? NULL : &st);
        if (!code && st) client_print_status(st, isatty(1));
        cJSON_Delete(st);
    } else if (!strcmp(cmd, "ledger")) {
        cJSON *body = cJSON_CreateObject(), *r = NULL;
        cJSON_AddNumberToObject(body, "job", (double)job);
        cJSON_AddNumberToObject(body, "from", (double)from);
        cJSON_AddNumberToObject(body, "to", (double)to);
        code = simple(cl, MSG_LEDGER, body, json, timeout, json ? NULL : &r);
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(r, "steps")) {
            printf("step %lld epoch %lld gen %lld loss %.6f targets %lld workers %lld\n",
                   (long long)wire_get_i64(e, "step", 0), (long long)wire_get_i64(e, "epoch", 0),
                   (long long)wire_get_i64(e, "generation", 0), wire_get_num(e, "loss", 0),
                   (long long)wire_get_i64(e, "n_targets", 0), (long long)wire_get_i64(e, "workers", 0));
            const cJSON *mb;
            int k = 0;
            cJSON_ArrayForEach(mb, cJSON_GetObjectItemCaseSensitive(e, "mbs")) {
                printf("  mb %d:", k++);
                const cJSON *s;
                cJSON_ArrayForEach(s, mb) printf(" %lld", (long long)s->valuedouble);
                printf("\n");
            }
        }
        cJSON_Delete(r);
    } else {
        fprintf(stderr, "llavactl: unknown command '%s' (try --help)\n", cmd);
    }
    client_close(&cl);
    return code;
}
