// The CUDA MoE runner against the float64 interval reference: token counts from 0 to 5000, 1 to
// 256 experts, top-1/6/8, both modes and activations, empty experts, one expert taking every
// token, expert-parallel slices, -1 ids; CUDA-graph replays with changing routing; errors the
// device reports.
#include <cuda_runtime.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "core/synthetic.hpp"
#include "gpu_test.hpp"
#include "nvfp4moe/error.hpp"
#include "nvfp4moe/format.hpp"
#include "nvfp4moe/moe.hpp"
#include "support/moe_reference.hpp"

namespace nvfp4moe {
namespace {

using testing::to_device;
using testing::to_host;

constexpr uint16_t kPoison = 0xFFFF;
// Tensor-core fp32 accumulation is not promised to round to nearest: allow truncation and
// then some (still far below a bf16 ulp).
const double kUnitRoundoff = std::ldexp(1.0, -22);

enum class RoutingPattern { kRandom, kOneExpert, kWithMinusOne };

struct MoeCase {
  std::string name;
  int64_t experts, top_k, hidden, intermediate, tokens;
  QuantMode mode = QuantMode::kW4A16;
  ActivationScale scale = ActivationScale::kDynamic;
  Activation activation = Activation::kSilu;
  int64_t first_local = 0, num_local = 0;  // 0: all experts
  RoutingPattern routing = RoutingPattern::kRandom;
  bool large = false;  // skipped in quick (sanitizer) mode
};

void PrintTo(const MoeCase& c, std::ostream* os) { *os << c.name; }

MoeWeights weights_for(const MoeConfig& c, uint64_t seed) {
  MoeWeights w = random_layer(c.num_local_experts, c.hidden, c.intermediate, seed).nvfp4;
  Random random(seed + 7);
  w.gate_up_input_scale.resize(c.num_local_experts);
  w.down_input_scale.resize(c.num_local_experts);
  for (int64_t e = 0; e < c.num_local_experts; ++e) {
    w.gate_up_input_scale[e] = float((3.0 + 3.0 * random.uniform()) / 2688);
    w.down_input_scale[e] = float((0.5 + 2.0 * random.uniform()) / 2688);
  }
  return w;
}

struct Batch {
  std::vector<uint16_t> hidden;
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

Batch batch_for(const MoeConfig& c, int64_t tokens, RoutingPattern routing, uint64_t seed) {
  Batch b;
  b.hidden = random_bf16(size_t(tokens * c.hidden), 1.0f, seed);
  Routing r = random_routing(tokens, c.num_experts, c.top_k, seed + 1);
  b.ids = std::move(r.ids);
  b.weights = std::move(r.weights);
  if (routing == RoutingPattern::kOneExpert) {
    for (int64_t t = 0; t < tokens; ++t) {
      b.ids[t * c.top_k] = int32_t(c.first_local_expert + c.num_local_experts / 2);
      for (int64_t j = 1; j < c.top_k; ++j) {
        if (b.ids[t * c.top_k + j] == b.ids[t * c.top_k]) b.ids[t * c.top_k + j] = -1;
      }
    }
  } else if (routing == RoutingPattern::kWithMinusOne) {
    for (size_t s = 0; s < b.ids.size(); s += 3) b.ids[s] = -1;
  }
  return b;
}

std::vector<uint16_t> run_gpu(MoeRunner& runner, const Batch& b, int64_t tokens) {
  DeviceBuffer hidden = to_device(b.hidden);
  DeviceBuffer ids = to_device(b.ids);
  DeviceBuffer weights = to_device(b.weights);
  DeviceBuffer out(Device::kCuda, std::max<size_t>(1, b.hidden.size()) * 2);
  out.fill(0xFF);  // poison: every element must be written
  DeviceBuffer workspace(Device::kCuda, runner.workspace_bytes());
  runner.forward(
      {tokens, hidden.as<uint16_t>(), ids.as<int32_t>(), weights.as<float>(), out.as<uint16_t>()},
      workspace.data(), nullptr);
  runner.check_errors(nullptr);
  return to_host<uint16_t>(out, b.hidden.size());
}

class CudaMoe : public ::testing::TestWithParam<MoeCase> {};

TEST_P(CudaMoe, MatchesTheReference) {
  NVFP4MOE_REQUIRE_GPU();
  const MoeCase& p = GetParam();
  if (p.large && testing::quick_mode()) GTEST_SKIP() << "large case skipped in quick mode";
  MoeConfig c = MoeConfig::single_rank(p.experts, p.hidden, p.intermediate, p.top_k,
                                       std::max<int64_t>(p.tokens, 1));
  c.mode = p.mode;
  c.activation_scale = p.scale;
  c.activation = p.activation;
  c.swiglu_limit = p.activation == Activation::kSwigluClamped ? 1.0f : 10.0f;
  if (p.num_local > 0) {
    c.first_local_expert = p.first_local;
    c.num_local_experts = p.num_local;
  }
  const MoeWeights w = weights_for(c, 11);
  const Batch b = batch_for(c, p.tokens, p.routing, 12);
  auto runner = make_runner(Device::kCuda, c, w);
  const auto out = run_gpu(*runner, b, p.tokens);
  if (p.tokens == 0) return;  // nothing to compare: forward must simply not fail
  const testing::ReferenceInputs in{p.tokens, b.hidden.data(), b.ids.data(), b.weights.data()};
  const auto reference = testing::reference_moe(c, w, in, kUnitRoundoff);
  EXPECT_EQ(testing::check_against_reference(out, reference, c.hidden), "");
}

MoeCase make(std::string name, int64_t e, int64_t k, int64_t h, int64_t i, int64_t t) {
  return {std::move(name), e, k, h, i, t};
}

std::vector<MoeCase> moe_cases() {
  std::vector<MoeCase> cases;
  auto add = [&](MoeCase c, auto edit) {
    edit(c);
    cases.push_back(c);
  };
  auto none = [](MoeCase&) {};
  add(make("T0", 8, 6, 256, 128, 0), none);
  add(make("T1_E8_k6", 8, 6, 256, 128, 1), none);
  add(make("T7_E256_k8_mostly_empty_experts", 256, 8, 256, 128, 7),
      [](MoeCase& c) { c.activation = Activation::kSwigluClamped; });
  add(make("T64_E256_k8_w4a4_dynamic", 256, 8, 256, 128, 64),
      [](MoeCase& c) { c.mode = QuantMode::kW4A4; });
  add(make("T1000_E8_k1_odd_sizes", 8, 1, 80, 48, 1000), none);
  add(make("T1000_E256_k6_w4a4_static_swiglu", 256, 6, 256, 128, 1000), [](MoeCase& c) {
    c.mode = QuantMode::kW4A4;
    c.scale = ActivationScale::kStatic;
    c.activation = Activation::kSwigluClamped;
  });
  add(make("T5000_E256_k8", 256, 8, 128, 64, 5000), [](MoeCase& c) { c.large = true; });
  add(make("T5000_E8_k6_w4a4_dynamic_swiglu", 8, 6, 128, 64, 5000), [](MoeCase& c) {
    c.mode = QuantMode::kW4A4;
    c.activation = Activation::kSwigluClamped;
    c.large = true;
  });
  add(make("T64_E1_k1_one_expert", 1, 1, 256, 128, 64), none);
  add(make("T1000_E8_k6_all_tokens_on_one_expert", 8, 6, 256, 128, 1000), [](MoeCase& c) {
    c.routing = RoutingPattern::kOneExpert;
    c.mode = QuantMode::kW4A4;
  });
  add(make("T64_E256_k8_expert_parallel_64_of_256", 256, 8, 256, 128, 64), [](MoeCase& c) {
    c.first_local = 64;
    c.num_local = 64;
  });
  add(make("T64_E256_k8_expert_parallel_w4a4_static", 256, 8, 256, 128, 64), [](MoeCase& c) {
    c.first_local = 200;
    c.num_local = 56;
    c.mode = QuantMode::kW4A4;
    c.scale = ActivationScale::kStatic;
  });
  add(make("T64_E8_k6_minus_one_ids_w4a4_static", 8, 6, 256, 128, 64), [](MoeCase& c) {
    c.routing = RoutingPattern::kWithMinusOne;
    c.mode = QuantMode::kW4A4;
    c.scale = ActivationScale::kStatic;
  });
  add(make("T8_E8_k8_deepseek_shape", 8, 8, 7168, 2048, 8), [](MoeCase& c) { c.large = true; });
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaMoe, ::testing::ValuesIn(moe_cases()),
                         [](const ::testing::TestParamInfo<MoeCase>& param_info) {
                           return param_info.param.name;
                         });

// ---- CUDA graphs --------------------------------------------------------------------------

void replay_with_changing_routing(QuantMode mode, int replays) {
  MoeConfig c = MoeConfig::single_rank(8, 64, 32, 2, 16);
  c.mode = mode;
  const MoeWeights w = weights_for(c, 3);
  auto runner = make_runner(Device::kCuda, c, w);
  const int64_t tokens = 16;
  DeviceBuffer hidden(Device::kCuda, size_t(tokens * c.hidden) * 2);
  DeviceBuffer ids(Device::kCuda, size_t(tokens * c.top_k) * 4);
  DeviceBuffer weights(Device::kCuda, size_t(tokens * c.top_k) * 4);
  DeviceBuffer out(Device::kCuda, size_t(tokens * c.hidden) * 2);
  DeviceBuffer workspace(Device::kCuda, runner->workspace_bytes());
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);

