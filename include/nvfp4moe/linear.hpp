// A dense NVFP4 linear layer (one weight matrix, no routing): attention projections and shared
// experts. Same numerics as one expert projection of the MoE:
//
//   out[t] = bf16(alpha * sum_k a[t, k] * (e2m1 * e4m3)[n, k])
//   a = x (W4A16) or dequant(quant(x, g)) without g (W4A4); alpha = g * weight global scale.
#pragma once

#include <cstdint>
#include <memory>

#include "nvfp4moe/moe.hpp"
#include "nvfp4moe/quantize.hpp"

namespace nvfp4moe {

struct LinearConfig {
  int64_t in_features = 0;   // K, a multiple of 16
  int64_t out_features = 0;  // N, a multiple of 16
  int64_t max_tokens = 0;
  QuantMode mode = QuantMode::kW4A16;
  ActivationScale activation_scale = ActivationScale::kDynamic;  // W4A4 only

  void validate() const;
};

class Nvfp4Linear {
 public:
  virtual ~Nvfp4Linear() = default;
  virtual const LinearConfig& config() const = 0;
  virtual Device device() const = 0;
  virtual size_t workspace_bytes() const = 0;
  // x [tokens, in_features] bf16 -> out [tokens, out_features] bf16, on the layer's device.
  virtual void forward(int64_t tokens, const uint16_t* x, uint16_t* out, void* workspace,
                       void* stream) = 0;
  virtual void check_errors(void* stream) { (void)stream; }
};

// Bytes of scratch memory a forward of the layer needs on `device`: a pure function of the config.
size_t linear_workspace_bytes(Device device, const LinearConfig& config);

// `weight` is host memory [out_features, in_features]; the CPU layer reads it in place (keep it
// alive), the CUDA layer copies it. `input_scale` is the static W4A4 activation scale.
std::unique_ptr<Nvfp4Linear> make_linear(Device device, const LinearConfig& config,
                                         const NvFp4View& weight, float input_scale = 0.0f);

}  // namespace nvfp4moe
