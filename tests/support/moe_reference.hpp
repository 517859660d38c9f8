// A float64 reference for the whole MoE forward, written independently of the library (its own
// decode tables and brute-force rounding), that returns for every output element the interval a
// correct fp32 implementation must land in.
//
// Why an interval and not a tolerance: a correct backend differs from exact arithmetic only by
// the order of its fp32 additions, yet an intermediate that is rounded again (h to bf16, or h
// re-quantized to NVFP4 in W4A4) can then flip to a neighbouring value. The reference carries an
// error bound through every stage (gamma_n * sum|a_k w_k| for each dot product, the activation's
// Lipschitz constants, the rounding of alpha), and wherever a re-rounding could flip it takes
// both candidates into account. What remains is tight: away from rounding ties the interval is a
// handful of fp32 ulps wide before the final bf16 rounding, so a wrong term, a dropped slot or a
// wrong scale falls far outside it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "nvfp4moe/moe.hpp"
#include "nvfp4moe/quantize.hpp"

namespace nvfp4moe::testing {

struct ReferenceInputs {
  int64_t num_tokens = 0;
  const uint16_t* hidden = nullptr;  // [T, H] bf16
  const int32_t* topk_ids = nullptr;
  const float* topk_weights = nullptr;
};

struct ReferenceOutput {
  std::vector<double> value;  // exact-arithmetic result (before bf16 rounding)
  std::vector<double> low;    // the allowed bf16 results are within [low, high]
  std::vector<double> high;
};

// `unit_roundoff` describes the backend's fp32 additions: 2^-24 for round-to-nearest, 2^-23 for
// hardware that may truncate (tensor-core accumulation).
ReferenceOutput reference_moe(const MoeConfig& config, const MoeWeights& weights,
                              const ReferenceInputs& inputs, double unit_roundoff);

// The dense linear layer: out = bf16(alpha * sum a * w), a = x or its NVFP4 quantization with
// `act_scale` (W4A4), alpha = act_scale * weight.global_scale (W4A4) or weight.global_scale;
// W4A8 takes a and w as FP8 groups (docs/numerics.md §5).
ReferenceOutput reference_linear(const NvFp4Tensor& weight, int64_t tokens, const uint16_t* x,
                                 QuantMode mode, float act_scale, double unit_roundoff);

// Compares a bf16 output with the reference; returns an empty string when every element is
// inside its interval, else a description of the first few that are not.
std::string check_against_reference(const std::vector<uint16_t>& output,
                                    const ReferenceOutput& reference, int64_t hidden);

// Independent decoders and brute-force encoders (exposed for the codec tests).
double reference_e2m1_value(uint8_t code);
double reference_e4m3_value(uint8_t code);  // NaN for 0x7F / 0xFF
// Nearest representable, ties to the even code, saturating; by exhaustive search.
uint8_t reference_e2m1_encode(double x);
uint8_t reference_e4m3_encode(double x);
double reference_bf16_round(double x);  // to the nearest bf16, ties to even
// W4A8's group exponent (docs/numerics.md §5): the smallest E >= -126 with amax * 2^-E <= 448,
// 0 for amax 0; by search.
int reference_fp8_group_exponent(double amax);

}  // namespace nvfp4moe::testing
