// The CUDA half of nvfp4moe/runtime.hpp: device discovery, memory, and the runner factory.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "cuda/moe_forward.hpp"
#include "nvfp4moe/linear.hpp"
#include "nvfp4moe/moe.hpp"

namespace nvfp4moe::cuda {

// True when device 0 can run this build's code (sm_90); otherwise `reason` says why.
bool device_usable(std::string* reason);

void* device_alloc(size_t bytes);
void device_free(void* pointer) noexcept;
void copy_to_device(void* device, const void* host, size_t bytes);
void copy_to_host(void* host, const void* device, size_t bytes);
void device_memset(void* device, unsigned char value, size_t bytes);
void device_synchronize();

std::unique_ptr<MoeRunner> make_runner(const MoeConfig& config, const MoeWeights& weights);

// The CUDA runner with one more entry: the fp32 sums of the layer before their rounding to bf16,
// for an expert-parallel layer that reduces partial sums across ranks in fp32.
class CudaRunner : public MoeRunner {
 public:
  // Like forward, but out [T, H] fp32 receives sum_j topk_weights * y over this runner's slots
  // (zero where a token has none); args.output is not used.
  // extras: see moe_forward.hpp (expert parallelism).
  virtual void forward_sums(const MoeForwardArgs& args, float* out, void* workspace,
                            cudaStream_t stream, const ForwardExtras& extras = {}) = 0;
};
std::unique_ptr<CudaRunner> make_cuda_runner(const MoeConfig& config, const MoeWeights& weights);
std::unique_ptr<Nvfp4Linear> make_linear(const LinearConfig& config, const NvFp4View& weight,
                                         float input_scale);

// Owning device memory.
class DeviceMemory {
 public:
  DeviceMemory() = default;
  explicit DeviceMemory(size_t bytes)
      : data_(bytes ? device_alloc(bytes) : nullptr), size_(bytes) {}
  ~DeviceMemory() { device_free(data_); }
  DeviceMemory(DeviceMemory&& other) noexcept : data_(other.data_), size_(other.size_) {
    other.data_ = nullptr;
    other.size_ = 0;
  }
  DeviceMemory& operator=(DeviceMemory&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    return *this;
  }
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  template <typename T = void>
  T* get() const {
    return static_cast<T*>(data_);
  }
  size_t size() const { return size_; }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace nvfp4moe::cuda
