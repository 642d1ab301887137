/* CPU fp32 ops (see ops.h for shapes and semantics): OpenBLAS sgemm for matmuls and attention blocks, OpenMP over
 * rows / heads elsewhere, double accumulation for norm statistics, softmax sums and the loss.
 * Tested by tests/unit/test_ops_grad.c (finite differences) and tests/unit/test_ops_ref.c (PyTorch fixtures). */
#include "kernels/cpu/ops.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

/* Loops shorter than this run on one thread: a parallel region costs more than it saves. */
#define OPS_PAR_MIN 16384L

/* ---------------------------------------------------------------------------------------------------------- */
/* Threads                                                                                                    */

/* OpenBLAS internals (exported by libopenblas, not declared in cblas.h): re-read OPENBLAS_* variables, and stop the
 * thread pool (the next BLAS call starts it again with the new settings). */
extern void openblas_read_env(void);
extern int blas_thread_shutdown_(void);

/* OpenBLAS's idle workers spin for 2^28 cycles (~0.1 s) after every call, stealing the cores from the OpenMP loops
 * that run between matmuls (measured here: rmsnorm [512,4096] 0.3 ms alone, 5 ms right after an sgemm). Unless the
 * user chose a value, shorten the spin to OpenBLAS's minimum (2^4 cycles) and restart the pool so it applies. */
static void blas_spin_shorten(void) {
    if (getenv("OPENBLAS_THREAD_TIMEOUT")) return;
    setenv("OPENBLAS_THREAD_TIMEOUT", "4", 0);
    openblas_read_env();
    blas_thread_shutdown_();
}

void kernels_set_threads(int n) {
    if (n <= 0) n = omp_get_num_procs();
    blas_spin_shorten();
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

int kernels_get_threads(void) { return omp_get_max_threads(); }

/* Runs sgemm calls from inside our own parallel regions on one BLAS thread each; restores the pool after. */
static int blas_threads_push_one(void) {
    int n = openblas_get_num_threads();
    openblas_set_num_threads(1);
    return n;
}

static void blas_threads_pop(int n) { openblas_set_num_threads(n); }

/* colsum[c0..c1) += sum over rows of x[N,C]: each thread owns a chunk of columns and walks the rows, so the
 * reads stay contiguous and no two threads write the same output. */
static void colsum_accumulate(float *colsum, const float *x, int N, int C) {
#pragma omp parallel if ((long)N * C >= OPS_PAR_MIN)
    {
        int nt = omp_get_num_threads(), it = omp_get_thread_num();
        int c0 = (int)((long)C * it / nt), c1 = (int)((long)C * (it + 1) / nt);
        for (int i = 0; i < N; i++) {
            const float *xi = x + (long)i * C;
            for (int c = c0; c < c1; c++) colsum[c] += xi[c];
        }
    }
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Linear layers                                                                                              */

void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int N, int C, int OC) {
    // out[N,OC] = inp[N,C] @ weight[OC,C]^T (+ bias)
    float beta = 0.0f;
    if (bias) {
#pragma omp parallel for if ((long)N * OC >= OPS_PAR_MIN)
        for (int i = 0; i < N; i++) memcpy(out + (long)i * OC, bias, sizeof(float) * (size_t)OC);
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1.0f, inp, C, weight, C, beta, out, OC);
}

void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                     const float *weight, int N, int C, int OC) {
    // dinp[N,C] += dout[N,OC] @ weight[OC,C]
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, 1.0f, dout, OC, weight, C, 1.0f, dinp, C);
    // dweight[OC,C] += dout^T[OC,N] @ inp[N,C]
    if (dweight)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C);
    if (dbias) colsum_accumulate(dbias, dout, N, OC);
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Normalisation                                                                                              */

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                       const float *bias, int N, int C, float eps) {
#pragma omp parallel for if ((long)N * C >= OPS_PAR_MIN)
    for (int i = 0; i < N; i++) {
        const float *x = inp + (long)i * C;
        float *o = out + (long)i * C;
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int c = 0; c < C; c++) s += x[c];
        double m = s / C;
        double v = 0.0;
#pragma omp simd reduction(+ : v)
        for (int c = 0; c < C; c++) {
            double d = x[c] - m;
            v += d * d;
        }
        v /= C;
        double r = 1.0 / sqrt(v + (double)eps);
        for (int c = 0; c < C; c++) o[c] = (float)((x[c] - m) * r) * weight[c] + bias[c];
        if (mean) mean[i] = (float)m;
        if (rstd) rstd[i] = (float)r;
    }
}

