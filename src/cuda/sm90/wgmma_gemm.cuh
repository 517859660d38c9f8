// The grouped NVFP4 x bf16 GEMM on Hopper's warpgroup MMA (sm_90a), for tiles of many tokens.
// Same "swap AB" as the mma.sync kernel: weights are the A operand (M = output features), the
// tile's tokens the B operand (N), so the prepared layout, the decode and the epilogues are
// shared (gemm_common.cuh).
//
// Warp-specialized block over a kStages-deep ring in shared memory; stage s holds one 64-wide K
// chunk: the tile's tokens (128-byte-swizzled rows) and the block's weights (each row group's
// 512 code bytes and 64 scale bytes, as prepared).
//   producer  = warpgroup 0 (few registers): copies each chunk's tokens and weights into its
//               stage with cp.async and publishes the stage on its `full` mbarrier once its
//               copies have landed. The weights are the stream that bounds the small batches;
//               the ring keeps 74-147 KB of them in flight per SM, more than registers could
//   consumers = kConsumers warpgroups (many registers); consumer warp w owns kGroups 16-row
//               groups from (blockIdx.x * 4 * kConsumers + w) * kGroups; group i of the
//               warpgroup's 4 warps forms the 64-row A tile of its i-th MMA. Each reads its words
//               of chunk c+1 from the stage and decodes them exactly to bf16 straight into wgmma's
//               register operand (a warp's register fragment in m64nNk16 is mma.m16n8k16's A
//               fragment) while chunk c's MMAs run, then frees chunk c-1's stage (`empty`)
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

#include "cuda/sm90/gemm_common.cuh"
#include "cuda/sm90/wgmma.cuh"

