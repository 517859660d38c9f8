// The closed-form contents of the fixture checkpoints (tests/fixtures/make_fixtures.py writes
// them with the official safetensors package; these recompute every byte it wrote).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

namespace nvfp4moe::testing {

inline std::filesystem::path fixtures_dir() {
  const char* dir = std::getenv("NVFP4MOE_FIXTURES");
  if (dir == nullptr) {
    ADD_FAILURE() << "NVFP4MOE_FIXTURES is not set; run the tests through ctest, which makes "
                     "the fixtures first";
    return {};
  }
  return dir;
}

enum Projection { kGate = 0, kUp = 1, kDown = 2 };

inline uint8_t weight_byte(int layer, int expert, int projection, int64_t i) {
  return static_cast<uint8_t>((i * 31 + expert * 7 + projection * 13 + layer) & 0xFF);
}

inline uint8_t scale_byte(int layer, int expert, int projection, int64_t i) {
  return static_cast<uint8_t>(0x30 + (i + expert + projection + layer) % 0x30);
}

// E8M0 codes 118..130 of the DeepSeek-V4 MXFP4 fixture.
inline uint8_t mx_scale_byte(int layer, int expert, int projection, int64_t i) {
  return static_cast<uint8_t>(118 + (i + expert + projection + layer) % 13);
}

inline float global_scale(int layer, int expert, int projection) {
  return static_cast<float>(0.001 * (1 + expert) + 0.0003 * projection + 0.0001 * layer);
}

inline float input_scale(int layer, int expert, int projection) {
  return static_cast<float>(0.01 * (1 + expert) + 0.002 * projection + 0.0005 * layer);
}

}  // namespace nvfp4moe::testing
