#!/usr/bin/env bash
# llava-model step on the transformers fixtures (tests/fixtures/model/): the printed loss must match HF's within
# 1e-5 relative in both training modes, gradients are written under the model's names, and malformed batches
# (tests/fixtures/model/bad/) are refused with an error message and exit 1, never a crash. Also init + step.
set -u
BIN="${LLAVA_BUILD_DIR:?}/llava-model"
FIX="${LLAVA_SOURCE_DIR:?}/tests/fixtures/model"
[ -x "$BIN" ] || { echo "SKIP: $BIN not built"; exit 77; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail=0
bad() { echo "FAIL: $*"; fail=1; }

"$BIN" --help > /dev/null || bad "llava-model --help"
"$BIN" step --help | grep -q -- "--batch" || bad "step --help"
"$BIN" init --help | grep -q -- "--config" || bad "init --help"

# memplan (CUDA builds): the planner's 7B verdicts, its advice, --help and bad arguments
if "$BIN" memplan --help > "$TMP/mp" 2>&1; then
    grep -q -- "--zero W" "$TMP/mp" || bad "memplan --help lists no --zero"
    "$BIN" memplan --trainable all > "$TMP/mp"; rc=$?
    [ $rc -eq 1 ] || bad "memplan: 7B all on one GPU: exit $rc (want 1: does not fit)"
    grep -q "advice: ZeRO-1 over >= 2 ranks" "$TMP/mp" || bad "memplan: no ZeRO-1 advice for 7B on one GPU"
    "$BIN" memplan --trainable all --zero 8 > "$TMP/mp" || bad "memplan: 7B all with ZeRO-1 x 8 does not fit"
    grep -q "verdict: FITS" "$TMP/mp" || bad "memplan: no FITS verdict"
    "$BIN" memplan --zero 0 > /dev/null 2>&1; rc=$?
    [ $rc -eq 2 ] || bad "memplan --zero 0: exit $rc (want 2)"
    echo "memplan: 7B verdicts and advice as expected"
else
    grep -q "no CUDA backend" "$TMP/mp" || bad "memplan without CUDA: no reason given"
    echo "memplan: this build has no CUDA backend (refused with a reason)"
fi

for case in mha_linear gqa_mlp2x; do
    want=$(sed -n 's/^ *"loss": "\{0,1\}\([0-9.e+-]*\)"\{0,1\},*$/\1/p' "$FIX/$case/expected.json" | head -1)
    for mode in projector all; do
        out=$("$BIN" step --model "$FIX/$case/model" --batch "$FIX/$case/batch.safetensors" --train $mode \
              --grads "$TMP/g.safetensors" --threads 2 2> "$TMP/err") || { cat "$TMP/err"; bad "$case $mode: exit $?"; continue; }
        got=$(echo "$out" | sed -n 's/^loss //p')
        awk -v g="$got" -v w="$want" 'BEGIN { d = g - w; if (d < 0) d = -d; exit !(g != "" && d <= 1e-5 * w) }' \
            || bad "$case $mode: loss $got, HF $want"
        echo "$case $mode: loss $got (HF $want)"
        [ -s "$TMP/g.safetensors" ] || bad "$case $mode: no gradient file"
        grep -a -q "multi_modal_projector.linear_1.weight" "$TMP/g.safetensors" || bad "$case $mode: grads lack the projector"
        if [ $mode = all ]; then
            grep -a -q "language_model.model.layers.1.mlp.down_proj.weight" "$TMP/g.safetensors" || bad "$case: grads lack the LLM"
        else
            ! grep -a -q "embed_tokens" "$TMP/g.safetensors" || bad "$case: projector mode wrote LLM grads"
        fi
    done
done

for f in "$FIX"/bad/*.safetensors; do
    name=$(basename "$f" .safetensors)
    "$BIN" step --model "$FIX/mha_linear/model" --batch "$f" --threads 1 > "$TMP/out" 2> "$TMP/err"
    rc=$?
    [ $rc -eq 1 ] || bad "bad batch $name: exit $rc (want 1)"
    grep -q ERROR "$TMP/err" || bad "bad batch $name: no error message"
    echo "bad batch $name: refused: $(grep ERROR "$TMP/err" | head -1 | sed 's/.*ERROR //')"
done
"$BIN" step --model "$TMP/nope" --batch "$FIX/mha_linear/batch.safetensors" 2> /dev/null && bad "missing model accepted"
"$BIN" step --model "$FIX/mha_linear/model" 2> /dev/null && bad "missing --batch accepted"

# init from the fixture's config, then a step on the fixture batch
"$BIN" init --config "$FIX/mha_linear/model/config.json" --out "$TMP/init" --seed 1 --max-shard-bytes 100000 > /dev/null \
    || bad "init"
[ -f "$TMP/init/model.safetensors.index.json" ] || bad "init: no sharded index"
"$BIN" step --model "$TMP/init" --batch "$FIX/mha_linear/batch.safetensors" --train all | grep -q '^loss ' \
    || bad "step on an initialised model"

[ $fail -eq 0 ] && echo "model_step: all passed"
exit $fail
