// The grouped NVFP4 x bf16 GEMM on Hopper's warpgroup MMA (sm_90a), for tiles of many tokens.
// Same "swap AB" as the mma.sync kernel: weights are the A operand (M = output features), the
// tile's tokens the B operand (N), so the prepared layout, the decode and the epilogues are
// shared (gemm_common.cuh).
//
// Warp-specialized block:
//   producer  = warpgroup 0 (few registers): copies the tile's tokens, one 64-wide K chunk per
//               stage, into a kStages-deep ring of 128-byte-swizzled rows with cp.async, and
//               publishes each stage on its `full` mbarrier once its copies have landed
//   consumers = kConsumers warpgroups (many registers); consumer warp w owns kGroups 16-row
//               groups from (blockIdx.x * 4 * kConsumers + w) * kGroups; group i of the
//               warpgroup's 4 warps forms the 64-row A tile of its i-th MMA. Each decodes its
//               weights exactly to bf16 straight into wgmma's register operand (a warp's register
//               fragment in m64nNk16 is mma.m16n8k16's A fragment) while the previous chunk's MMAs
//               run, waits for the stage, issues the chunk's MMAs and, once the chunk before has
//               finished, frees its stage (`empty`)
//   units     = the tile is cut into kUnitN-token units; a unit with no token is skipped, so a
//               tile of up to kTileTokens costs what it holds (rounded up to kUnitN)
//
//   epilogue  = from registers (gated activation, plain store), or for the weighted combine
//               through the drained ring in shared memory, so each lane adds 4 consecutive
//               features of a token with one vector reduction
//
// No block-wide barrier after set-up: the warpgroups meet at the mbarriers, and the consumers
// once more before the combine epilogue reuses the ring.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cuda/common/wgmma.cuh"
#include "cuda/gemm/gemm_common.cuh"

