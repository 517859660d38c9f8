// The CPU reference backend against the float64 interval reference (every mode, activation,
// scale kind and routing shape), against the unquantized layer, and on every error path.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "core/metrics.hpp"
#include "core/synthetic.hpp"
#include "cpu/expert_rows.hpp"
#include "nvfp4moe/error.hpp"
#include "nvfp4moe/format.hpp"
#include "nvfp4moe/linear.hpp"
#include "nvfp4moe/moe.hpp"
#include "nvfp4moe/quantize.hpp"
#include "support/moe_reference.hpp"

namespace nvfp4moe {
namespace {

constexpr uint16_t kPoison = 0xFFFF;  // a bf16 NaN: any element left unwritten fails

struct Batch {
  int64_t tokens = 0;
  std::vector<uint16_t> hidden;
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

Batch random_batch(const MoeConfig& c, int64_t tokens, uint64_t seed) {
  Batch b;
  b.tokens = tokens;
  b.hidden = random_bf16(static_cast<size_t>(tokens * c.hidden), 1.0f, seed);
  const Routing r = random_routing(tokens, c.num_experts, c.top_k, seed + 1);
  b.ids = r.ids;
  b.weights = r.weights;
  return b;
}

// Random NVFP4 weights plus static input scales near what calibration would give.
MoeWeights make_weights(int64_t experts, int64_t hidden, int64_t inter, uint64_t seed) {
  MoeWeights w = random_layer(experts, hidden, inter, seed).nvfp4;
  Random random(seed + 99);
  w.gate_up_input_scale.resize(experts);
  w.down_input_scale.resize(experts);
  for (int64_t e = 0; e < experts; ++e) {
    w.gate_up_input_scale[e] = static_cast<float>((3.0 + 3.0 * random.uniform()) / 2688.0);
    w.down_input_scale[e] = static_cast<float>((0.5 + 2.0 * random.uniform()) / 2688.0);
  }
  return w;
}

// Random MXFP4 weights (OCP's quantizer on Gaussian values), with biases when asked.
MoeWeights make_mxfp4_weights(int64_t experts, int64_t hidden, int64_t inter, uint64_t seed,
                              bool biases) {
  MoeWeights w = MoeWeights::allocate(experts, hidden, inter, false, WeightFormat::kMxfp4, biases);
  Random random(seed);
  const auto fill = [&](std::vector<uint8_t>& values, std::vector<uint8_t>& scales, int64_t cols) {
    const float stddev = 1.0f / std::sqrt(static_cast<float>(cols));
    for (size_t b = 0; b < scales.size(); ++b) {
      float x[kMxBlockSize], amax = 0.0f;
      for (float& v : x) {
        v = stddev * random.normal();
        amax = std::fmax(amax, std::fabs(v));
      }
      scales[b] = mxfp4_block_scale(amax);
      for (int i = 0; i < kMxBlockSize; i += 2) {
        values[b * kMxBlockSize / 2 + i / 2] = static_cast<uint8_t>(
            mxfp4_element_code(x[i], scales[b]) | mxfp4_element_code(x[i + 1], scales[b]) << 4);
      }
    }
  };
  fill(w.gate_up_values, w.gate_up_scales, hidden);
  fill(w.down_values, w.down_scales, inter);
  for (float& b : w.gate_up_bias) b = 0.1f * random.normal();
  for (float& b : w.down_bias) b = 0.1f * random.normal();
  return w;
}

std::vector<uint16_t> run_cpu(const MoeConfig& config, const MoeWeights& w, const Batch& b) {
  auto runner = make_cpu_runner(config, w.view());
  std::vector<std::byte> workspace(runner->workspace_bytes());
  std::vector<uint16_t> out(static_cast<size_t>(b.tokens * config.hidden), kPoison);
  MoeForwardArgs args{b.tokens, b.hidden.data(), b.ids.data(), b.weights.data(), out.data()};
  runner->forward(args, workspace.data(), nullptr);
  return out;
}

void expect_matches_reference(const MoeConfig& config, const MoeWeights& w, const Batch& b) {
  const auto out = run_cpu(config, w, b);
  const testing::ReferenceInputs in{b.tokens, b.hidden.data(), b.ids.data(), b.weights.data()};
  const auto reference = testing::reference_moe(config, w, in, std::ldexp(1.0, -24));
  EXPECT_EQ(testing::check_against_reference(out, reference, config.hidden), "");
  // The intervals are tight: most outputs are the exactly rounded value itself.
  int64_t exact = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    exact += bf16_to_float(out[i]) == bf16_to_float(float_to_bf16(float(reference.value[i])));
  }
  if (!out.empty()) {
    EXPECT_GT(double(exact) / double(out.size()), 0.5);
  }
}

MoeConfig small_config(int64_t experts, int64_t top_k, int64_t max_tokens) {
  return MoeConfig::single_rank(experts, 80, 48, top_k, max_tokens);
}

struct ModeCase {
  QuantMode mode;
  ActivationScale scale;
  Activation activation;
};

class CpuVersusReference : public ::testing::TestWithParam<ModeCase> {};

TEST_P(CpuVersusReference, RandomBatches) {
  const ModeCase p = GetParam();
  for (const int64_t tokens : {1, 7, 33}) {
    SCOPED_TRACE("tokens " + std::to_string(tokens));
    MoeConfig config = small_config(8, 2, 40);
    config.mode = p.mode;
    config.activation_scale = p.scale;
    config.activation = p.activation;
    config.swiglu_limit = 1.0f;  // small enough that the clamps bite on this data
    const MoeWeights w = make_weights(8, 80, 48, 17 + tokens);
    expect_matches_reference(config, w, random_batch(config, tokens, 5 + tokens));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Modes, CpuVersusReference,
    ::testing::Values(
        ModeCase{QuantMode::kW4A16, ActivationScale::kDynamic, Activation::kSilu},
        ModeCase{QuantMode::kW4A16, ActivationScale::kDynamic, Activation::kSwigluClamped},
        ModeCase{QuantMode::kW4A4, ActivationScale::kDynamic, Activation::kSilu},
        ModeCase{QuantMode::kW4A4, ActivationScale::kDynamic, Activation::kSwigluClamped},
        ModeCase{QuantMode::kW4A4, ActivationScale::kStatic, Activation::kSilu},
        ModeCase{QuantMode::kW4A4, ActivationScale::kStatic, Activation::kSwigluClamped},
        ModeCase{QuantMode::kW4A8, ActivationScale::kDynamic, Activation::kSilu},
        ModeCase{QuantMode::kW4A8, ActivationScale::kDynamic, Activation::kSwigluClamped}),
    [](const ::testing::TestParamInfo<ModeCase>& param_info) {
      const ModeCase& p = param_info.param;
      return std::string(to_string(p.mode)) + "_" + to_string(p.scale) + "_" +
             to_string(p.activation);
    });

// W4A8 where groups of 128 are whole, several per row, and partial: H = 400 (3 whole groups and
// one of 16), I = 256 (2 whole).
TEST(CpuMoe, W4A8WithWholeAndPartialGroups) {
  MoeConfig config = MoeConfig::single_rank(4, 400, 256, 2, 16);
  config.mode = QuantMode::kW4A8;
  const MoeWeights w = make_weights(4, 400, 256, 31);
  expect_matches_reference(config, w, random_batch(config, 16, 32));
}

// W4A8's groups scale by powers of two of their own: a group of tiny activations next to one of
// huge ones keeps its precision (one NVFP4 global scale for the row would flush it to zero).
TEST(CpuMoe, W4A8GroupsScaleIndependently) {
  MoeConfig config = MoeConfig::single_rank(2, 256, 128, 1, 4);
  config.mode = QuantMode::kW4A8;
  const MoeWeights w = make_weights(2, 256, 128, 41);
  Batch b = random_batch(config, 4, 42);
  for (int64_t t = 0; t < 4; ++t) {
    for (int64_t c = 0; c < 128; ++c) {
      uint16_t& v = b.hidden[t * 256 + c];
      v = float_to_bf16(bf16_to_float(v) * 1e-6f);
    }
    for (int64_t c = 128; c < 256; ++c) {
      uint16_t& v = b.hidden[t * 256 + c];
      v = float_to_bf16(bf16_to_float(v) * 1e6f);
    }
  }
  expect_matches_reference(config, w, b);
}

// MXFP4 experts (blocks of 32, E8M0 scales), with and without gpt-oss's biases and activation,
// in every mode, against the float64 reference (which decodes them with its own formula).
TEST(CpuMoe, Mxfp4ExpertsWithBiasesAndEveryActivation) {
  for (const bool biases : {false, true}) {
    for (const Activation activation :
         {Activation::kSilu, Activation::kSwigluClamped, Activation::kSwigluOai}) {
      for (const QuantMode mode : {QuantMode::kW4A16, QuantMode::kW4A4, QuantMode::kW4A8}) {
        SCOPED_TRACE(std::string(to_string(mode)) + " " + to_string(activation) +
                     (biases ? " with biases" : ""));
        MoeConfig config = MoeConfig::single_rank(6, 192, 96, 2, 11);
        config.mode = mode;
        config.activation = activation;
        config.swiglu_limit = 1.5f;  // small enough that the clamps bite
        const MoeWeights w = make_mxfp4_weights(6, 192, 96, 61, biases);
        expect_matches_reference(config, w, random_batch(config, 11, 62));
      }
    }
  }
}

TEST(CpuMoe, BiasesShiftTheOutput) {
  MoeConfig config = MoeConfig::single_rank(4, 128, 64, 2, 5);
  MoeWeights w = make_mxfp4_weights(4, 128, 64, 71, true);
  const Batch b = random_batch(config, 5, 72);
  const auto with = run_cpu(config, w, b);
  std::fill(w.gate_up_bias.begin(), w.gate_up_bias.end(), 0.0f);
  std::fill(w.down_bias.begin(), w.down_bias.end(), 0.0f);
  EXPECT_NE(run_cpu(config, w, b), with);
}

TEST(CpuMoe, Mxfp4NanScalesAndNonFiniteBiasesAreRefused) {
  const MoeConfig config = MoeConfig::single_rank(2, 64, 32, 1, 4);
  MoeWeights w = make_mxfp4_weights(2, 64, 32, 81, true);
  w.down_scales[5] = kE8M0NanCode;
  EXPECT_THAT([&] { make_cpu_runner(config, w.view()); },
              ::testing::ThrowsMessage<Error>(::testing::HasSubstr(
                  "down_scales[expert 0, row 5, block 0] = 0xFF is NaN, expected an E8M0 scale")));
  w.down_scales[5] = 120;
  w.gate_up_bias[3] = std::numeric_limits<float>::infinity();
  EXPECT_THAT([&] { make_cpu_runner(config, w.view()); },
              ::testing::ThrowsMessage<Error>(
                  ::testing::HasSubstr("gate_up_bias[3] = inf, expected a finite value")));
  EXPECT_THAT([&] { (void)MoeWeights::allocate(2, 48, 32, false, WeightFormat::kMxfp4); },
              ::testing::ThrowsMessage<Error>(::testing::HasSubstr("multiples of 32 (MXFP4)")));
}

TEST(CpuMoe, OneExpertTopOne) {
  const MoeConfig config = small_config(1, 1, 9);
  const MoeWeights w = make_weights(1, 80, 48, 3);
  expect_matches_reference(config, w, random_batch(config, 9, 4));
}

TEST(CpuMoe, AllTokensOnOneExpertAndEmptyExperts) {
  const MoeConfig config = small_config(16, 3, 20);
  const MoeWeights w = make_weights(16, 80, 48, 8);
  Batch b = random_batch(config, 20, 9);
  for (size_t s = 0; s < b.ids.size(); ++s) b.ids[s] = s % 3 == 0 ? 5 : (s % 3 == 1 ? 11 : 5);
  expect_matches_reference(config, w, b);  // expert 5 takes every token, twice
}

TEST(CpuMoe, MinusOneSlotsContributeNothing) {
  const MoeConfig config = small_config(8, 4, 12);
  const MoeWeights w = make_weights(8, 80, 48, 10);
  Batch b = random_batch(config, 12, 11);
  for (size_t s = 0; s < b.ids.size(); s += 3) b.ids[s] = -1;
  for (int j = 0; j < 4; ++j) b.ids[5 * 4 + j] = -1;  // token 5 has no expert at all
  expect_matches_reference(config, w, b);
  const auto out = run_cpu(config, w, b);
  for (int64_t c = 0; c < 80; ++c) EXPECT_EQ(out[5 * 80 + c], 0) << c;  // +0, and written
}

TEST(CpuMoe, ExpertParallelRankComputesItsPartialSum) {
  MoeConfig config = small_config(10, 4, 16);
  config.first_local_expert = 3;
  config.num_local_experts = 4;  // experts 3..6
  const MoeWeights local = make_weights(4, 80, 48, 12);
  const Batch b = random_batch(config, 16, 13);
  expect_matches_reference(config, local, b);

  // The sum over ranks equals the single-rank layer (up to the bf16 rounding of partials).
  MoeWeights all = MoeWeights::allocate(10, 80, 48, true);
  const auto rank_of = [](int64_t e) { return e < 3 ? 0 : e < 7 ? 1 : 2; };
  std::vector<MoeWeights> ranks = {make_weights(3, 80, 48, 20), local, make_weights(3, 80, 48, 21)};
  const int64_t firsts[3] = {0, 3, 7};
  const size_t gate_up = 2 * 48 * 80, down = 80 * 48;
  for (int64_t e = 0; e < 10; ++e) {
    const MoeWeights& r = ranks[rank_of(e)];
    const int64_t i = e - firsts[rank_of(e)];
    std::copy_n(r.gate_up_values.begin() + i * gate_up / 2, gate_up / 2,
                all.gate_up_values.begin() + e * gate_up / 2);
    std::copy_n(r.gate_up_scales.begin() + i * gate_up / 16, gate_up / 16,
                all.gate_up_scales.begin() + e * gate_up / 16);
    std::copy_n(r.down_values.begin() + i * down / 2, down / 2,
                all.down_values.begin() + e * down / 2);
    std::copy_n(r.down_scales.begin() + i * down / 16, down / 16,
                all.down_scales.begin() + e * down / 16);
    all.gate_global_scale[e] = r.gate_global_scale[i];
    all.up_global_scale[e] = r.up_global_scale[i];
    all.down_global_scale[e] = r.down_global_scale[i];
  }
  const auto whole = run_cpu(small_config(10, 4, 16), all, b);
  std::vector<double> summed(whole.size(), 0.0);
  for (int rank = 0; rank < 3; ++rank) {
    MoeConfig rank_config = config;
    rank_config.first_local_expert = firsts[rank];
    rank_config.num_local_experts = rank == 1 ? 4 : 3;
    const auto partial = run_cpu(rank_config, ranks[rank], b);
    for (size_t i = 0; i < partial.size(); ++i) summed[i] += bf16_to_float(partial[i]);
  }
  for (size_t i = 0; i < whole.size(); ++i) {
    EXPECT_NEAR(summed[i], bf16_to_float(whole[i]),
                0.02 * std::fabs(bf16_to_float(whole[i])) + 1e-3)
        << i;
  }
}

TEST(CpuMoe, ZeroTokensTouchNothing) {
  const MoeConfig config = small_config(4, 2, 8);
  const MoeWeights w = make_weights(4, 80, 48, 1);
  auto runner = make_cpu_runner(config, w.view());
  std::vector<uint16_t> out(8, kPoison);
  MoeForwardArgs args{0, nullptr, nullptr, nullptr, out.data()};
  runner->forward(args, nullptr, nullptr);
  for (uint16_t v : out) EXPECT_EQ(v, kPoison);
}

TEST(CpuMoe, ResultDoesNotDependOnTheThreadCount) {
  const MoeConfig config = small_config(8, 2, 30);
  const MoeWeights w = make_weights(8, 80, 48, 2);
  const Batch b = random_batch(config, 30, 3);
  setenv("NVFP4MOE_CPU_THREADS", "1", 1);
  const auto one = run_cpu(config, w, b);
  setenv("NVFP4MOE_CPU_THREADS", "3", 1);
  const auto three = run_cpu(config, w, b);
  unsetenv("NVFP4MOE_CPU_THREADS");
  EXPECT_EQ(one, three);
}

// NVFP4 against the bf16 layer it was quantized from, on Gaussian data. NVFP4's per-weight
// error on Gaussian weights is about 9.4% RMS; through three projections that compounds to a
// relative L2 near 0.17 (cosine ~0.986) for W4A16 even in exact arithmetic, so 0.98 is the
// bound an exact implementation clears; W4A4 adds the activations' quantization.
TEST(CpuMoe, CloseToTheUnquantizedLayerOnGaussianData) {
  const int64_t E = 16, H = 256, I = 128, k = 4, T = 64;
  const RandomLayer layer = random_layer(E, H, I, 42);
  MoeConfig config = MoeConfig::single_rank(E, H, I, k, T);
  const Batch b = random_batch(config, T, 43);
  auto dense = make_cpu_runner(
      config, bf16_expert_rows(layer.gate_up_bf16.data(), layer.down_bf16.data(), H, I));
  std::vector<std::byte> workspace(dense->workspace_bytes());
  std::vector<uint16_t> reference(static_cast<size_t>(T * H), kPoison);
  dense->forward({T, b.hidden.data(), b.ids.data(), b.weights.data(), reference.data()},
                 workspace.data(), nullptr);
  std::vector<uint16_t> exact;  // W4A16's output
  double w4a4_from_exact = 0.0;
  for (const auto& [mode, min_cosine] :
       {std::pair{QuantMode::kW4A16, 0.98}, std::pair{QuantMode::kW4A4, 0.96},
        std::pair{QuantMode::kW4A8, 0.975}}) {
    config.mode = mode;
    const auto out = run_cpu(config, layer.nvfp4, b);
    const Accuracy a = compare_bf16(out, reference);
    std::printf("[ accuracy ] %s vs unquantized bf16: cosine %.5f, relative L2 %.4f\n",
                to_string(mode), a.cosine, a.relative_l2);
    RecordProperty(std::string(to_string(mode)) + "_relative_l2", std::to_string(a.relative_l2));
    EXPECT_TRUE(a.all_finite);
    EXPECT_GE(a.cosine, min_cosine) << to_string(mode);
    if (mode == QuantMode::kW4A16) {
      exact = out;
      continue;
    }
    const Accuracy from_exact = compare_bf16(out, exact);
    std::printf("[ accuracy ] %s vs W4A16: cosine %.5f, relative L2 %.4f\n", to_string(mode),
                from_exact.cosine, from_exact.relative_l2);
    if (mode == QuantMode::kW4A4) w4a4_from_exact = from_exact.relative_l2;
    // The FP8 mode's point: much nearer the exact result than W4A4.
    if (mode == QuantMode::kW4A8) {
      EXPECT_LT(from_exact.relative_l2, 0.5 * w4a4_from_exact);
    }
  }
}

// The dense linear layer in every mode against the float64 reference, with K holding whole and
// partial FP8 groups.
TEST(CpuLinear, MatchesTheReferenceInEveryMode) {
  for (const int64_t in : {80, 400}) {
    const int64_t out_features = 48, tokens = 5;
    const auto w_bf16 = random_bf16(static_cast<size_t>(out_features * in), 0.05f, 7 + in);
    std::vector<float> w(w_bf16.size());
    for (size_t i = 0; i < w.size(); ++i) w[i] = bf16_to_float(w_bf16[i]);
    const NvFp4Tensor weight = quantize_nvfp4(w, out_features, in);
    const auto x = random_bf16(static_cast<size_t>(tokens * in), 1.0f, 8 + in);
    for (const QuantMode mode : {QuantMode::kW4A16, QuantMode::kW4A4, QuantMode::kW4A8}) {
      SCOPED_TRACE(std::string(to_string(mode)) + " in " + std::to_string(in));
      const float input_scale = 4.0f / 2688;
      const ActivationScale scale =
          mode == QuantMode::kW4A4 ? ActivationScale::kStatic : ActivationScale::kDynamic;
      LinearConfig config{in, out_features, tokens, mode, scale};
      auto layer = make_linear(Device::kCpu, config, weight.view(), input_scale);
      std::vector<uint16_t> out(static_cast<size_t>(tokens * out_features), kPoison);
      layer->forward(tokens, x.data(), out.data(), nullptr, nullptr);
      const auto reference = testing::reference_linear(weight, tokens, x.data(), mode, input_scale,
                                                       std::ldexp(1.0, -24));
      EXPECT_EQ(testing::check_against_reference(out, reference, out_features), "");
    }
  }
}

TEST(CpuMoe, W4A8RefusesStaticActivationScales) {
  MoeConfig config = small_config(4, 2, 8);
  config.mode = QuantMode::kW4A8;
  config.activation_scale = ActivationScale::kStatic;
  try {
    config.validate();
    FAIL() << "static W4A8 accepted";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("W4A8 scales its activations per token"));
  }
}

// ---- Errors -----------------------------------------------------------------------------------

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

using ::testing::HasSubstr;

TEST(CpuMoeErrors, ConfigFieldsOutOfRange) {
  auto bad = [](auto edit) {
    MoeConfig c = MoeConfig::single_rank(8, 64, 32, 2, 4);
    edit(c);
    return error_of([&] { c.validate(); });
  };
  EXPECT_THAT(bad([](MoeConfig& c) { c.hidden = 72; }), HasSubstr("hidden = 72"));
  EXPECT_THAT(bad([](MoeConfig& c) { c.intermediate = 8; }), HasSubstr("intermediate = 8"));
  EXPECT_THAT(bad([](MoeConfig& c) { c.top_k = 0; }), HasSubstr("top_k = 0"));
  EXPECT_THAT(bad([](MoeConfig& c) { c.max_tokens = 0; }), HasSubstr("max_tokens = 0"));
  EXPECT_THAT(bad([](MoeConfig& c) { c.num_experts = 0; }), HasSubstr("num_experts = 0"));
  EXPECT_THAT(bad([](MoeConfig& c) { c.first_local_expert = 6; }),
              HasSubstr("first_local_expert = 6 with 8 local experts falls outside the 8"));
  // A first expert so large that first + count overflows is still refused.
  EXPECT_THAT(bad([](MoeConfig& c) {
                c.num_local_experts = 2;
                c.first_local_expert = std::numeric_limits<int64_t>::max() - 1;
              }),
              HasSubstr("expected 0..6"));
  EXPECT_THAT(bad([](MoeConfig& c) { c.first_local_expert = -1; }),
              HasSubstr("first_local_expert = -1"));
  EXPECT_THAT(bad([](MoeConfig& c) {
                c.activation = Activation::kSwigluClamped;
                c.swiglu_limit = std::numeric_limits<float>::infinity();
              }),
              HasSubstr("swiglu_limit"));
  EXPECT_EQ(bad([](MoeConfig&) {}), "(no error)");
}

class CpuForwardErrors : public ::testing::Test {
 protected:
  MoeConfig config = MoeConfig::single_rank(8, 64, 32, 2, 4);
  MoeWeights w = make_weights(8, 64, 32, 1);
  Batch b = random_batch(config, 4, 2);

