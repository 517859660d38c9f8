// The grouped NVFP4 x bf16 GEMM on mma.sync, "swap AB": weights are the A operand (M = output
// features), tokens the B operand (N), so an expert with 1 token wastes at most 7 of 8 columns.
//
//   block   = kWarps warps; grid.x walks row blocks of the expert's matrix, grid.y the tiles
//             (expert, 8..64 consecutive sorted tokens) the router built on the device
//   A       = prepared NVFP4 weights, 16 bytes per lane per 64-wide K chunk straight from global
//             memory into registers (one chunk prefetched), decoded exactly to bf16 fragments
//   B       = the tile's tokens, kStages-deep cp.async ring in shared memory, rows of 64 bf16
//             (128 B) with the 16-byte chunks XOR-swizzled by row so ldmatrix is conflict-free:
//
//                chunk c of token row r is stored at chunk position c ^ (r & 7)
//
//   epilogue = per Epilogue: fused gated activation, weighted combine, or plain store
#pragma once

#include <cstdint>

#include "core/activation.hpp"
#include "cuda/common/nvfp4_decode.cuh"
#include "cuda/common/prepared_layout.hpp"
#include "cuda/common/ptx.cuh"
#include "cuda/gemm/gemm_params.hpp"
#include "nvfp4moe/format.hpp"

