// The CPU reference backend: docs/numerics.md §4 written plainly, exact in everything but the order
// of fp32 additions, and parallel over experts so that both cores of a small machine work.
//
// One forward runs in phases, each a parallel loop:
//   1. route     bucket the (token, slot) pairs by local expert, in slot order
//   2. gate/up   per expert: decode each W13 row once, dot it with every routed activation,
//                apply alpha and the activation; h is kept in fp32 (W4A4) or rounded to bf16
//                (W4A16, W4A8)
//   3. down      per expert: quantize h (W4A4, g2 static or over the whole batch), decode each W2
//                row once and dot it with every routed h
//   W4A8 takes both operands of each dot product as FP8 groups (numerics §5).
//   4. combine   per token: out = bf16(sum_j topk_weights[t, j] * y[t, j]) in slot order
//
// Weights come from an ExpertRows source: NVFP4 codes decoded row by row for the reference
// backend, or unquantized bf16 rows for the layer accuracy is measured against.
//
// Workspace (float unless noted), all sized for max_tokens:
//   slot_expert int32 [T*k] | expert_offsets int32 [E+1] | expert_slots int32 [T*k]
//   h [T*k, I] | y [T*k, H]
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/activation.hpp"
#include "core/check.hpp"
#include "core/parallel.hpp"
#include "cpu/expert_rows.hpp"
#include "cpu/row_math.hpp"
#include "nvfp4moe/format.hpp"
#include "nvfp4moe/moe.hpp"
#include "nvfp4moe/quantize.hpp"

namespace nvfp4moe {
namespace {

using cpu::dot;
using cpu::fp8_dot;
using cpu::Fp8Row;
using cpu::quantize_dequantize_row;
using cpu::quantize_fp8_row;

struct Workspace {
  int32_t* slot_expert;     // [T*k] local expert of each slot, -1 when skipped
  int32_t* expert_offsets;  // [E+1]
  int32_t* expert_slots;    // [T*k] slot indices grouped by expert
  float* h;                 // [T*k, I]
  float* y;                 // [T*k, H]
};

// Rows of the checkpoint's 4-bit codes, decoded exactly (e2m1 * e4m3 for NVFP4, e2m1 * 2^k for
// MXFP4).
class Fp4Rows final : public ExpertRows {
 public:
  Fp4Rows(const MoeWeightsView& weights, int64_t hidden, int64_t intermediate)
      : w_(weights),
        hidden_(hidden),
        inter_(intermediate),
        block_(weight_block_size(weights.format)),
        decode_(weights.format == WeightFormat::kNvfp4 ? decode_nvfp4_row : decode_mxfp4_row) {}

  void gate_up_row(int64_t e, int64_t r, float* out) const override {
    const int64_t row = e * 2 * inter_ + r;
    decode_(w_.gate_up_values + row * hidden_ / 2, w_.gate_up_scales + row * hidden_ / block_,
            hidden_, out);
  }
  void down_row(int64_t e, int64_t r, float* out) const override {
    const int64_t row = e * hidden_ + r;
    decode_(w_.down_values + row * inter_ / 2, w_.down_scales + row * inter_ / block_, inter_, out);
  }
  const float* gate_up_bias(int64_t e) const override {
    return w_.gate_up_bias ? w_.gate_up_bias + e * 2 * inter_ : nullptr;
  }
  const float* down_bias(int64_t e) const override {
    return w_.down_bias ? w_.down_bias + e * hidden_ : nullptr;
  }
  float gate_scale(int64_t e) const override { return w_.gate_global_scale[e]; }
  float up_scale(int64_t e) const override { return w_.up_global_scale[e]; }
  float down_scale(int64_t e) const override { return w_.down_global_scale[e]; }
  float gate_up_input_scale(int64_t e) const override { return w_.gate_up_input_scale[e]; }
  float down_input_scale(int64_t e) const override { return w_.down_input_scale[e]; }

