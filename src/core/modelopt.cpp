// ModelOpt NVFP4 expert import: layer discovery from tensor names and the copy into MoeWeights.
#include "nvfp4moe/modelopt.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cstring>
#include <map>
#include <set>

#include <fmt/ranges.h>

#include "core/check.hpp"

namespace nvfp4moe {

ExpertNaming ExpertNaming::hf(std::string prefix) {
  return {std::move(prefix), "gate_proj", "up_proj", "down_proj"};
}

ExpertNaming ExpertNaming::deepseek(std::string prefix) {
  return {std::move(prefix), "w1", "w3", "w2"};
}

ExpertNaming ExpertNaming::from_style(std::string_view style, std::string prefix) {
  if (style == "hf") return hf(std::move(prefix));
  if (style == "deepseek") return deepseek(std::move(prefix));
  fail(ErrorKind::kInvalidArgument,
       "unknown expert naming '{}', expected 'hf' (gate_proj/up_proj/down_proj) or 'deepseek' "
       "(w1/w3/w2)",
       style);
}

std::string ExpertNaming::tensor_name(int64_t layer, int64_t expert, std::string_view projection,
                                      std::string_view suffix) const {
  std::string name = prefix;
  const auto at = name.find("{layer}");
  if (at != std::string::npos) name.replace(at, 7, std::to_string(layer));
  name += std::to_string(expert);
  name += '.';
  name += projection;
  name += '.';
  name += suffix;
  return name;
}

namespace {

constexpr auto kFile = ErrorKind::kInvalidFile;

bool parse_index(std::string_view digits, int64_t& value) {
  if (digits.empty() || digits.size() > 9) return false;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  return ec == std::errc() && end == digits.data() + digits.size();
}

// A name "<P>experts.<e>.<proj>.weight" whose P holds "layers.<n>." gives the prefix template
// (P with the number replaced by {layer}), the layer and the projection.
struct NameMatch {
  std::string prefix_template;
  int64_t layer;
  std::string projection;
};

bool match_expert_weight(std::string_view name, NameMatch& match) {
  constexpr std::string_view kWeight = ".weight";
  constexpr std::string_view kExperts = "experts.";
  if (name.size() <= kWeight.size() || name.substr(name.size() - kWeight.size()) != kWeight) {
    return false;
  }
  const auto experts_at = name.rfind(kExperts);
  if (experts_at == std::string_view::npos) return false;
  std::string_view rest = name.substr(experts_at + kExperts.size());
  rest.remove_suffix(kWeight.size());  // "<e>.<proj>"
  const auto dot = rest.find('.');
  int64_t expert = 0;
  if (dot == std::string_view::npos || !parse_index(rest.substr(0, dot), expert)) return false;
  const std::string_view projection = rest.substr(dot + 1);
  static constexpr std::array<std::string_view, 6> kProjections = {
      "gate_proj", "up_proj", "down_proj", "w1", "w2", "w3"};
  if (std::find(kProjections.begin(), kProjections.end(), projection) == kProjections.end()) {
    return false;
  }
  const std::string_view prefix = name.substr(0, experts_at + kExperts.size());
  constexpr std::string_view kLayers = "layers.";
  const auto layers_at = prefix.rfind(kLayers);
  if (layers_at == std::string_view::npos) return false;
  const auto number_begin = layers_at + kLayers.size();
  const auto number_end = prefix.find('.', number_begin);
  if (number_end == std::string_view::npos ||
      !parse_index(prefix.substr(number_begin, number_end - number_begin), match.layer)) {
    return false;
  }
  match.prefix_template = std::string(prefix.substr(0, number_begin)) + "{layer}" +
                          std::string(prefix.substr(number_end));
  match.projection = std::string(projection);
  return true;
}

const TensorInfo& expect_tensor(const Checkpoint& checkpoint, const std::string& name,
                                std::initializer_list<DType> dtypes,
                                const std::vector<int64_t>& shape) {
  require(checkpoint.contains(name), kFile, "{}: missing tensor '{}'", checkpoint.path().string(),
          name);
  const TensorInfo& info = checkpoint.info(name);
  require(std::find(dtypes.begin(), dtypes.end(), info.dtype) != dtypes.end(), kFile,
          "{}: tensor '{}' has dtype {}, expected {}", checkpoint.path().string(), name,
          to_string(info.dtype), to_string(*dtypes.begin()));
  require(info.shape == shape, kFile, "{}: tensor '{}' has shape [{}], expected [{}]",
          checkpoint.path().string(), name, fmt::join(info.shape, ", "), fmt::join(shape, ", "));
  return info;
}

// A per-tensor scalar stored as shape [] or [1].
float read_scalar(const Checkpoint& checkpoint, const std::string& name) {
  require(checkpoint.contains(name), kFile, "{}: missing tensor '{}'", checkpoint.path().string(),
          name);
  const TensorInfo& info = checkpoint.info(name);
  require(info.dtype == DType::kF32 && info.num_elements() == 1 && info.shape.size() <= 1, kFile,
          "{}: tensor '{}' is {} [{}], expected a single F32 ([] or [1])",
          checkpoint.path().string(), name, to_string(info.dtype), fmt::join(info.shape, ", "));
  float value;
  std::memcpy(&value, checkpoint.bytes(name).data(), sizeof value);
  return value;
}

}  // namespace

MoeLayerInfo describe_moe_layer(const Checkpoint& checkpoint, int64_t layer,
                                const ExpertNaming& naming) {
  const std::string source = checkpoint.path().string();
  const std::string gate0 = naming.tensor_name(layer, 0, naming.gate, "weight");
  require(checkpoint.contains(gate0), kFile,
          "{}: no MoE layer {}: tensor '{}' is missing (check --layer, --prefix and --naming)",
          source, layer, gate0);

  MoeLayerInfo info;
  info.layer = layer;
  info.naming = naming;
  while (checkpoint.contains(naming.tensor_name(layer, info.num_experts, naming.gate, "weight"))) {
    ++info.num_experts;
  }
  const TensorInfo& first = checkpoint.info(gate0);
  require(first.shape.size() == 2, kFile, "{}: tensor '{}' has {} dimensions, expected 2", source,
          gate0, first.shape.size());
  info.weight_dtype = first.dtype;
  info.is_nvfp4 = first.dtype == DType::kU8;
  require(info.is_nvfp4 || first.dtype == DType::kBF16 || first.dtype == DType::kF16 ||
              first.dtype == DType::kF32,
          kFile, "{}: tensor '{}' has dtype {}, expected U8 (NVFP4) or BF16/F16/F32", source, gate0,
          to_string(first.dtype));
  info.intermediate = first.shape[0];
  info.hidden = info.is_nvfp4 ? 2 * first.shape[1] : first.shape[1];
  require(info.hidden % 16 == 0 && info.intermediate % 16 == 0 && info.hidden > 0 &&
              info.intermediate > 0,
          kFile, "{}: layer {} has hidden {} and intermediate {}; both must be multiples of 16",
          source, layer, info.hidden, info.intermediate);
  info.has_input_scales = info.is_nvfp4 && checkpoint.contains(naming.tensor_name(
                                               layer, 0, naming.gate, "input_scale"));

  const std::array<std::pair<std::string, std::array<int64_t, 2>>, 3> projections = {{
      {naming.gate, {info.intermediate, info.hidden}},
      {naming.up, {info.intermediate, info.hidden}},
      {naming.down, {info.hidden, info.intermediate}},
  }};
  for (int64_t e = 0; e < info.num_experts; ++e) {
    for (const auto& [projection, shape] : projections) {
      const auto name = [&](const char* suffix) {
        return naming.tensor_name(layer, e, projection, suffix);
      };
      if (!info.is_nvfp4) {
        expect_tensor(checkpoint, name("weight"), {info.weight_dtype}, {shape[0], shape[1]});
        continue;
      }
      expect_tensor(checkpoint, name("weight"), {DType::kU8}, {shape[0], shape[1] / 2});
      expect_tensor(checkpoint, name("weight_scale"), {DType::kF8E4M3}, {shape[0], shape[1] / 16});
      read_scalar(checkpoint, name("weight_scale_2"));
      if (info.has_input_scales) {
        read_scalar(checkpoint, name("input_scale"));
      } else {
        require(!checkpoint.contains(name("input_scale")), kFile,
                "{}: '{}' exists but expert 0's {} has no input_scale; input scales must be "
                "present for every expert or for none",
                source, name("input_scale"), naming.gate);
      }
    }
  }
  return info;
}

std::vector<MoeLayerInfo> find_moe_layers(const Checkpoint& checkpoint) {
  // (prefix template, layer) -> projections seen
  std::map<std::pair<int64_t, std::string>, std::set<std::string>> candidates;
  NameMatch match;
  for (const auto& name : checkpoint.tensor_names()) {
    if (match_expert_weight(name, match)) {
      candidates[{match.layer, match.prefix_template}].insert(match.projection);
    }
  }
  std::vector<MoeLayerInfo> layers;
  for (const auto& [key, projections] : candidates) {
    const auto& [layer, prefix] = key;
    const bool deepseek = projections.count("w1") > 0;
    const ExpertNaming naming =
        deepseek ? ExpertNaming::deepseek(prefix) : ExpertNaming::hf(prefix);
    layers.push_back(describe_moe_layer(checkpoint, layer, naming));
  }
  return layers;
}

std::vector<MoeLayerInfo> find_moe_layers(const Checkpoint& checkpoint,
                                          const ExpertNaming& naming) {
  const auto at = naming.prefix.find("{layer}");
  std::set<int64_t> numbers;
  if (at == std::string::npos) {
    if (checkpoint.contains(naming.tensor_name(0, 0, naming.gate, "weight"))) numbers.insert(0);
  } else {
    const std::string_view before = std::string_view(naming.prefix).substr(0, at);
    for (const auto& name : checkpoint.tensor_names()) {
      if (name.compare(0, before.size(), before) != 0) continue;
      const auto digits_end = name.find_first_not_of("0123456789", before.size());
      int64_t layer = 0;
      if (digits_end == std::string::npos ||
          !parse_index(std::string_view(name).substr(before.size(), digits_end - before.size()),
                       layer)) {
        continue;
      }
      if (name == naming.tensor_name(layer, 0, naming.gate, "weight")) numbers.insert(layer);
    }
  }
  std::vector<MoeLayerInfo> layers;
  for (int64_t layer : numbers) layers.push_back(describe_moe_layer(checkpoint, layer, naming));
  return layers;
}

MoeWeights import_moe_layer(const Checkpoint& checkpoint, const MoeLayerInfo& layer,
                            int64_t first_expert, int64_t num_experts,
                            const std::function<void(int64_t, int64_t)>& progress) {
  require(layer.is_nvfp4, ErrorKind::kInvalidArgument,
          "{}: layer {} holds {} expert weights, not NVFP4; convert it with `nvfp4moe quantize`",
          checkpoint.path().string(), layer.layer, to_string(layer.weight_dtype));
  require(first_expert >= 0 && num_experts >= 1 && first_expert + num_experts <= layer.num_experts,
          ErrorKind::kInvalidArgument, "import: experts [{}, {}) are outside layer {}'s {} experts",
          first_expert, first_expert + num_experts, layer.layer, layer.num_experts);
  const int64_t hidden = layer.hidden;
  const int64_t inter = layer.intermediate;
  MoeWeights w = MoeWeights::allocate(num_experts, hidden, inter, layer.has_input_scales);
  const ExpertNaming& naming = layer.naming;
  auto copy = [&](const std::string& name, uint8_t* destination, size_t bytes) {
    const auto source = checkpoint.bytes(name);
    require(source.size() == bytes, kFile, "{}: tensor '{}' has {} bytes, expected {}",
            checkpoint.path().string(), name, source.size(), bytes);
    std::memcpy(destination, source.data(), bytes);
  };
  const auto projection_values = static_cast<size_t>(inter * hidden / 2);
  const auto projection_scales = static_cast<size_t>(inter * hidden / 16);
  for (int64_t i = 0; i < num_experts; ++i) {
    const int64_t e = first_expert + i;
    const auto name = [&](const std::string& projection, const char* suffix) {
      return naming.tensor_name(layer.layer, e, projection, suffix);
    };
    uint8_t* gate_up_values = w.gate_up_values.data() + i * 2 * projection_values;
    uint8_t* gate_up_scales = w.gate_up_scales.data() + i * 2 * projection_scales;
    copy(name(naming.gate, "weight"), gate_up_values, projection_values);
    copy(name(naming.up, "weight"), gate_up_values + projection_values, projection_values);
    copy(name(naming.gate, "weight_scale"), gate_up_scales, projection_scales);
    copy(name(naming.up, "weight_scale"), gate_up_scales + projection_scales, projection_scales);
    copy(name(naming.down, "weight"), w.down_values.data() + i * projection_values,
         projection_values);
    copy(name(naming.down, "weight_scale"), w.down_scales.data() + i * projection_scales,
         projection_scales);
    w.gate_global_scale[i] = read_scalar(checkpoint, name(naming.gate, "weight_scale_2"));
    w.up_global_scale[i] = read_scalar(checkpoint, name(naming.up, "weight_scale_2"));
    w.down_global_scale[i] = read_scalar(checkpoint, name(naming.down, "weight_scale_2"));
    if (layer.has_input_scales) {
      // Gate and up read the same activation, which can be quantized only once.
      w.gate_up_input_scale[i] = std::max(read_scalar(checkpoint, name(naming.gate, "input_scale")),
                                          read_scalar(checkpoint, name(naming.up, "input_scale")));
      w.down_input_scale[i] = read_scalar(checkpoint, name(naming.down, "input_scale"));
    }
    if (progress) progress(i + 1, num_experts);
  }
  return w;
}

}  // namespace nvfp4moe
