#!/usr/bin/env bash
# Builds everything and runs every test that this machine can run:
#   - the C++ suites, the command-line tests and the PyTorch ops' CPU tests (ctest; GPU suites
#     skip without a GPU),
#   - the vLLM plugin in real vLLM (its CPU build, in the venv scripts/vllm_env.sh makes;
#     NVFP4MOE_SKIP_VLLM=1 skips it),
#   - the safetensors reader under libFuzzer for NVFP4MOE_FUZZ_SECONDS (default 60),
#   - clang-format on every C++ and CUDA file.
# Needs what scripts/setup.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs"

if [[ ${NVFP4MOE_SKIP_VLLM:-0} != 1 ]]; then
  echo "== vLLM: the plugin end to end in vLLM's CPU build"
  python=$(scripts/vllm_env.sh build/vllm-venv)
  NVFP4MOE_BIN=$PWD/build/nvfp4moe "$python" -m pytest -q -p no:cacheprovider tests/vllm
fi

echo "== fuzzing the safetensors reader for ${NVFP4MOE_FUZZ_SECONDS:-60} s"
cmake -S tests/fuzz -B build/fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ >/dev/null
cmake --build build/fuzz -j "$jobs"
# The corpus: every fixture file, prefixed with the byte that picks its parser (0 safetensors,
# 1 index); -max_len lets the fuzzer grow inputs to deep and large headers.
corpus=build/fuzz/corpus
rm -rf "$corpus"
mkdir -p "$corpus"
for f in build/tests/fixtures/*.safetensors build/tests/fixtures/malformed/*.safetensors \
  build/tests/fixtures/formats/*.safetensors; do
  { printf '\x00'; cat "$f"; } >"$corpus/st_$(basename "$f")"
done
for f in build/tests/fixtures/*/model.safetensors.index.json \
  build/tests/fixtures/malformed_index/*/model.safetensors.index.json; do
  { printf '\x01'; cat "$f"; } >"$corpus/index_$(basename "$(dirname "$f")").json"
done
build/fuzz/fuzz_safetensors -max_total_time="${NVFP4MOE_FUZZ_SECONDS:-60}" -max_len=1048576 \
  -rss_limit_mb=4096 -print_final_stats=1 "$corpus" 2>&1 | tail -n 12

echo "== clang-format"
git ls-files '*.cpp' '*.hpp' '*.cu' '*.cuh' | xargs clang-format --dry-run --Werror
echo "all tests passed"
