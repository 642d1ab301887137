/* Tests common/fileio: whole-file reads, empty files, missing files. Run: ctest -R test_fileio */
#include "common/err.h"
#include "common/fileio.h"
#include "tests/test.h"

int main(void) {
    char path[600], *buf = NULL;
    size_t len = 99;
    snprintf(path, sizeof path, "%s/f.bin", test_tmpdir());
    FILE *f = fopen(path, "wb");
    fwrite("ab\0cd", 1, 5, f);
    fclose(f);
    CHECK_RC(file_read_all(path, &buf, &len), 0);
    CHECK_EQ_INT(len, 5);
    CHECK(buf && memcmp(buf, "ab\0cd", 6) == 0); /* NUL-terminated after the data */
    free(buf);
    f = fopen(path, "wb");
    fclose(f);
    CHECK_RC(file_read_all(path, &buf, &len), 0);
    CHECK_EQ_INT(len, 0);
    CHECK(buf && buf[0] == 0);
    free(buf);
    CHECK_RC(file_read_all("/nonexistent/x", &buf, &len), LLAVA_ENOTFOUND);
    CHECK(buf == NULL);
    CHECK_RC(file_read_all(test_tmpdir(), &buf, NULL), LLAVA_EIO); /* a directory */
    return test_finish();
}
