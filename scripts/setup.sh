#!/usr/bin/env bash
# Installs what nvfp4moe needs on a fresh Debian 12 machine (Debian packages and PyPI
# packages by name), then configures and builds the project into ./build.
#   scripts/setup.sh            install + build
#   scripts/setup.sh --deps     install only
set -euo pipefail
cd "$(dirname "$0")/.."

debian_packages=(
  build-essential cmake ninja-build git python3 python3-venv libnuma1
  nlohmann-json3-dev libcli11-dev libfmt-dev libgtest-dev libgmock-dev
  clang clang-format clang-tidy libclang-rt-14-dev
)
# The producers' own packages are the tests' oracles: compressed-tensors writes the fixtures of
# its format (its 0.17.0 wheel does not declare psutil, which it imports), ModelOpt's NVFP4
# quantizer checks that `quantize` writes its bytes, and Hugging Face's gpt-oss code dequantizes
# the MXFP4 fixture the importer must match.
python_packages=(safetensors numpy pytest "torch==2.11.0" "compressed-tensors==0.17.0" psutil
  "nvidia-modelopt==0.47.0" "transformers==5.25.0")

missing=()
for p in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! python3 -c "import safetensors, numpy, pytest, torch, compressed_tensors, modelopt, transformers" \
  2>/dev/null; then
  echo "setup: installing PyPI packages: ${python_packages[*]}"
  python3 -m pip install -q "${python_packages[@]}"
fi

[[ "${1:-}" == "--deps" ]] && exit 0

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$(nproc)"
