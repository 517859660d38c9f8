// MoE expert import: discovery, formats, layouts and namings, exact bytes, broken layers.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/fixture_patterns.hpp"
#include "nvfp4moe/error.hpp"
#include "nvfp4moe/moe_import.hpp"
#include "nvfp4moe/quantize.hpp"

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
    EXPECT_EQ(layers[i].format, ExpertFormat::kNvfp4ModelOpt);
    EXPECT_TRUE(layers[i].has_input_scales);
  }
  // The same layers when the naming is given instead of detected.
  const auto named = find_moe_layers(checkpoint, ExpertNaming::hf());
  ASSERT_EQ(named.size(), 2u);
  EXPECT_EQ(named[1].layer, 3);
}

// Every byte and scale lands where the stacked layout of nvfp4moe/moe.hpp says, gate and up keep
// their own global scales, and an expert-parallel slice starts at its first expert.
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
    EXPECT_NE(
        std::string(e.what()).find("no MoE layer 7: no tensor named 'layers.7.ffn.experts.0.w1."),
        std::string::npos)
        << e.what();
  }
  EXPECT_THROW(ExpertNaming::from_style("mixtral", ""), Error);
}

TEST(ModelOpt, UnquantizedLayersAreDescribedButNotImported) {
  const auto checkpoint = Checkpoint::open(fixtures_dir() / "bf16_moe");
  const auto layers = find_moe_layers(checkpoint);
  ASSERT_EQ(layers.size(), 2u);
  EXPECT_EQ(layers[0].format, ExpertFormat::kUnquantized);
  EXPECT_EQ(layers[0].weight_dtype, DType::kBF16);
  EXPECT_EQ(layers[0].hidden, 128);
  EXPECT_EQ(layers[0].intermediate, 64);
  EXPECT_EQ(layers[0].num_experts, 8);
  EXPECT_THROW(import_moe_layer(checkpoint, layers[0], 0, 8), Error);
}

// compressed-tensors: weight_packed, weight_scale, and reciprocal global and input scales.
TEST(CompressedTensors, ImportsTheProducersCheckpointWithReciprocalScales) {
  const auto checkpoint = Checkpoint::open(fixtures_dir() / "formats" / "ct_qwen3");
  EXPECT_EQ(read_quantization_config(checkpoint).method,
            QuantizationConfig::Method::kCompressedTensors);
  const auto layers = find_moe_layers(checkpoint);
  ASSERT_EQ(layers.size(), 2u);
  const MoeLayerInfo& layer = layers[1];
  EXPECT_EQ(layer.layer, 2);
  EXPECT_EQ(layer.format, ExpertFormat::kNvfp4CompressedTensors);
  EXPECT_EQ(layer.num_experts, 4);
  EXPECT_EQ(layer.hidden, 64);
  EXPECT_EQ(layer.intermediate, 32);
  EXPECT_TRUE(layer.has_input_scales);
  const MoeWeights w = import_moe_layer(checkpoint, layer, 1, 3);
  const auto stored = [&](const std::string& name) {
    float value;
    std::memcpy(&value, checkpoint.bytes(name).data(), sizeof value);
    return value;
  };
  for (int64_t i = 0; i < 3; ++i) {
    const std::string base = "model.layers.2.mlp.experts." + std::to_string(i + 1) + ".";
    EXPECT_EQ(w.gate_global_scale[i], 1.0f / stored(base + "gate_proj.weight_global_scale"));
    EXPECT_EQ(w.up_global_scale[i], w.gate_global_scale[i]);  // fused by the producer
    EXPECT_EQ(w.down_global_scale[i], 1.0f / stored(base + "down_proj.weight_global_scale"));
    EXPECT_EQ(w.gate_up_input_scale[i],
              std::max(1.0f / stored(base + "gate_proj.input_global_scale"),
                       1.0f / stored(base + "up_proj.input_global_scale")));
    const auto up = checkpoint.bytes(base + "up_proj.weight_packed");
    EXPECT_EQ(std::memcmp(w.gate_up_values.data() + (2 * i + 1) * up.size(), up.data(), up.size()),
              0);
  }
}

