/* Emulator stand-in for kernels/cuda/matmul.cu (cuBLASLt is not emulated): the same three entry points as plain host
 * loops over "device" memory (host memory in the emulator), fp32 accumulation, bf16 rounded to nearest even on store,
 * backward accumulating like cuBLAS with beta = 1. Lets kernels/cuda/emu/run.sh model run the whole GPU model
 * (worker/model_cuda.c) on the CPU; it says nothing about cuBLASLt itself (tests/cuda/test_cuda_matmul.c on a GPU). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common/err.h"
#include "kernels/cuda/ops_cuda.h"

static float ld(const void *p, long i, cuda_dtype_t dt) {
    if (dt == CUDA_DT_F32) return ((const float *)p)[i];
    uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void st(void *p, long i, float f, cuda_dtype_t dt) {
    if (dt == CUDA_DT_F32) {
        ((float *)p)[i] = f;
        return;
    }
    uint32_t u;
    memcpy(&u, &f, 4);
    if (isnan(f)) {
        ((uint16_t *)p)[i] = 0x7fc0;
        return;
    }
    u += 0x7fff + ((u >> 16) & 1);
    ((uint16_t *)p)[i] = (uint16_t)(u >> 16);
}

int cuda_matmul_forward_epi(cuda_ctx_t *ctx, void *out, const void *inp, const void *weight, const void *bias, int N,
                            int C, int OC, cuda_epilogue_t epi, cuda_dtype_t dt, cudaStream_t s) {
    (void)ctx;
    (void)s;
    for (int n = 0; n < N; n++) {
        for (int o = 0; o < OC; o++) {
            float acc = 0;
            for (int c = 0; c < C; c++) acc += ld(inp, (long)n * C + c, dt) * ld(weight, (long)o * C + c, dt);
            if (bias) acc += ld(bias, o, dt);
            if (epi == CUDA_EPI_GELU_TANH)
                acc = 0.5f * acc * (1.0f + tanhf(0.7978845608028654f * (acc + 0.044715f * acc * acc * acc)));
            st(out, (long)n * OC + o, acc, dt);
        }
    }
    return 0;
}

int cuda_matmul_forward(cuda_ctx_t *ctx, void *out, const void *inp, const void *weight, const void *bias, int N,
                        int C, int OC, cuda_dtype_t dt, cudaStream_t s) {
    return cuda_matmul_forward_epi(ctx, out, inp, weight, bias, N, C, OC, CUDA_EPI_NONE, dt, s);
}

int cuda_matmul_backward(cuda_ctx_t *ctx, void *dinp, void *dweight, void *dbias, const void *dout, const void *inp,
                         const void *weight, int N, int C, int OC, cuda_dtype_t dt, cudaStream_t s) {
    (void)ctx;
    (void)s;
    if (dinp)
        for (int n = 0; n < N; n++)
            for (int c = 0; c < C; c++) {
                float acc = 0;
                for (int o = 0; o < OC; o++) acc += ld(dout, (long)n * OC + o, dt) * ld(weight, (long)o * C + c, dt);
                st(dinp, (long)n * C + c, ld(dinp, (long)n * C + c, dt) + acc, dt);
            }
    if (dweight)
        for (int o = 0; o < OC; o++)
            for (int c = 0; c < C; c++) {
                float acc = 0;
                for (int n = 0; n < N; n++) acc += ld(dout, (long)n * OC + o, dt) * ld(inp, (long)n * C + c, dt);
                st(dweight, (long)o * C + c, ld(dweight, (long)o * C + c, dt) + acc, dt);
            }
    if (dbias)
        for (int o = 0; o < OC; o++) {
            float acc = 0;
            for (int n = 0; n < N; n++) acc += ld(dout, (long)n * OC + o, dt);
            st(dbias, o, ld(dbias, o, dt) + acc, dt);
        }
    return 0;
}
