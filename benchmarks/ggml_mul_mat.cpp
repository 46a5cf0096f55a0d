// ggml's own CPU matmul at any shape, for benchmarks/kernel_speed.py: test-backend-ops' perf list has most GGML types
// only at k=14336. Built by kernel_speed.py (--ggml-src) against ggml from the llama-cpp-python sdist.
//
//     ggml_mul_mat TYPE N K THREADS COPIES      prints "ready", then answers each line of stdin:
//     "c R" -> seconds per op over R ops on the same weights (cache-resident, as test-backend-ops runs it)
//     "s R" -> seconds per op over R ops rotating over COPIES weights (the caller sizes them past the L3 cache)
// so that the caller can interleave ggml's rounds with its own. Weights: ggml_quantize_chunk of Gaussian values.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "ggml-cpu.h"
#include "ggml.h"

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: %s TYPE N K THREADS COPIES\n", argv[0]);
    return 2;
  }
  const std::string name = argv[1];
  const int64_t N = std::atoll(argv[2]), K = std::atoll(argv[3]);
  const int threads = std::atoi(argv[4]), copies = std::max(1, std::atoi(argv[5]));
  ggml_type type = GGML_TYPE_COUNT;
  for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
    const char* tn = ggml_type_name((ggml_type)t);
    if (tn && name == tn) type = (ggml_type)t;
  }
  if (type == GGML_TYPE_COUNT) {
    std::fprintf(stderr, "unknown ggml type '%s' (use ggml's names, e.g. q4_K, q8_0)\n", name.c_str());
    return 2;
  }
  const size_t wbytes = ggml_row_size(type, K) * N;
  ggml_init_params ip = {copies * wbytes + (size_t)(K + N) * 4 * 4 + (64u << 20), nullptr, false};
  ggml_context* ctx = ggml_init(ip);
  std::vector<float> src(N * K);
  std::mt19937 g(0);
  std::normal_distribution<float> nd;
  for (auto& v : src) v = nd(g);
  ggml_tensor* x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, K, 1);
  for (int64_t i = 0; i < K; ++i) ((float*)x->data)[i] = nd(g);
  std::vector<ggml_cgraph*> graphs;
  for (int c = 0; c < copies; ++c) {
    ggml_tensor* w = ggml_new_tensor_2d(ctx, type, K, N);
    ggml_quantize_chunk(type, src.data(), w->data, 0, N, K, nullptr);
    ggml_cgraph* gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, ggml_mul_mat(ctx, w, x));
    graphs.push_back(gf);
  }
  // One plan and work buffer for every call: ggml_graph_compute_with_ctx takes a new work buffer from ctx on each
  // call, which ran the pool dry after about 100 k-quant calls.
  size_t work = 0;
  std::vector<ggml_cplan> plans;
  for (ggml_cgraph* gf : graphs) {
    plans.push_back(ggml_graph_plan(gf, threads, nullptr));
    work = std::max(work, plans.back().work_size);
  }
  std::vector<uint8_t> work_data(work + 64);
  for (ggml_cplan& p : plans) p.work_data = work_data.data();
  ggml_graph_compute(graphs[0], &plans[0]);   // warm-up
  std::printf("ready\n");
  std::fflush(stdout);
  char mode;
  int reps;
  while (std::scanf(" %c %d", &mode, &reps) == 2 && reps > 0) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) {
      const int c = mode == 's' ? i % copies : 0;
      ggml_graph_compute(graphs[c], &plans[c]);
    }
    std::printf("%.9f\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps);
    std::fflush(stdout);
  }
  ggml_free(ctx);
  return 0;
}
