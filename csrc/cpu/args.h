// Arguments of the CPU launchers (filled from Python by solve_cpu.cpp).
#pragma once

#include <cstdint>

namespace hnode {
namespace cpu {

struct Args {
  std::uintptr_t ints;
  long long n_ints;
  std::uintptr_t params;
  long long P;
  std::uintptr_t y0;
  int B, D;
  std::uintptr_t out_t;
  int T;
  std::uintptr_t stops;
  int S;
  std::uintptr_t ev_t, ev_s, ev_a;
  int E;
  std::uintptr_t in_t, in_v;
  int J;
  double rtol, atol;
  long long max_steps;
  int n_threads;
  // accepted-step checkpoints (capacity ck_cap per trajectory; 0: none). ck_n[b] = steps
  // stored, or -1 when they did not fit (the backward then re-runs that trajectory).
  int ck_cap = 0;
  std::uintptr_t ck_t = 0, ck_tn = 0, ck_y = 0, ck_jump = 0, ck_n = 0;
  // optional (T, B, D) output slopes of the forward solve (Traj::out_dot); 0: none
  std::uintptr_t out_dot = 0;
};

}  // namespace cpu
}  // namespace hnode
