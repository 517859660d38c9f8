// Weight preparation: the checkpoint's linear NVFP4 layout -> the GEMM's prepared layout
// (cuda/sm90/prepared_layout.hpp), on the device.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace nvfp4moe::cuda {

struct PrepareParams {
  // Source matrices in the linear layout of docs/numerics.md §1: values [rows, k/2], E4M3 scales
  // [rows, k/16]. Plain: output row 16G + r is source row 16G + r of `first`. Interleaved
  // (gate/up): rows 0..7 of group G are `first` rows 8G.., rows 8..15 are `second` rows 8G...
  const uint8_t* first_values = nullptr;
  const uint8_t* first_scales = nullptr;
  const uint8_t* second_values = nullptr;
  const uint8_t* second_scales = nullptr;
  bool interleave = false;
  int64_t rows = 0;           // output rows (2 * source rows when interleaving), multiple of 16
  int64_t k = 0;              // multiple of 16
  uint8_t* codes = nullptr;   // PreparedShape{rows, k}.code_bytes()
  uint8_t* scales = nullptr;  // PreparedShape{rows, k}.scale_bytes()
};

cudaError_t launch_prepare(const PrepareParams& params, cudaStream_t stream);

}  // namespace nvfp4moe::cuda
