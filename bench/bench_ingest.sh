#!/usr/bin/env bash
# Ingest throughput (samples/s) of `llava-data ingest` on synthetic data with --jobs 1 and 2, and the speed-up.
# Usage: [REPS=2] bench/bench_ingest.sh [BUILD_DIR] [N] [SRC_PX] [IMAGE_SIZE]   (defaults: build 2000 320 224)
# Source images are SRC_PX square PNGs, preprocessed to IMAGE_SIZE (CLIP resize + crop) as for LLaVA.
set -euo pipefail
BUILD=${1:-build}
N=${2:-2000}
SRC=${3:-320}
S=${4:-224}
REPS=${REPS:-2}
D="$BUILD/llava-data"
T=$(mktemp -d "${TMPDIR:-/tmp}/bench-ingest-XXXXXX")
trap 'rm -rf "$T"' EXIT
"$D" synth --out "$T/syn" --n "$N" --n-test 0 --seed 1 --image-size "$SRC" >/dev/null
echo "bench_ingest: load average $(cut -d' ' -f1-3 /proc/loadavg) (a shared machine skews wall-clock rates; CPU/sample does not)"
echo "bench_ingest: $N caption records (plain) + $((3 * N)) instruct records (vicuna_v1), ${SRC}px PNG -> ${S}px,"\
     "$(nproc) CPUs"
declare -A RATE
for json in pretrain instruct; do
    tpl=plain
    [ $json = instruct ] && tpl=vicuna_v1
    for jobs in 1 2; do
        best=0
        for rep in $(seq "$REPS"); do # best of REPS: the machine is shared
            rm -rf "$T/ds"
            start=$(date +%s.%N)
            /usr/bin/time -f "%U %S" -o "$T/cpu" "$D" ingest --json "$T/syn/$json.json" --images "$T/syn" \
                --tokenizer "$T/syn/tokenizer.model" --template $tpl --image-size "$S" --out "$T/ds" --jobs $jobs \
                --quiet >"$T/out"
            end=$(date +%s.%N)
            n=$(grep -o '"n_samples": [0-9]*' "$T/ds/manifest.json" | grep -o '[0-9]*$')
            rate=$(awk -v n="$n" -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", n / (b - a) }')
            if awk -v a="$best" -v b="$rate" 'BEGIN { exit !(b > a) }'; then
                best=$rate
                cpu=$(awk -v n="$n" '{ printf "%.2f", 1000 * ($1 + $2) / n }' "$T/cpu")
            fi
        done
        mb=$(du -sm "$T/ds" | cut -f1)
        RATE[$json$jobs]=$best
        printf "  %-8s jobs %d: %6d samples, best of %d: %8s samples/s wall (incl. JSON parse, fsync), %s ms CPU/sample, %d MB\n" \
            $json $jobs "$n" "$REPS" "$best" "$cpu" "$mb"
    done
    awk -v a="${RATE[${json}1]}" -v b="${RATE[${json}2]}" -v j=$json \
        'BEGIN { printf "  %-8s speed-up jobs 2 / jobs 1: %.2fx\n", j, b / a }'
done
