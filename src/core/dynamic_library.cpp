#include "core/dynamic_library.hpp"

#include <dlfcn.h>

#include "core/check.hpp"

namespace nvfp4moe {

DynamicLibrary::DynamicLibrary(std::initializer_list<const char*> candidates, const char* what,
                               const char* override_variable)
    : what_(what) {
  std::string tried;
  for (const char* candidate : candidates) {
    if (candidate == nullptr) continue;
    handle_ = dlopen(candidate, RTLD_NOW | RTLD_LOCAL);
    if (handle_ != nullptr) {
      name_ = candidate;
      return;
    }
    tried += std::string(tried.empty() ? "" : ", ") + candidate;
  }
  fail(ErrorKind::kUnsupported, "cannot load {} (tried {}); set {} to the library's path", what,
       tried, override_variable);
}

DynamicLibrary::~DynamicLibrary() {
  if (handle_ != nullptr) dlclose(handle_);
}

void* DynamicLibrary::symbol(const char* symbol_name, bool required) const {
  void* address = dlsym(handle_, symbol_name);
  require(address != nullptr || !required, ErrorKind::kUnsupported, "{} ({}) has no symbol {}",
          what_, name_, symbol_name);
  return address;
}

}  // namespace nvfp4moe
