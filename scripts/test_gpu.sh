#!/usr/bin/env bash
# The GPU suite, on a machine with a Hopper (sm_90) GPU:
#   1. every GPU test (kernels, the MoE runner, CUDA-graph replays, expert parallelism over the
#      machine's GPUs), then the GEMM and MoE tests with each tile shape forced,
#   2. the same suite in quick mode under compute-sanitizer memcheck and racecheck,
#   3. the PyTorch ops' tests on the GPU (when the build has them), and the demo on the GPU.
# Uses the build in $NVFP4MOE_BUILD (default build/), building it first if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${NVFP4MOE_BUILD:-build}
if [[ ! -x $build/tests/test_cuda ]]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
  cmake --build "$build" -j "$(nproc)"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
# The checkpoint fixtures ctest writes (tests/fixtures/make_fixtures.py), read by the format tests.
export NVFP4MOE_FIXTURES=${NVFP4MOE_FIXTURES:-$(cd "$build" && pwd)/tests/fixtures}
# The all-to-all transport needs NCCL's device API as built against (2.28.9 or newer of 2.28);
# PyTorch's wheel often carries a newer NCCL than the system's, so use it unless told otherwise.
if [[ -z ${NVFP4MOE_NCCL:-} ]]; then
  wheel_nccl=$(python3 -c "import importlib.util as u
s = u.find_spec('nvidia.nccl')
print(list(s.submodule_search_locations)[0] + '/lib/libnccl.so.2' if s else '')" 2>/dev/null || true)
  if [[ -n $wheel_nccl && -f $wheel_nccl ]]; then export NVFP4MOE_NCCL=$wheel_nccl; fi
fi
echo "NCCL: ${NVFP4MOE_NCCL:-libnccl.so.2 from the loader path}"

status=0
summary=()
run() {
  local name=$1
  shift
  local start=$SECONDS
  if "$@"; then
    summary+=("$(printf '%-28s passed  %4d s' "$name" $((SECONDS - start)))")
  else
    summary+=("$(printf '%-28s FAILED  %4d s' "$name" $((SECONDS - start)))")
    status=1
  fi
}

run "gpu tests" "$build/tests/test_cuda" --gtest_brief=1
# The heuristic picks one tile shape per size; force each through the GEMM and MoE checks.
for shape in small wgmma16 wgmma32 wgmma64 wgmma128; do
  run "gpu tests, $shape tiles" env NVFP4MOE_GEMM_SHAPE=$shape "$build/tests/test_cuda" \
    --gtest_brief=1 --gtest_filter='CudaLinear*:*CudaMoe.*:CudaGraph*:*CudaCheckpoint*'
done
if [[ ${NVFP4MOE_SKIP_SANITIZER:-0} != 1 ]]; then
  # The NCCL tests stay out: NCCL's own peer-access calls return errors by design
  # (cudaErrorPeerAccessAlreadyEnabled), which the sanitizer reports as ours.
  export NVFP4MOE_TEST_QUICK=1 NVFP4MOE_TEST_REPLAYS=20
  run "memcheck (quick)" compute-sanitizer --tool memcheck --error-exitcode 1 \
    "$build/tests/test_cuda" --gtest_brief=1 --gtest_filter=-*Distributed*
  run "racecheck (quick)" compute-sanitizer --tool racecheck --error-exitcode 1 \
    "$build/tests/test_cuda" --gtest_brief=1 --gtest_filter=-*Distributed*
  unset NVFP4MOE_TEST_QUICK NVFP4MOE_TEST_REPLAYS
fi
if [[ -f $build/python/nvfp4moe/_C.so ]]; then
  run "torch ops on the gpu" env PYTHONPATH="$build/python" python3 -m pytest -q -p no:cacheprovider \
    tests/torch
fi
run "demo on the gpu" "$build/nvfp4moe" demo --device cuda

echo
printf '%s\n' "${summary[@]}"
exit $status
