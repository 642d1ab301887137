#!/usr/bin/env bash
# The README's main command: installs dependencies, builds, makes the demo data (synthetic shapes, its tokenizer
# and LMDB datasets) and a tiny random LLaVA, then runs jobs/demo.yaml with llava-run (local CPU workers).
# Usage: bash deploy/run.sh [--fresh] [llava-run options]   (--fresh: retrain instead of reusing runs/demo/run)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
if [ "${1:-}" = "--fresh" ]; then shift; rm -rf runs/demo/run; fi

bash deploy/install-deps.sh
if [ ! -x build/llava-run ] || [ -n "$(find CMakeLists.txt common coordinator worker kernels -newer build/llava-run -name '*.[ch]' -o -newer build/llava-run -name CMakeLists.txt 2>/dev/null | head -1)" ]; then
  echo "== build"
  cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >build.configure.log 2>&1 || { cat build.configure.log; exit 1; }
  cmake --build build -j"$(nproc)" >/dev/null
fi
# what made runs/demo/data: data from another version or size is made again (and the run trained on it dropped)
made_by="synth v3 (shapes at --jitter 20) --n 4000 --n-test 200 --image-size 56 --ingest 56"
if [ ! -f runs/demo/data/instruct/manifest.json ] || [ "$(cat runs/demo/data/made-by 2>/dev/null)" != "$made_by" ]; then
  echo "== demo data: 4000 training and 200 held-out images of coloured shapes"
  rm -rf runs/demo/data runs/demo/run && mkdir -p runs/demo
  build/llava-data synth --out runs/demo/data --n 4000 --n-test 200 --image-size 56 --ingest 56 --jobs "$(nproc)"
  echo "$made_by" >runs/demo/data/made-by
fi
# what made runs/demo/model-init: a model from an older init is made again (and the run trained from it dropped)
model_by="init v2 (projector: torch nn.Linear default) --config jobs/assets/demo-model.json $(cksum <jobs/assets/demo-model.json | cut -d" " -f1) --seed 1"
if [ ! -f runs/demo/model-init/config.json ] || [ "$(cat runs/demo/model-init/made-by 2>/dev/null)" != "$model_by" ]; then
  echo "== a tiny random LLaVA (CLIP 3x64 at 56 px, LLaMA 2x128 with 16 heads, vocab 1001)"
  rm -rf runs/demo/model-init runs/demo/run
  build/llava-model init --config jobs/assets/demo-model.json --out runs/demo/model-init --seed 1
  echo "$model_by" >runs/demo/model-init/made-by
fi
echo "== llava-run jobs/demo.yaml"
exec build/llava-run jobs/demo.yaml "$@"
