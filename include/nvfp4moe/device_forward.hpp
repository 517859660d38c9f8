// The GPU backend over memory its caller owns: the framework-free entry points that bindings
// (the torch ops) and engines call with their own tensors. Raw device pointers, sizes, and a
// cudaStream_t passed as void*; no CUDA or framework type is needed to include this header.
// Nothing here allocates; only preparation (a load-time step) may synchronize.
#pragma once

#include <cstdint>
#include <optional>

#include "nvfp4moe/linear.hpp"
#include "nvfp4moe/moe.hpp"

namespace nvfp4moe {

// Bytes of one expert's [rows, k] matrix prepared for `device`: the codes and the block
// scales. The CPU reads the checkpoint's layout (rows * k / 2 and rows * k / 16); a GPU reads
// its GEMM family's layout, which pads k (docs/kernels.md).
struct PreparedBytes {
  int64_t codes = 0;
  int64_t scales = 0;
};
PreparedBytes prepared_bytes(Device device, int64_t rows, int64_t k);

// Prepares `experts` stacked [rows, k] matrices given in the checkpoint's layout
// (docs/numerics.md §1) in device memory into `codes` and `scale_codes` (experts *
// prepared_bytes(kCuda, rows, k) each). gate_up: each matrix is [gate rows; up rows] (an
// engine's w13). Block scales must already be checked (validate_block_scales).
void prepare_on_device(const uint8_t* values, const uint8_t* scales, int64_t experts, int64_t rows,
                       int64_t k, bool gate_up, uint8_t* codes, uint8_t* scale_codes, void* stream);

// Expert weights prepared by prepare_on_device, in device memory (E = local experts).
struct DeviceMoeWeights {
  const uint8_t* gate_up_codes = nullptr;      // E x prepared_bytes(kCuda, 2I, H).codes
  const uint8_t* gate_up_scales = nullptr;     // E x prepared_bytes(kCuda, 2I, H).scales
  const uint8_t* down_codes = nullptr;         // E x prepared_bytes(kCuda, H, I).codes
  const uint8_t* down_scales = nullptr;        // E x prepared_bytes(kCuda, H, I).scales
  const float* gate_global_scale = nullptr;    // [E]
  const float* up_global_scale = nullptr;      // [E]
  const float* down_global_scale = nullptr;    // [E]
  const float* gate_up_input_scale = nullptr;  // [E], static W4A4 only
  const float* down_input_scale = nullptr;     // [E], static W4A4 only
};

// The MoE forward (docs/numerics.md §4) on the GPU: args.output gets the layer's output.
// `workspace` holds workspace_bytes(Device::kCuda, config); one workspace serves every layer
// whose forwards are ordered on one stream. Input problems the device meets (ids out of range,
// non-finite W4A4 activations) set bits of *error_flags (kErrorBadExpertId, ...) and the slots
// are skipped; raise_device_errors turns a word read back into an Error. Capturable in a CUDA
// graph.
void forward_on_device(const MoeConfig& config, const DeviceMoeWeights& weights,
                       const MoeForwardArgs& args, void* workspace, uint32_t* error_flags,
                       void* stream);

// The dense linear layer on the GPU: out [tokens, out_features] bf16 of x [tokens, in_features]
// bf16; weight_scale and input_scale (static W4A4) are device scalars; workspace holds
// linear_workspace_bytes(Device::kCuda, config).
void linear_on_device(const LinearConfig& config, const uint8_t* codes, const uint8_t* scale_codes,
                      const float* weight_scale, const float* input_scale, int64_t tokens,
                      const uint16_t* x, uint16_t* out, void* workspace, uint32_t* error_flags,
                      void* stream);

// NVFP4 quantization (docs/numerics.md §2) on the GPU, bit-identical to quantize_nvfp4: x
// [rows, cols] bf16 (or fp32 with x_is_f32) into values [rows, cols/2] and scales [rows, cols/16];
// without `global_scale`, *global_scale_out (device) gets g = amax / 2688 computed on the device
// (with it, the caller knows g and *global_scale_out is left as it is).
void quantize_on_device(const void* x, bool x_is_f32, int64_t rows, int64_t cols,
                        std::optional<float> global_scale, uint8_t* values, uint8_t* scales,
                        float* global_scale_out, void* stream);

}  // namespace nvfp4moe
