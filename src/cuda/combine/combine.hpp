// The end of the combine: the fp32 sums the down GEMM accumulated, rounded to bf16 once.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace nvfp4moe::cuda {

// programmatic: launched with programmatic stream serialization (it waits for the grid ahead).
cudaError_t launch_round_to_bf16(const float* input, uint16_t* output, int64_t count,
                                 cudaStream_t stream, bool programmatic = false);

}  // namespace nvfp4moe::cuda
