#!/usr/bin/env bash
# One LLaVA training step, C (bench_step) vs PyTorch + transformers (bench_step.py), same config, same threads,
# in the same run; prints both lines, the time ratio (C / PyTorch; target <= 0.7) and the peak-RSS ratio.
# Usage: bash bench/bench_step.sh [BUILD_DIR] [THREADS] [STEPS]   (defaults: build, 2, 5)
set -euo pipefail
build=${1:-build}
threads=${2:-2}
steps=${3:-5}
here=$(cd "$(dirname "$0")" && pwd)
c=$(OMP_NUM_THREADS=$threads "$build/bench/bench_step" --threads "$threads" --steps "$steps" | grep '^result')
echo "$c"
flops=$(echo "$c" | sed 's/.*flops=\([^ ]*\).*/\1/')
py=$(OMP_NUM_THREADS=$threads python3 "$here/bench_step.py" --threads "$threads" --steps "$steps" --flops "$flops" \
     2> /dev/null | grep '^result')
echo "$py"
get() { echo "$1" | sed "s/.*$2=\([^ ]*\).*/\1/"; }
awk -v ct="$(get "$c" step_ms)" -v pt="$(get "$py" step_ms)" -v cm="$(get "$c" peak_rss_mb)" \
    -v pm="$(get "$py" peak_rss_mb)" 'BEGIN {
    printf "step time: C %.1f ms, PyTorch %.1f ms, ratio %.3f (target <= 0.7)\n", ct, pt, ct / pt;
    printf "peak RSS:  C %.1f MB, PyTorch %.1f MB, ratio %.3f (target <= 1)\n", cm, pm, cm / pm }'
