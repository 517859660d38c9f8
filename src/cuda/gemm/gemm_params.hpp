// Runtime parameters and compile-time tile shapes of the grouped NVFP4 GEMM (host and device).
#pragma once

#include <cstdint>

namespace nvfp4moe::cuda {

// What the GEMM does with its fp32 accumulators.
enum class Epilogue {
  kGateUpBf16,   // h = act(alpha_gate * gate, alpha_up * up) rounded to bf16  (W4A16)
  kGateUpF32,    // the same, kept in fp32 for re-quantization                 (W4A4)
  kDownCombine,  // out_acc[token] += topk_weight * alpha * y   (fp32 atomics)
  kLinear,       // out = bf16(alpha * y)
};

// How the activation global scale g of alpha = g * weight_scale is found.
enum class ActivationScaleSource {
  kOne,        // W4A16: activations are not quantized
  kPerExpert,  // static W4A4: act_scale[expert]
  kFromAmax,   // dynamic W4A4: amax / 2688 from a device scalar (uint32 bits of a float >= 0)
};

// The most 64-wide K chunks the launcher takes (K up to 64 Mi): the wgmma producers step between
// row groups' weights in 32 bits.
inline constexpr int32_t kMaxKChunks = 1 << 20;

// A work tile: tokens [row_begin, row_begin + rows) of the sorted order, all of one expert.
struct GemmTile {
  int32_t expert;
  int32_t row_begin;
  int32_t rows;
  int32_t unused;
};

struct GemmParams {
  // A: prepared weights (prepared_layout.hpp), experts stacked.
  const void* codes = nullptr;   // uint4 per lane per chunk
  const void* scales = nullptr;  // uint2 per lane group per chunk
  int64_t expert_code_bytes = 0;
  int64_t expert_scale_bytes = 0;
  int32_t row_groups = 0;  // rows / 16 of one expert's matrix
  int32_t k_chunks = 0;
  int32_t k = 0;

  // B: activations, bf16 rows of k elements (row stride in elements). Row of sorted position
  // p: gather[p] / gather_divisor when gather is set, else p.
  const uint16_t* b = nullptr;
  int64_t b_row_stride = 0;
  // Rows of B: the launcher refuses B of 32 GiB or more (the copies count its 16-byte pieces in
  // 31 bits).
  int64_t b_rows = 0;
  const int32_t* gather = nullptr;
  int32_t gather_divisor = 1;

  // Tiles: from the device table (count in *num_tiles), or, when tiles is null, implicit tiles
  // of expert 0 covering rows [0, implicit_rows).
  const GemmTile* tiles = nullptr;
  const int32_t* num_tiles = nullptr;
  int32_t implicit_rows = 0;

  // alpha = g * weight_scale[expert] (gate/down/linear), g * weight_scale_up[expert] (up).
  const float* weight_scale = nullptr;
  const float* weight_scale_up = nullptr;
  ActivationScaleSource act_source = ActivationScaleSource::kOne;
  const float* act_scale = nullptr;         // kPerExpert
  const uint32_t* act_amax_bits = nullptr;  // kFromAmax

  // Epilogue.
  void* out = nullptr;  // h (bf16/fp32), out_acc (fp32) or the linear output (bf16)
  int64_t out_row_stride = 0;
  const int32_t* sorted_slot = nullptr;  // kDownCombine: slot of each sorted position
  const float* topk_weights = nullptr;
  int32_t top_k = 1;
  bool clamped = false;
  float swiglu_limit = 0.0f;

  // Programmatic launch (launch_grouped_gemm's `programmatic`): the kernel waits for the grid
  // ahead of it before reading anything, or, with this set (the 8-token tiles; the wgmma kernels
  // always wait first), first reads its tiles and loads its first weight chunks, which the caller
  // guarantees were complete before that grid started.
  bool prefetch_before_wait = false;
};

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
      // 5-11% / 1-4% / 1-2% faster (docs/performance.md, version 9).
      // NOTE: 8 stages, not 12: a power of two for the stage index, and T = 1024 7% faster.
      return {12, 2, 64, 0, 32, 8};
    case GemmShapeId::kWgmma128:
      return {8, 2, 128, 0, 64, 8};  // prefill: 2 consumer warpgroups x 128 rows, 128 tokens
  }
  return {4, 1, 8, 7, 0, 0};
}

