/* Error strings and the line logger (time, host, pid, role[rank], level, file:line).
 * Tested by tests/unit/test_err.c. */
#include "common/err.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

const char *err_str(int rc) {
    switch (rc) {
    case LLAVA_OK: return "ok";
    case LLAVA_ENOMEM: return "out of memory";
    case LLAVA_EIO: return "I/O error";
    case LLAVA_EFORMAT: return "malformed input";
    case LLAVA_EINVAL: return "invalid argument";
    case LLAVA_ENOTFOUND: return "not found";
    case LLAVA_ESHAPE: return "wrong shape or dtype";
    case LLAVA_ECONFIG: return "invalid configuration";
    case LLAVA_EDB: return "database error";
    case LLAVA_ENET: return "network error";
    case LLAVA_ECUDA: return "CUDA error";
    case LLAVA_ETIMEOUT: return "timed out";
    case LLAVA_EABORTED: return "aborted";
    case LLAVA_ESTALE: return "stale message";
    case LLAVA_EUNSUPPORTED: return "unsupported";
    case LLAVA_ENOSPACE: return "no space left on device";
    case LLAVA_EMPI: return "MPI error";
    default: return "unknown error";
    }
}

/* The logger is process-wide configuration set once from main (role, rank, level); the mutex keeps lines whole. */
static struct {
    pthread_mutex_t mu;
    char role[32];
    int rank;
    int level; /* -1: not yet read from the environment */
    char host[64];
} g_log = {PTHREAD_MUTEX_INITIALIZER, "llava", -1, -1, ""};

static int log_level_from_env(void) {
    const char *s = getenv("LLAVA_LOG");
    if (!s) return LOG_INFO;
    if (!strcasecmp(s, "debug")) return LOG_DEBUG;
    if (!strcasecmp(s, "warn")) return LOG_WARN;
    if (!strcasecmp(s, "error")) return LOG_ERROR;
    if (!strcasecmp(s, "none")) return LOG_NONE;
    return LOG_INFO;
}

void log_set_role(const char *role, int rank) {
    pthread_mutex_lock(&g_log.mu);
    snprintf(g_log.role, sizeof g_log.role, "%s", role ? role : "llava");
    g_log.rank = rank;
    pthread_mutex_unlock(&g_log.mu);
}

void log_set_level(log_level_t level) {
    pthread_mutex_lock(&g_log.mu);
    g_log.level = (int)level;
    pthread_mutex_unlock(&g_log.mu);
}

log_level_t log_get_level(void) {
    pthread_mutex_lock(&g_log.mu);
    if (g_log.level < 0) g_log.level = log_level_from_env();
    int l = g_log.level;
    pthread_mutex_unlock(&g_log.mu);
    return (log_level_t)l;
}

static const char *level_name(log_level_t l) {
    static const char *names[] = {"DEBUG", "INFO", "WARN", "ERROR", "NONE"};
    return names[l];
}

void log_vwrite(log_level_t level, const char *file, int line, const char *fmt, va_list ap) {
    if (level < log_get_level()) return;
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    localtime_r(&tv.tv_sec, &tm);
    char ts[32];
    strftime(ts, sizeof ts, "%Y-%m-%d %H:%M:%S", &tm);
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    pthread_mutex_lock(&g_log.mu);
    if (!g_log.host[0] && gethostname(g_log.host, sizeof g_log.host - 1) != 0) strcpy(g_log.host, "?");
    char rank[16] = "";
    if (g_log.rank >= 0) snprintf(rank, sizeof rank, "[%d]", g_log.rank);
    fprintf(stderr, "%s.%03d %s %d %s%s %s %s:%d: %s\n", ts, (int)(tv.tv_usec / 1000), g_log.host, (int)getpid(),
            g_log.role, rank, level_name(level), base, line, msg);
    fflush(stderr);
    pthread_mutex_unlock(&g_log.mu);
}

void log_write(log_level_t level, const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_vwrite(level, file, line, fmt, ap);
    va_end(ap);
}
