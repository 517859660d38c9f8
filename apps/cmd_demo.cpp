// `nvfp4moe demo`: a small DeepSeek-like layer with random weights, quantized to NVFP4, run on
// the best backend present and compared with the unquantized BF16 layer it came from.
#include <fmt/format.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "commands.hpp"
#include "common.hpp"
#include "core/metrics.hpp"
#include "core/parallel.hpp"
#include "core/synthetic.hpp"
#include "cpu/expert_rows.hpp"

namespace nvfp4moe::app {

namespace {

struct DemoOptions {
  int64_t experts = 32;
  int64_t top_k = 4;
  int64_t hidden = 1024;
  int64_t intermediate = 512;
  int64_t tokens = 128;
  int repeats = 3;
  uint64_t seed = 1;
  LayerOptions layer;
};

void run_demo(const DemoOptions& o) {
  MoeConfig config = MoeConfig::single_rank(o.experts, o.hidden, o.intermediate, o.top_k, o.tokens);
  apply_layer_options(o.layer, config);
  config.validate();
  const Device device = parse_device(o.layer.device);
  fmt::print(
      "nvfp4moe demo: DeepSeek-like MoE layer, {} experts, top-{}, hidden {}, "
      "intermediate {}, {} tokens, {}\n",
      o.experts, o.top_k, o.hidden, o.intermediate, o.tokens, to_string(config.activation));
  fmt::print("backend: {}{}\n", to_string(device),
             device == Device::kCpu ? fmt::format(" ({} threads)", host_thread_count()) : "");

  const auto start = std::chrono::steady_clock::now();
  const RandomLayer layer = random_layer(o.experts, o.hidden, o.intermediate, o.seed);
  const HostBatch batch = random_batch(config, o.tokens, 1.0f, o.seed + 7);
  fmt::print("made random bf16 weights and their NVFP4 quantization in {:.2f} s\n",
             std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());

  // The unquantized layer, computed by the same CPU pipeline from the bf16 weights.
  MoeConfig dense_config = config;
  dense_config.mode = QuantMode::kW4A16;
  auto dense = make_cpu_runner(
      dense_config, bf16_expert_rows(layer.gate_up_bf16.data(), layer.down_bf16.data(), o.hidden,
                                     o.intermediate));
  const TimedOutput reference = run_timed(*dense, batch, 1);

  fmt::print("\n{:<8} {:<9} {:>12} {:>18} {:>10}\n", "mode", "backend", "forward ms",
             "cosine vs BF16", "rel. L2");
  fmt::print("{:<8} {:<9} {:>12.3f} {:>18} {:>10}\n", "BF16", "cpu", reference.median_ms, "1", "0");
  for (const QuantMode mode : {QuantMode::kW4A16, QuantMode::kW4A4, QuantMode::kW4A8}) {
    config.mode = mode;
    // The GPU kernels do not serve every mode and activation yet (W4A8, swigluoai).
    const Device mode_device =
        best_device(config, layer.nvfp4) == Device::kCpu ? Device::kCpu : device;
    auto runner = make_runner(mode_device, config, layer.nvfp4);
    const TimedOutput result = run_timed(*runner, batch, o.repeats);
    const Accuracy accuracy = compare_bf16(result.output, reference.output);
    fmt::print("{:<8} {:<9} {:>12.3f} {:>18.5f} {:>10.4f}\n", to_string(mode),
               to_string(mode_device), result.median_ms, accuracy.cosine, accuracy.relative_l2);
    require_accuracy(accuracy, 0.95, to_string(mode));
  }
  fmt::print("\nNVFP4 keeps {:.1f} MB of expert weights where BF16 needs {:.1f} MB.\n",
             static_cast<double>(layer.nvfp4.bytes()) / 1e6,
             2.0 * static_cast<double>(layer.gate_up_bf16.size() + layer.down_bf16.size()) / 1e6);
}

}  // namespace

void add_demo(CLI::App& app) {
  auto options = std::make_shared<DemoOptions>();
  app.add_option("--tokens", options->tokens, "Tokens in the batch")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
      ->capture_default_str();
  app.add_option("--repeats", options->repeats, "Timed forwards (the median is shown)")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--seed", options->seed, "Random seed")
      ->check(non_negative_integer())
      ->capture_default_str();
  add_layer_options(app, options->layer, /*with_activation_scale=*/false);
  app.callback([options] { run_demo(*options); });
}

}  // namespace nvfp4moe::app
