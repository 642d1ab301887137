#!/usr/bin/env bash
# Coordinator overhead with no-compute simulated workers: 4, 64 and 256 workers on loopback.
# Usage: bash bench/bench_coordinator.sh [BUILD_DIR]   (default build/)
set -euo pipefail
build=${1:-build}
for n in 4 64 256; do
  "$build/bench/bench_coordinator" --workers "$n" --steps 20 --global-batch 1024 --bindir "$build"
done
