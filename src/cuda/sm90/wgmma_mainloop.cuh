// The mainloop of the wgmma grouped GEMM (wgmma_gemm.cuh): the producer's weight copies into
// the ring and the consumer warps' K loop (decode, MMA, stage hand-back). The epilogue that
// turns the accumulators into outputs is wgmma_epilogue.cuh.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda/sm90/gemm_common.cuh"
#include "cuda/sm90/wgmma.cuh"

namespace nvfp4moe::cuda {

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

// A consumer warp's K loop: for each chunk, waits for its stage, reads and decodes its weight
// words into wgmma's register operand while the previous chunk's MMAs run, issues the MMAs of
// the tile's non-empty units against the stage's tokens, and hands the stage before back to the
// producer. Leaves the warp's results in `acc` (every MMA retired, the ring free to reuse).
template <class Cfg>
__device__ __forceinline__ void wgmma_mainloop(const GemmParams& p, const BlockTile& tile,
                                               uint64_t* full, uint64_t* empty, uint8_t* ring,
                                               uint32_t ring_address, int consumer_warp, int lane,
                                               typename Cfg::Accumulators& acc) {
  constexpr int kGroups = Cfg::kGroups;
  const int g = lane / 4;
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
}

}  // namespace nvfp4moe::cuda
