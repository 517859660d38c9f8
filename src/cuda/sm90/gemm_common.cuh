// Pieces both grouped GEMM kernels share: which tile a block computes, the token (B) loader into
// the 128-byte-swizzled shared-memory ring, the weight (A) chunk loads, and the epilogue of one
// (row pair, token) result.
//
// B stage layout, both kernels: rows of 64 bf16 (128 B), one per token, with the 16-byte chunk c
// of row r stored at chunk position c ^ (r & 7). ldmatrix reads it without bank conflicts, and
// it is exactly wgmma's 128-byte swizzle when a stage starts 1024-byte aligned.
#pragma once

#include <cstdint>

#include "core/activation.hpp"
#include "cuda/sm90/gemm_params.hpp"
#include "cuda/sm90/nvfp4_decode.cuh"
#include "cuda/sm90/prepared_layout.hpp"
#include "cuda/sm90/ptx.cuh"
#include "nvfp4moe/format.hpp"

namespace nvfp4moe::cuda {

// alpha for one expert: g * weight_scale, in fp32 like the CPU reference, times the decode's
// compensation (kDecodeCompensation, exact).
__device__ __forceinline__ float activation_global_scale(const GemmParams& p, int expert) {
  switch (p.act_source) {
    case ActivationScaleSource::kOne:
      return 1.0f;
    case ActivationScaleSource::kPerExpert:
      return p.act_scale[expert];
    case ActivationScaleSource::kFromAmax:
      return nvfp4_dynamic_global_scale(__uint_as_float(*p.act_amax_bits));
  }
  return 1.0f;
}

struct BlockTile {
  int expert = 0;
  int row_begin = 0;  // first sorted position
  int rows = 0;       // tokens in the tile; 0: nothing to do
};

// The tile of blockIdx.y: from the router's device table, or implicit tiles of expert 0.
__device__ __forceinline__ BlockTile block_tile(const GemmParams& p, int tile_tokens) {
  BlockTile tile;
  if (p.tiles != nullptr) {
    if (static_cast<int>(blockIdx.y) >= *p.num_tiles) return tile;
    const GemmTile t = p.tiles[blockIdx.y];
    tile.expert = t.expert;
    tile.row_begin = t.row_begin;
    tile.rows = t.rows;
  } else {
    tile.row_begin = static_cast<int>(blockIdx.y) * tile_tokens;
    tile.rows = max(0, min(tile_tokens, p.implicit_rows - tile.row_begin));
  }
  return tile;
}

// Copies a tile's tokens, one 64-wide K chunk per stage, with cp.async. Each thread owns fixed
// (row, 16-byte chunk) pairs: its chunk column is the same for all of them and, with threads a
// multiple of 64, so is the swizzle (row & 7), so per pair only the source is kept: the row's
// address where a thread has at most two pairs (the mma.sync tiles, whose warps issue the copies
// between their MMAs: a chunk then costs an add per copy), else its 16-byte piece of B in 32 bits
// (the wgmma producer warpgroups, which have few registers: a chunk costs a multiply-add per copy).
// Rows past the tile and K past the end are zero-filled.
template <int kTileTokens, int kThreads>
struct TokenLoader {
  static constexpr int kPairs = kTileTokens * 8;
  static constexpr int kLoadsPerThread = (kPairs + kThreads - 1) / kThreads;
  static constexpr int kRowStep = kThreads / 8;  // rows between a thread's pairs
  static constexpr int kStageElements = kTileTokens * kChunkK;
  static constexpr bool kKeepAddresses = kLoadsPerThread <= 2;
  static_assert(kThreads % 64 == 0, "the swizzle of a thread's rows must not change");

  // kKeepAddresses: the row at k_in_chunk, or null (no token: zero-filled).
  const uint16_t* source[kLoadsPerThread];
  // Else: the 16-byte piece of B (from p.b) of the row at k_in_chunk, with kNoRow set where the
  // pair has no token (the copy then reads nothing, from row 0).
  static constexpr uint32_t kNoRow = 0x80000000u;
  uint32_t source_piece[kLoadsPerThread];
  int first_offset;  // element offset in a stage of the first pair
  int k_in_chunk;
  int thread;

  // `thread`: this thread's index among the kThreads that share the copies.
  __device__ __forceinline__ TokenLoader(const GemmParams& p, const BlockTile& tile,
                                         int thread = static_cast<int>(threadIdx.x))
      : thread(thread) {
    const int c = thread % 8;
    const int r0 = thread / 8;
    k_in_chunk = c * 8;
    first_offset = r0 * kChunkK + ((c ^ (r0 & 7)) * 8);
#pragma unroll
    for (int i = 0; i < kLoadsPerThread; ++i) {
      const int r = r0 + i * kRowStep;
      int64_t row = -1;
      if (r < kTileTokens && r < tile.rows) {
        const int position = tile.row_begin + r;
        row = p.gather ? p.gather[position] / p.gather_divisor : position;
      }
      if constexpr (kKeepAddresses) {
        source[i] = row < 0 ? nullptr : p.b + row * p.b_row_stride + k_in_chunk;
      } else {
        // Rows are 16-byte aligned; launch_grouped_gemm keeps B under 32 GiB (2^31 pieces).
        source_piece[i] = row < 0 ? kNoRow | uint32_t(k_in_chunk / 8)
                                  : static_cast<uint32_t>((row * p.b_row_stride + k_in_chunk) / 8);
      }
    }
  }

