// Turning CUDA errors into nvfp4moe::Error, with the call site.
#pragma once

#include <cuda_runtime.h>

#include "core/check.hpp"

namespace nvfp4moe::cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t status, const char* call, const char* file,
                                          int line) {
  fail(ErrorKind::kCuda, "{} failed at {}:{}: {} ({})", call, file, line,
       cudaGetErrorString(status), cudaGetErrorName(status));
}

}  // namespace nvfp4moe::cuda

// Checks a CUDA runtime call; on failure throws Error(kCuda) naming the call and where it was.
#define NVFP4MOE_CUDA_CHECK(call)                                                      \
  do {                                                                                 \
    const cudaError_t nvfp4moe_status_ = (call);                                       \
    if (nvfp4moe_status_ != cudaSuccess) {                                             \
      ::nvfp4moe::cuda::throw_cuda_error(nvfp4moe_status_, #call, __FILE__, __LINE__); \
    }                                                                                  \
  } while (0)
