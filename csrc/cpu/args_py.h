// The Python-side argument dict (hnode_fast/backends/args.py ``pack``, used by the CPU and CUDA
// backends) -> cpu::Args: one reader for both pybind launchers (solve_cpu.cpp, bind_cuda.cu).
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>

#include "args.h"

namespace hnode {
namespace cpu {

inline Args args_from_dict(pybind11::dict d) {
  Args a;
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
  a.n_threads = d["n_threads"].cast<int>();
  if (d.contains("ck_cap")) {
    a.ck_cap = d["ck_cap"].cast<int>();
    a.ck_t = d["ck_t"].cast<std::uintptr_t>();
    a.ck_tn = d["ck_tn"].cast<std::uintptr_t>();
    a.ck_y = d["ck_y"].cast<std::uintptr_t>();
    a.ck_jump = d["ck_jump"].cast<std::uintptr_t>();
    a.ck_n = d["ck_n"].cast<std::uintptr_t>();
  }
  if (d.contains("out_dot")) a.out_dot = d["out_dot"].cast<std::uintptr_t>();
  if (a.B < 0 || a.D < 1 || a.T < 1 || a.max_steps < 1) throw std::runtime_error("bad sizes (B, D, T, max_steps)");
  return a;
}

}  // namespace cpu
}  // namespace hnode
