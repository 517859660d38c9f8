// GPU kernels one at a time: the in-GEMM decode, the quantization kernel, and the GEMM through
// the dense linear layer.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/synthetic.hpp"
#include "cuda/quant/quant.hpp"
#include "cuda/route/route.hpp"
#include "cuda/sm90/gemm_launch.hpp"
#include "cuda/sm90/gemm_params.hpp"
#include "cuda/sm90/heuristics.hpp"
#include "cuda/sm90/prepared_layout.hpp"
#include "decode_probe.hpp"
#include "gpu_test.hpp"
#include "nvfp4moe/format.hpp"
#include "nvfp4moe/linear.hpp"
#include "nvfp4moe/quantize.hpp"
#include "nvfp4moe/runtime.hpp"
#include "support/moe_reference.hpp"

namespace nvfp4moe {
namespace {

using testing::to_device;
using testing::to_host;

// Every (E2M1 code, non-zero E4M3 scale) pair decodes to exactly e2m1 * e4m3 / 2^20 in all
// eight positions of the fragment (each position of a word holding another code), in each of a
// chunk's four k16 steps (each step with its own scale byte). (A zero scale never reaches the
// decode: preparation zeroes the codes of such blocks, which the linear tests below exercise.
// Negative and NaN scales are rejected before preparation.)
TEST(CudaDecode, AllCodeScalePairsAreExact) {
  NVFP4MOE_REQUIRE_GPU();
  std::vector<uint8_t> codes, scale_codes, scales;
  for (int code = 0; code < 16; ++code) {
    for (int scale = 1; scale <= 0x7E; ++scale) {
      codes.push_back(static_cast<uint8_t>(code));
      scales.push_back(static_cast<uint8_t>(scale));
      scale_codes.push_back(cuda::prepared_scale_code(static_cast<uint8_t>(scale)));
    }
  }
  std::vector<uint16_t> out;
  ASSERT_EQ(testing::run_decode_probe(codes, scale_codes, out), "");
  int mismatches = 0;
  for (size_t i = 0; i < codes.size(); ++i) {
    for (int j = 0; j < 32; ++j) {
      const uint8_t scale = scales[(i + j / 8) % codes.size()];
      const uint8_t code = codes[(i + testing::kProbeCodeStride * (j % 8)) % codes.size()];
      const double expected = testing::reference_e2m1_value(code) *
                              testing::reference_e4m3_value(scale) / cuda::kDecodeCompensation;
      const double actual = bf16_to_float(out[32 * i + j]);
      if (actual != expected || std::signbit(actual) != std::signbit(expected)) {
        if (++mismatches <= 10) {
          ADD_FAILURE() << "code " << int(code) << " scale 0x" << std::hex << int(scale) << std::dec
                        << " step " << j / 8 << " position " << j % 8 << ": " << actual
                        << " != " << expected;
        }
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
}

// The tile-shape heuristic is a pure function: checked without a GPU.
// The forward's workspace layout is a pure function of the config; these sizes (bytes, taken from
// the layout before the expert GEMMs moved behind their seam) pin it, so a refactor that changes
// it fails here on any machine, not only on a GPU. A deliberate change updates them.
TEST(WorkspaceLayout, SizesArePinned) {
  struct Case {
    int64_t experts, hidden, intermediate, top_k, max_tokens;
    QuantMode mode;
    ActivationScale scale;
    size_t bytes;
  };
  const Case cases[] = {
      {256, 7168, 2048, 8, 1, QuantMode::kW4A16, ActivationScale::kDynamic, 66048},
      {256, 7168, 2048, 8, 8192, QuantMode::kW4A16, ActivationScale::kDynamic, 503979776},
      {128, 4096, 1536, 8, 4096, QuantMode::kW4A4, ActivationScale::kDynamic, 402985216},
      {48, 7168, 3072, 6, 1024, QuantMode::kW4A4, ActivationScale::kStatic, 230749952},
      {8, 64, 32, 2, 5, QuantMode::kW4A16, ActivationScale::kDynamic, 3584},
  };
  for (const Case& c : cases) {
    MoeConfig config =
        MoeConfig::single_rank(c.experts, c.hidden, c.intermediate, c.top_k, c.max_tokens);
    config.mode = c.mode;
    config.activation_scale = c.scale;
    EXPECT_EQ(workspace_bytes(Device::kCuda, config), c.bytes) << c.experts << " experts";
  }
  const LinearConfig linear{7168, 1536, 64, QuantMode::kW4A4, ActivationScale::kDynamic};
  EXPECT_EQ(linear_workspace_bytes(Device::kCuda, linear), 917760u);
}

TEST(GemmHeuristic, PicksTheTileByTokensPerActiveExpert) {
  using cuda::gemm_shape_for;
  using cuda::GemmShapeId;
  constexpr int64_t kRows = 4096;  // DeepSeek-V3's gate/up matrix: 8 blocks of 16-token tiles
  static_assert(gemm_shape_for(8, 256, kRows) == GemmShapeId::kSmall);  // T = 1: 64 blocks
  EXPECT_EQ(gemm_shape_for(0, 256, kRows), GemmShapeId::kSmall);
  EXPECT_EQ(gemm_shape_for(12, 256, kRows), GemmShapeId::kSmall);        // 96 blocks
  EXPECT_EQ(gemm_shape_for(13, 256, kRows), GemmShapeId::kWgmma16);      // 104 blocks
  EXPECT_EQ(gemm_shape_for(16, 256, kRows), GemmShapeId::kWgmma16);      // T = 2
  EXPECT_EQ(gemm_shape_for(512, 256, kRows), GemmShapeId::kWgmma16);     // T = 64: 2 per expert
  EXPECT_EQ(gemm_shape_for(2048, 256, kRows), GemmShapeId::kWgmma16);    // T = 256: 8
  EXPECT_EQ(gemm_shape_for(3072, 256, kRows), GemmShapeId::kWgmma16);    // 12
  EXPECT_EQ(gemm_shape_for(3080, 256, kRows), GemmShapeId::kWgmma64);    // just past 12 per expert
  EXPECT_EQ(gemm_shape_for(4096, 256, kRows), GemmShapeId::kWgmma64);    // T = 512: 16
  EXPECT_EQ(gemm_shape_for(8192, 256, kRows), GemmShapeId::kWgmma64);    // T = 1024: 32
  EXPECT_EQ(gemm_shape_for(14336, 256, kRows), GemmShapeId::kWgmma64);   // 56
  EXPECT_EQ(gemm_shape_for(14344, 256, kRows), GemmShapeId::kWgmma128);  // just past 56
  EXPECT_EQ(gemm_shape_for(16384, 256, kRows), GemmShapeId::kWgmma128);  // T = 2048: 64
  EXPECT_EQ(gemm_shape_for(32768, 256, kRows), GemmShapeId::kWgmma128);  // T = 4096: 128
  EXPECT_EQ(gemm_shape_for(40, 1, kRows), GemmShapeId::kWgmma64);        // one expert takes all
  // Too few blocks for the 16-token tiles: a small matrix, or few experts.
  EXPECT_EQ(gemm_shape_for(24, 8, 1024), GemmShapeId::kSmall);     // 3 per expert, 16 blocks
  EXPECT_EQ(gemm_shape_for(64, 8, 1024), GemmShapeId::kWgmma32);   // 8 per expert, 16 blocks
  EXPECT_EQ(gemm_shape_for(104, 8, 1024), GemmShapeId::kWgmma64);  // 13 per expert
  EXPECT_EQ(gemm_shape_for(64, 8, 8192), GemmShapeId::kWgmma16);   // 8 per expert, 128 blocks
  EXPECT_EQ(cuda::gemm_shape(GemmShapeId::kSmall).tile_tokens, 8);
  EXPECT_EQ(cuda::gemm_shape(GemmShapeId::kWgmma16).tile_tokens, 16);
  EXPECT_EQ(cuda::gemm_shape(GemmShapeId::kWgmma32).tile_tokens, 32);
  EXPECT_EQ(cuda::gemm_shape(GemmShapeId::kWgmma64).tile_tokens, 64);
  EXPECT_EQ(cuda::gemm_shape(GemmShapeId::kWgmma128).tile_tokens, 128);
}

// The down GEMM follows the gate/up GEMM's shape, but takes the 16-token tiles where only its own
// matrix makes blocks enough for them.
TEST(GemmHeuristic, DownGemmTakesTheSixteenTokenTilesWhereItsMatrixFillsThem) {
  using cuda::down_gemm_shape_for;
  using cuda::GemmShapeId;
  // DeepSeek-V3 at T = 1: gate/up 4096 rows (64 blocks), down 7168 rows (112 blocks).
  static_assert(cuda::gemm_shape_for(8, 256, 4096) == GemmShapeId::kSmall);
  EXPECT_EQ(down_gemm_shape_for(GemmShapeId::kSmall, 8, 256, 7168), GemmShapeId::kWgmma16);
  EXPECT_EQ(down_gemm_shape_for(GemmShapeId::kSmall, 8, 256, 4096), GemmShapeId::kSmall);
  EXPECT_EQ(down_gemm_shape_for(GemmShapeId::kSmall, 24, 8, 1024), GemmShapeId::kSmall);
  // Otherwise the router's tiles are cut for the first GEMM's shape, and the second keeps it.
  EXPECT_EQ(down_gemm_shape_for(GemmShapeId::kWgmma16, 512, 256, 7168), GemmShapeId::kWgmma16);
  EXPECT_EQ(down_gemm_shape_for(GemmShapeId::kWgmma32, 64, 8, 8192), GemmShapeId::kWgmma32);
  EXPECT_EQ(down_gemm_shape_for(GemmShapeId::kWgmma64, 8192, 256, 7168), GemmShapeId::kWgmma64);
}

// The launcher refuses what its kernels cannot address, before touching the device.
TEST(GemmLaunch, RefusesSizesItsKernelsCannotAddress) {
  cuda::GemmParams p;
  p.row_groups = 1;
  p.k_chunks = 1;
  p.b_row_stride = 8192;
  p.b_rows = (int64_t(1) << 34) / 8192;  // exactly 2^34 bf16 elements
  EXPECT_EQ(cuda::launch_grouped_gemm(cuda::GemmShapeId::kWgmma128, cuda::Epilogue::kLinear, p, 1,
                                      nullptr),
            cudaErrorInvalidValue);
  p.b_row_stride = 7172;  // rows not 16-byte aligned
  p.b_rows = 1;
  EXPECT_EQ(
      cuda::launch_grouped_gemm(cuda::GemmShapeId::kSmall, cuda::Epilogue::kLinear, p, 1, nullptr),
      cudaErrorInvalidValue);
  p.b_row_stride = 8192;
  p.k_chunks = cuda::kMaxKChunks + 1;  // K past 64 Mi
  EXPECT_EQ(cuda::launch_grouped_gemm(cuda::GemmShapeId::kWgmma16, cuda::Epilogue::kLinear, p, 1,
                                      nullptr),
            cudaErrorInvalidValue);
}

// The router zeroes the combine's sums only in whole 16-byte pieces, and a size needs a buffer.
TEST(RouteLaunch, RefusesZeroingItCannotDo) {
  alignas(16) static float sums[8];
  cuda::RouteParams p;
  p.zero = sums;
  p.zero_bytes = 24;  // not a multiple of 16
  EXPECT_EQ(cuda::launch_route(p, nullptr), cudaErrorInvalidValue);
  p.zero = nullptr;
  p.zero_bytes = 32;  // bytes without a buffer
  EXPECT_EQ(cuda::launch_route(p, nullptr), cudaErrorInvalidValue);
  EXPECT_TRUE(cuda::route_single_launch(8, 256));      // T = 1, DeepSeek-V3
  EXPECT_FALSE(cuda::route_single_launch(8200, 256));  // past 8192 slots: three launches
  EXPECT_FALSE(cuda::route_single_launch(8, 5000));    // past 4096 local experts
}

// ---- Quantization kernel ------------------------------------------------------------------

struct QuantizeCase {
  std::string name;
  int64_t rows, cols;
  std::vector<float> x;
  std::optional<float> static_scale;  // else dynamic
};

std::vector<QuantizeCase> quantize_cases() {
  std::vector<QuantizeCase> cases;
  Random random(5);
  for (const float stddev : {1e-3f, 1.0f, 300.0f}) {
    for (const auto& [rows, cols] : {std::pair{1, 16}, std::pair{7, 48}, std::pair{33, 7168}}) {
      std::vector<float> x(size_t(rows * cols));
      for (auto& v : x) v = stddev * random.normal();
      cases.push_back({"gaussian", rows, cols, x, std::nullopt});
      cases.push_back({"gaussian_static", rows, cols, x, stddev / 100});
    }
  }
  // Elements exactly on E2M1 ties (g = 1, block scale 0.5 from amax 3).
  {
    const float ties[] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 6.0f};
    std::vector<float> x;
    for (int i = 0; i < 16; ++i) x.push_back((i % 2 ? -1.0f : 1.0f) * ties[i % 8] * 0.5f);
    cases.push_back({"e2m1_ties", 1, 16, x, 1.0f});
  }
  // Block amax / 6 exactly on E4M3 midpoints.
  {
    std::vector<float> x;
    for (int code = 0; code < 0x7E; ++code) {
      const float mid = float((testing::reference_e4m3_value(uint8_t(code)) +
                               testing::reference_e4m3_value(uint8_t(code + 1))) /
                              2);
      for (int i = 0; i < 16; ++i) x.push_back(i == 3 ? 6.0f * mid : mid * (i % 5) * 0.7f);
    }
    cases.push_back({"e4m3_ties", 0x7E, 16, x, 1.0f});
  }
  // Saturation: a static scale far too small; zero blocks; tiny and subnormal values.
  {
    std::vector<float> x(64);
    for (int i = 0; i < 16; ++i) x[i] = 100.0f + i;
    for (int i = 32; i < 48; ++i) x[i] = 1e-40f * (i - 40);  // fp32 subnormals
    x[60] = 1e-30f;
    cases.push_back({"saturate_zero_tiny", 1, 64, x, 1e-3f});
    cases.push_back(
        {"tiny_dynamic", 1, 32, std::vector<float>(x.begin() + 32, x.end()), std::nullopt});
  }
  return cases;
}

TEST(CudaQuantize, BitIdenticalToTheCpuQuantizer) {
  NVFP4MOE_REQUIRE_GPU();
  for (const QuantizeCase& c : quantize_cases()) {
    for (const bool bf16_input : {false, true}) {
      SCOPED_TRACE(c.name + (bf16_input ? " bf16" : " fp32"));
      std::vector<float> x = c.x;
      std::vector<uint16_t> x_bf16(x.size());
      if (bf16_input) {
        for (size_t i = 0; i < x.size(); ++i) {
          x_bf16[i] = float_to_bf16(x[i]);
          x[i] = bf16_to_float(x_bf16[i]);
        }
      }
      const NvFp4Tensor expected = quantize_nvfp4(x, c.rows, c.cols, c.static_scale);

      DeviceBuffer input = bf16_input ? to_device(x_bf16) : to_device(x);
      DeviceBuffer values(Device::kCuda, expected.values.size());
      DeviceBuffer scales(Device::kCuda, expected.scales.size());
      DeviceBuffer words(Device::kCuda, 8);
      words.fill(0);
      cuda::QuantizeSource source;
      source.input = input.data();
      source.input_is_f32 = !bf16_input;
      source.input_row_stride = c.cols;
      source.max_rows = c.rows;
      source.cols = static_cast<int32_t>(c.cols);
      source.error_flags = words.as<uint32_t>() + 1;
      if (c.static_scale) {
        source.scale_source = cuda::ActivationScaleSource::kOne;
        source.static_scale = *c.static_scale;
      } else {
        ASSERT_EQ(cuda::launch_amax(source, words.as<uint32_t>(), nullptr), cudaSuccess);
        source.scale_source = cuda::ActivationScaleSource::kFromAmax;
        source.amax_bits = words.as<uint32_t>();
      }
      ASSERT_EQ(
          cuda::launch_quantize_nvfp4(source, values.as<uint8_t>(), scales.as<uint8_t>(), nullptr),
          cudaSuccess);
      synchronize(Device::kCuda);
      EXPECT_EQ(to_host<uint8_t>(values, expected.values.size()), expected.values);
      EXPECT_EQ(to_host<uint8_t>(scales, expected.scales.size()), expected.scales);
      const auto word_values = to_host<uint32_t>(words, 2);
      EXPECT_EQ(word_values[1], 0u) << "error flags raised on finite input";
      if (!c.static_scale) {
        EXPECT_EQ(nvfp4_dynamic_global_scale(bits_to_float(word_values[0])), expected.global_scale);
      }
    }
  }
}

TEST(CudaQuantize, NonFiniteInputRaisesTheErrorFlag) {
  NVFP4MOE_REQUIRE_GPU();
  std::vector<float> x(32, 1.0f);
  x[20] = std::numeric_limits<float>::quiet_NaN();
  DeviceBuffer input = to_device(x);
  DeviceBuffer out(Device::kCuda, 64);
  DeviceBuffer flags(Device::kCuda, 4);
  flags.fill(0);
  cuda::QuantizeSource source;
  source.input = input.data();
  source.input_is_f32 = true;
  source.input_row_stride = 32;
  source.max_rows = 1;
  source.cols = 32;
  source.scale_source = cuda::ActivationScaleSource::kOne;
  source.error_flags = flags.as<uint32_t>();
  ASSERT_EQ(cuda::launch_quantize_dequantize(source, out.as<uint16_t>(), 32, nullptr), cudaSuccess);
  synchronize(Device::kCuda);
  EXPECT_NE(to_host<uint32_t>(flags, 1)[0], 0u);
}

// ---- The GEMM, through the dense linear layer ----------------------------------------------

// A weight quantized from Gaussian values, with some blocks given a zero scale but non-zero
// codes (their values must read as zero).
NvFp4Tensor random_weight(int64_t rows, int64_t cols, uint64_t seed) {
  Random random(seed);
  std::vector<float> w(size_t(rows * cols));
  for (auto& v : w) v = random.normal() / std::sqrt(float(cols));
  NvFp4Tensor q = quantize_nvfp4(w, rows, cols);
  for (size_t b = 7; b < q.scales.size(); b += 13) {
    q.scales[b] = 0;
    for (int i = 0; i < 8; ++i) q.values[b * 8 + i] = static_cast<uint8_t>(0x5A + i);
  }
  return q;
}

void expect_linear_matches(const NvFp4Tensor& weight, int64_t tokens, QuantMode mode,
                           ActivationScale scale, const std::vector<uint16_t>& x) {
  LinearConfig config{weight.cols, weight.rows, tokens, mode, scale};
  const float input_scale = 4.0f / 2688;
  auto layer = make_linear(Device::kCuda, config, weight.view(), input_scale);
  DeviceBuffer d_x = to_device(x);
  DeviceBuffer d_out(Device::kCuda, size_t(tokens * weight.rows) * 2);
  d_out.fill(0xFF);
  DeviceBuffer workspace(Device::kCuda, layer->workspace_bytes());
  layer->forward(tokens, d_x.as<uint16_t>(), d_out.as<uint16_t>(), workspace.data(), nullptr);
  layer->check_errors(nullptr);
  const auto out = to_host<uint16_t>(d_out, size_t(tokens * weight.rows));

  float g = input_scale;
  if (mode == QuantMode::kW4A4 && scale == ActivationScale::kDynamic) {
    float amax = 0.0f;
    for (uint16_t v : x) amax = std::fmax(amax, std::fabs(bf16_to_float(v)));
    g = nvfp4_dynamic_global_scale(amax);
  }
  const auto reference =
      testing::reference_linear(weight, tokens, x.data(), mode, g, std::ldexp(1.0, -22));
  EXPECT_EQ(testing::check_against_reference(out, reference, weight.rows), "");

  // The CPU layer lands in the same intervals.
  auto cpu = make_linear(Device::kCpu, config, weight.view(), input_scale);
  std::vector<uint16_t> cpu_out(out.size(), 0xFFFF);
  cpu->forward(tokens, x.data(), cpu_out.data(), nullptr, nullptr);
  EXPECT_EQ(testing::check_against_reference(cpu_out, reference, weight.rows), "");
}

struct LinearShape {
  int64_t out_features, in_features, tokens;
};

TEST(CudaLinear, MatchesTheReferenceOnOddAndRealShapes) {
  NVFP4MOE_REQUIRE_GPU();
  // Token counts cover each tile shape of the heuristic, and for the wgmma tiles (128 tokens in
  // units of 64) one and two units and partial last tiles.
  std::vector<LinearShape> shapes = {
      {16, 16, 1}, {48, 80, 7}, {256, 512, 33}, {112, 192, 150}, {64, 1024, 1000}};
  if (!testing::quick_mode()) {
    shapes.push_back({4096, 7168, 9});
    shapes.push_back({7168, 2048, 100});
  }
  uint64_t seed = 1;
  for (const LinearShape& s : shapes) {
    const NvFp4Tensor weight = random_weight(s.out_features, s.in_features, seed++);
    const auto x = random_bf16(size_t(s.tokens * s.in_features), 1.0f, seed++);
    for (const auto& [mode, scale] : {std::pair{QuantMode::kW4A16, ActivationScale::kDynamic},
                                      std::pair{QuantMode::kW4A4, ActivationScale::kDynamic},
                                      std::pair{QuantMode::kW4A4, ActivationScale::kStatic}}) {
      SCOPED_TRACE(std::to_string(s.out_features) + "x" + std::to_string(s.in_features) + " T=" +
                   std::to_string(s.tokens) + " " + to_string(mode) + " " + to_string(scale));
      expect_linear_matches(weight, s.tokens, mode, scale, x);
    }
  }
}

// Inputs whose products and sums are all exact in fp32: the GPU must return exactly the
// correctly rounded value, whatever its summation order.
TEST(CudaLinear, ExactInputsGiveExactOutputs) {
  NVFP4MOE_REQUIRE_GPU();
  const int64_t rows = 96, cols = 320, tokens = 21;
  Random random(9);
  NvFp4Tensor weight;
  weight.rows = rows;
  weight.cols = cols;
  weight.global_scale = 0.0078125f;  // 2^-7
  weight.values.resize(size_t(rows * cols / 2));
  weight.scales.resize(size_t(rows * cols / 16));
  for (auto& v : weight.values) v = static_cast<uint8_t>(random.next());
  for (auto& s : weight.scales) s = static_cast<uint8_t>(0x30 + random.next() % 24);  // 0.5..~4
  std::vector<uint16_t> x(size_t(tokens * cols));
  for (auto& v : x) v = float_to_bf16(float(int(random.next() % 17) - 8) / 4.0f);
  LinearConfig config{cols, rows, tokens, QuantMode::kW4A16, ActivationScale::kDynamic};
  auto layer = make_linear(Device::kCuda, config, weight.view());
  DeviceBuffer d_x = to_device(x);
  DeviceBuffer d_out(Device::kCuda, size_t(tokens * rows) * 2);
  layer->forward(tokens, d_x.as<uint16_t>(), d_out.as<uint16_t>(), nullptr, nullptr);
  const auto out = to_host<uint16_t>(d_out, size_t(tokens * rows));
  const auto reference =
      testing::reference_linear(weight, tokens, x.data(), QuantMode::kW4A16, 1.0f, 0.0);
  for (size_t i = 0; i < out.size(); ++i) {
    ASSERT_EQ(bf16_to_float(out[i]), testing::reference_bf16_round(reference.value[i])) << i;
  }
}

}  // namespace
}  // namespace nvfp4moe
