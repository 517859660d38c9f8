// The CPU dense linear layer and the weight checks every backend's make_linear makes.
#pragma once

#include <memory>

#include "nvfp4moe/linear.hpp"

namespace nvfp4moe {

// Shapes against the config, finite non-negative scales, a static W4A4 input scale > 0.
void validate_linear_weight(const LinearConfig& config, const NvFp4View& weight, float input_scale);

std::unique_ptr<Nvfp4Linear> make_cpu_linear(const LinearConfig& config, const NvFp4View& weight,
                                             float input_scale);

}  // namespace nvfp4moe
