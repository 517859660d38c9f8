// Kernels of the benchmark: random device data, and the pieces of the BF16 MoE peer around its
// cuBLAS GEMMs (gather, activation, combine). Launchers take raw pointers and a stream.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace nvfp4moe::bench {

// Uniform values in [-amplitude, amplitude) as bf16, from a counter-based hash of (seed, i).
cudaError_t fill_random_bf16(uint16_t* out, int64_t count, float amplitude, uint64_t seed,
                             cudaStream_t stream);

// rows[p] = x[token[p]] for p < count; rows of `hidden` bf16.
cudaError_t gather_rows(const uint16_t* x, const int32_t* token, int64_t count, int64_t hidden,
                        uint16_t* rows, cudaStream_t stream);

// h[p, i] = bf16(silu(y[p, i]) * y[p, I + i]) for rows of y = [gate | up] (bf16).
cudaError_t silu_and_mul(const uint16_t* y, int64_t count, int64_t intermediate, uint16_t* h,
                         cudaStream_t stream);

// out[t, c] = bf16(sum_j weight[t, j] * y[position[t, j], c]) over slots with position >= 0.
cudaError_t weighted_combine(const uint16_t* y, const int32_t* position, const float* weight,
                             int64_t tokens, int64_t top_k, int64_t hidden, uint16_t* out,
                             cudaStream_t stream);

}  // namespace nvfp4moe::bench
