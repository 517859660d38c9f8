// Kernels of the routed all-to-all (exchange.hpp draws the window and the order of events).
// One block per token or row, so that a row's 16-byte pieces are all in flight at once and
// stored straight into the peer's memory.
// NOTE: a warp per row was latency-bound: at T = 1, ~28 dependent load-store rounds per row made
// each kernel 16-33 us (ncu); a block moves the row in one or two rounds.
#include <nccl_device.h>

#include <algorithm>

#include "cuda/common/regions.hpp"
#include "cuda/ep/exchange.hpp"
#include "nvfp4moe/format.hpp"

namespace nvfp4moe::cuda {

namespace {

constexpr int kThreads = 512;

template <typename T>
__device__ T* window_pointer(const ExchangeParams& p, size_t offset, int peer) {
  return static_cast<T*>(ncclGetLsaPointer(p.window, offset, peer));
}

// The rank owning global expert e under expert_range's split.
__device__ int rank_of_expert(const ExchangeParams& p, int expert) {
  const int threshold = p.experts_extra * (p.experts_base + 1);
  return expert < threshold ? expert / (p.experts_base + 1)
                            : p.experts_extra + (expert - threshold) / p.experts_base;
}

// The destinations of a token as a rank bit mask, from the k ids held by lanes < k. Ids outside
// [-1, num_experts) raise the error bit and go nowhere (numerics §4: they contribute zero).
struct TokenRoute {
  int32_t id;             // this lane's slot: a valid global id or -1
  uint32_t destinations;  // the ranks owning the token's experts, one bit each
};
__device__ TokenRoute token_route(const ExchangeParams& p, int64_t token, int lane) {
  int32_t id = -1;
  if (lane < p.top_k) {
    id = p.local_ids[token * p.top_k + lane];
    if (id < -1 || id >= p.num_experts) {
      if (p.error_flags != nullptr) atomicOr(p.error_flags, kErrorBadExpertId);
      id = -1;
    }
  }
  return {id, __reduce_or_sync(0xffffffffu, id >= 0 ? 1u << rank_of_expert(p, id) : 0u)};
}

// Block b of this rank meets block b of every rank (barrier b of the device communicator).
// NOTE: a session per meeting rather than one held across the copy loop: holding it made ptxas
// spill in the loop.
__device__ void lsa_barrier(const ExchangeParams& p) {
  ncclLsaBarrierSession<ncclCoopCta> barrier{ncclCoopCta(), p.comm, ncclTeamLsa(p.comm),
                                             p.comm.lsaBarrier, blockIdx.x};
  barrier.sync(ncclCoopCta(), ::cuda::memory_order_acq_rel);
}

__global__ void __launch_bounds__(kThreads)
    dispatch_kernel(const __grid_constant__ ExchangeParams p) {
  __shared__ int32_t claimed_row[32];  // per destination rank
  __shared__ uint32_t destinations;
  // Every rank has finished its previous forward: its rows, returns and counter are free.
  lsa_barrier(p);

  const int64_t row_pieces = int64_t(p.hidden) * 2 / 16;
  const int64_t rows_per_window = int64_t(p.world_size) * p.max_tokens_per_rank;
  for (int64_t token = blockIdx.x; token < p.tokens; token += gridDim.x) {
    if (threadIdx.x < 32) {
      // Warp 0: where the token goes, a row claimed on each of those ranks (one lane per rank),
      // and the row's routing and origin written there.
      const int lane = threadIdx.x;
      const TokenRoute route = token_route(p, token, lane);
      int32_t row = -1;
      if (route.destinations >> lane & 1u) {
        row = atomicAdd_system(window_pointer<int32_t>(p, p.at.counter, lane), 1);
        if (row >= rows_per_window) {  // only if the ranks' token counts differ
          if (p.error_flags != nullptr) atomicOr(p.error_flags, kErrorExchangeOverflow);
          row = -1;
        } else {
          window_pointer<int32_t>(p, p.at.source, lane)[row] =
              p.rank * p.max_tokens_per_rank + int32_t(token);
        }
      }
      claimed_row[lane] = row;
      const float weight = lane < p.top_k ? p.local_weights[token * p.top_k + lane] : 0.0f;
      for (uint32_t ranks = route.destinations; ranks != 0; ranks &= ranks - 1) {
        const int peer = __ffs(ranks) - 1;
        const int32_t peer_row = __shfl_sync(0xffffffffu, row, peer);
        if (peer_row >= 0 && lane < p.top_k) {
          const int64_t slot = int64_t(peer_row) * p.top_k + lane;
          window_pointer<int32_t>(p, p.at.ids, peer)[slot] = route.id;
          window_pointer<float>(p, p.at.weights, peer)[slot] = weight;
        }
      }
      if (lane == 0) destinations = route.destinations;
    }
    __syncthreads();
    // The hidden row, read once, stored to every destination.
    const auto* source = reinterpret_cast<const uint4*>(p.local_hidden + token * p.hidden);
#pragma unroll 2
    for (int64_t piece = threadIdx.x; piece < row_pieces; piece += kThreads) {
      const uint4 value = __ldg(source + piece);
      for (uint32_t ranks = destinations; ranks != 0; ranks &= ranks - 1) {
        const int peer = __ffs(ranks) - 1;
        if (claimed_row[peer] < 0) continue;
        window_pointer<uint4>(p, p.at.hidden, peer)[claimed_row[peer] * row_pieces + piece] = value;
      }
    }
    __syncthreads();  // before the next token reuses the shared words
  }
  // Every rank's rows for this one are written (the release half) and visible here (acquire).
  lsa_barrier(p);
}

__global__ void __launch_bounds__(kThreads)
    return_kernel(const __grid_constant__ ExchangeParams p) {
  const int64_t capacity = int64_t(p.world_size) * p.tokens;
  const int64_t received = *window_pointer<int32_t>(p, p.at.counter, p.rank);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    // For the reduce kernel, which resets the counter and the received rows' ids.
    window_pointer<int32_t>(p, p.at.counter, p.rank)[1] = int32_t(received);
    if (received > capacity && p.error_flags != nullptr) {
      atomicOr(p.error_flags, kErrorExchangeOverflow);
    }
  }
  const int32_t* source = window_pointer<int32_t>(p, p.at.source, p.rank);
  const int64_t rows = received < capacity ? received : capacity;
  const int64_t row_pieces = int64_t(p.hidden) * 4 / 16;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int32_t from = source[row];
    const int peer = from / p.max_tokens_per_rank, token = from % p.max_tokens_per_rank;
    auto* to = window_pointer<uint4>(p, p.at.returned, peer) +
               (int64_t(p.rank) * p.max_tokens_per_rank + token) * row_pieces;
    const auto* sums = reinterpret_cast<const uint4*>(p.sums + row * p.hidden);
#pragma unroll 4
    for (int64_t piece = threadIdx.x; piece < row_pieces; piece += kThreads) {
      to[piece] = __ldg(sums + piece);
    }
  }
  // Every rank's returns to this one are written and visible.
  lsa_barrier(p);
}

