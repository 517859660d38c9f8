// NCCL, loaded at run time with dlopen: only expert parallelism needs it, so neither the library
// nor the tool links it, and a missing NCCL is an Error only for those who ask for it.
#pragma once

#include <nccl.h>
#include <nccl_device/impl/comm__types.h>

#include <string>
#include <vector>

#include "core/dynamic_library.hpp"

namespace nvfp4moe::cuda {

class NcclApi {
 public:
  // The process-wide instance; loads libnccl.so.2 (or NVFP4MOE_NCCL) on first use.
  static NcclApi& get();

  const std::string& library() const { return library_.name(); }
  void check(ncclResult_t result, const char* what) const;

  ncclResult_t (*comm_init_all)(ncclComm_t*, int, const int*) = nullptr;
  ncclResult_t (*comm_destroy)(ncclComm_t) = nullptr;
  ncclResult_t (*all_gather)(const void*, void*, size_t, ncclDataType_t, ncclComm_t,
                             cudaStream_t) = nullptr;
  ncclResult_t (*all_reduce)(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t,
                             cudaStream_t) = nullptr;
  ncclResult_t (*reduce_scatter)(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t,
                                 ncclComm_t, cudaStream_t) = nullptr;
  ncclResult_t (*group_start)() = nullptr;
  ncclResult_t (*group_end)() = nullptr;
  const char* (*error_string)(ncclResult_t) = nullptr;
  ncclResult_t (*get_version)(int*) = nullptr;

  // The device API (symmetric memory windows, device communicators), NCCL >= 2.28. Null when
  // the loaded library predates it; require_device_api() says so in words.
  ncclResult_t (*mem_alloc)(void**, size_t) = nullptr;
  ncclResult_t (*mem_free)(void*) = nullptr;
  ncclResult_t (*window_register)(ncclComm_t, void*, size_t, ncclWindow_t*, int) = nullptr;
  ncclResult_t (*window_deregister)(ncclComm_t, ncclWindow_t) = nullptr;
  ncclResult_t (*dev_comm_create)(ncclComm_t, const ncclDevCommRequirements_t*,
                                  ncclDevComm_t*) = nullptr;
  ncclResult_t (*dev_comm_destroy)(ncclComm_t, const ncclDevComm_t*) = nullptr;

  // The loaded library's version code (NCCL_VERSION_CODE form, e.g. 22809 for 2.28.9).
  int version() const;
  // An Error unless the loaded NCCL has the device API with the ncclDevComm layout this build
  // was compiled against (the headers' major.minor, at least their patch level).
  void require_device_api(const char* who) const;

 private:
  NcclApi();
  DynamicLibrary library_;
};

// Communicators for `devices.size()` ranks driven from this process (ncclCommInitAll).
class LocalCommunicators {
 public:
  explicit LocalCommunicators(const std::vector<int>& devices);
  ~LocalCommunicators();
  LocalCommunicators(const LocalCommunicators&) = delete;
  LocalCommunicators& operator=(const LocalCommunicators&) = delete;
  ncclComm_t operator[](size_t rank) const { return comms_[rank]; }
  size_t size() const { return comms_.size(); }

 private:
  std::vector<ncclComm_t> comms_;
};

}  // namespace nvfp4moe::cuda
