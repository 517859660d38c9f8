// MoE layers of a checkpoint: discovery from tensor names, format detection, the checks every
// tensor must pass, and the copy of NVFP4 experts into MoeWeights.
#include "nvfp4moe/moe_import.hpp"

#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <tuple>

#include "core/check.hpp"
#include "core/convert.hpp"
#include "nvfp4moe/format.hpp"

namespace nvfp4moe {

namespace {
constexpr auto kFile = ErrorKind::kInvalidFile;
constexpr int64_t kMaxExperts = int64_t{1} << 16;  // as MoeConfig
}  // namespace

// ---- Names ------------------------------------------------------------------------------------

const char* to_string(ExpertFormat format) {
  switch (format) {
    case ExpertFormat::kNvfp4ModelOpt:
      return "NVFP4 (ModelOpt)";
    case ExpertFormat::kNvfp4CompressedTensors:
      return "NVFP4 (compressed-tensors)";
    case ExpertFormat::kMxfp4:
      return "MXFP4";
    case ExpertFormat::kUnquantized:
      return "unquantized";
    case ExpertFormat::kUnsupported:
      return "unsupported";
  }
  return "?";
}

ExpertNaming ExpertNaming::hf(std::string prefix) {
  return {ExpertLayout::kPerExpert, std::move(prefix), "gate_proj", "up_proj", "down_proj"};
}

ExpertNaming ExpertNaming::deepseek(std::string prefix) {
  return {ExpertLayout::kPerExpert, std::move(prefix), "w1", "w3", "w2"};
}

ExpertNaming ExpertNaming::fused(std::string prefix) {
  return {ExpertLayout::kFused, std::move(prefix), "gate_up_proj", "gate_up_proj", "down_proj"};
}

ExpertNaming ExpertNaming::from_style(std::string_view style, std::string prefix) {
  if (style == "hf") return hf(std::move(prefix));
  if (style == "deepseek") return deepseek(std::move(prefix));
  if (style == "fused") return fused(std::move(prefix));
  fail(ErrorKind::kInvalidArgument,
       "unknown expert naming '{}', expected 'hf' (experts.{{e}}.gate_proj/up_proj/down_proj), "
       "'deepseek' (experts.{{e}}.w1/w3/w2) or 'fused' (experts.gate_up_proj/down_proj)",
       printable(style));
}

std::string ExpertNaming::layer_prefix(int64_t layer) const {
  std::string name = prefix;
  const auto at = name.find("{layer}");
  if (at != std::string::npos) name.replace(at, 7, std::to_string(layer));
  return name;
}

const std::string& ExpertNaming::projection_name(Projection projection) const {
  return projection == Projection::kGate ? gate : projection == Projection::kUp ? up : down;
}

namespace {

// The suffix of each role's tensor by format ("" where the format has no such tensor).
std::string_view role_suffix(ExpertFormat format, ExpertLayout layout, TensorRole role) {
  const bool fused = layout == ExpertLayout::kFused;
  if (role == TensorRole::kBias) return "bias";
  switch (format) {
    case ExpertFormat::kNvfp4ModelOpt: {
      constexpr std::array<std::string_view, 4> kSuffixes = {"weight", "weight_scale",
                                                             "weight_scale_2", "input_scale"};
      if (fused && role == TensorRole::kValues) return "";  // the fused tensor bears no suffix
      return kSuffixes[static_cast<int>(role)];
    }
    case ExpertFormat::kNvfp4CompressedTensors: {
      constexpr std::array<std::string_view, 4> kSuffixes = {
          "weight_packed", "weight_scale", "weight_global_scale", "input_global_scale"};
      return kSuffixes[static_cast<int>(role)];
    }
    case ExpertFormat::kMxfp4:
      if (fused) return role == TensorRole::kValues ? "blocks" : "scales";
      return role == TensorRole::kValues ? "weight" : "scale";
    default:
      return fused ? "" : "weight";
  }
}

}  // namespace

std::string expert_tensor_name(ExpertFormat format, const ExpertNaming& naming, int64_t layer,
                               int64_t expert, Projection projection, TensorRole role) {
  const std::string_view suffix = role_suffix(format, naming.layout, role);
  std::string name = naming.layer_prefix(layer);
  if (naming.layout == ExpertLayout::kPerExpert) {
    name += std::to_string(expert);
    name += '.';
    name += naming.projection_name(projection);
    name += '.';
    name += suffix;
  } else {
    name += naming.projection_name(projection);
    if (!suffix.empty()) {
      name += '_';
      name += suffix;
    }
  }
  return name;
}

std::string MoeLayerInfo::format_name() const {
  switch (format) {
    case ExpertFormat::kUnquantized:
      return to_string(weight_dtype);
    case ExpertFormat::kUnsupported:
      return "unsupported: " + format_detail;
    default:
      return to_string(format);
  }
}

// ---- Discovery --------------------------------------------------------------------------------

namespace {

bool parse_index(std::string_view digits, int64_t& value) {
  if (digits.empty() || digits.size() > 9) return false;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  return ec == std::errc() && end == digits.data() + digits.size();
}

// What a tensor name says about the expert layer it belongs to.
struct NameMatch {
  std::string prefix_template;  // "model.layers.{layer}.mlp.experts."
  int64_t layer = 0;
  ExpertLayout layout = ExpertLayout::kPerExpert;
  bool deepseek = false;  // w1/w2/w3
  int64_t expert = -1;    // per expert
};

// "<P>experts.<e>.<projection>.<suffix>" or "<P>experts.gate_up_proj..."/"down_proj...", where
// P holds the layer number as its last all-digit segment ("model.layers.3.mlp.").
bool match_expert_tensor(std::string_view name, NameMatch& match) {
  constexpr std::string_view kExperts = "experts.";
  size_t at = std::string_view::npos;
  for (size_t pos = name.find(kExperts); pos != std::string_view::npos;
       pos = name.find(kExperts, pos + 1)) {
    if (pos == 0 || name[pos - 1] == '.') at = pos;  // "shared_experts." is another module
  }
  if (at == std::string_view::npos) return false;
  const std::string_view prefix = name.substr(0, at + kExperts.size());
  const std::string_view rest = name.substr(at + kExperts.size());

  const auto dot = rest.find('.');
  int64_t expert = 0;
  if (dot != std::string_view::npos && parse_index(rest.substr(0, dot), expert)) {
    const std::string_view after = rest.substr(dot + 1);
    const auto projection_end = after.find('.');
    if (projection_end == std::string_view::npos || projection_end + 1 == after.size()) {
      return false;
    }
    const std::string_view projection = after.substr(0, projection_end);
    static constexpr std::array<std::string_view, 6> kProjections = {
        "gate_proj", "up_proj", "down_proj", "w1", "w3", "w2"};
    const auto it = std::find(kProjections.begin(), kProjections.end(), projection);
    if (it == kProjections.end()) return false;
    match.layout = ExpertLayout::kPerExpert;
    match.deepseek = it - kProjections.begin() >= 3;
    match.expert = expert;
  } else {
    bool fused = false;
    for (const std::string_view projection : {"gate_up_proj", "down_proj"}) {
      if (rest.substr(0, projection.size()) == projection &&
          (rest.size() == projection.size() || rest[projection.size()] == '_' ||
           rest[projection.size()] == '.')) {
        fused = true;
      }
    }
    if (!fused) return false;
    match.layout = ExpertLayout::kFused;
    match.deepseek = false;
    match.expert = -1;
  }

  // The layer: the last all-digit segment of the prefix.
  size_t segment_begin = 0;
  std::optional<std::pair<size_t, size_t>> number;
  for (size_t i = 0; i < prefix.size(); ++i) {
    if (prefix[i] != '.') continue;
    int64_t value = 0;
    if (parse_index(prefix.substr(segment_begin, i - segment_begin), value)) {
      number = {segment_begin, i};
      match.layer = value;
    }
    segment_begin = i + 1;
  }
  if (number) {
    match.prefix_template = std::string(prefix.substr(0, number->first)) + "{layer}" +
                            std::string(prefix.substr(number->second));
  } else {
    match.prefix_template = std::string(prefix);
    match.layer = 0;
  }
  return true;
}

std::string join_indices(const std::set<int64_t>& indices) {
  if (indices.size() <= 8) return fmt::format("{}", fmt::join(indices, ", "));
  return fmt::format("{} ... {} ({} in all)", *indices.begin(), *indices.rbegin(), indices.size());
}

// The expert numbers present under a per-expert naming's layer prefix.
std::set<int64_t> expert_indices(const Checkpoint& checkpoint, const ExpertNaming& naming,
                                 int64_t layer) {
  const std::string prefix = naming.layer_prefix(layer);
  std::set<int64_t> experts;
  for (const auto& name : checkpoint.tensor_names()) {
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string_view rest = std::string_view(name).substr(prefix.size());
    const auto dot = rest.find('.');
    int64_t expert = 0;
    if (dot == std::string_view::npos || !parse_index(rest.substr(0, dot), expert)) continue;
    const std::string_view after = rest.substr(dot + 1);
    for (const auto& projection : {naming.gate, naming.up, naming.down}) {
      if (after.size() > projection.size() && after.substr(0, projection.size()) == projection &&
          after[projection.size()] == '.') {
        experts.insert(expert);
      }
    }
  }
  return experts;
}

// ---- Checks -----------------------------------------------------------------------------------

void check_dimensions(const MoeLayerInfo& info, const std::string& source, int64_t block = 16) {
  require(info.hidden % block == 0 && info.intermediate % block == 0 && info.hidden > 0 &&
              info.intermediate > 0 && info.num_experts >= 1 && info.num_experts <= kMaxExperts,
          kFile,
          "{}: layer {} has {} experts, hidden {} and intermediate {}; expected 1..{} experts and "
          "dimensions that are positive multiples of {}",
          source, info.layer, info.num_experts, info.hidden, info.intermediate, kMaxExperts, block);
}

// A layer's experts are numbered 0 .. n-1: one missing in the middle is an error, not a
// smaller layer.
void check_no_gap(const std::set<int64_t>& experts, const MoeLayerInfo& info,
                  const std::string& source) {
  if (experts.empty() || *experts.rbegin() + 1 == static_cast<int64_t>(experts.size())) return;
  int64_t missing = 0;
  while (experts.count(missing)) ++missing;
  fail(kFile,
       "{}: layer {} ('{}'): experts {} are present but expert {} is missing; a layer's experts "
       "must be numbered 0 to n-1",
       source, info.layer, info.naming.layer_prefix(info.layer), join_indices(experts), missing);
}

class LayerChecker {
 public:
  LayerChecker(const Checkpoint& checkpoint, const MoeLayerInfo& info)
      : checkpoint_(checkpoint), info_(info), source_(checkpoint.path().string()) {}

