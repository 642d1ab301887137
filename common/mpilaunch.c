/* Start under Open MPI (see mpilaunch.h): endpoint broadcast, local worker index, MPI_Comm_spawn of replacements.
 * Without LLAVA_HAVE_MPI only the environment probe and the bind-address helper are real; the rest report that
 * the build has no MPI. Tested by tests/integration/test_mpi_launch.c. */
#include "common/mpilaunch.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/err.h"

#ifdef LLAVA_HAVE_MPI
#include <mpi.h>
#include <time.h>
#endif

#define MPILAUNCH_EP_MAX 256

int mpilaunch_under_mpirun(void) { return getenv("OMPI_COMM_WORLD_SIZE") != NULL || getenv("PMIX_RANK") != NULL; }

static int is_loopback_ep(const char *ep) {
    return strstr(ep, "://127.") != NULL || strstr(ep, "://localhost:") != NULL || strstr(ep, "://[::1]") != NULL;
}

/* The local IPv4 address of the route to the coordinator: a UDP socket connected to it (no packet is sent). */
int mpilaunch_bind_host(const char *coordinator_ep, char *out, size_t len) {
    int rc = 0, fd = -1;
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_DGRAM}, *res = NULL;
    if (is_loopback_ep(coordinator_ep)) {
        snprintf(out, len, "127.0.0.1");
        return 0;
    }
    char host[256] = "", port[16] = "";
    const char *h = strstr(coordinator_ep, "://"), *colon = strrchr(coordinator_ep, ':');
    CHECK_GOTO(h && colon && colon > h + 3, LLAVA_EINVAL, "cannot parse coordinator endpoint '%s'", coordinator_ep);
    snprintf(host, sizeof host, "%.*s", (int)(colon - h - 3), h + 3);
    snprintf(port, sizeof port, "%s", colon + 1);
    int grc = getaddrinfo(host, port, &hints, &res);
    CHECK_GOTO(grc == 0 && res, LLAVA_ENOTFOUND, "cannot resolve the coordinator's host '%s': %s; pass --bind-host",
               host, gai_strerror(grc));
    fd = socket(AF_INET, SOCK_DGRAM, 0);
    SYS_CHECK_GOTO(fd, "socket for the route to the coordinator");
    SYS_CHECK_GOTO(connect(fd, res->ai_addr, res->ai_addrlen), host);
    struct sockaddr_in local;
    socklen_t sl = sizeof local;
    SYS_CHECK_GOTO(getsockname(fd, (struct sockaddr *)&local, &sl), host);
    CHECK_GOTO(inet_ntop(AF_INET, &local.sin_addr, out, (socklen_t)len), LLAVA_EINVAL, "address too long");
    if (strncmp(out, "127.", 4) == 0)
        LOG_W("the coordinator's host '%s' is reached over loopback (%s): workers on other hosts cannot reach this "
              "one; make the host name resolve to a routable address or pass --bind-host", host, out);
cleanup:
    if (fd >= 0) close(fd);
    if (res) freeaddrinfo(res);
    return rc == LLAVA_EIO ? LLAVA_ENOTFOUND : rc;
}

#ifdef LLAVA_HAVE_MPI

