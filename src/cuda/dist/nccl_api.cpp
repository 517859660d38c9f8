#include "cuda/dist/nccl_api.hpp"

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
