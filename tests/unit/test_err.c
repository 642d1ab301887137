/* Tests common/err: every code has a distinct name, unknown codes are named as such, the logger formats lines.
 * Run: ctest -R test_err */
#include "common/err.h"
#include "tests/test.h"

#include <unistd.h>

static int fails_with_cleanup(int *cleaned) {
    int rc = 0;
    char *p = malloc(8);
    ALLOC_CHECK_GOTO(p);
    CHECK_GOTO(0, LLAVA_EFORMAT, "expected failure in test: %d", 42);
    rc = 1; /* not reached */
cleanup:
    free(p);
    *cleaned = 1;
    return rc;
}

int main(void) {
    for (int a = LLAVA_EBASE; a <= LLAVA_ELAST; a++) {
        CHECKF(strcmp(err_str(a), "unknown error") != 0, "code %d has no name", a);
        for (int b = a + 1; b <= LLAVA_ELAST; b++) CHECKF(strcmp(err_str(a), err_str(b)) != 0, "%d == %d", a, b);
    }
    CHECK(strcmp(err_str(-1), "unknown error") == 0);
    CHECK(strcmp(err_str(0), "ok") == 0);

    /* The logger writes host, pid, role[rank], level and file:line. Capture stderr through a pipe. */
    int fds[2];
    CHECK(pipe(fds) == 0);
    int saved = dup(2);
    dup2(fds[1], 2);
    log_set_role("tester", 3);
    log_set_level(LOG_INFO);
    LOG_D("hidden %d", 1);
    LOG_W("visible %d", 2);
    int cleaned = 0;
    int rc = fails_with_cleanup(&cleaned);
    fflush(stderr);
    dup2(saved, 2);
    close(fds[1]);
    char buf[4096] = {0};
    ssize_t n = read(fds[0], buf, sizeof buf - 1);
    close(fds[0]);
    CHECK(n > 0);
    CHECK(strstr(buf, "hidden") == NULL);
    CHECK(strstr(buf, "tester[3] WARN test_err.c:") != NULL);
    CHECK(strstr(buf, "visible 2") != NULL);
    CHECK(strstr(buf, "ERROR test_err.c:") != NULL);
    CHECK(strstr(buf, "expected failure in test: 42") != NULL);
    char pid[32];
    snprintf(pid, sizeof pid, " %d ", (int)getpid());
    CHECK(strstr(buf, pid) != NULL);
    CHECK_EQ_INT(rc, LLAVA_EFORMAT);
    CHECK_EQ_INT(cleaned, 1);
    return test_finish();
}