/* MPI calls return MPI_SUCCESS or an error class; name it once, where it starts. */
#define MPI_CHECK_GOTO(expr)                                                           \
    do {                                                                               \
        int mrc_ = (expr);                                                             \
        if (mrc_ != MPI_SUCCESS) {                                                     \
            char msg_[MPI_MAX_ERROR_STRING];                                           \
            int mlen_ = 0;                                                             \
            MPI_Error_string(mrc_, msg_, &mlen_);                                      \
            LOG_E("%s: %s", #expr, msg_);                                              \
            rc = LLAVA_EMPI;                                                           \
            goto cleanup;                                                              \
        }                                                                              \
    } while (0)

int mpilaunch_built(void) { return 1; }

int mpilaunch_init(int *argc, char ***argv, mpilaunch_t *ml) {
    int rc = 0;
    memset(ml, 0, sizeof *ml);
    MPI_CHECK_GOTO(MPI_Init(argc, argv));
    /* a failed call must come back to us as a code, never abort the job behind our back */
    MPI_CHECK_GOTO(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    MPI_CHECK_GOTO(MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN));
    MPI_CHECK_GOTO(MPI_Comm_rank(MPI_COMM_WORLD, &ml->rank));
    MPI_CHECK_GOTO(MPI_Comm_size(MPI_COMM_WORLD, &ml->size));
    MPI_Comm parent = MPI_COMM_NULL;
    MPI_CHECK_GOTO(MPI_Comm_get_parent(&parent));
    if (parent != MPI_COMM_NULL) {
        ml->spawned = 1;
        MPI_CHECK_GOTO(MPI_Comm_set_errhandler(parent, MPI_ERRORS_RETURN));
        MPI_CHECK_GOTO(MPI_Comm_disconnect(&parent)); /* pairs with the parent's disconnect in mpilaunch_spawn */
    }
cleanup:
    return rc;
}

/* Each process's index among the workers of its node, in rank order (rank 0, the coordinator, counts 0). */
static int exchange_local_index(int is_worker, int *index) {
    int rc = 0;
    MPI_Comm node = MPI_COMM_NULL;
    int rank = 0;
    MPI_CHECK_GOTO(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    MPI_CHECK_GOTO(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node));
    int before = 0, node_rank = 0;
    MPI_CHECK_GOTO(MPI_Exscan(&is_worker, &before, 1, MPI_INT, MPI_SUM, node));
    MPI_CHECK_GOTO(MPI_Comm_rank(node, &node_rank));
    *index = node_rank == 0 ? 0 : before; /* Exscan leaves the first rank's result undefined */
cleanup:
    if (node != MPI_COMM_NULL) MPI_Comm_free(&node);
    return rc;
}

int mpilaunch_publish(const mpilaunch_t *ml, const char *endpoint, char *published, size_t len) {
    int rc = 0;
    char buf[MPILAUNCH_EP_MAX] = "";
    if (ml->rank != 0 || ml->spawned) {
        LOG_E("the coordinator must be rank 0 of the MPI job (it is rank %d%s)", ml->rank,
              ml->spawned ? ", spawned" : "");
        return LLAVA_EINVAL;
    }
    const char *port = strrchr(endpoint, ':');
    if (strstr(endpoint, "://0.0.0.0:") || strstr(endpoint, "://*:")) {
        char host[200] = "";
        if (gethostname(host, sizeof host - 1) != 0) snprintf(host, sizeof host, "localhost");
        snprintf(buf, sizeof buf, "tcp://%s%s", host, port ? port : "");
    } else snprintf(buf, sizeof buf, "%s", endpoint);
    CHECK_GOTO(strlen(buf) < len, LLAVA_EINVAL, "endpoint %s too long", buf);
    MPI_CHECK_GOTO(MPI_Bcast(buf, MPILAUNCH_EP_MAX, MPI_CHAR, 0, MPI_COMM_WORLD));
    int idx = 0;
    RC_CHECK_GOTO(exchange_local_index(0, &idx));
    snprintf(published, len, "%s", buf);
    LOG_I("MPI: published endpoint %s to %d worker rank(s)", buf, ml->size - 1);
cleanup:
    return rc;
}

int mpilaunch_receive(mpilaunch_t *ml, char *endpoint, size_t len) {
    int rc = 0;
    char buf[MPILAUNCH_EP_MAX] = "";
    if (ml->rank == 0 || ml->spawned) {
        LOG_E("a worker receives the endpoint as rank > 0 of the first launch (rank %d%s); rank 0 is the coordinator",
              ml->rank, ml->spawned ? ", spawned: pass --coordinator" : "");
        return LLAVA_EINVAL;
    }
    MPI_CHECK_GOTO(MPI_Bcast(buf, MPILAUNCH_EP_MAX, MPI_CHAR, 0, MPI_COMM_WORLD));
    buf[MPILAUNCH_EP_MAX - 1] = 0;
    RC_CHECK_GOTO(exchange_local_index(1, &ml->local_index));
    CHECK_GOTO(strlen(buf) < len && buf[0], LLAVA_EINVAL, "received an empty or too long endpoint");
    snprintf(endpoint, len, "%s", buf);
cleanup:
    return rc;
}

int mpilaunch_spawn(const char *exe, char **args, const char *host, double *ms) {
    int rc = 0, errcode = MPI_SUCCESS;
    MPI_Info info = MPI_INFO_NULL;
    MPI_Comm child = MPI_COMM_NULL;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    MPI_CHECK_GOTO(MPI_Info_create(&info));
    if (host && *host) MPI_CHECK_GOTO(MPI_Info_set(info, "host", host));
    MPI_CHECK_GOTO(MPI_Comm_spawn(exe, args, 1, info, 0, MPI_COMM_SELF, &child, &errcode));
    MPI_CHECK_GOTO(errcode);
    MPI_CHECK_GOTO(MPI_Comm_set_errhandler(child, MPI_ERRORS_RETURN));
    MPI_CHECK_GOTO(MPI_Comm_disconnect(&child));
cleanup:
    clock_gettime(CLOCK_MONOTONIC, &t1);
    *ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-6;
    if (info != MPI_INFO_NULL) MPI_Info_free(&info);
    return rc;
}

/* The exit code for the finalize watchdog: a signal handler can read nothing else. */
static volatile sig_atomic_t g_finalize_exit_code;

static void finalize_timed_out(int sig) {
    (void)sig;
    static const char msg[] = "mpilaunch: MPI_Finalize did not return within 10 s (a rank of the job died?); "
                              "exiting without it\n";
    ssize_t n = write(2, msg, sizeof msg - 1);
    (void)n;
    _exit(g_finalize_exit_code);
}

int mpilaunch_finalize(int exit_code) {
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (!init || fin) return exit_code;
    g_finalize_exit_code = exit_code;
    struct sigaction sa = {0};
    sa.sa_handler = finalize_timed_out;
    sigaction(SIGALRM, &sa, NULL);
    alarm(MPILAUNCH_FINALIZE_S);
    int rc = MPI_Finalize();
    alarm(0);
    LOG_I("MPI_Finalize returned %d; exiting", rc); /* one line per rank: every rank stopped cleanly */
    return exit_code;
}

#else /* no MPI in this build */

int mpilaunch_built(void) { return 0; }

static int no_mpi(void) {
    LOG_E("this build has no MPI (Open MPI was not found at configure time): install libopenmpi-dev and rebuild");
    return LLAVA_EUNSUPPORTED;
}

int mpilaunch_init(int *argc, char ***argv, mpilaunch_t *ml) {
    (void)argc, (void)argv;
    memset(ml, 0, sizeof *ml);
    return no_mpi();
}

int mpilaunch_publish(const mpilaunch_t *ml, const char *endpoint, char *published, size_t len) {
    (void)ml, (void)endpoint, (void)published, (void)len;
    return no_mpi();
}

int mpilaunch_receive(mpilaunch_t *ml, char *endpoint, size_t len) {
    (void)ml, (void)endpoint, (void)len;
    return no_mpi();
}

int mpilaunch_spawn(const char *exe, char **args, const char *host, double *ms) {
    (void)exe, (void)args, (void)host;
    *ms = 0;
    return no_mpi();
}

int mpilaunch_finalize(int exit_code) { return exit_code; }

#endif
