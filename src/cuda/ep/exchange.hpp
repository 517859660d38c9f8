// The all-to-all of only the routed tokens, on NCCL's device API (LSA: every rank's symmetric
// window is load/store reachable over NVLink). Three launches per forward:
//
//   dispatch  barrier; each token goes once to every rank that owns one of its experts: the
//             sender claims a row of that rank's window with a system-scope atomic on its
//             counter and writes the hidden row, the k ids and weights, and where it came from;
//             barrier (the rows are visible to their receivers)
//   (the receiver runs its experts over its received rows into fp32 sums)
//   return    each received row's fp32 sum goes back to its source, into the region the source
//             keeps for this rank; barrier
//   reduce    each rank adds, per token, the sums of the ranks it sent the token to, in rank
//             order, and rounds to bf16 once (single-GPU numerics); then zeroes its counter and
//             sets the received rows' ids back to -1, so that in the next forward the rows past
//             the counter route nowhere
//
// Window layout (the same offsets on every rank; rows = world * max_tokens_per_rank):
//   counter int32, received int32 (the count the return kernel saw) | hidden [rows, H] bf16 | ids
//   [rows, k] int32 | weights [rows, k] fp32 | source [rows] int32 (source rank *
//   max_tokens_per_rank + token) | returned [world, max_tokens_per_rank, H] fp32 (region q: the
//   sums rank q sent back)
//
// Why the barriers are enough: the first barrier of forward i+1 on rank r waits for every rank
// to have started forward i+1, so for their forward i to have finished (stream order): no rank
// still reads the rows, returns or counter it is about to overwrite. NOTE: the barriers pair
// block b of every rank, so the grid must be the same on every rank and all blocks resident at
// once (kExchangeBlocks is far below the SM count). Destinations are a 32-bit mask: at most 32
// ranks.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>
#include <nccl_device/impl/comm__types.h>

#include <cstddef>
#include <cstdint>

#include "cuda/route/route.hpp"

namespace nvfp4moe::cuda {

inline constexpr int kExchangeBlocks = 64;  // also the number of LSA barriers to request
inline constexpr int kExchangeMaxRanks = 32;
inline constexpr int kExchangeMaxTopK = 32;  // one lane of a warp per routing slot

// The exchange's error word takes the runner's bits (route.hpp: kErrorBadExpertId for ids
// outside [-1, E), kErrorNonFiniteActivation from the input amax) and one of its own.
inline constexpr uint32_t kErrorExchangeOverflow = 4u;  // ranks passed different token counts
static_assert((kErrorExchangeOverflow & (kErrorBadExpertId | kErrorNonFiniteActivation)) == 0,
              "the exchange's own error bit must not be one of the runner's");

struct ExchangeWindow {
  size_t counter = 0, hidden = 0, ids = 0, weights = 0, source = 0, returned = 0;
  size_t bytes = 0;  // the whole window
};

// Byte offsets of the window for these sizes (a pure function).
ExchangeWindow exchange_window(int world_size, int64_t max_tokens_per_rank, int64_t hidden,
                               int64_t top_k);

struct ExchangeParams {
  ncclDevComm comm{};
  ncclWindow_t window = nullptr;
  ExchangeWindow at;
  int32_t world_size = 1, rank = 0;
  int32_t num_experts = 0;
  int32_t experts_base = 0, experts_extra = 0;  // expert_range: base each, one more for the first
  int32_t hidden = 0, top_k = 0;
  int32_t tokens = 0;  // this forward's tokens per rank
  int32_t max_tokens_per_rank = 0;

  const uint16_t* local_hidden = nullptr;  // [tokens, H] this rank's tokens
  const int32_t* local_ids = nullptr;      // [tokens, k] global ids, -1 = none
  const float* local_weights = nullptr;    // [tokens, k]
  const float* sums = nullptr;             // [world * tokens, H] the received rows' fp32 sums
  uint16_t* output = nullptr;              // [tokens, H]
  uint32_t* error_flags = nullptr;
};

cudaError_t launch_dispatch(const ExchangeParams& params, cudaStream_t stream);
cudaError_t launch_return(const ExchangeParams& params, cudaStream_t stream);
cudaError_t launch_reduce(const ExchangeParams& params, cudaStream_t stream);

}  // namespace nvfp4moe::cuda
