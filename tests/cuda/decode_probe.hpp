#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace nvfp4moe::testing {

// Decodes each (E2M1 code, prepared scale code) pair on the device as the GEMM does; 8 bf16
// results per pair. Returns an error description, or empty on success.
std::string run_decode_probe(const std::vector<uint8_t>& codes,
                             const std::vector<uint8_t>& scale_codes, std::vector<uint16_t>& out);

}  // namespace nvfp4moe::testing
