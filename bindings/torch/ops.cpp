// The torch ops of nvfp4moe: the schemas, and the CPU implementations as adapters from tensors to
// the library's raw pointers (the CUDA ones are in ops_cuda.cpp, built when torch and the
// library have CUDA). Every check beyond "is this tensor what the schema says" and every
// computation is the library's. Outputs are preallocated by the caller and marked Tensor!; the
// fake (meta) implementations live in python/nvfp4moe/_ops.py.
//
//   quantize(x, global_scale?, values!, scales!, global_scale_out!)      NVFP4 quantization
//   prepare_weights(values, scales, gate_up, codes!, scale_codes!)        weights -> kernel layout
//   prepared_bytes(rows, k, device) -> (codes, scales)                   its sizes, per matrix
//   moe_forward(hidden, topk_ids, topk_weights, <prepared weights>, ..., workspace!, errors!, out!)
//   moe_workspace_bytes(<config>, device) -> int
//   linear(x, <prepared weight>, ..., workspace!, errors!, out!)          dense NVFP4 linear
//   linear_workspace_bytes(<config>, device) -> int
//   load_moe_layer(path, layer, prefix?, naming, first_expert, num_experts?) -> (tensors, experts)
// The CUDA ops record input problems they find (ids out of range, non-finite W4A4 activations)
// in an int32 error word instead of stopping; nvfp4moe.check_errors reads it.
//
// Forwards that share a workspace are serialized (WorkspaceUse): on the host by a lock, so
// threads calling one module cannot interleave (the ops release the GIL, and the CPU ops compute
// in the workspace), and on the GPU by stream order: a forward on another stream than the
// workspace's last one first waits for that stream. Under CUDA-graph capture the caller orders
// replays (one stream, as engines run layers).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "nvfp4moe/checkpoint.hpp"
#include "nvfp4moe/device_forward.hpp"
#include "nvfp4moe/moe_import.hpp"
#include "nvfp4moe/quantize.hpp"
#include "nvfp4moe/runtime.hpp"
#include "ops_common.hpp"

namespace nvfp4moe::torch_ops {

namespace {

// The CPU backend's loops run on torch's intra-op thread pool (see core/parallel.hpp): engines
// pin that pool to cores, and threads of our own beside it made a vLLM CPU forward 10x slower.
void torch_parallel_for(int64_t count, const std::function<void(int64_t)>& body) {
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) body(i);
  });
}

const bool parallel_backend_installed = [] {
  set_cpu_parallel_backend(&torch_parallel_for);
  return true;
}();

}  // namespace

WorkspaceStripe& workspace_stripe(const at::Tensor& workspace) {
  constexpr size_t kStripes = 64;
  static auto* stripes = new std::array<WorkspaceStripe, kStripes>();  // lives past exit's ops
  return (*stripes)[std::hash<const void*>{}(workspace.data_ptr()) % kStripes];
}

MoeConfig moe_config(int64_t num_experts, int64_t num_local_experts, int64_t first_local_expert,
                     int64_t hidden, int64_t intermediate, int64_t top_k, int64_t max_tokens,
                     c10::string_view mode, c10::string_view activation_scale,
                     c10::string_view activation, double swiglu_limit) {
  return translating([&] {
    MoeConfig c;
    c.num_experts = num_experts;
    c.num_local_experts = num_local_experts;
    c.first_local_expert = first_local_expert;
    c.hidden = hidden;
    c.intermediate = intermediate;
    c.top_k = top_k;
    c.max_tokens = max_tokens;
    c.mode = parse_quant_mode(mode, "nvfp4moe: mode");
    c.activation_scale = parse_activation_scale(activation_scale, "nvfp4moe: activation_scale");
    c.activation = parse_activation(activation, "nvfp4moe: activation");
    c.swiglu_limit = static_cast<float>(swiglu_limit);
    c.validate();
    return c;
  });
}

