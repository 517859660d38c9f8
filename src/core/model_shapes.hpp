// The MoE layer shapes of the models the project is measured on: the benchmark times them, the
// accuracy command compares the modes on them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace nvfp4moe {

struct ModelShape {
  std::string name;
  std::string description;
  int64_t experts;        // global
  int64_t local_experts;  // on one GPU
  int64_t top_k;
  int64_t hidden;
  int64_t intermediate;
};

// deepseek-v3 (the reference), deepseek-v4 (one EP8 rank), qwen3-235b, small.
const std::vector<ModelShape>& model_shapes();

// The shape of that name; an Error naming `what` and the known names otherwise.
const ModelShape& find_model_shape(std::string_view name, std::string_view what);

}  // namespace nvfp4moe
