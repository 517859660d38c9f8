// One allocation cut into regions in order, each starting on a 256-byte boundary: the layouts
// of the forward's workspace, the expert-parallel workspaces and the all-to-all's window.
#pragma once

#include <cstddef>

namespace nvfp4moe::cuda {

class Regions {
 public:
  static constexpr size_t kAlign = 256;

  // The offset of a new region of `bytes` after the previous ones.
  size_t take(size_t bytes) {
    const size_t offset = end_;
    end_ += (bytes + kAlign - 1) / kAlign * kAlign;
    return offset;
  }
  // The bytes of all regions so far.
  size_t end() const { return end_; }

 private:
  size_t end_ = 0;
};

}  // namespace nvfp4moe::cuda
