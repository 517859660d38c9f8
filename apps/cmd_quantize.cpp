// `nvfp4moe quantize IN OUT`: BF16/F16/F32 expert weights -> an NVFP4 checkpoint that engines
// read (ModelOpt or compressed-tensors), written transactionally.
//
// What it guarantees: OUT appears whole or not at all. Everything is written into a private
// directory (or file) beside OUT, flushed to the disk, and published by one rename; a failure or
// a kill at any point leaves OUT as it was (absent, or the old one), and never a mix of two runs.
// OUT must not overlap IN however it is named (symlinks, `..`, hard links, an index file of IN's
// directory); an OUT that exists and is not empty is refused unless --force, which replaces it
// whole.
#include <fmt/format.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
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
#include "core/file_io.hpp"
#include "nvfp4moe/quantize.hpp"

namespace nvfp4moe::app {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kVersion = "0.1.0";

struct QuantizeOptions {
  std::string input;
  std::string output;
  NamingOptions naming;
  std::string format = "modelopt";
  bool force = false;
};

// ---- OUT must stay apart from IN ----------------------------------------------------------------

fs::path canonical_path(const fs::path& path) {
  std::error_code error;
  fs::path result = fs::weakly_canonical(fs::absolute(path, error), error);
  return error ? fs::absolute(path).lexically_normal() : result;
}

// True when `inner` is `outer` or lies below it.
bool within(const fs::path& inner, const fs::path& outer) {
  auto i = inner.begin();
  for (auto o = outer.begin(); o != outer.end(); ++o, ++i) {
    if (o->empty()) continue;  // a trailing separator
    if (i == inner.end() || *i != *o) return false;
  }
  return true;
}

bool same_file(const fs::path& a, const fs::path& b) {
  struct stat sa {
  }, sb{};
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

// Refuses an OUT that is, holds or sits in what IN reads.
void check_apart(const Checkpoint& checkpoint, const QuantizeOptions& options,
                 bool directory_mode) {
  const fs::path out = canonical_path(options.output);
  std::vector<fs::path> inputs;
  for (const auto& shard : checkpoint.shards()) inputs.push_back(shard.path());
  if (directory_mode) inputs.push_back(checkpoint.directory());
  inputs.push_back(options.input);
  for (const fs::path& input : inputs) {
    const fs::path in = canonical_path(input);
    const bool overlaps =
        within(in, out) || (directory_mode && within(out, in)) || same_file(options.output, input);
    require(!overlaps, ErrorKind::kInvalidArgument,
            "quantize: the output {} overlaps the input {} (as {}); write the result elsewhere",
            options.output, options.input, in.string());
  }
}

// ---- Quantization of one weight
// ------------------------------------------------------------------

// The global scale a reader of `format` will use: ModelOpt stores g itself; compressed-tensors
// stores 1/g, from which readers take g = 1/stored, so the codes are chosen with that g and the
// dequantized weights are exactly what a reader computes.
float global_scale_for(ExpertFormat format, float amax) {
  const float g = nvfp4_dynamic_global_scale(amax);
  if (format == ExpertFormat::kNvfp4ModelOpt) return g;
  const float stored = 1.0f / g;
  return 1.0f / stored;
}

float stored_global_scale(ExpertFormat format, float g) {
  return format == ExpertFormat::kNvfp4ModelOpt ? g : 1.0f / g;
}

// `rows` x `cols` elements of a source tensor from element `offset` on, as fp32.
std::vector<float> read_float(const Checkpoint& checkpoint, const std::string& name, int64_t offset,
                              int64_t rows, int64_t cols) {
  const TensorInfo& info = checkpoint.info(name);
  const size_t width = info.dtype == DType::kF32 ? 4 : 2;
  auto values = allocate_vector<float>(static_cast<size_t>(rows * cols),
                                       fmt::format("tensor '{}' in fp32", name));
  convert_to_float(
      info.dtype,
      checkpoint.bytes(name).subspan(static_cast<size_t>(offset) * width, values.size() * width),
      values);
  return values;
}

// One quantized matrix stack: `experts` matrices of [rows, cols] read from `source` (a fused
// tensor, or one matrix), each quantized with its own global scale. Made when its first output
// tensor is written and released after its last, so one weight at a time is in memory.
struct PendingWeight {
  const Checkpoint* checkpoint = nullptr;
  ExpertFormat format = ExpertFormat::kNvfp4ModelOpt;
  std::string source;
  int64_t experts = 1, rows = 0, cols = 0;
  // The global scale of matrix e; gate and up of an expert share one (see plan_layer).
  std::function<float(int64_t e)> global_scale;

  std::vector<uint8_t> values, scales;
  std::vector<float> globals;
  bool ready = false;

  void make() {
    if (ready) return;
    const int64_t per_matrix = rows * cols;
    values = allocate_vector<uint8_t>(static_cast<size_t>(experts * per_matrix / 2),
                                      fmt::format("the NVFP4 codes of '{}'", source));
    scales = allocate_vector<uint8_t>(static_cast<size_t>(experts * per_matrix / kBlockSize),
                                      fmt::format("the block scales of '{}'", source));
    globals.resize(static_cast<size_t>(experts));
    for (int64_t e = 0; e < experts; ++e) {
      const float g = global_scale(e);
      const std::vector<float> x = read_float(*checkpoint, source, e * per_matrix, rows, cols);
      quantize_nvfp4(x, rows, cols, g,
                     std::span(values).subspan(static_cast<size_t>(e * per_matrix / 2),
                                               static_cast<size_t>(per_matrix / 2)),
                     std::span(scales).subspan(static_cast<size_t>(e * per_matrix / kBlockSize),
                                               static_cast<size_t>(per_matrix / kBlockSize)));
      globals[static_cast<size_t>(e)] = stored_global_scale(format, g);
    }
    ready = true;
  }
  void release() {
    values = {};
    scales = {};
    globals = {};
    ready = false;
  }
};

// The amax of `rows` x `cols` elements of a source tensor, finite or an Error naming it.
float source_amax(const Checkpoint& checkpoint, const std::string& name, int64_t offset,
                  int64_t rows, int64_t cols) {
  const std::vector<float> x = read_float(checkpoint, name, offset, rows, cols);
  return finite_amax(x, fmt::format("{}: tensor '{}'", checkpoint.path().string(), name), cols);
}

// What replaces each source tensor: the outputs, in writing order.
struct Output {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  SafetensorsWriter::Fill fill;
};
using Plan = std::map<std::string, std::vector<Output>>;

// The three or four NVFP4 tensors of a pending weight.
std::vector<Output> outputs_of(const std::shared_ptr<PendingWeight>& weight, ExpertFormat format,
                               const MoeLayerInfo& layer, int64_t expert, Projection projection) {
  const bool fused = layer.naming.layout == ExpertLayout::kFused;
  const auto name = [&](TensorRole role) {
    return expert_tensor_name(format, layer.naming, layer.layer, expert, projection, role);
  };
  std::vector<int64_t> values_shape = {weight->rows, weight->cols / 2};
  std::vector<int64_t> scales_shape = {weight->rows, weight->cols / kBlockSize};
  std::vector<int64_t> global_shape;
  if (fused) {
    values_shape.insert(values_shape.begin(), weight->experts);
    scales_shape.insert(scales_shape.begin(), weight->experts);
    global_shape = {weight->experts};
  } else if (format == ExpertFormat::kNvfp4CompressedTensors) {
    global_shape = {1};  // as llm-compressor writes it
  }
  std::vector<Output> outputs;
  outputs.push_back(
      {name(TensorRole::kValues), DType::kU8, values_shape, [weight](std::span<std::byte> out) {
         weight->make();
         std::memcpy(out.data(), weight->values.data(), out.size());
       }});
  outputs.push_back({name(TensorRole::kBlockScales), DType::kF8E4M3, scales_shape,
                     [weight](std::span<std::byte> out) {
                       weight->make();
                       std::memcpy(out.data(), weight->scales.data(), out.size());
                     }});
  outputs.push_back({name(TensorRole::kGlobalScale), DType::kF32, global_shape,
                     [weight](std::span<std::byte> out) {
                       weight->make();
                       std::memcpy(out.data(), weight->globals.data(), out.size());
                       weight->release();
                     }});
  return outputs;
}

// Plans the quantization of one unquantized layer into `plan`. Gate and up of an expert share
// one global scale, from the larger amax of the two as ModelOpt does: engines keep one scale per
// expert for the fused w13 (vLLM reads w13_weight_scale_2[:, 0]).
void plan_layer(const Checkpoint& checkpoint, const MoeLayerInfo& layer, ExpertFormat format,
                Plan& plan) {
  const int64_t h = layer.hidden;
  const int64_t i = layer.intermediate;
  const auto source = [&](int64_t e, Projection p) {
    return layer.tensor_name(e, p, TensorRole::kValues);
  };
  const auto make = [&](const std::string& name, int64_t experts, int64_t rows, int64_t cols) {
    auto weight = std::make_shared<PendingWeight>();
    weight->checkpoint = &checkpoint;
    weight->format = format;
    weight->source = name;
    weight->experts = experts;
    weight->rows = rows;
    weight->cols = cols;
    return weight;
  };
  const Checkpoint* ckpt = &checkpoint;
  if (layer.naming.layout == ExpertLayout::kFused) {
    // gate_up [E, 2I, H]: one matrix per expert, whose amax covers gate and up.
    auto gate_up = make(source(0, Projection::kGate), layer.num_experts, 2 * i, h);
    gate_up->global_scale = [ckpt, format, name = gate_up->source, i, h](int64_t e) {
      return global_scale_for(format, source_amax(*ckpt, name, e * 2 * i * h, 2 * i, h));
    };
    auto down = make(source(0, Projection::kDown), layer.num_experts, h, i);
    down->global_scale = [ckpt, format, name = down->source, i, h](int64_t e) {
      return global_scale_for(format, source_amax(*ckpt, name, e * h * i, h, i));
    };
    plan[gate_up->source] = outputs_of(gate_up, format, layer, 0, Projection::kGate);
    plan[down->source] = outputs_of(down, format, layer, 0, Projection::kDown);
    return;
  }
  for (int64_t e = 0; e < layer.num_experts; ++e) {
    const std::string gate_name = source(e, Projection::kGate);
    const std::string up_name = source(e, Projection::kUp);
    auto shared = std::make_shared<std::optional<float>>();
    const auto pair_scale = [ckpt, format, gate_name, up_name, shared, i, h](int64_t) {
      if (!shared->has_value()) {
        *shared = global_scale_for(format, std::max(source_amax(*ckpt, gate_name, 0, i, h),
                                                    source_amax(*ckpt, up_name, 0, i, h)));
      }
      return shared->value();
    };
    auto gate = make(gate_name, 1, i, h);
    gate->global_scale = pair_scale;
    auto up = make(up_name, 1, i, h);
    up->global_scale = pair_scale;
    auto down = make(source(e, Projection::kDown), 1, h, i);
    down->global_scale = [ckpt, format, name = down->source, i, h](int64_t) {
      return global_scale_for(format, source_amax(*ckpt, name, 0, h, i));
    };
    plan[gate_name] = outputs_of(gate, format, layer, e, Projection::kGate);
    plan[up_name] = outputs_of(up, format, layer, e, Projection::kUp);
    plan[down->source] = outputs_of(down, format, layer, e, Projection::kDown);
  }
}

// ---- Configuration files
// ---------------------------------------------------------------------------

// The linear modules left unquantized: every 2-D floating-point weight the plan leaves alone.
std::vector<std::string> excluded_modules(const Checkpoint& checkpoint, const Plan& plan) {
  std::set<std::string> modules;
  for (const auto& name : checkpoint.tensor_names()) {
    const TensorInfo& info = checkpoint.info(name);
    const bool floating =
        info.dtype == DType::kBF16 || info.dtype == DType::kF16 || info.dtype == DType::kF32;
    if (info.shape.size() == 2 && floating && name.ends_with(".weight") && !plan.count(name)) {
      modules.insert(name.substr(0, name.size() - std::string_view(".weight").size()));
    }
  }
  return {modules.begin(), modules.end()};
}

json producer() { return {{"name", "nvfp4moe"}, {"version", kVersion}}; }

// config.json's quantization_config as each producer's engines read it.
json quantization_config(ExpertFormat format, const std::vector<std::string>& excluded) {
  if (format == ExpertFormat::kNvfp4ModelOpt) {
    return {{"quant_method", "modelopt"},     {"quant_algo", "NVFP4"}, {"group_size", kBlockSize},
            {"kv_cache_quant_algo", nullptr}, {"ignore", excluded},    {"producer", producer()}};
  }
  const json weights = {{"num_bits", 4},
                        {"type", "float"},
                        {"symmetric", true},
                        {"group_size", kBlockSize},
                        {"strategy", "tensor_group"},
                        {"dynamic", false},
                        {"actorder", nullptr},
                        {"block_structure", nullptr},
                        {"observer", "minmax"},
                        {"observer_kwargs", json::object()}};
  return {{"quant_method", "compressed-tensors"},
          {"format", "nvfp4-pack-quantized"},
          {"quantization_status", "compressed"},
          {"config_groups",
           {{"group_0",
             {{"targets", {"Linear"}},
              {"weights", weights},
              {"input_activations", nullptr},
              {"output_activations", nullptr},
              {"format", "nvfp4-pack-quantized"}}}}},
          {"ignore", excluded},
          {"kv_cache_scheme", nullptr},
          {"sparsity_config", json::object()},
          {"global_compression_ratio", nullptr}};
}

void write_json(const fs::path& path, const json& value) {
  write_file_atomically(path, value.dump(2) + "\n");
}

// Configuration, tokenizer and other files of IN's directory travel with the weights;
// config.json gains the quantization config, and ModelOpt's hf_quant_config.json is written.
void write_config_files(const fs::path& input_directory, const fs::path& staging,
                        ExpertFormat format, const std::vector<std::string>& excluded) {
  for (const auto& entry : fs::directory_iterator(input_directory)) {
    const std::string name = entry.path().filename().string();
    const bool leftover = name.starts_with(".") && name.find(".partial-") != std::string::npos;
    if (!entry.is_regular_file() || entry.path().extension() == ".safetensors" || leftover ||
        name == "model.safetensors.index.json" || name == "config.json" ||
        name == "hf_quant_config.json") {
      continue;
    }
    fs::copy_file(entry.path(), staging / name);
  }
  const fs::path config_path = input_directory / "config.json";
  json config =
      fs::exists(config_path) ? read_json_file(config_path, 64 << 20, 64) : json::object();
  require(config.is_object(), ErrorKind::kInvalidFile, "{}: is not a JSON object",
          config_path.string());
  config["quantization_config"] = quantization_config(format, excluded);
  write_json(staging / "config.json", config);
  if (format == ExpertFormat::kNvfp4ModelOpt) {
    write_json(staging / "hf_quant_config.json", {{"producer", producer()},
                                                  {"quantization",
                                                   {{"quant_algo", "NVFP4"},
                                                    {"group_size", kBlockSize},
                                                    {"kv_cache_quant_algo", nullptr},
                                                    {"exclude_modules", excluded}}}});
  }
}

// ---- The command
// ---------------------------------------------------------------------------------

// Adds every tensor of one shard to `writer`: copied, or replaced by the plan's outputs. Returns
// the names written and their bytes.
uint64_t plan_shard(const SafetensorsFile& shard, const Plan& plan, SafetensorsWriter& writer,
                    std::vector<std::string>& names) {
  uint64_t bytes = 0;
  for (const TensorInfo& info : shard.header().tensors) {
    const auto it = plan.find(info.name);
    if (it == plan.end()) {
      writer.add(info.name, info.dtype, info.shape, shard.bytes(info));
      names.push_back(info.name);
      bytes += info.num_bytes();
      continue;
    }
    for (const Output& output : it->second) {
      writer.add(output.name, output.dtype, output.shape, output.fill);
      names.push_back(output.name);
      uint64_t count = static_cast<uint64_t>(dtype_bits(output.dtype)) / 8;
      for (const int64_t extent : output.shape) count *= static_cast<uint64_t>(extent);
      bytes += count;
    }
  }
  return bytes;
}

void run_quantize(const QuantizeOptions& options) {
  const ExpertFormat format = options.format == "modelopt" ? ExpertFormat::kNvfp4ModelOpt
                                                           : ExpertFormat::kNvfp4CompressedTensors;
  const Checkpoint checkpoint = Checkpoint::open(options.input);
  std::error_code error;
  const bool directory_mode = checkpoint.shards().size() > 1 ||
                              fs::is_directory(options.input, error) ||
                              fs::path(options.input).extension() == ".json";
  check_apart(checkpoint, options, directory_mode);
  const fs::path output(options.output);
  require(
      directory_mode || !fs::is_directory(output, error), ErrorKind::kInvalidArgument,
      "quantize: {} is a directory, but a single-file input is written as a single .safetensors "
      "file",
      options.output);
  require(options.force || !occupied(output), ErrorKind::kInvalidArgument,
          "quantize: {} exists{}; pass --force to replace it whole", options.output,
          directory_mode ? " and is not empty" : "");

  const QuantizationConfig declared = read_quantization_config(checkpoint);
  require(declared.method == QuantizationConfig::Method::kNone ||
              (declared.method == QuantizationConfig::Method::kModelOpt) ==
                  (format == ExpertFormat::kNvfp4ModelOpt),
          ErrorKind::kInvalidArgument,
          "quantize: {} declares another quantization; writing {} would mix formats", declared.file,
          to_string(format));
  Plan plan;
  int64_t quantized_layers = 0;
  int64_t nvfp4_layers = 0;
  for (const MoeLayerInfo& layer : moe_layers(checkpoint, options.naming)) {
    if (layer.is_nvfp4()) {
      require(layer.format == format, ErrorKind::kInvalidArgument,
              "quantize: layer {} is {} already; writing the others as {} would mix formats",
              layer.layer, to_string(layer.format), to_string(format));
      ++nvfp4_layers;
    } else if (layer.format == ExpertFormat::kUnquantized) {
      plan_layer(checkpoint, layer, format, plan);
      ++quantized_layers;
    }
  }
  require(!plan.empty(), ErrorKind::kInvalidFile,
          "{}: found no BF16/F16/F32 expert weights to quantize ({} MoE layers are NVFP4 already)",
          options.input, nvfp4_layers);

  const std::map<std::string, std::string> metadata = {
      {"format", "pt"},
      {"quantization",
       fmt::format("NVFP4 experts ({}), written by nvfp4moe {}", to_string(format), kVersion)}};
  std::optional<StagingDirectory> staging;
  if (directory_mode) staging.emplace(output);
  json weight_map = json::object();
  uint64_t total_bytes = 0;
  for (const SafetensorsFile& shard : checkpoint.shards()) {
    SafetensorsWriter writer;
    writer.set_metadata(metadata);
    std::vector<std::string> names;
    total_bytes += plan_shard(shard, plan, writer, names);
    const fs::path target = directory_mode ? staging->path() / shard.path().filename() : output;
    Progress progress(fmt::format("quantize {}", shard.path().filename().string()));
    writer.write(
        target,
        [&](size_t done, size_t total) {
          progress.update(static_cast<int64_t>(done), static_cast<int64_t>(total));
        },
        /*replace=*/options.force);
    for (const auto& name : names) weight_map[name] = shard.path().filename().string();
  }
  if (directory_mode) {
    write_json(staging->path() / "model.safetensors.index.json",
               {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}});
    write_config_files(checkpoint.directory(), staging->path(), format,
                       excluded_modules(checkpoint, plan));
    staging->commit(options.force);
  }
  fmt::print("quantized {} expert weights of {} MoE layer(s) to {} into {} ({:.1f} MB)\n",
             plan.size(), quantized_layers, to_string(format), options.output,
             static_cast<double>(total_bytes) / 1e6);
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
  app.add_option("--format", options->format,
                 "Checkpoint format to write: modelopt (weight, weight_scale, weight_scale_2) or "
                 "compressed-tensors (weight_packed, weight_scale, weight_global_scale)")
      ->check(CLI::IsMember({"modelopt", "compressed-tensors"}))
      ->capture_default_str();
  app.add_flag("--force", options->force, "Replace an existing OUT (whole, never merged into)");
  app.callback([options] { run_quantize(*options); });
}

}  // namespace nvfp4moe::app
