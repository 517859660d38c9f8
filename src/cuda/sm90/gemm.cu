// Instantiations and the launcher of the grouped GEMM: 5 tile shapes x 4 epilogues.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include "cuda/common/launch.hpp"
#include "cuda/sm90/gemm_launch.hpp"
#include "cuda/sm90/heuristics.hpp"
#include "cuda/sm90/mma_sync_gemm.cuh"
#include "cuda/sm90/wgmma_gemm.cuh"

namespace nvfp4moe::cuda {

namespace {

// NVFP4MOE_GEMM_SHAPE, read once, not on every forward.
const std::optional<GemmShapeId>& forced_gemm_shape() {
  static const std::optional<GemmShapeId> forced = []() -> std::optional<GemmShapeId> {
    const char* name = std::getenv("NVFP4MOE_GEMM_SHAPE");
    if (name == nullptr) return std::nullopt;
    if (std::string(name) == "small") return GemmShapeId::kSmall;
    if (std::string(name) == "wgmma16") return GemmShapeId::kWgmma16;
    if (std::string(name) == "wgmma32") return GemmShapeId::kWgmma32;
    if (std::string(name) == "wgmma64") return GemmShapeId::kWgmma64;
    if (std::string(name) == "wgmma128") return GemmShapeId::kWgmma128;
    std::fprintf(stderr,
                 "nvfp4moe: ignoring NVFP4MOE_GEMM_SHAPE=%s; expected small, wgmma16, wgmma32, "
                 "wgmma64 or wgmma128\n",
                 name);
    return std::nullopt;
  }();
  return forced;
}

}  // namespace

GemmShapeId select_gemm_shape(int64_t routed_slots, int64_t num_local_experts, int64_t rows) {
  return forced_gemm_shape().value_or(gemm_shape_for(routed_slots, num_local_experts, rows));
}

GemmShapeId select_down_gemm_shape(GemmShapeId gate_up, int64_t routed_slots,
                                   int64_t num_local_experts, int64_t rows) {
  if (forced_gemm_shape()) return gate_up;
  return down_gemm_shape_for(gate_up, routed_slots, num_local_experts, rows);
}

namespace {

// Shared memory beyond 48 KB must be allowed per kernel and per device (the attribute belongs to
// the device's context; one process may drive several GPUs from several threads).
cudaError_t allow_dynamic_shared_memory(const void* kernel, int bytes) {
  static std::mutex mutex;
  static std::set<std::pair<const void*, int>> allowed;
  int device = 0;
  if (const cudaError_t status = cudaGetDevice(&device); status != cudaSuccess) return status;
  const std::lock_guard<std::mutex> lock(mutex);
  if (allowed.count({kernel, device}) != 0) return cudaSuccess;
  const cudaError_t status =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (status == cudaSuccess) allowed.insert({kernel, device});
  return status;
}

template <GemmShapeId kId, Epilogue kEpilogue>
cudaError_t launch_shape(const GemmParams& p, int grid_y, cudaStream_t stream, bool programmatic) {
  constexpr GemmShape s = gemm_shape(kId);
  const dim3 grid((p.row_groups + s.rows_per_block() / 16 - 1) / (s.rows_per_block() / 16), grid_y);
  if constexpr (s.wgmma_unit_n == 0) {
    using Cfg = GemmConfig<s.warps, s.groups_per_warp, s.tile_tokens, s.a_prefetch>;
    return launch_kernel(&mma_sync_gemm_kernel<Cfg, kEpilogue>, grid, dim3(Cfg::kThreads), 0,
                         stream, programmatic, p);
  } else {
    static_assert(s.warps % 4 == 0, "wgmma: whole warpgroups");
    using Cfg =
        WgmmaConfig<s.warps / 4, s.groups_per_warp, s.tile_tokens, s.wgmma_unit_n, s.stages>;
    const cudaError_t allowed = allow_dynamic_shared_memory(
        reinterpret_cast<const void*>(&wgmma_gemm_kernel<Cfg, kEpilogue>), Cfg::kSmemBytes);
    if (allowed != cudaSuccess) return allowed;
    return launch_kernel(&wgmma_gemm_kernel<Cfg, kEpilogue>, grid, dim3(Cfg::kThreads),
                         Cfg::kSmemBytes, stream, programmatic, p);
  }
}

template <Epilogue kEpilogue>
cudaError_t launch_epilogue(GemmShapeId id, const GemmParams& p, int grid_y, cudaStream_t stream,
                            bool programmatic) {
  switch (id) {
    case GemmShapeId::kSmall:
      return launch_shape<GemmShapeId::kSmall, kEpilogue>(p, grid_y, stream, programmatic);
    case GemmShapeId::kWgmma16:
      return launch_shape<GemmShapeId::kWgmma16, kEpilogue>(p, grid_y, stream, programmatic);
    case GemmShapeId::kWgmma32:
      return launch_shape<GemmShapeId::kWgmma32, kEpilogue>(p, grid_y, stream, programmatic);
    case GemmShapeId::kWgmma64:
      return launch_shape<GemmShapeId::kWgmma64, kEpilogue>(p, grid_y, stream, programmatic);
    case GemmShapeId::kWgmma128:
      return launch_shape<GemmShapeId::kWgmma128, kEpilogue>(p, grid_y, stream, programmatic);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_grouped_gemm(GemmShapeId shape, Epilogue epilogue, const GemmParams& params,
                                int grid_y, cudaStream_t stream, bool programmatic) {
  if (grid_y <= 0) return cudaSuccess;
  if (grid_y > 65535 || params.row_groups <= 0 || params.k_chunks <= 0 ||
      params.k_chunks > kMaxKChunks)
    return cudaErrorInvalidValue;
  if (params.b_rows < 0 || params.b_row_stride % 8 != 0 ||
      params.b_rows * params.b_row_stride >= (int64_t(1) << 34))  // bf16 elements: 32 GiB
    return cudaErrorInvalidValue;
  switch (epilogue) {
    case Epilogue::kGateUpBf16:
      return launch_epilogue<Epilogue::kGateUpBf16>(shape, params, grid_y, stream, programmatic);
    case Epilogue::kGateUpF32:
      return launch_epilogue<Epilogue::kGateUpF32>(shape, params, grid_y, stream, programmatic);
    case Epilogue::kDownCombine:
      return launch_epilogue<Epilogue::kDownCombine>(shape, params, grid_y, stream, programmatic);
    case Epilogue::kLinear:
      return launch_epilogue<Epilogue::kLinear>(shape, params, grid_y, stream, programmatic);
  }
  return cudaErrorInvalidValue;
}

}  // namespace nvfp4moe::cuda
