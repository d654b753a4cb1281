// pybind11 registration of the CUDA ensemble solver (hnode::register_cuda, called from
// bindings.cpp when built with CUDA). Host code only: converts the Python dict of raw pointers
// (hnode_fast/backends/cuda.py) and calls the launchers of solve_cuda.cu.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>

#include "solve_cuda.cuh"

namespace py = pybind11;

namespace hnode {
namespace cuda {
namespace {

Args make_args(py::dict d) {
  Args x;
  cpu::Args& a = x.a;
  a.ints = d["ints"].cast<std::uintptr_t>();
  a.n_ints = d["n_ints"].cast<long long>();
  a.params = d["params"].cast<std::uintptr_t>();
  a.P = d["P"].cast<long long>();
  a.y0 = d["y0"].cast<std::uintptr_t>();
  a.B = d["B"].cast<int>();
  a.D = d["D"].cast<int>();
  a.out_t = d["out_t"].cast<std::uintptr_t>();
  a.T = d["T"].cast<int>();
  a.stops = d["stops"].cast<std::uintptr_t>();
  a.S = d["S"].cast<int>();
  a.ev_t = d["ev_t"].cast<std::uintptr_t>();
  a.ev_s = d["ev_s"].cast<std::uintptr_t>();
  a.ev_a = d["ev_a"].cast<std::uintptr_t>();
  a.E = d["E"].cast<int>();
  a.in_t = d["in_t"].cast<std::uintptr_t>();
  a.in_v = d["in_v"].cast<std::uintptr_t>();
  a.J = d["J"].cast<int>();
  a.rtol = d["rtol"].cast<double>();
  a.atol = d["atol"].cast<double>();
  a.max_steps = d["max_steps"].cast<long long>();
  a.n_threads = 1;
  if (d.contains("ck_cap")) {
    a.ck_cap = d["ck_cap"].cast<int>();
    a.ck_t = d["ck_t"].cast<std::uintptr_t>();
    a.ck_tn = d["ck_tn"].cast<std::uintptr_t>();
    a.ck_y = d["ck_y"].cast<std::uintptr_t>();
    a.ck_jump = d["ck_jump"].cast<std::uintptr_t>();
    a.ck_n = d["ck_n"].cast<std::uintptr_t>();
  }
  x.ints_dev = d["ints_dev"].cast<std::uintptr_t>();
  x.params_t = d["params_t"].cast<std::uintptr_t>();
  x.ws = d["ws"].cast<std::uintptr_t>();
  x.ws_elems = d["ws_elems"].cast<long long>();
  x.n_thr = d["n_thr"].cast<int>();
  x.stream = d["stream"].cast<std::uintptr_t>();
  x.device = d["device"].cast<int>();
  if (a.B < 1 || a.D < 1 || a.T < 1 || a.max_steps < 1 || x.n_thr < 1)
    throw std::runtime_error("cuda_solve: bad sizes");
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
