// Importing the MoE experts of a checkpoint: the format, the layout and the naming are found
// from the checkpoint itself (docs/numerics.md §"Checkpoints" has the formats' definitions).
//
// Formats of a layer's experts (per expert e and projection p; `values` are two E2M1 codes per
// byte, low nibble first; block scales are E4M3, one per 16 values):
//
//   NVFP4, ModelOpt            <p>.weight U8 [R, K/2], <p>.weight_scale F8_E4M3 [R, K/16],
//                              <p>.weight_scale_2 F32 (the global scale g),
//                              <p>.input_scale F32 (optional, the static activation scale)
//   NVFP4, compressed-tensors  <p>.weight_packed U8 [R, K/2], <p>.weight_scale F8_E4M3 [R, K/16],
//                              <p>.weight_global_scale F32 [1] = 1/g,
//                              <p>.input_global_scale F32 [1] (optional) = 1/g_input
//   MXFP4, DeepSeek-V4         <p>.weight I8 (or U8) [R, K/2], <p>.scale F8_E8M0 (or U8) [R, K/32]
//   MXFP4, gpt-oss (fused)     gate_up_proj_blocks U8 [E, 2I, H/32, 16] (blocks of 32 values, 16
//                              bytes each) with gate and up rows alternating (gate 0, up 0,
//                              gate 1, ...), gate_up_proj_scales U8/F8_E8M0 [E, 2I, H/32],
//                              gate_up_proj_bias BF16/F16/F32 [E, 2I] (optional, alternating
//                              too); down_proj_blocks [E, H, I/32, 16], _scales, _bias [E, H]
//   unquantized                <p>.weight BF16/F16/F32 [R, K] (input of `nvfp4moe quantize`)
//
// Layouts and namings:
//
//   per expert (HF)        <prefix><e>.gate_proj / up_proj / down_proj.<suffix>
//   per expert (DeepSeek)  <prefix><e>.w1 / w3 / w2.<suffix>  (V3 and V4: layers.{L}.ffn.experts.)
//   fused                  <prefix>gate_up_proj[_<suffix>] [E, 2I, ...] (gate rows, then up rows)
//                          and <prefix>down_proj[_<suffix>] [E, H, ...]; global and input scales
//                          [E] (gate_up: [E] shared or [E, 2] gate/up), [] or [1] for all
//
// where <prefix> is e.g. "model.layers.{layer}.mlp.experts." and {layer} the layer number.
// A checkpoint's config.json `quantization_config` or hf_quant_config.json, when present, is
// checked: a format this library cannot read is refused with the field and its value.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "nvfp4moe/checkpoint.hpp"
#include "nvfp4moe/moe.hpp"

namespace nvfp4moe {

enum class ExpertFormat {
  kNvfp4ModelOpt,
  kNvfp4CompressedTensors,
  kMxfp4,
  kUnquantized,  // BF16, F16 or F32 weights
  kUnsupported,  // expert tensors of another kind (e.g. FP8 with weight_scale_inv)
};
const char* to_string(ExpertFormat format);
inline bool is_nvfp4(ExpertFormat format) {
  return format == ExpertFormat::kNvfp4ModelOpt || format == ExpertFormat::kNvfp4CompressedTensors;
}

enum class ExpertLayout { kPerExpert, kFused };

enum class Projection { kGate, kUp, kDown };

// The tensors of one projection (kBias: gpt-oss's fused biases).
enum class TensorRole { kValues, kBlockScales, kGlobalScale, kInputScale, kBias };

struct ExpertNaming {
  ExpertLayout layout = ExpertLayout::kPerExpert;
  std::string prefix;              // may contain "{layer}"
  std::string gate = "gate_proj";  // per expert; fused: "gate_up_proj" for gate and up alike
  std::string up = "up_proj";
  std::string down = "down_proj";

  static ExpertNaming hf(std::string prefix = "model.layers.{layer}.mlp.experts.");
  static ExpertNaming deepseek(std::string prefix = "layers.{layer}.ffn.experts.");
  static ExpertNaming fused(std::string prefix = "model.layers.{layer}.mlp.experts.");
  // "hf", "deepseek" or "fused"; anything else is an Error.
  static ExpertNaming from_style(std::string_view style, std::string prefix);