void quantize_common(const at::Tensor& x, const at::Tensor& values, const at::Tensor& scales,
                     const at::Tensor& global_scale_out) {
  TORCH_CHECK_VALUE(x.dim() == 2, "nvfp4moe.quantize: x must be 2-D [rows, cols], got ", x.dim(),
                    " dimensions");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat,
                   "nvfp4moe.quantize: x must be bfloat16 or float32, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.is_contiguous(), "nvfp4moe.quantize: x must be contiguous");
  TORCH_CHECK_VALUE(x.size(1) % 16 == 0, "nvfp4moe.quantize: cols = ", x.size(1),
                    " is not a multiple of 16");
  expect(values, "values", at::kByte, x.device());
  expect_scales(scales, "scales", x.device());
  expect(global_scale_out, "global_scale_out", at::kFloat, x.device());
  expect_shape(values, "values", {x.size(0), x.size(1) / 2});
  expect_shape(scales, "scales", {x.size(0), x.size(1) / 16});
  TORCH_CHECK_VALUE(global_scale_out.numel() == 1,
                    "nvfp4moe.quantize: global_scale_out must "
                    "hold one element");
}

std::tuple<int64_t, int64_t> prepared_bytes(int64_t rows, int64_t k, c10::string_view device) {
  return translating([&] {
    const PreparedBytes bytes =
        nvfp4moe::prepared_bytes(device == "cpu" ? Device::kCpu : Device::kCuda, rows, k);
    return std::tuple{bytes.codes, bytes.scales};
  });
}

// values [E, rows, k/2] (or [rows, k/2]), scales [E, rows, k/16] (or [rows, k/16]): exactly
// these shapes, so a transposed or reshaped tensor of the right size is refused. Block scales
// must be finite E4M3 values >= 0: checked on the host, once, at load time.
void prepare_common(const at::Tensor& values, const at::Tensor& scales, bool gate_up,
                    at::Tensor& codes, at::Tensor& scale_codes, int64_t& experts, int64_t& rows,
                    int64_t& k) {
  TORCH_CHECK_VALUE(values.dim() == 2 || values.dim() == 3,
                    "nvfp4moe.prepare_weights: values has shape ", values.sizes(),
                    ", expected [rows, k/2] or [experts, rows, k/2]");
  expect(values, "values", at::kByte, values.device());
  expect_scales(scales, "scales", values.device());
  experts = values.dim() == 3 ? values.size(0) : 1;
  rows = values.size(-2);
  k = values.size(-1) * 2;
  std::vector<int64_t> scale_shape = {rows, k / 16};
  if (values.dim() == 3) scale_shape.insert(scale_shape.begin(), experts);
  TORCH_CHECK_VALUE(k % 16 == 0 && scales.sizes() == at::IntArrayRef(scale_shape),
                    "nvfp4moe.prepare_weights: scales have shape ", scales.sizes(), ", expected ",
                    at::IntArrayRef(scale_shape), " for values of shape ", values.sizes(),
                    " (one E4M3 scale per 16 values of a row)");
  expect(codes, "codes", at::kByte, values.device());
  expect(scale_codes, "scale_codes", at::kByte, values.device());
  const auto [code_bytes, scale_bytes] = prepared_bytes(rows, k, values.is_cuda() ? "cuda" : "cpu");
  expect_bytes(codes, "codes", experts * code_bytes);
  expect_bytes(scale_codes, "scale_codes", experts * scale_bytes);
  TORCH_CHECK_VALUE(!gate_up || rows % 32 == 0, "nvfp4moe.prepare_weights: gate_up rows ", rows,
                    " must be a multiple of 32");
  const at::Tensor host = scales.view(at::kByte).cpu().contiguous();
  translating([&] {
    validate_block_scales(ptr<const uint8_t>(host), experts, rows, k / 16, "block scales");
  });
}

