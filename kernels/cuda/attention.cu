// RoPE, fused flash-style attention (forward with online softmax, backward recomputing the softmax from the saved
// logsumexp) and the row softmax on the GPU. Tested by tests/cuda/test_cuda_attention.c against kernels/cpu/ops.c.
//
// Attention layout: q/out [B,T,NH,HS], k/v [B,T,NKV,HS]. Tiles live in shared memory as fp32 rows of HS+1 floats
// (the +1 keeps a warp reading 32 different rows conflict-free). A warp owns a few query (or key) rows; lane l
// handles key (or query) l of the current 32-wide tile for the scores and dims l, l+32, l+64, l+96 of the
// accumulators, so HS <= 128. No [T,T] matrix exists anywhere.
#include <math.h>

#include "kernels/cuda/cuda_common.cuh"

/* ---------------------------------------------------------------------------------------------------------- */
/* RoPE                                                                                                       */

// cos and sin as rope_cos_sin in kernels/cpu/ops.c: inv_freq = 1 / powf(theta, 2i/HS) in fp32 (powf taken as the
// correctly rounded double pow), angle in fp32, cos/sin in double rounded to fp32.
__device__ __forceinline__ void rope_cs(float *c, float *s, int pos, int i, int HS, float theta) {
    float e = (float)(2 * i) / (float)HS;
    float pf = (float)pow((double)theta, (double)e);
    float inv_freq = 1.0f / pf;
    float angle = inv_freq * (float)pos;
    double sd, cd;
    sincos((double)angle, &sd, &cd);
    *c = (float)cd;
    *s = (float)sd;
}

template <typename D>
__global__ void rope_kernel(D *out, const D *inp, const int32_t *pos, int B, int T, int NH, int HS, float theta,
                            int backward) {
    int half = HS / 2;
    long n = (long)B * T * NH * half;
    for (long idx = (long)blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += (long)gridDim.x * blockDim.x) {
        int i = (int)(idx % half);
        long rh = idx / half; // (b*T + t)*NH + h
        long row = rh / NH;   // b*T + t
        int p = pos ? pos[row] : (int)(row % T);
        float c, s;
        rope_cs(&c, &s, p, i, HS, theta);
        long base = rh * HS;
        float x1 = ldf(inp + base + i), x2 = ldf(inp + base + i + half);
        if (!backward) {
            stf(out + base + i, x1 * c + (-x2) * s);
            stf(out + base + i + half, x2 * c + x1 * s);
        } else { // out is dinp (accumulated), inp is dout
            stf(out + base + i, ldf(out + base + i) + (x1 * c + x2 * s));
            stf(out + base + i + half, ldf(out + base + i + half) + (x2 * c - x1 * s));
        }
    }
}

static int rope_launch(void *out, const void *inp, const int32_t *pos, int B, int Tlen, int NH, int HS, float theta,
                       int backward, cuda_dtype_t dt, cudaStream_t s) {
    int rc = 0;
    long n = (long)B * Tlen * NH * (HS / 2);
    CHECK_GOTO(B >= 0 && Tlen >= 0 && NH > 0 && HS > 0 && HS % 2 == 0, LLAVA_EINVAL, "rope: B=%d T=%d NH=%d HS=%d", B,
               Tlen, NH, HS);
    if (n == 0) goto cleanup;
    CUDA_DISPATCH(dt, rope_kernel<T><<<cuda_grid_1d(n, 256), 256, 0, s>>>((T *)out, (const T *)inp, pos, B, Tlen, NH,
                                                                            HS, theta, backward);
                  CUDA_LAUNCH_CHECK_GOTO());
cleanup:
    return rc;
}

extern "C" int cuda_rope_forward(void *out, const void *inp, const int32_t *pos, int B, int Tlen, int NH, int HS,
                                 float theta, cuda_dtype_t dt, cudaStream_t s) {
    return rope_launch(out, inp, pos, B, Tlen, NH, HS, theta, 0, dt, s);
}

