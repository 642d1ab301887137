/* Error codes, logging and per-library check wrappers used by every part of the project.
 * Functions return int: 0 on success, a negative LLAVA_E* code on failure; err_str() names it.
 * Tested by tests/unit/test_err.c. */
#ifndef LLAVA_ERR_H
#define LLAVA_ERR_H

#include <stdarg.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Negative codes in a reserved range, as LMDB does (MDB_KEYEXIST = -30799 ...). */
enum {
    LLAVA_OK = 0,
    LLAVA_EBASE = -31000,
    LLAVA_ENOMEM = -31000,    /* allocation failed */
    LLAVA_EIO = -30999,       /* read/write/open failed (errno is logged) */
    LLAVA_EFORMAT = -30998,   /* a file or message is malformed */
    LLAVA_EINVAL = -30997,    /* a caller passed a bad argument */
    LLAVA_ENOTFOUND = -30996, /* a named thing (tensor, key, record, file) does not exist */
    LLAVA_ESHAPE = -30995,    /* a tensor has the wrong shape or dtype */
    LLAVA_ECONFIG = -30994,   /* a job spec or config file is invalid */
    LLAVA_EDB = -30993,       /* LMDB returned an error */
    LLAVA_ENET = -30992,      /* ZeroMQ returned an error */
    LLAVA_ECUDA = -30991,     /* CUDA/cuBLAS/NCCL returned an error */
    LLAVA_ETIMEOUT = -30990,  /* a deadline passed */
    LLAVA_EABORTED = -30989,  /* the operation was cancelled (generation change, shutdown) */
    LLAVA_ESTALE = -30988,    /* a message from an older generation / job / step */
    LLAVA_EUNSUPPORTED = -30987, /* valid input this build does not support */
    LLAVA_ENOSPACE = -30986,  /* disk full */
    LLAVA_EMPI = -30985,      /* MPI returned an error */
    LLAVA_ELAST = -30985
};

/** Returns a static description of rc (never NULL; "unknown error" for codes outside the range). */
const char *err_str(int rc);

typedef enum { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3, LOG_NONE = 4 } log_level_t;

/** Sets the process's role shown on every log line ("coordinator", "worker", "llava-data" ...) and rank (-1: none).
 *  Call once from main; the logger keeps a copy. */
void log_set_role(const char *role, int rank);
/** Sets the minimum level printed (default LOG_INFO; env LLAVA_LOG=debug|info|warn|error overrides at first use). */
void log_set_level(log_level_t level);
log_level_t log_get_level(void);

/** Prints one line to stderr: time, host, pid, role[rank], LEVEL, file:line, message. Thread-safe. */
void log_write(log_level_t level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void log_vwrite(log_level_t level, const char *file, int line, const char *fmt, va_list ap);

#define LOG_D(...) log_write(LOG_DEBUG, __FILE__, __LINE__, __VA_ARGS__)
#define LOG_I(...) log_write(LOG_INFO, __FILE__, __LINE__, __VA_ARGS__)
#define LOG_W(...) log_write(LOG_WARN, __FILE__, __LINE__, __VA_ARGS__)
#define LOG_E(...) log_write(LOG_ERROR, __FILE__, __LINE__, __VA_ARGS__)

/* Check wrappers: log the expression once, where the error starts, set rc and jump to cleanup.
 * Each function that uses them declares `int rc` and a `cleanup:` label. */
#define CHECK_GOTO(cond, code, ...)                                                    \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            LOG_E(__VA_ARGS__);                                                        \
            rc = (code);                                                               \
            goto cleanup;                                                              \
        }                                                                              \
    } while (0)

/* Our own functions: propagate a failure without logging again. */
#define RC_CHECK_GOTO(expr)                                                            \
    do {                                                                               \
        int rc_ = (expr);                                                              \
        if (rc_ != 0) {                                                                \
            rc = rc_;                                                                  \
            goto cleanup;                                                              \
        }                                                                              \
    } while (0)

/* malloc/calloc: NULL means out of memory. */
#define ALLOC_CHECK_GOTO(ptr)                                                          \
    do {                                                                               \
        if ((ptr) == NULL) {                                                           \
            LOG_E("out of memory: %s", #ptr);                                          \
            rc = LLAVA_ENOMEM;                                                         \
            goto cleanup;                                                              \
        }                                                                              \
    } while (0)

/* LMDB: returns 0 on success or an MDB_* / errno code; mdb_strerror names it. */
#define MDB_CHECK_GOTO(expr)                                                           \
    do {                                                                               \
        int mrc_ = (expr);                                                             \
        if (mrc_ != 0) {                                                               \
            LOG_E("%s: %s", #expr, mdb_strerror(mrc_));                                \
            rc = (mrc_ == ENOSPC || mrc_ == MDB_MAP_FULL) ? LLAVA_ENOSPACE : LLAVA_EDB;  \
            goto cleanup;                                                              \
        }                                                                              \
    } while (0)

/* ZeroMQ: returns -1 and sets errno (zmq_errno) on failure. */
#define ZMQ_CHECK_GOTO(expr)                                                           \
    do {                                                                               \
        if ((expr) == -1) {                                                            \
            LOG_E("%s: %s", #expr, zmq_strerror(zmq_errno()));                          \
            rc = LLAVA_ENET;                                                           \
            goto cleanup;                                                              \
        }                                                                              \
    } while (0)

/* libyaml: returns 1 for success, 0 for failure. */
#define YAML_CHECK_GOTO(expr, parser)                                                  \
    do {                                                                               \
        if (!(expr)) {                                                                 \
            LOG_E("%s: %s", #expr, (parser)->problem ? (parser)->problem : "libyaml error"); \
            rc = LLAVA_ECONFIG;                                                        \
            goto cleanup;                                                              \
        }                                                                              \
    } while (0)

/* POSIX calls returning -1 and errno. */
#define SYS_CHECK_GOTO(expr, what)                                                     \
    do {                                                                               \
        if ((expr) < 0) {                                                              \
            LOG_E("%s: %s: %s", #expr, (what), strerror(errno));                       \
            rc = (errno == ENOSPC || errno == EDQUOT) ? LLAVA_ENOSPACE : LLAVA_EIO;     \
            goto cleanup;                                                              \
        }                                                                              \
    } while (0)

#ifdef __cplusplus
}
#endif

#endif
