// A minimal parallel loop for the host: the CPU reference uses every core through it.
#pragma once

#include <cstdint>
#include <functional>

namespace nvfp4moe {

// Threads used by parallel_for: NVFP4MOE_CPU_THREADS if set, else the CPUs this process may run
// on (its affinity mask, which engines that pin threads narrow).
int host_thread_count();
// (Where parallel_for runs its loop is set_cpu_parallel_backend's choice: nvfp4moe/runtime.hpp.)

// Calls body(i) for every i in [0, count), spreading indices over host_thread_count() threads
// as they free up. Results must not depend on which thread runs which index. The first
// exception thrown by any body is rethrown here once all threads have stopped.
void parallel_for(int64_t count, const std::function<void(int64_t)>& body);

}  // namespace nvfp4moe
