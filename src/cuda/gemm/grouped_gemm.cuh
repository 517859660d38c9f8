// The grouped NVFP4 x bf16 GEMM on mma.sync for few tokens per expert, "swap AB": weights are the
// A operand (M = output features), tokens the B operand (N), so an expert with 1 token wastes at
// most 7 of 8 columns. Tiles of more tokens go to the wgmma kernel (wgmma_gemm.cuh).
//
//   block   = kWarps warps; grid.x walks row blocks of the expert's matrix, grid.y the tiles
//             (expert, up to 8 consecutive sorted tokens) the router built on the device
//   A       = prepared NVFP4 weights: each warp copies its row groups' chunks with cp.async into
//             its own ring of kStages chunks in shared memory, kStages - 1 chunks ahead, and
//             decodes each lane's 16 bytes exactly to bf16
//   B       = the tile's tokens, a ring of kSlots chunks in shared memory filled with cp.async
//             in batches of kBatch chunks, 16-byte pieces XOR-swizzled by row so ldmatrix is
//             conflict-free (gemm_common.cuh)
//
//   epilogue = per Epilogue: fused gated activation, weighted combine, or plain store
#pragma once

#include <cstdint>

#include "cuda/gemm/gemm_common.cuh"

namespace nvfp4moe::cuda {

template <int kWarps_, int kGroupsPerWarp_, int kTileTokens_, int kStages_>
struct GemmConfig {
  static constexpr int kWarps = kWarps_;
  static constexpr int kGroupsPerWarp = kGroupsPerWarp_;
  static constexpr int kTileTokens = kTileTokens_;
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
  static constexpr int kTokenBytes = kSlots * kSlotElements * 2;
  // The weights' ring: per warp, kStages chunks of its row groups (codes, then scales), each
  // copied kStages - 1 chunks before its MMAs.
  // NOTE: in shared memory, not registers. With a ring of loads into registers, ptxas gave all
  // of them one scoreboard and waited for it to drain once per turn of the ring, the loads just
  // issued included (SASS control bits); this ring's waits are exact and it takes 56 registers
  // instead of 93. T = 8 2% faster, T = 1 the same (its warps are bound by their own issue).
  static constexpr int kStages = kStages_;
  static constexpr int kGroupBytes = kCodeBytesPerChunk + kScaleBytesPerChunk;
  static constexpr int kWeightStageBytes = kGroupsPerWarp * kGroupBytes;
  static constexpr int kWeightBytes = kWarps * kStages * kWeightStageBytes;
  static constexpr int kSmemBytes = kTokenBytes + kWeightBytes;
  static_assert(kTileTokens == 8, "8-token tiles: one n8 MMA per A fragment");
  static_assert(kSmemBytes <= 48 * 1024, "the rings must fit in static shared memory");
  static_assert(kStages >= 2 && (kStages & (kStages - 1)) == 0, "a power of two: a mask");
  // Each chunk commits one cp.async group (its weights kStages - 1 chunks ahead, and at a batch's
  // start the tokens kBatches - 1 batches ahead); waiting for chunk c's weights must also cover
  // its tokens, so those must be issued no later.
  static_assert((kBatches - 1) * kBatch >= kStages - 1, "tokens copied before their weights");
  static_assert(kThreads % 64 == 0 && kBatch % kCopyGroups == 0, "whole chunks per thread group");
};

template <class Cfg, Epilogue kEpilogue>
__global__ void __launch_bounds__(Cfg::kThreads) grouped_gemm_kernel(const GemmParams p) {
  __shared__ alignas(128) uint8_t smem[Cfg::kSmemBytes];
  constexpr int kGroups = Cfg::kGroupsPerWarp;
  uint16_t* smem_b = reinterpret_cast<uint16_t*>(smem);

  const BlockTile tile = block_tile(p, Cfg::kTileTokens);
  if (tile.rows <= 0) return;

  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;
  const int group0 = (static_cast<int>(blockIdx.x) * Cfg::kWarps + warp) * kGroups;

  const typename Cfg::Loader loader(p, tile, static_cast<int>(threadIdx.x) % 64);
  const int copy_group = static_cast<int>(threadIdx.x) / 64;
  // Copies batch `batch`'s chunks into their slots (chunks past K are not copied).
  auto load_batch = [&](uint32_t batch) {
#pragma unroll
    for (uint32_t j = 0; j < Cfg::kBatch; j += Cfg::kCopyGroups) {
      const uint32_t chunk = batch * Cfg::kBatch + j + copy_group;
      if (chunk < static_cast<uint32_t>(p.k_chunks)) {
        loader.load(p, static_cast<int>(chunk),
                    smem_b + (chunk % Cfg::kSlots) * Cfg::kSlotElements);
      }
    }
  };

  // ---- A: this warp's row groups, through its own ring ----------------------------------------
  // Lane l copies and reads the 16 code bytes l of each group's chunk; lanes 0..3 copy the
  // group's 64 scale bytes, of which lane l reads the 8 of rows l / 4 and l / 4 + 8 (hence a
  // __syncwarp between the copies landing and the reads). Groups past the matrix are zero-filled.
  const uint8_t* const warp_ring =
      smem + Cfg::kTokenBytes + warp * Cfg::kStages * Cfg::kWeightStageBytes;
  const uint32_t ring_address = ptx::smem_address(warp_ring);
  const uint8_t* code_source[kGroups];
  const uint8_t* scale_source[kGroups];
  bool group_valid[kGroups];
#pragma unroll
  for (int i = 0; i < kGroups; ++i) {
    group_valid[i] = group0 + i < p.row_groups;
    const int64_t group = group_valid[i] ? group0 + i : 0;
    code_source[i] = static_cast<const uint8_t*>(p.codes) + tile.expert * p.expert_code_bytes +
                     group * p.k_chunks * kCodeBytesPerChunk + lane * 16;
    scale_source[i] = static_cast<const uint8_t*>(p.scales) + tile.expert * p.expert_scale_bytes +
                      group * p.k_chunks * kScaleBytesPerChunk + (lane % 4) * 16;
  }
  // Copies chunk `chunk`'s weights into its stage; chunks past K are not copied.
  // NOTE: a branch, not copies that read nothing past K from a clamped address: those were 3-4%
  // slower at T = 8..128 with ~the same instructions per chunk.
  auto load_weights = [&](int chunk) {
    if (chunk >= p.k_chunks) return;
    const uint32_t stage = ring_address + (chunk % Cfg::kStages) * Cfg::kWeightStageBytes;
#pragma unroll
    for (int i = 0; i < kGroups; ++i) {
      const uint32_t to = stage + i * Cfg::kGroupBytes;
      ptx::cp_async_16(to + lane * 16, code_source[i] + int64_t(chunk) * kCodeBytesPerChunk,
                       group_valid[i]);
      ptx::cp_async_16(to + kCodeBytesPerChunk + (lane % 4) * 16,
                       scale_source[i] + int64_t(chunk) * kScaleBytesPerChunk, group_valid[i],
                       lane < 4);
    }
  };
  auto read_weights = [&](int chunk, WeightChunk(&out)[kGroups]) {
    const uint8_t* stage = warp_ring + (chunk % Cfg::kStages) * Cfg::kWeightStageBytes;
#pragma unroll
    for (int i = 0; i < kGroups; ++i) {
      out[i].codes = *reinterpret_cast<const uint4*>(stage + i * Cfg::kGroupBytes + lane * 16);
      out[i].scales = *reinterpret_cast<const uint2*>(stage + i * Cfg::kGroupBytes +
                                                      kCodeBytesPerChunk + g * 8);
    }
  };

  float acc[kGroups][4];
#pragma unroll
  for (int i = 0; i < kGroups; ++i)
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
  auto compute_chunk = [&](const uint16_t* stage, const WeightChunk(&chunk)[kGroups]) {
#pragma unroll
    for (int step = 0; step < 4; ++step) {
      uint32_t a[kGroups][4];
#pragma unroll
      for (int i = 0; i < kGroups; ++i) decode_step(chunk[i], step, a[i]);
      uint32_t b[2];
      ptx::ldmatrix_x2(b, stage + b_offset[step]);
#pragma unroll
      for (int i = 0; i < kGroups; ++i) ptx::mma_bf16_16x8x16(acc[i], a[i], b);
    }
  };

  // ---- Main loop ------------------------------------------------------------------------------
  // One cp.async group per chunk, committed kStages - 1 chunks ahead: the wait at chunk c is
  // exactly for chunk c's weights (and, issued earlier, its tokens).
#pragma unroll
  for (int b = 0; b < Cfg::kBatches - 1; ++b) load_batch(b);
#pragma unroll
  for (int d = 0; d < Cfg::kStages - 1; ++d) {
    load_weights(d);
    ptx::cp_async_commit();
  }

  for (int base = 0; base < p.k_chunks; base += Cfg::kBatch) {
#pragma unroll
    for (int u = 0; u < Cfg::kBatch; ++u) {
      const int chunk = base + u;
      if (chunk >= p.k_chunks) break;  // uniform across the block
      ptx::cp_async_wait<Cfg::kStages - 2>();
      if (u == 0) {
        // This batch's tokens and this chunk's weights have landed and are visible to all
        // warps; the previous batch's slots and chunk - 1's stage are no longer read, and take
        // the batch kBatches - 1 ahead and chunk + kStages - 1.
        __syncthreads();
        load_batch(static_cast<uint32_t>(chunk) / Cfg::kBatch + Cfg::kBatches - 1);
      } else {
        __syncwarp();  // the scale bytes other lanes copied; chunk - 1's stage is free
      }
      load_weights(chunk + Cfg::kStages - 1);
      ptx::cp_async_commit();
      WeightChunk weights[kGroups];
      read_weights(chunk, weights);
      compute_chunk(smem_b + (chunk % Cfg::kSlots) * Cfg::kSlotElements, weights);
    }
  }
  ptx::cp_async_wait<0>();

  // ---- Epilogue ---------------------------------------------------------------------------
  // acc[i] = {(row g, token 2t), (row g, token 2t+1), (row g+8, token 2t), (row g+8, 2t+1)}
  const EpilogueScales scales = epilogue_scales<kEpilogue>(p, tile.expert);
#pragma unroll
  for (int i = 0; i < kGroups; ++i) {
    if (!group_valid[i]) continue;
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