namespace {

struct MoeTensors {
  const at::Tensor& hidden;
  const at::Tensor& topk_ids;
  const at::Tensor& topk_weights;
  const at::Tensor& w13_codes;
  const at::Tensor& w13_scale_codes;
  const at::Tensor& w13_global_scale;
  const at::Tensor& w2_codes;
  const at::Tensor& w2_scale_codes;
  const at::Tensor& w2_global_scale;
  const std::optional<at::Tensor>& w13_input_scale;
  const std::optional<at::Tensor>& w2_input_scale;
  const at::Tensor& workspace;
  const at::Tensor& errors;
  const at::Tensor& out;
};

// Shapes, dtypes and devices against the config; returns the token count.
int64_t check_moe(const MoeTensors& t, const MoeConfig& c) {
  const at::Device device = t.hidden.device();
  expect(t.hidden, "hidden_states", at::kBFloat16, device);
  TORCH_CHECK_VALUE(t.hidden.dim() == 2 && t.hidden.size(1) == c.hidden,
                    "nvfp4moe: hidden_states has shape ", t.hidden.sizes(), ", expected [T, ",
                    c.hidden, "]");
  const int64_t tokens = t.hidden.size(0);
  expect(t.topk_ids, "topk_ids", at::kInt, device);
  expect_shape(t.topk_ids, "topk_ids", {tokens, c.top_k});
  expect(t.topk_weights, "topk_weights", at::kFloat, device);
  expect_shape(t.topk_weights, "topk_weights", {tokens, c.top_k});
  const int64_t e = c.num_local_experts;
  const std::string kind = device.is_cuda() ? "cuda" : "cpu";
  const auto [w13_code_bytes, w13_scale_bytes] = prepared_bytes(2 * c.intermediate, c.hidden, kind);
  const auto [w2_code_bytes, w2_scale_bytes] = prepared_bytes(c.hidden, c.intermediate, kind);
  expect(t.w13_codes, "w13 codes", at::kByte, device);
  expect_bytes(t.w13_codes, "w13 codes", e * w13_code_bytes);
  expect(t.w13_scale_codes, "w13 scale codes", at::kByte, device);
  expect_bytes(t.w13_scale_codes, "w13 scale codes", e * w13_scale_bytes);
  expect(t.w2_codes, "w2 codes", at::kByte, device);
  expect_bytes(t.w2_codes, "w2 codes", e * w2_code_bytes);
  expect(t.w2_scale_codes, "w2 scale codes", at::kByte, device);
  expect_bytes(t.w2_scale_codes, "w2 scale codes", e * w2_scale_bytes);
  expect(t.w13_global_scale, "w13 global scale", at::kFloat, device);
  expect_shape(t.w13_global_scale, "w13 global scale", {2, e});
  expect(t.w2_global_scale, "w2 global scale", at::kFloat, device);
  expect_shape(t.w2_global_scale, "w2 global scale", {e});
  for (const auto& [scale, name] : {std::pair{&t.w13_input_scale, "w13 input scale"},
                                    std::pair{&t.w2_input_scale, "w2 input scale"}}) {
    if (scale->has_value()) {
      expect(**scale, name, at::kFloat, device);
      expect_shape(**scale, name, {e});
    } else {
      TORCH_CHECK_VALUE(
          !(c.mode == QuantMode::kW4A4 && c.activation_scale == ActivationScale::kStatic),
          "nvfp4moe: static W4A4 needs the ", name);
    }
  }
  expect(t.workspace, "workspace", at::kByte, device);
  expect(t.errors, "error word", at::kInt, device);
  TORCH_CHECK_VALUE(t.errors.numel() == 1, "nvfp4moe: the error word holds one int32");
  expect(t.out, "out", at::kBFloat16, device);
  expect_shape(t.out, "out", {tokens, c.hidden});
  return tokens;
}

int64_t moe_workspace_bytes(int64_t num_experts, int64_t num_local_experts,
                            int64_t first_local_expert, int64_t hidden, int64_t intermediate,
                            int64_t top_k, int64_t max_tokens, c10::string_view mode,
                            c10::string_view activation_scale, c10::string_view device) {
  const MoeConfig c =
      moe_config(num_experts, num_local_experts, first_local_expert, hidden, intermediate, top_k,
                 max_tokens, mode, activation_scale, "silu", 10.0);
  return translating([&] {
    return static_cast<int64_t>(workspace_bytes(device == "cpu" ? Device::kCpu : Device::kCuda, c));
  });
}

MoeConfig config_from(const at::Tensor& hidden, const at::Tensor& topk_ids,
                      const at::Tensor& w2_global_scale, int64_t num_experts,
                      int64_t first_local_expert, int64_t hidden_size, int64_t intermediate,
                      int64_t top_k, int64_t max_tokens, c10::string_view mode,
                      c10::string_view activation_scale, c10::string_view activation,
                      double swiglu_limit) {
  TORCH_CHECK_VALUE(hidden.dim() == 2 && hidden.size(1) == hidden_size,
                    "nvfp4moe: hidden_states has shape ", hidden.sizes(), ", expected [T, ",
                    hidden_size, "]");
  TORCH_CHECK_VALUE(
      topk_ids.dim() == 2 && topk_ids.size(0) == hidden.size(0) && topk_ids.size(1) == top_k,
      "nvfp4moe: topk_ids has shape ", topk_ids.sizes(), ", expected [", hidden.size(0), ", ",
      top_k, "]");
  TORCH_CHECK_VALUE(w2_global_scale.dim() == 1, "nvfp4moe: the w2 global scale must be 1-D [E]");
  return moe_config(num_experts, w2_global_scale.size(0), first_local_expert, hidden_size,
                    intermediate, top_k, max_tokens, mode, activation_scale, activation,
                    swiglu_limit);
}

}  // namespace

