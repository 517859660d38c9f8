// Host entry of the grouped GEMM: raw pointers in GemmParams, a stream, a status out. Never
// allocates, never synchronizes.
#pragma once

#include <cuda_runtime.h>

#include "cuda/sm90/gemm_params.hpp"

namespace nvfp4moe::cuda {

// grid_y: the number of tiles to launch for (the device table may use fewer; the rest exit).
// programmatic: launched with programmatic stream serialization, so its blocks may start (and,
// with params.prefetch_before_wait, copy weights) while the kernel ahead of it finishes.
cudaError_t launch_grouped_gemm(GemmShapeId shape, Epilogue epilogue, const GemmParams& params,
                                int grid_y, cudaStream_t stream, bool programmatic = false);

}  // namespace nvfp4moe::cuda
