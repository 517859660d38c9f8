// NVFP4 -> bf16 A fragments for mma.m16n8k16, from the prepared layout (prepared_layout.hpp).
//
// A nibble (sign s, magnitude m = 2e + f) placed at bf16 bits [15] and [8:6] reads as
// e2m1(nibble) * 2^-126: e lands in the exponent field and f in the top mantissa bit; the code
// 0.5 (m = 1) becomes the subnormal 0.5 * 2^-126, which bf16 multiplication handles exactly.
// Multiplying by the prepared scale (s * 2^106) then gives e2m1 * s * 2^-20, which has at most
// 6 significant bits and so is exact in bf16: the fragments hold the exact weights, scaled by
// a power of two that the epilogue takes back. Cost per 8 weights: 8 integer ops and 4 bf16
// multiplies (the word's bit layout in prepared_layout.hpp is chosen for that), plus the scales:
// 3 integer ops per row and chunk with row_scales (6 per 16-row group, 1.5 per 8 weights).
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda/sm90/prepared_layout.hpp"

namespace nvfp4moe::cuda {

// The scales of one row for the four k16 steps of a chunk, from its prepared scale word
// (prepared_layout.hpp), as bf16 values s * 2^106: `even` holds steps 0 and 2 (lo and hi half),
// `odd` steps 1 and 3. Three integer ops per row and chunk; the multiply takes its half with an
// operand selector.
struct RowScales {
  uint32_t even;
  uint32_t odd;
};
inline constexpr uint32_t kScaleCodeBits = 0x0FF00FF0u;  // a code at bf16 bits 11:4 of each half
inline constexpr uint32_t kScaleExponentBase = 0x70007000u;
// (word & kScaleCodeBits) | base in one LOP3, with `base` in a register (ptxas otherwise splits
// it into two LOP3s, one per constant).
__device__ __forceinline__ uint32_t scale_bf16x2(uint32_t word) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;"
      : "=r"(d)
      : "r"(word), "n"(kScaleCodeBits), "r"(kScaleExponentBase));
  return d;
}
__device__ __forceinline__ RowScales row_scales(uint32_t word) {
  return {scale_bf16x2(word), scale_bf16x2(__funnelshift_r(word, word, 8))};
}

// r * (s, s), with s the half of `pair` (0: lo, 1: hi) broadcast to both lanes. ptxas folds the
// broadcast into the multiply's operand selector.
template <int kHalf>
__device__ __forceinline__ uint32_t mul_bf16x2_by_half(uint32_t r, uint32_t pair) {
  uint32_t d;
  if constexpr (kHalf == 0) {
    asm("{\n.reg .b16 lo, hi;\n.reg .b32 s;\nmov.b32 {lo, hi}, %2;\nmov.b32 s, {lo, lo};\n"
        "mul.rn.bf16x2 %0, %1, s;\n}\n"
        : "=r"(d)
        : "r"(r), "r"(pair));
  } else {
    asm("{\n.reg .b16 lo, hi;\n.reg .b32 s;\nmov.b32 {lo, hi}, %2;\nmov.b32 s, {hi, hi};\n"
        "mul.rn.bf16x2 %0, %1, s;\n}\n"
        : "=r"(d)
        : "r"(r), "r"(pair));
  }
  return d;
}

// One k16 step `step` (0..3, a constant after unrolling) of one 16-row group: the word
// (prepared_layout.hpp) and the scales of rows g and g+8 give the four A registers: each
// register's sign and magnitude bits moved to bf16 bits 15 and 8:6 of both halves, times the
// scale.
__device__ __forceinline__ void decode_a_fragment(uint32_t word, const RowScales& row_g,
                                                  const RowScales& row_g8, int step,
                                                  uint32_t (&a)[4]) {
  constexpr uint32_t kMask = 0x81C081C0u;  // sign at 15, magnitude at 8:6 of each half
  const uint32_t r0 = word & kMask;
  const uint32_t r1 = __funnelshift_r(word, word, 6) & kMask;
  const uint32_t r2 = __funnelshift_r(word, word, 3) & kMask;
  const uint32_t r3 = ((word & 0x001B001Bu) * 0x1084u) & kMask;
  const uint32_t scale_g = step % 2 == 0 ? row_g.even : row_g.odd;
  const uint32_t scale_g8 = step % 2 == 0 ? row_g8.even : row_g8.odd;
  // Steps 0 and 1 take the scales' lo halves, steps 2 and 3 the hi halves.
  auto scale = [&](auto half) {
    constexpr int kHalf = decltype(half)::value;
    a[0] = mul_bf16x2_by_half<kHalf>(r0, scale_g);
    a[1] = mul_bf16x2_by_half<kHalf>(r1, scale_g8);
    a[2] = mul_bf16x2_by_half<kHalf>(r2, scale_g);
    a[3] = mul_bf16x2_by_half<kHalf>(r3, scale_g8);
  };
  if (step < 2) {
    scale(std::integral_constant<int, 0>{});
  } else {
    scale(std::integral_constant<int, 1>{});
  }
}

}  // namespace nvfp4moe::cuda
