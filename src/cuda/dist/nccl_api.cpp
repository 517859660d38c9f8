#include "cuda/dist/nccl_api.hpp"

#include <dlfcn.h>

#include <array>
#include <cstdlib>

#include "core/check.hpp"

namespace nvfp4moe::cuda {

NcclApi& NcclApi::get() {
  static NcclApi api;
  return api;
}

NcclApi::NcclApi() {
  std::string tried;
  const std::array<const char*, 3> candidates = {std::getenv("NVFP4MOE_NCCL"), "libnccl.so.2",
                                                 "/usr/local/cuda/lib64/libnccl.so.2"};
  for (const char* name : candidates) {
    if (name == nullptr) continue;
    handle_ = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (handle_ != nullptr) {
      library_ = name;
      break;
    }
    tried += std::string(tried.empty() ? "" : ", ") + name;
  }
  require(handle_ != nullptr, ErrorKind::kUnsupported,
          "expert parallelism: cannot load NCCL (tried {}); set NVFP4MOE_NCCL to libnccl.so.2",
          tried);
  auto resolve = [this](auto& function, const char* name) {
    void* symbol = dlsym(handle_, name);
    require(symbol != nullptr, ErrorKind::kUnsupported, "NCCL ({}) has no symbol {}", library_,
            name);
    function = reinterpret_cast<std::remove_reference_t<decltype(function)>>(symbol);
  };
  resolve(comm_init_all, "ncclCommInitAll");
  resolve(comm_destroy, "ncclCommDestroy");
  resolve(all_gather, "ncclAllGather");
  resolve(reduce_scatter, "ncclReduceScatter");
  resolve(all_reduce, "ncclAllReduce");
  resolve(group_start, "ncclGroupStart");
  resolve(group_end, "ncclGroupEnd");
  resolve(error_string, "ncclGetErrorString");
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