  // Capture once; the graph reads whatever the input buffers hold when it is replayed.
  Batch first = batch_for(c, tokens, RoutingPattern::kRandom, 100);
  hidden.upload(first.hidden.data(), first.hidden.size() * 2);
  ids.upload(first.ids.data(), first.ids.size() * 4);
  weights.upload(first.weights.data(), first.weights.size() * 4);
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  runner->forward(
      {tokens, hidden.as<uint16_t>(), ids.as<int32_t>(), weights.as<float>(), out.as<uint16_t>()},
      workspace.data(), stream);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);

  int failures = 0;
  std::vector<uint16_t> host_out(size_t(tokens * c.hidden));
  for (int r = 0; r < replays; ++r) {
    Batch b = batch_for(
        c, tokens, r % 3 == 2 ? RoutingPattern::kWithMinusOne : RoutingPattern::kRandom, 1000 + r);
    ASSERT_EQ(cudaMemcpyAsync(hidden.data(), b.hidden.data(), b.hidden.size() * 2,
                              cudaMemcpyHostToDevice, stream),
              cudaSuccess);
    ASSERT_EQ(
        cudaMemcpyAsync(ids.data(), b.ids.data(), b.ids.size() * 4, cudaMemcpyHostToDevice, stream),
        cudaSuccess);
    ASSERT_EQ(cudaMemcpyAsync(weights.data(), b.weights.data(), b.weights.size() * 4,
                              cudaMemcpyHostToDevice, stream),
              cudaSuccess);
    ASSERT_EQ(cudaMemsetAsync(out.data(), 0xFF, out.size(), stream), cudaSuccess);
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(
        cudaMemcpyAsync(host_out.data(), out.data(), out.size(), cudaMemcpyDeviceToHost, stream),
        cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    const testing::ReferenceInputs in{tokens, b.hidden.data(), b.ids.data(), b.weights.data()};
    const std::string report = testing::check_against_reference(
        host_out, testing::reference_moe(c, w, in, kUnitRoundoff), c.hidden);
    if (!report.empty() && ++failures <= 3) ADD_FAILURE() << "replay " << r << ":\n" << report;
  }
  EXPECT_EQ(failures, 0);
  runner->check_errors(stream);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

int replay_count() {
  const char* env = std::getenv("NVFP4MOE_TEST_REPLAYS");
  return env ? std::atoi(env) : 1000;
}

TEST(CudaGraph, ReplaysWithChangingRoutingW4A16) {
  NVFP4MOE_REQUIRE_GPU();
  replay_with_changing_routing(QuantMode::kW4A16, replay_count());
}

TEST(CudaGraph, ReplaysWithChangingRoutingW4A4) {
  NVFP4MOE_REQUIRE_GPU();
  replay_with_changing_routing(QuantMode::kW4A4, std::max(1, replay_count() / 5));
}

// ---- Errors --------------------------------------------------------------------------------

TEST(CudaMoeErrors, BadIdsAreSkippedAndReported) {
  NVFP4MOE_REQUIRE_GPU();
  const MoeConfig c = MoeConfig::single_rank(8, 64, 32, 2, 4);
  const MoeWeights w = weights_for(c, 1);
  Batch b = batch_for(c, 4, RoutingPattern::kRandom, 2);
  b.ids[3] = 300;
  auto runner = make_runner(Device::kCuda, c, w);
  try {
    run_gpu(*runner, b, 4);
    FAIL() << "no error for topk_ids = 300";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("outside [-1, 8)"));
  }
  // The bad slot contributed nothing: the output is the layer with that slot at -1.
  DeviceBuffer hidden = to_device(b.hidden), ids = to_device(b.ids), weights = to_device(b.weights);
  DeviceBuffer out(Device::kCuda, b.hidden.size() * 2);
  DeviceBuffer workspace(Device::kCuda, runner->workspace_bytes());
  runner->forward(
      {4, hidden.as<uint16_t>(), ids.as<int32_t>(), weights.as<float>(), out.as<uint16_t>()},
      workspace.data(), nullptr);
  EXPECT_THROW(runner->check_errors(nullptr), Error);
  runner->check_errors(nullptr);  // cleared by the previous call
  b.ids[3] = -1;
  const testing::ReferenceInputs in{4, b.hidden.data(), b.ids.data(), b.weights.data()};
  EXPECT_EQ(
      testing::check_against_reference(to_host<uint16_t>(out, b.hidden.size()),
                                       testing::reference_moe(c, w, in, kUnitRoundoff), c.hidden),
      "");
}

TEST(CudaMoeErrors, NonFiniteHiddenInW4A4IsReported) {
  NVFP4MOE_REQUIRE_GPU();
  MoeConfig c = MoeConfig::single_rank(8, 64, 32, 2, 4);
  c.mode = QuantMode::kW4A4;
  Batch b = batch_for(c, 4, RoutingPattern::kRandom, 2);
  b.hidden[17] = 0x7FC0;  // NaN
  auto runner = make_runner(Device::kCuda, c, weights_for(c, 1));
  EXPECT_THROW(run_gpu(*runner, b, 4), Error);
}

TEST(CudaMoeErrors, HostChecksComeFirst) {
  NVFP4MOE_REQUIRE_GPU();
  const MoeConfig c = MoeConfig::single_rank(8, 64, 32, 2, 4);
  auto runner = make_runner(Device::kCuda, c, weights_for(c, 1));
  const Batch b = batch_for(c, 5, RoutingPattern::kRandom, 2);
  EXPECT_THROW(run_gpu(*runner, b, 5), Error);  // more than max_tokens
  MoeWeights bad = weights_for(c, 1);
  bad.gate_up_scales[5] = 0x7F;
  EXPECT_THROW(make_runner(Device::kCuda, c, bad), Error);
}

TEST(CudaMoe, WorkspaceIsAFunctionOfTheConfigOnly) {
  NVFP4MOE_REQUIRE_GPU();
  const MoeConfig c = MoeConfig::single_rank(8, 64, 32, 2, 100);
  auto a = make_runner(Device::kCuda, c, weights_for(c, 1));
  auto b = make_runner(Device::kCuda, c, weights_for(c, 2));
  EXPECT_EQ(a->workspace_bytes(), b->workspace_bytes());
  MoeConfig bigger = c;
  bigger.max_tokens = 200;
  EXPECT_GT(make_runner(Device::kCuda, bigger, weights_for(c, 1))->workspace_bytes(),
            a->workspace_bytes());
}

}  // namespace
}  // namespace nvfp4moe
