// pybind11 registration of the CPU solver (hnode::register_cpu, called from bindings.cpp) and
// the run-time choice between the baseline, AVX2, AVX-512 and gpuloops builds of the launchers (kernels.inc).
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "args.h"
#include "args_py.h"

namespace py = pybind11;

namespace hnode {
namespace cpu {
bool avx2_compiled();
bool avx512_compiled();
#define HNODE_DECLARE_ISA(NS)                                                                                    \
  namespace NS {                                                                                               \
  void solve(const Args&, bool, std::uintptr_t, std::uintptr_t);                                              \
  void backward(const Args&, bool, std::uintptr_t, std::uintptr_t, std::uintptr_t, std::uintptr_t);          \
  void backsolve(const Args&, bool, std::uintptr_t, std::uintptr_t, std::uintptr_t, std::uintptr_t,           \
                 std::uintptr_t);                                                                            \
  void eval(bool, std::uintptr_t, long long, std::uintptr_t, long long, std::uintptr_t, std::uintptr_t, int, int, \
            std::uintptr_t, int, int);                                                                         \
  void vjp(bool, std::uintptr_t, long long, std::uintptr_t, long long, std::uintptr_t, std::uintptr_t,          \
           std::uintptr_t, int, int, std::uintptr_t, std::uintptr_t);                                         \
  }
HNODE_DECLARE_ISA(base)
HNODE_DECLARE_ISA(avx2)
HNODE_DECLARE_ISA(avx512)
HNODE_DECLARE_ISA(gpuloops)
#undef HNODE_DECLARE_ISA

namespace {

enum Isa { ISA_BASE = 0, ISA_AVX2 = 1, ISA_GPULOOPS = 2, ISA_AVX512 = 3 };

bool avx2_usable() {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  static const bool ok = avx2_compiled() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

bool avx512_usable() {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  static const bool ok = avx512_compiled() && avx2_usable() && __builtin_cpu_supports("avx512f") &&
                         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  return ok;
#else
  return false;
#endif
}

// The build of the launchers used: AVX-512 when the CPU has it, else AVX2, else baseline (all
// give the same bits); HNODE_CPU_ISA=base, =avx2, =avx512 or =gpuloops (the CUDA kernels' loop
// forms, for tests) at import, or cpu_set_isa() later.
int& isa_choice() {
  static int isa = [] {
    const char* e = std::getenv("HNODE_CPU_ISA");
    const std::string s = e ? e : "";
    if (s == "base") return (int)ISA_BASE;
    if (s == "gpuloops") return (int)ISA_GPULOOPS;
    if (s == "avx2" && avx2_usable()) return (int)ISA_AVX2;
    if (avx512_usable() && s != "avx2") return (int)ISA_AVX512;
    return avx2_usable() ? (int)ISA_AVX2 : (int)ISA_BASE;
  }();
  return isa;
}

const char* isa_name(int i) {
  return i == ISA_AVX2 ? "avx2" : i == ISA_AVX512 ? "avx512" : i == ISA_GPULOOPS ? "gpuloops" : "base";
}

#define HNODE_ISA_CALL(FN, ...)                                \
  do {                                                        \
    switch (isa_choice()) {                                   \
      case ISA_AVX2: avx2::FN(__VA_ARGS__); break;            \
      case ISA_AVX512: avx512::FN(__VA_ARGS__); break;        \
      case ISA_GPULOOPS: gpuloops::FN(__VA_ARGS__); break;    \
      default: base::FN(__VA_ARGS__); break;                  \
    }                                                         \
  } while (0)

}  // namespace
}  // namespace cpu

void register_cpu(py::module_& m) {
  using namespace cpu;
  m.def(
      "cpu_solve",
      [](py::dict d, bool dbl, std::uintptr_t out, std::uintptr_t stats) {
        Args a = args_from_dict(d);
        py::gil_scoped_release nogil;
        HNODE_ISA_CALL(solve, a, dbl, out, stats);
      },
      "Adaptive DP5 solves of B trajectories (see hnode_fast/backends/args.py for the arguments).");
  m.def(
      "cpu_solve_backward",
      [](py::dict d, bool dbl, std::uintptr_t g_out, std::uintptr_t gp, std::uintptr_t gy0, std::uintptr_t gev) {
        Args a = args_from_dict(d);
        py::gil_scoped_release nogil;
        HNODE_ISA_CALL(backward, a, dbl, g_out, gp, gy0, gev);
      },
      "Discrete adjoint of cpu_solve (re-runs the solve recording the accepted steps).");
  m.def(
      "cpu_solve_backsolve",
      [](py::dict d, bool dbl, std::uintptr_t g_out, std::uintptr_t y_out, std::uintptr_t gp, std::uintptr_t gy0,
         std::uintptr_t bst) {
        Args a = args_from_dict(d);
        py::gil_scoped_release nogil;
        HNODE_ISA_CALL(backsolve, a, dbl, g_out, y_out, gp, gy0, bst);
      },
      "Continuous (backsolve) adjoint of cpu_solve from the forward outputs y_out (T, B, D) (the last "
      "row is the start; the state is re-anchored to the earlier rows): "
      "grad_params (P,), grad_y0 (B, D), backward stats (B, 4).");
  m.def(
      "cpu_eval_field",
      [](bool dbl, std::uintptr_t ints, long long n_ints, std::uintptr_t params, long long P, std::uintptr_t z,
         std::uintptr_t u, int B, int D, std::uintptr_t out, int n_threads, int repeat) {
        py::gil_scoped_release nogil;
        HNODE_ISA_CALL(eval, dbl, ints, n_ints, params, P, z, u, B, D, out, n_threads, repeat);
      },
      "dz = f(z, u) for B points from a FieldSpec (repeat: times, for benchmarks).");
  m.def(
      "cpu_vjp_field",
      [](bool dbl, std::uintptr_t ints, long long n_ints, std::uintptr_t params, long long P, std::uintptr_t z,
         std::uintptr_t u, std::uintptr_t a, int B, int D, std::uintptr_t gz, std::uintptr_t gp) {
        py::gil_scoped_release nogil;
        HNODE_ISA_CALL(vjp, dbl, ints, n_ints, params, P, z, u, a, B, D, gz, gp);
      },
      "gz += J_z^T a, gp += J_p^T a for B points (gp summed over the batch).");
  m.def("cpu_isa", []() { return std::string(isa_name(isa_choice())); },
        "Build of the CPU kernels in use: 'avx512', 'avx2', 'base' or 'gpuloops' (the CUDA loop forms).");
  m.def(
      "cpu_set_isa",
      [](const std::string& name) {
        const std::string old = isa_name(isa_choice());
        if (name == "base")
          isa_choice() = ISA_BASE;
        else if (name == "gpuloops")
          isa_choice() = ISA_GPULOOPS;
        else if (name == "avx2") {
          if (!avx2_usable()) throw std::runtime_error("cpu_set_isa: AVX2 + FMA build not usable on this CPU");
          isa_choice() = ISA_AVX2;
        } else if (name == "avx512") {
          if (!avx512_usable()) throw std::runtime_error("cpu_set_isa: AVX-512 build not usable on this CPU");
          isa_choice() = ISA_AVX512;
        } else
          throw std::runtime_error("cpu_set_isa: name must be 'base', 'avx2', 'avx512' or 'gpuloops', got '" + name + "'");
        return old;
      },
      py::arg("name"), "Switch the build of the CPU kernels (for tests); returns the previous name.");
  m.attr("has_cpu_solver") = true;
}

}  // namespace hnode
