// Host entry of the grouped GEMM: raw pointers in GemmParams, a stream, a status out. Never
// allocates, never synchronizes.
#pragma once

#include <cuda_runtime.h>

#include "cuda/gemm/gemm_params.hpp"

namespace nvfp4moe::cuda {

// grid_y: the number of tiles to launch for (the device table may use fewer; the rest exit).
cudaError_t launch_grouped_gemm(GemmShapeId shape, Epilogue epilogue, const GemmParams& params,
                                int grid_y, cudaStream_t stream);

}  // namespace nvfp4moe::cuda
