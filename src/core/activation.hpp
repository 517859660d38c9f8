// The gated activations of docs/numerics.md §4 step 3, shared by the CPU reference and the CUDA
// epilogue. Computed in fp32. Device code gets the accurate expf (no fast-math), so backends agree
// to within an ulp or two.
#pragma once

#include <cmath>

#include "nvfp4moe/format.hpp"  // NVFP4MOE_HD

namespace nvfp4moe {

NVFP4MOE_HD float silu(float x) { return x / (1.0f + expf(-x)); }

// silu(gate) * up, or for the clamped SwiGLU of DeepSeek-V4:
// silu(min(gate, limit)) * clamp(up, -limit, limit).
NVFP4MOE_HD float gated_activation(float gate, float up, bool clamped, float limit) {
  if (clamped) {
    gate = fminf(gate, limit);
    up = fminf(fmaxf(up, -limit), limit);
  }
  return silu(gate) * up;
}

// gpt-oss's SwiGLU: g = min(gate, L), u = clamp(up, -L, L), g * sigmoid(1.702 g) * (u + 1).
NVFP4MOE_HD float swiglu_oai(float gate, float up, float limit) {
  gate = fminf(gate, limit);
  up = fminf(fmaxf(up, -limit), limit);
  return gate / (1.0f + expf(-1.702f * gate)) * (up + 1.0f);
}

}  // namespace nvfp4moe
