/* Small file helpers shared by the parts: reading a whole file into memory.
 * Tested by tests/unit/test_fileio.c. */
#ifndef LLAVA_FILEIO_H
#define LLAVA_FILEIO_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Reads the whole file at path into a malloc'd, NUL-terminated buffer (*out, caller frees; *len without the NUL).
 *  Logs nothing (callers name the file in their own message). Returns 0, LLAVA_ENOTFOUND (no such file),
 *  LLAVA_EIO (cannot read) or LLAVA_ENOMEM. On failure *out is NULL. */
int file_read_all(const char *path, char **out, size_t *len);

#ifdef __cplusplus
}
#endif

#endif
