// The MoE layer: configuration, expert weights, and the runner every backend implements.
//
// Semantics are docs/numerics.md §4. For token t and slot j with local expert
// e = topk_ids[t, j] - first_local_expert (skipped when -1 or outside this rank's range):
//
//   a     = x[t]                      (W4A16)  or  dequant(quant(x[t], g1))       (W4A4)
//   gate  = a . W1[e]^T,  up = a . W3[e]^T                                         (fp32)
//   h     = act(gate, up)                                                          (fp32)
//   h     = bf16(h)                   (W4A16)  or  dequant(quant(h, g2))          (W4A4)
//   out[t] += topk_weights[t, j] * (h . W2[e]^T)       accumulated in fp32, one bf16 rounding
//
// Every global scale is applied as the GEMM's alpha (D = alpha * sum(a_k * w_k) with
// alpha = g_activation * g_weight), never folded into the block scales.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace nvfp4moe {

enum class QuantMode {
  kW4A16,  // NVFP4 weights, BF16 activations
  kW4A4,   // NVFP4 weights and activations
  kW4A8,   // NVFP4 weights and activations as FP8 E4M3 in groups of 128 (approximate; opt-in)
};

enum class ActivationScale {
  kDynamic,  // g = amax over the whole batch / 2688, computed per forward
  kStatic,   // g = the checkpoint's input_scale of the expert
};

enum class Activation {
  kSilu,           // silu(gate) * up
  kSwigluClamped,  // silu(min(gate, L)) * clamp(up, -L, L)   (DeepSeek-V4, L = swiglu_limit)
  kSwigluOai,      // g * sigmoid(1.702 g) * (clamp(up, -L, L) + 1), g = min(gate, L)  (gpt-oss)
};

// How the expert weights are encoded (docs/numerics.md §1).
enum class WeightFormat {
  kNvfp4,  // E2M1 in blocks of 16 with an E4M3 scale, and a global scale per matrix
  kMxfp4,  // E2M1 in blocks of 32 with an E8M0 (power-of-two) scale; global scales are 1
};
constexpr int64_t weight_block_size(WeightFormat format) {
  return format == WeightFormat::kNvfp4 ? 16 : 32;
}

enum class Device { kCpu, kCuda };

const char* to_string(QuantMode mode);
const char* to_string(ActivationScale scale);
const char* to_string(Activation activation);
const char* to_string(Device device);
const char* to_string(WeightFormat format);
// The inverses, case-insensitive ("w4a16", "dynamic", "silu", ...); an Error naming `what` and
// the accepted names otherwise.
QuantMode parse_quant_mode(std::string_view name, std::string_view what = "mode");
ActivationScale parse_activation_scale(std::string_view name,
                                       std::string_view what = "activation_scale");
Activation parse_activation(std::string_view name, std::string_view what = "activation");

struct MoeConfig {
  int64_t num_experts = 0;         // global expert count: valid ids are [0, num_experts)
  int64_t num_local_experts = 0;   // experts held by this rank
  int64_t first_local_expert = 0;  // global id of local expert 0
  int64_t hidden = 0;              // H, a multiple of 16
  int64_t intermediate = 0;        // I, a multiple of 16
  int64_t top_k = 0;
  int64_t max_tokens = 0;  // the most tokens one forward may carry
  QuantMode mode = QuantMode::kW4A16;
  ActivationScale activation_scale = ActivationScale::kDynamic;  // W4A4 only (W4A8: dynamic)
  Activation activation = Activation::kSilu;
  float swiglu_limit = 10.0f;  // kSwigluClamped (DeepSeek-V4: 10) and kSwigluOai (gpt-oss: 7)

  // Throws Error naming the first field that is out of range.
  void validate() const;
  // A config for a single-rank layer holding every expert.
  static MoeConfig single_rank(int64_t num_experts, int64_t hidden, int64_t intermediate,
                               int64_t top_k, int64_t max_tokens);
};

// Expert weights of one layer as raw pointers (host memory for the CPU backend, device memory
// for the CUDA backend). Experts are stacked; gate and up share one array the way engines
// store "w13": rows [0, I) of each expert are the gate projection, rows [I, 2I) the up one.
// B is the format's block size (16 for NVFP4, 32 for MXFP4).
struct MoeWeightsView {
  WeightFormat format = WeightFormat::kNvfp4;
  const uint8_t* gate_up_values = nullptr;     // [E, 2I, H/2]
  const uint8_t* gate_up_scales = nullptr;     // [E, 2I, H/B]  E4M3 (NVFP4) or E8M0 (MXFP4)
  const float* gate_global_scale = nullptr;    // [E]  weight_scale_2 of W1
  const float* up_global_scale = nullptr;      // [E]  weight_scale_2 of W3
  const uint8_t* down_values = nullptr;        // [E, H, I/2]
  const uint8_t* down_scales = nullptr;        // [E, H, I/B]
  const float* down_global_scale = nullptr;    // [E]  weight_scale_2 of W2
  const float* gate_up_input_scale = nullptr;  // [E]  g1 for static W4A4, else may be null
  const float* down_input_scale = nullptr;     // [E]  g2 for static W4A4, else may be null
  const float* gate_up_bias = nullptr;         // [E, 2I] added to gate and up (gpt-oss), or null
  const float* down_bias = nullptr;            // [E, H] added to the down projection, or null
};

