// The float64 interval reference of the MoE forward. See moe_reference.hpp for why intervals.
//
// Nothing here calls the library's codecs or quantizer: values are decoded from their own
// tables and encoded by exhaustive nearest-value search, so a shared bug cannot hide.
#include "support/moe_reference.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

#include "core/parallel.hpp"

namespace nvfp4moe::testing {

namespace {

constexpr double kE2M1Magnitudes[8] = {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0};

double bf16_value(uint16_t bits) {
  const uint32_t widened = uint32_t{bits} << 16;
  float f;
  std::memcpy(&f, &widened, sizeof f);
  return f;
}

double gamma(int64_t n, double u) { return n * u / (1.0 - n * u); }

// Smallest positive subnormal fp32, a floor for bounds so that underflow is covered.
constexpr double kTiny = 1.401298464324817e-45;

// silu(g) * u, or gpt-oss's g * sigmoid(1.702 g) * (u + 1) (`oai`), of the clamped g and u.
struct GatedActivation {
  bool clamped;
  bool oai;
  double limit;
  double gate_part(double g) const {  // silu(g), or g * sigmoid(1.702 g)
    return oai ? g / (1.0 + std::exp(-1.702 * g)) : g / (1.0 + std::exp(-g));
  }
  double up_part(double u) const { return oai ? u + 1.0 : u; }
  double clamp_gate(double g) const { return clamped ? std::min(g, limit) : g; }
  double clamp_up(double u) const { return clamped ? std::clamp(u, -limit, limit) : u; }
  double operator()(double gate, double up) const {
    return gate_part(clamp_gate(gate)) * up_part(clamp_up(up));
  }
  // A bound of |d gate_part / dg|: 1.1 for silu, 1.2 for the 1.702 slope.
  double lipschitz() const { return oai ? 1.2 : 1.1; }
};

// One NVFP4 quantization of a float row with global scale g, the docs/numerics.md §2 steps in fp32
// with the reference's own encoders. Returns e2m1 * e4m3 per element (no global scale).
std::vector<double> quantize_row(const std::vector<float>& row, float g) {
  std::vector<double> out(row.size());
  for (size_t b = 0; b < row.size(); b += 16) {
    float amax = 0.0f;
    for (size_t i = 0; i < 16; ++i) amax = std::max(amax, std::fabs(row[b + i]));
    const uint8_t scale = amax == 0.0f ? 0 : reference_e4m3_encode(amax / (6.0f * g));
    const auto scale_value = static_cast<float>(reference_e4m3_value(scale));
    for (size_t i = 0; i < 16; ++i) {
      out[b + i] =
          scale == 0 ? 0.0
                     : reference_e2m1_value(reference_e2m1_encode(row[b + i] / (scale_value * g))) *
                           scale_value;
    }
  }
  return out;
}

// Widens a signed interval by a relative amount.
void widen(double& lo, double& hi, double relative) {
  lo -= std::fabs(lo) * relative;
  hi += std::fabs(hi) * relative;
}

double e2m1_round(double x) { return reference_e2m1_value(reference_e2m1_encode(x)); }

// The W4A4 re-quantization of one routed h row under uncertainty. h[i] is exact, eh[i] bounds a
// backend's deviation, g2 the reference's global scale and g2_slack its relative uncertainty.
// Writes the reference's quantized values (without g2) and, per element, the largest deviation
// a backend's quantized value may have from them.
void requantize_with_bounds(const std::vector<double>& h, const std::vector<double>& eh, float g2,
                            double g2_slack, double u, std::vector<double>& hq,
                            std::vector<double>& delta) {
  const size_t n = h.size();
  hq.assign(n, 0.0);
  delta.assign(n, 0.0);
  std::vector<float> h_float(n);
  for (size_t i = 0; i < n; ++i) h_float[i] = static_cast<float>(h[i]);
  hq = quantize_row(h_float, g2);
  const double slack = 4 * u + g2_slack;
  for (size_t b = 0; b < n; b += 16) {
    double amax_lo = 0.0, amax_hi = 0.0;
    for (size_t i = b; i < b + 16; ++i) {
      amax_lo = std::max(amax_lo, std::fabs(h[i]) - eh[i]);
      amax_hi = std::max(amax_hi, std::fabs(h[i]) + eh[i]);
    }
    double scale_lo = amax_lo / (6.0 * g2), scale_hi = amax_hi / (6.0 * g2);
    widen(scale_lo, scale_hi, slack);
    const uint8_t code_lo = amax_lo <= 0.0 ? 0 : reference_e4m3_encode(scale_lo);
    const uint8_t code_hi = reference_e4m3_encode(scale_hi);
    // The reference's own value also counts as a candidate: with float(h) as input the reference
    // is one of the backends the bound describes.
    for (int code = code_lo; code <= code_hi; ++code) {
      const double sf = reference_e4m3_value(static_cast<uint8_t>(code));
      for (size_t i = b; i < b + 16; ++i) {
        double lo = 0.0, hi = 0.0;
        if (code != 0) {
          lo = (h[i] - eh[i]) / (sf * g2);
          hi = (h[i] + eh[i]) / (sf * g2);
          widen(lo, hi, slack);
          lo = e2m1_round(lo) * sf;
          hi = e2m1_round(hi) * sf;
        }
        delta[i] = std::max({delta[i], std::fabs(lo - hq[i]), std::fabs(hi - hq[i])});
      }
    }
  }
}

// W4A8's FP8 group quantization (docs/numerics.md §5) of exact values, in place: per group of
// 128 the exponent of its amax, then each value rounded once to E4M3 at that scale.
double fp8_round(double x, int e) {
  return std::ldexp(reference_e4m3_value(reference_e4m3_encode(std::ldexp(x, -e))), e);
}

template <typename T>
void fp8_quantize_in_place(T* row, int64_t n) {
  for (int64_t b = 0; b < n; b += 128) {
    const int64_t end = std::min(n, b + 128);
    double amax = 0.0;
    for (int64_t i = b; i < end; ++i) amax = std::max(amax, std::fabs(double(row[i])));
    const int e = reference_fp8_group_exponent(amax);
    for (int64_t i = b; i < end; ++i) row[i] = static_cast<T>(fp8_round(double(row[i]), e));
  }
}

// Terms of fp32 rounding error in a W4A8 dot product of length n: the sums within each group,
// each group's sum rounded to fp32, and the additions of the groups.
int64_t fp8_dot_terms(int64_t n) { return n + 2 * ((n + 127) / 128); }

// W4A8's re-quantization of one routed h row under uncertainty: h rounded to bf16, then FP8
// groups. Writes the reference's values and, per element, the largest deviation a backend's may
// have from them (every group exponent and both ends of each element's interval considered).
void requantize_fp8_with_bounds(const std::vector<double>& h, const std::vector<double>& eh,
                                std::vector<double>& hq, std::vector<double>& delta) {
  const int64_t n = static_cast<int64_t>(h.size());
  hq.assign(h.size(), 0.0);
  delta.assign(h.size(), 0.0);
  for (int64_t b = 0; b < n; b += 128) {
    const int64_t end = std::min(n, b + 128);
    double amax = 0.0, amax_lo = 0.0, amax_hi = 0.0;
    for (int64_t i = b; i < end; ++i) {
      const double lo = reference_bf16_round(h[i] - eh[i]);
      const double hi = reference_bf16_round(h[i] + eh[i]);
      amax = std::max(amax, std::fabs(reference_bf16_round(h[i])));
      amax_lo = std::max(amax_lo,
                         (lo <= 0.0 && hi >= 0.0) ? 0.0 : std::min(std::fabs(lo), std::fabs(hi)));
      amax_hi = std::max({amax_hi, std::fabs(lo), std::fabs(hi)});
    }
    const int e = reference_fp8_group_exponent(amax);
    for (int64_t i = b; i < end; ++i) hq[i] = fp8_round(reference_bf16_round(h[i]), e);
    for (int ec = reference_fp8_group_exponent(amax_lo);
         ec <= reference_fp8_group_exponent(amax_hi); ++ec) {
      for (int64_t i = b; i < end; ++i) {
        const double lo = fp8_round(reference_bf16_round(h[i] - eh[i]), ec);
        const double hi = fp8_round(reference_bf16_round(h[i] + eh[i]), ec);
        delta[i] = std::max({delta[i], std::fabs(lo - hq[i]), std::fabs(hi - hq[i])});
      }
    }
  }
}

}  // namespace

double reference_e2m1_value(uint8_t code) {
  const double magnitude = kE2M1Magnitudes[code & 7];
  return (code & 8) ? -magnitude : magnitude;
}

namespace {
double e4m3_formula(uint8_t code) {
  const int exponent = (code >> 3) & 15;
  const int mantissa = code & 7;
  if (exponent == 15 && mantissa == 7) return std::numeric_limits<double>::quiet_NaN();
  const double magnitude =
      exponent == 0 ? std::ldexp(mantissa, -9) : std::ldexp(8 + mantissa, exponent - 10);
  return (code & 0x80) ? -magnitude : magnitude;
}
}  // namespace

double reference_e4m3_value(uint8_t code) {
  static const auto table = [] {
    std::array<double, 256> values{};
    for (int c = 0; c < 256; ++c) values[c] = e4m3_formula(static_cast<uint8_t>(c));
    return values;
  }();
  return table[code];
}

uint8_t reference_e2m1_encode(double x) {
  const double a = std::fabs(x);
  // At and beyond the largest magnitude the answer is saturation (and for huge values the
  // distances below would no longer be exact in double).
  if (a >= 6.0) return static_cast<uint8_t>((std::signbit(x) ? 8 : 0) | 7);
  int best = 0;
  for (int m = 1; m < 8; ++m) {
    const double d = std::fabs(a - kE2M1Magnitudes[m]);
    const double best_d = std::fabs(a - kE2M1Magnitudes[best]);
    if (d < best_d || (d == best_d && (m & 1) == 0)) best = m;
  }
  return static_cast<uint8_t>((std::signbit(x) ? 8 : 0) | best);
}

uint8_t reference_e4m3_encode(double x) {
  if (std::isnan(x)) return static_cast<uint8_t>((std::signbit(x) ? 0x80 : 0) | 0x7F);
  const double a = std::fabs(x);
  if (a >= 448.0) return static_cast<uint8_t>((std::signbit(x) ? 0x80 : 0) | 0x7E);
  int best = 0;
  for (int c = 1; c <= 0x7E; ++c) {
    const double d = std::fabs(a - reference_e4m3_value(static_cast<uint8_t>(c)));
    const double best_d = std::fabs(a - reference_e4m3_value(static_cast<uint8_t>(best)));
    if (d < best_d || (d == best_d && (c & 1) == 0)) best = c;
  }
  return static_cast<uint8_t>((std::signbit(x) ? 0x80 : 0) | best);
}

double reference_bf16_round(double x) {
  if (x == 0.0 || !std::isfinite(x)) return x;
  int exponent;
  std::frexp(x, &exponent);                        // |x| in [2^(e-1), 2^e)
  const int shift = std::max(exponent - 8, -133);  // 8 significant bits; subnormals below 2^-126
  return std::ldexp(std::nearbyint(std::ldexp(x, -shift)), shift);
}

int reference_fp8_group_exponent(double amax) {
  if (amax == 0.0) return 0;
  int e = -126;
  while (std::ldexp(amax, -e) > 448.0) ++e;
  return e;
}

ReferenceOutput reference_moe(const MoeConfig& config, const MoeWeights& w,
                              const ReferenceInputs& in, double u) {
  const int64_t H = config.hidden, I = config.intermediate, k = config.top_k;
  const int64_t T = in.num_tokens, E = config.num_local_experts;
  const bool w4a4 = config.mode == QuantMode::kW4A4;
  const bool w4a8 = config.mode == QuantMode::kW4A8;
  const bool dynamic = config.activation_scale == ActivationScale::kDynamic;
  const int64_t gate_terms = w4a8 ? fp8_dot_terms(H) : H;
  const int64_t down_terms = w4a8 ? fp8_dot_terms(I) : I;
  const GatedActivation act{config.activation != Activation::kSilu,
                            config.activation == Activation::kSwigluOai, config.swiglu_limit};

  ReferenceOutput out;
  out.value.assign(static_cast<size_t>(T * H), 0.0);
  out.low.assign(out.value.size(), 0.0);
  out.high.assign(out.value.size(), 0.0);

  // Exact weights e2m1 * e4m3 (NVFP4) or e2m1 * 2^(e8m0 - 127) (MXFP4, blocks of 32) of rows
  // [row0, row0 + rows) of a stacked matrix, as float.
  const bool mx = w.format == WeightFormat::kMxfp4;
  auto decode_rows = [mx](const std::vector<uint8_t>& values, const std::vector<uint8_t>& scales,
                          int64_t row0, int64_t rows, int64_t cols, std::vector<float>& dst) {
    dst.resize(static_cast<size_t>(rows * cols));
    for (int64_t i = 0; i < rows * cols; ++i) {
      const int64_t at = row0 * cols + i;
      const uint8_t byte = values[at / 2];
      const uint8_t code = (at % 2 == 0) ? (byte & 15) : (byte >> 4);
      const double scale =
          mx ? std::ldexp(1.0, int(scales[at / 32]) - 127) : reference_e4m3_value(scales[at / 16]);
      dst[i] = float(reference_e2m1_value(code) * scale);
    }
  };
  const bool biased = !w.gate_up_bias.empty();

  // Dynamic g1: amax over the whole batch (exact), in fp32.
  float batch_g1 = 1.0f;
  if (w4a4 && dynamic) {
    float amax = 0.0f;
    for (int64_t i = 0; i < T * H; ++i) {
      amax = std::max(amax, std::fabs(float(bf16_value(in.hidden[i]))));
    }
    batch_g1 = amax / 2688.0f;
    if (!(batch_g1 > 0.0f)) batch_g1 = 1.0f;
  }

  struct Slot {
    int64_t token, j, expert;
    std::vector<double> h, eh;  // stage 3 and its bound
    std::vector<double> y, ey;  // stage 5 and its bound
  };
  std::vector<Slot> slots;
  std::vector<std::vector<size_t>> by_expert(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int32_t id = in.topk_ids[t * k + j];
      const int64_t e = id - config.first_local_expert;
      if (id < 0 || e < 0 || e >= E) continue;
      by_expert[e].push_back(slots.size());
      slots.push_back({t, j, e, {}, {}, {}, {}});
    }
  }

