/* Small file helpers (see fileio.h). Tested by tests/unit/test_fileio.c. */
#include "common/fileio.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "common/err.h"

int file_read_all(const char *path, char **out, size_t *len) {
    *out = NULL;
    if (len) *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return errno == ENOENT ? LLAVA_ENOTFOUND : LLAVA_EIO;
    int rc = LLAVA_EIO;
    char *buf = NULL;
    long n = -1;
    struct stat sb;
    if (fstat(fileno(f), &sb) == 0 && S_ISREG(sb.st_mode) && fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = malloc((size_t)n + 1);
        if (!buf) rc = LLAVA_ENOMEM;
        else if (fread(buf, 1, (size_t)n, f) == (size_t)n) rc = 0;
    }
    fclose(f);
    if (rc) {
        free(buf);
        return rc;
    }
    buf[n] = 0;
    *out = buf;
    if (len) *len = (size_t)n;
    return 0;
}
