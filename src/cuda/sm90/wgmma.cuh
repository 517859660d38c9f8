// Warpgroup MMA (sm_90a) wrappers: wgmma.mma_async with A from registers and B from shared
// memory through a matrix descriptor, and the fences around it. Device code only.
//
// Register layouts (PTX ISA, "Register Fragments and Shared Memory Matrix Layouts" of wgmma):
// warp w of the warpgroup holds rows 16w..16w+15 of the 64-row A and D tiles, in the same
// per-warp layout as mma.m16n8k16's A and C fragments; D's n8 column blocks follow one another,
// four floats each.
#pragma once

#include <cstdint>

namespace nvfp4moe::cuda::wgmma {

// Descriptor of a K-major bf16 operand in shared memory with the 128-byte swizzle: rows of 64
// elements (128 B), 8-row groups 1024 B apart, the 16-byte chunk c of row r stored at chunk
// c ^ (r & 7). The tile must start 1024-byte aligned; a k16 step within the row adds 32 B to
// the start address (the swizzle acts on address bits, so the offset composes with it).
//
// The low word holds the start address in 16-byte units (14 bits: shared memory ends below
// 256 KB) and the unused leading offset; an operand `bytes` further on is the same descriptor
// with bytes / 16 added to the low word (`advanced`), which is one add where recomputing it
// from the address costs four.
struct SmemDescriptor {
  uint32_t lo;
  static constexpr uint32_t kHi = (1024 >> 4) | (1u << 30);  // stride 8 rows x 128 B, 128B swizzle

  static __device__ __forceinline__ SmemDescriptor sw128(uint32_t smem_address) {
    constexpr uint32_t kLeadingOffset = 1u << 16;  // unused for swizzled K-major (16 B units)
    return {((smem_address & 0x3FFFF) >> 4) | kLeadingOffset};
  }
  __device__ __forceinline__ SmemDescriptor advanced(uint32_t bytes) const {
    return {lo + (bytes >> 4)};
  }
  // `count` strides of `stride_bytes` (a multiple of 16) further on.
  __device__ __forceinline__ SmemDescriptor advanced(uint32_t count, uint32_t stride_bytes) const {
    return {lo + count * (stride_bytes >> 4)};
  }
  __device__ __forceinline__ uint64_t bits() const { return (uint64_t(kHi) << 32) | lo; }
};

// Orders this warpgroup's register writes (accumulators, A fragments) before the next wgmma.
__device__ __forceinline__ void fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

__device__ __forceinline__ void commit_group() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

// Waits until at most kPending committed groups are still running.
template <int kPending>
__device__ __forceinline__ void wait_group() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// Keeps the compiler from moving accesses of a register across the asynchronous MMA.
__device__ __forceinline__ void fence_operand(float& r) { asm volatile("" : "+f"(r)::"memory"); }
__device__ __forceinline__ void fence_operand(uint32_t& r) { asm volatile("" : "+r"(r)::"memory"); }

// Writes by ordinary stores (cp.async included) to shared memory, made visible to the async
// proxy that wgmma reads through; each writing thread runs it before the barrier.
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// D(64 x kN, fp32) += A(64 x 16, bf16 registers) * B(16 x kN, bf16 shared): kN / 2 accumulators
// per thread, four per n8 block in order, so the accumulators of a narrower MMA are the leading
// ones of a wider one's (`leading`). The tile shapes cut their tokens into units of kN, the last
// one narrower when it holds few tokens (docs/performance-log.md, versions 5 and 6).
template <int kCount, int kAll>
__device__ __forceinline__ float (&leading(float (&d)[kAll]))[kCount] {
  static_assert(kCount <= kAll, "a prefix of the accumulators");
  return *reinterpret_cast<float(*)[kCount]>(&d[0]);
}

template <int kN>
struct Mma;

template <>
struct Mma<8> {
  static constexpr int kAccumulators = 4;
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3"
        "}, {%4, %5, %6, %7}, %8, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
  }
};

template <>
struct Mma<16> {
  static constexpr int kAccumulators = 8;
  static __device__ __forceinline__ void run(float (&d)[8], const uint32_t (&a)[4], uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7"
        "}, {%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
          "+f"(d[7])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
  }
};

template <>
struct Mma<32> {
  static constexpr int kAccumulators = 16;
  static __device__ __forceinline__ void run(float (&d)[16], const uint32_t (&a)[4], uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, "
        "%8, %9, %10, %11, %12, %13, %14, %15"
        "}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
          "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
          "+f"(d[14]), "+f"(d[15])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
  }
};

template <>
struct Mma<64> {
  static constexpr int kAccumulators = 32;
  static __device__ __forceinline__ void run(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, "
        "%8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, "
        "%24, %25, %26, %27, %28, %29, %30, %31"
        "}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
          "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
          "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
          "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
          "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
  }
};

}  // namespace nvfp4moe::cuda::wgmma
