// nvfp4moe: the command-line tool. Every failure exits non-zero with a one-line reason.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <new>

#include "commands.hpp"

int main(int argc, char** argv) {
  CLI::App app{"nvfp4moe: NVFP4 Mixture-of-Experts layers at the hardware's limit"};
  app.require_subcommand(0, 1);
  // One line per failure, like every other error of the tool.
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return fmt::format("nvfp4moe: error: {} (see --help)\n", e.what());
  });
  using namespace nvfp4moe::app;
  add_demo(*app.add_subcommand("demo", "Run a small DeepSeek-like NVFP4 layer and check it"));
  add_quantize(*app.add_subcommand(
      "quantize", "Convert the expert weights of a BF16/F16/F32 checkpoint to NVFP4"));
  add_inspect(*app.add_subcommand("inspect", "List the MoE layers of a checkpoint"));
  add_run(*app.add_subcommand("run", "Run one MoE layer of a checkpoint on random tokens"));
  add_accuracy(*app.add_subcommand(
      "accuracy", "Compare every mode's numerics with the BF16 layer at a model's layer shape"));
  add_bench(*app.add_subcommand(
      "bench", "Time the layer on the GPU against measured ceilings and a cuBLAS BF16 peer"));
  try {
    app.parse(argc, argv);  // runs the chosen subcommand's callback
    if (app.get_subcommands().empty()) {
      fmt::print(stderr,
                 "nvfp4moe: error: a subcommand is required: demo, quantize, inspect, run, "
                 "accuracy or bench (see --help)\n");
      return 1;
    }
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::bad_alloc&) {
    // The large allocations say what they were for (Error kOutOfMemory); this is any other.
    fmt::print(stderr,
               "nvfp4moe: error: out of host memory (an allocation of the {} command failed)\n",
               app.get_subcommands().empty() ? "" : app.get_subcommands().front()->get_name());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "nvfp4moe: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
