// Hopper's expert-GEMM family (the seam: cuda/expert_gemm.hpp).
#pragma once

#include "cuda/expert_gemm.hpp"

namespace nvfp4moe::cuda {

// The mma.sync and warp-specialized wgmma GEMMs over sm_90's prepared layout, W4A16 and W4A4.
const ExpertGemms& sm90_expert_gemms();

}  // namespace nvfp4moe::cuda