namespace nvfp4moe::cuda {

template <int kWarps_, int kGroupsPerWarp_, int kTileTokens_, int kAPrefetch_>
struct GemmConfig {
  static constexpr int kWarps = kWarps_;
  static constexpr int kGroupsPerWarp = kGroupsPerWarp_;
  static constexpr int kTileTokens = kTileTokens_;
  // Weight chunks in flight per warp beyond the one being computed: deeper for few tokens,
  // where the loop is a stream of weight bytes and latency must be covered by loads in flight.
  static constexpr int kAPrefetch = kAPrefetch_;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kStages = 3;
  static constexpr int kNTiles = kTileTokens / 8;
  static constexpr int kStageElements = kTileTokens * kChunkK;  // bf16 per stage
  static constexpr int kSmemBytes = kStages * kStageElements * 2;
  static constexpr int kLoadsPerThread = (kTileTokens * 8 + kThreads - 1) / kThreads;
  static_assert(kTileTokens == 8 || kTileTokens % 16 == 0,
                "tokens per tile: 8, or a multiple of 16 (ldmatrix.x4 loads two n8 tiles)");
  static_assert(kSmemBytes <= 48 * 1024, "the B ring must fit in static shared memory");
  static_assert(kGroupsPerWarp * kNTiles * 4 <= 128, "accumulators would spill registers");
  static_assert(kAPrefetch >= 1 && kAPrefetch <= 8, "1 to 8 weight chunks in flight");
};

// alpha for one expert: g * weight_scale, in fp32 like the CPU reference, times the decode's
// 2^16 compensation (exact).
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

template <class Cfg, Epilogue kEpilogue>
__global__ void __launch_bounds__(Cfg::kThreads) grouped_gemm_kernel(const GemmParams p) {
  __shared__ alignas(128) uint16_t smem_b[Cfg::kStages * Cfg::kStageElements];

  // ---- Which tile -------------------------------------------------------------------------
  int expert = 0, row_begin = 0, rows = 0;
  if (p.tiles != nullptr) {
    if (static_cast<int>(blockIdx.y) >= *p.num_tiles) return;
    const GemmTile tile = p.tiles[blockIdx.y];
    expert = tile.expert;
    row_begin = tile.row_begin;
    rows = tile.rows;
  } else {
    row_begin = static_cast<int>(blockIdx.y) * Cfg::kTileTokens;
    rows = min(Cfg::kTileTokens, p.implicit_rows - row_begin);
    if (rows <= 0) return;
  }

  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;
  const int group0 = (static_cast<int>(blockIdx.x) * Cfg::kWarps + warp) * Cfg::kGroupsPerWarp;

  // ---- B loader: each thread copies fixed (row, 16-byte chunk) pairs of every stage ---------
  const uint16_t* load_source[Cfg::kLoadsPerThread];
  int load_offset[Cfg::kLoadsPerThread];
  int load_k[Cfg::kLoadsPerThread];
  bool load_row_valid[Cfg::kLoadsPerThread];
#pragma unroll
  for (int i = 0; i < Cfg::kLoadsPerThread; ++i) {
    const int index = static_cast<int>(threadIdx.x) + i * Cfg::kThreads;
    const int r = index / 8, c = index % 8;
    load_row_valid[i] = index < Cfg::kTileTokens * 8 && r < rows;
    int64_t source_row = 0;
    if (load_row_valid[i]) {
      source_row = p.gather ? p.gather[row_begin + r] / p.gather_divisor : row_begin + r;
    }
    load_source[i] = p.b + source_row * p.b_row_stride + c * 8;
    load_offset[i] = r * kChunkK + ((c ^ (r & 7)) * 8);
    load_k[i] = c * 8;
  }
  auto load_stage = [&](int chunk, int stage) {
#pragma unroll
    for (int i = 0; i < Cfg::kLoadsPerThread; ++i) {
      const int index = static_cast<int>(threadIdx.x) + i * Cfg::kThreads;
      if (index >= Cfg::kTileTokens * 8) continue;
      const int k0 = chunk * kChunkK + load_k[i];
      const bool valid = load_row_valid[i] && k0 < p.k;
      ptx::cp_async_16(smem_b + stage * Cfg::kStageElements + load_offset[i],
                       valid ? static_cast<const void*>(load_source[i] + chunk * kChunkK)
                             : static_cast<const void*>(p.b),
                       valid);
    }
  };

  // ---- A: this warp's row groups ------------------------------------------------------------
  const auto* codes = static_cast<const uint4*>(p.codes) + expert * (p.expert_code_bytes / 16);
  const auto* scales = static_cast<const uint2*>(p.scales) + expert * (p.expert_scale_bytes / 8);
  bool group_valid[Cfg::kGroupsPerWarp];
  const uint4* group_codes[Cfg::kGroupsPerWarp];
  const uint2* group_scales[Cfg::kGroupsPerWarp];
#pragma unroll
  for (int i = 0; i < Cfg::kGroupsPerWarp; ++i) {
    const int group = group0 + i;
    group_valid[i] = group < p.row_groups;
    group_codes[i] = codes + int64_t(group_valid[i] ? group : 0) * p.k_chunks * 32 + lane;
    group_scales[i] = scales + int64_t(group_valid[i] ? group : 0) * p.k_chunks * 8 + g;
  }
  // A chunks live in a ring of kRing slots. The chunk loop below is unrolled by kRing, so each
  // slot is a fixed set of registers and a load is only waited on when its chunk is used; a
  // queue shifted every iteration would make each register move wait for its load (measured:
  // a 3-deep queue ran exactly like 1-deep).
  constexpr int kRing = Cfg::kAPrefetch + 1;
  uint4 a_codes[kRing][Cfg::kGroupsPerWarp];
  uint2 a_scales[kRing][Cfg::kGroupsPerWarp];
  auto load_a = [&](int chunk, uint4(&codes_out)[Cfg::kGroupsPerWarp],
                    uint2(&scales_out)[Cfg::kGroupsPerWarp]) {
#pragma unroll
    for (int i = 0; i < Cfg::kGroupsPerWarp; ++i) {
      if (group_valid[i] && chunk < p.k_chunks) {
        codes_out[i] = ptx::load_global_nc(group_codes[i] + chunk * 32);
        scales_out[i] = ptx::load_global_nc(group_scales[i] + chunk * 8);
      } else {
        codes_out[i] = make_uint4(0, 0, 0, 0);
        scales_out[i] = make_uint2(0, 0);
      }
    }
  };

  float acc[Cfg::kGroupsPerWarp][Cfg::kNTiles][4];
#pragma unroll
  for (int i = 0; i < Cfg::kGroupsPerWarp; ++i)
#pragma unroll
    for (int n = 0; n < Cfg::kNTiles; ++n)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][n][j] = 0.0f;

