// NVFP4 quantization on the device, bit-identical to the CPU quantizer: both run the codecs of
// nvfp4moe/format.hpp in the same fp32 order. One thread per 16-element block.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common/routed.hpp"

namespace nvfp4moe::cuda {

// Where the rows to quantize come from, and which global scale each uses.
struct QuantizeSource {
  const void* input = nullptr;  // bf16 or fp32 rows
  bool input_is_f32 = false;
  int64_t input_row_stride = 0;     // elements
  const int32_t* gather = nullptr;  // row r reads input row gather[r] / gather_divisor
  int32_t gather_divisor = 1;
  int64_t max_rows = 0;                  // rows launched for
  const int32_t* device_rows = nullptr;  // if set, only rows [0, *device_rows) are done
  int32_t cols = 0;                      // multiple of 16

  ActivationScaleSource scale_source = ActivationScaleSource::kFromAmax;
  float static_scale = 1.0f;                // kOne: this value is the global scale
  const float* per_expert_scale = nullptr;  // kPerExpert: per_expert_scale[row_expert[r]],
                                            // or [0] when row_expert is null
  const int32_t* row_expert = nullptr;
  const uint32_t* amax_bits = nullptr;  // kFromAmax: amax / 2688

  uint32_t* error_flags = nullptr;  // kErrorNonFiniteActivation on NaN/Inf
};

// Largest |x| over the source rows into *amax_bits (the bits of a float >= 0, combined with
// atomicMax; zero it first). Non-finite values raise the error flag and are skipped.
cudaError_t launch_amax(const QuantizeSource& source, uint32_t* amax_bits, cudaStream_t stream);

// Quantize, then write back the exact values e2m1 * e4m3 (without the global scale) as bf16
// rows [rows, cols]: the operand a block-scaled MMA would see.
cudaError_t launch_quantize_dequantize(const QuantizeSource& source, uint16_t* output,
                                       int64_t output_row_stride, cudaStream_t stream);

// Turns the amax word written by launch_amax into the dynamic global scale amax / 2688, in
// place (one thread).
cudaError_t launch_amax_to_global_scale(float* amax_then_scale, cudaStream_t stream);

// Quantize to packed NVFP4: values [rows, cols/2], scales [rows, cols/16] (docs/numerics.md §1
// layout).
cudaError_t launch_quantize_nvfp4(const QuantizeSource& source, uint8_t* values, uint8_t* scales,
                                  cudaStream_t stream);

}  // namespace nvfp4moe::cuda
