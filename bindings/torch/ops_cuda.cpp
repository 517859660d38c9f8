// The CUDA implementations of the torch ops (schemas and CPU implementations: ops.cpp). Built
// when both torch and the library have CUDA.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>

#include "nvfp4moe/device_forward.hpp"
#include "ops_common.hpp"

namespace nvfp4moe::torch_ops {

namespace {

template <typename T>
T* ptr(const at::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

cudaStream_t stream_of(const at::Tensor& t) {
  return at::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

// GPU order for a workspace (see ops.cpp's header): a forward on another stream than the
// workspace's last one waits for that stream first. Not under capture, where the caller orders.
void order_after_last_use(WorkspaceUse& use, int device, cudaStream_t stream) {
  WorkspaceStripe& stripe = use.stripe();
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capturing));
  if (capturing != cudaStreamCaptureStatusNone) return;
  auto* last = static_cast<cudaStream_t>(stripe.last_stream);
  if (last != nullptr && stripe.device == device && last != stream) {
    cudaStreamCaptureStatus last_capturing = cudaStreamCaptureStatusNone;
    C10_CUDA_CHECK(cudaStreamIsCapturing(last, &last_capturing));
    if (last_capturing == cudaStreamCaptureStatusNone) {
      if (stripe.event == nullptr || stripe.event_device != device) {
        if (stripe.event != nullptr) (void)cudaEventDestroy(static_cast<cudaEvent_t>(stripe.event));
        cudaEvent_t event = nullptr;
        C10_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
        stripe.event = event;
        stripe.event_device = device;
      }
      C10_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(stripe.event), last));
      C10_CUDA_CHECK(cudaStreamWaitEvent(stream, static_cast<cudaEvent_t>(stripe.event), 0));
    }
  }
  stripe.last_stream = stream;
  stripe.device = device;
}

void quantize_cuda(const at::Tensor& x, std::optional<double> global_scale, at::Tensor values,
                   at::Tensor scales, at::Tensor global_scale_out) {
  quantize_common(x, values, scales, global_scale_out);
  if (x.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  translating([&] {
    std::optional<float> g;
    if (global_scale) {
      g = static_cast<float>(*global_scale);
      global_scale_out.fill_(*g);
    }
    quantize_on_device(x.data_ptr(), x.scalar_type() == at::kFloat, x.size(0), x.size(1), g,
                       ptr<uint8_t>(values), ptr<uint8_t>(scales), ptr<float>(global_scale_out),
                       stream_of(x));
  });
}

void prepare_weights_cuda(const at::Tensor& values, const at::Tensor& scales, bool gate_up,
                          at::Tensor codes, at::Tensor scale_codes) {
  int64_t experts, rows, k;
  prepare_common(values, scales, gate_up, codes, scale_codes, experts, rows, k);
  const c10::cuda::CUDAGuard guard(values.device());
  translating([&] {
    prepare_on_device(ptr<const uint8_t>(values), ptr<const uint8_t>(scales), experts, rows, k,
                      gate_up, ptr<uint8_t>(codes), ptr<uint8_t>(scale_codes), stream_of(values));
  });
}

void moe_forward_cuda(NVFP4MOE_MOE_ARGS) {
  const auto [c, tokens] = check_moe_call(NVFP4MOE_MOE_ARG_NAMES);
  const c10::cuda::CUDAGuard guard(hidden.device());
  WorkspaceUse use(workspace);
  order_after_last_use(use, hidden.device().index(), stream_of(hidden));
  translating([&] {
    DeviceMoeWeights w;
    w.gate_up_codes = ptr<const uint8_t>(w13_codes);
    w.gate_up_scales = ptr<const uint8_t>(w13_scale_codes);
    w.down_codes = ptr<const uint8_t>(w2_codes);
    w.down_scales = ptr<const uint8_t>(w2_scale_codes);
    w.gate_global_scale = ptr<const float>(w13_global_scale);
    w.up_global_scale = ptr<const float>(w13_global_scale) + c.num_local_experts;
    w.down_global_scale = ptr<const float>(w2_global_scale);
    w.gate_up_input_scale = w13_input_scale ? ptr<const float>(*w13_input_scale) : nullptr;
    w.down_input_scale = w2_input_scale ? ptr<const float>(*w2_input_scale) : nullptr;
    forward_on_device(c, w,
                      {tokens, ptr<const uint16_t>(hidden), ptr<const int32_t>(topk_ids),
                       ptr<const float>(topk_weights), ptr<uint16_t>(out)},
                      workspace.data_ptr(), reinterpret_cast<uint32_t*>(ptr<int32_t>(errors)),
                      stream_of(hidden));
  });
}

void linear_cuda(NVFP4MOE_LINEAR_ARGS) {
  const LinearConfig c = check_linear_call(NVFP4MOE_LINEAR_ARG_NAMES);
  const c10::cuda::CUDAGuard guard(x.device());
  WorkspaceUse use(workspace);
  order_after_last_use(use, x.device().index(), stream_of(x));
  translating([&] {
    linear_on_device(c, ptr<const uint8_t>(codes), ptr<const uint8_t>(scale_codes),
                     ptr<const float>(global_scale),
                     input_scale ? ptr<const float>(*input_scale) : nullptr, x.size(0),
                     ptr<const uint16_t>(x), ptr<uint16_t>(out), workspace.data_ptr(),
                     reinterpret_cast<uint32_t*>(ptr<int32_t>(errors)), stream_of(x));
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(nvfp4moe, CUDA, m) {
  m.impl("quantize", &quantize_cuda);
  m.impl("prepare_weights", &prepare_weights_cuda);
  m.impl("moe_forward", &moe_forward_cuda);
  m.impl("linear", &linear_cuda);
}

}  // namespace nvfp4moe::torch_ops
