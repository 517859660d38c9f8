#include "core/metrics.hpp"

#include <algorithm>
#include <cmath>

#include "core/check.hpp"
#include "nvfp4moe/format.hpp"

namespace nvfp4moe {

Accuracy compare_bf16(std::span<const uint16_t> output, std::span<const uint16_t> reference) {
  require(output.size() == reference.size(), ErrorKind::kInvalidArgument,
          "compare_bf16: {} elements against {}", output.size(), reference.size());
  Accuracy accuracy;
  double dot = 0.0, norm_out = 0.0, norm_ref = 0.0, norm_diff = 0.0;
  for (size_t i = 0; i < output.size(); ++i) {
    const double a = bf16_to_float(output[i]);
    const double r = bf16_to_float(reference[i]);
    if (!std::isfinite(a) || !std::isfinite(r)) accuracy.all_finite = false;
    dot += a * r;
    norm_out += a * a;
    norm_ref += r * r;
    norm_diff += (a - r) * (a - r);
    accuracy.max_abs_error = std::max(accuracy.max_abs_error, std::fabs(a - r));
  }
  if (norm_out == 0.0 && norm_ref == 0.0) {
    accuracy.cosine = 1.0;
    accuracy.relative_l2 = 0.0;
  } else {
    accuracy.cosine = dot / std::sqrt(norm_out * norm_ref);
    accuracy.relative_l2 = std::sqrt(norm_diff / norm_ref);
  }
  return accuracy;
}

}  // namespace nvfp4moe