  const TensorInfo& tensor(const std::string& name, std::initializer_list<DType> dtypes,
                           const std::vector<int64_t>& shape) const {
    require(checkpoint_.contains(name), kFile, "{}: missing tensor '{}'", source_, name);
    const TensorInfo& info = checkpoint_.info(name);
    require(std::find(dtypes.begin(), dtypes.end(), info.dtype) != dtypes.end(), kFile,
            "{}: tensor '{}' has dtype {}, expected {}", source_, name, to_string(info.dtype),
            to_string(*dtypes.begin()));
    require(info.shape == shape, kFile, "{}: tensor '{}' has shape [{}], expected [{}]", source_,
            name, fmt::join(info.shape, ", "), fmt::join(shape, ", "));
    return info;
  }

  // A global or input scale: one F32 per tensor ([] or [1]), or per expert in fused layouts
  // ([E], or [E, 2] for gate/up), or one for all experts ([] or [1]).
  const TensorInfo& scale_table(const std::string& name, bool gate_up) const {
    require(checkpoint_.contains(name), kFile, "{}: missing tensor '{}'", source_, name);
    const TensorInfo& info = checkpoint_.info(name);
    const auto& shape = info.shape;
    const int64_t e = info_.num_experts;
    const bool single = shape.empty() || (shape.size() == 1 && shape[0] == 1);
    const bool per_expert = info_.naming.layout == ExpertLayout::kFused &&
                            ((shape.size() == 1 && shape[0] == e) ||
                             (gate_up && shape.size() == 2 && shape[0] == e && shape[1] == 2));
    require(
        info.dtype == DType::kF32 && (single || per_expert), kFile,
        "{}: tensor '{}' is {} [{}], expected {}", source_, name, to_string(info.dtype),
        fmt::join(shape, ", "),
        info_.naming.layout == ExpertLayout::kFused
            ? fmt::format("F32 [{}]{} or one value", e, gate_up ? fmt::format(", [{}, 2]", e) : "")
            : std::string("a single F32 ([] or [1])"));
    return info;
  }

