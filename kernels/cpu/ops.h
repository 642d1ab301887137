/* CPU fp32 ops for the LLaVA model (CLIP ViT, projector, LLaMA): forward and backward of each layer, the loss,
 * AdamW and the learning-rate schedule. Row-major; N = rows = B*T. Matmuls go to OpenBLAS, the rest is OpenMP.
 * Tested by tests/unit/test_ops_grad.c (finite differences) and tests/unit/test_ops_ref.c (PyTorch fixtures). */
#ifndef LLAVA_KERNELS_CPU_OPS_H
#define LLAVA_KERNELS_CPU_OPS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Conventions
 * - Outputs first, then inputs, then sizes (llm.c style). Shapes in brackets, row-major, last index fastest.
 * - Every *_backward ACCUMULATES (+=) into its gradient outputs (dinp, dweight, dbias, dq, ...), as llm.c does,
 *   so a tensor used twice (residual stream, GQA) sums its gradients; zero the buffers before the backward pass.
 *   Exceptions, stated at the op: crossentropy_backward and image_scatter_backward WRITE their output.
 * - A gradient pointer may be NULL when that gradient is not needed (frozen weights): it is then not computed.
 * - Element-wise ops allow out == inp (in place) unless stated otherwise.
 * - Ops that can fail return int (0 or a negative LLAVA_E* code from common/err.h); the others are void. */

/* ---------------------------------------------------------------------------------------------------------- */
/* Threads                                                                                                    */

/** Sets the threads used by every op: OpenMP's team size and OpenBLAS's pool (n <= 0: all cores).
 *  Call it once at startup, before other threads use BLAS, from the thread that runs the ops (OpenMP's setting
 *  belongs to the calling thread). The first call also shortens OpenBLAS's idle spin (OPENBLAS_THREAD_TIMEOUT=4
 *  unless the environment sets it) and restarts its pool: spinning BLAS workers otherwise take the cores from
 *  the OpenMP loops that follow each matmul (rmsnorm [512,4096]: 0.3 ms alone, 5 ms just after an sgemm). */
void kernels_set_threads(int n);
/** Threads the ops currently use. */
int kernels_get_threads(void);

/* ---------------------------------------------------------------------------------------------------------- */
/* Linear layers                                                                                              */

/** out[N,OC] = inp[N,C] @ weight[OC,C]^T + bias[OC]. weight has nn.Linear's layout; bias may be NULL. */
void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int N, int C, int OC);
/** dinp[N,C] += dout @ weight; dweight[OC,C] += dout^T @ inp; dbias[OC] += column sums of dout[N,OC].
 *  Any of dinp, dweight, dbias may be NULL (skipped: a frozen layer needs only dinp). */
void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                     const float *weight, int N, int C, int OC);

/* ---------------------------------------------------------------------------------------------------------- */
/* Normalisation (statistics in double, results fp32)                                                        */

/** nn.LayerNorm over the last dim: out[N,C] = (inp - mean) * rstd * weight[C] + bias[C].
 *  Saves mean[N] and rstd[N] = 1/sqrt(var + eps) (biased var) for the backward; either may be NULL (inference). */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                       const float *bias, int N, int C, float eps);
/** Accumulates dinp[N,C], dweight[C], dbias[C] (each may be NULL) from dout[N,C] and the saved mean/rstd. */
void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                        const float *weight, const float *mean, const float *rstd, int N, int C);

/** HF LlamaRMSNorm: out[N,C] = inp * rsqrt(mean(inp^2) + eps) * weight[C]. Saves rstd[N] (may be NULL). */
void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps);
/** Accumulates dinp[N,C] and dweight[C] (either may be NULL) from dout[N,C] and the saved rstd. */
void rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                      const float *rstd, int N, int C);

/* ---------------------------------------------------------------------------------------------------------- */
/* Rotary position embedding (HF LLaMA, rotate-half layout)                                                   */

/** out[B,T,NH,HS] = inp * cos + rotate_half(inp) * sin, with inv_freq[i] = 1/theta^(2i/HS) (fp32, as HF),
 *  angle = pos * inv_freq[i] for i < HS/2, duplicated over the two halves; rotate_half(x) = cat(-x2, x1).
 *  pos[B*T] gives each row's position; NULL means 0..T-1 in every batch row (right padding keeps these).
 *  HS must be even. out may alias inp. */
