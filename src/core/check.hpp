// Internal helpers that turn a failed check into an nvfp4moe::Error with a formatted message.
#pragma once

#include <fmt/format.h>

#include <new>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "nvfp4moe/error.hpp"

namespace nvfp4moe {

// A name from an untrusted file, fit for a one-line message: control characters escaped and
// anything past `max_chars` cut with its length said.
inline std::string printable(std::string_view text, size_t max_chars = 160) {
  std::string out;
  for (size_t i = 0; i < text.size() && i < max_chars; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c == 0x7F) {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  if (text.size() > max_chars) out += fmt::format("... ({} bytes)", text.size());
  return out;
}

template <typename... Args>
[[noreturn]] void fail(ErrorKind kind, fmt::format_string<Args...> format, Args&&... args) {
  throw Error(kind, fmt::format(format, std::forward<Args>(args)...));
}

template <typename... Args>
void require(bool condition, ErrorKind kind, fmt::format_string<Args...> format, Args&&... args) {
  if (!condition) fail(kind, format, std::forward<Args>(args)...);
}

}  // namespace nvfp4moe

namespace nvfp4moe {

// A vector of `count` value-initialized elements; out of memory is an Error that says how much
// was asked for and `what` it was for, not a bare std::bad_alloc.
template <typename T>
std::vector<T> allocate_vector(size_t count, std::string_view what, T value = T()) {
  try {
    return std::vector<T>(count, value);
  } catch (const std::bad_alloc&) {
  } catch (const std::length_error&) {
  }
  fail(ErrorKind::kOutOfMemory, "out of memory: cannot allocate {:.0f} bytes of host memory for {}",
       static_cast<double>(count) * sizeof(T), what);
}

}  // namespace nvfp4moe
