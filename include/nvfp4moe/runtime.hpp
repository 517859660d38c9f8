// Choosing a backend and holding memory on it, for callers that do not want to touch CUDA
// themselves (the CLI, the tests, simple integrations).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>

#include "nvfp4moe/moe.hpp"

namespace nvfp4moe {

// True when this build has the CUDA backend and a device of compute capability 9.0 is present.
bool cuda_available();
// kCuda when cuda_available(), else kCpu.
Device best_device();
// The best device that computes this layer: kCuda when cuda_available() and the GPU kernels
// serve it (NVFP4 weights without biases, mode W4A16 or W4A4, activation silu or
// swiglu_clamped), else kCpu, whose reference serves every layer.
Device best_device(const MoeConfig& config, const MoeWeights& weights);
// "auto", "cpu" or "cuda"; "cuda" when unavailable is an Error saying why.
Device parse_device(std::string_view name);

// A runner on `device` for host weights. The CPU runner reads `weights` in place (keep them
// alive); the CUDA runner copies them to the device in its own layout.
std::unique_ptr<MoeRunner> make_runner(Device device, const MoeConfig& config,
                                       const MoeWeights& weights);

// Bytes on a device: host memory for kCpu, device memory for kCuda.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  // Out of memory is an Error (kOutOfMemory) saying how many bytes were asked for and `what`
  // they were for.
  DeviceBuffer(Device device, size_t bytes, std::string_view what = "a buffer");
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  size_t size() const { return size_; }
  Device device() const { return device_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

  // Copies between host memory and this buffer (bytes <= size()), complete on return. They do
  // not wait for work queued on non-blocking streams: synchronize those first.
  void upload(const void* host, size_t bytes);
  void download(void* host, size_t bytes) const;
  // Fills every byte with `value`, complete on return.
  void fill(unsigned char value);

 private:
  Device device_ = Device::kCpu;
  void* data_ = nullptr;
  size_t size_ = 0;
};

// Waits until all work queued on the device is done (no-op on the CPU).
void synchronize(Device device);

// Where the CPU backend runs its parallel loops. By default it starts threads of its own (as
// many as the CPUs the process may use, or NVFP4MOE_CPU_THREADS); a host framework that keeps a
// thread pool (torch's intra-op pool, which engines pin to cores) installs it here so that the
// two do not compete for the same cores. `body(i)` must be called once for each i in [0, count).
using CpuParallelBackend = void (*)(int64_t count, const std::function<void(int64_t)>& body);
void set_cpu_parallel_backend(CpuParallelBackend backend);

}  // namespace nvfp4moe
