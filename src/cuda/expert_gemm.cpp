// The choice of the expert-GEMM family (cuda/expert_gemm.hpp).
#include "cuda/expert_gemm.hpp"

#include "core/check.hpp"
#include "cuda/sm90/family.hpp"

namespace nvfp4moe::cuda {

const ExpertGemms& expert_gemms(QuantMode mode) {
  // W4A8 (FP8 operands, numerics §5) is defined by the CPU reference; its GPU family is to come.
  require(mode != QuantMode::kW4A8, ErrorKind::kUnsupported,
          "W4A8 runs on the CPU reference only in this build (no GPU kernels for it yet); use "
          "mode w4a16 or w4a4 on the GPU, or the cpu device");
  return sm90_expert_gemms();
}

}  // namespace nvfp4moe::cuda
