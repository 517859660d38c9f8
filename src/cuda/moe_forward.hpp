// The CUDA MoE forward as free functions over device pointers, for the owning runner and for
// bindings whose tensors own the memory (the torch ops). Host code: never allocates, never
// synchronizes (preparation excepted, which runs once at load time).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>

#include "cuda/sm90/prepared_layout.hpp"
#include "nvfp4moe/moe.hpp"

namespace nvfp4moe::cuda {

// Expert weights in the prepared layout (prepared_layout.hpp), on the device.
struct PreparedMoeWeights {
  const uint8_t* gate_up_codes = nullptr;   // E * PreparedShape{2I, H}.code_bytes()
  const uint8_t* gate_up_scales = nullptr;  // E * PreparedShape{2I, H}.scale_bytes()
  const uint8_t* down_codes = nullptr;      // E * PreparedShape{H, I}.code_bytes()
  const uint8_t* down_scales = nullptr;
  const float* gate_scale = nullptr;           // [E]
  const float* up_scale = nullptr;             // [E]
  const float* down_scale = nullptr;           // [E]
  const float* gate_up_input_scale = nullptr;  // [E], static W4A4 only
  const float* down_input_scale = nullptr;     // [E], static W4A4 only
};

// Prepares `experts` stacked matrices [rows, k] given in the linear layout of docs/numerics.md §1
// on the device into `codes`/`scale_codes` (each experts * PreparedShape{rows, k} bytes). gate_up:
// each matrix is [gate rows; up rows], interleaved for the fused activation. Block scales must
// already be checked (finite, >= 0).
void prepare_matrices(const uint8_t* values, const uint8_t* scales, int64_t experts, int64_t rows,
                      int64_t k, bool gate_up, uint8_t* codes, uint8_t* scale_codes,
                      cudaStream_t stream);

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
