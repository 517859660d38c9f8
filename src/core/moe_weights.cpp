// Owning expert weights and their validation against a config.
#include <algorithm>
#include <cmath>
#include <tuple>

#include "core/check.hpp"
#include "nvfp4moe/format.hpp"
#include "nvfp4moe/moe.hpp"

namespace nvfp4moe {

MoeWeights MoeWeights::allocate(int64_t num_experts, int64_t hidden, int64_t intermediate,
                                bool with_input_scales, WeightFormat format, bool with_biases) {
  const int64_t block = weight_block_size(format);
  require(num_experts >= 0 && hidden % block == 0 && intermediate % block == 0 && hidden >= 0 &&
              intermediate >= 0,
          ErrorKind::kInvalidArgument,
          "MoeWeights: experts = {}, hidden = {}, intermediate = {}; expected counts >= 0 and "
          "dimensions that are multiples of {} ({})",
          num_experts, hidden, intermediate, block, to_string(format));
  MoeWeights w;
  w.format = format;
  w.num_experts = num_experts;
  w.hidden = hidden;
  w.intermediate = intermediate;
  const auto e = static_cast<size_t>(num_experts);
  const auto gate_up_elements = e * 2 * intermediate * hidden;
  const auto down_elements = e * hidden * intermediate;
  const std::string what =
      fmt::format("{} experts (hidden {}, intermediate {})", num_experts, hidden, intermediate);
  w.gate_up_values =
      allocate_vector<uint8_t>(gate_up_elements / 2, "the gate/up values of " + what);
  w.gate_up_scales =
      allocate_vector<uint8_t>(gate_up_elements / block, "the gate/up scales of " + what);
  w.down_values = allocate_vector<uint8_t>(down_elements / 2, "the down values of " + what);
  w.down_scales = allocate_vector<uint8_t>(down_elements / block, "the down scales of " + what);
  w.gate_global_scale.assign(e, 1.0f);
  w.up_global_scale.assign(e, 1.0f);
  w.down_global_scale.assign(e, 1.0f);
  if (with_input_scales) {
    w.gate_up_input_scale.assign(e, 1.0f);
    w.down_input_scale.assign(e, 1.0f);
  }
  if (with_biases) {
    w.gate_up_bias.assign(e * 2 * static_cast<size_t>(intermediate), 0.0f);
    w.down_bias.assign(e * static_cast<size_t>(hidden), 0.0f);
  }
  return w;
}

MoeWeightsView MoeWeights::view() const {
  MoeWeightsView v;
  v.format = format;
  v.gate_up_values = gate_up_values.data();
  v.gate_up_scales = gate_up_scales.data();
  v.gate_global_scale = gate_global_scale.data();
  v.up_global_scale = up_global_scale.data();
  v.down_values = down_values.data();
  v.down_scales = down_scales.data();
  v.down_global_scale = down_global_scale.data();
  v.gate_up_input_scale = gate_up_input_scale.empty() ? nullptr : gate_up_input_scale.data();
  v.down_input_scale = down_input_scale.empty() ? nullptr : down_input_scale.data();
  v.gate_up_bias = gate_up_bias.empty() ? nullptr : gate_up_bias.data();
  v.down_bias = down_bias.empty() ? nullptr : down_bias.data();
  return v;
}

size_t MoeWeights::bytes() const {
  return gate_up_values.size() + gate_up_scales.size() + down_values.size() + down_scales.size() +
         sizeof(float) * (gate_global_scale.size() + up_global_scale.size() +
                          down_global_scale.size() + gate_up_input_scale.size() +
                          down_input_scale.size() + gate_up_bias.size() + down_bias.size());
}

MoeWeights MoeWeights::slice(int64_t first, int64_t count) const {
  require(first >= 0 && count >= 1 && first + count <= num_experts, ErrorKind::kInvalidArgument,
          "MoeWeights::slice: experts [{}, {}) of {}", first, first + count, num_experts);
  MoeWeights out = allocate(count, hidden, intermediate, !gate_up_input_scale.empty(), format,
                            !gate_up_bias.empty());
  auto copy = [&](const auto& from, auto& to) {
    const size_t per_expert = from.size() / static_cast<size_t>(num_experts);
    std::copy_n(from.begin() + static_cast<ptrdiff_t>(first * per_expert), count * per_expert,
                to.begin());
  };
  copy(gate_up_values, out.gate_up_values);
  copy(gate_up_scales, out.gate_up_scales);
  copy(down_values, out.down_values);
  copy(down_scales, out.down_scales);
  copy(gate_global_scale, out.gate_global_scale);
  copy(up_global_scale, out.up_global_scale);
  copy(down_global_scale, out.down_global_scale);
  if (!gate_up_input_scale.empty()) {
    copy(gate_up_input_scale, out.gate_up_input_scale);
    copy(down_input_scale, out.down_input_scale);
  }
  if (!gate_up_bias.empty()) {
    copy(gate_up_bias, out.gate_up_bias);
    copy(down_bias, out.down_bias);
  }
  return out;
}

namespace {

void check_global_scales(const float* scales, int64_t count, const char* name) {
  require(scales != nullptr, ErrorKind::kInvalidArgument, "weights: {} is missing", name);
  for (int64_t e = 0; e < count; ++e) {
    require(std::isfinite(scales[e]) && scales[e] >= 0.0f, ErrorKind::kInvalidArgument,
            "weights: {}[{}] = {}, expected a finite value >= 0", name, e, scales[e]);
  }
}

void check_input_scales(const float* scales, int64_t count, const char* name) {
  require(scales != nullptr, ErrorKind::kInvalidArgument,
          "weights: static W4A4 needs {} but the weights have none", name);
  for (int64_t e = 0; e < count; ++e) {
    require(std::isfinite(scales[e]) && scales[e] > 0.0f, ErrorKind::kInvalidArgument,
            "weights: {}[{}] = {}, expected a finite value > 0", name, e, scales[e]);
  }
}

}  // namespace

void validate_block_scales(const uint8_t* scales, int64_t matrices, int64_t rows,
                           int64_t blocks_per_row, const char* name, WeightFormat format) {
  require(scales != nullptr, ErrorKind::kInvalidArgument, "weights: {} is missing", name);
  const int64_t per_matrix = rows * blocks_per_row;
  if (format == WeightFormat::kMxfp4) {
    const uint8_t* end = scales + per_matrix * matrices;
    const uint8_t* nan = std::find(scales, end, kE8M0NanCode);
    if (nan != end) {
      const int64_t i = nan - scales;
      const int64_t row = (i % per_matrix) / blocks_per_row, block = i % blocks_per_row;
      fail(ErrorKind::kInvalidArgument,
           "weights: {}[{}row {}, block {}] = 0xFF is NaN, expected an E8M0 scale (0x00..0xFE)",
           name, matrices > 1 ? fmt::format("expert {}, ", i / per_matrix) : std::string(), row,
           block);
    }
    return;
  }
  for (int64_t i = 0; i < per_matrix * matrices; ++i) {
    const uint8_t code = scales[i];
    if ((code & 0x7F) == kE4M3NanCode || (code & 0x80 && code != 0x80)) {
      const int64_t row = (i % per_matrix) / blocks_per_row, block = i % blocks_per_row;
      fail(ErrorKind::kInvalidArgument,
           "weights: {}[{}row {}, block {}] = 0x{:02X} is {}, expected a finite E4M3 scale >= 0",
           name, matrices > 1 ? fmt::format("expert {}, ", i / per_matrix) : std::string(), row,
           block, code, (code & 0x7F) == kE4M3NanCode ? "NaN" : "negative");
    }
  }
}

void validate_weights(const MoeConfig& config, const MoeWeightsView& w, bool block_scales_checked) {
  config.validate();
  const int64_t experts = config.num_local_experts;
  const int64_t hidden = config.hidden;
  const int64_t inter = config.intermediate;
  require(w.gate_up_values != nullptr && w.down_values != nullptr && w.gate_up_scales != nullptr &&
              w.down_scales != nullptr,
          ErrorKind::kInvalidArgument,
          "weights: gate_up_values, gate_up_scales, down_values and down_scales are required");
  const int64_t block = weight_block_size(w.format);
  require(hidden % block == 0 && inter % block == 0, ErrorKind::kInvalidArgument,
          "weights: {} needs hidden ({}) and intermediate ({}) to be multiples of {}",
          to_string(w.format), hidden, inter, block);
  if (!block_scales_checked) {
    validate_block_scales(w.gate_up_scales, experts, 2 * inter, hidden / block, "gate_up_scales",
                          w.format);
    validate_block_scales(w.down_scales, experts, hidden, inter / block, "down_scales", w.format);
  }
  require((w.gate_up_bias == nullptr) == (w.down_bias == nullptr), ErrorKind::kInvalidArgument,
          "weights: gate_up_bias and down_bias come together (one is given, the other not)");
  if (w.gate_up_bias != nullptr) {
    for (const auto& [bias, count, name] :
         {std::tuple{w.gate_up_bias, experts * 2 * inter, "gate_up_bias"},
          std::tuple{w.down_bias, experts * hidden, "down_bias"}}) {
      const float* bad =
          std::find_if(bias, bias + count, [](float v) { return !std::isfinite(v); });
      require(bad == bias + count, ErrorKind::kInvalidArgument,
              "weights: {}[{}] = {}, expected a finite value", name, bad - bias, *bad);
    }
  }
  check_global_scales(w.gate_global_scale, experts, "gate_global_scale");
  check_global_scales(w.up_global_scale, experts, "up_global_scale");
  check_global_scales(w.down_global_scale, experts, "down_global_scale");
  if (config.mode == QuantMode::kW4A4 && config.activation_scale == ActivationScale::kStatic) {
    check_input_scales(w.gate_up_input_scale, experts, "gate_up_input_scale");
    check_input_scales(w.down_input_scale, experts, "down_input_scale");
  }
}

}  // namespace nvfp4moe

