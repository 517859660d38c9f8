// The grouped NVFP4 x bf16 GEMM on Hopper's warpgroup MMA (sm_90a), for tiles of many tokens.
// Same "swap AB" as the mma.sync kernel: weights are the A operand (M = output features), the
// tile's tokens the B operand (N), so the prepared layout, the decode and the epilogues are
// shared (gemm_common.cuh).
//
//   block  = kWarpGroups warpgroups; warp w owns 16-row group blockIdx.x * kWarps + w, which is
//            rows 16 (w % 4).. of its warpgroup's 64-row A tile
//   A      = decoded exactly to bf16 straight into wgmma's register operand: the register
//            fragment of a warp in m64nNk16 is the mma.m16n8k16 A fragment, so decode_step
//            serves both. Two fragment sets alternate, so a chunk is decoded while the previous
//            chunk's MMAs run
//   B      = the tile's tokens in a kStages-deep cp.async ring, 128-byte swizzled rows that
//            wgmma reads through a descriptor; the tile is cut into kUnitN-token units and a
//            unit with no token is skipped, so a tile of up to kTileTokens costs what it holds
//            (rounded up to kUnitN)
//
// Per chunk c (64 of K), each warpgroup:
//   wait until at most one MMA group runs (chunk c-1), so chunk c-2's A registers and stage
//   are free -> decode chunk c -> cp.async wait for chunk c's stage, proxy fence, barrier ->
//   refill chunk c-2's stage with chunk c + kStages - 2 -> issue chunk c's MMAs, commit.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda/common/wgmma.cuh"
#include "cuda/gemm/gemm_common.cuh"

