#!/usr/bin/env bash
# The README's main path at a small size: llava-data synth -> llava-model init -> llava-run of jobs/demo.yaml (both
# stages, 2 local CPU workers, the real model) -> the multiple-choice evaluation. Checks the exit code, metrics.jsonl
# (one line per committed step, required fields), the checkpoints (eval.every_epoch's epoch-1 too), the accuracy
# reports of epoch 1 and the end (every question scored, per type) against eval.jsonl, that every_epoch: false writes
# no epoch checkpoint, that a rerun of the finished spec ends at once with the same scores, and that a model that
# does not fit the dataset is refused before anything starts. Run: ctest -R demo_small (needs spm_train; 77 = skip without it).
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
# jobs/demo.yaml itself, pointed at the small data, a checkpoint every 3 steps. Finetune: two epochs cut at step 10
# by train.max_steps, so eval.every_epoch writes and scores epoch-1 (step 9, where checkpoint-9 falls too) for one step
# more than a single epoch. Pretrain: the same past its first epoch (3 steps) to step 4, with an eval section that
# says every_epoch: false (no epoch-1 then).
sed -e "s|runs/demo/model-init|$T/model|; s|runs/demo/data|$T/data|g; s|runs/demo/run|$T/run|" \
    -E -e "s|epochs: [0-9]+|epochs: 1|; s|every_steps: [0-9]+|every_steps: 3|" "$SRC/jobs/demo.yaml" >"$T/demo.yaml"
sed -i -E -e '/^  - name: finetune/,$ s|^( +)epochs: 1|\1epochs: 2\n\1max_steps: 10|' \
    -e '/^      template: plain/a\    eval:\n      data: '"$T"'/data/mc-test.json\n      answers: '"$T"'/data/mc-answers.json\n      every_epoch: false' \
    -e '/^  - name: pretrain/,/^  - name: finetune/ s|^      lr: (.*)|      lr: \1\n      epochs: 2\n      max_steps: 4|' \
    "$T/demo.yaml"
grep -qE "^      every_epoch: true" "$T/demo.yaml" || fail "jobs/demo.yaml's finetune stage lacks eval.every_epoch: true"
sed "s/#.*//" "$T/demo.yaml" | grep -q "runs/demo" && fail "the spec still names runs/demo"

"$BUILD/llava-run" "$T/demo.yaml" --quiet --state "$T/state" >"$T/run.out" 2>&1 || fail "llava-run exited $?"
# 48 captions / 16 = 3 steps per epoch, and 1 of the second; 48 images x 3 instruct records / 16 = 9 steps per
# epoch, and 1 of the second
for s in pretrain:4 finetune:10; do
    f="$T/run/${s%%:*}/metrics.jsonl"
    [ -f "$f" ] || fail "no $f"
    n=$(wc -l <"$f")
    [ "$n" = "${s##*:}" ] || fail "$f has $n lines, want ${s##*:}"
    for k in step epoch loss lr grad_norm samples tokens generation elapsed_s; do
        grep -q "\"$k\":" "$f" || fail "$f lacks \"$k\""
    done
    l=$(readlink "$T/run/${s%%:*}/latest" 2>/dev/null || cat "$T/run/${s%%:*}/latest")
    [ "${l%%$'\n'}" = "checkpoint-${s##*:}" ] || fail "${s%%:*}/latest names '$l', want checkpoint-${s##*:}"
    for x in config.json model.safetensors optimizer.safetensors trainer_state.json; do
        [ -s "$T/run/${s%%:*}/${l%%$'\n'}/$x" ] || fail "final checkpoint ${s%%:*}/$l lacks $x"
        [ "${s%%:*}" = pretrain ] || [ -s "$T/run/finetune/epoch-1/$x" ] || fail "finetune/epoch-1 lacks $x"
    done
