"""Writes tests/fixtures/model/<case>/: a tiny random LlavaForConditionalGeneration saved by save_pretrained
(model/), a batch (batch.safetensors) and what transformers computes for it (expected.safetensors): selected vision
features, projector output, logits, loss, every gradient of the mean loss in both training modes, and the
parameters after three AdamW steps. Read by tests/unit/test_model_parity.c and tests/integration/model_step.sh.
Run from the repo root: python3 tests/reference/make_model_fixtures.py  (torch 2.x CPU, transformers 5.x, fp32)."""
import json
import os
import shutil

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
from transformers.optimization import get_cosine_schedule_with_warmup

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "model")


class LinearProjector(nn.Module):
    """The original LLaVA projector (one Linear); HF's LlavaMultiModalProjector is always mlp2x."""

    def __init__(self, cv, h, bias):
        super().__init__()
        self.linear_1 = nn.Linear(cv, h, bias=bias)

    def forward(self, x):
        return self.linear_1(x)


CASES = {
    # MHA LLaMA, `linear` projector, vision_feature_layer -2 ("default": CLS dropped), one image + a text-only row
    # with right padding, untied lm_head, weight decay 0.
    "mha_linear": dict(
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                    image_size=28, patch_size=14, layer_norm_eps=1e-5, hidden_act="quick_gelu"),
        text=dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-5, rope_theta=10000.0,
                  tie_word_embeddings=False, max_position_embeddings=128),
        projector="linear", vision_feature_layer=-2, strategy="default", image_token_index=299,
        rows=[(16, [(1, 1)]), (11, [])],  # (length, [(position, image)]) with T = 16
        T=16, weight_decay=0.0, adam_mode="projector"),
    # GQA with an explicit head_dim, `mlp2x_gelu`, layer 1 counted from the front, "full" strategy (CLS kept), two
    # images in one row at different positions, right padding, a text-only row, tied embeddings, weight decay 0.1.
    "gqa_mlp2x": dict(
        vision=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                    image_size=42, patch_size=14, layer_norm_eps=1e-6, hidden_act="quick_gelu"),
        text=dict(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                  rope_theta=1000.0, tie_word_embeddings=True, max_position_embeddings=128),
        projector="mlp2x_gelu", vision_feature_layer=1, strategy="full", image_token_index=257,
        rows=[(36, [(2, 1), (20, 1)]), (28, [(5, 1)]), (40, [])],
        T=40, weight_decay=0.1, adam_mode="all"),
}


def build(case):
    vc = CLIPVisionConfig(**case["vision"])
    tc = LlamaConfig(**case["text"])
    cfg = LlavaConfig(vision_config=vc.to_dict(), text_config=tc.to_dict(),
                      image_token_index=case["image_token_index"],
                      vision_feature_layer=case["vision_feature_layer"],
                      vision_feature_select_strategy=case["strategy"],
                      projector_hidden_act="gelu", multimodal_projector_bias=True,
                      tie_word_embeddings=case["text"]["tie_word_embeddings"])
    if case["projector"] == "linear":
        cfg.mm_projector_type = "linear"
    cfg._attn_implementation = "eager"
    cfg.vision_config._attn_implementation = "eager"
    cfg.text_config._attn_implementation = "eager"
    model = LlavaForConditionalGeneration(cfg)
    if case["projector"] == "linear":
        model.model.multi_modal_projector = LinearProjector(vc.hidden_size, tc.hidden_size, True)
    # Perturb every parameter so that biases, norms and positions all matter.
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    if case["text"]["tie_word_embeddings"]:
        assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    return model.float().eval()


def make_batch(case, cfg):
    vc = cfg.vision_config
    npatch = (vc.image_size // vc.patch_size) ** 2
    ntok = npatch + (1 if case["strategy"] == "full" else 0)
    B, T, V = len(case["rows"]), case["T"], cfg.text_config.vocab_size
    ids = torch.randint(3, V, (B, T))
    ids[ids == case["image_token_index"]] = 5
    ids[:, 0] = 1
    mask = torch.zeros(B, T, dtype=torch.int64)
    labels = ids.clone()
    n_images = 0
    for b, (length, images) in enumerate(case["rows"]):
        mask[b, :length] = 1
        ids[b, length:] = 0
        labels[b, length:] = -100
        labels[b, 0] = -100
        for pos, _ in images:
            ids[b, pos:pos + ntok] = case["image_token_index"]
            labels[b, pos:pos + ntok] = -100
            n_images += 1
        labels[b, 1:4] = torch.where(ids[b, 1:4] == case["image_token_index"], labels[b, 1:4], -100)
    pixels = torch.randn(n_images, 3, vc.image_size, vc.image_size)
    return ids, labels, mask, pixels


def mean_loss(logits, labels, mask):
    lab = labels.masked_fill(mask == 0, -100)
    sl, tl = logits[:, :-1].reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1)
    n = (tl != -100).sum()
    return F.cross_entropy(sl, tl, ignore_index=-100, reduction="sum") / n, n


def trainable(model, mode):
    out = []
    for name, p in model.named_parameters():
        train = "multi_modal_projector" in name or (mode == "all" and "vision_tower" not in name)
        p.requires_grad_(train)
        if train:
            out.append((name, p))
    return out


