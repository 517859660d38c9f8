// Thin wrappers over the PTX instructions the kernels use. Device code only; no host headers.
#pragma once

#include <cstdint>

#include "cuda/common/grid_dependency.cuh"

namespace nvfp4moe::cuda::ptx {

__device__ __forceinline__ uint32_t smem_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// 16-byte global -> shared copy that bypasses L1. With `valid` false nothing is read and the
// destination is zero-filled (src-size 0), so out-of-range rows need no branch.
__device__ __forceinline__ void cp_async_16(void* smem, const void* global, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(smem)),
               "l"(global), "r"(valid ? 16 : 0));
}

// base + 16 * pieces bytes in one multiply-add (ptxas otherwise widens with shifts and masks).
__device__ __forceinline__ const void* add_pieces(const void* base, uint32_t pieces) {
  uint64_t address;
  asm("mad.wide.u32 %0, %1, 16, %2;" : "=l"(address) : "r"(pieces), "l"(base));
  return reinterpret_cast<const void*>(address);
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// Two 8x8 b16 matrices; lane l < 16 supplies the row address of matrix l/8, row l%8.
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_address(smem)));
}

// D = A * B + D, m16n8k16, bf16 inputs, fp32 accumulation. Fragment layouts: PTX ISA,
// "Matrix Fragments for mma.m16n8k16 with floating point type".
__device__ __forceinline__ void mma_bf16_16x8x16(float (&d)[4], const uint32_t (&a)[4],
                                                 const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ uint4 load_global_nc(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ uint2 load_global_nc(const uint2* p) {
  uint2 v;
  asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];\n"
               : "=r"(v.x), "=r"(v.y)
               : "l"(p));
  return v;
}

// out[0..3] += v, one vector reduction in L2 (sm_90); out 16-byte aligned.
__device__ __forceinline__ void red_add_v4(float* out, float4 v) {
  asm volatile("red.relaxed.gpu.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(out), "f"(v.x),
               "f"(v.y), "f"(v.z), "f"(v.w)
               : "memory");
}

// Barrier `id` (1..15; 0 is __syncthreads) among `threads` threads, a multiple of 32.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// ---- mbarrier (shared::cta) ------------------------------------------------------------------

// How long a waiting thread may sleep per try (ns); it wakes when the phase completes. Without
// it the wgmma consumers retried each wait ~11 times (ncu, T = 4096: 7% of all instructions
// issued, taken from the warps that had work).
inline constexpr uint32_t kWaitSuspendHintNs = 1000000;

__device__ __forceinline__ void mbarrier_init(uint64_t* barrier, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_address(barrier)), "r"(count)
               : "memory");
}

// Arrives with release semantics: this thread's earlier writes are seen by whoever waits. The
// barrier by its shared-memory address (a loop can keep that in a register).
__device__ __forceinline__ void mbarrier_arrive(uint32_t barrier_address) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(barrier_address) : "memory");
}

// Arrives on the barrier once all of this thread's earlier cp.async copies have landed, without
// waiting for them (the arrival counts as one of the barrier's expected arrivals).
__device__ __forceinline__ void cp_async_mbarrier_arrive(uint64_t* barrier) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_address(barrier))
               : "memory");
}

// Waits (acquire) until the phase with the given parity has completed.
__device__ __forceinline__ void mbarrier_wait(uint32_t barrier_address, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1, %2;\n"
      "@!done bra WAIT;\n}\n" ::"r"(barrier_address),
      "r"(parity), "n"(kWaitSuspendHintNs)
      : "memory");
}
__device__ __forceinline__ void mbarrier_wait(uint64_t* barrier, uint32_t parity) {
  mbarrier_wait(smem_address(barrier), parity);
}

// Register budget of this warpgroup's warps (sm_90a); every warp of the warpgroup runs it.
template <int kRegisters>
__device__ __forceinline__ void set_max_registers_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}
template <int kRegisters>
__device__ __forceinline__ void set_max_registers_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}

}  // namespace nvfp4moe::cuda::ptx
