// The prepared NVFP4 weight layout the Hopper mma.sync GEMM reads (host and device code).
//
// The GEMM computes D^T = W . X^T with the weights as the A operand of mma.m16n8k16, decoded
// from NVFP4 straight into registers. Each warp owns 16-row groups of W and walks K in 64-wide
// chunks (4 k16 steps). Preparation reorders the checkpoint's bytes so that one 16-byte load
// per lane per chunk brings exactly the codes that lane's A fragments need:
//
//   codes  [row_group][k_chunk][lane 0..31][k16 step 0..3] -> one 32-bit word of 8 nibbles
//   scales [row_group][k_chunk][lane group g 0..7][row g, row g+8] -> one 32-bit word per row
//
// Word of lane (g = lane/4, t = lane%4) for k16 step s: the 8 nibbles of its four A registers,
//
//   A register r0 = (row g,   k 2t, 2t+1)    r1 = (row g+8, k 2t, 2t+1)
//              r2 = (row g,   k 2t+8, 2t+9)  r3 = (row g+8, k 2t+8, 2t+9)
//   lo = the even k (bits 15:0 of the register), hi = the odd k (bits 31:16); k counts from
//   16*s within the chunk.
//
// The decode wants each register's two nibbles at bf16 bits 15 (sign) and 8:6 (magnitude m2 m1
// m0) of its halves (nvfp4_decode.cuh); the word stores them where one operation apart from the
// final mask gets them there (r = register, lo/hi = its half, s = sign):
//
//   bit  31  30  29  28  27  26  25  24  23  22  21  20  19  18  17  16
//        r0  r1  r1  r1  r2  r2  r2  r0  r0  r0  r1  r3  r3  r2  r3  r3
//        hi  hi  hi  hi  hi  hi  hi  hi  hi  hi  lo  hi  hi  lo  hi  hi
//        s   m2  m1  m0  m2  m1  m0  m2  m1  m0  s   m0  s   s   m2  m1
//
//   bit  15  14  13  12  11  10   9   8   7   6   5   4   3   2   1   0
//        r0  r1  r1  r1  r2  r2  r2  r0  r0  r0  r1  r3  r3  r2  r3  r3
//        lo  lo  lo  lo  lo  lo  lo  lo  lo  lo  hi  lo  lo  hi  lo  lo
//        s   m2  m1  m0  m2  m1  m0  m2  m1  m0  s   m0  s   s   m2  m1
//
//   r0 = word & mask, r1 = rotr(word, 6) & mask, r2 = rotr(word, 3) & mask, with mask = s at 15
//   and m at 8:6 of each half; r3's bits (the eight left over: no fourth rotation of the pattern
//   fits) are masked out and copied to three places at once by one multiply, (word & 0x001B001B)
//   * (2^2 + 2^7 + 2^12), whose 23 copied bits land on distinct places (no carries) and put each
//   of r3's bits at its place exactly once. 8 integer operations per 8 weights.
//
// Scales are re-encoded ("prepared scale codes") so that a mask and an OR turn a code into a
// bf16: code = (log2(s) + 9) << 3 | mantissa, where s = 2^log2 * (1 + mantissa/8) covers every
// E4M3 value (subnormals renormalized) in 8 bits; as bf16 bits, code << 4 | 0x7000 (exponent
// 224 + log2(s) + 9, whose top three bits the code never reaches) is s * 2^106. A row's word
// holds the codes of the chunk's four k16 steps, byte s for step s, rotated left by 4 bits, so
// that steps 0 and 2 already sit at bf16 bits 11:4 of its halves and steps 1 and 3 after one
// rotation by a byte (nvfp4_decode.cuh). A block whose E4M3 scale is 0 has its codes set to 0
// (its values are 0 whatever the scale), so its scale code can be 0 as well. K is padded to a
// multiple of 64 with zero codes.
//
// For the gate/up GEMM, each 16-row group holds gate rows 8G..8G+7 then up rows 8G..8G+7, so a
// lane's accumulators for row g and row g+8 are gate and up of the same feature.
#pragma once

