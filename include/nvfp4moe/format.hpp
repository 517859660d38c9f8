// NVFP4: the number formats and the block quantizer (docs/numerics.md §1-2, normative).
//
// An NVFP4 tensor of logical shape [rows, cols] (cols is the reduction dimension, a multiple of
// 16) is three things:
//
//   values  uint8 [rows, cols/2]   two FP4 E2M1 codes per byte, element 2j in the low nibble
//   scales  uint8 [rows, cols/16]  one FP8 E4M3 ("fn") block scale per 16 consecutive elements
//   global  float                  one FP32 scale for the whole tensor
//
//   x[r, c] = e2m1(values) * e4m3(scales[r, c/16]) * global
//
// The codecs below are `inline` and usable from host and device code alike, so that the CPU
// reference and every CUDA kernel run literally the same arithmetic and produce bit-identical
// codes. They use integer operations and IEEE fp32 only: no fast-math, no table that rounds
// to a half step first (2.6 must become 3, not 2).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define NVFP4MOE_HD __host__ __device__ __forceinline__
#else
#define NVFP4MOE_HD inline
#endif

namespace nvfp4moe {

inline constexpr int kBlockSize = 16;          // elements that share one E4M3 scale
inline constexpr float kE2M1Max = 6.0f;        // largest FP4 magnitude
inline constexpr float kE4M3Max = 448.0f;      // largest finite FP8 E4M3 magnitude
inline constexpr uint8_t kE4M3MaxCode = 0x7E;  // 448
inline constexpr uint8_t kE4M3NanCode = 0x7F;  // (and 0xFF)

NVFP4MOE_HD uint32_t float_to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

NVFP4MOE_HD float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

// ---- BF16 ----------------------------------------------------------------------------------
// BF16 is carried as its bit pattern (uint16_t) on the host API: no CUDA type is needed.

NVFP4MOE_HD float bf16_to_float(uint16_t bits) { return bits_to_float(uint32_t{bits} << 16); }

// Round to nearest, ties to even; NaN stays a (quiet) NaN, infinities stay infinite.
NVFP4MOE_HD uint16_t float_to_bf16(float f) {
  const uint32_t u = float_to_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  const uint32_t rounding = 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

// ---- FP4 E2M1 ------------------------------------------------------------------------------
// Code bit 3 is the sign; bits 2..0 give the magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6.

NVFP4MOE_HD float e2m1_decode(uint8_t code) {
  const uint32_t magnitude = code & 7u;
  const uint32_t sign = uint32_t{code & 8u} << 28;
  if (magnitude == 0) return bits_to_float(sign);
  if (magnitude == 1) return bits_to_float(sign | 0x3F000000u);  // 0.5, the one subnormal
  const uint32_t exponent = (magnitude >> 1) - 1u;               // 2,3 -> 0; 4,5 -> 1; 6,7 -> 2
  const uint32_t mantissa = magnitude & 1u;
  return bits_to_float(sign | ((127u + exponent) << 23) | (mantissa << 22));
}

// Round to nearest, ties to the even code, saturate to +-6 (PTX cvt.rn.satfinite.e2m1x2.f32).
// The sign is kept, so -0.1 encodes as -0 (code 8). Callers reject NaN before encoding; a NaN
// here gives the saturated magnitude.
NVFP4MOE_HD uint8_t e2m1_encode(float x) {
  const uint8_t sign = static_cast<uint8_t>((float_to_bits(x) >> 28) & 8u);
  const float a = x < 0.0f ? -x : x;
  uint8_t magnitude;
  // Each threshold is the midpoint between neighbours; `<=` where the tie goes down to an even
  // code, `<` where it goes up to one.
  if (a <= 0.25f) {
    magnitude = 0;
  } else if (a < 0.75f) {
    magnitude = 1;
  } else if (a <= 1.25f) {
    magnitude = 2;
  } else if (a < 1.75f) {
    magnitude = 3;
  } else if (a <= 2.5f) {
    magnitude = 4;
  } else if (a < 3.5f) {
    magnitude = 5;
  } else if (a <= 5.0f) {
    magnitude = 6;
  } else {
    magnitude = 7;
  }
  return sign | magnitude;
}

// ---- FP8 E4M3 (fn) ---------------------------------------------------------------------------
// Bias 7, no infinities; 0x7F and 0xFF are NaN; largest finite 448; smallest subnormal 2^-9.

NVFP4MOE_HD float e4m3_decode(uint8_t code) {
  const uint32_t sign = uint32_t{code & 0x80u} << 24;
  const uint32_t exponent = (code >> 3) & 0xFu;
  const uint32_t mantissa = code & 7u;
  if (exponent == 0xFu && mantissa == 7u) return bits_to_float(sign | 0x7FC00000u);
  if (exponent == 0) {
    // m * 2^-9, exact in fp32.
    const float magnitude = static_cast<float>(mantissa) * 0.001953125f;
    return sign ? -magnitude : magnitude;
  }
  return bits_to_float(sign | ((exponent - 7u + 127u) << 23) | (mantissa << 20));
}

// Round to nearest, ties to even, saturate to +-448 (PTX cvt.rn.satfinite.e4m3x2.f32); NaN
// encodes as NaN.
NVFP4MOE_HD uint8_t e4m3_encode(float x) {
  const uint32_t bits = float_to_bits(x);
  const uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80u);
  const uint32_t abs_bits = bits & 0x7FFFFFFFu;
  if (abs_bits > 0x7F800000u) return sign | kE4M3NanCode;
  const float a = bits_to_float(abs_bits);
  if (a >= kE4M3Max) return sign | kE4M3MaxCode;
  if (a < 0.015625f) {
    // Below 2^-6 the grid is uniform with step 2^-9. Scaling by 2^9 is exact, so rounding the
    // scaled value to an integer (ties to even) is exactly E4M3's rounding. A result of 8 is the
    // smallest normal, 2^-6, whose code is also 8.
    uint32_t scaled = static_cast<uint32_t>(a * 512.0f);              // truncation
    const float remainder = a * 512.0f - static_cast<float>(scaled);  // exact
    if (remainder > 0.5f || (remainder == 0.5f && (scaled & 1u))) ++scaled;
    return static_cast<uint8_t>(sign | scaled);
  }
  // Normal fp32 and normal E4M3: keep 3 of the 23 mantissa bits, rounding the other 20.
  int32_t exponent = static_cast<int32_t>(abs_bits >> 23) - 127;  // -6 .. 8
  uint32_t mantissa = (abs_bits >> 20) & 7u;
  const uint32_t rest = abs_bits & 0xFFFFFu;
  if (rest > 0x80000u || (rest == 0x80000u && (mantissa & 1u))) {
    if (++mantissa == 8u) {
      mantissa = 0;
      ++exponent;
    }
  }
  const uint32_t code = (static_cast<uint32_t>(exponent + 7) << 3) | mantissa;
  return static_cast<uint8_t>(sign | (code > kE4M3MaxCode ? kE4M3MaxCode : code));
}

// ---- The NVFP4 block quantizer, one step at a time -----------------------------------------
// Exactly docs/numerics.md §2, in IEEE fp32 and in this order of operations.

// Step 1: the block scale code for a block whose largest magnitude is `block_amax`.
NVFP4MOE_HD uint8_t nvfp4_block_scale(float block_amax, float global_scale) {
  if (block_amax == 0.0f) return 0;
  return e4m3_encode(block_amax / (kE2M1Max * global_scale));
}

// Step 2: one element's code given its block's scale code.
NVFP4MOE_HD uint8_t nvfp4_element_code(float x, uint8_t scale_code, float global_scale) {
  if (scale_code == 0) return 0;
  return e2m1_encode(x / (e4m3_decode(scale_code) * global_scale));
}

// Step 3: the dynamic global scale from the amax of the whole tensor. When amax is zero, or so
// small that amax / 2688 underflows to zero, the scale is 1 (every block then gets scale 0).
NVFP4MOE_HD float nvfp4_dynamic_global_scale(float amax) {
  const float scale = amax / (kE2M1Max * kE4M3Max);
  return scale > 0.0f ? scale : 1.0f;
}

// The exact value of one element without its global scale: e2m1 * e4m3. It has at most 5
// significant bits and lies in [2^-10, 2688], so it is exact in fp32, bf16 and fp16.
NVFP4MOE_HD float nvfp4_element_value(uint8_t code, uint8_t scale_code) {
  return e2m1_decode(code) * e4m3_decode(scale_code);
}

// ---- MXFP4 (OCP Microscaling, docs/numerics.md §1) ------------------------------------------
// E2M1 values as NVFP4's, in blocks of 32 that share an E8M0 scale: a power of two 2^(code - 127)
// (codes 0..254; 0xFF is NaN), with no global scale. x = e2m1(value) * 2^(scale - 127).

inline constexpr int kMxBlockSize = 32;
inline constexpr uint8_t kE8M0NanCode = 0xFF;

// 2^(code - 127) (2^-127 is an fp32 subnormal, exact); NaN for 0xFF.
NVFP4MOE_HD float e8m0_decode(uint8_t code) {
  if (code == kE8M0NanCode) return bits_to_float(0x7FC00000u);
  if (code == 0) return bits_to_float(0x00400000u);
  return bits_to_float(static_cast<uint32_t>(code) << 23);
}

// OCP MX's shared scale for a block whose largest magnitude is `block_amax` (finite, >= 0):
// 2^(floor(log2(amax)) - 2), 2 being E2M1's largest exponent, clamped to E8M0's range; code 0
// for an all-zero block.
NVFP4MOE_HD uint8_t mxfp4_block_scale(float block_amax) {
  const uint32_t bits = float_to_bits(block_amax) & 0x7FFFFFFFu;
  if (bits == 0) return 0;
  int log2_floor;
  if (bits >= 0x00800000u) {
    log2_floor = static_cast<int>(bits >> 23) - 127;
  } else {  // subnormal: the highest set bit of the mantissa
    log2_floor = -127;
    for (uint32_t m = bits; m < 0x00400000u; m <<= 1) --log2_floor;
  }
  const int code = log2_floor - 2 + 127;
  return static_cast<uint8_t>(code < 0 ? 0 : code > 254 ? 254 : code);
}

// One element's code: x / 2^(scale - 127) rounded to nearest even and saturated to +-6 (OCP MX's
// conversion; the division by a power of two is exact unless the quotient is an fp32
// subnormal, which rounds to code 0 either way).
NVFP4MOE_HD uint8_t mxfp4_element_code(float x, uint8_t scale_code) {
  const int e = 127 - static_cast<int>(scale_code);  // x * 2^e, e in [-127, 127]
  const float scaled = e >= -126 ? x * bits_to_float(static_cast<uint32_t>(e + 127) << 23)
                                 : x * 0.5f * bits_to_float(0x00800000u);
  return e2m1_encode(scaled);
}

// The exact value of one element: e2m1 * 2^(scale - 127).
NVFP4MOE_HD float mxfp4_element_value(uint8_t code, uint8_t scale_code) {
  return e2m1_decode(code) * e8m0_decode(scale_code);
}

// ---- W4A8's FP8 operands (docs/numerics.md §5) -----------------------------------------------
// Both operands of a W4A8 GEMM are E4M3 values in groups of 128 consecutive elements of a row
// (the last group of a row may be shorter), each group with a power-of-two scale 2^E:
//
//   E = the smallest integer >= kFp8MinExponent with amax(group) * 2^-E <= 448 (0 for a group of
//       zeros);  q = e4m3_rne(x * 2^-E);  x ~ q * 2^E.
//
// x * 2^-E is exact, so each element is rounded once. Weights enter as their exact NVFP4 values
// e2m1 * e4m3 (without the global scale), activations as bf16.

inline constexpr int kFp8GroupSize = 128;
inline constexpr int kFp8MinExponent = -126;  // 2^-E stays a normal fp32 number

// 2^e as fp32, for e in [-126, 127].
NVFP4MOE_HD float exp2_int(int e) { return bits_to_float(static_cast<uint32_t>(e + 127) << 23); }

// The group exponent E for a group whose largest magnitude is `amax` (finite, >= 0).
NVFP4MOE_HD int fp8_group_exponent(float amax) {
  const uint32_t bits = float_to_bits(amax) & 0x7FFFFFFFu;
  if (bits == 0) return 0;
  if (bits < 0x00800000u) return kFp8MinExponent;  // subnormal: below 448 * 2^-126
  // amax = 1.m * 2^i: 448 * 2^(i-8) = 1.75 * 2^i is at least amax exactly when m <= 0.75.
  const int i = static_cast<int>(bits >> 23) - 127;
  const int e = i - 8 + ((bits & 0x7FFFFFu) > 0x600000u ? 1 : 0);
  return e < kFp8MinExponent ? kFp8MinExponent : e;
}

// One element's E4M3 code in a group of exponent E.
NVFP4MOE_HD uint8_t fp8_group_code(float x, int group_exponent) {
  return e4m3_encode(x * exp2_int(-group_exponent));
}

}  // namespace nvfp4moe
