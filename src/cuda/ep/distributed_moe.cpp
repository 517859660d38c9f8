// The NCCL expert-parallel layer, with either transport (distributed.hpp).
//
// All-gather workspace: gathered hidden [W*T, H] bf16 | gathered ids [W*T, k] | gathered
//   weights [W*T, k] | sums [W*T, H] fp32 | reduced [T, H] fp32 | the local runner's workspace
// All-to-all workspace: sums [W*T, H] fp32 | the local runner's workspace; the received rows and
//   returned sums live in the layer's own symmetric window (exchange.hpp).
#include "nvfp4moe/distributed.hpp"

#include "core/check.hpp"
#include "cuda/combine/combine.hpp"
#include "cuda/common/cuda_check.hpp"
#include "cuda/common/regions.hpp"
#include "cuda/ep/exchange.hpp"
#include "cuda/ep/nccl_api.hpp"
#include "cuda/quant/quant.hpp"
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

const char* to_string(Transport transport) {
  switch (transport) {
    case Transport::kAllGather:
      return "all-gather";
    case Transport::kAllToAll:
      return "all-to-all";
  }
  return "?";
}

namespace cuda {
namespace {

// This rank's runner config: its expert range, and room for every rank's tokens.
MoeConfig local_layer(const MoeConfig& layer, const DistributedOptions& o) {
  require(o.nccl_comm != nullptr, ErrorKind::kInvalidArgument,
          "distributed MoE: no NCCL communicator");
  require(o.max_tokens_per_rank >= 1, ErrorKind::kInvalidArgument,
          "distributed MoE: max_tokens_per_rank = {}, expected >= 1", o.max_tokens_per_rank);
  const ExpertRange range = expert_range(layer.num_experts, o.world_size, o.rank);
  MoeConfig config = layer;
  config.first_local_expert = range.first;
  config.num_local_experts = range.count;
  config.max_tokens = o.world_size * o.max_tokens_per_rank;
  return config;
}

// Dynamic W4A4 takes its global scales from the amax of the whole batch, every rank's tokens
// or experts: the maximum over ranks of each rank's own amax word (bits of a float >= 0, which
// order like the floats), in place, on the stream.
AmaxHook all_reduce_amax(ncclComm_t comm) {
  return [comm](uint32_t* amax_bits, cudaStream_t stream) {
    NcclApi& nccl = NcclApi::get();
    nccl.check(nccl.all_reduce(amax_bits, amax_bits, 1, ncclUint32, ncclMax, comm, stream),
               "ncclAllReduce (amax)");
  };
}

// What both transports share: this rank's config and runner, and the checks of forward.
class NcclMoeBase : public DistributedMoe {
 public:
  NcclMoeBase(const MoeConfig& layer, const DistributedOptions& o)
      : options_(o), config_(local_layer(layer, o)) {}

  const MoeConfig& local_config() const override { return config_; }
  size_t workspace_bytes() const override { return total_; }

  void forward(const MoeForwardArgs& args, void* workspace, void* stream) final {
    require(args.num_tokens >= 0 && args.num_tokens <= options_.max_tokens_per_rank,
            ErrorKind::kInvalidArgument,
            "distributed forward: {} tokens on rank {}, but at most {} per rank", args.num_tokens,
            options_.rank, options_.max_tokens_per_rank);
    if (args.num_tokens == 0) return;
    require(
        workspace != nullptr && args.hidden && args.topk_ids && args.topk_weights && args.output,
        ErrorKind::kInvalidArgument,
        "distributed forward: workspace, hidden, topk_ids, topk_weights and output are required");
    run(args, static_cast<uint8_t*>(workspace), static_cast<cudaStream_t>(stream));
  }

 protected:
  // forward after its checks, with at least one token.
  virtual void run(const MoeForwardArgs& args, uint8_t* workspace, cudaStream_t stream) = 0;

  DistributedOptions options_;
  MoeConfig config_;
  std::unique_ptr<CudaRunner> runner_;
  size_t total_ = 0;  // workspace bytes
};

class AllGatherMoe final : public NcclMoeBase {
 public:
  AllGatherMoe(const MoeConfig& layer, const MoeWeights& weights, const DistributedOptions& o)
      : NcclMoeBase(layer, o) {
    runner_ = make_cuda_runner(config_, weights);

    const size_t all_tokens = size_t(config_.max_tokens);
    const size_t slots = all_tokens * size_t(config_.top_k);
    const size_t hidden = size_t(config_.hidden);
    Regions regions;
    hidden_ = regions.take(all_tokens * hidden * 2);
    ids_ = regions.take(slots * 4);
    weights_ = regions.take(slots * 4);
    sums_ = regions.take(all_tokens * hidden * 4);
    reduced_ = regions.take(size_t(o.max_tokens_per_rank) * hidden * 4);
    runner_workspace_ = regions.take(runner_->workspace_bytes());
    total_ = regions.end();
  }