CheckedMoe check_moe_call(NVFP4MOE_MOE_ARGS) {
  const MoeConfig c = config_from(hidden, topk_ids, w2_global_scale, num_experts,
                                  first_local_expert, hidden_size, intermediate, top_k, max_tokens,
                                  mode, activation_scale, activation, swiglu_limit);
  const MoeTensors t{hidden,          topk_ids,
                     topk_weights,    w13_codes,
                     w13_scale_codes, w13_global_scale,
                     w2_codes,        w2_scale_codes,
                     w2_global_scale, w13_input_scale,
                     w2_input_scale,  workspace,
                     errors,          out};
  const int64_t tokens = check_moe(t, c);
  const size_t needed = translating(
      [&] { return workspace_bytes(hidden.is_cuda() ? Device::kCuda : Device::kCpu, c); });
  TORCH_CHECK_VALUE(workspace.nbytes() >= needed, "nvfp4moe: workspace has ", workspace.nbytes(),
                    " bytes, the layer needs ", needed);
  return {c, tokens};
}

LinearConfig linear_config(int64_t in_features, int64_t out_features, int64_t max_tokens,
                           c10::string_view mode, c10::string_view activation_scale) {
  return translating([&] {
    LinearConfig c{in_features, out_features, max_tokens,
                   parse_quant_mode(mode, "nvfp4moe.linear: mode"),
                   parse_activation_scale(activation_scale, "nvfp4moe.linear: activation_scale")};
    c.validate();
    return c;
  });
}

int64_t linear_workspace_bytes(int64_t in_features, int64_t out_features, int64_t max_tokens,
                               c10::string_view mode, c10::string_view activation_scale,
                               c10::string_view device) {
  const LinearConfig c =
      linear_config(in_features, out_features, max_tokens, mode, activation_scale);
  return translating([&] {
    return static_cast<int64_t>(
        nvfp4moe::linear_workspace_bytes(device == "cpu" ? Device::kCpu : Device::kCuda, c));
  });
}

namespace {

void check_linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scale_codes,
                  const at::Tensor& global_scale, const std::optional<at::Tensor>& input_scale,
                  const LinearConfig& c, const at::Tensor& errors, const at::Tensor& out) {
  const at::Device device = x.device();
  expect(x, "x", at::kBFloat16, device);
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) == c.in_features, "nvfp4moe.linear: x has shape ",
                    x.sizes(), ", expected [T, ", c.in_features, "]");
  const auto [code_bytes, scale_bytes] =
      prepared_bytes(c.out_features, c.in_features, device.is_cuda() ? "cuda" : "cpu");
  expect(codes, "weight codes", at::kByte, device);
  expect_bytes(codes, "weight codes", code_bytes);
  expect(scale_codes, "weight scale codes", at::kByte, device);
  expect_bytes(scale_codes, "weight scale codes", scale_bytes);
  expect(global_scale, "weight global scale", at::kFloat, device);
  TORCH_CHECK_VALUE(global_scale.numel() == 1, "nvfp4moe.linear: one weight global scale");
  if (c.mode == QuantMode::kW4A4 && c.activation_scale == ActivationScale::kStatic) {
    TORCH_CHECK_VALUE(input_scale.has_value() && input_scale->numel() == 1,
                      "nvfp4moe.linear: static W4A4 needs one input scale");
    expect(*input_scale, "input scale", at::kFloat, device);
  }
  expect(errors, "error word", at::kInt, device);
  expect(out, "out", at::kBFloat16, device);
  expect_shape(out, "out", {x.size(0), c.out_features});
}

}  // namespace