// The same experts in both producers' formats import to identical weights.
TEST(CompressedTensors, ConvertedFromModelOptImportsIdentically) {
  const auto modelopt = Checkpoint::open(fixtures_dir() / "formats" / "pair_modelopt");
  const auto compressed = Checkpoint::open(fixtures_dir() / "formats" / "pair_ct");
  const auto a_layers = find_moe_layers(modelopt);
  const auto b_layers = find_moe_layers(compressed);
  ASSERT_EQ(a_layers.size(), 1u);
  ASSERT_EQ(b_layers.size(), 1u);
  EXPECT_EQ(a_layers[0].format, ExpertFormat::kNvfp4ModelOpt);
  EXPECT_EQ(b_layers[0].format, ExpertFormat::kNvfp4CompressedTensors);
  const MoeWeights a = import_moe_layer(modelopt, a_layers[0], 0, 4);
  const MoeWeights b = import_moe_layer(compressed, b_layers[0], 0, 4);
  EXPECT_EQ(a.gate_up_values, b.gate_up_values);
  EXPECT_EQ(a.gate_up_scales, b.gate_up_scales);
  EXPECT_EQ(a.down_values, b.down_values);
  EXPECT_EQ(a.down_scales, b.down_scales);
  EXPECT_EQ(a.gate_global_scale, b.gate_global_scale);
  EXPECT_EQ(a.up_global_scale, b.up_global_scale);
  EXPECT_EQ(a.down_global_scale, b.down_global_scale);
  EXPECT_EQ(a.gate_up_input_scale, b.gate_up_input_scale);
  EXPECT_EQ(a.down_input_scale, b.down_input_scale);
}

// Fused 3-D experts: gate_up_proj [E, 2I, H/2] and down_proj [E, H, I/2], global scales [E, 2]
// or [E], input scales [E].
TEST(FusedLayout, ImportsEveryExpertsSlice) {
  const auto checkpoint =
      Checkpoint::open(fixtures_dir() / "formats" / "fused_modelopt.safetensors");
  const auto layers = find_moe_layers(checkpoint);
  ASSERT_EQ(layers.size(), 2u);
  const int64_t H = 32, I = 16;
  for (const MoeLayerInfo& layer : layers) {
    SCOPED_TRACE(layer.layer);
    const int l = static_cast<int>(layer.layer);
    EXPECT_EQ(layer.naming.layout, ExpertLayout::kFused);
    EXPECT_EQ(layer.num_experts, 3);
    EXPECT_EQ(layer.hidden, H);
    EXPECT_EQ(layer.intermediate, I);
    const MoeWeights w = import_moe_layer(checkpoint, layer, 1, 2);
    for (int64_t i = 0; i < 2; ++i) {
      const int e = static_cast<int>(i + 1);
      for (int64_t b = 0; b < I * H / 2; ++b) {
        ASSERT_EQ(w.gate_up_values[i * I * H + b], weight_byte(l, e, kGate, b));
        ASSERT_EQ(w.gate_up_values[i * I * H + I * H / 2 + b], weight_byte(l, e, kUp, b));
        ASSERT_EQ(w.down_values[i * I * H / 2 + b], weight_byte(l, e, kDown, b));
      }
      for (int64_t b = 0; b < I * H / 16; ++b) {
        ASSERT_EQ(w.gate_up_scales[i * I * H / 8 + I * H / 16 + b], scale_byte(l, e, kUp, b));
        ASSERT_EQ(w.down_scales[i * I * H / 16 + b], scale_byte(l, e, kDown, b));
      }
      EXPECT_EQ(w.gate_global_scale[i], global_scale(l, e, kGate));
      // Layer 0 keeps gate and up scales apart ([E, 2]); layer 1 shares one ([E]).
      EXPECT_EQ(w.up_global_scale[i], global_scale(l, e, l == 0 ? kUp : kGate));
      EXPECT_EQ(w.down_global_scale[i], global_scale(l, e, kDown));
      EXPECT_EQ(w.down_input_scale[i], input_scale(l, e, kDown));
    }
  }
}

