#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace nvfp4moe::testing {

// Distance between the pairs whose codes fill consecutive places of a probe word.
inline constexpr int kProbeCodeStride = 127;

// Decodes each (E2M1 code, prepared scale code) pair on the device as the GEMM does; 32 bf16
// results per pair (8 per k16 step of a chunk, place j = 2 * register + half; place j takes the
// code of pair (i + kProbeCodeStride * j) % count, and step s the scale code of pair (i + s) %
// count). Returns an error description, or empty on success.
std::string run_decode_probe(const std::vector<uint8_t>& codes,
                             const std::vector<uint8_t>& scale_codes, std::vector<uint16_t>& out);

}  // namespace nvfp4moe::testing
