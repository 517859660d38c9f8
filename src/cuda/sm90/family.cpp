// Hopper's expert-GEMM family behind the seam: the prepared layout's sizes and preparation, the
// tile heuristics as plans, and launches of the grouped GEMMs. Host code.
#include "cuda/sm90/family.hpp"

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <set>
#include <tuple>

#include "core/check.hpp"
#include "cuda/route/route.hpp"
#include "cuda/sm90/gemm_launch.hpp"
#include "cuda/sm90/heuristics.hpp"
#include "cuda/sm90/prepare.hpp"
#include "cuda/sm90/prepared_layout.hpp"

namespace nvfp4moe::cuda {

namespace {

// NVFP4MOE_PRINT_CONFIG: each distinct choice of each GEMM, once.
void print_choice(const char* gemm, GemmShapeId id, int64_t slots, int64_t experts, int64_t rows) {
  static const bool print = std::getenv("NVFP4MOE_PRINT_CONFIG") != nullptr;
  if (!print) return;
  static std::mutex mutex;
  static std::set<std::tuple<const char*, int>> printed;
  const std::lock_guard<std::mutex> lock(mutex);
  if (!printed.insert({gemm, static_cast<int>(id)}).second) return;
  const GemmShape s = gemm_shape(id);
  std::fprintf(stderr,
               "nvfp4moe: sm90 %s GEMM, first chosen at %lld routed rows over %lld experts of %lld "
               "rows: %d warps x %d row groups, %d tokens per tile%s\n",
               gemm, static_cast<long long>(slots), static_cast<long long>(experts),
               static_cast<long long>(rows), s.warps, s.groups_per_warp, s.tile_tokens,
               s.wgmma_unit_n ? " (wgmma)" : " (mma.sync)");
}

class Sm90Gemms final : public ExpertGemms {
 public:
  const char* name() const override { return "sm90"; }

  PreparedBytes prepared_bytes(int64_t rows, int64_t k) const override {
    const PreparedShape shape{rows, k};
    return {shape.code_bytes(), shape.scale_bytes()};
  }

  void prepare(const uint8_t* values, const uint8_t* scales, int64_t experts, int64_t rows,
               int64_t k, bool gate_up, uint8_t* codes, uint8_t* scale_codes,
               cudaStream_t stream) const override {
    const PreparedShape shape{rows, k};
    const int64_t source_values = rows * k / 2, source_scales = rows * k / 16;
    for (int64_t e = 0; e < experts; ++e) {
      PrepareParams p;
      p.first_values = values + e * source_values;
      p.first_scales = scales + e * source_scales;
      if (gate_up) {  // [gate rows; up rows] -> groups of 8 gate rows then 8 up rows
        p.second_values = p.first_values + source_values / 2;
        p.second_scales = p.first_scales + source_scales / 2;
        p.interleave = true;
      }
      p.rows = rows;
      p.k = k;
      p.codes = codes + e * shape.code_bytes();
      p.scales = scale_codes + e * shape.scale_bytes();
      const cudaError_t status = launch_prepare(p, stream);
      require(status == cudaSuccess, ErrorKind::kCuda, "launching prepare failed: {} ({})",
              cudaGetErrorString(status), cudaGetErrorName(status));
    }
  }

  // The router's table is sized for the narrowest tile any shape uses.
  int min_route_tile_tokens() const override { return gemm_shape(GemmShapeId::kSmall).tile_tokens; }

  ExpertGemmPlan plan_moe(int64_t routed_slots, int64_t num_local_experts, int64_t gate_up_rows,
                          int64_t down_rows) const override {
    const GemmShapeId gate_up = select_gemm_shape(routed_slots, num_local_experts, gate_up_rows);
    const GemmShapeId down =
        select_down_gemm_shape(gate_up, routed_slots, num_local_experts, down_rows);
    print_choice("gate/up", gate_up, routed_slots, num_local_experts, gate_up_rows);
    print_choice("down", down, routed_slots, num_local_experts, down_rows);
    ExpertGemmPlan plan;
    plan.route_tile_tokens = gemm_shape(gate_up).tile_tokens;
    plan.grid_tiles =
        static_cast<int>(max_route_tiles(routed_slots, num_local_experts, plan.route_tile_tokens));
    plan.gate_up = static_cast<int>(gate_up);
    plan.down = static_cast<int>(down);
    // With the 8-token tiles the GEMMs and the rounding launch programmatically: each one's
    // blocks start while the kernel ahead finishes, and the down GEMM copies its first weights
    // before it waits (its weights and tiles were complete before the gate/up GEMM began).
    // NOTE: only there. T = 1 0.080 -> 0.078 ms; with the wgmma tiles T = 256 and 1024 ran 2-4%
    // slower (H200, alternating 3 times).
    plan.programmatic = gate_up == GemmShapeId::kSmall;
    return plan;
  }

  ExpertGemmPlan plan_linear(int64_t tokens, int64_t rows) const override {
    const GemmShapeId shape = select_gemm_shape(tokens, 1, rows);
    print_choice("linear", shape, tokens, 1, rows);
    ExpertGemmPlan plan;
    plan.route_tile_tokens = gemm_shape(shape).tile_tokens;
    plan.grid_tiles =
        static_cast<int>((tokens + plan.route_tile_tokens - 1) / plan.route_tile_tokens);
    plan.gate_up = plan.down = static_cast<int>(shape);
    return plan;
  }

  cudaError_t launch(const ExpertGemmPlan& plan, Epilogue epilogue, const ExpertGemmArgs& args,
                     cudaStream_t stream) const override {
    const auto shape =
        static_cast<GemmShapeId>(epilogue == Epilogue::kDownCombine ? plan.down : plan.gate_up);
    return launch_grouped_gemm(shape, epilogue, GemmParams::from_args(args), plan.grid_tiles,
                               stream, plan.programmatic);
  }
};

}  // namespace

const ExpertGemms& sm90_expert_gemms() {
  static const Sm90Gemms family;
  return family;
}

}  // namespace nvfp4moe::cuda