void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                        const float *weight, const float *mean, const float *rstd, int N, int C) {
    if (dinp) {
#pragma omp parallel for if ((long)N * C >= OPS_PAR_MIN)
        for (int i = 0; i < N; i++) {
            const float *x = inp + (long)i * C, *dy = dout + (long)i * C;
            float *dx = dinp + (long)i * C;
            float m = mean[i], r = rstd[i];
            // dnorm = dy * w; dx = (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) * rstd
            double a = 0.0, b = 0.0;
#pragma omp simd reduction(+ : a, b)
            for (int c = 0; c < C; c++) {
                double dn = (double)dy[c] * weight[c];
                a += dn;
                b += dn * ((x[c] - m) * r);
            }
            a /= C;
            b /= C;
            for (int c = 0; c < C; c++) {
                double norm = (x[c] - m) * r;
                dx[c] += (float)(((double)dy[c] * weight[c] - a - norm * b) * r);
            }
        }
    }
    if (dbias) colsum_accumulate(dbias, dout, N, C);
    if (dweight) {
#pragma omp parallel if ((long)N * C >= OPS_PAR_MIN)
        {
            int nt = omp_get_num_threads(), it = omp_get_thread_num();
            int c0 = (int)((long)C * it / nt), c1 = (int)((long)C * (it + 1) / nt);
            for (int i = 0; i < N; i++) {
                const float *x = inp + (long)i * C, *dy = dout + (long)i * C;
                float m = mean[i], r = rstd[i];
                for (int c = c0; c < c1; c++) dweight[c] += dy[c] * ((x[c] - m) * r);
            }
        }
    }
}

void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps) {
#pragma omp parallel for if ((long)N * C >= OPS_PAR_MIN)
    for (int i = 0; i < N; i++) {
        const float *x = inp + (long)i * C;
        float *o = out + (long)i * C;
        double ss = 0.0;
#pragma omp simd reduction(+ : ss)
        for (int c = 0; c < C; c++) ss += (double)x[c] * x[c];
        // HF: variance (fp32) then rsqrt(variance + eps); x * r, then weight * that
        float var = (float)(ss / C);
        float r = (float)(1.0 / sqrt((double)(var + eps)));
        for (int c = 0; c < C; c++) o[c] = weight[c] * (x[c] * r);
        if (rstd) rstd[i] = r;
    }
}

void rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                      const float *rstd, int N, int C) {
    if (dinp) {
#pragma omp parallel for if ((long)N * C >= OPS_PAR_MIN)
        for (int i = 0; i < N; i++) {
            const float *x = inp + (long)i * C, *dy = dout + (long)i * C;
            float *dx = dinp + (long)i * C;
            double r = rstd[i];
            // y = x r w, r = (mean(x^2) + eps)^-1/2: dx = r w dy - x r^3 mean(dy w x)
            double s = 0.0;
#pragma omp simd reduction(+ : s)
            for (int c = 0; c < C; c++) s += (double)dy[c] * weight[c] * x[c];
            double k = s / C * r * r * r;
            for (int c = 0; c < C; c++) dx[c] += (float)(r * weight[c] * dy[c] - k * x[c]);
        }
    }
    if (dweight) {
#pragma omp parallel if ((long)N * C >= OPS_PAR_MIN)
        {
            int nt = omp_get_num_threads(), it = omp_get_thread_num();
            int c0 = (int)((long)C * it / nt), c1 = (int)((long)C * (it + 1) / nt);
            for (int i = 0; i < N; i++) {
                const float *x = inp + (long)i * C, *dy = dout + (long)i * C;
                float r = rstd[i];
                for (int c = c0; c < c1; c++) dweight[c] += dy[c] * (x[c] * r);
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Rotary position embedding                                                                                  */

/* HF: inv_freq = 1 / theta ** (arange(0, HS, 2) / HS) in fp32; angle = inv_freq * pos in fp32. */
static void rope_cos_sin(float *c, float *s, int pos, int i, int HS, float theta) {
    float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)HS);
    float angle = inv_freq * (float)pos;
    *c = (float)cos((double)angle);
    *s = (float)sin((double)angle);
}

void rope_forward(float *out, const float *inp, const int32_t *pos, int B, int T, int NH, int HS, float theta) {
    int half = HS / 2;
#pragma omp parallel for collapse(2) if ((long)B * T * NH * HS >= OPS_PAR_MIN)
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            long row = ((long)b * T + t) * NH * HS;
            int p = pos ? pos[(long)b * T + t] : t;
            for (int i = 0; i < half; i++) {
                float c, s;
                rope_cos_sin(&c, &s, p, i, HS, theta);
                for (int h = 0; h < NH; h++) {
                    const float *x = inp + row + (long)h * HS;
                    float *o = out + row + (long)h * HS;
                    float x1 = x[i], x2 = x[i + half];
                    // x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1)
                    o[i] = x1 * c + (-x2) * s;
                    o[i + half] = x2 * c + x1 * s;
                }
            }
        }
    }
}

void rope_backward(float *dinp, const float *dout, const int32_t *pos, int B, int T, int NH, int HS, float theta) {
    int half = HS / 2;
#pragma omp parallel for collapse(2) if ((long)B * T * NH * HS >= OPS_PAR_MIN)
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            long row = ((long)b * T + t) * NH * HS;
            int p = pos ? pos[(long)b * T + t] : t;
            for (int i = 0; i < half; i++) {
                float c, s;
                rope_cos_sin(&c, &s, p, i, HS, theta);
                for (int h = 0; h < NH; h++) {
                    const float *dy = dout + row + (long)h * HS;
                    float *dx = dinp + row + (long)h * HS;
                    float d1 = dy[i], d2 = dy[i + half];
                    dx[i] += d1 * c + d2 * s;
                    dx[i + half] += d2 * c - d1 * s;
                }
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Attention                                                                                                  */

/* Query rows are processed in blocks of ATT_QB: with a causal mask, block [i0, i1) only needs keys [0, i1). */
#define ATT_QB 64

static int att_len(const int32_t *lengths, int b, int T) {
    if (!lengths) return T;
    int L = lengths[b];
    return L < 0 ? 0 : (L > T ? T : L);
}

/* Keys visible to query row i. */
static int att_visible(int i, int L, int causal) { return causal ? (i + 1 < L ? i + 1 : L) : L; }

/* Masked softmax of one row in place: s[0..nvis) -> probabilities, s[nvis..width) -> 0. */
static void att_softmax_row(float *s, int nvis, int width) {
    if (nvis > 0) {
        float mx = s[0];
        for (int j = 1; j < nvis; j++) mx = s[j] > mx ? s[j] : mx;
        for (int j = 0; j < nvis; j++) s[j] = expf(s[j] - mx);
        double sum = 0.0;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < nvis; j++) sum += s[j];
        float inv = (float)(1.0 / sum);
        for (int j = 0; j < nvis; j++) s[j] *= inv;
    }
    for (int j = nvis; j < width; j++) s[j] = 0.0f;
}

/* Softmax block P[rows, kmax] (leading dim ldp) of queries [i0, i0+rows) of (b, h). */
static void att_probs_block(float *P, int ldp, const float *q, const float *k, int b, int h, int i0, int rows,
                            int kmax, int L, int T, int NH, int NKV, int HS, int causal) {
    int g = h / (NH / NKV);
    const float *qb = q + ((long)b * T + i0) * NH * HS + (long)h * HS;
    const float *kb = k + (long)b * T * NKV * HS + (long)g * HS;
    float scale = 1.0f / sqrtf((float)HS);
    // P[rows, kmax] = scale * Q_blk[rows, HS] @ K[kmax, HS]^T
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, kmax, HS, scale, qb, NH * HS, kb, NKV * HS, 0.0f,
                P, ldp);
    for (int r = 0; r < rows; r++) att_softmax_row(P + (long)r * ldp, att_visible(i0 + r, L, causal), kmax);
}

