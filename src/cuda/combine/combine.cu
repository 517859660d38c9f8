#include <algorithm>

#include "cuda/combine/combine.hpp"
#include "cuda/common/grid_dependency.cuh"
#include "cuda/common/launch.hpp"
#include "nvfp4moe/format.hpp"

namespace nvfp4moe::cuda {

namespace {

// Four elements per thread (count is a multiple of 16: hidden sizes are).
__global__ void round_to_bf16_kernel(const float4* input, uint2* output, int64_t count4) {
  ptx::wait_prerequisite_grids();  // launched programmatically: the sums' kernel may be running
  ptx::allow_dependent_grids();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count4;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float4 v = input[i];
    output[i] = make_uint2(uint32_t{float_to_bf16(v.x)} | (uint32_t{float_to_bf16(v.y)} << 16),
                           uint32_t{float_to_bf16(v.z)} | (uint32_t{float_to_bf16(v.w)} << 16));
  }
}

}  // namespace

cudaError_t launch_round_to_bf16(const float* input, uint16_t* output, int64_t count,
                                 cudaStream_t stream, bool programmatic) {
  if (count <= 0) return cudaSuccess;
  if (count % 4 != 0) return cudaErrorInvalidValue;
  constexpr int kThreads = 256;
  const int64_t count4 = count / 4;
  const int blocks = static_cast<int>(std::min<int64_t>((count4 + kThreads - 1) / kThreads, 4096));
  return launch_kernel(&round_to_bf16_kernel, dim3(static_cast<unsigned>(blocks)), dim3(kThreads),
                       0, stream, programmatic, reinterpret_cast<const float4*>(input),
                       reinterpret_cast<uint2*>(output), count4);
}

}  // namespace nvfp4moe::cuda