  __device__ __forceinline__ void load(const GemmParams& p, int chunk, uint16_t* stage) const {
    const int k0 = chunk * kChunkK + k_in_chunk;
    const bool k_valid = k0 < p.k;
    // Past K the copies read nothing; their address stays at the row's start.
    const uint16_t* chunk_base = k_valid ? p.b + chunk * kChunkK : p.b;
#pragma unroll
    for (int i = 0; i < kLoadsPerThread; ++i) {
      if (kPairs % kThreads != 0 && thread + i * kThreads >= kPairs) {
        continue;
      }
      uint16_t* to = stage + first_offset + i * kRowStep * kChunkK;
      if constexpr (kKeepAddresses) {
        const bool valid = source[i] != nullptr && k_valid;
        ptx::cp_async_16(to, valid ? source[i] + chunk * kChunkK : p.b, valid);
      } else {
        // Opaque, so ptxas cannot hoist each pair's 64-bit row address out of the chunk loop
        // (16 more registers: the 128-token tiles' 40-register producer spilled).
        uint32_t piece = source_piece[i];
        asm volatile("" : "+r"(piece));
        const bool valid = (piece & kNoRow) == 0 && k_valid;
        ptx::cp_async_16(to, ptx::add_pieces(chunk_base, piece & ~kNoRow), valid);
      }
    }
  }
};

// One lane's weight bytes for one 64-wide chunk of one 16-row group (prepared_layout.hpp).
struct WeightChunk {
  uint4 codes;   // a word of 8 nibbles per k16 step
  uint2 scales;  // the scale words of rows g (x) and g + 8 (y)
};

// The lane's pointers into one row group's chunks.
struct WeightStream {
  const uint4* codes = nullptr;
  const uint2* scales = nullptr;
  bool valid = false;
  int k_chunks = 0;

  static __device__ __forceinline__ WeightStream make(const GemmParams& p, int expert, int group,
                                                      int lane) {
    WeightStream w;
    w.valid = group < p.row_groups;
    w.k_chunks = p.k_chunks;
    const int64_t g = w.valid ? group : 0;
    w.codes = static_cast<const uint4*>(p.weights.codes) + expert * (p.expert_code_bytes / 16) +
              g * p.k_chunks * 32 + lane;
    w.scales = static_cast<const uint2*>(p.weights.scales) + expert * (p.expert_scale_bytes / 8) +
               g * p.k_chunks * 8 + lane / 4;
    return w;
  }

  __device__ __forceinline__ WeightChunk load(int chunk) const {
    if (valid && chunk < k_chunks) {
      return {ptx::load_global_nc(codes + chunk * 32), ptx::load_global_nc(scales + chunk * 8)};
    }
    return {make_uint4(0, 0, 0, 0), make_uint2(0, 0)};
  }
};

// The four A registers of k16 step `step` (a constant after unrolling) of a chunk
// (nvfp4_decode.cuh). The row scales of all four steps come from one set of operations, which
// the compiler shares between the unrolled steps.
__device__ __forceinline__ void decode_step(const WeightChunk& w, int step, uint32_t (&a)[4]) {
  const uint32_t word = step == 0   ? w.codes.x
                        : step == 1 ? w.codes.y
                        : step == 2 ? w.codes.z
                                    : w.codes.w;
  decode_a_fragment(word, row_scales(w.scales.x), row_scales(w.scales.y), step, a);
}

struct EpilogueScales {
  float alpha = 0.0f;     // gate / down / linear rows
  float alpha_up = 0.0f;  // up rows (gate/up epilogues)
};

template <Epilogue kEpilogue>
__device__ __forceinline__ EpilogueScales epilogue_scales(const GemmParams& p, int expert) {
  const float act_g = activation_global_scale(p, expert);
  EpilogueScales s;
  s.alpha = act_g * p.weight_scale[expert] * kDecodeCompensation;
  if constexpr (kEpilogue == Epilogue::kGateUpBf16 || kEpilogue == Epilogue::kGateUpF32) {
    s.alpha_up = act_g * p.weight_scale_up[expert] * kDecodeCompensation;
  }
  return s;
}

// The results of row g and row g + 8 of 16-row group `group` for the token at sorted position
// `position`. For the gate/up GEMM those are gate and up of feature 8 * group + g.
template <Epilogue kEpilogue>
__device__ __forceinline__ void store_row_pair(const GemmParams& p, const EpilogueScales& s,
                                               int group, int g, int64_t position, float row_g,
                                               float row_g8) {
  if constexpr (kEpilogue == Epilogue::kGateUpBf16 || kEpilogue == Epilogue::kGateUpF32) {
    const float h =
        gated_activation(s.alpha * row_g, s.alpha_up * row_g8, p.clamped, p.swiglu_limit);
    const int64_t index = position * p.out_row_stride + group * 8 + g;
    if constexpr (kEpilogue == Epilogue::kGateUpBf16) {
      static_cast<uint16_t*>(p.out)[index] = float_to_bf16(h);
    } else {
      static_cast<float*>(p.out)[index] = h;
    }
  } else if constexpr (kEpilogue == Epilogue::kDownCombine) {
    const int32_t slot = p.sorted_slot[position];
    const float weight = p.topk_weights[slot];
    float* out = static_cast<float*>(p.out) + int64_t(slot / p.top_k) * p.out_row_stride;
    atomicAdd(out + group * 16 + g, weight * (s.alpha * row_g));
    atomicAdd(out + group * 16 + g + 8, weight * (s.alpha * row_g8));
  } else {
    uint16_t* out = static_cast<uint16_t*>(p.out) + position * p.out_row_stride;
    out[group * 16 + g] = float_to_bf16(s.alpha * row_g);
    out[group * 16 + g + 8] = float_to_bf16(s.alpha * row_g8);
  }
}

}  // namespace nvfp4moe::cuda
