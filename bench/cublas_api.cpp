#include "cublas_api.hpp"

#include <cstdlib>

#include "core/check.hpp"

namespace nvfp4moe::bench {

CublasApi::CublasApi()
    : library_({std::getenv("NVFP4MOE_CUBLAS"), "libcublas.so.13", "libcublas.so",
                "/usr/local/cuda/lib64/libcublas.so.13"},
               "cuBLAS (the benchmark's ceilings and peer)", "NVFP4MOE_CUBLAS") {
  create_ = library_.function<decltype(create_)>("cublasCreate_v2");
  destroy_ = library_.function<decltype(destroy_)>("cublasDestroy_v2");
  set_stream = library_.function<SetStream>("cublasSetStream_v2");
  gemm_ex = library_.function<GemmEx>("cublasGemmEx");
  // cuBLAS 12.5 and newer; without it the peer runs one GEMM per expert.
  gemm_grouped_batched_ex =
      library_.function<GemmGroupedBatchedEx>("cublasGemmGroupedBatchedEx", /*required=*/false);
  check_cublas(create_(&handle_), "cublasCreate");
}

CublasApi::~CublasApi() {
  if (handle_ != nullptr) destroy_(handle_);
}

void check_cublas(cublasStatus_t status, const char* what) {
  require(status == CUBLAS_STATUS_SUCCESS, ErrorKind::kCuda, "{} failed: cuBLAS status {}", what,
          static_cast<int>(status));
}

}  // namespace nvfp4moe::bench