  // The value a scale table holds for `expert` and `projection`, checked: finite and >= 0
  // (positive where it is stored as a reciprocal).
  float scale(const std::string& name, int64_t expert, Projection projection) const {
    const TensorInfo& info = checkpoint_.info(name);
    size_t index = 0;
    if (info.num_elements() > 1) {
      index = static_cast<size_t>(expert);
      if (info.shape.size() == 2) index = 2 * index + (projection == Projection::kUp ? 1 : 0);
    }
    float stored;
    std::memcpy(&stored, checkpoint_.bytes(name).data() + index * sizeof stored, sizeof stored);
    const std::string where =
        info.num_elements() > 1 ? fmt::format("'{}'[{}]", name, index) : fmt::format("'{}'", name);
    if (info_.format == ExpertFormat::kNvfp4CompressedTensors) {
      // compressed-tensors stores the reciprocal: g = 1 / stored.
      const float g = 1.0f / stored;
      require(std::isfinite(stored) && stored > 0.0f && std::isfinite(g), kFile,
              "{}: tensor {} = {}, expected a finite value > 0 (it stores 1/scale)", source_, where,
              stored);
      return g;
    }
    require(std::isfinite(stored) && stored >= 0.0f, kFile,
            "{}: tensor {} = {}, expected a finite value >= 0", source_, where, stored);
    return stored;
  }