LinearConfig check_linear_call(NVFP4MOE_LINEAR_ARGS) {
  const LinearConfig c =
      linear_config(x.size(-1), out_features, max_tokens, mode, activation_scale);
  check_linear(x, codes, scale_codes, global_scale, input_scale, c, errors, out);
  expect(workspace, "workspace", at::kByte, x.device());
  const size_t needed = translating([&] {
    return nvfp4moe::linear_workspace_bytes(x.is_cuda() ? Device::kCuda : Device::kCpu, c);
  });
  TORCH_CHECK_VALUE(workspace.nbytes() >= needed, "nvfp4moe.linear: workspace has ",
                    workspace.nbytes(), " bytes, the layer needs ", needed);
  return c;
}

namespace {

void quantize_cpu(const at::Tensor& x, std::optional<double> global_scale, at::Tensor values,
                  at::Tensor scales, at::Tensor global_scale_out) {
  quantize_common(x, values, scales, global_scale_out);
  translating([&] {
    const at::Tensor x32 = x.to(at::kFloat).contiguous();
    const std::span<const float> input(ptr<const float>(x32), size_t(x32.numel()));
    const float g =
        global_scale
            ? static_cast<float>(*global_scale)
            : nvfp4_dynamic_global_scale(finite_amax(input, "nvfp4moe.quantize: x", x.size(1)));
    quantize_nvfp4(input, x.size(0), x.size(1), g, std::span(ptr<uint8_t>(values), values.nbytes()),
                   std::span(ptr<uint8_t>(scales), scales.nbytes()));
    *ptr<float>(global_scale_out) = g;
  });
}

void prepare_weights_cpu(const at::Tensor& values, const at::Tensor& scales, bool gate_up,
                         at::Tensor codes, at::Tensor scale_codes) {
  int64_t experts, rows, k;
  prepare_common(values, scales, gate_up, codes, scale_codes, experts, rows, k);
  codes.view({-1}).copy_(values.view({-1}));
  scale_codes.view({-1}).copy_(scales.view(at::kByte).view({-1}));
}

void moe_forward_cpu(NVFP4MOE_MOE_ARGS) {
  const auto [c, tokens] = check_moe_call(NVFP4MOE_MOE_ARG_NAMES);
  const WorkspaceUse use(workspace);
  translating([&] {
    MoeWeightsView w;
    w.gate_up_values = ptr<const uint8_t>(w13_codes);
    w.gate_up_scales = ptr<const uint8_t>(w13_scale_codes);
    w.gate_global_scale = ptr<const float>(w13_global_scale);
    w.up_global_scale = ptr<const float>(w13_global_scale) + c.num_local_experts;
    w.down_values = ptr<const uint8_t>(w2_codes);
    w.down_scales = ptr<const uint8_t>(w2_scale_codes);
    w.down_global_scale = ptr<const float>(w2_global_scale);
    w.gate_up_input_scale = w13_input_scale ? ptr<const float>(*w13_input_scale) : nullptr;
    w.down_input_scale = w2_input_scale ? ptr<const float>(*w2_input_scale) : nullptr;
    // The block scales were checked when the weights were prepared (prepare_weights); the
    // per-call checks are the per-expert scalars only.
    auto runner = make_cpu_runner(c, w, /*block_scales_checked=*/true);
    runner->forward({tokens, ptr<const uint16_t>(hidden), ptr<const int32_t>(topk_ids),
                     ptr<const float>(topk_weights), ptr<uint16_t>(out)},
                    workspace.data_ptr(), nullptr);
  });
}

void linear_cpu(NVFP4MOE_LINEAR_ARGS) {
  const LinearConfig c = check_linear_call(NVFP4MOE_LINEAR_ARG_NAMES);
  const WorkspaceUse use(workspace);
  translating([&] {
    const NvFp4View weight{ptr<const uint8_t>(codes), ptr<const uint8_t>(scale_codes),
                           *ptr<const float>(global_scale), c.out_features, c.in_features};
    auto layer =
        make_linear(Device::kCpu, c, weight, input_scale ? *ptr<const float>(*input_scale) : 0.0f);
    layer->forward(x.size(0), ptr<const uint16_t>(x), ptr<uint16_t>(out), nullptr, nullptr);
  });
}

// Raises the Python exception for the bits of an error word read back from a device.
void raise_errors(int64_t flags, int64_t num_experts, c10::string_view what) {
  translating([&] {
    raise_device_errors(static_cast<uint32_t>(flags), num_experts, std::string(what).c_str());
  });
}

// The checkpoint format a quantization config declares: "modelopt", "compressed-tensors" or
// "other"; an NVFP4 producer's config that describes anything else raises, naming the field.
std::string quantization_format(c10::string_view json_text, c10::string_view source) {
  return translating([&] {
    switch (parse_quantization_config(json_text, source).method) {
      case QuantizationConfig::Method::kModelOpt:
        return std::string("modelopt");
      case QuantizationConfig::Method::kCompressedTensors:
        return std::string("compressed-tensors");
      default:
        return std::string("other");
    }
  });
}

// ---- checkpoints ---------------------------------------------------------------------------

// A host tensor over `bytes` owned by `owner` (no copy).
template <typename T>
at::Tensor host_tensor(const std::shared_ptr<const MoeWeights>& owner, const std::vector<T>& data,
                       at::IntArrayRef shape, at::ScalarType dtype) {
  return at::from_blob(
      const_cast<T*>(data.data()), shape, [owner](void*) {}, at::TensorOptions().dtype(dtype));
}

// One MoE layer of a checkpoint, through the library's import (the CLI's checks and formats):
// w13_weight uint8 [E, 2I, H/2], w13_weight_scale uint8 [E, 2I, H/16], w13_weight_scale_2
// [E, 2] (gate, up), w2_weight [E, H, I/2], w2_weight_scale [E, H, I/16], w2_weight_scale_2
// [E], then, when the layer has static input scales, w13_input_scale [E] (gate/up's larger) and
// w2_input_scale [E]; and the layer's total expert count.
std::tuple<std::vector<at::Tensor>, int64_t> load_moe_layer(c10::string_view path, int64_t layer,
                                                            std::optional<c10::string_view> prefix,
                                                            c10::string_view naming,
                                                            int64_t first_expert,
                                                            std::optional<int64_t> num_experts) {
  return translating([&] {
    const Checkpoint checkpoint = Checkpoint::open(std::string(path));
    std::optional<ExpertNaming> chosen;
    if (prefix) chosen = ExpertNaming::from_style(naming, std::string(*prefix));
    const MoeLayerInfo info = select_moe_layer(checkpoint, layer, chosen ? &*chosen : nullptr);
    TORCH_CHECK_VALUE(first_expert >= 0 && first_expert < info.num_experts,
                      "nvfp4moe: first_expert = ", first_expert, ", but layer ", layer, " has ",
                      info.num_experts, " experts");
    const int64_t count = num_experts.value_or(info.num_experts - first_expert);
    TORCH_CHECK_VALUE(count >= 1 && count <= info.num_experts - first_expert, "nvfp4moe: experts [",
                      first_expert, ", ", first_expert, " + ", count, ") are outside layer ", layer,
                      "'s ", info.num_experts, " experts");
    if (!info.is_nvfp4()) {
      throw Error(ErrorKind::kUnsupported,
                  checkpoint.path().string() + ": layer " + std::to_string(layer) + " holds " +
                      info.format_name() +
                      " experts; the PyTorch ops take NVFP4 experts only so far (the nvfp4moe "
                      "CLI and the C++ library run MXFP4 layers on the CPU)");
    }
    auto weights =
        std::make_shared<const MoeWeights>(import_moe_layer(checkpoint, info, first_expert, count));
    const int64_t e = count, h = info.hidden, i = info.intermediate;
    std::vector<at::Tensor> tensors = {
        host_tensor(weights, weights->gate_up_values, {e, 2 * i, h / 2}, at::kByte),
        host_tensor(weights, weights->gate_up_scales, {e, 2 * i, h / 16}, at::kByte),
        at::stack({host_tensor(weights, weights->gate_global_scale, {e}, at::kFloat),
                   host_tensor(weights, weights->up_global_scale, {e}, at::kFloat)},
                  1),
        host_tensor(weights, weights->down_values, {e, h, i / 2}, at::kByte),
        host_tensor(weights, weights->down_scales, {e, h, i / 16}, at::kByte),
        host_tensor(weights, weights->down_global_scale, {e}, at::kFloat).clone(),
    };
    if (!weights->gate_up_input_scale.empty()) {
      tensors.push_back(
          host_tensor(weights, weights->gate_up_input_scale, {e}, at::kFloat).clone());
      tensors.push_back(host_tensor(weights, weights->down_input_scale, {e}, at::kFloat).clone());
    }
    return std::tuple{tensors, info.num_experts};
  });
}

}  // namespace

