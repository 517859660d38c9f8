#include "common.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "core/check.hpp"
#include "core/metrics.hpp"
#include "core/synthetic.hpp"

namespace nvfp4moe::app {

Progress::Progress(std::string label)
    : label_(std::move(label)),
      terminal_(isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()) {}

void Progress::update(int64_t done, int64_t total) {
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (terminal_) {
    fmt::print(stderr, "\r{}: {}/{} ({:.1f} s){}", label_, done, total, seconds,
               done == total ? "\n" : "");
    return;
  }
  const int decile = total > 0 ? static_cast<int>(10 * done / total) : 10;
  if (decile != last_decile_ && seconds > 0.5) {
    fmt::print(stderr, "{}: {}/{} ({:.1f} s)\n", label_, done, total, seconds);
  }
  last_decile_ = decile;
}

std::function<void(int64_t, int64_t)> Progress::callback() {
  return [this](int64_t done, int64_t total) { update(done, total); };
}

HostBatch random_batch(const MoeConfig& config, int64_t tokens, float hidden_stddev,
                       uint64_t seed) {
  HostBatch batch;
  batch.tokens = tokens;
  batch.hidden = random_bf16(static_cast<size_t>(tokens * config.hidden), hidden_stddev, seed);
  Routing routing = random_routing(tokens, config.num_experts, config.top_k, seed + 1);
  batch.topk_ids = std::move(routing.ids);
  batch.topk_weights = std::move(routing.weights);
  return batch;
}

TimedOutput run_timed(MoeRunner& runner, const HostBatch& batch, int repeats) {
  const Device device = runner.device();
  const auto hidden_bytes = batch.hidden.size() * sizeof(uint16_t);
  const auto slot_count = batch.topk_ids.size();
  DeviceBuffer hidden(device, hidden_bytes, "the hidden states");
  DeviceBuffer ids(device, slot_count * sizeof(int32_t), "topk_ids");
  DeviceBuffer weights(device, slot_count * sizeof(float), "topk_weights");
  DeviceBuffer output(device, hidden_bytes, "the output");
  DeviceBuffer workspace(device, runner.workspace_bytes(), "the layer's workspace");
  hidden.upload(batch.hidden.data(), hidden_bytes);
  ids.upload(batch.topk_ids.data(), slot_count * sizeof(int32_t));
  weights.upload(batch.topk_weights.data(), slot_count * sizeof(float));

  MoeForwardArgs args;
  args.num_tokens = batch.tokens;
  args.hidden = hidden.as<uint16_t>();
  args.topk_ids = ids.as<int32_t>();
  args.topk_weights = weights.as<float>();
  args.output = output.as<uint16_t>();

  TimedOutput result;
  result.repeats = repeats;
  std::vector<double> times;
  // A GPU's first call pays for module loading; the CPU has nothing to warm up.
  const int warmup = device == Device::kCuda ? 1 : 0;
  for (int i = 0; i < warmup + repeats; ++i) {
    synchronize(device);
    const auto start = std::chrono::steady_clock::now();
    runner.forward(args, workspace.data(), nullptr);
    synchronize(device);
    const auto stop = std::chrono::steady_clock::now();
    if (i >= warmup)
      times.push_back(std::chrono::duration<double, std::milli>(stop - start).count());
  }
  runner.check_errors(nullptr);
  std::sort(times.begin(), times.end());
  result.median_ms = times.empty() ? 0.0 : times[times.size() / 2];
  result.output.resize(batch.hidden.size());
  output.download(result.output.data(), hidden_bytes);
  return result;
}

}  // namespace nvfp4moe::app

namespace nvfp4moe::app {

namespace {

// An integer written in decimal digits only (no sign, no spaces), at most `min` .. int64 max.
std::string check_integer(const std::string& text, int64_t min) {
  const bool digits = !text.empty() && text.size() <= 19 &&
                      text.find_first_not_of("0123456789") == std::string::npos;
  if (!digits || (text.size() == 19 && text > "9223372036854775807") || std::stoll(text) < min) {
    return fmt::format("expected an integer >= {}, got '{}'", min, text);
  }
  return {};
}

}  // namespace

CLI::Validator finite_positive() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        char* end = nullptr;
        const double value = std::strtod(text.c_str(), &end);
        if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(value) ||
            value <= 0.0 || value > 3.4e38) {
          return fmt::format("expected a finite number > 0, got '{}'", text);
        }
        return {};
      },
      "NUMBER > 0");
}

