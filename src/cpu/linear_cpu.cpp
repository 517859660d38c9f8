// The CPU reference of the dense NVFP4 linear layer, and the device dispatch of make_linear.
#include <cmath>
#include <vector>

#include "core/check.hpp"
#include "core/parallel.hpp"
#include "cpu/linear_cpu.hpp"
#include "cpu/row_math.hpp"
#include "nvfp4moe/linear.hpp"

namespace nvfp4moe {

void LinearConfig::validate() const {
  constexpr auto kArg = ErrorKind::kInvalidArgument;
  for (auto [name, value] :
       {std::pair{"in_features", in_features}, std::pair{"out_features", out_features}}) {
    require(value >= kBlockSize && value % kBlockSize == 0 && value <= (int64_t{1} << 20), kArg,
            "LinearConfig: {} = {}, expected a positive multiple of {} up to 2^20", name, value,
            kBlockSize);
  }
  require(max_tokens >= 1 && max_tokens <= (int64_t{1} << 24), kArg,
          "LinearConfig: max_tokens = {}, expected 1..2^24", max_tokens);
  require(!(mode == QuantMode::kW4A8 && activation_scale == ActivationScale::kStatic), kArg,
          "LinearConfig: activation_scale = static is W4A4's; W4A8 scales its activations per "
          "token and group of {} from the data (use dynamic)",
          kFp8GroupSize);
}

namespace {

class CpuLinear final : public Nvfp4Linear {
 public:
  CpuLinear(const LinearConfig& config, const NvFp4View& weight, float input_scale)
      : config_(config), weight_(weight), input_scale_(input_scale) {}

  const LinearConfig& config() const override { return config_; }
  Device device() const override { return Device::kCpu; }
  size_t workspace_bytes() const override { return 0; }

  void forward(int64_t tokens, const uint16_t* x, uint16_t* out, void*, void*) override {
    require(tokens >= 0 && tokens <= config_.max_tokens, ErrorKind::kInvalidArgument,
            "linear: {} tokens, but the layer was configured for at most {}", tokens,
            config_.max_tokens);
    if (tokens == 0) return;
    const int64_t in = config_.in_features, out_features = config_.out_features;
    const bool w4a4 = config_.mode == QuantMode::kW4A4;
    const bool w4a8 = config_.mode == QuantMode::kW4A8;
    float g = 1.0f;
    if (w4a4 || w4a8) {
      const float amax = finite_amax(std::span(x, static_cast<size_t>(tokens * in)),
                                     w4a4 ? "linear: x (W4A4)" : "linear: x (W4A8)", in);
      if (w4a4) {
        g = config_.activation_scale == ActivationScale::kDynamic ? nvfp4_dynamic_global_scale(amax)
                                                                  : input_scale_;
      }
    }
    std::vector<float> a(static_cast<size_t>(tokens * in));
    for (size_t i = 0; i < a.size(); ++i) a[i] = bf16_to_float(x[i]);
    if (w4a4) {
      for (int64_t t = 0; t < tokens; ++t) cpu::quantize_dequantize_row(&a[t * in], in, g);
    }
    // W4A8: both operands as FP8 groups (numerics §5).
    std::vector<cpu::Fp8Row> a8(w4a8 ? static_cast<size_t>(tokens) : 0);
    for (int64_t t = 0; t < int64_t(a8.size()); ++t) cpu::quantize_fp8_row(&a[t * in], in, a8[t]);
    const float alpha = g * weight_.global_scale;
    parallel_for(out_features, [&](int64_t n) {
      std::vector<float> row(static_cast<size_t>(in));
      decode_nvfp4_row(weight_.values + n * in / 2, weight_.scales + n * in / kBlockSize, in,
                       row.data());
      cpu::Fp8Row w8;
      if (w4a8) cpu::quantize_fp8_row(row.data(), in, w8);
      for (int64_t t = 0; t < tokens; ++t) {
        const float sum = w4a8 ? cpu::fp8_dot(a8[t], w8, in) : cpu::dot(&a[t * in], row.data(), in);
        out[t * out_features + n] = float_to_bf16(alpha * sum);
      }
    });
  }

 private:
  LinearConfig config_;
  NvFp4View weight_;
  float input_scale_;
};

}  // namespace

void validate_linear_weight(const LinearConfig& config, const NvFp4View& weight,
                            float input_scale) {
  config.validate();
  require(weight.rows == config.out_features && weight.cols == config.in_features,
          ErrorKind::kInvalidArgument,
          "linear: weight is [{}, {}] but the config says [out {}, in {}]", weight.rows,
          weight.cols, config.out_features, config.in_features);
  require(weight.values != nullptr && weight.scales != nullptr, ErrorKind::kInvalidArgument,
          "linear: weight values and scales are required");
  require(std::isfinite(weight.global_scale) && weight.global_scale >= 0.0f,
          ErrorKind::kInvalidArgument, "linear: weight global scale {} must be finite and >= 0",
          weight.global_scale);
  validate_block_scales(weight.scales, 1, weight.rows, weight.cols / kBlockSize, "linear weight");
  if (config.mode == QuantMode::kW4A4 && config.activation_scale == ActivationScale::kStatic) {
    require(std::isfinite(input_scale) && input_scale > 0.0f, ErrorKind::kInvalidArgument,
            "linear: static W4A4 needs an input scale > 0, got {}", input_scale);
  }
}

}  // namespace nvfp4moe

namespace nvfp4moe {

std::unique_ptr<Nvfp4Linear> make_cpu_linear(const LinearConfig& config, const NvFp4View& weight,
                                             float input_scale) {
  validate_linear_weight(config, weight, input_scale);
  return std::make_unique<CpuLinear>(config, weight, input_scale);
}

}  // namespace nvfp4moe
