// Host NVFP4 quantizer: docs/numerics.md §2 applied block by block through the shared codecs.
#include "nvfp4moe/quantize.hpp"

#include <cmath>

#include "core/check.hpp"

namespace nvfp4moe {
namespace {

float element_as_float(float x) { return x; }
float element_as_float(uint16_t x_bf16) { return bf16_to_float(x_bf16); }

template <typename T>
float finite_amax_impl(std::span<const T> x, std::string_view what, int64_t cols) {
  float amax = 0.0f;
  for (size_t i = 0; i < x.size(); ++i) {
    const float v = element_as_float(x[i]);
    if (!std::isfinite(v)) {
      const auto width = static_cast<size_t>(cols);
      fail(ErrorKind::kInvalidArgument,
           "{}: element {} is {}; NVFP4 quantization needs finite values", what,
           cols > 0 ? fmt::format("[{}, {}]", i / width, i % width) : std::to_string(i), v);
    }
    amax = std::fmax(amax, std::fabs(v));
  }
  return amax;
}

void check_shape(size_t num_elements, int64_t rows, int64_t cols, size_t values_size,
                 size_t scales_size) {
  require(rows >= 0 && cols >= 0, ErrorKind::kInvalidArgument,
          "quantize_nvfp4: shape [{}, {}] has a negative dimension", rows, cols);
  require(cols % kBlockSize == 0, ErrorKind::kInvalidArgument,
          "quantize_nvfp4: cols = {} is not a multiple of the block size {}", cols, kBlockSize);
  const auto elements = static_cast<size_t>(rows) * static_cast<size_t>(cols);
  require(num_elements == elements, ErrorKind::kInvalidArgument,
          "quantize_nvfp4: input has {} elements but the shape [{}, {}] needs {}", num_elements,
          rows, cols, elements);
  require(values_size == elements / 2, ErrorKind::kInvalidArgument,
          "quantize_nvfp4: values buffer has {} bytes, expected {}", values_size, elements / 2);
  require(scales_size == elements / kBlockSize, ErrorKind::kInvalidArgument,
          "quantize_nvfp4: scales buffer has {} bytes, expected {}", scales_size,
          elements / kBlockSize);
}

template <typename T>
void quantize_impl(std::span<const T> x, int64_t rows, int64_t cols, float global_scale,
                   std::span<uint8_t> values, std::span<uint8_t> scales) {
  check_shape(x.size(), rows, cols, values.size(), scales.size());
  require(std::isfinite(global_scale) && global_scale > 0.0f, ErrorKind::kInvalidArgument,
          "quantize_nvfp4: global scale {} must be finite and > 0", global_scale);
  const size_t num_blocks = x.size() / kBlockSize;
  for (size_t block = 0; block < num_blocks; ++block) {
    float v[kBlockSize];
    float block_amax = 0.0f;
    for (int i = 0; i < kBlockSize; ++i) {
      v[i] = element_as_float(x[block * kBlockSize + i]);
      if (!std::isfinite(v[i])) {
        const size_t index = block * kBlockSize + i;
        fail(ErrorKind::kInvalidArgument,
             "quantize_nvfp4: x[{}, {}] is {}; NVFP4 quantization needs finite values",
             index / cols, index % cols, v[i]);
      }
      block_amax = std::fmax(block_amax, std::fabs(v[i]));
    }
    const uint8_t scale = nvfp4_block_scale(block_amax, global_scale);
    scales[block] = scale;
    for (int i = 0; i < kBlockSize; i += 2) {
      const uint8_t low = nvfp4_element_code(v[i], scale, global_scale);
      const uint8_t high = nvfp4_element_code(v[i + 1], scale, global_scale);
      values[block * (kBlockSize / 2) + i / 2] = static_cast<uint8_t>(low | (high << 4));
    }
  }
}

}  // namespace

float finite_amax(std::span<const float> x, std::string_view what, int64_t cols) {
  return finite_amax_impl(x, what, cols);
}
float finite_amax(std::span<const uint16_t> x_bf16, std::string_view what, int64_t cols) {
  return finite_amax_impl(x_bf16, what, cols);
}

void quantize_nvfp4(std::span<const float> x, int64_t rows, int64_t cols, float global_scale,
                    std::span<uint8_t> values, std::span<uint8_t> scales) {
  quantize_impl(x, rows, cols, global_scale, values, scales);
}

void quantize_nvfp4(std::span<const uint16_t> x_bf16, int64_t rows, int64_t cols,
                    float global_scale, std::span<uint8_t> values, std::span<uint8_t> scales) {
  quantize_impl(x_bf16, rows, cols, global_scale, values, scales);
}

NvFp4Tensor quantize_nvfp4(std::span<const float> x, int64_t rows, int64_t cols,
                           std::optional<float> global_scale) {
  NvFp4Tensor out;
  out.rows = rows;
  out.cols = cols;
  require(rows >= 0 && cols >= 0, ErrorKind::kInvalidArgument,
          "quantize_nvfp4: shape [{}, {}] has a negative dimension", rows, cols);
  out.values.resize(static_cast<size_t>(rows * cols / 2));
  out.scales.resize(static_cast<size_t>(rows * cols / kBlockSize));
  out.global_scale = global_scale
                         ? *global_scale
                         : nvfp4_dynamic_global_scale(finite_amax(x, "quantize_nvfp4", cols));
  quantize_nvfp4(x, rows, cols, out.global_scale, out.values, out.scales);
  return out;
}

namespace {

// A row of two E2M1 codes per byte (low nibble first) in blocks of kBlock sharing a scale.
template <int kBlock, float (*kDecodeScale)(uint8_t)>
void decode_fp4_row(const uint8_t* row_values, const uint8_t* row_scales, int64_t cols,
                    float* out) {
  for (int64_t block = 0; block < cols / kBlock; ++block) {
    const float scale = kDecodeScale(row_scales[block]);
    for (int i = 0; i < kBlock / 2; ++i) {
      const uint8_t byte = row_values[block * (kBlock / 2) + i];
      out[block * kBlock + 2 * i] = e2m1_decode(byte & 0xF) * scale;
      out[block * kBlock + 2 * i + 1] = e2m1_decode(byte >> 4) * scale;
    }
  }
}

}  // namespace

void decode_nvfp4_row(const uint8_t* row_values, const uint8_t* row_scales, int64_t cols,
                      float* out) {
  decode_fp4_row<kBlockSize, e4m3_decode>(row_values, row_scales, cols, out);
}

void decode_mxfp4_row(const uint8_t* row_values, const uint8_t* row_scales, int64_t cols,
                      float* out) {
  decode_fp4_row<kMxBlockSize, e8m0_decode>(row_values, row_scales, cols, out);
}

void dequantize_nvfp4(const NvFp4View& tensor, std::span<float> out) {
  require(tensor.cols % kBlockSize == 0, ErrorKind::kInvalidArgument,
          "dequantize_nvfp4: cols = {} is not a multiple of {}", tensor.cols, kBlockSize);
  const auto elements = static_cast<size_t>(tensor.rows * tensor.cols);
  require(out.size() == elements, ErrorKind::kInvalidArgument,
          "dequantize_nvfp4: output has {} elements, expected {}", out.size(), elements);
  for (int64_t r = 0; r < tensor.rows; ++r) {
    float* row = out.data() + r * tensor.cols;
    decode_nvfp4_row(tensor.values + r * tensor.cols / 2,
                     tensor.scales + r * tensor.cols / kBlockSize, tensor.cols, row);
    for (int64_t c = 0; c < tensor.cols; ++c) row[c] *= tensor.global_scale;
  }
}

}  // namespace nvfp4moe
