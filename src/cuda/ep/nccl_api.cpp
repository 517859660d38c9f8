#include "cuda/ep/nccl_api.hpp"

#include <cstdlib>

#include "core/check.hpp"

namespace nvfp4moe::cuda {

NcclApi& NcclApi::get() {
  static NcclApi api;
  return api;
}

NcclApi::NcclApi()
    : library_({std::getenv("NVFP4MOE_NCCL"), "libnccl.so.2", "/usr/local/cuda/lib64/libnccl.so.2"},
               "NCCL (expert parallelism)", "NVFP4MOE_NCCL") {
  comm_init_all = library_.function<decltype(comm_init_all)>("ncclCommInitAll");
  comm_destroy = library_.function<decltype(comm_destroy)>("ncclCommDestroy");
  all_gather = library_.function<decltype(all_gather)>("ncclAllGather");
  all_reduce = library_.function<decltype(all_reduce)>("ncclAllReduce");
  reduce_scatter = library_.function<decltype(reduce_scatter)>("ncclReduceScatter");
  group_start = library_.function<decltype(group_start)>("ncclGroupStart");
  group_end = library_.function<decltype(group_end)>("ncclGroupEnd");
  error_string = library_.function<decltype(error_string)>("ncclGetErrorString");
  get_version = library_.function<decltype(get_version)>("ncclGetVersion");
  constexpr bool kOptional = false;
  mem_alloc = library_.function<decltype(mem_alloc)>("ncclMemAlloc", kOptional);
  mem_free = library_.function<decltype(mem_free)>("ncclMemFree", kOptional);
  window_register =
      library_.function<decltype(window_register)>("ncclCommWindowRegister", kOptional);
  window_deregister =
      library_.function<decltype(window_deregister)>("ncclCommWindowDeregister", kOptional);
  dev_comm_create = library_.function<decltype(dev_comm_create)>("ncclDevCommCreate", kOptional);
  dev_comm_destroy = library_.function<decltype(dev_comm_destroy)>("ncclDevCommDestroy", kOptional);
}

int NcclApi::version() const {
  int code = 0;
  check(get_version(&code), "ncclGetVersion");
  return code;
}

void NcclApi::require_device_api(const char* who) const {
  const int code = version();
  // Version codes since 2.9: major * 10000 + minor * 100 + patch.
  const bool same_series = code / 100 == NCCL_VERSION_CODE / 100;
  require(same_series && code >= NCCL_VERSION_CODE && dev_comm_create != nullptr &&
              window_register != nullptr && mem_alloc != nullptr,
          ErrorKind::kUnsupported,
          "{} needs NCCL's device API as compiled against (NCCL {}.{}.x, at least {}.{}.{}), but "
          "{} is NCCL {}.{}.{}; point NVFP4MOE_NCCL at a matching libnccl.so.2",
          who, NCCL_MAJOR, NCCL_MINOR, NCCL_MAJOR, NCCL_MINOR, NCCL_PATCH, library_.name(),
          code / 10000, code / 100 % 100, code % 100);
}

void NcclApi::check(ncclResult_t result, const char* what) const {
  require(result == ncclSuccess, ErrorKind::kCuda, "{} failed: {}", what, error_string(result));
}

LocalCommunicators::LocalCommunicators(const std::vector<int>& devices) {
  NcclApi& nccl = NcclApi::get();
  comms_.resize(devices.size());
  nccl.check(nccl.comm_init_all(comms_.data(), static_cast<int>(devices.size()), devices.data()),
             "ncclCommInitAll");
}

LocalCommunicators::~LocalCommunicators() {
  for (ncclComm_t comm : comms_) {
    if (comm != nullptr) NcclApi::get().comm_destroy(comm);
  }
}

}  // namespace nvfp4moe::cuda
