// The choice of the expert-GEMM family (cuda/expert_gemm.hpp).
#include "cuda/expert_gemm.hpp"

#include "cuda/sm90/family.hpp"

namespace nvfp4moe::cuda {

const ExpertGemms& expert_gemms(QuantMode mode) {
  (void)mode;  // every mode of this build runs on Hopper's family
  return sm90_expert_gemms();
}

}  // namespace nvfp4moe::cuda
