// A shared library opened at run time (dlopen), for dependencies only some paths need (cuBLAS
// for the benchmark, NCCL for expert parallelism): nothing links them, and their absence is an
// Error only for whoever asks for them.
#pragma once

#include <initializer_list>
#include <string>

namespace nvfp4moe {

class DynamicLibrary {
 public:
  // Opens the first of `candidates` that loads (null entries are skipped); otherwise an Error
  // naming `what`, every name tried and the environment variable `override_variable` that can
  // point at it.
  DynamicLibrary(std::initializer_list<const char*> candidates, const char* what,
                 const char* override_variable);
  ~DynamicLibrary();
  DynamicLibrary(const DynamicLibrary&) = delete;
  DynamicLibrary& operator=(const DynamicLibrary&) = delete;

  const std::string& name() const { return name_; }

  // The symbol as a function pointer; null when absent and not required, else an Error.
  template <typename F>
  F function(const char* symbol_name, bool required = true) const {
    return reinterpret_cast<F>(symbol(symbol_name, required));
  }

 private:
  void* symbol(const char* symbol_name, bool required) const;
  void* handle_ = nullptr;
  std::string name_;
  std::string what_;
};

}  // namespace nvfp4moe