// DeepSeek-V4: NVFP4 routed experts, the MTP layer's experts in MXFP4: each layer listed and
// imported in its own format, the MXFP4 bytes as stored (w1 -> gate, w3 -> up, w2 -> down).
TEST(MixedFormats, EachLayerIsListedInItsOwnFormat) {
  const auto checkpoint =
      Checkpoint::open(fixtures_dir() / "formats" / "deepseek_v4_mixed.safetensors");
  const auto layers = find_moe_layers(checkpoint);
  ASSERT_EQ(layers.size(), 3u);
  int nvfp4 = 0;
  for (const auto& layer : layers) {
    if (layer.naming.prefix == "mtp.{layer}.ffn.experts.") {
      EXPECT_EQ(layer.format, ExpertFormat::kMxfp4);
      EXPECT_EQ(layer.num_experts, 2);
      EXPECT_FALSE(layer.has_biases);
      const MoeWeights w = import_moe_layer(checkpoint, layer, 1, 1);  // expert 1 alone
      EXPECT_EQ(w.format, WeightFormat::kMxfp4);
      const int64_t h = 64, i = 32, e = 1;
      for (int64_t b = 0; b < i * h / 2; ++b) {
        ASSERT_EQ(w.gate_up_values[b], weight_byte(0, e, kGate, b)) << b;
        ASSERT_EQ(w.gate_up_values[i * h / 2 + b], weight_byte(0, e, kUp, b)) << b;
        ASSERT_EQ(w.down_values[b], weight_byte(0, e, kDown, b)) << b;
      }
      for (int64_t b = 0; b < i * h / 32; ++b) {
        ASSERT_EQ(w.gate_up_scales[b], mx_scale_byte(0, e, kGate, b)) << b;
        ASSERT_EQ(w.gate_up_scales[i * h / 32 + b], mx_scale_byte(0, e, kUp, b)) << b;
        ASSERT_EQ(w.down_scales[b], mx_scale_byte(0, e, kDown, b)) << b;
      }
      EXPECT_EQ(w.gate_global_scale, std::vector<float>{1.0f});
    } else {
      EXPECT_EQ(layer.format, ExpertFormat::kNvfp4ModelOpt);
      EXPECT_EQ(layer.naming.gate, "w1");
      EXPECT_EQ(import_moe_layer(checkpoint, layer, 0, 2).num_experts, 2);
      ++nvfp4;
    }
  }
  EXPECT_EQ(nvfp4, 2);
  const auto fp8 =
      find_moe_layers(Checkpoint::open(fixtures_dir() / "formats" / "fp8_experts.safetensors"));
  ASSERT_EQ(fp8.size(), 1u);
  EXPECT_EQ(fp8[0].format, ExpertFormat::kUnsupported);
  EXPECT_EQ(fp8[0].format_name(), "unsupported: F8_E4M3 weights with weight_scale_inv");
}

// One thing wrong in each: a missing expert, a NaN or negative scale, a transposed or mistyped
// tensor, a configuration that declares another format. Each is refused naming what is wrong.
TEST(MalformedFormats, EveryOneIsRefusedNamingTheProblem) {
  const fs::path dir = fixtures_dir() / "malformed_formats";
  std::ifstream in(dir / "expected.json");
  const auto expected = nlohmann::json::parse(in);
  ASSERT_GE(expected.size(), 18u);
  for (const auto& [name, message] : expected.items()) {
    SCOPED_TRACE(name);
    try {
      find_moe_layers(Checkpoint::open(dir / name));
      ADD_FAILURE() << name << " was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidFile);
      const std::string what = e.what();
      EXPECT_NE(what.find(message.get<std::string>()), std::string::npos) << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    }
  }
}

TEST(ExpertNames, EveryFormatAndLayoutNamesItsTensors) {
  const auto hf = ExpertNaming::hf();
  const auto fused = ExpertNaming::fused();
  using F = ExpertFormat;
  using P = nvfp4moe::Projection;
  using R = TensorRole;
  EXPECT_EQ(expert_tensor_name(F::kNvfp4ModelOpt, hf, 3, 17, P::kGate, R::kBlockScales),
            "model.layers.3.mlp.experts.17.gate_proj.weight_scale");
  EXPECT_EQ(expert_tensor_name(F::kNvfp4CompressedTensors, hf, 3, 17, P::kDown, R::kValues),
            "model.layers.3.mlp.experts.17.down_proj.weight_packed");
  EXPECT_EQ(expert_tensor_name(F::kNvfp4CompressedTensors, hf, 0, 1, P::kUp, R::kInputScale),
            "model.layers.0.mlp.experts.1.up_proj.input_global_scale");
  EXPECT_EQ(expert_tensor_name(F::kNvfp4ModelOpt, fused, 2, 5, P::kUp, R::kValues),
            "model.layers.2.mlp.experts.gate_up_proj");
  EXPECT_EQ(expert_tensor_name(F::kNvfp4ModelOpt, fused, 2, 5, P::kDown, R::kGlobalScale),
            "model.layers.2.mlp.experts.down_proj_weight_scale_2");
  EXPECT_EQ(expert_tensor_name(F::kUnquantized, ExpertNaming::deepseek(), 1, 0, P::kUp, R::kValues),
            "layers.1.ffn.experts.0.w3.weight");
}

