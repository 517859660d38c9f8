// The dense NVFP4 linear layer on the device: the MoE's GEMM family (expert_gemm.hpp) with one
// "expert", implicit tiles over the tokens and a plain bf16 store.
//
// Workspace: amax word | xq [max_tokens, in_features] bf16 (W4A4 only).
#include <cuda_runtime.h>

#include "cuda/common/cuda_check.hpp"
#include "cuda/expert_gemm.hpp"
#include "cuda/linear_forward.hpp"
#include "cuda/quant/quant.hpp"
#include "cuda/runtime_cuda.hpp"

namespace nvfp4moe::cuda {

namespace {

constexpr size_t kXqOffset = 256;

}  // namespace

size_t linear_workspace_bytes(const LinearConfig& config) {
  return config.mode == QuantMode::kW4A4
             ? kXqOffset + size_t(config.max_tokens * config.in_features) * 2
             : 0;
}

void linear_forward(const LinearConfig& config, const uint8_t* codes, const uint8_t* scale_codes,
                    const float* weight_scale, const float* input_scale, int64_t tokens,
                    const uint16_t* x, uint16_t* out, void* workspace, uint32_t* error_flags,
                    cudaStream_t stream) {
  require(tokens >= 0 && tokens <= config.max_tokens, ErrorKind::kInvalidArgument,
          "linear: {} tokens, but the layer was configured for at most {}", tokens,
          config.max_tokens);
  if (tokens == 0) return;
  const bool w4a4 = config.mode == QuantMode::kW4A4;
  require(!w4a4 || workspace != nullptr, ErrorKind::kInvalidArgument,
          "linear: W4A4 needs a workspace of linear_workspace_bytes(config) = {}",
          linear_workspace_bytes(config));
  ExpertGemmArgs p;
  p.weights = {codes, scale_codes, config.out_features, config.in_features};
  p.b = x;
  p.b_row_stride = config.in_features;
  p.b_rows = tokens;
  p.implicit_rows = static_cast<int32_t>(tokens);
  p.weight_scale = weight_scale;
  p.out = out;
  p.out_row_stride = config.out_features;
  if (w4a4) {
    auto* amax = static_cast<uint32_t*>(workspace);
    auto* xq = reinterpret_cast<uint16_t*>(static_cast<uint8_t*>(workspace) + kXqOffset);
    QuantizeSource source;
    source.input = x;
    source.input_row_stride = config.in_features;
    source.cols = static_cast<int32_t>(config.in_features);
    source.max_rows = tokens;
    source.error_flags = error_flags;
    if (config.activation_scale == ActivationScale::kDynamic) {
      NVFP4MOE_CUDA_CHECK(cudaMemsetAsync(amax, 0, sizeof(uint32_t), stream));
      NVFP4MOE_CUDA_CHECK(launch_amax(source, amax, stream));
      source.scale_source = ActivationScaleSource::kFromAmax;
      source.amax_bits = amax;
      p.act_source = ActivationScaleSource::kFromAmax;
      p.act_amax_bits = amax;
    } else {
      // The static scale: "per expert" with expert 0 (row_expert null).
      source.scale_source = ActivationScaleSource::kPerExpert;
      source.per_expert_scale = input_scale;
      p.act_source = ActivationScaleSource::kPerExpert;
      p.act_scale = input_scale;
    }
    NVFP4MOE_CUDA_CHECK(launch_quantize_dequantize(source, xq, config.in_features, stream));
    p.b = xq;
  }
  const ExpertGemms& gemms = expert_gemms(config.mode);
  NVFP4MOE_CUDA_CHECK(
      gemms.launch(gemms.plan_linear(tokens, config.out_features), Epilogue::kLinear, p, stream));
}

namespace {

class CudaLinear final : public Nvfp4Linear {
 public:
  CudaLinear(const LinearConfig& config, const NvFp4View& weight, float input_scale)
      : config_(config) {
    const ExpertGemms& gemms = expert_gemms(config.mode);
    const PreparedBytes prepared = gemms.prepared_bytes(config.out_features, config.in_features);
    codes_ = DeviceMemory(size_t(prepared.codes));
    scales_ = DeviceMemory(size_t(prepared.scales));
    const size_t value_bytes = size_t(weight.rows * weight.cols / 2);
    const size_t scale_bytes = size_t(weight.rows * weight.cols / 16);
    DeviceMemory staging(value_bytes + scale_bytes);
    copy_to_device(staging.get(), weight.values, value_bytes);
    copy_to_device(staging.get<uint8_t>() + value_bytes, weight.scales, scale_bytes);
    gemms.prepare(staging.get<uint8_t>(), staging.get<uint8_t>() + value_bytes, 1,
                  config.out_features, config.in_features, /*gate_up=*/false, codes_.get<uint8_t>(),
                  scales_.get<uint8_t>(), nullptr);
    NVFP4MOE_CUDA_CHECK(cudaDeviceSynchronize());
    const float scalars[2] = {weight.global_scale, input_scale};
    scalars_ = DeviceMemory(sizeof scalars);
    copy_to_device(scalars_.get(), scalars, sizeof scalars);
    error_flags_ = DeviceMemory(sizeof(uint32_t));
    device_memset(error_flags_.get(), 0, sizeof(uint32_t));
  }

  const LinearConfig& config() const override { return config_; }
  Device device() const override { return Device::kCuda; }
  size_t workspace_bytes() const override { return linear_workspace_bytes(config_); }

  void forward(int64_t tokens, const uint16_t* x, uint16_t* out, void* workspace,
               void* stream) override {
    linear_forward(config_, codes_.get<uint8_t>(), scales_.get<uint8_t>(), scalars_.get<float>(),
                   scalars_.get<float>() + 1, tokens, x, out, workspace,
                   error_flags_.get<uint32_t>(), static_cast<cudaStream_t>(stream));
  }

  void check_errors(void* stream_handle) override {
    NVFP4MOE_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_handle)));
    uint32_t flags = 0;
    copy_to_host(&flags, error_flags_.get(), sizeof flags);
    device_memset(error_flags_.get(), 0, sizeof flags);
    raise_device_errors(flags, 0, "linear");
  }

 private:
  LinearConfig config_;
  DeviceMemory codes_, scales_, scalars_, error_flags_;
};

}  // namespace

std::unique_ptr<Nvfp4Linear> make_linear(const LinearConfig& config, const NvFp4View& weight,
                                         float input_scale) {
  std::string reason;
  require(device_usable(&reason), ErrorKind::kUnsupported, "CUDA linear: {}", reason);
  return std::make_unique<CudaLinear>(config, weight, input_scale);
}

}  // namespace nvfp4moe::cuda
