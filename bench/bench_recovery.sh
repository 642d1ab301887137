#!/usr/bin/env bash
# Failure recovery on loopback: 50 seeded kill -9 trials of one of 3 local sim workers at a random moment; prints
# detection and recovery times (median, worst) against the failure-free step time, and the targets.
# Usage: bash bench/bench_recovery.sh [BUILD_DIR] [extra bench_recovery options]   (default build/)
set -euo pipefail
build=${1:-build}
shift || true
"$build/bench/bench_recovery" --bindir "$build" --trials 50 --seed 1 "$@"
