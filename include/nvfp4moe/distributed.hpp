// Expert parallelism across GPUs through NCCL (DESIGN §4: each rank holds a contiguous range
// of experts and computes its partial sum; the layer reduces them).
//
// Every rank passes the same number of its own tokens. forward all-gathers the hidden states
// and routing of all ranks, runs this rank's experts over all of them, and reduce-scatters the
// fp32 partial sums so that each rank gets the finished output of its tokens, rounded to bf16
// once, as on a single GPU. No host synchronization, so a rank's forward can be captured in a
// CUDA graph; run one forward eagerly before capturing, since NCCL connects its peers on first
// use. NCCL is loaded at run time (libnccl.so.2, or the path in NVFP4MOE_NCCL).
#pragma once

#include <cstdint>
#include <memory>

#include "nvfp4moe/moe.hpp"

namespace nvfp4moe {

struct ExpertRange {
  int64_t first = 0;
  int64_t count = 0;
};

// The contiguous experts of `rank`: num_experts / world_size each, the remainder going one each
// to the first ranks.
ExpertRange expert_range(int64_t num_experts, int world_size, int rank);

struct DistributedOptions {
  int world_size = 1;
  int rank = 0;
  void* nccl_comm = nullptr;  // an ncclComm_t of this rank, on the current device
  int64_t max_tokens_per_rank = 0;
};

class DistributedMoe {
 public:
  virtual ~DistributedMoe() = default;
  // This rank's view: its expert range and max_tokens = world_size * max_tokens_per_rank.
  virtual const MoeConfig& local_config() const = 0;
  virtual size_t workspace_bytes() const = 0;
  // args: this rank's tokens (the same count on every rank); args.output gets their outputs.
  virtual void forward(const MoeForwardArgs& args, void* workspace, void* stream) = 0;
  virtual void check_errors(void* stream) = 0;
};

// `layer`: the whole layer (num_experts = all experts; its expert range and max_tokens are
// replaced); `local_weights`: the experts of expert_range(layer.num_experts, world, rank). Made
// on the current CUDA device.
std::unique_ptr<DistributedMoe> make_distributed_moe(const MoeConfig& layer,
                                                     const MoeWeights& local_weights,
                                                     const DistributedOptions& options);

}  // namespace nvfp4moe