__global__ void __launch_bounds__(kThreads)
    reduce_kernel(const __grid_constant__ ExchangeParams p) {
  __shared__ uint32_t sent_to;
  const float4* returned = window_pointer<float4>(p, p.at.returned, p.rank);
  const int64_t row_pieces = p.hidden / 4;
  const int64_t region_pieces = int64_t(p.max_tokens_per_rank) * row_pieces;
  for (int64_t token = blockIdx.x; token < p.tokens; token += gridDim.x) {
    if (threadIdx.x < 32) {
      const uint32_t ranks = token_route(p, token, threadIdx.x).destinations;
      if (threadIdx.x == 0) sent_to = ranks;
    }
    __syncthreads();
#pragma unroll 2
    for (int64_t piece = threadIdx.x; piece < row_pieces; piece += kThreads) {
      float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      for (uint32_t ranks = sent_to; ranks != 0; ranks &= ranks - 1) {  // in rank order
        const int peer = __ffs(ranks) - 1;
        const float4 v = __ldg(returned + peer * region_pieces + token * row_pieces + piece);
        sum.x += v.x;
        sum.y += v.y;
        sum.z += v.z;
        sum.w += v.w;
      }
      reinterpret_cast<uint2*>(p.output + token * p.hidden)[piece] =
          make_uint2(uint32_t{float_to_bf16(sum.x)} | (uint32_t{float_to_bf16(sum.y)} << 16),
                     uint32_t{float_to_bf16(sum.z)} | (uint32_t{float_to_bf16(sum.w)} << 16));
    }
    __syncthreads();
  }
  // Ready for the next forward: no rows received, and the received rows' ids back to -1 (no
  // block reads the counter or these ids here; the return kernel left the count in word 1).
  int32_t* counter = window_pointer<int32_t>(p, p.at.counter, p.rank);
  const int64_t rows_per_window = int64_t(p.world_size) * p.max_tokens_per_rank;
  const int64_t received = counter[1] < rows_per_window ? counter[1] : rows_per_window;
  int32_t* ids = window_pointer<int32_t>(p, p.at.ids, p.rank);
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < received * p.top_k;
       i += int64_t(gridDim.x) * kThreads) {
    ids[i] = -1;
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) counter[0] = 0;
}

}  // namespace

ExchangeWindow exchange_window(int world_size, int64_t max_tokens_per_rank, int64_t hidden,
                               int64_t top_k) {
  const size_t rows = size_t(world_size) * size_t(max_tokens_per_rank);
  ExchangeWindow w;
  Regions regions;
  w.counter = regions.take(8);  // the counter, and the count the return kernel saw
  w.hidden = regions.take(rows * size_t(hidden) * 2);
  w.ids = regions.take(rows * size_t(top_k) * 4);
  w.weights = regions.take(rows * size_t(top_k) * 4);
  w.source = regions.take(rows * 4);
  w.returned = regions.take(rows * size_t(hidden) * 4);
  w.bytes = regions.end();
  return w;
}

cudaError_t launch_dispatch(const ExchangeParams& params, cudaStream_t stream) {
  dispatch_kernel<<<kExchangeBlocks, kThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

cudaError_t launch_return(const ExchangeParams& params, cudaStream_t stream) {
  return_kernel<<<kExchangeBlocks, kThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

cudaError_t launch_reduce(const ExchangeParams& params, cudaStream_t stream) {
  const int blocks = static_cast<int>(std::clamp<int64_t>(params.tokens, 1, 1024));
  reduce_kernel<<<blocks, kThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace nvfp4moe::cuda
