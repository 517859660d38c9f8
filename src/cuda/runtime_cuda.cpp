// Device discovery and memory for the runtime API.
#include <cuda_runtime.h>

#include "cuda/common/cuda_check.hpp"
#include "cuda/runtime_cuda.hpp"

namespace nvfp4moe::cuda {

bool device_usable(std::string* reason) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count == 0) {
    if (reason) {
      *reason = status != cudaSuccess
                    ? std::string("no usable CUDA device (") + cudaGetErrorString(status) + ")"
                    : std::string("no CUDA device");
    }
    (void)cudaGetLastError();  // clear the sticky-free error state
    return false;
  }
  cudaDeviceProp properties{};
  NVFP4MOE_CUDA_CHECK(cudaGetDeviceProperties(&properties, 0));
  if (properties.major != 9 || properties.minor != 0) {
    if (reason) {
      *reason = "device 0 (" + std::string(properties.name) + ") is sm_" +
                std::to_string(properties.major) + std::to_string(properties.minor) +
                "; this build has kernels for sm_90a (Hopper) only";
    }
    return false;
  }
  return true;
}

void* device_alloc(size_t bytes) {
  void* pointer = nullptr;
  if (bytes == 0) return nullptr;
  const cudaError_t status = cudaMalloc(&pointer, bytes);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    fail(ErrorKind::kCuda, "cannot allocate {} bytes of device memory: {}", bytes,
         cudaGetErrorString(status));
  }
  return pointer;
}

void device_free(void* pointer) noexcept {
  if (pointer != nullptr) (void)cudaFree(pointer);
}

// cudaMemcpy from pageable memory may return before the DMA lands and cudaMemset is
// asynchronous; waiting for the legacy stream makes both complete before returning, so that work
// on any stream issued afterwards sees the data.
void copy_to_device(void* device, const void* host, size_t bytes) {
  NVFP4MOE_CUDA_CHECK(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice));
  NVFP4MOE_CUDA_CHECK(cudaStreamSynchronize(nullptr));
}

void copy_to_host(void* host, const void* device, size_t bytes) {
  NVFP4MOE_CUDA_CHECK(cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost));
}

void device_memset(void* device, unsigned char value, size_t bytes) {
  NVFP4MOE_CUDA_CHECK(cudaMemset(device, value, bytes));
  NVFP4MOE_CUDA_CHECK(cudaStreamSynchronize(nullptr));
}

void device_synchronize() { NVFP4MOE_CUDA_CHECK(cudaDeviceSynchronize()); }

}  // namespace nvfp4moe::cuda
