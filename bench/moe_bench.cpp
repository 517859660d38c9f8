// The MoE benchmark. See moe_bench.hpp for what it measures and why.
#include "moe_bench.hpp"

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>

#include "bench_kernels.hpp"
#include "bench_util.hpp"
#include "core/check.hpp"
#include "core/model_shapes.hpp"
#include "core/parallel.hpp"
#include "core/synthetic.hpp"
#include "cublas_api.hpp"
#include "cuda/common/cuda_check.hpp"
#include "nvfp4moe/runtime.hpp"

namespace nvfp4moe::bench {

namespace {

// The best peers measured on an H200 for the DeepSeek-V3 shape on 2026-11-23 (not in this run).
const std::map<int64_t, std::pair<double, const char*>> kDesignPeersDeepSeekV3 = {
    {1, {0.111, "Marlin"}},    {8, {0.509, "triton"}},   {64, {1.73, "triton"}},
    {256, {2.09, "triton"}},   {1024, {3.60, "triton"}}, {4096, {8.77, "triton"}},
    {16384, {26.6, "triton"}},
};

// ---- Ceilings ---------------------------------------------------------------------------------

struct Ceilings {
  double copy_bytes_per_s;  // bytes read + bytes written
  double bf16_flops_per_s;
};

Ceilings measure_ceilings(CublasApi& cublas, cudaStream_t stream) {
  Ceilings c{};
  {
    const size_t bytes = size_t{2} << 30;
    DeviceBuffer source(Device::kCuda, bytes), target(Device::kCuda, bytes);
    NVFP4MOE_CUDA_CHECK(
        fill_random_bf16(source.as<uint16_t>(), int64_t(bytes / 2), 1.0f, 3, stream));
    const double ms = median_ms(stream, 2, 10, [&](int) {
      NVFP4MOE_CUDA_CHECK(
          cudaMemcpyAsync(target.data(), source.data(), bytes, cudaMemcpyDeviceToDevice, stream));
    });
    c.copy_bytes_per_s = 2.0 * double(bytes) / (ms * 1e-3);
  }
  {
    const int n = 8192;
    DeviceBuffer a(Device::kCuda, size_t(n) * n * 2), b(Device::kCuda, size_t(n) * n * 2),
        out(Device::kCuda, size_t(n) * n * 2);
    NVFP4MOE_CUDA_CHECK(fill_random_bf16(a.as<uint16_t>(), int64_t(n) * n, 1.0f, 4, stream));
    NVFP4MOE_CUDA_CHECK(fill_random_bf16(b.as<uint16_t>(), int64_t(n) * n, 1.0f, 5, stream));
    check_cublas(cublas.set_stream(cublas.handle(), stream), "cublasSetStream");
    const float alpha = 1.0f, beta = 0.0f;
    const double ms = median_ms(stream, 3, 10, [&](int) {
      check_cublas(
          cublas.gemm_ex(cublas.handle(), CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a.data(),
                         CUDA_R_16BF, n, b.data(), CUDA_R_16BF, n, &beta, out.data(), CUDA_R_16BF,
                         n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
          "cublasGemmEx (8192^3 bf16)");
    });
    c.bf16_flops_per_s = 2.0 * double(n) * n * n / (ms * 1e-3);
  }
  return c;
}

// ---- Inputs -----------------------------------------------------------------------------------

struct InputSet {
  Routing routing;  // host copy
  DeviceBuffer hidden, ids, weights;
  int64_t active_experts = 0;  // local experts with at least one slot
  int64_t routed_slots = 0;    // local slots
};

InputSet make_input_set(const MoeConfig& c, int64_t tokens, uint64_t seed, cudaStream_t stream) {
  InputSet set;
  set.routing = random_routing(tokens, c.num_experts, c.top_k, seed);
  set.hidden = DeviceBuffer(Device::kCuda, size_t(tokens * c.hidden) * 2);
  NVFP4MOE_CUDA_CHECK(
      fill_random_bf16(set.hidden.as<uint16_t>(), tokens * c.hidden, 2.0f, seed, stream));
  set.ids = DeviceBuffer(Device::kCuda, set.routing.ids.size() * 4);
  set.ids.upload(set.routing.ids.data(), set.routing.ids.size() * 4);
  set.weights = DeviceBuffer(Device::kCuda, set.routing.weights.size() * 4);
  set.weights.upload(set.routing.weights.data(), set.routing.weights.size() * 4);
  std::vector<char> used(size_t(c.num_local_experts), 0);
  for (int32_t id : set.routing.ids) {
    const int64_t e = id - c.first_local_expert;
    if (id >= 0 && e >= 0 && e < c.num_local_experts) {
      used[e] = 1;
      ++set.routed_slots;
    }
  }
  set.active_experts = std::count(used.begin(), used.end(), 1);
  NVFP4MOE_CUDA_CHECK(cudaDeviceSynchronize());  // uploads (legacy stream) and fill are done
  return set;
}

// ---- The BF16 peer: gather, grouped GEMM, SiLU-and-mul, grouped GEMM, combine -----------------

class Bf16Peer {
 public:
  Bf16Peer(const MoeConfig& c, int64_t max_tokens, CublasApi& cublas, cudaStream_t stream)
      : c_(c), cublas_(cublas) {
    const int64_t e = c.num_local_experts, h = c.hidden, i = c.intermediate;
    const size_t slots = size_t(max_tokens * c.top_k);
    w13_ = DeviceBuffer(Device::kCuda, size_t(e * 2 * i * h) * 2);
    w2_ = DeviceBuffer(Device::kCuda, size_t(e * h * i) * 2);
    NVFP4MOE_CUDA_CHECK(fill_random_bf16(w13_.as<uint16_t>(), e * 2 * i * h,
                                         1.7f / std::sqrt(float(h)), 21, stream));
    NVFP4MOE_CUDA_CHECK(
        fill_random_bf16(w2_.as<uint16_t>(), e * h * i, 1.7f / std::sqrt(float(i)), 22, stream));
    x_ = DeviceBuffer(Device::kCuda, slots * size_t(h) * 2);
    y1_ = DeviceBuffer(Device::kCuda, slots * size_t(2 * i) * 2);
    hs_ = DeviceBuffer(Device::kCuda, slots * size_t(i) * 2);
    y2_ = DeviceBuffer(Device::kCuda, slots * size_t(h) * 2);
  }

  size_t weight_bytes() const { return w13_.size() + w2_.size(); }

  // Per input set: the sorted order and the GEMM problem lists, made on the host from the
  // routing the benchmark already knows.
  struct Plan {
    int64_t tokens = 0, routed = 0;
    DeviceBuffer sorted_token, position;
    std::vector<int> experts, counts, offsets;
    DeviceBuffer pointers;  // A1 B1 C1 A2 B2 C2 arrays, each [groups]
  };

  Plan plan(const InputSet& set, int64_t tokens) const {
    Plan p;
    p.tokens = tokens;
    const int64_t k = c_.top_k;
    std::vector<std::vector<int32_t>> slots_of(size_t(c_.num_local_experts));
    for (int64_t s = 0; s < tokens * k; ++s) {
      const int32_t id = set.routing.ids[s];
      const int64_t e = id - c_.first_local_expert;
      if (id >= 0 && e >= 0 && e < c_.num_local_experts) slots_of[e].push_back(int32_t(s));
    }
    std::vector<int32_t> sorted_token, position(size_t(tokens * k), -1);
    for (int64_t e = 0; e < c_.num_local_experts; ++e) {
      if (slots_of[e].empty()) continue;
      p.experts.push_back(int(e));
      p.offsets.push_back(int(sorted_token.size()));
      p.counts.push_back(int(slots_of[e].size()));
      for (int32_t s : slots_of[e]) {
        position[s] = int32_t(sorted_token.size());
        sorted_token.push_back(int32_t(s / k));
      }
    }
    p.routed = int64_t(sorted_token.size());
    p.sorted_token = DeviceBuffer(Device::kCuda, std::max<size_t>(1, sorted_token.size()) * 4);
    p.sorted_token.upload(sorted_token.data(), sorted_token.size() * 4);
    p.position = DeviceBuffer(Device::kCuda, position.size() * 4);
    p.position.upload(position.data(), position.size() * 4);

    const size_t groups = p.experts.size();
    std::vector<const void*> pointers(6 * std::max<size_t>(groups, 1));
    const int64_t h = c_.hidden, i = c_.intermediate;
    for (size_t g = 0; g < groups; ++g) {
      const int64_t e = p.experts[g], offset = p.offsets[g];
      pointers[0 * groups + g] = w13_.as<uint16_t>() + e * 2 * i * h;
      pointers[1 * groups + g] = x_.as<uint16_t>() + offset * h;
      pointers[2 * groups + g] = y1_.as<uint16_t>() + offset * 2 * i;
      pointers[3 * groups + g] = w2_.as<uint16_t>() + e * h * i;
      pointers[4 * groups + g] = hs_.as<uint16_t>() + offset * i;
      pointers[5 * groups + g] = y2_.as<uint16_t>() + offset * h;
    }
    p.pointers = DeviceBuffer(Device::kCuda, pointers.size() * sizeof(void*));
    p.pointers.upload(pointers.data(), pointers.size() * sizeof(void*));
    return p;
  }

  // The whole peer forward on `stream` (capturable). Uses one grouped GEMM call per projection
  // when cuBLAS has it, else one GEMM per expert.
  void enqueue(const Plan& p, const InputSet& set, uint16_t* out, cudaStream_t stream) {
    const int64_t h = c_.hidden, i = c_.intermediate;
    NVFP4MOE_CUDA_CHECK(gather_rows(set.hidden.as<uint16_t>(), p.sorted_token.as<int32_t>(),
                                    p.routed, h, x_.as<uint16_t>(), stream));
    check_cublas(cublas_.set_stream(cublas_.handle(), stream), "cublasSetStream");
    const auto* pointers = p.pointers.as<const void*>();
    const size_t groups = p.experts.size();
    // Row-major X [n, K] times W [M, K]^T = Y [n, M], in cuBLAS's column-major terms:
    // Y^T (M x n) = op_T(W: K x M) * X^T (K x n).
    gemm(p, 2 * i, h, pointers, pointers + groups, const_cast<void**>(pointers + 2 * groups));
    NVFP4MOE_CUDA_CHECK(silu_and_mul(y1_.as<uint16_t>(), p.routed, i, hs_.as<uint16_t>(), stream));
    gemm(p, h, i, pointers + 3 * groups, pointers + 4 * groups,
         const_cast<void**>(pointers + 5 * groups));
    NVFP4MOE_CUDA_CHECK(weighted_combine(y2_.as<uint16_t>(), p.position.as<int32_t>(),
                                         set.weights.as<float>(), p.tokens, c_.top_k, h, out,
                                         stream));
  }

  bool used_grouped() const { return grouped_ok_; }

 private:
  void gemm(const Plan& p, int64_t m, int64_t k, const void* const* a, const void* const* b,
            void* const* c) {
    const int groups = int(p.experts.size());
    if (groups == 0) return;
    if (grouped_ok_ && cublas_.gemm_grouped_batched_ex != nullptr) {
      std::vector<cublasOperation_t> transa(groups, CUBLAS_OP_T), transb(groups, CUBLAS_OP_N);
      std::vector<int> ms(groups, int(m)), ks(groups, int(k)), lda(groups, int(k)),
          ldb(groups, int(k)), ldc(groups, int(m)), sizes(groups, 1);
      std::vector<float> alpha(groups, 1.0f), beta(groups, 0.0f);
      const cublasStatus_t status = cublas_.gemm_grouped_batched_ex(
          cublas_.handle(), transa.data(), transb.data(), ms.data(), p.counts.data(), ks.data(),
          alpha.data(), a, CUDA_R_16BF, lda.data(), b, CUDA_R_16BF, ldb.data(), beta.data(), c,
          CUDA_R_16BF, ldc.data(), groups, sizes.data(), CUBLAS_COMPUTE_32F);
      if (status == CUBLAS_STATUS_SUCCESS) return;
      grouped_ok_ = false;  // e.g. unsupported types: fall back for good
    }
    // One GEMM per expert, from the host copies of the pointers.
    const int64_t h = c_.hidden, i = c_.intermediate;
    const float alpha = 1.0f, beta = 0.0f;
    for (int g = 0; g < groups; ++g) {
      const int64_t e = p.experts[g], offset = p.offsets[g];
      const bool first = m == 2 * i;
      const void* w = first ? static_cast<const void*>(w13_.as<uint16_t>() + e * 2 * i * h)
                            : static_cast<const void*>(w2_.as<uint16_t>() + e * h * i);
      const void* x = first ? static_cast<const void*>(x_.as<uint16_t>() + offset * h)
                            : static_cast<const void*>(hs_.as<uint16_t>() + offset * i);
      void* y = first ? static_cast<void*>(y1_.as<uint16_t>() + offset * 2 * i)
                      : static_cast<void*>(y2_.as<uint16_t>() + offset * h);
      check_cublas(
          cublas_.gemm_ex(cublas_.handle(), CUBLAS_OP_T, CUBLAS_OP_N, int(m), p.counts[g], int(k),
                          &alpha, w, CUDA_R_16BF, int(k), x, CUDA_R_16BF, int(k), &beta, y,
                          CUDA_R_16BF, int(m), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
          "cublasGemmEx (peer)");
    }
  }

  MoeConfig c_;
  CublasApi& cublas_;
  bool grouped_ok_ = true;
  DeviceBuffer w13_, w2_, x_, y1_, hs_, y2_;
};

std::string device_name() {
  cudaDeviceProp properties{};
  NVFP4MOE_CUDA_CHECK(cudaGetDeviceProperties(&properties, 0));
  return properties.name;
}

std::string percent(double fraction) { return fmt::format("{:.0f}%", 100.0 * fraction); }

}  // namespace

void run_moe_bench(const BenchOptions& o) {
  const ModelShape& shape = find_model_shape(o.shape, "bench");
  require(cuda_available(), ErrorKind::kUnsupported,
          "bench: needs a CUDA device of compute capability 9.0 and a build with CUDA");
  require(!o.tokens.empty() && o.repeats >= 1 && o.input_sets >= 1, ErrorKind::kInvalidArgument,
          "bench: needs token counts, repeats >= 1 and input sets >= 1");
  const int64_t max_tokens = *std::max_element(o.tokens.begin(), o.tokens.end());

  MoeConfig c;
  c.num_experts = shape.experts;
  c.num_local_experts = shape.local_experts;
  c.hidden = shape.hidden;
  c.intermediate = shape.intermediate;
  c.top_k = shape.top_k;
  c.max_tokens = max_tokens;
  c.mode = o.mode;
  c.validate();

  Stream stream;
  CublasApi cublas;
  const Ceilings ceilings = measure_ceilings(cublas, stream.get());
  const MoeWeights weights =
      random_nvfp4_weights(0, c.num_local_experts, c.hidden, c.intermediate, o.seed);
  auto runner = make_runner(Device::kCuda, c, weights);
  DeviceBuffer workspace(Device::kCuda, runner->workspace_bytes());
  std::optional<Bf16Peer> peer;
  if (o.peer) peer.emplace(c, max_tokens, cublas, stream.get());

  const double expert_bytes = 3.0 * double(c.intermediate) * double(c.hidden) * (0.5 + 1.0 / 16);
  const double checkpoint_bytes = expert_bytes * double(c.num_local_experts);
  fmt::print("nvfp4moe bench: {} ({}): E={}{}, k={}, H={}, I={}, {}, {}, CUDA graph replays\n",
             shape.name, shape.description, c.num_experts,
             c.num_local_experts != c.num_experts
                 ? fmt::format(" ({} on this GPU)", c.num_local_experts)
                 : "",
             c.top_k, c.hidden, c.intermediate, to_string(c.mode), device_name());
  fmt::print(
      "ceilings measured in this run: device copy {:.2f} TB/s (read + write), cuBLAS BF16 "
      "matmul {:.0f} TFLOP/s (8192^3)\n",
      ceilings.copy_bytes_per_s / 1e12, ceilings.bf16_flops_per_s / 1e12);
  fmt::print(
      "expert weights {:.2f} GB NVFP4 ({:.2f} GB BF16 for the peer); workspace {:.3f} GiB "
      "for {} tokens\n",
      checkpoint_bytes / 1e9, peer ? double(peer->weight_bytes()) / 1e9 : 0.0,
      double(runner->workspace_bytes()) / double(1 << 30), max_tokens);
  fmt::print("median of {} replays after {} warm-up, rotating {} input sets\n\n", o.repeats,
             o.warmup, o.input_sets);

  const bool design_peers = shape.name == "deepseek-v3" && o.mode == QuantMode::kW4A16;
  fmt::print("{:>6} {:>7} {:>9} {:>8} {:>8} {:>10} {:>8} {:>10} {:>8} {:>10} {:>8}{}\n", "T",
             "experts", "ms", "TFLOP/s", "GB/s", "byte floor", "of it", "BF16 floor", "of it",
             "cuBLAS ms", "speedup", design_peers ? "   best peer 11-23 ms (x)" : "");
  nlohmann::json results = nlohmann::json::array();
  for (const int64_t tokens : o.tokens) {
    require(tokens >= 1, ErrorKind::kInvalidArgument, "bench: token counts must be >= 1");
    std::vector<InputSet> sets;
    std::vector<Graph> ours;
    DeviceBuffer out(Device::kCuda, size_t(tokens * c.hidden) * 2);
    for (int s = 0; s < o.input_sets; ++s) {
      sets.push_back(
          make_input_set(c, tokens, o.seed * 1000 + uint64_t(tokens) * 10 + s, stream.get()));
      const InputSet& set = sets.back();
      auto graph = Graph::capture(stream.get(), [&] {
        runner->forward({tokens, set.hidden.as<uint16_t>(), set.ids.as<int32_t>(),
                         set.weights.as<float>(), out.as<uint16_t>()},
                        workspace.data(), stream.get());
      });
      require(graph.has_value(), ErrorKind::kCuda, "bench: capturing the forward failed");
      ours.push_back(std::move(*graph));
    }
    const double ms = median_ms(stream.get(), o.warmup * o.input_sets, o.repeats,
                                [&](int i) { ours[i % ours.size()].launch(stream.get()); });
    runner->check_errors(stream.get());

    double peer_ms = 0.0;
    if (peer) {
      std::vector<Bf16Peer::Plan> plans;
      std::vector<Graph> graphs;
      for (const InputSet& set : sets) plans.push_back(peer->plan(set, tokens));
      bool graphs_ok = true;
      for (size_t s = 0; s < sets.size() && graphs_ok; ++s) {
        auto graph = Graph::capture(stream.get(), [&] {
          peer->enqueue(plans[s], sets[s], out.as<uint16_t>(), stream.get());
        });
        graphs_ok = graph.has_value();
        if (graphs_ok) graphs.push_back(std::move(*graph));
      }
      peer_ms = median_ms(stream.get(), o.warmup * o.input_sets, o.repeats, [&](int i) {
        const size_t s = size_t(i) % sets.size();
        if (graphs_ok) {
          graphs[s].launch(stream.get());
        } else {
          peer->enqueue(plans[s], sets[s], out.as<uint16_t>(), stream.get());
        }
      });
      if (!graphs_ok)
        fmt::print(stderr, "note: the cuBLAS peer could not be captured; timed eagerly\n");
    }

    double active = 0, routed = 0;
    for (const InputSet& set : sets) {
      active += double(set.active_experts);
      routed += double(set.routed_slots);
    }
    active /= double(sets.size());
    routed /= double(sets.size());
    const double flops = 2.0 * routed * 3.0 * double(c.intermediate) * double(c.hidden);
    const double byte_floor_ms = active * expert_bytes / ceilings.copy_bytes_per_s * 1e3;
    const double compute_floor_ms = flops / ceilings.bf16_flops_per_s * 1e3;
    std::string design;
    if (design_peers && kDesignPeersDeepSeekV3.count(tokens)) {
      const auto& [peer_reported_ms, who] = kDesignPeersDeepSeekV3.at(tokens);
      design =
          fmt::format("   {:>8.3f} {:<7} ({:.2f}x)", peer_reported_ms, who, peer_reported_ms / ms);
    }
    fmt::print(
        "{:>6} {:>7.0f} {:>9.3f} {:>8.1f} {:>8.0f} {:>7.3f} ms {:>8} {:>7.3f} ms {:>8} "
        "{:>10} {:>8}{}\n",
        tokens, active, ms, flops / (ms * 1e-3) / 1e12, active * expert_bytes / (ms * 1e-3) / 1e9,
        byte_floor_ms, percent(byte_floor_ms / ms), compute_floor_ms,
        percent(compute_floor_ms / ms), peer ? fmt::format("{:.3f}", peer_ms) : "-",
        peer ? fmt::format("{:.2f}x", peer_ms / ms) : "-", design);
    std::fflush(stdout);
    results.push_back({{"tokens", tokens},
                       {"active_experts", active},
                       {"ms", ms},
                       {"tflops", flops / (ms * 1e-3) / 1e12},
                       {"byte_floor_ms", byte_floor_ms},
                       {"compute_floor_ms", compute_floor_ms},
                       {"peer_ms", peer ? nlohmann::json(peer_ms) : nlohmann::json()}});
  }
  if (peer) {
    fmt::print("\npeer: BF16 weights, cuBLAS {} ({}), same routing, CUDA graphs\n",
               peer->used_grouped() ? "cublasGemmGroupedBatchedEx" : "cublasGemmEx per expert",
               cublas.library());
  }
  if (!o.json_path.empty()) {
    std::ofstream file(o.json_path);
    file << nlohmann::json{{"shape", shape.name},
                           {"mode", to_string(c.mode)},
                           {"device", device_name()},
                           {"copy_tb_per_s", ceilings.copy_bytes_per_s / 1e12},
                           {"bf16_tflops", ceilings.bf16_flops_per_s / 1e12},
                           {"results", results}}
                .dump(2)
         << "\n";
  }
}

}  // namespace nvfp4moe::bench
