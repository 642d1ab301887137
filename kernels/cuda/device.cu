// Device discovery for the CUDA backend: how many GPUs, and a one-line description of each.
// Tests call cuda_device_count() and exit 77 (skip) when it is 0.
#include <stdio.h>

#include <nccl.h>

#include "kernels/cuda/cuda_check.h"

extern "C" int cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError(); // clear the sticky "no driver" error
        return 0;
    }
    return n;
}

extern "C" int cuda_device_memory(int dev, double *bytes) {
    int rc = 0;
    cudaDeviceProp p;
    CUDA_CHECK_GOTO(cudaGetDeviceProperties(&p, dev));
    *bytes = (double)p.totalGlobalMem;
cleanup:
    return rc;
}

extern "C" int cuda_device_describe(int dev, char *buf, size_t len) {
    int rc = 0;
    cudaDeviceProp p;
    int nccl = 0;
    CUDA_CHECK_GOTO(cudaGetDeviceProperties(&p, dev));
    ncclGetVersion(&nccl);
    snprintf(buf, len, "cuda:%d %s, %.1f GiB, sm_%d%d, %d SMs, NCCL %d", dev, p.name,
             (double)p.totalGlobalMem / (1 << 30), p.major, p.minor, p.multiProcessorCount, nccl);
cleanup:
    return rc;
}
