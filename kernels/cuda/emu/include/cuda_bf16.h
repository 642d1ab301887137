/* FAKE cuda_bf16.h for the CPU SIMT emulator (kernels/cuda/emu/run.sh): just what kernels/cuda/*.cu use. */
#ifndef EMU_CUDA_BF16_H
#define EMU_CUDA_BF16_H
#include <stdint.h>
#include <string.h>
#include <math.h>
struct __nv_bfloat16 { uint16_t x; };
static inline float __bfloat162float(__nv_bfloat16 h) { uint32_t u = (uint32_t)h.x << 16; float f; memcpy(&f, &u, 4); return f; }
static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u; memcpy(&u, &f, 4); __nv_bfloat16 r;
    if (isnan(f)) { r.x = 0x7fc0; return r; }
    u += 0x7fff + ((u >> 16) & 1); r.x = (uint16_t)(u >> 16); return r;
}
#endif
