// The NVFP4 tensor quantizer: codes against brute-force oracles, error bounds, edge blocks.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "core/synthetic.hpp"
#include "nvfp4moe/error.hpp"
#include "nvfp4moe/quantize.hpp"
#include "support/moe_reference.hpp"

namespace nvfp4moe {
namespace {

std::vector<float> gaussian(size_t n, uint64_t seed, float stddev = 1.0f) {
  Random random(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = stddev * random.normal();
  return v;
}

uint8_t code_at(const NvFp4Tensor& t, int64_t index) {
  const uint8_t byte = t.values[index / 2];
  return index % 2 == 0 ? (byte & 0xF) : (byte >> 4);
}

// Checks every scale and code of `q` against the docs/numerics.md §2 recipe evaluated with the
// exhaustive-search encoders of the test reference.
void expect_codes_match_oracle(const std::vector<float>& x, const NvFp4Tensor& q) {
  const float g = q.global_scale;
  for (size_t block = 0; block < x.size() / 16; ++block) {
    float amax = 0.0f;
    for (int i = 0; i < 16; ++i) amax = std::fmax(amax, std::fabs(x[block * 16 + i]));
    const uint8_t scale = amax == 0.0f ? 0 : testing::reference_e4m3_encode(amax / (6.0f * g));
    ASSERT_EQ(q.scales[block], scale) << "block " << block;
    const auto scale_value = static_cast<float>(testing::reference_e4m3_value(scale));
    for (int i = 0; i < 16; ++i) {
      const int64_t index = static_cast<int64_t>(block * 16 + i);
      const uint8_t code =
          scale == 0 ? 0 : testing::reference_e2m1_encode(x[index] / (scale_value * g));
      ASSERT_EQ(code_at(q, index), code) << "element " << index << " = " << x[index];
    }
  }
}

TEST(Quantize, CodesMatchTheOracleOnRandomData) {
  for (const float stddev : {1e-3f, 1.0f, 300.0f}) {
    const auto x = gaussian(64 * 256, 7, stddev);
    expect_codes_match_oracle(x, quantize_nvfp4(x, 64, 256));               // dynamic
    expect_codes_match_oracle(x, quantize_nvfp4(x, 64, 256, stddev / 50));  // static
  }
}

TEST(Quantize, DynamicGlobalScaleIsAmaxOver2688) {
  auto x = gaussian(16 * 32, 3);
  x[77] = -13.5f;  // the amax
  const NvFp4Tensor q = quantize_nvfp4(x, 16, 32);
  EXPECT_EQ(q.global_scale, 13.5f / 2688.0f);
  // The block holding the amax gets the largest scale, 448, and the amax itself code -6.
  EXPECT_EQ(q.scales[77 / 16], kE4M3MaxCode);
  EXPECT_EQ(code_at(q, 77), 8 | 7);
}

// Per element: at most half a step of the e2m1 grid at that magnitude, times the block scale;
// saturated elements lose at most what the E4M3 rounding of the scale (< 1/16) can cost.
TEST(Quantize, DequantizationErrorIsBoundedPerElement) {
  const int64_t rows = 33, cols = 160;
  const auto x = gaussian(rows * cols, 11);
  const NvFp4Tensor q = quantize_nvfp4(x, rows, cols);
  std::vector<float> y(x.size());
  dequantize_nvfp4(q.view(), y);
  double err2 = 0.0, ref2 = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double unit = e4m3_decode(q.scales[i / 16]) * double(q.global_scale);
    const double scaled = std::fabs(x[i]) / unit;
    const double step = scaled < 2.0 ? 0.5 : scaled < 4.0 ? 1.0 : 2.0;
    const double bound = scaled <= 6.0 ? step / 2 * unit : (scaled - 6.0) * unit;
    EXPECT_LE(scaled, 6.0 * 16 / 15 + 1e-6) << "element " << i << " beyond the saturation bound";
    // y = code * scale * g is rounded to fp32 once: allow that half ulp.
    EXPECT_LE(std::fabs(double(x[i]) - y[i]), bound + 0x1.0p-24 * std::fabs(y[i]))
        << "element " << i;
    err2 += (x[i] - y[i]) * double(x[i] - y[i]);
    ref2 += double(x[i]) * x[i];
  }
  // NVFP4 on Gaussian data: about 9-10% relative RMS error.
  EXPECT_LT(std::sqrt(err2 / ref2), 0.12);
}

TEST(Quantize, OddRowCountsQuantizeRowByRow) {
  for (const int64_t rows : {1, 3, 7, 99}) {
    const int64_t cols = 48;
    const auto x = gaussian(rows * cols, 100 + rows);
    const float g = 0.01f;
    const NvFp4Tensor whole = quantize_nvfp4(x, rows, cols, g);
    expect_codes_match_oracle(x, whole);
    for (int64_t r = 0; r < rows; ++r) {
      const std::vector<float> row(x.begin() + r * cols, x.begin() + (r + 1) * cols);
      const NvFp4Tensor single = quantize_nvfp4(row, 1, cols, g);
      EXPECT_TRUE(std::equal(single.values.begin(), single.values.end(),
                             whole.values.begin() + r * cols / 2));
      EXPECT_TRUE(std::equal(single.scales.begin(), single.scales.end(),
                             whole.scales.begin() + r * cols / 16));
    }
  }
}

TEST(Quantize, AllZeroAndTinyBlocksGetScaleZero) {
  std::vector<float> x(64, 0.0f);
  for (int i = 16; i < 32; ++i) x[i] = -0.0f;
  x[40] = 1e-30f;  // amax / (6 g) far below E4M3's smallest subnormal
  x[63] = 1.0f;
  const NvFp4Tensor q = quantize_nvfp4(x, 1, 64, 1.0f / 2688);
  EXPECT_EQ(q.scales[0], 0);
  EXPECT_EQ(q.scales[1], 0);
  EXPECT_EQ(q.scales[2], 0);
  for (int i = 0; i < 48; ++i) EXPECT_EQ(code_at(q, i), 0) << i;
  EXPECT_NE(q.scales[3], 0);

  const std::vector<float> zeros(32, 0.0f);
  const NvFp4Tensor z = quantize_nvfp4(zeros, 2, 16);
  EXPECT_EQ(z.global_scale, 1.0f);  // amax 0 -> g = 1
  for (uint8_t s : z.scales) EXPECT_EQ(s, 0);
  for (uint8_t v : z.values) EXPECT_EQ(v, 0);
}

TEST(Quantize, SmallStaticScaleSaturates) {
  std::vector<float> x(16);
  for (int i = 0; i < 16; ++i) x[i] = (i % 2 ? -1.0f : 1.0f) * (100.0f + i);
  const NvFp4Tensor q = quantize_nvfp4(x, 1, 16, 1e-3f);  // 115 / (6e-3) >> 448
  EXPECT_EQ(q.scales[0], kE4M3MaxCode);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(code_at(q, i), (i % 2 ? 8 : 0) | 7) << i;
}

TEST(Quantize, Bf16InputGivesTheSameCodesAsItsFloatValues) {
  const auto bits = random_bf16(8 * 64, 2.0f, 5);
  std::vector<float> as_float(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) as_float[i] = bf16_to_float(bits[i]);
  const float g = 0.002f;
  std::vector<uint8_t> values(bits.size() / 2), scales(bits.size() / 16);
  quantize_nvfp4(std::span<const uint16_t>(bits), 8, 64, g, values, scales);
  const NvFp4Tensor expected = quantize_nvfp4(as_float, 8, 64, g);
  EXPECT_EQ(values, expected.values);
  EXPECT_EQ(scales, expected.scales);
}

TEST(Quantize, NonFiniteInputIsAnErrorNamingTheElement) {
  for (const float bad :
       {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
        -std::numeric_limits<float>::infinity()}) {
    std::vector<float> x(2 * 32, 1.0f);
    x[32 + 5] = bad;
    try {
      quantize_nvfp4(x, 2, 32, 1.0f);
      FAIL() << "no error for " << bad;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("x[1, 5]"), std::string::npos) << e.what();
    }
    EXPECT_THROW(quantize_nvfp4(x, 2, 32), Error);  // dynamic: the amax scan rejects it
  }
}

TEST(Quantize, BadShapesAndScalesAreErrors) {
  const std::vector<float> x(40, 1.0f);
  std::vector<uint8_t> values(20), scales(2);
  EXPECT_THROW(quantize_nvfp4(x, 2, 20, 1.0f, values, scales), Error);  // cols % 16
  const std::vector<float> y(32, 1.0f);
  std::vector<uint8_t> v16(16), s2(2), s1(1);
  EXPECT_THROW(quantize_nvfp4(y, 1, 32, 1.0f, v16, s1), Error);   // scales too small
  EXPECT_THROW(quantize_nvfp4(y, 2, 32, 1.0f, v16, s2), Error);   // shape != size
  EXPECT_THROW(quantize_nvfp4(y, 1, 32, 0.0f, v16, s2), Error);   // g = 0
  EXPECT_THROW(quantize_nvfp4(y, 1, 32, -1.0f, v16, s2), Error);  // g < 0
  EXPECT_THROW(quantize_nvfp4(y, 1, 32, std::numeric_limits<float>::infinity(), v16, s2), Error);
  EXPECT_NO_THROW(quantize_nvfp4(y, 1, 32, 1.0f, v16, s2));
}

}  // namespace
}  // namespace nvfp4moe
