// pybind11 registration of the CUDA ensemble solver (hnode::register_cuda, called from
// bindings.cpp when built with CUDA). Host code only: converts the Python dict of raw pointers
// (hnode_fast/backends/cuda.py) and calls the launchers of solve_cuda.cu.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>

#include "../cpu/args_py.h"
#include "solve_cuda.cuh"

namespace py = pybind11;

namespace hnode {
namespace cuda {
namespace {

Args make_args(py::dict d) {
  Args x;
  x.a = cpu::args_from_dict(d);  // the fields shared with the CPU launcher
  x.a.n_threads = 1;
  x.ints_dev = d["ints_dev"].cast<std::uintptr_t>();
  x.params_t = d["params_t"].cast<std::uintptr_t>();
  x.ws = d["ws"].cast<std::uintptr_t>();
  x.ws_elems = d["ws_elems"].cast<long long>();
  x.n_thr = d["n_thr"].cast<int>();
  x.stream = d["stream"].cast<std::uintptr_t>();
  x.device = d["device"].cast<int>();
  if (x.a.B < 1 || x.n_thr < 1) throw std::runtime_error("cuda_solve: bad sizes");
  return x;
}

}  // namespace
}  // namespace cuda

void register_cuda(py::module_& m) {
  using namespace cuda;
  m.def(
      "cuda_plan",
      [](std::uintptr_t ints, long long n_ints, long long P, int D, bool dbl) {
        const Plan p = plan(reinterpret_cast<const int*>(ints), n_ints, P, D, dbl);
        py::dict r;
        r["wsz"] = p.wsz;
        r["bucket"] = p.bucket;
        return r;
      },
      "Per-thread workspace of the CUDA kernels for a FieldSpec (host ints pointer): wsz (elements) and "
      "bucket (local-array size used, 0: generic path needing a global workspace of n_thr * wsz).");
  m.def(
      "cuda_solve",
      [](py::dict d, bool dbl, std::uintptr_t out, std::uintptr_t stats) {
        Args a = make_args(d);
        py::gil_scoped_release nogil;
        solve(a, dbl, out, stats);
      },
      "Enqueue the ensemble DP5 solve of B trajectories on the given stream (see backends/cuda.py).");
  m.def(
      "cuda_solve_backward",
      [](py::dict d, bool dbl, std::uintptr_t g_out, std::uintptr_t gp, std::uintptr_t gy0, std::uintptr_t gev,
         std::uintptr_t partials) {
        Args a = make_args(d);
        py::gil_scoped_release nogil;
        backward(a, dbl, g_out, gp, gy0, gev, partials);
      },
      "Enqueue the discrete adjoint over stored checkpoints and the parameter-gradient reduction.");
  m.attr("has_cuda_solver") = true;
}

}  // namespace hnode
