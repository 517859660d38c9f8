// Runtime parameters of the Hopper grouped NVFP4 GEMMs (host and device): what a launch passes
// its kernel. Tile shapes: tile_shapes.hpp; the choice among them: heuristics.hpp.
#pragma once

#include <cstdint>

#include "cuda/common/routed.hpp"
#include "cuda/expert_gemm_args.hpp"
#include "cuda/sm90/prepared_layout.hpp"
#include "cuda/sm90/tile_shapes.hpp"

namespace nvfp4moe::cuda {

// The most 64-wide K chunks the launcher takes (K up to 64 Mi): the wgmma producers step between
// row groups' weights in 32 bits.
inline constexpr int32_t kMaxKChunks = 1 << 20;

// The kernels' parameters: the seam's operands and the prepared layout's sizes of one expert's
// matrix, which from_args derives from args.weights (prepared_layout.hpp).
struct GemmParams : ExpertGemmArgs {
  int64_t expert_code_bytes = 0;
  int64_t expert_scale_bytes = 0;
  int32_t row_groups = 0;  // rows / 16 of one expert's matrix
  int32_t k_chunks = 0;
  int32_t k = 0;

  static GemmParams from_args(const ExpertGemmArgs& args) {
    GemmParams p;
    static_cast<ExpertGemmArgs&>(p) = args;
    const PreparedShape shape{args.weights.rows, args.weights.k};
    p.expert_code_bytes = shape.code_bytes();
    p.expert_scale_bytes = shape.scale_bytes();
    p.row_groups = static_cast<int32_t>(shape.row_groups());
    p.k_chunks = static_cast<int32_t>(shape.k_chunks());
    p.k = static_cast<int32_t>(shape.k);
    return p;
  }
};

}  // namespace nvfp4moe::cuda
