// The grouped NVFP4 x bf16 GEMM on Hopper's warpgroup MMA (sm_90a), for tiles of many tokens.
// Same "swap AB" as the mma.sync kernel: weights are the A operand (M = output features), the
// tile's tokens the B operand (N), so the prepared layout, the decode and the epilogues are
// shared (gemm_common.cuh).
//
// Warp-specialized block over a kStages-deep ring in shared memory; stage s holds one 64-wide K
// chunk: the tile's tokens (128-byte-swizzled rows) and the block's weights (each row group's
// 512 code bytes and 64 scale bytes, as prepared).
//   producer  = warpgroup 0 (few registers): copies each chunk's tokens and weights into its
//               stage with cp.async and publishes the stage on its `full` mbarrier once its
//               copies have landed. The weights are the stream that bounds the small batches;
//               the ring keeps 74-147 KB of them in flight per SM, more than registers could
//   consumers = kConsumers warpgroups (many registers); consumer warp w owns kGroups 16-row
//               groups from (blockIdx.x * 4 * kConsumers + w) * kGroups; group i of the
//               warpgroup's 4 warps forms the 64-row A tile of its i-th MMA. Each reads its words
//               of chunk c+1 from the stage and decodes them exactly to bf16 straight into wgmma's
//               register operand (a warp's register fragment in m64nNk16 is mma.m16n8k16's A
//               fragment) while chunk c's MMAs run, then frees chunk c-1's stage (`empty`)
//   units     = the tile is cut into kUnitN-token units; a unit with no token is skipped, so a
//               tile of up to kTileTokens costs what it holds (rounded up to kUnitN)
//
//   epilogue  = from registers (gated activation, plain store), or for the weighted combine
//               through the drained ring in shared memory, so each lane adds 4 consecutive
//               features of a token with one vector reduction
//
// This file holds the block's configuration and the kernel; the producer's weight copies and
// the consumers' K loop are wgmma_mainloop.cuh, the epilogues wgmma_epilogue.cuh.
//
// No block-wide barrier after set-up: the warpgroups meet at the mbarriers, and the consumers
// once more before the combine epilogue reuses the ring.
#pragma once

#include <algorithm>
#include <cstdint>

#include "cuda/sm90/gemm_common.cuh"
#include "cuda/sm90/wgmma.cuh"
#include "cuda/sm90/wgmma_epilogue.cuh"
#include "cuda/sm90/wgmma_mainloop.cuh"

