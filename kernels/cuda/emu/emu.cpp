// The CPU SIMT emulator runtime (see emu.h and run.sh).
#include "emu.h"
#include <mutex>
#include <stdio.h>
#include <cuda_runtime.h>
static std::mutex launch_mu; /* the block state below is global: one launch at a time (fake NCCL rank threads) */
thread_local dim3 threadIdx, blockIdx;
dim3 blockDim, gridDim;
thread_local int emu_tid;
float *emu_dyn_smem;
pthread_barrier_t emu_block_bar;
pthread_barrier_t emu_warp_bar[32];
double emu_slots[32][32];
struct targ { std::function<void()> *fn; int tid; dim3 b; };
static void *trun(void *p) {
    targ *a = (targ *)p;
    emu_tid = a->tid;
    blockIdx = a->b;
    threadIdx = dim3(a->tid % blockDim.x, (a->tid / blockDim.x) % blockDim.y, a->tid / (blockDim.x * blockDim.y));
    (*a->fn)();
    return NULL;
}
void emu_launch(dim3 grid, dim3 block, size_t smem, std::function<void()> fn) {
    std::lock_guard<std::mutex> hold(launch_mu);
    int nt = block.x * block.y * block.z;
    if (nt % 32 != 0 || nt > 1024) { fprintf(stderr, "emu: block of %d threads\n", nt); abort(); }
    blockDim = block; gridDim = grid;
    std::vector<float> dyn(smem / 4 + 1);
    emu_dyn_smem = dyn.data();
    pthread_barrier_init(&emu_block_bar, NULL, nt);
    for (int w = 0; w < nt / 32; w++) pthread_barrier_init(&emu_warp_bar[w], NULL, 32);
    std::vector<pthread_t> th(nt);
    std::vector<targ> args(nt);
    for (unsigned z = 0; z < grid.z; z++) for (unsigned y = 0; y < grid.y; y++) for (unsigned x = 0; x < grid.x; x++) {
        memset(emu_dyn_smem, 0xFF, dyn.size() * 4); /* garbage, as on a GPU */
        for (int t = 0; t < nt; t++) { args[t].fn = &fn; args[t].tid = t; args[t].b = dim3(x, y, z);
            if (pthread_create(&th[t], NULL, trun, &args[t])) { perror("pthread_create"); abort(); } }
        for (int t = 0; t < nt; t++) pthread_join(th[t], NULL);
    }
    pthread_barrier_destroy(&emu_block_bar);
    for (int w = 0; w < nt / 32; w++) pthread_barrier_destroy(&emu_warp_bar[w]);
}
extern "C" {
cudaError_t cudaMalloc(void **p, size_t n) { *p = malloc(n ? n : 1); return *p ? cudaSuccess : cudaErrorMemoryAllocation; }
cudaError_t cudaFree(void *p) { free(p); return cudaSuccess; }
cudaError_t cudaMemcpy(void *d, const void *s, size_t n, enum cudaMemcpyKind) { memmove(d, s, n); return cudaSuccess; }
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, enum cudaMemcpyKind, cudaStream_t) { memmove(d, s, n); return cudaSuccess; }
cudaError_t cudaMemset(void *d, int v, size_t n) { memset(d, v, n); return cudaSuccess; }
cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t) { memset(d, v, n); return cudaSuccess; }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
const char *cudaGetErrorString(cudaError_t) { return "emu error"; }
cudaError_t cudaGetDeviceCount(int *n) { *n = 1; return cudaSuccess; }
int cuda_device_count(void) { return 1; }
cudaError_t cudaSetDevice(int) { return cudaSuccess; }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) { *s = NULL; return cudaSuccess; }
cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
/* streams run synchronously: events order nothing and are always complete */
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned) { *e = malloc(1); return cudaSuccess; }
cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
cudaError_t cudaEventDestroy(cudaEvent_t e) { free(e); return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned) { return cudaSuccess; }
cudaError_t cudaStreamQuery(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaMallocAsync(void **p, size_t n, cudaStream_t) { return cudaMalloc(p, n); }
cudaError_t cudaFreeAsync(void *p, cudaStream_t) { return cudaFree(p); }
}
