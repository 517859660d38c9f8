// The quantization a checkpoint's configuration files declare: config.json's
// `quantization_config` (or `compression_config`) and ModelOpt's hf_quant_config.json.
#include <fmt/format.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <string>

#include "core/check.hpp"
#include "core/file_io.hpp"
#include "nvfp4moe/moe_import.hpp"

namespace nvfp4moe {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr uint64_t kMaxConfigBytes = 64 << 20;
constexpr int kMaxConfigDepth = 32;
constexpr auto kFile = ErrorKind::kInvalidFile;

// A JSON value for a message: strings as they are, the rest as compact JSON, cut when long.
std::string shown(const json& value) {
  return printable(value.is_string() ? value.get_ref<const std::string&>() : value.dump(), 80);
}

// field `name` of `object`, or null.
const json& field(const json& object, const char* name) {
  static const json null;
  if (!object.is_object()) return null;
  const auto it = object.find(name);
  return it == object.end() ? null : *it;
}

std::string lower(std::string text) {
  for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

std::string string_or_empty(const json& value) {
  return value.is_string() ? value.get<std::string>() : std::string();
}

// ModelOpt: {"producer": {...}, "quantization": {"quant_algo": "NVFP4", "group_size": 16, ...}}
// (hf_quant_config.json) or config.json's {"quant_method": "modelopt", "quant_algo": ...}.
void check_modelopt(const json& config, const std::string& where, QuantizationConfig& out) {
  out.method = QuantizationConfig::Method::kModelOpt;
  const bool nested = field(config, "quantization").is_object();
  const json& body = nested ? field(config, "quantization") : config;
  const std::string path =
      nested ? (where.empty() ? "quantization" : where + ".quantization") : where;
  const json& producer = field(config, "producer");
  if (producer.is_object()) {
    out.fields.emplace_back("producer", fmt::format("{} {}", shown(field(producer, "name")),
                                                    shown(field(producer, "version"))));
  }
  const json& algo = field(body, "quant_algo");
  require(algo.is_string(), kFile, "{}: {}.quant_algo is {}, expected \"NVFP4\"", out.file, path,
          algo.is_null() ? "missing" : shown(algo));
  const std::string algo_name = algo.get<std::string>();
  const std::string upper = [&] {
    std::string u = algo_name;
    for (char& c : u) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return u;
  }();
  require(upper == "NVFP4" || upper == "MIXED_PRECISION", kFile,
          "{}: {}.quant_algo is '{}', expected 'NVFP4' (or 'MIXED_PRECISION' with NVFP4 experts)",
          out.file, path, printable(algo_name));
  out.fields.emplace_back("quant_algo", algo_name);
  const json& group = field(body, "group_size");
  if (!group.is_null()) {
    require(upper != "NVFP4" || (group.is_number_integer() && group.get<int64_t>() == 16), kFile,
            "{}: {}.group_size is {}, expected 16 (NVFP4 has one scale per 16 values)", out.file,
            path, shown(group));
    out.fields.emplace_back("group_size", shown(group));
  }
  for (const char* name : {"kv_cache_quant_algo", "exclude_modules", "ignore"}) {
    const json& value = field(body, name);
    if (value.is_array()) {
      out.fields.emplace_back(name, fmt::format("{} module patterns", value.size()));
    } else if (!value.is_null()) {
      out.fields.emplace_back(name, shown(value));
    }
  }
}

// compressed-tensors: {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
// "config_groups": {"group_0": {"weights": {"num_bits": 4, "type": "float", "strategy":
// "tensor_group", "group_size": 16, ...}, "input_activations": {...}, "targets": [...]}}, ...}
void check_compressed_tensors(const json& config, const std::string& where,
                              QuantizationConfig& out) {
  out.method = QuantizationConfig::Method::kCompressedTensors;
  constexpr std::string_view kNvfp4 = "nvfp4-pack-quantized";
  const std::string format = string_or_empty(field(config, "format"));
  require(format == kNvfp4 || format == "mixed-precision", kFile,
          "{}: {}.format is {}, expected '{}' (or 'mixed-precision' with NVFP4 groups)", out.file,
          where,
          field(config, "format").is_null() ? std::string("missing")
                                            : fmt::format("'{}'", shown(field(config, "format"))),
          kNvfp4);
  out.fields.emplace_back("format", format);
  const json& status = field(config, "quantization_status");
  if (!status.is_null()) {
    require(status == "compressed", kFile,
            "{}: {}.quantization_status is '{}', expected 'compressed' (packed NVFP4 tensors)",
            out.file, where, shown(status));
  }
  const json& groups = field(config, "config_groups");
  require(groups.is_object() && !groups.empty(), kFile,
          "{}: {}.config_groups is {}, expected an object of quantization groups", out.file, where,
          groups.is_null() ? "missing" : shown(groups));
  int nvfp4_groups = 0;
  for (const auto& [name, group] : groups.items()) {
    const std::string group_path = fmt::format("{}.config_groups.{}", where, printable(name));
    const std::string group_format =
        field(group, "format").is_string() ? field(group, "format").get<std::string>() : format;
    const json& weights = field(group, "weights");
    if (group_format != kNvfp4) {
      out.fields.emplace_back(printable(name), fmt::format("format {}", printable(group_format)));
      continue;
    }
    ++nvfp4_groups;
    require(weights.is_object(), kFile, "{}: {}.weights is {}, expected the NVFP4 weight scheme",
            out.file, group_path, weights.is_null() ? "missing" : shown(weights));
    const std::pair<const char*, json> expected[] = {
        {"num_bits", 4}, {"type", "float"}, {"strategy", "tensor_group"}, {"group_size", 16}};
    for (const auto& [key, value] : expected) {
      const json& actual = field(weights, key);
      require(actual == value, kFile, "{}: {}.weights.{} is {}, expected {}", out.file, group_path,
              key, actual.is_null() ? "missing" : shown(actual), shown(value));
    }
    const json& symmetric = field(weights, "symmetric");
    require(symmetric.is_null() || symmetric == true, kFile,
            "{}: {}.weights.symmetric is {}, expected true (NVFP4 has no zero points)", out.file,
            group_path, shown(symmetric));
    const json& activations = field(group, "input_activations");
    out.fields.emplace_back(
        printable(name),
        fmt::format("NVFP4 weights, {} activations, targets {}",
                    activations.is_object()
                        ? fmt::format("{}-bit {}", shown(field(activations, "num_bits")),
                                      shown(field(activations, "type")))
                        : std::string("unquantized"),
                    shown(field(group, "targets"))));
  }
  require(nvfp4_groups > 0, kFile, "{}: {}.config_groups has no group in format '{}'", out.file,
          where, kNvfp4);
  const json& ignore = field(config, "ignore");
  if (ignore.is_array()) {
    out.fields.emplace_back("ignore", fmt::format("{} module patterns", ignore.size()));
  }
}

// A `quantization_config` object (or hf_quant_config.json's whole content, `where` empty).
QuantizationConfig classify(const json& quant, std::string file, const std::string& where) {
  QuantizationConfig out;
  out.file = std::move(file);
  const std::string method = lower(string_or_empty(field(quant, "quant_method")));
  const bool modelopt_producer =
      string_or_empty(field(field(quant, "producer"), "name")) == "modelopt";
  if (method.starts_with("modelopt") || modelopt_producer || where.empty()) {
    check_modelopt(quant, where, out);
  } else if (method == "compressed-tensors" || method == "compressed_tensors") {
    check_compressed_tensors(quant, where, out);
  } else {
    out.method = QuantizationConfig::Method::kOther;
    out.fields.emplace_back("quant_method", method.empty() ? "(none)" : printable(method));
  }
  return out;
}

}  // namespace

QuantizationConfig parse_quantization_config(std::string_view json_text, std::string_view source) {
  const json quant = parse_json(json_text, source, kMaxConfigDepth);
  require(quant.is_object(), kFile, "{}: the quantization config is not a JSON object", source);
  const bool legacy_modelopt =
      field(quant, "quantization").is_object() && field(quant, "quant_method").is_null();
  return classify(quant, std::string(source), legacy_modelopt ? "" : "quantization_config");
}

QuantizationConfig read_quantization_config(const Checkpoint& checkpoint) {
  QuantizationConfig out;
  const fs::path directory = checkpoint.directory();
  const fs::path config_path = directory / "config.json";
  std::error_code error;
  if (fs::exists(config_path, error)) {
    const json config = read_json_file(config_path, kMaxConfigBytes, kMaxConfigDepth);
    const char* key = field(config, "quantization_config").is_object()  ? "quantization_config"
                      : field(config, "compression_config").is_object() ? "compression_config"
                                                                        : nullptr;
    if (key != nullptr) {
      const json& quant = field(config, key);
      out.file = config_path.string();
      const std::string method = lower(string_or_empty(field(quant, "quant_method")));
      const bool modelopt_producer =
          string_or_empty(field(field(quant, "producer"), "name")) == "modelopt";
      if (method.starts_with("modelopt") || modelopt_producer) {
        check_modelopt(quant, key, out);
      } else if (method == "compressed-tensors" || method == "compressed_tensors") {
        check_compressed_tensors(quant, key, out);
      } else {
        out.method = QuantizationConfig::Method::kOther;
        out.fields.emplace_back("quant_method", method.empty() ? "(none)" : printable(method));
      }
      return out;
    }
  }
  const fs::path modelopt_path = directory / "hf_quant_config.json";
  if (fs::exists(modelopt_path, error)) {
    out.file = modelopt_path.string();
    check_modelopt(read_json_file(modelopt_path, kMaxConfigBytes, kMaxConfigDepth), "", out);
  }
  return out;
}

std::optional<ExpertActivation> read_expert_activation(const Checkpoint& checkpoint) {
  const fs::path config_path = checkpoint.directory() / "config.json";
  std::error_code error;
  if (!fs::exists(config_path, error)) return std::nullopt;
  const json config = read_json_file(config_path, kMaxConfigBytes, kMaxConfigDepth);
  if (lower(string_or_empty(field(config, "model_type"))) != "gpt_oss") return std::nullopt;
  float limit = 7.0f;
  const json& value = field(config, "swiglu_limit");
  if (!value.is_null()) {
    require(value.is_number() && std::isfinite(value.get<double>()) && value.get<double>() > 0 &&
                value.get<double>() < 1e30,
            kFile, "{}: swiglu_limit is {}, expected a finite number > 0", config_path.string(),
            shown(value));
    limit = static_cast<float>(value.get<double>());
  }
  return ExpertActivation{Activation::kSwigluOai, limit};
}

}  // namespace nvfp4moe
