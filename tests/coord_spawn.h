/* Starting a llava-coordinator from a test: fork + exec with its stderr appended to a log file, then wait (up to
 * 10 s) for the endpoint it writes to --endpoint-file. Used by tests/cluster_harness.h (cluster tests),
 * tests/integration/test_coord_restart.c and tests/integration/test_coord_drain.c. */
#ifndef LLAVA_TESTS_COORD_SPAWN_H
#define LLAVA_TESTS_COORD_SPAWN_H

#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

/* args: the coordinator's arguments (NULL-terminated, at most 30), which must name --endpoint-file epfile.
 * Returns the child's pid (-1 if fork failed); ep is "" when no endpoint appeared in time. */
static inline pid_t coord_spawn(const char *bin, const char *const args[], const char *epfile, const char *logp,
                                char *ep, size_t eplen) {
    char exe[1100], *argv[32];
    int n = 0;
    snprintf(exe, sizeof exe, "%s/llava-coordinator", bin);
    argv[n++] = exe;
    for (int i = 0; args[i] && n < 31; i++) argv[n++] = (char *)args[i];
    argv[n] = NULL;
    unlink(epfile);
    pid_t pid = fork();
    if (pid == 0) {
        FILE *lf = freopen(logp, "a", stderr); /* the daemon's log, printed when a check fails */
        (void)lf;
        execv(exe, argv);
        _exit(127);
    }
    ep[0] = 0;
    for (int i = 0; pid > 0 && i < 200 && !ep[0]; i++) {
        usleep(50000);
        FILE *f = fopen(epfile, "r");
        if (f) {
            if (!fgets(ep, (int)eplen, f)) ep[0] = 0;
            fclose(f);
            ep[strcspn(ep, "\n")] = 0;
        }
    }
    return pid;
}

#endif
