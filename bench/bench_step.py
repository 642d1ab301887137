"""PyTorch + transformers peer of bench/bench_step.c: the same LLaVA config and batch shape, one training step
(forward, backward, clip_grad_norm_ 1.0, AdamW) in `all` mode (vision tower frozen), fp32, same thread count.
Prints one `result` line like the C program. Run: python3 bench/bench_step.py [--threads 2] [--steps 3] [--attn sdpa]"""
import argparse
import resource
import sys
import time

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--intermediate", type=int, default=1376)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--flops", type=float, default=0.0, help="FLOPs of a step (from bench_step.c) for GFLOP/s")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    vc = CLIPVisionConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6,
                          image_size=224, patch_size=14)
    tc = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=a.intermediate, num_hidden_layers=8,
                     num_attention_heads=8, num_key_value_heads=8, head_dim=64, max_position_embeddings=2048)
    cfg = LlavaConfig(vision_config=vc.to_dict(), text_config=tc.to_dict(), image_token_index=31999,
                      vision_feature_layer=-2, vision_feature_select_strategy="default")
    model = LlavaForConditionalGeneration._from_config(cfg, attn_implementation=a.attn).float().train()
    params = []
    for n, p in model.named_parameters():
        p.requires_grad_("vision_tower" not in n)
        if p.requires_grad:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    B, T, rows = 2, 512, 256
    ids = torch.randint(3, 31000, (B, T))
    ids[:, 0] = 1
    ids[:, 1:1 + rows] = 31999
    labels = ids.clone()
    labels[:, :1 + rows] = -100
    mask = torch.ones(B, T, dtype=torch.int64)
    pixels = torch.rand(B, 3, 224, 224) * 2 - 1
    times = []
    loss = 0.0
    for it in range(a.steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=ids, pixel_values=pixels, attention_mask=mask, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
        loss = out.loss.item()
        print(f"step {it}: {times[-1] * 1e3:.1f} ms, loss {loss:.4f}", file=sys.stderr)
    med = sorted(times[1:])[len(times[1:]) // 2]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    gf = a.flops / med / 1e9 if a.flops else 0.0
    print(f"result impl=torch threads={a.threads} step_ms={med * 1e3:.1f} gflops={gf:.2f} peak_rss_mb={rss:.1f} "
          f"loss={loss:.4f} attn={a.attn} torch={torch.__version__}")


if __name__ == "__main__":
    main()
