"""Writes tests/fixtures/ops/*.safetensors: inputs and PyTorch / transformers outputs for the CPU ops in
kernels/cpu/ops.h, read by tests/unit/test_ops_ref.c. Tensors are stored in the C layout ([B,T,NH,HS] for heads).
Run from the repo root: python3 tests/reference/make_ops_fixtures.py  (torch 2.x CPU, transformers 5.x)."""
import os
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import LlamaConfig
from transformers.activations import ACT2FN
from transformers.masking_utils import create_causal_mask
from transformers.models.llama.modeling_llama import (LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb,
                                                      eager_attention_forward)
from transformers.optimization import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup
from transformers.training_args import TrainingArguments

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "ops")
torch.manual_seed(1234)


def save(name, tensors):
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    save_file(tensors, os.path.join(OUT, name + ".safetensors"), metadata={"format": "pt"})


def dd(x):
    """A double tensor as float32 pairs (hi, lo) with hi + lo == x to ~1e-14 (our reader has no F64)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    hi = x.float()
    lo = (x - hi.double()).float()
    return torch.stack([hi, lo], dim=-1)


def sz(*dims):
    return torch.tensor(dims, dtype=torch.int32)


def norms():
    N, C = 7, 13
    x = torch.randn(N, C) * 2 + 0.5
    w, b = torch.randn(C), torch.randn(C)
    ln = F.layer_norm(x, (C,), w, b, eps=1e-5)
    rms = LlamaRMSNorm(C, eps=1e-6)
    with torch.no_grad():
        rms.weight.copy_(w)
    save("norms", {"sizes": sz(N, C), "x": x, "w": w, "b": b, "layernorm": ln, "rmsnorm": rms(x)})


def rope():
    B, T, NH, HS = 2, 5, 3, 8
    cfg = LlamaConfig(hidden_size=NH * HS, num_attention_heads=NH, num_key_value_heads=NH, head_dim=HS,
                      rope_theta=10000.0, max_position_embeddings=4096)
    emb = LlamaRotaryEmbedding(cfg)
    x = torch.randn(B, T, NH, HS)
    pos = torch.tensor([[0, 1, 2, 3, 4], [7, 100, 511, 1500, 2047]], dtype=torch.int64)
    cos, sin = emb(x, pos)
    xh = x.transpose(1, 2)  # HF layout [B,NH,T,HS]
    out, _ = apply_rotary_pos_emb(xh, xh, cos, sin)
    save("rope", {"sizes": sz(B, T, NH, HS), "theta": torch.tensor([10000.0]), "x": x, "pos": pos.int(),
                  "out": out.transpose(1, 2)})


class _Stub(torch.nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.num_key_value_groups = groups
        self.training = False


def attention_llama(name, B, T, NH, NKV, HS, lengths):
    cfg = LlamaConfig(hidden_size=NH * HS, num_attention_heads=NH, num_key_value_heads=NKV, head_dim=HS)
    cfg._attn_implementation = "eager"
    q = torch.randn(B, T, NH, HS)
    k = torch.randn(B, T, NKV, HS)
    v = torch.randn(B, T, NKV, HS)
    am = torch.zeros(B, T, dtype=torch.int64)
    for b, L in enumerate(lengths):
        am[b, :L] = 1
    embeds = torch.zeros(B, T, NH * HS)
    pos = torch.arange(T).unsqueeze(0).expand(B, T)
    mask = create_causal_mask(config=cfg, inputs_embeds=embeds, attention_mask=am, past_key_values=None,
                              position_ids=pos)
    out, probs = eager_attention_forward(_Stub(NH // NKV), q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         mask, scaling=HS ** -0.5)
    save(name, {"sizes": sz(B, T, NH, NKV, HS, 1), "lengths": torch.tensor(lengths, dtype=torch.int32),
                "q": q, "k": k, "v": v, "out": out, "probs": probs})


def attention_clip():
    B, T, NH, HS = 2, 7, 4, 8  # CLIP vision: no mask, not causal
    q, k, v = torch.randn(B, T, NH, HS), torch.randn(B, T, NH, HS), torch.randn(B, T, NH, HS)
    out, probs = eager_attention_forward(_Stub(1), q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None,
                                         scaling=HS ** -0.5)
    save("attention_clip", {"sizes": sz(B, T, NH, NH, HS, 0), "q": q, "k": k, "v": v, "out": out, "probs": probs})


def activations():
    x = torch.randn(101) * 3
    gate, up = torch.randn(101) * 3, torch.randn(101)
    save("activations", {"x": x, "gelu": torch.nn.GELU()(x), "quick_gelu": ACT2FN["quick_gelu"](x),
                         "gate": gate, "up": up, "swiglu": F.silu(gate) * up})


def matmul_conv():
    N, C, OC = 6, 11, 5
    x, w, b = torch.randn(N, C), torch.randn(OC, C), torch.randn(OC)
    B, S, P, OCc = 2, 12, 4, 5
    img = torch.randn(B, 3, S, S)
    conv = torch.randn(OCc, 3, P, P)
    patches = F.conv2d(img, conv, stride=P).flatten(2).transpose(1, 2)  # [B, NP, OC], as CLIP embeds patches
    save("matmul_conv", {"sizes": sz(N, C, OC, B, S, P, OCc), "x": x, "w": w, "b": b, "linear": F.linear(x, w, b),
                         "img": img, "conv_w": conv, "patches": patches})


def crossentropy():
    N, V = 9, 37
    logits = torch.randn(N, V) * 3
    targets = torch.randint(0, V, (N,))
    targets[[1, 4, 5]] = -100
    lg = logits.clone().requires_grad_(True)
    loss = F.cross_entropy(lg, targets, ignore_index=-100, reduction="sum")
    n = (targets != -100).sum()
    (loss / n).backward()
    save("crossentropy", {"sizes": sz(N, V), "logits": logits, "targets": targets.int(),
                          "loss_sum": dd(loss.detach().double().reshape(1)),
                          "losses": F.cross_entropy(logits, targets, ignore_index=-100, reduction="none"),
                          "dlogits_mean": lg.grad})


def adamw():
    n = 50
    p = torch.nn.Parameter(torch.randn(n))
    opt = torch.optim.AdamW([p], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    t = {"p0": p.detach().clone()}
    for s in range(3):
        g = torch.randn(n) * (0.1 if s else 1e-4)
        p.grad = g.clone()
        opt.step()
        t[f"g{s}"] = g
        t[f"p{s + 1}"] = p.detach().clone()
    t["hparams"] = dd([1e-3, 0.9, 0.999, 1e-8, 0.1])
    save("adamw", t)


def lr_schedule():
    total, ratio, base = 100, 0.03, 2e-3
    # the real method on a stand-in (constructing TrainingArguments needs accelerate); a ratio < 1 is ceil'ed
    warmup = TrainingArguments.get_warmup_steps(SimpleNamespace(warmup_steps=ratio), total)
    out = {"sizes": sz(total, warmup), "hparams": dd([ratio, base])}
    for name, fn in (("cosine", get_cosine_schedule_with_warmup), ("linear", get_linear_schedule_with_warmup)):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=base)
        sch = fn(opt, num_warmup_steps=warmup, num_training_steps=total)
        lrs = []
        for _ in range(total + 2):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sch.step()
        out[name] = dd(lrs)
    save("lr_schedule", out)


def main():
    os.makedirs(OUT, exist_ok=True)
    norms()
    rope()
    # LLaMA: causal + right padding, grouped-query heads (NH=4 over NKV=2), odd sizes, a row padded to 1 token
    attention_llama("attention_llama_gqa", 3, 7, 4, 2, 6, [7, 4, 1])
    attention_llama("attention_llama_mha", 2, 70, 2, 2, 8, [70, 33])
    attention_clip()
    activations()
    matmul_conv()
    crossentropy()
    adamw()
    lr_schedule()
    print("wrote", sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()
