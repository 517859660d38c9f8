// Routing on the device: per-expert counts, offsets, the sorted order of (token, slot) pairs
// and the GEMM tile table, with no host round trip. Launchers take raw pointers, sizes and a
// stream; they never allocate or synchronize.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common/routed.hpp"
#include "nvfp4moe/moe.hpp"

namespace nvfp4moe::cuda {

// Bits of the runner's device error word (public: nvfp4moe/moe.hpp).
using nvfp4moe::kErrorBadExpertId;
using nvfp4moe::kErrorNonFiniteActivation;

struct RouteParams {
  const int32_t* topk_ids = nullptr;  // [T, k] global ids
  int32_t num_slots = 0;              // T * k
  int32_t num_experts = 0;            // global
  int32_t first_local_expert = 0;
  int32_t num_local_experts = 0;
  int32_t tile_tokens = 8;  // GEMM tile width the table is cut for

  // Outputs (workspace). counts and cursors must be zero on entry unless route_single_launch.
  int32_t* counts = nullptr;         // [E_local]
  int32_t* cursors = nullptr;        // [E_local]
  int32_t* offsets = nullptr;        // [E_local + 1]; offsets[E_local] = routed slots
  GemmTile* tiles = nullptr;         // [max tiles]
  int32_t* num_tiles = nullptr;      // [1]
  int32_t* sorted_slot = nullptr;    // [T * k] slot (t * k + j) of each sorted position
  int32_t* sorted_expert = nullptr;  // [T * k] local expert of each sorted position
  uint32_t* error_flags = nullptr;

  // Zeroed on the way (the combine's fp32 sums), by the single-launch kernel when it is small,
  // else by a memset; none when null. 16-byte aligned, a multiple of 16 bytes.
  void* zero = nullptr;
  int64_t zero_bytes = 0;
};

// Whether routing takes the single-launch kernel, which keeps its counts in shared memory (so the
// workspace's counts and cursors need not be zero).
bool route_single_launch(int64_t num_slots, int64_t num_local_experts);

// The most tiles a table can need: sum over experts of ceil(count / tile), which is at most
// slots / tile + E and at most slots (every tile holds a slot). The GEMM grid is launched at
// this bound; at T = 1 it is 8 tiles rather than E + 1.
inline int64_t max_route_tiles(int64_t num_slots, int64_t num_local_experts, int tile_tokens) {
  const int64_t by_experts = (num_slots + tile_tokens - 1) / tile_tokens + num_local_experts;
  return num_slots < by_experts ? num_slots : by_experts;
}

// count -> scan (offsets and tiles) -> scatter: one launch for up to 8192 slots and 4096 local
// experts, three beyond.
cudaError_t launch_route(const RouteParams& params, cudaStream_t stream);

}  // namespace nvfp4moe::cuda