namespace nvfp4moe::cuda {

template <int kConsumers_, int kGroups_, int kTileTokens_, int kUnitN_, int kStages_>
struct WgmmaConfig {
  static constexpr int kConsumers = kConsumers_;  // consumer warpgroups
  static constexpr int kGroups = kGroups_;        // 16-row groups per consumer warp
  static constexpr int kTileTokens = kTileTokens_;
  static constexpr int kUnitN = kUnitN_;
  static constexpr int kStages = kStages_;
  static constexpr int kConsumerWarps = 4 * kConsumers;
  static constexpr int kBlockGroups = kConsumerWarps * kGroups;  // row groups per block
  static constexpr int kProducerThreads = 128;
  static constexpr int kThreads = kProducerThreads + 128 * kConsumers;
  using Loader = TokenLoader<kTileTokens, kProducerThreads>;
  // Register budgets (multiples of 8): the block is launched with kLaunchRegisters per thread
  // (what __launch_bounds__ lets ptxas give it); the producer keeps what its copies need and the
  // consumers' accumulators get the rest of that pool. A consumer budget beyond the pool would
  // make setmaxnreg.inc wait forever.
  static constexpr int kLaunchRegisters = std::min(255, 64 * 1024 / kThreads) / 8 * 8;
  // The producers of up to 64-token tiles (four token copies per thread at most) fit in 32,
  // which leaves the 16-token tiles' four consumer warpgroups the 112 registers they need and the
  // 64-token tiles' three the 160.
  static constexpr int kProducerRegisters = Loader::kLoadsPerThread > 8   ? 56
                                            : Loader::kLoadsPerThread > 4 ? 40
                                                                          : 32;
  static constexpr int kConsumerRegisters =
      std::min(240, (kLaunchRegisters * kThreads - kProducerThreads * kProducerRegisters) /
                        (128 * kConsumers) / 8 * 8);
  // Where chunk c (>= 0) lives in the ring, and the parity of its round through it.
  static __device__ __forceinline__ uint32_t stage_of(int chunk) {
    return static_cast<uint32_t>(chunk) % kStages;
  }
  static __device__ __forceinline__ uint32_t phase_of(int chunk) {
    return static_cast<uint32_t>(chunk) / kStages & 1u;
  }
  static constexpr int kUnits = kTileTokens / kUnitN;
  // The last unit narrowed to the tokens it holds (16, 32 or 64 wide), for 64-token units.
  // NOTE: measured T = 2048 / 4096 5% / 2% faster with 64-token units, but T = 768 3% slower
  // with 32-token units (narrowed to 8 or 16).
  static constexpr bool kNarrowTail = kUnitN == 64;
  using Mma = wgmma::Mma<kUnitN>;
  // A consumer warp's results: [row group][unit][accumulator of the unit's m64nNk16].
  using Accumulators = float[kGroups][kUnits][Mma::kAccumulators];
  // A stage: tokens, then the codes and the scales of the block's row groups.
  static constexpr int kTokenBytes = Loader::kStageElements * 2;
  static constexpr int kCodeBytes = kBlockGroups * kCodeBytesPerChunk;
  static constexpr int kScaleBytes = kBlockGroups * kScaleBytesPerChunk;
  static constexpr int kStageBytes = (kTokenBytes + kCodeBytes + kScaleBytes + 1023) / 1024 * 1024;
  // The weighted-combine epilogue reuses the ring: per consumer warp, its tile of
  // [token][16 * kGroups features] fp32 results, rows padded by 4 floats (conflict-free writes of
  // the MMA fragments, 16-byte reads along a row).
  static constexpr int kCombineStride = 16 * kGroups + 4;
  static constexpr int kCombineBytes = kConsumerWarps * kTileTokens * kCombineStride * 4;
  // The ring (or the combine tiles), plus slack to start it on a 1024-byte boundary (the
  // swizzle's period).
  static constexpr int kSmemBytes = std::max(kStages * kStageBytes, kCombineBytes) + 1024;
  static_assert(kUnitN == 8 || kUnitN == 32 || kUnitN == 64,
                "wgmma::Mma has 8-, 32- and 64-token units");
  static_assert(kTileTokens % kUnitN == 0, "a tile is whole N units");
  static_assert(kUnits <= 4, "up to 4 units per tile");
  static_assert(kTileTokens <= 32 * kConsumerWarps, "one consumer thread per token fetches");
  static_assert(kTokenBytes % 1024 == 0, "each stage's tokens must start 1024-byte aligned");
  static_assert(kStages >= 4, "two stages read by MMAs, at least one in flight");
  static_assert((kStages & (kStages - 1)) == 0, "a power of two: the stage is a mask");
  static_assert(kSmemBytes <= 227 * 1024, "the ring must fit in shared memory");
};

// A consumer warp: the mainloop (wgmma_mainloop.cuh) between the epilogue's fetch of its
// targets and its stores (wgmma_epilogue.cuh).
template <class Cfg, Epilogue kEpilogue>
__device__ __forceinline__ void wgmma_consume(const GemmParams& p, const BlockTile& tile,
                                              uint64_t* full, uint64_t* empty, uint8_t* ring,
                                              uint32_t ring_address, CombineTargets targets,
                                              int consumer_warp, int lane) {
  fetch_combine_targets<Cfg, kEpilogue>(p, tile, targets, consumer_warp, lane);
  typename Cfg::Accumulators acc;
  wgmma_mainloop<Cfg>(p, tile, full, empty, ring, ring_address, consumer_warp, lane, acc);
  wgmma_epilogue<Cfg, kEpilogue>(p, tile, acc, ring, targets, consumer_warp, lane);
}

template <class Cfg, Epilogue kEpilogue>
__global__ void __launch_bounds__(Cfg::kThreads, 1) wgmma_gemm_kernel(const GemmParams p) {
  extern __shared__ uint8_t smem_raw[];
  __shared__ uint64_t full[Cfg::kStages];   // stage holds its chunk (producer threads arrive)
  __shared__ uint64_t empty[Cfg::kStages];  // stage may be refilled (consumer threads arrive)
  __shared__ int64_t combine_row[Cfg::kTileTokens];  // the down GEMM's epilogue only
  __shared__ float combine_weight[Cfg::kTileTokens];
  const uint32_t raw_address = ptx::smem_address(smem_raw);
  const uint32_t align = (1024 - (raw_address & 1023)) & 1023;
  uint8_t* ring = smem_raw + align;
  const uint32_t ring_address = raw_address + align;

  // Launched programmatically, the kernel ahead may still be running (gemm_params.hpp).
  ptx::wait_prerequisite_grids();
  ptx::allow_dependent_grids();
  const BlockTile tile = block_tile(p, Cfg::kTileTokens);
  if (tile.rows <= 0) return;  // uniform across the block

  if (threadIdx.x == 0) {
    for (int s = 0; s < Cfg::kStages; ++s) {
      ptx::mbarrier_init(&full[s], Cfg::kProducerThreads);
      ptx::mbarrier_init(&empty[s], Cfg::kConsumerWarps * 32);
    }
  }
  __syncthreads();

  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;

  // ---- Producer ---------------------------------------------------------------------------
  if (warp < 4) {
    ptx::set_max_registers_dec<Cfg::kProducerRegisters>();
    const typename Cfg::Loader loader(p, tile);
    const WeightLoader<Cfg> weights(p, tile.expert);
    for (int chunk = 0; chunk < p.k_chunks; ++chunk) {
      // NOTE: a signed stage index, not Cfg::stage_of: the unsigned one cost this 40-register
      // warpgroup three registers and spilled the 128-token tiles.
      const int stage = chunk % Cfg::kStages;
      uint8_t* stage_base = ring + stage * Cfg::kStageBytes;
      if (chunk >= Cfg::kStages) ptx::mbarrier_wait(&empty[stage], (chunk / Cfg::kStages - 1) & 1);
      weights.load(chunk, stage_base);
      loader.load(p, chunk, reinterpret_cast<uint16_t*>(stage_base));
      // The stage is published when these copies land; the thread goes on to the next stage.
      ptx::cp_async_mbarrier_arrive(&full[stage]);
    }
    ptx::cp_async_wait<0>();  // no copy outlives its thread
  } else {
    // ---- Consumers --------------------------------------------------------------------------
    ptx::set_max_registers_inc<Cfg::kConsumerRegisters>();
    wgmma_consume<Cfg, kEpilogue>(p, tile, full, empty, ring, ring_address,
                                  CombineTargets{combine_row, combine_weight}, warp - 4, lane);
  }
}

}  // namespace nvfp4moe::cuda
