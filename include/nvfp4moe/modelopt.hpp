// Importing the MoE experts of a checkpoint in NVIDIA ModelOpt's NVFP4 convention.
//
// Per expert e and projection p the checkpoint holds
//   <prefix><e>.<p>.weight          U8       [rows, cols/2]   two E2M1 codes per byte
//   <prefix><e>.<p>.weight_scale    F8_E4M3  [rows, cols/16]
//   <prefix><e>.<p>.weight_scale_2  F32      [] or [1]        the global scale
//   <prefix><e>.<p>.input_scale     F32      [] or [1]        optional, static activation scale
// with p = gate_proj/up_proj/down_proj (Hugging Face style) or w1/w3/w2 (DeepSeek style), and
// a prefix such as "model.layers.{layer}.mlp.experts." in which {layer} stands for the layer.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "nvfp4moe/checkpoint.hpp"
#include "nvfp4moe/moe.hpp"

namespace nvfp4moe {

struct ExpertNaming {
  std::string prefix;  // may contain "{layer}"
  std::string gate = "gate_proj";
  std::string up = "up_proj";
  std::string down = "down_proj";

  static ExpertNaming hf(std::string prefix = "model.layers.{layer}.mlp.experts.");
  static ExpertNaming deepseek(std::string prefix = "layers.{layer}.ffn.experts.");
  // "hf" or "deepseek"; anything else is an Error.
  static ExpertNaming from_style(std::string_view style, std::string prefix);

  // e.g. tensor_name(3, 17, gate, "weight_scale") ->
  // "model.layers.3.mlp.experts.17.gate_proj.weight_scale"
  std::string tensor_name(int64_t layer, int64_t expert, std::string_view projection,
                          std::string_view suffix) const;
};

struct MoeLayerInfo {
  int64_t layer = 0;
  ExpertNaming naming;
  int64_t num_experts = 0;
  int64_t hidden = 0;
  int64_t intermediate = 0;
  bool is_nvfp4 = false;            // U8 weights with weight_scale and weight_scale_2
  DType weight_dtype = DType::kU8;  // U8 when NVFP4, else the unquantized dtype
  bool has_input_scales = false;    // every projection of every expert has input_scale
};

// Finds every MoE layer of a checkpoint from its tensor names (".experts.<e>.<proj>.weight"
// under a prefix holding "layers.<n>."), in layer order, each checked as describe_moe_layer does.
std::vector<MoeLayerInfo> find_moe_layers(const Checkpoint& checkpoint);
// The same for one given naming: the layers whose expert 0 has a gate weight under it.
std::vector<MoeLayerInfo> find_moe_layers(const Checkpoint& checkpoint, const ExpertNaming& naming);

// Describes one layer under the given naming, checking that experts 0..n-1 all exist with every
// tensor, consistent dtypes and shapes. Errors name the first missing or inconsistent tensor.
MoeLayerInfo describe_moe_layer(const Checkpoint& checkpoint, int64_t layer,
                                const ExpertNaming& naming);

// Copies experts [first_expert, first_expert + num_experts) of an NVFP4 layer into host
// weights: gate and up stacked as w13 with their own global scales (no max is taken), input
// scales per expert (the larger of gate's and up's for the shared gate/up activation).
// `progress(done, total)` is called after each expert.
MoeWeights import_moe_layer(const Checkpoint& checkpoint, const MoeLayerInfo& layer,
                            int64_t first_expert, int64_t num_experts,
                            const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace nvfp4moe
