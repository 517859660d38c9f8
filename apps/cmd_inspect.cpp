// `nvfp4moe inspect CKPT`: the format a checkpoint declares, and per MoE layer its experts,
// shapes, format and scale ranges.
#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <set>
#include <string>

#include "commands.hpp"
#include "common.hpp"
#include "core/check.hpp"
#include "nvfp4moe/format.hpp"

namespace nvfp4moe::app {

namespace fs = std::filesystem;

namespace {

struct InspectOptions {
  std::string checkpoint;
  NamingOptions naming;
  bool scales = false;
};

// A range of values that also counts what has no place in it (NaN), so nothing hides.
struct Range {
  double low = std::numeric_limits<double>::infinity();
  double high = -std::numeric_limits<double>::infinity();
  int64_t nan = 0;
  void add(double v) {
    if (std::isnan(v)) {
      ++nan;
      return;
    }
    low = std::min(low, v);
    high = std::max(high, v);
  }
  void add(const std::vector<float>& values) {
    for (const float v : values) add(v);
  }
  std::string str() const {
    const std::string range =
        low > high ? std::string("-") : fmt::format("[{:.3g}, {:.3g}]", low, high);
    return nan > 0 ? fmt::format("{} +{} NaN", range, nan) : range;
  }
};

// The format column: one word.
std::string short_format(const MoeLayerInfo& layer) {
  switch (layer.format) {
    case ExpertFormat::kNvfp4ModelOpt:
      return "NVFP4/modelopt";
    case ExpertFormat::kNvfp4CompressedTensors:
      return "NVFP4/compressed-tensors";
    case ExpertFormat::kUnquantized:
      return to_string(layer.weight_dtype);
    case ExpertFormat::kMxfp4:
      return layer.has_biases ? "MXFP4+bias" : "MXFP4";
    default:
      return "unsupported";
  }
}

std::string expert_pattern(const MoeLayerInfo& layer) {
  const ExpertNaming& n = layer.naming;
  return n.layout == ExpertLayout::kFused ? n.layer_prefix(layer.layer) + n.gate + "[e]"
                                          : n.layer_prefix(layer.layer) + "{e}." + n.gate;
}

// Block scales of a layer: the range of the nonzero ones, NaN and negative codes counted (E4M3
// for NVFP4, E8M0 powers of two for MXFP4).
std::string scan_block_scales(const Checkpoint& checkpoint, const MoeLayerInfo& layer,
                              Progress& progress) {
  std::set<std::string> tensors;
  for (int64_t e = 0; e < layer.num_experts; ++e) {
    for (const Projection p : {Projection::kGate, Projection::kUp, Projection::kDown}) {
      tensors.insert(layer.tensor_name(e, p, TensorRole::kBlockScales));
    }
  }
  Range range;
  int64_t negative = 0;
  int64_t done = 0;
  for (const auto& name : tensors) {
    for (const std::byte byte : checkpoint.bytes(name)) {
      const auto code = std::to_integer<uint8_t>(byte);
      const bool mx = layer.format == ExpertFormat::kMxfp4;
      const float value = mx ? e8m0_decode(code) : e4m3_decode(code);
      if (!mx && !std::isnan(value) && (code & 0x80) && value != 0.0f) ++negative;
      if (std::isnan(value) || value != 0.0f) range.add(value);
    }
    progress.update(++done, static_cast<int64_t>(tensors.size()));
  }
  return negative > 0 ? fmt::format("{} +{} negative", range.str(), negative) : range.str();
}

void run_inspect(const InspectOptions& options) {
  const Checkpoint checkpoint = Checkpoint::open(options.checkpoint);
  uint64_t bytes = 0;
  for (const auto& shard : checkpoint.shards()) bytes += fs::file_size(shard.path());
  const QuantizationConfig config = read_quantization_config(checkpoint);
  const auto layers = moe_layers(checkpoint, options.naming);
  fmt::print("{}: {} shard(s), {} tensors, {:.1f} MB; {} MoE layer(s)\n", options.checkpoint,
             checkpoint.shards().size(), checkpoint.tensor_names().size(),
             static_cast<double>(bytes) / 1e6, layers.size());
  if (config.method != QuantizationConfig::Method::kNone) {
    const char* method = config.method == QuantizationConfig::Method::kModelOpt ? "ModelOpt"
                         : config.method == QuantizationConfig::Method::kCompressedTensors
                             ? "compressed-tensors"
                             : "other";
    fmt::print("quantization config ({}): {}\n", fs::path(config.file).filename().string(), method);
    for (const auto& [key, value] : config.fields) fmt::print("  {}: {}\n", key, value);
  } else {
    fmt::print("quantization config: none (config.json and hf_quant_config.json declare none)\n");
  }
  require(!layers.empty(), ErrorKind::kInvalidFile,
          "{}: no MoE expert tensors found (looked for '...experts.<e>.gate_proj|w1...' and "
          "'...experts.gate_up_proj...' under a layer number; --prefix and --naming name them "
          "explicitly)",
          options.checkpoint);

  fmt::print("{:>5}  {:<44} {:>7} {:>6} {:>6}  {:<24} {:>19} {:>19}{}\n", "layer", "expert tensors",
             "experts", "hidden", "inter", "format", "global scale g", "input scale g",
             options.scales ? "  block scales (nonzero)" : "");
  int64_t usable = 0;
  std::vector<std::string> notes;
  for (const MoeLayerInfo& layer : layers) {
    Range global, input;
    std::string blocks;
    if (layer.is_nvfp4()) {
      const LayerScales scales = read_layer_scales(checkpoint, layer);
      global.add(scales.gate);
      global.add(scales.up);
      global.add(scales.down);
      input.add(scales.gate_input);
      input.add(scales.up_input);
      input.add(scales.down_input);
    }
    if (layer.format == ExpertFormat::kMxfp4) global.add(1.0f);  // no global scale
    if (options.scales && layer.is_importable()) {
      Progress progress(fmt::format("scanning layer {}", layer.layer));
      blocks = "  " + scan_block_scales(checkpoint, layer, progress);
    }
    if (layer.is_importable() || layer.format == ExpertFormat::kUnquantized) {
      ++usable;
      if (layer.format == ExpertFormat::kMxfp4) {
        notes.push_back(fmt::format(
            "layer {} ({}): MXFP4 experts{} run on the CPU reference (no GPU kernels for them "
            "yet)",
            layer.layer, layer.naming.layer_prefix(layer.layer),
            layer.has_biases ? " with biases" : ""));
      }
    } else {
      notes.push_back(
          fmt::format("layer {} ({}): experts in {} cannot be run or quantized by "
                      "this version (NVFP4, MXFP4 and BF16/F16/F32 only)",
                      layer.layer, layer.naming.layer_prefix(layer.layer), layer.format_name()));
    }
    fmt::print("{:>5}  {:<44} {:>7} {:>6} {:>6}  {:<24} {:>19} {:>19}{}\n", layer.layer,
               expert_pattern(layer), layer.num_experts, layer.hidden, layer.intermediate,
               short_format(layer), global.str(), input.str(), blocks);
  }
  for (const auto& note : notes) fmt::print("note: {}\n", note);
  require(usable > 0, ErrorKind::kUnsupported,
          "{}: none of its {} MoE layer(s) is in a format this version supports ({})",
          options.checkpoint, layers.size(), layers.front().format_name());
}

}  // namespace

void add_inspect(CLI::App& app) {
  auto options = std::make_shared<InspectOptions>();
  app.add_option("CKPT", options->checkpoint,
                 "A .safetensors file, an index .json, or a checkpoint directory")
      ->required();
  add_naming_options(app, options->naming);
  app.add_flag("--scales", options->scales,
               "Also scan every block scale for its range and NaN or negative codes (reads 1/8 "
               "of the expert bytes)");
  app.callback([options] { run_inspect(*options); });
}

}  // namespace nvfp4moe::app
