#!/usr/bin/env bash
# One LLaVA training step, C (bench_step) vs PyTorch + transformers (bench_step.py), same config, same threads,
# in the same run. PyTorch runs twice, with libgomp's default wait policy and with OMP_WAIT_POLICY=PASSIVE (the C
# program sets PASSIVE for itself, see worker/runtime_env.h); the ratio is against the faster of the two.
# Prints each result line, the time ratio (C / PyTorch; target <= 0.7) and the peak-RSS ratio (target <= 1).
# Usage: bash bench/bench_step.sh [BUILD_DIR] [THREADS] [STEPS]   (defaults: build, 2, 5)
set -euo pipefail
build=${1:-build}
threads=${2:-2}
steps=${3:-5}
here=$(cd "$(dirname "$0")" && pwd)
get() { echo "$1" | sed "s/.*$2=\([^ ]*\).*/\1/"; }
c=$(OMP_NUM_THREADS=$threads "$build/bench/bench_step" --threads "$threads" --steps "$steps" | grep '^result')
echo "$c"
flops=$(get "$c" flops)
py1=$(env -u OMP_WAIT_POLICY OMP_NUM_THREADS=$threads python3 "$here/bench_step.py" --threads "$threads" \
      --steps "$steps" --flops "$flops" 2> /dev/null | grep '^result')
echo "$py1 omp_wait=default"
py2=$(OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=$threads python3 "$here/bench_step.py" --threads "$threads" \
      --steps "$steps" --flops "$flops" 2> /dev/null | grep '^result')
echo "$py2 omp_wait=passive"
awk -v ct="$(get "$c" step_ms)" -v p1="$(get "$py1" step_ms)" -v p2="$(get "$py2" step_ms)" \
    -v cm="$(get "$c" peak_rss_mb)" -v m1="$(get "$py1" peak_rss_mb)" -v m2="$(get "$py2" peak_rss_mb)" 'BEGIN {
    pt = p1 < p2 ? p1 : p2; pm = m1 < m2 ? m1 : m2;
    printf "step time: C %.1f ms, PyTorch %.1f ms (best of both policies), ratio %.3f (target <= 0.7)\n", ct, pt, ct / pt;
    printf "peak RSS:  C %.1f MB, PyTorch %.1f MB, ratio %.3f (target <= 1)\n", cm, pm, cm / pm }'