 private:
  MoeWeightsView w_;
  int64_t hidden_;
  int64_t inter_;
  int64_t block_;
  void (*decode_)(const uint8_t*, const uint8_t*, int64_t, float*);
};

// Unquantized rows: bf16 values widened to fp32, all scales 1.
class DenseRows : public ExpertRows {
 public:
  float gate_scale(int64_t) const override { return 1.0f; }
  float up_scale(int64_t) const override { return 1.0f; }
  float down_scale(int64_t) const override { return 1.0f; }
  float gate_up_input_scale(int64_t) const override { return 1.0f; }
  float down_input_scale(int64_t) const override { return 1.0f; }
};

class Bf16Rows final : public DenseRows {
 public:
  Bf16Rows(const uint16_t* gate_up, const uint16_t* down, int64_t hidden, int64_t intermediate)
      : gate_up_(gate_up), down_(down), hidden_(hidden), inter_(intermediate) {}

  void gate_up_row(int64_t e, int64_t r, float* out) const override {
    const uint16_t* row = gate_up_ + (e * 2 * inter_ + r) * hidden_;
    for (int64_t c = 0; c < hidden_; ++c) out[c] = bf16_to_float(row[c]);
  }
  void down_row(int64_t e, int64_t r, float* out) const override {
    const uint16_t* row = down_ + (e * hidden_ + r) * inter_;
    for (int64_t c = 0; c < inter_; ++c) out[c] = bf16_to_float(row[c]);
  }

 private:
  const uint16_t* gate_up_;
  const uint16_t* down_;
  int64_t hidden_;
  int64_t inter_;
};

class DequantizedBf16Rows final : public DenseRows {
 public:
  DequantizedBf16Rows(const MoeWeightsView& weights, int64_t hidden, int64_t intermediate)
      : codes_(weights, hidden, intermediate), hidden_(hidden), inter_(intermediate) {}

  void gate_up_row(int64_t e, int64_t r, float* out) const override {
    codes_.gate_up_row(e, r, out);
    round(out, hidden_, r < inter_ ? codes_.gate_scale(e) : codes_.up_scale(e));
  }
  void down_row(int64_t e, int64_t r, float* out) const override {
    codes_.down_row(e, r, out);
    round(out, inter_, codes_.down_scale(e));
  }
  const float* gate_up_bias(int64_t e) const override { return codes_.gate_up_bias(e); }
  const float* down_bias(int64_t e) const override { return codes_.down_bias(e); }

 private:
  static void round(float* row, int64_t n, float global_scale) {
    for (int64_t c = 0; c < n; ++c) row[c] = bf16_to_float(float_to_bf16(row[c] * global_scale));
  }
  Fp4Rows codes_;
  int64_t hidden_;
  int64_t inter_;
};

class CpuMoeRunner final : public MoeRunner {
 public:
  CpuMoeRunner(const MoeConfig& config, std::shared_ptr<const ExpertRows> rows)
      : config_(config), rows_(std::move(rows)) {
    config_.validate();
  }

  const MoeConfig& config() const override { return config_; }
  Device device() const override { return Device::kCpu; }

  size_t workspace_bytes() const override { return cpu_workspace_bytes(config_); }

  void forward(const MoeForwardArgs& args, void* workspace, void* /*stream*/) override {
    validate_forward_args(config_, args);
    if (args.num_tokens == 0) return;
    require(workspace != nullptr, ErrorKind::kInvalidArgument,
            "forward: workspace is null; it must hold workspace_bytes() = {} bytes",
            workspace_bytes());
    const Workspace ws = carve(workspace);
    route(args, ws);
    // W4A4 quantizes the hidden states, which must therefore be finite; the amax also gives
    // the dynamic g1.
    const float hidden_amax =
        config_.mode != QuantMode::kW4A16
            ? finite_amax(
                  std::span(args.hidden, static_cast<size_t>(args.num_tokens * config_.hidden)),
                  config_.mode == QuantMode::kW4A4 ? "forward: hidden (W4A4 quantizes it)"
                                                   : "forward: hidden (W4A8 quantizes it)",
                  config_.hidden)
            : 0.0f;
    gate_up(args, hidden_amax, ws);
    down(ws);
    combine(args, ws);
  }

