#include <algorithm>

#include "cuda/sm90/prepare.hpp"
#include "cuda/sm90/prepared_layout.hpp"

namespace nvfp4moe::cuda {

namespace {

constexpr int kThreads = 256;

struct SourceRow {
  const uint8_t* values;
  const uint8_t* scales;
};

__device__ __forceinline__ SourceRow source_row(const PrepareParams& p, int64_t group, int r) {
  const int64_t k = p.k;
  if (!p.interleave) {
    const int64_t row = group * 16 + r;
    return {p.first_values + row * (k / 2), p.first_scales + row * (k / 16)};
  }
  const int64_t row = group * 8 + (r & 7);
  const uint8_t* values = r < 8 ? p.first_values : p.second_values;
  const uint8_t* scales = r < 8 ? p.first_scales : p.second_scales;
  return {values + row * (k / 2), scales + row * (k / 16)};
}

__global__ void prepare_codes_kernel(const PrepareParams p) {
  const PreparedShape shape{p.rows, p.k};
  const int64_t words = shape.code_bytes() / 4;
  for (int64_t w = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; w < words;
       w += int64_t(gridDim.x) * blockDim.x) {
    const int step = static_cast<int>(w % 4);
    const int lane = static_cast<int>((w / 4) % 32);
    const int64_t chunk = (w / 128) % shape.k_chunks();
    const int64_t group = w / (128 * shape.k_chunks());
    uint32_t word = 0;
    for (int slot = 0; slot < 8; ++slot) {
      const int reg = slot & 3, odd = slot >> 2;
      const NibbleSource at = nibble_source(lane, step, reg, odd);
      const int64_t k = chunk * kChunkK + at.k;
      if (k >= p.k) continue;
      const SourceRow row = source_row(p, group, at.row);
      // A block whose scale is zero is zero whatever its codes: make the codes zero, so the
      // scale's prepared code may be anything (prepared_layout.hpp).
      if ((row.scales[k / 16] & 0x7F) == 0) continue;
      const uint32_t nibble = (row.values[k / 2] >> (4 * (k & 1))) & 0xFu;
      word |= place_nibble(nibble, reg, odd);
    }
    reinterpret_cast<uint32_t*>(p.codes)[w] = word;
  }
}

__global__ void prepare_scales_kernel(const PrepareParams p) {
  const PreparedShape shape{p.rows, p.k};
  const int64_t words = shape.scale_bytes() / 4;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < words;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int half = static_cast<int>(i % 2);  // row g or g + 8
    const int g = static_cast<int>((i / 2) % 8);
    const int64_t chunk = (i / 16) % shape.k_chunks();
    const int64_t group = i / (16 * shape.k_chunks());
    uint32_t codes = 0;
    for (int step = 0; step < 4; ++step) {
      const NibbleSource at = scale_source(g, 4 * half + step);
      const int64_t block = chunk * 4 + at.k;
      if (block < p.k / 16) {
        codes |= uint32_t(prepared_scale_code(source_row(p, group, at.row).scales[block]))
                 << (8 * step);
      }
    }
    reinterpret_cast<uint32_t*>(p.scales)[i] = prepared_scale_word(codes);
  }
}

}  // namespace

cudaError_t launch_prepare(const PrepareParams& p, cudaStream_t stream) {
  if (p.rows % 16 != 0 || p.k % 16 != 0 || p.rows <= 0 || p.k <= 0) return cudaErrorInvalidValue;
  const PreparedShape shape{p.rows, p.k};
  const auto grid = [](int64_t items) {
    return static_cast<int>(std::min<int64_t>((items + kThreads - 1) / kThreads, 8192));
  };
  prepare_codes_kernel<<<grid(shape.code_bytes() / 4), kThreads, 0, stream>>>(p);
  if (const cudaError_t status = cudaGetLastError(); status != cudaSuccess) return status;
  prepare_scales_kernel<<<grid(shape.scale_bytes() / 4), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace nvfp4moe::cuda
