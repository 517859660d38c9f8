// The NVFP4 number formats: exhaustive checks against brute-force oracles (docs/numerics.md §1-2).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "nvfp4moe/format.hpp"
#include "support/moe_reference.hpp"

namespace nvfp4moe {
namespace {

using testing::reference_e2m1_encode;
using testing::reference_e2m1_value;
using testing::reference_e4m3_encode;
using testing::reference_e4m3_value;
using testing::reference_fp8_group_exponent;

TEST(E2M1, DecodesTheSixteenCodes) {
  const float magnitudes[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  for (int code = 0; code < 16; ++code) {
    const float expected = (code & 8) ? -magnitudes[code & 7] : magnitudes[code & 7];
    EXPECT_EQ(e2m1_decode(static_cast<uint8_t>(code)), expected) << "code " << code;
    EXPECT_EQ(std::signbit(e2m1_decode(static_cast<uint8_t>(code))), (code & 8) != 0);
  }
}

// Every bf16 bit pattern, finite or not, through the encoder, against the nearest-value search
// (ties to the even code, saturation to 6).
TEST(E2M1, AllBf16PatternsMatchTheNearestValueOracle) {
  int checked = 0;
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const float x = bf16_to_float(static_cast<uint16_t>(bits));
    if (std::isnan(x)) continue;
    ASSERT_EQ(e2m1_encode(x), reference_e2m1_encode(x))
        << "bf16 0x" << std::hex << bits << " = " << x;
    ++checked;
  }
  EXPECT_EQ(checked, 65536 - 2 * 127);  // all but the NaN patterns
}

TEST(E2M1, RoundsToNearestEvenLikeTheHardware) {
  // The values docs/numerics.md §2 quotes from an H200, and the bug this project must not repeat
  // (rounding to a half step first turns 2.6 into 2).
  EXPECT_EQ(e2m1_decode(e2m1_encode(2.5f)), 2.0f);
  EXPECT_EQ(e2m1_decode(e2m1_encode(2.6f)), 3.0f);
  EXPECT_EQ(e2m1_decode(e2m1_encode(5.0f)), 4.0f);
  EXPECT_EQ(e2m1_decode(e2m1_encode(7.0f)), 6.0f);
  EXPECT_EQ(e2m1_decode(e2m1_encode(0.25f)), 0.0f);
  EXPECT_EQ(e2m1_decode(e2m1_encode(0.26f)), 0.5f);
  EXPECT_EQ(e2m1_decode(e2m1_encode(0.75f)), 1.0f);
  EXPECT_EQ(e2m1_decode(e2m1_encode(1.25f)), 1.0f);
  EXPECT_EQ(e2m1_decode(e2m1_encode(1.75f)), 2.0f);
  EXPECT_EQ(e2m1_decode(e2m1_encode(3.5f)), 4.0f);
  EXPECT_EQ(e2m1_decode(e2m1_encode(-2.6f)), -3.0f);
  EXPECT_EQ(e2m1_decode(e2m1_encode(1e30f)), 6.0f);
  EXPECT_EQ(e2m1_decode(e2m1_encode(-std::numeric_limits<float>::infinity())), -6.0f);
}

TEST(E2M1, KeepsTheSignOfZero) {
  EXPECT_EQ(e2m1_encode(0.0f), 0);
  EXPECT_EQ(e2m1_encode(-0.0f), 8);
  EXPECT_EQ(e2m1_encode(-0.1f), 8);  // rounds to -0, like cvt.rn
  EXPECT_TRUE(std::signbit(e2m1_decode(8)));
}

TEST(E4M3, DecodesAll256CodesLikeTheIndependentFormula) {
  for (int code = 0; code < 256; ++code) {
    const double expected = reference_e4m3_value(static_cast<uint8_t>(code));
    const float actual = e4m3_decode(static_cast<uint8_t>(code));
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(actual)) << "code " << code;
      EXPECT_TRUE((code & 0x7F) == 0x7F);
      continue;
    }
    EXPECT_EQ(static_cast<double>(actual), expected) << "code " << code;
  }
  EXPECT_EQ(e4m3_decode(0x7E), 448.0f);
  EXPECT_EQ(e4m3_decode(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(e4m3_decode(0x08), std::ldexp(1.0f, -6));
}

TEST(E4M3, EveryFiniteCodeRoundTrips) {
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7F) == 0x7F) continue;
    EXPECT_EQ(e4m3_encode(e4m3_decode(static_cast<uint8_t>(code))), code) << "code " << code;
  }
}

TEST(E4M3, AllBf16PatternsMatchTheNearestValueOracle) {
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const float x = bf16_to_float(static_cast<uint16_t>(bits));
    ASSERT_EQ(e4m3_encode(x), reference_e4m3_encode(x))
        << "bf16 0x" << std::hex << bits << " = " << x;
  }
}

