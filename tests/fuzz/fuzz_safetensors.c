/* libFuzzer harness for st_file_open: writes the input to a temp file, opens it, reads every tensor.
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -I. tests/fuzz/fuzz_safetensors.c
 *        common/safetensors.c common/tensor.c common/err.c -lcjson -o fuzz_st && mkdir -p /tmp/corpus &&
 *        cp tests/fixtures/safetensors/python.safetensors /tmp/corpus && ./fuzz_st /tmp/corpus
 * (not built by CMake; tests/unit/test_safetensors.c runs a seeded mutation loop in CI instead). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/err.h"
#include "common/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[] = "/tmp/fuzz-st-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return 0;
    size_t off = 0;
    while (off < size) {
        ssize_t w = write(fd, data + off, size - off);
        if (w <= 0) break;
        off += (size_t)w;
    }
    close(fd);
    log_set_level(LOG_NONE);
    st_file_t *f = NULL;
    int rc = st_file_open(path, &f);
    if (rc == 0) {
        for (int i = 0; i < st_file_count(f); i++) {
            const st_tensor_t *t = st_file_at(f, i);
            int64_t n = st_tensor_numel(t);
            float *buf = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
            if (buf && st_tensor_to_f32(t, buf, n) != 0) abort();
            free(buf);
        }
    } else if (rc != LLAVA_EFORMAT) {
        abort();
    }
    st_file_close(&f);
    unlink(path);
    return 0;
}
