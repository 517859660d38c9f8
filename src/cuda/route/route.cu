// Routing kernels. The order of slots within an expert depends on atomics and may change from
// run to run; every consumer treats rows independently, so results do not.
#include <algorithm>
#include <cub/block/block_scan.cuh>

#include "cuda/route/route.hpp"

namespace nvfp4moe::cuda {

namespace {

constexpr int kScanThreads = 1024;

__device__ __forceinline__ int local_expert(const RouteParams& p, int32_t id) {
  if (id < -1 || id >= p.num_experts) {
    atomicOr(p.error_flags, kErrorBadExpertId);
    return -1;
  }
  const int local = id - p.first_local_expert;
  return (id >= 0 && local >= 0 && local < p.num_local_experts) ? local : -1;
}

// Expert e's tiles: `count` sorted rows from `first_row`, cut every tile_tokens, written from
// tile `first_tile` on. Returns the next free tile.
__device__ __forceinline__ int write_tiles(const RouteParams& p, int e, int count, int first_row,
                                           int first_tile) {
  for (int j = 0; j * p.tile_tokens < count; ++j) {
    p.tiles[first_tile++] = {e, first_row + j * p.tile_tokens,
                             min(p.tile_tokens, count - j * p.tile_tokens), 0};
  }
  return first_tile;
}

__global__ void route_count_kernel(const RouteParams p) {
  for (int s = blockIdx.x * blockDim.x + threadIdx.x; s < p.num_slots;
       s += gridDim.x * blockDim.x) {
    const int e = local_expert(p, p.topk_ids[s]);
    if (e >= 0) atomicAdd(&p.counts[e], 1);
  }
}

// One block: exclusive scans of counts and of tiles per expert, then the tile table.
__global__ void __launch_bounds__(kScanThreads) route_scan_kernel(const RouteParams p) {
  using Scan = cub::BlockScan<int, kScanThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  const int per_thread = (p.num_local_experts + kScanThreads - 1) / kScanThreads;
  const int begin = min(static_cast<int>(threadIdx.x) * per_thread, p.num_local_experts);
  const int end = min(begin + per_thread, p.num_local_experts);
  int rows = 0, tiles = 0;
  for (int e = begin; e < end; ++e) {
    rows += p.counts[e];
    tiles += (p.counts[e] + p.tile_tokens - 1) / p.tile_tokens;
  }
  int rows_before = 0, tiles_before = 0, total_rows = 0, total_tiles = 0;
  Scan(scan_storage).ExclusiveSum(rows, rows_before, total_rows);
  __syncthreads();
  Scan(scan_storage).ExclusiveSum(tiles, tiles_before, total_tiles);
  for (int e = begin; e < end; ++e) {
    const int count = p.counts[e];
    p.offsets[e] = rows_before;
    tiles_before = write_tiles(p, e, count, rows_before, tiles_before);
    rows_before += count;
  }
  if (threadIdx.x == 0) {
    p.offsets[p.num_local_experts] = total_rows;
    *p.num_tiles = total_tiles;
  }
}

__global__ void route_scatter_kernel(const RouteParams p) {
  for (int s = blockIdx.x * blockDim.x + threadIdx.x; s < p.num_slots;
       s += gridDim.x * blockDim.x) {
    const int32_t id = p.topk_ids[s];
    const int e = id - p.first_local_expert;
    if (id < 0 || id >= p.num_experts || e < 0 || e >= p.num_local_experts) continue;
    const int position = p.offsets[e] + atomicAdd(&p.cursors[e], 1);
    p.sorted_slot[position] = s;
    p.sorted_expert[position] = e;
  }
}

// Small batches (decode): count, scan and scatter in one block with the counts in shared
// memory, one launch instead of three.
constexpr int kSmallMaxSlots = 8192;
constexpr int kSmallMaxExperts = 4096;

// Also zeroes p.zero (up to kSmallZeroBytes), which saves the graph a memset.
constexpr int64_t kSmallZeroBytes = 256 * 1024;

__global__ void __launch_bounds__(kScanThreads) route_small_kernel(const RouteParams p) {
  using Scan = cub::BlockScan<int, kScanThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int counts[kSmallMaxExperts];
  __shared__ int cursors[kSmallMaxExperts];
  for (int64_t i = threadIdx.x; i < p.zero_bytes / 16; i += kScanThreads) {
    static_cast<uint4*>(p.zero)[i] = make_uint4(0, 0, 0, 0);
  }
  for (int e = threadIdx.x; e < p.num_local_experts; e += kScanThreads) counts[e] = 0;
  __syncthreads();
  for (int s = threadIdx.x; s < p.num_slots; s += kScanThreads) {
    const int e = local_expert(p, p.topk_ids[s]);
    if (e >= 0) atomicAdd(&counts[e], 1);
  }
  __syncthreads();

  const int per_thread = (p.num_local_experts + kScanThreads - 1) / kScanThreads;
  const int begin = min(static_cast<int>(threadIdx.x) * per_thread, p.num_local_experts);
  const int end = min(begin + per_thread, p.num_local_experts);
  int rows = 0, tiles = 0;
  for (int e = begin; e < end; ++e) {
    rows += counts[e];
    tiles += (counts[e] + p.tile_tokens - 1) / p.tile_tokens;
  }
  int rows_before = 0, tiles_before = 0, total_rows = 0, total_tiles = 0;
  Scan(scan_storage).ExclusiveSum(rows, rows_before, total_rows);
  __syncthreads();
  Scan(scan_storage).ExclusiveSum(tiles, tiles_before, total_tiles);
  for (int e = begin; e < end; ++e) {
    const int count = counts[e];
    p.offsets[e] = rows_before;
    cursors[e] = rows_before;
    tiles_before = write_tiles(p, e, count, rows_before, tiles_before);
    rows_before += count;
  }
  if (threadIdx.x == 0) {
    p.offsets[p.num_local_experts] = total_rows;
    *p.num_tiles = total_tiles;
  }
  __syncthreads();

  for (int s = threadIdx.x; s < p.num_slots; s += kScanThreads) {
    const int32_t id = p.topk_ids[s];
    const int e = id - p.first_local_expert;
    if (id < 0 || id >= p.num_experts || e < 0 || e >= p.num_local_experts) continue;
    const int position = atomicAdd(&cursors[e], 1);
    p.sorted_slot[position] = s;
    p.sorted_expert[position] = e;
  }
}

}  // namespace

bool route_single_launch(int64_t num_slots, int64_t num_local_experts) {
  return num_slots <= kSmallMaxSlots && num_local_experts <= kSmallMaxExperts;
}

cudaError_t launch_route(const RouteParams& p, cudaStream_t stream) {
  if (p.zero_bytes % 16 != 0 || (p.zero == nullptr) != (p.zero_bytes == 0)) {
    return cudaErrorInvalidValue;
  }
  const bool small = p.num_slots > 0 && route_single_launch(p.num_slots, p.num_local_experts);
  const bool zero_in_kernel = small && p.zero_bytes <= kSmallZeroBytes;
  if (p.zero != nullptr && !zero_in_kernel) {
    if (const cudaError_t status = cudaMemsetAsync(p.zero, 0, size_t(p.zero_bytes), stream);
        status != cudaSuccess) {
      return status;
    }
  }
  if (p.num_slots <= 0) return cudaSuccess;
  if (small) {
    RouteParams q = p;
    if (!zero_in_kernel) q.zero = nullptr, q.zero_bytes = 0;  // the memset above did it
    route_small_kernel<<<1, kScanThreads, 0, stream>>>(q);
    return cudaGetLastError();
  }
  constexpr int kThreads = 256;
  const int blocks = std::min((p.num_slots + kThreads - 1) / kThreads, 1024);
  route_count_kernel<<<blocks, kThreads, 0, stream>>>(p);
  if (const cudaError_t status = cudaGetLastError(); status != cudaSuccess) return status;
  route_scan_kernel<<<1, kScanThreads, 0, stream>>>(p);
  if (const cudaError_t status = cudaGetLastError(); status != cudaSuccess) return status;
  route_scatter_kernel<<<blocks, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace nvfp4moe::cuda
