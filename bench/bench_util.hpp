// Pieces the benchmarks share: a stream, a captured graph, the median of event-timed runs,
// random NVFP4 weights. Host code; errors are nvfp4moe::Error.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "core/parallel.hpp"
#include "core/synthetic.hpp"
#include "cuda/common/cuda_check.hpp"
#include "nvfp4moe/error.hpp"
#include "nvfp4moe/moe.hpp"

namespace nvfp4moe::bench {

class Stream {
 public:
  Stream() { NVFP4MOE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  ~Stream() { cudaStreamDestroy(stream_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

class Graph {
 public:
  Graph() = default;
  ~Graph() {
    if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
  }
  Graph(Graph&& other) noexcept : exec_(std::exchange(other.exec_, nullptr)) {}
  Graph(const Graph&) = delete;

  // Captures what `enqueue` issues on `stream`; false (and nothing kept) if capture failed.
  template <typename F>
  static std::optional<Graph> capture(cudaStream_t stream, F&& enqueue) {
    NVFP4MOE_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    bool ok = true;
    try {
      enqueue();
    } catch (const Error&) {
      ok = false;
    }
    cudaGraph_t graph = nullptr;
    const cudaError_t end = cudaStreamEndCapture(stream, &graph);
    if (!ok || end != cudaSuccess || graph == nullptr) {
      (void)cudaGetLastError();
      if (graph != nullptr) cudaGraphDestroy(graph);
      return std::nullopt;
    }
    Graph result;
    const cudaError_t status = cudaGraphInstantiate(&result.exec_, graph, 0);
    cudaGraphDestroy(graph);
    if (status != cudaSuccess) return std::nullopt;
    return result;
  }
  void launch(cudaStream_t stream) const { NVFP4MOE_CUDA_CHECK(cudaGraphLaunch(exec_, stream)); }

 private:
  cudaGraphExec_t exec_ = nullptr;
};

// Median time of enqueue(i), i = 0, 1, ..., over `repeats` runs after `warmup`, by events.
template <typename F>
double median_ms(cudaStream_t stream, int warmup, int repeats, F&& enqueue) {
  cudaEvent_t start, stop;
  NVFP4MOE_CUDA_CHECK(cudaEventCreate(&start));
  NVFP4MOE_CUDA_CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < warmup; ++i) enqueue(i);
  std::vector<float> times;
  for (int i = 0; i < repeats; ++i) {
    NVFP4MOE_CUDA_CHECK(cudaEventRecord(start, stream));
    enqueue(warmup + i);
    NVFP4MOE_CUDA_CHECK(cudaEventRecord(stop, stream));
    NVFP4MOE_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    NVFP4MOE_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// Random NVFP4 weights for experts [first, first + count) of a layer: random codes, E4M3 scales in
// [0.25, 8), global scales ~1e-3, static input scales; each expert from its own global id and the
// seed, so every rank of a split layer makes the same experts a single GPU would.
inline MoeWeights random_nvfp4_weights(int64_t first, int64_t count, int64_t hidden,
                                       int64_t intermediate, uint64_t seed) {
  MoeWeights w = MoeWeights::allocate(count, hidden, intermediate, true);
  const auto per = [&](const std::vector<uint8_t>& v) { return v.size() / size_t(count); };
  parallel_for(count, [&](int64_t e) {
    Random random((seed * 7919 + uint64_t(first + e)) * 0x9E3779B97F4A7C15ull);
    for (auto* array : {&w.gate_up_values, &w.down_values}) {
      uint8_t* p = array->data() + e * per(*array);
      for (size_t i = 0; i < per(*array); i += 8) {
        const uint64_t bits = random.next();
        std::memcpy(p + i, &bits, std::min<size_t>(8, per(*array) - i));
      }
    }
    for (auto* array : {&w.gate_up_scales, &w.down_scales}) {
      uint8_t* p = array->data() + e * per(*array);
      for (size_t i = 0; i < per(*array); ++i) p[i] = uint8_t(0x28 + random.next() % 0x28);
    }
    w.gate_global_scale[e] = float(1e-3 * (1 + random.uniform()));
    w.up_global_scale[e] = float(1e-3 * (1 + random.uniform()));
    w.down_global_scale[e] = float(1e-3 * (1 + random.uniform()));
    w.gate_up_input_scale[e] = float(4.0 / 2688);
    w.down_input_scale[e] = float(1.0 / 2688);
  });
  return w;
}

}  // namespace nvfp4moe::bench
