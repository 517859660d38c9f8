// The arithmetic the CPU reference shares between its MoE and its linear layer.
#pragma once

#include <cmath>
#include <cstdint>

#include "nvfp4moe/format.hpp"

namespace nvfp4moe::cpu {

// fp32 dot product of two rows whose length is a multiple of 16. Sixteen running sums (one per
// position in a block) let the compiler vectorize without reassociating anything itself.
inline float dot(const float* a, const float* b, int64_t n) {
  float lanes[kBlockSize] = {};
  for (int64_t i = 0; i < n; i += kBlockSize) {
    for (int j = 0; j < kBlockSize; ++j) lanes[j] += a[i + j] * b[i + j];
  }
  float sum = 0.0f;
  for (float lane : lanes) sum += lane;
  return sum;
}

// Quantizes one row with global scale g and writes back e2m1 * e4m3 (without g): the operand a
// block-scaled MMA sees. The row must be finite (callers check).
inline void quantize_dequantize_row(float* row, int64_t n, float global_scale) {
  for (int64_t b = 0; b < n; b += kBlockSize) {
    float amax = 0.0f;
    for (int i = 0; i < kBlockSize; ++i) amax = std::fmax(amax, std::fabs(row[b + i]));
    const uint8_t scale = nvfp4_block_scale(amax, global_scale);
    for (int i = 0; i < kBlockSize; ++i) {
      row[b + i] = nvfp4_element_value(nvfp4_element_code(row[b + i], scale, global_scale), scale);
    }
  }
}

}  // namespace nvfp4moe::cpu