void rope_forward(float *out, const float *inp, const int32_t *pos, int B, int T, int NH, int HS, float theta);
/** dinp[B,T,NH,HS] += R^T dout (the rotation by -angle). dinp must not alias dout. */
void rope_backward(float *dinp, const float *dout, const int32_t *pos, int B, int T, int NH, int HS, float theta);

/* ---------------------------------------------------------------------------------------------------------- */
/* Attention (scaled dot product, softmax in fp32 as HF eager)                                                */

/** out[B,T,NH,HS] = softmax(q k^T / sqrt(HS) + mask) v, per batch row b and head h; head h reads kv head
 *  h / (NH/NKV) (grouped-query; NH % NKV == 0). q is [B,T,NH,HS], k and v are [B,T,NKV,HS].
 *  Key j is visible to query i iff (lengths == NULL or j < lengths[b]) and (!causal or j <= i): transformers'
 *  eager mask for right padding (padded query rows still attend to the real keys before them). A query row
 *  with no visible key gets zeros (no NaN).
 *  probs[B,NH,T,T]: when not NULL, receives the softmax (0 where masked) for the backward. When NULL the op
 *  keeps only small per-thread scratch and attention_backward recomputes the softmax (memory-lean training).
 *  Returns 0, LLAVA_EINVAL (bad sizes) or LLAVA_ENOMEM (scratch). */
int attention_forward(float *out, float *probs, const float *q, const float *k, const float *v,
                      const int32_t *lengths, int B, int T, int NH, int NKV, int HS, int causal);
/** Accumulates dq[B,T,NH,HS], dk and dv [B,T,NKV,HS] (dk/dv sum over the heads sharing a kv head) from
 *  dout[B,T,NH,HS]. probs is the forward's saved softmax or NULL (recomputed from q and k). out is not needed.
 *  dq, dk, dv must not be NULL. Returns 0, LLAVA_EINVAL or LLAVA_ENOMEM. */
int attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *probs, const float *q,
                       const float *k, const float *v, const int32_t *lengths, int B, int T, int NH, int NKV,
                       int HS, int causal);

/** Row softmax: out[N,V] = softmax(inp[N,V]) along the last dim (max-subtracted, sum in double). out may alias. */
void softmax_forward(float *out, const float *inp, int N, int V);

/* ---------------------------------------------------------------------------------------------------------- */
/* Activations (element-wise over n values)                                                                   */

/** out = x * sigmoid(1.702 x) (CLIP's quick_gelu). */
void quick_gelu_forward(float *out, const float *inp, long n);
/** dinp += dout * d/dx quick_gelu(inp). */
void quick_gelu_backward(float *dinp, const float *inp, const float *dout, long n);
/** out = 0.5 x (1 + erf(x / sqrt 2)) (nn.GELU(), exact). */
void gelu_forward(float *out, const float *inp, long n);
/** dinp += dout * (Phi(x) + x phi(x)). */
void gelu_backward(float *dinp, const float *inp, const float *dout, long n);
/** LLaMA MLP gate: out = silu(gate) * up = gate * sigmoid(gate) * up. out may alias gate or up. */
void swiglu_forward(float *out, const float *gate, const float *up, long n);
/** dgate += dout * up * silu'(gate); dup += dout * silu(gate). Either may be NULL. */
void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, long n);

/* ---------------------------------------------------------------------------------------------------------- */
/* Embeddings, image features, patches                                                                        */

/** out[N,C] = table[ids[i], :]. Ids must be in [0, V) (the caller checks; image placeholders are replaced by
 *  image_scatter_forward, so map them to a valid row such as 0 first). */
void embedding_forward(float *out, const int32_t *ids, const float *table, int N, int C);
/** dtable[V,C] += dout[N,C] scattered by ids (rows whose id is negative are skipped). */
void embedding_backward(float *dtable, const float *dout, const int32_t *ids, int N, int C);

/** Like HF masked_scatter: the k-th position i with ids[i] == image_token_id gets embeds[i,:] = feats[k,:]
 *  (feats is [M,C], images' patch rows in order). Returns 0, or LLAVA_ESHAPE (nothing written) when the number
 *  of such positions differs from M. */
int image_scatter_forward(float *embeds, const int32_t *ids, int32_t image_token_id, const float *feats, int N,
                          int C, int M);
