/* Device selection of the model backend (worker/backend.h): names it accepts and refuses, and that asking for a GPU
 * that is not there fails at once with LLAVA_EUNSUPPORTED (what makes `llava-worker --device cuda` exit instead of
 * hanging on a machine without a GPU). On a machine with a GPU, cuda:0 is accepted. */
#include <stdio.h>

#include "common/err.h"
#include "tests/test.h"
#include "worker/backend.h"
#ifdef LLAVA_HAVE_CUDA
#include "kernels/cuda/cuda_check.h"
#endif

int main(void) {
    int gpu = 7;
    CHECK_RC(backend_model_device_parse("cpu", &gpu), 0);
    CHECK_EQ_INT(gpu, -1);
    CHECK_RC(backend_model_device_parse(NULL, &gpu), 0);
    CHECK_EQ_INT(gpu, -1);
    const char *bad[] = {"gpu", "cuda:", "cuda:x", "cuda:-1", "cuda:1x", "CUDA", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) CHECK_RC(backend_model_device_parse(bad[i], &gpu), LLAVA_EINVAL);
    int ndev = 0;
#ifdef LLAVA_HAVE_CUDA
    ndev = cuda_device_count();
#endif
    printf("CUDA devices: %d\n", ndev);
    CHECK_RC(backend_model_device_parse("cuda", &gpu), ndev > 0 ? 0 : LLAVA_EUNSUPPORTED);
    CHECK_EQ_INT(gpu, ndev > 0 ? 0 : -1);
    CHECK_RC(backend_model_device_parse("cuda:1023", &gpu), ndev > 1023 ? 0 : LLAVA_EUNSUPPORTED);
    backend_t *b = NULL;
    CHECK_RC(backend_model_new_device(1, "cuda:0", &b), ndev > 0 ? 0 : LLAVA_EUNSUPPORTED);
    CHECK(ndev > 0 ? b != NULL : b == NULL);
    backend_free(&b);
    CHECK_RC(backend_model_new_device(1, "cpu", &b), 0);
    backend_free(&b);
    return test_finish();
}
