#include "cublas_api.hpp"

#include <dlfcn.h>

#include <array>
#include <cstdlib>

#include "core/check.hpp"

namespace nvfp4moe::bench {

namespace {
template <typename F>
F resolve(void* library, const char* name, bool required) {
  void* symbol = dlsym(library, name);
  require(symbol != nullptr || !required, ErrorKind::kUnsupported,
          "cuBLAS has no symbol {}; the benchmark needs cuBLAS 12.5 or newer", name);
  return reinterpret_cast<F>(symbol);
}
}  // namespace

CublasApi::CublasApi() {
  std::string tried;
  const std::array<const char*, 4> candidates = {std::getenv("NVFP4MOE_CUBLAS"), "libcublas.so.13",
                                                 "libcublas.so",
                                                 "/usr/local/cuda/lib64/libcublas.so.13"};
  for (const char* name : candidates) {
    if (name == nullptr) continue;
    library_handle_ = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (library_handle_ != nullptr) {
      library_ = name;
      break;
    }
    tried += std::string(tried.empty() ? "" : ", ") + name;
  }
  require(library_handle_ != nullptr, ErrorKind::kUnsupported,
          "bench: cannot load cuBLAS (tried {}); set NVFP4MOE_CUBLAS to its path", tried);
  create_ = resolve<decltype(create_)>(library_handle_, "cublasCreate_v2", true);
  destroy_ = resolve<decltype(destroy_)>(library_handle_, "cublasDestroy_v2", true);
  set_stream = resolve<decltype(set_stream)>(library_handle_, "cublasSetStream_v2", true);
  gemm_ex = resolve<decltype(gemm_ex)>(library_handle_, "cublasGemmEx", true);
  gemm_grouped_batched_ex = resolve<decltype(gemm_grouped_batched_ex)>(
      library_handle_, "cublasGemmGroupedBatchedEx", false);
  check_cublas(create_(&handle_), "cublasCreate");
}

CublasApi::~CublasApi() {
  if (handle_ != nullptr) destroy_(handle_);
  if (library_handle_ != nullptr) dlclose(library_handle_);
}

void check_cublas(cublasStatus_t status, const char* what) {
  require(status == CUBLAS_STATUS_SUCCESS, ErrorKind::kCuda, "{} failed: cuBLAS status {}", what,
          static_cast<int>(status));
}

}  // namespace nvfp4moe::bench
