// The CUDA MoE runner: prepared weights on the device and the forward as a fixed sequence of
// launches on one stream, with no allocation and no host synchronization, so that it can be
// captured in a CUDA graph and replayed with new hidden states and routing.
//
//   memset   counts, cursors, amax scalars
//   route    count -> scan (offsets, tile table) -> scatter (sorted order)
//   [W4A4]   x -> amax -> quantize-dequantize (per token, or per sorted row for static scales)
//   GEMM 1   gate/up over the tiles, activation in the epilogue -> h  [sorted rows, I]
//   [W4A4]   h -> amax -> quantize-dequantize -> hq
//   memset   out_acc [T, H] fp32
//   GEMM 2   down over the tiles, out_acc[token] += weight * alpha * y (fp32 atomics)
//   round    out_acc -> bf16 output
//
// Workspace (each region 256-byte aligned), sized for max_tokens by Layout:
//   zeroed: counts[E] cursors[E] amax[2] | offsets[E+1] num_tiles | tiles | sorted_slot[T*k]
//   sorted_expert[T*k] | xq (W4A4) | h | hq (W4A4) | out_acc[T*H]
#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "cuda/combine/combine.hpp"
#include "cuda/common/cuda_check.hpp"
#include "cuda/common/prepared_layout.hpp"
#include "cuda/gemm/gemm_launch.hpp"
#include "cuda/prepare/prepare.hpp"
#include "cuda/quant/quant.hpp"
#include "cuda/route/route.hpp"
#include "cuda/runtime_cuda.hpp"

namespace nvfp4moe::cuda {

namespace {

constexpr size_t kAlign = 256;
size_t align_up(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

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
    size_t at = 0;
    auto take = [&at](size_t bytes) {
      const size_t offset = at;
      at += align_up(bytes);
      return offset;
    };
    // counts, cursors and the two amax words are contiguous so one memset clears them.
    counts = at;
    cursors = counts + experts * 4;
    amax = cursors + experts * 4;
    zeroed_bytes = experts * 8 + 8;
    take(zeroed_bytes);
    offsets = take((experts + 1) * 4);
    num_tiles = take(4);
    // The table is sized for the narrowest tile any shape uses.
    tiles = take(static_cast<size_t>(max_route_tiles(int64_t(slots), c.num_local_experts,
                                                     gemm_shape(GemmShapeId::kSmall).tile_tokens)) *
                 sizeof(GemmTile));
    sorted_slot = take(slots * 4);
    sorted_expert = take(slots * 4);
    xq = take(w4a4 ? (per_slot_x ? slots : size_t(c.max_tokens)) * size_t(c.hidden) * 2 : 0);
    h = take(slots * size_t(c.intermediate) * (w4a4 ? 4 : 2));
    hq = take(w4a4 ? slots * size_t(c.intermediate) * 2 : 0);
    out_acc = take(size_t(c.max_tokens) * size_t(c.hidden) * 4);
    total = at;
  }
};

void check_launch(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    fail(ErrorKind::kCuda, "launching {} failed: {} ({})", what, cudaGetErrorString(status),
         cudaGetErrorName(status));
  }
}

// Prepared weights of one projection stacked over experts.
struct PreparedMatrix {
  PreparedShape shape;
  DeviceMemory codes, scales;
};