// gpt-oss: fused MXFP4 experts with alternating gate/up rows and bf16 biases, against the
// weights Hugging Face's own gpt-oss code dequantizes from the same file (the fixture writer
// stores them: tests/fixtures/make_fixtures.py), bit for bit, for every expert and a slice.
TEST(GptOss, ImportsWhatHuggingFaceDequantizes) {
  const auto checkpoint = Checkpoint::open(fixtures_dir() / "formats" / "gpt_oss");
  const auto expected =
      Checkpoint::open(fixtures_dir() / "formats" / "gpt_oss_expected.safetensors");
  const auto implied = read_expert_activation(checkpoint);
  ASSERT_TRUE(implied.has_value());
  EXPECT_EQ(implied->activation, Activation::kSwigluOai);
  EXPECT_EQ(implied->swiglu_limit, 7.0f);
  const auto layers = find_moe_layers(checkpoint);
  ASSERT_EQ(layers.size(), 2u);
  const auto floats = [&](const std::string& name) {
    const auto bytes = expected.bytes(name);
    std::vector<float> values(bytes.size() / 4);
    std::memcpy(values.data(), bytes.data(), bytes.size());
    return values;
  };
  for (const MoeLayerInfo& layer : layers) {
    SCOPED_TRACE(layer.layer);
    EXPECT_EQ(layer.format, ExpertFormat::kMxfp4);
    EXPECT_TRUE(layer.has_biases);
    EXPECT_TRUE(layer.gate_up_interleaved);
    ASSERT_EQ(layer.num_experts, 4);
    ASSERT_EQ(layer.hidden, 64);
    ASSERT_EQ(layer.intermediate, 32);
    const std::string prefix = "layers." + std::to_string(layer.layer) + ".";
    const auto gate_up = floats(prefix + "gate_up"), down = floats(prefix + "down");
    const auto gate_up_bias = floats(prefix + "gate_up_bias");
    const auto down_bias = floats(prefix + "down_bias");
    for (const auto& [first, count] : {std::pair{0, 4}, std::pair{1, 2}}) {
      const MoeWeights w = import_moe_layer(checkpoint, layer, first, count);
      const MoeWeightsView v = w.view();
      std::vector<float> row(64);
      for (int64_t n = 0; n < count; ++n) {
        const int64_t e = first + n;
        for (int64_t r = 0; r < 64; ++r) {  // gate rows 0..31, up rows 32..63
          decode_mxfp4_row(v.gate_up_values + (n * 64 + r) * 32,
                           v.gate_up_scales + (n * 64 + r) * 2, 64, row.data());
          for (int64_t c = 0; c < 64; ++c) {
            ASSERT_EQ(row[c], gate_up[(e * 64 + r) * 64 + c]) << "expert " << e << " row " << r;
          }
          ASSERT_EQ(w.gate_up_bias[n * 64 + r], gate_up_bias[e * 64 + r]);
        }
        for (int64_t r = 0; r < 64; ++r) {
          decode_mxfp4_row(v.down_values + (n * 64 + r) * 16, v.down_scales + (n * 64 + r), 32,
                           row.data());
          for (int64_t c = 0; c < 32; ++c) {
            ASSERT_EQ(row[c], down[(e * 64 + r) * 32 + c]) << "expert " << e << " row " << r;
          }
          ASSERT_EQ(w.down_bias[n * 64 + r], down_bias[e * 64 + r]);
        }
      }
    }
  }
}

}  // namespace
}  // namespace nvfp4moe