extern "C" int cuda_rope_backward(void *dinp, const void *dout, const int32_t *pos, int B, int Tlen, int NH, int HS,
                                  float theta, cuda_dtype_t dt, cudaStream_t s) {
    return rope_launch(dinp, dout, pos, B, Tlen, NH, HS, theta, 1, dt, s);
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Attention                                                                                                  */

#define ATT_MAXHS 128
#define ATT_MAXD (ATT_MAXHS / 32) // accumulator dims per lane
#define ATT_WARPS 4
#define ATT_KT 32                 // keys per tile (one per lane) in the forward and dq kernels
#define ATT_FWD_RPW 4             // query rows per warp, forward
#define ATT_DQ_RPW 2              // query rows per warp, dq
#define ATT_KV_KPW 2              // key rows per warp, dk/dv
#define ATT_QT 32                 // queries per tile (one per lane) in the dk/dv kernel

// Number of keys of batch row b that any query can see (right padding).
__device__ __forceinline__ int att_len(const int32_t *lengths, int b, int T) {
    if (!lengths) return T;
    int L = lengths[b];
    return L < 0 ? 0 : (L > T ? T : L);
}

// Loads rows [r0, r0+nrows) of a [B,T,H,HS] tensor (batch b, head h) into sh (stride HS+1), zeros past T.
template <typename D>
__device__ __forceinline__ void att_load(float *sh, const D *x, int b, int r0, int nrows, int T, int H, int h,
                                         int HS) {
    for (int idx = threadIdx.x; idx < nrows * HS; idx += blockDim.x) {
        int r = idx / HS, d = idx % HS, t = r0 + r;
        sh[r * (HS + 1) + d] = t < T ? ldf(x + (((long)b * T + t) * H + h) * HS + d) : 0.0f;
    }
}

__device__ __forceinline__ float att_dot(const float *a, const float *b, int HS) {
    float acc = 0.0f;
    for (int d = 0; d < HS; d++) acc += a[d] * b[d];
    return acc;
}

// grid (ceil(T / (ATT_WARPS*ATT_FWD_RPW)), NH, B), block 32*ATT_WARPS, dynamic smem (QT + 2*KT) * (HS+1) floats.
template <typename D>
__global__ void __launch_bounds__(32 * ATT_WARPS)
    attn_fwd_kernel(D *out, float *lse, const D *q, const D *k, const D *v, const int32_t *lengths, int T, int NH,
                    int NKV, int HS, int causal, float scale) {
    extern __shared__ float sm[];
    const int QT = ATT_WARPS * ATT_FWD_RPW, S = HS + 1;
    float *sq = sm, *sk = sq + QT * S, *sv = sk + ATT_KT * S;
    int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * QT;
    int kh = h / (NH / NKV), warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int len = att_len(lengths, b, T);
    int kend = causal ? min(len, q0 + QT) : len; // no query of this tile sees a key at or past kend
    float m[ATT_FWD_RPW], l[ATT_FWD_RPW], o[ATT_FWD_RPW][ATT_MAXD];
#pragma unroll
    for (int rr = 0; rr < ATT_FWD_RPW; rr++) {
        m[rr] = -INFINITY;
        l[rr] = 0.0f;
#pragma unroll
        for (int t = 0; t < ATT_MAXD; t++) o[rr][t] = 0.0f;
    }
    att_load(sq, q, b, q0, QT, T, NH, h, HS);
    for (int k0 = 0; k0 < kend; k0 += ATT_KT) {
        __syncthreads(); // the previous tile is no longer read (and sq is loaded)
        att_load(sk, k, b, k0, ATT_KT, T, NKV, kh, HS);
        att_load(sv, v, b, k0, ATT_KT, T, NKV, kh, HS);
        __syncthreads();
        int nk = min(ATT_KT, kend - k0);
#pragma unroll
        for (int rr = 0; rr < ATT_FWD_RPW; rr++) {
            int r = warp * ATT_FWD_RPW + rr, i = q0 + r, j = k0 + lane;
            bool vis = i < T && j < kend && (!causal || j <= i);
            float sc = vis ? att_dot(sq + r * S, sk + lane * S, HS) * scale : -INFINITY;
            float tmax = warp_max(sc);
            if (tmax == -INFINITY) continue; // this row sees no key of this tile (uniform over the warp)
            float mnew = fmaxf(m[rr], tmax);
            float p = vis ? expf(sc - mnew) : 0.0f;
            float corr = expf(m[rr] - mnew); // 0 when m was -inf
            l[rr] = l[rr] * corr + warp_sum(p);
#pragma unroll
            for (int t = 0; t < ATT_MAXD; t++) o[rr][t] *= corr;
            for (int jj = 0; jj < nk; jj++) {
                float pj = __shfl_sync(0xffffffffu, p, jj);
#pragma unroll
                for (int t = 0; t < ATT_MAXD; t++) {
                    int d = lane + 32 * t;
                    if (d < HS) o[rr][t] += pj * sv[jj * S + d];
                }
            }
            m[rr] = mnew;
        }
    }
#pragma unroll
    for (int rr = 0; rr < ATT_FWD_RPW; rr++) {
        int i = q0 + warp * ATT_FWD_RPW + rr;
        if (i >= T) continue;
        float inv = l[rr] > 0.0f ? 1.0f / l[rr] : 0.0f;
        D *orow = out + (((long)b * T + i) * NH + h) * HS;
#pragma unroll
        for (int t = 0; t < ATT_MAXD; t++) {
            int d = lane + 32 * t;
            if (d < HS) stf(orow + d, o[rr][t] * inv);
        }
        if (lane == 0 && lse) lse[((long)b * NH + h) * T + i] = l[rr] > 0.0f ? m[rr] + logf(l[rr]) : INFINITY;
    }
}

// Dsum[b,h,i] = sum_d dout[b,i,h,d] * out[b,i,h,d]; one warp per row.
template <typename D>
__global__ void attn_dsum_kernel(float *Dsum, const D *dout, const D *out, int B, int T, int NH, int HS) {
    long row = (long)blockIdx.x * ATT_WARPS + threadIdx.x / 32; // (b*T + i)*NH + h
    int lane = threadIdx.x % 32;
    if (row >= (long)B * T * NH) return;
    float acc = 0.0f;
    for (int d = lane; d < HS; d += 32) acc += ldf(dout + row * HS + d) * ldf(out + row * HS + d);
    acc = warp_sum(acc);
    int h = (int)(row % NH);
    long bt = row / NH;
    int i = (int)(bt % T), b = (int)(bt / T);
    if (lane == 0) Dsum[((long)b * NH + h) * T + i] = acc;
}

// dk, dv for ATT_WARPS*ATT_KV_KPW keys of kv head kh: loops over the NH/NKV query heads of the group and every
// query tile that can see them. grid (ceil(T / (ATT_WARPS*ATT_KV_KPW)), NKV, B);
// smem (2*KT2 + 2*ATT_QT) * (HS+1) + 2*ATT_QT floats.
template <typename D>
__global__ void __launch_bounds__(32 * ATT_WARPS)
    attn_bwd_kv_kernel(D *dk, D *dv, const D *dout, const float *lse, const float *Dsum, const D *q, const D *k,
                       const D *v, const int32_t *lengths, int T, int NH, int NKV, int HS, int causal, float scale) {
    extern __shared__ float sm[];
    const int KT2 = ATT_WARPS * ATT_KV_KPW, S = HS + 1;
    float *sk = sm, *sv = sk + KT2 * S, *sq = sv + KT2 * S, *sdo = sq + ATT_QT * S, *slse = sdo + ATT_QT * S,
          *sD = slse + ATT_QT;
    int b = blockIdx.z, kh = blockIdx.y, k0 = blockIdx.x * KT2;
    int G = NH / NKV, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int len = att_len(lengths, b, T);
    float adk[ATT_KV_KPW][ATT_MAXD], adv[ATT_KV_KPW][ATT_MAXD];
#pragma unroll
    for (int kk = 0; kk < ATT_KV_KPW; kk++)
#pragma unroll
        for (int t = 0; t < ATT_MAXD; t++) adk[kk][t] = adv[kk][t] = 0.0f;
    att_load(sk, k, b, k0, KT2, T, NKV, kh, HS);
    att_load(sv, v, b, k0, KT2, T, NKV, kh, HS);
    int istart = causal ? k0 : 0; // causal: only queries i >= j see key j
    if (k0 < len) {
        for (int g = 0; g < G; g++) {
            int h = kh * G + g;
            for (int i0 = istart; i0 < T; i0 += ATT_QT) {
                __syncthreads(); // previous query tile no longer read (and sk/sv loaded)
                att_load(sq, q, b, i0, ATT_QT, T, NH, h, HS);
                att_load(sdo, dout, b, i0, ATT_QT, T, NH, h, HS);
                for (int r = threadIdx.x; r < ATT_QT; r += blockDim.x) {
                    int i = i0 + r;
                    slse[r] = i < T ? lse[((long)b * NH + h) * T + i] : INFINITY;
                    sD[r] = i < T ? Dsum[((long)b * NH + h) * T + i] : 0.0f;
                }
                __syncthreads();
                int nq = min(ATT_QT, T - i0);
#pragma unroll
                for (int kk = 0; kk < ATT_KV_KPW; kk++) {
                    int jr = warp * ATT_KV_KPW + kk, j = k0 + jr, i = i0 + lane;
                    bool vis = i < T && j < len && (!causal || j <= i);
                    float p = 0.0f, ds = 0.0f;
                    if (vis) {
                        float sc = att_dot(sq + lane * S, sk + jr * S, HS) * scale;
                        p = expf(sc - slse[lane]);
                        float dp = att_dot(sdo + lane * S, sv + jr * S, HS);
                        ds = p * (dp - sD[lane]);
                    }
                    for (int ii = 0; ii < nq; ii++) {
                        float pi = __shfl_sync(0xffffffffu, p, ii);
                        float dsi = __shfl_sync(0xffffffffu, ds, ii);
#pragma unroll
                        for (int t = 0; t < ATT_MAXD; t++) {
                            int d = lane + 32 * t;
                            if (d < HS) {
                                adv[kk][t] += pi * sdo[ii * S + d];
                                adk[kk][t] += dsi * sq[ii * S + d];
                            }
                        }
                    }
                }
            }
        }
    }
#pragma unroll
    for (int kk = 0; kk < ATT_KV_KPW; kk++) {
        int j = k0 + warp * ATT_KV_KPW + kk;
        if (j >= T) continue;
        long base = (((long)b * T + j) * NKV + kh) * HS;
#pragma unroll
        for (int t = 0; t < ATT_MAXD; t++) {
            int d = lane + 32 * t;
            if (d < HS) {
                stf(dk + base + d, ldf(dk + base + d) + adk[kk][t] * scale);
                stf(dv + base + d, ldf(dv + base + d) + adv[kk][t]);
            }
        }
    }
}

// dq for ATT_WARPS*ATT_DQ_RPW query rows of head h. grid (ceil(T / (ATT_WARPS*ATT_DQ_RPW)), NH, B);
// smem (2*QT3 + 2*ATT_KT) * (HS+1) floats.
template <typename D>
__global__ void __launch_bounds__(32 * ATT_WARPS)
    attn_bwd_q_kernel(D *dq, const D *dout, const float *lse, const float *Dsum, const D *q, const D *k, const D *v,
                      const int32_t *lengths, int T, int NH, int NKV, int HS, int causal, float scale) {
    extern __shared__ float sm[];
    const int QT3 = ATT_WARPS * ATT_DQ_RPW, S = HS + 1;
    float *sq = sm, *sdo = sq + QT3 * S, *sk = sdo + QT3 * S, *sv = sk + ATT_KT * S;
    int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * QT3;
    int kh = h / (NH / NKV), warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int len = att_len(lengths, b, T);
    int kend = causal ? min(len, q0 + QT3) : len;
    float adq[ATT_DQ_RPW][ATT_MAXD], rlse[ATT_DQ_RPW], rD[ATT_DQ_RPW];
#pragma unroll
    for (int rr = 0; rr < ATT_DQ_RPW; rr++) {
        int i = q0 + warp * ATT_DQ_RPW + rr;
        rlse[rr] = i < T ? lse[((long)b * NH + h) * T + i] : INFINITY;
        rD[rr] = i < T ? Dsum[((long)b * NH + h) * T + i] : 0.0f;
#pragma unroll
        for (int t = 0; t < ATT_MAXD; t++) adq[rr][t] = 0.0f;
    }
    att_load(sq, q, b, q0, QT3, T, NH, h, HS);
    att_load(sdo, dout, b, q0, QT3, T, NH, h, HS);
    for (int k0 = 0; k0 < kend; k0 += ATT_KT) {
        __syncthreads();
        att_load(sk, k, b, k0, ATT_KT, T, NKV, kh, HS);
        att_load(sv, v, b, k0, ATT_KT, T, NKV, kh, HS);
        __syncthreads();
        int nk = min(ATT_KT, kend - k0);
#pragma unroll
        for (int rr = 0; rr < ATT_DQ_RPW; rr++) {
            int r = warp * ATT_DQ_RPW + rr, i = q0 + r, j = k0 + lane;
            bool vis = i < T && j < kend && (!causal || j <= i);
            float ds = 0.0f;
            if (vis) {
                float sc = att_dot(sq + r * S, sk + lane * S, HS) * scale;
                float p = expf(sc - rlse[rr]);
                float dp = att_dot(sdo + r * S, sv + lane * S, HS);
                ds = p * (dp - rD[rr]);
            }
            for (int jj = 0; jj < nk; jj++) {
                float dsj = __shfl_sync(0xffffffffu, ds, jj);
#pragma unroll
                for (int t = 0; t < ATT_MAXD; t++) {
                    int d = lane + 32 * t;
                    if (d < HS) adq[rr][t] += dsj * sk[jj * S + d];
                }
            }
        }
    }
#pragma unroll
    for (int rr = 0; rr < ATT_DQ_RPW; rr++) {
        int i = q0 + warp * ATT_DQ_RPW + rr;
        if (i >= T) continue;
        long base = (((long)b * T + i) * NH + h) * HS;
#pragma unroll
        for (int t = 0; t < ATT_MAXD; t++) {
            int d = lane + 32 * t;
            if (d < HS) stf(dq + base + d, ldf(dq + base + d) + adq[rr][t] * scale);
        }
    }
}

static int att_check(int B, int T, int NH, int NKV, int HS) {
    int rc = 0;
    CHECK_GOTO(B >= 0 && T >= 0 && NH > 0 && NKV > 0 && NH % NKV == 0 && HS > 0 && HS <= ATT_MAXHS, LLAVA_EINVAL,
               "attention: B=%d T=%d NH=%d NKV=%d HS=%d (need NH %% NKV == 0, HS <= %d)", B, T, NH, NKV, HS,
               ATT_MAXHS);
    CHECK_GOTO((long)B * NH <= 65535L * 65535L && NH <= 65535 && B <= 65535, LLAVA_EINVAL,
               "attention: grid too large (B=%d NH=%d)", B, NH);
cleanup:
    return rc;
}

extern "C" int cuda_attention_forward(void *out, float *lse, const void *q, const void *k, const void *v,
                                      const int32_t *lengths, int B, int Tlen, int NH, int NKV, int HS, int causal,
                                      cuda_dtype_t dt, cudaStream_t s) {
    int rc = 0;
    const int QT = ATT_WARPS * ATT_FWD_RPW;
    size_t smem = (size_t)(QT + 2 * ATT_KT) * (HS + 1) * sizeof(float);
    dim3 grid((unsigned)((Tlen + QT - 1) / QT), (unsigned)NH, (unsigned)B);
    float scale = 1.0f / sqrtf((float)HS);
    RC_CHECK_GOTO(att_check(B, Tlen, NH, NKV, HS));
    if (B == 0 || Tlen == 0) goto cleanup;
    CUDA_DISPATCH(dt, attn_fwd_kernel<T><<<grid, 32 * ATT_WARPS, smem, s>>>(
                          (T *)out, lse, (const T *)q, (const T *)k, (const T *)v, lengths, Tlen, NH, NKV, HS, causal,
                          scale);
                  CUDA_LAUNCH_CHECK_GOTO());
cleanup:
    return rc;
}

extern "C" int cuda_attention_backward(cuda_ctx_t *ctx, void *dq, void *dk, void *dv, const void *dout,
                                       const void *out, const float *lse, const void *q, const void *k, const void *v,
                                       const int32_t *lengths, int B, int Tlen, int NH, int NKV, int HS, int causal,
                                       cuda_dtype_t dt, cudaStream_t s) {
    int rc = 0;
    const int KT2 = ATT_WARPS * ATT_KV_KPW, QT3 = ATT_WARPS * ATT_DQ_RPW;
    size_t smem_kv = ((size_t)(2 * KT2 + 2 * ATT_QT) * (HS + 1) + 2 * ATT_QT) * sizeof(float);
    size_t smem_q = (size_t)(2 * QT3 + 2 * ATT_KT) * (HS + 1) * sizeof(float);
    long rows = (long)B * Tlen * NH;
    dim3 grid_kv((unsigned)((Tlen + KT2 - 1) / KT2), (unsigned)NKV, (unsigned)B);
    dim3 grid_q((unsigned)((Tlen + QT3 - 1) / QT3), (unsigned)NH, (unsigned)B);
    float scale = 1.0f / sqrtf((float)HS);
    float *Dsum = NULL;
    RC_CHECK_GOTO(att_check(B, Tlen, NH, NKV, HS));
    CHECK_GOTO(dq && dk && dv && lse, LLAVA_EINVAL, "attention_backward: dq, dk, dv and lse are required");
    if (rows == 0) goto cleanup;
    RC_CHECK_GOTO(cuda_ctx_scratch(ctx, (size_t)rows * sizeof(float), (void **)&Dsum));
    CUDA_DISPATCH(dt, attn_dsum_kernel<T><<<(unsigned)((rows + ATT_WARPS - 1) / ATT_WARPS), 32 * ATT_WARPS, 0, s>>>(
                          Dsum, (const T *)dout, (const T *)out, B, Tlen, NH, HS);
                  CUDA_LAUNCH_CHECK_GOTO();
                  attn_bwd_kv_kernel<T><<<grid_kv, 32 * ATT_WARPS, smem_kv, s>>>(
                      (T *)dk, (T *)dv, (const T *)dout, lse, Dsum, (const T *)q, (const T *)k, (const T *)v,
                      lengths, Tlen, NH, NKV, HS, causal, scale);
                  CUDA_LAUNCH_CHECK_GOTO();
                  attn_bwd_q_kernel<T><<<grid_q, 32 * ATT_WARPS, smem_q, s>>>(
                      (T *)dq, (const T *)dout, lse, Dsum, (const T *)q, (const T *)k, (const T *)v, lengths, Tlen,
                      NH, NKV, HS, causal, scale);
                  CUDA_LAUNCH_CHECK_GOTO());
cleanup:
    return rc;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Row softmax                                                                                                */

template <typename D>
__global__ void softmax_kernel(D *out, const D *inp, int V) {
    __shared__ float sh[32];
    const D *x = inp + (long)blockIdx.x * V;
    D *o = out + (long)blockIdx.x * V;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, ldf(x + j));
    mx = block_max(mx, sh);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) sum += expf(ldf(x + j) - mx);
    sum = block_sum(sum, sh);
    float inv = 1.0f / sum;
    // every thread has read its values before any writes (block_sum synchronises), so out may alias inp
    for (int j = threadIdx.x; j < V; j += blockDim.x) stf(o + j, expf(ldf(x + j) - mx) * inv);
}

extern "C" int cuda_softmax_forward(void *out, const void *inp, int N, int V, cuda_dtype_t dt, cudaStream_t s) {
    int rc = 0;
    CHECK_GOTO(N >= 0 && V > 0, LLAVA_EINVAL, "softmax_forward: N=%d V=%d", N, V);
    if (N == 0) goto cleanup;
    CUDA_DISPATCH(dt, softmax_kernel<T><<<(unsigned)N, 256, 0, s>>>((T *)out, (const T *)inp, V);
                  CUDA_LAUNCH_CHECK_GOTO());
cleanup:
    return rc;
}
