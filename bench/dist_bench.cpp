// `nvfp4moe bench --world-size N`: the expert-parallel layer on 1, 2, 4 .. N GPUs of this
// machine, one thread per GPU, with each transport. Per world size, transport and tokens per
// rank: the layer time on rank 0 (CUDA graph replays), tokens per second over all ranks, and
// the communication share measured as 1 - (the same rank's local experts over every rank's
// tokens, no communication) / (the whole layer).
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <thread>

#include "bench_util.hpp"
#include "core/check.hpp"
#include "core/model_shapes.hpp"
#include "core/parallel.hpp"
#include "core/synthetic.hpp"
#include "cuda/common/cuda_check.hpp"
#include "cuda/ep/nccl_api.hpp"
#include "cuda/runtime_cuda.hpp"
#include "moe_bench.hpp"
#include "nvfp4moe/distributed.hpp"
#include "nvfp4moe/runtime.hpp"

namespace nvfp4moe::bench {

namespace {

struct RankResult {
  double layer_ms = 0, local_ms = 0;
  std::string error;
};

}  // namespace

void run_distributed_bench(const BenchOptions& o, int max_world) {
  const ModelShape* const it = &find_model_shape(o.shape, "bench");
  int devices = 0;
  NVFP4MOE_CUDA_CHECK(cudaGetDeviceCount(&devices));
  require(max_world >= 1 && max_world <= devices, ErrorKind::kInvalidArgument,
          "bench: --world-size {} but this machine has {} GPU(s)", max_world, devices);
  MoeConfig layer;
  layer.num_experts = it->experts;  // all experts, split over the ranks
  layer.num_local_experts = it->experts;
  layer.hidden = it->hidden;
  layer.intermediate = it->intermediate;
  layer.top_k = it->top_k;
  layer.max_tokens = 1;
  layer.mode = o.mode;
  const int64_t max_tokens = *std::max_element(o.tokens.begin(), o.tokens.end());

  fmt::print(
      "nvfp4moe bench --world-size {}: {} (E={}, k={}, H={}, I={}), {}, experts split in "
      "contiguous ranges, over NCCL ({}): all-gather + reduce-scatter, or all-to-all of the "
      "routed tokens\n",
      max_world, it->name, layer.num_experts, layer.top_k, layer.hidden, layer.intermediate,
      to_string(layer.mode), cuda::NcclApi::get().library());
  fmt::print(
      "median of {} graph replays on rank 0; communication share = 1 - local experts "
      "alone / whole layer\n\n",
      o.repeats);
  fmt::print("{:>5} {:>11} {:>10} {:>10} {:>12} {:>10} {:>10}\n", "world", "transport",
             "T per rank", "layer ms", "tokens/s", "local ms", "comm share");
  const std::array<Transport, 2> transports{Transport::kAllGather, Transport::kAllToAll};

  std::vector<int> worlds;
  for (int w = 1; w < max_world; w *= 2) worlds.push_back(w);
  worlds.push_back(max_world);
  for (const int world : worlds) {
    std::vector<int> device_ids(world);
    for (int r = 0; r < world; ++r) device_ids[r] = r;
    cuda::LocalCommunicators comms(device_ids);
    // results[transport][tokens][rank]
    std::vector<std::vector<std::vector<RankResult>>> results(
        transports.size(),
        std::vector<std::vector<RankResult>>(o.tokens.size(), std::vector<RankResult>(world)));
    std::vector<std::thread> threads;
    for (int r = 0; r < world; ++r) {
      threads.emplace_back([&, r] {
        try {
          NVFP4MOE_CUDA_CHECK(cudaSetDevice(r));
          const ExpertRange range = expert_range(layer.num_experts, world, r);
          const MoeWeights weights = random_nvfp4_weights(range.first, range.count, layer.hidden,
                                                          layer.intermediate, o.seed);
          cudaStream_t stream;
          NVFP4MOE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
          for (size_t xi = 0; xi < transports.size(); ++xi) {
            // Made by every rank at once (the all-to-all's window registration is collective).
            auto moe = make_distributed_moe(layer, weights,
                                            {world, r, comms[r], max_tokens, transports[xi]});
            auto local = cuda::make_cuda_runner(moe->local_config(), weights);
            DeviceBuffer workspace(Device::kCuda, moe->workspace_bytes());
            DeviceBuffer local_workspace(Device::kCuda, local->workspace_bytes());
            for (size_t ti = 0; ti < o.tokens.size(); ++ti) {
              const int64_t tokens = o.tokens[ti];
              const int64_t all = tokens * world;
              // Every rank makes the whole batch from the same seed and keeps its own part.
              const Routing routing =
                  random_routing(all, layer.num_experts, layer.top_k, o.seed + uint64_t(tokens));
              const auto hidden = random_bf16(size_t(tokens * layer.hidden), 1.0f, o.seed + r);
              DeviceBuffer d_hidden(Device::kCuda, hidden.size() * 2);
              d_hidden.upload(hidden.data(), hidden.size() * 2);
              DeviceBuffer d_ids(Device::kCuda, size_t(all * layer.top_k) * 4);
              d_ids.upload(routing.ids.data(), routing.ids.size() * 4);
              DeviceBuffer d_weights(Device::kCuda, size_t(all * layer.top_k) * 4);
              d_weights.upload(routing.weights.data(), routing.weights.size() * 4);
              DeviceBuffer d_out(Device::kCuda, hidden.size() * 2);
              const size_t own = size_t(r * tokens * layer.top_k);
              const MoeForwardArgs args{tokens, d_hidden.as<uint16_t>(), d_ids.as<int32_t>() + own,
                                        d_weights.as<float>() + own, d_out.as<uint16_t>()};
              // Uploads went through the legacy stream; NCCL connects on first use, which
              // cannot happen inside a capture: one eager forward first.
              NVFP4MOE_CUDA_CHECK(cudaDeviceSynchronize());
              moe->forward(args, workspace.data(), stream);
              const auto layer_graph =
                  Graph::capture(stream, [&] { moe->forward(args, workspace.data(), stream); });
              require(layer_graph.has_value(), ErrorKind::kCuda, "capturing the layer failed");
              results[xi][ti][r].layer_ms =
                  median_ms(stream, o.warmup, o.repeats, [&](int) { layer_graph->launch(stream); });
              moe->check_errors(stream);
              // The same rank's experts over all ranks' tokens, without communication. (The
              // hidden states of the other ranks do not matter for the time: rows are gathered.)
              DeviceBuffer all_hidden(Device::kCuda, size_t(all * layer.hidden) * 2);
              all_hidden.fill(0x3F);
              DeviceBuffer sums(Device::kCuda, size_t(all * layer.hidden) * 4);
              const MoeForwardArgs all_args{all, all_hidden.as<uint16_t>(), d_ids.as<int32_t>(),
                                            d_weights.as<float>(), nullptr};
              const auto local_graph = Graph::capture(stream, [&] {
                local->forward_sums(all_args, sums.as<float>(), local_workspace.data(), stream);
              });
              require(local_graph.has_value(), ErrorKind::kCuda,
                      "capturing the local experts failed");
              results[xi][ti][r].local_ms =
                  median_ms(stream, o.warmup, o.repeats, [&](int) { local_graph->launch(stream); });
            }
          }
          cudaStreamDestroy(stream);
        } catch (const std::exception& e) {
          for (auto& per_transport : results) {
            for (auto& row : per_transport) row[r].error = e.what();
          }
        }
      });
    }
    for (auto& thread : threads) thread.join();
    for (size_t xi = 0; xi < transports.size(); ++xi) {
      for (size_t ti = 0; ti < o.tokens.size(); ++ti) {
        for (const RankResult& rank : results[xi][ti]) {
          require(rank.error.empty(), ErrorKind::kCuda, "bench: a rank failed: {}", rank.error);
        }
        const RankResult& r0 = results[xi][ti][0];
        fmt::print("{:>5} {:>11} {:>10} {:>10.3f} {:>12.0f} {:>10.3f} {:>9.0f}%\n", world,
                   to_string(transports[xi]), o.tokens[ti], r0.layer_ms,
                   double(o.tokens[ti] * world) / (r0.layer_ms * 1e-3), r0.local_ms,
                   100.0 * std::max(0.0, 1.0 - r0.local_ms / r0.layer_ms));
        std::fflush(stdout);
      }
    }
  }
}

}  // namespace nvfp4moe::bench
