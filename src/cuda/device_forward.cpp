// The public GPU entry points over caller-owned memory (nvfp4moe/device_forward.hpp): thin
// forwards to the CUDA layer, with the stream as void* so that callers need no CUDA header.
#include "nvfp4moe/device_forward.hpp"

#include <cmath>

#include "core/check.hpp"
#include "cuda/common/cuda_check.hpp"
#include "cuda/expert_gemm.hpp"
#include "cuda/linear_forward.hpp"
#include "cuda/moe_forward.hpp"
#include "cuda/quant/quant.hpp"

namespace nvfp4moe {

namespace {

cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

void check_launch(cudaError_t status, const char* what) {
  require(status == cudaSuccess, ErrorKind::kCuda, "launching {} failed: {} ({})", what,
          cudaGetErrorString(status), cudaGetErrorName(status));
}

}  // namespace

void prepare_on_device(const uint8_t* values, const uint8_t* scales, int64_t experts, int64_t rows,
                       int64_t k, bool gate_up, uint8_t* codes, uint8_t* scale_codes,
                       void* stream) {
  require(experts >= 0 && rows > 0 && k > 0 && rows % 16 == 0 && k % 16 == 0 &&
              (!gate_up || rows % 32 == 0),
          ErrorKind::kInvalidArgument,
          "prepare: {} experts of [{}, {}]; expected positive multiples of 16 ({} for gate/up)",
          experts, rows, k, gate_up ? "rows of 32" : "16");
  cuda::expert_gemms(QuantMode::kW4A16)
      .prepare(values, scales, experts, rows, k, gate_up, codes, scale_codes, as_stream(stream));
}

void forward_on_device(const MoeConfig& config, const DeviceMoeWeights& weights,
                       const MoeForwardArgs& args, void* workspace, uint32_t* error_flags,
                       void* stream) {
  cuda::PreparedMoeWeights w;
  w.gate_up_codes = weights.gate_up_codes;
  w.gate_up_scales = weights.gate_up_scales;
  w.down_codes = weights.down_codes;
  w.down_scales = weights.down_scales;
  w.gate_scale = weights.gate_global_scale;
  w.up_scale = weights.up_global_scale;
  w.down_scale = weights.down_global_scale;
  w.gate_up_input_scale = weights.gate_up_input_scale;
  w.down_input_scale = weights.down_input_scale;
  cuda::moe_forward(config, w, args, nullptr, workspace, error_flags, as_stream(stream));
}

void linear_on_device(const LinearConfig& config, const uint8_t* codes, const uint8_t* scale_codes,
                      const float* weight_scale, const float* input_scale, int64_t tokens,
                      const uint16_t* x, uint16_t* out, void* workspace, uint32_t* error_flags,
                      void* stream) {
  cuda::linear_forward(config, codes, scale_codes, weight_scale, input_scale, tokens, x, out,
                       workspace, error_flags, as_stream(stream));
}

void quantize_on_device(const void* x, bool x_is_f32, int64_t rows, int64_t cols,
                        std::optional<float> global_scale, uint8_t* values, uint8_t* scales,
                        float* global_scale_out, void* stream) {
  require(rows >= 0 && cols > 0 && cols % 16 == 0, ErrorKind::kInvalidArgument,
          "quantize: x is [{}, {}]; expected cols a positive multiple of 16", rows, cols);
  require(!global_scale || (std::isfinite(*global_scale) && *global_scale > 0.0f),
          ErrorKind::kInvalidArgument, "quantize: global_scale {} must be finite and > 0",
          global_scale.value_or(0.0f));
  if (rows == 0) return;
  const cudaStream_t s = as_stream(stream);
  cuda::QuantizeSource source;
  source.input = x;
  source.input_is_f32 = x_is_f32;
  source.input_row_stride = cols;
  source.max_rows = rows;
  source.cols = static_cast<int32_t>(cols);
  if (global_scale) {
    source.scale_source = cuda::ActivationScaleSource::kOne;
    source.static_scale = *global_scale;
  } else {
    // The amax goes through global_scale_out's bytes, then becomes the scale in place.
    auto* amax = reinterpret_cast<uint32_t*>(global_scale_out);
    NVFP4MOE_CUDA_CHECK(cudaMemsetAsync(amax, 0, sizeof(uint32_t), s));
    check_launch(cuda::launch_amax(source, amax, s), "amax");
    source.scale_source = cuda::ActivationScaleSource::kFromAmax;
    source.amax_bits = amax;
  }
  check_launch(cuda::launch_quantize_nvfp4(source, values, scales, s), "quantize");
  if (!global_scale) {
    check_launch(cuda::launch_amax_to_global_scale(global_scale_out, s), "global scale");
  }
}

}  // namespace nvfp4moe