static int att_check(int B, int T, int NH, int NKV, int HS) {
    if (B < 0 || T < 0 || NH <= 0 || NKV <= 0 || HS <= 0 || NH % NKV != 0) {
        LOG_E("attention: bad sizes B=%d T=%d NH=%d NKV=%d HS=%d", B, T, NH, NKV, HS);
        return LLAVA_EINVAL;
    }
    return 0;
}

int attention_forward(float *out, float *probs, const float *q, const float *k, const float *v,
                      const int32_t *lengths, int B, int T, int NH, int NKV, int HS, int causal) {
    int rc = att_check(B, T, NH, NKV, HS);
    if (rc) return rc;
    if (B == 0 || T == 0) return 0;
    int nblk = (T + ATT_QB - 1) / ATT_QB;
    int nthreads = omp_get_max_threads();
    float *scratch = NULL;
    if (!probs) {
        scratch = malloc(sizeof(float) * (size_t)nthreads * ATT_QB * (size_t)T);
        if (!scratch) {
            LOG_E("attention_forward: out of memory for scratch");
            return LLAVA_ENOMEM;
        }
    }
    int nb = blas_threads_push_one();
#pragma omp parallel for collapse(3) schedule(dynamic, 1)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            for (int blk = 0; blk < nblk; blk++) {
                int L = att_len(lengths, b, T);
                int i0 = blk * ATT_QB, rows = T - i0 < ATT_QB ? T - i0 : ATT_QB;
                int kmax = causal ? (i0 + rows < L ? i0 + rows : L) : L;
                float *P;
                int ldp;
                if (probs) {
                    P = probs + (((long)b * NH + h) * T + i0) * T;
                    ldp = T;
                    for (int r = 0; r < rows; r++) memset(P + (long)r * T + kmax, 0, sizeof(float) * (size_t)(T - kmax));
                } else {
                    P = scratch + (long)omp_get_thread_num() * ATT_QB * T;
                    ldp = kmax > 0 ? kmax : 1;
                }
                float *ob = out + ((long)b * T + i0) * NH * HS + (long)h * HS;
                if (kmax == 0) {
                    for (int r = 0; r < rows; r++) memset(ob + (long)r * NH * HS, 0, sizeof(float) * (size_t)HS);
                    continue;
                }
                att_probs_block(P, ldp, q, k, b, h, i0, rows, kmax, L, T, NH, NKV, HS, causal);
                // out_blk[rows, HS] = P[rows, kmax] @ V[kmax, HS]
                const float *vb = v + (long)b * T * NKV * HS + (long)(h / (NH / NKV)) * HS;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, HS, kmax, 1.0f, P, ldp, vb, NKV * HS,
                            0.0f, ob, NH * HS);
            }
        }
    }
    blas_threads_pop(nb);
    free(scratch);
    return 0;
}

int attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *probs, const float *q,
                       const float *k, const float *v, const int32_t *lengths, int B, int T, int NH, int NKV,
                       int HS, int causal) {
    int rc = att_check(B, T, NH, NKV, HS);
    if (rc) return rc;
    if (B == 0 || T == 0) return 0;
    int nthreads = omp_get_max_threads();
    size_t per_thread = (size_t)2 * ATT_QB * (size_t)T;
    float *scratch = malloc(sizeof(float) * (size_t)nthreads * per_thread);
    if (!scratch) {
        LOG_E("attention_backward: out of memory for scratch");
        return LLAVA_ENOMEM;
    }
    int group = NH / NKV;
    float scale = 1.0f / sqrtf((float)HS);
    int nb = blas_threads_push_one();
    // one task per (b, kv head): the heads sharing a kv head run in sequence, so dk/dv have one writer
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < B; b++) {
        for (int g = 0; g < NKV; g++) {
            float *dPbuf = scratch + (size_t)omp_get_thread_num() * per_thread;
            float *Pbuf = dPbuf + (size_t)ATT_QB * T;
            int L = att_len(lengths, b, T);
            const float *kb = k + (long)b * T * NKV * HS + (long)g * HS;
            const float *vb = v + (long)b * T * NKV * HS + (long)g * HS;
            float *dkb = dk + (long)b * T * NKV * HS + (long)g * HS;
            float *dvb = dv + (long)b * T * NKV * HS + (long)g * HS;
            for (int h = g * group; h < (g + 1) * group; h++) {
                for (int i0 = 0; i0 < T; i0 += ATT_QB) {
                    int rows = T - i0 < ATT_QB ? T - i0 : ATT_QB;
                    int kmax = causal ? (i0 + rows < L ? i0 + rows : L) : L;
                    if (kmax == 0) continue; // no visible keys: zero output, zero gradient
                    const float *P;
                    int ldp;
                    if (probs) {
                        P = probs + (((long)b * NH + h) * T + i0) * T;
                        ldp = T;
                    } else {
                        att_probs_block(Pbuf, kmax, q, k, b, h, i0, rows, kmax, L, T, NH, NKV, HS, causal);
                        P = Pbuf;
                        ldp = kmax;
                    }
                    long qoff = ((long)b * T + i0) * NH * HS + (long)h * HS;
                    const float *dob = dout + qoff;
                    // dP[rows, kmax] = dO[rows, HS] @ V[kmax, HS]^T
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, kmax, HS, 1.0f, dob, NH * HS, vb,
                                NKV * HS, 0.0f, dPbuf, kmax);
                    // dS = P * (dP - sum_j P dP) * scale, written over dP
                    for (int r = 0; r < rows; r++) {
                        const float *p = P + (long)r * ldp;
                        float *d = dPbuf + (long)r * kmax;
                        double dot = 0.0;
#pragma omp simd reduction(+ : dot)
                        for (int j = 0; j < kmax; j++) dot += (double)p[j] * d[j];
                        float fdot = (float)dot;
                        for (int j = 0; j < kmax; j++) d[j] = p[j] * (d[j] - fdot) * scale;
                    }
                    // dQ[rows, HS] += dS @ K[kmax, HS]
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, HS, kmax, 1.0f, dPbuf, kmax, kb,
                                NKV * HS, 1.0f, dq + qoff, NH * HS);
                    // dK[kmax, HS] += dS^T @ Q[rows, HS]
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, kmax, HS, rows, 1.0f, dPbuf, kmax, q + qoff,
                                NH * HS, 1.0f, dkb, NKV * HS);
                    // dV[kmax, HS] += P^T @ dO[rows, HS]
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, kmax, HS, rows, 1.0f, P, ldp, dob, NH * HS,
                                1.0f, dvb, NKV * HS);
                }
            }
        }
    }
    blas_threads_pop(nb);
    free(scratch);
    return 0;
}

