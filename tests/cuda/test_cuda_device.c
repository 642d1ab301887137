/* Checks that the CUDA backend sees a device and can describe it; skips (77) where no GPU exists.
 * Run: ctest -R test_cuda_device */
#include "kernels/cuda/cuda_check.h"
#include "tests/test.h"

int main(void) {
    int n = cuda_device_count();
    if (n == 0) TEST_SKIP("no CUDA device");
    for (int i = 0; i < n; i++) {
        char buf[256];
        CHECK_RC(cuda_device_describe(i, buf, sizeof buf), 0);
        printf("%s\n", buf);
        CHECK(strstr(buf, "sm_") != NULL);
    }
    return test_finish();
}
