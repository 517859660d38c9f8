#include "core/parallel.hpp"

#include "nvfp4moe/runtime.hpp"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace nvfp4moe {

namespace {
std::atomic<CpuParallelBackend> backend{nullptr};
}  // namespace

int host_thread_count() {
  if (const char* env = std::getenv("NVFP4MOE_CPU_THREADS")) {
    const int requested = std::atoi(env);
    if (requested > 0) return requested;
  }
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof allowed, &allowed) == 0) return std::max(1, CPU_COUNT(&allowed));
  return std::max(1u, std::thread::hardware_concurrency());
}

void set_cpu_parallel_backend(CpuParallelBackend installed) { backend = installed; }

void parallel_for(int64_t count, const std::function<void(int64_t)>& body) {
  if (count <= 0) return;
  if (const CpuParallelBackend installed = backend.load()) {
    installed(count, body);
    return;
  }
  const int64_t num_threads = std::min<int64_t>(host_thread_count(), count);
  if (num_threads == 1) {
    for (int64_t i = 0; i < count; ++i) body(i);
    return;
  }
  std::atomic<int64_t> next{0};
  std::atomic<bool> stop{false};
  std::exception_ptr first_error;
  std::mutex error_mutex;
  auto worker = [&] {
    while (!stop.load(std::memory_order_relaxed)) {
      const int64_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= count) return;
      try {
        body(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!first_error) first_error = std::current_exception();
        stop = true;
      }
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(num_threads - 1);
  for (int64_t t = 1; t < num_threads; ++t) threads.emplace_back(worker);
  worker();
  for (auto& thread : threads) thread.join();
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace nvfp4moe
