// The subcommands of the nvfp4moe tool. Each adds its options to a CLI11 subcommand and sets
// the callback that runs it.
#pragma once

#include <CLI/CLI.hpp>

namespace nvfp4moe::app {

void add_demo(CLI::App& app);
void add_quantize(CLI::App& app);
void add_inspect(CLI::App& app);
void add_run(CLI::App& app);
void add_bench(CLI::App& app);
void add_accuracy(CLI::App& app);

}  // namespace nvfp4moe::app