done
grep -qE '"step":[[:space:]]*9,' "$T/run/finetune/epoch-1/trainer_state.json" || fail "epoch-1 is not the state of step 9"
[ "$(ls -d "$T"/run/finetune/checkpoint-* | wc -l)" = 2 ] || fail "checkpoint.keep: 2 left $(ls "$T/run/finetune")"
ls -d "$T"/run/*/epoch-* | grep -qv "finetune/epoch-1$" && fail "unexpected epoch checkpoints: $(ls -d "$T"/run/*/epoch-*)"
grep -q "^demo:pretrain epoch" "$T/run.out" && fail "every_epoch: false scored an epoch checkpoint"
grep -qE "^demo:pretrain: accuracy [0-9.]+% \([0-9]+/8\)$" "$T/run.out" || fail "every_epoch: false: no final accuracy"
[ "$(wc -l <"$T/run/pretrain/eval.jsonl")" = 1 ] || fail "pretrain/eval.jsonl is not one line (final)"
acc=$(grep -E "^demo:finetune: accuracy [0-9.]+% \([0-9]+/8\)$" "$T/run.out") || fail "no accuracy line over 8 questions"
grep -qE "^demo:finetune epoch 1: accuracy [0-9.]+% \([0-9]+/8\)$" "$T/run.out" || fail "epoch-1 was not scored"
[ "$(grep -cE "^  (color|shape|count|position) +[0-9.]+% \([0-9]+/2\)$" "$T/run.out")" = 12 ] ||
    fail "want accuracy for color, shape, count and position over 2 questions each, for 3 checkpoints"

# eval.jsonl: one line per scored checkpoint, in order, with the printed numbers
ev="$T/run/finetune/eval.jsonl"
[ "$(wc -l <"$ev")" = 2 ] || fail "$ev has $(wc -l <"$ev") lines, want 2 (epoch 1, final)"
want=0
while IFS= read -r line; do
    want=$((want + 1))
    ep=$(sed -E 's/.*"epoch":([0-9.]+),.*/\1/' <<<"$line")
    st=$(sed -E 's/.*"step":([0-9]+),.*/\1/' <<<"$line")
    [ "$want:$ep:$st" = 1:1:9 ] || [[ "$want:$ep:$st" == 2:1.11*:10 ]] ||
        fail "eval.jsonl line $want is epoch $ep step $st: $line"
    label="demo:finetune epoch $want"
    [ "$want" = 2 ] && label="demo:finetune"
    # the printed block: the accuracy line and the per-type lines after it, as "name correct/n"
    printed=$(awk -v h="$label: accuracy" 'index($0, h) == 1 { on = 1; sub(/.*\(/, ""); sub(/\).*/, ""); print "all " $0; next }
        on && /^  / { n = $1; sub(/.*\(/, ""); sub(/\).*/, ""); print n " " $0; next } { on = 0 }' "$T/run.out")
    json=$( (sed -E 's/.*"correct":([0-9]+),"n":([0-9]+),"skipped".*/all \1\/\2/' <<<"$line"
             grep -oE '"[a-z]+":\{"accuracy":[0-9.e-]+,"correct":[0-9]+,"n":[0-9]+\}' <<<"$line" |
                 sed -E 's/"([a-z]+)".*"correct":([0-9]+),"n":([0-9]+)\}/\1 \2\/\3/') )
    [ -n "$printed" ] && [ "$printed" = "$json" ] || fail "eval.jsonl line $want ($json) differs from the printed ($printed)"
    grep -q '"skipped":0,' <<<"$line" || fail "questions skipped: $line"
done <"$ev"

# the finished run dir ends the job at once; the evaluation is deterministic
cp "$ev" "$T/eval1.jsonl"
"$BUILD/llava-run" "$T/demo.yaml" --quiet --state "$T/state" >"$T/run2.out" 2>&1 || fail "rerun exited $?"
acc2=$(grep -E "^demo:finetune: accuracy" "$T/run2.out") || fail "rerun printed no accuracy"
[ "$acc" = "$acc2" ] || fail "rerun scored '$acc2', first run '$acc'"
[ "$(wc -l <"$T/run/finetune/metrics.jsonl")" = 10 ] || fail "the rerun trained again"
cmp -s "$ev" "$T/eval1.jsonl" || fail "the rerun wrote a different eval.jsonl: $(cat "$ev")"

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
