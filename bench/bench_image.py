"""Image decode + CLIP preprocessing benchmark, one core: writes 500 JPEGs (300-640 px, mixed aspect ratios and
subsampling) to a temporary directory, runs bench_image (C: common/image) on them at S=336 and 224 (with and without
--pad), and times LLaVA's Python path on the same files in this process: Image.open().convert("RGB") [+ expand2square]
+ CLIPImageProcessor (use_fast=False, the PIL backend). Prints samples/s of each and the ratio.
Run from the repo root: python3 bench/bench_image.py [build-dir] [n]"""
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
from make_image_fixtures import MEAN, expand2square, processor  # noqa: E402


def make_images(d, n):
    rng = np.random.default_rng(7)
    files = []
    for i in range(n):
        w = int(rng.integers(300, 641))
        h = int(rng.integers(300, 641))
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        a = np.stack([127 + 100 * np.sin(x / (5 + c * 7) + y / (9 + c)) for c in range(3)], -1)
        a += rng.normal(0, 12, a.shape).astype(np.float32)
        img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
        p = os.path.join(d, f"{i:04d}.jpg")
        img.save(p, "JPEG", quality=90, subsampling=[0, 2][i % 2])
        files.append(p)
    return files


def bench_python(files, size, pad):
    proc = processor(size)
    bg = tuple(int(m * 255) for m in MEAN)
    t0 = time.perf_counter()
    for f in files:
        img = Image.open(f).convert("RGB")
        if pad:
            img = expand2square(img, bg)
        proc(img, return_tensors="np")["pixel_values"]
    dt = time.perf_counter() - t0
    return len(files) / dt


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    exe = os.path.join(build, "bench", "bench_image")
    if not os.path.exists(exe):
        exe = os.path.join(build, "bench_image")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as d:
        files = make_images(d, n)
        print(f"{n} JPEGs 300-640 px (4:4:4 and 4:2:0), one core, decode + preprocess + normalise per sample")
        for size in (336, 224):
            for pad in (0, 1):
                out = subprocess.run(["taskset", "-c", "0", exe, str(size), str(pad)] + files, check=True,
                                     capture_output=True, text=True).stdout
                c = float(out.split("samples/s")[0].split(",")[-1])
                py = bench_python(files, size, pad)
                print(f"S={size} pad={pad}: C {c:.1f} samples/s, Pillow+CLIPImageProcessor {py:.1f} samples/s, "
                      f"ratio {c / py:.2f}x")


if __name__ == "__main__":
    main()
