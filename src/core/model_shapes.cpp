#include "core/model_shapes.hpp"

#include "core/check.hpp"

namespace nvfp4moe {

const std::vector<ModelShape>& model_shapes() {
  static const std::vector<ModelShape> shapes = {
      {"deepseek-v3", "DeepSeek-V3/R1", 256, 256, 8, 7168, 2048},
      {"deepseek-v4", "DeepSeek-V4-Pro, one EP8 rank", 384, 48, 6, 7168, 3072},
      {"qwen3-235b", "Qwen3-235B-A22B", 128, 128, 8, 4096, 1536},
      {"small", "small test layer", 32, 32, 4, 1024, 512},
  };
  return shapes;
}

const ModelShape& find_model_shape(std::string_view name, std::string_view what) {
  std::string known;
  for (const ModelShape& shape : model_shapes()) {
    if (shape.name == name) return shape;
    known += (known.empty() ? "" : ", ") + shape.name;
  }
  fail(ErrorKind::kInvalidArgument, "{}: unknown shape '{}' (known: {})", what, printable(name),
       known);
}

}  // namespace nvfp4moe
