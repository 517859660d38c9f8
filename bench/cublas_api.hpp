// cuBLAS, loaded at run time with dlopen: only the benchmark needs it (for its ceilings and its
// BF16 peer), so the library and the rest of the tool neither link nor require it.
#pragma once

#include <cublas_v2.h>

#include <string>

#include "core/dynamic_library.hpp"

namespace nvfp4moe::bench {

class CublasApi {
 public:
  // Loads libcublas.so.13 (or the library named by NVFP4MOE_CUBLAS); throws Error if absent.
  CublasApi();
  ~CublasApi();
  CublasApi(const CublasApi&) = delete;
  CublasApi& operator=(const CublasApi&) = delete;

  cublasHandle_t handle() const { return handle_; }
  const std::string& library() const { return library_.name(); }

  using SetStream = cublasStatus_t (*)(cublasHandle_t, cudaStream_t);
  using GemmEx = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int,
                                    int, const void*, const void*, cudaDataType, int, const void*,
                                    cudaDataType, int, const void*, void*, cudaDataType, int,
                                    cublasComputeType_t, cublasGemmAlgo_t);
  using GemmGroupedBatchedEx = cublasStatus_t (*)(
      cublasHandle_t, const cublasOperation_t[], const cublasOperation_t[], const int[],
      const int[], const int[], const void*, const void* const[], cudaDataType, const int[],
      const void* const[], cudaDataType, const int[], const void*, void* const[], cudaDataType,
      const int[], int, const int[], cublasComputeType_t);

  SetStream set_stream = nullptr;
  GemmEx gemm_ex = nullptr;
  GemmGroupedBatchedEx gemm_grouped_batched_ex = nullptr;  // null before cuBLAS 12.5

 private:
  DynamicLibrary library_;
  cublasStatus_t (*create_)(cublasHandle_t*) = nullptr;
  cublasStatus_t (*destroy_)(cublasHandle_t) = nullptr;
  cublasHandle_t handle_ = nullptr;
};

// Throws Error naming the call when a cuBLAS status is not success.
void check_cublas(cublasStatus_t status, const char* what);

}  // namespace nvfp4moe::bench
