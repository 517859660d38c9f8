// The dense NVFP4 linear layer on the device as free functions over device pointers (the
// owning Nvfp4Linear and the torch ops both call these).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "nvfp4moe/linear.hpp"

namespace nvfp4moe::cuda {

// Workspace of linear_forward: an amax word and, for W4A4, the quantized activations.
size_t linear_workspace_bytes(const LinearConfig& config);

// out [T, out_features] bf16 = the layer of x [T, in_features]. codes/scale_codes: the weight
// prepared by the GEMM family (expert_gemms(config.mode).prepare); weight_scale: device scalar;
// input_scale: device scalar, read for static W4A4 only.
void linear_forward(const LinearConfig& config, const uint8_t* codes, const uint8_t* scale_codes,
                    const float* weight_scale, const float* input_scale, int64_t tokens,
                    const uint16_t* x, uint16_t* out, void* workspace, uint32_t* error_flags,
                    cudaStream_t stream);

}  // namespace nvfp4moe::cuda