TORCH_LIBRARY(nvfp4moe, m) {
  m.def(
      "quantize(Tensor x, float? global_scale, Tensor(a!) values, Tensor(b!) scales, "
      "Tensor(c!) global_scale_out) -> ()");
  m.def(
      "prepare_weights(Tensor values, Tensor scales, bool gate_up, Tensor(a!) codes, "
      "Tensor(b!) scale_codes) -> ()");
  m.def("prepared_bytes(int rows, int k, str device) -> (int, int)", &prepared_bytes);
  m.def(
      "moe_forward(Tensor hidden_states, Tensor topk_ids, Tensor topk_weights, "
      "Tensor w13_codes, Tensor w13_scale_codes, Tensor w13_global_scale, Tensor w2_codes, "
      "Tensor w2_scale_codes, Tensor w2_global_scale, Tensor? w13_input_scale, "
      "Tensor? w2_input_scale, int num_experts, int first_local_expert, int hidden, "
      "int intermediate, int top_k, "
      "int max_tokens, str quant_mode, str activation_scale, str activation, float swiglu_limit, "
      "Tensor(a!) workspace, Tensor(b!) errors, Tensor(c!) out) -> ()");
  m.def(
      "moe_workspace_bytes(int num_experts, int num_local_experts, int first_local_expert, "
      "int hidden, int intermediate, int top_k, int max_tokens, str mode, "
      "str activation_scale, str device) -> int",
      &moe_workspace_bytes);
  m.def(
      "linear(Tensor x, Tensor codes, Tensor scale_codes, Tensor global_scale, "
      "Tensor? input_scale, int out_features, int max_tokens, str quant_mode, "
      "str activation_scale, "
      "Tensor(a!) workspace, Tensor(b!) errors, Tensor(c!) out) -> ()");
  m.def(
      "linear_workspace_bytes(int in_features, int out_features, int max_tokens, str mode, "
      "str activation_scale, str device) -> int",
      &linear_workspace_bytes);
  m.def("raise_errors(int flags, int num_experts, str what) -> ()", &raise_errors);
  m.def("quantization_format(str json, str source) -> str", &quantization_format);
  m.def(
      "load_moe_layer(str path, int layer, str? prefix, str naming, int first_expert, "
      "int? num_experts) -> (Tensor[], int)",
      &load_moe_layer);
}

TORCH_LIBRARY_IMPL(nvfp4moe, CPU, m) {
  m.impl("quantize", &quantize_cpu);
  m.impl("prepare_weights", &prepare_weights_cpu);
  m.impl("moe_forward", &moe_forward_cpu);
  m.impl("linear", &linear_cpu);
}

}  // namespace nvfp4moe::torch_ops