class CudaMoeRunner final : public CudaRunner {
 public:
  CudaMoeRunner(const MoeConfig& config, const MoeWeights& weights)
      : config_(config), layout_(config) {
    const int64_t experts = config.num_local_experts;
    const int64_t hidden = config.hidden, inter = config.intermediate;
    gate_up_.shape = {2 * inter, hidden};
    down_.shape = {hidden, inter};
    for (PreparedMatrix* m : {&gate_up_, &down_}) {
      m->codes = DeviceMemory(size_t(m->shape.code_bytes() * experts));
      m->scales = DeviceMemory(size_t(m->shape.scale_bytes() * experts));
    }
    // Stage one expert's checkpoint-layout bytes at a time and prepare them on the device.
    const size_t projection_values = size_t(inter * hidden / 2);
    const size_t projection_scales = size_t(inter * hidden / 16);
    DeviceMemory staging(4 * projection_values + 4 * projection_scales);
    auto* gate_values = staging.get<uint8_t>();
    auto* up_values = gate_values + projection_values;
    auto* down_values = up_values + projection_values;
    auto* gate_scales = down_values + projection_values;
    auto* up_scales = gate_scales + projection_scales;
    auto* down_scales = up_scales + projection_scales;
    for (int64_t e = 0; e < experts; ++e) {
      const uint8_t* values = weights.gate_up_values.data() + e * 2 * projection_values;
      const uint8_t* scales = weights.gate_up_scales.data() + e * 2 * projection_scales;
      copy_to_device(gate_values, values, 2 * projection_values);  // gate then up
      copy_to_device(gate_scales, scales, 2 * projection_scales);
      copy_to_device(down_values, weights.down_values.data() + e * projection_values,
                     projection_values);
      copy_to_device(down_scales, weights.down_scales.data() + e * projection_scales,
                     projection_scales);
      PrepareParams gate_up;
      gate_up.first_values = gate_values;
      gate_up.first_scales = gate_scales;
      gate_up.second_values = up_values;
      gate_up.second_scales = up_scales;
      gate_up.interleave = true;
      gate_up.rows = 2 * inter;
      gate_up.k = hidden;
      gate_up.codes = gate_up_.codes.get<uint8_t>() + e * gate_up_.shape.code_bytes();
      gate_up.scales = gate_up_.scales.get<uint8_t>() + e * gate_up_.shape.scale_bytes();
      check_launch(launch_prepare(gate_up, nullptr), "prepare (gate/up)");
      PrepareParams down;
      down.first_values = down_values;
      down.first_scales = down_scales;
      down.rows = hidden;
      down.k = inter;
      down.codes = down_.codes.get<uint8_t>() + e * down_.shape.code_bytes();
      down.scales = down_.scales.get<uint8_t>() + e * down_.shape.scale_bytes();
      check_launch(launch_prepare(down, nullptr), "prepare (down)");
      NVFP4MOE_CUDA_CHECK(cudaDeviceSynchronize());  // staging is reused by the next expert
    }
    // Per-expert scalars, one array each.
    auto upload = [&](const std::vector<float>& host) {
      DeviceMemory memory(host.size() * sizeof(float));
      if (!host.empty()) copy_to_device(memory.get(), host.data(), host.size() * sizeof(float));
      return memory;
    };
    gate_scale_ = upload(weights.gate_global_scale);
    up_scale_ = upload(weights.up_global_scale);
    down_scale_ = upload(weights.down_global_scale);
    gate_up_input_scale_ = upload(weights.gate_up_input_scale);
    down_input_scale_ = upload(weights.down_input_scale);
    error_flags_ = DeviceMemory(sizeof(uint32_t));
    device_memset(error_flags_.get(), 0, sizeof(uint32_t));
  }

  const MoeConfig& config() const override { return config_; }
  Device device() const override { return Device::kCuda; }
  size_t workspace_bytes() const override { return layout_.total; }

  void forward(const MoeForwardArgs& args, void* workspace, void* stream_handle) override {
    enqueue(args, nullptr, workspace, static_cast<cudaStream_t>(stream_handle));
  }

  void forward_sums(const MoeForwardArgs& args, float* sums, void* workspace,
                    cudaStream_t stream) override {
    require(sums != nullptr || args.num_tokens == 0, ErrorKind::kInvalidArgument,
            "forward_sums: the fp32 output is null");
    enqueue(args, sums, workspace, stream);
  }

