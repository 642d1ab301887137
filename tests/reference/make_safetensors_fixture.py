"""Writes tests/fixtures/safetensors/python.safetensors with Python's safetensors library (one tensor per dtype we
support, values given by simple formulas that tests/unit/test_safetensors.c recomputes, plus a scalar and an empty
tensor). Run from the repo root: python3 tests/reference/make_safetensors_fixture.py"""
import torch
from safetensors.torch import save_file

i = torch.arange(24)
tensors = {
    "vision_model.f32": (i.float() * 0.5 - 3.0).reshape(2, 3, 4),
    "vision_model.f16": (i[:6].float() * 0.25 - 1.0).half().reshape(6),
    "lm.bf16": (i[:10].float() * 1.5 + 0.5).bfloat16().reshape(5, 2),
    "lm.i64": (i[:4] * 10000000000 - 7),
    "a.i32": (-(i[:6].int()) * 3).reshape(3, 2),
    "z.u8": (i[:7] * 30).to(torch.uint8),
    "scalar": torch.tensor(2.5),
    "empty": torch.zeros(0, 3),
}
save_file(tensors, "tests/fixtures/safetensors/python.safetensors", metadata={"format": "pt"})
