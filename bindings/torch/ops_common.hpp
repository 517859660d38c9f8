// What the torch ops of nvfp4moe share (ops.cpp, ops_cuda.cpp): the translation of library
// errors into Python exceptions, the checks of tensors against the schemas, the configs built
// from op arguments, and the workspace's serialization.
#pragma once

#include <ATen/ATen.h>

#include <mutex>
#include <optional>
#include <string>
#include <tuple>

#include "nvfp4moe/error.hpp"
#include "nvfp4moe/linear.hpp"
#include "nvfp4moe/moe.hpp"

namespace nvfp4moe::torch_ops {

// Library errors become Python exceptions of the matching kind.
template <typename F>
auto translating(F&& body) {
  try {
    return body();
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::kInvalidArgument || e.kind() == ErrorKind::kInvalidFile) {
      TORCH_CHECK_VALUE(false, e.what());
    }
    if (e.kind() == ErrorKind::kUnsupported) TORCH_CHECK_NOT_IMPLEMENTED(false, e.what());
    if (e.kind() == ErrorKind::kOutOfMemory) TORCH_CHECK_WITH(OutOfMemoryError, false, e.what());
    TORCH_CHECK(false, e.what());
  }
}

inline void expect(const at::Tensor& t, const char* name, at::ScalarType dtype,
                   const at::Device& device) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, "nvfp4moe: ", name, " must be ", dtype, ", got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == device, "nvfp4moe: ", name, " is on ", t.device(),
                    " but the other inputs are on ", device);
  TORCH_CHECK_VALUE(t.is_contiguous(), "nvfp4moe: ", name, " must be contiguous");
}

inline void expect_shape(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK_VALUE(t.sizes() == shape, "nvfp4moe: ", name, " has shape ", t.sizes(), ", expected ",
                    shape);
}

inline void expect_bytes(const at::Tensor& t, const char* name, int64_t bytes) {
  TORCH_CHECK_VALUE(t.nbytes() == size_t(bytes), "nvfp4moe: ", name, " has ", t.nbytes(),
                    " bytes, expected ", bytes);
}

// Block scales may arrive as uint8 or as float8_e4m3fn (ModelOpt checkpoints): same bytes.
inline void expect_scales(const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kByte || t.scalar_type() == at::kFloat8_e4m3fn,
                   "nvfp4moe: ", name, " must be uint8 or float8_e4m3fn, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == device, "nvfp4moe: ", name, " is on ", t.device(),
                    " but the other inputs are on ", device);
  TORCH_CHECK_VALUE(t.is_contiguous(), "nvfp4moe: ", name, " must be contiguous");
}

template <typename T>
T* ptr(const at::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

// Holds a workspace for one forward (see ops.cpp's header): its stripe's lock for as long as it
// lives. Workspaces hash to one of a fixed set of stripes, so the state stays bounded however
// many are made and freed; the CUDA ops keep the stripe's last stream in it.
struct WorkspaceStripe {
  std::mutex mutex;
  void* last_stream = nullptr;  // cudaStream_t of the stripe's last forward
  int device = -1;
  void* event = nullptr;  // cudaEvent_t
  int event_device = -1;
};
WorkspaceStripe& workspace_stripe(const at::Tensor& workspace);

class WorkspaceUse {
 public:
  explicit WorkspaceUse(const at::Tensor& workspace)
      : stripe_(workspace_stripe(workspace)), lock_(stripe_.mutex) {}
  WorkspaceStripe& stripe() { return stripe_; }

 private:
  WorkspaceStripe& stripe_;
  std::lock_guard<std::mutex> lock_;
};

MoeConfig moe_config(int64_t num_experts, int64_t num_local_experts, int64_t first_local_expert,
                     int64_t hidden, int64_t intermediate, int64_t top_k, int64_t max_tokens,
                     c10::string_view mode, c10::string_view activation_scale,
                     c10::string_view activation, double swiglu_limit);
LinearConfig linear_config(int64_t in_features, int64_t out_features, int64_t max_tokens,
                           c10::string_view mode, c10::string_view activation_scale);

std::tuple<int64_t, int64_t> prepared_bytes(int64_t rows, int64_t k, c10::string_view device);

// The checks each op makes before either backend computes.
void quantize_common(const at::Tensor& x, const at::Tensor& values, const at::Tensor& scales,
                     const at::Tensor& global_scale_out);
void prepare_common(const at::Tensor& values, const at::Tensor& scales, bool gate_up,
                    at::Tensor& codes, at::Tensor& scale_codes, int64_t& experts, int64_t& rows,
                    int64_t& k);

#define NVFP4MOE_MOE_ARGS                                                                        \
  const at::Tensor &hidden, const at::Tensor &topk_ids, const at::Tensor &topk_weights,          \
      const at::Tensor &w13_codes, const at::Tensor &w13_scale_codes,                            \
      const at::Tensor &w13_global_scale, const at::Tensor &w2_codes,                            \
      const at::Tensor &w2_scale_codes, const at::Tensor &w2_global_scale,                       \
      const std::optional<at::Tensor>&w13_input_scale,                                           \
      const std::optional<at::Tensor>&w2_input_scale, int64_t num_experts,                       \
      int64_t first_local_expert, int64_t hidden_size, int64_t intermediate, int64_t top_k,      \
      int64_t max_tokens, c10::string_view mode, c10::string_view activation_scale,              \
      c10::string_view activation, double swiglu_limit, at::Tensor workspace, at::Tensor errors, \
      at::Tensor out

#define NVFP4MOE_MOE_ARG_NAMES                                                                  \
  hidden, topk_ids, topk_weights, w13_codes, w13_scale_codes, w13_global_scale, w2_codes,       \
      w2_scale_codes, w2_global_scale, w13_input_scale, w2_input_scale, num_experts,            \
      first_local_expert, hidden_size, intermediate, top_k, max_tokens, mode, activation_scale, \
      activation, swiglu_limit, workspace, errors, out

struct CheckedMoe {
  MoeConfig config;
  int64_t tokens;
};
// The config, every tensor against it, and the workspace against workspace_bytes.
CheckedMoe check_moe_call(NVFP4MOE_MOE_ARGS);

#define NVFP4MOE_LINEAR_ARGS                                                       \
  const at::Tensor &x, const at::Tensor &codes, const at::Tensor &scale_codes,     \
      const at::Tensor &global_scale, const std::optional<at::Tensor>&input_scale, \
      int64_t out_features, int64_t max_tokens, c10::string_view mode,             \
      c10::string_view activation_scale, at::Tensor workspace, at::Tensor errors, at::Tensor out

#define NVFP4MOE_LINEAR_ARG_NAMES                                                   \
  x, codes, scale_codes, global_scale, input_scale, out_features, max_tokens, mode, \
      activation_scale, workspace, errors, out

// The config, every tensor against it, and the workspace against linear_workspace_bytes.
LinearConfig check_linear_call(NVFP4MOE_LINEAR_ARGS);

}  // namespace nvfp4moe::torch_ops
