// `nvfp4moe bench`: the NVFP4 MoE layer on the GPU at the model shapes of docs/performance-log.md,
// every figure printed next to ceilings and a peer measured in the same run:
//   - ceilings: device-to-device copy bandwidth (bytes read + written), cuBLAS BF16 matmul rate;
//   - floors per T: active experts' NVFP4 bytes over that bandwidth, BF16 FLOPs over that rate;
//   - peer: a BF16 MoE on cuBLAS grouped GEMM, same routing, same process.
// Each forward is a CUDA graph; the median of many replays after warm-up, rotating through
// several input sets (hidden states and routing) so that weights and inputs come from HBM.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "nvfp4moe/moe.hpp"

namespace nvfp4moe::bench {

struct BenchOptions {
  std::string shape = "deepseek-v3";
  std::vector<int64_t> tokens = {1, 8, 64, 256, 1024, 4096, 16384};
  QuantMode mode = QuantMode::kW4A16;
  int repeats = 30;
  int warmup = 3;
  int input_sets = 3;
  bool peer = true;
  uint64_t seed = 1;
  std::string json_path;  // also write the results as JSON here
};

void run_moe_bench(const BenchOptions& options);

// The expert-parallel layer on world sizes 1, 2, 4 .. max_world of this machine's GPUs.
void run_distributed_bench(const BenchOptions& options, int max_world);

}  // namespace nvfp4moe::bench
