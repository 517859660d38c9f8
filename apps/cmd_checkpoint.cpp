// `nvfp4moe quantize` and `nvfp4moe inspect`: making and reading NVFP4 expert checkpoints.
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "commands.hpp"
#include "common.hpp"
#include "core/check.hpp"
#include "core/convert.hpp"
#include "nvfp4moe/checkpoint.hpp"
#include "nvfp4moe/modelopt.hpp"
#include "nvfp4moe/quantize.hpp"

namespace nvfp4moe::app {

namespace fs = std::filesystem;

namespace {

struct NamingOptions {
  std::string prefix;  // empty: detect
  std::string naming = "hf";
};

void add_naming_options(CLI::App& app, NamingOptions& options) {
  app.add_option("--prefix", options.prefix,
                 "Expert tensor prefix with {layer}, e.g. 'model.layers.{layer}.mlp.experts.' "
                 "(default: detected from the tensor names)");
  app.add_option("--naming", options.naming,
                 "Projection names under --prefix: hf (gate_proj/up_proj/down_proj) or deepseek "
                 "(w1/w3/w2)")
      ->check(CLI::IsMember({"hf", "deepseek"}))
      ->capture_default_str();
}

std::vector<MoeLayerInfo> moe_layers(const Checkpoint& checkpoint, const NamingOptions& options) {
  if (options.prefix.empty()) return find_moe_layers(checkpoint);
  return find_moe_layers(checkpoint, ExpertNaming::from_style(options.naming, options.prefix));
}

// ---- quantize ----------------------------------------------------------------------------------

struct QuantizeOptions {
  std::string input;
  std::string output;
  NamingOptions naming;
};

// The three NVFP4 tensors of one weight are written one after another; the first to be written
// quantizes the weight and the last releases it, so one weight at a time is held in memory.
struct PendingQuantization {
  const Checkpoint* checkpoint;
  std::string source;
  std::optional<NvFp4Tensor> result;