 private:
  Workspace carve(void* workspace) const {
    const auto slots = static_cast<size_t>(config_.max_tokens * config_.top_k);
    auto* ints = static_cast<int32_t*>(workspace);
    Workspace ws{};
    ws.slot_expert = ints;
    ws.expert_offsets = ints + slots;
    ws.expert_slots = ws.expert_offsets + config_.num_local_experts + 1;
    ws.h = reinterpret_cast<float*>(ws.expert_slots + slots);
    ws.y = ws.h + slots * static_cast<size_t>(config_.intermediate);
    return ws;
  }

  // Phase 1: validate ids and weights of the router, bucket slots by local expert.
  void route(const MoeForwardArgs& args, const Workspace& ws) const {
    const int64_t k = config_.top_k;
    const int64_t num_slots = args.num_tokens * k;
    std::fill(ws.expert_offsets, ws.expert_offsets + config_.num_local_experts + 1, 0);
    for (int64_t s = 0; s < num_slots; ++s) {
      const int32_t id = args.topk_ids[s];
      if (id < -1 || id >= config_.num_experts) {
        fail(ErrorKind::kInvalidArgument,
             "forward: topk_ids[{},{}] = {} but the layer has {} experts (ids 0..{}, or -1)", s / k,
             s % k, id, config_.num_experts, config_.num_experts - 1);
      }
      const float weight = args.topk_weights[s];
      require(std::isfinite(weight), ErrorKind::kInvalidArgument,
              "forward: topk_weights[{},{}] = {}, expected a finite value", s / k, s % k, weight);
      const int64_t local = id - config_.first_local_expert;
      const bool is_local = id >= 0 && local >= 0 && local < config_.num_local_experts;
      ws.slot_expert[s] = is_local ? static_cast<int32_t>(local) : -1;
      if (is_local) ++ws.expert_offsets[local + 1];
    }
    for (int64_t e = 0; e < config_.num_local_experts; ++e) {
      ws.expert_offsets[e + 1] += ws.expert_offsets[e];
    }
    std::vector<int32_t> cursor(ws.expert_offsets, ws.expert_offsets + config_.num_local_experts);
    for (int64_t s = 0; s < num_slots; ++s) {
      if (ws.slot_expert[s] >= 0) ws.expert_slots[cursor[ws.slot_expert[s]]++] = int32_t(s);
    }
  }

