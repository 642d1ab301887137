#!/usr/bin/env bash
# Ring all-reduce (bench_allreduce, worker/collective) vs torch.distributed all_reduce on gloo (bench_allreduce.py),
# loopback, one process per rank, same sizes, in the same run. Prints each result line and, per world size and
# buffer size, the time ratio ring / gloo (< 1: the ring is faster).
# Usage: bash bench/bench_allreduce.sh [BUILD_DIR] [WORLDS] [SIZES_MB]   (defaults: build, "2 3", 1,16,128)
set -euo pipefail
build=${1:-build}
worlds=${2:-2 3}
sizes=${3:-1,16,128}
here=$(cd "$(dirname "$0")" && pwd)
get() { echo "$1" | sed "s/.*$2=\([^ ]*\).*/\1/"; }
for w in $worlds; do
    ring=$("$build/bench/bench_allreduce" --world "$w" --sizes-mb "$sizes" | grep '^result')
    gloo=$(python3 "$here/bench_allreduce.py" --world "$w" --sizes-mb "$sizes" 2> /dev/null | grep '^result')
    echo "$ring"
    echo "$gloo"
    while read -r line; do
        bytes=$(get "$line" bytes)
        g=$(echo "$gloo" | grep "bytes=$bytes " || true)
        [ -n "$g" ] || continue
        awk -v w="$w" -v b="$bytes" -v rt="$(get "$line" ms)" -v gt="$(get "$g" ms)" \
            -v rb="$(get "$line" algbw_GBps)" -v gb="$(get "$g" algbw_GBps)" 'BEGIN {
            printf "world %d %7.1f MB: ring %8.3f ms (%.2f GB/s), gloo %8.3f ms (%.2f GB/s), time ratio ring/gloo %.2f\n",
                   w, b / 1048576, rt, rb, gt, gb, rt / gt }'
    done <<< "$ring"
done
