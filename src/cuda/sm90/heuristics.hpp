// Which tile shape a routed problem gets: pure functions of the problem's sizes (tested in
// tests/cuda/test_cuda_kernels.cpp), and the run-time entry that also honours
// NVFP4MOE_GEMM_SHAPE.
#pragma once

#include <cstdint>

#include "cuda/sm90/tile_shapes.hpp"

namespace nvfp4moe::cuda {

// The 16-token tiles' 512-row blocks must be enough to fill the GPU: on an H200 (DeepSeek-V3,
// gate/up GEMM of 4096 rows) 64 blocks at T = 1 ran 30% slower than the 8-token tiles, 128 at
// T = 2 9% faster.
inline constexpr int64_t kWgmma16MinBlocks = 100;

// The shape for a batch of `routed_slots` over `num_local_experts` experts whose (first) matrix
// has `rows` rows, by the mean number of tokens an active expert receives. Measured on an H200
// (DeepSeek-V3 layer, forced shapes, docs/performance-log.md, version 9):
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
// (for tuning). The family (family.cpp) prints each distinct choice once under
// NVFP4MOE_PRINT_CONFIG.
GemmShapeId select_gemm_shape(int64_t routed_slots, int64_t num_local_experts, int64_t rows);
// down_gemm_shape_for, unless NVFP4MOE_GEMM_SHAPE forces both GEMMs' shape.
GemmShapeId select_down_gemm_shape(GemmShapeId gate_up, int64_t routed_slots,
                                   int64_t num_local_experts, int64_t rows);

}  // namespace nvfp4moe::cuda
