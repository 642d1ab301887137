/* Times worker/collective's ring all-reduce across N forked processes on loopback (one per rank, as workers are).
 * Prints `result impl=ring world=N bytes=B ms=T algbw_GBps=G` per size (algbw = buffer bytes / time per all-reduce).
 * Usage: bench_allreduce [--world N] [--sizes-mb 1,16,128] [--chunk-kb 1024] [--iters K]; driven by bench_allreduce.sh. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "worker/collective.h"

#define MAXW 16
#define EPLEN 256

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int iters_for(size_t bytes, int iters) {
    if (iters > 0) return iters;
    return bytes <= (4u << 20) ? 50 : bytes <= (32u << 20) ? 10 : 4;
}

/* One rank: binds, reports its endpoint on wfd, reads all endpoints from rfd, runs every size. */
static int bench_rank(int rank, int world, const size_t *sizes, int nsizes, size_t chunk, int iters, int rfd,
                      int wfd) {
    int rc = 0;
    comm_config_t cfg = {.rank = rank, .world = world, .generation = 1, .job_id = "bench", .chunk_bytes = chunk};
    comm_t *c = NULL;
    const char *ep = NULL, *peers[MAXW];
    char eps[MAXW][EPLEN], mine[EPLEN];
    float *buf = NULL;
    size_t maxn = 0;
    for (int i = 0; i < nsizes; i++)
        if (sizes[i] / sizeof(float) > maxn) maxn = sizes[i] / sizeof(float);
    buf = malloc(maxn * sizeof *buf);
    ALLOC_CHECK_GOTO(buf);
    for (size_t i = 0; i < maxn; i++) buf[i] = (float)((i * 7 + (size_t)rank) % 13) * 0.01f;
    RC_CHECK_GOTO(comm_create(&cfg, &c));
    RC_CHECK_GOTO(comm_bind(c, &ep));
    memset(mine, 0, sizeof mine);
    snprintf(mine, sizeof mine, "%s", ep);
    CHECK_GOTO(write(wfd, mine, EPLEN) == EPLEN, LLAVA_EIO, "write endpoint");
    CHECK_GOTO(read(rfd, eps, sizeof(char[EPLEN]) * (size_t)world) == (ssize_t)(EPLEN * world), LLAVA_EIO,
               "read endpoints");
    for (int i = 0; i < world; i++) peers[i] = eps[i];
    RC_CHECK_GOTO(comm_connect(c, peers, world));
    uint64_t step = 0;
    for (int si = 0; si < nsizes; si++) {
        size_t n = sizes[si] / sizeof(float);
        int k = iters_for(sizes[si], iters);
        double t0, t1;
        /* warm-up (connections, page faults) and a start barrier */
        RC_CHECK_GOTO(comm_allreduce(c, buf, n, step++, 30000, NULL, NULL));
        RC_CHECK_GOTO(comm_allreduce(c, buf, n, step++, 30000, NULL, NULL));
        t0 = now_s();
        for (int it = 0; it < k; it++) RC_CHECK_GOTO(comm_allreduce(c, buf, n, step++, 30000, NULL, NULL));
        t1 = now_s();
        if (rank == 0) {
            double per = (t1 - t0) / k;
            printf("result impl=ring world=%d bytes=%zu chunk_kb=%zu iters=%d ms=%.3f algbw_GBps=%.3f\n", world,
                   n * sizeof(float), chunk >> 10, k, per * 1e3, (double)(n * sizeof(float)) / per / 1e9);
            fflush(stdout);
        }
        for (size_t i = 0; i < n; i++) buf[i] = (float)((i * 7 + (size_t)rank) % 13) * 0.01f; /* keep finite */
    }
cleanup:
    comm_destroy(&c);
    free(buf);
    return rc;
}

int main(int argc, char **argv) {
    int world = 2, iters = 0, nsizes = 0, failed = 0;
    size_t chunk = (size_t)1 << 20, sizes[16];
    const char *sizes_mb = "1,16,128";
    int to[MAXW][2], from[MAXW][2];
    pid_t pids[MAXW];
    char eps[MAXW][EPLEN];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--world") && i + 1 < argc) world = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--sizes-mb") && i + 1 < argc) sizes_mb = argv[++i];
        else if (!strcmp(argv[i], "--chunk-kb") && i + 1 < argc) chunk = (size_t)atol(argv[++i]) << 10;
        else if (!strcmp(argv[i], "--iters") && i + 1 < argc) iters = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--world N] [--sizes-mb 1,16,128] [--chunk-kb 1024] [--iters K]\n", argv[0]);
            return 2;
        }
    }
    if (world < 1 || world > MAXW) {
        fprintf(stderr, "--world must be 1..%d\n", MAXW);
        return 2;
    }
    for (const char *p = sizes_mb; *p && nsizes < 16;) {
        char *end;
        double mb = strtod(p, &end);
        if (end == p) break;
        sizes[nsizes++] = (size_t)(mb * 1048576.0) / sizeof(float) * sizeof(float);
        p = *end == ',' ? end + 1 : end;
    }
    log_set_role("bench_allreduce", -1);
    for (int r = 0; r < world; r++) {
        if (pipe(to[r]) || pipe(from[r])) {
            perror("pipe");
            return 1;
        }
        pids[r] = fork();
        if (pids[r] < 0) {
            perror("fork");
            return 1;
        }
        if (pids[r] == 0) {
            log_set_role("bench_allreduce", r);
            _exit(bench_rank(r, world, sizes, nsizes, chunk, iters, to[r][0], from[r][1]) ? 1 : 0);
        }
        close(to[r][0]);
        close(from[r][1]);
    }
    memset(eps, 0, sizeof eps);
    for (int r = 0; r < world; r++)
        if (read(from[r][0], eps[r], EPLEN) != EPLEN) failed = 1;
    for (int r = 0; r < world; r++) {
        if (!failed && write(to[r][1], eps, (size_t)EPLEN * (size_t)world) != (ssize_t)(EPLEN * world)) failed = 1;
        close(to[r][1]);
        close(from[r][0]);
    }
    for (int r = 0; r < world; r++) {
        int st = 0;
        waitpid(pids[r], &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) failed = 1;
    }
    if (failed) fprintf(stderr, "bench_allreduce: a rank failed\n");
    return failed;
}
