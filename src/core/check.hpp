// Internal helpers that turn a failed check into an nvfp4moe::Error with a formatted message.
#pragma once

#include <fmt/format.h>

#include <utility>

#include "nvfp4moe/error.hpp"

namespace nvfp4moe {

template <typename... Args>
[[noreturn]] void fail(ErrorKind kind, fmt::format_string<Args...> format, Args&&... args) {
  throw Error(kind, fmt::format(format, std::forward<Args>(args)...));
}

template <typename... Args>
void require(bool condition, ErrorKind kind, fmt::format_string<Args...> format, Args&&... args) {
  if (!condition) fail(kind, format, std::forward<Args>(args)...);
}

}  // namespace nvfp4moe
