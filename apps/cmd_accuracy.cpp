// `nvfp4moe accuracy`: what each mode's numerics cost at a model's layer shape. Random bf16
// weights and tokens (Gaussian, or heavy-tailed), quantized to NVFP4, run in every mode by the
// CPU reference (which defines the numerics every backend is tested against) and compared with
// the unquantized BF16 layer and with the exact W4A16 result.
#include <fmt/format.h>

#include <memory>
#include <string>
#include <vector>

#include "commands.hpp"
#include "common.hpp"
#include "core/check.hpp"
#include "core/metrics.hpp"
#include "core/model_shapes.hpp"
#include "core/parallel.hpp"
#include "core/synthetic.hpp"
#include "cpu/expert_rows.hpp"

namespace nvfp4moe::app {

namespace {

struct AccuracyOptions {
  std::string shape = "deepseek-v3";
  int64_t experts = 8;
  int64_t tokens = 16;
  std::string distribution = "both";
  uint64_t seed = 1;
};

std::vector<uint16_t> forward(MoeRunner& runner, const HostBatch& batch) {
  std::vector<std::byte> workspace(runner.workspace_bytes());
  std::vector<uint16_t> out(batch.hidden.size());
  runner.forward({batch.tokens, batch.hidden.data(), batch.topk_ids.data(),
                  batch.topk_weights.data(), out.data()},
                 workspace.data(), nullptr);
  return out;
}

void run_accuracy(const AccuracyOptions& o) {
  const ModelShape& shape = find_model_shape(o.shape, "--shape");
  const int64_t experts = std::min(o.experts, shape.experts);
  const int64_t top_k = std::min(shape.top_k, experts);
  MoeConfig config =
      MoeConfig::single_rank(experts, shape.hidden, shape.intermediate, top_k, o.tokens);
  config.validate();
  fmt::print(
      "nvfp4moe accuracy: shape {} ({}): hidden {}, intermediate {}, top-{}, {} of its {} experts, "
      "{} tokens, CPU reference ({} threads)\n",
      shape.name, shape.description, shape.hidden, shape.intermediate, top_k, experts,
      shape.experts, o.tokens, host_thread_count());
  fmt::print("{:<13} {:<6} {:>14} {:>15} {:>15} {:>16}\n", "distribution", "mode", "cosine vs BF16",
             "rel. L2 vs BF16", "cosine vs W4A16", "rel. L2 vs W4A16");

  std::vector<std::pair<const char*, Distribution>> distributions;
  if (o.distribution != "heavy-tailed")
    distributions.push_back({"gaussian", Distribution::kGaussian});
  if (o.distribution != "gaussian") {
    distributions.push_back({"heavy-tailed", Distribution::kHeavyTailed});
  }
  for (const auto& [name, distribution] : distributions) {
    const RandomLayer layer =
        random_layer(experts, shape.hidden, shape.intermediate, o.seed, distribution);
    HostBatch batch;
    batch.tokens = o.tokens;
    batch.hidden =
        random_bf16(static_cast<size_t>(o.tokens * shape.hidden), 1.0f, o.seed + 1, distribution);
    Routing routing = random_routing(o.tokens, experts, top_k, o.seed + 2);
    batch.topk_ids = std::move(routing.ids);
    batch.topk_weights = std::move(routing.weights);

    MoeConfig dense_config = config;
    dense_config.mode = QuantMode::kW4A16;
    auto dense = make_cpu_runner(dense_config,
                                 bf16_expert_rows(layer.gate_up_bf16.data(), layer.down_bf16.data(),
                                                  shape.hidden, shape.intermediate));
    const std::vector<uint16_t> bf16 = forward(*dense, batch);
    std::vector<uint16_t> exact;
    for (const QuantMode mode : {QuantMode::kW4A16, QuantMode::kW4A4, QuantMode::kW4A8}) {
      config.mode = mode;
      auto runner = make_runner(Device::kCpu, config, layer.nvfp4);
      const std::vector<uint16_t> out = forward(*runner, batch);
      if (mode == QuantMode::kW4A16) exact = out;
      const Accuracy from_bf16 = compare_bf16(out, bf16);
      const Accuracy from_exact = compare_bf16(out, exact);
      fmt::print("{:<13} {:<6} {:>14.5f} {:>15.4f} {:>15.5f} {:>16.4f}\n", name, to_string(mode),
                 from_bf16.cosine, from_bf16.relative_l2, from_exact.cosine,
                 from_exact.relative_l2);
      require(from_bf16.all_finite, ErrorKind::kInvalidArgument, "{}: the output is not finite",
              to_string(mode));
    }
  }
}

}  // namespace

void add_accuracy(CLI::App& app) {
  auto options = std::make_shared<AccuracyOptions>();
  app.add_option("--shape", options->shape,
                 "Layer shape: deepseek-v3, deepseek-v4, qwen3-235b, small")
      ->capture_default_str();
  app.add_option("--experts", options->experts,
                 "Experts to build (each token still takes the shape's top-k of them)")
      ->check(CLI::Range(int64_t{1}, int64_t{1024}))
      ->capture_default_str();
  app.add_option("--tokens", options->tokens, "Tokens in the batch")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 16))
      ->capture_default_str();
  app.add_option("--distribution", options->distribution,
                 "Weights and tokens: gaussian, heavy-tailed (Student's t, 3 degrees) or both")
      ->check(CLI::IsMember({"gaussian", "heavy-tailed", "both"}))
      ->capture_default_str();
  app.add_option("--seed", options->seed, "Random seed")
      ->check(non_negative_integer())
      ->capture_default_str();
  app.callback([options] { run_accuracy(*options); });
}

}  // namespace nvfp4moe::app
