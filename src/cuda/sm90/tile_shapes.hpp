// The tile shapes of the Hopper grouped NVFP4 GEMMs (host and device): the mma.sync family
// (wgmma_unit_n = 0) and the warp-specialized wgmma family. Which shape a problem gets is
// heuristics.hpp's choice.
#pragma once

namespace nvfp4moe::cuda {

// Tile shapes. Each warp owns groups_per_warp 16-row groups of weights and every token of the
// tile. With mma.sync (wgmma_unit_n = 0) a decoded A fragment serves tile_tokens / 8 MMAs; with
// wgmma the warps form warpgroups of 4 and the tile is cut into units of wgmma_unit_n tokens, one
// m64nNk16 each, empty units skipped; `warps` counts the consumer warps (a producer warpgroup
// comes on top).
struct GemmShape {
  int warps;
  int groups_per_warp;
  int tile_tokens;
  int a_prefetch;    // mma.sync: weight chunks in flight per warp, in registers
  int wgmma_unit_n;  // 0: the mma.sync kernel
  int stages;        // wgmma: ring depth in chunks of tokens and weights (mma.sync: unused)
  constexpr int rows_per_block() const { return warps * groups_per_warp * 16; }
};

enum class GemmShapeId { kSmall, kWgmma16, kWgmma32, kWgmma64, kWgmma128 };

constexpr GemmShape gemm_shape(GemmShapeId id) {
  switch (id) {
    case GemmShapeId::kSmall:
      return {4, 1, 8, 7, 0, 0};  // decode: few tokens per expert
    case GemmShapeId::kWgmma16:
      // 4 consumer warpgroups x 128 rows, two 8-token units: the 32-token tiles' decode with a
      // fourth warpgroup to hide its latency, paid for by half the accumulators.
      // NOTE: against the 32-token tiles, T = 160 / 256 / 320 9% / 7-9% / 6% faster, T = 384 the
      // same, T = 512 17% slower (an expert's tokens then often need two tiles); against the
      // 8-token tiles, T = 2 / 16 / 64 9% / 6% / 9% faster, T = 1 30% slower (kWgmma16MinBlocks).
      return {16, 2, 16, 0, 8, 8};
    case GemmShapeId::kWgmma32:
      // 3 consumer warpgroups x 128 rows, four 8-token units; taken only where the 16-token
      // tiles would have too few blocks.
      // NOTE: 3 warpgroups, not 2: T = 160..384 9-12% faster (their decode is latency-bound).
      return {12, 2, 32, 0, 8, 8};
    case GemmShapeId::kWgmma64:
      // 3 consumer warpgroups x 128 rows, two 32-token units.
      // NOTE: 3 warpgroups of 2 row groups per warp, not 2 of 3 (the same 384 rows): one more
      // warp per scheduler to hide the decode's latency, which a 32-register producer leaves
      // the registers for. Shape forced, T = 512 / 768 / 1024 / 1280 / 2048 5-10% / 4-11% /
      // 5-11% / 1-4% / 1-2% faster (docs/performance-log.md, version 9).
      // NOTE: 8 stages, not 12: a power of two for the stage index, and T = 1024 7% faster.
      return {12, 2, 64, 0, 32, 8};
    case GemmShapeId::kWgmma128:
      return {8, 2, 128, 0, 64, 8};  // prefill: 2 consumer warpgroups x 128 rows, 128 tokens
  }
  return {4, 1, 8, 7, 0, 0};
}

}  // namespace nvfp4moe::cuda