#include <cstdint>

#include "nvfp4moe/format.hpp"  // NVFP4MOE_HD, codecs

namespace nvfp4moe::cuda {

inline constexpr int kRowsPerGroup = 16;
inline constexpr int kChunkK = 64;
inline constexpr int kCodeBytesPerChunk = 512;  // 16 rows x 64 codes / 2
inline constexpr int kScaleBytesPerChunk = 64;  // 16 rows x 4 scales

struct PreparedShape {
  int64_t rows = 0;  // multiple of 16
  int64_t k = 0;     // multiple of 16

  NVFP4MOE_HD int64_t row_groups() const { return rows / kRowsPerGroup; }
  NVFP4MOE_HD int64_t k_chunks() const { return (k + kChunkK - 1) / kChunkK; }
  NVFP4MOE_HD int64_t code_bytes() const { return row_groups() * k_chunks() * kCodeBytesPerChunk; }
  NVFP4MOE_HD int64_t scale_bytes() const {
    return row_groups() * k_chunks() * kScaleBytesPerChunk;
  }
};

// Where the nibble of A register `reg` (0..3), half `odd` (0: lo, 1: hi) of lane `lane`'s word
// for k16 step `step` comes from, within a 16-row group and a 64-wide chunk.
struct NibbleSource {
  int row;  // 0..15
  int k;    // 0..63
};
NVFP4MOE_HD NibbleSource nibble_source(int lane, int step, int reg, int odd) {
  const int g = lane >> 2, t = lane & 3;
  return {g + 8 * (reg & 1), step * 16 + 2 * t + 8 * (reg >> 1) + odd};
}

// The nibble (bit 3 sign, bits 2:0 magnitude) of A register `reg`, half `odd`, placed at its bits
// of the word (the table above).
NVFP4MOE_HD uint32_t place_nibble(uint32_t nibble, int reg, int odd) {
  // Word bits of magnitude bits 0, 1, 2 and the sign, per register and half.
  constexpr uint8_t kBits[4][2][4] = {{{6, 7, 8, 15}, {22, 23, 24, 31}},
                                      {{12, 13, 14, 21}, {28, 29, 30, 5}},
                                      {{9, 10, 11, 18}, {25, 26, 27, 2}},
                                      {{4, 0, 1, 3}, {20, 16, 17, 19}}};
  uint32_t word = 0;
  for (int b = 0; b < 4; ++b) word |= ((nibble >> b) & 1u) << kBits[reg][odd][b];
  return word;
}

// Scale code j of lane group g (word j / 4, step j % 4): row and k16 step within the group and
// chunk.
NVFP4MOE_HD NibbleSource scale_source(int g, int j) { return {g + 8 * (j >> 2), j & 3}; }

// A row's scale word from its four prepared scale codes (byte s: step s).
NVFP4MOE_HD uint32_t prepared_scale_word(uint32_t codes) { return (codes << 4) | (codes >> 28); }

// The prepared scale code of an E4M3 scale (finite, >= 0).
NVFP4MOE_HD uint8_t prepared_scale_code(uint8_t e4m3) {
  const int exponent = (e4m3 >> 3) & 0xF;
  int mantissa = e4m3 & 7;
  if (exponent != 0) return static_cast<uint8_t>(((exponent + 2) << 3) | mantissa);
  if (mantissa == 0) return 0;
  // Subnormal m * 2^-9: log2 = p - 9 with p = floor(log2 m); shift the rest into 3 bits.
  const int p = mantissa >= 4 ? 2 : mantissa >= 2 ? 1 : 0;
  mantissa = (mantissa << (3 - p)) & 7;
  return static_cast<uint8_t>((p << 3) | mantissa);
}

// The weight products come out of the decode scaled by 2^-20 (2^-126 from the code trick times
// 2^106 from the scale); the epilogue multiplies alpha by this to undo it exactly.
inline constexpr float kDecodeCompensation = 1048576.0f;

}  // namespace nvfp4moe::cuda