  // Stages 1-3, expert by expert so each expert's weights are decoded once.
  parallel_for(E, [&](int64_t e) {
    if (by_expert[e].empty()) return;
    std::vector<float> gate_up;
    decode_rows(w.gate_up_values, w.gate_up_scales, e * 2 * I, 2 * I, H, gate_up);
    if (w4a8) {
      for (int64_t r = 0; r < 2 * I; ++r) fp8_quantize_in_place(&gate_up[r * H], H);
    }
    const float g1 = !w4a4 ? 1.0f : dynamic ? batch_g1 : w.gate_up_input_scale[e];
    const double alpha_gate = float(g1 * w.gate_global_scale[e]);
    const double alpha_up = float(g1 * w.up_global_scale[e]);
    for (size_t index : by_expert[e]) {
      Slot& slot = slots[index];
      slot.h.resize(I);
      slot.eh.resize(I);
      std::vector<float> x(H);
      for (int64_t c = 0; c < H; ++c) x[c] = float(bf16_value(in.hidden[slot.token * H + c]));
      std::vector<double> a(H);
      if (w4a4) {
        a = quantize_row(x, g1);
      } else {
        for (int64_t c = 0; c < H; ++c) a[c] = x[c];
        if (w4a8) fp8_quantize_in_place(a.data(), H);
      }
      for (int64_t r = 0; r < I; ++r) {
        const float* wg = &gate_up[r * H];
        const float* wu = &gate_up[(I + r) * H];
        double gate = 0, gate_abs = 0, up = 0, up_abs = 0;
        for (int64_t c = 0; c < H; ++c) {
          gate += a[c] * wg[c];
          gate_abs += std::fabs(a[c] * wg[c]);
          up += a[c] * wu[c];
          up_abs += std::fabs(a[c] * wu[c]);
        }
        const double bg = biased ? w.gate_up_bias[e * 2 * I + r] : 0.0;
        const double bv = biased ? w.gate_up_bias[e * 2 * I + I + r] : 0.0;
        const double g = alpha_gate * gate + bg, v = alpha_up * up + bv;
        // The fp32 sum, alpha's multiply and rounding, and the bias's add and rounding.
        const double eg = std::fabs(alpha_gate) * gamma(gate_terms, u) * gate_abs * (1 + u) +
                          u * (std::fabs(g) + 2 * std::fabs(bg)) * (1 + 2 * u) + gate_terms * kTiny;
        const double ev = std::fabs(alpha_up) * gamma(gate_terms, u) * up_abs * (1 + u) +
                          u * (std::fabs(v) + 2 * std::fabs(bv)) * (1 + 2 * u) + gate_terms * kTiny;
        const double gc = act.clamp_gate(g);
        const double vc = act.up_part(act.clamp_up(v));
        const double h = act(g, v);
        slot.h[r] = h;
        // |gate_part'| <= lipschitz(); the fp32 evaluation (exp, add, divide, multiply) costs a
        // few ulps.
        const double lip = act.lipschitz();
        slot.eh[r] =
            (lip * (std::fabs(vc) + ev) * eg + (std::fabs(act.gate_part(gc)) + lip * eg) * ev) *
                (1 + 12 * u) +
            12 * u * std::fabs(h) + kTiny;
        // Below -88, exp overflows fp32 and the gate part evaluates to -0 instead of a tiny value.
        if ((act.oai ? 1.702 : 1.0) * (gc - eg) < -80.0) slot.eh[r] += std::fabs(h);
      }
    }
  });