// The 16-token tiles' 512-row blocks must be enough to fill the GPU: on an H200 (DeepSeek-V3,
// gate/up GEMM of 4096 rows) 64 blocks at T = 1 ran 30% slower than the 8-token tiles, 128 at
// T = 2 9% faster.
inline constexpr int64_t kWgmma16MinBlocks = 100;

// The shape for a batch of `routed_slots` over `num_local_experts` experts whose (first) matrix
// has `rows` rows, by the mean number of tokens an active expert receives. Measured on an H200
// (DeepSeek-V3 layer, forced shapes, docs/performance.md, version 9):
// - 16-token wgmma tiles from 2 to 12 tokens per expert, where they have blocks enough (T = 16:
//   0.73 ms against 0.78 with the 8-token tiles; T = 320: 1.89-1.98 against 2.06-2.08 with the
//   32-token and 2.19-2.26 with the 64-token tiles; T = 384: a tie of all three);
// - else the 8-token mma.sync tiles up to 4 and the 32-token tiles up to 12 (not measured since
//   the 16-token tiles came);
// - 64-token tiles of 32-token units from 13 to 56 (T = 512: 2.33-2.36 against 2.44-2.49 with
//   the 32-token tiles; T = 1792: 3.24-3.66 against 3.67-3.87 with the 128-token tiles);
// - 128-token tiles from 57 on (T = 2048: 3.95-3.97 against 4.43-4.47).
constexpr GemmShapeId gemm_shape_for(int64_t routed_slots, int64_t num_local_experts,
                                     int64_t rows) {
  // Active experts cannot exceed either the experts or the routed slots.
  const int64_t bound = routed_slots < num_local_experts ? routed_slots : num_local_experts;
  const int64_t active = bound > 1 ? bound : 1;
  const int64_t tokens_per_expert = (routed_slots + active - 1) / active;
  const int64_t wgmma16_rows = int64_t(gemm_shape(GemmShapeId::kWgmma16).rows_per_block());
  const bool wgmma16_fills =
      active * ((rows + wgmma16_rows - 1) / wgmma16_rows) >= kWgmma16MinBlocks;
  if (tokens_per_expert <= 12 && wgmma16_fills) return GemmShapeId::kWgmma16;
  return tokens_per_expert <= 4    ? GemmShapeId::kSmall
         : tokens_per_expert <= 12 ? GemmShapeId::kWgmma32
         : tokens_per_expert <= 56 ? GemmShapeId::kWgmma64
                                   : GemmShapeId::kWgmma128;
}

// The second GEMM of a MoE layer reads the router's tiles cut for the first GEMM's shape, so it
// takes the same shape, except where the first GEMM's matrix is too small for the 16-token tiles
// and its own is not: then it takes them (their tiles hold the 8-token ones).
// NOTE: DeepSeek-V3 at T = 1 (gate/up 64 blocks, down 112), H200, alternating four times:
// 0.078-0.079 -> 0.076-0.077 ms.
constexpr GemmShapeId down_gemm_shape_for(GemmShapeId gate_up, int64_t routed_slots,
                                          int64_t num_local_experts, int64_t rows) {
  if (gate_up == GemmShapeId::kSmall &&
      gemm_shape_for(routed_slots, num_local_experts, rows) == GemmShapeId::kWgmma16) {
    return GemmShapeId::kWgmma16;
  }
  return gate_up;
}

// gemm_shape_for, unless NVFP4MOE_GEMM_SHAPE=small|wgmma16|wgmma32|wgmma64|wgmma128 forces a shape
// (for tuning); the choice is printed once when NVFP4MOE_PRINT_CONFIG is set.
GemmShapeId select_gemm_shape(int64_t routed_slots, int64_t num_local_experts, int64_t rows);
// down_gemm_shape_for, unless NVFP4MOE_GEMM_SHAPE forces both GEMMs' shape.
GemmShapeId select_down_gemm_shape(GemmShapeId gate_up, int64_t routed_slots,
                                   int64_t num_local_experts, int64_t rows);

}  // namespace nvfp4moe::cuda
