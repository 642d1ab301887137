/* llava-worker: a worker daemon. Registers with the coordinator, loads each job's model once, runs micro-batches,
 * joins the all-reduce of its generation, writes checkpoints when asked. Under mpirun (--mpi) it gets the
 * coordinator's endpoint from rank 0 (deploy/mpi-run.sh). Run: llava-worker --help. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/mpilaunch.h"
#include "worker/backend.h"
#include "worker/runtime_env.h"
#include "worker/worker.h"

static volatile sig_atomic_t g_stop = 0; /* set by the signal handler; owned by main */

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: llava-worker --coordinator EP [options]\n"
            "A worker daemon: runs forward/backward of the jobs the coordinator assigns.\n\n"
            "  --coordinator EP   coordinator endpoint (e.g. tcp://127.0.0.1:5555; env LLAVA_COORDINATOR)\n"
            "  --threads N        compute threads (default 1)\n"
            "  --device DEV       cpu (default), cuda (= cuda:0) or cuda:N (builds with the CUDA backend; exits at once\n"
            "                     with \"no CUDA device\" when there is none); under --mpi, cuda means\n"
            "                     cuda:<index of this worker on its node>\n"
            "  --bind-host ADDR   address for the all-reduce endpoint (default 127.0.0.1)\n"
            "  --backend NAME     model (default) or sim (no model: for tests and benchmarks)\n"
            "  --sim-mb-ms MS     sim backend: milliseconds per micro-batch (default 0)\n"
            "  --mpi              started by mpirun (or MPI_Comm_spawn): the endpoint comes from rank 0 unless\n"
            "                     --coordinator is given; --bind-host defaults to this host's address on the route\n"
            "                     to the coordinator; SIGUSR1 (forwarded by mpirun to stop the job) is ignored:\n"
            "                     the coordinator's SHUTDOWN stops it\n"
            "  -v, --verbose      debug logging\n"
            "  -h, --help         this help\n");
}

int main(int argc, char **argv) {
    runtime_env_ensure(argv); /* passive OpenMP threads, the OpenBLAS kernels this CPU can run */
    log_set_role("worker", -1);
    worker_config_t cfg = {.coordinator = getenv("LLAVA_COORDINATOR"), .backend = "model", .device = "cpu",
                           .bind_host = "127.0.0.1", .threads = 1};
    static const struct option opts[] = {{"coordinator", 1, 0, 'c'}, {"threads", 1, 0, 't'}, {"device", 1, 0, 'd'},
                                         {"bind-host", 1, 0, 'H'},    {"backend", 1, 0, 'B'}, {"sim-mb-ms", 1, 0, 'm'},
                                         {"verbose", 0, 0, 'v'},      {"help", 0, 0, 'h'},    {"mpi", 0, 0, 'M'},
                                         {0, 0, 0, 0}};
    int o, use_mpi = 0, bind_given = 0;
    while ((o = getopt_long(argc, argv, "vh", opts, NULL)) != -1) {
        switch (o) {
        case 'c': cfg.coordinator = optarg; break;
        case 't': cfg.threads = atoi(optarg); break;
        case 'd': cfg.device = optarg; break;
        case 'H': cfg.bind_host = optarg, bind_given = 1; break;
        case 'B': cfg.backend = optarg; break;
        case 'm': cfg.sim_mb_ms = atoi(optarg); break;
        case 'v': log_set_level(LOG_DEBUG); break;
        case 'M': use_mpi = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!cfg.coordinator && !use_mpi) {
        fprintf(stderr, "llava-worker: --coordinator is required (try --help)\n");
        return 2;
    }
    if (cfg.threads < 1 || cfg.threads > 1024) {
        fprintf(stderr, "llava-worker: --threads must be 1..1024\n");
        return 2;
    }
    if (strcmp(cfg.backend, "model") != 0 && strcmp(cfg.backend, "sim") != 0) {
        fprintf(stderr, "llava-worker: --backend must be model or sim\n");
        return 2;
    }
    char endpoint[256], device[32], bind_host[64];
    mpilaunch_t mpi;
    if (use_mpi) {
        if (mpilaunch_init(&argc, &argv, &mpi) != 0) return 1;
        int rc = 0;
        if (!mpi.spawned) rc = mpilaunch_receive(&mpi, endpoint, sizeof endpoint); /* collective with rank 0 */
        if (!rc && mpi.spawned && !cfg.coordinator) {
            LOG_E("a replacement started by MPI_Comm_spawn needs --coordinator");
            rc = LLAVA_EINVAL;
        }
        if (!rc && !mpi.spawned) cfg.coordinator = endpoint;
        if (!rc && !bind_given) rc = mpilaunch_bind_host(cfg.coordinator, bind_host, sizeof bind_host);
        if (rc) return mpilaunch_finalize(1);
        if (!bind_given) cfg.bind_host = bind_host;
        if (strcmp(cfg.device, "cuda") == 0) { /* the node-local index picks the GPU */
            snprintf(device, sizeof device, "cuda:%d", mpi.local_index);
            cfg.device = device;
        }
        log_set_role("worker", mpi.spawned ? -1 : mpi.rank);
    }
    int gpu = -1;
    if (backend_model_device_parse(cfg.device, &gpu) != 0) { /* fail fast: before connecting to anyone */
        fprintf(stderr, "llava-worker: device '%s' is not usable here (see the error above)\n", cfg.device);
        return use_mpi ? mpilaunch_finalize(2) : 2;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (use_mpi) signal(SIGUSR1, SIG_IGN); /* mpirun forwards it to every rank: the coordinator stops us */
    signal(SIGPIPE, SIG_IGN);
    int code = worker_run(&cfg, &g_stop);
    return use_mpi ? mpilaunch_finalize(code) : code;
}