void softmax_forward(float *out, const float *inp, int N, int V) {
#pragma omp parallel for if ((long)N * V >= OPS_PAR_MIN)
    for (int i = 0; i < N; i++) {
        float *o = out + (long)i * V;
        if (o != inp + (long)i * V) memcpy(o, inp + (long)i * V, sizeof(float) * (size_t)V);
        att_softmax_row(o, V, V);
    }
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Activations                                                                                                */

void quick_gelu_forward(float *out, const float *inp, long n) {
#pragma omp parallel for if (n >= OPS_PAR_MIN)
    for (long i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = x * (1.0f / (1.0f + expf(-1.702f * x)));
    }
}

void quick_gelu_backward(float *dinp, const float *inp, const float *dout, long n) {
#pragma omp parallel for if (n >= OPS_PAR_MIN)
    for (long i = 0; i < n; i++) {
        float x = inp[i];
        float s = 1.0f / (1.0f + expf(-1.702f * x));
        dinp[i] += dout[i] * (s + x * 1.702f * s * (1.0f - s));
    }
}

void gelu_forward(float *out, const float *inp, long n) {
#pragma omp parallel for if (n >= OPS_PAR_MIN)
    for (long i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + erff(x * (float)M_SQRT1_2));
    }
}

void gelu_backward(float *dinp, const float *inp, const float *dout, long n) {
    const float inv_sqrt_2pi = 0.3989422804014327f;
#pragma omp parallel for if (n >= OPS_PAR_MIN)
    for (long i = 0; i < n; i++) {
        float x = inp[i];
        float cdf = 0.5f * (1.0f + erff(x * (float)M_SQRT1_2));
        float pdf = inv_sqrt_2pi * expf(-0.5f * x * x);
        dinp[i] += dout[i] * (cdf + x * pdf);
    }
}

