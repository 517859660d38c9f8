// The NCCL expert-parallel layer: all-gather + local experts + reduce-scatter.
//
// Workspace: gathered hidden [W*T, H] bf16 | gathered ids [W*T, k] | gathered weights [W*T, k]
//            | sums [W*T, H] fp32 | reduced [T, H] fp32 | the local runner's workspace
#include "nvfp4moe/distributed.hpp"

#include "core/check.hpp"
#include "cuda/combine/combine.hpp"
#include "cuda/common/cuda_check.hpp"
#include "cuda/dist/nccl_api.hpp"
#include "cuda/runtime_cuda.hpp"

namespace nvfp4moe {

ExpertRange expert_range(int64_t num_experts, int world_size, int rank) {
  require(world_size >= 1 && rank >= 0 && rank < world_size, ErrorKind::kInvalidArgument,
          "expert_range: rank {} of world size {}", rank, world_size);
  require(num_experts >= world_size, ErrorKind::kInvalidArgument,
          "expert_range: {} experts cannot give each of {} ranks one", num_experts, world_size);
  const int64_t base = num_experts / world_size, extra = num_experts % world_size;
  return {rank * base + std::min<int64_t>(rank, extra), base + (rank < extra ? 1 : 0)};
}

namespace cuda {
namespace {

size_t align_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

class NcclMoe final : public DistributedMoe {
 public:
  NcclMoe(const MoeConfig& layer, const MoeWeights& weights, const DistributedOptions& o)
      : options_(o) {
    require(o.nccl_comm != nullptr, ErrorKind::kInvalidArgument,
            "distributed MoE: no NCCL communicator");
    require(o.max_tokens_per_rank >= 1, ErrorKind::kInvalidArgument,
            "distributed MoE: max_tokens_per_rank = {}, expected >= 1", o.max_tokens_per_rank);
    const ExpertRange range = expert_range(layer.num_experts, o.world_size, o.rank);
    config_ = layer;
    config_.first_local_expert = range.first;
    config_.num_local_experts = range.count;
    config_.max_tokens = o.world_size * o.max_tokens_per_rank;
    runner_ = make_cuda_runner(config_, weights);

    const size_t all_tokens = size_t(config_.max_tokens);
    const size_t slots = all_tokens * size_t(config_.top_k);
    const size_t hidden = size_t(config_.hidden);
    size_t at = 0;
    auto take = [&at](size_t bytes) {
      const size_t offset = at;
      at += align_up(bytes);
      return offset;
    };
    hidden_ = take(all_tokens * hidden * 2);
    ids_ = take(slots * 4);
    weights_ = take(slots * 4);
    sums_ = take(all_tokens * hidden * 4);
    reduced_ = take(size_t(o.max_tokens_per_rank) * hidden * 4);
    runner_workspace_ = take(runner_->workspace_bytes());
    total_ = at;
  }

  const MoeConfig& local_config() const override { return config_; }
  size_t workspace_bytes() const override { return total_; }

  void forward(const MoeForwardArgs& args, void* workspace, void* stream_handle) override {
    require(args.num_tokens >= 0 && args.num_tokens <= options_.max_tokens_per_rank,
            ErrorKind::kInvalidArgument,
            "distributed forward: {} tokens on rank {}, but at most {} per rank", args.num_tokens,
            options_.rank, options_.max_tokens_per_rank);
    if (args.num_tokens == 0) return;
    require(
        workspace != nullptr && args.hidden && args.topk_ids && args.topk_weights && args.output,
        ErrorKind::kInvalidArgument,
        "distributed forward: workspace, hidden, topk_ids, topk_weights and output are "
        "required");
    const auto stream = static_cast<cudaStream_t>(stream_handle);
    auto* base = static_cast<uint8_t*>(workspace);
    const int64_t tokens = args.num_tokens, k = config_.top_k, hidden = config_.hidden;
    auto* comm = static_cast<ncclComm_t>(options_.nccl_comm);
    NcclApi& nccl = NcclApi::get();

    nccl.check(nccl.group_start(), "ncclGroupStart");
    nccl.check(nccl.all_gather(args.hidden, base + hidden_, size_t(tokens * hidden), ncclBfloat16,
                               comm, stream),
               "ncclAllGather (hidden)");
    nccl.check(
        nccl.all_gather(args.topk_ids, base + ids_, size_t(tokens * k), ncclInt32, comm, stream),
        "ncclAllGather (topk_ids)");
    nccl.check(nccl.all_gather(args.topk_weights, base + weights_, size_t(tokens * k), ncclFloat32,
                               comm, stream),
               "ncclAllGather (topk_weights)");
    nccl.check(nccl.group_end(), "ncclGroupEnd");

    MoeForwardArgs all;
    all.num_tokens = tokens * options_.world_size;
    all.hidden = reinterpret_cast<const uint16_t*>(base + hidden_);
    all.topk_ids = reinterpret_cast<const int32_t*>(base + ids_);
    all.topk_weights = reinterpret_cast<const float*>(base + weights_);
    auto* sums = reinterpret_cast<float*>(base + sums_);
    // Dynamic W4A4 quantizes the intermediate with the amax of the whole batch: every rank's
    // experts, so the ranks agree on it (as uint32 bits: floats >= 0 order like them).
    auto batch_amax = [&](uint32_t* amax_bits, cudaStream_t s) {
      nccl.check(nccl.all_reduce(amax_bits, amax_bits, 1, ncclUint32, ncclMax, comm, s),
                 "ncclAllReduce (intermediate amax)");
    };
    runner_->forward_sums(all, sums, base + runner_workspace_, stream, batch_amax);

    auto* reduced = reinterpret_cast<float*>(base + reduced_);
    nccl.check(nccl.reduce_scatter(sums, reduced, size_t(tokens * hidden), ncclFloat32, ncclSum,
                                   comm, stream),
               "ncclReduceScatter");
    NVFP4MOE_CUDA_CHECK(launch_round_to_bf16(reduced, args.output, tokens * hidden, stream));
  }

  void check_errors(void* stream) override { runner_->check_errors(stream); }

 private:
  DistributedOptions options_;
  MoeConfig config_;
  std::unique_ptr<CudaRunner> runner_;
  size_t hidden_ = 0, ids_ = 0, weights_ = 0, sums_ = 0, reduced_ = 0, runner_workspace_ = 0;
  size_t total_ = 0;
};

}  // namespace
}  // namespace cuda

std::unique_ptr<DistributedMoe> make_distributed_moe(const MoeConfig& layer,
                                                     const MoeWeights& local_weights,
                                                     const DistributedOptions& options) {
  layer.validate();
  return std::make_unique<cuda::NcclMoe>(layer, local_weights, options);
}

}  // namespace nvfp4moe
