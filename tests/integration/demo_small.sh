#!/usr/bin/env bash
# The README's main path at a small size: llava-data synth -> llava-model init -> llava-run of jobs/demo.yaml (both
# stages, 2 local CPU workers, the real model) -> the multiple-choice evaluation. Checks the exit code, metrics.jsonl
# (one line per committed step, required fields), the checkpoints, the accuracy report (every question scored, per
# type), that a rerun of the finished spec ends at once with the same scores, and that a model that does not fit
# the dataset is refused before anything starts. Run: ctest -R demo_small (needs spm_train; 77 = skip without it).
set -euo pipefail
SRC=${LLAVA_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
BUILD=${LLAVA_BUILD_DIR:-$SRC/build}
for p in llava-data llava-model llava-run; do [ -x "$BUILD/$p" ] || { echo "no $BUILD/$p"; exit 1; }; done
command -v spm_train >/dev/null || { echo "SKIP: spm_train not installed"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/llava-demo-small-XXXXXX")
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; [ -f "$T/run.out" ] && tail -40 "$T/run.out"; exit 1; }

"$BUILD/llava-data" synth --out "$T/data" --n 48 --n-test 8 --image-size 56 --ingest 56 --jobs 2 >/dev/null
"$BUILD/llava-model" init --config "$SRC/jobs/assets/demo-model.json" --out "$T/model" --seed 1 >/dev/null
# jobs/demo.yaml itself, pointed at the small data, one epoch per stage, a checkpoint every 2 steps
sed -e "s|runs/demo/model-init|$T/model|; s|runs/demo/data|$T/data|g; s|runs/demo/run|$T/run|" \
    -E -e "s|epochs: [0-9]+|epochs: 1|; s|every_steps: [0-9]+|every_steps: 2|" "$SRC/jobs/demo.yaml" >"$T/demo.yaml"
sed "s/#.*//" "$T/demo.yaml" | grep -q "runs/demo" && fail "the spec still names runs/demo"

"$BUILD/llava-run" "$T/demo.yaml" --quiet --state "$T/state" >"$T/run.out" 2>&1 || fail "llava-run exited $?"
# 48 captions / 16 = 3 steps; 48 images x 3 instruct records / 16 = 9 steps
for s in pretrain:3 finetune:9; do
    f="$T/run/${s%%:*}/metrics.jsonl"
    [ -f "$f" ] || fail "no $f"
    n=$(wc -l <"$f")
    [ "$n" = "${s##*:}" ] || fail "$f has $n lines, want ${s##*:}"
    for k in step epoch loss lr grad_norm samples tokens generation elapsed_s; do
        grep -q "\"$k\":" "$f" || fail "$f lacks \"$k\""
    done
    l=$(readlink "$T/run/${s%%:*}/latest" 2>/dev/null || cat "$T/run/${s%%:*}/latest")
    for x in config.json model.safetensors optimizer.safetensors trainer_state.json; do
        [ -s "$T/run/${s%%:*}/${l%%$'\n'}/$x" ] || fail "final checkpoint ${s%%:*}/$l lacks $x"
    done
done
acc=$(grep -E "^demo:finetune: accuracy [0-9.]+% \([0-9]+/8\)$" "$T/run.out") || fail "no accuracy line over 8 questions"
for t in color shape count position; do
    grep -qE "^  $t +[0-9.]+% \([0-9]+/2\)$" "$T/run.out" || fail "no accuracy for $t over 2 questions"
done

# the finished run dir ends the job at once; the evaluation is deterministic
"$BUILD/llava-run" "$T/demo.yaml" --quiet --state "$T/state" >"$T/run2.out" 2>&1 || fail "rerun exited $?"
acc2=$(grep -E "^demo:finetune: accuracy" "$T/run2.out") || fail "rerun printed no accuracy"
[ "$acc" = "$acc2" ] || fail "rerun scored '$acc2', first run '$acc'"
[ "$(wc -l <"$T/run/finetune/metrics.jsonl")" = 9 ] || fail "the rerun trained again"

# a model for 28 px images does not fit the 56 px dataset: refused with the key's position, nothing started
sed -e 's/"image_size": 56/"image_size": 28/' "$SRC/jobs/assets/demo-model.json" >"$T/m28.json"
"$BUILD/llava-model" init --config "$T/m28.json" --out "$T/model28" --seed 1 >/dev/null
sed -e "s|$T/model|$T/model28|; s|$T/run|$T/run28|" "$T/demo.yaml" >"$T/bad.yaml"
set +e
"$BUILD/llava-run" "$T/bad.yaml" --quiet --state "$T/state28" >"$T/bad.out" 2>&1
rc=$?
set -e
[ "$rc" = 2 ] || fail "a model that does not fit exited $rc, want 2"
grep -qE "bad.yaml:[0-9]+:[0-9]+: key 'data.train': dataset '.*' holds 56 px images but the model's vision tower .* takes 28 px" \
    "$T/bad.out" || { cat "$T/bad.out"; fail "no fit error"; }
[ ! -e "$T/run28" ] || fail "the refused spec created its run directory"
echo "demo_small: ok ($acc)"