  // The prefix with {layer} replaced.
  std::string layer_prefix(int64_t layer) const;
  const std::string& projection_name(Projection projection) const;
};

// The name of a tensor of `format` under `naming` (e.g. NVFP4 ModelOpt, HF, layer 3, expert
// 17, gate, block scales -> "model.layers.3.mlp.experts.17.gate_proj.weight_scale"). Fused
// layouts name one tensor for every expert (and for gate and up alike).
std::string expert_tensor_name(ExpertFormat format, const ExpertNaming& naming, int64_t layer,
                               int64_t expert, Projection projection, TensorRole role);

// What the checkpoint's configuration files say about its quantization.
struct QuantizationConfig {
  enum class Method { kNone, kModelOpt, kCompressedTensors, kOther };
  Method method = Method::kNone;
  std::string file;  // where it was read ("" when there is none)
  // The producer's fields worth showing (quant_algo, format, group_size, producer, ...).
  std::vector<std::pair<std::string, std::string>> fields;
};
// Reads config.json's `quantization_config` (or `compression_config`) and hf_quant_config.json
// from the checkpoint's directory. Refuses, naming the file, the field and its value, an NVFP4
// producer's config that describes anything but 4-bit E2M1 weights in groups of 16 with E4M3
// scales (ModelOpt quant_algo NVFP4; compressed-tensors nvfp4-pack-quantized, float, 4 bits,
// tensor_group, group_size 16, compressed).
QuantizationConfig read_quantization_config(const Checkpoint& checkpoint);
// The same checks for a quantization config given as JSON text (config.json's
// `quantization_config` object, or hf_quant_config.json's content), as engines hand it over.
QuantizationConfig parse_quantization_config(std::string_view json_text, std::string_view source);

// The gated activation a checkpoint's config.json implies for its experts, when it implies one
// other than silu: gpt-oss (model_type gpt_oss) uses swigluoai with its swiglu_limit (7 when
// absent). std::nullopt otherwise.
struct ExpertActivation {
  Activation activation;
  float swiglu_limit;
};
std::optional<ExpertActivation> read_expert_activation(const Checkpoint& checkpoint);

struct MoeLayerInfo {
  int64_t layer = 0;
  ExpertNaming naming;
  ExpertFormat format = ExpertFormat::kNvfp4ModelOpt;
  std::string format_detail;  // kUnsupported: what was found
  int64_t num_experts = 0;
  int64_t hidden = 0;
  int64_t intermediate = 0;
  DType weight_dtype = DType::kU8;   // of the values tensors (the unquantized dtype, or U8)
  bool has_input_scales = false;     // every projection of every expert has one
  bool has_biases = false;           // gate/up and down biases (gpt-oss)
  bool gate_up_interleaved = false;  // fused gate/up rows alternate gate, up (gpt-oss)

  bool is_nvfp4() const { return nvfp4moe::is_nvfp4(format); }
  // NVFP4 or MXFP4: experts import_moe_layer copies.
  bool is_importable() const { return is_nvfp4() || format == ExpertFormat::kMxfp4; }
  std::string tensor_name(int64_t expert, Projection projection, TensorRole role) const {
    return expert_tensor_name(format, naming, layer, expert, projection, role);
  }
  // "NVFP4 (ModelOpt)", "MXFP4", "BF16", "unsupported: ..."
  std::string format_name() const;
};

// Finds every MoE layer of a checkpoint from its tensor names, in layer order, each described
// as describe_moe_layer does: experts must run 0..n-1 without a gap, and every tensor of every
// expert must be present with the expected dtype and shape. Layers in formats this library
// cannot import are listed (format kUnsupported), not skipped.
std::vector<MoeLayerInfo> find_moe_layers(const Checkpoint& checkpoint);
// The same for one given naming.
std::vector<MoeLayerInfo> find_moe_layers(const Checkpoint& checkpoint, const ExpertNaming& naming);

// The MoE layer numbered `layer`: under `naming` when given, else the one detected layer with
// that number (an Error listing the layers found when there is none, or asking for a naming
// when several prefixes have one, e.g. a model's layer 0 and its MTP layer 0).
MoeLayerInfo select_moe_layer(const Checkpoint& checkpoint, int64_t layer,
                              const ExpertNaming* naming = nullptr);

// Describes one layer under the given naming: format, experts, shapes, all checked. Errors name
// the first missing or inconsistent tensor, or the missing expert.
MoeLayerInfo describe_moe_layer(const Checkpoint& checkpoint, int64_t layer,
                                const ExpertNaming& naming);

// The global scales g of every expert of an NVFP4 layer (reciprocals resolved), checked finite
// and >= 0; input scales empty when the layer has none.
struct LayerScales {
  std::vector<float> gate, up, down;
  std::vector<float> gate_input, up_input, down_input;
};
LayerScales read_layer_scales(const Checkpoint& checkpoint, const MoeLayerInfo& layer);

// Copies experts [first_expert, first_expert + num_experts) of an NVFP4 or MXFP4 layer into host
// weights: gate and up stacked as w13 (gate rows, then up rows, whatever the producer's order)
// with their own global scales (g, whatever the producer's storage; 1 for MXFP4), input scales
// per expert (the larger of gate's and up's for the shared gate/up activation), biases as fp32.
// `progress(done, total)` is called after each expert.
MoeWeights import_moe_layer(const Checkpoint& checkpoint, const MoeLayerInfo& layer,
                            int64_t first_expert, int64_t num_experts,
                            const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace nvfp4moe