namespace nvfp4moe::cuda {

template <int kConsumers_, int kGroups_, int kTileTokens_, int kUnitN_, int kStages_>
struct WgmmaConfig {
  static constexpr int kConsumers = kConsumers_;  // consumer warpgroups
  static constexpr int kGroups = kGroups_;        // 16-row groups per consumer warp
  static constexpr int kTileTokens = kTileTokens_;
  static constexpr int kUnitN = kUnitN_;
  static constexpr int kStages = kStages_;
  static constexpr int kConsumerWarps = 4 * kConsumers;
  static constexpr int kBlockGroups = kConsumerWarps * kGroups;  // row groups per block
  static constexpr int kProducerThreads = 128;
  static constexpr int kThreads = kProducerThreads + 128 * kConsumers;
  using Loader = TokenLoader<kTileTokens, kProducerThreads>;
  // Register budgets (multiples of 8): the block is launched with kLaunchRegisters per thread
  // (what __launch_bounds__ lets ptxas give it); the producer keeps what its copies need and the
  // consumers' accumulators get the rest of that pool. A consumer budget beyond the pool would
  // make setmaxnreg.inc wait forever.
  static constexpr int kLaunchRegisters = std::min(255, 64 * 1024 / kThreads) / 8 * 8;
  // The producers of up to 64-token tiles (four token copies per thread at most) fit in 32,
  // which leaves the 16-token tiles' four consumer warpgroups the 112 registers they need and the
  // 64-token tiles' three the 160.
  static constexpr int kProducerRegisters = Loader::kLoadsPerThread > 8   ? 56
                                            : Loader::kLoadsPerThread > 4 ? 40
                                                                          : 32;
  static constexpr int kConsumerRegisters =
      std::min(240, (kLaunchRegisters * kThreads - kProducerThreads * kProducerRegisters) /
                        (128 * kConsumers) / 8 * 8);
  // Where chunk c (>= 0) lives in the ring, and the parity of its round through it.
  static __device__ __forceinline__ uint32_t stage_of(int chunk) {
    return static_cast<uint32_t>(chunk) % kStages;
  }
  static __device__ __forceinline__ uint32_t phase_of(int chunk) {
    return static_cast<uint32_t>(chunk) / kStages & 1u;
  }
  static constexpr int kUnits = kTileTokens / kUnitN;
  // The last unit narrowed to the tokens it holds (16, 32 or 64 wide), for 64-token units.
  // NOTE: measured T = 2048 / 4096 5% / 2% faster with 64-token units, but T = 768 3% slower
  // with 32-token units (narrowed to 8 or 16).
  static constexpr bool kNarrowTail = kUnitN == 64;
  using Mma = wgmma::Mma<kUnitN>;
  // A stage: tokens, then the codes and the scales of the block's row groups.
  static constexpr int kTokenBytes = Loader::kStageElements * 2;
  static constexpr int kCodeBytes = kBlockGroups * kCodeBytesPerChunk;
  static constexpr int kScaleBytes = kBlockGroups * kScaleBytesPerChunk;
  static constexpr int kStageBytes = (kTokenBytes + kCodeBytes + kScaleBytes + 1023) / 1024 * 1024;
  // The weighted-combine epilogue reuses the ring: per consumer warp, its tile of
  // [token][16 * kGroups features] fp32 results, rows padded by 4 floats (conflict-free writes of
  // the MMA fragments, 16-byte reads along a row).
  static constexpr int kCombineStride = 16 * kGroups + 4;
  static constexpr int kCombineBytes = kConsumerWarps * kTileTokens * kCombineStride * 4;
  // The ring (or the combine tiles), plus slack to start it on a 1024-byte boundary (the
  // swizzle's period).
  static constexpr int kSmemBytes = std::max(kStages * kStageBytes, kCombineBytes) + 1024;
  static_assert(kUnitN == 8 || kUnitN == 32 || kUnitN == 64,
                "wgmma::Mma has 8-, 32- and 64-token units");
  static_assert(kTileTokens % kUnitN == 0, "a tile is whole N units");
  static_assert(kUnits <= 4, "up to 4 units per tile");
  static_assert(kTileTokens <= 32 * kConsumerWarps, "one consumer thread per token fetches");
  static_assert(kTokenBytes % 1024 == 0, "each stage's tokens must start 1024-byte aligned");
  static_assert(kStages >= 4, "two stages read by MMAs, at least one in flight");
  static_assert((kStages & (kStages - 1)) == 0, "a power of two: the stage is a mask");
  static_assert(kSmemBytes <= 227 * 1024, "the ring must fit in shared memory");
};

// Copies the block's weights of one chunk into a stage with cp.async, 16 bytes per copy: the
// 512 code bytes of each row group (producer thread i takes piece i % 32 of groups i / 32,
// i / 32 + 4, ...) and its 64 scale bytes (threads 0 .. 4 * kBlockGroups - 1). Row groups past
// the matrix are not copied (their consumers zero their places once).
// NOTE: one bulk copy (cp.async.bulk) per row group's codes and scales instead ran every batch
// size at ~0.8 TB/s: 32 copies of 64 or 512 bytes per chunk are far too small for the bulk
// copy engine.
template <class Cfg>
struct WeightLoader {
  static constexpr int kCodePieces = Cfg::kBlockGroups * kCodeBytesPerChunk / 16;
  static constexpr int kCodeCopies = kCodePieces / Cfg::kProducerThreads;
  static constexpr int kGroupStep = Cfg::kProducerThreads / (kCodeBytesPerChunk / 16);
  static_assert(kCodePieces % Cfg::kProducerThreads == 0, "whole code copies per thread");
  static_assert(Cfg::kBlockGroups * 4 <= Cfg::kProducerThreads, "one scale copy per thread");

  const uint8_t* codes;        // this thread's first code piece, chunk 0
  const uint8_t* scales;       // this thread's scale piece, chunk 0
  uint32_t code_group_stride;  // bytes between a thread's row groups (kMaxKChunks keeps it 32-bit)
  uint32_t valid_codes;        // bit i: copy i's row group exists
  bool valid_scales;

  __device__ __forceinline__ WeightLoader(const GemmParams& p, int expert) {
    const int thread = static_cast<int>(threadIdx.x);
    const int group0 = static_cast<int>(blockIdx.x) * Cfg::kBlockGroups;
    const int code_group = group0 + thread / 32;
    static_assert(int64_t(kGroupStep) * kMaxKChunks * kCodeBytesPerChunk <= 0xFFFFFFFFll,
                  "a row group's stride must fit 32 bits");
    code_group_stride = uint32_t(kGroupStep * kCodeBytesPerChunk) * uint32_t(p.k_chunks);
    codes = static_cast<const uint8_t*>(p.weights.codes) + expert * p.expert_code_bytes +
            int64_t(min(code_group, p.row_groups - 1)) * p.k_chunks * kCodeBytesPerChunk +
            (thread % 32) * 16;
    valid_codes = 0;
#pragma unroll
    for (int i = 0; i < kCodeCopies; ++i) {
      if (code_group + i * kGroupStep < p.row_groups) valid_codes |= 1u << i;
    }
    const int scale_group = group0 + thread / 4;
    valid_scales = thread < Cfg::kBlockGroups * 4 && scale_group < p.row_groups;
    scales = static_cast<const uint8_t*>(p.weights.scales) + expert * p.expert_scale_bytes +
             int64_t(min(scale_group, p.row_groups - 1)) * p.k_chunks * kScaleBytesPerChunk +
             (thread % 4) * 16;
  }

