// A probe kernel for the decode-exactness test: runs the GEMM's A-fragment decode on chosen
// (code, scale) pairs and returns the bf16 values it produced.
#include <cuda_runtime.h>

#include "cuda/sm90/nvfp4_decode.cuh"
#include "decode_probe.hpp"

namespace nvfp4moe::testing {

namespace {

// Thread i decodes a word whose nibble (reg, odd) holds codes[(i + kProbeCodeStride * (2 * reg +
// odd)) % count] (prepared_layout.hpp's bit places; a stride that changes the code, so a bit
// taken from the wrong nibble shows) as each of the chunk's 4 k16 steps, step s with prepared
// scale code scale_codes[(i + s) % count] for both rows (so a step that took another step's
// scale shows); writes the 32 bf16 results (step-major).
__global__ void decode_probe_kernel(const uint8_t* codes, const uint8_t* scale_codes, int count,
                                    uint16_t* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= count) return;
  uint32_t word = 0;
  for (int reg = 0; reg < 4; ++reg) {
    for (int odd = 0; odd < 2; ++odd) {
      word |= cuda::place_nibble(codes[(i + kProbeCodeStride * (2 * reg + odd)) % count], reg, odd);
    }
  }
  uint32_t step_codes = 0;
  for (int step = 0; step < 4; ++step) {
    step_codes |= uint32_t(scale_codes[(i + step) % count]) << (8 * step);
  }
  const cuda::RowScales scales = cuda::row_scales(cuda::prepared_scale_word(step_codes));
#pragma unroll
  for (int step = 0; step < 4; ++step) {
    uint32_t a[4];
    cuda::decode_a_fragment(word, scales, scales, step, a);
    for (int j = 0; j < 4; ++j) {
      out[32 * i + 8 * step + 2 * j] = static_cast<uint16_t>(a[j] & 0xFFFFu);
      out[32 * i + 8 * step + 2 * j + 1] = static_cast<uint16_t>(a[j] >> 16);
    }
  }
}

}  // namespace

std::string run_decode_probe(const std::vector<uint8_t>& codes,
                             const std::vector<uint8_t>& scale_codes, std::vector<uint16_t>& out) {
  const int count = static_cast<int>(codes.size());
  out.assign(32 * codes.size(), 0);
  uint8_t *d_codes = nullptr, *d_scales = nullptr;
  uint16_t* d_out = nullptr;
  cudaError_t status = cudaMalloc(&d_codes, count);
  if (status == cudaSuccess) status = cudaMalloc(&d_scales, count);
  if (status == cudaSuccess) status = cudaMalloc(&d_out, out.size() * 2);
  if (status == cudaSuccess)
    status = cudaMemcpy(d_codes, codes.data(), count, cudaMemcpyHostToDevice);
  if (status == cudaSuccess) {
    status = cudaMemcpy(d_scales, scale_codes.data(), count, cudaMemcpyHostToDevice);
  }
  if (status == cudaSuccess) {
    decode_probe_kernel<<<(count + 127) / 128, 128>>>(d_codes, d_scales, count, d_out);
    status = cudaGetLastError();
  }
  if (status == cudaSuccess) {
    status = cudaMemcpy(out.data(), d_out, out.size() * 2, cudaMemcpyDeviceToHost);
  }
  cudaFree(d_codes);
  cudaFree(d_scales);
  cudaFree(d_out);
  return status == cudaSuccess ? std::string() : cudaGetErrorString(status);
}

}  // namespace nvfp4moe::testing
