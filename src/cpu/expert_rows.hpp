// Where the CPU pipeline gets expert weights from, one row at a time.
//
// The NVFP4 reference decodes rows of the checkpoint's codes; the unquantized BF16 layer the
// demo and `run` compare against hands out bf16 rows. Both run through the same pipeline
// (src/cpu/moe_cpu.cpp), so an accuracy comparison measures quantization and nothing else.
#pragma once

#include <cstdint>
#include <memory>

#include "nvfp4moe/moe.hpp"

namespace nvfp4moe {

class ExpertRows {
 public:
  virtual ~ExpertRows() = default;
  // Row r of expert e's stacked gate/up matrix [2I, H] (r < I: gate, else up), without the
  // global scale, into out[H].
  virtual void gate_up_row(int64_t expert, int64_t row, float* out) const = 0;
  // Row r of expert e's down matrix [H, I], without the global scale, into out[I].
  virtual void down_row(int64_t expert, int64_t row, float* out) const = 0;
  // Global scales of the weights (1 for unquantized weights).
  virtual float gate_scale(int64_t expert) const = 0;
  virtual float up_scale(int64_t expert) const = 0;
  virtual float down_scale(int64_t expert) const = 0;
  // Static activation scales (only read in static W4A4 mode).
  virtual float gate_up_input_scale(int64_t expert) const = 0;
  virtual float down_input_scale(int64_t expert) const = 0;
  // Biases added after the projections (gpt-oss): [2I] (gate, then up) and [H] of an expert,
  // or null when the layer has none.
  virtual const float* gate_up_bias(int64_t) const { return nullptr; }
  virtual const float* down_bias(int64_t) const { return nullptr; }
};

// The CPU runner's workspace for a config.
size_t cpu_workspace_bytes(const MoeConfig& config);

// A CPU runner over any row source. `config.mode` must be kW4A16 for unquantized rows.
std::unique_ptr<MoeRunner> make_cpu_runner(const MoeConfig& config,
                                           std::shared_ptr<const ExpertRows> rows);

// Unquantized bf16 weights [E, 2I, H] and [E, H, I]; the arrays must outlive the rows.
std::shared_ptr<const ExpertRows> bf16_expert_rows(const uint16_t* gate_up, const uint16_t* down,
                                                   int64_t hidden, int64_t intermediate);

// NVFP4 or MXFP4 weights dequantized (global scale included) and rounded to bf16, with the
// layer's biases: the BF16 layer a checkpoint's 4-bit weights stand for.
std::shared_ptr<const ExpertRows> dequantized_bf16_rows(const MoeWeightsView& weights,
                                                        int64_t hidden, int64_t intermediate);

}  // namespace nvfp4moe
