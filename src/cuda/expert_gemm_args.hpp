// The types of the seam between the forward and its expert GEMMs (expert_gemm.hpp): plain data,
// for host and device code alike, so that a family's kernels can take the operands as they are.
#pragma once

#include <cstdint>

#include "cuda/common/routed.hpp"

namespace nvfp4moe::cuda {

// What the GEMM does with its fp32 accumulators.
enum class Epilogue {
  kGateUpBf16,   // h = act(alpha_gate * gate, alpha_up * up) rounded to bf16  (W4A16)
  kGateUpF32,    // the same, kept in fp32 for re-quantization                 (W4A4)
  kDownCombine,  // out_acc[token] += topk_weight * alpha * y   (fp32 atomics)
  kLinear,       // out = bf16(alpha * y)
};

// A stack of experts' matrices in a family's prepared layout, on the device: one expert's
// matrix is [rows, k] (k the reduction dimension), experts follow one another.
struct PreparedMatrix {
  const void* codes = nullptr;
  const void* scales = nullptr;
  int64_t rows = 0;
  int64_t k = 0;
};

struct PreparedBytes {
  int64_t codes = 0;
  int64_t scales = 0;
};

// The operands of one grouped GEMM, whatever the family: D = A . B^T per tile, A the weights.
struct ExpertGemmArgs {
  PreparedMatrix weights;

  // B: activations, bf16 rows of k elements (row stride in elements). Row of sorted position
  // p: gather[p] / gather_divisor when gather is set, else p.
  const uint16_t* b = nullptr;
  int64_t b_row_stride = 0;
  int64_t b_rows = 0;
  const int32_t* gather = nullptr;
  int32_t gather_divisor = 1;

  // Tiles: from the router's device table (count in *num_tiles), or, when tiles is null,
  // implicit tiles of expert 0 covering rows [0, implicit_rows).
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

  // With a programmatic plan: the kernel may read its tiles and first weights before the grid
  // ahead of it finishes, because the caller guarantees they were complete before that grid
  // started (the down GEMM after the gate/up GEMM).
  bool prefetch_before_wait = false;
};

// How a family runs one routed problem: a pure function of its sizes.
struct ExpertGemmPlan {
  int route_tile_tokens = 0;  // the width the router cuts its tile table into
  int grid_tiles = 0;         // tiles launched for (the table may hold fewer; the rest exit)
  int gate_up = 0;            // the family's variant of the first GEMM (or the linear GEMM)
  int down = 0;               // and of the second
  bool programmatic = false;  // launch the GEMMs and the rounding after them programmatically
};

}  // namespace nvfp4moe::cuda
