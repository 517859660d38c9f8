// Shared pieces of the GPU suites: skipping without a GPU, device buffers of host vectors,
// sizes that shrink under compute-sanitizer.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "cuda/runtime_cuda.hpp"
#include "nvfp4moe/runtime.hpp"

namespace nvfp4moe::testing {

// Every GPU test starts with this: on a machine without a usable GPU (CI) the test is skipped
// and says why. The GPU suite runs with scripts/test_gpu.sh on a Hopper machine.
#define NVFP4MOE_REQUIRE_GPU()                                          \
  do {                                                                  \
    std::string nvfp4moe_reason;                                        \
    if (!::nvfp4moe::cuda::device_usable(&nvfp4moe_reason)) {           \
      GTEST_SKIP() << "GPU test skipped: " << nvfp4moe_reason           \
                   << " (run scripts/test_gpu.sh on an sm_90 machine)"; \
    }                                                                   \
  } while (0)

// NVFP4MOE_TEST_QUICK=1 (set for the compute-sanitizer runs) drops the largest cases, whose
// kernels are the same as the small ones' but take minutes under the sanitizer.
inline bool quick_mode() { return std::getenv("NVFP4MOE_TEST_QUICK") != nullptr; }

template <typename T>
DeviceBuffer to_device(const std::vector<T>& host) {
  DeviceBuffer buffer(Device::kCuda, host.size() * sizeof(T));
  buffer.upload(host.data(), host.size() * sizeof(T));
  return buffer;
}

template <typename T>
std::vector<T> to_host(const DeviceBuffer& buffer, size_t count) {
  std::vector<T> host(count);
  buffer.download(host.data(), count * sizeof(T));
  return host;
}

}  // namespace nvfp4moe::testing
