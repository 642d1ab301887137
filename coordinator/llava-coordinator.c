/* llava-coordinator: the coordinator daemon. Binds loopback by default; keeps its state (job queue, ledger) in
 * --state DIR so a restart continues where it stopped. Under mpirun (--mpi) it is rank 0 of one MPMD job with the
 * workers (deploy/mpi-run.sh). Run: llava-coordinator --help. */
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "coordinator/coord.h"

static volatile sig_atomic_t g_stop = 0; /* set by the signal handler; owned by main */

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: llava-coordinator [options]\n"
            "The coordinator daemon: job queue, epoch planner, micro-batch dispatch, ledger, checkpoints.\n\n"
            "  --bind EP            ZeroMQ endpoint to listen on (default tcp://127.0.0.1:5555; port 0 or * picks one)\n"
            "  --state DIR          durable state directory (default ./llava-state)\n"
            "  --spawn-workers N    local mode: start N llava-worker processes and replace dead ones\n"
            "  --worker-exe PATH    llava-worker to spawn (default: next to this program)\n"
            "  --worker-args STR    extra arguments for spawned workers, e.g. \"--threads 1\"\n"
            "  --mb-inflight N      micro-batches in flight per worker (default 2)\n"
            "  --exit-when-idle     exit when no job is queued or running (exit 1 if the last job failed)\n"
            "  --endpoint-file F    write the bound endpoint to F (for scripts using an ephemeral port)\n"
            "  --mpi                run as rank 0 of an mpirun job: send the endpoint to the worker ranks, replace\n"
            "                       dead workers with MPI_Comm_spawn (--worker-exe, --worker-args; see deploy/mpi-run.sh);\n"
            "                       SIGUSR1 (which mpirun forwards to every rank) then stops it like SIGTERM\n"
            "  -v, --verbose        debug logging\n"
            "  -h, --help           this help\n");
}

int main(int argc, char **argv) {
    log_set_role("coordinator", -1);
    coord_config_t cfg = {.bind = "tcp://127.0.0.1:5555", .state_dir = "llava-state", .mb_inflight = 2};
    const char *endpoint_file = NULL;
    static char exe[PATH_MAX];
    static const struct option opts[] = {
        {"bind", 1, 0, 'b'},          {"state", 1, 0, 's'},        {"spawn-workers", 1, 0, 'n'},
        {"worker-exe", 1, 0, 'e'},    {"worker-args", 1, 0, 'a'},  {"mb-inflight", 1, 0, 'i'},
        {"exit-when-idle", 0, 0, 'x'}, {"endpoint-file", 1, 0, 'f'}, {"verbose", 0, 0, 'v'},
        {"mpi", 0, 0, 'M'},           {"help", 0, 0, 'h'},         {0, 0, 0, 0}};
    int use_mpi = 0;
    int o;
    while ((o = getopt_long(argc, argv, "vh", opts, NULL)) != -1) {
        switch (o) {
        case 'b': cfg.bind = optarg; break;
        case 's': cfg.state_dir = optarg; break;
        case 'n': cfg.spawn_workers = atoi(optarg); break;
        case 'e': cfg.worker_exe = optarg; break;
        case 'a': cfg.worker_args = optarg; break;
        case 'i': cfg.mb_inflight = atoi(optarg); break;
        case 'x': cfg.exit_when_idle = 1; break;
        case 'f': endpoint_file = optarg; break;
        case 'v': log_set_level(LOG_DEBUG); break;
        case 'M': use_mpi = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "llava-coordinator: unexpected argument '%s' (try --help)\n", argv[optind]);
        return 2;
    }
    if (cfg.spawn_workers < 0 || cfg.spawn_workers > 256) {
        fprintf(stderr, "llava-coordinator: --spawn-workers must be 0..256\n");
        return 2;
    }
    if (use_mpi && cfg.spawn_workers > 0) {
        fprintf(stderr, "llava-coordinator: --mpi and --spawn-workers exclude each other (mpirun starts the workers)\n");
        return 2;
    }
    if ((cfg.spawn_workers > 0 || use_mpi) && !cfg.worker_exe) {
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 32);
        if (n <= 0) {
            fprintf(stderr, "llava-coordinator: cannot find llava-worker; pass --worker-exe\n");
            return 2;
        }
        exe[n] = 0;
        strcat(dirname(exe), "/llava-worker");
        cfg.worker_exe = exe;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (use_mpi) sigaction(SIGUSR1, &sa, NULL); /* mpirun forwards SIGUSR1 to every rank: a clean stop */
    signal(SIGPIPE, SIG_IGN);
    mpilaunch_t mpi;
    if (use_mpi) {
        if (mpilaunch_init(&argc, &argv, &mpi) != 0) return 1;
        cfg.mpi = &mpi;
    }
    coord_t *c = NULL;
    int rc = coord_new(&cfg, &c);
    if (rc) {
        fprintf(stderr, "llava-coordinator: cannot start: %s\n", err_str(rc));
        return mpilaunch_finalize(1);
    }
    if (endpoint_file) {
        FILE *f = fopen(endpoint_file, "w");
        if (!f || fprintf(f, "%s\n", coord_endpoint(c)) < 0 || fclose(f) != 0) {
            fprintf(stderr, "llava-coordinator: cannot write %s\n", endpoint_file);
            coord_free(&c);
            return mpilaunch_finalize(1);
        }
    }
    int code = coord_run(c, &g_stop);
    coord_free(&c);
    return use_mpi ? mpilaunch_finalize(code) : code;
}