 private:
  // The forward; with `sums` the fp32 sums over this rank's slots go there (zeroed first) and
  // no bf16 output is written.
  void enqueue(const MoeForwardArgs& args, float* sums, void* workspace, cudaStream_t stream) {
    if (sums == nullptr) {
      validate_forward_args(config_, args);
    } else {
      MoeForwardArgs checked = args;
      checked.output = reinterpret_cast<uint16_t*>(sums);  // any non-null pointer
      validate_forward_args(config_, checked);
    }
    if (args.num_tokens == 0) return;
    require(workspace != nullptr, ErrorKind::kInvalidArgument,
            "forward: workspace is null; it must hold workspace_bytes() = {} bytes",
            workspace_bytes());
    const MoeConfig& c = config_;
    const int64_t tokens = args.num_tokens;
    const int32_t slots = static_cast<int32_t>(tokens * c.top_k);
    const bool w4a4 = c.mode == QuantMode::kW4A4;
    const bool dynamic = c.activation_scale == ActivationScale::kDynamic;
    auto* base = static_cast<uint8_t*>(workspace);
    auto at = [base](size_t offset) { return base + offset; };
    auto* amax = reinterpret_cast<uint32_t*>(at(layout_.amax));
    auto* offsets = reinterpret_cast<int32_t*>(at(layout_.offsets));
    auto* sorted_slot = reinterpret_cast<int32_t*>(at(layout_.sorted_slot));
    auto* sorted_expert = reinterpret_cast<int32_t*>(at(layout_.sorted_expert));
    const int32_t* routed_rows = offsets + c.num_local_experts;
    auto* error_flags = error_flags_.get<uint32_t>();

    const GemmShapeId shape = select_gemm_shape(slots, c.num_local_experts);
    const int tile_tokens = gemm_shape(shape).tile_tokens;
    const auto grid_tiles =
        static_cast<int>(max_route_tiles(slots, c.num_local_experts, tile_tokens));

    NVFP4MOE_CUDA_CHECK(cudaMemsetAsync(at(layout_.counts), 0, layout_.zeroed_bytes, stream));

    RouteParams route;
    route.topk_ids = args.topk_ids;
    route.num_slots = slots;
    route.num_experts = static_cast<int32_t>(c.num_experts);
    route.first_local_expert = static_cast<int32_t>(c.first_local_expert);
    route.num_local_experts = static_cast<int32_t>(c.num_local_experts);
    route.tile_tokens = tile_tokens;
    route.counts = reinterpret_cast<int32_t*>(at(layout_.counts));
    route.cursors = reinterpret_cast<int32_t*>(at(layout_.cursors));
    route.offsets = offsets;
    route.tiles = reinterpret_cast<GemmTile*>(at(layout_.tiles));
    route.num_tiles = reinterpret_cast<int32_t*>(at(layout_.num_tiles));
    route.sorted_slot = sorted_slot;
    route.sorted_expert = sorted_expert;
    route.error_flags = error_flags;
    check_launch(launch_route(route, stream), "route");

    // ---- Activations of GEMM 1 --------------------------------------------------------------
    GemmParams gemm1 = matrix_params(gate_up_);
    gemm1.tiles = route.tiles;
    gemm1.num_tiles = route.num_tiles;
    gemm1.weight_scale = gate_scale_.get<float>();
    gemm1.weight_scale_up = up_scale_.get<float>();
    gemm1.b_row_stride = c.hidden;
    gemm1.gather = sorted_slot;
    gemm1.gather_divisor = static_cast<int32_t>(c.top_k);
    gemm1.b = args.hidden;
    if (w4a4) {
      auto* xq = reinterpret_cast<uint16_t*>(at(layout_.xq));
      QuantizeSource x;
      x.input = args.hidden;
      x.input_row_stride = c.hidden;
      x.cols = static_cast<int32_t>(c.hidden);
      x.error_flags = error_flags;
      if (dynamic) {
        x.max_rows = tokens;
        check_launch(launch_amax(x, amax, stream), "amax (hidden)");
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
        x.per_expert_scale = gate_up_input_scale_.get<float>();
        x.row_expert = sorted_expert;
        gemm1.gather = nullptr;
        gemm1.act_source = ActivationScaleSource::kPerExpert;
        gemm1.act_scale = gate_up_input_scale_.get<float>();
      }
      check_launch(launch_quantize_dequantize(x, xq, c.hidden, stream), "quantize (hidden)");
      gemm1.b = xq;
    }

    // ---- GEMM 1 and the activation ------------------------------------------------------------
    void* h = at(layout_.h);
    gemm1.out = h;
    gemm1.out_row_stride = c.intermediate;
    gemm1.clamped = c.activation == Activation::kSwigluClamped;
    gemm1.swiglu_limit = c.swiglu_limit;
    check_launch(launch_grouped_gemm(shape, w4a4 ? Epilogue::kGateUpF32 : Epilogue::kGateUpBf16,
                                     gemm1, grid_tiles, stream),
                 "gate/up GEMM");

    GemmParams gemm2 = matrix_params(down_);
    gemm2.tiles = route.tiles;
    gemm2.num_tiles = route.num_tiles;
    gemm2.weight_scale = down_scale_.get<float>();
    gemm2.b = static_cast<const uint16_t*>(h);
    gemm2.b_row_stride = c.intermediate;
    if (w4a4) {
      auto* hq = reinterpret_cast<uint16_t*>(at(layout_.hq));
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
        hs.scale_source = ActivationScaleSource::kFromAmax;
        hs.amax_bits = amax + 1;
        gemm2.act_source = ActivationScaleSource::kFromAmax;
        gemm2.act_amax_bits = amax + 1;
      } else {
        hs.scale_source = ActivationScaleSource::kPerExpert;
        hs.per_expert_scale = down_input_scale_.get<float>();
        hs.row_expert = sorted_expert;
        gemm2.act_source = ActivationScaleSource::kPerExpert;
        gemm2.act_scale = down_input_scale_.get<float>();
      }
      check_launch(launch_quantize_dequantize(hs, hq, c.intermediate, stream),
                   "quantize (intermediate)");
      gemm2.b = hq;
    }