/** dfeats[M,C] = dembeds rows at the image positions (WRITES, a gather); returns 0 or LLAVA_ESHAPE as above.
 *  The caller must not also send those rows to embedding_backward (the scatter replaced them). */
int image_scatter_backward(float *dfeats, const float *dembeds, const int32_t *ids, int32_t image_token_id, int N,
                           int C, int M);

/** Patches of img[B,3,S,S] as rows: out[B*NP, 3*P*P], NP = (S/P)^2 patches in raster order (row of patches
 *  major), each row ordered (channel, ky, kx) like a flattened conv weight [OC,3,P,P], so that
 *  Conv2d(3, OC, kernel=stride=P, bias=False)(img) flattened to [B, NP, OC] == matmul_forward(out, im2col,
 *  conv_w_flat, NULL, B*NP, 3*P*P, OC). S % P must be 0 (leftover pixels are dropped, as the conv does). */
void patch_im2col(float *out, const float *img, int B, int S, int P);

/* ---------------------------------------------------------------------------------------------------------- */
/* Element-wise helpers                                                                                       */

/** out = a + b (out may alias a or b). */
void residual_forward(float *out, const float *a, const float *b, long n);
/** y += x. */
void add_inplace(float *y, const float *x, long n);
/** x *= s. */
void scale_inplace(float *x, float s, long n);
/** out[N,C] += row[C] for each of the N rows (e.g. a position embedding shared by the batch). */
void add_rows(float *out, const float *row, int N, int C);

/* ---------------------------------------------------------------------------------------------------------- */
/* Loss                                                                                                       */

/** Cross entropy of logits[N,V] against targets[N] (int32; -100 = ignored; others must be in [0,V)).
 *  losses[N] (may be NULL) receives each row's loss (0 for ignored rows). *loss_sum gets the sum over the
 *  non-ignored rows (double) and *n_targets their count (either pointer may be NULL). Equals
 *  F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum"). The caller shifts targets by one. */
void crossentropy_forward(float *losses, const float *logits, const int32_t *targets, int N, int V,
                          double *loss_sum, int64_t *n_targets);
/** WRITES dlogits[N,V] = scale * (softmax(logits) - onehot(target)); zero rows for ignored targets.
 *  (scale = 1/total_targets for a mean loss.) dlogits may alias logits (in place, saves a [N,V] buffer). */
void crossentropy_backward(float *dlogits, const float *logits, const int32_t *targets, int N, int V, float scale);

/* ---------------------------------------------------------------------------------------------------------- */
/* Optimiser                                                                                                  */

/** One torch.optim.AdamW step (t is the 1-based step count) over n parameters, as torch computes it:
 *  p *= 1 - lr*wd; m = lerp(m, g, 1-beta1); v = beta2 v + (1-beta2) g^2;
 *  p -= lr/(1-beta1^t) * m / (sqrt(v)/sqrt(1-beta2^t) + eps). */
void adamw_update(float *params, const float *grads, float *m, float *v, long n, double lr, double beta1,
                  double beta2, double eps, double weight_decay, int t);
/** Sum of squares of grads[n], accumulated in double (sum over tensors, then sqrt, for the global norm). */
double global_norm_sq(const float *grads, long n);
/** torch.nn.utils.clip_grad_norm_'s factor: min(1, max_norm / (norm + 1e-6)); scale the grads by it. */
float clip_grad_coef(double norm, float max_norm);

typedef enum { LR_CONSTANT = 0, LR_LINEAR = 1, LR_COSINE = 2, LR_CONSTANT_WITH_WARMUP = 3 } lr_schedule_t;

/** transformers' TrainingArguments warmup: ceil(warmup_ratio * total_steps) (done in double, as Python does). */
int lr_warmup_steps(int total_steps, double warmup_ratio);
/** Learning rate of optimizer step `step` (0-based: the value the scheduler holds after `step` scheduler.step()
 *  calls), as get_{constant,linear,cosine,constant}_schedule_with_warmup(num_cycles=0.5) computes it:
 *  warmup: base * step / max(1, warmup); then linear: base * max(0, (total - step) / max(1, total - warmup)),
 *  cosine: base * max(0, 0.5 (1 + cos(pi * progress))), progress = (step - warmup) / max(1, total - warmup).
 *  LR_CONSTANT ignores warmup. */
double lr_at_step(int step, int total_steps, int warmup_steps, double base_lr, lr_schedule_t schedule);

#ifdef __cplusplus
}
#endif

#endif
