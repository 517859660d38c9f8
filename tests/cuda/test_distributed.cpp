// Expert parallelism over NCCL on 2 and 4 GPUs, both transports: each rank's output equals the
// single-GPU layer on the same tokens and routing (checked against the float64 interval
// reference), including ranks whose experts receive no tokens, eagerly and replayed from CUDA
// graphs with routing that changes between replays.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <thread>

#include "core/synthetic.hpp"
#include "cuda/ep/exchange.hpp"
#include "cuda/ep/nccl_api.hpp"
#include "gpu_test.hpp"
#include "nvfp4moe/distributed.hpp"
#include "nvfp4moe/error.hpp"
#include "support/moe_reference.hpp"

namespace nvfp4moe {
namespace {

using testing::to_device;
using testing::to_host;

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return 0;
  return count;
}

TEST(ExpertRange, SplitsContiguouslyWithTheRemainderFirst) {
  EXPECT_EQ(expert_range(256, 8, 0).first, 0);
  EXPECT_EQ(expert_range(256, 8, 3).first, 96);
  EXPECT_EQ(expert_range(256, 8, 3).count, 32);
  EXPECT_EQ(expert_range(10, 4, 0).count, 3);
  EXPECT_EQ(expert_range(10, 4, 1).first, 3);
  EXPECT_EQ(expert_range(10, 4, 2).first, 6);
  EXPECT_EQ(expert_range(10, 4, 3).first, 8);
  EXPECT_EQ(expert_range(10, 4, 3).count, 2);
  EXPECT_THROW(expert_range(3, 4, 0), Error);
  EXPECT_THROW(expert_range(8, 2, 2), Error);
}

TEST(ExchangeWindow, RegionsAreAlignedDisjointAndLargeEnough) {
  const int world = 3;
  const int64_t tokens = 5, hidden = 48, top_k = 6, rows = world * tokens;
  const cuda::ExchangeWindow w = cuda::exchange_window(world, tokens, hidden, top_k);
  const std::array<size_t, 7> starts{w.counter, w.hidden,   w.ids,  w.weights,
                                     w.source,  w.returned, w.bytes};
  const std::array<size_t, 6> needed{4,
                                     size_t(rows * hidden * 2),
                                     size_t(rows * top_k * 4),
                                     size_t(rows * top_k * 4),
                                     size_t(rows * 4),
                                     size_t(rows * hidden * 4)};
  for (size_t i = 0; i < needed.size(); ++i) {
    EXPECT_EQ(starts[i] % 256, 0u) << "region " << i;
    EXPECT_GE(starts[i + 1] - starts[i], needed[i]) << "region " << i;
  }
  EXPECT_EQ(w.counter, 0u);
}

// Limits of the all-to-all, checked before NCCL or a GPU is touched (a stand-in communicator).
TEST(AllToAllTransport, RefusesMoreThan32RanksOrSlots) {
  void* const stand_in = reinterpret_cast<void*>(uintptr_t{1});
  const MoeConfig wide = MoeConfig::single_rank(64, 128, 64, 40, 1);
  const MoeWeights weights = random_layer(32, 128, 64, 82).nvfp4;
  try {
    make_distributed_moe(wide, weights, {2, 0, stand_in, 4, Transport::kAllToAll});
    FAIL() << "top_k = 40 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("top_k = 40, at most 32"), std::string::npos) << e.what();
  }
  const MoeConfig many = MoeConfig::single_rank(66, 128, 64, 4, 1);
  try {
    make_distributed_moe(many, weights, {33, 0, stand_in, 4, Transport::kAllToAll});
    FAIL() << "33 ranks accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("world size 33, at most 32"), std::string::npos)
        << e.what();
  }
}

// Devices 0 .. world-1.
std::vector<int> first_devices(int world) {
  std::vector<int> devices(world);
  for (int r = 0; r < world; ++r) devices[r] = r;
  return devices;
}

struct RankBatch {
  std::vector<uint16_t> hidden;
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

// Runs `world` ranks, one thread and one GPU each, for `replays` batches per rank (a graph
// captured on the first when `graph` is set), and checks every rank's output.
void run_world(int world, Transport transport, const MoeConfig& layer,
               const MoeWeights& all_weights, int64_t tokens_per_rank, bool all_on_rank0,
               bool graph, int replays) {
  cuda::LocalCommunicators comms(first_devices(world));
  // Batches for every replay and rank, and the reference of the whole (all ranks') batch.
  std::vector<std::vector<RankBatch>> batches(replays, std::vector<RankBatch>(world));
  std::vector<std::vector<testing::ReferenceOutput>> references(replays);
  for (int replay = 0; replay < replays; ++replay) {
    const int64_t total = tokens_per_rank * world;
    const auto hidden = random_bf16(size_t(total * layer.hidden), 1.0f, 500 + replay);
    Routing routing = random_routing(total, layer.num_experts, layer.top_k, 600 + replay);
    if (all_on_rank0) {  // only rank 0's experts get tokens: the other ranks compute nothing
      const ExpertRange first = expert_range(layer.num_experts, world, 0);
      for (auto& id : routing.ids) id = int32_t(first.first + id % first.count);
    }
    const testing::ReferenceInputs in{total, hidden.data(), routing.ids.data(),
                                      routing.weights.data()};
    MoeConfig whole = layer;
    whole.max_tokens = total;
    const auto reference = testing::reference_moe(whole, all_weights, in, std::ldexp(1.0, -22));
    for (int r = 0; r < world; ++r) {
      RankBatch& b = batches[replay][r];
      const auto token0 = size_t(r * tokens_per_rank);
      b.hidden.assign(hidden.begin() + token0 * layer.hidden,
                      hidden.begin() + (token0 + tokens_per_rank) * layer.hidden);
      b.ids.assign(routing.ids.begin() + token0 * layer.top_k,
                   routing.ids.begin() + (token0 + tokens_per_rank) * layer.top_k);
      b.weights.assign(routing.weights.begin() + token0 * layer.top_k,
                       routing.weights.begin() + (token0 + tokens_per_rank) * layer.top_k);
      testing::ReferenceOutput part;
      using Field = std::vector<double> testing::ReferenceOutput::*;
      for (const Field field :
           std::array<Field, 3>{&testing::ReferenceOutput::value, &testing::ReferenceOutput::low,
                                &testing::ReferenceOutput::high}) {
        (part.*field)
            .assign((reference.*field).begin() + token0 * layer.hidden,
                    (reference.*field).begin() + (token0 + tokens_per_rank) * layer.hidden);
      }
      references[replay].push_back(std::move(part));
    }
  }

  std::vector<std::string> failures(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        cudaSetDevice(r);
        const ExpertRange range = expert_range(layer.num_experts, world, r);
        auto moe = make_distributed_moe(layer, all_weights.slice(range.first, range.count),
                                        {world, r, comms[r], tokens_per_rank, transport});
        DeviceBuffer hidden(Device::kCuda, size_t(tokens_per_rank * layer.hidden) * 2);
        DeviceBuffer ids(Device::kCuda, size_t(tokens_per_rank * layer.top_k) * 4);
        DeviceBuffer weights(Device::kCuda, size_t(tokens_per_rank * layer.top_k) * 4);
        DeviceBuffer out(Device::kCuda, size_t(tokens_per_rank * layer.hidden) * 2);
        DeviceBuffer workspace(Device::kCuda, moe->workspace_bytes());
        cudaStream_t stream;
        cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
        const MoeForwardArgs args{tokens_per_rank, hidden.as<uint16_t>(), ids.as<int32_t>(),
                                  weights.as<float>(), out.as<uint16_t>()};
        cudaGraphExec_t exec = nullptr;
        for (int replay = 0; replay < replays; ++replay) {
          const RankBatch& b = batches[replay][r];
          // Inputs go through the rank's own (non-blocking) stream, so the forward sees them.
          auto upload = [&](DeviceBuffer& to, const void* from, size_t bytes) {
            if (cudaMemcpyAsync(to.data(), from, bytes, cudaMemcpyHostToDevice, stream) !=
                cudaSuccess) {
              throw Error(ErrorKind::kCuda, "upload failed");
            }
          };
          upload(hidden, b.hidden.data(), b.hidden.size() * 2);
          upload(ids, b.ids.data(), b.ids.size() * 4);
          upload(weights, b.weights.data(), b.weights.size() * 4);
          cudaMemsetAsync(out.data(), 0xFF, out.size(), stream);  // poison
          if (!graph) {
            moe->forward(args, workspace.data(), stream);
          } else {
            if (exec == nullptr) {
              // NCCL connects its peers on first use, which cannot happen inside a capture.
              moe->forward(args, workspace.data(), stream);
              cudaMemsetAsync(out.data(), 0xFF, out.size(), stream);
              cudaGraph_t captured;
              cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal);
              moe->forward(args, workspace.data(), stream);
              if (cudaStreamEndCapture(stream, &captured) != cudaSuccess ||
                  cudaGraphInstantiate(&exec, captured, 0) != cudaSuccess) {
                throw Error(ErrorKind::kCuda, "capturing the distributed forward failed");
              }
              cudaGraphDestroy(captured);
            }
            if (cudaGraphLaunch(exec, stream) != cudaSuccess) {
              throw Error(ErrorKind::kCuda, "graph launch failed");
            }
          }
          moe->check_errors(stream);
          const auto result = to_host<uint16_t>(out, b.hidden.size());
          const std::string report =
              testing::check_against_reference(result, references[replay][r], layer.hidden);
          if (!report.empty() && failures[r].empty()) {
            failures[r] = "replay " + std::to_string(replay) + ":\n" + report;
          }
        }
        if (exec != nullptr) cudaGraphExecDestroy(exec);
        cudaStreamDestroy(stream);
      } catch (const std::exception& e) {
        failures[r] = e.what();
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (int r = 0; r < world; ++r) EXPECT_EQ(failures[r], "") << "rank " << r;
}

struct WorldCase {
  int world;
  Transport transport;
};

class Distributed : public ::testing::TestWithParam<WorldCase> {
 protected:
  void SetUp() override {
    std::string reason;
    if (!cuda::device_usable(&reason)) GTEST_SKIP() << "GPU test skipped: " << reason;
    if (device_count() < GetParam().world) {
      GTEST_SKIP() << "needs " << GetParam().world << " GPUs, this machine has " << device_count();
    }
    if (GetParam().transport == Transport::kAllToAll) {
      try {
        cuda::NcclApi::get().require_device_api("the all-to-all transport");
      } catch (const Error& e) {
        GTEST_SKIP() << e.what();
      }
    }
  }
};

TEST_P(Distributed, EqualsTheSingleGpuLayer) {
  const auto [world, transport] = GetParam();
  for (const QuantMode mode : {QuantMode::kW4A16, QuantMode::kW4A4}) {
    MoeConfig layer = MoeConfig::single_rank(16, 256, 128, 4, 1);
    layer.mode = mode;
    const MoeWeights weights = random_layer(16, 256, 128, 77).nvfp4;
    run_world(world, transport, layer, weights, 24, /*all_on_rank0=*/false, /*graph=*/false, 2);
  }
}

TEST_P(Distributed, RanksWhoseExpertsGetNoTokens) {
  const auto [world, transport] = GetParam();
  const MoeConfig layer = MoeConfig::single_rank(16, 256, 128, 4, 1);
  const MoeWeights weights = random_layer(16, 256, 128, 78).nvfp4;
  run_world(world, transport, layer, weights, 16, /*all_on_rank0=*/true, /*graph=*/false, 1);
}

TEST_P(Distributed, GraphReplaysWithChangingRouting) {
  const auto [world, transport] = GetParam();
  for (const QuantMode mode : {QuantMode::kW4A16, QuantMode::kW4A4}) {
    MoeConfig layer = MoeConfig::single_rank(16, 128, 64, 4, 1);
    layer.mode = mode;
    const MoeWeights weights = random_layer(16, 128, 64, 79).nvfp4;
    run_world(world, transport, layer, weights, 8, /*all_on_rank0=*/false, /*graph=*/true, 10);
  }
}

// Ranks of 520 tokens (several passes of the exchange kernels' blocks, one token each),
// DeepSeek's k = 8, and experts that do not split evenly (the first ranks own one more).
TEST_P(Distributed, ManyTokensAndAnUnevenExpertSplit) {
  const auto [world, transport] = GetParam();
  const MoeConfig layer = MoeConfig::single_rank(19, 128, 64, 8, 1);
  const MoeWeights weights = random_layer(19, 128, 64, 80).nvfp4;
  run_world(world, transport, layer, weights, 520, /*all_on_rank0=*/false, /*graph=*/false, 2);
}

// An id outside [-1, E) on rank 0: check_errors names it on the ranks that saw it (every rank
// after an all-gather; only the sender with the all-to-all, which sends the slot nowhere).
TEST_P(Distributed, BadExpertIdIsReportedByItsRank) {
  const auto [world, transport] = GetParam();
  const MoeConfig layer = MoeConfig::single_rank(16, 128, 64, 4, 1);
  const MoeWeights weights = random_layer(16, 128, 64, 81).nvfp4;
  const int64_t tokens = 4;
  cuda::LocalCommunicators comms(first_devices(world));
  std::vector<std::string> errors(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      cudaSetDevice(r);
      const ExpertRange range = expert_range(layer.num_experts, world, r);
      auto moe = make_distributed_moe(layer, weights.slice(range.first, range.count),
                                      {world, r, comms[r], tokens, transport});
      const auto hidden = random_bf16(size_t(tokens * layer.hidden), 1.0f, 90 + r);
      Routing routing = random_routing(tokens, layer.num_experts, layer.top_k, 91 + r);
      if (r == 0) routing.ids[5] = 300;
      const DeviceBuffer d_hidden = to_device(hidden);
      const DeviceBuffer d_ids = to_device(routing.ids);
      const DeviceBuffer d_weights = to_device(routing.weights);
      DeviceBuffer out(Device::kCuda, hidden.size() * 2);
      DeviceBuffer workspace(Device::kCuda, moe->workspace_bytes());
      cudaStream_t stream;
      cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
      cudaDeviceSynchronize();  // the uploads
      moe->forward({tokens, d_hidden.as<uint16_t>(), d_ids.as<int32_t>(), d_weights.as<float>(),
                    out.as<uint16_t>()},
                   workspace.data(), stream);
      try {
        moe->check_errors(stream);
      } catch (const Error& e) {
        errors[r] = e.what();
      }
      cudaStreamDestroy(stream);
    });
  }
  for (auto& thread : threads) thread.join();
  for (int r = 0; r < world; ++r) {
    if (r == 0 || transport == Transport::kAllGather) {
      EXPECT_NE(errors[r].find("outside [-1, 16)"), std::string::npos) << "rank " << r;
    } else {
      EXPECT_EQ(errors[r], "") << "rank " << r;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    WorldSizes, Distributed,
    ::testing::Values(WorldCase{2, Transport::kAllGather}, WorldCase{2, Transport::kAllToAll},
                      WorldCase{4, Transport::kAllGather}, WorldCase{4, Transport::kAllToAll}),
    [](const ::testing::TestParamInfo<WorldCase>& info_) {
      return "world" + std::to_string(info_.param.world) +
             (info_.param.transport == Transport::kAllGather ? "_allgather" : "_alltoall");
    });

}  // namespace
}  // namespace nvfp4moe
