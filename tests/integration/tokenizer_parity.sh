#!/usr/bin/env bash
# Tokenizer parity with sentencepiece itself: encodes tests/fixtures/tokenizer/lines.txt (12,000 varied lines) with
# the committed model using spm_encode and compares our encoder line by line (first differing line is printed), then
# compares our decode with spm_decode. Also retrains a model with spm_train on this machine and repeats the check.
# Run by ctest (needs spm_train/spm_encode/spm_decode from Debian's `sentencepiece`; skipped without them).
set -euo pipefail
src=${LLAVA_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
build=${LLAVA_BUILD_DIR:-$src/build}
fix=$src/tests/fixtures/tokenizer
for tool in spm_encode spm_decode spm_train; do
    command -v $tool >/dev/null || { echo "skip: $tool not installed"; exit 77; }
done
tester=$build/tests/test_tokenizer
[ -x "$tester" ] || tester=$build/test_tokenizer
[ -x "$tester" ] || { echo "test_tokenizer not built under $build"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

check() { # model lines
    local model=$1 lines=$2
    spm_encode --model="$model" --output_format=id <"$lines" >"$tmp/ids.txt"
    spm_decode --model="$model" --input_format=id <"$tmp/ids.txt" >"$tmp/dec.txt"
    [ "$(wc -l <"$tmp/ids.txt")" = "$(wc -l <"$lines")" ] || { echo "spm_encode dropped lines"; exit 1; }
    LLAVA_TOK_MODEL=$model LLAVA_TOK_LINES=$lines LLAVA_TOK_EXPECTED=$tmp/ids.txt LLAVA_TOK_DECODED=$tmp/dec.txt \
        "$tester"
    # The CLI, when llava-data exists: the same ids through `llava-data tokenize`.
    if [ -x "$build/llava-data" ] && "$build/llava-data" tokenize --help >/dev/null 2>&1; then
        "$build/llava-data" tokenize --tokenizer "$model" --no-bos <"$lines" >"$tmp/cli.txt"
        if ! cmp -s "$tmp/cli.txt" "$tmp/ids.txt"; then
            echo "llava-data tokenize differs from spm_encode:"; diff "$tmp/cli.txt" "$tmp/ids.txt" | head -5; exit 1
        fi
        "$build/llava-data" tokenize --tokenizer "$model" --decode <"$tmp/ids.txt" >"$tmp/cli_dec.txt"
        cmp -s "$tmp/cli_dec.txt" "$tmp/dec.txt" || { echo "llava-data tokenize --decode differs from spm_decode"; exit 1; }
    fi
    echo "parity ok: $(wc -l <"$lines") lines with $(basename "$model")"
}

# 1. The committed model (trained by tests/reference/make_tokenizer_fixtures.py).
check "$fix/tokenizer.model" "$fix/lines.txt"

# 2. The same with 40 UNUSED pieces appended (merged by BPE, then split back by sentencepiece).
check "$fix/tokenizer_unused.model" "$fix/lines.txt"

# 3. A model trained here with this machine's spm_train: LLaMA-style options, a smaller vocabulary, more merges of
#    whitespace runs and digits left split.
spm_train --input="$fix/lines.txt" --model_prefix="$tmp/local" --model_type=bpe --vocab_size=1200 \
    --byte_fallback=true --split_digits=true --normalization_rule_name=identity --add_dummy_prefix=true \
    --remove_extra_whitespaces=false --allow_whitespace_only_pieces=true --user_defined_symbols='<image>,<sep>' \
    --character_coverage=0.98 --num_threads=1 --minloglevel=2 >/dev/null 2>&1
check "$tmp/local.model" "$fix/lines.txt"
