// Errors of the public API.
//
// Every public entry point checks its inputs and throws nvfp4moe::Error with a message that
// names the problem and the expected value ("topk_ids[3,1] = 300 but the layer has 256
// experts"). The kind lets bindings map errors onto their own types (ValueError, IOError, ...).
#pragma once

#include <stdexcept>
#include <string>

namespace nvfp4moe {

enum class ErrorKind {
  kInvalidArgument,  // a caller passed a bad shape, value, id or configuration
  kInvalidFile,      // a file we read is malformed or does not hold what was asked for
  kIo,               // the operating system refused a file operation
  kCuda,             // the CUDA runtime or a library reported an error
  kUnsupported,      // the request is valid but this build or device cannot serve it
  kOutOfMemory,      // an allocation failed; the message says how much and for what
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

}  // namespace nvfp4moe
