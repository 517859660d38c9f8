#include "core/convert.hpp"

#include <cstring>

#include "core/check.hpp"
#include "nvfp4moe/format.hpp"

namespace nvfp4moe {

float f16_to_float(uint16_t bits) {
  const uint32_t sign = uint32_t{bits & 0x8000u} << 16;
  const uint32_t exponent = (bits >> 10) & 0x1Fu;
  const uint32_t mantissa = bits & 0x3FFu;
  if (exponent == 0x1F) return bits_to_float(sign | 0x7F800000u | (mantissa << 13));
  if (exponent != 0) return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  const float magnitude = static_cast<float>(mantissa) * 0x1.0p-24f;  // subnormal, exact
  return sign ? -magnitude : magnitude;
}

void convert_to_float(DType dtype, std::span<const std::byte> bytes, std::span<float> out) {
  const size_t width = dtype == DType::kF32 ? 4 : 2;
  require(dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16,
          ErrorKind::kInvalidArgument, "cannot convert {} to fp32; expected BF16, F16 or F32",
          to_string(dtype));
  require(bytes.size() == out.size() * width, ErrorKind::kInvalidArgument,
          "convert_to_float: {} bytes for {} elements of {}", bytes.size(), out.size(),
          to_string(dtype));
  for (size_t i = 0; i < out.size(); ++i) {
    if (width == 4) {
      std::memcpy(&out[i], bytes.data() + 4 * i, 4);
      continue;
    }
    uint16_t bits;
    std::memcpy(&bits, bytes.data() + 2 * i, 2);
    out[i] = dtype == DType::kBF16 ? bf16_to_float(bits) : f16_to_float(bits);
  }
}

}  // namespace nvfp4moe
