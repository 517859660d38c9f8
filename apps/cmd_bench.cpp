// `nvfp4moe bench`: the MoE layer on the GPU against measured ceilings and a cuBLAS BF16 peer.
#include <memory>

#include "commands.hpp"
#include "common.hpp"
#include "core/check.hpp"

#if NVFP4MOE_WITH_BENCH
#include "moe_bench.hpp"
#endif

namespace nvfp4moe::app {

void add_bench(CLI::App& app) {
#if NVFP4MOE_WITH_BENCH
  auto o = std::make_shared<bench::BenchOptions>();
  auto mode = std::make_shared<std::string>("w4a16");
  auto world = std::make_shared<int>(0);
  app.add_option("--shape", o->shape, "Layer shape: deepseek-v3, deepseek-v4, qwen3-235b, small")
      ->check(CLI::IsMember({"deepseek-v3", "deepseek-v4", "qwen3-235b", "small"}))
      ->capture_default_str();
  app.add_option("--tokens", o->tokens, "Token counts, e.g. --tokens 1 8 64")
      ->capture_default_str();
  app.add_option("--mode", *mode, "w4a16 or w4a4 (dynamic activation scales)")
      ->check(CLI::IsMember({"w4a16", "w4a4"}))
      ->capture_default_str();
  app.add_option("--repeats", o->repeats, "Timed replays per T (the median is reported)")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--warmup", o->warmup, "Warm-up replays per input set")
      ->check(CLI::Range(0, 1000))
      ->capture_default_str();
  app.add_option("--sets", o->input_sets, "Input sets to rotate through")
      ->check(CLI::Range(1, 16))
      ->capture_default_str();
  app.add_flag(
      "--no-peer", [o](int64_t) { o->peer = false; }, "Skip the cuBLAS BF16 peer");
  app.add_option("--json", o->json_path, "Also write the results to this JSON file");
  app.add_option("--seed", o->seed, "Random seed")
      ->check(non_negative_integer())
      ->capture_default_str();
  app.add_option("--world-size", *world,
                 "Expert parallelism over NCCL: time world sizes 1, 2, 4 .. N of this machine's "
                 "GPUs instead of the single-GPU table")
      ->check(CLI::Range(1, 64));
  app.callback([o, mode, world] {
    o->mode = parse_mode(*mode);
    if (*world > 0) {
      bench::run_distributed_bench(*o, *world);
    } else {
      bench::run_moe_bench(*o);
    }
  });
#else
  app.allow_extras();
  app.callback([] {
    fail(ErrorKind::kUnsupported,
         "bench: this build has no CUDA backend (nvcc was not found when it was configured)");
  });
#endif
}

}  // namespace nvfp4moe::app
