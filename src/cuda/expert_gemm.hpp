// The one seam between the forward and its expert GEMMs.
//
// Routing, activation quantization, the combine, the launch sequence of the forward
// (moe_forward.cpp), the dense linear layer (linear.cpp) and the workspace layout are written
// once for every GPU. The expert GEMMs are what differ by architecture and by numeric mode: a
// family of them prepares weights into its own layout, plans a routed problem (a pure function
// of its sizes: the tile width the router cuts, the grid, the family's own variants) and
// launches a GEMM over the router's tiles. Everything else meets the family only here:
//
//   expert_gemms(mode)                    the one place a family is chosen (expert_gemm.cpp)
//     .prepared_bytes(rows, k)            bytes of one expert's matrix in its layout
//     .prepare(...)                       checkpoint layout -> its layout, on the device
//     .min_route_tile_tokens()            the narrowest tile it may ask the router for
//     .plan_moe(...) / .plan_linear(...)  tiles and variants for a problem
//     .launch(plan, epilogue, args, s)    one grouped GEMM
//
// Hopper's family is sm90/ (mma.sync and warp-specialized wgmma kernels). A Blackwell backend or
// an FP8 mode is a sibling folder behind the same interface and one line in expert_gemms().
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/expert_gemm_args.hpp"
#include "nvfp4moe/moe.hpp"

namespace nvfp4moe::cuda {

class ExpertGemms {
 public:
  virtual ~ExpertGemms() = default;
  virtual const char* name() const = 0;
  virtual PreparedBytes prepared_bytes(int64_t rows, int64_t k) const = 0;
  // `experts` stacked [rows, k] matrices in the checkpoint's layout (docs/numerics.md §1), on
  // the device, into `codes`/`scale_codes` (experts * prepared_bytes each). gate_up: each matrix
  // is [gate rows; up rows]. Block scales must already be checked (finite, >= 0).
  virtual void prepare(const uint8_t* values, const uint8_t* scales, int64_t experts, int64_t rows,
                       int64_t k, bool gate_up, uint8_t* codes, uint8_t* scale_codes,
                       cudaStream_t stream) const = 0;
  virtual int min_route_tile_tokens() const = 0;
  virtual ExpertGemmPlan plan_moe(int64_t routed_slots, int64_t num_local_experts,
                                  int64_t gate_up_rows, int64_t down_rows) const = 0;
  virtual ExpertGemmPlan plan_linear(int64_t tokens, int64_t rows) const = 0;
  // kDownCombine runs the plan's down variant, the others its gate_up variant.
  virtual cudaError_t launch(const ExpertGemmPlan& plan, Epilogue epilogue,
                             const ExpertGemmArgs& args, cudaStream_t stream) const = 0;
};

// The family that runs `mode` on this build's GPUs.
const ExpertGemms& expert_gemms(QuantMode mode);

}  // namespace nvfp4moe::cuda