 private:
  const Checkpoint& checkpoint_;
  const MoeLayerInfo& info_;
  std::string source_;
};

// The format of a layer's experts, from the tensors of expert 0's gate (or the fused gate_up).
void detect_format(const Checkpoint& checkpoint, MoeLayerInfo& info) {
  const std::string base = info.naming.layout == ExpertLayout::kPerExpert
                               ? info.naming.layer_prefix(info.layer) + "0." + info.naming.gate
                               : info.naming.layer_prefix(info.layer) + info.naming.gate;
  const char separator = info.naming.layout == ExpertLayout::kPerExpert ? '.' : '_';
  const auto has = [&](std::string_view suffix) {
    return checkpoint.contains(suffix.empty() ? base : base + separator + std::string(suffix));
  };
  const std::string values =
      info.naming.layout == ExpertLayout::kPerExpert ? base + ".weight" : base;
  if (has("weight_packed")) {
    info.format = ExpertFormat::kNvfp4CompressedTensors;
    info.weight_dtype = checkpoint.info(base + separator + "weight_packed").dtype;
    return;
  }
  if (info.naming.layout == ExpertLayout::kFused && has("blocks")) {
    info.format = ExpertFormat::kMxfp4;
    info.weight_dtype = checkpoint.info(base + "_blocks").dtype;
    return;
  }
  require(checkpoint.contains(values), kFile,
          "{}: layer {}: expert tensors under '{}' hold no '{}' (nor '{}{}weight_packed')",
          checkpoint.path().string(), info.layer, info.naming.layer_prefix(info.layer), values,
          base, separator);
  const DType dtype = checkpoint.info(values).dtype;
  info.weight_dtype = dtype;
  if (dtype == DType::kU8 && has("weight_scale_2")) {
    info.format = ExpertFormat::kNvfp4ModelOpt;
  } else if ((dtype == DType::kU8 || dtype == DType::kI8) && has("scale")) {
    info.format = ExpertFormat::kMxfp4;
  } else if (dtype == DType::kBF16 || dtype == DType::kF16 || dtype == DType::kF32) {
    info.format = ExpertFormat::kUnquantized;
  } else {
    info.format = ExpertFormat::kUnsupported;
    std::vector<std::string> companions;
    for (const char* suffix :
         {"weight_scale", "weight_scale_inv", "scale", "scales", "qweight", "weight_zero_point"}) {
      if (has(suffix)) companions.emplace_back(suffix);
    }
    info.format_detail =
        fmt::format("{} weights{}{}", to_string(dtype), companions.empty() ? "" : " with ",
                    fmt::join(companions, ", "));
  }
}

// Experts, shapes and every tensor of an NVFP4 layer.
void check_nvfp4_layer(const Checkpoint& checkpoint, MoeLayerInfo& info,
                       const std::set<int64_t>& experts) {
  const LayerChecker check(checkpoint, info);
  const auto name = [&](int64_t e, Projection p, TensorRole role) {
    return info.tensor_name(e, p, role);
  };
  const std::string source = checkpoint.path().string();
  const TensorInfo& first = checkpoint.info(name(0, Projection::kGate, TensorRole::kValues));
  if (info.naming.layout == ExpertLayout::kPerExpert) {
    require(first.shape.size() == 2, kFile, "{}: tensor '{}' has {} dimensions, expected 2", source,
            first.name, first.shape.size());
    info.num_experts = static_cast<int64_t>(experts.size());
    info.intermediate = first.shape[0];
    info.hidden = 2 * first.shape[1];
  } else {
    require(first.shape.size() == 3 && first.shape[1] % 2 == 0, kFile,
            "{}: tensor '{}' has shape [{}], expected [experts, 2 * intermediate, hidden / 2]",
            source, first.name, fmt::join(first.shape, ", "));
    info.num_experts = first.shape[0];
    info.intermediate = first.shape[1] / 2;
    info.hidden = 2 * first.shape[2];
  }
  check_dimensions(info, source);
  info.has_input_scales = checkpoint.contains(name(0, Projection::kGate, TensorRole::kInputScale));

  const int64_t h = info.hidden;
  const int64_t i = info.intermediate;
  struct Shape {
    Projection projection;
    int64_t rows, cols;
  };
  if (info.naming.layout == ExpertLayout::kFused) {
    const int64_t e = info.num_experts;
    for (const Shape& s : {Shape{Projection::kGate, 2 * i, h}, Shape{Projection::kDown, h, i}}) {
      const bool gate_up = s.projection == Projection::kGate;
      check.tensor(name(0, s.projection, TensorRole::kValues), {DType::kU8},
                   {e, s.rows, s.cols / 2});
      check.tensor(name(0, s.projection, TensorRole::kBlockScales), {DType::kF8E4M3},
                   {e, s.rows, s.cols / kBlockSize});
      const std::string global = name(0, s.projection, TensorRole::kGlobalScale);
      check.scale_table(global, gate_up);
      const std::string input = name(0, s.projection, TensorRole::kInputScale);
      if (info.has_input_scales) {
        check.scale_table(input, gate_up);
      } else {
        require(!checkpoint.contains(input), kFile,
                "{}: '{}' exists but '{}' does not; input scales must be present for every "
                "projection or for none",
                source, input, name(0, Projection::kGate, TensorRole::kInputScale));
      }
      for (int64_t expert = 0; expert < e; ++expert) {
        for (const Projection p : gate_up ? std::vector{Projection::kGate, Projection::kUp}
                                          : std::vector{Projection::kDown}) {
          check.scale(global, expert, p);
          if (info.has_input_scales) check.scale(input, expert, p);
        }
      }
    }
    return;
  }

  // Per expert: 0 .. n-1, each with every tensor.
  check_no_gap(experts, info, source);
  for (int64_t e = 0; e < info.num_experts; ++e) {
    for (const Shape& s : {Shape{Projection::kGate, i, h}, Shape{Projection::kUp, i, h},
                           Shape{Projection::kDown, h, i}}) {
      check.tensor(name(e, s.projection, TensorRole::kValues), {DType::kU8}, {s.rows, s.cols / 2});
      check.tensor(name(e, s.projection, TensorRole::kBlockScales), {DType::kF8E4M3},
                   {s.rows, s.cols / kBlockSize});
      const std::string global = name(e, s.projection, TensorRole::kGlobalScale);
      check.scale_table(global, false);
      check.scale(global, e, s.projection);
      const std::string input = name(e, s.projection, TensorRole::kInputScale);
      if (info.has_input_scales) {
        check.scale_table(input, false);
        check.scale(input, e, s.projection);
      } else {
        require(!checkpoint.contains(input), kFile,
                "{}: '{}' exists but expert 0's {} has no input scale; input scales must be "
                "present for every expert or for none",
                source, input, info.naming.gate);
      }
    }
  }
}

// Experts, shapes and every tensor of an MXFP4 layer: DeepSeek-V4's per-expert w1/w3/w2 with
// .weight and .scale, or gpt-oss's fused _blocks/_scales/_bias with alternating gate/up rows.
void check_mxfp4_layer(const Checkpoint& checkpoint, MoeLayerInfo& info,
                       const std::set<int64_t>& experts) {
  const LayerChecker check(checkpoint, info);
  const auto name = [&](int64_t e, Projection p, TensorRole role) {
    return info.tensor_name(e, p, role);
  };
  const std::string source = checkpoint.path().string();
  const TensorInfo& first = checkpoint.info(name(0, Projection::kGate, TensorRole::kValues));
  const std::initializer_list<DType> scale_types = {DType::kF8E8M0, DType::kU8};
  if (info.naming.layout == ExpertLayout::kFused) {
    require(first.shape.size() == 4 && first.shape[1] % 2 == 0 && first.shape[3] == 16, kFile,
            "{}: tensor '{}' has shape [{}], expected [experts, 2 * intermediate, hidden / 32, "
            "16]",
            source, first.name, fmt::join(first.shape, ", "));
    info.num_experts = first.shape[0];
    info.intermediate = first.shape[1] / 2;
    info.hidden = first.shape[2] * kMxBlockSize;
    info.gate_up_interleaved = true;
    check_dimensions(info, source, kMxBlockSize);
    const int64_t e = info.num_experts, h = info.hidden, i = info.intermediate;
    const std::string gate_up_bias = name(0, Projection::kGate, TensorRole::kBias);
    const std::string down_bias = name(0, Projection::kDown, TensorRole::kBias);
    info.has_biases = checkpoint.contains(gate_up_bias);
    require(info.has_biases == checkpoint.contains(down_bias), kFile,
            "{}: '{}' exists but '{}' does not; the biases come together or not at all", source,
            info.has_biases ? gate_up_bias : down_bias, info.has_biases ? down_bias : gate_up_bias);
    struct Shape {
      Projection projection;
      int64_t rows, cols;
    };
    for (const Shape& s : {Shape{Projection::kGate, 2 * i, h}, Shape{Projection::kDown, h, i}}) {
      check.tensor(name(0, s.projection, TensorRole::kValues), {DType::kU8},
                   {e, s.rows, s.cols / kMxBlockSize, 16});
      check.tensor(name(0, s.projection, TensorRole::kBlockScales), scale_types,
                   {e, s.rows, s.cols / kMxBlockSize});
      if (info.has_biases) {
        check.tensor(name(0, s.projection, TensorRole::kBias),
                     {DType::kBF16, DType::kF16, DType::kF32}, {e, s.rows});
      }
    }
    return;
  }
  require(first.shape.size() == 2, kFile, "{}: tensor '{}' has {} dimensions, expected 2", source,
          first.name, first.shape.size());
  info.num_experts = static_cast<int64_t>(experts.size());
  info.intermediate = first.shape[0];
  info.hidden = 2 * first.shape[1];
  check_dimensions(info, source, kMxBlockSize);
  check_no_gap(experts, info, source);
  const int64_t h = info.hidden, i = info.intermediate;
  for (int64_t e = 0; e < info.num_experts; ++e) {
    for (const auto& [projection, rows, cols] :
         {std::tuple{Projection::kGate, i, h}, std::tuple{Projection::kUp, i, h},
          std::tuple{Projection::kDown, h, i}}) {
      check.tensor(name(e, projection, TensorRole::kValues), {info.weight_dtype}, {rows, cols / 2});
      check.tensor(name(e, projection, TensorRole::kBlockScales), scale_types,
                   {rows, cols / kMxBlockSize});
    }
  }
}

// Experts and shapes of a layer in another format (listed, and the input of `quantize`).
void check_other_layer(const Checkpoint& checkpoint, MoeLayerInfo& info,
                       const std::set<int64_t>& experts) {
  const std::string source = checkpoint.path().string();
  const auto values = [&](int64_t e, Projection p) {
    return info.tensor_name(e, p, TensorRole::kValues);
  };
  const TensorInfo& first = checkpoint.info(values(0, Projection::kGate));
  const auto& shape = first.shape;
  const bool per_expert = info.naming.layout == ExpertLayout::kPerExpert;
  if (per_expert) {
    info.num_experts = static_cast<int64_t>(experts.size());
    check_no_gap(experts, info, source);
  } else if (!shape.empty()) {
    info.num_experts = shape[0];
  }
  // Dimensions as each format stores them.
  if (info.format == ExpertFormat::kUnquantized) {
    require(shape.size() == (per_expert ? 2u : 3u), kFile,
            "{}: tensor '{}' has shape [{}], expected {}", source, first.name,
            fmt::join(shape, ", "),
            per_expert ? "[intermediate, hidden]" : "[experts, 2 * intermediate, hidden]");
    info.intermediate = per_expert ? shape[0] : shape[1] / 2;
    info.hidden = shape.back();
  } else if (per_expert && shape.size() == 2) {
    info.intermediate = shape[0];  // as stored; the format's packing is unknown
    info.hidden = shape[1];
  }
  if (info.format != ExpertFormat::kUnquantized) return;

  // Unquantized experts are the input of `quantize`: every projection must be there.
  check_dimensions(info, source);
  const LayerChecker check(checkpoint, info);
  const int64_t h = info.hidden;
  const int64_t i = info.intermediate;
  if (!per_expert) {
    check.tensor(values(0, Projection::kGate), {info.weight_dtype}, {info.num_experts, 2 * i, h});
    check.tensor(values(0, Projection::kDown), {info.weight_dtype}, {info.num_experts, h, i});
    return;
  }
  for (int64_t e = 0; e < info.num_experts; ++e) {
    check.tensor(values(e, Projection::kGate), {info.weight_dtype}, {i, h});
    check.tensor(values(e, Projection::kUp), {info.weight_dtype}, {i, h});
    check.tensor(values(e, Projection::kDown), {info.weight_dtype}, {h, i});
  }
}

// A layer's format must agree with what the configuration files declare.
void check_against_config(const Checkpoint& checkpoint, const QuantizationConfig& config,
                          const MoeLayerInfo& info) {
  using Method = QuantizationConfig::Method;
  const bool modelopt = info.format == ExpertFormat::kNvfp4ModelOpt;
  const bool compressed = info.format == ExpertFormat::kNvfp4CompressedTensors;
  require(!(config.method == Method::kModelOpt && compressed) &&
              !(config.method == Method::kCompressedTensors && modelopt),
          kFile, "{}: layer {} holds {} expert tensors, but {} declares a {} checkpoint",
          checkpoint.path().string(), info.layer, to_string(info.format), config.file,
          config.method == Method::kModelOpt ? "ModelOpt" : "compressed-tensors");
}

MoeLayerInfo describe(const Checkpoint& checkpoint, int64_t layer, const ExpertNaming& naming,
                      const QuantizationConfig& config, const std::set<int64_t>* known_experts) {
  MoeLayerInfo info;
  info.layer = layer;
  info.naming = naming;
  std::set<int64_t> experts;
  if (naming.layout == ExpertLayout::kPerExpert) {
    experts = known_experts ? *known_experts : expert_indices(checkpoint, naming, layer);
    const std::string gate0 = naming.layer_prefix(layer) + "0." + naming.gate + ".";
    require(!experts.empty(), kFile,
            "{}: no MoE layer {}: no tensor named '{}...' (check --layer, --prefix and "
            "--naming)",
            checkpoint.path().string(), layer, gate0);
    if (!experts.count(0)) {
      fail(kFile, "{}: layer {} ('{}'): experts {} are present but expert 0 is missing",
           checkpoint.path().string(), layer, naming.layer_prefix(layer), join_indices(experts));
    }
  } else {
    const std::string gate_up = naming.layer_prefix(layer) + naming.gate;
    bool any = false;
    for (const char* suffix : {"", "_weight_packed", "_blocks"}) {
      any = any || checkpoint.contains(gate_up + suffix);
    }
    require(any, kFile,
            "{}: no MoE layer {}: no tensor named '{}' (check --layer, --prefix and --naming)",
            checkpoint.path().string(), layer, gate_up);
  }
  detect_format(checkpoint, info);
  check_against_config(checkpoint, config, info);
  if (info.is_nvfp4()) {
    check_nvfp4_layer(checkpoint, info, experts);
  } else if (info.format == ExpertFormat::kMxfp4) {
    check_mxfp4_layer(checkpoint, info, experts);
  } else {
    check_other_layer(checkpoint, info, experts);
  }
  return info;
}

}  // namespace

MoeLayerInfo describe_moe_layer(const Checkpoint& checkpoint, int64_t layer,
                                const ExpertNaming& naming) {
  return describe(checkpoint, layer, naming, read_quantization_config(checkpoint), nullptr);
}

std::vector<MoeLayerInfo> find_moe_layers(const Checkpoint& checkpoint) {
  struct Key {
    int64_t layer;
    std::string prefix;
    ExpertLayout layout;
    bool deepseek;
    auto operator<=>(const Key&) const = default;
  };
  std::map<Key, std::set<int64_t>> candidates;
  NameMatch match;
  for (const auto& name : checkpoint.tensor_names()) {
    if (!match_expert_tensor(name, match)) continue;
    auto& experts = candidates[{match.layer, match.prefix_template, match.layout, match.deepseek}];
    if (match.expert >= 0) experts.insert(match.expert);
  }
  const QuantizationConfig config = read_quantization_config(checkpoint);
  std::vector<MoeLayerInfo> layers;
  for (const auto& [key, experts] : candidates) {
    const ExpertNaming naming = key.layout == ExpertLayout::kFused ? ExpertNaming::fused(key.prefix)
                                : key.deepseek ? ExpertNaming::deepseek(key.prefix)
                                               : ExpertNaming::hf(key.prefix);
    layers.push_back(describe(checkpoint, key.layer, naming, config, &experts));
  }
  return layers;
}

std::vector<MoeLayerInfo> find_moe_layers(const Checkpoint& checkpoint,
                                          const ExpertNaming& naming) {
  const auto at = naming.prefix.find("{layer}");
  std::set<int64_t> numbers;
  if (at == std::string::npos) {
    numbers.insert(0);
  } else {
    const std::string_view before = std::string_view(naming.prefix).substr(0, at);
    const std::string_view after = std::string_view(naming.prefix).substr(at + 7);
    for (const auto& name : checkpoint.tensor_names()) {
      if (name.compare(0, before.size(), before) != 0) continue;
      const auto digits_end = name.find_first_not_of("0123456789", before.size());
      int64_t layer = 0;
      if (digits_end == std::string::npos ||
          !parse_index(std::string_view(name).substr(before.size(), digits_end - before.size()),
                       layer) ||
          std::string_view(name).substr(digits_end, after.size()) != after) {
        continue;
      }
      numbers.insert(layer);
    }
  }
  const QuantizationConfig config = read_quantization_config(checkpoint);
  std::vector<MoeLayerInfo> layers;
  for (int64_t layer : numbers) {
    layers.push_back(describe(checkpoint, layer, naming, config, nullptr));
  }
  return layers;
}

MoeLayerInfo select_moe_layer(const Checkpoint& checkpoint, int64_t layer,
                              const ExpertNaming* naming) {
  if (naming != nullptr) return describe_moe_layer(checkpoint, layer, *naming);
  std::vector<MoeLayerInfo> matches;
  std::set<int64_t> available;
  for (auto& found : find_moe_layers(checkpoint)) {
    available.insert(found.layer);
    if (found.layer == layer) matches.push_back(std::move(found));
  }
  require(!matches.empty(), ErrorKind::kInvalidArgument, "{}: no MoE layer {} (layers found: {})",
          checkpoint.path().string(), layer,
          available.empty() ? std::string("none") : join_indices(available));
  if (matches.size() > 1) {
    std::vector<std::string> prefixes;
    for (const auto& match : matches) prefixes.push_back(match.naming.layer_prefix(layer));
    fail(ErrorKind::kInvalidArgument,
         "{}: layer {} matches several expert prefixes ({}); choose one with a prefix",
         checkpoint.path().string(), layer, fmt::join(prefixes, ", "));
  }
  return std::move(matches.front());
}

// ---- Import -----------------------------------------------------------------------------------

namespace {

// One fp32 value of a BF16, F16 or F32 tensor's bytes.
float float_at(std::span<const std::byte> bytes, DType dtype, size_t index) {
  switch (dtype) {
    case DType::kBF16: {
      uint16_t bits;
      std::memcpy(&bits, bytes.data() + 2 * index, 2);
      return bf16_to_float(bits);
    }
    case DType::kF16: {
      uint16_t bits;
      std::memcpy(&bits, bytes.data() + 2 * index, 2);
      return f16_to_float(bits);
    }
    default: {
      float value;
      std::memcpy(&value, bytes.data() + 4 * index, 4);
      return value;
    }
  }
}

// MXFP4 experts: codes and E8M0 scales copied as they are (a row of K values is K/2 code bytes
// and K/32 scale bytes in both producers' layouts); gpt-oss's alternating gate/up rows (and
// biases) are split into the gate rows, then the up rows; global scales are 1.
MoeWeights import_mxfp4_layer(const Checkpoint& checkpoint, const MoeLayerInfo& layer,
                              int64_t first_expert, int64_t num_experts,
                              const std::function<void(int64_t, int64_t)>& progress) {
  const int64_t h = layer.hidden, i = layer.intermediate;
  MoeWeights w =
      MoeWeights::allocate(num_experts, h, i, false, WeightFormat::kMxfp4, layer.has_biases);
  const auto name = [&](int64_t e, Projection p, TensorRole role) {
    return layer.tensor_name(e, p, role);
  };
  using P = Projection;
  using R = TensorRole;
  // Row `row` (of `rows` per expert) of expert e of a tensor holding `row_bytes` per row:
  // expert e's own tensor (per expert) or its slice of the fused one.
  const bool fused = layer.naming.layout == ExpertLayout::kFused;
  const auto copy_rows = [&](const std::string& tensor, int64_t e, int64_t rows, int64_t row_bytes,
                             int64_t first_row, int64_t row_step, uint8_t* destination,
                             int64_t count) {
    const auto source = checkpoint.bytes(tensor);
    const int64_t base = fused ? e * rows * row_bytes : 0;
    for (int64_t r = 0; r < count; ++r) {
      const int64_t at = base + (first_row + r * row_step) * row_bytes;
      require(at + row_bytes <= static_cast<int64_t>(source.size()), kFile,
              "{}: tensor '{}' has {} bytes, expected at least {}", checkpoint.path().string(),
              tensor, source.size(), at + row_bytes);
      std::memcpy(destination + r * row_bytes, source.data() + at, static_cast<size_t>(row_bytes));
    }
  };
  const int64_t h_codes = h / 2, h_scales = h / kMxBlockSize;
  const int64_t i_codes = i / 2, i_scales = i / kMxBlockSize;
  for (int64_t n = 0; n < num_experts; ++n) {
    const int64_t e = first_expert + n;
    uint8_t* gate_up_values = w.gate_up_values.data() + n * 2 * i * h_codes;
    uint8_t* gate_up_scales = w.gate_up_scales.data() + n * 2 * i * h_scales;
    if (layer.gate_up_interleaved) {
      // Rows 0, 2, 4, ... are gate rows, 1, 3, 5, ... up rows.
      for (const auto& [first_row, offset] : {std::pair{0, int64_t{0}}, std::pair{1, i}}) {
        copy_rows(name(e, P::kGate, R::kValues), e, 2 * i, h_codes, first_row, 2,
                  gate_up_values + offset * h_codes, i);
        copy_rows(name(e, P::kGate, R::kBlockScales), e, 2 * i, h_scales, first_row, 2,
                  gate_up_scales + offset * h_scales, i);
      }
    } else {
      copy_rows(name(e, P::kGate, R::kValues), e, i, h_codes, 0, 1, gate_up_values, i);
      copy_rows(name(e, P::kUp, R::kValues), e, i, h_codes, 0, 1, gate_up_values + i * h_codes, i);
      copy_rows(name(e, P::kGate, R::kBlockScales), e, i, h_scales, 0, 1, gate_up_scales, i);
      copy_rows(name(e, P::kUp, R::kBlockScales), e, i, h_scales, 0, 1,
                gate_up_scales + i * h_scales, i);
    }
    copy_rows(name(e, P::kDown, R::kValues), e, h, i_codes, 0, 1,
              w.down_values.data() + n * h * i_codes, h);
    copy_rows(name(e, P::kDown, R::kBlockScales), e, h, i_scales, 0, 1,
              w.down_scales.data() + n * h * i_scales, h);
    if (layer.has_biases) {
      const std::string gate_up_bias = name(e, P::kGate, R::kBias);
      const std::string down_bias = name(e, P::kDown, R::kBias);
      const DType gate_up_type = checkpoint.info(gate_up_bias).dtype;
      const DType down_type = checkpoint.info(down_bias).dtype;
      const auto gate_up = checkpoint.bytes(gate_up_bias);
      const auto down = checkpoint.bytes(down_bias);
      float* gate_up_out = w.gate_up_bias.data() + n * 2 * i;
      for (int64_t r = 0; r < i; ++r) {
        gate_up_out[r] = float_at(gate_up, gate_up_type, static_cast<size_t>(e * 2 * i + 2 * r));
        gate_up_out[i + r] =
            float_at(gate_up, gate_up_type, static_cast<size_t>(e * 2 * i + 2 * r + 1));
      }
      for (int64_t r = 0; r < h; ++r) {
        w.down_bias[static_cast<size_t>(n * h + r)] =
            float_at(down, down_type, static_cast<size_t>(e * h + r));
      }
    }
    if (progress) progress(n + 1, num_experts);
  }
  return w;
}

}  // namespace

MoeWeights import_moe_layer(const Checkpoint& checkpoint, const MoeLayerInfo& layer,
                            int64_t first_expert, int64_t num_experts,
                            const std::function<void(int64_t, int64_t)>& progress) {
  require(layer.format != ExpertFormat::kUnquantized, ErrorKind::kInvalidArgument,
          "{}: layer {} holds {} expert weights, not NVFP4; convert it with `nvfp4moe quantize`",
          checkpoint.path().string(), layer.layer, to_string(layer.weight_dtype));
  require(layer.is_importable(), ErrorKind::kUnsupported,
          "{}: layer {} holds {} experts; this version runs NVFP4 and MXFP4 experts",
          checkpoint.path().string(), layer.layer, layer.format_name());
  require(first_expert >= 0 && num_experts >= 1 && first_expert <= layer.num_experts &&
              num_experts <= layer.num_experts - first_expert,
          ErrorKind::kInvalidArgument, "import: experts [{}, {}) are outside layer {}'s {} experts",
          first_expert, first_expert + num_experts, layer.layer, layer.num_experts);
  if (layer.format == ExpertFormat::kMxfp4) {
    return import_mxfp4_layer(checkpoint, layer, first_expert, num_experts, progress);
  }
  const int64_t hidden = layer.hidden;
  const int64_t inter = layer.intermediate;
  MoeWeights w = MoeWeights::allocate(num_experts, hidden, inter, layer.has_input_scales);
  const LayerScales scales = read_layer_scales(checkpoint, layer);
  const bool fused = layer.naming.layout == ExpertLayout::kFused;
  const auto name = [&](int64_t e, Projection p, TensorRole role) {
    return layer.tensor_name(e, p, role);
  };
  // `bytes` bytes of `tensor` for expert e: all of a per-expert tensor, or slice e (of
  // `per_expert` bytes, at `offset` within it) of a fused one.
  const auto copy = [&](const std::string& tensor, int64_t e, size_t offset, uint8_t* destination,
                        size_t bytes) {
    const auto source = checkpoint.bytes(tensor);
    const size_t begin =
        fused ? static_cast<size_t>(e) * (source.size() / static_cast<size_t>(layer.num_experts)) +
                    offset
              : 0;
    require(begin + bytes <= source.size(), kFile, "{}: tensor '{}' has {} bytes, expected {}",
            checkpoint.path().string(), tensor, source.size(), begin + bytes);
    std::memcpy(destination, source.data() + begin, bytes);
  };
  const auto projection_values = static_cast<size_t>(inter * hidden / 2);
  const auto projection_scales = static_cast<size_t>(inter * hidden / kBlockSize);
  using P = Projection;
  using R = TensorRole;
  for (int64_t i = 0; i < num_experts; ++i) {
    const int64_t e = first_expert + i;
    uint8_t* gate_up_values = w.gate_up_values.data() + i * 2 * projection_values;
    uint8_t* gate_up_scales = w.gate_up_scales.data() + i * 2 * projection_scales;
    // Fused gate_up slices hold the gate rows, then the up rows: the w13 layout already.
    copy(name(e, P::kGate, R::kValues), e, 0, gate_up_values, projection_values);
    copy(name(e, P::kUp, R::kValues), e, fused ? projection_values : 0,
         gate_up_values + projection_values, projection_values);
    copy(name(e, P::kGate, R::kBlockScales), e, 0, gate_up_scales, projection_scales);
    copy(name(e, P::kUp, R::kBlockScales), e, fused ? projection_scales : 0,
         gate_up_scales + projection_scales, projection_scales);
    copy(name(e, P::kDown, R::kValues), e, 0, w.down_values.data() + i * projection_values,
         projection_values);
    copy(name(e, P::kDown, R::kBlockScales), e, 0, w.down_scales.data() + i * projection_scales,
         projection_scales);
    w.gate_global_scale[i] = scales.gate[e];
    w.up_global_scale[i] = scales.up[e];
    w.down_global_scale[i] = scales.down[e];
    if (layer.has_input_scales) {
      // Gate and up read the same activation, which can be quantized only once.
      w.gate_up_input_scale[i] = std::max(scales.gate_input[e], scales.up_input[e]);
      w.down_input_scale[i] = scales.down_input[e];
    }
    if (progress) progress(i + 1, num_experts);
  }
  return w;
}

LayerScales read_layer_scales(const Checkpoint& checkpoint, const MoeLayerInfo& layer) {
  require(layer.is_nvfp4(), ErrorKind::kInvalidArgument,
          "{}: layer {} holds {} experts, which have no NVFP4 scales", checkpoint.path().string(),
          layer.layer, layer.format_name());
  const LayerChecker check(checkpoint, layer);
  LayerScales scales;
  const auto read = [&](Projection p, TensorRole role, std::vector<float>& out) {
    out.resize(static_cast<size_t>(layer.num_experts));
    for (int64_t e = 0; e < layer.num_experts; ++e) {
      out[static_cast<size_t>(e)] = check.scale(layer.tensor_name(e, p, role), e, p);
    }
  };
  read(Projection::kGate, TensorRole::kGlobalScale, scales.gate);
  read(Projection::kUp, TensorRole::kGlobalScale, scales.up);
  read(Projection::kDown, TensorRole::kGlobalScale, scales.down);
  if (layer.has_input_scales) {
    read(Projection::kGate, TensorRole::kInputScale, scales.gate_input);
    read(Projection::kUp, TensorRole::kInputScale, scales.up_input);
    read(Projection::kDown, TensorRole::kInputScale, scales.down_input);
  }
  return scales;
}

}  // namespace nvfp4moe