  // Phase 2: h = act(a . W1^T, a . W3^T) for every routed slot.
  void gate_up(const MoeForwardArgs& args, float hidden_amax, const Workspace& ws) const {
    const int64_t hidden = config_.hidden;
    const int64_t inter = config_.intermediate;
    const int64_t k = config_.top_k;
    const bool w4a4 = config_.mode == QuantMode::kW4A4;
    const bool w4a8 = config_.mode == QuantMode::kW4A8;
    const bool dynamic = config_.activation_scale == ActivationScale::kDynamic;
    const float batch_g1 = nvfp4_dynamic_global_scale(hidden_amax);
    const bool clamped = config_.activation == Activation::kSwigluClamped;

    parallel_for(config_.num_local_experts, [&](int64_t e) {
      const int32_t begin = ws.expert_offsets[e];
      const int32_t count = ws.expert_offsets[e + 1] - begin;
      if (count == 0) return;
      const float g1 = !w4a4 ? 1.0f : dynamic ? batch_g1 : rows_->gate_up_input_scale(e);
      std::vector<float> a(static_cast<size_t>(count * hidden));
      for (int32_t i = 0; i < count; ++i) {
        const int64_t token = ws.expert_slots[begin + i] / k;
        float* row = &a[i * hidden];
        for (int64_t c = 0; c < hidden; ++c)
          row[c] = bf16_to_float(args.hidden[token * hidden + c]);
        if (w4a4) quantize_dequantize_row(row, hidden, g1);
      }
      // W4A8: both operands as FP8 groups (numerics §5).
      std::vector<Fp8Row> a8(w4a8 ? static_cast<size_t>(count) : 0);
      for (int32_t i = 0; i < int32_t(a8.size()); ++i)
        quantize_fp8_row(&a[i * hidden], hidden, a8[i]);
      // acc[i, r] for r in [0, 2I): rows [0, I) gate, [I, 2I) up.
      std::vector<float> acc(static_cast<size_t>(count * 2 * inter));
      std::vector<float> w_row(static_cast<size_t>(hidden));
      Fp8Row w8;
      for (int64_t r = 0; r < 2 * inter; ++r) {
        rows_->gate_up_row(e, r, w_row.data());
        if (w4a8) quantize_fp8_row(w_row.data(), hidden, w8);
        for (int32_t i = 0; i < count; ++i) {
          acc[i * 2 * inter + r] =
              w4a8 ? fp8_dot(a8[i], w8, hidden) : dot(&a[i * hidden], w_row.data(), hidden);
        }
      }
      const float alpha_gate = g1 * rows_->gate_scale(e);
      const float alpha_up = g1 * rows_->up_scale(e);
      const float* bias = rows_->gate_up_bias(e);
      for (int32_t i = 0; i < count; ++i) {
        float* h = ws.h + ws.expert_slots[begin + i] * inter;
        const float* row = &acc[i * 2 * inter];
        for (int64_t c = 0; c < inter; ++c) {
          float gate = alpha_gate * row[c], up = alpha_up * row[inter + c];
          if (bias != nullptr) {
            gate += bias[c];
            up += bias[inter + c];
          }
          const float value = config_.activation == Activation::kSwigluOai
                                  ? swiglu_oai(gate, up, config_.swiglu_limit)
                                  : gated_activation(gate, up, clamped, config_.swiglu_limit);
          h[c] = w4a4 ? value : bf16_to_float(float_to_bf16(value));
        }
      }
    });
  }

  // Phase 3: y = h . W2^T for every routed slot (h re-quantized first in W4A4).
  void down(const Workspace& ws) const {
    const int64_t hidden = config_.hidden;
    const int64_t inter = config_.intermediate;
    const int64_t num_routed = ws.expert_offsets[config_.num_local_experts];
    const bool w4a4 = config_.mode == QuantMode::kW4A4;
    const bool w4a8 = config_.mode == QuantMode::kW4A8;
    const bool dynamic = config_.activation_scale == ActivationScale::kDynamic;
    float batch_g2 = 1.0f;
    if (w4a4 || w4a8) {
      for (int64_t i = 0; i < num_routed; ++i) {
        const float* h = ws.h + ws.expert_slots[i] * inter;
        require(std::all_of(h, h + inter, [](float v) { return std::isfinite(v); }),
                ErrorKind::kInvalidArgument,
                "forward: the intermediate activation of slot {} is not finite; {} cannot "
                "quantize it (are the weights or hidden states too large?)",
                ws.expert_slots[i], to_string(config_.mode));
      }
    }
    if (w4a4) {
      if (dynamic) {
        float amax = 0.0f;
        for (int64_t i = 0; i < num_routed; ++i) {
          const float* h = ws.h + ws.expert_slots[i] * inter;
          for (int64_t c = 0; c < inter; ++c) amax = std::fmax(amax, std::fabs(h[c]));
        }
        batch_g2 = nvfp4_dynamic_global_scale(amax);
      }
    }

    parallel_for(config_.num_local_experts, [&](int64_t e) {
      const int32_t begin = ws.expert_offsets[e];
      const int32_t count = ws.expert_offsets[e + 1] - begin;
      if (count == 0) return;
      const float g2 = !w4a4 ? 1.0f : dynamic ? batch_g2 : rows_->down_input_scale(e);
      if (w4a4) {
        for (int32_t i = 0; i < count; ++i) {
          quantize_dequantize_row(ws.h + ws.expert_slots[begin + i] * inter, inter, g2);
        }
      }
      std::vector<Fp8Row> h8(w4a8 ? static_cast<size_t>(count) : 0);
      for (int32_t i = 0; i < int32_t(h8.size()); ++i) {
        quantize_fp8_row(ws.h + ws.expert_slots[begin + i] * inter, inter, h8[i]);
      }
      const float alpha = g2 * rows_->down_scale(e);
      const float* bias = rows_->down_bias(e);
      std::vector<float> w_row(static_cast<size_t>(inter));
      Fp8Row w8;
      for (int64_t n = 0; n < hidden; ++n) {
        rows_->down_row(e, n, w_row.data());
        if (w4a8) quantize_fp8_row(w_row.data(), inter, w8);
        for (int32_t i = 0; i < count; ++i) {
          const int32_t slot = ws.expert_slots[begin + i];
          const float y = alpha * (w4a8 ? fp8_dot(h8[i], w8, inter)
                                        : dot(ws.h + slot * inter, w_row.data(), inter));
          ws.y[slot * hidden + n] = bias != nullptr ? y + bias[n] : y;
        }
      }
    });
  }