  void check_errors(void* stream) override { runner_->check_errors(stream); }

 private:
  void run(const MoeForwardArgs& args, uint8_t* base, cudaStream_t stream) override {
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
    ForwardExtras extras;
    extras.intermediate_amax = all_reduce_amax(comm);
    runner_->forward_sums(all, sums, base + runner_workspace_, stream, extras);

    auto* reduced = reinterpret_cast<float*>(base + reduced_);
    nccl.check(nccl.reduce_scatter(sums, reduced, size_t(tokens * hidden), ncclFloat32, ncclSum,
                                   comm, stream),
               "ncclReduceScatter");
    NVFP4MOE_CUDA_CHECK(launch_round_to_bf16(reduced, args.output, tokens * hidden, stream));
  }

  size_t hidden_ = 0, ids_ = 0, weights_ = 0, sums_ = 0, reduced_ = 0, runner_workspace_ = 0;
};

class AllToAllMoe final : public NcclMoeBase {
 public:
  AllToAllMoe(const MoeConfig& layer, const MoeWeights& weights, const DistributedOptions& o)
      : NcclMoeBase(layer, o) {
    require(o.world_size <= kExchangeMaxRanks, ErrorKind::kUnsupported,
            "the all-to-all transport: world size {}, at most {}", o.world_size, kExchangeMaxRanks);
    require(config_.top_k <= kExchangeMaxTopK, ErrorKind::kUnsupported,
            "the all-to-all transport: top_k = {}, at most {}", config_.top_k, kExchangeMaxTopK);
    NcclApi& nccl = NcclApi::get();
    nccl.require_device_api("the all-to-all transport");
    runner_ = make_cuda_runner(config_, weights);
    comm_ = static_cast<ncclComm_t>(o.nccl_comm);
    window_at_ =
        exchange_window(o.world_size, o.max_tokens_per_rank, config_.hidden, config_.top_k);
    nccl.check(nccl.mem_alloc(&window_memory_, window_at_.bytes), "ncclMemAlloc (window)");
    auto* base = static_cast<uint8_t*>(window_memory_);
    // No rows received yet, and every row's ids -1 (exchange.hpp); zero rows are finite.
    NVFP4MOE_CUDA_CHECK(cudaMemset(base, 0, window_at_.bytes));
    NVFP4MOE_CUDA_CHECK(
        cudaMemset(base + window_at_.ids, 0xFF, window_at_.weights - window_at_.ids));
    NVFP4MOE_CUDA_CHECK(cudaDeviceSynchronize());  // before any peer can store into it
    nccl.check(nccl.window_register(comm_, window_memory_, window_at_.bytes, &window_,
                                    NCCL_WIN_COLL_SYMMETRIC),
               "ncclCommWindowRegister");
    ncclDevCommRequirements_t requirements{};
    requirements.lsaBarrierCount = kExchangeBlocks;
    nccl.check(nccl.dev_comm_create(comm_, &requirements, &dev_comm_), "ncclDevCommCreate");
    dev_comm_created_ = true;
    require(dev_comm_.lsaSize == o.world_size && dev_comm_.lsaRank == o.rank,
            ErrorKind::kUnsupported,
            "the all-to-all transport needs every rank load/store reachable (one NVLink "
            "domain): rank {} of {} reaches {} ranks directly (lsa rank {})",
            o.rank, o.world_size, dev_comm_.lsaSize, dev_comm_.lsaRank);
    error_flags_ = DeviceMemory(sizeof(uint32_t));
    device_memset(error_flags_.get(), 0, sizeof(uint32_t));

    exchange_.comm = dev_comm_;
    exchange_.window = window_;
    exchange_.at = window_at_;
    exchange_.world_size = o.world_size;
    exchange_.rank = o.rank;
    exchange_.num_experts = static_cast<int32_t>(config_.num_experts);
    exchange_.experts_base = static_cast<int32_t>(config_.num_experts / o.world_size);
    exchange_.experts_extra = static_cast<int32_t>(config_.num_experts % o.world_size);
    exchange_.hidden = static_cast<int32_t>(config_.hidden);
    exchange_.top_k = static_cast<int32_t>(config_.top_k);
    exchange_.max_tokens_per_rank = static_cast<int32_t>(o.max_tokens_per_rank);
    exchange_.error_flags = error_flags_.get<uint32_t>();

    Regions regions;
    sums_ = regions.take(size_t(config_.max_tokens) * size_t(config_.hidden) * 4);
    runner_workspace_ = regions.take(runner_->workspace_bytes());
    total_ = regions.end();
  }

