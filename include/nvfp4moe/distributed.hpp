// Expert parallelism across GPUs through NCCL (docs/numerics.md §4: each rank holds a contiguous
// range of experts and computes its partial sum; the layer reduces them).
//
// Every rank passes the same number of its own tokens and gets the finished output of its
// tokens, rounded to bf16 once, as on a single GPU. Two transports:
//   kAllGather  all-gathers the hidden states and routing of all ranks, runs this rank's
//               experts over all of them, and reduce-scatters the fp32 partial sums (NCCL
//               collectives; any NCCL, any topology).
//   kAllToAll   sends each token only to the ranks that own one of its experts and only their
//               fp32 sums back (NCCL's device API, >= 2.28: kernels store straight into the
//               peers' symmetric windows over NVLink; every rank must be load/store reachable,
//               i.e. one node). Traffic follows the routing, so it grows with world size less
//               than the all-gather's.
// No host synchronization, so a rank's forward can be captured in a CUDA graph; run one forward
// eagerly before capturing, since NCCL connects its peers on first use. NCCL is loaded at run
// time (libnccl.so.2, or the path in NVFP4MOE_NCCL).
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

enum class Transport { kAllGather, kAllToAll };
const char* to_string(Transport transport);

struct DistributedOptions {
  int world_size = 1;
  int rank = 0;
  void* nccl_comm = nullptr;  // an ncclComm_t of this rank, on the current device
  int64_t max_tokens_per_rank = 0;
  Transport transport = Transport::kAllGather;
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
// on the current CUDA device. With kAllToAll, making the layer is collective (it registers a
// symmetric window): every rank makes its layer at the same time, from its own thread or
// process, and destroys it likewise.
std::unique_ptr<DistributedMoe> make_distributed_moe(const MoeConfig& layer,
                                                     const MoeWeights& local_weights,
                                                     const DistributedOptions& options);

}  // namespace nvfp4moe