  // W4A4 dynamic g2 over every routed h, and its relative uncertainty.
  float batch_g2 = 1.0f;
  double g2_slack = 0.0;
  if (w4a4 && dynamic) {
    double amax = 0.0, amax_lo = 0.0, amax_hi = 0.0;
    for (const Slot& s : slots) {
      for (int64_t r = 0; r < I; ++r) {
        amax = std::max(amax, std::fabs(s.h[r]));
        amax_lo = std::max(amax_lo, std::fabs(s.h[r]) - s.eh[r]);
        amax_hi = std::max(amax_hi, std::fabs(s.h[r]) + s.eh[r]);
      }
    }
    batch_g2 = float(amax) / 2688.0f;
    if (!(batch_g2 > 0.0f)) batch_g2 = 1.0f;
    g2_slack = amax > 0 ? (amax_hi - amax_lo) / amax + 4 * u : 0.0;
  }

  // Stages 4-5, expert by expert again.
  parallel_for(E, [&](int64_t e) {
    if (by_expert[e].empty()) return;
    std::vector<float> down;
    decode_rows(w.down_values, w.down_scales, e * H, H, I, down);
    if (w4a8) {
      for (int64_t n = 0; n < H; ++n) fp8_quantize_in_place(&down[n * I], I);
    }
    float g2 = 1.0f;
    double slack = 0.0;
    if (w4a4) {
      g2 = dynamic ? batch_g2 : w.down_input_scale[e];
      slack = dynamic ? g2_slack : 0.0;
    }
    const double alpha = float(g2 * w.down_global_scale[e]);
    for (size_t index : by_expert[e]) {
      Slot& s = slots[index];
      std::vector<double> hq(I), delta(I);
      if (w4a4) {
        requantize_with_bounds(s.h, s.eh, g2, slack, u, hq, delta);
      } else if (w4a8) {
        requantize_fp8_with_bounds(s.h, s.eh, hq, delta);
      } else {
        for (int64_t r = 0; r < I; ++r) {
          hq[r] = reference_bf16_round(s.h[r]);
          delta[r] = std::max(std::fabs(reference_bf16_round(s.h[r] - s.eh[r]) - hq[r]),
                              std::fabs(reference_bf16_round(s.h[r] + s.eh[r]) - hq[r]));
        }
      }
      s.y.resize(H);
      s.ey.resize(H);
      for (int64_t n = 0; n < H; ++n) {
        const float* wd = &down[n * I];
        double y = 0, y_abs = 0, y_delta = 0;
        for (int64_t r = 0; r < I; ++r) {
          y += hq[r] * wd[r];
          y_abs += (std::fabs(hq[r]) + delta[r]) * std::fabs(wd[r]);
          y_delta += delta[r] * std::fabs(wd[r]);
        }
        // Deviations of h, the fp32 sum, then alpha: its rounding and (dynamic g2) its slack, and
        // the bias's add.
        const double b = biased ? w.down_bias[e * H + n] : 0.0;
        s.y[n] = alpha * y + b;
        s.ey[n] = std::fabs(alpha) * (y_delta + gamma(down_terms, u) * y_abs) * (1 + u) +
                  (u + slack) * std::fabs(alpha) * y_abs * (1 + 2 * u) +
                  u * (std::fabs(s.y[n]) + 2 * std::fabs(b)) + down_terms * kTiny;
      }
    }
  });