void swiglu_forward(float *out, const float *gate, const float *up, long n) {
#pragma omp parallel for if (n >= OPS_PAR_MIN)
    for (long i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, long n) {
    if (dgate && dup) {
#pragma omp parallel for if (n >= OPS_PAR_MIN)
        for (long i = 0; i < n; i++) {
            float g = gate[i];
            float s = 1.0f / (1.0f + expf(-g));
            dgate[i] += dout[i] * up[i] * (s * (1.0f + g * (1.0f - s)));
            dup[i] += dout[i] * g * s;
        }
    } else if (dgate) {
#pragma omp parallel for if (n >= OPS_PAR_MIN)
        for (long i = 0; i < n; i++) {
            float g = gate[i];
            float s = 1.0f / (1.0f + expf(-g));
            dgate[i] += dout[i] * up[i] * (s * (1.0f + g * (1.0f - s)));
        }
    } else if (dup) {
#pragma omp parallel for if (n >= OPS_PAR_MIN)
        for (long i = 0; i < n; i++) dup[i] += dout[i] * gate[i] * (1.0f / (1.0f + expf(-gate[i])));
    }
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Embeddings, image features, patches                                                                        */

void embedding_forward(float *out, const int32_t *ids, const float *table, int N, int C) {
#pragma omp parallel for if ((long)N * C >= OPS_PAR_MIN)
    for (int i = 0; i < N; i++) memcpy(out + (long)i * C, table + (long)ids[i] * C, sizeof(float) * (size_t)C);
}

void embedding_backward(float *dtable, const float *dout, const int32_t *ids, int N, int C) {
    // two rows may share an id: threads own column chunks instead of rows
#pragma omp parallel if ((long)N * C >= OPS_PAR_MIN)
    {
        int nt = omp_get_num_threads(), it = omp_get_thread_num();
        int c0 = (int)((long)C * it / nt), c1 = (int)((long)C * (it + 1) / nt);
        for (int i = 0; i < N; i++) {
            if (ids[i] < 0) continue;
            float *d = dtable + (long)ids[i] * C;
            const float *g = dout + (long)i * C;
            for (int c = c0; c < c1; c++) d[c] += g[c];
        }
    }
}

static int image_positions_count(const int32_t *ids, int32_t image_token_id, int N) {
    int n = 0;
    for (int i = 0; i < N; i++) n += ids[i] == image_token_id;
    return n;
}

int image_scatter_forward(float *embeds, const int32_t *ids, int32_t image_token_id, const float *feats, int N,
                          int C, int M) {
    int n = image_positions_count(ids, image_token_id, N);
    if (n != M) {
        LOG_E("image_scatter_forward: %d image tokens but %d feature rows", n, M);
        return LLAVA_ESHAPE;
    }
    for (int i = 0, kk = 0; i < N; i++)
        if (ids[i] == image_token_id)
            memcpy(embeds + (long)i * C, feats + (long)(kk++) * C, sizeof(float) * (size_t)C);
    return 0;
}

int image_scatter_backward(float *dfeats, const float *dembeds, const int32_t *ids, int32_t image_token_id, int N,
                           int C, int M) {
    int n = image_positions_count(ids, image_token_id, N);
    if (n != M) {
        LOG_E("image_scatter_backward: %d image tokens but %d feature rows", n, M);
        return LLAVA_ESHAPE;
    }
    for (int i = 0, kk = 0; i < N; i++)
        if (ids[i] == image_token_id)
            memcpy(dfeats + (long)(kk++) * C, dembeds + (long)i * C, sizeof(float) * (size_t)C);
    return 0;
}

void patch_im2col(float *out, const float *img, int B, int S, int P) {
    int G = S / P, NP = G * G, K = 3 * P * P;
#pragma omp parallel for collapse(2) if ((long)B * NP * K >= OPS_PAR_MIN)
    for (int b = 0; b < B; b++) {
        for (int p = 0; p < NP; p++) {
            int py = p / G, px = p % G;
            float *o = out + ((long)b * NP + p) * K;
            for (int c = 0; c < 3; c++)
                for (int ky = 0; ky < P; ky++) {
                    const float *src = img + (((long)b * 3 + c) * S + (long)py * P + ky) * S + (long)px * P;
                    memcpy(o + (c * P + ky) * P, src, sizeof(float) * (size_t)P);
                }
        }
    }
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Element-wise helpers                                                                                       */

void residual_forward(float *out, const float *a, const float *b, long n) {
#pragma omp parallel for if (n >= OPS_PAR_MIN)
    for (long i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void add_inplace(float *y, const float *x, long n) {
#pragma omp parallel for if (n >= OPS_PAR_MIN)
    for (long i = 0; i < n; i++) y[i] += x[i];
}

void scale_inplace(float *x, float s, long n) {
#pragma omp parallel for if (n >= OPS_PAR_MIN)
    for (long i = 0; i < n; i++) x[i] *= s;
}

void add_rows(float *out, const float *row, int N, int C) {
#pragma omp parallel for if ((long)N * C >= OPS_PAR_MIN)
    for (int i = 0; i < N; i++) {
        float *o = out + (long)i * C;
        for (int c = 0; c < C; c++) o[c] += row[c];
    }
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Loss                                                                                                       */

/* log(sum(exp(x))) of one row, max-subtracted; float expf (glibc's is ~2 ns, double exp twice that) with float
 * partial sums over chunks of 256, the chunks summed in double (exact to ~1e-7 for any V). */
static double logsumexp_row(const float *x, int V) {
    float mx = x[0];
#pragma omp simd reduction(max : mx)
    for (int j = 1; j < V; j++) mx = x[j] > mx ? x[j] : mx;
    double s = 0.0;
    for (int j0 = 0; j0 < V; j0 += 256) {
        int j1 = j0 + 256 < V ? j0 + 256 : V;
        float part = 0.0f;
        for (int j = j0; j < j1; j++) part += expf(x[j] - mx);
        s += part;
    }
    return mx + log(s);
}

void crossentropy_forward(float *losses, const float *logits, const int32_t *targets, int N, int V,
                          double *loss_sum, int64_t *n_targets) {
    double sum = 0.0;
    int64_t count = 0;
#pragma omp parallel for reduction(+ : sum, count) if ((long)N * V >= OPS_PAR_MIN)
    for (int i = 0; i < N; i++) {
        if (targets[i] < 0) {
            if (losses) losses[i] = 0.0f;
            continue;
        }
        const float *x = logits + (long)i * V;
        double l = logsumexp_row(x, V) - x[targets[i]];
        if (losses) losses[i] = (float)l;
        sum += l;
        count++;
    }
    if (loss_sum) *loss_sum = sum;
    if (n_targets) *n_targets = count;
}

void crossentropy_backward(float *dlogits, const float *logits, const int32_t *targets, int N, int V, float scale) {
#pragma omp parallel for if ((long)N * V >= OPS_PAR_MIN)
    for (int i = 0; i < N; i++) {
        float *d = dlogits + (long)i * V;
        if (targets[i] < 0) {
            memset(d, 0, sizeof(float) * (size_t)V);
            continue;
        }
        const float *x = logits + (long)i * V;
        // softmax = exp(x - lse) = exp(x - max) / sum: keep the float argument small and exact
        double lse = logsumexp_row(x, V);
        float mx = x[0];
#pragma omp simd reduction(max : mx)
        for (int j = 1; j < V; j++) mx = x[j] > mx ? x[j] : mx;
        float k = (float)(exp((double)mx - lse) * scale); // scale / sum
        for (int j = 0; j < V; j++) d[j] = expf(x[j] - mx) * k;
        d[targets[i]] -= scale;
    }
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Optimiser                                                                                                  */

void adamw_update(float *params, const float *grads, float *m, float *v, long n, double lr, double beta1,
                  double beta2, double eps, double weight_decay, int t) {
    // torch's _single_tensor_adamw: Python (double) scalars, each cast to float where it meets a tensor
    float decay = (float)(1.0 - lr * weight_decay);
    float w1 = (float)(1.0 - beta1);
    float b2 = (float)beta2, w2 = (float)(1.0 - beta2);
    double bc1 = 1.0 - pow(beta1, t), bc2 = 1.0 - pow(beta2, t);
    float step_size = (float)(-(lr / bc1));
    float bc2_sqrt = (float)sqrt(bc2);
    float feps = (float)eps;
    int small = fabsf(w1) < 0.5f;
#pragma omp parallel for if (n >= OPS_PAR_MIN)
    for (long i = 0; i < n; i++) {
        float g = grads[i];
        float p = params[i] * decay;
        // lerp(m, g, w1) as ATen computes it
        float mi = small ? m[i] + w1 * (g - m[i]) : g - (g - m[i]) * (1.0f - w1);
        float vi = v[i] * b2;
        vi = vi + w2 * g * g;
        float denom = sqrtf(vi) / bc2_sqrt + feps;
        params[i] = p + step_size * mi / denom;
        m[i] = mi;
        v[i] = vi;
    }
}

double global_norm_sq(const float *grads, long n) {
    double s = 0.0;
#pragma omp parallel for simd reduction(+ : s) if (n >= OPS_PAR_MIN)
    for (long i = 0; i < n; i++) s += (double)grads[i] * grads[i];
    return s;
}

float clip_grad_coef(double norm, float max_norm) {
    double coef = (double)max_norm / (norm + 1e-6);
    return coef < 1.0 ? (float)coef : 1.0f;
}

int lr_warmup_steps(int total_steps, double warmup_ratio) { return (int)ceil((double)total_steps * warmup_ratio); }

double lr_at_step(int step, int total_steps, int warmup_steps, double base_lr, lr_schedule_t schedule) {
    if (schedule == LR_CONSTANT) return base_lr;
    if (step < warmup_steps) return base_lr * ((double)step / (double)(warmup_steps > 1 ? warmup_steps : 1));
    if (schedule == LR_CONSTANT_WITH_WARMUP) return base_lr;
    int rest = total_steps - warmup_steps > 1 ? total_steps - warmup_steps : 1;
    if (schedule == LR_LINEAR) {
        double f = (double)(total_steps - step) / (double)rest;
        return base_lr * (f > 0.0 ? f : 0.0);
    }
    double progress = (double)(step - warmup_steps) / (double)rest;
    double f = 0.5 * (1.0 + cos(M_PI * 0.5 * 2.0 * progress));
    return base_lr * (f > 0.0 ? f : 0.0);
}
