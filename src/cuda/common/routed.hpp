// What the device-independent steps of the forward (routing, activation quantization, combine)
// and every expert-GEMM family share: the work tiles the router cuts, and where an activation's
// global scale comes from. (The device error bits are public: nvfp4moe/moe.hpp.)
#pragma once

#include <cstdint>

namespace nvfp4moe::cuda {

// How the activation global scale g of alpha = g * weight_scale is found.
enum class ActivationScaleSource {
  kOne,        // W4A16: activations are not quantized
  kPerExpert,  // static W4A4: act_scale[expert]
  kFromAmax,   // dynamic W4A4: amax / 2688 from a device scalar (uint32 bits of a float >= 0)
};

// A work tile: tokens [row_begin, row_begin + rows) of the sorted order, all of one expert.
struct GemmTile {
  int32_t expert;
  int32_t row_begin;
  int32_t rows;
  int32_t unused;
};

}  // namespace nvfp4moe::cuda