// Owning host copy of one layer's expert weights (E = local experts).
struct MoeWeights {
  WeightFormat format = WeightFormat::kNvfp4;
  int64_t num_experts = 0;
  int64_t hidden = 0;
  int64_t intermediate = 0;
  std::vector<uint8_t> gate_up_values;
  std::vector<uint8_t> gate_up_scales;
  std::vector<float> gate_global_scale;
  std::vector<float> up_global_scale;
  std::vector<uint8_t> down_values;
  std::vector<uint8_t> down_scales;
  std::vector<float> down_global_scale;
  std::vector<float> gate_up_input_scale;  // empty when the checkpoint has none
  std::vector<float> down_input_scale;     // empty when the checkpoint has none
  std::vector<float> gate_up_bias;         // [E, 2I], empty when the layer has none
  std::vector<float> down_bias;            // [E, H], empty when the layer has none

  // Sizes every array for the given shape (contents zero, global scales 1).
  static MoeWeights allocate(int64_t num_experts, int64_t hidden, int64_t intermediate,
                             bool with_input_scales, WeightFormat format = WeightFormat::kNvfp4,
                             bool with_biases = false);
  MoeWeightsView view() const;
  size_t bytes() const;
  // A copy of experts [first, first + count): the weights one expert-parallel rank holds.
  MoeWeights slice(int64_t first, int64_t count) const;
};

// Checks `matrices` stacked [rows, blocks_per_row] block-scale arrays (host memory) of the format
// (E4M3 or E8M0): an Error naming `name`, the expert, row and block of the first NaN (or, E4M3,
// negative) scale.
void validate_block_scales(const uint8_t* scales, int64_t matrices, int64_t rows,
                           int64_t blocks_per_row, const char* name,
                           WeightFormat format = WeightFormat::kNvfp4);

// Checks host weights against the config: shapes, finite and non-negative global scales, no
// NaN or negative block scale, input scales present and positive when static W4A4 needs them.
// With block_scales_checked (they were, when the weights were prepared), only the per-expert
// scalars are checked: O(experts), cheap enough for every call.
void validate_weights(const MoeConfig& config, const MoeWeightsView& weights,
                      bool block_scales_checked = false);
// The same, after checking that every array of `weights` has the size the config implies.
void validate_weights(const MoeConfig& config, const MoeWeights& weights);

// One forward call. All pointers live where the backend computes (host or device).
struct MoeForwardArgs {
  int64_t num_tokens = 0;               // T <= config.max_tokens
  const uint16_t* hidden = nullptr;     // [T, H] bf16
  const int32_t* topk_ids = nullptr;    // [T, k] global expert ids, -1 = none
  const float* topk_weights = nullptr;  // [T, k]
  uint16_t* output = nullptr;           // [T, H] bf16, fully overwritten
};

// Host-side checks every backend makes before computing: token count within
// [0, max_tokens] and the pointers a non-empty batch needs.
void validate_forward_args(const MoeConfig& config, const MoeForwardArgs& args);

class MoeRunner {
 public:
  virtual ~MoeRunner() = default;
  virtual const MoeConfig& config() const = 0;
  virtual Device device() const = 0;
  // Bytes of scratch memory forward() needs: a pure function of the config.
  virtual size_t workspace_bytes() const = 0;
  // Computes the layer. `workspace` holds workspace_bytes() on the runner's device; `stream` is a
  // cudaStream_t for the CUDA backend and ignored by the CPU backend.
  virtual void forward(const MoeForwardArgs& args, void* workspace, void* stream) = 0;
  // Throws an Error for input problems a device found in earlier forwards without stopping
  // them (topk_ids out of range, non-finite W4A4 activations), then clears them. Waits for
  // `stream`. The CPU backend throws from forward itself and has nothing to report here.
  virtual void check_errors(void* stream) { (void)stream; }
};

// Bits of the error word a device forward sets for input problems it meets and skips without
// stopping (the CPU backend throws instead).
inline constexpr uint32_t kErrorBadExpertId = 1u;          // topk_ids outside [-1, num_experts)
inline constexpr uint32_t kErrorNonFiniteActivation = 2u;  // W4A4 met NaN/Inf to quantize
// Throws Error (kInvalidArgument) for the bits of an error word read back from a device; `what`
// names the layer or op in the message.
void raise_device_errors(uint32_t flags, int64_t num_experts, const char* what);

// Bytes of scratch memory a forward needs on `device`: a pure function of the config (the
// same as MoeRunner::workspace_bytes of a runner made with it).
size_t workspace_bytes(Device device, const MoeConfig& config);

// The CPU reference backend. It keeps the pointers of `weights`, which must outlive it, and reads
// them at each forward: making one is cheap, apart from the check of every block scale, which
// block_scales_checked skips (validate_weights).
std::unique_ptr<MoeRunner> make_cpu_runner(const MoeConfig& config, const MoeWeightsView& weights,
                                           bool block_scales_checked = false);

}  // namespace nvfp4moe
