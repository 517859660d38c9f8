// NVFP4 -> bf16 A fragments for mma.m16n8k16, from the prepared layout (prepared_layout.hpp).
//
// A nibble (sign s, magnitude m = 2e + f) placed at bf16 bits [15] and [8:6] reads as
// e2m1(nibble) * 2^-126: e lands in the exponent field and f in the top mantissa bit; the code
// 0.5 (m = 1) becomes the subnormal 0.5 * 2^-126, which bf16 multiplication handles exactly.
// Multiplying by the prepared scale (s * 2^110) then gives e2m1 * s * 2^-16, which has at most
// 6 significant bits and so is exact in bf16: the fragments hold the exact weights, scaled by
// a power of two that the epilogue takes back. Cost per 8 weights: 11 integer ops and 4 bf16
// multiplies (the word's bit layout in prepared_layout.hpp is chosen for that).
#pragma once

#include <cstdint>

#include "cuda/common/prepared_layout.hpp"
#include "cuda/common/ptx.cuh"

namespace nvfp4moe::cuda {

// bf16 pair (s, s) * 2^110 from a prepared scale code.
__device__ __forceinline__ uint32_t scale_pair(uint32_t code) {
  return code * 0x00100010u + 0x72007200u;
}

// One k16 step of one 16-row group: the word (prepared_layout.hpp) and the scale pairs of rows
// g and g+8 give the four A registers: each register's sign and magnitude bits moved to bf16
// bits 15 and 8:6 of both halves, times the scale.
__device__ __forceinline__ void decode_a_fragment(uint32_t word, uint32_t scale_row_g,
                                                  uint32_t scale_row_g8, uint32_t (&a)[4]) {
  constexpr uint32_t kSign = 0x80008000u, kMagnitude = 0x01C001C0u;
  const uint32_t r0 = word & (kSign | kMagnitude);
  const uint32_t r1 = (word << 3) & (kSign | kMagnitude);
  const uint32_t r2 = (word << 6) & (kSign | kMagnitude);
  const uint32_t r3 =
      ((word << 1) & kSign) | ((word >> 3) & 0x01800180u) | ((word >> 7) & 0x00400040u);
  a[0] = ptx::mul_bf16x2(r0, scale_row_g);
  a[1] = ptx::mul_bf16x2(r1, scale_row_g8);
  a[2] = ptx::mul_bf16x2(r2, scale_row_g);
  a[3] = ptx::mul_bf16x2(r3, scale_row_g8);
}

}  // namespace nvfp4moe::cuda
