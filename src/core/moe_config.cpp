// MoeConfig validation and the names of the enums.
#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>

#include "core/check.hpp"
#include "nvfp4moe/format.hpp"
#include "nvfp4moe/moe.hpp"

namespace nvfp4moe {

const char* to_string(QuantMode mode) {
  switch (mode) {
    case QuantMode::kW4A16:
      return "W4A16";
    case QuantMode::kW4A4:
      return "W4A4";
    case QuantMode::kW4A8:
      return "W4A8";
  }
  return "?";
}
const char* to_string(ActivationScale scale) {
  return scale == ActivationScale::kDynamic ? "dynamic" : "static";
}
const char* to_string(Activation activation) {
  switch (activation) {
    case Activation::kSilu:
      return "silu";
    case Activation::kSwigluClamped:
      return "swiglu_clamped";
    case Activation::kSwigluOai:
      return "swigluoai";
  }
  return "?";
}
const char* to_string(Device device) { return device == Device::kCpu ? "cpu" : "cuda"; }
const char* to_string(WeightFormat format) {
  return format == WeightFormat::kNvfp4 ? "NVFP4" : "MXFP4";
}

namespace {

bool same_name(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

template <typename Enum, size_t N>
Enum parse_enum(std::string_view name, std::string_view what,
                const std::array<std::pair<const char*, Enum>, N>& names) {
  std::string accepted;
  for (const auto& [text, value] : names) {
    if (same_name(name, text)) return value;
    accepted += fmt::format("{}'{}'", accepted.empty() ? "" : ", ", text);
  }
  fail(ErrorKind::kInvalidArgument, "{} = '{}', expected one of {}", what, printable(name),
       accepted);
}

}  // namespace

QuantMode parse_quant_mode(std::string_view name, std::string_view what) {
  return parse_enum<QuantMode, 3>(
      name, what,
      {{{"w4a16", QuantMode::kW4A16}, {"w4a4", QuantMode::kW4A4}, {"w4a8", QuantMode::kW4A8}}});
}

ActivationScale parse_activation_scale(std::string_view name, std::string_view what) {
  return parse_enum<ActivationScale, 2>(
      name, what, {{{"dynamic", ActivationScale::kDynamic}, {"static", ActivationScale::kStatic}}});
}

Activation parse_activation(std::string_view name, std::string_view what) {
  return parse_enum<Activation, 3>(name, what,
                                   {{{"silu", Activation::kSilu},
                                     {"swiglu_clamped", Activation::kSwigluClamped},
                                     {"swigluoai", Activation::kSwigluOai}}});
}

namespace {
// Bounds that keep every byte count of a layer far inside int64 and size_t.
constexpr int64_t kMaxDimension = int64_t{1} << 20;
constexpr int64_t kMaxExperts = int64_t{1} << 16;
constexpr int64_t kMaxTopK = 1024;
constexpr int64_t kMaxTokens = int64_t{1} << 24;
}  // namespace

void MoeConfig::validate() const {
  constexpr auto kArg = ErrorKind::kInvalidArgument;
  require(num_experts >= 1 && num_experts <= kMaxExperts, kArg,
          "MoeConfig: num_experts = {}, expected 1..{}", num_experts, kMaxExperts);
  require(num_local_experts >= 1 && num_local_experts <= num_experts, kArg,
          "MoeConfig: num_local_experts = {}, expected 1..num_experts ({})", num_local_experts,
          num_experts);
  require(first_local_expert >= 0 && first_local_expert <= num_experts - num_local_experts, kArg,
          "MoeConfig: first_local_expert = {} with {} local experts falls outside the {} "
          "experts of the layer (expected 0..{})",
          first_local_expert, num_local_experts, num_experts, num_experts - num_local_experts);
  for (auto [name, value] :
       {std::pair{"hidden", hidden}, std::pair{"intermediate", intermediate}}) {
    require(value >= kBlockSize && value <= kMaxDimension && value % kBlockSize == 0, kArg,
            "MoeConfig: {} = {}, expected a positive multiple of {} up to {}", name, value,
            kBlockSize, kMaxDimension);
  }
  require(top_k >= 1 && top_k <= kMaxTopK, kArg, "MoeConfig: top_k = {}, expected 1..{}", top_k,
          kMaxTopK);
  require(max_tokens >= 1 && max_tokens <= kMaxTokens, kArg,
          "MoeConfig: max_tokens = {}, expected 1..{}", max_tokens, kMaxTokens);
  require(!(mode == QuantMode::kW4A8 && activation_scale == ActivationScale::kStatic), kArg,
          "MoeConfig: activation_scale = static is W4A4's; W4A8 scales its activations per token "
          "and group of {} from the data (use dynamic)",
          kFp8GroupSize);
  if (activation != Activation::kSilu) {
    require(std::isfinite(swiglu_limit) && swiglu_limit > 0.0f, kArg,
            "MoeConfig: swiglu_limit = {}, expected a finite value > 0", swiglu_limit);
  }
}

MoeConfig MoeConfig::single_rank(int64_t num_experts, int64_t hidden, int64_t intermediate,
                                 int64_t top_k, int64_t max_tokens) {
  MoeConfig config;
  config.num_experts = num_experts;
  config.num_local_experts = num_experts;
  config.hidden = hidden;
  config.intermediate = intermediate;
  config.top_k = top_k;
  config.max_tokens = max_tokens;
  return config;
}

}  // namespace nvfp4moe
