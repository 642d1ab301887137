#!/usr/bin/env bash
# Equivalence on the real model (a tiny random LLaVA, projector + language model trained with AdamW), through
# llava-run with local CPU workers: the same job with 1, 2 and 3 workers, and with half the micro-batch token
# budget, gives per-step losses and grad norms equal within 1e-5 relative; a run interrupted (SIGINT) after some steps
# and started again resumes from its last checkpoint and every step's loss equals the uninterrupted run's.
# Run: ctest -R model_equiv (needs spm_train; 77 = skip without it).
set -euo pipefail
SRC=${LLAVA_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
BUILD=${LLAVA_BUILD_DIR:-$SRC/build}
for p in llava-data llava-model llava-run; do [ -x "$BUILD/$p" ] || { echo "no $BUILD/$p"; exit 1; }; done
command -v spm_train >/dev/null || { echo "SKIP: spm_train not installed"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/llava-model-equiv-XXXXXX")
BG=
trap '[ -n "$BG" ] && kill "$BG" 2>/dev/null; rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$BUILD/llava-data" synth --out "$T/data" --n 32 --n-test 4 --image-size 56 --ingest 56 --jobs 2 >/dev/null
"$BUILD/llava-model" init --config "$SRC/jobs/assets/demo-model.json" --out "$T/model" --seed 1 >/dev/null
# 96 instruct samples, global batch 16: 6 steps per epoch, 2 epochs
spec() { # name budget
    cat >"$T/$1.yaml" <<EOF
name: $1
model: {llava: $T/model, projector: mlp2x_gelu}
data: {train: $T/data/instruct, template: vicuna_v1, max_seq_len: 256, group_by_length: true}
train: {epochs: 2, global_batch: 16, micro_batch_tokens: $2, lr: 1.0e-3, warmup_ratio: 0.1, schedule: cosine,
        trainable: [projector, language_model], max_grad_norm: 1.0, seed: 7}
checkpoint: {dir: $T/run-$1, every_steps: 3, keep: 2}
cluster: {workers: 1, device: cpu, heartbeat_ms: 200, hang_timeout_ms: 10000}
EOF
}
# "step loss grad_norm" per metrics line, last occurrence of each step kept (a resumed run writes a step again)
losses() { sed -E 's/.*"step":([0-9]+).*"loss":([-0-9.eE+]+).*"grad_norm":([-0-9.eE+]+).*/\1 \2 \3/' "$1" |
           awk '{v[$1]=$2" "$3} END {for (s in v) print s, v[s]}' | sort -n; }
same() { # a b what: every step of a in b, equal within 1e-5 relative
    awk -v what="$3" 'NR==FNR {l[$1]=$2; g[$1]=$3; n++; next}
        { if (!($1 in l)) { print what ": step " $1 " missing in the reference"; bad=1; next }
          m++
          for (k = 2; k <= 3; k++) { r = (k == 2 ? l[$1] : g[$1]); d = $k - r; if (d < 0) d = -d; a = r < 0 ? -r : r
            if (d > 1e-5 * a + 1e-12) { print what ": step " $1 (k == 2 ? " loss " : " grad_norm ") $k " vs " r; bad=1 } } }
        END { if (m != n) { print what ": " m " steps, reference " n; bad=1 } exit bad }' "$2" "$1"
}
run() { # name workers
    "$BUILD/llava-run" "$T/$1.yaml" --workers "$2" --threads 1 --quiet --no-eval --state "$T/state-$1-$2" \
        >"$T/$1-$2.out" 2>&1 || { tail -30 "$T/$1-$2.out"; fail "$1 with $2 worker(s) exited $?"; }
}

spec base 256
run base 1
losses "$T/run-base/metrics.jsonl" >"$T/ref"
[ "$(wc -l <"$T/ref")" = 12 ] || fail "the reference run has $(wc -l <"$T/ref") steps, want 12"
for w in 2 3; do
    spec w$w 256
    run w$w $w
    losses "$T/run-w$w/metrics.jsonl" >"$T/w$w"
    same "$T/w$w" "$T/ref" "$w workers" || fail "$w workers differ from 1"
done
spec budget 128
run budget 2
losses "$T/run-budget/metrics.jsonl" >"$T/budget"
same "$T/budget" "$T/ref" "budget 128" || fail "half the token budget changes the losses"

# interrupted after step 4 (checkpoint at 3), then resumed: same losses for every step, done once at the end
spec resume 256
"$BUILD/llava-run" "$T/resume.yaml" --workers 2 --threads 1 --quiet --no-eval --state "$T/state-resume" \
    >"$T/resume-1.out" 2>&1 &
BG=$!
for _ in $(seq 600); do
    [ -f "$T/run-resume/metrics.jsonl" ] && [ "$(wc -l <"$T/run-resume/metrics.jsonl")" -ge 4 ] && break
    sleep 0.1
done
kill -INT "$BG"
set +e
wait "$BG"
rc=$?
set -e
BG=
[ "$rc" = 130 ] || [ "$rc" = 0 ] || { tail -20 "$T/resume-1.out"; fail "interrupted llava-run exited $rc"; }
n1=$(wc -l <"$T/run-resume/metrics.jsonl")
run resume 2
losses "$T/run-resume/metrics.jsonl" >"$T/resumed"
same "$T/resumed" "$T/ref" "resumed" || fail "the resumed run differs from the uninterrupted one"
echo "model_equiv: ok (12 steps; 1/2/3 workers and budget 128 equal; interrupted after $n1 committed steps, resumed)"
