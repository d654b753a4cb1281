// The machine's FP64 FMA peak on one thread, measured (for benchmarks/bench_cpu.py, which reports
// the kernels' GFLOP/s as a fraction of it): a tight loop of independent vector FMA chains in
// the widest instruction set the CPU runs (AVX-512, AVX2+FMA, else scalar fma). Each function
// carries its own target attribute, so this file needs no ISA flags.
#include <pybind11/pybind11.h>

#include <chrono>
#include <algorithm>
#include <cmath>
#include <string>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace py = pybind11;

namespace hnode {
namespace cpu {
namespace {

constexpr int CHAINS = 12;  // independent accumulators: more than FMA latency x ports

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define HNODE_PEAK_LOOP(V, SET1, FMADD, STORE, W)                                     \
  V acc[CHAINS];                                                                     \
  const V x = SET1(0.999999), y = SET1(1e-9);                                        \
  for (int i = 0; i < CHAINS; ++i) acc[i] = SET1((double)(i + 1));                   \
  const auto t0 = std::chrono::steady_clock::now();                                  \
  for (long long k = 0; k < iters; ++k)                                              \
    for (int i = 0; i < CHAINS; ++i) acc[i] = FMADD(acc[i], x, y);                   \
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); \
  double tot = 0, lanes[W];                                                          \
  for (int i = 0; i < CHAINS; ++i) {                                                 \
    STORE(lanes, acc[i]);                                                            \
    for (int j = 0; j < W; ++j) tot += lanes[j];                                     \
  }                                                                                  \
  *sink = tot;                                                                       \
  return s;

__attribute__((target("avx512f,fma"))) double time_avx512(long long iters, double* sink) {
  HNODE_PEAK_LOOP(__m512d, _mm512_set1_pd, _mm512_fmadd_pd, _mm512_storeu_pd, 8)
}
__attribute__((target("avx2,fma"))) double time_avx2(long long iters, double* sink) {
  HNODE_PEAK_LOOP(__m256d, _mm256_set1_pd, _mm256_fmadd_pd, _mm256_storeu_pd, 4)
}
#undef HNODE_PEAK_LOOP
#endif

double time_scalar(long long iters, double* sink) {
  double acc[CHAINS];
  for (int i = 0; i < CHAINS; ++i) acc[i] = i + 1;
  const auto t0 = std::chrono::steady_clock::now();
  for (long long k = 0; k < iters; ++k)
    for (int i = 0; i < CHAINS; ++i) acc[i] = std::fma(acc[i], 0.999999, 1e-9);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double tot = 0;
  for (int i = 0; i < CHAINS; ++i) tot += acc[i];
  *sink = tot;
  return s;
}

}  // namespace

// (GFLOP/s, width in doubles, name): best of `rounds` timed loops of about `seconds` each.
py::tuple fma_peak(double seconds, int rounds) {
  int width = 1;
  const char* name = "scalar";
  double (*fn)(long long, double*) = time_scalar;
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) {
    fn = time_avx512, width = 8, name = "avx512";
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    fn = time_avx2, width = 4, name = "avx2";
  }
#endif
  double sink = 0;
  long long iters = 1000;
  while (fn(iters, &sink) < seconds / 4 && iters < (1LL << 40)) iters *= 2;
  double best = 0;
  for (int r = 0; r < rounds; ++r) {
    const double s = fn(iters, &sink);
    best = std::max(best, 2.0 * CHAINS * width * (double)iters / s / 1e9);
  }
  if (sink == 12345.678) best += 0;  // keeps the loops' results alive
  return py::make_tuple(best, width, std::string(name));
}

void register_peak(py::module_& m) {
  m.def("cpu_fma_peak", &fma_peak, py::arg("seconds") = 0.05, py::arg("rounds") = 5,
        "FP64 FMA peak of one thread, measured: (GFLOP/s, vector width in doubles, ISA name).");
}

}  // namespace cpu
}  // namespace hnode
