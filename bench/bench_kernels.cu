#include <algorithm>

#include "bench_kernels.hpp"
#include "core/activation.hpp"
#include "nvfp4moe/format.hpp"

namespace nvfp4moe::bench {

namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t items) {
  return static_cast<int>(std::min<int64_t>((items + kThreads - 1) / kThreads, 8192));
}

__device__ __forceinline__ uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

__global__ void fill_random_bf16_kernel(uint16_t* out, int64_t count, float amplitude,
                                        uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    const uint64_t bits = mix(seed * 0x9E3779B97F4A7C15ull + uint64_t(i));
    const float unit = float(bits >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    out[i] = float_to_bf16(amplitude * (2.0f * unit - 1.0f));
  }
}

__global__ void gather_rows_kernel(const uint4* x, const int32_t* token, int64_t count,
                                   int64_t vectors_per_row, uint4* rows) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count * vectors_per_row;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = i / vectors_per_row, v = i % vectors_per_row;
    rows[i] = x[token[p] * vectors_per_row + v];
  }
}

__global__ void silu_and_mul_kernel(const uint16_t* y, int64_t count, int64_t inter, uint16_t* h) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count * inter;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = i / inter, c = i % inter;
    const float gate = bf16_to_float(y[p * 2 * inter + c]);
    const float up = bf16_to_float(y[p * 2 * inter + inter + c]);
    h[i] = float_to_bf16(silu(gate) * up);
  }
}

__global__ void weighted_combine_kernel(const uint16_t* y, const int32_t* position,
                                        const float* weight, int64_t tokens, int64_t top_k,
                                        int64_t hidden, uint16_t* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < tokens * hidden;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / hidden, c = i % hidden;
    float sum = 0.0f;
    for (int64_t j = 0; j < top_k; ++j) {
      const int32_t p = position[t * top_k + j];
      if (p >= 0) sum += weight[t * top_k + j] * bf16_to_float(y[p * hidden + c]);
    }
    out[i] = float_to_bf16(sum);
  }
}

}  // namespace

cudaError_t fill_random_bf16(uint16_t* out, int64_t count, float amplitude, uint64_t seed,
                             cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  fill_random_bf16_kernel<<<blocks_for(count), kThreads, 0, stream>>>(out, count, amplitude, seed);
  return cudaGetLastError();
}

cudaError_t gather_rows(const uint16_t* x, const int32_t* token, int64_t count, int64_t hidden,
                        uint16_t* rows, cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  const int64_t vectors = hidden / 8;
  gather_rows_kernel<<<blocks_for(count * vectors), kThreads, 0, stream>>>(
      reinterpret_cast<const uint4*>(x), token, count, vectors, reinterpret_cast<uint4*>(rows));
  return cudaGetLastError();
}

cudaError_t silu_and_mul(const uint16_t* y, int64_t count, int64_t intermediate, uint16_t* h,
                         cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  silu_and_mul_kernel<<<blocks_for(count * intermediate), kThreads, 0, stream>>>(y, count,
                                                                                 intermediate, h);
  return cudaGetLastError();
}

cudaError_t weighted_combine(const uint16_t* y, const int32_t* position, const float* weight,
                             int64_t tokens, int64_t top_k, int64_t hidden, uint16_t* out,
                             cudaStream_t stream) {
  if (tokens <= 0) return cudaSuccess;
  weighted_combine_kernel<<<blocks_for(tokens * hidden), kThreads, 0, stream>>>(
      y, position, weight, tokens, top_k, hidden, out);
  return cudaGetLastError();
}

}  // namespace nvfp4moe::bench