CLI::Validator non_negative_integer() {
  return CLI::Validator([](std::string& text) { return check_integer(text, 0); }, "INTEGER >= 0");
}

CLI::Validator positive_integer() {
  return CLI::Validator([](std::string& text) { return check_integer(text, 1); }, "INTEGER > 0");
}

void add_naming_options(CLI::App& app, NamingOptions& options) {
  app.add_option("--prefix", options.prefix,
                 "Expert tensor prefix with {layer}, e.g. 'model.layers.{layer}.mlp.experts.' "
                 "(default: detected from the tensor names)");
  app.add_option("--naming", options.naming,
                 "Expert tensors under --prefix: hf (<e>.gate_proj/up_proj/down_proj), deepseek "
                 "(<e>.w1/w3/w2) or fused (gate_up_proj/down_proj of all experts)")
      ->check(CLI::IsMember({"hf", "deepseek", "fused"}))
      ->capture_default_str();
}

std::vector<MoeLayerInfo> moe_layers(const Checkpoint& checkpoint, const NamingOptions& options) {
  if (options.prefix.empty()) return find_moe_layers(checkpoint);
  return find_moe_layers(checkpoint, ExpertNaming::from_style(options.naming, options.prefix));
}

void add_layer_options(CLI::App& app, LayerOptions& options, bool with_activation_scale) {
  app.add_option("--device", options.device, "Backend: auto, cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  app.add_option("--activation", options.activation,
                 "Gated activation: silu, swiglu_clamped or swigluoai (default: what the "
                 "checkpoint's config.json implies, else silu)")
      ->check(CLI::IsMember({"silu", "swiglu_clamped", "swigluoai"}));
  app.add_option("--swiglu-limit", options.swiglu_limit,
                 "Clamp of swiglu_clamped (default 10, DeepSeek-V4) and swigluoai (default 7, "
                 "gpt-oss)")
      ->check(finite_positive());
  if (!with_activation_scale) return;
  app.add_option("--activation-scale", options.activation_scale,
                 "W4A4 activation global scales: dynamic (per batch) or static (checkpoint)")
      ->check(CLI::IsMember({"dynamic", "static"}))
      ->capture_default_str();
}

void apply_layer_options(const LayerOptions& options, MoeConfig& config,
                         const std::optional<ExpertActivation>& implied) {
  config.activation = options.activation ? parse_activation(*options.activation, "--activation")
                      : implied          ? implied->activation
                                         : Activation::kSilu;
  const bool implied_limit = implied && implied->activation == config.activation;
  config.swiglu_limit =
      options.swiglu_limit.value_or(implied_limit ? implied->swiglu_limit
                                    : config.activation == Activation::kSwigluOai ? 7.0f
                                                                                  : 10.0f);
  config.activation_scale = parse_activation_scale(options.activation_scale, "--activation-scale");
}

QuantMode parse_mode(const std::string& name) { return parse_quant_mode(name, "--mode"); }

Device choose_device(const std::string& device, const MoeConfig& config,
                     const MoeWeights& weights) {
  return device == "auto" ? best_device(config, weights) : parse_device(device);
}

}  // namespace nvfp4moe::app

namespace nvfp4moe::app {

void require_accuracy(const Accuracy& accuracy, double min_cosine, const char* what) {
  require(accuracy.all_finite, ErrorKind::kInvalidArgument, "{}: the output is not finite", what);
  require(accuracy.cosine >= min_cosine, ErrorKind::kInvalidArgument,
          "{}: cosine {:.5f} against the reference is below {}", what, accuracy.cosine, min_cosine);
}

}  // namespace nvfp4moe::app