  // One 64-wide chunk: decode this warp's A fragments, multiply by every token of the stage.
  auto compute_chunk = [&](const uint16_t* stage, const uint4(&codes)[Cfg::kGroupsPerWarp],
                           const uint2(&scales)[Cfg::kGroupsPerWarp]) {
#pragma unroll
    for (int step = 0; step < 4; ++step) {
      uint32_t a[Cfg::kGroupsPerWarp][4];
#pragma unroll
      for (int i = 0; i < Cfg::kGroupsPerWarp; ++i) {
        const uint32_t word = step == 0   ? codes[i].x
                              : step == 1 ? codes[i].y
                              : step == 2 ? codes[i].z
                                          : codes[i].w;
        const uint32_t scale_g = (scales[i].x >> (8 * step)) & 0xFFu;
        const uint32_t scale_g8 = (scales[i].y >> (8 * step)) & 0xFFu;
        decode_a_fragment(word, scale_pair(scale_g), scale_pair(scale_g8), a[i]);
      }
      if constexpr (Cfg::kTileTokens == 8) {
        // Matrices: tokens 0..7 x k lo, tokens 0..7 x k hi (lanes 16..31 repeat addresses).
        const int m = (lane / 8) & 1, r = lane % 8;
        const int chunk16 = step * 2 + m;
        uint32_t b[2];
        ptx::ldmatrix_x2(b, stage + r * kChunkK + ((chunk16 ^ (r & 7)) * 8));
#pragma unroll
        for (int i = 0; i < Cfg::kGroupsPerWarp; ++i) ptx::mma_bf16_16x8x16(acc[i][0], a[i], b);
      } else {
#pragma unroll
        for (int n = 0; n < Cfg::kNTiles; n += 2) {
          // Matrices: (tile n, k lo), (tile n, k hi), (tile n+1, k lo), (tile n+1, k hi).
          const int m = lane / 8, r = lane % 8;
          const int token = (n + (m >> 1)) * 8 + r;
          const int chunk16 = step * 2 + (m & 1);
          uint32_t b4[4];
          ptx::ldmatrix_x4(b4, stage + token * kChunkK + ((chunk16 ^ (token & 7)) * 8));
          const uint32_t b_lo[2] = {b4[0], b4[1]};
          const uint32_t b_hi[2] = {b4[2], b4[3]};
#pragma unroll
          for (int i = 0; i < Cfg::kGroupsPerWarp; ++i) {
            ptx::mma_bf16_16x8x16(acc[i][n], a[i], b_lo);
            ptx::mma_bf16_16x8x16(acc[i][n + 1], a[i], b_hi);
          }
        }
      }
    }
  };

  // ---- Main loop ------------------------------------------------------------------------------
#pragma unroll
  for (int s = 0; s < Cfg::kStages - 1; ++s) {
    if (s < p.k_chunks) load_stage(s, s);
    ptx::cp_async_commit();
  }
#pragma unroll
  for (int d = 0; d < Cfg::kAPrefetch; ++d) load_a(d, a_codes[d], a_scales[d]);

  for (int base = 0; base < p.k_chunks; base += kRing) {
#pragma unroll
    for (int u = 0; u < kRing; ++u) {
      const int chunk = base + u;
      if (chunk >= p.k_chunks) break;  // uniform across the block
      // Refill the slot of the chunk before this one, kAPrefetch chunks ahead.
      load_a(chunk + Cfg::kAPrefetch, a_codes[(u + Cfg::kAPrefetch) % kRing],
             a_scales[(u + Cfg::kAPrefetch) % kRing]);
      ptx::cp_async_wait<Cfg::kStages - 2>();
      __syncthreads();  // chunk's stage is visible; the stage refilled below is no longer read
      const int next = chunk + Cfg::kStages - 1;
      if (next < p.k_chunks) load_stage(next, next % Cfg::kStages);
      ptx::cp_async_commit();
      compute_chunk(smem_b + (chunk % Cfg::kStages) * Cfg::kStageElements, a_codes[u], a_scales[u]);
    }
  }
  ptx::cp_async_wait<0>();

  // ---- Epilogue ---------------------------------------------------------------------------
  // acc[i][n] = {(row g, token 2t), (row g, token 2t+1), (row g+8, token 2t), (row g+8, 2t+1)}
  const float act_g = activation_global_scale(p, expert);
  const float alpha = act_g * p.weight_scale[expert] * kDecodeCompensation;
  float alpha_up = 0.0f;
  if constexpr (kEpilogue == Epilogue::kGateUpBf16 || kEpilogue == Epilogue::kGateUpF32) {
    alpha_up = act_g * p.weight_scale_up[expert] * kDecodeCompensation;
  }
#pragma unroll
  for (int i = 0; i < Cfg::kGroupsPerWarp; ++i) {
    if (!group_valid[i]) continue;
    const int group = group0 + i;
#pragma unroll
    for (int n = 0; n < Cfg::kNTiles; ++n) {
#pragma unroll
      for (int col = 0; col < 2; ++col) {
        const int token = n * 8 + 2 * t + col;
        if (token >= rows) continue;
        const int64_t position = row_begin + token;
        if constexpr (kEpilogue == Epilogue::kGateUpBf16 || kEpilogue == Epilogue::kGateUpF32) {
          const float h = gated_activation(alpha * acc[i][n][col], alpha_up * acc[i][n][2 + col],
                                           p.clamped, p.swiglu_limit);
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
          atomicAdd(out + group * 16 + g, weight * (alpha * acc[i][n][col]));
          atomicAdd(out + group * 16 + g + 8, weight * (alpha * acc[i][n][2 + col]));
        } else {
          uint16_t* out = static_cast<uint16_t*>(p.out) + position * p.out_row_stride;
          out[group * 16 + g] = float_to_bf16(alpha * acc[i][n][col]);
          out[group * 16 + g + 8] = float_to_bf16(alpha * acc[i][n][2 + col]);
        }
      }
    }
  }
}

}  // namespace nvfp4moe::cuda