  ~AllToAllMoe() override {
    NcclApi& nccl = NcclApi::get();
    if (dev_comm_created_) nccl.dev_comm_destroy(comm_, &dev_comm_);
    if (window_ != nullptr) nccl.window_deregister(comm_, window_);
    if (window_memory_ != nullptr) nccl.mem_free(window_memory_);
  }
  AllToAllMoe(const AllToAllMoe&) = delete;
  AllToAllMoe& operator=(const AllToAllMoe&) = delete;

 private:
  void run(const MoeForwardArgs& args, uint8_t* base, cudaStream_t stream) override {
    auto* window = static_cast<uint8_t*>(window_memory_);
    const int64_t tokens = args.num_tokens;

    ExchangeParams exchange = exchange_;  // the layer's part, set once
    exchange.tokens = static_cast<int32_t>(tokens);
    exchange.local_hidden = args.hidden;
    exchange.local_ids = args.topk_ids;
    exchange.local_weights = args.topk_weights;
    exchange.sums = reinterpret_cast<const float*>(base + sums_);
    exchange.output = args.output;
    NVFP4MOE_CUDA_CHECK(launch_dispatch(exchange, stream));

    // The received rows: at most W * T, the first *counter of them filled.
    auto* received = reinterpret_cast<const int32_t*>(window + window_at_.counter);
    MoeForwardArgs rows;
    rows.num_tokens = tokens * options_.world_size;
    rows.hidden = reinterpret_cast<const uint16_t*>(window + window_at_.hidden);
    rows.topk_ids = reinterpret_cast<const int32_t*>(window + window_at_.ids);
    rows.topk_weights = reinterpret_cast<const float*>(window + window_at_.weights);
    ForwardExtras extras;
    extras.device_rows = received;
    const AmaxHook all_reduce = all_reduce_amax(comm_);
    // Dynamic W4A4: this rank's own tokens' amax, then the maximum over ranks.
    extras.input_amax = [&](uint32_t* amax_bits, cudaStream_t s) {
      QuantizeSource own;
      own.input = args.hidden;
      own.input_row_stride = config_.hidden;
      own.cols = static_cast<int32_t>(config_.hidden);
      own.max_rows = tokens;
      own.error_flags = error_flags_.get<uint32_t>();
      NVFP4MOE_CUDA_CHECK(launch_amax(own, amax_bits, s));
      all_reduce(amax_bits, s);
    };
    extras.intermediate_amax = all_reduce;
    runner_->forward_sums(rows, reinterpret_cast<float*>(base + sums_), base + runner_workspace_,
                          stream, extras);

    NVFP4MOE_CUDA_CHECK(launch_return(exchange, stream));
    NVFP4MOE_CUDA_CHECK(launch_reduce(exchange, stream));
  }

 public:
  void check_errors(void* stream) override {
    runner_->check_errors(stream);
    NVFP4MOE_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
    uint32_t flags = 0;
    copy_to_host(&flags, error_flags_.get(), sizeof flags);
    device_memset(error_flags_.get(), 0, sizeof flags);
    require(!(flags & kErrorExchangeOverflow), ErrorKind::kInvalidArgument,
            "distributed forward: the ranks passed different token counts (rank {} received "
            "more rows than world_size * its own count); every rank must pass the same count",
            options_.rank);
    raise_device_errors(flags, config_.num_experts, "distributed forward");
  }

 private:
  ncclComm_t comm_ = nullptr;
  ExchangeWindow window_at_;
  void* window_memory_ = nullptr;
  ncclWindow_t window_ = nullptr;
  ncclDevComm_t dev_comm_{};
  bool dev_comm_created_ = false;
  DeviceMemory error_flags_;
  ExchangeParams exchange_;  // all but the per-forward fields (tokens and pointers)
  size_t sums_ = 0, runner_workspace_ = 0;
};

}  // namespace
}  // namespace cuda

std::unique_ptr<DistributedMoe> make_distributed_moe(const MoeConfig& layer,
                                                     const MoeWeights& local_weights,
                                                     const DistributedOptions& options) {
  layer.validate();
  switch (options.transport) {
    case Transport::kAllGather:
      return std::make_unique<cuda::AllGatherMoe>(layer, local_weights, options);
    case Transport::kAllToAll:
      return std::make_unique<cuda::AllToAllMoe>(layer, local_weights, options);
  }
  throw Error(ErrorKind::kInvalidArgument, "make_distributed_moe: unknown transport");
}

}  // namespace nvfp4moe