  std::string forward(int64_t tokens) {
    return error_of([&] {
      auto runner = make_cpu_runner(config, w.view());
      std::vector<std::byte> workspace(runner->workspace_bytes());
      std::vector<uint16_t> out(static_cast<size_t>(std::max<int64_t>(tokens, 4) * 64));
      runner->forward({tokens, b.hidden.data(), b.ids.data(), b.weights.data(), out.data()},
                      workspace.data(), nullptr);
    });
  }
};

TEST_F(CpuForwardErrors, IdsOutOfRange) {
  b.ids[3] = 300;
  EXPECT_THAT(forward(4), HasSubstr("topk_ids[1,1] = 300 but the layer has 8 experts"));
  b.ids[3] = -2;
  EXPECT_THAT(forward(4), HasSubstr("topk_ids[1,1] = -2"));
  b.ids[3] = 8;
  EXPECT_THAT(forward(4), HasSubstr("topk_ids[1,1] = 8"));
  b.ids[3] = 7;
  EXPECT_EQ(forward(4), "(no error)");
}

TEST_F(CpuForwardErrors, TooManyTokens) {
  b = random_batch(config, 5, 2);
  EXPECT_THAT(forward(5), HasSubstr("5 tokens, but the layer was configured for at most 4"));
}

TEST_F(CpuForwardErrors, NonFiniteRouterWeights) {
  b.weights[2] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(forward(4), HasSubstr("topk_weights[1,0] = nan"));
}

TEST_F(CpuForwardErrors, NonFiniteHiddenInW4A4) {
  config.mode = QuantMode::kW4A4;
  b.hidden[70] = 0x7F80;  // +inf
  EXPECT_THAT(forward(4), HasSubstr("element [1, 6] is inf"));
}

TEST_F(CpuForwardErrors, NanBlockScale) {
  w.gate_up_scales[3 * (64 * 64 / 16) + 5 * 4 + 2] = 0x7F;
  EXPECT_THAT(forward(4), HasSubstr("gate_up_scales[expert 3, row 5, block 2] = 0x7F is NaN"));
}

TEST_F(CpuForwardErrors, NegativeBlockScale) {
  w.down_scales[7] = 0xB8;
  EXPECT_THAT(forward(4), HasSubstr("down_scales[expert 0, row 3, block 1] = 0xB8 is negative"));
}

TEST_F(CpuForwardErrors, NonFiniteGlobalScale) {
  w.up_global_scale[6] = std::numeric_limits<float>::infinity();
  EXPECT_THAT(forward(4), HasSubstr("up_global_scale[6] = inf"));
  w.up_global_scale[6] = -1.0f;
  EXPECT_THAT(forward(4), HasSubstr("up_global_scale[6] = -1"));
}

TEST_F(CpuForwardErrors, StaticW4A4NeedsInputScales) {
  config.mode = QuantMode::kW4A4;
  config.activation_scale = ActivationScale::kStatic;
  w.down_input_scale.clear();
  EXPECT_THAT(forward(4), HasSubstr("static W4A4 needs down_input_scale"));
  w.down_input_scale.assign(8, 0.0f);
  EXPECT_THAT(forward(4), HasSubstr("down_input_scale[0] = 0"));
}

TEST_F(CpuForwardErrors, WeightsOfTheWrongShape) {
  w.down_values.pop_back();
  EXPECT_THAT(error_of([&] { validate_weights(config, w); }),
              HasSubstr("down_values has 8191 elements, expected 8192"));
  MoeConfig other = config;
  other.hidden = 96;
  EXPECT_THAT(error_of([&] { validate_weights(other, make_weights(8, 64, 32, 1)); }),
              HasSubstr("does not match the config"));
}

TEST_F(CpuForwardErrors, MissingWorkspace) {
  EXPECT_THAT(error_of([&] {
                auto runner = make_cpu_runner(config, w.view());
                std::vector<uint16_t> out(4 * 64);
                runner->forward({4, b.hidden.data(), b.ids.data(), b.weights.data(), out.data()},
                                nullptr, nullptr);
              }),
              HasSubstr("workspace is null"));
}

}  // namespace
}  // namespace nvfp4moe