namespace nvfp4moe {

void validate_weights(const MoeConfig& config, const MoeWeights& w) {
  config.validate();
  require(w.num_experts == config.num_local_experts && w.hidden == config.hidden &&
              w.intermediate == config.intermediate,
          ErrorKind::kInvalidArgument,
          "weights: shape (experts {}, hidden {}, intermediate {}) does not match the config "
          "(local experts {}, hidden {}, intermediate {})",
          w.num_experts, w.hidden, w.intermediate, config.num_local_experts, config.hidden,
          config.intermediate);
  const auto e = static_cast<size_t>(w.num_experts);
  const auto gate_up = e * 2 * static_cast<size_t>(w.intermediate * w.hidden);
  const auto down = e * static_cast<size_t>(w.hidden * w.intermediate);
  auto check = [](const char* name, size_t actual, size_t wanted) {
    require(actual == wanted, ErrorKind::kInvalidArgument,
            "weights: {} has {} elements, expected {}", name, actual, wanted);
  };
  check("gate_up_values", w.gate_up_values.size(), gate_up / 2);
  const auto block = static_cast<size_t>(weight_block_size(w.format));
  check("gate_up_scales", w.gate_up_scales.size(), gate_up / block);
  check("down_values", w.down_values.size(), down / 2);
  check("down_scales", w.down_scales.size(), down / block);
  check("gate_global_scale", w.gate_global_scale.size(), e);
  check("up_global_scale", w.up_global_scale.size(), e);
  check("down_global_scale", w.down_global_scale.size(), e);
  if (!w.gate_up_input_scale.empty()) check("gate_up_input_scale", w.gate_up_input_scale.size(), e);
  if (!w.down_input_scale.empty()) check("down_input_scale", w.down_input_scale.size(), e);
  if (!w.gate_up_bias.empty() || !w.down_bias.empty()) {
    check("gate_up_bias", w.gate_up_bias.size(), e * 2 * static_cast<size_t>(w.intermediate));
    check("down_bias", w.down_bias.size(), e * static_cast<size_t>(w.hidden));
  }
  validate_weights(config, w.view());
}

void validate_forward_args(const MoeConfig& config, const MoeForwardArgs& args) {
  require(args.num_tokens >= 0 && args.num_tokens <= config.max_tokens, ErrorKind::kInvalidArgument,
          "forward: {} tokens, but the layer was configured for at most {} (max_tokens)",
          args.num_tokens, config.max_tokens);
  if (args.num_tokens == 0) return;
  require(args.hidden != nullptr && args.topk_ids != nullptr && args.topk_weights != nullptr &&
              args.output != nullptr,
          ErrorKind::kInvalidArgument,
          "forward: hidden, topk_ids, topk_weights and output must all be given for {} tokens",
          args.num_tokens);
}

}  // namespace nvfp4moe

namespace nvfp4moe {

void raise_device_errors(uint32_t flags, int64_t num_experts, const char* what) {
  require(!(flags & kErrorBadExpertId), ErrorKind::kInvalidArgument,
          "{}: topk_ids held ids outside [-1, {}); those slots were skipped", what, num_experts);
  require(!(flags & kErrorNonFiniteActivation), ErrorKind::kInvalidArgument,
          "{}: W4A4 met NaN or Inf activations to quantize", what);
}

}  // namespace nvfp4moe
