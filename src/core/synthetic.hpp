// Synthetic layers and batches for the demo, the benchmark and the tests: Gaussian weights and
// hidden states, and routing by top-k of a softmax of random logits. Deterministic for a seed on
// every platform (own generator, no std::normal_distribution).
#pragma once

#include <cstdint>
#include <vector>

#include "nvfp4moe/moe.hpp"

namespace nvfp4moe {

enum class Distribution { kGaussian, kHeavyTailed };

// splitmix64-seeded xoshiro256** with Box-Muller normals.
class Random {
 public:
  explicit Random(uint64_t seed);
  uint64_t next();
  double uniform();  // [0, 1)
  float normal();    // mean 0, standard deviation 1
  // Student's t with 3 degrees of freedom scaled to standard deviation 1: heavy tails (its
  // fourth moment is infinite), as trained weights and activations with outliers have.
  float heavy_tailed();
  float sample(Distribution distribution);

 private:
  uint64_t state_[4];
};

struct Routing {
  std::vector<int32_t> ids;    // [T, k]
  std::vector<float> weights;  // [T, k], the softmax probabilities of the chosen k, renormalized
};

// Each token picks the top_k largest of num_experts Gaussian logits.
Routing random_routing(int64_t tokens, int64_t num_experts, int64_t top_k, uint64_t seed);

// n values with the given standard deviation, rounded to bf16.
std::vector<uint16_t> random_bf16(size_t n, float stddev, uint64_t seed,
                                  Distribution distribution = Distribution::kGaussian);

// A layer with random bf16 weights (std 1/sqrt(fan_in)) and their NVFP4 quantization with
// dynamic global scales; the bf16 originals are kept for accuracy comparisons.
struct RandomLayer {
  std::vector<uint16_t> gate_up_bf16;  // [E, 2I, H]
  std::vector<uint16_t> down_bf16;     // [E, H, I]
  MoeWeights nvfp4;
};
RandomLayer random_layer(int64_t num_experts, int64_t hidden, int64_t intermediate, uint64_t seed,
                         Distribution distribution = Distribution::kGaussian);

}  // namespace nvfp4moe
