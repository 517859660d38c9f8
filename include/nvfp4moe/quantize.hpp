// Host NVFP4 quantization and dequantization of whole tensors (docs/numerics.md §1-2).
//
// These are the reference quantizer: every backend's quantization kernel must produce the same
// bytes for the same input. Non-finite input is an Error naming the first offending element.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "nvfp4moe/format.hpp"

namespace nvfp4moe {

// A read-only NVFP4 matrix in the linear layout of docs/numerics.md §1.
struct NvFp4View {
  const uint8_t* values = nullptr;  // [rows, cols/2]
  const uint8_t* scales = nullptr;  // [rows, cols/16]
  float global_scale = 1.0f;
  int64_t rows = 0;
  int64_t cols = 0;
};

// An owning NVFP4 matrix.
struct NvFp4Tensor {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<uint8_t> values;
  std::vector<uint8_t> scales;
  float global_scale = 1.0f;

  NvFp4View view() const { return {values.data(), scales.data(), global_scale, rows, cols}; }
};

// Largest magnitude of x; an Error if any element is NaN or infinite (`what` names the tensor;
// with `cols` > 0 the element is given as [row, col] of a matrix with that many columns).
float finite_amax(std::span<const float> x, std::string_view what, int64_t cols = 0);
float finite_amax(std::span<const uint16_t> x_bf16, std::string_view what, int64_t cols = 0);

// Quantizes x [rows, cols] into caller-provided values [rows, cols/2] and scales
// [rows, cols/16] with the given global scale (finite and > 0).
void quantize_nvfp4(std::span<const float> x, int64_t rows, int64_t cols, float global_scale,
                    std::span<uint8_t> values, std::span<uint8_t> scales);
void quantize_nvfp4(std::span<const uint16_t> x_bf16, int64_t rows, int64_t cols,
                    float global_scale, std::span<uint8_t> values, std::span<uint8_t> scales);

// Quantizes with a static global scale, or a dynamic one (amax / 2688) when none is given.
NvFp4Tensor quantize_nvfp4(std::span<const float> x, int64_t rows, int64_t cols,
                           std::optional<float> global_scale = std::nullopt);

// x = e2m1 * e4m3 * global, in fp32, into out [rows, cols].
void dequantize_nvfp4(const NvFp4View& tensor, std::span<float> out);

// The values of one row without the global scale (e2m1 * e4m3, exact), into out [cols].
void decode_nvfp4_row(const uint8_t* row_values, const uint8_t* row_scales, int64_t cols,
                      float* out);
// The same for MXFP4 (e2m1 * 2^(e8m0 - 127), exact; cols a multiple of 32).
void decode_mxfp4_row(const uint8_t* row_values, const uint8_t* row_scales, int64_t cols,
                      float* out);

}  // namespace nvfp4moe
