// CPU SIMT emulator: one OS thread per CUDA thread, blocks run one after another, pthread barriers for
// __syncthreads and per-warp exchanges for shuffles. Enough for the kernels of kernels/cuda (not cuBLAS/NCCL).
#ifndef EMU_H
#define EMU_H
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <functional>
#include <vector>
struct dim3 { unsigned x, y, z; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };
extern thread_local dim3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;
extern thread_local int emu_tid;
extern float *emu_dyn_smem;
extern pthread_barrier_t emu_block_bar;
extern pthread_barrier_t emu_warp_bar[32];
extern double emu_slots[32][32];
#define __global__
#define __device__
#define __forceinline__ inline
#define __host__
#define __launch_bounds__(x)
#define __shared__ static
static inline void __syncthreads() { pthread_barrier_wait(&emu_block_bar); }
template <class V> static inline V emu_shfl(V v, int src) {
    int w = emu_tid / 32, lane = emu_tid % 32;
    memcpy(&emu_slots[w][lane], &v, sizeof v);
    pthread_barrier_wait(&emu_warp_bar[w]);
    V r = v;
    if (src >= 0 && src < 32) memcpy(&r, &emu_slots[w][src], sizeof r);
    pthread_barrier_wait(&emu_warp_bar[w]);
    return r;
}
template <class V> static inline V __shfl_sync(unsigned, V v, int src) { return emu_shfl(v, src % 32); }
template <class V> static inline V __shfl_xor_sync(unsigned, V v, int o) { return emu_shfl(v, (emu_tid % 32) ^ o); }
template <class V> static inline V __shfl_up_sync(unsigned, V v, int d) {
    int src = emu_tid % 32 - d;
    V r = emu_shfl(v, src < 0 ? 99 : src);
    return r;
}
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
void emu_launch(dim3 grid, dim3 block, size_t smem, std::function<void()> fn);
#endif
