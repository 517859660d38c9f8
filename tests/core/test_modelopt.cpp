// ModelOpt NVFP4 expert import: discovery, both namings, exact bytes, broken layers.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/fixture_patterns.hpp"
#include "nvfp4moe/error.hpp"
#include "nvfp4moe/modelopt.hpp"

namespace nvfp4moe {
namespace {

namespace fs = std::filesystem;
using namespace nvfp4moe::testing;

TEST(ModelOpt, FindsTheMoeLayersOfAShardedHfCheckpoint) {
  const auto checkpoint = Checkpoint::open(fixtures_dir() / "modelopt_hf");
  const auto layers = find_moe_layers(checkpoint);
  ASSERT_EQ(layers.size(), 2u);  // layer 0 is dense, the router is not an expert
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(layers[i].layer, i == 0 ? 1 : 3);
    EXPECT_EQ(layers[i].naming.prefix, "model.layers.{layer}.mlp.experts.");
    EXPECT_EQ(layers[i].naming.gate, "gate_proj");
    EXPECT_EQ(layers[i].num_experts, 4);
    EXPECT_EQ(layers[i].hidden, 64);
    EXPECT_EQ(layers[i].intermediate, 32);
    EXPECT_TRUE(layers[i].is_nvfp4);
    EXPECT_TRUE(layers[i].has_input_scales);
  }
  // The same layers when the naming is given instead of detected.
  const auto named = find_moe_layers(checkpoint, ExpertNaming::hf());
  ASSERT_EQ(named.size(), 2u);
  EXPECT_EQ(named[1].layer, 3);
}

// Every byte and scale lands where DESIGN's stacked layout says, gate and up keep their own
// global scales, and an expert-parallel slice starts at its first expert.
TEST(ModelOpt, ImportsExactBytesAndSeparateGateUpScales) {
  const auto checkpoint = Checkpoint::open(fixtures_dir() / "modelopt_hf");
  const MoeLayerInfo layer = describe_moe_layer(checkpoint, 3, ExpertNaming::hf());
  const int64_t first = 1, count = 3, H = 64, I = 32;
  const MoeWeights w = import_moe_layer(checkpoint, layer, first, count);
  ASSERT_EQ(w.num_experts, count);
  for (int64_t i = 0; i < count; ++i) {
    const int e = static_cast<int>(first + i);
    for (int64_t b = 0; b < I * H / 2; ++b) {
      ASSERT_EQ(w.gate_up_values[i * I * H + b], weight_byte(3, e, kGate, b));
      ASSERT_EQ(w.gate_up_values[i * I * H + I * H / 2 + b], weight_byte(3, e, kUp, b));
      ASSERT_EQ(w.down_values[i * I * H / 2 + b], weight_byte(3, e, kDown, b));
    }
    for (int64_t b = 0; b < I * H / 16; ++b) {
      ASSERT_EQ(w.gate_up_scales[i * I * H / 8 + b], scale_byte(3, e, kGate, b));
      ASSERT_EQ(w.gate_up_scales[i * I * H / 8 + I * H / 16 + b], scale_byte(3, e, kUp, b));
      ASSERT_EQ(w.down_scales[i * I * H / 16 + b], scale_byte(3, e, kDown, b));
    }
    EXPECT_EQ(w.gate_global_scale[i], global_scale(3, e, kGate));
    EXPECT_EQ(w.up_global_scale[i], global_scale(3, e, kUp));
    EXPECT_NE(w.gate_global_scale[i], w.up_global_scale[i]);
    EXPECT_EQ(w.down_global_scale[i], global_scale(3, e, kDown));
    EXPECT_EQ(w.gate_up_input_scale[i], std::max(input_scale(3, e, kGate), input_scale(3, e, kUp)));
    EXPECT_EQ(w.down_input_scale[i], input_scale(3, e, kDown));
  }
  EXPECT_THROW(import_moe_layer(checkpoint, layer, 2, 3), Error);  // past expert 3
}

TEST(ModelOpt, ImportsDeepSeekNamingWithoutInputScales) {
  const auto checkpoint = Checkpoint::open(fixtures_dir() / "modelopt_deepseek.safetensors");
  const auto layers = find_moe_layers(checkpoint);
  ASSERT_EQ(layers.size(), 1u);
  const MoeLayerInfo& layer = layers[0];
  EXPECT_EQ(layer.layer, 2);
  EXPECT_EQ(layer.naming.prefix, "layers.{layer}.ffn.experts.");
  EXPECT_EQ(layer.naming.gate, "w1");
  EXPECT_EQ(layer.naming.up, "w3");
  EXPECT_EQ(layer.naming.down, "w2");
  EXPECT_EQ(layer.num_experts, 3);
  EXPECT_EQ(layer.hidden, 48);
  EXPECT_EQ(layer.intermediate, 80);
  EXPECT_FALSE(layer.has_input_scales);
  const MoeWeights w = import_moe_layer(checkpoint, layer, 0, 3);
  EXPECT_TRUE(w.gate_up_input_scale.empty());
  EXPECT_EQ(w.up_global_scale[2], global_scale(2, 2, kUp));
  EXPECT_EQ(w.gate_up_values[80 * 48 / 2 + 5], weight_byte(2, 0, kUp, 5));  // w3 after w1
  EXPECT_EQ(w.down_values[2 * 48 * 80 / 2 + 7], weight_byte(2, 2, kDown, 7));
}

TEST(ModelOpt, BrokenLayersGiveErrorsNamingTheTensor) {
  const fs::path dir = fixtures_dir() / "malformed_modelopt";
  std::ifstream in(dir / "expected.json");
  const auto expected = nlohmann::json::parse(in);
  ASSERT_EQ(expected.size(), 6u);
  for (const auto& [name, message] : expected.items()) {
    SCOPED_TRACE(name);
    const auto checkpoint = Checkpoint::open(dir / name);
    try {
      describe_moe_layer(checkpoint, 5, ExpertNaming::hf());
      ADD_FAILURE() << name << " was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidFile);
      EXPECT_NE(std::string(e.what()).find(message.get<std::string>()), std::string::npos)
          << e.what();
    }
  }
}

TEST(ModelOpt, AskingForALayerThatIsNotThereSaysWhatWasLookedFor) {
  const auto checkpoint = Checkpoint::open(fixtures_dir() / "modelopt_deepseek.safetensors");
  try {
    describe_moe_layer(checkpoint, 7, ExpertNaming::deepseek());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layers.7.ffn.experts.0.w1.weight"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(ExpertNaming::from_style("mixtral", ""), Error);
}

TEST(ModelOpt, UnquantizedLayersAreDescribedButNotImported) {
  const auto checkpoint = Checkpoint::open(fixtures_dir() / "bf16_moe");
  const auto layers = find_moe_layers(checkpoint);
  ASSERT_EQ(layers.size(), 2u);
  EXPECT_FALSE(layers[0].is_nvfp4);
  EXPECT_EQ(layers[0].weight_dtype, DType::kBF16);
  EXPECT_EQ(layers[0].hidden, 128);
  EXPECT_EQ(layers[0].intermediate, 64);
  EXPECT_EQ(layers[0].num_experts, 8);
  EXPECT_THROW(import_moe_layer(checkpoint, layers[0], 0, 8), Error);
}

}  // namespace
}  // namespace nvfp4moe
