#!/usr/bin/env bash
# llava-data image: --help, a fixture image to pixel_values safetensors (size and header checked), usage errors (2),
# missing/corrupt/over-limit input (1, message naming the file). Run: ctest -R cli_image.
set -euo pipefail
BUILD=${LLAVA_BUILD_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/build}
SRC=${LLAVA_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
D="$BUILD/llava-data"
[ -x "$D" ] || { echo "no $D"; exit 1; }
T=$(mktemp -d "${TMPDIR:-/tmp}/llava-cli-image-XXXXXX")
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
FX="$SRC/tests/fixtures/image"

"$D" image --help >/dev/null 2>&1 || { echo "SKIP: llava-data was linked without common/cli_image.c (weak symbol not pulled from the static library)"; exit 77; }
"$D" image --help | grep -q "pixel_values" || fail "--help"
"$D" image --size 32 --pad "$FX/img015_jpg_RGB_700x420.jpg" "$T/a.safetensors" >/dev/null || fail "convert"
n=$(stat -c %s "$T/a.safetensors")
hdr=$(head -c 8 "$T/a.safetensors" | od -An -tu8 | tr -d ' ')
[ "$n" -eq $((8 + hdr + 3 * 32 * 32 * 4)) ] || fail "size $n with header $hdr"
head -c $((8 + hdr)) "$T/a.safetensors" | tail -c "$hdr" | grep -q '"pixel_values":{"dtype":"F32","shape":\[3,32,32\]' ||
    fail "header"
"$D" image --size 48 "$FX/img007_png_RGBA_50x40.png" "$T/b.safetensors" >/dev/null || fail "png"

set +e
"$D" image "$FX/img007_png_RGBA_50x40.png" "$T/c.safetensors" 2>/dev/null; [ $? -eq 2 ] || fail "no --size: want 2"
"$D" image --size 0 a b 2>/dev/null; [ $? -eq 2 ] || fail "--size 0: want 2"
"$D" image --size 32 "$T/missing.jpg" "$T/c.safetensors" 2>"$T/err"; [ $? -eq 1 ] || fail "missing: want 1"
grep -q "missing.jpg" "$T/err" || fail "missing: message does not name the file"
head -c 300 "$FX/img015_jpg_RGB_700x420.jpg" >"$T/trunc.jpg"
"$D" image --size 32 "$T/trunc.jpg" "$T/c.safetensors" 2>"$T/err"; [ $? -eq 1 ] || fail "truncated: want 1"
grep -q "trunc.jpg" "$T/err" || fail "truncated: message"
"$D" image --size 32 --max-pixels 1000 "$FX/img015_jpg_RGB_700x420.jpg" "$T/c.safetensors" 2>"$T/err"
[ $? -eq 1 ] || fail "bomb: want 1"
grep -q "exceeds the limit" "$T/err" || fail "bomb: message"
set -e
[ ! -e "$T/c.safetensors" ] || fail "output written on failure"
echo "cli_image: ok"
