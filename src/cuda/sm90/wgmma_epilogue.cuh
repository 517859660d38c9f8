// The epilogues of the wgmma grouped GEMM (wgmma_gemm.cuh): a consumer warp's accumulators
// become the gated activation or a plain store straight from registers, or, for the down GEMM's
// weighted combine, go through the drained ring in shared memory so that each lane adds 4
// consecutive features of a token with one vector reduction.
#pragma once

#include <cstdint>

#include "cuda/sm90/gemm_common.cuh"
#include "cuda/sm90/ptx.cuh"
#include "cuda/sm90/wgmma.cuh"

namespace nvfp4moe::cuda {

// The weighted combine's per-token output row and routing weight: two arrays of the tile's
// tokens in shared memory.
struct CombineTargets {
  int64_t* row;
  float* weight;
};

// Fetched before the mainloop, so the two dependent loads are long done by the epilogue (which
// reads them after its barrier). Only the combine epilogue has targets.
template <class Cfg, Epilogue kEpilogue>
__device__ __forceinline__ void fetch_combine_targets(const GemmParams& p, const BlockTile& tile,
                                                      CombineTargets targets, int consumer_warp,
                                                      int lane) {
  if constexpr (kEpilogue == Epilogue::kDownCombine) {
    const int token = consumer_warp * 32 + lane;
    if (token < tile.rows) {
      const int32_t slot = p.sorted_slot[tile.row_begin + token];
      targets.row[token] = int64_t(slot / p.top_k) * p.out_row_stride;
      targets.weight[token] = p.topk_weights[slot];
    }
  }
}

// Writes a consumer warp's results (its kGroups row groups for the tile's tokens), after
// wgmma_mainloop has left them in `acc` and freed the ring.
template <class Cfg, Epilogue kEpilogue>
__device__ __forceinline__ void wgmma_epilogue(const GemmParams& p, const BlockTile& tile,
                                               typename Cfg::Accumulators& acc, uint8_t* ring,
                                               CombineTargets targets, int consumer_warp,
                                               int lane) {
  constexpr int kGroups = Cfg::kGroups;
  const int g = lane / 4, t = lane % 4;
  const int group0 = (static_cast<int>(blockIdx.x) * Cfg::kConsumerWarps + consumer_warp) * kGroups;
  // acc[i][n][4 * j + e]: n8 block j of unit n, e = (row g, 2t), (row g, 2t+1), (row g+8, 2t),
  // (row g+8, 2t+1), as mma.sync's C fragment.
  const EpilogueScales scales = epilogue_scales<kEpilogue>(p, tile.expert);
  if constexpr (kEpilogue == Epilogue::kDownCombine) {
    // Through shared memory, so each lane adds 4 consecutive features of a token with one
    // vector reduction instead of 4 scalar atomics. The ring is free once every consumer's
    // MMAs are done (the producer's copies all landed before the last stage was published);
    // the barrier also publishes combine_row and combine_weight.
    constexpr int kStride = Cfg::kCombineStride;
    wgmma::fence_proxy_async_shared();
    ptx::named_barrier_sync(1, Cfg::kConsumerWarps * 32);
    float* tile_out = reinterpret_cast<float*>(ring) + consumer_warp * Cfg::kTileTokens * kStride;
#pragma unroll
    for (int i = 0; i < kGroups; ++i)
#pragma unroll
      for (int n = 0; n < Cfg::kUnits; ++n)
#pragma unroll
        for (int j = 0; j < Cfg::kUnitN / 8; ++j)
#pragma unroll
          for (int col = 0; col < 2; ++col) {
            float* row = tile_out + (n * Cfg::kUnitN + j * 8 + 2 * t + col) * kStride + i * 16 + g;
            row[0] = acc[i][n][4 * j + col];
            row[8] = acc[i][n][4 * j + 2 + col];
          }
    __syncwarp();
    constexpr int kQuads = 4 * kGroups;  // 4-feature quads per token row of this warp
    // The warp's lanes walk the (token, quad) pairs, so a row's quads need not divide a warp.
    for (int index = lane; index < tile.rows * kQuads; index += 32) {
      const int token = index / kQuads, quad = index % kQuads;
      if (group0 + quad / 4 >= p.row_groups) continue;  // rows past the matrix
      const float weight = targets.weight[token];
      const float4 y = *reinterpret_cast<const float4*>(tile_out + token * kStride + 4 * quad);
      float* out = static_cast<float*>(p.out) + targets.row[token] + group0 * 16 + 4 * quad;
      ptx::red_add_v4(out,
                      make_float4(weight * (scales.alpha * y.x), weight * (scales.alpha * y.y),
                                  weight * (scales.alpha * y.z), weight * (scales.alpha * y.w)));
    }
  } else {
#pragma unroll
    for (int i = 0; i < kGroups; ++i) {
      if (group0 + i >= p.row_groups) continue;
#pragma unroll
      for (int n = 0; n < Cfg::kUnits; ++n) {
#pragma unroll
        for (int j = 0; j < Cfg::kUnitN / 8; ++j) {
#pragma unroll
          for (int col = 0; col < 2; ++col) {
            const int token = n * Cfg::kUnitN + j * 8 + 2 * t + col;
            if (token >= tile.rows) continue;
            store_row_pair<kEpilogue>(p, scales, group0 + i, g, tile.row_begin + token,
                                      acc[i][n][4 * j + col], acc[i][n][4 * j + 2 + col]);
          }
        }
      }
    }
  }
}

}  // namespace nvfp4moe::cuda
