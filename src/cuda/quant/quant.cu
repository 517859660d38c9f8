// Device NVFP4 quantization kernels.
#include <algorithm>

#include "cuda/quant/quant.hpp"
#include "cuda/route/route.hpp"  // error bits
#include "nvfp4moe/format.hpp"

namespace nvfp4moe::cuda {

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ int64_t row_count(const QuantizeSource& s) {
  if (s.device_rows == nullptr) return s.max_rows;
  const int64_t rows = *s.device_rows;
  return rows < s.max_rows ? rows : s.max_rows;
}

// The 16 values of block `b` of output row `r`, as fp32.
__device__ __forceinline__ void load_block(const QuantizeSource& s, int64_t r, int b,
                                           float (&v)[16]) {
  const int64_t row = s.gather ? s.gather[r] / s.gather_divisor : r;
  if (s.input_is_f32) {
    const auto* p = reinterpret_cast<const float4*>(static_cast<const float*>(s.input) +
                                                    row * s.input_row_stride + b * 16);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float4 q = p[i];
      v[4 * i] = q.x;
      v[4 * i + 1] = q.y;
      v[4 * i + 2] = q.z;
      v[4 * i + 3] = q.w;
    }
  } else {
    const auto* p = reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(s.input) +
                                                   row * s.input_row_stride + b * 16);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const uint4 q = p[i];
      const uint32_t words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        v[8 * i + 2 * j] = __uint_as_float(words[j] << 16);
        v[8 * i + 2 * j + 1] = __uint_as_float(words[j] & 0xFFFF0000u);
      }
    }
  }
}

__device__ __forceinline__ float global_scale(const QuantizeSource& s, int64_t r) {
  switch (s.scale_source) {
    case ActivationScaleSource::kOne:
      return s.static_scale;
    case ActivationScaleSource::kPerExpert:
      return s.per_expert_scale[s.row_expert ? s.row_expert[r] : 0];
    case ActivationScaleSource::kFromAmax:
      return nvfp4_dynamic_global_scale(__uint_as_float(*s.amax_bits));
  }
  return 1.0f;
}

// Block amax with the finite check of the CPU quantizer.
__device__ __forceinline__ float block_amax(const QuantizeSource& s, const float (&v)[16]) {
  float amax = 0.0f;
  bool finite = true;
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    finite &= isfinite(v[i]);
    amax = fmaxf(amax, fabsf(v[i]));
  }
  if (!finite && s.error_flags) atomicOr(s.error_flags, kErrorNonFiniteActivation);
  return amax;
}

__global__ void amax_kernel(const QuantizeSource s, uint32_t* amax_bits) {
  const int blocks_per_row = s.cols / 16;
  const int64_t total = row_count(s) * blocks_per_row;
  float amax = 0.0f;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    float v[16];
    load_block(s, i / blocks_per_row, static_cast<int>(i % blocks_per_row), v);
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      if (isfinite(v[j])) {
        amax = fmaxf(amax, fabsf(v[j]));
      } else if (s.error_flags) {
        atomicOr(s.error_flags, kErrorNonFiniteActivation);
      }
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, offset));
  }
  // Non-negative floats order like their bit patterns.
  if (threadIdx.x % 32 == 0 && amax > 0.0f) atomicMax(amax_bits, __float_as_uint(amax));
}

template <bool kPacked>
__global__ void quantize_kernel(const QuantizeSource s, uint16_t* dequantized,
                                int64_t output_row_stride, uint8_t* values, uint8_t* scales) {
  const int blocks_per_row = s.cols / 16;
  const int64_t total = row_count(s) * blocks_per_row;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / blocks_per_row;
    const int b = static_cast<int>(i % blocks_per_row);
    float v[16];
    load_block(s, r, b, v);
    const float g = global_scale(s, r);
    const uint8_t scale = nvfp4_block_scale(block_amax(s, v), g);
    if constexpr (kPacked) {
      uint32_t packed[2] = {0, 0};
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        packed[j / 8] |= uint32_t{nvfp4_element_code(v[j], scale, g)} << (4 * (j % 8));
      }
      *reinterpret_cast<uint2*>(values + i * 8) = make_uint2(packed[0], packed[1]);
      scales[i] = scale;
    } else {
      uint32_t words[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float lo = nvfp4_element_value(nvfp4_element_code(v[2 * j], scale, g), scale);
        const float hi = nvfp4_element_value(nvfp4_element_code(v[2 * j + 1], scale, g), scale);
        words[j] = uint32_t{float_to_bf16(lo)} | (uint32_t{float_to_bf16(hi)} << 16);
      }
      auto* out = reinterpret_cast<uint4*>(dequantized + r * output_row_stride + b * 16);
      out[0] = make_uint4(words[0], words[1], words[2], words[3]);
      out[1] = make_uint4(words[4], words[5], words[6], words[7]);
    }
  }
}

__global__ void amax_to_global_scale_kernel(float* value) {
  *value = nvfp4_dynamic_global_scale(__uint_as_float(*reinterpret_cast<const uint32_t*>(value)));
}

int grid_for(const QuantizeSource& s) {
  const int64_t total = s.max_rows * (s.cols / 16);
  return static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 4096));
}

}  // namespace

cudaError_t launch_amax(const QuantizeSource& source, uint32_t* amax_bits, cudaStream_t stream) {
  if (source.max_rows <= 0) return cudaSuccess;
  amax_kernel<<<grid_for(source), kThreads, 0, stream>>>(source, amax_bits);
  return cudaGetLastError();
}

cudaError_t launch_quantize_dequantize(const QuantizeSource& source, uint16_t* output,
                                       int64_t output_row_stride, cudaStream_t stream) {
  if (source.max_rows <= 0) return cudaSuccess;
  quantize_kernel<false><<<grid_for(source), kThreads, 0, stream>>>(
      source, output, output_row_stride, nullptr, nullptr);
  return cudaGetLastError();
}

cudaError_t launch_quantize_nvfp4(const QuantizeSource& source, uint8_t* values, uint8_t* scales,
                                  cudaStream_t stream) {
  if (source.max_rows <= 0) return cudaSuccess;
  quantize_kernel<true>
      <<<grid_for(source), kThreads, 0, stream>>>(source, nullptr, 0, values, scales);
  return cudaGetLastError();
}

cudaError_t launch_amax_to_global_scale(float* amax_then_scale, cudaStream_t stream) {
  amax_to_global_scale_kernel<<<1, 1, 0, stream>>>(amax_then_scale);
  return cudaGetLastError();
}

}  // namespace nvfp4moe::cuda
