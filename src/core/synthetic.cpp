#include "core/synthetic.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/parallel.hpp"
#include "nvfp4moe/format.hpp"
#include "nvfp4moe/quantize.hpp"

namespace nvfp4moe {

namespace {
uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

Random::Random(uint64_t seed) {
  for (auto& s : state_) s = splitmix64(seed);
}

uint64_t Random::next() {
  const uint64_t result = rotl(state_[1] * 5, 7) * 9;
  const uint64_t t = state_[1] << 17;
  state_[2] ^= state_[0];
  state_[3] ^= state_[1];
  state_[1] ^= state_[2];
  state_[0] ^= state_[3];
  state_[2] ^= t;
  state_[3] = rotl(state_[3], 45);
  return result;
}

double Random::uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

float Random::normal() {
  const double u1 = 1.0 - uniform();  // (0, 1]
  const double u2 = uniform();
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

float Random::heavy_tailed() {
  // t = Z / sqrt(V / 3) with V a chi-squared of 3 degrees of freedom; its variance is 3.
  const double z = normal();
  double v = 0.0;
  for (int i = 0; i < 3; ++i) {
    const double n = normal();
    v += n * n;
  }
  if (v == 0.0) return 0.0f;
  return static_cast<float>(z / std::sqrt(v / 3.0) / std::sqrt(3.0));
}

float Random::sample(Distribution distribution) {
  return distribution == Distribution::kGaussian ? normal() : heavy_tailed();
}

Routing random_routing(int64_t tokens, int64_t num_experts, int64_t top_k, uint64_t seed) {
  Routing routing;
  routing.ids.resize(static_cast<size_t>(tokens * top_k));
  routing.weights.resize(routing.ids.size());
  Random random(seed);
  std::vector<float> logits(static_cast<size_t>(num_experts));
  std::vector<int32_t> order(static_cast<size_t>(num_experts));
  for (int64_t t = 0; t < tokens; ++t) {
    for (auto& logit : logits) logit = random.normal();
    std::iota(order.begin(), order.end(), 0);
    const int64_t k = std::min(top_k, num_experts);
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
    // softmax over all experts, then the chosen k renormalized: the max logit cancels out.
    double chosen_sum = 0.0;
    for (int64_t j = 0; j < k; ++j) chosen_sum += std::exp(logits[order[j]] - logits[order[0]]);
    for (int64_t j = 0; j < top_k; ++j) {
      const size_t slot = static_cast<size_t>(t * top_k + j);
      if (j < k) {
        routing.ids[slot] = order[j];
        routing.weights[slot] =
            static_cast<float>(std::exp(logits[order[j]] - logits[order[0]]) / chosen_sum);
      } else {
        routing.ids[slot] = -1;
        routing.weights[slot] = 0.0f;
      }
    }
  }
  return routing;
}

std::vector<uint16_t> random_bf16(size_t n, float stddev, uint64_t seed,
                                  Distribution distribution) {
  std::vector<uint16_t> values(n);
  Random random(seed);
  for (auto& v : values) v = float_to_bf16(stddev * random.sample(distribution));
  return values;
}

RandomLayer random_layer(int64_t num_experts, int64_t hidden, int64_t intermediate, uint64_t seed,
                         Distribution distribution) {
  RandomLayer layer;
  const auto gate_up_per_expert = static_cast<size_t>(2 * intermediate * hidden);
  const auto down_per_expert = static_cast<size_t>(hidden * intermediate);
  layer.gate_up_bf16.resize(gate_up_per_expert * num_experts);
  layer.down_bf16.resize(down_per_expert * num_experts);
  layer.nvfp4 = MoeWeights::allocate(num_experts, hidden, intermediate, false);
  MoeWeights& w = layer.nvfp4;

  // Quantizes rows [row0, row0 + rows) of a bf16 matrix as one NVFP4 tensor.
  auto quantize_part = [](const uint16_t* source, int64_t rows, int64_t cols, uint8_t* values,
                          uint8_t* scales) {
    const auto n = static_cast<size_t>(rows * cols);
    const float g = nvfp4_dynamic_global_scale(finite_amax(std::span(source, n), "random layer"));
    quantize_nvfp4(std::span(source, n), rows, cols, g, std::span(values, n / 2),
                   std::span(scales, n / kBlockSize));
    return g;
  };

  parallel_for(num_experts, [&](int64_t e) {
    Random random(seed * 1000003u + static_cast<uint64_t>(e));
    uint16_t* gate_up = layer.gate_up_bf16.data() + e * gate_up_per_expert;
    uint16_t* down = layer.down_bf16.data() + e * down_per_expert;
    const float gate_up_std = 1.0f / std::sqrt(static_cast<float>(hidden));
    const float down_std = 1.0f / std::sqrt(static_cast<float>(intermediate));
    for (size_t i = 0; i < gate_up_per_expert; ++i)
      gate_up[i] = float_to_bf16(gate_up_std * random.sample(distribution));
    for (size_t i = 0; i < down_per_expert; ++i)
      down[i] = float_to_bf16(down_std * random.sample(distribution));

    const auto half = gate_up_per_expert / 2;  // gate rows, then up rows
    uint8_t* values = w.gate_up_values.data() + e * gate_up_per_expert / 2;
    uint8_t* scales = w.gate_up_scales.data() + e * gate_up_per_expert / kBlockSize;
    w.gate_global_scale[e] = quantize_part(gate_up, intermediate, hidden, values, scales);
    w.up_global_scale[e] = quantize_part(gate_up + half, intermediate, hidden, values + half / 2,
                                         scales + half / kBlockSize);
    w.down_global_scale[e] =
        quantize_part(down, hidden, intermediate, w.down_values.data() + e * down_per_expert / 2,
                      w.down_scales.data() + e * down_per_expert / kBlockSize);
  });
  return layer;
}

}  // namespace nvfp4moe