  // Phase 4: out[t] = bf16(sum over local slots j, in order, of topk_weights[t, j] * y[t, j]).
  void combine(const MoeForwardArgs& args, const Workspace& ws) const {
    const int64_t hidden = config_.hidden;
    const int64_t k = config_.top_k;
    parallel_for(args.num_tokens, [&](int64_t t) {
      std::vector<float> acc(static_cast<size_t>(hidden), 0.0f);
      for (int64_t j = 0; j < k; ++j) {
        const int64_t slot = t * k + j;
        if (ws.slot_expert[slot] < 0) continue;
        const float weight = args.topk_weights[slot];
        const float* y = ws.y + slot * hidden;
        for (int64_t c = 0; c < hidden; ++c) acc[c] += weight * y[c];
      }
      uint16_t* out = args.output + t * hidden;
      for (int64_t c = 0; c < hidden; ++c) out[c] = float_to_bf16(acc[c]);
    });
  }

  MoeConfig config_;
  std::shared_ptr<const ExpertRows> rows_;
};

}  // namespace

size_t cpu_workspace_bytes(const MoeConfig& config) {
  const auto slots = static_cast<size_t>(config.max_tokens * config.top_k);
  const auto experts = static_cast<size_t>(config.num_local_experts);
  return sizeof(int32_t) * (2 * slots + experts + 1) +
         sizeof(float) * slots * static_cast<size_t>(config.intermediate + config.hidden);
}

std::unique_ptr<MoeRunner> make_cpu_runner(const MoeConfig& config,
                                           std::shared_ptr<const ExpertRows> rows) {
  return std::make_unique<CpuMoeRunner>(config, std::move(rows));
}

std::unique_ptr<MoeRunner> make_cpu_runner(const MoeConfig& config, const MoeWeightsView& weights,
                                           bool block_scales_checked) {
  validate_weights(config, weights, block_scales_checked);
  return make_cpu_runner(config,
                         std::make_shared<Fp4Rows>(weights, config.hidden, config.intermediate));
}

std::shared_ptr<const ExpertRows> bf16_expert_rows(const uint16_t* gate_up, const uint16_t* down,
                                                   int64_t hidden, int64_t intermediate) {
  return std::make_shared<Bf16Rows>(gate_up, down, hidden, intermediate);
}

std::shared_ptr<const ExpertRows> dequantized_bf16_rows(const MoeWeightsView& weights,
                                                        int64_t hidden, int64_t intermediate) {
  return std::make_shared<DequantizedBf16Rows>(weights, hidden, intermediate);
}

}  // namespace nvfp4moe
