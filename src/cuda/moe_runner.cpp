// The CUDA MoE runner: owns the prepared weights on the device and forwards to moe_forward.
#include <cuda_runtime.h>

#include <vector>

#include "cuda/common/cuda_check.hpp"
#include "cuda/expert_gemm.hpp"
#include "cuda/moe_forward.hpp"
#include "cuda/runtime_cuda.hpp"

namespace nvfp4moe::cuda {

namespace {

class CudaMoeRunner final : public CudaRunner {
 public:
  CudaMoeRunner(const MoeConfig& config, const MoeWeights& weights) : config_(config) {
    // What the Hopper kernels do not compute yet is refused here, never approximated.
    require(weights.format == WeightFormat::kNvfp4, ErrorKind::kUnsupported,
            "MXFP4 experts run on the CPU reference only in this build (no GPU kernels for them "
            "yet); use the cpu device");
    require(weights.gate_up_bias.empty() && weights.down_bias.empty(), ErrorKind::kUnsupported,
            "experts with biases (gpt-oss) run on the CPU reference only in this build; use the "
            "cpu device");
    const int64_t experts = config.num_local_experts;
    const int64_t hidden = config.hidden, inter = config.intermediate;
    const ExpertGemms& gemms = expert_gemms(config.mode);
    const PreparedBytes gate_up = gemms.prepared_bytes(2 * inter, hidden);
    const PreparedBytes down = gemms.prepared_bytes(hidden, inter);
    gate_up_codes_ = DeviceMemory(size_t(gate_up.codes * experts));
    gate_up_scales_ = DeviceMemory(size_t(gate_up.scales * experts));
    down_codes_ = DeviceMemory(size_t(down.codes * experts));
    down_scales_ = DeviceMemory(size_t(down.scales * experts));
    // Stage one expert's checkpoint-layout bytes at a time and prepare them on the device.
    const size_t values = size_t(2 * inter * hidden / 2), scales = size_t(2 * inter * hidden / 16);
    const size_t down_values = values / 2, down_scales = scales / 2;
    DeviceMemory staging(values + scales + down_values + down_scales);
    auto* s_values = staging.get<uint8_t>();
    auto* s_scales = s_values + values;
    auto* s_down_values = s_scales + scales;
    auto* s_down_scales = s_down_values + down_values;
    for (int64_t e = 0; e < experts; ++e) {
      copy_to_device(s_values, weights.gate_up_values.data() + e * values, values);
      copy_to_device(s_scales, weights.gate_up_scales.data() + e * scales, scales);
      copy_to_device(s_down_values, weights.down_values.data() + e * down_values, down_values);
      copy_to_device(s_down_scales, weights.down_scales.data() + e * down_scales, down_scales);
      gemms.prepare(s_values, s_scales, 1, 2 * inter, hidden, /*gate_up=*/true,
                    gate_up_codes_.get<uint8_t>() + e * gate_up.codes,
                    gate_up_scales_.get<uint8_t>() + e * gate_up.scales, nullptr);
      gemms.prepare(s_down_values, s_down_scales, 1, hidden, inter, /*gate_up=*/false,
                    down_codes_.get<uint8_t>() + e * down.codes,
                    down_scales_.get<uint8_t>() + e * down.scales, nullptr);
      NVFP4MOE_CUDA_CHECK(cudaDeviceSynchronize());  // staging is reused by the next expert
    }
    auto upload = [](const std::vector<float>& host) {
      DeviceMemory memory(host.size() * sizeof(float));
      if (!host.empty()) copy_to_device(memory.get(), host.data(), host.size() * sizeof(float));
      return memory;
    };
    gate_scale_ = upload(weights.gate_global_scale);
    up_scale_ = upload(weights.up_global_scale);
    down_scale_ = upload(weights.down_global_scale);
    gate_up_input_scale_ = upload(weights.gate_up_input_scale);
    down_input_scale_ = upload(weights.down_input_scale);
    error_flags_ = DeviceMemory(sizeof(uint32_t));
    device_memset(error_flags_.get(), 0, sizeof(uint32_t));

    prepared_.gate_up_codes = gate_up_codes_.get<uint8_t>();
    prepared_.gate_up_scales = gate_up_scales_.get<uint8_t>();
    prepared_.down_codes = down_codes_.get<uint8_t>();
    prepared_.down_scales = down_scales_.get<uint8_t>();
    prepared_.gate_scale = gate_scale_.get<float>();
    prepared_.up_scale = up_scale_.get<float>();
    prepared_.down_scale = down_scale_.get<float>();
    prepared_.gate_up_input_scale = gate_up_input_scale_.get<float>();
    prepared_.down_input_scale = down_input_scale_.get<float>();
  }

  const MoeConfig& config() const override { return config_; }
  Device device() const override { return Device::kCuda; }
  size_t workspace_bytes() const override { return moe_workspace_bytes(config_); }

  void forward(const MoeForwardArgs& args, void* workspace, void* stream) override {
    moe_forward(config_, prepared_, args, nullptr, workspace, error_flags_.get<uint32_t>(),
                static_cast<cudaStream_t>(stream));
  }

  void forward_sums(const MoeForwardArgs& args, float* sums, void* workspace, cudaStream_t stream,
                    const ForwardExtras& extras) override {
    require(sums != nullptr || args.num_tokens == 0, ErrorKind::kInvalidArgument,
            "forward_sums: the fp32 output is null");
    moe_forward(config_, prepared_, args, sums, workspace, error_flags_.get<uint32_t>(), stream,
                extras);
  }

  void check_errors(void* stream) override {
    NVFP4MOE_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
    uint32_t flags = 0;
    copy_to_host(&flags, error_flags_.get(), sizeof flags);
    device_memset(error_flags_.get(), 0, sizeof flags);
    raise_device_errors(flags, config_.num_experts, "forward");
  }

 private:
  MoeConfig config_;
  DeviceMemory gate_up_codes_, gate_up_scales_, down_codes_, down_scales_;
  DeviceMemory gate_scale_, up_scale_, down_scale_, gate_up_input_scale_, down_input_scale_;
  DeviceMemory error_flags_;
  PreparedMoeWeights prepared_;
};

}  // namespace

std::unique_ptr<CudaRunner> make_cuda_runner(const MoeConfig& config, const MoeWeights& weights) {
  validate_weights(config, weights);
  std::string reason;
  require(device_usable(&reason), ErrorKind::kUnsupported, "CUDA runner: {}", reason);
  return std::make_unique<CudaMoeRunner>(config, weights);
}

std::unique_ptr<MoeRunner> make_runner(const MoeConfig& config, const MoeWeights& weights) {
  return make_cuda_runner(config, weights);
}

}  // namespace nvfp4moe::cuda
