#!/bin/bash
# Runs the GPU op tests (tests/cuda/test_cuda_{norm,attention,elementwise,embed,loss,adamw}.c) on the CPU through a
# SIMT emulator: one OS thread per CUDA thread, pthread barriers for __syncthreads, per-warp exchanges for shuffles,
# host memory as device memory (fake cuda_runtime.h in include/). Shapes are shrunk so each test takes minutes.
# cuBLAS (matmul) and NCCL are not emulated. For machines without a GPU; a real GPU run is still the reference.
# "model" runs tests/cuda/test_model_cuda.c (the whole GPU model, worker/model_cuda.c, on the transformers fixtures)
# with matmul_emu.c (host loops) standing in for the cuBLASLt matmuls; every other op is the emulated kernel.
# "zero1" runs tests/cuda/test_model_zero1.c (ZeRO-1 of the GPU model, 1-4 ranks) and "buckets"
# tests/cuda/test_model_buckets.c (2 ranks) and "overlap" tests/cuda/test_model_overlap.c (the worker's early
# all-reduce after MB {last} / DRAIN, with generation changes; 2 ranks) with nccl_comm.cu compiled against a fake
# NCCL (nccl_emu.cpp: the ranks are threads of one process, sums in rank order; collectives are synchronous).
# Usage: kernels/cuda/emu/run.sh [test ...]   (from anywhere; needs g++, gcc, perl, OpenBLAS, OpenMP, cJSON)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
work=$(mktemp -d /tmp/llava-cuda-emu.XXXXXX)
trap 'rm -rf "$work"' EXIT
tests=("$@")
[ ${#tests[@]} -eq 0 ] && tests=(norm attention elementwise embed loss adamw)
inc=(-I"$here/include" -I"$here" -I"$work/src" -I"$root" -D_GNU_SOURCE)
mkdir -p "$work/src/kernels/cuda"
cp "$root"/kernels/cuda/{cuda_common.cuh,ops_cuda.h,cuda_check.h,nccl_comm.h,zero1.h} "$work/src/kernels/cuda/"
objs=()
for k in ctx norm attention elementwise loss_optim; do
  perl "$here/prep.pl" "$root/kernels/cuda/$k.cu" "$work/$k.cpp"
  g++ -std=c++17 -O1 -pthread -w "${inc[@]}" -c "$work/$k.cpp" -o "$work/$k.o"
  objs+=("$work/$k.o")
done
g++ -std=c++17 -O1 -pthread -w "${inc[@]}" -c "$here/emu.cpp" -o "$work/emu.o"
gcc -std=c11 -O2 -fopenmp -I"$here/include" -I"$root" -D_GNU_SOURCE -c "$root/kernels/cpu/ops.c" -o "$work/ops.o"
gcc -std=c11 -O2 -I"$root" -D_GNU_SOURCE -c "$root/common/err.c" -o "$work/err.o"
gcc -std=c11 -O2 -I"$root" -D_GNU_SOURCE -c "$root/common/tensor.c" -o "$work/tensor.o"
fail=0
for t in "${tests[@]}"; do
  if [ "$t" = zero1 ] || [ "$t" = buckets ] || [ "$t" = overlap ]; then
    # multi-rank tests of the GPU model (ranks as threads): nccl_comm.cu against a fake NCCL (nccl_emu.cpp)
    tf=test_model_$t; ranks=7; [ "$t" = zero1 ] || ranks=2
    zobjs=()
    for k in nccl_comm zero1; do
      perl "$here/prep.pl" "$root/kernels/cuda/$k.cu" "$work/$k.cpp"
      g++ -std=c++17 -O1 -pthread -w "${inc[@]}" -c "$work/$k.cpp" -o "$work/$k.o"
      zobjs+=("$work/$k.o")
    done
    g++ -std=c++17 -O1 -pthread -w "${inc[@]}" -c "$here/nccl_emu.cpp" -o "$work/nccl_emu.o"
    for f in worker/model_cuda.c worker/model_llava.c worker/clip.c worker/llama.c worker/projector.c \
             worker/batchfile.c common/safetensors.c common/hfconfig.c common/batch.c common/fileio.c \
             kernels/cuda/emu/matmul_emu.c tests/cuda/$tf.c; do
      gcc -std=c11 -O2 -I"$here/include" -I"$root" -D_GNU_SOURCE -DLLAVA_HAVE_CUDA=1 -DLLAVA_EMU_RANKS=$ranks \
          $(pkg-config --cflags libcjson) -c "$root/$f" -o "$work/z_$(basename "$f" .c).o"
      zobjs+=("$work/z_$(basename "$f" .c).o")
    done
    g++ -pthread -fopenmp "${zobjs[@]}" "$work/nccl_emu.o" "$work/emu.o" "${objs[@]}" "$work/ops.o" "$work/err.o" \
        "$work/tensor.o" $(pkg-config --libs libcjson) -lopenblas -lm -o "$work/$tf"
    echo "== $tf (emulated; fake NCCL, up to $ranks ranks as threads)"
    if LLAVA_SOURCE_DIR="$root" "$work/$tf" > "$work/$t.log" 2>&1; then grep "^  \|checks" "$work/$t.log";
    else fail=1; grep -v " INFO " "$work/$t.log" | tail -40; echo "$tf FAILED"; fi
    cp "$work/$t.log" "/tmp/llava-emu-$tf.log"
    rm -f "${zobjs[@]}"
    continue
  fi
  if [ "$t" = model ]; then
    mobjs=()
    for f in worker/model_cuda.c worker/model_llava.c worker/clip.c worker/llama.c worker/projector.c \
             worker/batchfile.c common/safetensors.c common/hfconfig.c common/batch.c common/fileio.c kernels/cuda/emu/matmul_emu.c \
             tests/cuda/test_model_cuda.c; do
      o="$work/m_$(basename "$f" .c).o"
      gcc -std=c11 -O2 -I"$here/include" -I"$root" -D_GNU_SOURCE -DLLAVA_HAVE_CUDA=1 $(pkg-config --cflags libcjson) \
          -c "$root/$f" -o "$o"
      mobjs+=("$o")
    done
    g++ -pthread -fopenmp "${mobjs[@]}" "$work/emu.o" "${objs[@]}" "$work/ops.o" "$work/err.o" "$work/tensor.o" \
        $(pkg-config --libs libcjson) -lopenblas -lm -o "$work/test_model"
    echo "== test_model_cuda (emulated; matmuls as host loops)"
    if LLAVA_SOURCE_DIR="$root" "$work/test_model" > "$work/model.log"; then tail -4 "$work/model.log"; else
      fail=1; grep -v "^  " "$work/model.log" | tail -30; echo "test_model_cuda FAILED"; fi
    cp "$work/model.log" /tmp/llava-emu-test_model_cuda.log
    continue
  fi
  # smaller shapes: the emulator creates one OS thread per CUDA thread
  sed -e 's/100003/1003/; s/1000003/10003/g; s/3000001/30001/; s/32001/3001/; s/129, 32064/20, 3064/' \
      -e 's/run_scatter(ctx, d, 3000, 130, 2)/run_scatter(ctx, d, 1500, 33, 2)/' \
      -e 's/{2, 129, 8, 2, 128, 0, 1}, {1, 129, 2, 2, 128, 1, 0},/{2, 40, 2, 1, 128, 0, 1}, {1, 45, 2, 2, 128, 1, 0},/' \
      -e 's/{1, 129, 8, 2, 64, 1, 0}/{1, 70, 4, 2, 64, 1, 0}/' \
      -e 's/run_rope((cuda_dtype_t)dt, 2, 129, 3, 128, 0)/run_rope((cuda_dtype_t)dt, 1, 9, 3, 128, 0)/' \
      "$root/tests/cuda/test_cuda_$t.c" > "$work/test_$t.c"
  gcc -std=c11 -O1 -I"$here/include" -I"$root" -D_GNU_SOURCE -c "$work/test_$t.c" -o "$work/test_$t.o"
  g++ -pthread -fopenmp "$work/test_$t.o" "$work/emu.o" "${objs[@]}" "$work/ops.o" "$work/err.o" "$work/tensor.o" \
      -lopenblas -lm -o "$work/test_$t"
  echo "== test_cuda_$t (emulated)"
  if "$work/test_$t" | tail -1; then :; else fail=1; echo "test_cuda_$t FAILED"; fi
done
exit $fail
