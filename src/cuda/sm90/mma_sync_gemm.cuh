// The grouped NVFP4 x bf16 GEMM on mma.sync for few tokens per expert, "swap AB": weights are the
// A operand (M = output features), tokens the B operand (N), so an expert with 1 token wastes at
// most 7 of 8 columns. Tiles of more tokens go to the wgmma kernel (wgmma_gemm.cuh).
//
//   block   = kWarps warps; grid.x walks row blocks of the expert's matrix, grid.y the tiles
//             (expert, up to 8 consecutive sorted tokens) the router built on the device
//   A       = prepared NVFP4 weights, 16 bytes per lane per 64-wide K chunk straight from global
//             memory into registers (kAPrefetch chunks in flight), decoded exactly to bf16
//   B       = the tile's tokens, a ring of kSlots chunks in shared memory filled with cp.async
//             in batches of kBatch chunks, 16-byte pieces XOR-swizzled by row so ldmatrix is
//             conflict-free (gemm_common.cuh)
//
//   epilogue = per Epilogue: fused gated activation, weighted combine, or plain store
#pragma once

#include <cstdint>

#include "cuda/sm90/gemm_common.cuh"

namespace nvfp4moe::cuda {

template <int kWarps_, int kGroupsPerWarp_, int kTileTokens_, int kAPrefetch_>
struct GemmConfig {
  static constexpr int kWarps = kWarps_;
  static constexpr int kGroupsPerWarp = kGroupsPerWarp_;
  static constexpr int kTileTokens = kTileTokens_;
  // Weight chunks in flight per warp beyond the one being computed: deeper for few tokens,
  // where the loop is a stream of weight bytes and latency must be covered by loads in flight.
  static constexpr int kAPrefetch = kAPrefetch_;
  static constexpr int kThreads = kWarps * 32;
  // The tokens' ring: kSlots chunks, copied and published in batches of kBatch chunks (one
  // barrier and one round of copies per batch), kBatches - 1 batches ahead of the MMAs.
  // NOTE: powers of two, so a chunk's slot is a mask, not a division (3 instructions of ~150 per
  // chunk and warp at T = 1, ncu).
  static constexpr int kBatch = 4;
  static constexpr int kBatches = 4;
  static constexpr int kSlots = kBatch * kBatches;
  // A chunk's 8 x 64 tokens are 64 copies of 16 bytes: each group of 64 threads copies every
  // kCopyGroups-th chunk of a batch, so every thread copies kBatch / kCopyGroups per batch.
  static constexpr int kCopyGroups = kThreads / 64;
  using Loader = TokenLoader<kTileTokens, 64>;
  static constexpr int kSlotElements = Loader::kStageElements;  // bf16 per chunk
  static constexpr int kSmemBytes = kSlots * kSlotElements * 2;
  static_assert(kTileTokens == 8, "8-token tiles: one n8 MMA per A fragment");
  static_assert(kSmemBytes <= 48 * 1024, "the B ring must fit in static shared memory");
  static_assert(kAPrefetch >= 1 && kAPrefetch <= 8, "1 to 8 weight chunks in flight");
  static_assert((kAPrefetch + 1) % kBatch == 0, "the loop's unroll holds whole batches");
  static_assert(kThreads % 64 == 0 && kBatch % kCopyGroups == 0, "whole chunks per thread group");
};

template <class Cfg, Epilogue kEpilogue>
__global__ void __launch_bounds__(Cfg::kThreads) mma_sync_gemm_kernel(const GemmParams p) {
  __shared__ alignas(128) uint16_t smem_b[Cfg::kSlots * Cfg::kSlotElements];

  // Launched programmatically, the kernel ahead may still be running (gemm_params.hpp).
  if (!p.prefetch_before_wait) {
    ptx::wait_prerequisite_grids();
    ptx::allow_dependent_grids();
  }
  const BlockTile tile = block_tile(p, Cfg::kTileTokens);
  if (tile.rows <= 0) return;

  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;
  const int group0 = (static_cast<int>(blockIdx.x) * Cfg::kWarps + warp) * Cfg::kGroupsPerWarp;

  const typename Cfg::Loader loader(p, tile, static_cast<int>(threadIdx.x) % 64);
  const int copy_group = static_cast<int>(threadIdx.x) / 64;
  // Copies batch `batch`'s chunks into their slots (chunks past K are not copied) and commits
  // them as one group.
  auto load_batch = [&](uint32_t batch) {
#pragma unroll
    for (uint32_t j = 0; j < Cfg::kBatch; j += Cfg::kCopyGroups) {
      const uint32_t chunk = batch * Cfg::kBatch + j + copy_group;
      if (chunk < static_cast<uint32_t>(p.k_chunks)) {
        loader.load(p, static_cast<int>(chunk),
                    smem_b + (chunk % Cfg::kSlots) * Cfg::kSlotElements);
      }
    }
    ptx::cp_async_commit();
  };

  // ---- A: this warp's row groups ------------------------------------------------------------
  WeightStream streams[Cfg::kGroupsPerWarp];
#pragma unroll
  for (int i = 0; i < Cfg::kGroupsPerWarp; ++i) {
    streams[i] = WeightStream::make(p, tile.expert, group0 + i, lane);
  }
  // A chunks live in a ring of kRing slots. The chunk loop below is unrolled by kRing, so each
  // slot is a fixed set of registers and a load is only waited on when its chunk is used; a
  // queue shifted every iteration would make each register move wait for its load (measured:
  // a 3-deep queue ran exactly like 1-deep).
  constexpr int kRing = Cfg::kAPrefetch + 1;
  WeightChunk a_ring[kRing][Cfg::kGroupsPerWarp];
  auto load_a = [&](int chunk, WeightChunk(&out)[Cfg::kGroupsPerWarp]) {
#pragma unroll
    for (int i = 0; i < Cfg::kGroupsPerWarp; ++i) out[i] = streams[i].load(chunk);
  };

  float acc[Cfg::kGroupsPerWarp][4];
#pragma unroll
  for (int i = 0; i < Cfg::kGroupsPerWarp; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

  // Where this lane's ldmatrix rows start in a stage, per k16 step: fixed, so a chunk adds only
  // the stage. Matrices: tokens 0..7 x k lo, tokens 0..7 x k hi (lanes 16..31 repeat addresses).
  int b_offset[4];
#pragma unroll
  for (int step = 0; step < 4; ++step) {
    const int r = lane % 8, chunk16 = step * 2 + (lane / 8) % 2;
    b_offset[step] = r * kChunkK + ((chunk16 ^ (r & 7)) * 8);
  }

  // One 64-wide chunk: decode this warp's A fragments, multiply by the stage's tokens.
  auto compute_chunk = [&](const uint16_t* stage, const WeightChunk(&chunk)[Cfg::kGroupsPerWarp]) {
#pragma unroll
    for (int step = 0; step < 4; ++step) {
      uint32_t a[Cfg::kGroupsPerWarp][4];
#pragma unroll
      for (int i = 0; i < Cfg::kGroupsPerWarp; ++i) decode_step(chunk[i], step, a[i]);
      uint32_t b[2];
      ptx::ldmatrix_x2(b, stage + b_offset[step]);
#pragma unroll
      for (int i = 0; i < Cfg::kGroupsPerWarp; ++i) ptx::mma_bf16_16x8x16(acc[i], a[i], b);
    }
  };

  // ---- Main loop ------------------------------------------------------------------------------
#pragma unroll
  for (int d = 0; d < Cfg::kAPrefetch; ++d) load_a(d, a_ring[d]);
  if (p.prefetch_before_wait) {  // the tokens come from the kernel ahead
    ptx::wait_prerequisite_grids();
    ptx::allow_dependent_grids();
  }
#pragma unroll
  for (int b = 0; b < Cfg::kBatches - 1; ++b) load_batch(b);

  for (int base = 0; base < p.k_chunks; base += kRing) {
#pragma unroll
    for (int u = 0; u < kRing; ++u) {
      const int chunk = base + u;
      if (chunk >= p.k_chunks) break;  // uniform across the block
      // Refill the slot of the chunk before this one, kAPrefetch chunks ahead.
      load_a(chunk + Cfg::kAPrefetch, a_ring[(u + Cfg::kAPrefetch) % kRing]);
      if (u % Cfg::kBatch == 0) {
        // This batch has landed and is visible to all warps; the previous batch's slots are no
        // longer read, and take the batch kBatches - 1 ahead.
        ptx::cp_async_wait<Cfg::kBatches - 2>();
        __syncthreads();
        load_batch(static_cast<uint32_t>(chunk) / Cfg::kBatch + Cfg::kBatches - 1);
      }
      compute_chunk(smem_b + (chunk % Cfg::kSlots) * Cfg::kSlotElements, a_ring[u]);
    }
  }
  ptx::cp_async_wait<0>();

  // ---- Epilogue ---------------------------------------------------------------------------
  // acc[i] = {(row g, token 2t), (row g, token 2t+1), (row g+8, token 2t), (row g+8, 2t+1)}
  const EpilogueScales scales = epilogue_scales<kEpilogue>(p, tile.expert);
#pragma unroll
  for (int i = 0; i < Cfg::kGroupsPerWarp; ++i) {
    if (!streams[i].valid) continue;
#pragma unroll
    for (int col = 0; col < 2; ++col) {
      const int token = 2 * t + col;
      if (token >= tile.rows) continue;
      store_row_pair<kEpilogue>(p, scales, group0 + i, g, tile.row_begin + token, acc[i][col],
                                acc[i][2 + col]);
    }
  }
}

}  // namespace nvfp4moe::cuda
