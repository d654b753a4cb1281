// pybind11 module hnode_fast._C. No torch headers: Python passes raw pointers, sizes and
// streams as integers; this file only converts and dispatches.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cctype>
#include <cstdint>
#include <stdexcept>
#include <tuple>
#include <string>
#include <vector>

#include "hnode/checks.h"
#include "hnode/tableau.h"

namespace py = pybind11;

namespace hnode {
void register_cpu(py::module_& m);  // csrc/cpu/solve_cpu.cpp
namespace cpu {
void register_peak(py::module_& m);  // csrc/cpu/peak.cpp
}
}  // namespace hnode

#ifndef HNODE_WITH_CUDA
#define HNODE_WITH_CUDA 0
#endif
#ifndef HNODE_WITH_OPENMP
#define HNODE_WITH_OPENMP 0
#endif
#ifndef HNODE_CUDA_ARCHS
#define HNODE_CUDA_ARCHS ""
#endif
#ifndef HNODE_CXX_COMPILER
#define HNODE_CXX_COMPILER "unknown"
#endif

#if HNODE_WITH_CUDA
namespace hnode {
namespace cuda {
int device_count();     // csrc/cuda/device_info.cu
int runtime_version();  // csrc/cuda/device_info.cu
}  // namespace cuda
void register_cuda(py::module_& m);  // csrc/cuda/bind_cuda.cu
}  // namespace hnode
#endif

namespace {

// "80,90a,90-real" -> {80, 90, 90}; entries without leading digits ("native") are skipped.
std::vector<int> parse_archs(const std::string& s) {
  std::vector<int> out;
  std::size_t i = 0;
  while (i < s.size()) {
    std::size_t j = s.find_first_of(",;", i);
    if (j == std::string::npos) j = s.size();
    std::string item = s.substr(i, j - i);
    std::size_t k = 0;
    while (k < item.size() && std::isspace(static_cast<unsigned char>(item[k]))) ++k;
    int v = 0;
    bool any = false;
    while (k < item.size() && std::isdigit(static_cast<unsigned char>(item[k]))) {
      v = v * 10 + (item[k] - '0');
      any = true;
      ++k;
    }
    if (any) out.push_back(v);
    i = j + 1;
  }
  return out;
}

template <std::size_t N>
py::list vec(const double (&a)[N]) {
  py::list l;
  for (std::size_t i = 0; i < N; ++i) l.append(a[i]);
  return l;
}

template <std::size_t R, std::size_t K>
py::list mat(const double (&a)[R][K]) {
  py::list l;
  for (std::size_t i = 0; i < R; ++i) l.append(vec(a[i]));
  return l;
}

py::dict build_info() {
  py::dict d;
  d["cuda"] = static_cast<bool>(HNODE_WITH_CUDA);
  d["cuda_archs"] = parse_archs(HNODE_CUDA_ARCHS);
#if HNODE_WITH_CUDA && defined(HNODE_CUDA_COMPILER_VERSION)
  d["cuda_compiler"] = std::string("NVIDIA ") + HNODE_CUDA_COMPILER_VERSION;
  d["cuda_runtime_version"] = hnode::cuda::runtime_version();  // e.g. 13000
#else
  d["cuda_compiler"] = py::none();
  d["cuda_runtime_version"] = py::none();
#endif
  d["cxx_compiler"] = std::string(HNODE_CXX_COMPILER);
  d["openmp"] = static_cast<bool>(HNODE_WITH_OPENMP);
  return d;
}

py::dict dopri5_tableau() {
  using T = hnode::DP5Table;
  py::dict d;
  d["C"] = vec(T::C);
  d["A"] = mat(T::A);
  d["B"] = vec(T::B);
  d["E"] = vec(T::E);
  d["P"] = mat(T::P);
  d["n_stages"] = T::n_stages;
  d["order"] = T::order;
  d["error_estimator_order"] = T::error_estimator_order;
  return d;
}

// Items (ptr, n, kind), kind 0 = float32, 1 = float64: index of the first item holding NaN or
// inf, -1 when all are finite.
long long first_nonfinite(const std::vector<std::tuple<std::uintptr_t, long long, int>>& items) {
  for (size_t i = 0; i < items.size(); ++i) {
    const std::uintptr_t p = std::get<0>(items[i]);
    const long long n = std::get<1>(items[i]);
    const int kind = std::get<2>(items[i]);
    bool ok;
    if (kind == 1) {
      ok = hnode::checks::all_finite(reinterpret_cast<const double*>(p), n);
    } else if (kind == 0) {
      ok = hnode::checks::all_finite(reinterpret_cast<const float*>(p), n);
    } else {
      throw std::invalid_argument("first_nonfinite: kind must be 0 (float32) or 1 (float64)");
    }
    if (!ok) return (long long)i;
  }
  return -1;
}

bool rows_increasing(std::uintptr_t p, long long B, long long T) {
  return hnode::checks::rows_increasing(reinterpret_cast<const double*>(p), B, T);
}

// pairs of (a, b, n, kind): all equal (see hnode/checks.h)
bool all_equal(const std::vector<std::tuple<std::uintptr_t, std::uintptr_t, long long, int>>& pairs) {
  for (const auto& q : pairs) {
    const std::uintptr_t a = std::get<0>(q), b = std::get<1>(q);
    const long long n = std::get<2>(q);
    const int kind = std::get<3>(q);
    bool ok;
    if (kind == 1) {
      ok = hnode::checks::equal_values(reinterpret_cast<const double*>(a), reinterpret_cast<const double*>(b), n);
    } else if (kind == 0) {
      ok = hnode::checks::equal_values(reinterpret_cast<const float*>(a), reinterpret_cast<const float*>(b), n);
    } else {
      ok = hnode::checks::equal_bytes(reinterpret_cast<const void*>(a), reinterpret_cast<const void*>(b), n);
    }
    if (!ok) return false;
  }
  return true;
}

int cuda_device_count() {
#if HNODE_WITH_CUDA
  return hnode::cuda::device_count();
#else
  return 0;
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "hnode_fast compiled core (CPU, optional CUDA). Raw pointers only, no libtorch.";
  m.def("build_info", &build_info,
        "Dict describing what was compiled: cuda, cuda_archs, cuda_compiler, "
        "cuda_runtime_version, cxx_compiler, openmp.");
  m.def("dopri5_tableau", &dopri5_tableau,
        "Dormand-Prince 5(4) tableau from csrc/include/hnode/tableau.h, with scipy RK45 "
        "shapes: C (6), A (6x5), B (6), E (7), P (7x4), as nested lists of floats.");
  m.def("cuda_device_count", &cuda_device_count,
        "Number of visible CUDA devices; 0 if not compiled with CUDA or no driver/device.");
  m.def("first_nonfinite", &first_nonfinite, py::arg("items"),
        "Items (ptr, n, kind) of n contiguous host values, kind 0 = float32, 1 = float64: index "
        "of the first holding NaN or inf, -1 when none does.");
  m.def("rows_increasing", &rows_increasing, py::arg("ptr"), py::arg("B"), py::arg("T"),
        "Each of B contiguous rows of T host float64 values is strictly increasing (NaN: false).");
  m.def("all_equal", &all_equal, py::arg("pairs"),
        "For each (a, b, n, kind): n host values at a equal those at b; kind 0 = float32, "
        "1 = float64 (by value: NaN never equal), 2 = other (n bytes compared).");
  hnode::register_cpu(m);
  hnode::cpu::register_peak(m);
#if HNODE_WITH_CUDA
  hnode::register_cuda(m);
#endif
}
