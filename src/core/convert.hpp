// Widening the floating-point dtypes of unquantized checkpoints to fp32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "nvfp4moe/checkpoint.hpp"

namespace nvfp4moe {

float f16_to_float(uint16_t bits);

// Converts `bytes` holding out.size() elements of `dtype` (BF16, F16 or F32) to fp32.
void convert_to_float(DType dtype, std::span<const std::byte> bytes, std::span<float> out);

}  // namespace nvfp4moe
