/* A tiny test harness: CHECK macros that count failures, approximate comparisons, fixture paths.
 * Every test main ends with `return test_finish();`, which exits non-zero on any failure. */
#ifndef LLAVA_TEST_H
#define LLAVA_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_failures, t_checks;

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        t_checks++;                                                                            \
        if (!(cond)) {                                                                         \
            t_failures++;                                                                      \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                    \
        }                                                                                      \
    } while (0)

#define CHECKF(cond, ...)                                                                      \
    do {                                                                                       \
        t_checks++;                                                                            \
        if (!(cond)) {                                                                         \
            t_failures++;                                                                      \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                    \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fprintf(stderr, "\n");                                                             \
        }                                                                                      \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                     \
    CHECKF((long long)(a) == (long long)(b), "%s = %lld, expected %lld", #a, (long long)(a), (long long)(b))

#define CHECK_RC(expr, want)                                                                   \
    do {                                                                                       \
        int rc_t_ = (expr);                                                                    \
        CHECKF(rc_t_ == (want), "%s returned %d (%s), expected %d", #expr, rc_t_, err_str(rc_t_), (want)); \
    } while (0)

/* Largest relative error max|a-b| / max(max|b|, floor) over n values; also reports where. */
static inline double t_max_rel_err(const float *a, const float *b, long n, double floor_, long *where) {
    double maxdiff = 0, maxref = floor_;
    long w = -1;
    for (long i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > maxdiff || d != d) {
            maxdiff = d;
            w = i;
        }
        if (fabs((double)b[i]) > maxref) maxref = fabs((double)b[i]);
    }
    if (where) *where = w;
    return maxdiff / maxref;
}

/* Asserts every |a-b| <= atol + rtol*|b| (NaN fails). Prints the first offender. */
static inline int t_allclose(const char *what, const float *a, const float *b, long n, double atol, double rtol) {
    for (long i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= atol + rtol * fabs((double)b[i]))) {
            fprintf(stderr, "FAIL %s: element %ld: got %.9g, want %.9g (|diff| %.3g)\n", what, i, a[i], b[i], d);
            return 0;
        }
    }
    return 1;
}

#define CHECK_CLOSE(what, a, b, n, atol, rtol) CHECK(t_allclose((what), (a), (b), (n), (atol), (rtol)))

static inline int test_finish(void) {
    if (t_failures) {
        fprintf(stderr, "%d of %d checks FAILED\n", t_failures, t_checks);
        return 1;
    }
    printf("all %d checks passed\n", t_checks);
    return t_checks > 0 ? 0 : 1; /* a test that checked nothing has no teeth */
}

/* Skips (exit 77) with a reason, e.g. a GPU test without a device. */
#define TEST_SKIP(...)                                                                         \
    do {                                                                                       \
        printf("SKIP: ");                                                                      \
        printf(__VA_ARGS__);                                                                   \
        printf("\n");                                                                          \
        exit(77);                                                                              \
    } while (0)

/* A scratch directory unique to this test process; removed by the OS tmp cleaner, not by us. */
static inline const char *test_tmpdir(void) {
    static char dir[256];
    if (!dir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/llava-test-XXXXXX", base ? base : "/tmp");
        if (!mkdtemp(dir)) {
            perror("mkdtemp");
            exit(2);
        }
    }
    return dir;
}

#endif
