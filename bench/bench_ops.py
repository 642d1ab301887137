"""PyTorch peer of bench/bench_ops.c: the same ops at the same shapes (forward, and backward through autograd where
the C bench times a backward), so the two columns can be compared line by line.
Run: python3 bench/bench_ops.py [threads] [T]   (defaults: 2 threads, T = 512)."""
import sys
import time

import torch
import torch.nn.functional as F

from transformers.models.llama.modeling_llama import apply_rotary_pos_emb


def timeit(name, fn, reps, flops=0.0):
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    ms = (time.perf_counter() - t0) * 1e3 / reps
    extra = f"  {flops / (ms * 1e-3) / 1e9:7.1f} GFLOP/s" if flops else ""
    print(f"{name:<40} {ms:9.3f} ms{extra}")


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    T = int(sys.argv[2]) if len(sys.argv) > 2 else 512
    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, T {T}")
    x, w = torch.randn(512, 2048), torch.randn(512, 2048)
    timeit("matmul 512x512x2048", lambda: F.linear(x, w), 50, 2.0 * 512 * 512 * 2048)
    N, C, H, NH, HS, V = T, 4096, 11008, 32, 128, 32000
    x, w = torch.randn(N, C), torch.randn(H, C)
    dz = torch.randn(N, H)
    timeit("matmul fwd [T,4096]x[11008,4096]^T", lambda: F.linear(x, w), 2, 2.0 * N * C * H)
    timeit("matmul bwd dinp+dweight", lambda: (dz @ w, dz.t() @ x), 1, 4.0 * N * C * H)
    g = torch.randn(C)
    timeit("rmsnorm fwd [T,4096]", lambda: g * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)), 20)
    timeit("layernorm fwd [T,4096]", lambda: F.layer_norm(x, (C,), g, g, 1e-5), 20)
    a, b = torch.randn(N, H), torch.randn(N, H)
    timeit("swiglu fwd [T,11008]", lambda: F.silu(a) * b, 20)
    timeit("quick_gelu fwd [T,11008]", lambda: a * torch.sigmoid(1.702 * a), 20)
    timeit("gelu fwd [T,11008]", lambda: F.gelu(a), 20)
    q = torch.randn(1, NH, N, HS)
    pos = torch.arange(N)
    inv = 1.0 / (10000.0 ** (torch.arange(0, HS, 2).float() / HS))
    emb = torch.cat([pos[:, None].float() * inv] * 2, -1)
    cos, sin = emb.cos()[None], emb.sin()[None]
    timeit("rope fwd q [T,32,128] (incl. cos/sin)", lambda: apply_rotary_pos_emb(q, q, cos, sin), 20)
    k, v = torch.randn(1, NH, N, HS), torch.randn(1, NH, N, HS)
    mask = torch.full((N, N), float("-inf")).triu(1)
    f = 2.0 * 2.0 * NH * N * N * HS / 2.0

    def eager():
        p = torch.softmax(q @ k.transpose(2, 3) * HS ** -0.5 + mask, -1, dtype=torch.float32)
        return p @ v
    timeit("attention fwd causal (eager)", eager, 2, f)
    timeit("attention fwd causal (sdpa)", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), 2, f)
    with torch.enable_grad():
        qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
        do = torch.randn_like(q)

        def eager_bwd():
            p = torch.softmax(qg @ kg.transpose(2, 3) * HS ** -0.5 + mask, -1, dtype=torch.float32)
            torch.autograd.grad(p @ vg, (qg, kg, vg), do)
        timeit("attention fwd+bwd causal (eager)", eager_bwd, 2, 3 * f)
    logits = torch.randn(N, V)
    tg = torch.randint(0, V, (N,))
    timeit("crossentropy fwd [T,32000]", lambda: F.cross_entropy(logits, tg, reduction="sum"), 5)
    with torch.enable_grad():
        lg = logits.clone().requires_grad_(True)
        timeit("crossentropy fwd+bwd", lambda: torch.autograd.grad(F.cross_entropy(lg, tg), lg), 5)
    n = 50 * 1000 * 1000
    p = torch.nn.Parameter(torch.randn(n))
    p.grad = torch.randn(n)
    opt = torch.optim.AdamW([p], lr=1e-3, weight_decay=0.0)
    timeit("adamw 50M params", opt.step, 3)


if __name__ == "__main__":
    main()