  const NvFp4Tensor& get() {
    if (!result) {
      const TensorInfo& info = checkpoint->info(source);
      std::vector<float> values(static_cast<size_t>(info.num_elements()));
      convert_to_float(info.dtype, checkpoint->bytes(source), values);
      result = quantize_nvfp4(values, info.shape[0], info.shape[1]);
    }
    return *result;
  }
};

std::string strip_weight_suffix(const std::string& name) {
  return name.substr(0, name.size() - std::string(".weight").size());
}

// Adds every tensor of one shard to `writer`, quantizing the expert weights in `to_quantize`.
// Returns the names of the tensors written.
std::vector<std::string> plan_shard(const Checkpoint& checkpoint, const SafetensorsFile& shard,
                                    const std::set<std::string>& to_quantize,
                                    SafetensorsWriter& writer) {
  std::vector<std::string> written;
  for (const TensorInfo& info : shard.header().tensors) {
    if (!to_quantize.count(info.name)) {
      writer.add(info.name, info.dtype, info.shape, shard.bytes(info));
      written.push_back(info.name);
      continue;
    }
    const int64_t rows = info.shape[0];
    const int64_t cols = info.shape[1];
    const std::string base = strip_weight_suffix(info.name);
    auto pending = std::make_shared<PendingQuantization>();
    pending->checkpoint = &checkpoint;
    pending->source = info.name;
    writer.add(base + ".weight", DType::kU8, {rows, cols / 2}, [pending](std::span<std::byte> out) {
      const auto& values = pending->get().values;
      std::memcpy(out.data(), values.data(), values.size());
    });
    writer.add(base + ".weight_scale", DType::kF8E4M3, {rows, cols / kBlockSize},
               [pending](std::span<std::byte> out) {
                 const auto& scales = pending->get().scales;
                 std::memcpy(out.data(), scales.data(), scales.size());
               });
    writer.add(base + ".weight_scale_2", DType::kF32, {}, [pending](std::span<std::byte> out) {
      const float g = pending->get().global_scale;
      std::memcpy(out.data(), &g, sizeof g);
      pending->result.reset();
    });
    for (const char* suffix : {".weight", ".weight_scale", ".weight_scale_2"}) {
      written.push_back(base + suffix);
    }
  }
  return written;
}

void write_json(const fs::path& path, const nlohmann::json& value) {
  std::ofstream out(path);
  require(out.good(), ErrorKind::kIo, "{}: cannot create", path.string());
  out << value.dump(2) << "\n";
  require(out.good(), ErrorKind::kIo, "{}: write failed", path.string());
}

void run_quantize(const QuantizeOptions& options) {
  const fs::path output(options.output);
  require(fs::weakly_canonical(output) != fs::weakly_canonical(options.input),
          ErrorKind::kInvalidArgument, "quantize: the output {} must differ from the input",
          options.output);
  const Checkpoint checkpoint = Checkpoint::open(options.input);
  std::set<std::string> to_quantize;
  int64_t nvfp4_layers = 0;
  for (const MoeLayerInfo& layer : moe_layers(checkpoint, options.naming)) {
    if (layer.is_nvfp4) {
      ++nvfp4_layers;
      continue;
    }
    const ExpertNaming& n = layer.naming;
    for (int64_t e = 0; e < layer.num_experts; ++e) {
      for (const auto& projection : {n.gate, n.up, n.down}) {
        to_quantize.insert(n.tensor_name(layer.layer, e, projection, "weight"));
      }
    }
  }
  require(!to_quantize.empty(), ErrorKind::kInvalidFile,
          "{}: found no BF16/F16/F32 expert weights to quantize ({} MoE layers are NVFP4 already)",
          options.input, nvfp4_layers);

  const bool directory_mode = checkpoint.shards().size() > 1 || fs::is_directory(options.input) ||
                              fs::path(options.input).extension() == ".json";
  if (directory_mode) fs::create_directories(output);

  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"quantization", "NVFP4 experts (weight-only), written by nvfp4moe"}};
  nlohmann::json weight_map = nlohmann::json::object();
  uint64_t total_bytes = 0;
  for (const SafetensorsFile& shard : checkpoint.shards()) {
    SafetensorsWriter writer;
    writer.set_metadata(metadata);
    const auto names = plan_shard(checkpoint, shard, to_quantize, writer);
    const fs::path target = directory_mode ? output / shard.path().filename() : output;
    Progress progress(fmt::format("quantize {}", target.filename().string()));
    writer.write(target, [&](size_t done, size_t total) {
      progress.update(static_cast<int64_t>(done), static_cast<int64_t>(total));
    });
    total_bytes += fs::file_size(target);
    for (const auto& name : names) weight_map[name] = target.filename().string();
  }

  if (directory_mode) {
    write_json(output / "model.safetensors.index.json",
               {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}});
    // The modules left unquantized, for engines that read ModelOpt's description.
    std::set<std::string> exclude;
    for (const auto& name : checkpoint.tensor_names()) {
      const TensorInfo& info = checkpoint.info(name);
      if (info.shape.size() == 2 && name.ends_with(".weight") && !to_quantize.count(name)) {
        exclude.insert(strip_weight_suffix(name));
      }
    }
    write_json(output / "hf_quant_config.json",
               {{"producer", {{"name", "nvfp4moe"}, {"version", "0.1.0"}}},
                {"quantization",
                 {{"quant_algo", "NVFP4"},
                  {"group_size", kBlockSize},
                  {"kv_cache_quant_algo", nullptr},
                  {"exclude_modules", exclude}}}});
    // Configuration and tokenizer files travel with the weights.
    if (fs::is_directory(options.input)) {
      for (const auto& entry : fs::directory_iterator(options.input)) {
        const auto name = entry.path().filename().string();
        if (!entry.is_regular_file() || entry.path().extension() == ".safetensors" ||
            name == "model.safetensors.index.json" || name == "hf_quant_config.json") {
          continue;
        }
        fs::copy_file(entry.path(), output / name, fs::copy_options::overwrite_existing);
      }
    }
  }
  fmt::print("quantized {} expert weights to NVFP4 into {} ({:.1f} MB)\n", to_quantize.size(),
             options.output, static_cast<double>(total_bytes) / 1e6);
}

// ---- inspect -----------------------------------------------------------------------------------

struct InspectOptions {
  std::string checkpoint;
  NamingOptions naming;
  bool scales = false;
};

