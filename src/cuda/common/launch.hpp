// Kernel launches that may overlap the kernel ahead of them in the stream (programmatic dependent
// launch, sm_90). Host code; the kernel side is ptx::wait_prerequisite_grids and
// ptx::allow_dependent_grids.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace nvfp4moe::cuda {

// kernel<<<grid, block, smem_bytes, stream>>>(args...), with programmatic stream serialization
// when `programmatic`: its blocks may then start before the kernel ahead finishes, and must wait
// for it before reading what it (or anything before it) writes.
template <class... Params, class... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes,
                          cudaStream_t stream, bool programmatic, Args... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  config.attrs = programmatic ? &attribute : nullptr;
  config.numAttrs = programmatic ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, args...);
}

}  // namespace nvfp4moe::cuda
