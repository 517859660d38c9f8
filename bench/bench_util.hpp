// Timing pieces the benchmarks share: a stream, a captured graph, the median of event-timed
// runs. Host code; errors are nvfp4moe::Error.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

#include "cuda/common/cuda_check.hpp"
#include "nvfp4moe/error.hpp"

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

}  // namespace nvfp4moe::bench
