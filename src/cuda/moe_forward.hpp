// The CUDA MoE forward as free functions over device pointers, for the owning runner and for
// bindings whose tensors own the memory (the torch ops). Host code: never allocates, never
// synchronizes (preparation excepted, which runs once at load time).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>

#include "nvfp4moe/moe.hpp"

namespace nvfp4moe::cuda {

// Expert weights in the GEMM family's prepared layout (expert_gemm.hpp), on the device.
struct PreparedMoeWeights {
  const uint8_t* gate_up_codes = nullptr;   // E * prepared_bytes(2I, H).codes
  const uint8_t* gate_up_scales = nullptr;  // E * prepared_bytes(2I, H).scales
  const uint8_t* down_codes = nullptr;      // E * prepared_bytes(H, I).codes
  const uint8_t* down_scales = nullptr;
  const float* gate_scale = nullptr;           // [E]
  const float* up_scale = nullptr;             // [E]
  const float* down_scale = nullptr;           // [E]
  const float* gate_up_input_scale = nullptr;  // [E], static W4A4 only
  const float* down_input_scale = nullptr;     // [E], static W4A4 only
};

// Workspace bytes of moe_forward: a pure function of the config.
size_t moe_workspace_bytes(const MoeConfig& config);

// Steps an expert-parallel caller inserts into the forward (numerics §4: under dynamic W4A4 the
// global scales come from the whole batch, every rank's tokens, not this rank's share).
using AmaxHook = std::function<void(uint32_t* amax_bits, cudaStream_t stream)>;
struct ForwardExtras {
  // Dynamic W4A4: fills the zeroed amax word of the hidden states (bits of a float >= 0) in
  // place of the forward's own pass over args.hidden.
  AmaxHook input_amax;
  // Dynamic W4A4: receives the intermediate's amax word once this rank's is computed.
  AmaxHook intermediate_amax;
  // If set, only rows [0, *device_rows) of args.hidden hold tokens; the ids of the others must
  // be -1. Rows past it are neither read nor checked (their bytes may be stale).
  const int32_t* device_rows = nullptr;
};

// The forward. With `sums` null, args.output [T, H] bf16 gets the layer's output; otherwise
// sums [T, H] fp32 gets the sums before rounding (and args.output is not used). Input problems
// the device finds (ids out of range, non-finite W4A4 activations) set bits in *error_flags
// (route.hpp) and the offending slots are skipped.
void moe_forward(const MoeConfig& config, const PreparedMoeWeights& weights,
                 const MoeForwardArgs& args, float* sums, void* workspace, uint32_t* error_flags,
                 cudaStream_t stream, const ForwardExtras& extras = {});

}  // namespace nvfp4moe::cuda