namespace nvfp4moe::cuda {

template <int kConsumers_, int kGroups_, int kTileTokens_, int kUnitN_, int kStages_,
          int kAPrefetch_>
struct WgmmaConfig {
  static constexpr int kConsumers = kConsumers_;  // consumer warpgroups
  static constexpr int kGroups = kGroups_;        // 16-row groups per consumer warp
  static constexpr int kTileTokens = kTileTokens_;
  static constexpr int kUnitN = kUnitN_;
  static constexpr int kStages = kStages_;
  static constexpr int kAPrefetch = kAPrefetch_;
  static constexpr int kConsumerWarps = 4 * kConsumers;
  static constexpr int kProducerThreads = 128;
  static constexpr int kThreads = kProducerThreads + 128 * kConsumers;
  using Loader = TokenLoader<kTileTokens, kProducerThreads>;
  // Register budgets (multiples of 8): the producer keeps what its copies need, the consumers'
  // accumulators get the rest of the register file.
  static constexpr int kProducerRegisters = Loader::kLoadsPerThread > 8 ? 56 : 40;
  static constexpr int kConsumerRegisters = std::min(
      240, (64 * 1024 - kProducerThreads * kProducerRegisters) / (128 * kConsumers) / 8 * 8);
  // Chunks whose copies a producer thread keeps in flight before publishing the oldest: all
  // stages but the two the consumers' MMAs may be reading and one being refilled.
  static constexpr int kCopyLag = kStages - 3;
  static constexpr int kUnits = kTileTokens / kUnitN;
  using Mma = wgmma::Mma<kUnitN>;
  static constexpr int kStageElements = Loader::kStageElements;
  static constexpr int kStageBytes = kStageElements * 2;
  // The weighted-combine epilogue reuses the ring: per consumer warp, its tile of
  // [token][16 * kGroups features] fp32 results, rows padded by 4 floats (conflict-free writes of
  // the MMA fragments, 16-byte reads along a row).
  static constexpr int kCombineStride = 16 * kGroups + 4;
  static constexpr int kCombineBytes = kConsumerWarps * kTileTokens * kCombineStride * 4;
  // The ring (or the combine tiles), plus slack to start it on a 1024-byte boundary (the
  // swizzle's period).
  static constexpr int kSmemBytes = std::max(kStages * kStageBytes, kCombineBytes) + 1024;
  static_assert(kUnitN == 64, "wgmma::Mma has 64-token units only");
  static_assert(kTileTokens % kUnitN == 0, "a tile is whole N units");
  static_assert(kUnits <= 4, "up to 4 units per tile");
  static_assert(kTileTokens <= 32 * kConsumerWarps, "one consumer thread per token fetches");
  static_assert(kStageBytes % 1024 == 0, "each stage must start 1024-byte aligned");
  static_assert(kStages >= 4, "two stages read by MMAs, at least one in flight");
  static_assert((kAPrefetch + 1) % 2 == 0,
                "the chunk loop is unrolled by the weight ring, which must alternate the two "
                "A fragment sets evenly");
};

template <class Cfg, Epilogue kEpilogue>
__device__ __forceinline__ void wgmma_consume(const GemmParams& p, const BlockTile& tile,
                                              uint64_t* full, uint64_t* empty, uint16_t* smem_b,
                                              uint32_t smem_b_address, int consumer_warp,
                                              int lane) {
  constexpr int kGroups = Cfg::kGroups;
  const int g = lane / 4, t = lane % 4;
  const int group0 = (static_cast<int>(blockIdx.x) * Cfg::kConsumerWarps + consumer_warp) * kGroups;
  const int units = (tile.rows + Cfg::kUnitN - 1) / Cfg::kUnitN;

  // The weighted combine's per-token output row and routing weight, fetched now so the two
  // dependent loads are long done by the epilogue (read after its barrier).
  __shared__ int64_t combine_row[Cfg::kTileTokens];
  __shared__ float combine_weight[Cfg::kTileTokens];
  if constexpr (kEpilogue == Epilogue::kDownCombine) {
    const int token = consumer_warp * 32 + lane;
    if (token < tile.rows) {
      const int32_t slot = p.sorted_slot[tile.row_begin + token];
      combine_row[token] = int64_t(slot / p.top_k) * p.out_row_stride;
      combine_weight[token] = p.topk_weights[slot];
    }
  }

  WeightStream streams[kGroups];
#pragma unroll
  for (int i = 0; i < kGroups; ++i) {
    streams[i] = WeightStream::make(p, tile.expert, group0 + i, lane);
  }
  constexpr int kRing = Cfg::kAPrefetch + 1;
  WeightChunk ring[kRing][kGroups];
  uint32_t a[2][kGroups][4][4];  // [fragment set][group][k16 step][register]
#pragma unroll
  for (int d = 0; d < Cfg::kAPrefetch; ++d)
#pragma unroll
    for (int i = 0; i < kGroups; ++i) ring[d][i] = streams[i].load(d);

  float acc[kGroups][Cfg::kUnits][Cfg::Mma::kAccumulators];
#pragma unroll
  for (int i = 0; i < kGroups; ++i)
#pragma unroll
    for (int u = 0; u < Cfg::kUnits; ++u)
#pragma unroll
      for (int j = 0; j < Cfg::Mma::kAccumulators; ++j) acc[i][u][j] = 0.0f;

  // Chunk c's fragments are decoded in iteration c-1, right after chunk c-1's MMAs are issued,
  // so the decode overlaps them and the arrival of chunk c's token stage.
  // NOTE: decoding chunk c at the top of iteration c, ptxas sank the (11-op) decode below the
  // wait for the stage, where it overlapped nothing: T = 1024 / 4096 / 16384 3% / 1% / 2% slower.
  auto decode_chunk = [&](const WeightChunk(&chunk)[kGroups], uint32_t(&frag)[kGroups][4][4]) {
#pragma unroll
    for (int i = 0; i < kGroups; ++i)
#pragma unroll
      for (int step = 0; step < 4; ++step) decode_step<true>(chunk[i], step, frag[i][step]);
  };
  if (p.k_chunks > 0) decode_chunk(ring[0], a[0]);

  for (int base = 0; base < p.k_chunks; base += kRing) {
#pragma unroll
    for (int u = 0; u < kRing; ++u) {
      const int chunk = base + u;
      if (chunk >= p.k_chunks) break;  // uniform across the block
#pragma unroll
      for (int i = 0; i < kGroups; ++i) {
        ring[(u + Cfg::kAPrefetch) % kRing][i] = streams[i].load(chunk + Cfg::kAPrefetch);
      }
      uint32_t(&frag)[kGroups][4][4] = a[u % 2];

      // This chunk's fragments were written in the previous iteration (or before the loop).
      wgmma::fence();
      const int stage = chunk % Cfg::kStages;
      ptx::mbarrier_wait(&full[stage], (chunk / Cfg::kStages) & 1);

      // The tile's non-empty units, each a straight run of MMAs (a branch between two MMAs
      // would make the compiler fence the registers before each).
      const uint32_t stage_address = smem_b_address + stage * Cfg::kStageBytes;
      auto issue = [&](auto active) {
#pragma unroll
        for (int step = 0; step < 4; ++step) {
#pragma unroll
          for (int n = 0; n < decltype(active)::value; ++n) {
            const uint64_t desc = wgmma::smem_descriptor_sw128(
                stage_address + n * Cfg::kUnitN * (kChunkK * 2) + step * 32);
#pragma unroll
            for (int i = 0; i < kGroups; ++i) Cfg::Mma::run(acc[i][n], frag[i][step], desc);
          }
        }
      };
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

      // Chunk c-1's MMAs are done: its stage goes back to the producer, and its fragment set
      // takes chunk c+1's.
      wgmma::wait_group<1>();
      if (chunk > 0 && lane == 0) ptx::mbarrier_arrive(&empty[(chunk - 1) % Cfg::kStages]);
      if (chunk + 1 < p.k_chunks) decode_chunk(ring[(u + 1) % kRing], a[(u + 1) % 2]);
    }
  }
  wgmma::wait_group<0>();
#pragma unroll
  for (int i = 0; i < kGroups; ++i)
#pragma unroll
    for (int u = 0; u < Cfg::kUnits; ++u)
#pragma unroll
      for (int j = 0; j < Cfg::Mma::kAccumulators; ++j) wgmma::fence_operand(acc[i][u][j]);

  // ---- Epilogue ---------------------------------------------------------------------------
  // acc[i][n][4 * j + e]: n8 block j of unit n, e = (row g, 2t), (row g, 2t+1), (row g+8, 2t),
  // (row g+8, 2t+1), as mma.sync's C fragment.
  const EpilogueScales scales = epilogue_scales<kEpilogue>(p, tile.expert);
  if constexpr (kEpilogue == Epilogue::kDownCombine) {
    // Through shared memory, so each lane adds 4 consecutive features of a token with one
    // vector reduction instead of 4 scalar atomics. The ring is free once every consumer's
    // MMAs are done (the producer's copies all landed before the last stage was published);
    // the barrier also publishes combine_row and combine_weight.
    constexpr int kStride = Cfg::kCombineStride;
    wgmma::fence_proxy_async_shared();
    ptx::named_barrier_sync(1, Cfg::kConsumerWarps * 32);
    float* tile_out = reinterpret_cast<float*>(smem_b) + consumer_warp * Cfg::kTileTokens * kStride;
#pragma unroll
    for (int i = 0; i < kGroups; ++i)
#pragma unroll
      for (int n = 0; n < Cfg::kUnits; ++n)
#pragma unroll
        for (int j = 0; j < Cfg::kUnitN / 8; ++j)
#pragma unroll
          for (int col = 0; col < 2; ++col) {
            float* row = tile_out + (n * Cfg::kUnitN + j * 8 + 2 * t + col) * kStride + i * 16 + g;
            row[0] = acc[i][n][4 * j + col];
            row[8] = acc[i][n][4 * j + 2 + col];
          }
    __syncwarp();
    constexpr int kQuads = 4 * kGroups;  // 4-feature quads per token row of this warp
    static_assert(32 % kQuads == 0, "a warp covers whole token rows");
    const int quad = lane % kQuads;
    if (group0 + quad / 4 >= p.row_groups) return;  // rows past the matrix
    for (int token = lane / kQuads; token < tile.rows; token += 32 / kQuads) {
      const float weight = combine_weight[token];
      const float4 y = *reinterpret_cast<const float4*>(tile_out + token * kStride + 4 * quad);
      float* out = static_cast<float*>(p.out) + combine_row[token] + group0 * 16 + 4 * quad;
      ptx::red_add_v4(out,
                      make_float4(weight * (scales.alpha * y.x), weight * (scales.alpha * y.y),
                                  weight * (scales.alpha * y.z), weight * (scales.alpha * y.w)));
    }
  } else {
#pragma unroll
    for (int i = 0; i < kGroups; ++i) {
      if (!streams[i].valid) continue;
#pragma unroll
      for (int n = 0; n < Cfg::kUnits; ++n) {
#pragma unroll
        for (int j = 0; j < Cfg::kUnitN / 8; ++j) {
#pragma unroll
          for (int col = 0; col < 2; ++col) {
            const int token = n * Cfg::kUnitN + j * 8 + 2 * t + col;
            if (token >= tile.rows) continue;
            store_row_pair<kEpilogue>(p, scales, group0 + i, g, tile.row_begin + token,
                                      acc[i][n][4 * j + col], acc[i][n][4 * j + 2 + col]);
          }
        }
      }
    }
  }
}

template <class Cfg, Epilogue kEpilogue>
__global__ void __launch_bounds__(Cfg::kThreads, 1) wgmma_gemm_kernel(const GemmParams p) {
  extern __shared__ uint8_t smem_raw[];
  __shared__ uint64_t full[Cfg::kStages];   // stage holds its chunk (producer threads arrive)
  __shared__ uint64_t empty[Cfg::kStages];  // stage may be refilled (consumer warps arrive)
  const uint32_t raw_address = ptx::smem_address(smem_raw);
  const uint32_t align = (1024 - (raw_address & 1023)) & 1023;
  auto* smem_b = reinterpret_cast<uint16_t*>(smem_raw + align);
  const uint32_t smem_b_address = raw_address + align;

  const BlockTile tile = block_tile(p, Cfg::kTileTokens);
  if (tile.rows <= 0) return;  // uniform across the block

  if (threadIdx.x == 0) {
    for (int s = 0; s < Cfg::kStages; ++s) {
      ptx::mbarrier_init(&full[s], Cfg::kProducerThreads);
      ptx::mbarrier_init(&empty[s], Cfg::kConsumerWarps);
    }
  }
  __syncthreads();

  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;

  // ---- Producer ---------------------------------------------------------------------------
  if (warp < 4) {
    ptx::set_max_registers_dec<Cfg::kProducerRegisters>();
    const typename Cfg::Loader loader(p, tile);
    int published = 0;  // chunks whose `full` barrier this thread has arrived on
    for (int chunk = 0; chunk < p.k_chunks; ++chunk) {
      const int stage = chunk % Cfg::kStages;
      if (chunk >= Cfg::kStages) ptx::mbarrier_wait(&empty[stage], (chunk / Cfg::kStages - 1) & 1);
      loader.load(p, chunk, smem_b + stage * Cfg::kStageElements);
      ptx::cp_async_commit();
      if (chunk - published >= Cfg::kCopyLag) {
        ptx::cp_async_wait<Cfg::kCopyLag>();  // the oldest unpublished chunk landed
        wgmma::fence_proxy_async_shared();    // ... visible to the tensor cores' reads
        ptx::mbarrier_arrive(&full[published % Cfg::kStages]);
        ++published;
      }
    }
    ptx::cp_async_wait<0>();
    wgmma::fence_proxy_async_shared();
    for (; published < p.k_chunks; ++published) {
      ptx::mbarrier_arrive(&full[published % Cfg::kStages]);
    }
  } else {
    // ---- Consumers --------------------------------------------------------------------------
    ptx::set_max_registers_inc<Cfg::kConsumerRegisters>();
    wgmma_consume<Cfg, kEpilogue>(p, tile, full, empty, smem_b, smem_b_address, warp - 4, lane);
  }
}

}  // namespace nvfp4moe::cuda
