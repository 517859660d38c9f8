// Programmatic dependent launch (sm_90 and later), for every kernel of the CUDA layer. Device code
// only; no host headers.
#pragma once

namespace nvfp4moe::cuda::ptx {

// A grid launched with programmatic stream serialization may start before the grid ahead of it
// in the stream has finished; it must wait here before it reads what that grid (or any grid
// before it) writes. A no-op in a grid launched without the attribute.
__device__ __forceinline__ void wait_prerequisite_grids() {
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
}
// Lets the next grid, if launched with programmatic serialization, start launching now.
__device__ __forceinline__ void allow_dependent_grids() {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}

}  // namespace nvfp4moe::cuda::ptx
