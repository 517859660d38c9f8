// Runtime parameters of the Hopper grouped NVFP4 GEMMs (host and device): what a launch passes
// its kernel. Tile shapes: tile_shapes.hpp; the choice among them: heuristics.hpp.
#pragma once

#include <cstdint>

#include "cuda/common/routed.hpp"
#include "cuda/sm90/tile_shapes.hpp"

namespace nvfp4moe::cuda {

// What the GEMM does with its fp32 accumulators.
enum class Epilogue {
  kGateUpBf16,   // h = act(alpha_gate * gate, alpha_up * up) rounded to bf16  (W4A16)
  kGateUpF32,    // the same, kept in fp32 for re-quantization                 (W4A4)
  kDownCombine,  // out_acc[token] += topk_weight * alpha * y   (fp32 atomics)
  kLinear,       // out = bf16(alpha * y)
};

// The most 64-wide K chunks the launcher takes (K up to 64 Mi): the wgmma producers step between
// row groups' weights in 32 bits.
inline constexpr int32_t kMaxKChunks = 1 << 20;

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

}  // namespace nvfp4moe::cuda
