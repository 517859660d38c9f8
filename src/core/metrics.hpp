// Accuracy of one output against another, in float64.
#pragma once

#include <cstdint>
#include <span>

namespace nvfp4moe {

struct Accuracy {
  double cosine = 0.0;       // <a, ref> / (|a| |ref|); 1 when both are zero
  double relative_l2 = 0.0;  // |a - ref| / |ref|; 0 when both are zero
  double max_abs_error = 0.0;
  bool all_finite = true;
};

Accuracy compare_bf16(std::span<const uint16_t> output, std::span<const uint16_t> reference);

}  // namespace nvfp4moe
