#!/usr/bin/env bash
# Builds everything and runs every test that this machine can run:
#   - the C++ suites and the command-line tests (ctest; GPU suites skip without a GPU),
#   - the safetensors reader under libFuzzer for NVFP4MOE_FUZZ_SECONDS (default 60),
#   - clang-format on every C++ and CUDA file.
# Needs what scripts/setup.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs"

echo "== fuzzing the safetensors reader for ${NVFP4MOE_FUZZ_SECONDS:-60} s"
cmake -S tests/fuzz -B build/fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ >/dev/null
cmake --build build/fuzz -j "$jobs"
corpus=build/fuzz/corpus
mkdir -p "$corpus"
cp build/tests/fixtures/*.safetensors build/tests/fixtures/malformed/*.safetensors "$corpus"/
build/fuzz/fuzz_safetensors -max_total_time="${NVFP4MOE_FUZZ_SECONDS:-60}" -max_len=4096 \
  -print_final_stats=1 "$corpus" 2>&1 | tail -n 12

echo "== clang-format"
git ls-files '*.cpp' '*.hpp' '*.cu' '*.cuh' | xargs clang-format --dry-run --Werror
echo "all tests passed"