    // ---- GEMM 2 and the combine ---------------------------------------------------------------
    auto* out_acc = sums ? sums : reinterpret_cast<float*>(at(layout_.out_acc));
    NVFP4MOE_CUDA_CHECK(
        cudaMemsetAsync(out_acc, 0, size_t(tokens * c.hidden) * sizeof(float), stream));
    gemm2.out = out_acc;
    gemm2.out_row_stride = c.hidden;
    gemm2.sorted_slot = sorted_slot;
    gemm2.topk_weights = args.topk_weights;
    gemm2.top_k = static_cast<int32_t>(c.top_k);
    check_launch(launch_grouped_gemm(shape, Epilogue::kDownCombine, gemm2, grid_tiles, stream),
                 "down GEMM");
    if (sums != nullptr) return;
    check_launch(launch_round_to_bf16(out_acc, args.output, tokens * c.hidden, stream),
                 "combine rounding");
  }

 public:
  void check_errors(void* stream_handle) override {
    NVFP4MOE_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_handle)));
    uint32_t flags = 0;
    copy_to_host(&flags, error_flags_.get(), sizeof flags);
    device_memset(error_flags_.get(), 0, sizeof flags);
    require(!(flags & kErrorBadExpertId), ErrorKind::kInvalidArgument,
            "forward: topk_ids held ids outside [-1, {}); those slots were skipped",
            config_.num_experts);
    require(!(flags & kErrorNonFiniteActivation), ErrorKind::kInvalidArgument,
            "forward: W4A4 met NaN or Inf activations to quantize");
  }

 private:
  GemmParams matrix_params(const PreparedMatrix& m) const {
    GemmParams p;
    p.codes = m.codes.get();
    p.scales = m.scales.get();
    p.expert_code_bytes = m.shape.code_bytes();
    p.expert_scale_bytes = m.shape.scale_bytes();
    p.row_groups = static_cast<int32_t>(m.shape.row_groups());
    p.k_chunks = static_cast<int32_t>(m.shape.k_chunks());
    p.k = static_cast<int32_t>(m.shape.k);
    return p;
  }

  MoeConfig config_;
  Layout layout_;
  PreparedMatrix gate_up_, down_;
  DeviceMemory gate_scale_, up_scale_, down_scale_, gate_up_input_scale_, down_input_scale_;
  DeviceMemory error_flags_;
};

}  // namespace

std::unique_ptr<CudaRunner> make_cuda_runner(const MoeConfig& config, const MoeWeights& weights) {
  validate_weights(config, weights);
  std::string reason;
  require(device_usable(&reason), ErrorKind::kUnsupported, "CUDA runner: {}", reason);
  return std::make_unique<CudaMoeRunner>(config, weights);
}

std::unique_ptr<MoeRunner> make_runner(const MoeConfig& config, const MoeWeights& weights) {
  return make_cuda_runner(config, weights);
}

}  // namespace nvfp4moe::cuda
