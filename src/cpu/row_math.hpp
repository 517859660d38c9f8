// The arithmetic the CPU reference shares between its MoE and its linear layer.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

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

// A row as W4A8 sees it (docs/numerics.md §5): per group of 128 elements an exponent E and the
// E4M3 values q (as floats) with x ~ q * 2^E. The row must be finite (callers check).
struct Fp8Row {
  std::vector<float> q;
  std::vector<int> exponents;
};

inline void quantize_fp8_row(const float* row, int64_t n, Fp8Row& out) {
  out.q.resize(static_cast<size_t>(n));
  out.exponents.resize(static_cast<size_t>((n + kFp8GroupSize - 1) / kFp8GroupSize));
  for (int64_t g = 0; g * kFp8GroupSize < n; ++g) {
    const int64_t begin = g * kFp8GroupSize, end = std::min(n, begin + kFp8GroupSize);
    float amax = 0.0f;
    for (int64_t i = begin; i < end; ++i) amax = std::fmax(amax, std::fabs(row[i]));
    const int e = fp8_group_exponent(amax);
    out.exponents[g] = e;
    for (int64_t i = begin; i < end; ++i) out.q[i] = e4m3_decode(fp8_group_code(row[i], e));
  }
}

// The W4A8 dot product of two quantized rows of length n: per group the exact sum of the
// products (exact in double: each product has at most 8 significant bits within 2^-18..2^18,
// and 128 of them span fewer than 53 bits), rounded to fp32, scaled by 2^(Ea + Eb), added in
// fp32 in group order.
inline float fp8_dot(const Fp8Row& a, const Fp8Row& b, int64_t n) {
  float acc = 0.0f;
  for (int64_t g = 0; g * kFp8GroupSize < n; ++g) {
    const int64_t begin = g * kFp8GroupSize, end = std::min(n, begin + kFp8GroupSize);
    double sum = 0.0;
    for (int64_t i = begin; i < end; ++i) sum += double(a.q[i]) * double(b.q[i]);
    acc += std::ldexp(static_cast<float>(sum), a.exponents[g] + b.exponents[g]);
  }
  return acc;
}

}  // namespace nvfp4moe::cpu
