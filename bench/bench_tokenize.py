"""Tokenize + template benchmark against LLaVA's Python preprocessing: writes 500 conversations (LLaVA JSON format,
mixed scripts, 1-5 rounds, images) to a temporary file, runs bench_tokenize (C: common/tokenizer + conversation) on
it, then times LLaVA's preprocess_v1 / preprocess_plain + tokenizer_image_token on the same records in this process
with transformers 4.37's legacy slow LlamaTokenizer logic over sentencepiece (tests/reference/
make_template_fixtures.py; transformers 5.x no longer ships the slow tokenizer) and prints samples/s and the ratio.
Run from the repo root: python3 bench/bench_tokenize.py [build-dir] [repeat]"""
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import make_template_fixtures as ref  # noqa: E402


def records(n, captions):
    r = random.Random(500)
    lines = ref.load_lines()
    out = []
    while len(out) < n:
        batch = ref.make_captions(r, lines) if captions else ref.make_records(r, lines)
        out += [x for x in batch if not str(x["id"]).startswith(("odd", "cap_"))]
    return out[:n]


def bench_python(template, recs, tokenizer, repeat):
    best = 1e30
    for _ in range(repeat):
        t0 = time.perf_counter()
        for rec in recs:
            ref.reference(template, rec, tokenizer)
        best = min(best, time.perf_counter() - t0)
    return len(recs) / best


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build")
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    exe = os.path.join(build, "bench", "bench_tokenize")
    if not os.path.exists(exe):
        exe = os.path.join(build, "bench_tokenize")
    tokenizer = ref.LegacyLlamaTokenizer(ref.MODEL)
    for template, captions in (("vicuna_v1", False), ("plain", True)):
        recs = records(500, captions)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as f:
            json.dump(recs, f, ensure_ascii=False)
            path = f.name
        try:
            res = subprocess.run([exe, "--tokenizer", ref.MODEL, "--data", path, "--template", template,
                                  "--repeat", str(max(repeat, 5))], check=True, capture_output=True, text=True)
        finally:
            os.remove(path)
        print(res.stdout.splitlines()[0])
        c_rate = float(re.search(r"samples_per_s=([0-9.]+)", res.stdout).group(1))
        py_rate = bench_python(template, recs, tokenizer, repeat)
        print(f"LLaVA Python preprocessing ({template}): {len(recs)} records, {py_rate:.0f} samples/s")
        print(f"ratio C / Python ({template}): {c_rate / py_rate:.1f}x")


if __name__ == "__main__":
    main()