  // Stage 6: the weighted combine per token, then the bf16 interval.
  std::vector<double> out_bound(out.value.size(), 0.0), out_abs(out.value.size(), 0.0);
  for (const Slot& s : slots) {
    const double topk_weight = in.topk_weights[s.token * k + s.j];
    for (int64_t n = 0; n < H; ++n) {
      const size_t o = static_cast<size_t>(s.token * H + n);
      out.value[o] += topk_weight * s.y[n];
      out_bound[o] += std::fabs(topk_weight) * s.ey[n];
      out_abs[o] += std::fabs(topk_weight) * (std::fabs(s.y[n]) + s.ey[n]);
    }
  }
  for (size_t o = 0; o < out.value.size(); ++o) {
    const double bound = out_bound[o] + gamma(k + 1, u) * out_abs[o];
    out.low[o] = reference_bf16_round(out.value[o] - bound);
    out.high[o] = reference_bf16_round(out.value[o] + bound);
  }
  return out;
}

ReferenceOutput reference_linear(const NvFp4Tensor& weight, int64_t tokens, const uint16_t* x,
                                 QuantMode mode, float act_scale, double u) {
  const int64_t K = weight.cols, N = weight.rows;
  ReferenceOutput out;
  out.value.assign(static_cast<size_t>(tokens * N), 0.0);
  out.low = out.high = out.value;
  float g = 1.0f;
  if (mode == QuantMode::kW4A4) g = act_scale;
  const double alpha = float(g * weight.global_scale);
  std::vector<float> w(static_cast<size_t>(N * K));
  for (int64_t i = 0; i < N * K; ++i) {
    const uint8_t byte = weight.values[i / 2];
    const uint8_t code = (i % 2 == 0) ? (byte & 15) : (byte >> 4);
    w[i] = float(reference_e2m1_value(code) * reference_e4m3_value(weight.scales[i / 16]));
  }
  const bool w4a8 = mode == QuantMode::kW4A8;
  const int64_t terms = w4a8 ? fp8_dot_terms(K) : K;
  if (w4a8) {
    for (int64_t n = 0; n < N; ++n) fp8_quantize_in_place(&w[n * K], K);
  }
  parallel_for(tokens, [&](int64_t t) {
    std::vector<float> xf(K);
    for (int64_t c = 0; c < K; ++c) xf[c] = float(bf16_value(x[t * K + c]));
    std::vector<double> a(K);
    if (mode == QuantMode::kW4A4) {
      a = quantize_row(xf, g);
    } else {
      for (int64_t c = 0; c < K; ++c) a[c] = xf[c];
      if (w4a8) fp8_quantize_in_place(a.data(), K);
    }
    for (int64_t n = 0; n < N; ++n) {
      double sum = 0, sum_abs = 0;
      for (int64_t c = 0; c < K; ++c) {
        sum += a[c] * w[n * K + c];
        sum_abs += std::fabs(a[c] * w[n * K + c]);
      }
      const double value = alpha * sum;
      const double bound = std::fabs(alpha) * gamma(terms, u) * sum_abs * (1 + u) +
                           u * std::fabs(value) * (1 + 2 * u) + terms * kTiny;
      const size_t o = static_cast<size_t>(t * N + n);
      out.value[o] = value;
      out.low[o] = reference_bf16_round(value - bound);
      out.high[o] = reference_bf16_round(value + bound);
    }
  });
  return out;
}

std::string check_against_reference(const std::vector<uint16_t>& output,
                                    const ReferenceOutput& reference, int64_t hidden) {
  std::ostringstream report;
  int64_t failures = 0;
  if (output.size() != reference.value.size()) {
    report << "output has " << output.size() << " elements, reference " << reference.value.size();
    return report.str();
  }
  for (size_t i = 0; i < output.size(); ++i) {
    const double v = bf16_value(output[i]);
    if (v >= reference.low[i] && v <= reference.high[i]) continue;
    if (++failures <= 5) {
      report << "out[" << i / hidden << ", " << i % hidden << "] = " << v << " outside ["
             << reference.low[i] << ", " << reference.high[i] << "] (exact " << reference.value[i]
             << ")\n";
    }
  }
  if (failures > 0) report << failures << " of " << output.size() << " elements outside\n";
  return report.str();
}

}  // namespace nvfp4moe::testing
