#!/usr/bin/env bash
# llava-data end to end: synth (deterministic; --jitter) -> ingest -> inspect -> verify; determinism (jobs 1 vs 2, same checksums);
# resumability (LLAVA_INGEST_DIE_AFTER kills an ingest mid-shard, the rerun equals the uninterrupted run); bad input
# (JSON syntax error with line:column, missing/corrupt image, empty targets, unknown role, <image> mismatches, each in
# the report by id; --bad-records fail: non-zero, no manifest); verify catches a damaged shard.
# Run: ctest -R ingest (needs spm_train; exit 77 = skip without it).
set -euo pipefail
BUILD=${LLAVA_BUILD_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/build}
D="$BUILD/llava-data"
[ -x "$D" ] || { echo "no $D"; exit 1; }
command -v spm_train >/dev/null || { echo "SKIP: spm_train not installed"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/llava-ingest-XXXXXX")
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
# the manifest without its timestamp
strip() { grep -v '"created"' "$1"; }

"$D" synth --out "$T/syn" --n 60 --n-test 8 --seed 5 --image-size 32 >/dev/null
for f in pretrain.json instruct.json mc-test.json mc-answers.json shapes.json tokenizer.model images/train-000059.png \
         images/test-000007.png; do
    [ -s "$T/syn/$f" ] || fail "synth did not write $f"
done
"$D" synth --out "$T/syn2" --n 60 --n-test 8 --seed 5 --image-size 32 >/dev/null
for f in pretrain.json instruct.json mc-test.json tokenizer.model images/train-000007.png; do
    cmp -s "$T/syn/$f" "$T/syn2/$f" || fail "synth is not deterministic: $f differs"
done

# --jitter: 0 draws every shape at one size centred in its quadrant (box [0.05,0.05,0.45,0.45] and its mirror
# images); 100 varies both (synth v2); outside 0-100 is refused
"$D" synth --out "$T/j0" --n 40 --n-test 4 --image-size 56 --jitter 0 --no-tokenizer >/dev/null
"$D" synth --out "$T/j100" --n 40 --n-test 4 --image-size 56 --jitter 100 --no-tokenizer >/dev/null
boxes() { grep '"box"' "$1/shapes.json" | sed 's/.*\[\(.*\)\].*/\1/' | sort -u; }
[ "$(boxes "$T/j0" | tr '\n' '|')" = "0.05, 0.05, 0.45, 0.45|0.05, 0.55, 0.45, 0.95|0.55, 0.05, 0.95, 0.45|0.55, 0.55, 0.95, 0.95|" ] ||
    fail "synth --jitter 0: boxes not centred in their quadrants: $(boxes "$T/j0" | head -5 | tr '\n' '|')"
[ "$(boxes "$T/j100" | wc -l)" -gt 50 ] || fail "synth --jitter 100: shapes do not vary ($(boxes "$T/j100" | wc -l) boxes)"
cmp -s "$T/j0/shapes.json" "$T/j100/shapes.json" && fail "synth --jitter changes nothing"
for j in -1 101 x; do
    rc=0; "$D" synth --out "$T/jbad" --jitter "$j" --no-tokenizer >/dev/null 2>"$T/jbad.err" || rc=$?
    [ "$rc" = 2 ] && grep -q -- "--jitter $j" "$T/jbad.err" || fail "synth --jitter $j: exit $rc, $(cat "$T/jbad.err" | head -1)"
done

ING=(--images "$T/syn" --tokenizer "$T/syn/tokenizer.model" --image-size 28 --quiet)
# stage 1 captions and stage 2 instructions
"$D" ingest --json "$T/syn/pretrain.json" --template plain --out "$T/pre" --jobs 2 "${ING[@]}" >/dev/null
"$D" ingest --json "$T/syn/instruct.json" --template vicuna_v1 --out "$T/ds1" --shard-samples 50 --jobs 2 \
    "${ING[@]}" >"$T/out1"
grep -q '"n_samples": 180' "$T/ds1/manifest.json" || fail "instruct: expected 180 samples: $(cat "$T/out1")"
grep -q '"n_samples": 60' "$T/pre/manifest.json" || fail "pretrain: expected 60 samples"
grep -q '"shard-00003.lmdb", "first": 150, "count": 30' "$T/ds1/manifest.json" || fail "shard layout"
[ ! -s "$T/ds1/ingest-report.jsonl" ] || fail "synthetic data reported bad records: $(head -3 "$T/ds1/ingest-report.jsonl")"
"$D" verify "$T/ds1" >/dev/null || fail "verify of a fresh dataset"
"$D" verify "$T/pre" >/dev/null || fail "verify of a fresh dataset"
"$D" inspect "$T/ds1" 0 --no-color >"$T/insp"
grep -q 'samples 180: 180 with images' "$T/insp" || fail "inspect counts: $(head -8 "$T/insp")"
grep -q '<image 28x28>' "$T/insp" || fail "inspect shows no image"
grep -q 'ASSISTANT:\[\[' "$T/insp" || fail "inspect shows no target span: $(tail -2 "$T/insp")"
grep -q '\[\[</s>\]\]' "$T/insp" || fail "inspect does not show the target </s>"
"$D" inspect "$T/pre" cap-000003 --no-color | grep -q 'id "cap-000003"' || fail "inspect by id"
# --aspect pad and a model directory as --tokenizer (jobs/README.md's form)
"$D" ingest --json "$T/syn/pretrain.json" --template plain --out "$T/prepad" --images "$T/syn" --tokenizer "$T/syn" \
    --image-size 28 --aspect pad --quiet >/dev/null
grep -q '"pad": true' "$T/prepad/manifest.json" || fail "--aspect pad not recorded"
"$D" inspect "$T/prepad" 0 --no-color | grep -q '(padded square)' || fail "record flag for pad"

# determinism: one job gives the same records and manifest
"$D" ingest --json "$T/syn/instruct.json" --template vicuna_v1 --out "$T/ds2" --shard-samples 50 --jobs 1 \
    "${ING[@]}" >/dev/null
diff <(strip "$T/ds1/manifest.json") <(strip "$T/ds2/manifest.json") >/dev/null || fail "jobs 1 vs 2 differ"

# resumability: die after 120 records (inside the third shard), rerun, compare
set +e
LLAVA_INGEST_DIE_AFTER=120 "$D" ingest --json "$T/syn/instruct.json" --template vicuna_v1 --out "$T/ds3" \
    --shard-samples 50 --jobs 2 "${ING[@]}" >/dev/null 2>&1
rc=$?
set -e
[ $rc -ne 0 ] || fail "the fault hook did not stop ingest"
[ ! -e "$T/ds3/manifest.json" ] || fail "an interrupted ingest left a manifest"
[ "$(wc -l <"$T/ds3/ingest-progress.jsonl")" -eq 3 ] || fail "expected params + 2 complete shards in the progress file"
"$D" ingest --json "$T/syn/instruct.json" --template vicuna_v1 --out "$T/ds3" --shard-samples 50 --jobs 2 \
    "${ING[@]}" >"$T/out3"
grep -q '(2 kept from an earlier run)' "$T/out3" || fail "resume did not keep the 2 complete shards: $(cat "$T/out3")"
diff <(strip "$T/ds1/manifest.json") <(strip "$T/ds3/manifest.json") >/dev/null || fail "resumed run differs"
"$D" verify "$T/ds3" >/dev/null || fail "verify after resume"
# a complete shard damaged between the runs is redone, not kept
set +e
LLAVA_INGEST_DIE_AFTER=120 "$D" ingest --json "$T/syn/instruct.json" --template vicuna_v1 --out "$T/ds4" \
    --shard-samples 50 --jobs 2 "${ING[@]}" >/dev/null 2>&1
set -e
sz=$(stat -c %s "$T/ds4/shard-00001.lmdb")
printf '\x5a\x5a\x5a\x5a' | dd of="$T/ds4/shard-00001.lmdb" bs=1 seek=$((sz / 2)) conv=notrunc 2>/dev/null
"$D" ingest --json "$T/syn/instruct.json" --template vicuna_v1 --out "$T/ds4" --shard-samples 50 --jobs 2 \
    "${ING[@]}" >"$T/out4" 2>/dev/null
grep -q '(1 kept from an earlier run)' "$T/out4" || fail "a damaged shard was kept: $(cat "$T/out4")"
diff <(strip "$T/ds1/manifest.json") <(strip "$T/ds4/manifest.json") >/dev/null || fail "redone run differs"

# verify catches damage
cp -r "$T/ds1" "$T/dmg"
sz=$(stat -c %s "$T/dmg/shard-00002.lmdb")
printf '\x5a\x5a\x5a\x5a' | dd of="$T/dmg/shard-00002.lmdb" bs=1 seek=$((sz / 2)) conv=notrunc 2>/dev/null
set +e
"$D" verify "$T/dmg" >"$T/vout"
rc=$?
set -e
[ $rc -ne 0 ] || fail "verify missed a damaged shard"
grep -q 'DAMAGED shard-00002.lmdb' "$T/vout" || fail "verify does not name the shard: $(cat "$T/vout")"

# bad input
printf '[\n  {"id": "a", "conversations": []},\n  {"id": "b",, }\n]\n' >"$T/syntax.json"
set +e
"$D" ingest --json "$T/syntax.json" --template vicuna_v1 --out "$T/bad0" "${ING[@]}" 2>"$T/err0" >/dev/null
rc=$?
set -e
[ $rc -ne 0 ] || fail "invalid JSON accepted"
grep -q 'line 3, column' "$T/err0" || fail "no line:column for invalid JSON: $(cat "$T/err0")"
head -c 100 "$T/syn/images/train-000001.png" >"$T/syn/images/truncated.png"
printf 'this is not an image at all' >"$T/syn/images/garbage.png"
: >"$T/syn/images/empty.png"
cat >"$T/bad.json" <<'EOF'
[
 {"id": "good-1", "image": "images/train-000000.png", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "Shapes."}]},
 {"id": "missing-image", "image": "images/nope.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A."}]},
 {"id": "truncated-image", "image": "images/truncated.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A."}]},
 {"id": "corrupt-image", "image": "images/garbage.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A."}]},
 {"id": "empty-image", "image": "images/empty.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A."}]},
 {"id": "empty-target", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": ""}]},
 {"id": "unknown-role", "conversations": [{"from": "robot", "value": "Hi?"}, {"from": "gpt", "value": "Yes."}]},
 {"id": "no-image-tag", "image": "images/train-000002.png", "conversations": [{"from": "human", "value": "What?"}, {"from": "gpt", "value": "A."}]},
 {"id": "tag-without-image", "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A."}]},
 {"id": "missing-field", "image": "images/train-000003.png"},
 {"id": "too-long", "image": "images/train-000004.png", "conversations": [{"from": "human", "value": "<image>\nDescribe the picture in many words please."}, {"from": "gpt", "value": "A."}]},
 {"id": "good-2", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]}
]
EOF
"$D" ingest --json "$T/bad.json" --template vicuna_v1 --out "$T/bad1" --max-seq-len 50 "${ING[@]}" >"$T/outb" 2>/dev/null
grep -q '"n_samples": 2,' "$T/bad1/manifest.json" || fail "bad input: expected 2 good samples: $(cat "$T/outb")"
grep -q '"bad": 10' "$T/bad1/manifest.json" || fail "bad input: expected 10 bad"
[ "$(wc -l <"$T/bad1/ingest-report.jsonl")" -eq 10 ] || fail "report should have 10 lines"
for id in missing-image truncated-image corrupt-image empty-image empty-target unknown-role no-image-tag \
          tag-without-image missing-field too-long; do
    grep -q "\"id\":\"$id\"" "$T/bad1/ingest-report.jsonl" || fail "report lacks $id: $(cat "$T/bad1/ingest-report.jsonl")"
done
grep '"id":"too-long"' "$T/bad1/ingest-report.jsonl" | grep -q 'truncated away' || fail "truncation reason"
grep '"id":"unknown-role"' "$T/bad1/ingest-report.jsonl" | grep -q '"index":6' || fail "report index"
set +e
"$D" ingest --json "$T/bad.json" --template vicuna_v1 --out "$T/bad2" --bad-records fail "${ING[@]}" \
    >/dev/null 2>&1
rc=$?
set -e
[ $rc -ne 0 ] || fail "--bad-records fail exited 0"
[ ! -e "$T/bad2/manifest.json" ] || fail "--bad-records fail left a manifest"
# usage errors
set +e
"$D" ingest --json x >/dev/null 2>&1; [ $? -eq 2 ] || fail "usage error should exit 2"
set -e
for c in ingest inspect verify synth tokenize image; do "$D" $c --help >/dev/null || fail "$c --help"; done
echo "ingest.sh: all checks passed"