struct Range {
  double low = std::numeric_limits<double>::infinity();
  double high = -std::numeric_limits<double>::infinity();
  void add(double v) {
    low = std::min(low, v);
    high = std::max(high, v);
  }
  std::string str() const {
    return low > high ? std::string("-") : fmt::format("[{:.3g}, {:.3g}]", low, high);
  }
};

float scalar(const Checkpoint& checkpoint, const std::string& name) {
  float value;
  std::memcpy(&value, checkpoint.bytes(name).data(), sizeof value);
  return value;
}

void run_inspect(const InspectOptions& options) {
  const Checkpoint checkpoint = Checkpoint::open(options.checkpoint);
  uint64_t bytes = 0;
  for (const auto& shard : checkpoint.shards()) bytes += fs::file_size(shard.path());
  const auto layers = moe_layers(checkpoint, options.naming);
  fmt::print("{}: {} shard(s), {} tensors, {:.1f} MB; {} MoE layer(s)\n", options.checkpoint,
             checkpoint.shards().size(), checkpoint.tensor_names().size(),
             static_cast<double>(bytes) / 1e6, layers.size());
  if (layers.empty()) return;
  fmt::print("{:>5}  {:<34} {:>7} {:>6} {:>6} {:>6} {:>17} {:>17}{}\n", "layer", "expert prefix",
             "experts", "hidden", "inter", "format", "weight_scale_2", "input_scale",
             options.scales ? "  block scales (nonzero, NaN)" : "");
  for (const MoeLayerInfo& layer : layers) {
    Range global, input, block;
    int64_t nan_scales = 0;
    const ExpertNaming& n = layer.naming;
    if (layer.is_nvfp4) {
      Progress progress(fmt::format("scanning layer {}", layer.layer));
      for (int64_t e = 0; e < layer.num_experts; ++e) {
        for (const auto& projection : {n.gate, n.up, n.down}) {
          global.add(
              scalar(checkpoint, n.tensor_name(layer.layer, e, projection, "weight_scale_2")));
          if (layer.has_input_scales) {
            input.add(scalar(checkpoint, n.tensor_name(layer.layer, e, projection, "input_scale")));
          }
          if (!options.scales) continue;
          for (const std::byte code :
               checkpoint.bytes(n.tensor_name(layer.layer, e, projection, "weight_scale"))) {
            const float value = e4m3_decode(std::to_integer<uint8_t>(code));
            if (std::isnan(value)) {
              ++nan_scales;
            } else if (value != 0.0f) {
              block.add(value);
            }
          }
        }
        if (options.scales) progress.update(e + 1, layer.num_experts);
      }
    }
    std::string prefix = n.prefix;
    const auto at = prefix.find("{layer}");
    if (at != std::string::npos) prefix.replace(at, 7, std::to_string(layer.layer));
    fmt::print("{:>5}  {:<34} {:>7} {:>6} {:>6} {:>6} {:>17} {:>17}{}\n", layer.layer,
               prefix + "{e}." + n.gate, layer.num_experts, layer.hidden, layer.intermediate,
               layer.is_nvfp4 ? "NVFP4" : to_string(layer.weight_dtype), global.str(), input.str(),
               options.scales ? fmt::format("  {} {}", block.str(), nan_scales) : "");
  }
}

}  // namespace

void add_quantize(CLI::App& app) {
  auto options = std::make_shared<QuantizeOptions>();
  app.add_option("IN", options->input,
                 "A .safetensors file, an index .json, or a checkpoint directory")
      ->required();
  app.add_option("OUT", options->output,
                 "Output file (for a single-file input) or directory (for a sharded input)")
      ->required();
  add_naming_options(app, options->naming);
  app.callback([options] { run_quantize(*options); });
}

void add_inspect(CLI::App& app) {
  auto options = std::make_shared<InspectOptions>();
  app.add_option("CKPT", options->checkpoint,
                 "A .safetensors file, an index .json, or a checkpoint directory")
      ->required();
  add_naming_options(app, options->naming);
  app.add_flag("--scales", options->scales,
               "Also scan every block scale for its range and NaN codes (reads 1/8 of the "
               "expert bytes)");
  app.callback([options] { run_inspect(*options); });
}

}  // namespace nvfp4moe::app