namespace nvfp4moe::cuda {

template <int kWarpGroups_, int kTileTokens_, int kUnitN_, int kStages_, int kAPrefetch_>
struct WgmmaConfig {
  static constexpr int kWarpGroups = kWarpGroups_;
  static constexpr int kTileTokens = kTileTokens_;
  static constexpr int kUnitN = kUnitN_;
  static constexpr int kStages = kStages_;
  static constexpr int kAPrefetch = kAPrefetch_;
  static constexpr int kWarps = 4 * kWarpGroups;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kUnits = kTileTokens / kUnitN;
  using Mma = wgmma::Mma<kUnitN>;
  using Loader = TokenLoader<kTileTokens, kThreads>;
  static constexpr int kStageElements = Loader::kStageElements;
  static constexpr int kStageBytes = kStageElements * 2;
  // The ring, plus slack to start it on a 1024-byte boundary (the swizzle's period).
  static constexpr int kSmemBytes = kStages * kStageBytes + 1024;
  static_assert(kTileTokens % kUnitN == 0, "a tile is whole N units");
  static_assert(kStageBytes % 1024 == 0, "each stage must start 1024-byte aligned");
  static_assert(kStages >= 3, "one stage in flight, two read by running MMAs");
  static_assert((kAPrefetch + 1) % 2 == 0,
                "the chunk loop is unrolled by the weight ring, which must alternate the two "
                "A fragment sets evenly");
};

template <class Cfg, Epilogue kEpilogue>
__global__ void __launch_bounds__(Cfg::kThreads, 1) wgmma_gemm_kernel(const GemmParams p) {
  extern __shared__ uint8_t smem_raw[];
  const uint32_t raw_address = ptx::smem_address(smem_raw);
  const uint32_t align = (1024 - (raw_address & 1023)) & 1023;
  auto* smem_b = reinterpret_cast<uint16_t*>(smem_raw + align);
  const uint32_t smem_b_address = raw_address + align;

  const BlockTile tile = block_tile(p, Cfg::kTileTokens);
  if (tile.rows <= 0) return;
  const int units = (tile.rows + Cfg::kUnitN - 1) / Cfg::kUnitN;

  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;
  const int group = static_cast<int>(blockIdx.x) * Cfg::kWarps + warp;

  const typename Cfg::Loader loader(p, tile);
  const WeightStream stream = WeightStream::make(p, tile.expert, group, lane);
  constexpr int kRing = Cfg::kAPrefetch + 1;
  WeightChunk ring[kRing];
  uint32_t a[2][4][4];  // [fragment set][k16 step][register]

  float acc[Cfg::kUnits][Cfg::Mma::kAccumulators];
#pragma unroll
  for (int u = 0; u < Cfg::kUnits; ++u)
#pragma unroll
    for (int j = 0; j < Cfg::Mma::kAccumulators; ++j) acc[u][j] = 0.0f;

      // ---- Prologue: kStages - 2 token stages and kAPrefetch weight chunks in flight
      // -------------
#pragma unroll
  for (int s = 0; s < Cfg::kStages - 2; ++s) {
    if (s < p.k_chunks) loader.load(p, s, smem_b + s * Cfg::kStageElements);
    ptx::cp_async_commit();
  }
#pragma unroll
  for (int d = 0; d < Cfg::kAPrefetch; ++d) ring[d] = stream.load(d);

  // ---- Main loop ----------------------------------------------------------------------------
  for (int base = 0; base < p.k_chunks; base += kRing) {
#pragma unroll
    for (int u = 0; u < kRing; ++u) {
      const int chunk = base + u;
      if (chunk >= p.k_chunks) break;  // uniform across the block
      ring[(u + Cfg::kAPrefetch) % kRing] = stream.load(chunk + Cfg::kAPrefetch);

      // Chunk c-2's MMAs are done: fragment set u % 2 and that chunk's stage are free.
      wgmma::wait_group<1>();
      uint32_t(&frag)[4][4] = a[u % 2];
#pragma unroll
      for (int step = 0; step < 4; ++step) {
        decode_step(ring[u], step, frag[step]);
      }

      ptx::cp_async_wait<Cfg::kStages - 3>();  // this thread's copies of chunk c landed
      wgmma::fence_proxy_async_shared();       // ... and are visible to the tensor cores
      __syncthreads();                         // everyone's are; chunk c-2's stage is free
      const int next = chunk + Cfg::kStages - 2;
      if (next < p.k_chunks) {
        loader.load(p, next, smem_b + (next % Cfg::kStages) * Cfg::kStageElements);
      }
      ptx::cp_async_commit();

      // The tile's non-empty units, each a straight run of MMAs (a branch between two MMAs
      // would make the compiler fence the registers before each).
      const uint32_t stage_address = smem_b_address + (chunk % Cfg::kStages) * Cfg::kStageBytes;
      wgmma::fence();
      auto issue = [&](auto active) {
#pragma unroll
        for (int step = 0; step < 4; ++step) {
#pragma unroll
          for (int n = 0; n < decltype(active)::value; ++n) {
            const uint64_t desc = wgmma::smem_descriptor_sw128(
                stage_address + n * Cfg::kUnitN * (kChunkK * 2) + step * 32);
            Cfg::Mma::run(acc[n], frag[step], desc);
          }
        }
      };
      static_assert(Cfg::kUnits <= 4, "up to 4 units per tile");
      switch (units) {
        case 1:
          issue(std::integral_constant<int, 1>{});
          break;
        case 2:
          if constexpr (Cfg::kUnits >= 2) issue(std::integral_constant<int, 2>{});
          break;
        case 3:
          if constexpr (Cfg::kUnits >= 3) issue(std::integral_constant<int, 3>{});
          break;
        default:
          if constexpr (Cfg::kUnits >= 4) issue(std::integral_constant<int, 4>{});
          break;
      }
      wgmma::commit_group();
    }
  }
  wgmma::wait_group<0>();
  ptx::cp_async_wait<0>();
#pragma unroll
  for (int u = 0; u < Cfg::kUnits; ++u)
#pragma unroll
    for (int j = 0; j < Cfg::Mma::kAccumulators; ++j) wgmma::fence_operand(acc[u][j]);

  // ---- Epilogue ---------------------------------------------------------------------------
  // acc[n][4 * j + e]: n8 block j of unit n, e = (row g, 2t), (row g, 2t+1), (row g+8, 2t),
  // (row g+8, 2t+1), as mma.sync's C fragment.
  if (!stream.valid) return;
  const EpilogueScales scales = epilogue_scales<kEpilogue>(p, tile.expert);
#pragma unroll
  for (int n = 0; n < Cfg::kUnits; ++n) {
#pragma unroll
    for (int j = 0; j < Cfg::kUnitN / 8; ++j) {
#pragma unroll
      for (int col = 0; col < 2; ++col) {
        const int token = n * Cfg::kUnitN + j * 8 + 2 * t + col;
        if (token >= tile.rows) continue;
        store_row_pair<kEpilogue>(p, scales, group, g, tile.row_begin + token, acc[n][4 * j + col],
                                  acc[n][4 * j + 2 + col]);
      }
    }
  }
}

}  // namespace nvfp4moe::cuda
