// Pieces the nvfp4moe commands share: progress lines, timing, routing inputs, result tables.
#pragma once

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/metrics.hpp"
#include "nvfp4moe/checkpoint.hpp"
#include "nvfp4moe/moe.hpp"
#include "nvfp4moe/moe_import.hpp"
#include "nvfp4moe/runtime.hpp"

namespace nvfp4moe::app {

// Progress of a long operation on stderr: a rewritten line on a terminal, a line per tenth
// otherwise, and nothing for operations that finish in an instant.
class Progress {
 public:
  explicit Progress(std::string label);
  void update(int64_t done, int64_t total);
  std::function<void(int64_t, int64_t)> callback();

 private:
  std::string label_;
  bool terminal_;
  int last_decile_ = -1;
  std::chrono::steady_clock::time_point start_;
};

// A batch in host memory: hidden states and routing for T tokens.
struct HostBatch {
  int64_t tokens = 0;
  std::vector<uint16_t> hidden;  // [T, H] bf16
  std::vector<int32_t> topk_ids;
  std::vector<float> topk_weights;
};
HostBatch random_batch(const MoeConfig& config, int64_t tokens, float hidden_stddev, uint64_t seed);

// Runs a runner on a host batch `repeats` times (after one warm-up), copying the batch to the
// runner's device; returns the output and the median forward time in milliseconds.
struct TimedOutput {
  std::vector<uint16_t> output;
  double median_ms = 0.0;
  int repeats = 0;
};
TimedOutput run_timed(MoeRunner& runner, const HostBatch& batch, int repeats);

}  // namespace nvfp4moe::app

namespace nvfp4moe::app {

// Option checks whose messages say what was wrong in a short line (CLI11's own print the range's
// bounds, DBL_MAX in full).
CLI::Validator finite_positive();       // a finite number > 0
CLI::Validator non_negative_integer();  // 0, 1, 2, ...
CLI::Validator positive_integer();      // 1, 2, ...

// --prefix / --naming: how expert tensors are named, detected when not given.
struct NamingOptions {
  std::string prefix;  // empty: detect from the tensor names
  std::string naming = "hf";
};
void add_naming_options(CLI::App& app, NamingOptions& options);
// The MoE layers of a checkpoint under the options (every detected layer when no prefix).
std::vector<MoeLayerInfo> moe_layers(const Checkpoint& checkpoint, const NamingOptions& options);

// Options that choose how a layer computes, shared by `demo` and `run`.
struct LayerOptions {
  std::string device = "auto";
  std::optional<std::string> activation;  // default: the checkpoint's (gpt-oss), else silu
  std::optional<float> swiglu_limit;  // default: 10 (swiglu_clamped, DeepSeek-V4), 7 (swigluoai)
  std::string activation_scale = "dynamic";
};
// --activation-scale is offered only where static scales exist (a checkpoint's input_scale).
void add_layer_options(CLI::App& app, LayerOptions& options, bool with_activation_scale);
// Sets activation, swiglu_limit and activation_scale of `config` from the options.
// `implied` is what a checkpoint's config says (read_expert_activation), used where the options
// name no activation or limit.
void apply_layer_options(const LayerOptions& options, MoeConfig& config,
                         const std::optional<ExpertActivation>& implied = std::nullopt);
QuantMode parse_mode(const std::string& name);
// The backend for --device: "auto" is the best device that computes this layer (best_device), an
// explicit device is taken as asked.
Device choose_device(const std::string& device, const MoeConfig& config, const MoeWeights& weights);

// An Error when an output is not finite or its cosine against the reference is below
// `min_cosine`: a broken layer must not pass for a working one.
void require_accuracy(const Accuracy& accuracy, double min_cosine, const char* what);

}  // namespace nvfp4moe::app
