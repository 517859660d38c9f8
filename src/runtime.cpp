// Backend selection and device memory. The CUDA half lives in src/cuda/runtime_cuda.cu and is
// reached only when the build has the CUDA backend.
#include "nvfp4moe/runtime.hpp"

#include "nvfp4moe/device_forward.hpp"

#include <cstdlib>
#include <cstring>
#include <utility>

#include "core/check.hpp"
#include "cpu/expert_rows.hpp"
#include "cpu/linear_cpu.hpp"

#if NVFP4MOE_WITH_CUDA
#include "cuda/expert_gemm.hpp"
#include "cuda/linear_forward.hpp"
#include "cuda/moe_forward.hpp"
#include "cuda/runtime_cuda.hpp"
#endif

namespace nvfp4moe {

bool cuda_available() {
#if NVFP4MOE_WITH_CUDA
  return cuda::device_usable(nullptr);
#else
  return false;
#endif
}

Device best_device() { return cuda_available() ? Device::kCuda : Device::kCpu; }

Device best_device(const MoeConfig& config, const MoeWeights& weights) {
  const bool gpu_serves = weights.format == WeightFormat::kNvfp4 && weights.gate_up_bias.empty() &&
                          config.mode != QuantMode::kW4A8 &&
                          config.activation != Activation::kSwigluOai;
  return gpu_serves ? best_device() : Device::kCpu;
}

Device parse_device(std::string_view name) {
  if (name == "auto") return best_device();
  if (name == "cpu") return Device::kCpu;
  if (name == "cuda") {
#if NVFP4MOE_WITH_CUDA
    std::string reason;
    require(cuda::device_usable(&reason), ErrorKind::kUnsupported, "device 'cuda': {}", reason);
    return Device::kCuda;
#else
    fail(ErrorKind::kUnsupported,
         "device 'cuda': this build has no CUDA backend (nvcc was not "
         "found when it was configured)");
#endif
  }
  fail(ErrorKind::kInvalidArgument, "unknown device '{}', expected auto, cpu or cuda", name);
}

size_t workspace_bytes(Device device, const MoeConfig& config) {
  config.validate();
  if (device == Device::kCpu) return cpu_workspace_bytes(config);
#if NVFP4MOE_WITH_CUDA
  return cuda::moe_workspace_bytes(config);
#else
  fail(ErrorKind::kUnsupported, "this build has no CUDA backend");
#endif
}

PreparedBytes prepared_bytes(Device device, int64_t rows, int64_t k) {
  require(rows > 0 && k > 0 && rows % 16 == 0 && k % 16 == 0, ErrorKind::kInvalidArgument,
          "prepared_bytes: rows {} and k {} must be positive multiples of 16", rows, k);
  if (device == Device::kCpu) return {rows * k / 2, rows * k / 16};  // the checkpoint's layout
#if NVFP4MOE_WITH_CUDA
  const cuda::PreparedBytes bytes = cuda::expert_gemms(QuantMode::kW4A16).prepared_bytes(rows, k);
  return {bytes.codes, bytes.scales};
#else
  fail(ErrorKind::kUnsupported, "this build has no CUDA backend");
#endif
}

size_t linear_workspace_bytes(Device device, const LinearConfig& config) {
  config.validate();
  if (device == Device::kCpu) return 0;  // the CPU layer computes in its own buffers
#if NVFP4MOE_WITH_CUDA
  return cuda::linear_workspace_bytes(config);
#else
  fail(ErrorKind::kUnsupported, "this build has no CUDA backend");
#endif
}

std::unique_ptr<MoeRunner> make_runner(Device device, const MoeConfig& config,
                                       const MoeWeights& weights) {
  validate_weights(config, weights);
  if (device == Device::kCpu) {
    return make_cpu_runner(config, weights.view(), /*block_scales_checked=*/true);  // just above
  }
#if NVFP4MOE_WITH_CUDA
  return cuda::make_runner(config, weights);
#else
  fail(ErrorKind::kUnsupported, "this build has no CUDA backend");
#endif
}

std::unique_ptr<Nvfp4Linear> make_linear(Device device, const LinearConfig& config,
                                         const NvFp4View& weight, float input_scale) {
  if (device == Device::kCpu) return make_cpu_linear(config, weight, input_scale);
#if NVFP4MOE_WITH_CUDA
  validate_linear_weight(config, weight, input_scale);
  return cuda::make_linear(config, weight, input_scale);
#else
  fail(ErrorKind::kUnsupported, "this build has no CUDA backend");
#endif
}

DeviceBuffer::DeviceBuffer(Device device, size_t bytes, std::string_view what)
    : device_(device), size_(bytes) {
  if (bytes == 0) return;
  if (device == Device::kCpu) {
    data_ = std::malloc(bytes);
    require(data_ != nullptr, ErrorKind::kOutOfMemory,
            "out of memory: cannot allocate {} bytes of host memory for {}", bytes, what);
    return;
  }
#if NVFP4MOE_WITH_CUDA
  try {
    data_ = cuda::device_alloc(bytes);
  } catch (const Error& e) {
    fail(ErrorKind::kOutOfMemory, "{} (for {})", e.what(), what);
  }
#else
  fail(ErrorKind::kUnsupported, "this build has no CUDA backend");
#endif
}

DeviceBuffer::~DeviceBuffer() {
  if (data_ == nullptr) return;
  if (device_ == Device::kCpu) {
    std::free(data_);
  } else {
#if NVFP4MOE_WITH_CUDA
    cuda::device_free(data_);
#endif
  }
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : device_(other.device_),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    DeviceBuffer old(std::move(*this));
    device_ = other.device_;
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void DeviceBuffer::upload(const void* host, size_t bytes) {
  require(bytes <= size_, ErrorKind::kInvalidArgument, "upload of {} bytes into a {}-byte buffer",
          bytes, size_);
  if (bytes == 0) return;
  if (device_ == Device::kCpu) {
    std::memcpy(data_, host, bytes);
    return;
  }
#if NVFP4MOE_WITH_CUDA
  cuda::copy_to_device(data_, host, bytes);
#endif
}

void DeviceBuffer::download(void* host, size_t bytes) const {
  require(bytes <= size_, ErrorKind::kInvalidArgument, "download of {} bytes from a {}-byte buffer",
          bytes, size_);
  if (bytes == 0) return;
  if (device_ == Device::kCpu) {
    std::memcpy(host, data_, bytes);
    return;
  }
#if NVFP4MOE_WITH_CUDA
  cuda::copy_to_host(host, data_, bytes);
#endif
}

void DeviceBuffer::fill(unsigned char value) {
  if (size_ == 0) return;
  if (device_ == Device::kCpu) {
    std::memset(data_, value, size_);
    return;
  }
#if NVFP4MOE_WITH_CUDA
  cuda::device_memset(data_, value, size_);
#endif
}

void synchronize(Device device) {
#if NVFP4MOE_WITH_CUDA
  if (device == Device::kCuda) cuda::device_synchronize();
#else
  (void)device;
#endif
}

}  // namespace nvfp4moe