TEST(E4M3, TiesGoToEvenAndLargeValuesSaturate) {
  for (int code = 0; code < 0x7E; ++code) {
    // The midpoint between neighbouring codes goes to the even one; just above goes up.
    const double low = reference_e4m3_value(static_cast<uint8_t>(code));
    const double high = reference_e4m3_value(static_cast<uint8_t>(code + 1));
    const auto mid = static_cast<float>((low + high) / 2);  // exact in fp32
    EXPECT_EQ(e4m3_encode(mid), (code % 2 == 0) ? code : code + 1) << "between codes " << code;
    EXPECT_EQ(e4m3_encode(std::nextafter(mid, 1e9f)), code + 1) << "above midpoint " << code;
    EXPECT_EQ(e4m3_encode(std::nextafter(mid, 0.0f)), code) << "below midpoint " << code;
  }
  EXPECT_EQ(e4m3_encode(464.0f), kE4M3MaxCode);
  EXPECT_EQ(e4m3_encode(1e9f), kE4M3MaxCode);
  EXPECT_EQ(e4m3_encode(std::numeric_limits<float>::infinity()), kE4M3MaxCode);
  EXPECT_EQ(e4m3_encode(-std::numeric_limits<float>::infinity()), 0x80 | kE4M3MaxCode);
  EXPECT_EQ(e4m3_encode(std::ldexp(1.0f, -10)), 0);  // half the smallest subnormal: tie to 0
  EXPECT_EQ(e4m3_encode(std::nextafter(std::ldexp(1.0f, -10), 1.0f)), 1);
  EXPECT_EQ(e4m3_encode(std::numeric_limits<float>::quiet_NaN()) & 0x7F, kE4M3NanCode);
}

// Every fp32 value in [2^-12, 512) whose low 14 mantissa bits are zero: 2^9 per binade, far more
// than the 2^3 codes, so ties and near-ties of every binade are covered.
TEST(E4M3, DenseFp32SweepMatchesTheOracle) {
  for (uint32_t bits = float_to_bits(std::ldexp(1.0f, -12)); bits < float_to_bits(512.0f);
       bits += 1u << 14) {
    const float x = bits_to_float(bits);
    ASSERT_EQ(e4m3_encode(x), reference_e4m3_encode(x)) << x;
  }
}

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(float_to_bf16(bits_to_float(0x3F808000u)), 0x3F80);  // tie, even stays
  EXPECT_EQ(float_to_bf16(bits_to_float(0x3F818000u)), 0x3F82);  // tie, odd rounds up
  EXPECT_EQ(float_to_bf16(bits_to_float(0x3F808001u)), 0x3F81);
  EXPECT_EQ(float_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(float_to_bf16(bits_to_float(0x7F7FFFFFu)), 0x7F80);  // rounds past the largest bf16
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const float x = bf16_to_float(static_cast<uint16_t>(bits));
    if (!std::isnan(x)) {
      ASSERT_EQ(float_to_bf16(x), bits);
    }
  }
}

TEST(Nvfp4Element, ProductsAreExactInBf16) {
  // docs/numerics.md §1's key fact for Hopper: e2m1 * e4m3 has at most 5 significant bits.
  for (int code = 0; code < 16; ++code) {
    for (int scale = 0; scale < 256; ++scale) {
      if ((scale & 0x7F) == 0x7F) continue;
      const float v = nvfp4_element_value(static_cast<uint8_t>(code), static_cast<uint8_t>(scale));
      EXPECT_EQ(static_cast<double>(v), reference_e2m1_value(static_cast<uint8_t>(code)) *
                                            reference_e4m3_value(static_cast<uint8_t>(scale)));
      EXPECT_EQ(bf16_to_float(float_to_bf16(v)), v) << code << " x " << scale;
    }
  }
}

// ---- MXFP4
// ---------------------------------------------------------------------------------------

TEST(E8M0, DecodesEveryCodeAsAPowerOfTwo) {
  for (int code = 0; code < 255; ++code) {
    EXPECT_EQ(static_cast<double>(e8m0_decode(static_cast<uint8_t>(code))),
              std::ldexp(1.0, code - 127))
        << code;
  }
  EXPECT_TRUE(std::isnan(e8m0_decode(kE8M0NanCode)));
}

// OCP MX's shared scale, 2^(floor(log2 amax) - 2), for every positive bf16 amax and both sides of
// every fp32 binade, against frexp; clamped to E8M0's codes 0..254.
TEST(Mxfp4, BlockScaleIsFloorLog2MinusTwo) {
  const auto oracle = [](double amax) {
    if (amax == 0.0) return 0;
    int exponent;
    std::frexp(amax, &exponent);  // amax in [2^(exponent-1), 2^exponent)
    return std::clamp(exponent - 1 - 2 + 127, 0, 254);
  };
  for (uint32_t bits = 0; bits < 0x7F80; ++bits) {
    const float amax = bf16_to_float(static_cast<uint16_t>(bits));
    ASSERT_EQ(mxfp4_block_scale(amax), oracle(amax)) << amax;
  }
  for (int i = -149; i <= 127; ++i) {
    for (const float amax : {std::ldexp(1.0f, i), std::ldexp(1.9999999f, i)}) {
      if (!std::isfinite(amax) || amax <= 0.0f) continue;
      ASSERT_EQ(mxfp4_block_scale(amax), oracle(amax)) << amax;
    }
  }
  EXPECT_EQ(mxfp4_block_scale(6.0f), 127);  // 6 = 1.5 * 2^2: scale 1, code 7
  EXPECT_EQ(mxfp4_block_scale(7.5f), 127);  // saturates to 6 (OCP's rule, no rounding up)
  EXPECT_EQ(mxfp4_element_code(7.5f, 127), 7);
  EXPECT_EQ(mxfp4_block_scale(std::numeric_limits<float>::max()), 252);
}