def run(model, ids, labels, mask, pixels, exp):
    cfg = model.config
    with torch.no_grad():
        hs = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        feats = hs[cfg.vision_feature_layer]
        if cfg.vision_feature_select_strategy == "default":
            feats = feats[:, 1:]
        exp["vision_features"] = feats.clone()
        exp["projector_out"] = model.model.multi_modal_projector(feats).clone()
    for mode in ("projector", "all"):
        params = trainable(model, mode)
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, pixel_values=pixels, attention_mask=mask)
        loss, n = mean_loss(out.logits, labels, mask)
        loss.backward()
        if mode == "projector":
            exp["logits"] = out.logits.detach().clone()
            exp["loss"] = torch.tensor([loss.item()], dtype=torch.float64)
            exp["n_targets"] = torch.tensor([int(n)], dtype=torch.int64)
        for name, p in params:
            exp[f"grad.{mode}.{name}"] = p.grad.detach().clone()


def adam(model, case, ids, labels, mask, pixels, exp):
    params = trainable(model, case["adam_mode"])
    opt = torch.optim.AdamW([p for _, p in params], lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=case["weight_decay"])
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=1, num_training_steps=4)
    losses, lrs = [], []
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=ids, pixel_values=pixels, attention_mask=mask)
        loss, _ = mean_loss(out.logits, labels, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
        losses.append(loss.item())
    for name, p in params:
        exp[f"adamw.{name}"] = p.detach().clone()
    exp["adamw.losses"] = torch.tensor(losses, dtype=torch.float64)
    exp["adamw.lrs"] = torch.tensor(lrs, dtype=torch.float64)


def bad_batches(case_dir):
    """Malformed variants of mha_linear's batch for tests/integration/model_step.sh (each must be refused)."""
    from safetensors.torch import load_file
    good = load_file(os.path.join(case_dir, "batch.safetensors"))
    d = os.path.join(OUT, "bad")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    variants = {}
    v = dict(good)
    v["attention_mask"] = good["attention_mask"].flip(1).contiguous()  # left padding
    variants["left_padding"] = v
    v = dict(good)
    del v["labels"]
    variants["no_labels"] = v
    v = dict(good)
    v["labels"] = good["labels"][:, :-1].contiguous()
    variants["labels_shape"] = v
    v = dict(good)
    v["input_ids"] = good["input_ids"].int()
    variants["ids_dtype"] = v
    v = dict(good)
    ids = good["input_ids"].clone()
    ids[0, 1] = 5  # the first image token: 3 tokens for 4 patches
    v["input_ids"] = ids
    variants["image_count"] = v
    v = dict(good)
    ids = good["input_ids"].clone()
    ids[1, 2] = 1000
    v["input_ids"] = ids
    variants["oov"] = v
    v = dict(good)
    v["pixel_values"] = torch.zeros(1, 3, 42, 42)
    variants["image_size"] = v
    for name, t in variants.items():
        save_file(t, os.path.join(d, name + ".safetensors"), metadata={"format": "pt"})


def main():
    torch.manual_seed(20261122)
    for cname, case in CASES.items():
        d = os.path.join(OUT, cname)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        model = build(case)
        model.save_pretrained(os.path.join(d, "model"))
        ids, labels, mask, pixels = make_batch(case, model.config)
        save_file({"pixel_values": pixels, "input_ids": ids, "labels": labels, "attention_mask": mask},
                  os.path.join(d, "batch.safetensors"), metadata={"format": "pt"})
        exp = {}
        run(model, ids, labels, mask, pixels, exp)
        adam(model, case, ids, labels, mask, pixels, exp)
        meta = {"case": cname, "projector": case["projector"], "adam_mode": case["adam_mode"],
                "weight_decay": str(case["weight_decay"]), "lr": "1e-3", "warmup": "1", "total_steps": "4",
                "loss": repr(exp["loss"].item())}
        exp = {k: (v.float() if v.dtype == torch.float64 else v).contiguous() for k, v in exp.items()}
        save_file(exp, os.path.join(d, "expected.safetensors"), metadata=meta)
        with open(os.path.join(d, "expected.json"), "w") as f:
            json.dump({"loss": exp["loss"].item(), "n_targets": int(exp["n_targets"].item()), **meta}, f, indent=1)
        print(cname, "loss", meta["loss"], "targets", int(exp["n_targets"].item()))
    bad_batches(os.path.join(OUT, "mha_linear"))
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write("# Model parity fixtures\n\nMade by `python3 tests/reference/make_model_fixtures.py` (from the repo "
                f"root) with transformers {transformers.__version__} and torch {torch.__version__}, CPU, fp32, "
                "eager attention.\nEach case: `model/` (save_pretrained), `batch.safetensors` (pixel_values, "
                "input_ids, labels, attention_mask), `expected.safetensors` (vision_features, projector_out, "
                "logits, loss, grad.<mode>.<param> of the mean loss, adamw.<param> after three AdamW steps with "
                "clip 1.0 and cosine warmup 1 / total 4 at lr 1e-3), `expected.json` (the loss in full precision).\n"
                "`bad/*.safetensors`: malformed variants of mha_linear's batch that `llava-model step` must refuse.\n")


if __name__ == "__main__":
    main()
