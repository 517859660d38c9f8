// The MoE forward over prepared weights given as device pointers: the launch sequence, with no
// allocation and no host synchronization, so that it can be captured in a CUDA graph and
// replayed with new hidden states and routing.
//
//   memset   counts, cursors, amax scalars (unless routing is one launch and W4A16 or static)
//   route    count -> scan (offsets, tile table) -> scatter (sorted order); zeroes out_acc
//            (inside its one launch at small T, else by a memset)
//   [W4A4]   x -> amax -> quantize-dequantize (per token, or per sorted row for static scales)
//   GEMM 1   gate/up over the tiles, activation in the epilogue -> h  [sorted rows, I]
//            (the GEMMs are the family's of expert_gemm.hpp: tile width, grid and kernels)
//   [W4A4]   h -> amax -> quantize-dequantize -> hq
//   GEMM 2   down over the tiles, out_acc[token] += weight * alpha * y (fp32 atomics)
//   round    out_acc -> bf16 output
//
// Workspace (each region 256-byte aligned), sized for max_tokens by Layout:
//   zeroed: counts[E] cursors[E] amax[2] | offsets[E+1] num_tiles | tiles | sorted_slot[T*k]
//   sorted_expert[T*k] | xq (W4A4) | h | hq (W4A4) | out_acc[T*H]
#include "cuda/moe_forward.hpp"

#include <algorithm>

#include "cuda/combine/combine.hpp"
#include "cuda/common/cuda_check.hpp"
#include "cuda/common/regions.hpp"
#include "cuda/expert_gemm.hpp"
#include "cuda/quant/quant.hpp"
#include "cuda/route/route.hpp"

namespace nvfp4moe::cuda {

namespace {

// Byte offsets of the workspace regions; a pure function of the config.
struct Layout {
  size_t counts = 0, cursors = 0, amax = 0, zeroed_bytes = 0;
  size_t offsets = 0, num_tiles = 0, tiles = 0, sorted_slot = 0, sorted_expert = 0;
  size_t xq = 0, h = 0, hq = 0, out_acc = 0, total = 0;

  explicit Layout(const MoeConfig& c) {
    const size_t experts = static_cast<size_t>(c.num_local_experts);
    const size_t slots = static_cast<size_t>(c.max_tokens * c.top_k);
    const bool w4a4 = c.mode == QuantMode::kW4A4;
    const bool per_slot_x = w4a4 && c.activation_scale == ActivationScale::kStatic;
    Regions regions;
    // counts, cursors and the two amax words are contiguous so one memset clears them.
    zeroed_bytes = experts * 8 + 8;
    counts = regions.take(zeroed_bytes);
    cursors = counts + experts * 4;
    amax = cursors + experts * 4;
    offsets = regions.take((experts + 1) * 4);
    num_tiles = regions.take(4);
    // The table is sized for the narrowest tile the GEMM family may ask for.
    tiles = regions.take(
        static_cast<size_t>(max_route_tiles(int64_t(slots), c.num_local_experts,
                                            expert_gemms(c.mode).min_route_tile_tokens())) *
        sizeof(GemmTile));
    sorted_slot = regions.take(slots * 4);
    sorted_expert = regions.take(slots * 4);
    xq =
        regions.take(w4a4 ? (per_slot_x ? slots : size_t(c.max_tokens)) * size_t(c.hidden) * 2 : 0);
    h = regions.take(slots * size_t(c.intermediate) * (w4a4 ? 4 : 2));
    hq = regions.take(w4a4 ? slots * size_t(c.intermediate) * 2 : 0);
    out_acc = regions.take(size_t(c.max_tokens) * size_t(c.hidden) * 4);
    total = regions.end();
  }
};

void check_launch(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    fail(ErrorKind::kCuda, "launching {} failed: {} ({})", what, cudaGetErrorString(status),
         cudaGetErrorName(status));
  }
}

ExpertGemmArgs matrix_args(const uint8_t* codes, const uint8_t* scales, int64_t rows, int64_t k) {
  ExpertGemmArgs args;
  args.weights = {codes, scales, rows, k};
  return args;
}

}  // namespace

size_t moe_workspace_bytes(const MoeConfig& config) { return Layout(config).total; }