// Every element code against the nearest-value search at every scale a bf16 can meet, and every
// (code, scale) pair back to its code.
TEST(Mxfp4, ElementCodesRoundTheScaledValueOnce) {
  for (int scale = 0; scale < 255; scale += 3) {
    for (uint32_t bits = 0; bits < 65536; bits += 7) {
      const float x = bf16_to_float(static_cast<uint16_t>(bits));
      if (!std::isfinite(x)) continue;
      ASSERT_EQ(mxfp4_element_code(x, static_cast<uint8_t>(scale)),
                reference_e2m1_encode(std::ldexp(double(x), 127 - scale)))
          << x << " at scale code " << scale;
    }
  }
  for (int code = 0; code < 16; ++code) {
    for (int scale = 0; scale < 255; ++scale) {
      const float v = mxfp4_element_value(static_cast<uint8_t>(code), static_cast<uint8_t>(scale));
      if (!std::isfinite(v)) continue;  // 2^127 * 2 and up overflow fp32
      EXPECT_EQ(static_cast<double>(v),
                reference_e2m1_value(static_cast<uint8_t>(code)) * std::ldexp(1.0, scale - 127));
      ASSERT_EQ(mxfp4_element_code(v, static_cast<uint8_t>(scale)), code)
          << "code " << code << " scale " << scale;
    }
  }
}

// W4A8's group exponent (docs/numerics.md §5) for every positive bf16 (every activation amax a
// group can have) and for fp32 values on both sides of each binade's threshold 1.75 * 2^i.
TEST(Fp8Group, ExponentIsTheSmallestThatFitsUnder448) {
  for (uint32_t bits = 0; bits < 0x7F80; ++bits) {
    const float amax = bf16_to_float(static_cast<uint16_t>(bits));
    ASSERT_EQ(fp8_group_exponent(amax), reference_fp8_group_exponent(amax)) << amax;
  }
  for (int i = -149; i <= 127; ++i) {
    const float at = std::ldexp(1.75f, i);  // 0 below the subnormal range's reach
    for (const float amax : {std::ldexp(1.0f, i), at, std::nextafter(at, 0.0f),
                             std::nextafter(at, 1e30f), std::ldexp(1.9999999f, i)}) {
      if (!std::isfinite(amax) || amax <= 0.0f) continue;
      ASSERT_EQ(fp8_group_exponent(amax), reference_fp8_group_exponent(amax)) << amax;
    }
  }
  EXPECT_EQ(fp8_group_exponent(0.0f), 0);
  EXPECT_EQ(fp8_group_exponent(448.0f), 0);
  EXPECT_EQ(fp8_group_exponent(448.00003f), 1);
  EXPECT_EQ(fp8_group_exponent(1.0f), -8);  // 1 * 2^8 = 256 fits; 512 would not
  EXPECT_EQ(fp8_group_exponent(std::numeric_limits<float>::max()), 120);
  EXPECT_EQ(fp8_group_exponent(std::numeric_limits<float>::denorm_min()), kFp8MinExponent);
}

// A group's codes: the scaled value rounded once, as the nearest-value search rounds it.
TEST(Fp8Group, CodesRoundTheScaledValueOnce) {
  for (const int e : {-126, -20, -9, -8, -1, 0, 1, 3, 30, 120}) {
    for (uint32_t bits = 0; bits < 65536; ++bits) {
      const float x = bf16_to_float(static_cast<uint16_t>(bits));
      if (!std::isfinite(x)) continue;
      const double scaled = std::ldexp(static_cast<double>(x), -e);
      ASSERT_EQ(fp8_group_code(x, e), reference_e4m3_encode(scaled))
          << x << " in a group of exponent " << e;
    }
  }
  // NVFP4 weight values times every group exponent a row can get: one rounding of an exact value.
  for (int code = 0; code < 16; ++code) {
    for (int scale = 0; scale < 0x7F; ++scale) {
      const float w = nvfp4_element_value(static_cast<uint8_t>(code), static_cast<uint8_t>(scale));
      for (int e = -16; e <= 4; ++e) {
        ASSERT_EQ(fp8_group_code(w, e), reference_e4m3_encode(std::ldexp(double(w), -e)));
      }
    }
  }
}

}  // namespace
}  // namespace nvfp4moe
