// libFuzzer target for the parsers of untrusted checkpoint files. The first byte chooses:
//   even: a safetensors file (the rest of the input) must either parse into a header whose
//         every tensor lies inside the input and tiles the data section, or throw Error;
//   odd:  a model.safetensors.index.json must either parse into a weight map of plain file
//         names, or throw Error.
// Crashes, hangs, sanitizer reports and other exceptions are findings.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string_view>

#include "nvfp4moe/checkpoint.hpp"
#include "nvfp4moe/error.hpp"

namespace {

void fuzz_safetensors(std::span<const std::byte> bytes) {
  const nvfp4moe::SafetensorsHeader header = nvfp4moe::parse_safetensors(bytes, "fuzz");
  if (header.data_offset + header.data_size != bytes.size()) std::abort();
  uint64_t covered = 0;
  for (const auto& tensor : header.tensors) {
    // Sorted, contiguous, inside the file.
    if (tensor.begin != covered || tensor.end < tensor.begin || tensor.end > header.data_size) {
      std::abort();
    }
    covered = tensor.end;
    if (tensor.end > tensor.begin) {  // touch the first and last byte the header promises
      volatile std::byte first = bytes[header.data_offset + tensor.begin];
      volatile std::byte last = bytes[header.data_offset + tensor.end - 1];
      (void)first;
      (void)last;
    }
    if (header.find(tensor.name) != &tensor) std::abort();
  }
  if (covered != header.data_size) std::abort();
}

void fuzz_index(std::string_view text) {
  for (const auto& [tensor, shard] : nvfp4moe::parse_safetensors_index(text, "fuzz")) {
    if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos) {
      std::abort();  // an index must not reach outside its directory
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto rest = std::span(reinterpret_cast<const std::byte*>(data) + 1, size - 1);
  try {
    if (data[0] % 2 == 0) {
      fuzz_safetensors(rest);
    } else {
      fuzz_index(std::string_view(reinterpret_cast<const char*>(rest.data()), rest.size()));
    }
  } catch (const nvfp4moe::Error&) {
  }
  return 0;
}