void moe_forward(const MoeConfig& c, const PreparedMoeWeights& w, const MoeForwardArgs& args,
                 float* sums, void* workspace, uint32_t* error_flags, cudaStream_t stream,
                 const ForwardExtras& extras) {
  require(c.activation != Activation::kSwigluOai, ErrorKind::kUnsupported,
          "activation swigluoai (gpt-oss) runs on the CPU reference only in this build; use the "
          "cpu device");
  if (sums == nullptr) {
    validate_forward_args(c, args);
  } else {
    MoeForwardArgs checked = args;
    checked.output = reinterpret_cast<uint16_t*>(sums);  // any non-null pointer
    validate_forward_args(c, checked);
  }
  if (args.num_tokens == 0) return;
  const Layout layout(c);
  require(workspace != nullptr, ErrorKind::kInvalidArgument,
          "forward: workspace is null; it must hold workspace_bytes() = {} bytes",
          moe_workspace_bytes(c));
  const int64_t tokens = args.num_tokens;
  const int32_t slots = static_cast<int32_t>(tokens * c.top_k);
  const bool w4a4 = c.mode == QuantMode::kW4A4;
  const bool dynamic = c.activation_scale == ActivationScale::kDynamic;
  auto* base = static_cast<uint8_t*>(workspace);
  auto at = [base](size_t offset) { return base + offset; };
  auto* amax = reinterpret_cast<uint32_t*>(at(layout.amax));
  auto* offsets = reinterpret_cast<int32_t*>(at(layout.offsets));
  auto* sorted_slot = reinterpret_cast<int32_t*>(at(layout.sorted_slot));
  auto* sorted_expert = reinterpret_cast<int32_t*>(at(layout.sorted_expert));
  const int32_t* routed_rows = offsets + c.num_local_experts;

  const ExpertGemms& gemms = expert_gemms(c.mode);
  const ExpertGemmPlan plan =
      gemms.plan_moe(slots, c.num_local_experts, 2 * c.intermediate, c.hidden);

  // The single-launch router keeps its counts in shared memory: then only dynamic W4A4's amax
  // words need zeroing.
  if (!route_single_launch(slots, c.num_local_experts) || (w4a4 && dynamic)) {
    NVFP4MOE_CUDA_CHECK(cudaMemsetAsync(at(layout.counts), 0, layout.zeroed_bytes, stream));
  }
  auto* out_acc = sums ? sums : reinterpret_cast<float*>(at(layout.out_acc));

  RouteParams route;
  route.topk_ids = args.topk_ids;
  route.num_slots = slots;
  route.num_experts = static_cast<int32_t>(c.num_experts);
  route.first_local_expert = static_cast<int32_t>(c.first_local_expert);
  route.num_local_experts = static_cast<int32_t>(c.num_local_experts);
  route.tile_tokens = plan.route_tile_tokens;
  route.counts = reinterpret_cast<int32_t*>(at(layout.counts));
  route.cursors = reinterpret_cast<int32_t*>(at(layout.cursors));
  route.offsets = offsets;
  route.tiles = reinterpret_cast<GemmTile*>(at(layout.tiles));
  route.num_tiles = reinterpret_cast<int32_t*>(at(layout.num_tiles));
  route.sorted_slot = sorted_slot;
  route.sorted_expert = sorted_expert;
  route.error_flags = error_flags;
  if (sums == nullptr) {  // the combine's sums, zeroed by the router at small T (one launch less)
    route.zero = out_acc;
    route.zero_bytes = tokens * c.hidden * int64_t(sizeof(float));
  }
  check_launch(launch_route(route, stream), "route");

  // ---- Activations of GEMM 1 --------------------------------------------------------------
  ExpertGemmArgs gemm1 =
      matrix_args(w.gate_up_codes, w.gate_up_scales, 2 * c.intermediate, c.hidden);
  gemm1.tiles = route.tiles;
  gemm1.num_tiles = route.num_tiles;
  gemm1.weight_scale = w.gate_scale;
  gemm1.weight_scale_up = w.up_scale;
  gemm1.b_row_stride = c.hidden;
  gemm1.b_rows = tokens;
  gemm1.gather = sorted_slot;
  gemm1.gather_divisor = static_cast<int32_t>(c.top_k);
  gemm1.b = args.hidden;
  if (w4a4) {
    auto* xq = reinterpret_cast<uint16_t*>(at(layout.xq));
    QuantizeSource x;
    x.input = args.hidden;
    x.input_row_stride = c.hidden;
    x.cols = static_cast<int32_t>(c.hidden);
    x.error_flags = error_flags;
    if (dynamic) {
      x.max_rows = tokens;
      x.device_rows = extras.device_rows;
      if (extras.input_amax) {
        extras.input_amax(amax, stream);
      } else {
        check_launch(launch_amax(x, amax, stream), "amax (hidden)");
      }
      x.scale_source = ActivationScaleSource::kFromAmax;
      x.amax_bits = amax;
      gemm1.act_source = ActivationScaleSource::kFromAmax;
      gemm1.act_amax_bits = amax;
    } else {
      // Each expert has its own static scale: quantize every routed row in sorted order.
      x.gather = sorted_slot;
      x.gather_divisor = static_cast<int32_t>(c.top_k);
      x.max_rows = slots;
      x.device_rows = routed_rows;
      x.scale_source = ActivationScaleSource::kPerExpert;
      x.per_expert_scale = w.gate_up_input_scale;
      x.row_expert = sorted_expert;
      gemm1.gather = nullptr;
      gemm1.b_rows = slots;
      gemm1.act_source = ActivationScaleSource::kPerExpert;
      gemm1.act_scale = w.gate_up_input_scale;
    }
    check_launch(launch_quantize_dequantize(x, xq, c.hidden, stream), "quantize (hidden)");
    gemm1.b = xq;
  }

  // ---- GEMM 1 and the activation ------------------------------------------------------------
  void* h = at(layout.h);
  gemm1.out = h;
  gemm1.out_row_stride = c.intermediate;
  gemm1.clamped = c.activation == Activation::kSwigluClamped;
  gemm1.swiglu_limit = c.swiglu_limit;
  check_launch(
      gemms.launch(plan, w4a4 ? Epilogue::kGateUpF32 : Epilogue::kGateUpBf16, gemm1, stream),
      "gate/up GEMM");

  ExpertGemmArgs gemm2 = matrix_args(w.down_codes, w.down_scales, c.hidden, c.intermediate);
  gemm2.tiles = route.tiles;
  gemm2.num_tiles = route.num_tiles;
  gemm2.weight_scale = w.down_scale;
  gemm2.b = static_cast<const uint16_t*>(h);
  gemm2.b_row_stride = c.intermediate;
  gemm2.b_rows = slots;
  if (w4a4) {
    auto* hq = reinterpret_cast<uint16_t*>(at(layout.hq));
    QuantizeSource hs;
    hs.input = h;
    hs.input_is_f32 = true;
    hs.input_row_stride = c.intermediate;
    hs.cols = static_cast<int32_t>(c.intermediate);
    hs.max_rows = slots;
    hs.device_rows = routed_rows;
    hs.error_flags = error_flags;
    if (dynamic) {
      check_launch(launch_amax(hs, amax + 1, stream), "amax (intermediate)");
      if (extras.intermediate_amax) extras.intermediate_amax(amax + 1, stream);
      hs.scale_source = ActivationScaleSource::kFromAmax;
      hs.amax_bits = amax + 1;
      gemm2.act_source = ActivationScaleSource::kFromAmax;
      gemm2.act_amax_bits = amax + 1;
    } else {
      hs.scale_source = ActivationScaleSource::kPerExpert;
      hs.per_expert_scale = w.down_input_scale;
      hs.row_expert = sorted_expert;
      gemm2.act_source = ActivationScaleSource::kPerExpert;
      gemm2.act_scale = w.down_input_scale;
    }
    check_launch(launch_quantize_dequantize(hs, hq, c.intermediate, stream),
                 "quantize (intermediate)");
    gemm2.b = hq;
  }

  // ---- GEMM 2 and the combine ---------------------------------------------------------------
  if (sums != nullptr) {
    NVFP4MOE_CUDA_CHECK(
        cudaMemsetAsync(out_acc, 0, size_t(tokens * c.hidden) * sizeof(float), stream));
  }
  gemm2.out = out_acc;
  gemm2.out_row_stride = c.hidden;
  gemm2.sorted_slot = sorted_slot;
  gemm2.topk_weights = args.topk_weights;
  gemm2.top_k = static_cast<int32_t>(c.top_k);
  gemm2.prefetch_before_wait = plan.programmatic;
  check_launch(gemms.launch(plan, Epilogue::kDownCombine, gemm2, stream), "down GEMM");
  if (sums != nullptr) return;
  check_launch(
      launch_round_to_bf16(out_acc, args.output, tokens * c.hidden, stream, plan.programmatic),
      "combine rounding");
}

}  // namespace nvfp4moe::cuda