  __device__ __forceinline__ void load(int chunk, uint8_t* stage) const {
    const int thread = static_cast<int>(threadIdx.x);
    uint8_t* code_dst =
        stage + Cfg::kTokenBytes + (thread / 32) * kCodeBytesPerChunk + (thread % 32) * 16;
    const uint8_t* code_src = codes + int64_t(chunk) * kCodeBytesPerChunk;
    // Opaque, so ptxas steps from copy to copy instead of keeping each copy's 64-bit source.
    uint32_t stride = code_group_stride;
    asm volatile("" : "+r"(stride));
#pragma unroll
    for (int i = 0; i < kCodeCopies; ++i) {
      if ((valid_codes >> i) & 1u) {
        ptx::cp_async_16(code_dst + i * kGroupStep * kCodeBytesPerChunk, code_src, true);
      }
      code_src += stride;
    }
    if (valid_scales) {
      ptx::cp_async_16(stage + Cfg::kTokenBytes + Cfg::kCodeBytes + thread * 16,
                       scales + int64_t(chunk) * kScaleBytesPerChunk, true);
    }
  }
};

template <class Cfg, Epilogue kEpilogue>
__device__ __forceinline__ void wgmma_consume(const GemmParams& p, const BlockTile& tile,
                                              uint64_t* full, uint64_t* empty, uint8_t* ring,
                                              uint32_t ring_address, int consumer_warp, int lane) {
  constexpr int kGroups = Cfg::kGroups;
  const int g = lane / 4, t = lane % 4;
  const int group0 = (static_cast<int>(blockIdx.x) * Cfg::kConsumerWarps + consumer_warp) * kGroups;
  const int units = (tile.rows + Cfg::kUnitN - 1) / Cfg::kUnitN;
  // With kNarrowTail the last unit's MMAs are only as wide as its tokens need, in quarters or
  // halves of a unit (class 2 or 1; 0: the whole unit): the tile after an expert's full tiles
  // often holds a few.
  const int tail_tokens = tile.rows - (units - 1) * Cfg::kUnitN;
  const int tail_class = tail_tokens <= Cfg::kUnitN / 4   ? 2
                         : tail_tokens <= Cfg::kUnitN / 2 ? 1
                                                          : 0;
  const wgmma::SmemDescriptor ring_descriptor = wgmma::SmemDescriptor::sw128(ring_address);

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

  // This lane's words of chunk `chunk`, from its stage (which has landed), at fixed offsets.
  int code_offset = Cfg::kTokenBytes + consumer_warp * kGroups * kCodeBytesPerChunk + lane * 16;
  int scale_offset =
      Cfg::kTokenBytes + Cfg::kCodeBytes + consumer_warp * kGroups * kScaleBytesPerChunk + g * 8;
  // Row groups past the matrix are never copied: the warp zeroes what it will read of them in
  // every stage, once (no other warp reads or writes those bytes; a lane's scale words are read
  // by the 4 lanes of its group, hence the __syncwarp), so the loop reads unguarded.
#pragma unroll
  for (int i = 0; i < kGroups; ++i) {
    if (group0 + i < p.row_groups) continue;
    for (int stage = 0; stage < Cfg::kStages; ++stage) {
      uint8_t* base = ring + stage * Cfg::kStageBytes;
      *reinterpret_cast<uint4*>(base + code_offset + i * kCodeBytesPerChunk) =
          make_uint4(0, 0, 0, 0);
      *reinterpret_cast<uint2*>(base + scale_offset + i * kScaleBytesPerChunk) = make_uint2(0, 0);
    }
  }
  __syncwarp();
  auto read_weights = [&](int chunk, WeightChunk(&w)[kGroups]) {
    const uint8_t* stage = ring + Cfg::stage_of(chunk) * Cfg::kStageBytes;
#pragma unroll
    for (int i = 0; i < kGroups; ++i) {
      w[i].codes = *reinterpret_cast<const uint4*>(stage + code_offset + i * kCodeBytesPerChunk);
      w[i].scales = *reinterpret_cast<const uint2*>(stage + scale_offset + i * kScaleBytesPerChunk);
    }
  };
  auto decode_chunk = [&](const WeightChunk(&w)[kGroups], uint32_t(&frag)[kGroups][4][4]) {
#pragma unroll
    for (int i = 0; i < kGroups; ++i)
#pragma unroll
      for (int step = 0; step < 4; ++step) decode_step(w[i], step, frag[i][step]);
  };
  // The barriers' shared-memory addresses, kept in registers through the loop like the offsets.
  uint32_t full_address = ptx::smem_address(full);
  uint32_t empty_address = ptx::smem_address(empty);
  // The stage's copies have landed (generic proxy); the fence orders them before this thread's
  // MMAs read the tokens through the async proxy.
  auto wait_stage = [&](int chunk) {
    ptx::mbarrier_wait(full_address + Cfg::stage_of(chunk) * 8, Cfg::phase_of(chunk));
    wgmma::fence_proxy_async_shared();
  };

  uint32_t a[2][kGroups][4][4];  // [fragment set][group][k16 step][register]
  float acc[kGroups][Cfg::kUnits][Cfg::Mma::kAccumulators];
#pragma unroll
  for (int i = 0; i < kGroups; ++i)
#pragma unroll
    for (int u = 0; u < Cfg::kUnits; ++u)
#pragma unroll
      for (int j = 0; j < Cfg::Mma::kAccumulators; ++j) acc[i][u][j] = 0.0f;

  // Chunk c+1 is decoded in iteration c, right after chunk c's MMAs are issued, so the decode
  // overlaps them.
  // NOTE: decoding chunk c at the top of iteration c, ptxas sank the (11-op) decode below the
  // wait for the stage, where it overlapped nothing: T = 1024 / 4096 / 16384 3% / 1% / 2% slower.
  if (p.k_chunks > 0) {
    WeightChunk w[kGroups];
    wait_stage(0);
    read_weights(0, w);
    decode_chunk(w, a[0]);
  }
  for (int base = 0; base < p.k_chunks; base += 2) {
    // Opaque moves: ptxas otherwise re-derives these loop invariants from the thread index and
    // the shared window every chunk (about 15 instructions); now they stay in registers.
    asm volatile("mov.b32 %0, %0;" : "+r"(code_offset));
    asm volatile("mov.b32 %0, %0;" : "+r"(scale_offset));
    asm volatile("mov.b32 %0, %0;" : "+r"(full_address));
    asm volatile("mov.b32 %0, %0;" : "+r"(empty_address));
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int chunk = base + u;
      if (chunk >= p.k_chunks) break;  // uniform across the block
      uint32_t(&frag)[kGroups][4][4] = a[u];

      // This chunk's stage has landed (waited for before its decode); its fragments were
      // written in the previous iteration (or before the loop).
      wgmma::fence();
      // The tile's non-empty units, each a straight run of MMAs (a branch between two MMAs
      // would make the compiler fence the registers before each).
      const wgmma::SmemDescriptor stage =
          ring_descriptor.advanced(Cfg::stage_of(chunk), Cfg::kStageBytes);
      auto issue = [&](auto active, auto tail_n) {
        constexpr int kActive = decltype(active)::value;
        constexpr int kTailN = decltype(tail_n)::value;
#pragma unroll
        for (int step = 0; step < 4; ++step) {
#pragma unroll
          for (int n = 0; n < kActive; ++n) {
            const uint64_t desc =
                stage.advanced(n * Cfg::kUnitN * (kChunkK * 2) + step * 32).bits();
#pragma unroll
            for (int i = 0; i < kGroups; ++i) {
              if (n + 1 < kActive) {
                Cfg::Mma::run(acc[i][n], frag[i][step], desc);
              } else {
                wgmma::Mma<kTailN>::run(wgmma::leading<kTailN / 2>(acc[i][n]), frag[i][step], desc);
              }
            }
          }
        }
        wgmma::commit_group();
      };
      auto issue_units = [&](auto active) {
        if constexpr (Cfg::kNarrowTail) {
          if (tail_class == 2) return issue(active, std::integral_constant<int, Cfg::kUnitN / 4>{});
          if (tail_class == 1) return issue(active, std::integral_constant<int, Cfg::kUnitN / 2>{});
        }
        issue(active, std::integral_constant<int, Cfg::kUnitN>{});
      };
      switch (units) {
        case 1:
          issue_units(std::integral_constant<int, 1>{});
          break;
        case 2:
          if constexpr (Cfg::kUnits >= 2) issue_units(std::integral_constant<int, 2>{});
          break;
        case 3:
          if constexpr (Cfg::kUnits >= 3) issue_units(std::integral_constant<int, 3>{});
          break;
        default:
          if constexpr (Cfg::kUnits >= 4) issue_units(std::integral_constant<int, 4>{});
          break;
      }

      // Chunk c+1's words, read while chunk c's MMAs run.
      WeightChunk w[kGroups];
      if (chunk + 1 < p.k_chunks) {
        wait_stage(chunk + 1);
        read_weights(chunk + 1, w);
      }
      // Chunk c-1's MMAs are done: its stage goes back to the producer, and its fragment set
      // takes chunk c+1's.
      // Every consumer thread arrives: each has read weights from that stage, and its arrival
      // orders those reads before the producer's next copies into it.
      wgmma::wait_group<1>();
      if (chunk > 0) ptx::mbarrier_arrive(empty_address + Cfg::stage_of(chunk - 1) * 8);
      if (chunk + 1 < p.k_chunks) decode_chunk(w, a[1 - u]);
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
    float* tile_out = reinterpret_cast<float*>(ring) + consumer_warp * Cfg::kTileTokens * kStride;
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
    // The warp's lanes walk the (token, quad) pairs, so a row's quads need not divide a warp.
    for (int index = lane; index < tile.rows * kQuads; index += 32) {
      const int token = index / kQuads, quad = index % kQuads;
      if (group0 + quad / 4 >= p.row_groups) continue;  // rows past the matrix
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
      if (group0 + i >= p.row_groups) continue;
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
  __shared__ uint64_t empty[Cfg::kStages];  // stage may be refilled (consumer threads arrive)
  const uint32_t raw_address = ptx::smem_address(smem_raw);
  const uint32_t align = (1024 - (raw_address & 1023)) & 1023;
  uint8_t* ring = smem_raw + align;
  const uint32_t ring_address = raw_address + align;

  // Launched programmatically, the kernel ahead may still be running (gemm_params.hpp).
  ptx::wait_prerequisite_grids();
  ptx::allow_dependent_grids();
  const BlockTile tile = block_tile(p, Cfg::kTileTokens);
  if (tile.rows <= 0) return;  // uniform across the block

  if (threadIdx.x == 0) {
    for (int s = 0; s < Cfg::kStages; ++s) {
      ptx::mbarrier_init(&full[s], Cfg::kProducerThreads);
      ptx::mbarrier_init(&empty[s], Cfg::kConsumerWarps * 32);
    }
  }
  __syncthreads();

  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;

  // ---- Producer ---------------------------------------------------------------------------
  if (warp < 4) {
    ptx::set_max_registers_dec<Cfg::kProducerRegisters>();
    const typename Cfg::Loader loader(p, tile);
    const WeightLoader<Cfg> weights(p, tile.expert);
    for (int chunk = 0; chunk < p.k_chunks; ++chunk) {
      // NOTE: a signed stage index, not Cfg::stage_of: the unsigned one cost this 40-register
      // warpgroup three registers and spilled the 128-token tiles.
      const int stage = chunk % Cfg::kStages;
      uint8_t* stage_base = ring + stage * Cfg::kStageBytes;
      if (chunk >= Cfg::kStages) ptx::mbarrier_wait(&empty[stage], (chunk / Cfg::kStages - 1) & 1);
      weights.load(chunk, stage_base);
      loader.load(p, chunk, reinterpret_cast<uint16_t*>(stage_base));
      // The stage is published when these copies land; the thread goes on to the next stage.
      ptx::cp_async_mbarrier_arrive(&full[stage]);
    }
    ptx::cp_async_wait<0>();  // no copy outlives its thread
  } else {
    // ---- Consumers --------------------------------------------------------------------------
    ptx::set_max_registers_inc<Cfg::kConsumerRegisters>();
    wgmma_consume<Cfg, kEpilogue>(p, tile, full, empty, ring, ring_address, warp - 4, lane);
  }
}

}  // namespace nvfp4moe::cuda
