// libFuzzer target for the safetensors header parser: any input must either parse into a header
// whose every tensor lies inside the input, or throw nvfp4moe::Error. Crashes, sanitizer
// reports and other exceptions are findings.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "nvfp4moe/checkpoint.hpp"
#include "nvfp4moe/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto bytes = std::span(reinterpret_cast<const std::byte*>(data), size);
  try {
    const nvfp4moe::SafetensorsHeader header = nvfp4moe::parse_safetensors(bytes, "fuzz");
    for (const auto& tensor : header.tensors) {
      if (tensor.begin > tensor.end || tensor.end > header.data_size ||
          header.data_offset + header.data_size != size) {
        std::abort();  // the parser accepted a tensor outside the file
      }
      // Touch the first and last byte the header promises.
      if (tensor.end > tensor.begin) {
        volatile std::byte first = bytes[header.data_offset + tensor.begin];
        volatile std::byte last = bytes[header.data_offset + tensor.end - 1];
        (void)first;
        (void)last;
      }
    }
  } catch (const nvfp4moe::Error&) {
  }
  return 0;
}
