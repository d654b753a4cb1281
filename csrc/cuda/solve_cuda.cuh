// Arguments and launchers of the CUDA ensemble solver (csrc/cuda/solve_cuda.cu), filled by the
// pybind11 glue in csrc/cuda/bind_cuda.cu. Raw pointers only (no libtorch): every pointer except
// ``a.ints`` (host copy of the FieldSpec table, read by the host launcher) is device memory
// allocated by PyTorch, and work is enqueued on ``stream`` (torch.cuda.current_stream()).
#pragma once

#include <cstdint>

#include "../cpu/args.h"

namespace hnode {
namespace cuda {

struct Args {
  cpu::Args a;                   // same fields as the CPU launcher; a.ints is the HOST copy
  std::uintptr_t ints_dev = 0;   // device copy of the FieldSpec ints (n_ints int32)
  std::uintptr_t params_t = 0;   // device scratch (P,) for the transposed parameters
  std::uintptr_t ws = 0;         // device scratch for the generic (global-memory) path
  long long ws_elems = 0;        // its size in elements of T
  int n_thr = 0;                 // threads launched (grid-stride over trajectories)
  std::uintptr_t stream = 0;     // cudaStream_t
  int device = 0;                // CUDA device of the tensors (set before launching)
};

// Workspace plan: elements of T per thread (Work<T>::size) and the register/local-memory
// bucket used (0: generic path with the global scratch ``ws``).
struct Plan {
  long long wsz;
  int bucket;
};
Plan plan(const int* ints_host, long long n_ints, long long P, int D, bool dbl);

void solve(const Args& a, bool dbl, std::uintptr_t out, std::uintptr_t stats);
// grad partials: device scratch (n_thr, P) of per-thread parameter gradients, reduced into gp
// by a second kernel in a fixed order (deterministic for a given n_thr).
void backward(const Args& a, bool dbl, std::uintptr_t g_out, std::uintptr_t gp, std::uintptr_t gy0,
              std::uintptr_t gev, std::uintptr_t partials);

}  // namespace cuda
}  // namespace hnode
