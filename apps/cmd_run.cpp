// `nvfp4moe run CKPT --layer L --tokens T`: one real MoE layer of a checkpoint on random tokens
// and routing, against the BF16 layer its dequantized weights stand for.
#include <fmt/format.h>

#include <memory>
#include <optional>
#include <string>

#include "commands.hpp"
#include "common.hpp"
#include "core/check.hpp"
#include "cpu/expert_rows.hpp"
#include "nvfp4moe/checkpoint.hpp"
#include "nvfp4moe/moe_import.hpp"

namespace nvfp4moe::app {

namespace {

struct RunOptions {
  std::string checkpoint;
  int64_t layer = -1;
  int64_t tokens = 16;
  int64_t top_k = 8;
  std::string mode = "w4a16";
  int64_t first_expert = 0;
  std::optional<int64_t> num_local_experts;  // default: all from first_expert
  NamingOptions naming;
  float hidden_stddev = 1.0f;
  int repeats = 1;
  uint64_t seed = 1;
  LayerOptions layer_options;
};

MoeLayerInfo find_layer(const Checkpoint& checkpoint, const RunOptions& o) {
  if (o.naming.prefix.empty()) return select_moe_layer(checkpoint, o.layer);
  const ExpertNaming naming = ExpertNaming::from_style(o.naming.naming, o.naming.prefix);
  return select_moe_layer(checkpoint, o.layer, &naming);
}

void run_layer(const RunOptions& o) {
  const Checkpoint checkpoint = Checkpoint::open(o.checkpoint);
  const MoeLayerInfo layer = find_layer(checkpoint, o);
  require(o.first_expert < layer.num_experts, ErrorKind::kInvalidArgument,
          "--first-expert {} is past the layer's {} experts (0..{})", o.first_expert,
          layer.num_experts, layer.num_experts - 1);
  const int64_t local = o.num_local_experts.value_or(layer.num_experts - o.first_expert);
  require(local <= layer.num_experts - o.first_expert, ErrorKind::kInvalidArgument,
          "--first-expert {} with --local-experts {} leaves the layer's {} experts", o.first_expert,
          local, layer.num_experts);

  MoeConfig config;
  config.num_experts = layer.num_experts;
  config.num_local_experts = local;
  config.first_local_expert = o.first_expert;
  config.hidden = layer.hidden;
  config.intermediate = layer.intermediate;
  config.top_k = o.top_k;
  config.max_tokens = o.tokens;
  config.mode = parse_mode(o.mode);
  apply_layer_options(o.layer_options, config, read_expert_activation(checkpoint));
  config.validate();

  Progress progress(fmt::format("importing layer {}", layer.layer));
  const MoeWeights weights =
      import_moe_layer(checkpoint, layer, o.first_expert, local, progress.callback());
  const Device device = choose_device(o.layer_options.device, config, weights);
  auto runner = make_runner(device, config, weights);
  const HostBatch batch = random_batch(config, o.tokens, o.hidden_stddev, o.seed);
  const TimedOutput result = run_timed(*runner, batch, o.repeats);

  MoeConfig reference_config = config;
  reference_config.mode = QuantMode::kW4A16;
  auto reference_runner = make_cpu_runner(
      reference_config, dequantized_bf16_rows(weights.view(), config.hidden, config.intermediate));
  const TimedOutput reference = run_timed(*reference_runner, batch, 1);
  const Accuracy accuracy = compare_bf16(result.output, reference.output);

  fmt::print("layer {} of {}: {} experts ({} local from {}), hidden {}, intermediate {}, top-{}\n",
             layer.layer, o.checkpoint, layer.num_experts, local, o.first_expert, layer.hidden,
             layer.intermediate, o.top_k);
  fmt::print("{:<7} {:<9} {:<15} {:>7} {:>12} {:>22} {:>10}\n", "mode", "backend", "activation",
             "tokens", "forward ms", "cosine vs BF16 dequant", "rel. L2");
  fmt::print("{:<7} {:<9} {:<15} {:>7} {:>12.3f} {:>22.5f} {:>10.4f}\n", to_string(config.mode),
             to_string(device), to_string(config.activation), o.tokens, result.median_ms,
             accuracy.cosine, accuracy.relative_l2);
  require(accuracy.all_finite, ErrorKind::kInvalidArgument, "the layer's output is not finite");
}

}  // namespace

void add_run(CLI::App& app) {
  auto o = std::make_shared<RunOptions>();
  app.add_option("CKPT", o->checkpoint,
                 "A .safetensors file, an index .json, or a checkpoint directory")
      ->required();
  app.add_option("--layer", o->layer, "Index of the MoE layer")
      ->required()
      ->check(non_negative_integer());
  app.add_option("--tokens", o->tokens, "Tokens in the batch")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
      ->capture_default_str();
  app.add_option("--top-k", o->top_k, "Experts per token")
      ->check(CLI::Range(int64_t{1}, int64_t{1024}))
      ->capture_default_str();
  app.add_option("--mode", o->mode,
                 "w4a16 (BF16 activations), w4a4 (NVFP4 activations) or w4a8 (FP8 operands, "
                 "approximate; CPU only so far)")
      ->check(CLI::IsMember({"w4a16", "w4a4", "w4a8"}))
      ->capture_default_str();
  app.add_option("--first-expert", o->first_expert,
                 "First expert this rank holds (expert parallelism)")
      ->check(non_negative_integer())
      ->capture_default_str();
  app.add_option("--local-experts", o->num_local_experts,
                 "Experts this rank holds (default: all from --first-expert)")
      ->check(positive_integer());
  add_naming_options(app, o->naming);
  app.add_option("--hidden-stddev", o->hidden_stddev, "Standard deviation of the random tokens")
      ->check(finite_positive())
      ->capture_default_str();
  app.add_option("--repeats", o->repeats, "Timed forwards (the median is shown)")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--seed", o->seed, "Random seed")
      ->check(non_negative_integer())
      ->capture_default_str();
  add_layer_options(app, o->layer_options, /*with_activation_scale=*/true);
  app.callback([o] { run_layer(*o); });
}

}  // namespace nvfp4moe::app
