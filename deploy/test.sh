#!/usr/bin/env bash
# Runs the whole test suite from a fresh machine: installs dependencies, builds (warnings as errors, CUDA sources
# compiled when nvcc exists), runs ctest, then builds with AddressSanitizer+UBSan and runs ctest again.
# Usage: bash deploy/test.sh [--quick]   (--quick: skip the sanitizer pass)
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
for a in "$@"; do
  case "$a" in
    --quick) quick=1 ;;
    -h|--help) sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "deploy/test.sh: unknown option '$a' (try --help)" >&2; exit 2 ;;
  esac
done
jobs=$(nproc)

bash deploy/install-deps.sh

echo "== build (release, -Werror) =="
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLLAVA_WERROR=ON >build.configure.log 2>&1 || { cat build.configure.log; exit 1; }
grep -E '^-- +(found|MISSING|skipped|options)' build.configure.log || true
cmake --build build -j"$jobs"
echo "== tests (release) =="
(cd build && ctest --output-on-failure -j"$jobs")

if [ "$quick" = 0 ]; then
  echo "== build (AddressSanitizer + UBSan) =="
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DLLAVA_SANITIZE=ON -DLLAVA_CUDA=OFF -DLLAVA_WERROR=ON \
    >build-asan.configure.log 2>&1 || { cat build-asan.configure.log; exit 1; }
  cmake --build build-asan -j"$jobs"
  echo "== tests (AddressSanitizer + UBSan) =="
  (cd build-asan && ctest --output-on-failure -j"$jobs" -LE nosan)
fi
