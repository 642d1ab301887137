/* Error-check wrappers for CUDA, cuBLAS and NCCL calls, in the style of common/err.h: log file:line and the
 * expression once, set rc = LLAVA_ECUDA and jump to cleanup. Usable from .cu and .c files. */
#ifndef LLAVA_CUDA_CHECK_H
#define LLAVA_CUDA_CHECK_H

#include <cuda_runtime.h>

#include "common/err.h"

#define CUDA_CHECK_GOTO(expr)                                                          \
    do {                                                                               \
        cudaError_t ce_ = (expr);                                                      \
        if (ce_ != cudaSuccess) {                                                      \
            LOG_E("%s: %s", #expr, cudaGetErrorString(ce_));                            \
            rc = LLAVA_ECUDA;                                                          \
            goto cleanup;                                                              \
        }                                                                              \
    } while (0)

#define CUBLAS_CHECK_GOTO(expr)                                                        \
    do {                                                                               \
        int cb_ = (int)(expr);                                                         \
        if (cb_ != 0) {                                                                \
            LOG_E("%s: cuBLAS status %d", #expr, cb_);                                  \
            rc = LLAVA_ECUDA;                                                          \
            goto cleanup;                                                              \
        }                                                                              \
    } while (0)

#define NCCL_CHECK_GOTO(expr)                                                          \
    do {                                                                               \
        ncclResult_t nr_ = (expr);                                                     \
        if (nr_ != ncclSuccess && nr_ != ncclInProgress) {                             \
            LOG_E("%s: %s", #expr, ncclGetErrorString(nr_));                            \
            rc = LLAVA_ECUDA;                                                          \
            goto cleanup;                                                              \
        }                                                                              \
    } while (0)

/* After a kernel launch: catches bad launch configurations at the call site. */
#define CUDA_LAUNCH_CHECK_GOTO() CUDA_CHECK_GOTO(cudaGetLastError())

#ifdef __cplusplus
extern "C" {
#endif
/** Number of usable CUDA devices (0 when there is no driver or no device; never fails). */
int cuda_device_count(void);
/** Logs name, memory and compute capability of device `dev`. Returns 0 or LLAVA_ECUDA. */
int cuda_device_describe(int dev, char *buf, size_t len);
/** *bytes = total memory of device `dev` (cudaDeviceProp.totalGlobalMem). Returns 0 or LLAVA_ECUDA. */
int cuda_device_memory(int dev, double *bytes);
#ifdef __cplusplus
}
#endif

#endif
